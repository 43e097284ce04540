"""What PST attends to: record coarse attention mass and the chosen fine regions, and draw them.

``AttentionRecorder`` puts forward hooks on the PST layers only while it is open, so the normal forward path pays
nothing. From each PSA call's inputs it recomputes the coarse score ``s`` (SPEC eq. 3) and the top-k selection with
the same ``pst_yolo.scoring`` / ``pst_yolo.selection`` functions the module uses, so it does not depend on how
``fine()`` is implemented.
Drawing uses OpenCV only (Hershey fonts built in): nothing is downloaded, unlike Ultralytics' plotting (Arial.ttf).

Each output PNG holds, per image: the input with detections (or top-5 classes), a feature heat map of every PST layer's
output (blue -> yellow, like the paper's Figure 4), and per PSA block and head the coarse attention mass ``s`` upsampled
to the image with that head's chosen 2x2 fine regions filled in magenta. A ``.json`` sidecar lists the regions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

HIGHLIGHT = (255, 0, 255)  # BGR magenta: never produced by the viridis overlay, so highlighted pixels always change
HEADER = 18  # pixels of caption strip above each tile (captions never cover tile pixels)
IMG_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}


@dataclass
class PSARecord:
    """One PSA call: coarse scores and (if fine attention ran) the selected fine positions, batch element first."""

    name: str  # module path, e.g. "model.13.m.0.attn"
    layer: int | None  # index of the PST row in the model YAML
    block: int  # stacked PSA block within the PST layer
    fine_hw: tuple[int, int]
    coarse_hw: tuple[int, int]
    scores: torch.Tensor  # (B, heads, M) mean attention probability per coarse token
    topk: int  # regions per head actually used (clamped to M), 0 if fine attention did not run
    index: torch.Tensor | None = None  # (B, heads, 4k) flat fine positions
    valid: torch.Tensor | None = None  # (B, heads, 4k) which of them took part

    @property
    def heads(self) -> int:
        return self.scores.shape[1]

    def fine_mask(self, b: int = 0, head: int = 0) -> np.ndarray:
        """Bool (H, W) on the fine grid: the fine tokens head ``head`` attended to."""
        mask = np.zeros(self.fine_hw[0] * self.fine_hw[1], bool)
        if self.index is not None:
            idx, ok = self.index[b, head].numpy(), self.valid[b, head].numpy()
            mask[idx[ok]] = True
        return mask.reshape(self.fine_hw)


@dataclass
class Recording:
    psa: list[PSARecord] = field(default_factory=list)
    features: dict[int, torch.Tensor] = field(default_factory=dict)  # PST layer index -> output (B, c2, H, W)


def _pst_layers(model: torch.nn.Module):
    from pst_yolo.modules import PST

    return [(name, m) for name, m in model.named_modules() if isinstance(m, PST)]


class AttentionRecorder:
    """Context manager recording every PST layer's attention during forward passes of ``model``.

    Args:
        model: ``nn.Module`` (or Ultralytics ``YOLO``) containing PST layers.
        layers (list[int] | None): PST layer indices (YAML row numbers) to record; None = all.

    Examples:
        >>> with AttentionRecorder(model) as rec:
        ...     model(img)
        >>> rec.recording.psa[0].scores.shape  # (B, heads, M)
    """

    def __init__(self, model, layers=None):
        model = getattr(model, "model", model)
        self.pst = _pst_layers(model)
        if not self.pst:
            raise ValueError(f"pst-yolo: {type(model).__name__} has no PST layer to visualise")
        known = [getattr(m, "i", None) for _, m in self.pst]
        if layers is not None:
            bad = sorted(set(layers) - set(known))
            if bad:
                raise ValueError(f"pst-yolo: --layer {bad} is not a PST layer of this model; PST layers: {known}")
            self.pst = [(n, m) for n, m in self.pst if getattr(m, "i", None) in layers]
        self.recording = Recording()
        self._handles = []

    def __enter__(self):
        self.recording = Recording()
        for name, pst in self.pst:
            layer = getattr(pst, "i", None)
            self._handles.append(pst.register_forward_hook(self._feature_hook(layer)))
            for b, block in enumerate(pst.m):
                hook = self._psa_hook(f"{name}.m.{b}.attn", layer, b)
                self._handles.append(block.attn.register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _feature_hook(self, layer):
        def hook(module, inputs, output):
            self.recording.features[layer] = output.detach().float().cpu()

        return hook

    def _psa_hook(self, name, layer, block):
        def hook(module, inputs, output):
            self.recording.psa.append(record_psa(module, *inputs, name=name, layer=layer, block=block))

        return hook


@torch.no_grad()
def record_psa(m, x: torch.Tensor, u: torch.Tensor, name="", layer=None, block=0) -> PSARecord:
    """Recompute scores and selection of PyramidSparseAttention ``m`` for inputs ``x`` (finer), ``u`` (coarser)."""
    from pst_yolo.linear_attention import linear_probabilities
    from pst_yolo.scoring import coarse_scores
    from pst_yolo.selection import select_fine_tokens

    h, w = x.shape[-2:]
    q, k = m._heads(m.q(x)), m._heads(m.k(u))
    if m.attn == "softmax":
        scores = coarse_scores(q, k, m.scale)
    else:  # the weights linear attention applies implicitly, averaged over queries like eq. 3
        scores = linear_probabilities(q.float(), k.float(), m.attn).mean(dim=-2)
    rec = PSARecord(name, layer, block, (h, w), tuple(u.shape[-2:]), scores.float().cpu(), 0)
    if m.topk > 0 and not m.training and m.attn == "softmax":
        index, valid = select_fine_tokens(scores, m.topk, m.threshold, u.shape[-1], h, w)
        rec.topk, rec.index, rec.valid = min(m.topk, scores.shape[-1]), index.cpu(), valid.cpu()
    return rec


# ------------------------------------------------------------------------------------------------------ drawing
def load_image(source) -> np.ndarray:
    """BGR uint8 image from a path or an array; a clear error for unreadable files."""
    import cv2

    if isinstance(source, np.ndarray):
        return source
    img = cv2.imread(str(source))
    if img is None:
        raise ValueError(f"pst-yolo: cannot read image {source}")
    return img


def prepare(img: np.ndarray, imgsz: int, task: str = "detect") -> np.ndarray:
    """Square ``imgsz`` BGR image as the model sees it: letterbox for detection, resize + centre crop for classify."""
    import cv2

    h, w = img.shape[:2]
    if task == "classify":
        r = imgsz / min(h, w)
        img = cv2.resize(img, (max(imgsz, round(w * r)), max(imgsz, round(h * r))), interpolation=cv2.INTER_LINEAR)
        top, left = (img.shape[0] - imgsz) // 2, (img.shape[1] - imgsz) // 2
        return np.ascontiguousarray(img[top : top + imgsz, left : left + imgsz])
    r = min(imgsz / h, imgsz / w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    out = np.full((imgsz, imgsz, 3), 114, np.uint8)
    top, left = (imgsz - nh) // 2, (imgsz - nw) // 2
    out[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """BGR uint8 (H, W, 3) -> RGB float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))).float().div(255).unsqueeze(0)


