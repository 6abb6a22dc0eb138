"""torch.jit.script of l1ext's modules and functions: torch's own losses script, so l1ext's must
too (swap the import, keep the scripted model). Scripted l1ext code is compared with scripted
torch code (the oracle) and with its own eager self, and must call l1ext's operators."""
import io
import warnings

import pytest
import torch
import torch.nn.functional as TF

import l1ext
import l1ext.functional as LF
from conftest import DEVICES, assert_close

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
              pytest.mark.filterwarnings("ignore:`torch.jit.(save|load)` is deprecated")]

PAIRS = [
    (l1ext.L1Loss, torch.nn.L1Loss, {}),
    (l1ext.SmoothL1Loss, torch.nn.SmoothL1Loss, {"beta": 0.5}),
    (l1ext.HuberLoss, torch.nn.HuberLoss, {"delta": 0.5}),
]
PAIR_IDS = ["l1", "smooth_l1", "huber"]


def _grads(module, x, y, backward=True):
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    y = y.detach().clone().requires_grad_(y.is_floating_point())
    loss = module(x, y)
    if backward and loss.requires_grad:
        loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad, y.grad


def _outcome(module, x, y, backward=True):
    try:
        return _grads(module, x, y, backward)
    except Exception as e:  # torch.jit.Error for errors raised inside the script
        return type(e)


@pytest.mark.parametrize("ours, theirs, kw", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.bfloat16,) * 2,
                                    (torch.float64,) * 2, (torch.float32, torch.float64),
                                    (torch.float16, torch.float32)],
                         ids=lambda d: "-".join(str(t)[6:] for t in d))
@pytest.mark.parametrize("device", DEVICES)
def test_scripted_module_matches_scripted_torch(ours, theirs, kw, reduction, dtypes, device):
    x = torch.randn(6, 5, dtype=torch.float64).to(device, dtypes[0])
    y = torch.randn(6, 5, dtype=torch.float64).to(device, dtypes[1])
    mine = torch.jit.script(ours(reduction=reduction, **kw))
    ref = torch.jit.script(theirs(reduction=reduction, **kw))
    assert "l1ext::" in str(mine.inlined_graph)
    assert_close(mine(x, y), ref(x, y))
    want = _outcome(ref, x, y)
    if isinstance(want, type):  # torch's huber backward fails on mixed dtypes; l1ext's works
        return
    for got, expected in zip(_grads(mine, x, y), want):
        assert_close(got, expected)


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("ours, theirs, kw", PAIRS, ids=PAIR_IDS)
def test_scripted_module_edge_cases_match_torch(ours, theirs, kw):
    # Broadcasting (with torch's warning), empty, non-contiguous, integer and bool operands:
    # the same values, gradients or error type as torch's scripted module.
    cases = [
        (torch.randn(4, 3), torch.randn(3)),
        (torch.randn(0, 3), torch.randn(0, 3)),
        (torch.randn(5, 4).t(), torch.randn(4, 5)),
        (torch.randn(3, 2), torch.randint(0, 3, (3, 2))),
        (torch.randint(0, 3, (3, 2)), torch.randint(0, 3, (3, 2))),
        (torch.randn(3, 2), torch.ones(3, 2, dtype=torch.bool)),
        (torch.ones(3, 2, dtype=torch.bool), torch.randn(3, 2)),
    ]
    for reduction in ("none", "mean", "sum"):
        mine = torch.jit.script(ours(reduction=reduction, **kw))
        ref = torch.jit.script(theirs(reduction=reduction, **kw))
        for x, y in cases:
            with warnings.catch_warnings(record=True) as w_mine:
                warnings.simplefilter("always")
                a = _outcome(mine, x, y, backward=False)
            with warnings.catch_warnings(record=True) as w_ref:
                warnings.simplefilter("always")
                b = _outcome(ref, x, y, backward=False)
            assert [str(w.message) for w in w_mine] == [str(w.message) for w in w_ref]
            if isinstance(b, type):
                assert a is b, (x.dtype, y.dtype, reduction, a, b)
                continue
            assert_close(a[0], b[0], torch.float32)
            b = _outcome(ref, x, y)
            if isinstance(b, type):  # torch's huber backward fails on mixed dtypes; l1ext's works
                continue
            for got, want in zip(_grads(mine, x, y), b):
                if want is None:
                    assert got is None
                else:
                    assert_close(got, want, torch.float32)


