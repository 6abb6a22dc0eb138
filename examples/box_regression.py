"""Trains a small box-regression head on synthetic boxes twice, side by side: with l1ext's fused
weighted Smooth L1 and with the eager composition detection code writes around torch's
built-in. Same initialisation, same data: the loss curves agree to tolerance; prints the time per
step of each.

    python examples/box_regression.py [--steps 200] [--boxes 4096] [--device cpu]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import l1ext


TRUE_W = torch.randn(32, 4, generator=torch.Generator().manual_seed(7)) * 0.3


def make_data(n, device, generator):
    # Features of anchors and the offsets (dx, dy, dw, dh) of their matched boxes, with about a
    # quarter of anchors positive (weight 1) and the rest ignored (weight 0).
    feats = torch.randn(n, 32, generator=generator).to(device)
    targets = feats @ TRUE_W.to(device) + 0.05 * torch.randn(n, 4, generator=generator).to(device)
    weights = (torch.rand(n, generator=generator) < 0.25).float().to(device)
    return feats, targets, weights


def head(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).to(device)


def l1ext_loss(pred, target, weight, avg_factor):
    return l1ext.functional.smooth_l1_loss(pred, target, beta=1 / 9, weight=weight, avg_factor=avg_factor)


def eager_loss(pred, target, weight, avg_factor):
    loss = F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="none") * weight[:, None]
    return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)


def train(loss_fn, steps, n, device):
    model = head(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses, times = [], []
    for _ in range(steps):
        feats, targets, weights = make_data(n, device, g)
        avg_factor = max(float(weights.sum()), 1.0)
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(feats), targets, weights, avg_factor)
        loss.backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--boxes", type=int, default=4096)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    ours, t_ours = train(l1ext_loss, a.steps, a.boxes, a.device)
    ref, t_ref = train(eager_loss, a.steps, a.boxes, a.device)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(ref), rtol=1e-3, atol=1e-5)
    for step in list(range(0, a.steps, max(a.steps // 5, 1))) + [a.steps - 1]:
        print(f"step {step:4d}  loss l1ext {ours[step]:.6f}  eager torch {ref[step]:.6f}")
    mo, mr = statistics.median(t_ours[5:]), statistics.median(t_ref[5:])
    print(f"median time per training step ({a.boxes} boxes, {a.device}): l1ext {mo * 1e6:.0f} us, "
          f"eager torch {mr * 1e6:.0f} us (the whole step, model and optimizer included)")
    print("loss curves agree to tolerance")
    return ours, ref


if __name__ == "__main__":
    main()
