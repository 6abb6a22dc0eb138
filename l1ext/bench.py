"""Benchmark: l1ext against eager torch and torch.compile'd torch, in one run.

    python -m l1ext.bench                      # CPU: quick default; GPU: the full sweep
    python -m l1ext.bench --device cuda --json out.json --plot out.png
    l1ext-bench --losses smooth_l1 --dtypes bfloat16 --sizes 2^12,2^20 --passes fwdbwd

For every loss, dtype, size and pass (fwd, bwd, fwdbwd) it reports the median time of each
implementation, the speedups of l1ext, the bandwidth each achieves counted over the bytes the
l1ext design must move (the same count for all three, so the ratios carry over), that bandwidth as
a fraction of the device's copy bandwidth measured in the same run, and the peak memory of a
forward + backward. Figures are medians over repetitions after warm-up; GPU times come from CUDA
events with L2 flushed between repetitions for sizes of 2^20 elements and more; torch.compile's
compile time is excluded and reported separately. --compile-mode picks torch.compile's mode for
that column (default: 'default', the one the speed targets name; 'reduce-overhead' replays CUDA
graphs on a GPU).
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as TF

import l1ext
import l1ext.functional as LF

LOSSES = {
    # name: (functional name, parameter name, parameter value)
    "l1": ("l1_loss", None, None),
    "smooth_l1": ("smooth_l1_loss", "beta", 1.0),
    "huber": ("huber_loss", "delta", 1.0),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
PASSES = ("fwd", "bwd", "fwdbwd")
IMPLS = ("eager", "compiled", "l1ext")
REDUCTIONS = ("mean", "sum", "none")
# torch.compile's modes; the two that capture CUDA graphs on a GPU replay the compiled step.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
CPU_SIZES = [2**12, 2**16, 2**20, 2**24]
GPU_SIZES = [2**k for k in range(12, 27, 2)]
QUICK_CPU_SIZES = [2**12, 2**18, 2**24]
QUICK_GPU_SIZES = [2**12, 2**20, 2**26]
FLUSH_FROM = 2**20  # elements: from here on, GPU repetitions start from a flushed L2


# ---- arguments ---------------------------------------------------------------------------------

def parse_size(text):
    """'4096', '2^20', '2**20', '1e6', '16M' -> int."""
    t = text.strip().lower().replace("**", "^")
    m = re.fullmatch(r"(\d+)\^(\d+)", t)
    if m:
        return int(m.group(1)) ** int(m.group(2))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg])", t)
    if m:
        return int(float(m.group(1)) * {"k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)])
    try:
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a positive whole size: {text!r}")
    return int(value)


def _choices(kind, allowed):
    def parse(text):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
        return items
    return parse


def _sizes(text):
    sizes = [parse_size(s) for s in text.split(",") if s.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def build_parser():
    p = argparse.ArgumentParser(
        prog="l1ext-bench",
        description="Time l1ext's losses against eager and torch.compile'd torch built-ins.")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--losses", type=_choices("loss", LOSSES), default=list(LOSSES),
                   help="comma-separated: l1,smooth_l1,huber (default: all)")
    p.add_argument("--dtypes", type=_choices("dtype", DTYPES), default=None,
                   help="comma-separated: float32,bfloat16,float16,float64 "
                        "(default: float32,bfloat16,float16; --quick on a CPU: float32,bfloat16)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="comma-separated element counts, e.g. 4096,2^20,16M "
                        "(default: 2^12..2^24 on a CPU, 2^12..2^26 on a GPU)")
    p.add_argument("--passes", type=_choices("pass", PASSES), default=list(PASSES),
                   help="comma-separated: fwd,bwd,fwdbwd (default: all)")
    p.add_argument("--reduction", choices=REDUCTIONS, default="mean")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes and dtypes, shorter timing (the default on a CPU)")
    p.add_argument("--full", action="store_true", help="on a CPU, the full sweep instead of --quick")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile's mode for the compiled column (default: default); on a "
                        "GPU reduce-overhead and max-autotune replay CUDA graphs")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timing per figure (default 0.1 quick, 0.3 full)")
    p.add_argument("--json", metavar="PATH", help="write every figure and the run's metadata here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: throughput vs size per loss")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def resolve(args):
    """Fills in the defaults that depend on the device."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("l1ext-bench: --device cuda but torch sees no CUDA device")
    on_cpu = device.type == "cpu"
    quick = args.quick or (on_cpu and not args.full)
    args.quick = quick
    if args.dtypes is None:
        args.dtypes = ["float32", "bfloat16"] if (quick and on_cpu) else ["float32", "bfloat16", "float16"]
    if args.sizes is None:
        if on_cpu:
            args.sizes = QUICK_CPU_SIZES if quick else CPU_SIZES
        else:
            args.sizes = QUICK_GPU_SIZES if quick else GPU_SIZES
    if args.min_time is None:
        args.min_time = 0.1 if quick else 0.3
    return args


