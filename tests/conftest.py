"""Suite-wide settings, applied before any test module imports Ultralytics.

Offline by design: Ultralytics checks connectivity at import (DNS lookups) and may pip-install missing requirements;
``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=False`` switch both off. Its detection-dataset check also looks for Arial
fonts online unless they are in its config folder, so the suite gets a config folder of its own with local fonts
(``pst_yolo.offline``), which also keeps the user's Ultralytics settings untouched. Every subprocess the tests start
inherits this environment; tests/test_offline.py proves that nothing reaches out.

Both cores: with pytest-xdist installed (the ``test`` extra) a plain ``python -m pytest`` runs on one worker per CPU
core (at most 4), one thread each; ``-n 0`` or ``-p no:xdist`` runs in one process. Tests that share a module-scoped
fixture (a trained checkpoint, an export) stay on one worker (``xdist_group`` by module, ``--dist loadgroup``), so each
is still made once.
"""

import os
import tempfile

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    # two workers on two cores: one intra-op thread each (torch, onnxruntime, OpenVINO and the training subprocesses
    # read these), or each worker's thread pool fights the other's
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")

from pst_yolo.offline import seed_fonts, set_offline_env  # noqa: E402

set_offline_env()
os.environ["YOLO_OFFLINE"], os.environ["YOLO_AUTOINSTALL"] = "1", "False"  # also when the caller's env says otherwise
os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="pst-yolo-tests-ultralytics-")
seed_fonts()  # into the folder Ultralytics derives from YOLO_CONFIG_DIR

MAX_WORKERS = 4


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@pytest.hookimpl(tryfirst=True)  # before xdist's own (also tryfirst, registered earlier), which turns -n into workers
def pytest_cmdline_main(config):
    """Run on one xdist worker per core unless the command line chose (``-n``, ``--dist``) or xdist is off."""
    if WORKER or not config.pluginmanager.hasplugin("xdist"):
        return
    option = config.option
    if getattr(option, "numprocesses", None) is not None or getattr(option, "dist", "no") != "no":
        return
    if option.collectonly or getattr(option, "usepdb", False):
        return
    workers = min(_cores(), MAX_WORKERS)
    if workers > 1:
        option.numprocesses, option.dist = workers, "loadgroup"


def pytest_collection_modifyitems(config, items):
    """Keep every test that uses a module- or session-scoped fixture of its own module on one worker, with the rest
    of that module's users: the fixture (a training, an export) is then computed once, as without xdist."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group"):
            continue
        shared = any(
            defs[-1].scope in ("module", "session", "package")
            and getattr(defs[-1].func, "__module__", None) == item.module.__name__  # not pytest's tmp_path_factory
            for name in info.names_closure
            if (defs := info.name2fixturedefs.get(name))
        )
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
