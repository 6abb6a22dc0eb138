"""Weighted (detection-style) losses and the quantile loss, against the eager compositions
detection code writes and a float64 formula oracle."""
import itertools
import math
import re

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st

import l1ext
import l1ext.functional as LF

from conftest import DEVICES, FLOAT_DTYPES, TOL, assert_close

EPS = torch.finfo(torch.float32).eps


def _mmdet_reference(elementwise, weight, reduction, avg_factor, loss_weight):
    """mmdetection's weight_reduce_loss, written out."""
    loss = elementwise if weight is None else elementwise * weight
    if avg_factor is None:
        loss = loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss
    elif reduction == "mean":
        loss = loss.sum() / (avg_factor + EPS)
    return loss * (1.0 if loss_weight is None else loss_weight)


ELEMENTWISE = {
    "l1": (LF.l1_loss, lambda p, t, prm: (p - t).abs(), None),
    "smooth_l1": (LF.smooth_l1_loss, lambda p, t, prm: TF.smooth_l1_loss(p, t, reduction="none", beta=prm), "beta"),
    "huber": (LF.huber_loss, lambda p, t, prm: TF.huber_loss(p, t, reduction="none", delta=prm), "delta"),
}


def _weight(shape_kind, n, device):
    return {
        "none": None,
        "full": torch.rand(n, 4, device=device),
        "row": torch.rand(n, 1, device=device),
        "row_dropped": torch.rand(n, device=device),
        "col": torch.rand(4, device=device),
    }[shape_kind]


def _as_broadcast(weight, shape):
    """weight as torch broadcasts it to an input of `shape` the way l1ext does: a weight of the
    input's shape without its last dimension is one per row (beyond torch's broadcasting)."""
    if weight is not None and weight.dim() >= 1 and tuple(weight.shape) == tuple(shape[:-1]):
        return weight.unsqueeze(-1)
    return weight


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("avg_factor", [None, 7.0, "tensor"])
@pytest.mark.parametrize("weight_kind", ["none", "full", "row", "row_dropped", "col"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("loss", list(ELEMENTWISE))
def test_weighted_matches_mmdet_composition(loss, reduction, weight_kind, avg_factor, device):
    if avg_factor is not None and reduction == "sum":
        pytest.skip("an error, tested below")
    ours, elementwise, pname = ELEMENTWISE[loss]
    n = 37
    pred0, target = torch.randn(n, 4, device=device, dtype=torch.float64), torch.randn(n, 4, device=device, dtype=torch.float64)
    w0 = _weight(weight_kind, n, device)
    w0 = None if w0 is None else w0.double()
    avg = torch.tensor(11.0, device=device, dtype=torch.float64) if avg_factor == "tensor" else avg_factor
    kw = {pname: 0.3} if pname else {}
    results = []
    for mine in (True, False):
        pred = pred0.clone().requires_grad_()
        w = None if w0 is None else w0.clone().requires_grad_()
        if mine:
            out = ours(pred, target, reduction=reduction, weight=w, avg_factor=avg, loss_weight=2.0, **kw)
        else:
            out = _mmdet_reference(elementwise(pred, target, kw.get(pname)), _as_broadcast(w, (n, 4)), reduction, avg, 2.0)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), pred.grad, None if w is None else w.grad))
    for a, b in zip(*results):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight_kind", ["none", "full", "row"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("loss", list(ELEMENTWISE))
def test_weighted_zero_gradients_have_the_compositions_signs(loss, reduction, weight_kind, device):
    # Zero residuals (equal operands, and +0 against -0 either way) under weights and incoming
    # gradients of either sign: the zeros of both gradients have the composition's signs (its
    # target gradient is torch's backward with the operands swapped: loss_math.h, target_grad).
    ours, elementwise, pname = ELEMENTWISE[loss]
    n = 37
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    y[::3] = x[::3]
    x[1::9], y[1::9] = 0.0, -0.0
    x[2::9], y[2::9] = -0.0, 0.0
    w = {"none": None, "full": torch.randn(n, 4, generator=g),
         "row": torch.randn(n, 1, generator=g)}[weight_kind]
    w = None if w is None else w.to(device)
    go = torch.randn((n, 4) if reduction == "none" else (), generator=g).to(device)
    avg = 7.0 if reduction == "mean" else None
    kw = {pname: 0.3} if pname else {}
    results = []
    for mine in (True, False):
        pred, target = x.to(device).clone().requires_grad_(), y.to(device).clone().requires_grad_()
        if mine:
            out = ours(pred, target, reduction=reduction, weight=w, avg_factor=avg, loss_weight=2.0, **kw)
        else:
            out = _mmdet_reference(elementwise(pred, target, kw.get(pname)), w, reduction, avg, 2.0)
        out.backward(go)
        results.append((pred.grad, target.grad))
    for a, b in zip(*results):
        assert_close(a, b)
        zero = b == 0
        assert zero.sum() >= n and torch.equal(a[zero], b[zero])
        assert torch.equal(a[zero].signbit(), b[zero].signbit())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_weighted_dtypes(dtype):
    pred, target = torch.randn(50, 4).to(dtype), torch.randn(50, 4).to(dtype)
    w = torch.rand(50, 1).to(dtype)
    out = LF.smooth_l1_loss(pred, target, beta=0.5, weight=w, avg_factor=20.0)
    ref = _mmdet_reference(TF.smooth_l1_loss(pred.double(), target.double(), reduction="none", beta=0.5),
                           w.double(), "mean", 20.0, None)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])


# weight dtypes (a name for the 0-d one) and avg_factors against which the result's dtype and
# shape must be the eager composition's
_WIDENING_WEIGHTS = [None, "same", torch.float16, torch.float32, torch.float64, torch.int64, torch.bool, "0-d float64"]
_WIDENING_AVGS = [None, 3.0, (torch.float64, ()), (torch.float32, ()), (torch.int64, ()),
                  (torch.float32, (1,)), (torch.float64, (1, 1))]


_OPERAND_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.bool]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss, kw", [("l1", {}), ("smooth_l1", {"beta": 0.5}), ("smooth_l1", {"beta": 0.0}),
                                      ("huber", {"delta": 0.5})], ids=str)
def test_weighted_operands_of_mixed_dtypes(loss, kw, device):
    """Operands of different or non-floating dtypes as the eager composition takes them: torch's
    loss promotes them and answers in that dtype (Huber in the input's), takes a bool target for
    Smooth L1 and Huber, and refuses a bool operand of the L1 loss (Smooth L1 with beta 0) and a
    bool or integer input of the Huber loss, errors the weighted call raises too (eager and
    scripted). Integer operands of the L1 loss: torch's integer loss, weighted as the composition
    weights it (test_weighted_integer_l1_is_the_compositions)."""
    ours, elementwise, pname = ELEMENTWISE[loss]
    module = {"l1": l1ext.L1Loss, "smooth_l1": l1ext.SmoothL1Loss, "huber": l1ext.HuberLoss}[loss](**kw)
    scripted = torch.jit.script(module)
    for x_dtype, y_dtype in itertools.product(_OPERAND_DTYPES, _OPERAND_DTYPES):
        if x_dtype is y_dtype and x_dtype.is_floating_point:
            continue
        x = (torch.randn(12, 4, dtype=torch.float64, device=device) * 3).to(x_dtype)
        y = (torch.randn(12, 4, dtype=torch.float64, device=device) * 3).to(y_dtype)
        for w_dtype in (None, torch.float16, torch.float32, torch.float64):
            w = None if w_dtype is None else torch.rand(12, 1, device=device).to(w_dtype)
            try:
                ref = _mmdet_reference(elementwise(x, y, kw.get(pname)), w, "mean", 3.0, None)
            except RuntimeError as e:
                for call in (lambda: ours(x, y, weight=w, avg_factor=3.0, **kw),
                             lambda: scripted(x, y, weight=w, avg_factor=3.0)):
                    with pytest.raises((type(e), torch.jit.Error), match=str(e)[:30]):
                        call()
                continue
            out = ours(x, y, weight=w, avg_factor=3.0, **kw)
            assert out.dtype == ref.dtype, (x_dtype, y_dtype, w_dtype, out.dtype, ref.dtype)
            narrow = max((d for d in (x_dtype, y_dtype, ref.dtype) if d.is_floating_point),
                         key=lambda d: torch.finfo(d).eps)
            torch.testing.assert_close(out.double(), ref.double(), **TOL[narrow])
            mine = scripted(x, y, weight=w, avg_factor=3.0)
            assert mine.dtype == out.dtype and torch.equal(mine, out)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8], ids=str)
