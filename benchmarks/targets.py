"""The core speed targets, measured in one run and printed as ratios (never asserted).

    python benchmarks/targets.py [--device cuda] [--json PATH]

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--min-time", type=float, default=0.5)
    a = p.parse_args(argv)
    gpu = a.device.startswith("cuda")
    big = 2**26 if gpu else 2**24
    args = bench.resolve(bench.build_parser().parse_args(
        ["--device", a.device, "--sizes", f"4096,{big}", "--dtypes", "float32,bfloat16",
         "--passes", "fwd,fwdbwd", "--min-time", str(a.min_time), "--full"]))
    result = bench.run(args)
    print(bench.format_table(result))
    print()
    rows = {(r["loss"], r["dtype"], r["n"], r["pass"], r["impl"]): r for r in result["rows"]}
    want_eager = {"l1": 3.5 if gpu else 3.0, "smooth_l1": 2.5 if gpu else 2.0, "huber": 2.5 if gpu else 2.0}
    small_ratio = 0.5 if gpu else 0.8
    print(f"{'target':<58}{'measured':>10}  met")
    for loss in bench.LOSSES:
        for dtype in ("float32", "bfloat16"):
            r = rows[(loss, dtype, big, "fwdbwd", "l1ext")]
            checks = [
                (f"{loss} {dtype} 2^{big.bit_length() - 1} fwdbwd vs eager >= {want_eager[loss]}x",
                 r["speedup_vs_eager"], r["speedup_vs_eager"] >= want_eager[loss]),
                (f"{loss} {dtype} 2^{big.bit_length() - 1} fwdbwd vs compiled >= 1.3x",
                 r["speedup_vs_compiled"], r["speedup_vs_compiled"] >= 1.3),
            ]
            if gpu:
                for pass_ in ("fwd", "fwdbwd"):
                    f = rows[(loss, dtype, big, pass_, "l1ext")]["fraction_of_copy"]
                    checks.append((f"{loss} {dtype} {pass_} bandwidth >= 90% of copy", f, f >= 0.9))
            s = rows[(loss, dtype, 4096, "fwdbwd", "l1ext")]
            ratio = 1 / s["speedup_vs_eager"]
            checks.append((f"{loss} {dtype} 4096 fwdbwd time <= {small_ratio}x eager", ratio, ratio <= small_ratio))
            for label, value, ok in checks:
                print(f"{label:<58}{value:>10.2f}  {'yes' if ok else 'NO'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
