"""DistributedDataParallel on 2 CPU processes (gloo): training with each l1ext loss matches the
same training with torch's built-ins, losses and parameters."""
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, out_dir):
    """Runs worker(rank, 2, port, out_dir) on 2 processes. A process that gloo aborts with
    SIGABRT ("terminate called without an active exception": a std::thread destroyed while
    joinable, most likely in torch's gloo backend, as l1ext creates none; seen in one of six full
    CI runs, never in 120 runs of this file alone) fails one attempt: the run is repeated once, on
    a fresh port, and a second abort fails the test."""
    for attempt in (1, 2):
        try:
            mp.spawn(worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
            return
        except mp.ProcessExitedException as e:
            if attempt == 2 or e.signal_name != "SIGABRT":
                raise
            warnings.warn(f"gloo worker aborted, run repeated: {e}")


class _ProcessGroup:
    """gloo process group of this rank, on loopback, for the duration of a with-block."""

    def __init__(self, rank, world, port):
        self.rank, self.world, self.port = rank, world, port

    def __enter__(self):
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(self.port)
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world)
        return self

    def __exit__(self, *exc):
        # Every rank past its last collective before any tears the group down: a rank that
        # destroys it while the other still waits on a gloo pair can abort that one
        # ("terminate called without an active exception", seen about once in ten runs).
        if exc[0] is None:
            dist.barrier()
        dist.destroy_process_group()
        return False


def _train(rank, make_loss):
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    loss_fn = make_loss()
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
    losses = []
    for _ in range(STEPS):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g) * 2
        opt.zero_grad()
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


def _worker(rank, world, port, out_dir):
    import l1ext

    with _ProcessGroup(rank, world, port):
        results = {}
        pairs = {
            "l1": (lambda: l1ext.L1Loss(), lambda: torch.nn.L1Loss()),
            "smooth_l1": (lambda: l1ext.SmoothL1Loss(beta=0.5), lambda: torch.nn.SmoothL1Loss(beta=0.5)),
            "huber": (lambda: l1ext.HuberLoss(delta=0.7, reduction="sum"),
                      lambda: torch.nn.HuberLoss(delta=0.7, reduction="sum")),
        }
        for name, (ours, theirs) in pairs.items():
            results[name] = (_train(rank, ours), _train(rank, theirs))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_ddp_gloo_two_processes(tmp_path):
    _spawn(_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ranks[0]:
        for rank in ranks:
            (ours_losses, ours_params), (torch_losses, torch_params) = rank[name]
            torch.testing.assert_close(ours_losses, torch_losses)
            for a, b in zip(ours_params, torch_params):
                torch.testing.assert_close(a, b)
        # DDP kept the replicas identical, and the ranks saw different data.
        for a, b in zip(ranks[0][name][0][1], ranks[1][name][0][1]):
            torch.testing.assert_close(a, b)
        assert not torch.equal(ranks[0][name][0][0], ranks[1][name][0][0])


def _dtensor_worker(rank, world, port, out_dir):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import l1ext.functional as LF

    with _ProcessGroup(rank, world, port):
        mesh = init_device_mesh("cpu", (world,))
        failures = []
        for shape in [(8, 6), (7, 5, 3)]:  # even and uneven shards
            g = torch.Generator().manual_seed(5)
            x, y = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            for name in ("l1_loss", "smooth_l1_loss", "huber_loss"):
                fn = getattr(LF, name)
                for reduction in ("none", "mean", "sum"):
                    xf, yf = x.clone().requires_grad_(), y.clone().requires_grad_()
                    ref = fn(xf, yf, reduction=reduction)
                    ref.backward(torch.ones_like(ref))
                    for d in range(len(shape)):
                        dx = distribute_tensor(x.clone(), mesh, [Shard(d)]).requires_grad_()
                        dy = distribute_tensor(y.clone(), mesh, [Shard(d)]).requires_grad_()
                        out = fn(dx, dy, reduction=reduction)
                        out.backward(torch.ones_like(out))
                        try:
                            torch.testing.assert_close(out.full_tensor(), ref.detach())
                            torch.testing.assert_close(dx.grad.full_tensor(), xf.grad)
                            torch.testing.assert_close(dy.grad.full_tensor(), yf.grad)
                        except AssertionError as e:
                            failures.append(f"{name} {reduction} {shape} Shard({d}): {e}")
        import l1ext._dtensor

        if not l1ext._dtensor._registered:
            failures.append("the DTensor calls never reached l1ext's operators")
        torch.save(failures, os.path.join(out_dir, f"dtensor{rank}.pt"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_dtensor_sharded_any_dim(tmp_path):
    _spawn(_dtensor_worker, str(tmp_path))
    for r in range(2):
        failures = torch.load(tmp_path / f"dtensor{r}.pt")
        assert not failures, "\n".join(failures[:5])
