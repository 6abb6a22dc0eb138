"""Fake (meta) implementations of the l1ext operators, for torch.compile, torch.export and
torch.library.opcheck. They mirror the output metadata of the C++ kernels exactly: see
kernel_layout() and none_loss_strides() in csrc/glue.h for the layout rules."""
import torch
from torch._prims_common import compute_elementwise_output_strides
from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense

_NONE = 0


def _check(name, input, target, reduction, kind=None, param=None):
    # The checks of csrc/glue.h, so a fake or meta call fails where a real one would.
    torch._check(reduction in (0, 1, 2),
                 lambda: f"l1ext: reduction must be 0 ('none'), 1 ('mean') or 2 ('sum'), got {reduction}")
    torch._check(input.device == target.device, lambda: f"{name}: expected input and target on the "
                 f"same device, got {input.device} and {target.device}")
    torch._check(input.shape == target.shape, lambda: f"{name}: expected input and target of the "
                 f"same size (broadcast them first), got {list(input.shape)} and {list(target.shape)}")
    torch._check(input.dtype == target.dtype, lambda: f"{name}: expected input and target of the "
                 f"same dtype (promote them first), got {input.dtype} and {target.dtype}")
    if kind == "beta":
        torch._check(param >= 0, lambda: "smooth_l1_loss does not support negative values for beta.")
    elif kind == "delta":
        torch._check(param > 0, lambda: "huber_loss does not support non-positive values for delta.")


def _like_operands(input, target, dtype=None):
    # An input that covers its storage densely keeps its layout (the target is copied into it
    # where its strides differ); any other input is processed (and answered) contiguous.
    dtype = input.dtype if dtype is None else dtype
    if is_non_overlapping_and_dense(input):
        return torch.empty_like(input, dtype=dtype)
    return input.new_empty(input.shape, dtype=dtype)


def _none_loss(input, target, huber, dtype=None):
    # A 'none' loss (and L1's sign) in torch's layout (glue.h none_loss_strides): a dense input's;
    # for another input, Huber's empty_like(input), L1's and Smooth L1's TensorIterator order over
    # input and target.
    dtype = input.dtype if dtype is None else dtype
    if is_non_overlapping_and_dense(input) or huber:
        return torch.empty_like(input, dtype=dtype)
    return input.new_empty_strided(input.shape, compute_elementwise_output_strides(input, target),
                                   dtype=dtype)


def _loss(input, target, reduction, huber=False):
    if reduction == _NONE:
        return _none_loss(input, target, huber)
    return input.new_empty(())


def _grads(like, output_mask, dtype):
    return tuple(
        torch.empty_like(like, dtype=dtype) if need else like.new_empty((0,), dtype=dtype)
        for need in output_mask
    )


@torch.library.register_fake("l1ext::l1_loss")
def _l1_loss(input, target, reduction=1):
    _check("l1_loss", input, target, reduction)
    return _loss(input, target, reduction)


@torch.library.register_fake("l1ext::l1_loss_forward")
def _l1_loss_forward(input, target, reduction):
    _check("l1_loss", input, target, reduction)
    sign = (_none_loss(input, target, False, torch.int8) if reduction == _NONE
            else _like_operands(input, target, torch.int8))
    return _loss(input, target, reduction), sign


@torch.library.register_fake("l1ext::l1_loss_backward")
def _l1_loss_backward(grad_output, sign, reduction, dtype, output_mask):
    like = sign if is_non_overlapping_and_dense(sign) else sign.new_empty(sign.shape)
    return _grads(like, output_mask, dtype)


@torch.library.register_fake("l1ext::smooth_l1_loss")
def _smooth_l1_loss(input, target, reduction=1, beta=1.0):
    _check("smooth_l1_loss", input, target, reduction, "beta", beta)
    return _loss(input, target, reduction)


@torch.library.register_fake("l1ext::huber_loss")
def _huber_loss(input, target, reduction=1, delta=1.0):
    _check("huber_loss", input, target, reduction, "delta", delta)
    return _loss(input, target, reduction, huber=True)


@torch.library.register_fake("l1ext::smooth_l1_loss_forward")
def _smooth_l1_loss_forward(input, target, reduction, beta, output_mask):
    _check("smooth_l1_loss", input, target, reduction, "beta", beta)
    return (_loss(input, target, reduction),
            *_grads(_like_operands(input, target), output_mask, input.dtype))


@torch.library.register_fake("l1ext::huber_loss_forward")
def _huber_loss_forward(input, target, reduction, delta, output_mask):
    _check("huber_loss", input, target, reduction, "delta", delta)
    return (_loss(input, target, reduction, huber=True),
            *_grads(_like_operands(input, target), output_mask, input.dtype))


def _pointwise_backward(grad_output, input, target, reduction, param, output_mask):
    _check("loss_backward", input, target, reduction)
    return _grads(_like_operands(input, target), output_mask, input.dtype)


torch.library.register_fake("l1ext::smooth_l1_loss_backward")(_pointwise_backward)
torch.library.register_fake("l1ext::huber_loss_backward")(_pointwise_backward)


def _check_weighted_devices(input, weight, param, avg_factor):
    # The device checks of csrc/weighted_glue.h (classify, checked_host_avg).
    for what, t in (("weight", weight), ("parameter", param)):
        torch._check(t is None or t.device == input.device,
                     lambda: f"l1ext: {what} on {t.device} for an input on {input.device}")
    torch._check(avg_factor is None or avg_factor.device == input.device
                 or (avg_factor.device.type == "cpu" and avg_factor.numel() == 1),
                 lambda: f"l1ext: avg_factor on {avg_factor.device} for an input on {input.device}")


@torch.library.register_fake("l1ext::weighted_loss")
def _weighted_loss(input, target, weight, param, avg_factor, kind, param_value, avg_value,
                   loss_weight, reduction):
    _check("weighted_loss", input, target, reduction)
    _check_weighted_devices(input, weight, param, avg_factor)
    return input.new_empty(input.shape) if reduction == _NONE else input.new_empty(())


@torch.library.register_fake("l1ext::weighted_loss_forward")
def _weighted_loss_forward(input, target, weight, param, avg_factor, kind, param_value, avg_value,
                           loss_weight, reduction, output_mask):
    loss = _weighted_loss(input, target, weight, param, avg_factor, kind, param_value, avg_value,
                          loss_weight, reduction)
    return (loss, *(input.new_empty(input.shape) if need else input.new_empty((0,)) for need in output_mask))


@torch.library.register_fake("l1ext::weighted_loss_backward")
def _weighted_loss_backward(grad_output, input, target, weight, param, avg_factor, kind,
                            param_value, avg_value, loss_weight, reduction, output_mask):
    _check("weighted_loss_backward", input, target, reduction)
    _check_weighted_devices(input, weight, param, avg_factor)
    gi = input.new_empty(input.shape) if output_mask[0] else input.new_empty((0,))
    gt = input.new_empty(input.shape) if output_mask[1] else input.new_empty((0,))
    gw = weight.new_empty(weight.shape) if (output_mask[2] and weight is not None) else input.new_empty((0,))
    return gi, gt, gw