def test_weighted_integer_l1_is_the_compositions(dtype, device):
    """Integer operands of the weighted L1 loss (and of Smooth L1 with beta 0): torch's integer
    loss (with its wrap-around: 3 - 5 in uint8 is 254), then weighted, reduced and scaled as the
    composition is, in its dtype and shape: integral where it stays so (an integer weight or
    loss_weight, 'none' or 'sum'), floating otherwise; its error for the mean of an integer loss.
    Eager and scripted, exactly."""
    x = torch.randint(0, 100, (6, 4), device=device).to(dtype)
    y = torch.randint(0, 100, (6, 4), device=device).to(dtype)
    weights = [None, torch.rand(6, 4, device=device), torch.rand(6, 1, dtype=torch.float64, device=device),
               torch.randint(0, 3, (6, 4), device=device), torch.rand(6, device=device),
               torch.tensor(2.0, dtype=torch.float64, device=device)]
    avgs = [("none", None), ("sum", None), ("mean", None), ("mean", 3.0), ("mean", torch.tensor(3.0, device=device)),
            ("mean", torch.tensor([3.0], dtype=torch.float64, device=device)), ("mean", torch.tensor(3, device=device))]
    checked = 0
    for w, (reduction, avg), lw in itertools.product(weights, avgs, [None, 2.0, 2, torch.tensor(0.5, device=device)]):
        if avg is None and lw is None:
            continue  # (torch's own weighted l1_loss)
        row = _as_broadcast(w, x.shape)
        try:
            ref = _mmdet_reference((x - y).abs(), row, reduction, avg, 1)  # (an int keeps it integral)
            ref = ref if lw is None else lw * ref
        except RuntimeError as e:
            with pytest.raises(RuntimeError, match=re.escape(str(e))):
                LF.l1_loss(x, y, reduction=reduction, weight=w, avg_factor=avg, loss_weight=lw)
            continue
        calls = [lambda: LF.l1_loss(x, y, reduction=reduction, weight=w, avg_factor=avg, loss_weight=lw),
                 lambda: LF.smooth_l1_loss(x, y, beta=0.0, reduction=reduction, weight=w, avg_factor=avg,
                                           loss_weight=lw)]
        if not isinstance(lw, (torch.Tensor, int)):
            scripted = torch.jit.script(l1ext.L1Loss(reduction=reduction, loss_weight=lw))
            calls.append(lambda: scripted(x, y, weight=w, avg_factor=avg))
        for call in calls:
            out = call()
            assert out.dtype == ref.dtype and out.shape == ref.shape, (w, reduction, avg, lw, out.dtype, ref.dtype)
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)
            checked += 1
    assert checked > 150
    u = torch.tensor([3], dtype=torch.uint8, device=device)
    assert LF.l1_loss(u, u + 2, avg_factor=1.0).item() == pytest.approx(254 / (1 + EPS))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("avg", _WIDENING_AVGS, ids=str)
@pytest.mark.parametrize("weight_dtype", _WIDENING_WEIGHTS, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_weighted_result_has_the_compositions_dtype_and_shape(dtype, weight_dtype, avg, reduction, device):
    """loss * weight in torch's result type (a wider weight widens, a 0-d one does not), and
    sum / (avg_factor + eps) in that of a tensor avg_factor (a wider 0-d one widens; one of one
    element and more dimensions gives its dtype and shape), as the eager composition; gradients in
    each operand's dtype. Values to the tolerance of the narrower of the input's and the result's
    dtype: l1ext computes the elementwise loss in the widened dtype, the composition in the input's."""
    n = 24
    p0 = torch.randn(n, 4, dtype=torch.float64, device=device).to(dtype)
    t = torch.randn(n, 4, dtype=torch.float64, device=device).to(dtype)
    if weight_dtype is None:
        w0 = None
    elif weight_dtype == "0-d float64":
        w0 = torch.tensor(0.75, dtype=torch.float64, device=device)
    else:
        w0 = (torch.rand(n, 1, dtype=torch.float64, device=device) * 3).to(dtype if weight_dtype == "same" else weight_dtype)
    a = avg if not isinstance(avg, tuple) else torch.full(avg[1], 5, dtype=avg[0], device=device)
    for loss in ("l1", "smooth_l1", "huber"):
        ours, elementwise, pname = ELEMENTWISE[loss]
        kw = {pname: 0.5} if pname else {}
        results = []
        for mine in (True, False):
            p = p0.clone().requires_grad_()
            w = None if w0 is None else w0.clone().requires_grad_(w0.is_floating_point())
            if mine:
                out = ours(p, t, reduction=reduction, weight=w, avg_factor=a, loss_weight=1.5, **kw)
            else:
                out = _mmdet_reference(elementwise(p, t, kw.get(pname)), w, reduction, a, 1.5)
            out.backward(torch.ones_like(out))
            results.append((out, p.grad, None if w is None else w.grad))
        (out, gp, gw), (ref, rgp, rgw) = results
        assert (out.dtype, out.shape) == (ref.dtype, ref.shape), (loss, out.dtype, ref.dtype, out.shape, ref.shape)
        narrow = max((dtype, out.dtype), key=lambda d: torch.finfo(d).eps)
        torch.testing.assert_close(out.detach().double(), ref.detach().double(), **TOL[narrow])
        assert gp.dtype == dtype
        torch.testing.assert_close(gp.double(), rgp.double(), **TOL[narrow])
        if gw is not None:
            assert gw.dtype == w0.dtype and gw.shape == w0.shape
            narrowest = max((narrow, w0.dtype), key=lambda d: torch.finfo(d).eps)
            torch.testing.assert_close(gw.double(), rgw.double(), **TOL[narrowest])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shapes", [((4,), (3, 4)), ((6, 1), (6, 5)), ((6, 4), (2, 1, 4)), ((1, 4), (5, 1))],
                         ids=str)
def test_weight_that_widens_the_loss_shape(shapes, device):
    """A weight that broadcasts the loss to a larger shape gives the loss of that shape, its sum,
    mean or sum / avg_factor, and gradients as the eager composition."""
    in_shape, w_shape = shapes
    kw = dict(dtype=torch.float64, device=device)
    p0, t = torch.randn(in_shape, **kw), torch.randn(in_shape, **kw)
    w0 = torch.rand(w_shape, **kw)
    for loss in ELEMENTWISE:
        ours, elementwise, pname = ELEMENTWISE[loss]
        prm = {pname: 0.5} if pname else {}
        for reduction, avg in (("none", None), ("sum", None), ("mean", None), ("mean", 3.0)):
            results = []
            for mine in (True, False):
                p, w = p0.clone().requires_grad_(), w0.clone().requires_grad_()
                if mine:
                    out = ours(p, t, reduction=reduction, weight=w, avg_factor=avg, loss_weight=1.5, **prm)
                else:
                    out = _mmdet_reference(elementwise(p, t, prm.get(pname)), w, reduction, avg, 1.5)
                results.append((out, *torch.autograd.grad(out.sum(), [p, w])))
            for a, b in zip(*results):
                assert_close(a.detach(), b.detach())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"] + ["meta"])
