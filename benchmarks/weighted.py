"""Weighted Smooth L1 with avg_factor over boxes (N, 4), forward + backward: l1ext's fused
operator against the eager composition detection code writes and that composition under
torch.compile, timed two ways: one synchronised step at a time (CUDA events around a step that
starts on an idle GPU: its latency) and loops of steps synchronised once (the steady state of a
training loop, with x.sum().backward(), the autograd engine's own minimal step, beside them).
On a GPU the loops are timed again with the backward kept on the calling thread
(torch.autograd.set_multithreading_enabled(False); by default the engine hands a CUDA backward to
its device thread and waits for it). Medians, ratios printed, nothing asserted.

    python benchmarks/weighted.py [--device cuda] [--caller-rows] [--json PATH]

Targets: on a GPU, >= 3x the eager composition and >= 1.5x the compiled one for N = 1e3..1e6;
on a CPU, >= 2x the eager composition.
"""
import argparse
import json
import sys

import torch

from l1ext import bench

composition, fused = bench.weighted_box_composition, bench.weighted_box_fused


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=20, help="steps per loop (loop timing)")
    p.add_argument("--repeats", type=int, default=9, help="rounds of loops (loop timing)")
    p.add_argument("--caller-rows", action="store_true",
                   help="time the loops with the engine on the caller too (default on a GPU)")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    clock = bench.Clock(device)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # Static shapes, as l1ext.bench compiles them (one graph per size).
    compiled = torch.compile(composition, dynamic=False)
    impls = (("eager", composition), ("compiled", compiled), ("l1ext", fused))
    # Only a GPU backward leaves the calling thread; on the CPU these loops repeat the others.
    caller = device.type == "cuda" or a.caller_rows
    rows = []
    for n in [int(float(s)) for s in a.sizes.split(",")]:
        pred = torch.randn(n, 4, device=device, requires_grad=True)
        target = torch.randn(n, 4, device=device)
        weight = (torch.rand(n, 1, device=device) < 0.3).float()
        avg = 0.3 * n

        def fresh():
            pred.grad = None

        row = {"n_boxes": n}
        for name, fn in impls:
            def step(_, fn=fn):
                fn(pred, target, weight, avg).backward()

            row[f"{name}_s"] = clock.median(fresh, step, a.min_time)[0]

        def loop_step(fn):
            def step():
                pred.grad = None
                fn(pred, target, weight, avg).backward()
            return step

        floor = loop_step(lambda p, *_: p.sum())
        loops = bench.loop_medians([loop_step(fn) for _, fn in impls] + [floor], device, a.steps,
                                   a.repeats)
        row.update({f"loop_{name}_s": t for (name, _), t in zip(impls, loops)})
        row["loop_floor_s"] = loops[-1]
        if caller:
            steps = [loop_step(composition), loop_step(fused), floor]
            loops = bench.loop_medians([bench.on_calling_thread(s) for s in steps], device,
                                       a.steps, a.repeats)
            row.update(caller_eager_s=loops[0], caller_l1ext_s=loops[1], caller_floor_s=loops[2])
        rows.append(row)
    t = bench._fmt_time
    print(f"weighted Smooth L1 (beta=1/9) with avg_factor over boxes (N, 4), fwd+bwd, {device}")
    print("one synchronised step (median):")
    print(f"{'N boxes':>9} {'eager':>11} {'compiled':>11} {'l1ext':>11} {'x eager':>8} {'x compiled':>10}")
    for r in rows:
        print(f"{r['n_boxes']:>9} {t(r['eager_s']):>11} {t(r['compiled_s']):>11} "
              f"{t(r['l1ext_s']):>11} {r['eager_s'] / r['l1ext_s']:>7.2f}x "
              f"{r['compiled_s'] / r['l1ext_s']:>9.2f}x")
    print(f"loops of {a.steps} steps, synchronised once (median of {a.repeats} rounds, every case "
          "in each round; floor: x.sum().backward() on the same boxes):")
    print(f"{'N boxes':>9} {'eager':>11} {'compiled':>11} {'l1ext':>11} {'x eager':>8} "
          f"{'x compiled':>10} {'floor':>11}")
    for r in rows:
        print(f"{r['n_boxes']:>9} {t(r['loop_eager_s']):>11} {t(r['loop_compiled_s']):>11} "
              f"{t(r['loop_l1ext_s']):>11} {r['loop_eager_s'] / r['loop_l1ext_s']:>7.2f}x "
              f"{r['loop_compiled_s'] / r['loop_l1ext_s']:>9.2f}x {t(r['loop_floor_s']):>11}")
    if caller:
        print("the same loops with the engine on the caller "
              "(torch.autograd.set_multithreading_enabled(False)):")
        print(f"{'N boxes':>9} {'eager':>11} {'l1ext':>11} {'x eager':>8} {'floor':>11}")
        for r in rows:
            eager, ours = r["caller_eager_s"], r["caller_l1ext_s"]
            print(f"{r['n_boxes']:>9} {t(eager):>11} {t(ours):>11} {eager / ours:>7.2f}x "
                  f"{t(r['caller_floor_s']):>11}")
    if a.json:
        meta = bench.metadata(device, argparse.Namespace(reduction="mean", quick=False))
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
