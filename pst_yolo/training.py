"""PST's fine attention and the stock Ultralytics trainer: what the trainer validates, and what a checkpoint keeps.

PST trains coarse-only and can switch fine attention on at inference without retraining. Ultralytics validates during
training with the EMA model in eval mode, so left alone every epoch's metric, ``best.pt`` and early stopping would
follow the fine setting (k = 8), which training never produced, and a checkpoint would deploy it whatever it costs.
Two default callbacks (registered by ``pst_yolo.integration``) make what the trainer reports the accuracy of what a
user deploys:

- ``on_train_start``: every PST layer of the model and of its EMA validates at the setting it trains with
  (``train_topk``: 0, or ``PST_TRAIN_TOPK``); the layer's own k is kept as ``fine_k``.
- at the end of the last epoch, before Ultralytics' final validation of ``best.pt``: ``last.pt`` and ``best.pt`` are
  each validated through the trainer's own validator with fine attention (k = ``fine_k``) in every PST layer, in each
  layer alone (models with several) and in none (k = 0); the highest fitness wins (at a tie, the setting with more
  fine attention). The winner is stored in the checkpoint's PST layers, so ``yolo val``, ``yolo predict`` and ``yolo
  export`` use it, and with every figure in ``ckpt["pst_fine"]``. ``PST_TOPK`` and
  :func:`pst_yolo.runtime.set_topk` still override it when a checkpoint is loaded. ``PST_FINE_CHOICE=0`` skips the
  choice: the checkpoints then keep each layer's own k (the paper's inference setting).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from pst_yolo import fine_gain
from pst_yolo.switches import ENV_TOPK

ENV_CHOICE = "PST_FINE_CHOICE"
# Study switch: "1" writes where the gradients go, per epoch, into the run folder (pst_gradients.json): the squared
# gradient norm summed per top-level layer and the scale of every residual PST branch (its output BatchNorm weight).
ENV_GRADIENTS = "PST_GRADIENT_LOG"


def deployed(net):
    """The model that deploys, out of whatever Ultralytics wraps it in: ``torch.compile``'s ``_orig_mod``, DDP's
    ``module``, knowledge distillation's ``DistillationModel`` (``student_model``; its teacher is not the user's model,
    and a PST teacher keeps its own fine setting). None stays None."""
    while net is not None:
        inner = next((getattr(net, a) for a in ("_orig_mod", "module", "student_model")
                      if isinstance(getattr(net, a, None), torch.nn.Module)), None)
        if inner is None:
            return net
        net = inner
    return net


def pst_attention(net) -> list:
    """The PyramidSparseAttention modules of ``net`` (none for a stock model or None)."""
    from pst_yolo.modules import PyramidSparseAttention

    return [m for m in net.modules() if isinstance(m, PyramidSparseAttention)] if net is not None else []


def configured_k(layers) -> int:
    """The fine setting the layers were built with (the largest, if they differ; 0 if none refines)."""
    return max((m.topk if m.fine_k is None else m.fine_k for m in layers if m.attn == "softmax"), default=0)


def on_train_start(trainer) -> None:
    """Validate at the training setting: each layer's k (from its YAML row, ``PST_TOPK`` or ``set_topk``) becomes its
    ``fine_k`` and its active k its ``train_topk``; a resumed run keeps the ``fine_k`` its checkpoint carries."""
    resumed = getattr(trainer, "start_epoch", 0) > 0
    for net in (trainer.model, getattr(trainer.ema, "ema", None)):
        for m in pst_attention(deployed(net)):
            if not (resumed and m.fine_k is not None):
                m.fine_k = m.topk
            m.topk = m.train_topk
    if os.environ.get(ENV_GRADIENTS) == "1":
        GradientLog(trainer)


class GradientLog:
    """Where the gradients go (``PST_GRADIENT_LOG=1``): per epoch, each top-level layer's summed squared gradient norm
    (hooks on its parameters) and each residual PST branch's scale, appended to <run>/pst_gradients.json."""

    def __init__(self, trainer):
        import json

        from pst_yolo.modules import C3k2PST

        self.sums, self.epochs, self.path = {}, [], Path(trainer.save_dir) / "pst_gradients.json"
        net = deployed(trainer.model)
        for i, layer in enumerate(getattr(net, "model", [])):
            for p in layer.parameters():
                if p.requires_grad:
                    p.register_hook(lambda g, i=i: self.add(i, g))
        branches = {i: m for i, m in enumerate(getattr(net, "model", [])) if isinstance(m, C3k2PST)}

        def epoch_end(trainer):
            scale = {i: float(m.pst.cv2.bn.weight.abs().mean()) for i, m in branches.items()}
            self.epochs.append({"epoch": trainer.epoch + 1, "grad_sq": dict(self.sums), "branch_scale": scale})
            self.sums.clear()
            self.path.write_text(json.dumps(self.epochs))

        trainer.add_callback("on_train_epoch_end", epoch_end)

    def add(self, layer: int, grad: torch.Tensor) -> None:
        self.sums[layer] = self.sums.get(layer, 0.0) + float(grad.float().norm()) ** 2