def test_host_scalar_weight_for_a_loss_on_a_device(device):
    # loss * w with w a 0-d host tensor works in eager (a host scalar beside device tensors): the
    # same here, as a number (on the meta device: its dtype and shape). A weight that needs a gradient (a learned loss weight) gets one, on the host as eager's
    # does; a float64 one does not widen a float32 loss, and a scripted call does the same.
    scripted = torch.jit.script(l1ext.SmoothL1Loss())
    for dtype, w_dtype, learned in ((torch.float64, torch.float64, False),
                                    (torch.float32, torch.float64, True),
                                    (torch.float64, torch.float32, True)):
        p = torch.randn(10, 4, dtype=dtype, device=device, requires_grad=True)
        t = torch.randn(10, 4, dtype=dtype, device=device)
        w = torch.tensor(0.25, dtype=w_dtype, requires_grad=learned)
        for reduction, avg in (("none", None), ("mean", 3.0), ("sum", None), ("mean", None)):
            out = LF.smooth_l1_loss(p, t, weight=w, avg_factor=avg, reduction=reduction)
            ref = _mmdet_reference(TF.smooth_l1_loss(p, t, reduction="none"), w, reduction, avg, None)
            mine = scripted(p, t, weight=w, avg_factor=avg, reduction_override=reduction)
            for got in (out, mine):
                assert (got.dtype, got.shape, got.device) == (ref.dtype, ref.shape, ref.device)
                assert got.requires_grad
            if device == "meta":
                continue
            wanted = (p, w) if learned else (p,)
            assert_close(out, ref)
            assert_close(mine, ref)
            for got, expected in zip(torch.autograd.grad(out.sum(), wanted),
                                     torch.autograd.grad(ref.sum(), wanted)):
                assert got.device == expected.device
                assert_close(got, expected)
            if learned:
                assert_close(torch.autograd.grad(mine.sum(), w)[0], torch.autograd.grad(ref.sum(), w)[0])


def test_weight_per_row_of_rows_of_one():
    # (6, 1) with a weight (6,): six rows of one element and their weights, not a (6, 6) loss
    p, t, w = torch.randn(6, 1), torch.randn(6, 1), torch.rand(6)
    assert_close(LF.l1_loss(p, t, weight=w, loss_weight=1.0, reduction="none"), (p - t).abs() * w[:, None])


def test_per_coordinate_beta_and_delta():
    pred, target = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    beta = torch.tensor([0.1, 0.2, 0.0, 1.0], dtype=torch.float64)
    out = LF.smooth_l1_loss(pred, target, beta=beta, reduction="none")
    ref = torch.stack([TF.smooth_l1_loss(pred[:, k], target[:, k], beta=float(beta[k]), reduction="none")
                       for k in range(4)], dim=1)
    torch.testing.assert_close(out, ref)
    delta = torch.rand(20, 4, dtype=torch.float64) + 0.1
    out = LF.huber_loss(pred, target, delta=delta, reduction="sum")
    ref = sum(TF.huber_loss(pred[i, k], target[i, k], delta=float(delta[i, k]), reduction="sum")
              for i in range(20) for k in range(4))
    torch.testing.assert_close(out, ref)
    # beta == 0 in a coordinate is exactly L1 there, gradient 0 at a zero residual
    p = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    LF.smooth_l1_loss(p, torch.zeros(1, 4, dtype=torch.float64), beta=beta, reduction="sum").backward()
    assert torch.equal(p.grad, torch.zeros(1, 4, dtype=torch.float64))


def test_empty_boxes_give_connected_zero():
    pred = torch.randn(0, 4, requires_grad=True)
    w = torch.rand(0, 4)
    for fn in (LF.l1_loss, LF.smooth_l1_loss, LF.huber_loss):
        out = fn(pred, torch.randn(0, 4), weight=w, avg_factor=1.0, loss_weight=1.0)
        assert out.item() == 0.0 and out.requires_grad
        out.backward()
        assert pred.grad.shape == (0, 4)
    # As the eager composition, the zero reaches every operand that needs a gradient: zero
    # gradients for the target and the weight (also where the prediction needs none), and in the
    # composition's dtype (float64 here: loss * weight widens to the weight's).
    for reduction, avg in (("mean", 3.0), ("mean", None), ("sum", None)):
        for fn in (LF.l1_loss, LF.smooth_l1_loss, LF.huber_loss, LF.quantile_loss):
            t = torch.randn(0, 4, requires_grad=True)
            w = torch.rand(0, 1, dtype=torch.float64, requires_grad=True)
            out = fn(torch.randn(0, 4), t, weight=w, avg_factor=avg, loss_weight=2.0, reduction=reduction)
            assert out.dtype == torch.float64 and out.item() == 0.0
            out.backward()
            assert t.grad.shape == (0, 4) and w.grad.shape == (0, 1) and w.grad.dtype == torch.float64

    # A tensor beta, delta, tau or avg_factor that needs a gradient gets a zero one too.
    for fn, param, value in ((LF.smooth_l1_loss, "beta", [0.1, 0.2, 0.5, 1.0]),
                             (LF.huber_loss, "delta", [0.1, 0.2, 0.5, 1.0]),
                             (LF.quantile_loss, "tau", [0.1, 0.2, 0.5, 0.9])):
        prm = torch.tensor(value, requires_grad=True)
        avg = torch.tensor(3.0, requires_grad=True)
        out = fn(torch.randn(0, 4, requires_grad=True), torch.randn(0, 4), avg_factor=avg, **{param: prm})
        assert out.item() == 0.0
        grads = torch.autograd.grad(out, [prm, avg])
        assert torch.equal(grads[0], torch.zeros(4)) and torch.equal(grads[1], torch.zeros(()))


def test_invalid_tensor_parameters_are_refused():
    # torch's rules for a number beta / delta (beta >= 0, delta > 0; NaN neither) and
    # quantile_loss's for tau hold for every value of a tensor one, checked by the operator: on
    # every path (C++ fast path, functional.py, an empty input, a parameter that needs a gradient).
    # (On a GPU, a device-side assertion: tests/test_cuda.py.)
    cases = [(LF.smooth_l1_loss, "beta", [0.0, 0.5], [-1.0, -1e-3, float("nan")], RuntimeError,
              "does not support negative values for beta"),
             (LF.huber_loss, "delta", [0.1, 0.5], [0.0, -1.0, float("nan")], RuntimeError,
              "does not support non-positive values for delta"),
             (LF.quantile_loss, "tau", [0.1, 0.5], [0.0, 1.0, -0.5, 2.0, float("nan")], ValueError,
              "every tau must be in")]
    for fn, name, good, bads, error, message in cases:
        p, t = torch.randn(3, 2), torch.randn(3, 2)
        fn(p, t, **{name: torch.tensor(good)})  # valid (a zero beta is L1)
        for bad in bads:
            prm = torch.tensor([good[1], bad])
            calls = [lambda: fn(p, t, **{name: prm}),
                     lambda: fn(p, t, reduction="none", weight=torch.rand(3, 1), **{name: prm}),
                     lambda: fn(p.double(), t, **{name: prm}),
                     lambda: fn(p, t, **{name: prm.clone().requires_grad_()}),
                     lambda: fn(p[:0], t[:0], avg_factor=2.0, **{name: prm})]
            for call in calls:
                with pytest.raises(error, match=message):
                    call()


def test_quantile_tau_under_compile_and_torch_func():
    # A tensor tau, checked by the operator rather than on the host by Python: torch.compile
    # (fullgraph) and torch.func's transforms over tau work, and still refuse an invalid tau.
    x, y = torch.randn(6, 3), torch.randn(6)
    taus = torch.tensor([0.1, 0.5, 0.9])
    eager = LF.quantile_loss(x, y, taus)
    compiled = torch.compile(lambda a, b, q: LF.quantile_loss(a, b, q), fullgraph=True)
    torch.testing.assert_close(compiled(x, y, taus), eager)
    with pytest.raises(ValueError, match="every tau must be in"):
        compiled(x, y, torch.tensor([0.1, 1.5, 0.9]))
    d = x - y[:, None]
    want = torch.where(d < 0, -d, torch.zeros(())).mean(0) - torch.where(d > 0, d, torch.zeros(())).mean(0)
    torch.testing.assert_close(torch.func.grad(lambda q: LF.quantile_loss(x, y, q, reduction="sum"))(taus) / 6,
                               want)
    per_tau = torch.func.vmap(lambda q: LF.quantile_loss(x, y, q), in_dims=0)(taus[:, None].expand(3, 3))
    torch.testing.assert_close(per_tau, torch.stack([LF.quantile_loss(x, y, taus[k].expand(3)) for k in range(3)]))
    with pytest.raises(ValueError, match="every tau must be in"):
        torch.func.grad(lambda q: LF.quantile_loss(x, y, q))(torch.tensor([0.1, 0.5, 1.0]))
    with pytest.raises(ValueError, match="every tau must be in"):
        LF.quantile_loss(x, y, torch.tensor([0, 1, 0]))  # (an integer tau: its values are checked)


