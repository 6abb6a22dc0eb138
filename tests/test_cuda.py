"""The GPU path: run when a CUDA device is present and l1ext was built with CUDA, skipped
otherwise. (The parity suite also runs on CUDA through conftest.DEVICES.)"""
import gc

import pytest
import torch
import torch.nn.functional as TF

import l1ext.functional as LF

from conftest import LOSS_IDS, LOSSES, REDUCTIONS, assert_close

HAS_CUDA_KERNELS = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "l1ext::l1_loss", "CUDA")
pytestmark = pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="needs a GPU and l1ext built with CUDA")


def _pair(n, dtype=torch.float32, device="cuda", offset=0):
    x = torch.randn(n + offset, device=device, dtype=torch.float32).to(dtype)[offset:]
    y = torch.randn(n + offset, device=device, dtype=torch.float32).to(dtype)[offset:]
    return x, y


def _differentiable(t):
    # A copy of t's storage as a leaf, and a view of it with t's shape, strides and storage offset:
    # the loss sees t's (mis)alignment, which a clone (a fresh, 16-byte aligned allocation) loses.
    t = t.detach()
    n = t.untyped_storage().nbytes() // t.element_size()
    leaf = t.new_empty(0).set_(t.untyped_storage(), 0, (n,), (1,)).clone().requires_grad_()
    return leaf, leaf.as_strided(t.shape, t.stride(), t.storage_offset())


def _scalar(value, dtype, device="cuda"):
    # A one-element grad_output of `value` rounded to dtype (65536 is inf in float16; torch.full
    # refuses to overflow).
    return torch.tensor(value, dtype=torch.float64).to(device=device, dtype=dtype)


@pytest.fixture
def gc_held():
    # The garbage collector collects once, then is held off for the test: a cycle of tensors
    # collected inside a measuring window (a create_graph gradient and its leaf, left by an
    # earlier test) would read as negative memory. Once per test, not per window: a collection
    # in a worker that has run a thousand tests takes tens of milliseconds.
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _allocated_by(fn):
    # fn()'s result and the CUDA memory it left allocated (callers hold the collector: gc_held).
    assert not gc.isenabled(), "measure memory under the gc_held fixture"
    before = torch.cuda.memory_allocated()
    result = fn()
    return result, torch.cuda.memory_allocated() - before


def _fwd_bwd(fn, x, y, reduction="mean", **kw):
    (x_leaf, xv), (y_leaf, yv) = _differentiable(x), _differentiable(y)
    out = fn(xv, yv, reduction=reduction, **kw)
    go = torch.ones_like(out)
    if out.dim() == 1 and x.storage_offset():
        # grad_output at x's offset too, so that 'none' backwards read it through the same
        # misaligned vector paths
        go = torch.ones(x.storage_offset() + out.numel(), dtype=out.dtype, device=out.device)
        go = go[x.storage_offset():]
    out.backward(go)
    grads = [leaf.grad.as_strided(t.shape, t.stride(), t.storage_offset())
             for leaf, t in ((x_leaf, x), (y_leaf, y))]
    return (out.detach(), *grads)


# Sizes around the single-block limit, pack boundaries and several blocks.
SIZES = [0, 1, 3, 7, 8, 9, 4096, 32768, 32769, 100_003, 1 << 21]


@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_cuda_matches_torch(loss, reduction, dtype, n, offset):
    # offset shifts the storage so 16-byte vector paths meet misaligned pointers.
    _, ours, theirs, _ = loss
    x, y = _pair(n, dtype, offset=offset)
    a = _fwd_bwd(ours, x, y, reduction)
    b = _fwd_bwd(theirs, x, y, reduction)
    for p, q in zip(a, b):
        assert_close(p, q)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_cuda_matches_cpu(loss):
    _, ours, _, _ = loss
    x, y = _pair(300_001)
    for reduction in REDUCTIONS:
        a = _fwd_bwd(ours, x, y, reduction)
        b = _fwd_bwd(ours, x.cpu(), y.cpu(), reduction)
        for p, q in zip(a, b):
            torch.testing.assert_close(p.cpu(), q)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_no_host_sync(loss):
    _, ours, _, _ = loss
    x, y = _pair(1 << 20)
    x.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reduction in REDUCTIONS:
            out = ours(x, y, reduction=reduction)
            out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_deterministic_bits(loss):
    _, ours, _, _ = loss
    x, y = _pair(3_000_017)
    ref = _fwd_bwd(ours, x, y)
    for _ in range(100):
        out = _fwd_bwd(ours, x, y)
        for p, q in zip(out, ref):
            assert torch.equal(p, q)


