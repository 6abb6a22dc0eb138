"""l1ext's losses under torch.jit.script.

TorchScript cannot compile functional.py (keyword-only arguments, __torch_function__ dispatch,
Python-side fast paths), so scripted code runs these functions instead: the same rules and
signatures as functional.py's, written in the subset TorchScript compiles, calling the same
operators (torch.ops.l1ext.*, saved with the scripted code; loading it needs `import l1ext`). The
modules' forwards call them under torch.jit.is_scripting(); a scripted call of
l1ext.functional.* is routed to them by TorchScript's table of Python functions with script
twins (serve_scripted_calls, which functional.py calls). Where functional.py hands a call to
torch's own operator, so do these; warnings and errors are those of torch's own scripted losses
(sizes print as lists, errors come as torch.jit.Error)."""
import warnings
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction

# avg_factor, beta, delta, tau: a number or a tensor (TorchScript takes no int for a float here).
Number = Union[Tensor, float, int]


def optional_float(value: Optional[Union[float, int]]) -> Optional[float]:
    return None if value is None else float(value)


def module_loss_weight(loss_weight: Optional[float], weight: Optional[Tensor]) -> Optional[float]:
    """A module's loss_weight, 1.0 with a weight: a module's weight takes the weighted convention
    (modules.py's _module_loss_weight)."""
    if loss_weight is None and weight is not None:
        return 1.0
    return loss_weight


def reduction_of(reduction: str, reduction_override: Optional[str]) -> str:
    if reduction_override is not None:
        if reduction_override not in ["none", "mean", "sum"]:
            raise ValueError("reduction_override must be one of (None, 'none', 'mean', 'sum'), "
                             f"got '{reduction_override}'")
        return reduction_override
    return reduction


def _kernel_dtype(input: Tensor, target: Tensor) -> Optional[int]:
    """functional._kernel_dtype: the dtype l1ext computes in, or None for torch's operator."""
    device = input.device.type
    if input.device != target.device:
        return None
    if input.layout != torch.strided or target.layout != torch.strided:
        return None
    if device != "cpu" and device != "meta":
        if device != "cuda" or not torch.ops.l1ext.has_cuda_kernels():
            return None
    dtype = input.dtype
    if dtype != target.dtype:
        dtype = torch.promote_types(dtype, target.dtype)
    return dtype if _is_kernel_dtype(dtype) else None


def _is_kernel_dtype(dtype: int) -> bool:
    return (dtype == torch.float32 or dtype == torch.bfloat16 or dtype == torch.float16
            or dtype == torch.float64)


def _warn_if_sizes_differ(input: Tensor, target: Tensor):
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.")


def _broadcast(input: Tensor, target: Tensor) -> List[Tensor]:
    if input.size() == target.size():
        return [input, target]
    return torch.broadcast_tensors(input, target)


def _l1(input: Tensor, target: Tensor, reduction: int) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None or input.dtype == torch.bool or target.dtype == torch.bool:
        return torch._C._nn.l1_loss(input, target, reduction)  # (its error: input - target)
    return torch.ops.l1ext.l1_loss(input.to(dtype), target.to(dtype), reduction)


def _smooth_l1(input: Tensor, target: Tensor, reduction: int, beta: float) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None:
        return torch._C._nn.smooth_l1_loss(input, target, reduction, beta)
    return torch.ops.l1ext.smooth_l1_loss(input.to(dtype), target.to(dtype), reduction, beta)


def _huber(input: Tensor, target: Tensor, reduction: int, delta: float) -> Tensor:
    dtype = _kernel_dtype(input, target)
    if dtype is None or _kernel_dtype(input, input) is None:  # (an integer input: torch's, too)
        return torch._C._nn.huber_loss(input, target, reduction, delta)
    loss = torch.ops.l1ext.huber_loss(input.to(dtype), target.to(dtype), reduction, delta)
    return huber_in_input_dtype(loss, dtype, input)


