#!/usr/bin/env bash
# Oldest supported Ultralytics: install it beside (not over) the installed one and run registration + one training
# epoch through the stock `yolo` command, and its DDP worker script (the pre-8.4.140 mechanism). The newest supported version is the one installed in CI and is covered by the
# normal test suite. Usage: .ci/compat.sh [VERSION]   (default: the lower bound of pst_yolo.integration.SUPPORTED)
# Needs the package index once per version (wheel cached under $PST_COMPAT_CACHE); < 1 minute on 2 CPU cores.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
version="${1:-$(PYTHONPATH="$repo" python -c 'from pst_yolo.integration import SUPPORTED; print(".".join(map(str, SUPPORTED[0])))')}"
cache="${PST_COMPAT_CACHE:-${TMPDIR:-/tmp}/pst-compat}"
target="$cache/ultralytics-$version"
work="$(mktemp -d)"; mkdir -p "$work/config"
trap 'rm -rf "$work"' EXIT
if [ ! -f "$target/ultralytics/__init__.py" ]; then
  python -m pip install --quiet --no-deps --target "$target" "ultralytics==$version"
fi
# Own settings dir: an older Ultralytics rewrites settings.json of the newer one (and vice versa).
export PYTHONPATH="$target:$repo" OMP_NUM_THREADS=1 YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$work/config"
cd "$work"
python - "$version" <<'PY'
import sys
import ultralytics
assert ultralytics.__version__ == sys.argv[1], (ultralytics.__version__, ultralytics.__file__)
from ultralytics.nn.tasks import DetectionModel, parse_model
assert getattr(parse_model, "_pst_yolo_patched", False), "registration hook did not patch parse_model"
from pst_yolo.modules import PST
m = DetectionModel("yolo11n-pst.yaml", nc=3, verbose=False)
assert sum(isinstance(x, PST) for x in m.modules()) == 2
DetectionModel("yolov10n.yaml", verbose=False)  # stock PSA/PSABlock untouched
from pst_yolo.data import make_detection_dataset
make_detection_dataset("data", n_train=8, n_val=4, imgsz=64)
print(f"registration OK with ultralytics {ultralytics.__version__} ({ultralytics.__file__})")
PY
yolo train model=yolo11n-pst.yaml data=data/data.yaml epochs=1 imgsz=64 batch=4 workers=0 device=cpu \
  plots=False amp=False project="$work/runs" name=compat exist_ok=True >"$work/train.log" 2>&1 \
  || { tail -50 "$work/train.log"; exit 1; }
grep -q "Ultralytics $version" "$work/train.log" || { echo "yolo did not run ultralytics $version"; tail -20 "$work/train.log"; exit 1; }
test -f "$work/runs/compat/weights/last.pt"
python -c "
from ultralytics import YOLO
from pst_yolo.runtime import set_topk
assert set_topk(YOLO('$work/runs/compat/weights/last.pt'), 2) == 2
"
# Multi-GPU: the DDP worker script of this version (<= 8.4.139 rebuilds the trainer from the YAML name) on a PST model.
python -m pytest -q -p no:cacheprovider --rootdir "$repo" \
  "$repo/tests/test_ddp.py::test_generated_ddp_worker_script_loads_and_trains_pst_model" >"$work/ddp.log" 2>&1 \
  || { tail -50 "$work/ddp.log"; exit 1; }
echo "compat: ultralytics $version registers, trains one epoch, reloads its checkpoint and runs its DDP worker script"