# ---- what a design must move -------------------------------------------------------------------

def l1_keeps_gradient(device, dtype, n, reduction):
    """Whether a reduced L1 forward with gradients keeps the gradient rather than the int8 sign:
    on the CPU and on a GPU, where the signs survive the rounding of 1 / n (float16 'mean' loses
    them from n = 2^25 - 1 on). Mirrors keeps_l1_gradients in csrc/autograd/losses_autograd.cpp."""
    if torch.device(device).type not in ("cpu", "cuda") or reduction == "none":
        return False
    if dtype == torch.float16 and reduction == "mean":
        return bool(torch.tensor(1.0 / n, dtype=torch.float32).half() != 0)
    return True


def design_bytes(loss, n, elem_size, reduction, pass_, l1_kept=False):
    """Bytes the l1ext design must move for one pass with the input's gradient only.

    Forward reads input and target; 'none' writes the loss; L1 also writes its int8 sign.
    Backward: L1 reads the sign, Smooth L1 / Huber ('none') re-read input and target; both write
    the gradient, and 'none' reads the incoming gradient. A reduced Smooth L1 / Huber forward
    (and with l1_kept, l1_keeps_gradient, a reduced L1 forward) writes the gradient instead, and
    a backward with an incoming gradient of one (as here) moves nothing (on a GPU it reads that
    one value)."""
    fwd = 2 * n * elem_size + (n * elem_size if reduction == "none" else 0)
    if loss == "l1" and not (l1_kept and reduction != "none"):
        fwd += n  # int8 sign
        bwd = n + n * elem_size
    elif reduction != "none":
        fwd += n * elem_size
        bwd = 0
    else:
        bwd = 3 * n * elem_size
    if reduction == "none":
        bwd += n * elem_size
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[pass_]


# ---- timing ------------------------------------------------------------------------------------