def huber_in_input_dtype(loss: Tensor, dtype: int, input: Tensor) -> Tensor:
    """A Huber loss computed in dtype (promoted) in the dtype torch's huber_loss answers in (also
    functional.py's)."""
    if dtype == input.dtype:
        return loss  # (under autocast: float32 unless float64, as the operator's autocast kernel)
    out = huber_dtype(input)
    return loss if loss.dtype == out else loss.to(out)


def huber_dtype(input: Tensor) -> int:
    """The dtype torch's huber_loss answers in: the input's, computed in the promoted one; under
    autocast (float32 list) that input is float32 unless it is float64, which autocast leaves.
    (Also functional.py's.)"""
    out = input.dtype
    if out != torch.float64 and input.device.type != "meta":
        if torch.jit.is_scripting():
            autocast = torch.ops.l1ext.autocast_enabled(input.device.type)
        else:  # (torch.compile traces this one, and no operator that returns a bool)
            autocast = torch.is_autocast_enabled(input.device.type)
        if autocast:
            out = torch.float32
    return out


def torch_loss_dtype(kind: int, l1: bool, input: int, target: int) -> int:
    """The dtype of torch's elementwise loss (kind 1 Smooth L1, 2 Huber; l1: the L1 loss, or
    Smooth L1 with beta 0, which torch computes as L1) for operands of dtypes input and target,
    by a one-element call of it on the host; torch's error where it refuses them (a bool operand
    of the L1 loss, a bool or integer input of the Huber loss). For mixed or non-floating
    operands of mmdetection's composition. (Also functional.py's.)"""
    a = torch.zeros([1], dtype=input, device=torch.device("cpu"))  # (whatever the default device)
    b = torch.zeros([1], dtype=target, device=torch.device("cpu"))
    if l1:
        return torch._C._nn.l1_loss(a, b, 0).dtype
    if kind == 1:
        return torch._C._nn.smooth_l1_loss(a, b, 0, 1.0).dtype
    return torch._C._nn.huber_loss(a, b, 0, 1.0).dtype


def _as_float(value: Number) -> float:
    if isinstance(value, Tensor):
        return float(value)  # a 0-d tensor is a number to torch's losses
    if isinstance(value, float):  # (TorchScript converts no Union[float, int] with float())
        return value
    return float(value)


def _is_tensor_param(value: Number) -> bool:
    # A per-element beta/delta; a 0-d tensor is a number to torch.
    if isinstance(value, Tensor):
        return value.dim() > 0
    return False


def _tensor_or_float(value: Number) -> Tuple[Optional[Tensor], float]:
    if isinstance(value, Tensor):
        return value, 0.0
    return None, _as_float(value)


