#!/usr/bin/env bash
# Compiles every CUDA source with nvcc against the installed torch's headers, for sm_80 and sm_90
# (or L1EXT_CHECK_ARCHS), so that a CUDA compile error cannot land even where no GPU (and no CUDA
# torch) is present; and the torch-free GPU benchmark programs (benchmarks/cuda) as
# scripts/gpu_check.sh builds them.
# A CPU torch wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h: it is written to a
# temporary include directory. Skips (exit 0) with a message where nvcc is missing.
# L1EXT_CHECK_ARCHS="75 80 86 90 100 120" checks other architectures (default: 80 90).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  echo "cuda compile check: nvcc not found, skipped"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/include/c10/cuda/impl"
cat > "$tmp/include/c10/cuda/impl/cuda_cmake_macros.h" <<'H'
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
H
mapfile -t incs < <("$PY" -c "
import sysconfig
from torch.utils.cpp_extension import include_paths
for p in include_paths(): print('-I' + p)
print('-I' + sysconfig.get_paths()['include'])")
archs=${L1EXT_CHECK_ARCHS:-80 90}
arch_names="sm_${archs// /, sm_}"
abi=$("$PY" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
# The C++ standard of the build (setup.py's CXX_STD: C++20 from torch 2.13 on).
std=$("$PY" -c "import sys; sys.path.insert(0, '.'); import setup; print(setup.CXX_STD)")
# One nvcc per source, as many at once as there are cores (the kernels are split by element
# type for this, see csrc/cuda/launch.h).
# The per-element-type kernel files (losses_cuda_<type>.cu) are compiled without torch's include
# paths: they hold kernels alone (csrc/cuda/launch.h), and a torch header there would bring back
# the parse of torch's headers, most of each file's compile time.
compile_one() {  # SOURCE INCLUDE_FLAG...
  local src=$1 a gencode=()
  shift
  for a in $archs; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
  case "$src" in
    */losses_cuda_*.cu) set -- ;;
  esac
  "$NVCC" -c "$src" -o "$tmp/$(basename "$src").o" -std="$std" -O3 --expt-relaxed-constexpr \
    -Xcompiler -fPIC -Xcompiler -Wno-c++20-extensions -diag-suppress 3306 \
    -D_GLIBCXX_USE_CXX11_ABI="$abi" -DTORCH_EXTENSION_NAME=_C -DL1EXT_WITH_CUDA=1 \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ \
    "${gencode[@]}" \
    -I"$tmp/include" -Icsrc "$@" > "$tmp/$(basename "$src").log" 2>&1
  local rc=$?
  echo "nvcc $src ($arch_names): $([ $rc -eq 0 ] && echo ok || echo FAILED)"
  cat "$tmp/$(basename "$src").log"
  return $rc
}
export NVCC tmp abi std archs arch_names
status=0
# The torch-free benchmark programs (benchmarks/cuda/*.cu), compiled as scripts/gpu_check.sh
# compiles them on a GPU machine, so that a GPU run does not find them broken.
compile_benchmark() {  # SOURCE
  local src=$1 log
  mkdir -p "$tmp/bench"
  log="$tmp/bench/$(basename "$src").log"
  "$NVCC" -c "$src" -o "$tmp/bench/$(basename "$src").o" -O3 -std=c++17 \
    --expt-relaxed-constexpr -arch=sm_90 -Icsrc > "$log" 2>&1
  local rc=$?
  echo "nvcc $src (sm_90, as gpu_check.sh builds it): $([ $rc -eq 0 ] && echo ok || echo FAILED)"
  cat "$log"
  return $rc
}
export -f compile_one
bench_status="$tmp/bench.status"
(
  rc=0
  for src in benchmarks/cuda/*.cu; do compile_benchmark "$src" || rc=1; done
  echo "$rc" > "$bench_status"
) &
printf '%s\n' csrc/*/*.cu | xargs -P "$(nproc)" -I{} bash -c 'compile_one "$@"' _ {} "${incs[@]}" \
  || status=1
wait
[ "$(cat "$bench_status")" = 0 ] || status=1
# What the CUDA objects leave undefined in l1ext::cuda (a Launch<T> the glue calls but no per-type
# file instantiates, say) must be defined by one of them: the link into _C.so happens only where
# a CUDA torch is installed, and would fail there, at import.
if [ "$status" = 0 ] && command -v nm > /dev/null; then
  undefined=$(nm -C --undefined-only "$tmp"/*.o | grep -o 'l1ext::cuda::.*' | sort -u)
  defined=$(nm -C --defined-only "$tmp"/*.o | grep -o 'l1ext::cuda::.*' | sort -u)
  missing=$(comm -23 <(echo "$undefined") <(echo "$defined") | grep -v '^$' || true)
  if [ -n "$missing" ]; then
    echo "l1ext::cuda symbols the CUDA objects need and none of them defines:"
    echo "$missing"
    status=1
  fi
fi
[ "$status" = 0 ] && echo "cuda compile check: ok"
exit "$status"