class Clock:
    """Times `timed(state)` after an untimed `setup()`; CUDA events on a GPU."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.flush_buffer = None
        if self.cuda:
            l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
            self.flush_buffer = torch.empty(max(4 * l2, 2**28) // 4, dtype=torch.float32, device=device)

    def once(self, setup, timed, flush):
        state = setup()
        if self.cuda:
            if flush:
                self.flush_buffer.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            timed(state)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        timed(state)
        return time.perf_counter() - t0

    def median(self, setup, timed, min_time, flush=False, warmup=3, min_reps=5, max_reps=10000):
        # Warm-up: at least `warmup` calls and a third of the timing budget, then until three
        # calls in a row agree within 15% (capped at 3 s). First calls pay for allocator growth,
        # first-touch page faults (on a virtual machine, the host's too) and lazy loading.
        # Budgets are wall-clock seconds (setup, L2 flush and synchronisation included), so a
        # figure costs about min_time whatever share of a repetition the timed region is.
        start, recent = time.perf_counter(), []
        for i in range(max_reps):
            recent = (recent + [self.once(setup, timed, flush)])[-3:]
            settled = len(recent) == 3 and max(recent) <= 1.15 * min(recent)
            spent = time.perf_counter() - start
            if i + 1 >= warmup and spent >= min_time / 3 and (settled or spent > 3.0):
                break
        times, start = [], time.perf_counter()
        while len(times) < min_reps or (time.perf_counter() - start < min_time
                                        and len(times) < max_reps):
            times.append(self.once(setup, timed, flush))
        return statistics.median(times), len(times)


def loop_medians(steps, device, loop, rounds):
    """Median seconds per call of each of `steps` (callables) over `rounds` rounds; each round runs
    a loop of `loop` calls of every step in turn, a GPU synchronised once at the end of each loop:
    the steady state of a training loop, host or device bound, whichever is slower. Running the
    steps in turn within each round makes drift of the machine hit all of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps:
        for _ in range(max(3, loop // 10)):
            step()
    sync()
    times = [[] for _ in steps]
    for _ in range(rounds):
        for k, step in enumerate(steps):
            t0 = time.perf_counter()
            for _ in range(loop):
                step()
            sync()
            times[k].append((time.perf_counter() - t0) / loop)
    return [statistics.median(t) for t in times]


def on_calling_thread(step):
    """step() with the autograd engine running its backward on the calling thread
    (torch.autograd.set_multithreading_enabled(False)). By default the engine hands a GPU's
    backward to its device thread and waits for it: a step timed both ways shows what those
    hand-offs cost."""
    def caller_step():
        with torch.autograd.set_multithreading_enabled(False):
            step()
    return caller_step


def copy_bandwidth(device, clock, min_time):
    """Bytes per second of dst.copy_(src) (read + write), 64 MiB each on a CPU, 1 GiB on a GPU."""
    n = (2**28 if device.type == "cuda" else 2**24)
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t, _ = clock.median(lambda: None, lambda _: dst.copy_(src), min_time)
    return 2 * n * 4 / t


def peak_memory(device, run):
    """Peak bytes that `run` allocates beyond what existed before it, read from the allocator:
    the CUDA caching allocator's peak on a GPU; on a CPU, the running sum of every allocation and
    free torch's CPU allocator reports to the profiler, in order."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):
        return None
    current = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        current += e.nbytes()  # positive for an allocation, negative for a free
        peak = max(peak, current)
    return peak


# ---- the run -----------------------------------------------------------------------------------

def weighted_box_composition(pred, target, weight, avg_factor):
    """The weighted box loss detection code writes (mmdetection's weight_reduce_loss), eager."""
    eps = torch.finfo(torch.float32).eps
    return (TF.smooth_l1_loss(pred, target, beta=1 / 9, reduction="none") * weight).sum() / (avg_factor + eps)


def weighted_box_fused(pred, target, weight, avg_factor):
    """The same loss in l1ext's one fused call (benchmarks/weighted.py, benchmarks/kernels.py)."""
    return LF.smooth_l1_loss(pred, target, beta=1 / 9, weight=weight, avg_factor=avg_factor)


def implementations(loss, compile_, mode="default", device=torch.device("cpu")):
    fname, param, value = LOSSES[loss]
    kw = {param: value} if param else {}
    torch_fn = getattr(TF, fname)
    ours_fn = getattr(LF, fname)

    def eager(x, y, reduction):
        return torch_fn(x, y, reduction=reduction, **kw)

    def ours(x, y, reduction):
        return ours_fn(x, y, reduction=reduction, **kw)

    impls = {"eager": eager, "l1ext": ours}
    if compile_:
        # Static shapes, as a training loop of one size compiles them. Under automatic dynamic
        # shapes the sweep's second size would switch every later one to a single symbolic-size
        # graph, whose reduction took 10 to 18 ms at 2^26 on an H100 (eager: 0.5 to 1.2 ms).
        compiled = torch.compile(eager, dynamic=False, mode=None if mode == "default" else mode)
        impls["compiled"] = compiled
        if device.type == "cuda" and mode in CUDA_GRAPH_MODES:
            def replayed(x, y, reduction):
                # Each call is a new step: CUDA graph trees may then reuse the memory of the
                # previous step's outputs, which the benchmark has dropped (the forward-only
                # pass would otherwise leave a backward pending and keep recording).
                torch.compiler.cudagraph_mark_step_begin()
                return compiled(x, y, reduction)

            impls["compiled"] = replayed
    return impls


class Progress:
    def __init__(self, total, enabled):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.start = time.perf_counter()

    def step(self, label):
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{elapsed:5.0f}s {label:<40.40}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def _commit():
    env = os.environ.get("L1EXT_COMMIT")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def metadata(device, args):
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else (platform.processor() or platform.machine())),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "l1ext": l1ext.__version__,
        "commit": _commit(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_capability": l1ext.cpu_capability(),
        "reduction": args.reduction,
        "compile_mode": getattr(args, "compile_mode", "default"),
        "quick": args.quick,
    }
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                m = re.search(r"model name\s*:\s*(.+)", f.read())
            if m:
                meta["device_name"] = m.group(1).strip()
        except OSError:
            pass
    return meta


def run(args, checkpoint=None):
    """Runs the sweep; checkpoint(result), when given, is called after each (loss, dtype, size) with
    the rows so far (meta["complete"] is False until the sweep ends)."""
    device = torch.device(args.device)
    clock = Clock(device)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    compile_ = not args.no_compile
    impl_names = [i for i in IMPLS if compile_ or i != "compiled"]
    result = {"meta": {**metadata(device, args), "complete": False}, "compile_seconds": {},
              "rows": []}
    result["meta"]["copy_bandwidth_Bps"] = copy_bandwidth(device, clock, args.min_time)
    total = len(args.losses) * len(args.dtypes) * len(args.sizes) * len(impl_names)
    progress = Progress(total, not args.no_progress)
    red = args.reduction
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for loss in args.losses:
        impls = implementations(loss, compile_, args.compile_mode, device)
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            for n in args.sizes:
                x = torch.randn(n, device=device, dtype=dtype).requires_grad_()
                y = torch.randn(n, device=device, dtype=dtype)
                elem = x.element_size()
                flush = device.type == "cuda" and n >= FLUSH_FROM
                times = {}
                for impl in impl_names:
                    fn = impls[impl]
                    progress.step(f"{loss} {dname} n={n} {impl}")
                    if impl == "compiled":
                        t0 = time.perf_counter()
                        out = fn(x, y, red)
                        out.backward(torch.ones_like(out))
                        sync()
                        result["compile_seconds"][f"{loss}/{dname}/{n}"] = time.perf_counter() - t0
                    x.grad = None

                    def fresh():
                        x.grad = None

                    def forward(_):
                        return fn(x, y, red)

                    def graph():
                        x.grad = None
                        out = fn(x, y, red)
                        return out, torch.ones_like(out)

                    def backward(state):
                        state[0].backward(state[1])

                    def step():
                        out = fn(x, y, red)
                        out.backward(torch.ones_like(out))

                    if "fwd" in args.passes:
                        times[("fwd", impl)] = clock.median(fresh, forward, args.min_time, flush)
                    if "bwd" in args.passes:
                        times[("bwd", impl)] = clock.median(graph, backward, args.min_time, flush)
                    if "fwdbwd" in args.passes:
                        times[("fwdbwd", impl)] = clock.median(fresh, lambda _: step(), args.min_time, flush)
                    fresh()
                    times[("mem", impl)] = peak_memory(device, step)
                for pass_ in args.passes:
                    nbytes = design_bytes(loss, n, elem, red, pass_,
                                          l1_kept=l1_keeps_gradient(device, dtype, n, red))
                    for impl in impl_names:
                        t, reps = times[(pass_, impl)]
                        row = {
                            "loss": loss, "dtype": dname, "n": n, "pass": pass_, "reduction": red,
                            "impl": impl, "time_s": t, "reps": reps, "design_bytes": nbytes,
                            "bandwidth_Bps": nbytes / t,
                            "fraction_of_copy": nbytes / t / result["meta"]["copy_bandwidth_Bps"],
                            "speedup_vs_eager": times[(pass_, "eager")][0] / t,
                            "speedup_vs_compiled": (times[(pass_, "compiled")][0] / t if compile_ else None),
                            "peak_memory_bytes": times[("mem", impl)] if pass_ == "fwdbwd" else None,
                        }
                        result["rows"].append(row)
                del x, y
                if checkpoint is not None:
                    checkpoint(result)
    result["meta"]["complete"] = True
    return result


def write_json(result, path):
    """Writes result to path whole or not at all (a new file renamed over the old one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


# ---- output ------------------------------------------------------------------------------------

def _fmt_time(t):
    if t < 1e-3:
        return f"{t * 1e6:8.1f}us"
    return f"{t * 1e3:8.2f}ms"


def _fmt_size(n):
    k = n.bit_length() - 1
    return f"2^{k}" if n == 1 << k else str(n)


def format_table(result):
    meta = result["meta"]
    lines = [
        f"l1ext {meta['l1ext']} ({meta['commit'][:12]}) on {meta['device_name']} [{meta['device']}], "
        f"torch {meta['torch']}, CUDA {meta['cuda']}, {meta['threads']} threads, "
        f"CPU kernels {meta['cpu_capability']}, reduction='{meta['reduction']}', {meta['date']}",
        f"copy bandwidth (same run): {meta['copy_bandwidth_Bps'] / 1e9:.1f} GB/s; "
        "GB/s below = bytes the l1ext design must move / time",
        "",
    ]
    mode = meta.get("compile_mode", "default")
    if mode != "default" and any(r["impl"] == "compiled" for r in result["rows"]):
        lines.insert(2, f"compiled = torch.compile(mode='{mode}'), static shapes")
    rows = result["rows"]
    has_compiled = any(r["impl"] == "compiled" for r in rows)
    head = f"{'loss':<10}{'dtype':<9}{'n':>6} {'pass':<7}{'eager':>11}"
    head += f"{'compiled':>11}" if has_compiled else ""
    head += f"{'l1ext':>11}{'x eager':>9}" + (f"{'x comp':>8}" if has_compiled else "")
    shown = "/".join(i for i in IMPLS if has_compiled or i != "compiled")
    head += f"{'GB/s':>8}{'%copy':>7}  peak MiB ({shown})"
    lines += [head, "-" * len(head)]
    by_key = {}
    for r in rows:
        by_key.setdefault((r["loss"], r["dtype"], r["n"], r["pass"]), {})[r["impl"]] = r
    for (loss, dtype, n, pass_), impls in by_key.items():
        ours = impls["l1ext"]
        line = f"{loss:<10}{dtype:<9}{_fmt_size(n):>6} {pass_:<7}{_fmt_time(impls['eager']['time_s']):>11}"
        if has_compiled:
            line += f"{_fmt_time(impls['compiled']['time_s']):>11}"
        line += f"{_fmt_time(ours['time_s']):>11}{ours['speedup_vs_eager']:>8.2f}x"
        if has_compiled:
            line += f"{ours['speedup_vs_compiled']:>7.2f}x"
        line += f"{ours['bandwidth_Bps'] / 1e9:>8.1f}{100 * ours['fraction_of_copy']:>6.0f}%"
        if pass_ == "fwdbwd":
            mems = [impls[i]["peak_memory_bytes"] for i in IMPLS if i in impls]
            line += "  " + "/".join("?" if m is None else f"{m / 2**20:.3g}" for m in mems)
        lines.append(line)
    split = {r["loss"] for r in rows if r["pass"] != "fwdbwd" and r["loss"] != "l1"}
    if meta["reduction"] != "none" and split:
        lines += ["", "A reduced Smooth L1 / Huber forward also writes the gradient, which the backward "
                      "hands over:", "its fwd and bwd rows split the work differently from "
                      "torch's; compare them by fwdbwd."]
    if result["compile_seconds"]:
        cs = list(result["compile_seconds"].values())
        lines += ["", f"torch.compile time (excluded above): {sum(cs):.1f}s in all, "
                      f"median {statistics.median(cs):.2f}s per loss/dtype/size"]
    return "\n".join(lines)


def write_plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["pass"] == "fwdbwd"] or result["rows"]
    pass_ = rows[0]["pass"]
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    styles = ["-", "--", ":", "-."]
    colors = {"eager": "tab:gray", "compiled": "tab:blue", "l1ext": "tab:red"}
    fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 4), squeeze=False)
    for ax, loss in zip(axes[0], losses):
        for di, dtype in enumerate(dtypes):
            for impl in IMPLS:
                pts = sorted((r["n"], r["n"] / r["time_s"]) for r in rows
                             if r["loss"] == loss and r["dtype"] == dtype and r["impl"] == impl)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] / 1e9 for p in pts], styles[di % 4],
                            color=colors[impl], marker="o", ms=3, label=f"{impl} {dtype}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel(f"{pass_} throughput (G elements/s)")
        ax.set_title(loss)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    meta = result["meta"]
    fig.suptitle(f"l1ext vs torch, {pass_}, reduction='{meta['reduction']}' - {meta['device_name']}, "
                 f"torch {meta['torch']}, {meta['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = resolve(build_parser().parse_args(argv))
    # With --json the rows so far are saved as they come, so a run cut short (Ctrl-C, a time
    # limit) still leaves every figure it measured.
    result = run(args, checkpoint=(lambda r: write_json(r, args.json)) if args.json else None)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        write_plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
