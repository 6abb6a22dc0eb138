"""Drop-in twins of torch.nn.functional.l1_loss, smooth_l1_loss and huber_loss.

Argument handling mirrors torch 2.13's own Python code line for line (torch_function dispatch,
the size-mismatch warning, legacy size_average/reduce, broadcasting, reduction errors, weights);
the loss itself runs in l1ext's fused kernels. Calls those kernels do not serve (integer, bool or
complex dtypes, a device without l1ext kernels, mixed devices, non-number beta/delta, sparse
tensors) go to torch's own operator, so their results and errors are torch's.
"""
import numbers
import warnings

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import _C  # registers torch.ops.l1ext
from . import _dtensor
from . import _script
from . import _meta  # noqa: F401  (fake implementations)
from . import _vmap  # noqa: F401  (batching rules)

__all__ = ["l1_loss", "smooth_l1_loss", "huber_loss", "quantile_loss"]

_l1_op = torch.ops.l1ext.l1_loss.default
_smooth_l1_op = torch.ops.l1ext.smooth_l1_loss.default
_huber_op = torch.ops.l1ext.huber_loss.default
_weighted_op = torch.ops.l1ext.weighted_loss.default

# Loss kinds of the weighted operator (csrc/loss_kind.h).
_L1, _SMOOTH_L1, _HUBER, _QUANTILE = 0, 1, 2, 3
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}

# The common call (plain same-size tensors of one kernel dtype and device, a reduction string, a
# valid number beta/delta; and for the weighted convention a plain weight, a number or tensor
# avg_factor, a number loss_weight) is served by C++ (csrc/python/module.cpp), which answers None
# for anything else; torch.compile traces the Python path, which calls the same operators.
_loss_fast = _C.loss_fast
_is_compiling = torch.compiler.is_compiling

_KERNEL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_KERNEL_DEVICES = frozenset(
    ["cpu", "meta"]
    + (["cuda"] if torch._C._dispatch_has_kernel_for_dispatch_key("l1ext::l1_loss", "CUDA") else [])
)


def _given(**kwargs):
    """The keyword arguments beyond torch's own handle_torch_function call that a call gave,
    passed on to __torch_function__ overrides (a call in torch's terms passes exactly torch's
    keyword arguments). Overrides and modes receive l1ext's function as func, so that calling it
    (a mode such as torch.device's does) still runs l1ext's kernels."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _sizes_differ_message(input: Tensor, target: Tensor) -> str:
    return (f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.")


# Under torch.compile, warnings come from these two operators: Dynamo cannot trace warnings.warn
# outside torch (a graph break, an error under fullgraph), where torch's own losses are single
# nodes of the graph that warn while it is traced. The operators' fake implementations warn then
# too; they return nothing, so torch.compile's graphs drop them and their runs warn no more than
# torch's (an exported program keeps them: it warns when run, as eager code).
def _warn_sizes_differ(input: Tensor, target: Tensor) -> None:
    warnings.warn(_sizes_differ_message(input, target), stacklevel=2)


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=2)


_warn_sizes_differ_op = torch.library.custom_op("l1ext::warn_sizes_differ", _warn_sizes_differ, mutates_args=())
_warn_sizes_differ_op.register_fake(_warn_sizes_differ)
_warn_op = torch.library.custom_op("l1ext::warn", _warn, mutates_args=())
_warn_op.register_fake(_warn)


def _warn_if_sizes_differ(input: Tensor, target: Tensor) -> None:
    # torch's exact warning; stacklevel points at the caller of the public function.
    if target.size() != input.size():
        if _is_compiling():
            _warn_sizes_differ_op(input, target)
        else:
            warnings.warn(_sizes_differ_message(input, target), stacklevel=3)


def _legacy_reduction(size_average, reduce) -> str:
    """torch's _Reduction.legacy_get_string, with its deprecation warning (written out: Dynamo
    takes torch's function for a graph node, which cannot answer a str)."""
    if not _is_compiling():
        return _Reduction.legacy_get_string(size_average, reduce)
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    reduction = ("mean" if size_average else "sum") if reduce else "none"
    _warn_op(f"size_average and reduce args will be deprecated, please use reduction='{reduction}' instead.")
    return reduction


