"""What a checkpoint's fine-attention setting buys and what it costs, from the checkpoint and the model.

- Gain: the paired difference in mAP50-95 between two fine settings validated on the same images, with a bootstrap
  interval: images are resampled with replacement (the same resample for both settings, so the pairing is kept) and
  mAP50-95 recomputed from the per-image matches Ultralytics' validator collected. "within noise" when the 90%
  interval holds 0.
- Cost: the FLOPs fine attention adds to one forward at the trained image size, counted by torch's FlopCounterMode on
  the model with the explicit (``reference``) attention kernel (the fused CPU kernel reports no FLOPs).

``pst_yolo.training`` stores both in ``ckpt["pst_fine"]`` when training ends and says them in its log line; ``yolo
export`` of a checkpoint that stores fine attention says them again (``pst_yolo.integration``), and ``pst-yolo
finecheck`` prints them.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

RESAMPLES = 200
LEVEL = 0.90


@contextlib.contextmanager
def per_image_stats(validator, into: dict):
    """While active, each validation of ``validator`` leaves its per-image match statistics in ``into`` (``tp``,
    ``conf``, ``pred_cls``, ``target_cls``: one array per image, in the dataloader's order) before Ultralytics clears
    them; tasks without them (classification) leave ``into`` empty."""
    original = validator.get_stats

    def get_stats():
        stats = getattr(getattr(validator, "metrics", None), "stats", None)
        if isinstance(stats, dict) and all(k in stats for k in ("tp", "conf", "pred_cls", "target_cls")):
            into.clear()
            into.update({k: list(stats[k]) for k in ("tp", "conf", "pred_cls", "target_cls")})
        return original()

    validator.get_stats = get_stats
    try:
        yield into
    finally:
        del validator.get_stats  # the class's method again


def map50_95(stats: dict, images=None) -> float:
    """mAP50-95 of per-image statistics, over ``images`` (indices, repeats allowed; default all)."""
    from ultralytics.utils.metrics import ap_per_class

    idx = range(len(stats["tp"])) if images is None else images
    cat = {k: np.concatenate([stats[k][i] for i in idx], 0) for k in ("tp", "conf", "pred_cls", "target_cls")}
    if not len(cat["target_cls"]) or not len(cat["tp"]):
        return 0.0
    ap = ap_per_class(cat["tp"], cat["conf"], cat["pred_cls"], cat["target_cls"], plot=False)[5]
    return float(ap.mean()) if ap.size else 0.0


def paired_bootstrap(stats: dict, base: dict, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """The mAP50-95 of ``stats`` minus that of ``base`` (the same images, the same order), with a ``level`` bootstrap
    interval over ``resamples`` resamples of the images."""
    n = len(stats["tp"])
    if n != len(base["tp"]) or n == 0:
        raise ValueError(f"pst-yolo: paired bootstrap needs the same images in both validations, got {n} and "
                         f"{len(base['tp'])}")
    gain = map50_95(stats) - map50_95(base)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        images = rng.integers(0, n, n)
        diffs.append(map50_95(stats, images) - map50_95(base, images))
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return dict(map50_95=round(gain, 6), interval=[round(float(low), 6), round(float(high), 6)], level=level,
                resamples=resamples, images=n, within_noise=bool(low <= 0 <= high))


def fine_flops(model: torch.nn.Module, imgsz: int, layers: dict) -> dict:
    """GFLOPs of one eval forward at ``imgsz`` with fine attention at ``layers`` ({layer index: k}) and with none."""
    from pst_yolo.attention import get_backend, set_backend
    from pst_yolo.tools.models import full_gflops
    from pst_yolo.training import deployed, pst_attention

    net = copy.deepcopy(deployed(model)).float()
    counts = {}
    previous = get_backend()
    set_backend("reference")  # SDPA's fused CPU kernel counts 0 FLOPs
    try:
        for name, setting in (("k0", {}), ("fine", layers)):
            for i, layer in enumerate(net.model):
                for m in pst_attention(layer):
                    m.topk = int(setting.get(i, setting.get(str(i), 0)))
            counts[name] = full_gflops(net, imgsz, None)
    finally:
        set_backend(None if previous == "auto" else previous)
    return dict(imgsz=imgsz, gflops_k0=round(counts["k0"], 4), gflops=round(counts["fine"], 4),
                extra_gflops=round(counts["fine"] - counts["k0"], 4),
                ratio=round(counts["fine"] / counts["k0"], 4) if counts["k0"] else None)


def describe(info: dict) -> str:
    """One line: what the stored setting buys on validation and what it adds to a forward."""
    gain, cost = info.get("gain"), info.get("cost")
    parts = []
    if gain:
        lo, hi = gain["interval"]
        noise = "within noise" if gain["within_noise"] else "outside noise"
        parts.append(f"{gain['map50_95']:+.4f} mAP50-95 over k=0 on validation ({int(gain['level'] * 100)}% interval "
                     f"{lo:+.4f}..{hi:+.4f}, {gain['images']} images: {noise})")
    if cost:
        parts.append(f"+{cost['extra_gflops']:.3f} GFLOPs ({cost['ratio']:.3f}x k=0's) at {cost['imgsz']} px")
    return "; ".join(parts)