# kind: the weighted operator's loss kind (csrc/loss_kind.h; written as literals below, since
# TorchScript reads no global): 0 L1, 1 Smooth L1, 2 Huber, 3 Quantile.
def _weighted(kind: int, input: Tensor, target: Tensor, reduction: str, param: Number,
              weight: Optional[Tensor], avg_factor: Optional[Number],
              loss_weight: Optional[float]) -> Tensor:
    """functional._weighted: mmdetection's weight_reduce_loss convention in one operator."""
    if reduction not in ["none", "mean", "sum"]:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if avg_factor is not None and reduction == "sum":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    scale = 1.0 if loss_weight is None else float(loss_weight)
    operands = _broadcast(input, target)
    param_tensor, param_value = _tensor_or_float(param)
    answer: Optional[int] = None  # the composition's dtype where it is not the one computed in
    if kind != 3 and (input.dtype != target.dtype or not input.is_floating_point()):
        # mixed or non-floating operands: as torch's loss takes them, or its error
        l1 = kind == 0 or (kind == 1 and param_tensor is None and param_value == 0.0)
        elementwise = torch_loss_dtype(kind, l1, input.dtype, target.dtype)
        if target.dtype == torch.bool:
            operands[1] = operands[1].to(elementwise)
        if kind == 2:
            answer = huber_dtype(input)
        elif l1 and not input.is_floating_point() and not target.is_floating_point():
            avg_tensor0: Optional[Tensor] = None
            if avg_factor is not None:
                avg_tensor0, _ = _tensor_or_float(avg_factor)
            operands[0], operands[1], answer = integer_loss_operands(
                operands[0], operands[1], weight, reduction, avg_tensor0,
                avg_factor is not None and avg_tensor0 is None, loss_weight)
    dtype = _kernel_dtype(operands[0], operands[1])
    if dtype is None:
        raise NotImplementedError("l1ext weighted losses support floating dtypes on the devices "
                                  f"l1ext has kernels for, got {input.dtype} and {target.dtype} "
                                  f"on {input.device} and {target.device}")
    if answer is not None and answer == dtype:
        answer = None
    x = operands[0].to(dtype)
    w: Optional[Tensor] = weight
    host_scale: Optional[Tensor] = None
    if weight is not None:
        if (weight.dim() == 0 and x.dim() > 0 and weight.device.type == "cpu"
                and x.device.type != "cpu" and not weight.is_complex()):
            # a 0-d host weight: a number, or a factor of the result where it needs a gradient
            if weight.requires_grad:
                host_scale = weight
            else:
                scale = scale * float(weight)
            w = None
    if w is not None:  # loss * weight in torch's result type of the two
        dtype = torch.result_type(x, w)
        if answer is not None and (w.dim() > 0 or x.dim() == 0 or w.is_complex()):
            answer = torch.promote_types(answer, w.dtype)
        if not _is_kernel_dtype(dtype):
            raise NotImplementedError(f"l1ext weighted losses support floating dtypes, got a {w.dtype} weight")
        x = x.to(dtype)
        widened = shape_widened_by(list(x.size()), list(w.size()))
        if widened is not None:
            x, operands[1] = x.expand(widened), operands[1].expand(widened)
    y = operands[1].to(dtype)
    avg_tensor: Optional[Tensor] = None
    avg_value: Optional[float] = None
    if avg_factor is not None:
        avg_tensor, avg_number = _tensor_or_float(avg_factor)
        if avg_tensor is None:
            avg_value = avg_number
    if x.numel() == 0 and reduction != "none":
        # no positive boxes: a zero connected to every operand (functional.py's _weighted)
        loss = torch.ops.l1ext.weighted_loss(x, y, w, param_tensor, None, kind, param_value, None,
                                             1.0, 2)
        if avg_tensor is not None:
            loss = loss + (avg_tensor.sum() * 0).to(loss.dtype)
    else:
        loss = torch.ops.l1ext.weighted_loss(x, y, w, param_tensor, avg_tensor, kind, param_value,
                                             avg_value, scale, _Reduction.get_enum(reduction))
    if answer is not None and loss.dtype != answer:
        loss = loss.to(answer)
    if host_scale is not None:
        loss = loss * host_scale.to(loss.dtype)
    return _as_divided_by(loss, avg_tensor) if reduction == "mean" else loss


