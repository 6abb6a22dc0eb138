#!/usr/bin/env bash
# Everything the GPU issue asks of a real GPU (on a machine with CUDA torch, nvcc, ninja), in
# stages that each fit a time budget:
#
#   bash scripts/gpu_check.sh [STAGE ...]      (no stage: all of them, in this order)
#
#   build      python setup.py build_ext --inplace (later stages build first when l1ext has no
#              CUDA kernels yet)
#   tests      the whole test suite, which runs the CUDA tests and the parity suite on CUDA too
#   slow       the slow tests (a tensor of more than 2^31 elements)
#   memcheck   compute-sanitizer --tool memcheck over scripts/cuda_sanitizer_cases.py
#   racecheck  compute-sanitizer --tool racecheck over its --small cases (up to 100003 elements)
#   bench      python -m l1ext.bench, the full sweep, with its JSON (saved as rows come) and plot
#              (L1EXT_BENCH_ARGS adds arguments, e.g. "--losses l1 --min-time 0.2")
#   targets    benchmarks/targets.py (the issue's speed targets, yes/no per line); after a complete
#              bench stage in the same batch that has the rows they need, judged on its rows
#              instead of measured again
#   overhead   benchmarks/overhead.py (a 4096-element step against the autograd engine's floor)
#   weighted   benchmarks/weighted.py (the fused weighted box loss against the composition)
#   layouts    benchmarks/layouts.py (broadcast, sliced, transposed operands and dtype pairs
#              against eager torch; on a GPU such operands are copied first)
#   kernels    benchmarks/kernels.py: device time per kernel of one fwd+bwd step, l1ext and
#              eager, for the cases furthest from the targets (bfloat16 Smooth L1 at 2^26,
#              float32 L1 at 2^26 and at 4096), and of the weighted box loss over 1e6 boxes
#              (float32, bfloat16: the fused kernel's bandwidth)
#   grid       benchmarks/cuda/reduce_grid.cu (torch-free): the reduced forward's bandwidth per
#              block count and packs in flight per thread (kUnroll 1, 2, 4)
#   graphs     the quick sweep's fwd+bwd against torch.compile(mode='reduce-overhead'), which
#              replays CUDA graphs (l1ext and eager run as in the bench stage)
#
# Each stage runs under a time limit, and all of them together under L1EXT_CHECK_BUDGET seconds
# (default 560): a stage that would outlast the budget is cut short, so the results are always
# written. Logs and results go to ${L1EXT_RESULTS:-benchmarks/results/gpu}, with this machine's
# directories cut from their paths (clean_paths); where $OUT is set, a
# summary (one line per stage, plus the end of each log) goes to $OUT/summary.txt, every result
# file into one archive, $OUT/gpu-<stages>.tar.gz, and after a build the extension itself,
# $OUT/_C.<tag>.so.gz (unzipped into l1ext/, later stages find its CUDA kernels and skip the
# build). Exit status: 0 when every stage passed.
# L1EXT_COMMIT names the commit where the checkout has no git metadata (results record it).
# Stage times on an H100 at commit efe029a (16 CPU threads): build 162 s, tests 90, slow 9,
# memcheck 10, racecheck 49, bench with L1EXT_BENCH_ARGS=--quick 71, targets from its JSON 4,
# weighted 25, overhead 11, kernels 30, grid 17: every stage but the full bench fits one 560 s
# budget. The full bench sweep (8 sizes) needs a budget of its own. (Since then the grid stage
# builds 30 kernel variants instead of 12, the weighted stage adds loops of steps, and both
# overhead and weighted time their loops again with the engine on the caller: a few seconds more
# each, by estimate; the slow stage adds a CPU test over 2^31 elements, 17 s on 2 cores. The CPU
# kernels now build as 12 objects in parallel, whose longest took 47 s on one core here, where
# the single AVX-512 object took 124 s.)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${L1EXT_RESULTS:-benchmarks/results/gpu}
BUDGET=${L1EXT_CHECK_BUDGET:-560}
ALL_STAGES=(build tests slow memcheck racecheck bench targets overhead weighted layouts kernels grid graphs)
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=("${ALL_STAGES[@]}")
for s in "${STAGES[@]}"; do
  case " ${ALL_STAGES[*]} " in *" $s "*) ;; *) echo "unknown stage: $s (stages: ${ALL_STAGES[*]})" >&2; exit 2 ;; esac
