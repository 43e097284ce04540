"""Every patch pst-yolo makes to Ultralytics, in one place.

Ultralytics has no plugin API for model layers, so registration does these narrow things, each idempotent:

1. ``ultralytics.utils.checks.check_file`` also finds pst-yolo's model and recipe YAMLs by bare name (after the working
   directory, before Ultralytics' own tree), so ``model=yolo11n-pst.yaml`` and ``cfg=pst-det-n.yaml`` resolve.
2. ``ultralytics.nn.tasks.parse_model`` gets one extra branch, inserted in front of its channel rules, for layers with
   two inputs (``from: [finer, coarser]``); the PST class names are added to ``ultralytics.nn.tasks``' namespace,
   where ``parse_model`` looks names up.
3. The PST classes join torch's safe-globals allow-list so ``ULTRALYTICS_SAFE_LOAD=1`` can load PST checkpoints.
4. Two default export callbacks: a static-shape export (``dynamic=False``) traces PSA's attention in query chunks
   (``pst_yolo.scoring.static_export``: bounded memory in onnxruntime), and an FP16 ONNX file gets its graph back in
   topological order with the selection scores in float32 (``pst_yolo.export.fix_fp16_onnx``).
5. Two default training callbacks (``pst_yolo.training``): the trainer validates PST models at the setting they train
   with, and the fine setting of ``last.pt`` and ``best.pt`` is chosen and stored when training ends.

Nothing is patched on an Ultralytics version outside ``SUPPORTED`` (tested range); ``register()`` raises instead.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import os
import sys
import textwrap
from pathlib import Path

SUPPORTED = ((8, 4, 0), (8, 5, 0))  # [min, max) of ultralytics versions this release is tested with
SKIP_VERSION_CHECK = "PST_YOLO_SKIP_VERSION_CHECK"
_PATCHED = "_pst_yolo_patched"


def cfg_dirs() -> list[Path]:
    """Folders that hold pst-yolo's YAMLs: inside the installed package, or the repo root of an editable install."""
    here = Path(__file__).resolve().parent
    return [p for p in (here / "cfg", here.parent / "cfg") if p.is_dir()]


def find_cfg(name: str) -> Path | None:
    """Path of a shipped model/recipe YAML given its bare file name, else None."""
    if not name or Path(name).name != name:
        return None
    for d in cfg_dirs():
        for p in (d / name, *d.glob(f"*/{name}")):
            if p.is_file():
                return p
    return None


def _parse_version(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))


def supported_range() -> str:
    lo, hi = (".".join(map(str, v)) for v in SUPPORTED)
    return f">={lo},<{hi}"


def check_ultralytics_version(version: str | None = None) -> str:
    """Raise a RuntimeError naming the installed and the supported versions if Ultralytics is outside the range."""
    if version is None:
        import ultralytics

        version = ultralytics.__version__
    if os.environ.get(SKIP_VERSION_CHECK) == "1":
        return version
    if not SUPPORTED[0] <= _parse_version(version) < SUPPORTED[1]:
        raise RuntimeError(
            f"pst-yolo: Ultralytics {version} is outside the tested range ultralytics{supported_range()}; PST models "
            f"are not registered. Install 'ultralytics{supported_range()}', or set {SKIP_VERSION_CHECK}=1 to try "
            "this version at your own risk."
        )
    return version


# ---------------------------------------------------------------------------------------------------------- checks
def patch_checks(checks=None) -> None:
    """Let ``check_file``/``check_yaml`` find pst-yolo YAMLs by bare name."""
    if checks is None:
        from ultralytics.utils import checks
    original = checks.check_file
    if getattr(original, _PATCHED, False):
        return

    def check_file(file, *args, **kwargs):
        s = str(file).strip()
        if "://" not in s and not os.path.exists(s):
            found = find_cfg(s)
            if found is not None:
                return str(found)
        return original(file, *args, **kwargs)

    check_file.__doc__ = original.__doc__
    check_file.__wrapped__ = original
    setattr(check_file, _PATCHED, True)
    checks.check_file = check_file