def integer_loss_operands(input: Tensor, target: Tensor, weight: Optional[Tensor],
                          reduction: str, avg_factor: Optional[Tensor], avg_number: bool,
                          loss_weight: Optional[float]) -> Tuple[Tensor, Tensor, Optional[int]]:
    """Integer operands of the L1 loss (Smooth L1 with beta 0), whose elementwise loss torch
    computes in integers (wrapping around as integer subtraction does): that loss, converted to the
    dtype the composition goes on in, as the input of the operator against a zero target (|l - 0|
    is l, so the composition's rounding of l); and the integer dtype it answers in, where it stays
    integral (an integer weight or loss_weight, 'none' or 'sum'). That dtype is found by the
    composition on one-element host tensors, which raises its error where it does (the mean of an
    integer loss). (functional.py's too.)"""
    loss = torch._C._nn.l1_loss(input, target, 0)
    cpu = torch.device("cpu")
    out = torch.zeros([1] * loss.dim(), dtype=loss.dtype, device=cpu)
    if weight is not None:
        out = out * torch.zeros([1] * weight.dim(), dtype=weight.dtype, device=cpu)
    if reduction == "sum":
        out = out.sum()
    elif reduction == "mean":
        if avg_factor is not None:
            out = out.sum() / (torch.zeros([1] * avg_factor.dim(), dtype=avg_factor.dtype,
                                           device=cpu) + 1.1920928955078125e-07)
        elif avg_number:
            out = out.sum() / 1.0
        else:
            out = out.mean()
    if loss_weight is not None:
        out = out * loss_weight
    answer: Optional[int] = None
    dtype = out.dtype
    if not out.is_floating_point():
        answer, dtype = out.dtype, torch.float64  # (exact for integers below 2^53)
    loss = loss.to(dtype)
    return loss, torch.zeros_like(loss), answer


def shape_widened_by(shape: List[int], weight_shape: List[int]) -> Optional[List[int]]:
    """The shape of loss * weight where the weight widens the loss's shape by torch's broadcasting
    (a weight (K, N, 4) over boxes (N, 4)), else None: the same shape, a weight per row (the
    input's shape without its last dimension), or shapes that do not broadcast (the operator says
    so). (functional.py's too.)"""
    if len(shape) >= 1 and weight_shape == shape[:-1]:
        return None
    n = max(len(shape), len(weight_shape))
    s = [1] * (n - len(shape)) + shape
    w = [1] * (n - len(weight_shape)) + weight_shape
    out: List[int] = []
    for k in range(n):
        if s[k] == w[k] or w[k] == 1:
            out.append(s[k])
        elif s[k] == 1:
            out.append(w[k])
        else:
            return None
    return None if out == shape else out


def _as_divided_by(loss: Tensor, avg_factor: Optional[Tensor]) -> Tensor:
    """functional._as_divided_by: dtype and shape of mmdetection's loss.sum() / (avg_factor + eps)."""
    if avg_factor is None:
        return loss
    divisor = torch.result_type(avg_factor, 1.1920928955078125e-07)
    if avg_factor.dim() == 0:
        return loss.to(torch.promote_types(loss.dtype, divisor))
    return loss.to(divisor).reshape(avg_factor.shape)


def _by_weight(loss: Tensor, weight: Tensor, input: Tensor, reduction: str, mean_by_weight: bool):
    """torch's own weight= rule: l1_loss's mean is sum / weight.sum(), huber_loss's the mean."""
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    weighted = loss * weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return torch.sum(weighted)
    if reduction == "mean":
        return torch.sum(weighted) / torch.sum(weight) if mean_by_weight else weighted.mean()
    raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")