def _reduction_enum(reduction: str) -> int:
    """torch's _Reduction.get_enum, with its warning for 'elementwise_mean'."""
    if reduction == "elementwise_mean" and _is_compiling():
        _warn_op("reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.")
        return 1
    return _Reduction.get_enum(reduction)


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
        # A bool target is the input's dtype's 0 and 1, as in torch's Smooth L1 and Huber
        # forwards; l1ext's backwards take it too, where torch's Huber backward and Smooth L1
        # double backward raise. (torch's L1 refuses it: _l1.)
        dtype = torch.promote_types(dtype, target.dtype)
    return dtype if dtype in _KERNEL_DTYPES else None


def _cast(t: Tensor, dtype) -> Tensor:
    return t if t.dtype is dtype else t.to(dtype)


def _sharded(op, input, target, reduction, *param):
    """A DTensor call: the operators run shard by shard (l1ext/_dtensor.py); a 'mean' is the sum
    over the global element count, which no shard knows."""
    _dtensor.ensure_registered()
    if reduction == 1:
        return op(input, target, 2, *param) / input.numel()
    return op(input, target, reduction, *param)


def _l1(input: Tensor, target: Tensor, reduction: int) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None or input.dtype is torch.bool or target.dtype is torch.bool:
        return torch._C._nn.l1_loss(input, target, reduction)  # (its error: input - target)
    if type(input) is not Tensor and _dtensor.is_dtensor(input):
        return _sharded(_l1_op, _cast(input, dtype), _cast(target, dtype), reduction)
    return _l1_op(_cast(input, dtype), _cast(target, dtype), reduction)


def _smooth_l1(input: Tensor, target: Tensor, reduction: int, beta) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None or not isinstance(beta, (int, float)):
        return torch._C._nn.smooth_l1_loss(input, target, reduction, beta)
    if type(input) is not Tensor and _dtensor.is_dtensor(input):
        return _sharded(_smooth_l1_op, _cast(input, dtype), _cast(target, dtype), reduction, float(beta))
    return _smooth_l1_op(_cast(input, dtype), _cast(target, dtype), reduction, float(beta))


def _huber(input: Tensor, target: Tensor, reduction: int, delta) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None or input.dtype not in _KERNEL_DTYPES or not isinstance(delta, (int, float)):
        return torch._C._nn.huber_loss(input, target, reduction, delta)
    if type(input) is not Tensor and _dtensor.is_dtensor(input):
        loss = _sharded(_huber_op, _cast(input, dtype), _cast(target, dtype), reduction, float(delta))
    else:
        loss = _huber_op(_cast(input, dtype), _cast(target, dtype), reduction, float(delta))
    return _script.huber_in_input_dtype(loss, dtype, input)


