"""The two shortcuts that make small losses cheap, and that they change nothing but speed:
the C++ entry of the functional API (l1ext._C.loss_fast) and, on the CPU, the gradient written by
the forward pass of Smooth L1 / Huber and handed to loss.backward() without a backward pass."""
import os
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import l1ext
import l1ext.functional as LF
from l1ext import _C

from conftest import DEVICES, FLOAT_DTYPES

ops = torch.ops.l1ext
SMOOTH_L1, HUBER, QUANTILE = 1, 2, 3
POINTWISE = [("smooth_l1", LF.smooth_l1_loss, ops.smooth_l1_loss_backward, "beta", 0.5),
             ("huber", LF.huber_loss, ops.huber_loss_backward, "delta", 0.7)]
POINTWISE_IDS = [p[0] for p in POINTWISE]


class RecordOps(TorchDispatchMode):
    """Records the l1ext operators called below autograd."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.namespace) == "l1ext":
            self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# ---- the C++ entry -------------------------------------------------------------------------------

def test_loss_fast_serves_the_common_call():
    x, y = torch.randn(7, 3), torch.randn(7, 3)
    for kind, op, args in ((0, ops.l1_loss, ()), (SMOOTH_L1, ops.smooth_l1_loss, (0.5,)),
                           (HUBER, ops.huber_loss, (2.0,))):
        for name, red in (("none", 0), ("mean", 1), ("sum", 2)):
            out = _C.loss_fast(kind, x, y, name, args[0] if args else None, None, None, None)
            assert out is not None
            assert torch.equal(out, op(x, y, red, *args))
    p = torch.nn.Parameter(torch.randn(4))  # Parameters are plain tensors to C++
    assert _C.loss_fast(SMOOTH_L1, p, torch.randn(4), "mean", 1, None, None, None) is not None
    with pytest.raises(ValueError, match="kind must be"):
        _C.loss_fast(4, x, y, "mean", 0.5, None, None, None)
    # beta == 0 is L1, values and gradients
    assert torch.equal(_C.loss_fast(SMOOTH_L1, x, y, "sum", 0.0, None, None, None), ops.l1_loss(x, y, 2))


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.bfloat16, torch.float32),
                                    (torch.float16, torch.bfloat16), (torch.float64, torch.float32),
                                    (torch.float32, torch.int64), (torch.bfloat16, torch.int32)], ids=str)
def test_loss_fast_serves_operands_of_two_dtypes(dtypes):
    # Both in the promoted dtype, Huber answered in the input's: the dtype of torch's loss, and
    # the bits of the operator on the promoted operands (functional.py's path computes the same).
    x = (torch.randn(7, 3, dtype=torch.float64) * 3).to(dtypes[0])
    y = (torch.randn(7, 3, dtype=torch.float64) * 3).to(dtypes[1])
    dtype = torch.promote_types(*dtypes)
    for kind, op, theirs, args in ((0, ops.l1_loss, torch.nn.functional.l1_loss, ()),
                                   (SMOOTH_L1, ops.smooth_l1_loss, torch.nn.functional.smooth_l1_loss, (0.5,)),
                                   (HUBER, ops.huber_loss, torch.nn.functional.huber_loss, (2.0,))):
        for name, red in (("none", 0), ("mean", 1), ("sum", 2)):
            out = _C.loss_fast(kind, x, y, name, args[0] if args else None, None, None, None)
            assert out is not None
            want = op(x.to(dtype), y.to(dtype), red, *args)
            want = want.to(x.dtype) if kind == HUBER else want
            assert torch.equal(out, want) and out.dtype == theirs(x, y, reduction=name).dtype


class Tagged(torch.Tensor):
    pass


def test_loss_fast_serves_the_quantile_loss():
    # quantile_loss's common calls (a number tau, a host tau tensor, one target for every quantile
    # of (..., Q)) in C++, with the bits of functional.py's operator call; the rest declined, so
    # functional.py warns, broadcasts and raises as it does.
    x, y = torch.randn(7, 3), torch.randn(7, 3)
    tau = torch.tensor([0.1, 0.5, 0.9])
    w = torch.rand(7, 1)
    for name, red in (("none", 0), ("mean", 1), ("sum", 2)):
        assert torch.equal(_C.loss_fast(QUANTILE, x, y, name, 0.3, None, None, None),
                           ops.weighted_loss(x, y, None, None, None, QUANTILE, 0.3, None, 1.0, red))
        assert torch.equal(_C.loss_fast(QUANTILE, x, y, name, tau, w, None, 2.0),
                           ops.weighted_loss(x, y, w, tau, None, QUANTILE, 0.0, None, 2.0, red))
    for target in (y[:, 0], y[:, :1]):  # one target for the three quantiles
        assert torch.equal(_C.loss_fast(QUANTILE, x, target, "mean", tau, None, 4.0, None),
                           ops.weighted_loss(x, target.reshape(7, 1).expand(7, 3), None, tau, None,
                                             QUANTILE, 0.0, 4.0, 1.0, 1))
    declined = [
        (x, y, "mean", 1.0), (x, y, "mean", 0), (x, y, "mean", True), (x, y, "mean", float("nan")),
        (x, y, "mean", tau.as_subclass(Tagged)),
        (x, y, "avg", 0.3), (x, y[:, 0], "mean", 0.3), (x, y[:, 0], "mean", torch.tensor([0.1, 0.9])),
        (x, y.double(), "mean", 0.3), (x, y, "mean", tau.to(torch.int64)),
    ]
    for args in declined:
        assert _C.loss_fast(QUANTILE, *args, None, None, None) is None, args
    # An invalid host tau tensor is refused by the operator, with functional.py's error.
    with pytest.raises(ValueError, match=r"every tau must be in \(0, 1\), got 1"):
        _C.loss_fast(QUANTILE, x, y, "mean", torch.tensor([0.1, 1.0, 0.5]), None, None, None)




@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_loss_fast_serves_a_device_tau():
    # A tau on the input's GPU, in the operator's dtype or one it widens exactly, needing no
    # gradient: served, its values checked by the kernels (the bits of the operator's call; an
    # invalid one is test_cuda.py's). The rest declined to functional.py's checks.
    x, y = torch.randn(7, 3, device="cuda"), torch.randn(7, 3, device="cuda")
    for tau in (torch.tensor([0.1, 0.5, 0.9], device="cuda"),
                torch.tensor([0.1, 0.5, 0.9], device="cuda", dtype=torch.float16)):
        for name, red in (("none", 0), ("mean", 1), ("sum", 2)):
            out = _C.loss_fast(QUANTILE, x, y, name, tau, None, None, None)
            assert out is not None
            assert torch.equal(out, ops.weighted_loss(x, y, None, tau, None, QUANTILE, 0.0, None, 1.0, red))
    tau = torch.tensor([0.1, 0.5, 0.9], device="cuda")
    for args in ((x, y, "mean", tau.double()), (x, y, "mean", tau.clone().requires_grad_()),
                 (x.cpu(), y.cpu(), "mean", tau), (x.bfloat16(), y.bfloat16(), "mean", tau.half())):
        assert _C.loss_fast(QUANTILE, *args, None, None, None) is None


class PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", [
    "subclass", "size", "bool_target", "int_input", "autocast_two_dtypes", "int", "reduction",
    "negative", "nan", "tensor_param", "bool_param", "huber_zero", "sparse", "meta"])
def test_loss_fast_declines_what_functional_must_handle(case):
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    kind, reduction, param = SMOOTH_L1, "mean", 1.0
    if case == "subclass":
        x = x.as_subclass(Tagged)
    elif case == "size":
        y = torch.randn(3)
    elif case == "bool_target":  # (torch's Smooth L1 and Huber take it as 0 and 1)
        y = y > 0
    elif case == "int_input":  # (torch's Huber refuses it)
        x = x.long()
    elif case == "autocast_two_dtypes":  # (the dtype functional.py's huber_dtype gives)
        x = x.bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _C.loss_fast(kind, x, y, reduction, param, None, None, None) is None
        return
    elif case == "int":
        x, y = x.long(), y.long()
    elif case == "reduction":
        reduction = "avg"
    elif case == "negative":
        param = -1.0
    elif case == "nan":
        param = float("nan")
    elif case == "tensor_param":
        param = torch.tensor(1.0)
    elif case == "bool_param":
        param = True
    elif case == "huber_zero":
        kind, param = HUBER, 0
    elif case == "sparse":
        x, y = x.to_sparse(), y.to_sparse()
    elif case == "meta":
        x, y = x.to("meta"), y.to("meta")
    assert _C.loss_fast(kind, x, y, reduction, param, None, None, None) is None


def test_torch_function_mode_sees_the_call():
    seen = []

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x, y = torch.randn(5), torch.randn(5)
    with Mode():
        LF.smooth_l1_loss(x, y)
        LF.huber_loss(x, y)
        LF.l1_loss(x, y)
    assert LF.smooth_l1_loss in seen and LF.huber_loss in seen and LF.l1_loss in seen


# ---- the gradient written by the forward ---------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", POINTWISE, ids=POINTWISE_IDS)
def test_forward_gradient_has_the_backward_bits(loss, reduction, dtype):
    # loss.backward() takes the gradient the forward wrote; any other incoming gradient runs the
    # backward kernel. Both must give exactly the bits of the backward operator.
    _, fn, backward_op, param, value = loss
    red = {"mean": 1, "sum": 2}[reduction]
    x0 = torch.randn(1000, dtype=dtype) * 2
    y0 = torch.randn(1000, dtype=dtype)
    x0[:10] = y0[:10]  # zero residuals
    for go in (1.0, 0.37):
        for mask in ([True, True], [True, False], [False, True]):
            x = x0.clone().requires_grad_(mask[0])
            y = y0.clone().requires_grad_(mask[1])
            out = fn(x, y, reduction=reduction, **{param: value})
            out.backward(torch.tensor(go, dtype=out.dtype))
            gi, gt = backward_op(torch.tensor(go, dtype=dtype), x0, y0, red, value, mask)
            if mask[0]:
                assert torch.equal(x.grad, gi)
            if mask[1]:
                assert torch.equal(y.grad, gt)


@pytest.mark.parametrize("loss", POINTWISE, ids=POINTWISE_IDS)
def test_backward_of_one_runs_no_kernel(loss):
    name, fn, _, param, value = loss
    x, y = torch.randn(300, requires_grad=True), torch.randn(300)
    with RecordOps() as rec:
        out = fn(x, y, **{param: value})
        out.backward()
    assert rec.names == [f"l1ext.{name}_loss_forward"], rec.names
    x.grad = None
    with RecordOps() as rec:
        out = fn(x, y, **{param: value})
        out.backward(torch.tensor(2.0))  # any other: the backward kernel, into the kept buffer
    assert rec.names == [f"l1ext.{name}_loss_forward"], rec.names
    with RecordOps() as rec:
        fn(x, y, reduction="none", **{param: value}).sum().backward()  # 'none': recomputed
    assert f"l1ext.{name}_loss" in rec.names and f"l1ext.{name}_loss_backward" in rec.names


@pytest.mark.parametrize("loss", POINTWISE, ids=POINTWISE_IDS)
def test_forward_gradient_is_handed_out_once(loss):
    # The first backward may hand its buffer to x.grad; an in-place change of x.grad must not
    # reach the second backward through the retained graph.
    _, fn, _, param, value = loss
    x, y = torch.randn(64, requires_grad=True), torch.randn(64)
    out = fn(x, y, **{param: value})
    out.backward(retain_graph=True)
    expected = x.grad.clone()
    x.grad.zero_()
    out.backward()
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("loss", POINTWISE, ids=POINTWISE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("both", [False, True], ids=["input", "both"])
def test_other_incoming_gradient_rewrites_the_forward_gradient(loss, dtype, both):
    # An incoming gradient other than one (a loss weight, loss scaling) rewrites the gradients the
    # forward kept, in place: no backward operator runs, and the bits are the backward operator's.
    # A retained graph's second backward recomputes into new tensors.
    name, fn, backward_op, param, value = loss
    x0, y0 = torch.randn(3000, 5, dtype=dtype), torch.randn(3000, 5, dtype=dtype)
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_(both)
    go = torch.tensor(0.375, dtype=dtype)
    gi, gt = backward_op(go, x0, y0, 1, value, [True, both])
    with RecordOps() as rec:
        out = fn(x, y, **{param: value})
        out.backward(go, retain_graph=True)
    assert rec.names == [f"l1ext.{name}_loss_forward"], rec.names
    assert torch.equal(x.grad, gi) and (not both or torch.equal(y.grad, gt))
    x.grad = y.grad = None
    with RecordOps() as rec:
        out.backward(go)
    assert rec.names == [f"l1ext.{name}_loss_backward"], rec.names
    assert torch.equal(x.grad, gi) and (not both or torch.equal(y.grad, gt))
    # a loss weight: the product's backward hands the node 0.5
    x.grad = None
    with RecordOps() as rec:
        (fn(x, y0, reduction="sum", **{param: value}) * 0.5).backward()
    assert rec.names == [f"l1ext.{name}_loss_forward"], rec.names
    assert torch.equal(x.grad, backward_op(torch.tensor(0.5, dtype=dtype), x0, y0, 2, value,
                                           [True, False])[0])


# ---- reduced L1: the kept gradient instead of the int8 sign --------------------------------------

# The GPU's cases, run on the CPU (device-neutral helpers of test_cuda.py; gc_held is its fixture).
from test_cuda import _kept_l1_case, _kept_l1_retained_and_create_graph, gc_held  # noqa: E402,F401


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", [5, 4096, 100_003])
def test_kept_l1_gradients_on_cpu(n, dtype, offset, gc_held):
    _kept_l1_case(n, dtype, offset, device="cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_kept_l1_gradients_retained_graph_and_create_graph_on_cpu(dtype):
    _kept_l1_retained_and_create_graph(dtype, device="cpu")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_kept_l1_gradient_of_special_residuals(dtype):
    # Residuals 0, +-inf and NaN (inf - inf too): the kept gradient, handed over or rewritten from
    # its own signs, has the int8-sign backward's bits, signed zeros included.
    inf, nan = float("inf"), float("nan")
    xs = torch.tensor([0.0, -0.0, 1.0, inf, -inf, nan, inf, 2.0, 3.0, -inf, 5.0] * 7, dtype=dtype)
    ys = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, inf, inf, nan, -inf, -5.0] * 7, dtype=dtype)
    width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[xs.element_size()]
    for reduction, red in (("mean", 1), ("sum", 2)):
        sign = ops.l1_loss_forward(xs, ys, red)[1]
        for value in (1.0, 0.5, -2.0, 0.0, -0.0, nan):
            go = torch.tensor(value, dtype=dtype)
            ri, rt = ops.l1_loss_backward(go, sign, red, dtype, [True, True])
            for x_needs in (True, False):  # the target's kept gradient alone: negated signs
                x, y = xs.clone().requires_grad_(x_needs), ys.clone().requires_grad_()
                with RecordOps() as rec:
                    LF.l1_loss(x, y, reduction=reduction).backward(go)
                assert rec.names == ["l1ext.smooth_l1_loss_forward"], rec.names
                assert not x_needs or torch.equal(x.grad.view(width), ri.view(width))
                assert torch.equal(y.grad.view(width), rt.view(width)), (reduction, value)


def test_reduced_l1_keeps_the_gradient_not_the_sign():
    # What the forward runs: the fused forward (gradients kept) for a reduced loss on plain
    # tensors, the int8-sign forward for 'none', under saved-tensor hooks, and for float16 'mean'
    # from n = 2^25 - 1 on, where 1 / n rounds to zero in float16 and a kept gradient would carry
    # no signs; the gradients are the sign design's bits either side of that edge.
    x, y = torch.randn(100, requires_grad=True), torch.randn(100)
    for reduction, expected in (("mean", "smooth_l1_loss_forward"), ("sum", "smooth_l1_loss_forward"),
                                ("none", "l1_loss_forward")):
        with RecordOps() as rec:
            LF.l1_loss(x, y, reduction=reduction).sum().backward()
        assert rec.names[0] == f"l1ext.{expected}", (reduction, rec.names)
    with RecordOps() as rec, torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        LF.l1_loss(x, y).backward()
    assert rec.names == ["l1ext.l1_loss_forward", "l1ext.l1_loss_backward"], rec.names
    for n, keeps in ((2**25 - 2, True), (2**25 - 1, False)):
        x0, y0 = torch.randn(n, dtype=torch.float16), torch.randn(n, dtype=torch.float16)
        x = x0.clone().requires_grad_()
        go = torch.tensor(1024.0, dtype=torch.float16)
        with RecordOps() as rec:
            LF.l1_loss(x, y0).backward(go)
        assert (rec.names == ["l1ext.smooth_l1_loss_forward"]) == keeps, rec.names
        sign = ops.l1_loss_forward(x0, y0, 1)[1]
        ri = ops.l1_loss_backward(go, sign, 1, torch.float16, [True, False])[0]
        assert torch.equal(x.grad.view(torch.int16), ri.view(torch.int16))
        del x, x0, y0, sign, ri


@pytest.mark.parametrize("loss", POINTWISE, ids=POINTWISE_IDS)
def test_forward_gradient_partial_and_higher_order(loss):
    _, fn, _, param, value = loss
    tfn = getattr(torch.nn.functional, fn.__name__)
    x0, y0 = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    grads = []
    for f in (fn, tfn):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        out = f(x, y, **{param: value})
        (gx,) = torch.autograd.grad(out, x, retain_graph=True)  # only one of two leaves
        (gy,) = torch.autograd.grad(out, y, retain_graph=True)
        (gx2,) = torch.autograd.grad(out, x, create_graph=True)
        (hx,) = torch.autograd.grad(gx2.sum(), x)
        grads.append((gx, gy, gx2, hx))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_forward_gradient_of_empty_and_scalar_inputs():
    for shape in ((0, 4), ()):
        x, y = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
        out = LF.smooth_l1_loss(x, y, reduction="sum")
        out.backward()
        assert x.grad.shape == shape and y.grad.shape == shape
        tx, ty = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
        torch.nn.functional.smooth_l1_loss(tx, ty, reduction="sum").backward()
        torch.testing.assert_close(x.grad, tx.grad)
        torch.testing.assert_close(y.grad, ty.grad)


def test_modules_take_the_fast_paths():
    x, y = torch.randn(50, requires_grad=True), torch.randn(50)
    with RecordOps() as rec:
        l1ext.SmoothL1Loss(beta=0.2)(x, y).backward()
        l1ext.HuberLoss(delta=2)(x, y).backward()
    assert rec.names == ["l1ext.smooth_l1_loss_forward", "l1ext.huber_loss_forward"], rec.names


# ---- the weighted losses -------------------------------------------------------------------------

EPS = torch.finfo(torch.float32).eps


def _weight_of(kind, rows, inner):
    return {"none": None, "scalar": torch.tensor(0.7), "row": torch.rand(rows, 1),
            "row_dropped": torch.rand(rows), "col": torch.rand(inner), "full": torch.rand(rows, inner)}[kind]


# inner 4 tiles the kernels' 64-element blocks; 3 and 5 do not. 3000 rows span several chunks.
@pytest.mark.parametrize("inner", [4, 3, 5])
@pytest.mark.parametrize("weight_kind", ["none", "scalar", "row", "row_dropped", "col", "full"])
@pytest.mark.parametrize("param", ["number", "per_column", "per_element"])
def test_weighted_forward_gradient(inner, weight_kind, param):
    rows = 3000
    p0 = torch.randn(rows, inner, dtype=torch.float64)
    t = torch.randn(rows, inner, dtype=torch.float64)
    p0[:7] = t[:7]  # zero residuals
    w = _weight_of(weight_kind, rows, inner)
    w = None if w is None else w.double()
    beta = {"number": 0.3, "per_column": torch.rand(inner, dtype=torch.float64) + 0.05,
            "per_element": torch.rand(rows, inner, dtype=torch.float64)}[param]
    if param == "per_element":
        beta[0, 0] = 0.0  # L1 there
    p = p0.clone().requires_grad_()
    out = LF.smooth_l1_loss(p, t, beta=beta, weight=w, avg_factor=123.0, loss_weight=1.5)
    out.backward()
    # the backward operator's bits for an incoming gradient of one
    beta_t = beta if isinstance(beta, torch.Tensor) else None
    gi, _, _ = ops.weighted_loss_backward(torch.ones((), dtype=torch.float64), p0, t, w, beta_t, None, SMOOTH_L1,
                                          0.0 if beta_t is not None else beta, 123.0, 1.5, 1, [True, False, False])
    assert torch.equal(p.grad, gi)
    # and the values of the composition detection code writes
    b = beta if isinstance(beta, torch.Tensor) else torch.tensor(beta, dtype=torch.float64)
    d = (p0 - t).abs()
    elementwise = torch.where(b == 0, d, torch.where(d < b, 0.5 * d * d / b.clamp_min(1e-300), d - 0.5 * b))
    if w is not None:
        elementwise = elementwise * (w[:, None] if w.shape == (rows,) else w)
    torch.testing.assert_close(out, elementwise.sum() / (123.0 + EPS) * 1.5)
    p1 = p0.clone().requires_grad_()
    LF.smooth_l1_loss(p1, t, beta=beta, weight=w, avg_factor=123.0, loss_weight=1.5).backward(
        torch.tensor(2.0, dtype=torch.float64))  # recomputed in the backward
    torch.testing.assert_close(p1.grad, 2 * gi)


# Row lengths that tile the kernels' 64-element blocks (a row operand's vectors are built by
# interleaving, a different path per vector width), that do not (blended from the rows' values),
# and longer than a block (columns read where they are, or one by one where a block wraps a row);
# rows chosen so that the elements span chunks and, but for 64, end in a partial block.
BROADCAST_INNERS = [1, 2, 4, 8, 16, 32, 64, 3, 5, 7, 12, 100, 1000]


def _broadcast_mismatches():
    """The cases in which a row-broadcast ((rows, 1)) or column-broadcast ((1, inner), beta (inner,))
    weight or beta gives other bits than the same operand expanded to (rows, inner): the loss, the
    gradient the forward writes, and the backward's for a scalar and an elementwise incoming
    gradient. Each lane computes the same products either way, so the bits must agree on every
    instruction set."""
    g = torch.Generator().manual_seed(3)
    bad = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for inner in BROADCAST_INNERS:
            rows = 20_001 // inner + 1
            p0 = torch.randn(rows, inner, generator=g).to(dtype)
            t = torch.randn(rows, inner, generator=g).to(dtype)
            w_row = torch.rand(rows, 1, generator=g).to(dtype)
            w_col = torch.rand(1, inner, generator=g).to(dtype)
            b_row = (torch.rand(rows, 1, generator=g) + 0.05).to(dtype)
            b_col = (torch.rand(inner, generator=g) + 0.05).to(dtype)
            go = torch.randn(rows, inner, generator=g).to(dtype)

            def expand(v):
                return v.expand(rows, inner).contiguous() if isinstance(v, torch.Tensor) else v

            def run(w, beta):
                outs = []
                for reduction, incoming in (("mean", None), ("mean", torch.tensor(0.75, dtype=dtype)),
                                            ("none", go)):
                    p = p0.clone().requires_grad_()
                    kw = {"avg_factor": 77.0} if reduction == "mean" else {"loss_weight": 1.5}
                    out = LF.smooth_l1_loss(p, t, beta=beta, weight=w, reduction=reduction, **kw)
                    out.backward(incoming)
                    outs += [out.detach(), p.grad]
                return outs

            for name, w, beta in (("row weight", w_row, 0.3), ("row beta", None, b_row),
                                  ("row weight, row beta", w_row, b_row), ("column weight", w_col, 0.3),
                                  ("column beta", None, b_col), ("column weight, row beta", w_col, b_row),
                                  ("row weight, column beta", w_row, b_col)):
                got, want = run(w, beta), run(expand(w), expand(beta))
                if not all(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
                           for a, b in zip(got, want)):
                    bad.append(f"{dtype} inner={inner}: {name}")
    return bad


_BROADCAST_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import l1ext
from test_fast_paths import _broadcast_mismatches
print(l1ext.cpu_capability())
print(*_broadcast_mismatches(), sep="\\n")
"""


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_broadcast_operands_have_the_bits_of_full_ones(isa):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, L1EXT_CPU_CAPABILITY=isa)
    proc = subprocess.run([sys.executable, "-c", _BROADCAST_SCRIPT.format(tests=tests)], env=env,
                          capture_output=True, text=True, check=True)
    capability, *bad = proc.stdout.strip().split("\n")
    if capability != isa.upper():
        pytest.skip(f"this CPU runs {capability}, not {isa}")
    assert not [b for b in bad if b], bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weighted_other_incoming_gradient_rewrites_the_forward_gradient(dtype):
    # As for the plain losses: in place, with the backward operator's bits; a retained graph's
    # second backward recomputes into new tensors.
    p0, t0, w = (torch.randn(500, 4, dtype=dtype), torch.randn(500, 4, dtype=dtype),
                 torch.rand(500, 1, dtype=dtype))
    p, t = p0.clone().requires_grad_(), t0.clone().requires_grad_()
    go = torch.tensor(0.375, dtype=dtype)
    gi, gt, _ = ops.weighted_loss_backward(go, p0, t0, w, None, None, SMOOTH_L1, 1 / 9, 200.0, 2.0,
                                           1, [True, True, False])
    with RecordOps() as rec:
        out = LF.smooth_l1_loss(p, t, beta=1 / 9, weight=w, avg_factor=200.0, loss_weight=2.0)
        out.backward(go, retain_graph=True)
    assert rec.names == ["l1ext.weighted_loss_forward"], rec.names
    assert torch.equal(p.grad, gi) and torch.equal(t.grad, gt)
    p.grad = t.grad = None
    with RecordOps() as rec:
        out.backward(go)
    assert rec.names == ["l1ext.weighted_loss_backward"], rec.names
    assert torch.equal(p.grad, gi) and torch.equal(t.grad, gt)


