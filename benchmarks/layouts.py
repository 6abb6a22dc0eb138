"""l1ext against eager torch over operand layouts and dtype pairs the main benchmark does not
time: a broadcast target, an expanded one, slices, a transposed or channels-last input, a wider
or integer target. Per case and loss: the 'none' forward under no_grad, and fwd + bwd with
'none' (an incoming gradient per element) and with 'mean'. Medians over rounds that run every
case in turn (l1ext and torch side by side, so drift hits both alike); prints l1ext's time as a
share of eager torch's. Nothing asserted.

    python benchmarks/layouts.py [--device cuda] [--rows 4096] [--cols 256] [--json PATH]
"""
import argparse
import json
import sys
import warnings

import torch
import torch.nn.functional as F

import l1ext.functional as LF
from l1ext import bench

LOSSES = {
    "l1": (F.l1_loss, LF.l1_loss),
    "smooth_l1": (F.smooth_l1_loss, LF.smooth_l1_loss),
    "huber": (F.huber_loss, LF.huber_loss),
}


def layouts(rows, cols, device):
    """(name, input, target): the input a leaf that needs a gradient, the target none."""
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device, dtype=dtype)

    cases = [
        ("contiguous", randn(rows, cols), randn(rows, cols)),
        ("target (1, D), broadcast", randn(rows, cols), randn(1, cols)),
        ("target expanded (N, D)", randn(rows, cols), randn(1, cols).expand(rows, cols)),
        ("both sliced [:, ::2]", randn(rows, 2 * cols)[:, ::2], randn(rows, 2 * cols)[:, ::2]),
        ("input transposed", randn(cols, rows).t(), randn(rows, cols)),
        ("target transposed", randn(rows, cols), randn(cols, rows).t()),
        ("float64 target", randn(rows, cols), randn(rows, cols, dtype=torch.float64)),
        ("bfloat16 input, float32 target", randn(rows, cols, dtype=torch.bfloat16), randn(rows, cols)),
        ("int64 target", randn(rows, cols), randn(rows, cols).mul(3).long()),
    ]
    return [(name, x.requires_grad_(), y) for name, x, y in cases]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    warnings.simplefilter("ignore")  # (the broadcast target's size warning, both sides)

    def passes(fn, x, y):
        go = torch.randn(torch.broadcast_shapes(x.shape, y.shape), device=device, dtype=x.dtype)

        def forward():
            with torch.no_grad():
                fn(x, y, reduction="none")

        def none_fwd_bwd():
            x.grad = None
            fn(x, y, reduction="none").backward(go)

        def mean_fwd_bwd():
            x.grad = None
            fn(x, y).backward()
        return [("none fwd, no_grad", forward), ("none fwd+bwd", none_fwd_bwd),
                ("mean fwd+bwd", mean_fwd_bwd)]

    cases, refused = [], []
    for layout, x, y in layouts(a.rows, a.cols, device):
        for loss, (theirs, ours) in LOSSES.items():
            for (what, eager), (_, mine) in zip(passes(theirs, x, y), passes(ours, x, y)):
                try:
                    eager()
                except RuntimeError as e:  # (torch's Huber backward with two dtypes)
                    refused.append(f"{layout}, {loss}, {what}: eager torch raises {str(e)[:60]!r}")
                    continue
                cases.append((layout, loss, what, eager, mine))
    steps = [s for case in cases for s in case[3:]]
    seconds = bench.loop_medians(steps, device, a.steps, a.repeats)
    print(f"{a.rows} x {a.cols} operands, {device}, {torch.get_num_threads()} threads, loops of "
          f"{a.steps} steps, median of {a.repeats} rounds; l1ext's time as a share of eager torch's")
    print(f"{'layout':<32}{'loss':<11}{'pass':<19}{'eager':>10}{'l1ext':>10}{'share':>7}")
    rows = []
    for k, (layout, loss, what, _, _) in enumerate(cases):
        eager_s, l1ext_s = seconds[2 * k], seconds[2 * k + 1]
        rows.append({"layout": layout, "loss": loss, "pass": what, "eager_s": eager_s,
                     "l1ext_s": l1ext_s})
        print(f"{layout:<32}{loss:<11}{what:<19}{bench._fmt_time(eager_s):>10}"
              f"{bench._fmt_time(l1ext_s):>10}{l1ext_s / eager_s:>7.2f}")
    for line in refused:
        print(line)
    if a.json:
        meta = bench.metadata(device, argparse.Namespace(reduction="none", quick=False))
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "refused_by_torch": refused}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
