#!/usr/bin/env bash
# Everything the GPU issue asks of a real GPU, in one command (on a machine with CUDA torch, nvcc,
# ninja): build, the CUDA tests (and the parity suite on CUDA), compute-sanitizer memcheck and
# racecheck, and the benchmark. Results go to ${OUT:-benchmarks/results/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
status=0
"$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3 || exit 1
"$PY" -c "import torch, l1ext; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), l1ext.cpu_capability())"
"$PY" -m pytest -q -x tests/test_cuda.py tests/test_parity.py -k "cuda" 2>&1 | tee "$OUT_DIR/tests.txt" | tail -5 || status=1
"$PY" -m pytest -q tests/test_cuda.py -m slow 2>&1 | tail -3 || status=1
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" scripts/cuda_sanitizer_cases.py \
      > "$OUT_DIR/sanitizer-$tool.txt" 2>&1 || status=1
    tail -3 "$OUT_DIR/sanitizer-$tool.txt"
  done
else
  echo "compute-sanitizer not found" | tee "$OUT_DIR/sanitizer.txt"; status=1
fi
"$PY" benchmarks/targets.py --device cuda --json "$OUT_DIR/gpu-targets.json" > "$OUT_DIR/gpu-targets.txt" 2>&1 || status=1
tail -40 "$OUT_DIR/gpu-targets.txt"
"$PY" benchmarks/overhead.py --device cuda --json "$OUT_DIR/gpu-overhead.json" > "$OUT_DIR/gpu-overhead.txt" 2>&1 || status=1
tail -4 "$OUT_DIR/gpu-overhead.txt"
"$PY" benchmarks/weighted.py --device cuda --json "$OUT_DIR/gpu-weighted.json" > "$OUT_DIR/gpu-weighted.txt" 2>&1 || status=1
"$PY" -m l1ext.bench --device cuda --no-progress --json "$OUT_DIR/gpu-bench.json" --plot "$OUT_DIR/gpu-bench.png" \
  > "$OUT_DIR/gpu-bench.txt" 2>&1 || status=1
exit "$status"
