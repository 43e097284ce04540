"""Init-matched controls: what a PST model's training would have reached with PST not applied.

On small data a YOLO's result swings with its initialisation, and adding a layer re-draws the initialisation of every
layer built after it. Comparing a PST model with stock seeds alone mixes the two effects. The control of a PST model
at seed s is the stock network it replaces (``control_base``: ``yolo11n-pst-res.yaml`` -> ``yolo11n.yaml``) started
from the PST model's own initial weights at seed s: ``yolo train model=<stock> seed=s pretrained=<init>``, where
``<init>`` holds the weights ``yolo train model=<PST model> seed=s`` starts from (``initial_weights``: the same trainer,
seeding and model construction). Ultralytics transfers every tensor whose name and shape the two networks share:

- a residual model (``C3k2PST``, the stock C3k2 under its stock parameter names plus a PST branch) shares every stock
  tensor, so its control is the residual model with the branch never added (the ``branch: false`` probe): the stock
  function on exactly the residual model's initialisation. Since the branch draws from a stream of its own
  (``pst_yolo.modules.own_random_stream``, 2026-12-06), that initialisation is the stock model's at the same seed, so
  the control of a residual model now repeats the stock arm (checkpoints and studies from before drew them apart);
- the paper's layout (a ``PST`` in place of a C3k2) shares every layer but the replaced ones, which the control gets
  as stock C3k2 blocks from the stock model's own seeded initialisation.

The data order is the same in both arms (Ultralytics seeds its loaders from ``seed``, not from the model), so the
paired difference PST - control cancels the initialisation and data-order luck both arms share.
"""

from __future__ import annotations

import re
from pathlib import Path

SUFFIX = "-control"


def control_base(model: str) -> str:
    """The stock model a PST model replaces, by name: ``yolo11n-pst-res.yaml`` -> ``yolo11n.yaml``,
    ``yolo26n-seg-pst.yaml`` -> ``yolo26n-seg.yaml``. Raises ValueError for a name without ``-pst``."""
    name = Path(str(model)).name
    base, n = re.subn(r"-pst(?:-[A-Za-z0-9]+)*(?=\.yaml$)", "", name)
    if not n:
        raise ValueError(f"pst-yolo: no stock model for {model!r}: a control needs a PST model named <stock>-pst*.yaml "
                         "(e.g. yolo11n-pst-res.yaml -> yolo11n.yaml)")
    if re.match(r"r\d+[.-]", base):
        raise ValueError(f"pst-yolo: {model!r} is a ResNet PST model; Ultralytics ships no stock {base} to control it")
    return base


def initial_weights(model: str, data, seed: int, settings: dict, path: Path) -> Path:
    """Save the weights ``yolo train model=<model> data=<data> seed=<seed> <settings>`` starts training from, as a
    checkpoint that ``pretrained=`` reads; returns ``path``.

    The task's own trainer is built with the same arguments (it seeds torch with ``seed + 1`` in its constructor) and
    builds the model as its training would, before any step; nothing is trained. A ``pretrained=`` checkpoint in
    ``settings`` (the fine-tuning path) is loaded as the training would load it, so the control of a fine-tuned PST
    model starts from the same transferred weights and the same freshly drawn remainder (a new head, the branch)."""
    import torch
    from ultralytics import YOLO

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ultralytics.cfg import smart_value

    trainer_class = YOLO(model)._smart_load("trainer")
    # extra arguments arrive as the command line's strings ("close_mosaic=10"): typed as `yolo train` types them
    settings = {k: smart_value(v) if isinstance(v, str) else v for k, v in settings.items()}
    overrides = {**settings, "model": model, "data": str(data), "seed": int(seed), "deterministic": True,
                 "workers": 0, "plots": False, "project": str(path.parent / "trainer"), "name": path.stem,
                 "exist_ok": True, "mode": "train", "pretrained": pretrained_checkpoint(settings) or False}
    trainer = trainer_class(overrides=overrides)
    trainer.setup_model()
    torch.save({"model": trainer.model, "train_args": {"model": model, "seed": int(seed)}}, path)
    return path


def shared_tensors(control_state: dict, pst_state: dict) -> list[str]:
    """Names of the tensors a control takes from its PST model (same name and shape), in the control's order."""
    return [k for k, v in control_state.items() if k in pst_state and pst_state[k].shape == v.shape]


def pretrained_checkpoint(settings: dict) -> str | None:
    """The checkpoint file a ``pretrained=`` training argument names (None: no file, e.g. ``pretrained=True``)."""
    value = settings.get("pretrained")
    return str(value) if isinstance(value, (str, Path)) and str(value).endswith(".pt") else None
