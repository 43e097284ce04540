"""The suite's own machinery (tests/conftest.py): a module fixture shared by several tests is made once under xdist.

xdist's ``--dist loadgroup`` does not group on its own here (workers re-read the command line; pytest 9.2 moved the
node id it writes the group into), so conftest schedules the module groups itself. This runs a probe module in a
pytest subprocess on two workers and counts the fixture's setups.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import os
import pytest

@pytest.fixture(scope="module")
def shared():
    with open("setups.txt", "a") as f:
        f.write(f"{os.getpid()}\\n")

@pytest.mark.parametrize("i", range(6))
def test_user(shared, i):
    pass

@pytest.mark.parametrize("i", range(4))
def test_alone(i):
    with open("alone.txt", "a") as f:
        f.write(f"{os.getpid()}\\n")
'''


@pytest.mark.slow
def test_module_fixture_is_made_once_on_two_workers(tmp_path):
    pytest.importorskip("xdist")
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PST_TEST_"))}
    env["PST_TEST_CORES"] = "2"  # two workers by default even on a one-core machine
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "10 passed" in r.stdout, r.stdout[-2000:]
    setups = (tmp_path / "setups.txt").read_text().split()
    assert len(setups) == 1, f"the module fixture was set up {len(setups)} times (pids {setups})"
    alone = (tmp_path / "alone.txt").read_text().split()
    assert len(alone) == 4
    assert set(alone) - set(setups), "no test ran on the second worker"  # both workers served