def l1_loss(input: Tensor, target: Tensor, size_average: Optional[bool] = None,
            reduce: Optional[bool] = None, reduction: str = "mean", weight: Optional[Tensor] = None,
            avg_factor: Optional[Number] = None, loss_weight: Optional[float] = None) -> Tensor:
    _warn_if_sizes_differ(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    if avg_factor is not None or loss_weight is not None:
        return _weighted(0, input, target, reduction, 0.0, weight, avg_factor, loss_weight)
    operands = _broadcast(input, target)
    if weight is None:
        return _l1(operands[0], operands[1], _Reduction.get_enum(reduction))
    return _by_weight(_l1(operands[0], operands[1], 0), weight, input, reduction, True)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average: Optional[bool] = None,
                   reduce: Optional[bool] = None, reduction: str = "mean", beta: Number = 1.0,
                   weight: Optional[Tensor] = None, avg_factor: Optional[Number] = None,
                   loss_weight: Optional[float] = None) -> Tensor:
    _warn_if_sizes_differ(input, target)
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    if weight is not None or avg_factor is not None or loss_weight is not None \
            or _is_tensor_param(beta):
        if not isinstance(beta, Tensor):
            if _as_float(beta) < 0:
                raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
        return _weighted(1, input, target, reduction, beta, weight, avg_factor, loss_weight)
    operands = _broadcast(input, target)
    value = _as_float(beta)
    if value == 0.0:
        return _l1(operands[0], operands[1], _Reduction.get_enum(reduction))
    return _smooth_l1(operands[0], operands[1], _Reduction.get_enum(reduction), value)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: Number = 1.0,
               weight: Optional[Tensor] = None, avg_factor: Optional[Number] = None,
               loss_weight: Optional[float] = None) -> Tensor:
    _warn_if_sizes_differ(input, target)
    if avg_factor is not None or loss_weight is not None or _is_tensor_param(delta):
        if not isinstance(delta, Tensor):
            if not _as_float(delta) > 0:
                raise RuntimeError("huber_loss does not support non-positive values for delta.")
        return _weighted(2, input, target, reduction, delta, weight, avg_factor, loss_weight)
    operands = _broadcast(input, target)
    value = _as_float(delta)
    loss = _huber(operands[0], operands[1],
                  _Reduction.get_enum(reduction if weight is None else "none"), value)
    if weight is None:
        return loss
    return _by_weight(loss, weight, input, reduction, False)


def quantile_loss(input: Tensor, target: Tensor, tau: Number = 0.5, reduction: str = "mean",
                  weight: Optional[Tensor] = None, avg_factor: Optional[Number] = None,
                  loss_weight: Optional[float] = None) -> Tensor:
    quantiles = 0  # quantiles along the last dimension: a tau of one or more dimensions
    if isinstance(tau, Tensor):
        # (checked here as well as by the operator: the operator's error reaches scripted code as
        # a plain RuntimeError, where the scripted twins' errors are torch.jit.Error)
        if tau.device.type == "cpu":
            if not bool(((tau > 0) & (tau < 1)).all()):
                values: List[float] = tau.flatten().tolist()
                raise ValueError(f"quantile_loss: every tau must be in (0, 1), got {values}")
        else:
            torch._assert_async(((tau > 0) & (tau < 1)).all(),
                                "quantile_loss: every tau must be in (0, 1)")
        if tau.dim() > 0:
            quantiles = tau.numel()
    elif not 0.0 < _as_float(tau) < 1.0:
        raise ValueError(f"quantile_loss: tau must be in (0, 1), got {tau}")
    leading = input.size()[:-1] if input.dim() >= 1 else input.size()
    if quantiles > 0 and input.dim() >= 1 and input.size(-1) == quantiles \
            and (target.size() == leading or target.size() == leading + [1]):
        target = target.reshape(leading + [1])  # one target for every quantile
    else:
        _warn_if_sizes_differ(input, target)
    return _weighted(3, input, target, reduction, tau, weight, avg_factor, loss_weight)


def serve_scripted_calls(twins: List[Tuple[Callable, Callable]]):
    """Hands TorchScript, for each (Python function, twin) pair, the twin here to compile
    (called by functional.py for its public functions).

    TorchScript compiles a called Python function from its source, unless the function is in
    torch._jit_internal.boolean_dispatched, the table torch.nn.functional fills (max_pool's
    return_indices) to hand TorchScript script-compatible functions instead. An argument index
    and name no call uses make TorchScript always take the default ("if_true"). torch.fx reads the
    same table for the signature, which is the Python function's."""
    table = getattr(torch._jit_internal, "boolean_dispatched", None)
    if table is None:
        return
    for python_fn, script_fn in twins:
        table[python_fn] = {"if_true": script_fn, "if_false": script_fn, "index": 1 << 16,
                            "default": True, "arg_name": "_l1ext_scripted"}