def on_fit_epoch_end(trainer) -> None:
    """After the last epoch's checkpoints are written (and before the final validation): choose and store the fine
    setting of ``last.pt`` and ``best.pt``."""
    from ultralytics.utils import RANK

    if RANK not in {-1, 0} or not trainer.stop or getattr(trainer, "_pst_fine_chosen", False):
        return
    trainer._pst_fine_chosen = True  # Ultralytics' final validation runs this callback once more
    k = configured_k(pst_attention(deployed(getattr(trainer.ema, "ema", None))))
    if k == 0:
        return
    keep = os.environ.get(ENV_CHOICE, "1").strip() == "0"
    # A time-limited run (`time=`, and each `yolo tune` iteration that sets it) is already at its limit: the choice
    # tries fine attention everywhere and nowhere only (two validations, not one per PST layer more).
    both_only = bool(getattr(trainer.args, "time", None))
    done = {}
    for path in (Path(trainer.last), Path(trainer.best)):
        if path.is_file():
            done[path] = choose_fine(trainer.validator, path, k, keep=keep, previous=done, both_only=both_only)


def settings(net, k: int, both_only: bool = False) -> dict:
    """The fine settings the choice tries, as ``{name: {layer index: k}}`` in order of preference at a tie: every PST
    layer at ``k`` (``str(k)``); with several PST layers, each alone (``f"{k}@{i}"``, not with ``both_only``); none
    (``"0"``)."""
    layers = [i for i, m in enumerate(deployed(net).model) if pst_attention(m)]
    tried = {str(k): dict.fromkeys(layers, k)}
    if len(layers) > 1 and not both_only:
        tried.update({f"{k}@{i}": {j: k if j == i else 0 for j in layers} for i in layers})
    tried["0"] = dict.fromkeys(layers, 0)
    return tried


def choose_fine(validator, path: Path, k: int, keep: bool = False, previous: dict | None = None,
                both_only: bool = False) -> dict:
    """Validate checkpoint ``path`` at every setting of :func:`settings` and store the best in it (the first in their
    order at a tie: fine attention where it does not cost); returns ``ckpt["pst_fine"]``. The checkpoint's
    ``train_metrics`` become the chosen setting's (what ``yolo tune`` reads as an iteration's fitness: the setting
    that deploys, not the training setting the epoch's validation ran at).

    Args:
        validator: An Ultralytics validator (the trainer's: same data, image size and batch as training).
        path (Path): The checkpoint, rewritten in place.
        k (int): The fine setting to try (in all PST layers, and in each alone).
        keep (bool): Do not choose: store ``k`` in every layer (the layers' own setting), with every figure.
        previous (dict | None): Choices already made in this run, by path: a checkpoint of the same epoch reuses them.
        both_only (bool): Try ``k`` in every layer and in none only (see :func:`settings`).
    """
    from ultralytics.utils import LOGGER
    from ultralytics.utils.patches import torch_load

    ckpt = torch_load(path, map_location="cpu")
    tried = settings(ckpt["ema"] if isinstance(ckpt.get("ema"), torch.nn.Module) else ckpt["model"], k, both_only)
    same = next((c for p, c in (previous or {}).items() if c.get("epoch") == ckpt.get("epoch")), None)
    start = time.perf_counter()
    if same is not None:
        fitness, per_image, metrics = same["fitness"], None, same.get("_metrics", {})
    else:
        fitness, per_image, metrics = {}, {}, {}
        for setting, layers in tried.items():
            with fine_gain.per_image_stats(validator, per_image.setdefault(setting, {})):
                metrics[setting] = _validate(validator, ckpt, layers, path.parent / f".pst-fine-{setting}.pt")
            fitness[setting] = round(float(metrics[setting].get("fitness", 0.0)), 6)
    seconds = time.perf_counter() - start
    name = str(k) if keep else max(tried, key=lambda n: (fitness[n], -list(tried).index(n)))
    if isinstance(ckpt.get("train_metrics"), dict) and name in metrics:
        ckpt["train_metrics"].update({key: v for key, v in metrics[name].items() if key in ckpt["train_metrics"]})
    info = {"k": max(tried[name].values()), "layers": {str(i): v for i, v in tried[name].items()}, "setting": name,
            "fitness": fitness, "epoch": ckpt.get("epoch"), "chosen_by": "kept" if keep else "fitness"}
    if same is not None:
        info.update({key: same[key] for key in ("gain", "cost") if key in same})
    else:
        info.update(_gain_and_cost(ckpt, tried, name if name != "0" else str(k), per_image, validator))
    store_fine(ckpt, info, k)
    torch.save(ckpt, path)
    info["_metrics"] = metrics  # for a checkpoint of the same epoch (previous=), not stored
    figures = ", ".join(f"{f:.5f} at {setting_label(n)}" for n, f in fitness.items())
    cost = "reused from the same epoch" if same is not None else f"{len(tried)} validations, {seconds:.1f} s"
    what = fine_gain.describe(info)
    LOGGER.info(f"pst-yolo: fine attention in {path.name}: fitness {figures} -> {'kept' if keep else 'chose'} "
                f"{setting_label(name)} ({ENV_TOPK}=<k> overrides it at load; {cost})"
                + (f"; {setting_label(info['gain']['setting'])}: {what}" if what and "gain" in info else
                   f"; {what}" if what else ""))
    return info


