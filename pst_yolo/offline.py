"""Running Ultralytics with no network: what it would fetch at run time, provided locally.

Two things reach out even for local data: the connectivity check at import (DNS lookups; off with ``YOLO_OFFLINE=1``)
and ``check_font``, which every ``check_det_dataset`` call (each train/val on a detection data YAML) runs and which
sends a HEAD request to GitHub unless ``Arial.ttf`` / ``Arial.Unicode.ttf`` is in Ultralytics' config folder. No
switch turns the second off, so :func:`seed_fonts` puts matplotlib's DejaVu Sans (shipped with matplotlib, an
Ultralytics dependency) there under those names; plots then use DejaVu Sans instead of Arial.

    python -m pst_yolo.offline          # seeds the fonts into $YOLO_CONFIG_DIR or Ultralytics' default config folder

The test suite (tests/conftest.py) and the main job (scripts/demo.py) do this for themselves; tests/test_offline.py
checks with an audit hook that nothing tries to connect.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names ultralytics.utils.checks.check_font looks for
ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}


def set_offline_env() -> None:
    """``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=False`` unless set already; call before Ultralytics is imported
    (its connectivity check runs at import) so this process and every ``yolo`` subprocess inherit them."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)


def config_dir() -> Path:
    """Ultralytics' config folder, as the installed Ultralytics derives it (from ``$YOLO_CONFIG_DIR`` if set, which
    recent versions extend by ``Ultralytics/``); imports ``ultralytics.utils``, so set the environment first."""
    from ultralytics.utils import USER_CONFIG_DIR

    return Path(USER_CONFIG_DIR)


def seed_fonts(folder=None) -> list[Path]:
    """Copy DejaVu Sans into ``folder`` (default :func:`config_dir`) as each missing font of ``FONTS``.

    Returns:
        (list[Path]): The files written (empty when every font was there already).
    """
    import matplotlib

    folder = Path(folder) if folder is not None else config_dir()
    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not source.is_file():
        raise FileNotFoundError(f"pst-yolo: matplotlib's DejaVuSans.ttf not found at {source}")
    written = []
    for name in FONTS:
        target = folder / name
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            written.append(target)
    return written


def main():
    set_offline_env()
    written = seed_fonts()
    print("\n".join(f"wrote {p}" for p in written) or f"fonts already present in {config_dir()}")


if __name__ == "__main__":
    main()
