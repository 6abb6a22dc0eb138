"""The benchmark CLI: argument handling and its JSON schema, on a tiny CPU run (no timings)."""
import json
import pathlib
import subprocess
import sys

import pytest
import torch

from l1ext import bench

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_parse_size():
    assert bench.parse_size("4096") == 4096
    assert bench.parse_size("2^20") == 2**20
    assert bench.parse_size("2**12") == 4096
    assert bench.parse_size("1e6") == 1_000_000
    assert bench.parse_size("16M") == 16 * 2**20
    for bad in ("abc", "0", "-3", "1.5"):
        with pytest.raises(Exception):
            bench.parse_size(bad)


def test_defaults_on_cpu():
    args = bench.resolve(bench.build_parser().parse_args(["--device", "cpu"]))
    assert args.quick and args.sizes == bench.QUICK_CPU_SIZES
    assert args.dtypes == ["float32", "bfloat16"] and args.reduction == "mean"
    full = bench.resolve(bench.build_parser().parse_args(["--device", "cpu", "--full"]))
    assert not full.quick and full.sizes == bench.CPU_SIZES and max(full.sizes) == 2**24
    assert full.dtypes == ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize("argv", [["--losses", "l2"], ["--dtypes", "int8"], ["--passes", "back"],
                                  ["--reduction", "avg"], ["--sizes", "x"], ["--losses", ""],
                                  ["--compile-mode", "fast"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.build_parser().parse_args(argv)
    assert e.value.code == 2
    assert "usage: l1ext-bench" in capsys.readouterr().err


def test_design_bytes():
    n = 1000
    # L1 fwd: x, y read + int8 sign; bwd: sign read + grad written.
    assert bench.design_bytes("l1", n, 4, "mean", "fwd") == 8 * n + n
    assert bench.design_bytes("l1", n, 4, "mean", "bwd") == n + 4 * n
    assert bench.design_bytes("huber", n, 4, "none", "fwd") == 12 * n
    assert bench.design_bytes("huber", n, 4, "none", "bwd") == 16 * n
    # Reduced: the forward writes the gradient; a backward of one moves nothing
    assert bench.design_bytes("smooth_l1", n, 4, "mean", "fwd") == 12 * n
    assert bench.design_bytes("huber", n, 4, "sum", "bwd") == 0
    assert bench.design_bytes("smooth_l1", n, 2, "mean", "fwdbwd") == 6 * n
    assert bench.design_bytes("huber", n, 4, "none", "fwdbwd") == 12 * n + 16 * n
    # a reduced L1 keeps the gradient (l1_keeps_gradient), as Smooth L1 / Huber do
    assert bench.design_bytes("l1", n, 4, "mean", "fwdbwd", l1_kept=True) == 12 * n
    assert bench.design_bytes("l1", n, 2, "sum", "bwd", l1_kept=True) == 0
    assert bench.design_bytes("l1", n, 4, "none", "fwdbwd", l1_kept=True) == 9 * n + 5 * n + 4 * n + 4 * n
    assert bench.l1_keeps_gradient("cpu", torch.float32, n, "mean")
    assert not bench.l1_keeps_gradient("cpu", torch.float32, n, "none")
    assert not bench.l1_keeps_gradient("cpu", torch.float16, 2**25 - 1, "mean")
    assert not bench.l1_keeps_gradient("meta", torch.float32, n, "mean")
    assert bench.l1_keeps_gradient("cuda", torch.bfloat16, 2**26, "mean")
    assert not bench.l1_keeps_gradient("cuda", torch.float32, n, "none")
    assert bench.l1_keeps_gradient("cuda", torch.float16, 2**25 - 2, "mean")
    assert not bench.l1_keeps_gradient("cuda", torch.float16, 2**25 - 1, "mean")
    assert bench.l1_keeps_gradient("cuda", torch.float16, 2**26, "sum")


def test_cli_json_schema(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "l1ext.bench", "--device", "cpu", "--losses", "l1,huber",
         "--dtypes", "float32", "--sizes", "256,2^10", "--passes", "fwd,fwdbwd", "--no-compile",
         "--min-time", "0.001", "--no-progress", "--json", str(out)],
        capture_output=True, text=True, check=True)
    assert "x eager" in proc.stdout and "l1ext" in proc.stdout
    data = json.loads(out.read_text())
    meta = data["meta"]
    for key in ("date", "device", "device_name", "torch", "cuda", "l1ext", "commit", "threads",
                "cpu_capability", "copy_bandwidth_Bps", "reduction"):
        assert key in meta
    assert meta["device"] == "cpu" and meta["copy_bandwidth_Bps"] > 0 and meta["complete"] is True
    rows = data["rows"]
    assert len(rows) == 2 * 1 * 2 * 2 * 2  # losses x dtypes x sizes x passes x impls
    for r in rows:
        assert set(r) >= {"loss", "dtype", "n", "pass", "impl", "time_s", "reps", "design_bytes",
                          "bandwidth_Bps", "fraction_of_copy", "speedup_vs_eager",
                          "speedup_vs_compiled", "peak_memory_bytes"}
        assert r["time_s"] > 0 and r["reps"] >= 5
        assert r["impl"] in ("eager", "l1ext") and r["speedup_vs_compiled"] is None
        assert (r["peak_memory_bytes"] is not None) == (r["pass"] == "fwdbwd")
    eager = {(r["loss"], r["n"], r["pass"]): r["time_s"] for r in rows if r["impl"] == "eager"}
    for r in rows:
        assert r["speedup_vs_eager"] == pytest.approx(eager[(r["loss"], r["n"], r["pass"])] / r["time_s"])


def test_rows_are_checkpointed_as_they_come(tmp_path):
    # --json saves the rows so far after each (loss, dtype, size): a run cut short keeps them.
    args = bench.resolve(bench.build_parser().parse_args(
        ["--device", "cpu", "--losses", "l1", "--dtypes", "float32", "--sizes", "64,128",
         "--passes", "fwd", "--no-compile", "--min-time", "0.001", "--no-progress"]))
    seen = []

    def stop_after_first(result):
        seen.append((len(result["rows"]), result["meta"]["complete"]))
        bench.write_json(result, str(tmp_path / "r.json"))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench.run(args, checkpoint=stop_after_first)
    assert seen == [(2, False)]  # eager and l1ext at the first size
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["n"] for r in data["rows"]] == [64, 64] and data["meta"]["complete"] is False
    assert not (tmp_path / "r.json.tmp").exists()


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    args = bench.resolve(bench.build_parser().parse_args(
        ["--device", "cpu", "--losses", "smooth_l1", "--dtypes", "float32", "--sizes", "128,256",
         "--passes", "fwdbwd", "--no-compile", "--min-time", "0.001", "--no-progress"]))
    result = bench.run(args)
    path = tmp_path / "p.png"
    bench.write_plot(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "smooth_l1" in bench.format_table(result)


def test_table_notes_the_design_of_smooth_l1_and_huber():
    # The recorded CPU run: its Smooth L1 / Huber fwd and bwd rows split the work differently
    # from torch's (the forward writes the gradient), and the table says so; a table of
    # fwdbwd rows alone, or of 'none' losses, does not.
    import copy
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "results" / "cpu-quick.json"
    result = json.loads(path.read_text())
    note = "compare them by fwdbwd"
    assert note in bench.format_table(result)
    gpu = copy.deepcopy(result)
    gpu["meta"]["device"] = "cuda"
    assert note in bench.format_table(gpu)
    unreduced = copy.deepcopy(result)
    unreduced["meta"]["reduction"] = "none"
    assert note not in bench.format_table(unreduced)
    fwdbwd_only = copy.deepcopy(result)
    fwdbwd_only["rows"] = [r for r in result["rows"] if r["pass"] == "fwdbwd"]
    assert note not in bench.format_table(fwdbwd_only)


def _benchmark_script(name):
    import importlib.util

    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overhead_script_runs(tmp_path, capsys):
    # benchmarks/overhead.py on a tiny CPU run: every row is timed and the JSON is written.
    overhead = _benchmark_script("overhead")
    out = tmp_path / "o.json"
    assert overhead.main(["--device", "cpu", "--n", "64", "--steps", "3", "--repeats", "2",
                          "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 + 5 * 3 and all(r["time_s"] > 0 for r in rows)
    assert "of eager torch's time" in capsys.readouterr().out
    # The rows with the engine on the calling thread (a GPU's default), asked for on the CPU.
    assert overhead.main(["--device", "cpu", "--n", "64", "--steps", "3", "--repeats", "2",
                          "--caller-rows", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 + 7 * 3 and all(r["time_s"] > 0 for r in rows)
    assert "engine on caller, l1ext =" in capsys.readouterr().out


def test_weighted_script_runs(tmp_path, capsys):
    # benchmarks/weighted.py on a tiny CPU run: both timings of every implementation, the
    # engine's floor, and the JSON.
    weighted = _benchmark_script("weighted")
    out = tmp_path / "w.json"
    assert weighted.main(["--device", "cpu", "--sizes", "64", "--min-time", "0.01", "--steps", "2",
                          "--repeats", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    keys = [f"{p}{k}_s" for p in ("", "loop_") for k in ("eager", "compiled", "l1ext")]
    assert row["n_boxes"] == 64 and all(row[k] > 0 for k in keys + ["loop_floor_s"])
    assert "loops of 2 steps" in capsys.readouterr().out
    # The loops with the engine on the calling thread (a GPU's default), asked for on the CPU.
    assert weighted.main(["--device", "cpu", "--sizes", "64", "--min-time", "0.01", "--steps", "2",
                          "--repeats", "2", "--caller-rows", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert all(row[f"caller_{k}_s"] > 0 for k in ("eager", "l1ext", "floor"))
    assert "engine on the caller" in capsys.readouterr().out


def test_layouts_script_runs(tmp_path, capsys):
    # benchmarks/layouts.py on a tiny CPU run: both sides of every layout, loss and pass timed.
    layouts = _benchmark_script("layouts")
    out = tmp_path / "l.json"
    assert layouts.main(["--device", "cpu", "--rows", "8", "--cols", "4", "--steps", "2",
                         "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    # (torch's Huber backward raises for operands of two dtypes: two passes of three cases)
    assert len(rows) + len(result["refused_by_torch"]) == 9 * 3 * 3
    assert len(rows) >= 9 * 3 * 3 - 6 and all(r["eager_s"] > 0 and r["l1ext_s"] > 0 for r in rows)
    assert "share of eager torch's" in capsys.readouterr().out


def test_kernels_script_runs(capsys):
    # benchmarks/kernels.py on a tiny CPU run: both implementations profiled, their operators
    # listed (l1ext's fused forward among them).
    kernels = _benchmark_script("kernels")
    assert kernels.main(["--device", "cpu", "--loss", "smooth_l1", "--dtype", "float32",
                         "--n", "4096", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "eager: wall" in out and "l1ext: wall" in out
    assert "l1ext::smooth_l1_loss_forward" in out and "aten::smooth_l1_loss" in out
    # --boxes: the weighted box loss, the eager composition beside l1ext's fused operator
    assert kernels.main(["--device", "cpu", "--boxes", "64", "--dtype", "float32", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "eager composition: wall" in out and "aten::mul" in out
    assert "l1ext: wall" in out and "l1ext::weighted_loss" in out


def test_targets_judged_from_a_saved_result(tmp_path, capsys):
    # benchmarks/targets.py --from-json judges a saved bench result (the committed CPU run; the
    # same rows relabelled as a GPU run get the GPU targets) and names a row that is missing.
    targets = _benchmark_script("targets")
    saved = ROOT / "benchmarks" / "results" / "cpu-targets.json"
    assert targets.main(["--from-json", str(saved)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.endswith(("yes", "NO")) for line in lines) == 3 * 2 * 3
    result = json.loads(saved.read_text())
    ours = next(r for r in result["rows"] if (r["loss"], r["dtype"], r["n"], r["pass"], r["impl"])
                == ("l1", "float32", 2**24, "fwdbwd", "l1ext"))
    for speedup, met in ((2.99, False), (3.0, True)):
        ours["speedup_vs_eager"] = speedup
        label, value, ok = targets.check_targets(result)[0]
        assert label == "l1 float32 2^24 fwdbwd vs eager >= 3.0x" and (value, ok) == (speedup, met)
    result["meta"]["device"] = "cuda"
    for r in result["rows"]:
        r["n"] = 2**26 if r["n"] == 2**24 else r["n"]
        r["fraction_of_copy"] = 0.95
    gpu = targets.check_targets(result)
    assert len(gpu) == 3 * 2 * 5 and sum("bandwidth" in c[0] for c in gpu) == 12
    result["meta"]["compile_mode"] = "reduce-overhead"
    with pytest.raises(ValueError, match="default mode"):
        targets.check_targets(result)
    result["meta"]["compile_mode"] = "default"
    result["rows"] = [r for r in result["rows"] if not (r["loss"] == "huber" and r["n"] == 4096)]
    with pytest.raises(KeyError, match="huber"):
        targets.check_targets(result)


def test_compile_mode_is_used_and_recorded(monkeypatch):
    """--compile-mode reaches torch.compile, the JSON's meta and the table; on a GPU the modes
    that replay CUDA graphs begin a new step before each call of the compiled function."""
    seen = []
    real_compile = torch.compile

    def recording_compile(fn, **kw):
        seen.append(kw)
        return real_compile(fn, **kw)

    monkeypatch.setattr(torch, "compile", recording_compile)
    args = bench.resolve(bench.build_parser().parse_args(
        ["--device", "cpu", "--losses", "huber", "--dtypes", "float32", "--sizes", "64",
         "--passes", "fwdbwd", "--compile-mode", "reduce-overhead", "--min-time", "0.001",
         "--no-progress"]))
    result = bench.run(args)
    assert seen == [{"dynamic": False, "mode": "reduce-overhead"}]
    assert result["meta"]["compile_mode"] == "reduce-overhead"
    assert "compiled = torch.compile(mode='reduce-overhead')" in bench.format_table(result)
    assert {r["impl"] for r in result["rows"]} == {"eager", "compiled", "l1ext"}

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    x, y = torch.randn(8), torch.randn(8)
    for mode, device, want in (("default", "cpu", 0), ("reduce-overhead", "cpu", 0),
                               ("max-autotune-no-cudagraphs", "cuda", 0),
                               ("reduce-overhead", "cuda", 1), ("max-autotune", "cuda", 1)):
        seen.clear()
        marks.clear()
        impls = bench.implementations("l1", True, mode, torch.device(device))
        assert seen == [{"dynamic": False, "mode": None if mode == "default" else mode}]
        torch.testing.assert_close(impls["compiled"](x, y, "mean"), impls["eager"](x, y, "mean"))
        assert len(marks) == want, (mode, device)
