"""Bitwise reproducibility: across runs, thread counts and CPU instruction sets."""
import os
import subprocess
import sys

import pytest
import torch

import l1ext.functional as LF
from conftest import LOSS_IDS, LOSSES

N = 300_001  # several parallel chunks plus a ragged tail
BOXES = 60_001  # weighted losses over boxes (BOXES, 5): a row length that does not tile 64


def _run_all(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, generator=g).to(dtype).requires_grad_()
    y = torch.randn(N, generator=g).to(dtype)
    outs = []
    for _, fn, _, _ in LOSSES:
        for reduction in ("mean", "sum"):
            x.grad = None
            loss = fn(x, y, reduction=reduction)
            loss.backward()
            outs += [loss.detach().clone(), x.grad.clone()]
    # weighted: per-box weight and per-coordinate beta, gradients from the forward (incoming
    # gradient one) and from the backward pass (weight gradient too)
    p = torch.randn(BOXES, 5, generator=g).to(dtype).requires_grad_()
    t = torch.randn(BOXES, 5, generator=g).to(dtype)
    w = torch.rand(BOXES, generator=g).to(dtype)
    beta = torch.rand(5, generator=g).to(dtype)
    for weight in (w, w.clone().requires_grad_()):
        p.grad = None
        loss = LF.smooth_l1_loss(p, t, beta=beta, weight=weight, avg_factor=1000.0)
        loss.backward()
        outs += [loss.detach().clone(), p.grad.clone()] + ([weight.grad.clone()] if weight.requires_grad else [])
    outs.append(LF.huber_loss(p, t, delta=0.5, weight=w[:, None], loss_weight=2.0, reduction="none").detach())
    # a per-row weight's gradient summed by the backward kernel (rows that tile its blocks of 64;
    # 20,003 rows: a ragged last block), reduced and elementwise
    for inner in (1, 4, 8, 64):
        q = torch.randn(20_003, inner, generator=g).to(dtype)
        u = torch.randn(20_003, inner, generator=g).to(dtype)
        row_weight = torch.rand(20_003, 1, generator=g).to(dtype).requires_grad_()
        for reduction in ("mean", "none"):
            row_weight.grad = None
            loss = LF.smooth_l1_loss(q, u, beta=0.3, weight=row_weight, reduction=reduction, loss_weight=1.5)
            loss.backward(torch.ones_like(loss) if reduction == "mean" else u)
            outs.append(row_weight.grad.clone())
    return outs


def _bits_equal(a, b):
    return all(torch.equal(p.view(torch.uint8) if p.dim() else p.reshape(1).view(torch.uint8),
                           q.view(torch.uint8) if q.dim() else q.reshape(1).view(torch.uint8))
               for p, q in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_repeated_runs_and_thread_counts(dtype):
    threads = torch.get_num_threads()
    try:
        reference = _run_all(dtype)
        for _ in range(3):
            assert _bits_equal(_run_all(dtype), reference)
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert _bits_equal(_run_all(dtype), reference), f"differs with {t} threads"
    finally:
        torch.set_num_threads(threads)


_SCRIPT = """
import sys, torch, l1ext
sys.path.insert(0, {tests!r})
from test_determinism import _run_all
outs = _run_all()
print(l1ext.cpu_capability())
torch.save(outs, sys.argv[1])
"""


def test_instruction_sets_agree(tmp_path):
    # The lane layout of the sums is fixed, not tied to the vector width: every ISA gives the
    # same bits.
    tests = os.path.dirname(os.path.abspath(__file__))
    results = {}
    for isa in ("default", "avx2", "avx512"):
        path = tmp_path / f"{isa}.pt"
        env = dict(os.environ, L1EXT_CPU_CAPABILITY=isa)
        proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(tests=tests), str(path)],
                              env=env, capture_output=True, text=True, check=True)
        results[proc.stdout.strip()] = torch.load(path)
    assert "DEFAULT" in results and len(results) >= 2, results.keys()
    ref = results.pop("DEFAULT")
    for isa, outs in results.items():
        assert _bits_equal(outs, ref), f"{isa} differs from DEFAULT"
