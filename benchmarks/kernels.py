"""Where the device time of one forward + backward goes, kernel by kernel, for l1ext and eager
torch at one size: each kernel's calls and microseconds per step from the profiler (on a CPU, the
operators' own CPU time instead), their total, and the wall time per step of the same loop. At
large sizes the l1ext forward kernel's time against the bytes it moves says how far it is from
the copy bandwidth; a gap between the kernels' total and the wall time is launch or host time.
Nothing asserted.

    python benchmarks/kernels.py [--device cuda] [--loss smooth_l1] [--dtype bfloat16] [--n 2^26]
    python benchmarks/kernels.py --boxes 1e6 [--dtype float32]   # the weighted box loss

--boxes N profiles benchmarks/weighted.py's step instead: Smooth L1 (beta 1/9) with a per-box
weight (N, 1) and avg_factor over boxes (N, 4), the eager composition against l1ext's fused call.
"""
import argparse
import collections
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from l1ext import bench


def profile_steps(step, device, steps):
    """{name: (calls, seconds)} per step of the device's own events, and wall seconds per step."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        step()
    sync()
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = (time.perf_counter() - t0) / steps
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    totals = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type != kind:
            continue
        # CPU events nest (an operator contains the ones it calls): its self time only.
        us = e.time_range.elapsed_us() if cuda else e.self_cpu_time_total
        totals[e.name][0] += 1
        totals[e.name][1] += us / 1e6
    return {k: (c / steps, s / steps) for k, (c, s) in totals.items()}, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--loss", default="smooth_l1", choices=list(bench.LOSSES))
    p.add_argument("--dtype", default="bfloat16", choices=list(bench.DTYPES))
    p.add_argument("--n", default="2^26" if torch.cuda.is_available() else "2^20",
                   help="elements, e.g. 4096, 2^26, 64M")
    p.add_argument("--reduction", default="mean", choices=["mean", "sum", "none"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--boxes", help="profile the weighted box loss over this many boxes (N, 4)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    dtype = bench.DTYPES[a.dtype]
    if a.boxes:
        return profile_boxes(device, dtype, int(float(a.boxes)), a.steps)
    n = bench.parse_size(a.n)
    x = torch.randn(n, device=device, dtype=dtype).requires_grad_()
    y = torch.randn(n, device=device, dtype=dtype)
    impls = bench.implementations(a.loss, compile_=False)
    kept = bench.l1_keeps_gradient(device, dtype, n, a.reduction)
    nbytes = bench.design_bytes(a.loss, n, x.element_size(), a.reduction, "fwdbwd", l1_kept=kept)
    print(f"{a.loss} {a.dtype} n={n} reduction={a.reduction} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}; per fwd+bwd step, {a.steps} steps")
    print(f"the l1ext design moves {nbytes / 1e6:.1f} MB per step")
    for name in ("eager", "l1ext"):
        fn = impls[name]

        def step():
            x.grad = None
            out = fn(x, y, a.reduction)
            out.backward(torch.ones_like(out))

        print_profile(name, step, device, a.steps)
    return 0


def print_profile(name, step, device, steps):
    table, wall = profile_steps(step, device, steps)
    busy = sum(s for _, s in table.values())
    print(f"\n{name}: wall {wall * 1e6:.1f} us per step, "
          f"{'kernels' if device.type == 'cuda' else 'operators (self CPU time)'} "
          f"{busy * 1e6:.1f} us, {sum(c for c, _ in table.values()):.1f} per step")
    for k, (calls, s) in sorted(table.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"  {s * 1e6:9.1f} us  {calls:4.1f}x  {k[:100]}")


def profile_boxes(device, dtype, boxes, steps):
    pred = torch.randn(boxes, 4, device=device, dtype=dtype, requires_grad=True)
    target = torch.randn(boxes, 4, device=device, dtype=dtype)
    weight = (torch.rand(boxes, 1, device=device) < 0.3).to(dtype)
    avg = 0.3 * boxes
    size = pred.element_size()
    # The fused design: the forward reads input, target and the per-box weight and writes the
    # input's gradient, which a backward with an incoming gradient of one hands over.
    nbytes = boxes * 4 * 3 * size + boxes * size
    print(f"weighted smooth_l1 (beta 1/9, weight (N, 1), avg_factor) over {boxes} boxes (N, 4), "
          f"{dtype} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}; per fwd+bwd step, {steps} steps")
    print(f"the l1ext design moves {nbytes / 1e6:.1f} MB per step")
    for name, fn in (("eager composition", bench.weighted_box_composition),
                     ("l1ext", bench.weighted_box_fused)):
        def step(fn=fn):
            pred.grad = None
            fn(pred, target, weight, avg).backward()

        print_profile(name, step, device, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