# ----------------------------------------------------------------------------------------------------------- tasks
def pst_channel_rule(i, f, args, ch, n, width, max_channels, m=None, scale=None):
    """Channel bookkeeping for a two-input PST or C3k2PST row; returns ``(c2, args, n)`` as ``parse_model`` needs them.

    ``[[finer, coarser], n, PST, [c2, *rest]]`` becomes ``PST(c1, c_up, c2_scaled, n, *rest)``, built once (n is the
    number of stacked PSA blocks, not a repeat count). ``rest`` may end with a dict of named args
    (``pst_yolo.switches``). ``[[finer, coarser], n, C3k2PST, [c2, c3k, e, {pst args}]]`` becomes
    ``C3k2PST(c1, c_up, c2_scaled, n, c3k, e, pst, residual_init)`` with n the C3k2 repeats and, as for a stock C3k2,
    c3k forced on at the m/l/x scales; ``residual_init`` and ``branch`` are read from the same dict.
    """
    from ultralytics.utils.ops import make_divisible

    from pst_yolo.modules import C3k2PST, hidden_width
    from pst_yolo.switches import ARG_ORDER, DEFAULTS, check_branch_scale, check_flag, check_switches, yaml_args

    name = f"{getattr(m, '__name__', 'PST')} layer {i}"
    if not (isinstance(f, (list, tuple)) and len(f) == 2 and all(isinstance(x, int) for x in f)):
        raise ValueError(f"{name}: `from` must name exactly two layers [finer, coarser], e.g. [-1, 10]; got {f!r}")
    if not args:
        raise ValueError(f"{name}: args must start with the output channels c2, got {args!r}")
    c1, c_up = ch[f[0]], ch[f[1]]
    c2 = make_divisible(min(args[0], max_channels) * width, 8)
    if m is C3k2PST:
        c3k, e, pst = (list(args[1:]) + [False, 0.5, None][len(args) - 1 :])[:3]
        if scale in {"m", "l", "x"}:
            c3k = True
        if pst is not None and not isinstance(pst, dict):
            raise ValueError(f"{name}: the 4th arg must be a dict of PST args (e.g. {{k: 8}}), got {pst!r}")
        pst = dict(pst or {})
        residual_init = check_branch_scale(pst.pop("residual_init", 0.0), "residual_init", name)
        branch = check_flag(pst.pop("branch", True), "branch", name)
        rest = yaml_args([pst] if pst else [], name)
        hidden_width(c2, rest[1] if len(rest) > 1 else 0.5, where=f"{name} (c2={args[0]} x width {width} -> {c2})")
        return c2, [c1, c_up, c2, n, c3k, e, dict(zip(ARG_ORDER, rest)), residual_init, branch], 1
    rest = yaml_args(args[1:], name)  # a trailing dict of named args becomes positional
    e = rest[1] if len(rest) > 1 else 0.5
    hidden_width(c2, e, where=f"{name} (c2={args[0]} x width {width} -> {c2})")
    named = dict(zip(ARG_ORDER, rest))
    check_switches(*(named.get(k, DEFAULTS[k]) for k in ("gating", "shared_kv", "attn")), where=name)
    return c2, [c1, c_up, c2, n, *rest], 1


