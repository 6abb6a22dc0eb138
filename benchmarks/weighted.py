"""Weighted Smooth L1 with avg_factor over boxes (N, 4), forward + backward: l1ext's fused
operator against the eager composition detection code writes and that composition under
torch.compile. Medians, ratios printed, nothing asserted.

    python benchmarks/weighted.py [--device cuda] [--json PATH]

Targets: on a GPU, >= 3x the eager composition and >= 1.5x the compiled one for N = 1e3..1e6;
on a CPU, >= 2x the eager composition.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

import l1ext.functional as LF
from l1ext import bench

EPS = torch.finfo(torch.float32).eps


def composition(pred, target, weight, avg_factor):
    return (F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="none") * weight).sum() / (avg_factor + EPS)


def fused(pred, target, weight, avg_factor):
    return LF.smooth_l1_loss(pred, target, beta=1 / 9, weight=weight, avg_factor=avg_factor)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    clock = bench.Clock(device)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # Static shapes, as l1ext.bench compiles them (one graph per size).
    compiled = torch.compile(composition, dynamic=False)
    rows = []
    print(f"weighted Smooth L1 (beta=1/9) with avg_factor over boxes (N, 4), fwd+bwd, {device}")
    print(f"{'N boxes':>9} {'eager':>11} {'compiled':>11} {'l1ext':>11} {'x eager':>8} {'x compiled':>10}")
    for n in [int(float(s)) for s in a.sizes.split(",")]:
        pred = torch.randn(n, 4, device=device, requires_grad=True)
        target = torch.randn(n, 4, device=device)
        weight = (torch.rand(n, 1, device=device) < 0.3).float()
        avg = 0.3 * n
        times = {}
        for name, fn in (("eager", composition), ("compiled", compiled), ("l1ext", fused)):
            def step(_, fn=fn):
                fn(pred, target, weight, avg).backward()

            def fresh():
                pred.grad = None

            times[name] = clock.median(fresh, step, a.min_time)[0]
        rows.append({"n_boxes": n, **{f"{k}_s": v for k, v in times.items()}})
        print(f"{n:>9} {bench._fmt_time(times['eager']):>11} {bench._fmt_time(times['compiled']):>11} "
              f"{bench._fmt_time(times['l1ext']):>11} {times['eager'] / times['l1ext']:>7.2f}x "
              f"{times['compiled'] / times['l1ext']:>9.2f}x")
    if a.json:
        meta = bench.metadata(device, argparse.Namespace(reduction="mean", quick=False))
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