@pytest.mark.parametrize("loss", ["smooth_l1", "huber", "quantile"])
def test_compiled_learned_parameter(loss):
    # A tensor beta, delta or tau that needs a gradient (torch's operators compute the loss) traces
    # under torch.compile (fullgraph): its check is an assertion of the graph, which refuses an
    # invalid value when the graph runs.
    fn = {"smooth_l1": lambda a, b, q: LF.smooth_l1_loss(a, b, beta=q),
          "huber": lambda a, b, q: LF.huber_loss(a, b, delta=q),
          "quantile": lambda a, b, q: LF.quantile_loss(a, b, q)}[loss]
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    good, bad = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.1, -0.5, 0.9])
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        q = good.clone().requires_grad_()
        out = f(x, y, q)
        out.backward()
        results.append((out, q.grad))
    torch.testing.assert_close(results[1], results[0])
    with pytest.raises((RuntimeError, ValueError), match="beta|delta|tau"):
        compiled(x, y, bad.clone().requires_grad_())


def test_quantile_of_one_quantile_takes_one_target_per_row():
    # input (B, 1), target (B,), tau (1,): one target for the row's quantile, as for Q > 1 (no
    # broadcast to (B, B)); a number or 0-d tau keeps torch's broadcasting, with its warning.
    x, y = torch.randn(5, 1), torch.randn(5)
    out = LF.quantile_loss(x, y, torch.tensor([0.3]), reduction="none")
    assert out.shape == (5, 1)
    torch.testing.assert_close(out, LF.quantile_loss(x, y[:, None], 0.3, reduction="none"))
    torch.testing.assert_close(l1ext.QuantileLoss(torch.tensor([0.3]))(x, y), out.mean())
    for tau in (0.3, torch.tensor(0.3)):
        with pytest.warns(UserWarning, match="different to the input size"):
            assert LF.quantile_loss(x, y, tau, reduction="none").shape == (5, 5)


def test_weighted_errors():
    p, t = torch.randn(4, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match="avg_factor can not be used with reduction=\"sum\""):
        LF.smooth_l1_loss(p, t, reduction="sum", avg_factor=3.0)
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        LF.l1_loss(p, t, reduction="avg", loss_weight=2.0)
    with pytest.raises(RuntimeError, match="negative values for beta"):
        LF.smooth_l1_loss(p, t, beta=-1.0, weight=torch.ones(4))
    with pytest.raises(RuntimeError):
        LF.smooth_l1_loss(p, t, weight=torch.ones(3))  # not broadcastable


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("avg_on", ["device", "host", "weight_sum", None])
@pytest.mark.parametrize("loss", ["l1", "smooth_l1", "huber", "quantile"])
def test_gradients_of_a_tensor_parameter_and_avg_factor(loss, avg_on, device):
    """A tensor beta / delta / tau and a tensor avg_factor that need gradients get the eager
    composition's (the formula's) gradients, also an avg_factor on the host for a loss on a
    device, and avg_factor = weight.sum() (a weight normalised by its own sum)."""
    if avg_on == "host" and device == "cpu":
        pytest.skip("the same as on the device")
    kw = dict(dtype=torch.float64, device=device)
    p0, t = torch.randn(9, 4, **kw), torch.randn(9, 4, **kw)
    t[0] = p0[0]  # zero residuals
    prm0 = {"l1": None, "smooth_l1": torch.tensor([0.5, 0.0, 1.0, 2.0], **kw),
            "huber": torch.tensor([0.5, 0.2, 1.0, 2.0], **kw), "quantile": torch.tensor([0.1, 0.5, 0.7, 0.9], **kw)}[loss]
    results = []
    for mine in (True, False):
        p = p0.clone().requires_grad_()
        w = torch.rand(9, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device).requires_grad_()
        prm = None if prm0 is None else prm0.clone().requires_grad_()
        a = {"device": torch.tensor(4.0, **kw), "host": torch.tensor(4.0, dtype=torch.float64),
             "weight_sum": None, None: None}[avg_on]
        a = w.sum() if avg_on == "weight_sum" else a if a is None else a.requires_grad_()
        if mine:
            fn, pname = PROPERTY_LOSSES[loss]
            out = fn(p, t, weight=w, avg_factor=a, loss_weight=1.5, **({pname: prm} if pname else {}))
        else:
            out = _mmdet_reference(_formula(loss, p, t, prm), w, "mean", a, 1.5)
        leaves = [v for v in (p, w, prm, a) if v is not None and v.is_leaf]
        results.append((out.detach(), torch.autograd.grad(out, leaves)))
    (out, grads), (ref, ref_grads) = results
    assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r)
    if prm0 is not None:  # (away from beta = 0, where the loss has a kink in beta)
        f = lambda b: PROPERTY_LOSSES[loss][0](p0, t, reduction="sum", **{PROPERTY_LOSSES[loss][1]: b})
        assert torch.autograd.gradcheck(f, (prm0.clamp(min=0.1).requires_grad_(),))
        assert torch.autograd.gradgradcheck(f, (prm0.clamp(min=0.1).requires_grad_(),))


def test_modules_learn_a_parameter_tensor():
    # beta, delta or tau given as a Parameter is one of the module's parameters, and gets the
    # formula's gradient.
    p, t = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    for cls, pname, value, loss in ((l1ext.SmoothL1Loss, "beta", [0.5, 1.0, 2.0], "smooth_l1"),
                                    (l1ext.HuberLoss, "delta", [0.5, 1.0, 2.0], "huber"),
                                    (l1ext.QuantileLoss, "tau", [0.1, 0.5, 0.9], "quantile")):
        prm = torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))
        crit = cls(**{pname: prm}, reduction="sum")
        assert [q is prm for q in crit.parameters()] == [True]
        crit(p, t).backward()
        q = prm.detach().clone().requires_grad_()
        expected, = torch.autograd.grad(_formula(loss, p, t, q).sum(), [q])
        torch.testing.assert_close(prm.grad, expected)



@pytest.mark.parametrize("device", DEVICES)
def test_modules_move_a_tensor_parameter(device):
    # A plain tensor beta, delta or tau is a non-persistent buffer: module.to() moves and casts
    # it, the state_dict stays torch's (empty); a number stays an attribute, as in torch's
    # modules, and either may be assigned.
    p = torch.randn(16, 3, dtype=torch.float64, device=device)
    t = torch.randn(16, 3, dtype=torch.float64, device=device)
    for cls, pname, value in ((l1ext.SmoothL1Loss, "beta", [0.5, 1.0, 2.0]),
                              (l1ext.HuberLoss, "delta", [0.5, 1.0, 2.0]),
                              (l1ext.QuantileLoss, "tau", [0.1, 0.5, 0.9])):
        crit = cls(**{pname: torch.tensor(value)})
        assert list(dict(crit.named_buffers())) == [pname] and crit.state_dict() == {}
        crit.load_state_dict({})
        crit = crit.to(device, torch.float64)
        assert getattr(crit, pname).device == p.device and getattr(crit, pname).dtype == torch.float64
        ref = cls(**{pname: torch.tensor(value, dtype=torch.float64, device=device)})(p, t)
        torch.testing.assert_close(crit(p, t), ref)
        assert not list(cls(**{pname: 0.5}).named_buffers()) and getattr(cls(**{pname: 0.5}), pname) == 0.5
        setattr(crit, pname, 0.25)
        assert getattr(crit, pname) == 0.25 and not list(crit.named_buffers())
        torch.testing.assert_close(crit(p, t), cls(**{pname: 0.25})(p, t))
        setattr(crit, pname, torch.tensor(value, dtype=torch.float64, device=device))
        assert list(dict(crit.named_buffers())) == [pname]
        torch.testing.assert_close(crit(p, t), ref)



