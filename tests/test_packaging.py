"""The source distribution carries everything the build needs: an sdist that lacks a header
builds nowhere, and `pip install` of a released archive is how most users would meet that."""
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

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


def _setup_module():
    # setup.py only defines when imported (it calls setup() as __main__).
    sys.path.insert(0, str(ROOT))
    try:
        import setup
    finally:
        sys.path.remove(str(ROOT))
    return setup


@pytest.mark.parametrize("version, standard", [
    ("2.11.0+cu130", "c++17"), ("2.12.1", "c++17"), ("2.13.0+cpu", "c++20"),
    ("2.14.1", "c++20"), ("2.15.0a0+git1234abc", "c++20"), ("3.0.0", "c++20"),
])
def test_cxx_standard_follows_torch(monkeypatch, version, standard):
    # torch 2.14's headers refuse C++17 ("C++20 or later compatible compiler is required to use
    # ATen"); a pinned -std=c++17 overrode torch's own default and broke every build there.
    setup = _setup_module()
    monkeypatch.setattr(torch, "__version__", version)
    assert setup.cxx_standard() == standard
    assert f"-std={setup.CXX_STD}" in setup.CXX_FLAGS


def test_cuda_archs_without_a_visible_gpu(monkeypatch):
    # torch's builder fails (IndexError) when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset:
    # the build takes torch's own architectures then, and otherwise leaves the choice alone.
    setup = _setup_module()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # so that teardown restores what was there
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_arch_list",
                        lambda: ["sm_75", "sm_80", "sm_90a", "sm_100", "compute_120"])
    setup._default_cuda_archs()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "7.5;8.0;10.0+PTX"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    setup._default_cuda_archs()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    setup._default_cuda_archs()
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ
