"""Runs every CUDA operator over the cases compute-sanitizer should see: aligned, misaligned,
tiny, empty and large tensors, each dtype, each reduction, both gradients, single- and
multi-block reductions. Used by scripts/gpu_check.sh:
    compute-sanitizer --tool memcheck python scripts/cuda_sanitizer_cases.py
    compute-sanitizer --tool racecheck python scripts/cuda_sanitizer_cases.py --small
--small leaves out the sizes above 100003 elements: racecheck follows every shared-memory access
of every block, and took more than 90 s over the full list on an H100 (memcheck: 15 s), while the
shared-memory code (the block reduction and the last block's pass over the block partials) is
the same for 100003 elements (several blocks) as for 3 million.
"""
import sys
import warnings

import torch

import l1ext.functional as LF

SMALL = "--small" in sys.argv[1:]
MULTI_BLOCK = 100_003 if SMALL else 1 << 20  # more elements than one block reduces (32768)
SIZES = [0, 1, 5, 8, 4096, 32768, 32769, MULTI_BLOCK] + ([] if SMALL else [3_000_017])
count = 0
for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    for n in SIZES:
        for offset in (0, 1):
            base_x = torch.randn(n + offset, device="cuda").to(dtype)
            base_y = torch.randn(n + offset, device="cuda").to(dtype)
            for fn in (LF.l1_loss, LF.smooth_l1_loss, LF.huber_loss):
                for reduction in ("none", "mean", "sum"):
                    # views at storage offset 0 or 1 element: aligned and misaligned pointers
                    x = base_x[offset:].detach().requires_grad_()
                    y = base_y[offset:].detach().requires_grad_()
                    out = fn(x, y, reduction=reduction)
                    out.backward(torch.ones_like(out))
                    count += 1
                    if reduction != "none":
                        # The gradients a reduced forward kept, scaled in place (a power of two)
                        # or rewritten (any other value; L1 from their signs) by the backward,
                        # and for L1 written to new tensors where the graph is retained.
                        for scale in (2.0, 2.5):
                            out = fn(x, y, reduction=reduction)
                            out.backward(torch.full_like(out, scale), retain_graph=scale == 2.5)
                            count += 1
# The *_forward operators (for 'none' the gradients come from a second launch) and the weighted
# losses, per box row and per coordinate.
ops = torch.ops.l1ext
for n in (0, 5, 4096, MULTI_BLOCK):
    for offset in (0, 1):
        x = torch.randn(n + offset, device="cuda")[offset:]
        y = torch.randn(n + offset, device="cuda")[offset:]
        for reduction in (0, 1, 2):
            ops.smooth_l1_loss_forward(x, y, reduction, 0.5, [True, True])
            ops.huber_loss_forward(x, y, reduction, 0.5, [True, False])
            p = x[: n // 4 * 4].reshape(-1, 4).detach().requires_grad_()
            t = y[: n // 4 * 4].reshape(-1, 4)
            w = torch.rand(p.shape[0], device="cuda", requires_grad=True)
            avg = None if reduction == 2 else 7.0
            kw = dict(reduction=["none", "mean", "sum"][reduction], weight=w, avg_factor=avg, loss_weight=2.0)
            out = LF.smooth_l1_loss(p, t, beta=torch.rand(4, device="cuda"), **kw)
            out.backward(torch.ones_like(out))
            if reduction != 0:
                # a weight without gradient: the kept input gradient, scaled and rewritten
                for scale in (1.0, 0.5, 3.0):
                    q = p.detach().requires_grad_()
                    out = LF.smooth_l1_loss(q, t, beta=0.3, reduction=kw["reduction"],
                                            weight=w.detach(), avg_factor=avg, loss_weight=2.0)
                    out.backward(torch.full_like(out, scale))
                    count += 1
            ops.weighted_loss_forward(p.detach(), t, w.detach(), None, None, 1, 0.2, avg, 1.0, reduction,
                                      [True, True])
            count += 3
# The quantile loss: a number tau, and quantiles on the device along the last dimension (the
# kernels read and check each one: Aux::check_quantiles), one target for all quantiles (which
# warns of broadcasting, as torch's losses do), weighted.
warnings.filterwarnings("ignore", "Using a target size")
taus = torch.tensor([0.1, 0.5, 0.9], device="cuda")
for dtype in (torch.bfloat16, torch.float32):
    for n in (0, 5, 4096, MULTI_BLOCK):
        for offset in (0, 1):
            x = torch.randn(n * 3 + offset, device="cuda").to(dtype)[offset:].view(n, 3)
            y = torch.randn(n + offset, device="cuda").to(dtype)[offset:].view(n, 1)
            w = torch.rand(n, 1, device="cuda").to(dtype)
            for reduction in ("none", "mean", "sum"):
                for tau, weight in ((0.3, None), (taus.to(dtype), None), (taus, w)):
                    q = x.detach().requires_grad_()
                    out = LF.quantile_loss(q, y, tau, reduction=reduction, weight=weight)
                    out.backward(torch.full_like(out, 1.0 if reduction == "none" else 0.5))
                    count += 1
# Operands read where they lie (StridedOperands): a broadcast row or column target, an expanded
# input, sliced operands, a misaligned input against a broadcast target; one and several blocks;
# reduced losses with incoming gradients of one, a power of two and another value (the kept
# gradients in place), 'none' with the gradient of loss.sum() (one number) and per element.
for dtype in (torch.float16, torch.float32, torch.float64):
    for rows in (3, 300, 3000 if not SMALL else 600):
        big = torch.randn(rows, 2 * 130 + 1, device="cuda").to(dtype)
        row, col = big[:1, :130], big[:, :1]
        cases = [(big[:, 1:131], row.expand(rows, 130)), (big[:, 1:131], col.expand(rows, 130)),
                 (row.expand(rows, 130), big[:, 1:131]), (big[:, :260:2], big[:, 1:261:2])]
        for xv, yv in cases:
            for fn in (LF.l1_loss, LF.smooth_l1_loss, LF.huber_loss):
                for reduction in ("none", "mean", "sum"):
                    for scale in ((1.0, 2.0, 2.5) if reduction != "none" else (1.0, None)):
                        x = xv.detach().requires_grad_()
                        y = yv.detach().requires_grad_()
                        out = fn(x, y, reduction=reduction)
                        if scale is None:
                            out.backward(torch.randn_like(out))
                        else:
                            out.backward(torch.full_like(out, scale) if reduction != "none"
                                         else torch.tensor(scale, dtype=dtype, device="cuda").expand_as(out))
                        count += 1
torch.cuda.synchronize()
print(f"sanitizer cases: {count} forward+backward calls")