def heat(values: np.ndarray) -> np.ndarray:
    """Min-max normalised map -> BGR viridis colours (blue = low, yellow = high); a constant map is all low."""
    import cv2

    v = values.astype(np.float64)
    span = v.max() - v.min()
    v = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    return cv2.applyColorMap(np.round(v * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)


def overlay(img: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    import cv2

    return cv2.addWeighted(colours, alpha, img, 1 - alpha, 0)


def grid_to_pixels(grid: np.ndarray, cell: int, size: int) -> np.ndarray:
    """Nearest upsampling of a (h, w) grid by ``cell`` pixels per cell, cropped to ``size`` x ``size``."""
    return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:size, :size]


def highlight(tile: np.ndarray, mask: np.ndarray, colour=HIGHLIGHT, alpha: float = 0.4) -> np.ndarray:
    """Tint ``tile`` with ``colour`` where ``mask`` and outline the mask on its inner edge; pixels outside ``mask``
    stay exactly as they are, so the highlighted pixels are precisely the selected fine regions."""
    out = tile.copy()
    c = np.array(colour, np.float32)
    out[mask] = np.round(tile[mask] * (1 - alpha) + c * alpha).astype(np.uint8)
    pad = np.pad(mask, 1, constant_values=False)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    out[mask & ~inner] = colour
    return out


@dataclass
class Tile:
    """One panel of the output PNG; ``box`` is (x0, y0, x1, y1) of its pixels (caption excluded) in the canvas."""

    title: str
    image: np.ndarray  # final pixels
    base: np.ndarray | None = None  # pixels before the fine regions were highlighted
    mask: np.ndarray | None = None  # bool (T, T): highlighted fine regions
    record: PSARecord | None = None
    head: int | None = None
    box: tuple[int, int, int, int] | None = None


def psa_tiles(rec: PSARecord, img: np.ndarray, b: int = 0) -> list[Tile]:
    """Per head: coarse attention mass ``s`` on the image, with that head's selected 2x2 fine regions highlighted."""
    size = img.shape[0]
    fine_cell = size // rec.fine_hw[1]  # pixels per fine token (square input, imgsz a multiple of the stride)
    tiles = []
    for head in range(rec.heads):
        s = rec.scores[b, head].numpy().reshape(rec.coarse_hw)
        base = overlay(img, heat(grid_to_pixels(s, 2 * fine_cell, size)))
        mask = grid_to_pixels(rec.fine_mask(b, head), fine_cell, size)
        n_regions = int(rec.valid[b, head].view(-1, 4).any(-1).sum()) if rec.valid is not None else 0
        fine = f"{n_regions}/{rec.topk} fine" if rec.topk else "coarse only"
        title = f"L{rec.layer} b{rec.block} h{head}: s<={s.max():.3f}, {fine}"
        tiles.append(Tile(title, highlight(base, mask), base, mask, rec, head))
    return tiles


def feature_tile(feat: torch.Tensor, img: np.ndarray, layer, b: int = 0) -> Tile:
    """Mean activation of a PST output upsampled to the image (the paper's Figure 4 style heat map)."""
    import cv2

    f = feat[b].mean(0).numpy()
    f = cv2.resize(f, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    return Tile(f"L{layer} features", overlay(img, heat(f)))


def prediction_tile(model, output, img: np.ndarray, task: str, conf: float, b: int = 0) -> tuple[Tile, list]:
    """The input with detections (boxes) or top-5 classes, drawn with OpenCV's built-in font."""
    import cv2

    names = getattr(model, "names", None) or {}
    out = img.copy()
    preds = output[0] if isinstance(output, (list, tuple)) else output
    found = []
    if task == "classify":
        probs = preds[b].float()
        top = probs.topk(min(5, probs.numel()))
        for j, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            found.append({"class": names.get(c, str(c)), "conf": round(p, 4)})
            cv2.putText(out, f"{names.get(c, c)} {p:.2f}", (3, 12 + 12 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
        return Tile("top-5", out), found
    from ultralytics.utils.nms import non_max_suppression

    det = non_max_suppression(preds.float(), conf_thres=conf)[b]
    for *xyxy, p, c in det.tolist():
        x0, y0, x1, y1 = (int(round(v)) for v in xyxy)
        found.append({"class": names.get(int(c), str(int(c))), "conf": round(p, 4), "xyxy": [x0, y0, x1, y1]})
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), 1)
        cv2.putText(out, f"{names.get(int(c), int(c))} {p:.2f}", (x0, max(9, y0 - 2)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 255, 0), 1, cv2.LINE_AA)
    return Tile(f"detections ({len(found)})", out), found


def compose(rows: list[list[Tile]], size: int) -> np.ndarray:
    """Lay the tiles out in rows (each with a caption strip); sets every tile's ``box``."""
    import cv2

    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (size + HEADER), cols * size, 3), 255, np.uint8)
    for ri, row in enumerate(rows):
        for ci, tile in enumerate(row):
            x0, y0 = ci * size, ri * (size + HEADER) + HEADER
            canvas[y0 : y0 + size, x0 : x0 + size] = tile.image
            tile.box = (x0, y0, x0 + size, y0 + size)
            scale = min(0.4, (size - 4) / (20.0 * max(1, len(tile.title))))  # Hershey simplex: ~20 px/char at 1.0
            cv2.putText(canvas, tile.title, (x0 + 2, y0 - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return canvas


@dataclass
class Visual:
    """Everything drawn for one image: the canvas, its tiles (with masks) and the raw recording."""

    canvas: np.ndarray
    tiles: list[Tile]
    recording: Recording
    predictions: list
    path: Path | None = None


def model_task(model) -> str:
    task = getattr(model, "task", None)
    if task is None:
        from ultralytics.nn.tasks import guess_model_task

        task = guess_model_task(getattr(model, "model", model))
    if task not in ("detect", "classify"):
        raise ValueError(f"pst-yolo: the visualiser supports detect and classify models, got task {task!r}")
    return task


@torch.no_grad()
def render(model, image, imgsz: int = 320, layers=None, conf: float = 0.25, display: int = 320) -> Visual:
    """Run ``model`` (an Ultralytics ``YOLO`` or its ``nn.Module``) on one image and draw what PST attended to.

    Args:
        model: PST model; used as is (set eval mode / top-k beforehand, e.g. with ``pst_yolo.set_topk``).
        image (str | Path | np.ndarray): Image path or BGR array.
        imgsz (int): Square inference size (a multiple of the model stride).
        layers (list[int] | None): PST layer indices to show; None = all.
        conf (float): Detection confidence threshold.
        display (int): Minimum tile size in pixels; tiles are the inference image scaled by a whole factor, so every
            fine token covers a whole number of pixels.

    Returns:
        (Visual): canvas (BGR uint8), tiles with their fine-region masks, recording, predictions.
    """
    task = model_task(model)
    net = getattr(model, "model", model)
    stride = int(max(getattr(net, "stride", torch.tensor([32])).max().item(), 32))
    if imgsz % stride:
        raise ValueError(f"pst-yolo: imgsz={imgsz} must be a multiple of the model stride {stride}")
    img = prepare(load_image(image), imgsz, task)
    p = next(net.parameters())
    with AttentionRecorder(net, layers) as rec:
        output = net(to_tensor(img).to(p.device, p.dtype))
    zoom = max(1, math.ceil(display / imgsz))
    big = np.repeat(np.repeat(img, zoom, axis=0), zoom, axis=1)
    pred, found = prediction_tile(net if hasattr(net, "names") else model, output, img, task, conf)
    pred.image = np.repeat(np.repeat(pred.image, zoom, axis=0), zoom, axis=1)
    rows = [[pred] + [feature_tile(f, big, layer) for layer, f in sorted(rec.recording.features.items())]]
    for r in rec.recording.psa:
        rows.append(psa_tiles(r, big))
    canvas = compose(rows, big.shape[0])
    return Visual(canvas, [t for row in rows for t in row], rec.recording, found)


def summary(vis: Visual) -> dict:
    """JSON-able description of the selected regions (the sidecar written next to each PNG)."""
    out = {"predictions": vis.predictions, "psa": []}
    for r in vis.recording.psa:
        heads = []
        for h in range(r.heads):
            fine = np.flatnonzero(r.fine_mask(0, h).ravel()).tolist()
            heads.append({"fine_positions": fine, "score_max": float(r.scores[0, h].max())})
        out["psa"].append(
            {"layer": r.layer, "block": r.block, "fine_hw": list(r.fine_hw), "coarse_hw": list(r.coarse_hw),
             "topk": r.topk, "heads": heads}
        )
    return out


def sources(source) -> list[Path]:
    """Image files of ``source`` (one file, or a folder's images sorted by name)."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMG_SUFFIXES)
        if not files:
            raise ValueError(f"pst-yolo: no images ({', '.join(sorted(IMG_SUFFIXES))}) in folder {p}")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"pst-yolo: --source {p} is neither an image nor a folder")
    return [p]


def load_model(model, device="cpu", k=None):
    """A ``YOLO`` object in eval mode on ``device`` from a checkpoint/YAML name or an existing object."""
    from ultralytics import YOLO

    from pst_yolo.runtime import set_topk

    yolo = model if isinstance(model, YOLO) else YOLO(str(model))
    net = yolo.model
    net.to(device).float().eval()
    if k is not None:
        set_topk(net, k)
    return yolo


def visualize(
    model, source, out, imgsz=320, k=None, layers=None, conf=0.25, display=320, device="cpu", max_images=None
):
    """Write one PNG (+ JSON sidecar) per image of ``source`` to folder ``out``; returns the ``Visual`` of each."""
    import cv2

    yolo = load_model(model, device, k)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for f in sources(source)[:max_images]:
        vis = render(yolo, f, imgsz, layers, conf, display)
        vis.path = out / f"{f.stem}.png"
        if not cv2.imwrite(str(vis.path), vis.canvas):
            raise OSError(f"pst-yolo: could not write {vis.path}")
        (out / f"{f.stem}.json").write_text(json.dumps(summary(vis), indent=1))
        results.append(vis)
    return results
