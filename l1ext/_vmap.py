"""Batching rules (torch.func.vmap) for the l1ext losses: the batched call is one call of the
'none' kernel over the whole batch, then a per-sample sum or mean; without them vmap would loop
over the batch one sample at a time."""
import torch


def _batched(value, bdim, size):
    if bdim is None:
        return value.expand(size, *value.shape)
    return value.movedim(bdim, 0)


def _rule(op):
    def rule(info, in_dims, input, target, reduction=1, *params):
        x = _batched(input, in_dims[0], info.batch_size)
        y = _batched(target, in_dims[1], info.batch_size)
        out = op(x, y, 0, *params)
        if reduction == 0:
            return out, 0
        dims = tuple(range(1, out.dim()))
        if not dims:
            return out, 0
        return (out.sum(dims) if reduction == 2 else out.mean(dims)), 0

    return rule


for _name in ("l1_loss", "smooth_l1_loss", "huber_loss"):
    torch.library.register_vmap(f"l1ext::{_name}", _rule(getattr(torch.ops.l1ext, _name).default))
