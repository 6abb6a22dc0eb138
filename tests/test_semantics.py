"""Warnings, errors, legacy arguments, modules and input immutability, against torch's own."""
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as TF

import l1ext
import l1ext.functional as LF

from conftest import LOSS_IDS, LOSSES, REDUCTIONS


def _outcome(fn, *args, **kwargs):
    """(result or None, exception or None, [(category, message)]) of a call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = fn(*args, **kwargs), None
        except Exception as e:  # noqa: BLE001 - compared below
            result, error = None, e
    return result, error, [(w.category, str(w.message)) for w in caught]


def assert_same_outcome(ours, theirs, *args, **kwargs):
    r1, e1, w1 = _outcome(ours, *args, **kwargs)
    r2, e2, w2 = _outcome(theirs, *args, **kwargs)
    assert w1 == w2
    assert type(e1) is type(e2), (e1, e2)
    if e2 is not None:
        assert str(e1).split("\n")[0] == str(e2).split("\n")[0]
    else:
        assert r1.dtype == r2.dtype and r1.shape == r2.shape
        torch.testing.assert_close(r1, r2, equal_nan=True)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_size_mismatch_warning(loss):
    _, ours, theirs, _ = loss
    assert_same_outcome(ours, theirs, torch.randn(3, 4), torch.randn(4))
    assert_same_outcome(ours, theirs, torch.randn(3), torch.tensor(1.0))


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_size_mismatch_warning_points_at_caller(loss):
    _, ours, _, _ = loss
    with pytest.warns(UserWarning, match="different to the input size") as record:
        ours(torch.randn(3, 4), torch.randn(4))
    assert record[0].filename == __file__


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_not_broadcastable(loss):
    _, ours, theirs, _ = loss
    assert_same_outcome(ours, theirs, torch.randn(3), torch.randn(4))


@pytest.mark.parametrize("reduction", ["avg", "elementwise_mean", "", None])
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_bad_reduction(loss, reduction):
    _, ours, theirs, _ = loss
    assert_same_outcome(ours, theirs, torch.randn(3), torch.randn(3), reduction=reduction)


@pytest.mark.parametrize("size_average", [None, True, False])
@pytest.mark.parametrize("reduce", [None, True, False])
@pytest.mark.parametrize("loss", LOSSES[:2], ids=LOSS_IDS[:2])
def test_legacy_arguments(loss, size_average, reduce):
    _, ours, theirs, _ = loss
    assert_same_outcome(ours, theirs, torch.randn(5), torch.randn(5),
                        size_average=size_average, reduce=reduce)


@pytest.mark.parametrize("beta", [-1.0, -1e-9, float("nan"), "a", torch.tensor(0.5), 2, True])
def test_smooth_l1_beta_values(beta):
    assert_same_outcome(LF.smooth_l1_loss, TF.smooth_l1_loss, torch.randn(5), torch.randn(5), beta=beta)


@pytest.mark.parametrize("delta", [0.0, -1.0, float("nan"), "a", torch.tensor(0.5), 2, None])
def test_huber_delta_values(delta):
    assert_same_outcome(LF.huber_loss, TF.huber_loss, torch.randn(5), torch.randn(5), delta=delta)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.complex64, torch.bool], ids=str)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_unsupported_dtypes_behave_as_torch(loss, dtype, reduction):
    _, ours, theirs, _ = loss
    x = torch.randint(0, 3, (4,)).to(dtype)
    y = torch.randint(0, 3, (4,)).to(dtype)
    assert_same_outcome(ours, theirs, x, y, reduction=reduction)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_empty(loss):
    _, ours, theirs, _ = loss
    for reduction in REDUCTIONS:
        assert_same_outcome(ours, theirs, torch.empty(0, 3), torch.empty(0, 3), reduction=reduction)


@pytest.mark.parametrize("loss", [LOSSES[0], LOSSES[2]], ids=["l1", "huber"])
def test_weight_errors(loss):
    _, ours, theirs, _ = loss
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    assert_same_outcome(ours, theirs, x, y, weight=torch.ones(3))
    assert_same_outcome(ours, theirs, x, y, weight=torch.ones(4, 3), reduction="avg")


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_meta_and_mixed_devices(loss):
    _, ours, theirs, _ = loss
    assert_same_outcome(ours, theirs, torch.randn(3, device="meta"), torch.randn(3, device="meta"))
    assert_same_outcome(ours, theirs, torch.randn(3), torch.randn(3, device="meta"))


# ---- modules ---------------------------------------------------------------------------------

MODULES = [
    (l1ext.L1Loss, nn.L1Loss, {}),
    (l1ext.SmoothL1Loss, nn.SmoothL1Loss, {"beta": 0.25}),
    (l1ext.HuberLoss, nn.HuberLoss, {"delta": 2.0}),
]
MODULE_IDS = ["L1Loss", "SmoothL1Loss", "HuberLoss"]


@pytest.mark.parametrize("ours,theirs,kw", MODULES, ids=MODULE_IDS)
def test_module_is_drop_in(ours, theirs, kw):
    for reduction in REDUCTIONS:
        a, b = ours(reduction=reduction, **kw), theirs(reduction=reduction, **kw)
        assert isinstance(a, theirs)
        assert repr(a) == repr(b)
        assert a.reduction == b.reduction
        assert a.state_dict() == b.state_dict() == {}
        for name in kw:
            assert getattr(a, name) == getattr(b, name)
        x, y = torch.randn(5, 4), torch.randn(5, 4)
        torch.testing.assert_close(a(x, y), b(x, y))
    a2 = pickle.loads(pickle.dumps(ours(**kw)))
    assert type(a2) is ours


@pytest.mark.parametrize("ours,theirs", [(l1ext.L1Loss, nn.L1Loss), (l1ext.SmoothL1Loss, nn.SmoothL1Loss)],
                         ids=MODULE_IDS[:2])
def test_module_legacy_arguments(ours, theirs):
    for size_average, reduce in [(True, None), (False, None), (None, False), (False, True)]:
        r1, e1, w1 = _outcome(ours, size_average=size_average, reduce=reduce)
        r2, e2, w2 = _outcome(theirs, size_average=size_average, reduce=reduce)
        assert w1 == w2 and r1.reduction == r2.reduction


@pytest.mark.parametrize("delta", ["1", None, 2, 0.5])
def test_huber_module_delta_type(delta):
    # torch 2.13's HuberLoss raises TypeError("delta must be a float or int") at construction;
    # older releases fail only at the call. Whichever torch is installed is the oracle.
    x, y = torch.randn(3), torch.randn(3)
    assert_same_outcome(lambda: l1ext.HuberLoss(delta=delta)(x, y), lambda: nn.HuberLoss(delta=delta)(x, y))


def test_module_bad_reduction_at_call():
    x, y = torch.randn(3), torch.randn(3)
    assert_same_outcome(lambda: l1ext.L1Loss(reduction="avg")(x, y), lambda: nn.L1Loss(reduction="avg")(x, y))


def test_torch_function_subclass():
    class Tagged(torch.Tensor):
        pass

    x = torch.randn(4).as_subclass(Tagged)
    y = torch.randn(4).as_subclass(Tagged)
    out = LF.smooth_l1_loss(x, y)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), TF.smooth_l1_loss(x, y).as_subclass(torch.Tensor))



def test_torch_function_override_gets_torch_keyword_arguments():
    # A __torch_function__ override sees the keyword arguments torch's function passes it (none
    # of l1ext's that the call did not give), so overrides that forward them keep working.
    seen = []

    class Recorder(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func.__name__.endswith("_loss"):
                seen.append(sorted(kwargs or {}))
            return super().__torch_function__(func, types, args, kwargs)

    x, y = torch.randn(4).as_subclass(Recorder), torch.randn(4)
    for ours, theirs in ((LF.l1_loss, TF.l1_loss), (LF.smooth_l1_loss, TF.smooth_l1_loss),
                         (LF.huber_loss, TF.huber_loss)):
        seen.clear()
        ours(x, y)
        theirs(x, y)
        assert len(seen) == 2 and seen[0] == seen[1], seen

def test_cpu_capability():
    assert l1ext.cpu_capability() in ("DEFAULT", "AVX2", "AVX512")
