"""The ablation switches of the paper's Table 4 as PST arguments, and how YAML rows spell them.

PST's YAML row is ``[[finer, coarser], n, PST, [c2, mlp_ratio, e, k, threshold, backend, gating, shared_kv, attn]]``
(every argument after c2 optional, positional in this order). The row's ``n`` is the number of stacked PSA blocks
(Table 4b) and, like every Ultralytics layer, is depth-scaled when > 1: ``max(round(n * depth), 1)``.
A dict as the LAST arg sets any of them by name, e.g. ``[512, {gating: true, attn: relu}]`` or
``[512, 2.0, 0.5, 16, {shared_kv: false}]`` (Ultralytics' ``parse_model`` passes dicts through untouched;
``pst_yolo.integration`` turns it into positional arguments).

Defaults are the paper's final design: k=8, one block, no gating (Table 4c), shared K/V (Table 4e), softmax (Table 4d).
"""

from __future__ import annotations

import os

# Order of PST's arguments after (c1, c_up, c2, n); a YAML row lists them after c2 (n comes from the row).
ARG_ORDER = ("mlp_ratio", "e", "k", "threshold", "backend", "gating", "shared_kv", "attn", "init", "cpe", "layer_scale",
             "fusion")
DEFAULTS = {
    "mlp_ratio": 2.0,
    "e": 0.5,
    "k": 8,
    "threshold": 1e-6,
    "backend": None,
    "gating": False,
    "shared_kv": True,
    "attn": "softmax",
    "init": "trunc_normal",
    "cpe": "bilinear",
    "layer_scale": None,
    "fusion": "joint",
}
# Coarse attention kinds: softmax (the paper's), or linear attention (Katharopoulos et al. 2020) with a ReLU or
# ELU+1 feature map; linear attention never forms softmax probabilities, so it has no fine branch.
ATTN_KINDS = ("softmax", "relu", "elu")
# Convolution init of the PSA blocks: PyTorch's default, or the authors' release (trunc-normal std 0.02, zero bias).
INIT_KINDS = ("default", "trunc_normal")
# How the CPE (computed on the coarse grid) is brought to the finer grid; "none" leaves the CPE out (no pe conv).
CPE_MODES = ("nearest", "bilinear", "none")
# How fine attention joins the coarse output: the paper's sum (eq. 6), or one softmax over the unrefined coarse keys and
# the refined regions' fine tokens (pst_yolo.fine; docs/accuracy.md, "Fine attention that never costs").
FUSIONS = ("add", "joint")
ENV_FUSION = "PST_FUSION"


def check_flag(value, name: str, where: str) -> bool:
    """A YAML/Python boolean switch (True/False, or 1/0); anything else is an error naming the layer and argument."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{where}: {name} must be true or false, got {value!r}")


def check_attn(value, where: str) -> str:
    """The attention kind, one of ``ATTN_KINDS`` (case-insensitive)."""
    if isinstance(value, str) and value.lower() in ATTN_KINDS:
        return value.lower()
    raise ValueError(f"{where}: attn must be one of {list(ATTN_KINDS)}, got {value!r}")


def check_switches(gating, shared_kv, attn, where: str = "PST") -> tuple[bool, bool, str]:
    """Validate the Table 4c-e switches; returns ``(gating, shared_kv, attn)`` normalised."""
    return check_flag(gating, "gating", where), check_flag(shared_kv, "shared_kv", where), check_attn(attn, where)


def check_choice(value, name: str, choices, where: str) -> str:
    """A string option from ``choices`` (case-insensitive); anything else is an error naming the layer and argument."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ValueError(f"{where}: {name} must be one of {list(choices)}, got {value!r}")