@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "scripted"])
def test_module_weight_is_elementwise_for_every_module(scripted):
    # A module's weight= is mmdetection's (loss * weight, then the reduction), for L1 and Huber
    # too: torch's modules take no weight, so a module never takes the functional weight= rule.
    p, t, w = torch.randn(6, 4), torch.randn(6, 4), torch.rand(6, 1)
    for name, (_, elementwise, param) in ELEMENTWISE.items():
        cls = {"l1": l1ext.L1Loss, "smooth_l1": l1ext.SmoothL1Loss, "huber": l1ext.HuberLoss}[name]
        crit = cls(reduction="sum")
        crit = torch.jit.script(crit) if scripted else crit
        prm = 1.0 if param else None
        for reduction in ("mean", "sum", "none"):
            torch.testing.assert_close(crit(p, t, w, reduction_override=reduction),
                                       _mmdet_reference(elementwise(p, t, prm), w, reduction, None, None))


def test_loss_weight_tensor_and_numpy_numbers():
    # A tensor loss_weight multiplies as in `loss_weight * loss` (a learned one gets its
    # gradient); NumPy scalars are numbers for tau, beta, delta and loss_weight.
    np = pytest.importorskip("numpy")
    p, t = torch.randn(6, 4), torch.randn(6, 4)
    lw = torch.tensor(2.0, requires_grad=True)
    out = LF.smooth_l1_loss(p, t, beta=0.5, avg_factor=3.0, loss_weight=lw)
    base = LF.smooth_l1_loss(p, t, beta=0.5, avg_factor=3.0)
    out.backward()
    torch.testing.assert_close(out, 2.0 * base)
    torch.testing.assert_close(lw.grad, base)
    for value in (np.float32(0.3), np.float64(0.3)):
        torch.testing.assert_close(LF.quantile_loss(p, t, value), LF.quantile_loss(p, t, 0.3))
        torch.testing.assert_close(LF.smooth_l1_loss(p, t, beta=value, loss_weight=np.float32(2.0)),
                                   LF.smooth_l1_loss(p, t, beta=0.3, loss_weight=2.0))

def test_torch_semantics_kept_without_new_arguments():
    p, t, w = torch.randn(6, 4), torch.randn(6, 4), torch.rand(6, 4)
    torch.testing.assert_close(LF.l1_loss(p, t, weight=w), TF.l1_loss(p, t, weight=w))
    torch.testing.assert_close(LF.huber_loss(p, t, weight=w), TF.huber_loss(p, t, weight=w))
    with pytest.raises(ValueError, match="Weights and input must have the same size"):
        LF.l1_loss(p, t, weight=torch.rand(6, 1))


