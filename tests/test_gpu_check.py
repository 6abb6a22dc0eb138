"""scripts/gpu_check.sh brings its logs back without the GPU machine's directories in them
(clean_paths), so that they can be committed as they are. Runs here: the function is plain bash
and Python."""
import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _clean_paths_function():
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    match = re.search(r"^clean_paths\(\) \{\n.*?^\}\n", script, re.S | re.M)
    assert match, "scripts/gpu_check.sh defines clean_paths"
    return match.group(0)


def test_clean_paths_cuts_the_machines_directories(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    packages = site.getsitepackages()[0].rstrip("/")
    compiler = shutil.which("g++")
    lines = [f"rootdir: {ROOT}", f"File {ROOT}/l1ext/bench.py, line 3",
             f"{packages}/torch/profiler/profiler.py:224: UserWarning", f"wrote {results}/gpu.json"]
    want = ["rootdir: .", "File l1ext/bench.py, line 3",
            "site-packages/torch/profiler/profiler.py:224: UserWarning",
            "wrote benchmarks/results/gpu/gpu.json"]
    if compiler:
        lines.append(f"{compiler} -O3 -c x.cpp")
        want.append("g++ -O3 -c x.cpp")
    (results / "build.txt").write_text("\n".join(lines) + "\n")
    (results / "gpu.json").write_text(json.dumps({"file": f"{packages}/torch/__init__.py"}))
    (results / "reduce_grid").write_bytes(f"{ROOT}".encode())  # not a log: left alone

    env = dict(os.environ, PY=sys.executable, RESULTS=str(results))
    subprocess.run(["bash", "-c", _clean_paths_function() + "clean_paths\n"], cwd=ROOT, env=env,
                   check=True)

    assert (results / "build.txt").read_text() == "\n".join(want) + "\n"
    cleaned = json.loads((results / "gpu.json").read_text())
    assert cleaned == {"file": "site-packages/torch/__init__.py"}
    assert (results / "reduce_grid").read_bytes() == f"{ROOT}".encode()
