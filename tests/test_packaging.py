"""The source distribution carries everything the build needs: an sdist that lacks a header
builds nowhere, and `pip install` of a released archive is how most users would meet that."""
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="lists the source tree with git")
def test_sdist_carries_every_source(tmp_path):
    # The sdist is built from a copy, so the checkout gets no egg-info or dist folder.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.split()
    for f in tracked:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src,
                         check=True, capture_output=True, text=True).stdout.split()[-1]
    with tarfile.open(tmp_path / "dist" / out) as tar:
        prefix = out[: -len(".tar.gz")] + "/"
        shipped = {n[len(prefix):] for n in tar.getnames()}
    wanted = {f for f in tracked
              if f.startswith(("csrc/", "l1ext/", "tests/", "scripts/", ".ci/"))
              or f in ("setup.py", "pyproject.toml", "README.md")
              or (f.startswith(("benchmarks/", "examples/")) and f.endswith((".py", ".cu")))}
    assert {"csrc/loss_math.h", "csrc/cpu/loss_kernels.cpp"} <= wanted
    assert sorted(wanted - shipped) == []
    assert not any(n.startswith("benchmarks/results/") for n in shipped)