def test_side_stream():
    x, y = _pair(1 << 20)
    ref = _fwd_bwd(LF.smooth_l1_loss, x, y)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = _fwd_bwd(LF.smooth_l1_loss, x, y)
    torch.cuda.current_stream().wait_stream(s)
    for p, q in zip(out, ref):
        assert torch.equal(p, q)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    x, y = _pair(100_000, device="cuda:1")
    for _, ours, theirs, _ in LOSSES:
        a, b = _fwd_bwd(ours, x, y), _fwd_bwd(theirs, x, y)
        for p, q in zip(a, b):
            assert p.device == torch.device("cuda:1")
            assert_close(p, q)


def test_device_guard_from_other_current_device():
    # Tensors on the current device work whatever the current device index was set to.
    x, y = _pair(10_000)
    with torch.cuda.device(x.device):
        out = LF.l1_loss(x, y)
    assert out.device == x.device


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_cuda_graph_capture_and_replay(loss):
    _, ours, theirs, _ = loss
    x = torch.randn(1 << 20, device="cuda", requires_grad=True)
    y = torch.randn(1 << 20, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up on a side stream, as CUDA graphs require
            x.grad = None
            ours(x, y).backward()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(g):
        out = ours(x, y)
        out.backward()
    for _ in range(3):
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
            y.copy_(torch.randn_like(y))
        g.replay()
        torch.cuda.synchronize()
        ref = _fwd_bwd(theirs, x.detach(), y)
        torch.testing.assert_close(out.detach(), ref[0])
        torch.testing.assert_close(x.grad, ref[1])


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_channels_last_and_broadcast_on_cuda(loss):
    _, ours, theirs, _ = loss
    x = torch.randn(4, 6, 5, 3, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randn(4, 6, 5, 3, device="cuda").contiguous(memory_format=torch.channels_last)
    for reduction in REDUCTIONS:
        for p, q in zip(_fwd_bwd(ours, x, y, reduction), _fwd_bwd(theirs, x, y, reduction)):
            assert_close(p, q)
    xb, yb = torch.randn(64, 4, device="cuda"), torch.randn(64, 1, device="cuda")
    with pytest.warns(UserWarning):
        a = _fwd_bwd(ours, xb, yb)
    with pytest.warns(UserWarning):
        b = _fwd_bwd(theirs, xb, yb)
    for p, q in zip(a, b):
        assert_close(p, q)


def _kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_broadcast_and_sliced_operands_are_read_where_they_lie_on_cuda(loss, reduction):
    """A broadcast row or column target, an expanded input and sliced operands (several blocks)
    are read where they lie: a fwd+bwd launches no copy kernel, and gives the bits of the same
    values in contiguous operands (the loss, its sum, both gradients; an incoming gradient of
    2.5, and for 'none' the gradient of loss.sum())."""
    _, ours, _, _ = loss
    big = torch.randn(600, 261, device="cuda")
    row, col = big[:1, :130], big[:, :1]
    cases = [(big[:, 1:131], row.expand(600, 130)), (big[:, 1:131], col.expand(600, 130)),
             (row.expand(600, 130), big[:, 1:131]), (big[:, :260:2], big[:, 1:261:2])]
    for xv, yv in cases:
        def step(xv, yv):
            x, y = xv.detach().requires_grad_(), yv.detach().requires_grad_()
            out = ours(x, y, reduction=reduction)
            (out.sum() if reduction == "none" else out * 2.5).backward()
            return out.detach(), x.grad, y.grad

        got, want = step(xv, yv), step(xv.contiguous(), yv.contiguous())
        for a, b in zip(got, want):
            assert torch.equal(a, b), (xv.stride(), yv.stride())
        names = _kernel_names(lambda: step(xv, yv))
        assert not [n for n in names if "copy" in n.lower()], names
@pytest.mark.slow
def test_more_than_2_31_elements():
    n = (1 << 31) + 4099
    free, _ = torch.cuda.mem_get_info()
    if free < n * 2 * 6:  # x, y, grads and torch's temporaries in bfloat16
        pytest.skip("not enough GPU memory")
    x = torch.ones(n, device="cuda", dtype=torch.bfloat16)
    y = torch.zeros(n, device="cuda", dtype=torch.bfloat16)
    x[-5:] = 3.0
    x.requires_grad_()
    out = LF.l1_loss(x, y, reduction="sum")
    out.backward()
    assert out.item() == pytest.approx(float(n - 5 + 15), rel=1e-3)
    assert x.grad[-1].item() == 1.0 and x.grad[0].item() == 1.0
    del x, y, out
    x, y = torch.zeros(n, device="cuda", dtype=torch.bfloat16), torch.ones(n, device="cuda", dtype=torch.bfloat16)
    assert LF.huber_loss(x, y, reduction="mean", delta=2.0).item() == pytest.approx(0.5)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_compile_reduce_overhead(loss):
    # torch.compile(mode="reduce-overhead") captures the step in CUDA graphs.
    _, ours, theirs, _ = loss
    model = torch.nn.Linear(16, 4).cuda()

    def step(x, y):
        return ours(model(x), y)

    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):
        x, y = torch.randn(64, 16, device="cuda"), torch.randn(64, 4, device="cuda")
        out = compiled(x, y)
        torch.testing.assert_close(out, theirs(model(x), y))


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("n", [0, 5, 4096, 100_003])
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_forward_with_gradients_on_cuda(reduction, n, offset):
    # The *_forward operators give the gradients for an incoming gradient of one, in the same
    # launch as the loss, with the backward operator's bits.
    ops = torch.ops.l1ext
    x, y = _pair(n, offset=offset)
    one = torch.ones_like(x) if reduction == 0 else torch.ones((), device="cuda")
    for fwd, bwd, param in ((ops.smooth_l1_loss_forward, ops.smooth_l1_loss_backward, 0.5),
                            (ops.huber_loss_forward, ops.huber_loss_backward, 0.7)):
        _, gi, gt = fwd(x, y, reduction, param, [True, True])
        ri, rt = bwd(one, x, y, reduction, param, [True, True])
        assert torch.equal(gi, ri) and torch.equal(gt, rt)
    p, t, w = x.reshape(-1, 1), y.reshape(-1, 1), torch.rand(n, 1, device="cuda")
    avg = None if reduction == 2 else 3.0
    _, gi, gt = ops.weighted_loss_forward(p, t, w, None, None, 1, 0.2, avg, 1.5, reduction, [True, True])
    one = torch.ones_like(p) if reduction == 0 else torch.ones((), device="cuda")
    ri, rt, _ = ops.weighted_loss_backward(one, p, t, w, None, None, 1, 0.2, avg, 1.5, reduction,
                                           [True, True, False])
    assert torch.equal(gi, ri) and torch.equal(gt, rt)


KEPT_LOSSES = {  # name: (operator, backward operator, torch's function, parameter name, value)
    "smooth_l1": ("smooth_l1_loss", "smooth_l1_loss_backward", TF.smooth_l1_loss, "beta", 0.5),
    "huber": ("huber_loss", "huber_loss_backward", TF.huber_loss, "delta", 0.7),
    "smooth_l1_beta0": ("smooth_l1_loss", "smooth_l1_loss_backward", TF.smooth_l1_loss, "beta", 0.0),
}


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [5, 4096, 100_003])
@pytest.mark.parametrize("loss_name", list(KEPT_LOSSES))
def test_kept_gradients_on_cuda(loss_name, n, dtype, offset, gc_held):
    # A reduced Smooth L1 / Huber forward on the GPU writes the gradients for an incoming gradient
    # of one (the memory it keeps says so), and the backward hands them over, or rewrites them on
    # the device where the incoming gradient is not one: the backward operator's bits either way,
    # and torch's values. Scales: one (handed over), powers of two (scaled in place), others
    # (recomputed). The operator is called directly: the functional sends beta == 0 to L1.
    name, bwd_name, theirs, pname, param = KEPT_LOSSES[loss_name]
    op, bwd = getattr(torch.ops.l1ext, name), getattr(torch.ops.l1ext, bwd_name)
    x0, y0 = _pair(n, dtype, offset=offset)
    x0[:3] = y0[:3]  # zero residuals: kept zeros are recomputed, not scaled
    for reduction, red in (("mean", 1), ("sum", 2)):
        for scale in (1.0, 2.0, 0.5, -1.0, 65536.0, 2.0**-140, 2.5, 0.0):
            for target_grad in (True, False):
                (x_leaf, x), (y_leaf, y) = _differentiable(x0), _differentiable(y0)
                if not target_grad:
                    y = y0
                out = None  # the previous graph holds the previous leaves (and their gradients)
                out, kept = _allocated_by(lambda: op(x, y, red, param))
                assert kept >= (1 + target_grad) * n * x0.element_size()
                go = _scalar(scale, dtype)
                out.backward(go)
                ri, rt = bwd(go, x0, y0, red, param, [True, True])
                gx = x_leaf.grad.as_strided(x0.shape, x0.stride(), x0.storage_offset())
                assert torch.equal(gx, ri)
                if target_grad:
                    gy = y_leaf.grad.as_strided(y0.shape, y0.stride(), y0.storage_offset())
                    assert torch.equal(gy, rt)
                xt = x0.detach().clone().requires_grad_()
                theirs(xt, y0, reduction=reduction, **{pname: param}).backward(go)
                assert_close(gx, xt.grad)


