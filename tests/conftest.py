"""Shared test helpers. torch's own losses are the oracle; tolerances are stated here, once."""
import os

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, settings

import l1ext
import l1ext.functional as LF

# Property-based tests (tests/test_hardening.py, tests/test_weighted.py): a bounded, fixed set of
# examples in CI; L1EXT_HYPOTHESIS_PROFILE=long for many more.
settings.register_profile("ci", max_examples=250, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=20000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("L1EXT_HYPOTHESIS_PROFILE", "ci"))

# Tolerances per dtype, for values and gradients. l1ext rounds once from float (half, bfloat16)
# or double accumulators; torch rounds some intermediate steps in the input dtype, so reduced
# precision differs by a few units in the last place.
TOL = {
    torch.float16: dict(rtol=4e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=1.6e-2),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.complex64: dict(rtol=2e-5, atol=2e-6),
    torch.complex128: dict(rtol=1e-10, atol=1e-12),
}
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
REDUCTIONS = ["none", "mean", "sum"]

# (name, l1ext functional, torch functional, parameter name or None)
LOSSES = [
    ("l1", LF.l1_loss, TF.l1_loss, None),
    ("smooth_l1", LF.smooth_l1_loss, TF.smooth_l1_loss, "beta"),
    ("huber", LF.huber_loss, TF.huber_loss, "delta"),
]
LOSS_IDS = [name for name, *_ in LOSSES]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_close(actual, expected, dtype=None):
    dtype = dtype or expected.dtype
    tol = TOL.get(dtype, {})
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, equal_nan=True, **tol)


def run_both(ours, theirs, input, target, grad_input=True, grad_target=True, grad_output=None, **kw):
    """Runs the l1ext and torch losses on copies of the same leaves; returns
    (ours_loss, torch_loss, ours_grads, torch_grads) with grads (input, target) or None."""
    results = []
    for fn in (ours, theirs):
        x = input.detach().clone().requires_grad_(grad_input)
        y = target.detach().clone().requires_grad_(grad_target)
        loss = fn(x, y, **kw)
        grads = (None, None)
        if grad_input or grad_target:
            g = torch.ones_like(loss) if grad_output is None else grad_output
            loss.backward(g)
            grads = (x.grad, y.grad)
        results.append((loss.detach(), grads))
    (a, ga), (b, gb) = results
    return a, b, ga, gb


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
