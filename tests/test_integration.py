"""The rest of the PyTorch stack: autocast, torch.func, forward-mode AD, torch.export,
deterministic algorithms."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, jacfwd, jacrev, jvp, vmap

from conftest import DEVICES, LOSS_IDS, LOSSES, assert_close


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                    (torch.float16, torch.float16), (torch.float32, torch.float32),
                                    (torch.float64, torch.float32), (torch.float32, torch.float64),
                                    (torch.bfloat16, torch.float64)], ids=str)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_autocast_float32_list(loss, dtypes, device):
    # torch's losses are on autocast's float32 list: same output dtype and values.
    _, ours, theirs, _ = loss
    x = torch.randn(6, 5, device=device)
    y = torch.randn(6, 5, device=device)
    res = []
    for fn in (ours, theirs):
        xx = x.to(dtypes[0]).requires_grad_()
        yy = y.to(dtypes[1])
        with torch.autocast(device, dtype=torch.bfloat16):
            out = fn(xx, yy)
        grads = None
        if not (loss[0] == "huber" and torch.float64 in dtypes and dtypes[0] != dtypes[1]):
            out.backward()  # (torch's Huber backward fails on mixed float64/float32)
            grads = xx.grad
        res.append((out, grads))
    assert res[0][0].dtype == res[1][0].dtype
    assert_close(res[0][0], res[1][0])
    if res[1][1] is not None:
        assert_close(res[0][1], res[1][1])


FUNC_CASES = {
    "vmap": lambda f, x, y: vmap(lambda a, b: f(a, b))(x, y),
    "vmap_none_in_dims": lambda f, x, y: vmap(lambda a, b: f(a, b, reduction="none"), in_dims=(0, None))(x, y[0]),
    "grad": lambda f, x, y: grad(lambda a: f(a, y))(x),
    "grad_target": lambda f, x, y: grad(lambda b: f(x, b, reduction="sum"))(y),
    "jacrev": lambda f, x, y: jacrev(lambda a: f(a, y[0], reduction="none"))(x[0]),
    "jacfwd": lambda f, x, y: jacfwd(lambda a: f(a, y[0], reduction="none"))(x[0]),
    "jvp": lambda f, x, y: jvp(lambda a: f(a, y), (x,), (torch.ones_like(x),))[1],
    "vmap_grad": lambda f, x, y: vmap(grad(lambda a, b: f(a, b)))(x, y),
    "hessian": lambda f, x, y: jacfwd(jacrev(lambda a: f(a, y[0], reduction="sum")))(x[0]),
}


@pytest.mark.parametrize("case", list(FUNC_CASES))
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_torch_func(loss, case):
    _, ours, theirs, _ = loss
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    a = FUNC_CASES[case](ours, x, y)
    b = FUNC_CASES[case](theirs, x, y)
    assert_close(a, b)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_forward_ad_dual_tensors(loss):
    _, ours, theirs, _ = loss
    x, y = torch.randn(7), torch.randn(7)
    t = torch.randn(7)
    with fwAD.dual_level():
        for reduction in ("none", "mean"):
            a = fwAD.unpack_dual(ours(fwAD.make_dual(x, t), y, reduction=reduction)).tangent
            b = fwAD.unpack_dual(theirs(fwAD.make_dual(x, t), y, reduction=reduction)).tangent
            assert a is not None
            assert_close(a, b)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_export(loss):
    _, ours, theirs, param = loss
    kw = {param: 0.5} if param else {}

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 4)

        def forward(self, x, y):
            return ours(self.lin(x), y, **kw)

    model = Head()
    x, y = torch.randn(16, 8), torch.randn(16, 4)
    ep = torch.export.export(model, (x, y))
    assert any("l1ext" in str(n.target) for n in ep.graph.nodes)
    x2, y2 = torch.randn(16, 8), torch.randn(16, 4)
    assert_close(ep.module()(x2, y2), theirs(model.lin(x2), y2, **kw).detach())


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_deterministic_algorithms(loss):
    _, ours, _, _ = loss
    x, y = torch.randn(200_003), torch.randn(200_003)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        outs = []
        for _ in range(3):
            xx = x.clone().requires_grad_()
            out = ours(xx, y)
            out.backward()
            outs.append((out, xx.grad))
    finally:
        torch.use_deterministic_algorithms(previous)
    for out, g in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(g, outs[0][1])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("in_dims", [(0, 0), (1, 0), (0, None), (None, 2)], ids=str)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_vmap_batching_rule(loss, in_dims, reduction):
    # A registered batching rule: no per-sample fallback loop (which warns), same results.
    import warnings

    _, ours, theirs, _ = loss
    x, y = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    xx = x.movedim(0, in_dims[0]) if in_dims[0] is not None else x[0]
    yy = y.movedim(0, in_dims[1]) if in_dims[1] is not None else y[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = vmap(lambda p, t: ours(p, t, reduction=reduction), in_dims=in_dims)(xx, yy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own huber warns under vmap
        b = vmap(lambda p, t: theirs(p, t, reduction=reduction), in_dims=in_dims)(xx, yy)
    assert_close(a, b)