def _weighted(kind, input, target, reduction, param, weight, avg_factor, loss_weight):
    """Detection-style weighted loss, mmdetection's weight_reduce_loss convention, in one fused
    operator: loss * weight, then 'mean' = sum / avg_factor (+ float32 eps) when avg_factor is
    given (else the mean), 'sum', or 'none'; times loss_weight. weight and a tensor parameter
    broadcast to the input; a weight of the input's shape without its last dimension is one
    weight per row (a per-box weight for boxes of shape (N, 4))."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if avg_factor is not None and reduction == "sum":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    scale = None
    loss_weight_number = None if isinstance(loss_weight, Tensor) else loss_weight
    if isinstance(loss_weight, Tensor):
        # loss_weight * loss, as the composition: a gradient for a learned loss weight, and no
        # host read of a device one.
        scale, loss_weight = loss_weight, 1.0
    else:
        loss_weight = 1.0 if loss_weight is None else float(loss_weight)
    expanded_input, expanded_target = _broadcast(input, target)
    # The dtype the composition answers in where it is not the one computed in, else None.
    answer = None
    if kind != _QUANTILE and (input.dtype is not target.dtype or not input.is_floating_point()):
        # Mixed or non-floating operands: torch's loss takes them (Smooth L1 and Huber a bool
        # target) or refuses them with its error; its Huber loss answers in the input's dtype.
        elementwise = _script.torch_loss_dtype(kind, _is_l1(kind, param), input.dtype, target.dtype)
        if target.dtype is torch.bool:
            expanded_target = expanded_target.to(elementwise)
        if kind == _HUBER:
            answer = _script.huber_dtype(input)
        elif not elementwise.is_floating_point:  # (integer operands of the L1 loss)
            avg = avg_factor if isinstance(avg_factor, Tensor) else None
            expanded_input, expanded_target, answer = _script.integer_loss_operands(
                expanded_input, expanded_target, weight, reduction, avg,
                avg_factor is not None and avg is None, loss_weight_number)
    dtype = _kernel_dtype(expanded_input, expanded_target)
    if dtype is None:
        raise NotImplementedError(
            f"l1ext weighted losses support floating dtypes on {sorted(_KERNEL_DEVICES)}, "
            f"got {input.dtype} and {target.dtype} on {input.device} and {target.device}")
    if answer is dtype:
        answer = None
    x = _cast(expanded_input, dtype)
    host_scale = None
    if (weight is not None and weight.dim() == 0 and x.dim() > 0 and weight.device.type == "cpu"
            and x.device.type != "cpu" and not weight.is_complex()):
        # A 0-d host weight for a loss on a device, which torch's operators take beside device
        # tensors. Read on the host, it scales as a number (no copy, no synchronisation); one
        # that needs a gradient, or a traced one, multiplies the result instead (loss * w is
        # linear in w), in the loss's dtype: a 0-d weight does not widen a dimensioned loss.
        if weight.requires_grad or _is_compiling():
            host_scale = weight
        else:
            loss_weight = loss_weight * float(weight)
        weight = None
    if weight is not None:
        # loss * weight is in torch's result type of the two (written out for torch.compile): a
        # float64 weight widens a float32 loss, a float32 weight a bfloat16 one, a 0-d weight does
        # not widen a dimensioned loss. The operator computes in the input's dtype, so the input
        # comes in that type.
        if weight.dim() > 0 or x.dim() == 0 or weight.is_complex():
            dtype = torch.promote_types(dtype, weight.dtype)
            if answer is not None:
                answer = torch.promote_types(answer, weight.dtype)
        if dtype not in _KERNEL_DTYPES:
            raise NotImplementedError(f"l1ext weighted losses support floating dtypes, got a {weight.dtype} weight")
        x = _cast(x, dtype)
        # A weight that widens the loss's shape gives a loss of that shape, as loss * weight does.
        widened = _script.shape_widened_by(list(x.shape), list(weight.shape))
        if widened is not None:
            x, expanded_target = x.expand(widened), expanded_target.expand(widened)
    y = _cast(expanded_target, dtype)
    avg_tensor = avg_factor if isinstance(avg_factor, Tensor) else None
    param_tensor = param if isinstance(param, Tensor) else None
    param_value = 0.0 if param_tensor is not None else float(param)
    if x.numel() == 0 and reduction != "none":
        # No positive boxes: a zero loss (mmdetection's pred.sum() * 0), connected to every operand
        # as the eager composition is (zero gradients for each): the operator's sum over no
        # elements (its dtype under autocast, its check of a tensor parameter), and avg_factor's.
        loss = _weighted_op(x, y, weight, param_tensor, None, kind, param_value, None, 1.0, 2)
        if avg_tensor is not None:
            loss = loss + (avg_tensor.sum() * 0).to(loss.dtype)
    else:
        avg_value = None if avg_factor is None or avg_tensor is not None else float(avg_factor)
        loss = _weighted_op(x, y, weight, param_tensor, avg_tensor, kind, param_value, avg_value,
                            loss_weight, _REDUCTIONS[reduction])
    if answer is not None and loss.dtype is not answer:
        loss = loss.to(answer)
    if host_scale is not None:
        loss = loss * host_scale.to(loss.dtype)
    if reduction == "mean":
        loss = _as_divided_by(loss, avg_tensor)
    return loss if scale is None else scale * loss


def _is_l1(kind, param) -> bool:
    """The L1 loss, or Smooth L1 with beta 0, which torch computes as the L1 loss."""
    return kind == _L1 or (kind == _SMOOTH_L1 and not isinstance(param, Tensor) and param == 0)


def _as_divided_by(loss: Tensor, avg_factor) -> Tensor:
    """The operator's sum / (avg_factor + eps) in the dtype and shape of mmdetection's
    `loss.sum() / (avg_factor + eps)` (torch's result_type, written out for torch.compile): avg_factor
    + eps is in avg_factor's dtype (the default float dtype for an integer or bool one); a 0-d
    avg_factor widens the 0-d sum's dtype, one of one element and more dimensions gives its dtype
    and its shape. No tensor avg_factor: the loss as it is."""
    if avg_factor is None:
        return loss
    divisor = avg_factor.dtype if avg_factor.is_floating_point() else torch.get_default_dtype()
    if avg_factor.dim() == 0:
        dtype = torch.promote_types(loss.dtype, divisor)
        return loss if dtype is loss.dtype else loss.to(dtype)
    return _cast(loss, divisor).reshape(avg_factor.shape)


def _is_tensor_param(value):
    # A per-element beta/delta; a 0-d tensor is a number to torch and stays on torch's path.
    return isinstance(value, Tensor) and value.dim() > 0


def _invalid_reduction(reduction):
    return ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")


# torch.jit.trace: the TorchScript twins (l1ext/_script.py) serve traced calls, so a traced graph
# holds the twin's graph, with its broadcasting, promotion and branches to torch's operators, as a
# traced torch loss holds an aten operator that broadcasts and promotes. Tracing this code would
# record only the operator the example inputs reach (no broadcast, no cast), which inputs of
# another size or dtype would not fit. (A tensor loss_weight, which the twins do not take, is
# traced here.)
_scripted_twins = {}


def _traced_twin(name: str, loss_weight):
    if not torch.jit.is_tracing() or isinstance(loss_weight, Tensor):
        return None
    twin = _scripted_twins.get(name)
    if twin is None:
        state = torch._C._get_tracing_state()  # (compiled outside the trace: compiling inside it
        torch._C._set_tracing_state(None)      # records the compiler's own tensor operations)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
                twin = _scripted_twins[name] = torch.jit.script(getattr(_script, name))
        finally:
            torch._C._set_tracing_state(state)
    return twin


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
    weight: Tensor | None = None,
    *,
    avg_factor=None,
    loss_weight: float | None = None,
) -> Tensor:
    r"""Mean absolute error, as :func:`torch.nn.functional.l1_loss`, computed by l1ext.

    With ``weight`` alone (the input's size), the loss is ``|input - target| * weight`` and 'mean'
    divides its sum by ``weight.sum()``, as torch does. With ``avg_factor`` or ``loss_weight``
    (mmdetection's convention), ``weight`` broadcasts to the input (per element, per row such as
    (N,) or (N, 1) for boxes (N, 4), per column), 'mean' is ``sum / avg_factor`` (guarded by
    float32 eps) or the plain mean, and the result is scaled by ``loss_weight``; see
    :func:`smooth_l1_loss`.
    """
    if size_average is None and reduce is None and not _is_compiling():
        loss = _loss_fast(_L1, input, target, reduction, None, weight, avg_factor, loss_weight)
        if loss is not None:
            return loss
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            l1_loss, (input, target, weight), input, target,
            size_average=size_average, reduce=reduce, reduction=reduction,
            **_given(weight=weight, avg_factor=avg_factor, loss_weight=loss_weight),
        )
    twin = _traced_twin("l1_loss", loss_weight)
    if twin is not None:
        return twin(input, target, size_average, reduce, reduction, weight, avg_factor, loss_weight)
    _warn_if_sizes_differ(input, target)
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    if avg_factor is not None or loss_weight is not None:
        return _weighted(_L1, input, target, reduction, 0.0, weight, avg_factor, loss_weight)
    expanded_input, expanded_target = _broadcast(input, target)
    if weight is None:
        return _l1(expanded_input, expanded_target, _reduction_enum(reduction))
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
    *,
    weight: Tensor | None = None,
    avg_factor=None,
    loss_weight: float | None = None,
) -> Tensor:
    r"""Smooth L1 loss, as :func:`torch.nn.functional.smooth_l1_loss`, computed by l1ext.

    ``beta == 0`` is exactly the L1 loss (values and gradients), as in torch.

    Beyond torch, fused in the same pass (mmdetection's weighted-loss convention):

    - ``weight``: broadcasts to the input; a weight of the input's shape without its last
      dimension, e.g. (N,) for boxes (N, 4), is one weight per row (also for N == 4; a weight
      (1, 4) is per coordinate there). The loss is ``loss * weight``.
    - ``avg_factor`` (a number or a one-element tensor, read without host synchronisation): 'mean'
      becomes ``sum / (avg_factor + eps)``; with 'sum' it is an error; 'none' ignores it.
    - ``loss_weight``: scales the result.
    - ``beta`` may be a tensor broadcastable to the input by torch's rules (per-coordinate beta
      (4,) for boxes (N, 4), for every N).

    The result's dtype and shape are those of that eager composition (a wider weight or tensor
    avg_factor widens it, an avg_factor of shape (1,) gives its shape). A call with any of these
    on an empty input returns a zero that stays in the autograd graph.
    """
    if size_average is None and reduce is None and not _is_compiling():
        loss = _loss_fast(_SMOOTH_L1, input, target, reduction, beta, weight, avg_factor, loss_weight)
        if loss is not None:
            return loss
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            smooth_l1_loss, (input, target, weight), input, target,
            size_average=size_average, reduce=reduce, reduction=reduction, beta=beta,
            **_given(weight=weight, avg_factor=avg_factor, loss_weight=loss_weight),
        )
    twin = _traced_twin("smooth_l1_loss", loss_weight)
    if twin is not None:
        return twin(input, target, size_average, reduce, reduction, beta, weight, avg_factor, loss_weight)
    _warn_if_sizes_differ(input, target)
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    if weight is not None or avg_factor is not None or loss_weight is not None or _is_tensor_param(beta):
        if not isinstance(beta, Tensor) and beta < 0:
            raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
        return _weighted(_SMOOTH_L1, input, target, reduction, beta, weight, avg_factor, loss_weight)
    expanded_input, expanded_target = _broadcast(input, target)
    if beta == 0.0:
        return _l1(expanded_input, expanded_target, _reduction_enum(reduction))
    return _smooth_l1(expanded_input, expanded_target, _reduction_enum(reduction), beta)


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
    *,
    avg_factor=None,
    loss_weight: float | None = None,
) -> Tensor:
    r"""Huber loss, as :func:`torch.nn.functional.huber_loss`, computed by l1ext.

    The result has the input's dtype (torch's rule). With ``weight`` alone (the input's size) the
    loss is ``huber * weight`` and 'mean' is its plain mean, as torch does. With ``avg_factor`` or
    ``loss_weight``, or a tensor ``delta``, the weighted convention of :func:`smooth_l1_loss`.
    """
    if not _is_compiling():
        loss = _loss_fast(_HUBER, input, target, reduction, delta, weight, avg_factor, loss_weight)
        if loss is not None:
            return loss
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            huber_loss, (input, target, weight), input, target,
            reduction=reduction, delta=delta, weight=weight,
            **_given(avg_factor=avg_factor, loss_weight=loss_weight),
        )
    twin = _traced_twin("huber_loss", loss_weight)
    if twin is not None:
        return twin(input, target, reduction, delta, weight, avg_factor, loss_weight)
    _warn_if_sizes_differ(input, target)
    if avg_factor is not None or loss_weight is not None or _is_tensor_param(delta):
        if not isinstance(delta, Tensor) and not delta > 0:
            raise RuntimeError("huber_loss does not support non-positive values for delta.")
        return _weighted(_HUBER, input, target, reduction, delta, weight, avg_factor, loss_weight)
    expanded_input, expanded_target = _broadcast(input, target)
    if weight is None:
        return _huber(expanded_input, expanded_target, _reduction_enum(reduction), delta)
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


def quantile_loss(
    input: Tensor,
    target: Tensor,
    tau=0.5,
    reduction: str = "mean",
    weight: Tensor | None = None,
    *,
    avg_factor=None,
    loss_weight: float | None = None,
) -> Tensor:
    r"""Quantile (pinball) loss: ``tau * (target - input)`` where ``target >= input``, else
    ``(1 - tau) * (input - target)``; ``tau = 0.5`` is half the L1 loss.

    ``tau`` is a number in (0, 1) or a tensor of quantiles along the input's last dimension
    (multi-quantile forecasting: input (..., Q), target (...,) or (..., 1), tau (Q,)). Reductions,
    ``weight``, ``avg_factor`` and ``loss_weight`` as in :func:`smooth_l1_loss`; the subgradient is
    0 at a zero residual.
    """
    if not _is_compiling():
        loss = _loss_fast(_QUANTILE, input, target, reduction, tau, weight, avg_factor, loss_weight)
        if loss is not None:
            return loss
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            quantile_loss, (input, target, weight), input, target, tau=tau, reduction=reduction,
            weight=weight, avg_factor=avg_factor, loss_weight=loss_weight,
        )
    twin = _traced_twin("quantile_loss", loss_weight)
    if twin is not None:
        return twin(input, target, tau, reduction, weight, avg_factor, loss_weight)
    # A tensor tau's values are checked by the operator (on the host, or on the device without
    # synchronisation), so the check holds under torch.compile and torch.func's transforms too.
    # Quantiles along the last dimension: a tau of one or more dimensions; a 0-d one is a number.
    quantiles = 0
    if isinstance(tau, Tensor):
        quantiles = tau.numel() if tau.dim() > 0 else 0
    elif isinstance(tau, numbers.Real) and not isinstance(tau, bool):  # (NumPy's scalars too)
        if not 0.0 < tau < 1.0:
            raise ValueError(f"quantile_loss: tau must be in (0, 1), got {tau}")
    else:
        raise TypeError(f"quantile_loss(): argument 'tau' must be a float or a Tensor, not {type(tau).__name__}")
    multi = (quantiles > 0 and input.dim() >= 1 and input.shape[-1] == quantiles
             and (target.shape == input.shape[:-1] or target.shape == input.shape[:-1] + (1,)))
    if multi:
        target = target.reshape(input.shape[:-1] + (1,))  # one target for every quantile
    else:
        _warn_if_sizes_differ(input, target)
    return _weighted(_QUANTILE, input, target, reduction, tau, weight, avg_factor, loss_weight)


# Scripted code that calls these functions runs their twins in _script.py.
_script.serve_scripted_calls([(l1_loss, _script.l1_loss),
                              (smooth_l1_loss, _script.smooth_l1_loss),
                              (huber_loss, _script.huber_loss),
                              (quantile_loss, _script.quantile_loss)])
