"""Optional dependencies: which extra provides which package, and a clear error when one is missing.

Nothing here runs at start-up or import time: a feature calls :func:`require` when it is used, so a missing optional
package surfaces as one line naming the feature and the ``pip install 'pst-yolo[extra]'`` that provides it, not as an
ImportError from deep inside a call. ``python -m pst_yolo.extras`` prints what is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

# extra -> (distribution, import name) it provides, as [project.optional-dependencies] of pyproject.toml lists them
# (tests/test_packaging.py checks that the two agree). The first extra that lists a module is the one named in errors.
EXTRAS = {
    "export": (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxslim", "onnxslim")),
    "openvino": (("openvino", "openvino"), ("nncf", "nncf")),
    "flash": (("flash-attn", "flash_attn"),),
    "sage": (("sageattention", "sageattention"),),
    "track": (("lap", "lap"),),
    "ncnn": (("ncnn", "ncnn"), ("pnnx", "pnnx")),
    "mnn": (("mnn", "MNN"), ("onnx", "onnx"), ("onnxslim", "onnxslim")),
    "coreml": (("coremltools", "coremltools"), ("numpy", "numpy"), ("cattrs", "cattrs")),
    "executorch": (("executorch", "executorch"),),
    "litert": (
        ("litert-torch", "litert_torch"), ("ai-edge-litert", "ai_edge_litert"), ("ai-edge-quantizer", "ai_edge_quantizer"),
    ),
    "tensorflow": (
        ("tensorflow", "tensorflow"), ("tf-keras", "tf_keras"), ("onnx2tf", "onnx2tf"), ("sng4onnx", "sng4onnx"),
        ("onnx-graphsurgeon", "onnx_graphsurgeon"), ("ai-edge-litert", "ai_edge_litert"), ("onnx", "onnx"),
        ("protobuf", "google.protobuf"), ("onnxruntime", "onnxruntime"), ("onnxslim", "onnxslim"),
    ),
    "paddle": (("paddlepaddle", "paddle"), ("x2paddle", "x2paddle"), ("six", "six")),
    "test": (
        ("pytest", "pytest"), ("pytest-xdist", "xdist"), ("hatchling", "hatchling"), ("hypothesis", "hypothesis"),
        ("lap", "lap"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxslim", "onnxslim"),
        ("openvino", "openvino"), ("nncf", "nncf"), ("ncnn", "ncnn"),
        ("pnnx", "pnnx"), ("mnn", "MNN"), ("coremltools", "coremltools"), ("numpy", "numpy"), ("cattrs", "cattrs"),
        ("sageattention", "sageattention"), ("twine", "twine"),
    ),
}
# Core dependencies that Ultralytics itself no longer declares but a pst-yolo feature needs (cloudpickle: the DDP
# launcher of ultralytics >= 8.4.140 pickles the trainer with it and would pip-install it on the first multi-GPU run).
CORE = (("cloudpickle", "cloudpickle"),)


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the feature and the extra that provides it."""


def extra_of(module: str) -> str | None:
    """The extra that provides import name ``module`` (None for a core or unknown package)."""
    for extra, pairs in EXTRAS.items():
        if any(imp == module for _, imp in pairs):
            return extra
    return None


def require(module: str, feature: str):
    """Import and return ``module``; if it is missing raise :class:`MissingExtra` naming ``feature`` and the extra.

    Examples:
        >>> ort = require("onnxruntime", "checking an ONNX export")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module and not module.startswith(f"{e.name}."):
            raise  # the package is there but one of *its* imports failed: show that error as it is
        extra = extra_of(module)
        how = f"pip install 'pst-yolo[{extra}]'" if extra else f"pip install {module} (a pst-yolo core dependency)"
        raise MissingExtra(f"pst-yolo: {feature} needs the package {module!r}, which is not installed; {how}") from None


_IMPORTS: dict = {}


def load_symbol(module: str, attr: str):
    """Import ``module.attr`` once; returns ``(fn, None)`` or ``(None, why)`` (cached, so a failed import costs once)."""
    key = (module, attr)
    if key not in _IMPORTS:
        try:
            _IMPORTS[key] = (getattr(importlib.import_module(module), attr), None)
        except ModuleNotFoundError as e:
            hint = f"; pip install 'pst-yolo[{extra_of(module)}]'" if extra_of(module) and e.name == module else ""
            _IMPORTS[key] = (None, f"package {module!r} not usable ({type(e).__name__}: {e}){hint}")
        except Exception as e:  # a broken CUDA extension raising at import
            _IMPORTS[key] = (None, f"package {module!r} not usable ({type(e).__name__}: {e})")
    return _IMPORTS[key]


def status() -> dict:
    """``{extra: {distribution: version or None}}`` for every extra and the core packages, without importing them."""
    out = {}
    for extra, pairs in {"core": CORE, **EXTRAS}.items():
        out[extra] = {}
        for dist, imp in pairs:
            try:
                out[extra][dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[extra][dist] = None if importlib.util.find_spec(imp) is None else "installed (no metadata)"
    return out


def main():
    for extra, dists in status().items():
        missing = [d for d, v in dists.items() if v is None]
        state = "ok" if not missing else f"missing {', '.join(missing)} -> pip install 'pst-yolo[{extra}]'"
        if extra == "core" and missing:
            state = f"missing {', '.join(missing)} -> reinstall pst-yolo"
        print(f"{extra:10s} {state:60s} {', '.join(f'{d} {v}' for d, v in dists.items() if v)}")


if __name__ == "__main__":
    main()
