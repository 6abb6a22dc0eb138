"""The CPU output cache (csrc/cpu/memory.cpp): l1ext's outputs of 8 MiB and more reuse the memory of
l1ext outputs the program released. What it must keep: every value (a reused block holds a former
output's numbers until the kernel overwrites it), at most four idle blocks, the profiler's view of
the memory in use, resizable storage, and l1ext.empty_cache() / L1EXT_OUTPUT_CACHE=0."""
import gc
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as TF

import l1ext
import l1ext.functional as LF
from l1ext import bench

from conftest import assert_close

MIB = 2**20
CACHED_FROM = 8 * MIB  # bytes; smaller outputs come from torch's allocator
N = 4 * MIB  # float32 elements: a 16 MiB output


@pytest.fixture(autouse=True)
def empty_cache_around():
    gc.collect()
    l1ext.empty_cache()
    yield
    gc.collect()
    l1ext.empty_cache()


def test_released_outputs_are_kept_then_freed():
    x = torch.randn(N, requires_grad=True)
    LF.smooth_l1_loss(x, torch.randn(N)).backward()
    assert l1ext.empty_cache() == 0  # the gradient is x.grad: in use
    x.grad = None
    assert l1ext.empty_cache() == N * 4
    assert l1ext.empty_cache() == 0


def test_small_outputs_bypass_the_cache():
    n = CACHED_FROM // 4 - 1
    out = LF.l1_loss(torch.randn(n), torch.randn(n), reduction="none")
    del out
    assert l1ext.empty_cache() == 0


