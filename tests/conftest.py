"""Suite-wide settings, applied before any test module imports Ultralytics.

Offline by design: Ultralytics checks connectivity at import (DNS lookups) and may pip-install missing requirements;
``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=False`` switch both off. Its detection-dataset check also looks for Arial
fonts online unless they are in its config folder, so the suite gets a config folder of its own with local fonts
(``pst_yolo.offline``), which also keeps the user's Ultralytics settings untouched. Every subprocess the tests start
inherits this environment; tests/test_offline.py proves that nothing reaches out.

Both cores: with pytest-xdist installed (the ``test`` extra) a plain ``python -m pytest`` runs on one worker per CPU
core (at most 4), one thread each; ``-n 0`` or ``-p no:xdist`` runs in one process. Tests that share a module-scoped
fixture (a trained checkpoint, an export) stay on one worker, so each is still made once: the workers mark them
(``xdist_group`` by module) and list their modules in a folder the controller's scheduler reads (``_ModuleGroups``).
xdist's own ``--dist loadgroup`` cannot do it here: its workers re-read the command line (not the options set below),
and from pytest 9.2 on the group suffix it writes into ``item._nodeid`` is no longer part of the node id.
"""

import glob
import json
import os
import tempfile
from pathlib import Path

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
GROUPS_DIR = "PST_TEST_GROUPS_DIR"  # where each worker lists the tests that must share one
_made_groups_dir = []


def _cores() -> int:
    if os.environ.get("PST_TEST_CORES"):  # tests/test_suite_setup.py: two workers whatever the machine
        return int(os.environ["PST_TEST_CORES"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@pytest.hookimpl(tryfirst=True)  # before xdist's own (also tryfirst, registered earlier), which turns -n into workers
def pytest_cmdline_main(config):
    """Run on one xdist worker per core unless the command line chose (``-n``, ``--dist``) or xdist is off; a plain
    ``-n N`` keeps the module groups too."""
    if WORKER or not config.pluginmanager.hasplugin("xdist"):
        return
    option = config.option
    if option.collectonly or getattr(option, "usepdb", False):
        return
    if getattr(option, "numprocesses", None) is None and getattr(option, "dist", "no") == "no":
        workers = min(_cores(), MAX_WORKERS)
        if workers > 1:
            option.numprocesses = workers
    if getattr(option, "numprocesses", None) and option.dist == "no":
        option.dist = "loadgroup"
    if option.dist == "loadgroup":
        _made_groups_dir.append(tempfile.mkdtemp(prefix="pst-yolo-test-groups-"))
        os.environ[GROUPS_DIR] = _made_groups_dir[0]  # the workers inherit it


def pytest_unconfigure(config):
    if _made_groups_dir:
        import shutil

        shutil.rmtree(_made_groups_dir[0], ignore_errors=True)


def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadgroup``: whole modules that share a fixture to one worker, every other test on its own."""
    if config.getvalue("dist") != "loadgroup" or not os.environ.get(GROUPS_DIR):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class _ModuleGroups(LoadScopeScheduling):
        """xdist's scope scheduling with a test's scope its module when the workers grouped the test, else the test."""

        grouped = None

        def _split_scope(self, nodeid):
            if self.grouped is None:  # read once, after every worker has collected (the scheduler waits for it)
                files = glob.glob(os.path.join(os.environ[GROUPS_DIR], "*.json"))
                self.grouped = set().union(*(json.loads(Path(f).read_text()) for f in files))
            return nodeid.split("::", 1)[0] if nodeid in self.grouped else nodeid

    return _ModuleGroups(config, log)


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
    if WORKER and os.environ.get(GROUPS_DIR):
        grouped = [item.nodeid for item in items if item.get_closest_marker("xdist_group")]
        with open(os.path.join(os.environ[GROUPS_DIR], f"{WORKER}.json"), "w") as f:
            json.dump(grouped, f)


def pytest_terminal_summary(terminalreporter):
    """Test time per module (setup + call + teardown, summed over the workers: the suite's wall time is about this
    total over the worker count), so CI's log shows what each part of the suite costs, the parity suite among them."""
    per_module: dict = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown") and hasattr(report, "nodeid"):
                module = report.nodeid.split("::")[0]
                per_module[module] = per_module.get(module, 0.0) + float(getattr(report, "duration", 0.0) or 0.0)
    if not per_module:
        return
    total = sum(per_module.values())
    terminalreporter.write_sep("=", f"test time per module: {total:.0f} s in all")
    for module, seconds in sorted(per_module.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:7.1f} s {100 * seconds / total:5.1f}%  {module}")
    parity = sum(s for m, s in per_module.items() if Path(m).name.startswith("test_parity"))
    terminalreporter.write_line(f"parity suite (tests/test_parity*.py): {parity:.0f} s, {100 * parity / total:.1f}% "
                                "of the test time")
