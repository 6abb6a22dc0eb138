"""Drop-in twins of torch.nn.functional.l1_loss, smooth_l1_loss and huber_loss.

Argument handling mirrors torch 2.13's own Python code line for line (torch_function dispatch,
the size-mismatch warning, legacy size_average/reduce, broadcasting, reduction errors, weights);
the loss itself runs in l1ext's fused kernels. Calls those kernels do not serve (integer, bool or
complex dtypes, a device without l1ext kernels, mixed devices, non-number beta/delta, sparse
tensors) go to torch's own operator, so their results and errors are torch's.
"""
import warnings

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import _C  # noqa: F401  (registers torch.ops.l1ext)
from . import _meta  # noqa: F401  (fake implementations)
from . import _vmap  # noqa: F401  (batching rules)

__all__ = ["l1_loss", "smooth_l1_loss", "huber_loss"]

_l1_op = torch.ops.l1ext.l1_loss.default
_smooth_l1_op = torch.ops.l1ext.smooth_l1_loss.default
_huber_op = torch.ops.l1ext.huber_loss.default

_KERNEL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_KERNEL_DEVICES = frozenset(
    ["cpu", "meta"]
    + (["cuda"] if torch._C._dispatch_has_kernel_for_dispatch_key("l1ext::l1_loss", "CUDA") else [])
)


def _warn_if_sizes_differ(input: Tensor, target: Tensor) -> None:
    # torch's exact warning; stacklevel points at the caller of the public function.
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=3,
        )


def _broadcast(input: Tensor, target: Tensor):
    if input.shape == target.shape:
        return input, target
    return torch.broadcast_tensors(input, target)


def _kernel_dtype(input: Tensor, target: Tensor):
    """The dtype l1ext computes in, or None where torch's own operator must serve the call."""
    if not (input.is_cpu and target.is_cpu):  # the common case skips building device objects
        if input.device != target.device or input.device.type not in _KERNEL_DEVICES:
            return None
    if input.layout is not torch.strided or target.layout is not torch.strided:
        return None
    dtype = input.dtype
    if dtype is not target.dtype:
        if target.dtype is torch.bool:  # torch refuses to subtract bool tensors
            return None
        dtype = torch.promote_types(dtype, target.dtype)
    return dtype if dtype in _KERNEL_DTYPES else None


def _cast(t: Tensor, dtype) -> Tensor:
    return t if t.dtype is dtype else t.to(dtype)


def _l1(input: Tensor, target: Tensor, reduction: int) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None:
        return torch._C._nn.l1_loss(input, target, reduction)
    return _l1_op(_cast(input, dtype), _cast(target, dtype), reduction)


def _smooth_l1(input: Tensor, target: Tensor, reduction: int, beta) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None or not isinstance(beta, (int, float)):
        return torch._C._nn.smooth_l1_loss(input, target, reduction, beta)
    return _smooth_l1_op(_cast(input, dtype), _cast(target, dtype), reduction, float(beta))


def _huber(input: Tensor, target: Tensor, reduction: int, delta) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None or input.dtype not in _KERNEL_DTYPES or not isinstance(delta, (int, float)):
        return torch._C._nn.huber_loss(input, target, reduction, delta)
    loss = _huber_op(_cast(input, dtype), _cast(target, dtype), reduction, float(delta))
    if dtype is input.dtype or torch.is_autocast_enabled(input.device.type):
        return loss  # (under autocast: float32, as torch's, which is on autocast's float32 list)
    # torch's huber_loss answers in the input's dtype, computed in the promoted one.
    return loss.to(input.dtype)


def _invalid_reduction(reduction):
    return ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    r"""Mean absolute error, as :func:`torch.nn.functional.l1_loss`, computed by l1ext.

    With ``weight`` (the input's size), the loss is ``|input - target| * weight``; 'mean' divides
    its sum by ``weight.sum()``, as torch does.
    """
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            l1_loss, (input, target, weight), input, target,
            size_average=size_average, reduce=reduce, reduction=reduction, weight=weight,
        )
    _warn_if_sizes_differ(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    expanded_input, expanded_target = _broadcast(input, target)
    if weight is None:
        return _l1(expanded_input, expanded_target, _Reduction.get_enum(reduction))
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    weighted = _l1(expanded_input, expanded_target, 0) * weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return torch.sum(weighted)
    if reduction == "mean":
        return torch.sum(weighted) / torch.sum(weight)
    raise _invalid_reduction(reduction)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    r"""Smooth L1 loss, as :func:`torch.nn.functional.smooth_l1_loss`, computed by l1ext.

    ``beta == 0`` is exactly the L1 loss (values and gradients), as in torch.
    """
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            smooth_l1_loss, (input, target), input, target,
            size_average=size_average, reduce=reduce, reduction=reduction, beta=beta,
        )
    _warn_if_sizes_differ(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    expanded_input, expanded_target = _broadcast(input, target)
    if beta == 0.0:
        return _l1(expanded_input, expanded_target, _Reduction.get_enum(reduction))
    return _smooth_l1(expanded_input, expanded_target, _Reduction.get_enum(reduction), beta)


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    r"""Huber loss, as :func:`torch.nn.functional.huber_loss`, computed by l1ext.

    The result has the input's dtype (torch's rule). With ``weight`` (the input's size) the loss
    is ``huber * weight`` and 'mean' is its plain mean, as torch does.
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            huber_loss, (input, target, weight), input, target,
            reduction=reduction, delta=delta, weight=weight,
        )
    _warn_if_sizes_differ(input, target)
    expanded_input, expanded_target = _broadcast(input, target)
    if weight is None:
        return _huber(expanded_input, expanded_target, _Reduction.get_enum(reduction), delta)
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    weighted = _huber(expanded_input, expanded_target, 0, delta) * weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return torch.sum(weighted)
    if reduction == "mean":
        return weighted.mean()
    raise _invalid_reduction(reduction)