done
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# torch takes the toolkit's root from where nvcc is found; an nvcc wrapper outside the toolkit
# (/usr/local/bin/nvcc on some images) would send it to /usr/local/lib64 for libcudart.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
START=$SECONDS
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
status=0

# Seconds left for a stage: its own limit, or what the budget leaves after 20 s for the archive.
limit_for() {
  local left=$((BUDGET - (SECONDS - START) - 20))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# run_stage NAME LIMIT COMMAND...: the command's output goes to $RESULTS/NAME.txt.
run_stage() {
  local name=$1 limit
  limit=$(limit_for "$2")
  shift 2
  if [ "$limit" -le 10 ]; then
    echo "$name: SKIPPED (budget spent)" | tee -a "$SUMMARY"; status=1; return
  fi
  local t0=$SECONDS rc
  # bash -c runs the exported shell functions below as well as plain commands under timeout.
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > "$RESULTS/$name.txt" 2>&1
  rc=$?
  local verdict=passed
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMED OUT after ${limit}s"; status=1
  elif [ "$rc" -ne 0 ]; then verdict="FAILED (exit $rc)"; status=1; fi
  echo "$name: $verdict in $((SECONDS - t0))s" | tee -a "$SUMMARY"
  tail -n 25 "$RESULTS/$name.txt" | awk -v n="$name" '{print "  [" n "] " $0}' >> "$SUMMARY"
}

has_cuda_kernels() {
  "$PY" -c "import torch, l1ext; import sys; sys.exit(0 if torch._C._dispatch_has_kernel_for_dispatch_key('l1ext::l1_loss', 'CUDA') else 1)" 2>/dev/null
}

# Built in place (no pip, no network); PYTHONPATH makes the checkout importable from benchmarks/.
build() {
  "$PY" setup.py build_ext --inplace &&
    "$PY" -c "import torch, l1ext; print(torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(), 'CPU', l1ext.cpu_capability())" &&
    has_cuda_kernels
}

# racecheck follows every shared-memory access: it gets the smaller case list.
sanitize() {
  compute-sanitizer --tool "$1" --error-exitcode 1 "$PY" scripts/cuda_sanitizer_cases.py \
    $([ "$1" = racecheck ] && echo --small)
}

kernel_profiles() {
  local k=("$PY" benchmarks/kernels.py --device cuda)
  "${k[@]}" --loss smooth_l1 --dtype bfloat16 --n 2^26 && "${k[@]}" --loss l1 --dtype float32 --n 2^26 &&
    "${k[@]}" --loss l1 --dtype float32 --n 4096 && "${k[@]}" --boxes 1e6 --dtype float32 &&
    "${k[@]}" --boxes 1e6 --dtype bfloat16
}

reduce_grid() {
  local arch
  arch=$("$PY" -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())))")
  nvcc -O3 -std=c++17 --expt-relaxed-constexpr -arch="sm_$arch" -Icsrc \
    benchmarks/cuda/reduce_grid.cu -o "$RESULTS/reduce_grid" && "$RESULTS/reduce_grid" || return 1
  rm -f "$RESULTS/reduce_grid"
}

export -f build has_cuda_kernels sanitize kernel_profiles reduce_grid
export PY RESULTS

"$PY" - <<'EOF' | tee -a "$SUMMARY"
import os, subprocess, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
commit = os.environ.get("L1EXT_COMMIT") or subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; commit {commit or 'unknown'}")
EOF

