"""Declared dependencies: the extras as pyproject.toml lists them, clear errors for a missing optional package, and a
fresh virtual environment built from the working tree that can run the multi-GPU (DDP) worker step."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pathlib import Path

import pytest

from pst_yolo import extras

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(reqs):
    from packaging.requirements import Requirement

    return [Requirement(r).name.lower() for r in reqs]


def test_extras_table_matches_pyproject():
    declared = {k: _names(v) for k, v in _pyproject()["optional-dependencies"].items()}
    assert {k: [d for d, _ in v] for k, v in extras.EXTRAS.items()} == declared
    core = _names(_pyproject()["dependencies"])
    assert all(d in core for d, _ in extras.CORE)  # cloudpickle is a core dependency (DDP)


def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(extras.MissingExtra, match=r"checking things needs the package 'onnxruntime'.*pst-yolo\[export\]"):
        extras.require("onnxruntime", "checking things")
    assert extras.require("json", "anything").dumps([]) == "[]"  # installed: the module itself


def test_missing_attention_library_reports_its_extra(monkeypatch):
    from pst_yolo import attention

    monkeypatch.setattr(extras, "_IMPORTS", {})
    monkeypatch.setitem(sys.modules, "sageattention", None)
    why = attention.KERNELS["sage"].available()
    assert "pst-yolo[sage]" in why


def test_extras_report_runs_without_importing_optional_packages():
    """``python -m pst_yolo.extras`` reads versions from metadata only: no optional package gets imported."""
    code = ("import sys, runpy; runpy.run_module('pst_yolo.extras', run_name='__main__'); "
            "print('IMPORTED', sorted(m for m in ('onnx', 'onnxruntime', 'openvino', 'flash_attn', 'sageattention',"
            " 'torch', 'ultralytics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "core" in out and "export" in out and "IMPORTED []" in out, out


def _provide_torch(target: Path) -> int:
    """Symlink this environment's torch and torchvision, with every distribution they need, into ``target``: the fresh
    environment reuses them (4 GB of CUDA wheels) instead of installing them again. Nothing else is shared, so every
    other dependency must come from pst-yolo's own declared requirements."""
    import importlib.metadata as md
    import re

    from packaging.requirements import Requirement

    want, seen, tops = [("torch", ()), ("torchvision", ())], set(), set()
    while want:
        name, extra = want.pop()
        key = (re.sub(r"[-_.]+", "-", name).lower(), tuple(sorted(extra)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        base = Path(dist.locate_file(""))
        tops.update((base, Path(f).parts[0]) for f in dist.files or [] if Path(f).parts[0] != "..")
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extra)):
                want.append((req.name, tuple(req.extras)))
    assert not any(top.startswith("cloudpickle") for _, top in tops)
    target.mkdir(parents=True)
    for base, top in tops:
        if not (target / top).exists():
            (target / top).symlink_to(base / top)
    return len(tops)


@pytest.mark.slow
@pytest.mark.network
def test_fresh_venv_from_the_wheel_runs_the_tools_and_the_ddp_worker(tmp_path):
    """A new virtual environment, the working tree's wheel installed with its declared dependencies (from the package
    index or pip's cache; torch reused, see _provide_torch): the wheel's ``pst-yolo`` command runs the demo (a
    comparison of three models) from an empty folder (no source checkout anywhere on the path), cloudpickle is there
    and Ultralytics' DDP worker step runs a PST model in it."""
    sys.path.insert(0, str(TESTS))
    from _ddp_common import run_ddp_worker

    from pst_yolo.data import make_detection_dataset

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, text=True)
    wheel = next((tmp_path / "dist").glob("pst_yolo-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    _provide_torch(tmp_path / "provided")
    (site / "zz_provided_torch.pth").write_text(str(tmp_path / "provided") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    check = subprocess.run([str(python), "-c", "import cloudpickle, pst_yolo, ultralytics, sys; "
                            "print(cloudpickle.__file__, pst_yolo.__file__, sys.prefix)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert all(str(venv) in part for part in check.split()), check  # nothing from the outer environment
    data = make_detection_dataset(tmp_path / "data", n_train=2, n_val=2, imgsz=64)
    empty = tmp_path / "empty"
    empty.mkdir()
    tool = str(venv / "bin" / "pst-yolo")
    # the demo runs `pst-yolo compare`'s code (three models, each a `yolo train` of this venv) and prints its table
    r = subprocess.run([tool, "demo", "epochs=1", "--n-train", "8", "--n-val", "4", "imgsz=64"], env=env,
                       capture_output=True, text=True, timeout=900, cwd=empty)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"^pst-yolo demo: \S+ s0: epoch 1/1", r.stdout, re.M), r.stdout[-3000:]
    assert (empty / "runs" / "pst-demo" / "summary.md").is_file()
    assert "ONNX: skipped (pst-yolo: the demo's ONNX step needs the package 'onnxruntime'" in r.stdout  # no extra
    assert "| yolo11n-pst-res | on (k=8) |" in r.stdout
    work = tmp_path / "work"
    work.mkdir()
    res = run_ddp_worker(python, data, work, env)
    assert res["pickled"] and res["topks"] == [5, 8]


@pytest.mark.slow
def test_sdist_and_wheel_build_carry_the_license_and_pass_twine_check(tmp_path):
    """What a package registry checks: both distributions build from the tree, their metadata renders (``twine check
    --strict``: the README as the long description, the license expression, the URLs), and both carry LICENSE."""
    import tarfile
    import zipfile

    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "hatchling", "build", "-d", str(dist)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    sdist, wheel = next(dist.glob("pst_yolo-*.tar.gz")), next(dist.glob("pst_yolo-*.whl"))
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names[-10:]
    with tarfile.open(sdist) as t:
        assert any(n.endswith("/LICENSE") for n in t.getnames())
    assert "License-Expression: AGPL-3.0-only" in meta and "Requires-Python: >=3.11" in meta
    assert "GNU AFFERO GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()[:200]
