#!/usr/bin/env bash
# What the lent GPU machine lacks for pst-yolo gpu-check, as files in .whl/ to carry with each run (carry: [".whl"]).
# That machine has Python 3.12, torch, triton, onnx, onnxruntime, opencv-python-headless and no network; it lacks
# Ultralytics (taken at the version installed here, without its dependencies) and what Ultralytics imports for
# train/val (polars, ultralytics-thop, ultralytics-platform), onnxslim for exports, sageattention and pst-yolo itself.
# polars is pinned to the last single-wheel release (40 MB): 2.x splits off a 54 MB runtime, and a run carries at most
# 64 MiB. .whl/ is ignored through .git/info/exclude, so it never lands in a commit.
#
#   bash scripts/gpu_wheels.sh           # ~44 MB; then one device call: bash scripts/gpu_run.sh (carry: [".whl"])
#   bash scripts/gpu_wheels.sh --flash   # also the flash-attn source archive (8 MB): PyPI has no flash-attn wheel, and
#                                        # its CUDA build does not fit the 9-minute run (docs/performance.md)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$dest/" "$exclude" 2>/dev/null || echo "/$dest/" >>"$exclude"
rm -rf "$dest"
mkdir -p "$dest"
ultralytics=$(python -c 'import importlib.metadata as m; print(m.version("ultralytics"))')
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$dest" "ultralytics==$ultralytics" "polars==1.33.1" "ultralytics-thop>=2.2.3" ultralytics-platform \
  "sageattention==1.0.6" "onnxslim>=0.1.82"
python -m pip wheel -q --no-deps -w "$dest" .
if [[ "${1:-}" == --flash ]]; then
  python -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$dest" "flash-attn==2.8.3.post2"
fi
ls "$dest"
du -sh "$dest"
