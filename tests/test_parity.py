"""Values and gradients of l1ext against torch's built-ins over dtypes, shapes, strides,
reductions, parameters and special values."""
import warnings

import pytest
import torch
import torch.nn.functional as TF

import l1ext.functional as LF
from conftest import DEVICES, FLOAT_DTYPES, LOSS_IDS, LOSSES, REDUCTIONS, assert_close, run_both


def _randn(shape, dtype, device):
    return torch.randn(shape, dtype=torch.float64, device=device).to(dtype)


def _grad_output(loss_shape, reduction, dtype, device):
    if reduction == "none":
        return _randn(loss_shape, dtype, device)
    return torch.tensor(2.5, dtype=dtype, device=device)


def _check(ours, theirs, x, y, reduction, grads=(True, True), **kw):
    expected = theirs(x, y, reduction=reduction, **kw)
    go = _grad_output(expected.shape, reduction, expected.dtype, x.device)
    a, b, ga, gb = run_both(ours, theirs, x, y, *grads, grad_output=go, reduction=reduction, **kw)
    assert_close(a, b)
    for g_ours, g_torch in zip(ga, gb):
        if g_torch is None:
            assert g_ours is None
        else:
            assert_close(g_ours, g_torch)
    return a, b


SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (1000,), (70001,), (2, 3, 5, 7)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_shapes_dtypes(loss, reduction, dtype, shape, device):
    _, ours, theirs, param = loss
    x, y = _randn(shape, dtype, device), _randn(shape, dtype, device)
    kw = {param: 0.7} if param else {}
    _check(ours, theirs, x, y, reduction, **kw)