def test_weighted_backward_of_one_runs_no_kernel():
    p, t, w = torch.randn(100, 4, requires_grad=True), torch.randn(100, 4), torch.rand(100, 1)
    with RecordOps() as rec:
        LF.smooth_l1_loss(p, t, beta=1 / 9, weight=w, avg_factor=40.0).backward()
    assert rec.names == ["l1ext.weighted_loss_forward"], rec.names
    with RecordOps() as rec:  # a weight that needs a gradient: the backward pass writes all three
        LF.smooth_l1_loss(p, t, beta=1 / 9, weight=w.requires_grad_(), avg_factor=40.0).backward()
    assert rec.names == ["l1ext.weighted_loss", "l1ext.weighted_loss_backward"], rec.names


@pytest.mark.parametrize("fn,kind,pname,param", [(LF.l1_loss, 0, None, None),
                                                 (LF.smooth_l1_loss, SMOOTH_L1, "beta", 0.2),
                                                 (LF.huber_loss, HUBER, "delta", 0.5)])
def test_weighted_loss_fast_matches_the_python_path(fn, kind, pname, param):
    p, t, w = torch.randn(30, 4), torch.randn(30, 4), torch.rand(30)
    kw = {pname: param} if pname else {}
    for avg in (None, 9.0, torch.tensor(9.0)):
        for reduction in ("none", "mean", "sum"):
            if avg is not None and reduction == "sum":
                assert _C.loss_fast(kind, p, t, reduction, param, w, avg, 2.0) is None
                continue
            fast = _C.loss_fast(kind, p, t, reduction, param, w, avg, 2.0)
            with PassThrough():  # any mode sends the call down the Python path
                slow = fn(p, t, reduction=reduction, weight=w, avg_factor=avg, loss_weight=2.0, **kw)
            assert fast is not None and torch.equal(fast, slow)
    # a weight alone: torch's own weight= semantics for L1 and Huber (Python), weighted for Smooth L1
    alone = _C.loss_fast(kind, p, t, "mean", param, torch.rand(30, 4), None, None)
    assert (alone is None) == (kind != SMOOTH_L1)
    # declined: empty reduced input, odd avg_factor or loss_weight, a weight subclass
    assert _C.loss_fast(kind, p[:0], t[:0], "mean", param, None, 1.0, None) is None
    assert _C.loss_fast(kind, p, t, "mean", param, w, "9", None) is None
    assert _C.loss_fast(kind, p, t, "mean", param, w, None, torch.tensor(2.0)) is None
    assert _C.loss_fast(kind, p, t, "mean", param, w.as_subclass(Tagged), None, 2.0) is None
    # a subclass takes __torch_function__, which gets every argument
    sub = fn(p.as_subclass(Tagged), t, weight=w, avg_factor=9.0, loss_weight=2.0, **kw)
    assert torch.equal(sub.as_subclass(torch.Tensor), fn(p, t, weight=w, avg_factor=9.0, loss_weight=2.0, **kw))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_weighted_forward_gradient_dtypes(dtype):
    p0, t, w = torch.randn(700, 4).to(dtype), torch.randn(700, 4).to(dtype), torch.rand(700, 1).to(dtype)
    p = p0.clone().requires_grad_()
    t1 = t.clone().requires_grad_()
    LF.smooth_l1_loss(p, t1, beta=1 / 9, weight=w, avg_factor=300.0).backward()
    gi, gt, _ = ops.weighted_loss_backward(torch.ones((), dtype=dtype), p0, t, w, None, None, SMOOTH_L1, 1 / 9,
                                           300.0, 1.0, 1, [True, True, False])
    assert torch.equal(p.grad, gi) and torch.equal(t1.grad, gt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0, 0.125, 2.0**-20, 1024.0, 1 / 9, 0.3])