@pytest.mark.parametrize("beta", [0, 1, 0.0, 2.0, torch.tensor(0.5)], ids=str)
def test_scripted_smooth_l1_beta_forms(beta):
    # An int beta or a 0-d tensor (torch's eager module takes both; its scripted one takes
    # neither) and beta == 0 (the L1 loss, as torch): the eager torch module's results.
    x, y = torch.randn(7, 3), torch.randn(7, 3)
    mine = torch.jit.script(l1ext.SmoothL1Loss(beta=beta))
    for got, want in zip(_grads(mine, x, y), _grads(torch.nn.SmoothL1Loss(beta=beta), x, y)):
        assert_close(got, want)


def test_scripted_module_saves_and_loads():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    loss = torch.jit.script(l1ext.SmoothL1Loss(beta=0.25, reduction="sum"))
    buf = io.BytesIO()
    torch.jit.save(loss, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x, y = model(torch.randn(3, 4)), torch.randn(3, 4)
    assert torch.equal(loaded(x, y), l1ext.SmoothL1Loss(beta=0.25, reduction="sum")(x, y))


WEIGHTED = [
    (l1ext.L1Loss, {}),
    (l1ext.SmoothL1Loss, {"beta": 1.0 / 9}),
    (l1ext.HuberLoss, {"delta": 0.5}),
    (l1ext.QuantileLoss, {"tau": 0.3}),
]


@pytest.mark.parametrize("cls, kw", WEIGHTED, ids=["l1", "smooth_l1", "huber", "quantile"])
def test_scripted_weighted_forward_matches_eager(cls, kw):
    # mmdetection's convention under script: weight, avg_factor (number, int or tensor),
    # loss_weight and reduction_override give the eager module's bits and gradients.
    boxes, target = torch.randn(10, 4), torch.randn(10, 4)
    full, per_box = torch.rand(10, 4), torch.rand(10)
    calls = [
        dict(),
        dict(weight=full),
        dict(weight=full, reduction_override="sum"),
        dict(weight=per_box),  # torch's weight rule for l1/huber (an error) unless loss_weight
        dict(weight=per_box, avg_factor=3.5),
        dict(weight=per_box, avg_factor=3),
        dict(weight=per_box, avg_factor=torch.tensor(4.0)),
        dict(weight=per_box, avg_factor=2.0, reduction_override="none"),
        # widening: a float64 weight, a float64 or a (1,) avg_factor (dtype and shape as in eager)
        dict(weight=full.double()),
        dict(weight=per_box.double(), avg_factor=3.0),
        dict(weight=per_box, avg_factor=torch.tensor(4.0, dtype=torch.float64)),
        dict(weight=per_box, avg_factor=torch.tensor([4.0])),
        dict(weight=full, avg_factor=torch.tensor(4)),
        dict(weight=torch.rand(3, 10, 4), reduction_override="none"),  # a weight that widens the loss
        dict(weight=torch.rand(2, 10, 4), avg_factor=5.0),
    ]
    for loss_weight in (None, 2, 0.5):
        eager = cls(**kw, loss_weight=loss_weight)
        scripted = torch.jit.script(cls(**kw, loss_weight=loss_weight))
        for call in calls:
            results = []
            for module in (eager, scripted):
                x = boxes.clone().requires_grad_()
                try:
                    loss = module(x, target, **call)
                except (ValueError, torch.jit.Error) as e:
                    results.append(str(e))
                    continue
                loss.sum().backward()
                results.append((loss.detach(), x.grad))
            if isinstance(results[0], str):  # the eager error, inside the scripted one's
                assert isinstance(results[1], str) and results[0] in results[1], (loss_weight, call)
                continue
            (a, ga), (b, gb) = results
            assert (a.dtype, a.shape) == (b.dtype, b.shape), (loss_weight, call)
            assert torch.equal(a, b) and torch.equal(ga, gb), (loss_weight, call)


def test_scripted_weighted_errors():
    scripted = torch.jit.script(l1ext.SmoothL1Loss())
    x, y = torch.randn(4, 4), torch.randn(4, 4)
    with pytest.raises(torch.jit.Error, match="reduction_override must be one of"):
        scripted(x, y, reduction_override="avg")
    with pytest.raises(torch.jit.Error, match="avg_factor can not be used"):
        scripted(x, y, avg_factor=2.0, reduction_override="sum")


def test_scripted_quantile_tensor_tau():
    tau = torch.tensor([0.1, 0.5, 0.9])
    x, y = torch.randn(8, 3), torch.randn(8)
    eager, scripted = l1ext.QuantileLoss(tau), torch.jit.script(l1ext.QuantileLoss(tau))
    assert torch.equal(scripted(x, y), eager(x, y))
    with pytest.raises(torch.jit.Error, match="every tau must be in"):
        bad = torch.jit.script(l1ext.QuantileLoss(torch.tensor([0.5, 1.5])))
        bad(torch.randn(4, 2), torch.randn(4))


def test_scripted_torch_modules_under_patch():
    # l1ext.patch() gives torch's own modules l1ext's forward, which then scripts too (without
    # loss_weight, which torch's modules lack); a module scripted before or after keeps torch's.
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    before = torch.jit.script(torch.nn.HuberLoss(delta=0.3))
    with l1ext.patch():
        scripted = torch.jit.script(torch.nn.HuberLoss(delta=0.3))
    after = torch.jit.script(torch.nn.HuberLoss(delta=0.3))
    assert "l1ext::" in str(scripted.inlined_graph)
    assert "l1ext::" not in str(before.inlined_graph) + str(after.inlined_graph)
    assert_close(scripted(x, y), before(x, y))


@pytest.mark.parametrize("ours, theirs, kw", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.float64)],
                         ids=lambda d: "-".join(str(t)[6:] for t in d))