built=0
bench_json=
for stage in "${STAGES[@]}"; do
  if [ "$stage" = build ] || { [ "$built" -eq 0 ] && ! has_cuda_kernels; }; then
    run_stage build 400 build
    built=1
    [ "$stage" = build ] && continue
  fi
  case $stage in
    # The CPU emulation of the CUDA kernels is left to machines without a GPU: here they run.
    # With pytest-xdist (in the H100 / H200 image), 8 workers: the suite took 83 s there, and a
    # test that crashes its worker is reported as a failure instead of ending the run.
    # -v names every test as it ends, so a run cut short shows which tests were still running.
    tests) run_stage tests 420 "$PY" -m pytest -v -rfE --durations=25 --maxfail=50 \
      -p no:cacheprovider \
      $("$PY" -c "import xdist" 2> /dev/null && echo "-n 8") \
      --ignore=tests/test_cuda_emulation.py tests ;;
    slow) run_stage slow 300 "$PY" -m pytest -q -rfE -p no:cacheprovider -m slow tests ;;
    memcheck | racecheck)
      if command -v compute-sanitizer > /dev/null; then
        run_stage "sanitizer-$stage" 500 sanitize "$stage"
      else
        echo "sanitizer-$stage: FAILED (compute-sanitizer not found)" | tee -a "$SUMMARY"; status=1
      fi ;;
    targets)
      # A complete sweep with the rows the targets need (mean, 2^26 and 4096, compiled column) is
      # judged as it is; otherwise the targets are measured.
      if [ -n "$bench_json" ] && "$PY" benchmarks/targets.py --from-json "$bench_json" > /dev/null 2>&1; then
        run_stage gpu-targets 60 "$PY" benchmarks/targets.py --from-json "$bench_json"
      else
        run_stage gpu-targets 500 "$PY" benchmarks/targets.py --device cuda --json "$RESULTS/gpu-targets.json"
      fi ;;
    kernels) run_stage gpu-kernels 120 kernel_profiles ;;
    grid) run_stage gpu-grid 120 reduce_grid ;;
    overhead) run_stage gpu-overhead 200 "$PY" benchmarks/overhead.py --device cuda --json "$RESULTS/gpu-overhead.json" ;;
    weighted) run_stage gpu-weighted 300 "$PY" benchmarks/weighted.py --device cuda --json "$RESULTS/gpu-weighted.json" ;;
    layouts) run_stage gpu-layouts 200 "$PY" benchmarks/layouts.py --device cuda --json "$RESULTS/gpu-layouts.json" ;;
    graphs) run_stage gpu-bench-reduce-overhead 300 "$PY" -m l1ext.bench --device cuda --quick \
      --passes fwdbwd --compile-mode reduce-overhead --no-progress \
      --json "$RESULTS/gpu-bench-reduce-overhead.json" ;;
    # shellcheck disable=SC2086  # L1EXT_BENCH_ARGS is a list of arguments
    bench)
      run_stage gpu-bench 540 "$PY" -m l1ext.bench --device cuda --no-progress \
        --json "$RESULTS/gpu-bench.json" --plot "$RESULTS/gpu-bench.png" ${L1EXT_BENCH_ARGS:-}
      if grep -q '"complete": true' "$RESULTS/gpu-bench.json" 2>/dev/null; then
        bench_json=$RESULTS/gpu-bench.json
      fi ;;
  esac
done

# The logs name this machine's directories (the checkout, the results folder, Python's packages,
# the compilers): cut to what they are, so that the files can be committed as they come back.
# Exact strings from this machine, longest first, so nothing outside them is touched.
clean_paths() {
  "$PY" - "$RESULTS" <<'EOF'
import os, shutil, site, sys, sysconfig
results = os.path.abspath(sys.argv[1])
pairs = {os.getcwd() + "/": "", os.getcwd(): ".", results + "/": "benchmarks/results/gpu/",
         sysconfig.get_paths()["include"]: "python/include", sys.prefix + "/include": "venv/include"}
for d in site.getsitepackages() + [site.getusersitepackages()]:
    pairs[d.rstrip("/") + "/"] = "site-packages/"
for tool in ("g++", "gcc", "c++", "cc", "nvcc", "compute-sanitizer"):
    where = shutil.which(tool)
    if where:
        pairs[where] = tool
        pairs[os.path.realpath(where)] = tool
pairs = sorted(((a, b) for a, b in pairs.items() if len(a) > 1), key=lambda p: -len(p[0]))
for name in os.listdir(results):
    path = os.path.join(results, name)
    if not name.endswith((".txt", ".json")) or not os.path.isfile(path):
        continue
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    cleaned = text
    for a, b in pairs:
        cleaned = cleaned.replace(a, b)
    if cleaned != text:
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(cleaned)
EOF
}
clean_paths

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/summary.txt"
  tag=$(IFS=-; echo "${STAGES[*]}")
  tar czf "$OUT/gpu-$tag.tar.gz" -C "$RESULTS" .
  # The extension built here, compressed (37 MB -> 14 MB for sm_90), so that a later batch on a
  # fresh machine can bring it back into l1ext/ instead of building again (about 4 minutes).
  if [ "$built" -eq 1 ]; then
    for so in l1ext/_C*.so; do [ -f "$so" ] && gzip -1 -c "$so" > "$OUT/$(basename "$so").gz"; done
  fi
fi
echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED) (stages: ${STAGES[*]}; $((SECONDS - START))s)"
exit "$status"
