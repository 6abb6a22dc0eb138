#!/usr/bin/env bash
# Sets up and runs the test suite on a CPU machine with Python 3: torch 2.13.0 (CPU build, pinned
# so pip never fetches a CUDA torch), the test dependencies, l1ext built in place; then pytest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q torch==2.13.0 ninja pytest hypothesis numpy matplotlib
"$PY" -m pip install -q --no-build-isolation -e .
"$PY" -m pytest -q "$@"
