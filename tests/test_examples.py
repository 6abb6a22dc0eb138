"""Smoke test: the examples run and say what they claim."""
import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_box_regression(capsys):
    ours, ref = _load("box_regression").main(["--steps", "40", "--boxes", "512", "--device", "cpu"])
    assert ours[-1] < 0.5 * ours[0]  # it trains
    assert "loss curves agree" in capsys.readouterr().out


def test_robust_regression(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fit.png"
    fits = _load("robust_regression").main(["--out", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG"
    l1_slope, l2_slope = float(fits["L1 (median)"][0]), float(fits["L2"][0])
    assert abs(l1_slope - 2.0) < 0.1 < abs(l2_slope - 2.0)  # the median fit ignores the outliers
    assert fits["quantile 0.1"][1] < fits["L1 (median)"][1] < fits["quantile 0.8"][1]
