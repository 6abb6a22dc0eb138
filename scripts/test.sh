#!/usr/bin/env bash
# Sets up and runs the test suite on a CPU machine with Python 3: torch 2.13.0 (CPU build, pinned
# so pip never fetches a CUDA torch), the test dependencies, l1ext built in place; then pytest,
# one worker per core (pytest-xdist; the suite is CPU-bound, and one process used one core of CI's
# two). L1EXT_TEST_JOBS=N sets the count; 0 runs the tests in this process.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q torch==2.13.0 ninja pytest pytest-xdist hypothesis numpy matplotlib
"$PY" -m pip install -q --no-build-isolation -e .
"$PY" -m pytest -q -n "${L1EXT_TEST_JOBS:-auto}" "$@"