def test_scripted_module_under_autocast(ours, theirs, kw, dtypes):
    # Under CPU autocast the losses run in float32 (autocast's float32 list) and answer float32,
    # as the eager module does (Huber too, which otherwise answers in the input's dtype).
    x = torch.randn(6, 5, dtype=dtypes[0])
    y = torch.randn(6, 5, dtype=dtypes[1])
    scripted = torch.jit.script(ours(**kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want, torchs = scripted(x, y), ours(**kw)(x, y), theirs(**kw)(x, y)
    assert got.dtype == want.dtype == torchs.dtype and torch.equal(got, want)
    assert_close(got, torchs)


FUNCTIONALS = [
    (LF.l1_loss, TF.l1_loss, {}),
    (LF.smooth_l1_loss, TF.smooth_l1_loss, {"beta": 0.5}),
    (LF.huber_loss, TF.huber_loss, {"delta": 0.5}),
]


def _scripted_call(fn, **kw):
    # A scripted function that calls fn (as user code would), with kw as constants.
    if fn in (LF.l1_loss, TF.l1_loss):
        def call(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fn(x, y, reduction="sum")
    elif fn in (LF.smooth_l1_loss, TF.smooth_l1_loss):
        def call(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fn(x, y, reduction="sum", beta=0.5)
    else:
        def call(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fn(x, y, reduction="sum", delta=0.5)
    return torch.jit.script(call)


@pytest.mark.parametrize("ours, theirs, kw", FUNCTIONALS, ids=PAIR_IDS)
def test_scripted_functional_matches_scripted_torch(ours, theirs, kw):
    # Scripted code that calls l1ext.functional.* compiles (TorchScript gets _script.py's twin)
    # and gives torch's scripted results through l1ext's operators.
    x, y = torch.randn(6, 5), torch.randn(6, 5)
    mine, ref = _scripted_call(ours), _scripted_call(theirs)
    assert "l1ext::" in str(mine.inlined_graph)
    for got, want in zip(_grads(mine, x, y), _grads(ref, x, y)):
        assert_close(got, want)


def test_scripted_functional_arguments():
    # Legacy size_average/reduce (torch's deprecation warning), the weighted convention, the
    # quantile loss: as the eager functions.
    @torch.jit.script
    def legacy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return LF.l1_loss(x, y, size_average=False)

    @torch.jit.script
    def weighted(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, a: torch.Tensor):
        return LF.smooth_l1_loss(x, y, beta=1.0 / 9, weight=w, avg_factor=a, loss_weight=2.0)

    @torch.jit.script
    def quantile(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return LF.quantile_loss(x, y, 0.25, "sum")

    x, y, w, a = torch.randn(8, 4), torch.randn(8, 4), torch.rand(8), torch.tensor(3.0)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        assert torch.equal(legacy(x, y), LF.l1_loss(x, y, reduction="sum"))
    want = LF.smooth_l1_loss(x, y, beta=1.0 / 9, weight=w, avg_factor=a, loss_weight=2.0)
    assert torch.equal(weighted(x, y, w, a), want)
    assert torch.equal(quantile(x, y), LF.quantile_loss(x, y, 0.25, "sum"))
    # no boxes: a zero connected to the target and the weight too, as in eager, and float64 (the
    # float64 weight widens loss * weight)
    y0, w0 = torch.randn(0, 4, requires_grad=True), torch.rand(0, dtype=torch.float64, requires_grad=True)
    out = weighted(torch.randn(0, 4), y0, w0, a)
    assert out.item() == 0.0 and out.dtype == torch.float64
    out.backward()
    assert y0.grad.shape == (0, 4) and w0.grad.shape == (0,)


def test_scripted_torch_functional_under_patch():
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    with l1ext.patch():
        scripted = _scripted_call(TF.smooth_l1_loss)
    assert "l1ext::" in str(scripted.inlined_graph)
    assert_close(scripted(x, y), TF.smooth_l1_loss(x, y, reduction="sum", beta=0.5))


def test_fx_normalizes_functional_calls():
    # torch.fx reads the same table for the signature: normalized arguments keep their names.
    from torch.fx.operator_schemas import normalize_function

    x, y = torch.randn(2, 4), torch.randn(2, 4)
    args = normalize_function(LF.smooth_l1_loss, (x, y), {"beta": 0.5, "reduction": "sum"},
                              normalize_to_only_use_kwargs=True)
    assert args.kwargs["beta"] == 0.5 and args.kwargs["reduction"] == "sum"
    assert args.kwargs["input"] is x and args.kwargs["target"] is y


# Later calls of a traced graph: another size, a broadcast target, a promoted or integer target,
# complex operands (torch's operator's error or result), other reductions' shapes.
_TRACE_CALLS = [
    (lambda: torch.randn(5, 2), lambda: torch.randn(5, 2)),
    (lambda: torch.randn(3, 4), lambda: torch.randn(4)),
    (lambda: torch.randn(3, 4), lambda: torch.randn(3, 4, dtype=torch.float64)),
    (lambda: torch.randn(3, 4, dtype=torch.bfloat16), lambda: torch.randn(3, 4)),
    (lambda: torch.randn(3, 4), lambda: torch.randint(0, 3, (3, 4))),
    (lambda: torch.randn(3, 4, dtype=torch.complex64), lambda: torch.randn(3, 4, dtype=torch.complex64)),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("ours, theirs, kw", PAIRS, ids=PAIR_IDS)
def test_traced_module_generalizes_as_torchs(ours, theirs, kw, reduction):
    """torch.jit.trace of a module traced on same-size float32 operands: later calls of other
    sizes, broadcast targets, other dtypes give what torch's traced module gives (value, dtype,
    shape, gradients; its error where it raises), and the graph calls l1ext's TorchScript twin
    (not a torch loss), which broadcasts and promotes as torch's aten operator does."""
    example = (torch.randn(3, 4), torch.randn(3, 4))
    eager = ours(reduction=reduction, **kw)
    traced_ours = torch.jit.trace(eager, example)
    traced_theirs = torch.jit.trace(theirs(reduction=reduction, **kw), example)
    assert "l1ext" in str(traced_ours.inlined_graph)
    for make_x, make_y in _TRACE_CALLS:
        x, y = make_x(), make_y()
        try:
            want = _grads(traced_theirs, x, y)
        except RuntimeError:
            # torch raises (complex operands; its Huber backward with two dtypes, which l1ext
            # computes): as the eager module does
            want = _outcome(eager, x, y)
            if isinstance(want, type):
                assert _outcome(traced_ours, x, y) is want
                continue
        got = _grads(traced_ours, x, y)
        for g, w in zip(got, want):
            if w is None:
                assert g is None
            else:
                assert_close(g, w)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_traced_functionals_generalize():
    """Traced functional calls (the weighted convention, a quantile loss) serve later calls of
    other sizes as their eager selves do."""
    fns = [
        lambda p, t: LF.l1_loss(p, t),
        lambda p, t: LF.smooth_l1_loss(p, t, beta=1 / 9, weight=t.abs(), avg_factor=3.0),
        lambda p, t: LF.huber_loss(p, t, delta=0.5, reduction="none", loss_weight=2.0),
        lambda p, t: LF.quantile_loss(p, t, tau=0.3),
    ]
    for fn in fns:
        traced = torch.jit.trace(fn, (torch.randn(3, 4), torch.randn(3, 4)))
        for shape in [(7, 4), (2, 1)]:
            p = torch.randn(shape, requires_grad=True)
            t = torch.randn(shape)
            got, want = traced(p, t), fn(p, t)
            assert_close(got, want)
            assert_close(torch.autograd.grad(got.sum(), p)[0], torch.autograd.grad(want.sum(), p)[0])