def test_smooth_l1_beta_power_of_two_has_the_bits_of_a_division(beta, dtype, device):
    # For a power-of-two beta the kernels (CPU and CUDA, math::with_loss) multiply by 1 / beta
    # instead of dividing by beta: the same real number rounded once, so the same bits. Checked
    # against the division written out in torch's elementwise operators on the CPU (computed in
    # the accumulation type, float for bfloat16), on residuals across the range, subnormal, +-inf
    # and NaN included; other betas (1/9, 0.3) take the division and pass the same check. (Where
    # they differ from the division written out, 0.5 * beta is exact: a fused multiply-add on a
    # GPU rounds z - 0.5 * beta as the two operations do.)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, generator=g, dtype=acc) * torch.logspace(-30, 3, 5000, dtype=acc)
    x[:6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-41], dtype=acc)
    x, y = x.to(dtype), torch.zeros(5000, dtype=dtype)
    d = x.to(acc) - y.to(acc)
    z = d.abs()
    b = torch.tensor(beta, dtype=acc)
    value = torch.where(z < b, 0.5 * z * z / b, z - 0.5 * b).to(dtype)
    grad = torch.where(d <= -b, -1.0, torch.where(d >= b, 1.0, d / b).to(acc)).to(dtype)

    def same(a, e):
        a = a.cpu()
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a[~a.isnan()], e[~e.isnan()])

    x, y = x.to(device), y.to(device)
    same(LF.smooth_l1_loss(x, y, beta=beta, reduction="none"), value)
    xg = x.clone().requires_grad_()
    LF.smooth_l1_loss(xg, y, beta=beta, reduction="sum").backward()
    same(xg.grad, grad)
    # The weighted kernels with a uniform beta (weight of one, reduction 'sum').
    xw = x.clone().requires_grad_()
    ones = torch.ones(5000, dtype=dtype, device=device)
    LF.smooth_l1_loss(xw, y, beta=beta, weight=ones, reduction="sum").backward()
    same(xw.grad, grad)
