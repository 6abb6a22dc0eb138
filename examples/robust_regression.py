"""Fits a line to data with outliers by L1, Huber, L2 and several quantiles (l1ext's losses,
plain gradient descent) and saves a plot: the L1 fit is the conditional median and ignores the
outliers that pull L2 off; the quantile fits bound the data.

    python examples/robust_regression.py [--out robust_regression.png]
"""
import argparse

import torch

import l1ext.functional as LF


def data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g) * 10
    noise = torch.randn(n, generator=g) * (0.3 + 0.1 * x)  # spread grows with x
    y = 2.0 * x + 1.0 + noise
    outliers = torch.rand(n, generator=g) < 0.08
    y[outliers] += 25.0 + 10 * torch.rand(int(outliers.sum()), generator=g)  # gross upward errors
    return x, y, outliers


def fit(x, y, loss_fn, steps=3000, lr=0.05):
    params = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(params[0] * x + params[1], y).backward()
        opt.step()
    return params.detach()


FITS = {
    "L1 (median)": lambda p, t: LF.l1_loss(p, t),
    "Huber (delta=1)": lambda p, t: LF.huber_loss(p, t, delta=1.0),
    "L2": lambda p, t: torch.nn.functional.mse_loss(p, t),
    "quantile 0.1": lambda p, t: LF.quantile_loss(p, t, 0.1),
    "quantile 0.8": lambda p, t: LF.quantile_loss(p, t, 0.8),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="robust_regression.png")
    a = p.parse_args(argv)
    x, y, outliers = data()
    fits = {name: fit(x, y, fn) for name, fn in FITS.items()}
    for name, (slope, intercept) in fits.items():
        print(f"{name:16s} slope {slope:6.3f}  intercept {intercept:6.3f}")
    inliers = ~outliers
    below = {q: float((y[inliers] < fits[f'quantile {q}'][0] * x[inliers] + fits[f'quantile {q}'][1]).float().mean())
             for q in (0.1, 0.8)}
    print(f"true line: slope 2.000 intercept 1.000; share of inliers below the 0.1 / 0.8 quantile "
          f"lines: {below[0.1]:.2f} / {below[0.8]:.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x[inliers], y[inliers], s=6, color="tab:gray", label="data")
    ax.scatter(x[outliers], y[outliers], s=10, color="black", marker="x", label="outliers")
    xs = torch.linspace(0, 10, 50)
    styles = {"L1 (median)": ("tab:red", "-"), "Huber (delta=1)": ("tab:orange", "--"),
              "L2": ("tab:blue", "-"), "quantile 0.1": ("tab:green", ":"), "quantile 0.8": ("tab:green", ":")}
    for name, (slope, intercept) in fits.items():
        color, ls = styles[name]
        ax.plot(xs, slope * xs + intercept, ls, color=color, lw=2, label=name)
    lo, hi = fits["quantile 0.1"], fits["quantile 0.8"]
    ax.fill_between(xs, lo[0] * xs + lo[1], hi[0] * xs + hi[1], color="tab:green", alpha=0.1,
                    label="0.1-0.8 quantile band")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("Robust regression with l1ext: L1 (median) ignores the outliers that pull L2 up")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return fits


if __name__ == "__main__":
    main()