def test_modules_with_reduction_override():
    crit = l1ext.SmoothL1Loss(beta=1 / 9, loss_weight=2.0)
    p, t, w = torch.randn(8, 4), torch.randn(8, 4), torch.rand(8)
    elementwise = TF.smooth_l1_loss(p, t, reduction="none", beta=1 / 9)
    out = crit(p, t, weight=w, avg_factor=4.0, reduction_override=None)  # the module's 'mean'
    torch.testing.assert_close(out, _mmdet_reference(elementwise, w[:, None], "mean", 4.0, 2.0))
    out = crit(p, t, weight=w, reduction_override="sum")
    torch.testing.assert_close(out, _mmdet_reference(elementwise, w[:, None], "sum", None, 2.0))
    with pytest.raises(ValueError, match="avg_factor can not be used"):
        crit(p, t, weight=w, avg_factor=4.0, reduction_override="sum")
    assert crit(p, t, weight=w, reduction_override="none").shape == (8, 4)
    with pytest.raises(ValueError):
        crit(p, t, reduction_override="avg")
    assert repr(crit) == "SmoothL1Loss()"
    assert isinstance(l1ext.HuberLoss(delta=torch.ones(4)), torch.nn.HuberLoss)


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"] + ["meta"])
def test_compiled_host_scalar_weight_for_a_loss_on_a_device(device):
    # A 0-d host weight (a number to eager torch) beside a device loss, traced: the same result
    # as eager's, a gradient for a learned one (on the meta device, traced without inductor: the
    # result's dtype, shape and device).
    p = torch.randn(12, 4, device=device, requires_grad=True)
    t = torch.randn(12, 4, device=device)
    g = torch.compile(lambda a, b, c: LF.smooth_l1_loss(a, b, weight=c, avg_factor=5.0), fullgraph=True,
                      backend="aot_eager" if device == "meta" else "inductor")
    for learned in (False, True):
        w = torch.tensor(0.5, dtype=torch.float64, requires_grad=learned)
        out, ref = g(p, t, w), LF.smooth_l1_loss(p, t, weight=w, avg_factor=5.0)
        assert (out.dtype, out.shape, out.device, out.requires_grad) == \
            (ref.dtype, ref.shape, ref.device, ref.requires_grad)
        if device == "meta":
            continue
        torch.testing.assert_close(out, ref)
        if learned:
            torch.testing.assert_close(torch.autograd.grad(out, w)[0], torch.autograd.grad(ref, w)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_weighted_compile_and_opcheck(device):
    from torch.library import opcheck

    p = torch.randn(12, 4, device=device, requires_grad=True)
    t, w = torch.randn(12, 4, device=device), torch.rand(12, 1, device=device, requires_grad=True)
    f = torch.compile(lambda a, b, c: LF.smooth_l1_loss(a, b, beta=0.2, weight=c, avg_factor=5.0), fullgraph=True)
    out = f(p, t, w)
    ref = LF.smooth_l1_loss(p, t, beta=0.2, weight=w, avg_factor=5.0)
    torch.testing.assert_close(out, ref)
    # widening (a float64 weight, a (1,) avg_factor) traced as eager computes it
    g = torch.compile(lambda a, b, c, d: LF.smooth_l1_loss(a, b, weight=c, avg_factor=d), fullgraph=True)
    for wd, avg in ((torch.float64, torch.tensor([5.0], device=device)), (torch.float32, torch.tensor(5, device=device))):
        out = g(p, t, w.to(wd), avg)
        ref = LF.smooth_l1_loss(p, t, weight=w.to(wd), avg_factor=avg)
        assert (out.dtype, out.shape) == (ref.dtype, ref.shape)
        torch.testing.assert_close(out, ref)
    ops = torch.ops.l1ext
    for red in (0, 1, 2):
        avg = None if red == 2 else torch.tensor(3.0, device=device)
        opcheck(ops.weighted_loss.default, (p, t, w, None, avg, 1, 0.2, None, 1.5, red))
        opcheck(ops.weighted_loss.default, (p.detach(), t, None, torch.rand(4, device=device), None, 3, 0.0, 2.0 if red != 2 else None, 1.0, red))
        for a in (p, p.detach()):
            opcheck(ops.weighted_loss_forward.default, (a, t, w.detach(), None, avg, 1, 0.2, None, 1.5, red, [True, False]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [4, 5])
def test_as_many_rows_as_columns(n, device):
    # Boxes (4, 4): a parameter (4,) broadcasts by torch's rules (per coordinate) as for any other
    # number of boxes; a weight (4,) is one weight per box as for any other number of boxes, and a
    # weight (1, 4) one per coordinate.
    kw = dict(device=device, dtype=torch.float64)
    pred = torch.randn(n, 4, **kw, requires_grad=True)
    target = torch.randn(n, 4, **kw)
    beta = torch.tensor([0.1, 0.5, 2.0, 4.0], **kw)
    for ours, theirs, name in ((LF.smooth_l1_loss, TF.smooth_l1_loss, "beta"),
                               (LF.huber_loss, TF.huber_loss, "delta")):
        out = ours(pred, target, reduction="none", **{name: beta})
        ref = torch.stack([theirs(pred[:, k], target[:, k], reduction="none", **{name: float(beta[k])})
                           for k in range(4)], dim=1)
        torch.testing.assert_close(out, ref)
    row_weight = torch.rand(n, **kw)
    col_weight = torch.rand(1, 4, **kw)
    for weight, broadcast in ((row_weight, row_weight[:, None]), (col_weight, col_weight)):
        out = LF.smooth_l1_loss(pred, target, weight=weight, avg_factor=3.0)
        ref = (TF.smooth_l1_loss(pred, target, reduction="none") * broadcast).sum() / (3.0 + EPS)
        torch.testing.assert_close(out, ref)
    # Quantiles tau (Q,) over an input (B, Q) with B == Q
    taus = torch.tensor([0.1, 0.5, 0.9, 0.99], **kw)
    target_b = torch.randn(n, **kw)
    out = LF.quantile_loss(pred, target_b, taus, reduction="none")
    ref = torch.stack([_pinball(pred[:, q], target_b, float(taus[q])) for q in range(4)], -1)
    torch.testing.assert_close(out, ref)


# ---- quantile --------------------------------------------------------------------------------------

def _pinball(pred, target, tau):
    d = target - pred
    return torch.where(d >= 0, tau * d, (tau - 1) * d)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("tau", [0.1, 0.5, 0.9])
def test_quantile_against_formula(tau, reduction, device):
    pred = torch.randn(200, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.randn(200, dtype=torch.float64, device=device)
    pred2 = pred.detach().clone().requires_grad_()
    out = LF.quantile_loss(pred, target, tau, reduction=reduction)
    ref = _pinball(pred2, target, tau)
    ref = {"none": ref, "mean": ref.mean(), "sum": ref.sum()}[reduction]
    out.backward(torch.ones_like(out))
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(pred.grad, pred2.grad)


def test_quantile_half_is_half_l1():
    pred = torch.randn(300, requires_grad=True)
    target = torch.randn(300)
    target[:7] = pred.detach()[:7]  # zero residuals: subgradient 0, as L1's
    pred2 = pred.detach().clone().requires_grad_()
    q = LF.quantile_loss(pred, target, 0.5)
    l = 0.5 * TF.l1_loss(pred2, target)
    q.backward()
    l.backward()
    torch.testing.assert_close(q, l)
    torch.testing.assert_close(pred.grad, pred2.grad)


def test_multi_quantile_forecasting():
    taus = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    pred = torch.randn(16, 5, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(16, 5, dtype=torch.float64)
    out = LF.quantile_loss(pred, target, taus)
    ref = torch.stack([_pinball(pred[..., q], target, float(taus[q])) for q in range(3)], -1).mean()
    torch.testing.assert_close(out, ref)
    out2 = l1ext.QuantileLoss(taus, reduction="sum")(pred, target[..., None])
    torch.testing.assert_close(out2, ref * pred.numel())


def test_quantile_errors_and_warnings():
    p, t = torch.randn(5), torch.randn(5)
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="tau must be in"):
            LF.quantile_loss(p, t, bad)
    with pytest.raises(ValueError, match="every tau"):
        LF.quantile_loss(torch.randn(5, 2), torch.randn(5), torch.tensor([0.2, 1.0]))
    with pytest.raises(TypeError):
        LF.quantile_loss(p, t, "0.5")
    with pytest.warns(UserWarning, match="different to the input size"):
        LF.quantile_loss(torch.randn(3, 4), torch.randn(4), 0.3)
    q = LF.quantile_loss(p.half(), t.half(), 0.3)
    assert q.dtype == torch.float16


@pytest.mark.parametrize("changed", ["pred", "target", "weight"])
def test_inplace_change_before_backward_raises_like_the_composition(changed):
    # The eager composition (smooth_l1_loss(p, t, reduction='none') * w).sum() / avg saves pred,
    # target and weight: a backward after an in-place change of any of them raises. So does the
    # fused loss, also where its forward already wrote the gradient (CPU).
    outcomes = []
    for fused in (False, True):
        leaf = torch.randn(20, 4, requires_grad=True)
        pred, target, weight = leaf * 1, torch.randn(20, 4), torch.rand(20, 1)
        if fused:
            out = LF.smooth_l1_loss(pred, target, beta=1 / 9, weight=weight, avg_factor=5.0)
        else:
            out = (TF.smooth_l1_loss(pred, target, beta=1 / 9, reduction="none") * weight).sum() / 5.0
        {"pred": pred, "target": target, "weight": weight}[changed].add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.backward()


# ---- property-based: every operand layout against the composition -----------------------------

# Row lengths that do and do not tile the CPU kernels' 64-element blocks, and longer ones.
PROPERTY_INNERS = [1, 2, 3, 4, 5, 7, 8, 16, 33, 64, 65, 100]
PROPERTY_PARAMS = {"l1": None, "smooth_l1": [0.0, 1 / 9, 0.5, 1.0, 2.0], "huber": [0.3, 1.0, 1.5],
                   "quantile": [0.1, 0.5, 0.9]}
# name -> (l1ext function, parameter name): the elementwise losses above and the quantile loss
PROPERTY_LOSSES = {name: (fn, pname) for name, (fn, _, pname) in ELEMENTWISE.items()}
PROPERTY_LOSSES["quantile"] = (LF.quantile_loss, "tau")


def _formula(loss, p, t, prm):
    """The elementwise loss in the dtype of its operands (float64 here), with l1ext's (and
    torch's) subgradient choices: 0 at a zero residual, the linear branch at |d| == beta/delta."""
    d = p - t
    a = d.abs()
    if loss == "l1":
        return a
    if loss == "smooth_l1":
        safe = torch.where(prm == 0, torch.ones_like(prm), prm)
        return torch.where(prm == 0, a, torch.where(a < prm, 0.5 * d * d / safe, a - 0.5 * prm))
    if loss == "huber":
        return torch.where(a < prm, 0.5 * d * d, prm * (a - 0.5 * prm))
    return torch.where(d == 0, d * 0, torch.where(d < 0, -prm * d, (1 - prm) * d))


@st.composite
def weighted_case(draw, loss):
    # rows: mostly one or two leading dimensions, at times none (a 1-d input is one row)
    lead = draw(st.lists(st.sampled_from([1, 2, 3, 5, 64, 300, 2100]),
                         min_size=0 if draw(st.integers(0, 5)) == 0 else 1, max_size=2))
    inner = draw(st.sampled_from(PROPERTY_INNERS))
    while lead and inner * math.prod(lead) > 40_000:
        lead = lead[:-1]
    if lead and draw(st.integers(0, 15)) == 0:
        lead[0] = 0  # no boxes
    shape = tuple(lead) + (inner,)
    n = math.prod(shape)
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]
                                 + ([torch.float16] if n <= 4096 else [])))
    kinds = {"scalar": (), "one": (1,), "row": tuple(lead) + (1,), "col": (inner,),
             "col_keepdims": (1,) * len(lead) + (inner,), "full": shape}
    if lead:
        kinds["row_dropped"] = tuple(lead)
    if len(lead) == 2:
        kinds["broadcast"] = (lead[0], 1, inner)
    weight = draw(st.sampled_from([None] + sorted(kinds)))
    weight_shape = None if weight is None else kinds[weight]
    strided_weight = weight_shape is not None and len(weight_shape) >= 2 and draw(st.booleans())
    param = None
    if loss != "l1":
        param = draw(st.sampled_from(PROPERTY_PARAMS[loss] + ["scalar", "row", "col", "full"]))
        if isinstance(param, str):
            param = {"scalar": (), "row": tuple(lead) + (1,), "col": (inner,), "full": shape}[param]
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    avg = draw(st.sampled_from([None, 37.5, "tensor"])) if reduction != "sum" else None
    loss_weight = draw(st.sampled_from([1.0, 2.5] + ([None] if loss in ("smooth_l1", "quantile") else [])))
    grads = draw(st.sampled_from([(True, False, False), (False, True, False), (True, True, False),
                                  (True, False, True), (False, False, True)]))
    incoming = draw(st.sampled_from([None, 0.75]))
    seed = draw(st.integers(0, 2**31 - 1))
    return (shape, dtype, weight_shape, strided_weight, param, reduction, avg, loss_weight, grads,
            incoming, seed)


def _weighted_operands(loss, case, device):
    shape, dtype, weight_shape, strided_weight, param, reduction, avg, loss_weight, grads, incoming, seed = case
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g).to(dtype)
    t = torch.randn(shape, generator=g).to(dtype)
    t.view(-1)[::7] = p.view(-1)[::7]  # zero residuals
    w = None
    if weight_shape is not None:
        w = torch.rand(weight_shape, generator=g, dtype=torch.float64).to(dtype)
        if strided_weight:
            w = w.transpose(0, -1).contiguous().transpose(0, -1)
    prm = param
    if isinstance(param, tuple):
        low = 0.05 if loss == "quantile" else 0.0
        prm = (torch.rand(param, generator=g, dtype=torch.float64) * 0.9 + low).to(dtype)
        if loss == "smooth_l1" and prm.numel() > 1:
            prm.view(-1)[::5] = 0  # L1 there
        if loss == "huber":
            prm = prm + 0.05
    if avg == "tensor":
        avg = torch.tensor(21.0)
    go = None  # loss.backward(): one
    if reduction == "none":
        go = torch.randn(shape, generator=g).to(dtype) if incoming is not None else torch.ones(shape, dtype=dtype)
    elif incoming is not None:
        go = torch.tensor(incoming, dtype=dtype)
    move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v
    return tuple(move(v) for v in (p, t, w, prm, avg, go))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss", list(PROPERTY_LOSSES))