@pytest.mark.parametrize("loss_name", list(KEPT_LOSSES))
def test_kept_gradients_retained_graph_and_create_graph_on_cuda(loss_name):
    # The kept gradient serves the first backward only: a second one through a retained graph
    # recomputes, with the same bits, and create_graph (a differentiable gradient) recomputes.
    name, _, _, _, param = KEPT_LOSSES[loss_name]
    op = getattr(torch.ops.l1ext, name)
    x0, y0 = _pair(100_003)
    for red in (1, 2):
        x = x0.clone().requires_grad_()
        out = op(x, y0, red, param)
        first = torch.autograd.grad(out, x, retain_graph=True)[0]
        second = torch.autograd.grad(out, x, torch.full((), 3.0, device="cuda"), retain_graph=True)[0]
        third = torch.autograd.grad(out, x)[0]
        assert torch.equal(first, third)
        assert_close(second, 3 * first)
        x = x0.clone().requires_grad_()
        (g,) = torch.autograd.grad(op(x, y0, red, param), x, create_graph=True)
        assert torch.equal(g, first) and (g.requires_grad or param == 0.0)


INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
          torch.float64: torch.int64}


def _same_bits(a, b):
    # Bitwise equality: the sign of a zero and NaN payloads count (torch.equal does not see them).
    return a.dtype == b.dtype and torch.equal(a.view(INT_OF[a.dtype]), b.view(INT_OF[b.dtype]))


