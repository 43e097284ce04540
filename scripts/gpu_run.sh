#!/usr/bin/env bash
# The whole GPU verification (issue 22) as one device call of at most 9 minutes: install the carried wheels, run the
# fake-CUDA check first (pst-yolo fake-cuda, at most 90 s: the path CI checks without a GPU), then pst-yolo gpu-check's
# four sections in order of value, each within its time budget (cli 210 s, kernels 60 s, latency 150 s, memory 45 s;
# the last one gets what is left), writing fake_cuda.log, gpu_check.md / gpu_check.json / gpu_check.log into $OUT as it
# goes (a timeout still returns what finished), then print a compact summary. Runbook: docs/performance.md "GPU
# runbook".
#
#   here, once:     bash scripts/gpu_wheels.sh            # what the GPU machine lacks, into .whl/ (git-ignored)
#   device call:    bash scripts/gpu_run.sh               # carry: [".whl"], timeout_s: 580
#   CPU rehearsal:  bash scripts/gpu_run.sh --rehearse    # the same script, small, on this machine (tests do it)
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
mkdir -p "${OUT:-runs/gpu-run}"
out=$(cd "${OUT:-runs/gpu-run}" && pwd)
py=python3
if [[ "${1:-}" == --rehearse ]]; then
  py="${PYTHON:-python3}"
  args=(--device cpu --smoke)
  limit=600
else
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_run: no wheels in .whl/ (run scripts/gpu_wheels.sh here and carry .whl)" >&2
    exit 2
  fi
  # --no-deps: the image's torch/triton/onnx stay; pst_yolo.pth (the start-up hook the stock `yolo` needs) comes with
  # a normal install, not with --target
  "$py" -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl >"$out/install.log" 2>&1 \
    || { tail -20 "$out/install.log"; exit 3; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/nvidia-smi.txt" 2>&1 || true
  args=(--device 0)
  limit=$((540 - (SECONDS - start)))  # 9 minutes for the whole call
fi
# Run from outside the repository: the installed package (and its start-up hook) is what gets tested.
work=$(mktemp -d)
# First the device-cleanliness check of the CUDA path (pst-yolo fake-cuda: what CI checks without a GPU), so the GPU
# minutes start from a path known to be clean; the rehearsal checks one model.
fake=(--workers 8)
[[ "${1:-}" == --rehearse ]] && fake=(--models yolo11n-pst.yaml --no-branches --workers 1)
fake_start=$SECONDS
(cd "$work" && timeout --signal=INT --kill-after=10 90 "$py" -m pst_yolo.tools.fakecuda "${fake[@]}") \
  >"$out/fake_cuda.log" 2>&1
echo "gpu_run: fake-CUDA check exit $?: $(tail -1 "$out/fake_cuda.log")"
# The optional kernels' numbers at every PSA coarse shape (on CPU: under Triton's interpreter, as CI runs them), both
# half dtypes, against float64 (pst_yolo.kernel_check).
# The rehearsal checks one layout at one size in one dtype without the whole model (tests/test_kernels_executed.py
# runs the rest on CPU).
kc=()
[[ "${1:-}" == --rehearse ]] && kc=(--layouts yolo11n-pst.yaml --sizes 160 --dtypes float16 --model '')
(cd "$work" && timeout --signal=INT --kill-after=10 90 "$py" -m pst_yolo.kernel_check "${kc[@]}") \
  >"$out/kernel_check.log" 2>&1
echo "gpu_run: kernel check exit $?: $(grep -c ' ok$' "$out/kernel_check.log") ok, $(grep -c FAIL "$out/kernel_check.log") FAIL"
limit=$((limit - (SECONDS - fake_start)))
echo "gpu_run: installed in $((SECONDS - start)) s; gpu_check for at most $limit s"
(cd "$work" && timeout --signal=INT --kill-after=10 "$limit" "$py" -m pst_yolo.tools.gpu_check "${args[@]}" \
  --out "$out" ${GPU_CHECK_ARGS:-}) >"$out/gpu_check.log" 2>&1
rc=$?
if [[ -f "$out/gpu_check.json" ]]; then
  "$py" -m pst_yolo.tools.gpu_check --summary "$out"
else
  tail -30 "$out/gpu_check.log"
fi
echo "gpu_run: gpu_check exit $rc, whole run $((SECONDS - start)) s"
exit $rc
