"""Gradients checked numerically (float64): first and second order, both arguments."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from conftest import LOSS_IDS, LOSSES, REDUCTIONS


def _away_from_kinks(n, param=1.0):
    # Finite differences are only valid away from |d| == 0 and |d| == beta/delta.
    d = torch.rand(n, dtype=torch.float64) * 3 + 0.05
    d = d * torch.where(torch.rand(n) < 0.5, -1.0, 1.0).double()
    d = torch.where((d.abs() - param).abs() < 0.05, d + 0.2, d)
    y = torch.randn(n, dtype=torch.float64)
    return (y + d).requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("grads", [(True, True), (True, False), (False, True)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_gradcheck_gradgradcheck(loss, reduction, grads):
    _, ours, _, param = loss
    x, y = _away_from_kinks(12)
    x.requires_grad_(grads[0])
    y.requires_grad_(grads[1])
    kw = {param: 1.0} if param else {}

    def f(a, b):
        return ours(a, b, reduction=reduction, **kw)

    assert gradcheck(f, (x, y))
    assert gradgradcheck(f, (x, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_double_backward_matches_torch(loss, reduction):
    # Hessian-vector products through create_graph, against torch's built-in.
    _, ours, theirs, param = loss
    x0, y0 = _away_from_kinks(20)
    kw = {param: 1.0} if param else {}
    vx, vy = torch.randn_like(x0), torch.randn_like(x0)
    results = []
    for fn in (ours, theirs):
        x = x0.detach().clone().requires_grad_()
        y = y0.detach().clone().requires_grad_()
        out = fn(x, y, reduction=reduction, **kw)
        go = torch.ones_like(out).requires_grad_()
        gx, gy = torch.autograd.grad(out, (x, y), go, create_graph=True)
        hx, hy, hgo = torch.autograd.grad((gx * vx).sum() + (gy * vy).sum(), (x, y, go),
                                          allow_unused=True, materialize_grads=True)
        results.append((gx, gy, hx, hy, hgo))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    if loss[0] != "l1":
        assert results[0][2].abs().sum() > 0  # a non-trivial second derivative was compared


def test_smooth_l1_beta_zero_double_backward():
    import l1ext.functional as LF

    x, y = _away_from_kinks(10)
    assert gradgradcheck(lambda a, b: LF.smooth_l1_loss(a, b, beta=0.0), (x, y))


def test_retain_graph_twice():
    import l1ext.functional as LF

    x = torch.randn(50, requires_grad=True)
    y = torch.randn(50)
    for fn in (LF.l1_loss, LF.smooth_l1_loss, LF.huber_loss):
        x.grad = None
        out = fn(x, y)
        out.backward(retain_graph=True)
        g1 = x.grad.clone()
        out.backward()
        torch.testing.assert_close(x.grad, 2 * g1)