def _kept_l1_case(n, dtype, offset, device="cuda"):
    # A reduced L1 forward on plain tensors keeps the gradients for an incoming gradient of one
    # (on a GPU the memory it keeps says so: the int8-sign design keeps n bytes; test_fast_paths
    # runs this on the CPU and checks the operators called instead), and the backward hands them
    # over or rewrites them from their own signs: the bits of the backward operator from the int8
    # sign (zeros' signs included), and torch's values, for every incoming gradient, with the
    # input's gradient, the target's, both, or only the target's asked of a loss that has both.
    ops = torch.ops.l1ext
    x0, y0 = _pair(n, dtype, device=device, offset=offset)
    x0[:3] = y0[:3]  # zero residuals: a zero sign
    scales = (1.0, 2.0, 0.5, -1.0, 65536.0, 2.0**-140, 2.5, 0.0, -0.0, float("inf"), float("nan"))
    for reduction, red in (("mean", 1), ("sum", 2)):
        sign = ops.l1_loss_forward(x0, y0, red)[1]
        for scale in scales:
            go = _scalar(scale, dtype, device)
            ri, rt = ops.l1_loss_backward(go, sign, red, dtype, [True, True])
            xt, yt = x0.detach().clone().requires_grad_(), y0.detach().clone().requires_grad_()
            TF.l1_loss(xt, yt, reduction=reduction).backward(go)
            for needs, asked in (("x", "x"), ("y", "y"), ("xy", "xy"), ("xy", "y")):
                (x_leaf, x), (y_leaf, y) = _differentiable(x0), _differentiable(y0)
                x, y = (x if "x" in needs else x0), (y if "y" in needs else y0)
                out = None  # the previous graph holds the previous leaves
                out, kept = _allocated_by(lambda: ops.l1_loss(x, y, red))
                if device == "cuda" and n >= 4096:
                    assert kept >= len(needs) * n * x0.element_size()
                leaves = [leaf for leaf, name in ((x_leaf, "x"), (y_leaf, "y")) if name in asked]
                grads = torch.autograd.grad(out, leaves, go)
                for name, g in zip(asked, grads):
                    like = x0 if name == "x" else y0
                    g = g.as_strided(like.shape, like.stride(), like.storage_offset())
                    assert _same_bits(g, ri if name == "x" else rt)
                    assert_close(g, xt.grad if name == "x" else yt.grad)


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [5, 4096, 100_003])
def test_kept_l1_gradients_on_cuda(n, dtype, offset, gc_held):
    _kept_l1_case(n, dtype, offset)