def test_property_weighted_against_the_formula(loss, device):
    """Random shapes (rows of 1 to 100, up to 40,000 elements, no rows), weights of every
    broadcast (scalar, per row with and without the last dimension, per column, full, by torch's
    rules, strided), parameters as numbers or tensors of every broadcast, reductions, avg_factor
    (number, tensor), loss_weight, gradients of any operands and incoming gradients (one, a number,
    elementwise): l1ext against mmdetection's composition of the float64 formula."""
    @given(weighted_case(loss))
    def check(case):
        shape, dtype, weight_shape, _, param, reduction, avg, loss_weight, grads, _, _ = case
        p, t, w, prm, avg, go = _weighted_operands(loss, case, device)
        leaves = [p.detach().clone().requires_grad_(grads[0]), t.detach().clone().requires_grad_(grads[1]),
                  None if w is None else w.detach().clone().requires_grad_(grads[2])]
        if not any(v is not None and v.requires_grad for v in leaves):
            leaves[0].requires_grad_()
        kw = {"weight": leaves[2], "avg_factor": avg, "loss_weight": loss_weight, "reduction": reduction}
        fn, pname = PROPERTY_LOSSES[loss]
        if pname:
            kw[pname] = prm
        out = fn(leaves[0], leaves[1], **kw)
        # (a float32 tensor avg_factor widens a 16-bit sum / avg_factor, as in the composition)
        widened = reduction == "mean" and isinstance(avg, torch.Tensor)
        assert out.dtype == (torch.promote_types(dtype, avg.dtype) if widened else dtype)
        assert out.shape == (shape if reduction == "none" else ())
        out.backward(go)
        # the oracle: float64 of the same (rounded) operands
        ref_leaves = [v if v is None else v.detach().double().requires_grad_(v.requires_grad) for v in leaves]
        rprm = prm.double() if isinstance(prm, torch.Tensor) else torch.tensor(
            0.0 if prm is None else float(prm), dtype=torch.float64, device=device)
        # no boxes: zero (mmdetection's) where any argument beyond torch's is given (a tensor
        # beta / delta too); torch's own mean is 0 / 0
        beyond_torch = (loss == "quantile" or any(v is not None for v in (w, avg, loss_weight))
                        or (isinstance(prm, torch.Tensor) and prm.dim() > 0))

        def reference(p, t, w, magnitudes=False):
            # a weight per row where l1ext takes one; a tensor avg_factor + eps in its own dtype
            w = _as_broadcast(w, shape)
            elementwise = _formula(loss, p, t, rprm).expand(shape)
            lw = loss_weight
            if magnitudes:
                elementwise, lw = elementwise.abs(), None if lw is None else abs(lw)
            ref = _mmdet_reference(elementwise, w, reduction, avg, lw)
            if beyond_torch and elementwise.numel() == 0 and reduction != "none":
                ref = ref.nan_to_num(0.0)
            return ref

        ref = reference(*ref_leaves)
        ref.backward(None if go is None else go.double())
        tol = TOL[dtype]
        torch.testing.assert_close(out.detach().double(), ref.detach(), equal_nan=True, **tol)
        for mine, theirs in zip(leaves[:2], ref_leaves[:2]):
            if mine.requires_grad:
                torch.testing.assert_close(mine.grad.double(), theirs.grad, **tol)
        if leaves[2] is not None and leaves[2].requires_grad:
            # A broadcast weight's gradient sums elementwise terms, each rounded to the dtype (as
            # in the eager composition), which may cancel: its rounding is bounded by the sum of
            # the terms' magnitudes, the weight gradient of the same sum of |terms|.
            w_abs = ref_leaves[2].detach().clone().requires_grad_()
            reference(ref_leaves[0].detach(), ref_leaves[1].detach(), w_abs, magnitudes=True).backward(
                None if go is None else go.double().abs())
            mine, theirs = leaves[2].grad.double(), ref_leaves[2].grad
            assert mine.shape == theirs.shape
            bound = tol["atol"] + tol["rtol"] * (theirs.abs() + w_abs.grad)
            assert ((mine - theirs).abs() <= bound).all(), ((mine - theirs).abs() - bound).max()

    check()


# ---- torch.func, forward-mode AD, double backward, vmap ----------------------------------------

# name -> (l1ext function, keyword arguments): every loss with a number and a tensor parameter
# (a tensor beta with zeros: L1 there)
FUNC_LOSSES = {
    "l1": (LF.l1_loss, {}),
    "smooth_l1": (LF.smooth_l1_loss, {"beta": 0.5}),
    "smooth_l1_beta_0": (LF.smooth_l1_loss, {"beta": 0.0}),
    "smooth_l1_tensor_beta": (LF.smooth_l1_loss, {"beta": torch.tensor([0.5, 0.0, 1.0, 2.0], dtype=torch.float64)}),
    "huber": (LF.huber_loss, {"delta": 0.7}),
    "huber_tensor_delta": (LF.huber_loss, {"delta": torch.tensor([0.5, 0.1, 1.0, 2.0], dtype=torch.float64)}),
    "quantile": (LF.quantile_loss, {"tau": 0.3}),
    "quantile_tensor_tau": (LF.quantile_loss, {"tau": torch.tensor([0.1, 0.5, 0.7, 0.9], dtype=torch.float64)}),
}
FUNC_WEIGHTS = ["none", "full", "row", "row_dropped", "col"]


def _func_operands(n=6, dtype=torch.float64, special=False):
    p = torch.randn(n, 4, dtype=dtype)
    t = torch.randn(n, 4, dtype=dtype)
    t[0] = p[0]  # zero residuals
    if special:  # |d| at beta / delta, and a NaN residual
        t[1] = p[1] - torch.tensor([0.5, 0.0, 1.0, 2.0], dtype=dtype)
        t[2, 1] = p[2, 1] + 0.7
        t[3, 2] = float("nan")
    return p, t


def _func_avg(avg, reduction):
    """The avg_factor of the torch.func cases: a tensor, a number or none; only with 'mean'."""
    if reduction != "mean":
        return None
    return {"tensor": torch.tensor(3.0, dtype=torch.float64), "number": 3.0, None: None}[avg]


def _func_loss(loss, reduction="mean", avg="tensor", device="cpu"):
    fn, kw = FUNC_LOSSES[loss]
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    avg_factor = _func_avg(avg, reduction)

    def f(p, t, w):
        return fn(p, t, weight=w, avg_factor=avg_factor, loss_weight=1.5, reduction=reduction, **kw)

    return f


def _func_weight(weight_kind, n=6):
    w = _weight(weight_kind, n, "cpu")
    return None if w is None else w.double()


FUNC_CASES_WEIGHTED = {
    "grad": lambda f, p, t, w: torch.func.grad(f, argnums=(0, 1) if w is None else (0, 1, 2))(p, t, w),
    "vjp": lambda f, p, t, w: torch.func.vjp(lambda a: f(a, t, w), p)[1](torch.tensor(0.75, dtype=p.dtype)),
    "jacrev": lambda f, p, t, w: torch.func.jacrev(f)(p, t, w),
    "jacfwd": lambda f, p, t, w: torch.func.jacfwd(f)(p, t, w),
    "jvp": lambda f, p, t, w: torch.func.jvp(lambda a: f(a, t, w), (p,), (torch.ones_like(p),))[1],
    "hessian": lambda f, p, t, w: torch.func.hessian(f)(p, t, w),
    "vmap_grad": lambda f, p, t, w: torch.func.vmap(torch.func.grad(f), in_dims=(0, 0, None))(
        p.expand(3, *p.shape), t.expand(3, *t.shape), w),
}


