"""Where the time of a small forward + backward goes (box-regression sizes, N = 4096 by default):
l1ext and eager torch per loss beside the autograd engine's own floor. Wall time per step of a
loop of steps (a GPU synchronised once at the end of the loop: the steady state of a training
loop, host or device bound, whichever is slower), medians over rounds that run every case in
turn; on a GPU also the
kernel launches per step, counted by the profiler. Nothing asserted.

    python benchmarks/overhead.py [--device cuda] [--n 4096] [--caller-rows] [--json PATH]

On a GPU the issue's target is l1ext fwd+bwd <= 0.5x eager torch's time at N = 4096: this splits
that time into forward, backward and the floor no loss can go under. There the autograd engine
hands a CUDA backward to its device thread and waits for it; the rows "on caller" run
the same steps under torch.autograd.set_multithreading_enabled(False), which keeps the backward
on the calling thread (a setting of the user's, for eager torch and l1ext alike): what those two
thread hand-offs cost per step.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

import l1ext.functional as LF
from l1ext import bench

LOSSES = {
    "l1": (F.l1_loss, LF.l1_loss),
    "smooth_l1": (F.smooth_l1_loss, LF.smooth_l1_loss),
    "huber": (F.huber_loss, LF.huber_loss),
}

CALLER = "on caller"


def launches_per_step(step, device, steps=20):
    """Device kernels and memory operations per call of step(), from the profiler (GPU only)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    device_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(device_events) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--caller-rows", action="store_true",
                   help="time the steps with the engine on the caller too (default on a GPU)")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    x = torch.randn(a.n, device=device, requires_grad=True)
    xd = x.detach()
    y = torch.randn(a.n, device=device)

    def fwd_bwd(fn):
        def step():
            x.grad = None
            fn(x, y).backward()
        return step

    # Only a GPU backward leaves the calling thread; on the CPU these rows repeat the others.
    caller = device.type == "cuda" or a.caller_rows
    floor = fwd_bwd(lambda a, b: a.sum())
    cases = [("engine floor", "x.sum().backward()", floor)]
    if caller:
        cases += [("engine floor", "x.sum().backward(), " + CALLER,
                   bench.on_calling_thread(floor))]
    for name, (theirs, ours) in LOSSES.items():
        cases += [
            (name, "eager fwd+bwd", fwd_bwd(theirs)),
            (name, "l1ext fwd+bwd", fwd_bwd(ours)),
        ]
        if caller:
            cases += [
                (name, "eager fwd+bwd, " + CALLER, bench.on_calling_thread(fwd_bwd(theirs))),
                (name, "l1ext fwd+bwd, " + CALLER, bench.on_calling_thread(fwd_bwd(ours))),
            ]
        cases += [
            (name, "eager fwd", lambda theirs=theirs: theirs(x, y)),
            (name, "l1ext fwd", lambda ours=ours: ours(x, y)),
            (name, "l1ext fwd, no grad", lambda ours=ours: ours(xd, y)),
        ]
    rows = []
    print(f"time per step at N = {a.n}, {device}, loops of {a.steps} steps, median of {a.repeats} "
          "rounds (all cases in each round)")
    print(f"{'loss':<14}{'what':<30}{'time':>10}{'launches':>10}")
    seconds = bench.loop_medians([step for _, _, step in cases], device, a.steps, a.repeats)
    for (loss, what, step), t in zip(cases, seconds):
        k = launches_per_step(step, device)
        rows.append({"loss": loss, "what": what, "time_s": t, "launches": k})
        print(f"{loss:<14}{what:<30}{bench._fmt_time(t):>10}{'' if k is None else f'{k:.1f}':>10}")
    print()
    by = {(r["loss"], r["what"]): r["time_s"] for r in rows}
    for name in LOSSES:
        ratio = by[(name, "l1ext fwd+bwd")] / by[(name, "eager fwd+bwd")]
        print(f"{name}: l1ext fwd+bwd = {ratio:.2f} of eager torch's time")
        if caller:
            ratio = (by[(name, "l1ext fwd+bwd, " + CALLER)]
                     / by[(name, "eager fwd+bwd, " + CALLER)])
            print(f"{name}: engine {CALLER}, l1ext = {ratio:.2f} of eager torch's time")
    if a.json:
        meta = bench.metadata(device, argparse.Namespace(reduction="mean", quick=False))
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "n": a.n, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