def check_branch_scale(value, name: str, where: str, optional: bool = False) -> float | None:
    """The initial weight of a residual branch's last BatchNorm (``layer_scale``, ``residual_init``): a number >= 0, or
    None where ``optional`` (BatchNorm's own init, weight 1)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{where}: {name} must be {'null or ' if optional else ''}a number >= 0, got {value!r}")
    return float(value)


def yaml_args(args: list, where: str) -> list:
    """PST args after c2 from a YAML row, with a trailing dict expanded into positional arguments.

    Args:
        args (list): The row's args after c2, e.g. ``[2.0, 0.5, 8]`` or ``[{"gating": True}]``.
        where (str): Layer name for errors, e.g. ``"PST layer 13"``.

    Returns:
        (list): Positional arguments in ``ARG_ORDER`` (no longer than needed).
    """
    args = list(args)
    if len(args) > len(ARG_ORDER) + (1 if args and isinstance(args[-1], dict) else 0):
        raise ValueError(
            f"{where}: too many args after c2 ({len(args)}); PST takes at most {len(ARG_ORDER)}: {', '.join(ARG_ORDER)}"
        )
    if not args or not isinstance(args[-1], dict):
        if any(isinstance(a, dict) for a in args):
            raise ValueError(f"{where}: a dict of named PST args must be the last arg, got {args!r}")
        return args
    named = args.pop()
    if any(isinstance(a, dict) for a in args):
        raise ValueError(f"{where}: only one dict of named PST args is allowed, got {args + [named]!r}")
    unknown = sorted(set(named) - set(ARG_ORDER))
    if unknown:
        raise ValueError(f"{where}: unknown PST arg(s) {unknown}; known: {', '.join(ARG_ORDER)}")
    twice = sorted(k for k in named if ARG_ORDER.index(k) < len(args))
    if twice:
        raise ValueError(f"{where}: PST arg(s) {twice} given both positionally and by name")
    last = max((ARG_ORDER.index(k) for k in named), default=-1)
    out = args + [DEFAULTS[ARG_ORDER[j]] for j in range(len(args), last + 1)]
    for key, value in named.items():
        out[ARG_ORDER.index(key)] = value
    return out


# ------------------------------------------------------------------------------------------- top-k (fine attention)
ENV_TOPK = "PST_TOPK"


def check_topk(k, source="k") -> int:
    """Return ``k`` as an int >= 0, or raise a ValueError that names where the bad value came from."""
    if isinstance(k, bool) or not isinstance(k, int):
        if isinstance(k, str) and k.strip().lstrip("+").isdigit():
            return int(k)
        raise ValueError(f"pst-yolo: {source} must be a non-negative integer (0 = coarse only), got {k!r}")
    if k < 0:
        raise ValueError(f"pst-yolo: {source} must be a non-negative integer (0 = coarse only), got {k}")
    return k


def env_topk() -> int | None:
    """The ``PST_TOPK`` override for every PST model built or loaded in this process, or None if unset."""
    raw = os.environ.get(ENV_TOPK)
    if raw is None or raw.strip() == "":
        return None
    return check_topk(raw, source=f"environment variable {ENV_TOPK}")


ENV_TRAIN_TOPK = "PST_TRAIN_TOPK"


def env_train_topk() -> int:
    """``PST_TRAIN_TOPK``: train with fine attention at this k (0 or unset: coarse-only training, the paper's).

    An accuracy-study switch: the paper trains coarse-only and turns the fine branch on at inference untrained;
    with k > 0 the training forward adds it too, so what inference switches on has been trained.
    """
    raw = os.environ.get(ENV_TRAIN_TOPK)
    if raw is None or raw.strip() == "":
        return 0
    return check_topk(raw, source=f"environment variable {ENV_TRAIN_TOPK}")


def env_fusion() -> str | None:
    """``PST_FUSION``: the fusion every PST model built or loaded in this process uses (None if unset)."""
    raw = os.environ.get(ENV_FUSION, "").strip()
    return check_choice(raw, "fusion", FUSIONS, f"environment variable {ENV_FUSION}") if raw else None
