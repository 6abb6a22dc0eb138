"""DTensor support: sharding rules for the l1ext operators, registered the first time a DTensor
reaches l1ext (importing torch.distributed.tensor eagerly would slow every import of l1ext).

Pointwise work follows the operands' sharding along any dimension: 'none' stays sharded, 'sum'
becomes a Partial("sum") scalar, and the backward runs shard by shard. A 'mean' divides by the
element count, which a shard does not know: the functional computes it as the sum over the global
count instead, and a direct 'mean' call on shards is answered replicated."""
import sys

import torch

_registered = False
_NONE, _MEAN, _SUM = 0, 1, 2


def is_dtensor(t) -> bool:
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def _loss_rules(x, reduction, n_outputs, n_extra):
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import Partial

    extra = [None] * n_extra
    rules = [([Replicate()] * n_outputs, [Replicate(), Replicate(), *extra])]
    if reduction == _MEAN:
        return rules
    for d in range(x.ndim):
        loss = Shard(d) if reduction == _NONE else Partial("sum")
        outs = [loss] + [Shard(d)] * (n_outputs - 1)  # (the L1 sign is shaped like the input)
        rules.append((outs, [Shard(d), Shard(d), *extra]))
    return rules


def _backward_rules(x, reduction, output_mask, n_before, n_after):
    """Inputs (grad_output, *n_before sharded tensors, *n_after non-tensors)."""
    from torch.distributed.tensor import Replicate, Shard

    masked = [Replicate()] * 2  # an output the mask leaves out is an empty (0,) tensor
    rules = [([Replicate(), Replicate()], [Replicate()] * (1 + n_before) + [None] * n_after)]
    if reduction == _MEAN:
        return rules
    for d in range(x.ndim):
        outs = [Shard(d) if need else masked[k] for k, need in enumerate(output_mask)]
        go = Shard(d) if reduction == _NONE else Replicate()
        rules.append((outs, [go] + [Shard(d)] * n_before + [None] * n_after))
    return rules


def ensure_registered():
    global _registered
    if _registered:
        return
    from torch.distributed.tensor.experimental import register_sharding

    ops = torch.ops.l1ext

    @register_sharding(ops.l1_loss.default)
    def _l1(input, target, reduction=1):
        return _loss_rules(input, reduction, 1, 1)

    @register_sharding(ops.l1_loss_forward.default)
    def _l1_forward(input, target, reduction):
        return _loss_rules(input, reduction, 2, 1)

    @register_sharding([ops.smooth_l1_loss.default, ops.huber_loss.default])
    def _pointwise(input, target, reduction=1, param=1.0):
        return _loss_rules(input, reduction, 1, 2)

    @register_sharding(ops.l1_loss_backward.default)
    def _l1_backward(grad_output, sign, reduction, dtype, output_mask):
        return _backward_rules(sign, reduction, output_mask, 1, 3)

    @register_sharding([ops.smooth_l1_loss_backward.default, ops.huber_loss_backward.default])
    def _pointwise_backward(grad_output, input, target, reduction, param, output_mask):
        return _backward_rules(input, reduction, output_mask, 2, 3)

    _registered = True