def _patched_parse_model(parse_model):
    """Return ``parse_model`` recompiled with ``if m in _PST_MODULES: ...`` before ``if m in base_modules``."""
    source = textwrap.dedent(inspect.getsource(parse_model))
    tree = ast.parse(source)
    fn = tree.body[0]
    target = None
    for node in ast.walk(fn):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "m"
            and isinstance(node.test.comparators[0], ast.Name)
            and node.test.comparators[0].id == "base_modules"
        ):
            target = node
            break
    if target is None:
        raise RuntimeError(
            "pst-yolo: ultralytics.nn.tasks.parse_model has no `if m in base_modules:` branch; this Ultralytics "
            f"version is not supported (tested: ultralytics{supported_range()})"
        )
    branch = ast.parse(
        "if m in _PST_MODULES:\n"
        "    c2, args, n = _pst_channel_rule(i, f, args, ch, n, width, max_channels, m=m, scale=d.get('scale'))"
    ).body[0]
    branch.orelse = [ast.If(test=target.test, body=target.body, orelse=target.orelse)]
    target.test, target.body, target.orelse = branch.test, branch.body, branch.orelse
    ast.fix_missing_locations(tree)
    ast.increment_lineno(tree, parse_model.__code__.co_firstlineno - 1)
    namespace = parse_model.__globals__
    code = compile(tree, inspect.getsourcefile(parse_model), "exec", dont_inherit=True)
    scope = {}
    exec(code, namespace, scope)
    patched = scope["parse_model"]
    patched.__wrapped__ = parse_model
    setattr(patched, _PATCHED, True)
    return patched


def patch_tasks(tasks=None) -> None:
    """Register the PST layers in ``ultralytics.nn.tasks`` and teach ``parse_model`` their two-input channel rule."""
    if tasks is None:
        from ultralytics.nn import tasks
    import torch

    from pst_yolo.modules import PST, C3k2PST, PSTBlock, PyramidSparseAttention

    layers = {"PST": PST, "C3k2PST": C3k2PST}
    for name, obj in layers.items():
        existing = tasks.__dict__.get(name)
        if existing is not None and existing is not obj:
            raise RuntimeError(f"pst-yolo: ultralytics.nn.tasks already defines {name!r}; refusing to shadow it")
        setattr(tasks, name, obj)
    tasks._PST_MODULES = frozenset(layers.values())
    tasks._pst_channel_rule = pst_channel_rule
    if not getattr(tasks.parse_model, _PATCHED, False):
        tasks.parse_model = _patched_parse_model(tasks.parse_model)
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([PST, C3k2PST, PSTBlock, PyramidSparseAttention])
    patch_callbacks()



# ------------------------------------------------------------------------------------------------------- callbacks
def on_export_start(exporter) -> None:
    """Static-shape exports trace PSA in query chunks (the input size is fixed, so the chunk bounds may be); the
    format decides the form of the fine branch (``pst_yolo.formats``)."""
    from pst_yolo.formats import form_for, set_form
    from pst_yolo.offline import TF_FORMATS, block_mnn_telemetry, seed_onnx2tf_calibration
    from pst_yolo.tracing import set_onnx_opset, set_static_export
    from ultralytics.utils import LOGGER

    dynamic = bool(getattr(exporter.args, "dynamic", False))
    set_static_export(not dynamic)
    set_onnx_opset(getattr(exporter.args, "opset", None))
    fmt = getattr(exporter.args, "format", None)
    _QUANTIZER.close()  # a failed export never reached on_export_end
    if _int8(exporter.args) and _has_pst(getattr(exporter, "model", None)):
        from pst_yolo.quantize import float_attention, psa_paths

        _QUANTIZER.enter_context(float_attention(fmt, psa_paths(exporter.model)))
    if dynamic and _has_pst(getattr(exporter, "model", None)):
        LOGGER.info("pst-yolo: dynamic export: each PST attention is traced in one piece (its chunk bounds would fix the "
                    "input size), so the runtime holds a PST layer's whole attention map, 4 x heads x N x M bytes per "
                    "image (N, M: the finer and coarser map's pixels; yolo11n-pst's P3 layer: 82 MiB at 640 px, 1.3 GB "
                    "at 1280 px). dynamic=False exports it in chunks of bounded size (docs/deployment.md).")
    set_form(*form_for(fmt), fmt)
    _say_fine_setting(getattr(exporter, "model", None))
    if fmt == "mnn" and block_mnn_telemetry():
        LOGGER.info("pst-yolo: MNN's converter runs without its usage logger (it would pip-install "
                    "aliyun-log-python-sdk, downgrading protobuf, and post usage logs; pst_yolo.offline)")
    if fmt in TF_FORMATS:
        written = seed_onnx2tf_calibration()
        if written is not None:
            LOGGER.info(f"pst-yolo: wrote {written} (onnx2tf's calibration sample, generated locally: Ultralytics "
                         "would download it for every TensorFlow export)")


