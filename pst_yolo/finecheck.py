"""What fine attention does to a trained PST checkpoint: validated at every setting, per layer, with the activation shift.

PST trains coarse-only and switches fine attention on at inference without retraining, so at eval the layers after a
PSA see an input training never produced. For one checkpoint this module measures, on a data set's validation split:

- mAP at k = 0 and at k = ``k`` for every fusion (``add``: the paper's sum, eq. 6; ``joint``: one softmax over the
  unrefined coarse keys and the refined regions' fine tokens), with fine attention in all PST layers and in each alone;
- the same after re-estimating the BatchNorm statistics from the first PST layer on with fine attention on (from
  ``bn`` training images, no augmentation), and at k = 0 after the same re-estimation (its control);
- the activation shift per PST layer: per channel, the mean and std of the PSA output and of the first BatchNorm after
  it (the block MLP's) over the validation images, fine attention on against off, summarised as the mean over
  channels of |mean_on - mean_off| / std_off and of std_on / std_off.

    pst-yolo finecheck runs/detect/train/weights/last.pt data=my.yaml imgsz=640 --per-layer --bn 256 --stats
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from pathlib import Path

import torch

from pst_yolo.runtime import set_fusion, set_topk


def pst_layers(net) -> list:
    """Indices (in ``net.model``) of the layers that hold a PyramidSparseAttention."""
    from pst_yolo.training import pst_attention

    return [i for i, m in enumerate(net.model) if pst_attention(m)]


def configure(net, k: int, fusion: str = "add", layers=None) -> None:
    """Fine attention at ``k`` with ``fusion`` in the PST layers ``layers`` (indices; None: all), off elsewhere."""
    from pst_yolo.training import pst_attention

    set_fusion(net, fusion)
    set_topk(net, 0)
    for i in pst_layers(net) if layers is None else layers:
        for m in pst_attention(net.model[i]):
            m.topk = k


def validate(net, data, imgsz: int, batch: int = 16, device: str = "cpu") -> tuple[float, float]:
    """(mAP50-95, mAP50) of ``net`` (an Ultralytics model module) with the stock validator, quietly."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel("WARNING")
    try:
        args = dict(data=str(data), imgsz=imgsz, batch=batch, device=device, workers=0, plots=False, verbose=False,
                    save_json=False, mode="val", project=str(Path(tempfile.gettempdir()) / "pst-finecheck"),
                    name="val", exist_ok=True)
        r = DetectionValidator(args=args)(model=copy.deepcopy(net))
    finally:
        LOGGER.setLevel(level)
    return round(float(r["metrics/mAP50-95(B)"]), 4), round(float(r["metrics/mAP50(B)"]), 4)


def images(folder, n: int, imgsz: int) -> torch.Tensor:
    """Up to ``n`` images of ``folder`` (sorted), letterboxed square as the validator feeds them, (n, 3, s, s) in
    [0, 1]."""
    import cv2
    import numpy as np
    from ultralytics.data.augment import LetterBox

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:n]
    box = LetterBox((imgsz, imgsz), auto=False)
    ims = [box(image=cv2.imread(str(f)))[..., ::-1] for f in files]
    return torch.from_numpy(np.ascontiguousarray(np.stack(ims).transpose(0, 3, 1, 2))).float() / 255