def test_at_most_four_idle_blocks_the_latest_released():
    sizes = [N + k * MIB for k in range(6)]  # every one its own block (more than 1/8 apart)
    outs = [LF.l1_loss(torch.zeros(n), torch.zeros(n), reduction="none") for n in sizes]
    for k in range(len(outs)):
        outs[k] = None  # released in order
    kept = l1ext.empty_cache()
    capacity = [-(-n * 4 // (2 * MIB)) * 2 * MIB for n in sizes]  # whole 2 MiB pages
    assert kept == sum(capacity[-4:])


def test_a_block_serves_a_slightly_smaller_output():
    big_n = N + MIB // 2  # 18 MiB
    big = LF.l1_loss(torch.zeros(big_n), torch.zeros(big_n), reduction="none")
    ptr = big.data_ptr()
    del big
    small_n = N - N // 10  # 14.4 MiB: 16 MiB of pages, and 18 is at most an eighth more
    smaller = LF.l1_loss(torch.ones(small_n), torch.zeros(small_n), reduction="none")
    assert smaller.data_ptr() == ptr
    assert l1ext.empty_cache() == 0
    assert torch.equal(smaller, torch.ones_like(smaller))
    del smaller
    half = LF.l1_loss(torch.zeros(N // 2), torch.zeros(N // 2), reduction="none")
    assert l1ext.empty_cache() == big_n * 4  # too large a block for it: kept for a better fit
    del half


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_values_with_reused_memory(dtype):
    """Each call runs on memory that held another output (NaNs, infinities, other losses): every
    forward, backward, sign and weighted path still gives torch's values and gradients."""
    n = CACHED_FROM // torch.finfo(dtype).bits * 8 + 1000
    stale = torch.full((n,), float("nan"), dtype=dtype)
    for step in range(3):
        for name, ours, theirs, kw in [
            ("l1", LF.l1_loss, TF.l1_loss, {}),
            ("smooth_l1", LF.smooth_l1_loss, TF.smooth_l1_loss, {"beta": 0.5}),
            ("huber", LF.huber_loss, TF.huber_loss, {"delta": 0.7}),
        ]:
            for reduction in ["none", "mean", "sum"]:
                garbage = [LF.l1_loss(stale, -stale, reduction="none") for _ in range(2)]
                del garbage  # the cache now holds blocks full of NaN
                x = torch.randn(n, dtype=dtype)
                y = torch.randn(n, dtype=dtype)
                results = []
                for fn in (ours, theirs):
                    xi = x.clone().requires_grad_()
                    yi = y.clone().requires_grad_()
                    loss = fn(xi, yi, reduction=reduction, **kw)
                    g = torch.full_like(loss, 0.5 + step)
                    loss.backward(g)
                    results.append((loss.detach(), xi.grad, yi.grad))
                for a, b in zip(*results):
                    assert_close(a, b)


def test_weighted_values_with_reused_memory():
    n = CACHED_FROM // 16 + 8  # boxes (n, 4), float32: 8 MiB and more
    w = torch.rand(n)
    for _ in range(2):
        garbage = LF.l1_loss(torch.full((n, 4), float("inf")), torch.zeros(n, 4), reduction="none")
        del garbage
        p = torch.randn(n, 4, requires_grad=True)
        t = torch.randn(n, 4)
        loss = LF.smooth_l1_loss(p, t, beta=1 / 9, weight=w, avg_factor=7.0, reduction="mean")
        loss.backward()
        q = p.detach().clone().requires_grad_()
        ref = (TF.smooth_l1_loss(q, t, beta=1 / 9, reduction="none") * w[:, None]).sum() / (
            7.0 + torch.finfo(torch.float32).eps)
        ref.backward()
        assert_close(loss.detach(), ref.detach())
        assert_close(p.grad, q.grad)


def test_profiler_sees_the_memory_in_use():
    """A step on reused memory reports its outputs as allocations, as a fresh one does, so
    l1ext.bench's peak memory (the profiler's running sum) stays what the step holds."""
    x = torch.randn(N, requires_grad=True)
    y = torch.randn(N)

    def step():
        x.grad = None
        LF.smooth_l1_loss(x, y).backward()

    step()
    x.grad = None  # the gradient's block is now idle: the next step reuses it
    peak = bench.peak_memory(torch.device("cpu"), step)
    assert peak is not None and peak >= N * 4


def test_storage_stays_resizable():
    out = LF.l1_loss(torch.ones(N), torch.zeros(N), reduction="none")
    out.resize_(2 * N)
    out[N:] = 2
    assert torch.equal(out[:N], torch.ones(N)) and torch.equal(out[N:], torch.full((N,), 2.0))
    out.resize_(N // 2)
    assert torch.equal(out, torch.ones(N // 2))


def test_released_on_other_threads():
    x = torch.randn(N)
    outs = [LF.l1_loss(x, -x, reduction="none") for _ in range(8)]

    def drop(k):
        outs[k] = None

    threads = [threading.Thread(target=drop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert l1ext.empty_cache() == 4 * N * 4


def _run(code, **env):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cache_turned_off():
    code = (
        "import torch, l1ext, l1ext.functional as LF\n"
        f"out = LF.l1_loss(torch.zeros({N}), torch.ones({N}), reduction='none')\n"
        "assert float(out.sum()) == out.numel()\n"
        "del out\n"
        "print(l1ext.empty_cache())\n"
    )
    assert _run(code, L1EXT_OUTPUT_CACHE="0").strip() == "0"
    assert _run(code).strip() == str(N * 4)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_releases_outputs():
    """A child forked while the parent holds outputs (a DataLoader worker) releases and allocates
    its own copies freely. It runs one thread, as DataLoader workers do: an OpenMP thread pool the
    parent used hangs in a forked child (torch's own kernels too)."""
    code = (
        "import os, threading, torch, l1ext, l1ext.functional as LF\n"
        f"x = torch.randn({N})\n"
        "outs = [LF.l1_loss(x, -x, reduction='none') for _ in range(3)]\n"
        "outs.pop()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    torch.set_num_threads(1)\n"
        "    outs.clear()\n"
        "    again = LF.l1_loss(x, -x, reduction='none')\n"
        "    ok = torch.equal(again, 2 * x.abs()) and l1ext.empty_cache() > 0\n"
        "    os._exit(0 if ok else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    assert _run(code).strip() == "0"