def _say_fine_setting(model) -> None:
    """One line when the exported model refines regions: what its checkpoint's stored setting bought on validation
    and what it adds (``pst_yolo.fine_gain``), and how to export without it."""
    from pst_yolo.fine_gain import describe
    from pst_yolo.switches import ENV_TOPK
    from pst_yolo.tracing import current_form
    from pst_yolo.training import deployed, pst_attention

    if model is None or current_form() == "coarse":
        return
    k = max((m.topk for m in pst_attention(model) if m.attn == "softmax"), default=0)
    info = getattr(deployed(model), "pst_fine", None)
    if k <= 0 or not info or not describe(info):
        return
    from ultralytics.utils import LOGGER

    LOGGER.info(f"pst-yolo: fine attention on (k={k}): {describe(info)}; {ENV_TOPK}=0 exports coarse-only")


_QUANTIZER = contextlib.ExitStack()  # pst_yolo.quantize's patch of the export's INT8 quantizer, while one runs


def _int8(args) -> bool:
    return getattr(args, "quantize", None) == 8 or bool(getattr(args, "int8", False))  # 8.4.190 / older spelling


def _has_pst(model) -> bool:
    from pst_yolo.modules import PyramidSparseAttention

    return model is not None and any(isinstance(m, PyramidSparseAttention) for m in model.modules())


def on_export_end(exporter) -> None:
    """Back to one-piece tracing in the graph form; repair the FP16 ONNX file Ultralytics' CPU half conversion wrote,
    if any."""
    from pst_yolo.formats import set_form
    from pst_yolo.tracing import set_onnx_opset, set_static_export

    set_static_export(False)
    set_onnx_opset(None)
    set_form("graph")
    _QUANTIZER.close()
    args = exporter.args
    half = getattr(args, "quantize", None) == 16 or getattr(args, "half", False)  # 8.4.190 / older spelling
    if getattr(args, "format", None) == "onnx" and half:
        from pst_yolo.export import fix_fp16_onnx

        fix_fp16_onnx(exporter.file.with_suffix(".onnx"))


def patch_callbacks(base=None) -> None:
    """Add the export callbacks above and the training ones of ``pst_yolo.training`` to Ultralytics' default callbacks
    (idempotent); every ``YOLO`` object, trainer and exporter created afterwards copies them."""
    if base is None:
        from ultralytics.utils.callbacks import base
    from pst_yolo.training import on_fit_epoch_end, on_train_start

    events = (("on_export_start", on_export_start), ("on_export_end", on_export_end),
              ("on_train_start", on_train_start), ("on_fit_epoch_end", on_fit_epoch_end))
    for event, fn in events:
        hooks = base.default_callbacks.setdefault(event, [])
        if not any(getattr(h, "__qualname__", None) == fn.__qualname__ and
                   getattr(h, "__module__", None) == fn.__module__ for h in hooks):
            hooks.append(fn)


def register() -> None:
    """Register pst-yolo with Ultralytics (idempotent). Raises RuntimeError on an untested Ultralytics version."""
    check_ultralytics_version()
    patch_checks()
    patch_tasks()


def on_import(name: str) -> None:
    """Called by the start-up hook right after ``name`` (an Ultralytics module, or torch.compile's configuration) has
    been imported."""
    module = sys.modules[name]
    if name == "torch._dynamo.config":
        from pst_yolo.log import allow_under_compile

        allow_under_compile(module)
        return
    try:
        check_ultralytics_version()
    except RuntimeError as e:
        if not _warned:  # once per process, not once per hooked module
            _warned.append(True)
            print(f"WARNING ⚠️ {e}", file=sys.stderr)
        return
    if name == "ultralytics.utils.checks":
        patch_checks(module)
    elif name == "ultralytics.nn.tasks":
        patch_tasks(module)


_warned: list = []