def reestimate_bn(net, x: torch.Tensor, batch: int = 16) -> int:
    """BatchNorm running statistics from the first PST layer on, re-estimated as a plain average over ``x`` with the
    network in eval mode otherwise (fine attention as configured); returns the number of BatchNorms."""
    first = pst_layers(net)[0]
    bns = [b for m in net.model[first:] for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    net.eval()
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # a cumulative average over every batch
        b.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            net(x[i : i + batch])
    for b in bns:
        b.eval()
    return len(bns)


def activation_shift(net, x: torch.Tensor, k: int, fusion: str, batch: int = 16) -> dict:
    """Per PST layer: the PSA output's and the next BatchNorm's per-channel mean / std, fine attention on against off.

    Returns:
        (dict): layer index -> {"psa": (mean |dmean| / std_off, mean std_on / std_off), "bn": (...)}.
    """
    from pst_yolo.modules import PSTBlock

    blocks = {i: next(m for m in net.model[i].modules() if isinstance(m, PSTBlock)) for i in pst_layers(net)}
    stats = {}
    for setting in ("off", "on"):
        configure(net, k if setting == "on" else 0, fusion)
        seen = {(i, where): [] for i in blocks for where in ("psa", "bn")}
        hooks = []
        for i, block in blocks.items():
            hooks.append(block.attn.register_forward_hook(lambda m, a, o, i=i: seen[i, "psa"].append(o)))
            hooks.append(block.mlp[0].bn.register_forward_hook(lambda m, a, o, i=i: seen[i, "bn"].append(o)))
        with torch.no_grad():
            for j in range(0, len(x), batch):
                net(x[j : j + batch])
        for h in hooks:
            h.remove()
        for key, outs in seen.items():
            t = torch.cat([o.transpose(0, 1).flatten(1) for o in outs], dim=1)  # (C, everything else)
            stats[setting, key] = (t.mean(1), t.std(1))
    out = {}
    for i in blocks:
        out[i] = {}
        for where in ("psa", "bn"):
            (m0, s0), (m1, s1) = stats["off", (i, where)], stats["on", (i, where)]
            s0 = s0.clamp(min=1e-6)
            out[i][where] = (round(float(((m1 - m0).abs() / s0).mean()), 4), round(float((s1 / s0).mean()), 4))
    return out


def finecheck(weights, data, imgsz: int, k: int = 8, fusions=("add", "joint"), per_layer: bool = False, bn: int = 0,
              stats: int = 0, batch: int = 16, device: str = "cpu", bn_data=None) -> dict:
    """Every measurement of the module docstring for one checkpoint; returns a JSON-ready dict.

    Args:
        weights (str | Path): The checkpoint.
        data (str | Path): Data YAML; its val split is validated on, its train split feeds the BN re-estimation.
        imgsz (int): Validation size.
        k (int): The fine setting compared with k = 0.
        fusions (tuple): Fusions to measure.
        per_layer (bool): Also fine attention in each PST layer alone.
        bn (int): Training images for the BN re-estimation (0: not measured).
        stats (int): Validation images for the activation shift (0: not measured).
        bn_data (str | Path | None): Data YAML whose train split feeds the BN re-estimation (default: ``data``).
    """
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset

    model = YOLO(str(weights))
    base = model.model.float().eval()
    stored = (getattr(model, "ckpt", None) or {}).get("pst_fine") or {}
    result = {"weights": str(weights), "k": k, "layers": pst_layers(base), "map": {}, "shift": {},
              "stored": {key: stored[key] for key in ("k", "setting", "gain", "cost") if key in stored}}
    info = check_det_dataset(str(data))

    def run(name, net):
        result["map"][name] = validate(net, data, imgsz, batch, device)

    net = copy.deepcopy(base)
    configure(net, 0)
    run("k=0", net)
    for fusion in fusions:
        configure(net, k, fusion)
        run(f"{fusion} k={k}", net)
        if per_layer and len(result["layers"]) > 1:
            for i in result["layers"]:
                configure(net, k, fusion, [i])
                run(f"{fusion} k={k} layer {i}", net)
    if bn:
        x = images(check_det_dataset(str(bn_data))["train"] if bn_data else info["train"], bn, imgsz)
        for fusion, kk in [("add", 0), *((f, k) for f in fusions)]:
            net = copy.deepcopy(base)
            configure(net, kk, fusion)
            reestimate_bn(net, x, batch)
            run("k=0 + BN re-estimated" if kk == 0 else f"{fusion} k={k} + BN re-estimated", net)
    if stats:
        x = images(info["val"], stats, imgsz)
        for fusion in fusions:
            result["shift"][fusion] = activation_shift(copy.deepcopy(base), x, k, fusion, batch)
    return result


def markdown(results: list) -> str:
    """Per-checkpoint rows: each setting's mAP50-95 and its difference to k=0."""
    lines = ["| checkpoint | setting | mAP50-95 | mAP50 | vs k=0 |", "|---|---|---:|---:|---:|"]
    for r in results:
        base = r["map"]["k=0"][0]
        for name, (m, m50) in r["map"].items():
            lines.append(f"| {r['weights']} | {name} | {m:.4f} | {m50:.4f} | {m - base:+.4f} |")
    stored = [(r["weights"], r["stored"]) for r in results if r.get("stored")]
    if stored:
        from pst_yolo.fine_gain import describe

        lines += ["", "| checkpoint | stored setting | what it buys and costs (recorded when training ended) |",
                  "|---|---|---|"]
        lines += [f"| {w} | k={s.get('k')} ({s.get('setting', '?')}) | {describe(s) or 'not recorded (older checkpoint)'} |"
                  for w, s in stored]
    shifts = [(r["weights"], f, i, s) for r in results for f, per in r["shift"].items() for i, s in per.items()]
    if shifts:
        lines += ["", "| checkpoint | fusion | layer | PSA out: mean shift / std | std ratio | next BN: mean shift / std "
                  "| std ratio |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {w} | {f} | {i} | {s['psa'][0]:.3f} | {s['psa'][1]:.3f} | {s['bn'][0]:.3f} | {s['bn'][1]:.3f} |"
                  for w, f, i, s in shifts]
    return "\n".join(lines) + "\n"


def summary(values: list) -> str:
    """``mean ± std`` of a list of numbers (std 0 for one)."""
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


TOLERANCE = 0.005  # "fine attention never costs": a setting within this of k=0 on a checkpoint does not cost


def matrix(results: list, names=None) -> str:
    """Checkpoints as rows, settings as columns (mAP50-95), then the mean ± std, the worst checkpoint, the mean
    difference to k=0, the worst difference, and on how many checkpoints the setting is no worse than k=0 -
    ``TOLERANCE``.

    Args:
        results (list): ``finecheck()`` results (or the JSON lists ``pst-yolo finecheck --out`` writes, concatenated).
        names (dict | None): checkpoint path -> row label (default: the path).
    """
    settings = [s for s in results[0]["map"] if all(s in r["map"] for r in results)]
    lines = ["| checkpoint | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
    for r in results:
        label = (names or {}).get(r["weights"], r["weights"])
        lines.append(f"| {label} | " + " | ".join(f"{r['map'][s][0]:.4f}" for s in settings) + " |")
    column = {s: [r["map"][s][0] for r in results] for s in settings}
    diff = {s: [a - b for a, b in zip(column[s], column["k=0"])] for s in settings}
    rows = {"mean ± std": [summary(column[s]) for s in settings],
            "worst": [f"{min(column[s]):.4f}" for s in settings],
            "vs k=0: mean": [f"{statistics.fmean(diff[s]):+.4f}" for s in settings],
            "vs k=0: worst": [f"{min(diff[s]):+.4f}" for s in settings],
            f"no worse than k=0 - {TOLERANCE}": [f"{sum(d >= -TOLERANCE for d in diff[s])}/{len(results)}"
                                                  for s in settings]}
    lines += [f"| **{name}** | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return "\n".join(lines) + "\n"
