"""Running Ultralytics with no network: what it would fetch at run time, provided locally.

Two things reach out even for local data: the connectivity check at import (DNS lookups; off with ``YOLO_OFFLINE=1``)
and ``check_font``, which every ``check_det_dataset`` call (each train/val on a detection data YAML) runs and which
sends a HEAD request to GitHub unless ``Arial.ttf`` / ``Arial.Unicode.ttf`` is in Ultralytics' config folder. No
switch turns the second off, so :func:`seed_fonts` puts matplotlib's DejaVu Sans (shipped with matplotlib, an
Ultralytics dependency) there under those names; plots then use DejaVu Sans instead of Arial.

    python -m pst_yolo.offline          # seeds the fonts into $YOLO_CONFIG_DIR or Ultralytics' default config folder

The test suite (tests/conftest.py) and the main job (pst-yolo demo) do this for themselves; tests/test_offline.py
checks with an audit hook that nothing tries to connect.

A third fetch happens in every TensorFlow export (SavedModel, GraphDef, Edge TPU, TF.js): Ultralytics downloads
onnx2tf's sample calibration images into the working directory, even for a float32 export that never reads them.
pst-yolo's export callback writes :func:`seed_onnx2tf_calibration`'s local file there first (``pst_yolo.integration``).

A fourth comes with MNN: importing its converter (``MNN.tools.mnnconvert``, which every MNN export does) imports a
usage logger that, when ``aliyun-log-python-sdk`` is missing, runs ``pip install -U aliyun-log-python-sdk`` with
whatever ``pip`` is first on PATH, then posts usage logs to Alibaba Cloud. That package pins ``protobuf<6``, so in an
activated environment the install silently downgrades protobuf below what onnx 1.23 was built against (6.31) and every
later ONNX export in that environment fails. The converter treats the logger as optional (a failed import leaves it
``None``), so :func:`block_mnn_telemetry` makes that import fail; the export callback calls it for MNN exports.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names ultralytics.utils.checks.check_font looks for
# The file ultralytics.utils.export.tensorflow fetches unless it is in the working directory (onnx2tf's default int8
# calibration sample: 20 RGB images of 128 x 128 in [0, 1], NHWC float32).
ONNX2TF_CALIBRATION = "calibration_image_sample_data_20x128x128x3_float32.npy"
TF_FORMATS = ("saved_model", "pb", "edgetpu", "tfjs")
ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
MNN_TELEMETRY = "MNN.tools.utils.log"  # imported (optionally) by MNN.tools.mnnconvert and MNN.tools.mnnquant


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


def seed_onnx2tf_calibration(folder=".") -> Path | None:
    """Write onnx2tf's calibration sample (``ONNX2TF_CALIBRATION``) into ``folder`` if it is missing, made from 20
    generated demo images, so a TensorFlow export does not download it. Returns the file written, or None.

    Int8 exports with ``data=`` calibrate on that data instead; only an int8 export without data would calibrate on
    these images (Ultralytics' downloaded sample would be as arbitrary for your data).
    """
    import numpy as np

    target = Path(folder) / ONNX2TF_CALIBRATION
    if target.exists():
        return None
    from pst_yolo.data.shapes import detection_image

    rng = np.random.default_rng(0)
    images = np.stack([detection_image(rng, 128)[0][..., ::-1] for _ in range(20)]).astype(np.float32) / 255.0
    np.save(target, images)
    return target


def block_mnn_telemetry() -> bool:
    """Make ``import MNN.tools.utils.log`` fail in this process (``sys.modules`` entry None), so MNN's converter runs
    without its logger instead of pip-installing one and posting usage logs. Returns True the first time it takes
    effect, False if it was blocked already or the logger had been imported before (then it is left alone).
    """
    import sys

    if MNN_TELEMETRY in sys.modules:
        return False
    sys.modules[MNN_TELEMETRY] = None
    return True


def main():
    set_offline_env()
    written = seed_fonts()
    print("\n".join(f"wrote {p}" for p in written) or f"fonts already present in {config_dir()}")


if __name__ == "__main__":
    main()
