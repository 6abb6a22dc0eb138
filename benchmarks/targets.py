"""The core speed targets, measured in one run and printed as ratios (never asserted).

    python benchmarks/targets.py [--device cuda] [--json PATH]
    python benchmarks/targets.py --from-json PATH   # judge a saved l1ext.bench run instead

--from-json reads a `python -m l1ext.bench --json` result that has reduction='mean', the compiled
column, float32 and bfloat16, fwd and fwdbwd, at 4096 and 2^26 elements on a GPU (2^24 on a CPU):
the default GPU sweep has all of them, so one run gives both the table and the targets.

CPU targets (fwd+bwd, reduction='mean'): at N = 2^24, L1 >= 3x eager torch and >= 1.3x
torch.compile'd torch, Smooth L1 and Huber >= 2x eager and >= 1.3x compiled; at N = 4096,
wall time <= 0.8x eager; bfloat16 the same or better than float32.
GPU targets: at N = 2^26, L1 >= 3.5x eager, Smooth L1 / Huber >= 2.5x eager, all >= 1.3x compiled,
forward and fwd+bwd >= 90% of the copy bandwidth (design bytes); at N = 4096, <= 0.5x eager.
"""
import argparse
import json
import sys

import torch

from l1ext import bench


def check_targets(result):
    """Prints each target with its measured figure and whether it is met; returns the lines as
    (label, value, met). Raises KeyError naming a row the result lacks."""
    gpu = result["meta"]["device"].startswith("cuda")
    big = 2**26 if gpu else 2**24
    if result["meta"]["reduction"] != "mean":
        raise ValueError("the targets are for reduction='mean'")
    if result["meta"].get("compile_mode", "default") != "default":
        raise ValueError("the targets are for torch.compile's default mode")
    rows = {(r["loss"], r["dtype"], r["n"], r["pass"], r["impl"]): r for r in result["rows"]}

    def row(*key):
        if key not in rows:
            raise KeyError(f"no row for {key} (loss, dtype, n, pass, impl) in the result")
        return rows[key]

    want_eager = {"l1": 3.5 if gpu else 3.0, "smooth_l1": 2.5 if gpu else 2.0, "huber": 2.5 if gpu else 2.0}
    small_ratio = 0.5 if gpu else 0.8
    lines = []
    for loss in bench.LOSSES:
        for dtype in ("float32", "bfloat16"):
            r = row(loss, dtype, big, "fwdbwd", "l1ext")
            if r["speedup_vs_compiled"] is None:
                raise KeyError(f"no compiled column for {loss} {dtype}")
            lines += [
                (f"{loss} {dtype} 2^{big.bit_length() - 1} fwdbwd vs eager >= {want_eager[loss]}x",
                 r["speedup_vs_eager"], r["speedup_vs_eager"] >= want_eager[loss]),
                (f"{loss} {dtype} 2^{big.bit_length() - 1} fwdbwd vs compiled >= 1.3x",
                 r["speedup_vs_compiled"], r["speedup_vs_compiled"] >= 1.3),
            ]
            if gpu:
                for pass_ in ("fwd", "fwdbwd"):
                    f = row(loss, dtype, big, pass_, "l1ext")["fraction_of_copy"]
                    lines.append((f"{loss} {dtype} {pass_} bandwidth >= 90% of copy", f, f >= 0.9))
            ratio = 1 / row(loss, dtype, 4096, "fwdbwd", "l1ext")["speedup_vs_eager"]
            lines.append((f"{loss} {dtype} 4096 fwdbwd time <= {small_ratio}x eager", ratio,
                          ratio <= small_ratio))
    print(f"{'target':<58}{'measured':>10}  met")
    for label, value, ok in lines:
        print(f"{label:<58}{value:>10.2f}  {'yes' if ok else 'NO'}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="PATH", help="save the measured result")
    p.add_argument("--from-json", metavar="PATH", help="judge a saved l1ext.bench result")
    p.add_argument("--min-time", type=float, default=0.5)
    a = p.parse_args(argv)
    if a.from_json:
        with open(a.from_json) as f:
            result = json.load(f)
        meta = result["meta"]
        print(f"targets judged on {a.from_json}: {meta['device_name']}, torch {meta['torch']}, "
              f"CUDA {meta['cuda']}, commit {meta['commit'][:12]}, {meta['date']}")
        check_targets(result)
        return 0
    big = 2**26 if a.device.startswith("cuda") else 2**24
    args = bench.resolve(bench.build_parser().parse_args(
        ["--device", a.device, "--sizes", f"4096,{big}", "--dtypes", "float32,bfloat16",
         "--passes", "fwd,fwdbwd", "--min-time", str(a.min_time), "--full"]))
    result = bench.run(args)
    print(bench.format_table(result))
    print()
    check_targets(result)
    if a.json:
        bench.write_json(result, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