def _kept_l1_retained_and_create_graph(dtype=torch.float32, device="cuda"):
    # A backward that may run again (retain_graph) leaves the kept gradients as they are and hands
    # over new tensors: changing what it returned changes nothing later. create_graph gives
    # torch's gradient of the gradient with respect to grad_output.
    ops = torch.ops.l1ext
    x0, y0 = _pair(100_003, dtype, device=device)
    x0[:3] = y0[:3]
    for reduction, red in (("mean", 1), ("sum", 2)):
        x = x0.clone().requires_grad_()
        out = ops.l1_loss(x, y0, red)
        first = torch.autograd.grad(out, x, retain_graph=True)[0]
        reference = first.clone()
        first.mul_(7)  # the caller's tensor, not the node's
        three = torch.full((), 3.0, device=device, dtype=dtype)
        second = torch.autograd.grad(out, x, three, retain_graph=True)[0]
        out.backward(retain_graph=True)
        out.backward(retain_graph=True)
        assert torch.equal(x.grad, 2 * reference)
        last = torch.autograd.grad(out, x)[0]  # the graph is freed after this one
        assert _same_bits(last, reference)
        sign = ops.l1_loss_forward(x0, y0, red)[1]
        assert _same_bits(second, ops.l1_loss_backward(three, sign, red, x0.dtype, [True, False])[0])
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            torch.autograd.grad(out, x)
        # create_graph: the gradient is differentiable in grad_output, as torch's
        grads = []
        for fn in (TF.l1_loss, LF.l1_loss):
            xc = x0.clone().requires_grad_()
            go = torch.full((), 2.0, device=device, dtype=dtype, requires_grad=True)
            (g,) = torch.autograd.grad(fn(xc, y0, reduction=reduction), xc, go, create_graph=True)
            (g * (torch.arange(g.numel(), device=device) % 7).to(dtype)).sum().backward()
            grads.append((g.detach(), go.grad))
        assert_close(grads[1][0], grads[0][0])
        assert_close(grads[1][1], grads[0][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_kept_l1_gradients_retained_graph_and_create_graph_on_cuda(dtype):
    _kept_l1_retained_and_create_graph(dtype)


def test_l1_float16_signs_lost_to_rounding_on_cuda(gc_held):
    # 1 / n rounded to float, then to float16, is zero from n = 2^25 - 1 on: a kept 'mean'
    # gradient would carry no signs, so the forward keeps the int8 sign there (n bytes, not 2n),
    # with torch's values either side.
    for n, keeps_gradient in ((2**25 - 2, True), (2**25 - 1, False)):
        x0, y0 = _pair(n, torch.float16)
        x = x0.clone().requires_grad_()
        out, kept = _allocated_by(lambda: LF.l1_loss(x, y0))
        assert (kept >= 2 * n) == keeps_gradient
        go = torch.full((), 1024.0, device="cuda", dtype=torch.float16)  # finite in float16
        out.backward(go)
        sign = torch.ops.l1ext.l1_loss_forward(x0, y0, 1)[1]
        ri = torch.ops.l1ext.l1_loss_backward(go, sign, 1, torch.float16, [True, False])[0]
        assert _same_bits(x.grad, ri)
        xt = x0.clone().requires_grad_()
        TF.l1_loss(xt, y0).backward(go)
        assert_close(x.grad, xt.grad)
        del x, xt, out


@pytest.mark.parametrize("avg", ["number", "cuda", "cpu"])
@pytest.mark.parametrize("n", [3, 1000, 40_000])
def test_kept_weighted_gradients_on_cuda(n, avg, gc_held):
    # The weighted forward (a weight that needs no gradient) also writes the input and target
    # gradients on the GPU; the backward hands them over, scales them (powers of two) or rewrites
    # them on the device: the backward operator's bits, and the composition's values.
    ops = torch.ops.l1ext
    p0, t0 = torch.randn(n, 4, device="cuda"), torch.randn(n, 4, device="cuda")
    w = torch.rand(n, 1, device="cuda")
    avg_factor = {"number": 7.0, "cuda": torch.tensor(7.0, device="cuda"), "cpu": torch.tensor(7.0)}[avg]
    avg_tensor = avg_factor if isinstance(avg_factor, torch.Tensor) else None
    avg_value = None if avg_tensor is not None else avg_factor
    p0[:2] = t0[:2]  # zero residuals: kept zeros are recomputed, not scaled
    for scale in (1.0, 2.0, 0.25, 65536.0, 2.5, 0.0):
        p, t = p0.clone().requires_grad_(), t0.clone().requires_grad_()
        out = None  # the previous graph holds the previous p, t and their gradients
        out, kept = _allocated_by(lambda: LF.smooth_l1_loss(p, t, beta=0.2, weight=w,
                                                            avg_factor=avg_factor, loss_weight=1.5))
        assert kept >= 2 * p0.numel() * 4  # the kept gradients
        go = _scalar(scale, torch.float32)
        out.backward(go)
        ri, rt, _ = ops.weighted_loss_backward(go, p0, t0, w, None, avg_tensor, 1, 0.2, avg_value,
                                               1.5, 1, [True, True, False])
        assert torch.equal(p.grad, ri) and torch.equal(t.grad, rt)
        pc, tc = p0.clone().requires_grad_(), t0.clone().requires_grad_()
        eps = torch.finfo(torch.float32).eps
        ref = 1.5 * (TF.smooth_l1_loss(pc, tc, beta=0.2, reduction="none") * w).sum() / (7.0 + eps)
        ref.backward(go)
        assert_close(out, ref)
        assert_close(p.grad, pc.grad)
        assert_close(t.grad, tc.grad)


def _autograd_behaviour(loss, device):
    # The hand-built autograd nodes on a device: a backward after an in-place change of a saved
    # operand raises where torch's does, and compiled autograd gives torch's gradients.
    from torch._dynamo import compiled_autograd

    _, ours, theirs, param = loss
    kw = {param: 0.5} if param else {}
    outcomes = []
    for fn in (theirs, ours):
        leaf = torch.randn(64, device=device, requires_grad=True)
        x, y = leaf * 1, torch.randn(64, device=device)
        out = fn(x, y, **kw)
        y.add_(1)
        try:
            out.backward()
            outcomes.append("ok")
        except RuntimeError as e:
            outcomes.append("modified by an inplace operation" in str(e))
    assert outcomes[1] == outcomes[0]

    x = torch.randn(8, 4, device=device, requires_grad=True)
    y = torch.randn(8, 4, device=device)
    grads = []
    for fn in (theirs, ours):
        x.grad = None
        out = fn(x, y, reduction="sum", **kw) * 3
        with compiled_autograd._enable(torch.compile(backend="eager")):
            out.backward()
        grads.append(x.grad)
    assert_close(grads[1], grads[0])


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_autograd_behaviour_on_cuda(loss):
    torch._dynamo.reset()
    _autograd_behaviour(loss, "cuda")


_INVALID_DEVICE_PARAM = """
import torch, l1ext
x, y = torch.randn(64, 3, device="cuda"), torch.randn(64, 3, device="cuda")
param = torch.tensor([0.1, {bad}, 0.9], device="cuda", dtype=torch.{dtype})
try:
    # served in C++ (the kernel checks the values), or, for a float64 parameter of a float32
    # loss, by an asynchronous assertion of the operator's glue
    loss = l1ext.functional.{loss}(x, y, **{{"{name}": param}})
    torch.cuda.synchronize()  # (the assertion may show here, or at the launch's own check)
except RuntimeError as e:
    print("refused:", e)
else:
    print("computed:", loss.item())
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss, name, bad, message", [
    ("quantile_loss", "tau", "1.0", "every tau must be in (0, 1)"),
    ("quantile_loss", "tau", "float('nan')", "every tau must be in (0, 1)"),
    ("smooth_l1_loss", "beta", "-0.5", "does not support negative values for beta"),
    ("huber_loss", "delta", "0.0", "does not support non-positive values for delta"),
], ids=["tau_1", "tau_nan", "beta", "delta"])
def test_invalid_device_parameter_is_a_device_side_assertion(loss, name, bad, message, dtype):
    # A device beta, delta or tau is checked on the device (no host synchronisation): an invalid
    # value stops the call with a device-side assertion, as torch._assert_async does, which leaves
    # the process's CUDA context unusable: hence a process of its own.
    import subprocess
    import sys

    script = _INVALID_DEVICE_PARAM.format(bad=bad, dtype=dtype, loss=loss, name=name)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "refused:" in proc.stdout, (proc.stdout, proc.stderr)
    if dtype == "float32":  # (the kernel's own assertion prints its message)
        assert message in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)
