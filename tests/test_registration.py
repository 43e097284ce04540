"""Registration with Ultralytics: every path runs in a fresh interpreter that never imports pst_yolo itself."""

import subprocess
import sys
import textwrap

import pytest

from pst_yolo import integration


def run_python(code, cwd, env=None, check=True):
    """Run ``code`` in a fresh interpreter from ``cwd``; returns the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc


def test_startup_hook_imports_neither_torch_nor_ultralytics(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], cwd=tmp_path, capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "pst_yolo._startup" in imported, "the .pth start-up hook did not run"
    heavy = {m for m in imported if m.split(".")[0] in {"torch", "ultralytics", "numpy", "cv2"}}
    assert not heavy, f"start-up imports heavy modules: {sorted(heavy)[:5]}"


def test_yaml_builds_by_name_in_fresh_interpreter_from_any_directory(tmp_path):
    proc = run_python(
        """
        import sys
        from ultralytics import YOLO
        m = YOLO("yolo11n-pst.yaml")
        names = [type(x).__name__ for x in m.model.model]
        assert names.count("PST") == 2, names
        assert "pst_yolo" in sys.modules  # pulled in by the hook, not by this script
        print("OK", m.task, sum(p.numel() for p in m.model.parameters()))
        """,
        tmp_path,
    )
    assert "OK detect" in proc.stdout


def test_hook_and_register_are_idempotent(tmp_path):
    run_python(
        """
        import sys
        import pst_yolo._startup as s
        s.install(); s.install()
        assert sum(type(f).__name__ == "PSTImportHook" for f in sys.meta_path) == 1
        from ultralytics.nn import tasks
        from ultralytics.utils import checks
        import pst_yolo
        first_parse, first_check = tasks.parse_model, checks.check_file
        pst_yolo.register(); pst_yolo.register()
        assert tasks.parse_model is first_parse and checks.check_file is first_check
        assert not hasattr(tasks.parse_model.__wrapped__, "__wrapped__")  # patched exactly once
        from ultralytics import YOLO
        YOLO("yolo11n-pst.yaml")
        """,
        tmp_path,
    )


def test_stock_models_and_stock_psa_untouched(tmp_path):
    proc = run_python(
        """
        from ultralytics import YOLO
        from ultralytics.nn import modules, tasks
        assert tasks.PSA is modules.PSA  # YOLOv10 position-sensitive attention, not shadowed
        for name in ("yolov10n.yaml", "yolo11n.yaml", "yolo11n-cls.yaml"):
            m = YOLO(name)
            assert not any(type(x).__name__ == "PST" for x in m.model.modules())
        print("OK")
        """,
        tmp_path,
    )
    assert "OK" in proc.stdout


def test_unsupported_ultralytics_version_is_refused():
    with pytest.raises(RuntimeError, match=r"Ultralytics 8\.3\.99 is outside the tested range ultralytics>=8\.4\.0,<8\.5\.0"):
        integration.check_ultralytics_version("8.3.99")
    with pytest.raises(RuntimeError, match="PST_YOLO_SKIP_VERSION_CHECK=1"):
        integration.check_ultralytics_version("9.0.0")
    assert integration.check_ultralytics_version("8.4.190") == "8.4.190"


def test_unsupported_version_refused_in_fresh_interpreter(tmp_path):
    proc = run_python(
        """
        import ultralytics
        ultralytics.__version__ = "9.1.0"  # what a user with a newer, untested Ultralytics has
        import pst_yolo
        try:
            pst_yolo.register()
        except RuntimeError as e:
            print("REFUSED:", e)
        """,
        tmp_path,
    )
    assert "REFUSED: pst-yolo: Ultralytics 9.1.0 is outside the tested range" in proc.stdout


def test_bad_from_is_a_clear_error(tmp_path):
    bad = (integration.find_cfg("yolo11-pst.yaml").read_text()).replace("[[-1, 10], 1, PST, [512]]", "[-1, 1, PST, [512]]")
    (tmp_path / "bad-from.yaml").write_text(bad)
    from ultralytics import YOLO

    with pytest.raises(ValueError, match=r"PST layer 13: `from` must name exactly two layers \[finer, coarser\]"):
        YOLO(str(tmp_path / "bad-from.yaml"))


def test_channels_not_multiple_of_32_is_a_clear_error(tmp_path):
    bad = integration.find_cfg("yolo11-pst.yaml").read_text().replace("[[-1, 10], 1, PST, [512]]", "[[-1, 10], 1, PST, [320]]")
    (tmp_path / "bad-ch.yaml").write_text(bad)
    from ultralytics import YOLO

    with pytest.raises(ValueError, match=r"PST layer 13 \(c2=320 x width 0.25 -> 80\): hidden width .* = 40 must be"):
        YOLO(str(tmp_path / "bad-ch.yaml"))


@pytest.mark.slow
def test_wheel_install_ships_hook_and_yamls(tmp_path):
    """A normal (non-editable) install: the wheel carries pst_yolo.pth and the YAMLs inside the package."""
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                    str(repo)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("pst_yolo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pst_yolo.pth" in names and "pst_yolo/cfg/models/yolo11-pst.yaml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # PYTHONPATH puts the wheel's copy first; site.addsitedir processes its .pth as site-packages does at start-up
    import os

    proc = run_python(
        f"""
        import site
        site.addsitedir({str(target)!r})
        import pst_yolo, pst_yolo.integration as integration
        assert pst_yolo.__file__.startswith({str(target)!r}), pst_yolo.__file__
        assert str(integration.find_cfg("yolo11-pst.yaml")).startswith({str(target)!r})
        from ultralytics import YOLO
        print("WHEEL OK", YOLO("yolo11n-pst.yaml").task)
        """,
        tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert "WHEEL OK detect" in proc.stdout
