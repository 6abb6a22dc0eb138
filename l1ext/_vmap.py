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


_EPS32 = torch.finfo(torch.float32).eps


def _per_sample_operand(t, bdim, sample, batch, dtype, acc, rows_by_dropped_dim):
    """A weight or parameter of one sample (of shape `sample`) in a form that broadcasts to the
    batch (batch, *sample) as the operator broadcasts it to one sample (weighted_glue.h's
    classify): one element is a scalar, a weight of the sample's shape without its last dimension
    is one per row. Rounded to the input's dtype, as the kernels read it, then in `acc`."""
    if t is None:
        return None
    t = t.to(dtype).to(acc)
    if bdim is not None:
        t = t.movedim(bdim, 0)
    shape = t.shape if bdim is None else t.shape[1:]
    if shape.numel() == 1:
        shape = torch.Size()
    elif rows_by_dropped_dim and len(sample) >= 1 and shape == sample[:-1]:
        shape = shape + (1,)
    if bdim is None:
        return t.reshape(shape)
    return t.reshape((batch,) + (1,) * (len(sample) - len(shape)) + shape).expand((batch,) + sample)


def _weighted_rule(info, in_dims, input, target, weight, param, avg_factor, kind, param_value,
                   avg_value, loss_weight, reduction):
    """The batch's elementwise weighted loss in one 'none' call (loss_weight applied), then each
    sample's sum, mean or sum / (avg_factor + eps). 16-bit inputs are computed in float32, as the
    kernels accumulate them, and rounded once."""
    batch = info.batch_size
    x = _batched(input, in_dims[0], batch)
    y = _batched(target, in_dims[1], batch)
    sample = x.shape[1:]
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    has_avg = avg_factor is not None or avg_value is not None
    if has_avg and reduction == 2:
        raise RuntimeError('avg_factor can not be used with reduction="sum"')
    w = _per_sample_operand(weight, in_dims[2], sample, batch, dtype, acc, True)
    p = _per_sample_operand(param, in_dims[3], sample, batch, dtype, acc, False)
    out = torch.ops.l1ext.weighted_loss.default(x.to(acc), y.to(acc), w, p, None, kind,
                                                param_value, None, loss_weight, 0)
    if reduction == 0:
        return out.to(dtype), 0
    total = out.sum(tuple(range(1, out.dim())))
    if reduction == 2:
        return total.to(dtype), 0
    if not has_avg:
        return (total / sample.numel()).to(dtype), 0
    if avg_factor is None:
        divisor = avg_value + _EPS32
    else:
        # avg_factor + eps in avg_factor's own precision, as the operator adds them
        a = avg_factor if in_dims[4] is None else avg_factor.movedim(in_dims[4], 0)
        a = a.reshape(()) if in_dims[4] is None else a.reshape(batch)
        if a.device != out.device and in_dims[4] is None:
            divisor = a.item() + _EPS32  # a host number for a loss on a GPU, as there
        else:
            a = a.to(out.device)
            divisor = (a + _EPS32 if a.dtype == torch.float64 else a.float() + _EPS32).double()
    return (total.double() / divisor).to(dtype), 0


torch.library.register_vmap("l1ext::weighted_loss", _weighted_rule)
