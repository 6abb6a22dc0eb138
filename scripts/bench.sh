#!/usr/bin/env bash
# Sets up and runs the main job, the benchmark against torch's built-ins, on a machine with
# Python 3: torch 2.13.0 (CPU build, pinned), matplotlib, l1ext built in place. Extra arguments
# go to the benchmark (python -m l1ext.bench --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q torch==2.13.0 ninja matplotlib
"$PY" -m pip install -q --no-build-isolation -e .
"$PY" -m l1ext.bench "$@"