def _gain_and_cost(ckpt: dict, tried: dict, setting: str, per_image: dict, validator) -> dict:
    """``gain``: the paired bootstrap of ``setting``'s mAP50-95 over k=0's on the validation images (when the task's
    validator collects per-image matches); ``cost``: the FLOPs that setting adds at the validation image size."""
    out = {}
    if per_image.get(setting) and per_image.get("0"):
        out["gain"] = {"setting": setting, **fine_gain.paired_bootstrap(per_image[setting], per_image["0"])}
    imgsz = validator.args.imgsz
    imgsz = imgsz[0] if isinstance(imgsz, (list, tuple)) else int(imgsz)
    net = ckpt["ema"] if isinstance(ckpt.get("ema"), torch.nn.Module) else ckpt["model"]
    out["cost"] = {"setting": setting, **fine_gain.fine_flops(net, imgsz, tried[setting])}
    return out


def setting_label(name: str) -> str:
    """A setting of :func:`settings` in words: ``"8"`` -> ``"k=8"``, ``"8@16"`` -> ``"k=8 in layer 16"``."""
    return "k=" + name.replace("@", " in layer ")


def store_fine(ckpt: dict, info: dict, k: int) -> None:
    """Put the fine setting of ``info`` into checkpoint dict ``ckpt``: each PST layer's ``topk`` (``info["layers"]``
    by layer index, else ``info["k"]`` everywhere; what ``yolo val``, ``predict`` and ``export`` use), their ``fine_k``
    (``k``, the setting tried) and ``ckpt["pst_fine"] = info``."""
    for key in ("ema", "model"):
        net = deployed(ckpt.get(key))
        if not isinstance(net, torch.nn.Module):
            continue
        for i, layer in enumerate(getattr(net, "model", [net])):
            for m in pst_attention(layer):
                m.fine_k = k if m.fine_k is None else m.fine_k
                m.topk = int(info.get("layers", {}).get(str(i), info["k"]))
        # on the model too, so that an export (which gets the model, not the checkpoint) can say what it buys
        net.pst_fine = {key: info[key] for key in ("k", "setting", "gain", "cost") if key in info}
    ckpt["pst_fine"] = info


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _validate(validator, ckpt: dict, layers: dict, scratch: Path) -> dict:
    """The validator's metrics (fitness included) of checkpoint ``ckpt`` with fine attention at ``layers`` ({layer
    index: k}), written to ``scratch`` and loaded from there the way ``yolo val`` loads a checkpoint; no plots."""
    import copy

    trial = dict(ckpt)
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), torch.nn.Module):
            trial[key] = copy.deepcopy(deployed(ckpt[key]))  # the student of a distillation: what `yolo val` loads
    store_fine(trial, {"k": max(layers.values(), default=0), "layers": {str(i): v for i, v in layers.items()}},
               max(layers.values(), default=0))
    plots, compiled = validator.args.plots, getattr(validator.args, "compile", False)
    # eager, whatever `compile=` says: one validation per setting, each compiling anew, took minutes a batch (as for
    # Ultralytics' own final validation, which also runs uncompiled)
    validator.args.plots, validator.args.compile = False, False
    try:
        torch.save(trial, scratch)
        with _env(ENV_TOPK, ""):  # the checkpoint's own setting: a PST_TOPK of the environment would override it
            stats = validator(model=str(scratch))
    finally:
        validator.args.plots, validator.args.compile = plots, compiled
        scratch.unlink(missing_ok=True)
    return {key: float(v) for key, v in stats.items() if isinstance(v, (int, float))}
