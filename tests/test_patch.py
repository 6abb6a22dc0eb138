"""l1ext.patch(): torch's functional and modules routed to l1ext, and back."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import l1ext


def _uses_l1ext(out):
    # Walks the autograd graph for an l1ext node.
    stack, seen = [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "l1ext" in fn.name():
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


def _detection_head_loss(pred, target, weight):
    # As torchvision's detection references write it.
    return F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum") / max(1, weight)


def test_patch_context_manager():
    torch_fn = F.smooth_l1_loss
    pred = torch.randn(32, 4, requires_grad=True)
    target = torch.randn(32, 4)
    ref = _detection_head_loss(pred, target, 7)
    assert not _uses_l1ext(ref)
    with l1ext.patch():
        assert l1ext.is_patched() and F.smooth_l1_loss is l1ext.functional.smooth_l1_loss
        out = _detection_head_loss(pred, target, 7)
        assert _uses_l1ext(out)
        torch.testing.assert_close(out, ref)
        g1, = torch.autograd.grad(out, pred)
        g2, = torch.autograd.grad(ref, pred)
        torch.testing.assert_close(g1, g2)
    assert F.smooth_l1_loss is torch_fn and not l1ext.is_patched()


def test_patch_modules_existing_instances():
    crit = [nn.L1Loss(), nn.SmoothL1Loss(beta=0.5), nn.HuberLoss(delta=2.0)]
    x = torch.randn(10, requires_grad=True)
    y = torch.randn(10)
    refs = [c(x, y) for c in crit]
    l1ext.patch()
    try:
        for c, ref in zip(crit, refs):
            out = c(x, y)
            assert _uses_l1ext(out)
            torch.testing.assert_close(out, ref)
    finally:
        l1ext.unpatch()
    assert not any(_uses_l1ext(c(x, y)) for c in crit)


def test_patch_nested_and_fallback():
    with l1ext.patch():
        with l1ext.patch():  # inner call does not own the patch
            pass
        assert l1ext.is_patched()
        # integer L1 is served by torch's own operator, with torch's result
        a = torch.tensor([1, 5, 2])
        assert torch.equal(F.l1_loss(a, torch.tensor([2, 2, 2]), reduction="sum"), torch.tensor(4))
    assert not l1ext.is_patched()
    l1ext.unpatch()  # no-op


def test_patch_compiles():
    with l1ext.patch():
        f = torch.compile(lambda p, t: F.huber_loss(p, t, delta=0.3), fullgraph=True)
        p, t = torch.randn(8, 4), torch.randn(8, 4)
        torch.testing.assert_close(f(p, t), torch._C._nn.huber_loss(p, t, 1, 0.3))
