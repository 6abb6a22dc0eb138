"""torch.compile (fullgraph) and torch.library.opcheck over every registered operator."""
import warnings

import pytest
import torch
import torch.nn.functional as TF
from torch._dynamo.testing import CompileCounterWithBackend
from torch.library import opcheck

import l1ext
import l1ext.functional as LF

from conftest import LOSS_IDS, LOSSES

ops = torch.ops.l1ext
EPS = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_compile_fullgraph_function(loss):
    _, ours, theirs, param = loss
    kw = {param: 0.5} if param else {}

    def step(w, x, y):
        return ours(x @ w, y, **kw)

    compiled = torch.compile(step, fullgraph=True)
    w0, x, y = torch.randn(8, 4), torch.randn(16, 8), torch.randn(16, 4)
    w1, w2 = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    a = compiled(w1, x, y)
    b = theirs(x @ w2, y, **kw)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(w1.grad, w2.grad)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_compile_fullgraph_mixed_dtypes(loss, autocast):
    # bfloat16 predictions against float32 targets, plain and weighted: the dtype eager l1ext and
    # torch answer in (Huber: the input's, float32 under autocast), traced without a break.
    _, ours, theirs, param = loss
    kw = {param: 0.5} if param else {}
    x, y, w = torch.randn(16, 4, dtype=torch.bfloat16), torch.randn(16, 4), torch.rand(16, 1, dtype=torch.bfloat16)
    with torch.autocast("cpu", enabled=autocast):
        plain = torch.compile(lambda a, b: ours(a, b, **kw), fullgraph=True)(x, y)
        weighted = torch.compile(lambda a, b, c: ours(a, b, weight=c, avg_factor=3.0, **kw), fullgraph=True)(x, y, w)
        assert plain.dtype == theirs(x, y, **kw).dtype
        torch.testing.assert_close(plain, ours(x, y, **kw))
        eager = ours(x, y, weight=w, avg_factor=3.0, **kw)
        assert weighted.dtype == eager.dtype
        torch.testing.assert_close(weighted, eager)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_compile_dynamic_shapes(loss, reduction):
    # One graph serves every size (the fake implementations take symbolic sizes), and gives
    # torch's values and gradients; the weighted form too (boxes (N, 4), per-box weight).
    _, ours, theirs, param = loss
    kw = {param: 0.5} if param else {}
    counter = CompileCounterWithBackend("aot_eager")
    plain = torch.compile(lambda x, y: ours(x, y, reduction=reduction, **kw), backend=counter,
                          dynamic=True, fullgraph=True)
    weighted = torch.compile(lambda x, y, w: ours(x, y, weight=w, avg_factor=2.0, **kw),
                             backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for n in (3, 17, 130):
        x, y, w = torch.randn(n, 4), torch.randn(n, 4), torch.rand(n)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = plain(x1, y), theirs(x2, y, reduction=reduction, **kw)
        a.sum().backward()
        b.sum().backward()
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(x1.grad, x2.grad)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        a = weighted(x1, y, w)
        b = (theirs(x2, y, reduction="none", **kw) * w[:, None]).sum() / (2.0 + EPS)
        a.backward()
        b.backward()
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(x1.grad, x2.grad)
        frames.append(counter.frame_count)
    assert frames[0] == frames[-1], frames  # no size compiled again


def _warnings_of(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args)
    return out, {str(w.message) for w in caught if "l1ext" not in str(w.message) and "jit" not in str(w.message)}


_WARNING_CALLS = {
    "broadcast": (lambda f, x, y, kw: f(x, y[:1], **kw), {}),
    "size_average": (lambda f, x, y, kw: f(x, y, size_average=False, **kw), {"no_legacy": True}),
    "reduce": (lambda f, x, y, kw: f(x, y, reduce=False, **kw), {"no_legacy": True}),
    "elementwise_mean": (lambda f, x, y, kw: f(x, y, reduction="elementwise_mean", **kw), {"no_legacy": True}),
}


@pytest.mark.parametrize("case", list(_WARNING_CALLS))
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_compile_fullgraph_warnings(loss, case):
    # torch's warnings (sizes that broadcast, legacy size_average / reduce, 'elementwise_mean')
    # trace without a graph break and are given while the graph is traced, as torch's are.
    name, ours, theirs, param = loss
    call, flags = _WARNING_CALLS[case]
    if flags.get("no_legacy") and name == "huber" and case != "elementwise_mean":
        pytest.skip("huber_loss has no size_average / reduce")
    kw = {param: 0.5} if param else {}
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    results = []
    for fn in (ours, theirs):
        torch._dynamo.reset()
        compiled = torch.compile(lambda a, b: call(fn, a, b, kw), fullgraph=True, backend="aot_eager")
        results.append(_warnings_of(compiled, x, y))
    (out, got), (ref, want) = results
    assert got == want and want, (got, want)
    torch.testing.assert_close(out, ref)


def test_compile_fullgraph_patched_broadcast():
    # Under l1ext.patch(), code that compiled with torch's functions and modules still compiles.
    x, y = torch.randn(3, 4), torch.randn(1, 4)
    with l1ext.patch():
        out, got = _warnings_of(torch.compile(torch.nn.SmoothL1Loss(beta=0.5), fullgraph=True), x, y)
        fn_out, fn_got = _warnings_of(torch.compile(lambda a, b: TF.l1_loss(a, b), fullgraph=True), x, y)
    torch.testing.assert_close(out, TF.smooth_l1_loss(x, y.expand(3, 4), beta=0.5))
    torch.testing.assert_close(fn_out, TF.l1_loss(x, y.expand(3, 4)))
    assert got == fn_got and len(got) == 1 and "target size" in next(iter(got))


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_compiled_autograd(loss, weighted):
    # Compiled autograd traces the backward of an eager forward through each node's
    # compiled_args / apply_with_saved: l1ext's nodes give torch's gradients there too.
    from torch._dynamo import compiled_autograd

    _, ours, theirs, param = loss
    kw = {param: 0.5} if param else {}
    x = torch.randn(8, 4, requires_grad=True)
    y = torch.randn(8, 4, requires_grad=True)
    w = torch.rand(8, 1, requires_grad=True)
    if weighted:
        out = ours(x, y, weight=w, avg_factor=3.0, **kw)
        ref = lambda: (theirs(x, y, reduction="none", **kw) * w).sum() / (3.0 + EPS)  # noqa: E731
    else:
        out = ours(x, y, reduction="sum", **kw) * 3
        ref = lambda: theirs(x, y, reduction="sum", **kw) * 3  # noqa: E731
    with compiled_autograd._enable(torch.compile(backend="eager")):
        out.backward()
    got = [t.grad for t in (x, y, w) if t.grad is not None]
    for t in (x, y, w):
        t.grad = None
    ref().backward()
    want = [t.grad for t in (x, y, w) if t.grad is not None]
    assert len(got) == len(want) == (3 if weighted else 2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("module", [l1ext.L1Loss(reduction="sum"), l1ext.SmoothL1Loss(beta=0.2),
                                    l1ext.HuberLoss(reduction="none", delta=0.3)], ids=LOSS_IDS)
def test_compile_fullgraph_module(module):
    compiled = torch.compile(module, fullgraph=True)
    x, y = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    out = compiled(x, y)
    ref_module = type(module).__mro__[1](reduction=module.reduction,
                                         **{k: getattr(module, k) for k in ("beta", "delta") if hasattr(module, k)})
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    ref = ref_module(x2, y2)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(y.grad, y2.grad)


def _opcheck_cases(requires_grad):
    x = torch.randn(5, 3, requires_grad=requires_grad)
    y = torch.randn(5, 3, requires_grad=requires_grad)
    xt = torch.randn(3, 5).t().requires_grad_(requires_grad)  # non-contiguous operand
    xs = torch.randn(3, 10)[:, ::2].t().requires_grad_(requires_grad)  # no dense tensor
    yb = torch.randn(1, 3).expand(5, 3)  # broadcast
    for red in (0, 1, 2):
        go = torch.randn(5, 3) if red == 0 else torch.tensor(1.5)
        go = go.requires_grad_(requires_grad)
        sign = ops.l1_loss_forward(x.detach(), y.detach(), red)[1]
        for a, b in ((x, y), (xt, y), (xs, y), (x, yb)):
            yield ops.l1_loss.default, (a, b, red)
            yield ops.l1_loss_forward.default, (a, b, red)
            yield ops.smooth_l1_loss.default, (a, b, red, 0.5)
            yield ops.smooth_l1_loss.default, (a, b, red, 0.0)
            yield ops.huber_loss.default, (a, b, red, 0.5)
            for mask in ([True, True], [False, True]):
                yield ops.smooth_l1_loss_forward.default, (a, b, red, 0.5, mask)
                yield ops.huber_loss_forward.default, (a, b, red, 2.0, mask)
            for mask in ([True, True], [True, False], [False, True]):
                yield ops.smooth_l1_loss_backward.default, (go, a, b, red, 0.5, mask)
                yield ops.huber_loss_backward.default, (go, a, b, red, 2.0, mask)
        for mask in ([True, True], [False, True]):
            yield ops.l1_loss_backward.default, (go, sign, red, torch.float32, mask)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_every_operator(requires_grad):
    count = 0
    for op, args in _opcheck_cases(requires_grad):
        opcheck(op, args)
        count += 1
    assert count == 3 * (4 * (5 + 4 + 6) + 2)