@pytest.mark.parametrize("grads", [(True, False), (False, True), (True, True)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_requires_grad_either_side(loss, reduction, grads):
    _, ours, theirs, _ = loss
    x, y = torch.randn(5, 6), torch.randn(5, 6)
    _check(ours, theirs, x, y, reduction, grads=grads)


def _layouts(device):
    """(name, input, target) pairs of the same logical size and various memory layouts."""
    base = torch.randn(4, 6, 5, 3, device=device)
    other = torch.randn(4, 6, 5, 3, device=device)
    cl = base.contiguous(memory_format=torch.channels_last)
    cl_other = other.contiguous(memory_format=torch.channels_last)
    big = torch.randn(9, 13, device=device)
    return [
        ("transposed", base.transpose(1, 3), other.transpose(1, 3)),
        ("transposed_input_only", base.transpose(1, 3), other.transpose(1, 3).contiguous()),
        ("channels_last", cl, cl_other),
        ("channels_last_input_only", cl, other),
        ("sliced_step", big[::2, 1::3], torch.randn(5, 4, device=device)),
        ("misaligned_offset", big.flatten()[1:], torch.randn(119, device=device)[3:]),
        ("expanded_input", torch.randn(1, 5, device=device).expand(7, 5), torch.randn(7, 5, device=device)),
        ("expanded_both", torch.randn(7, 1, device=device).expand(7, 5), torch.randn(1, 5, device=device).expand(7, 5)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(8))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_strides(loss, reduction, case, device):
    _, ours, theirs, _ = loss
    name, x, y = _layouts(device)[case]
    a, b = _check(ours, theirs, x, y, reduction)
    if reduction == "none" and name in ("channels_last", "transposed"):
        # Dense operands of one layout give an output of that layout, as torch's.
        assert a.stride() == b.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_layouts_give_the_contiguous_bits(dtype, device):
    """Every layout gives the bits of the same values in contiguous operands, for each loss and
    reduction, L1's saved sign and the backwards too: operands read where they lie (a broadcast
    row or column, slices, an expanded input; the CPU's strided 'none' forward and backwards) or
    copied into the input's layout (transposed, channels-last), and a 'none' loss in torch's
    layout."""
    ops = torch.ops.l1ext
    big = torch.randn(40, 70, dtype=torch.float64, device=device).to(dtype)
    row = torch.randn(1, 70, dtype=torch.float64, device=device).to(dtype)
    col = torch.randn(40, 1, dtype=torch.float64, device=device).to(dtype)
    cases = [(big[:, ::2], big[:, 1::2]), (big, row.expand(40, 70)), (big, col.expand(40, 70)),
             (row.expand(40, 70), big), (big.t(), big.t().contiguous() + 1), (big.t().contiguous() + 1, big.t()),
             (big[::4].t(), big[1::4].t())]
    for reduction in (0, 1, 2):
        calls = [lambda a, b: ops.l1_loss(a, b, reduction), lambda a, b: ops.smooth_l1_loss(a, b, reduction, 0.3),
                 lambda a, b: ops.smooth_l1_loss(a, b, reduction, 0.5), lambda a, b: ops.huber_loss(a, b, reduction, 0.7),
                 lambda a, b: ops.l1_loss_forward(a, b, reduction)[1],
                 lambda a, b: torch.cat(ops.smooth_l1_loss_backward(go(a), a, b, reduction, 0.3, [True, True])),
                 lambda a, b: torch.cat(ops.huber_loss_backward(go(a), a, b, reduction, 0.7, [True, True]))]
        # the incoming gradient: per element in another layout ('none'), else one number
        go = ((lambda a: (a.t().contiguous().t() * 0.5 + 0.25)) if reduction == 0
              else (lambda a: torch.tensor(0.7, dtype=dtype, device=device)))
        # torch's 'none' loss of each forward above, whose layout a 'none' forward has
        twins = [TF.l1_loss, TF.smooth_l1_loss, TF.smooth_l1_loss, TF.huber_loss, TF.l1_loss]
        for x, y in cases:
            for i, call in enumerate(calls):
                got, want = call(x, y), call(x.contiguous(), y.contiguous())
                assert got.dtype == want.dtype and torch.equal(got.contiguous(), want), (x.stride(), y.stride())
                if reduction == 0 and i < len(twins):
                    assert got.stride() == twins[i](x, y, reduction="none").stride()


def _non_dense_layouts(device):
    """(input, target) pairs whose input is no dense tensor, with each loss's 'none' layout rule
    telling them apart."""
    r = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
    return [
        (r(6, 4)[::2].t(), r(4, 3)),
        (r(2, 3, 1, 1).expand(2, 3, 4, 5), r(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)),
        (r(4, 1).expand(4, 3), r(3, 4).t()),
        (r(1, 70).expand(40, 70), r(70, 40).t()),
        (r(40, 140)[:, ::2], r(40, 70)),
        (r(5, 1, 7)[:, :, ::2], r(5, 1, 4)),
        (r(3, 8, 5).permute(2, 0, 1)[:, :, ::2], r(5, 3, 4)),
        (r(8, 6, 2)[::2, :, :1].transpose(0, 1), r(1, 4, 1).expand(6, 4, 1)),
        (r(9)[::3], r(3)),
        (r(2, 1, 6)[..., 1:], r(2, 1, 1).expand(2, 1, 5)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_none_output_has_torchs_layout(loss, device):
    """A 'none' loss has torch's strides whatever the operands: a dense input's layout (other
    tests), and for an input that is no dense tensor (a slice, a broadcast or expanded view) the
    rule of torch's loss: Huber's empty_like(input), L1's and Smooth L1's TensorIterator order
    over input and target. With and without gradients, L1's sign beside it, and the fake (meta)
    output too; the values are torch's."""
    name, ours, theirs, param = loss
    kws = [{}] + ([{param: 0.0}] if name == "smooth_l1" else [])
    for x, y in _non_dense_layouts(device):
        for kw in kws:
            for grad in (False, True):
                xg = x.detach().requires_grad_(grad)
                a, b = ours(xg, y, reduction="none", **kw), theirs(xg, y, reduction="none", **kw)
                assert a.stride() == b.stride(), (x.shape, x.stride(), y.stride(), kw, grad)
                assert_close(a, b)
            on_meta = [torch.empty_strided(t.shape, t.stride(), device="meta") for t in (x, y)]
            meta = ours(*on_meta, reduction="none", **kw)
            assert meta.stride() == b.stride(), (x.shape, x.stride(), y.stride(), kw, "meta")
        if name == "l1":
            assert torch.ops.l1ext.l1_loss_forward(x, y, 0)[1].stride() == b.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_one_value_grad_output_gives_the_dense_bits(dtype, device):
    """A 'none' backward whose incoming gradient holds one value everywhere (the gradient of
    loss.sum() or loss.mean(): an expanded number) reads that number instead of a copy of it, with
    the bits of the same gradient made dense: every loss, L1 from its sign, contiguous, broadcast
    and transposed operands, an incoming gradient of another dtype. A gradient broadcast along one
    dimension only is per element, and checked the same way."""
    ops = torch.ops.l1ext
    big = torch.randn(40, 70, dtype=torch.float64, device=device).to(dtype)
    other = torch.randn(40, 70, dtype=torch.float64, device=device).to(dtype)
    row = torch.randn(1, 70, dtype=torch.float64, device=device).to(dtype)
    pairs = [(big, other), (big, row.expand(40, 70)), (big.t().contiguous().t(), other)]
    value = torch.tensor(0.3, dtype=torch.float64, device=device)
    column = torch.randn(40, 1, dtype=torch.float64, device=device)
    go_cases = [value.to(dtype).expand(40, 70), value.expand(40, 70), value.to(dtype).view(1, 1).expand(40, 70),
                -value.to(dtype).expand(40, 70), column.to(dtype).expand(40, 70)]
    for x, y in pairs:
        sign = ops.l1_loss_forward(x, y, 0)[1]
        for go in go_cases:
            calls = [lambda g: ops.smooth_l1_loss_backward(g, x, y, 0, 0.3, [True, True]),
                     lambda g: ops.smooth_l1_loss_backward(g, x, y, 0, 1.0, [True, True]),
                     lambda g: ops.huber_loss_backward(g, x, y, 0, 0.7, [True, True]),
                     lambda g: ops.l1_loss_backward(g, sign, 0, dtype, [True, True])]
            for call in calls:
                got, want = call(go), call(go.to(dtype).contiguous())
                for a, b in zip(got, want):
                    assert a.dtype == b.dtype == dtype and torch.equal(a, b), (x.stride(), y.stride(), go.stride())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_broadcast(loss, reduction):
    _, ours, theirs, _ = loss
    x, y = torch.randn(4, 1, 5), torch.randn(3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check(ours, theirs, x, y, reduction)
        _check(ours, theirs, torch.randn(6, 4), torch.tensor(0.25), reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_grad_output_layouts(loss, reduction):
    # 'none' with a non-contiguous or stride-0 incoming gradient (loss.sum().backward()).
    _, ours, theirs, _ = loss
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    if reduction == "none":
        go = torch.randn(8, 6).t()
        a, b, ga, gb = run_both(ours, theirs, x, y, grad_output=go, reduction=reduction)
        assert_close(ga[0], gb[0])
        assert_close(ga[1], gb[1])
    for fn in (ours, theirs):
        xx = x.clone().requires_grad_()
        fn(xx, y, reduction=reduction).sum().backward()
        if fn is ours:
            g_ours = xx.grad
    assert_close(g_ours, xx.grad)


def _special(dtype, param):
    p = param
    x = torch.tensor([0.0, 1.0, -1.0, p, -p, p, 3.0, float("inf"), float("-inf"), float("inf"),
                      float("nan"), 0.0, 1e-30, -5e-39, 65000.0, 2.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 2 * p, float("inf"), 0.0, 0.0, float("inf"),
                      0.0, float("nan"), 0.0, 0.0, -65000.0, 2.0 - 1e-7], dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_special_values(loss, reduction, dtype):
    # Residuals of exactly 0, exactly +-beta/delta, infinities, NaN, subnormals.
    _, ours, theirs, param = loss
    p = 0.5
    x, y = _special(dtype, p)
    kw = {param: p} if param else {}
    _check(ours, theirs, x, y, reduction, **kw)


@pytest.mark.parametrize("value", [0.0, 1e-6, 1e-3, 0.5, 1.0, 3.0, 1e4])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES[1:], ids=LOSS_IDS[1:])
def test_parameters(loss, reduction, value):
    _, ours, theirs, param = loss
    if param == "delta" and value == 0.0:
        pytest.skip("delta must be positive")
    x, y = torch.randn(300, dtype=torch.float64), torch.randn(300, dtype=torch.float64)
    x[:10] = y[:10]  # zero residuals: beta = 0 must give gradient 0 there (exactly L1), not NaN
    _check(ours, theirs, x, y, reduction, **{param: value})


def test_smooth_l1_beta_zero_is_l1():
    import l1ext.functional as LF

    x = torch.tensor([0.0, 1.0, -2.0, 0.0], requires_grad=True)
    y = torch.tensor([0.0, 0.0, 0.0, 1.0])
    LF.smooth_l1_loss(x, y, beta=0.0, reduction="sum").backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, -1.0, -1.0]))


@pytest.mark.parametrize("pair", [(torch.float32, torch.float64), (torch.float16, torch.float32),
                                  (torch.bfloat16, torch.float16), (torch.float64, torch.float32),
                                  (torch.float32, torch.int64), (torch.float32, torch.bool)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_type_promotion(loss, reduction, pair):
    # L1 and Smooth L1 promote as binary ops; Huber answers in the input's dtype.
    _, ours, theirs, _ = loss
    x = torch.randn(10, dtype=torch.float64).to(pair[0])
    y = (torch.randn(10, dtype=torch.float64) * 3).to(pair[1])
    try:
        expected = theirs(x, y, reduction=reduction)
    except RuntimeError as e:
        with pytest.raises(type(e), match=str(e)[:40]):
            ours(x, y, reduction=reduction)
        return
    actual = ours(x, y, reduction=reduction)
    assert actual.dtype == expected.dtype
    assert_close(actual, expected, dtype=pair[0])
    if y.dtype.is_floating_point and not (loss[0] == "huber" and x.dtype != y.dtype):
        # (torch's Huber backward fails on mixed dtypes; l1ext's works, see below.)
        _check(ours, theirs, x, y, reduction, grads=(True, y.dtype.is_floating_point))


@pytest.mark.parametrize("kw", [{}, {"beta": 0.0}, {"beta": 0.5}, {"delta": 0.5}], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bool_operands(reduction, kw):
    # torch computes the L1 loss as |input - target|, which refuses a bool operand on either side
    # (Smooth L1 with beta 0 is that L1 loss); its Smooth L1 and Huber kernels take a bool target,
    # and Smooth L1 a bool input. The same outcomes, plain and in mmdetection's weighted form
    # (the composition F.loss(reduction='none') * weight for the oracle).
    name = "huber_loss" if "delta" in kw else "smooth_l1_loss" if kw else "l1_loss"
    ours, theirs = getattr(LF, name), getattr(TF, name)
    real = torch.randn(6, 4)
    flags = torch.randn(6, 4) > 0
    weight = torch.rand(6, 1)

    def outcome(f):
        try:
            return f()
        except RuntimeError as e:
            return type(e)

    for x, y in ((flags, real), (real, flags)):
        expected = outcome(lambda: theirs(x, y, reduction=reduction, **kw))
        actual = outcome(lambda: ours(x, y, reduction=reduction, **kw))
        if isinstance(expected, type):
            assert isinstance(actual, type) and issubclass(actual, expected), (x.dtype, y.dtype)
        else:
            assert actual.dtype == expected.dtype
            assert_close(actual, expected)
        expected = outcome(lambda: (theirs(x, y, reduction="none", **kw) * weight).sum())
        actual = outcome(lambda: ours(x, y, reduction="sum", weight=weight, loss_weight=1.0, **kw))
        if isinstance(expected, type):
            assert isinstance(actual, type) and issubclass(actual, expected), (x.dtype, y.dtype)
        else:
            assert_close(actual, expected)


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float64, torch.float32)], ids=str)
def test_huber_mixed_dtype_backward(dtypes):
    # torch's Huber backward raises "Found dtype Double but expected Float" on mixed dtypes;
    # l1ext gives the gradient of the loss it returns (computed in the promoted dtype).
    import l1ext.functional as LF

    x = torch.randn(8, dtype=dtypes[0], requires_grad=True)
    y = torch.randn(8, dtype=dtypes[1], requires_grad=True)
    loss = LF.huber_loss(x, y)
    loss.backward()
    assert loss.dtype == dtypes[0]
    d = (x.detach().double() - y.detach().double()).clamp(-1, 1) / 8
    assert x.grad.dtype == dtypes[0] and y.grad.dtype == dtypes[1]
    torch.testing.assert_close(x.grad, d.to(dtypes[0]))
    torch.testing.assert_close(y.grad, -d.to(dtypes[1]))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_complex_l1(reduction, dtype):
    # Real loss, complex gradient (sgn), as torch.
    _, ours, theirs, _ = LOSSES[0]
    x, y = torch.randn(20, dtype=dtype), torch.randn(20, dtype=dtype)
    x[3] = y[3]
    _check(ours, theirs, x, y, reduction)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_integer_l1(reduction, dtype):
    import l1ext.functional as LF

    x = torch.randint(0, 100, (30,), dtype=dtype)
    y = torch.randint(0, 100, (30,), dtype=dtype)
    expected = torch.nn.functional.l1_loss(x, y, reduction=reduction)
    actual = LF.l1_loss(x, y, reduction=reduction)
    assert actual.dtype == expected.dtype and torch.equal(actual, expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", [LOSSES[0], LOSSES[2]], ids=["l1", "huber"])
def test_weight(loss, reduction):
    # torch's weight= semantics: L1 'mean' is sum(w |d|) / sum(w); Huber's is mean(w huber).
    _, ours, theirs, _ = loss
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    w = torch.rand(6, 4)
    for fn in (ours, theirs):
        xx = x.clone().requires_grad_()
        ww = w.clone().requires_grad_()
        out = fn(xx, y, reduction=reduction, weight=ww)
        out.sum().backward()
        if fn is ours:
            res = (out.detach(), xx.grad, ww.grad)
    assert_close(res[0], out.detach())
    assert_close(res[1], xx.grad)
    assert_close(res[2], ww.grad)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_no_grad_and_inference_mode(loss):
    _, ours, theirs, _ = loss
    x, y = torch.randn(100), torch.randn(100)
    with torch.no_grad():
        assert_close(ours(x.requires_grad_(), y), theirs(x, y))
    with torch.inference_mode():
        xi, yi = torch.randn(100), torch.randn(100)
        assert_close(ours(xi, yi, reduction="none"), theirs(xi, yi, reduction="none"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("incoming", ["one", "minus one", "two", "other", "per element"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_zero_gradients_have_torchs_signs(loss, reduction, dtype, incoming, device):
    # At a zero residual the gradients are zeros, and their signs are torch's: its Smooth L1 and
    # Huber differentiate the target by their backward with the operands swapped, grad(target -
    # input), +0 for equal operands (not the input's gradient negated, -0); its L1 negates. Equal
    # operands and +0 against -0 either way, vector-wide and in the scalar tail, for incoming
    # gradients that the kept gradients serve (one), scale in place (powers of two) or not.
    _, ours, theirs, param = loss
    n = 37
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, generator=g).to(dtype)
    y = torch.randn(n, generator=g).to(dtype)
    y[::3] = x[::3]
    x[1::9], y[1::9] = 0.0, -0.0
    x[2::9], y[2::9] = -0.0, 0.0
    x[4::9], y[4::9] = -0.0, -0.0
    x, y = x.to(device), y.to(device)
    kw = {param: 0.7} if param else {}
    shape = (n,) if reduction == "none" else ()
    go = {"one": torch.ones(shape), "minus one": -torch.ones(shape), "two": torch.full(shape, 2.0),
          "other": torch.full(shape, -0.3),
          "per element": torch.randn(shape, generator=g)}[incoming].to(dtype).to(device)
    for wants in [(True, True), (True, False), (False, True)]:
        _, _, got, want = run_both(ours, theirs, x, y, *wants, grad_output=go, reduction=reduction,
                                   **kw)
        for a, b in zip(got, want):
            if b is None:
                assert a is None
                continue
            assert_close(a, b)
            zero = b == 0
            assert zero.sum() >= n // 3 and torch.equal(a[zero], b[zero])
            assert torch.equal(a[zero].signbit(), b[zero].signbit()), (wants, a, b)
