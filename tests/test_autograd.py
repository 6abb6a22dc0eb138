"""Gradients checked numerically (float64): first and second order, both arguments."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from conftest import LOSS_IDS, LOSSES, REDUCTIONS, assert_close


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


# Operand dtypes of a double backward: two float dtypes (the loss in the promoted one, each
# gradient in its operand's), and a bool or integer operand that takes no gradient.
_MIXED_DTYPES = [(torch.float32, torch.float64), (torch.float64, torch.float32),
                 (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                 (torch.bfloat16, torch.bfloat16), (torch.float32, torch.int64),
                 (torch.float64, torch.bool), (torch.bool, torch.float32),
                 (torch.int64, torch.float64)]


def _second_order(fn, x0, y0, reduction, kw, oracle_dtype=None):
    # First gradients with create_graph, then the gradient of a function of them in both
    # operands and in grad_output. With oracle_dtype, fn runs on copies in that dtype and every
    # result is returned in the dtype the operand (or grad_output) has.
    x, y = x0.detach().clone(), y0.detach().clone()
    for t in (x, y):
        t.requires_grad_(t.is_floating_point())
    leaves = [t for t in (x, y) if t.requires_grad]
    a, b = (x, y) if oracle_dtype is None else (x.to(oracle_dtype), y.to(oracle_dtype))
    out = fn(a, b, reduction=reduction, **kw)
    go = torch.linspace(-1.5, 2.0, out.numel(), dtype=torch.float64).view(out.shape)
    go = go.to(torch.promote_types(x.dtype, y.dtype)).to(out.dtype).requires_grad_()
    firsts = torch.autograd.grad(out, leaves, go, create_graph=True)
    weights = torch.linspace(-2.0, 3.0, x0.numel(), dtype=torch.float64).view(x0.shape)
    s = sum((g.double() ** 2).sum() + (g.double() * weights).sum() for g in firsts)
    seconds = torch.autograd.grad(s, leaves + [go], allow_unused=True, materialize_grads=True)
    dtypes = [t.dtype for t in leaves] + [torch.promote_types(x.dtype, y.dtype)]
    return [g.to(d) for g, d in zip(list(firsts) + list(seconds), dtypes[:-1] + dtypes)]


@pytest.mark.parametrize("dtypes", _MIXED_DTYPES, ids=lambda d: f"{d[0]}-{d[1]}".replace("torch.", ""))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_double_backward_mixed_dtypes_matches_torch(loss, reduction, dtypes):
    # Where torch's own double backward runs, l1ext's gives its dtypes and values. torch's Huber
    # backward raises for operands of two dtypes (README, "Where l1ext and torch differ") and its
    # Smooth L1 double backward raises for a bool input (it subtracts the bool operand); l1ext
    # computes those, and the oracle is torch on float64 copies, rounded to each result's dtype.
    name, ours, theirs, param = loss
    dx, dy = dtypes
    if name == "l1" and torch.bool in dtypes:
        pytest.skip("a bool operand of the L1 loss raises torch's error (test_parity)")
    if name == "huber" and not dx.is_floating_point:
        pytest.skip("a bool or integer input of the Huber loss raises torch's error (test_parity)")
    kw = {param: 1.0} if param else {}
    # Residuals on both sides of the kink (and of zero), exact in bfloat16; the operands are
    # 0 / 1 and 1 minus / plus them, exact in every dtype listed, bool included.
    d = torch.tensor([0.25, -0.5, 0.75, -0.375, 1.5, -2.5, 3.0, -1.25, 0.625, -0.125, 2.0, -4.0])
    ones = (torch.arange(12) % 3 == 0).double()
    x0, y0 = (ones + d, ones) if dx.is_floating_point else (ones, ones - d)
    x0, y0 = x0.to(dx), y0.to(dy)
    got = _second_order(ours, x0, y0, reduction, kw)
    try:
        want = _second_order(theirs, x0, y0, reduction, kw)
    except RuntimeError:
        assert (name == "huber" and dx != dy) or (name == "smooth_l1" and torch.bool in dtypes)
        want = _second_order(theirs, x0, y0, reduction, kw, oracle_dtype=torch.float64)
    # torch computes a gradient in its operand's dtype from operands of another, so every result
    # is as exact as the less precise operand: its tolerance.
    tol = max((t for t in dtypes if t.is_floating_point), key=lambda t: torch.finfo(t).eps)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert_close(a, b, tol)
    if name != "l1":
        assert any(g.abs().sum() > 0 for g in got[len(got) // 2:-1])  # a second derivative


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES + [("smooth_l1 beta 0", *LOSSES[1][1:3], "beta")],
                         ids=LOSS_IDS + ["smooth_l1_beta_0"])
def test_gradient_with_create_graph_stays_in_the_graph(loss, reduction):
    # A gradient taken with create_graph is differentiable in the operands, as torch's: the L1
    # loss's (sgn * grad_output) has derivative zero there, a gradient that torch.autograd.grad
    # returns as zeros (not "does not require grad") and .backward() accumulates as zeros. The
    # gradient penalty of a linear model is such a case: nothing else in it needs a gradient.
    name, ours, theirs, param = loss
    kw = {param: 0.0 if name.endswith("0") else 1.0} if param else {}
    x0, y0 = _away_from_kinks(12)
    m0, w0 = torch.randn(12, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    results = []
    for fn in (ours, theirs):
        x, y = x0.detach().clone().requires_grad_(), y0.detach().clone().requires_grad_()
        gx, gy = torch.autograd.grad(fn(x, y, reduction=reduction, **kw).sum(), (x, y), create_graph=True)
        assert gx.requires_grad and gy.requires_grad
        second = torch.autograd.grad((gx * gx).sum() + gy.sum(), (x, y))
        w = w0.clone().requires_grad_()
        pred = m0 @ w
        (gw,) = torch.autograd.grad(fn(pred, y0, reduction=reduction, **kw).sum(), w, create_graph=True)
        gw.norm().backward()
        results.append((gx, gy, *second, w.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


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


def _outcome(fn):
    """'ok' or the RuntimeError's message, with torch's op name taken out."""
    try:
        fn()
        return "ok"
    except RuntimeError as e:
        return str(e).split(";")[0].split(",")[0]


@pytest.mark.parametrize("side", ["input", "target"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_inplace_change_before_backward_matches_torch(loss, reduction, side):
    # torch's smooth_l1_loss / huber_loss save input and target, so a backward after an in-place
    # change of either raises; its l1_loss (sub, abs, mean) saves neither. l1ext behaves the same,
    # also where its forward already wrote the gradient (CPU, reduced losses).
    _, l1ext_fn, torch_fn, _ = loss
    outcomes = []
    for fn in (torch_fn, l1ext_fn):
        leaf = torch.randn(40, requires_grad=True)
        x, y = leaf * 1, torch.randn(40)
        out = fn(x, y, reduction=reduction)
        (x if side == "input" else y).add_(1)
        outcomes.append(_outcome(lambda: out.sum().backward()))
    assert outcomes[1] == outcomes[0]
    assert (outcomes[0] == "ok") == (loss[0] == "l1")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_second_backward_without_retain_graph_matches_torch(loss, reduction):
    _, l1ext_fn, torch_fn, _ = loss
    outcomes = []
    for fn in (torch_fn, l1ext_fn):
        x = torch.randn(40, requires_grad=True)
        out = fn(x, torch.randn(40), reduction=reduction).sum()
        out.backward()
        outcomes.append(_outcome(out.backward))
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_gradient_of_one_operand_only(loss, reduction):
    # Both operands require gradients, one is asked for (torch.autograd.grad with one input):
    # the backward computes only that one, with torch's values.
    _, l1ext_fn, torch_fn, _ = loss
    x = torch.randn(64, requires_grad=True)
    y = torch.randn(64, requires_grad=True)
    for wrt in (x, y):
        got = torch.autograd.grad(l1ext_fn(x, y, reduction=reduction).sum(), [wrt])[0]
        want = torch.autograd.grad(torch_fn(x, y, reduction=reduction).sum(), [wrt])[0]
        torch.testing.assert_close(got, want, rtol=0, atol=0)


_DTYPE_CHANGING_HOOKS = {
    "bfloat16": (lambda t: t.to(torch.bfloat16), lambda t: t.float()),
    "times_one": (lambda t: t * 1.0, lambda t: t),
    "float16": (lambda t: t.to(torch.float16), lambda t: t.float()),
}


@pytest.mark.parametrize("hooks", list(_DTYPE_CHANGING_HOOKS), ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_saved_tensor_hooks_that_change_dtypes(loss, reduction, hooks):
    """Hooks that hand back their saved tensors in another dtype (activation compression packs
    everything to bfloat16 and unpacks with .float()): L1's saved int8 sign comes back as floats,
    read as their signs; first and second derivatives as torch's under the same hooks (Smooth L1
    and Huber save their float operands, as torch's do, so the hooks round those alike)."""
    _, l1ext_fn, torch_fn, _ = loss
    pack, unpack = _DTYPE_CHANGING_HOOKS[hooks]
    x = torch.randn(16, dtype=torch.float64).to(torch.float32).requires_grad_()
    y = torch.randn(16)
    y[:3] = x[:3].detach()  # (zero residuals: sgn 0)
    go = torch.randn(16) if reduction == "none" else torch.tensor(0.7)
    results = []
    for fn in (torch_fn, l1ext_fn):
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            out = fn(x, y, reduction=reduction)
            gx, = torch.autograd.grad(out, x, go, create_graph=True)
            ggx, = torch.autograd.grad((gx * gx).sum(), x, materialize_grads=True)
        results.append((out, gx, ggx))
    for got, want in zip(results[1], results[0]):
        assert_close(got, want)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_activation_checkpointing_and_saved_tensor_hooks(loss):
    # Non-reentrant checkpointing recomputes through saved-tensor hooks: l1ext's saved tensors go
    # through them like torch's own.
    from torch.utils.checkpoint import checkpoint

    _, l1ext_fn, torch_fn, _ = loss
    lin = torch.nn.Linear(8, 8)
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    grads = []
    for fn in (torch_fn, l1ext_fn):
        lin.zero_grad()
        checkpoint(lambda a: fn(lin(a), y), x, use_reentrant=False).backward()
        grads.append(lin.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])

    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        out = l1ext_fn(torch.randn(16, requires_grad=True), torch.randn(16))
    out.backward()
    assert packed  # every l1ext forward saves something (the sign, or input and target)