def _oracle(loss, reduction="mean", avg="tensor"):
    """The same loss as mmdetection's composition of the float64 formula (torch's operators)."""
    _, kw = FUNC_LOSSES[loss]
    name = next(k for k in PROPERTY_LOSSES if loss.startswith(k))
    prm = next(iter(kw.values()), 0.0)
    avg_factor = _func_avg(avg, reduction)

    def f(p, t, w):
        rprm = prm.to(p.dtype) if isinstance(prm, torch.Tensor) else torch.tensor(float(prm), dtype=p.dtype)
        w = _as_broadcast(w, p.shape)
        return _mmdet_reference(_formula(name, p, t, rprm), w, reduction, avg_factor, 1.5)

    return f


@pytest.mark.parametrize("weight_kind", FUNC_WEIGHTS)
@pytest.mark.parametrize("case", list(FUNC_CASES_WEIGHTED))
@pytest.mark.parametrize("loss", list(FUNC_LOSSES))
def test_weighted_torch_func(loss, case, weight_kind):
    """torch.func's transforms of the weighted and quantile losses (computed there from torch's
    operators, as the plain losses are) against the same transforms of the formula."""
    p, t = _func_operands()
    w = _func_weight(weight_kind)
    a = FUNC_CASES_WEIGHTED[case](_func_loss(loss), p, t, w)
    b = FUNC_CASES_WEIGHTED[case](_oracle(loss), p, t, w)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert_close(x, y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("loss", list(FUNC_LOSSES))
def test_weighted_gradients_of_transforms_and_of_backward_agree(loss, reduction, device):
    """At zero residuals, at |d| == beta / delta and at a NaN residual, torch.func.grad (torch's
    operators) gives the subgradients the kernels' backward gives (which are torch's own), and
    forward-mode AD the matching tangents."""
    for weight_kind in FUNC_WEIGHTS:
        p, t = (v.to(device) for v in _func_operands(special=True))
        w = _func_weight(weight_kind)
        w = None if w is None else w.to(device)
        f = _func_loss(loss, reduction, avg="number", device=device)
        reduce = (lambda v: v.sum()) if reduction == "none" else (lambda v: v)
        by_func = torch.func.grad(lambda a: reduce(f(a, t, w)))(p)
        leaf = p.clone().requires_grad_()
        reduce(f(leaf, t, w)).backward()
        assert_close(by_func, leaf.grad)
        with fwAD.dual_level():
            tangent = torch.randn_like(p)
            out = fwAD.unpack_dual(f(fwAD.make_dual(p, tangent), t, w)).tangent
        leaf = p.clone().requires_grad_()
        expected = torch.autograd.grad(f(leaf, t, w), leaf, torch.ones((), device=device) if reduction != "none"
                                       else torch.ones(p.shape, dtype=p.dtype, device=device))[0]
        expected = (expected * tangent).sum() if reduction != "none" else expected * tangent
        assert_close(out, expected.to(out.dtype))


@pytest.mark.parametrize("weight_kind", FUNC_WEIGHTS)
@pytest.mark.parametrize("loss", list(FUNC_LOSSES))
def test_weighted_double_backward(loss, weight_kind):
    """create_graph: the gradients are differentiable (in the input, the target, the weight and
    the incoming gradient), as those of the eager composition are."""
    p, t = _func_operands()
    t[0] += 0.37  # no zero residuals: finite differences across a kink are no derivative
    w = _func_weight(weight_kind)
    f = _func_loss(loss)
    inputs = [p.requires_grad_(), t.requires_grad_()] + ([] if w is None else [w.requires_grad_()])
    assert torch.autograd.gradgradcheck(lambda *a: f(*a, *([None] * (3 - len(a)))), inputs)
    g_ours = torch.autograd.grad(f(p, t, w), inputs, create_graph=True)
    g_ref = torch.autograd.grad(_oracle(loss)(p, t, w), inputs, create_graph=True)
    for a, b in zip(g_ours, g_ref):
        assert_close(a, b)
        assert a.requires_grad == b.requires_grad  # (the quantile loss unweighted is linear)
    if any(g.requires_grad for g in g_ref):
        h_ours = torch.autograd.grad(sum((g * g).sum() for g in g_ours if g.requires_grad), inputs,
                                     allow_unused=True, materialize_grads=True)
        h_ref = torch.autograd.grad(sum((g * g).sum() for g in g_ref if g.requires_grad), inputs,
                                    allow_unused=True, materialize_grads=True)
        for a, b in zip(h_ours, h_ref):
            assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("avg", [None, "number", "tensor", "batched"])
@pytest.mark.parametrize("weight", ["none", "full", "row", "row_dropped", "col", "one",
                                    "batched_full", "batched_row_dropped", "batched_one"])
@pytest.mark.parametrize("loss", ["l1", "smooth_l1_tensor_beta", "huber", "quantile_tensor_tau"])
def test_weighted_vmap_batching_rule(loss, weight, avg, dtype, device):
    """vmap of a weighted loss: one batched call (no per-sample fallback loop, which warns), the
    results of a loop over the samples, for weights and avg_factors batched or shared (a shared
    host avg_factor for a loss on a GPU is read on the host, as without vmap)."""
    import warnings

    batch, n = 3, 5
    fn, kw = FUNC_LOSSES[loss]
    kw = {k: v.to(device, dtype) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    p, t = torch.randn(batch, n, 4).to(device, dtype), torch.randn(batch, n, 4).to(device, dtype)
    w_shape = {"none": None, "full": (n, 4), "row": (n, 1), "row_dropped": (n,), "col": (4,), "one": (1,),
               "batched_full": (batch, n, 4), "batched_row_dropped": (batch, n), "batched_one": (batch,)}[weight]
    w = None if w_shape is None else torch.rand(w_shape).to(device, dtype)
    w_dim = 0 if weight.startswith("batched") else None
    avg_factor = {None: None, "number": 4.0, "tensor": torch.tensor(4.0),
                  "batched": torch.rand(batch, dtype=torch.float64, device=device) * 5 + 1}[avg]
    a_dim = 0 if avg == "batched" else None
    for reduction in ["none", "mean", "sum"]:
        if avg is not None and reduction != "mean":
            continue

        def f(p, t, w, a):
            return fn(p, t, weight=w, avg_factor=a, loss_weight=1.5, reduction=reduction, **kw)

        in_dims = (0, 0, w_dim, a_dim)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            batched = torch.func.vmap(f, in_dims=in_dims)(p, t, w, avg_factor)
        looped = torch.stack([f(p[b], t[b], w if w_dim is None else w[b],
                                avg_factor if a_dim is None else avg_factor[b]) for b in range(batch)])
        # (a float64 avg_factor widens the result of a narrower input, computed in the input's dtype)
        assert_close(batched, looped, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n", [37, 0])
@pytest.mark.parametrize("loss", list(ELEMENTWISE) + ["quantile"])
def test_weighted_under_autocast(loss, n, dtype, device):
    """torch.autocast: float32, as the eager composition is (torch's losses are on autocast's
    float32 list and the weight is promoted to their result); empty inputs too. Gradients in the
    operands' dtypes."""
    p0, t = torch.randn(n, 4, device=device).to(dtype), torch.randn(n, 4, device=device).to(dtype)
    w = torch.rand(n, 1, device=device).to(dtype)
    results = []
    for mine in (True, False):
        p = p0.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            if loss == "quantile":
                out = (LF.quantile_loss(p, t, 0.3, weight=w, avg_factor=5.0) if mine else
                       (_formula("quantile", p.float(), t.float(), torch.tensor(0.3, device=device)) * w)
                       .sum() / (5.0 + EPS))
            else:
                ours, elementwise, pname = ELEMENTWISE[loss]
                if loss == "l1":  # torch's loss, not the formula (p - t).abs()
                    elementwise = lambda p, t, _: TF.l1_loss(p, t, reduction="none")
                kw = {pname: 0.3} if pname else {}
                out = (ours(p, t, weight=w, avg_factor=5.0, **kw) if mine else
                       (elementwise(p, t, 0.3) * w).sum() / (5.0 + EPS))
        out.backward()
        results.append((out.detach(), p.grad))
    (a, ga), (b, gb) = results
    assert a.dtype == b.dtype == torch.float32
    assert_close(a, b)
    assert ga.dtype == gb.dtype == dtype
    assert_close(ga, gb)
