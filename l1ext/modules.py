"""Drop-in twins of torch.nn.L1Loss, SmoothL1Loss and HuberLoss, and QuantileLoss.

Each torch twin subclasses the torch module (isinstance holds; constructor, attributes, repr and
state_dict are torch's) and replaces forward with l1ext's functional. Beyond torch, each takes a
``loss_weight`` and its forward a ``weight``, an ``avg_factor`` and a ``reduction_override``
(mmdetection's loss-module convention, for every module: a weight scales the elementwise loss,
also for L1 and Huber, whose torch functionals' own weight= rule a module never takes);
without them it behaves exactly as torch's. (The
forwards also serve torch's own modules under l1ext.patch(), hence getattr for loss_weight.)
Under torch.jit.script, as torch's modules, the forwards run l1ext/_script.py."""
from typing import Optional

import torch
from torch import Tensor

from . import _script
from . import functional as F

__all__ = ["L1Loss", "SmoothL1Loss", "HuberLoss", "QuantileLoss"]


def _tensor_parameter(module, name, value):
    """A tensor beta, delta or tau as a non-persistent buffer of the module: it moves with
    module.to(), and the state_dict stays torch's (empty; a state_dict of torch's module loads); a
    Parameter stays a parameter (learned); a number stays an attribute."""
    if isinstance(value, Tensor) and not isinstance(value, torch.nn.Parameter):
        module.__dict__.pop(name, None)  # (the plain attribute torch's constructor may have set)
        module.register_buffer(name, value, persistent=False)
    else:
        module._buffers.pop(name, None)
        torch.nn.Module.__setattr__(module, name, value)


def _module_loss_weight(module, weight):
    # A module's loss_weight (None: 1), given as 1.0 with a weight so that the functional takes the
    # weighted convention (not torch's functional weight= rule). (Not set on torch's own modules
    # under l1ext.patch(), whose forward takes no weight.)
    loss_weight = getattr(module, "loss_weight", None)
    return 1.0 if loss_weight is None and weight is not None else loss_weight


def _set_attribute(module, name, value):
    # Assigning beta, delta or tau, a number or a tensor, as the constructor takes it (torch's
    # modules take `m.beta = 0.5`; a buffer of that name would refuse a number).
    if name == type(module)._number_or_tensor:
        _tensor_parameter(module, name, value)
    else:
        torch.nn.Module.__setattr__(module, name, value)


class L1Loss(torch.nn.L1Loss):
    __doc__ = torch.nn.L1Loss.__doc__

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", *, loss_weight=None):
        super().__init__(size_average, reduce, reduction)
        self.loss_weight = loss_weight

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[_script.Number] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _script.reduction_of(self.reduction, reduction_override)
        if torch.jit.is_scripting():
            loss_weight: Optional[float] = None
            if hasattr(self, "loss_weight"):  # (not on torch's own modules under l1ext.patch())
                loss_weight = _script.optional_float(self.loss_weight)
            return _script.l1_loss(input, target, reduction=reduction, weight=weight,
                                   avg_factor=avg_factor,
                                   loss_weight=_script.module_loss_weight(loss_weight, weight))
        return F.l1_loss(input, target, reduction=reduction, weight=weight, avg_factor=avg_factor,
                         loss_weight=_module_loss_weight(self, weight))


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    __doc__ = torch.nn.SmoothL1Loss.__doc__
    _number_or_tensor = "beta"
    __setattr__ = _set_attribute

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", beta=1.0, *, loss_weight=None):
        super().__init__(size_average, reduce, reduction, beta)
        _tensor_parameter(self, "beta", beta)
        self.loss_weight = loss_weight

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[_script.Number] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _script.reduction_of(self.reduction, reduction_override)
        if torch.jit.is_scripting():
            loss_weight: Optional[float] = None
            if hasattr(self, "loss_weight"):  # (not on torch's own modules under l1ext.patch())
                loss_weight = _script.optional_float(self.loss_weight)
            return _script.smooth_l1_loss(input, target, reduction=reduction, beta=self.beta,
                                          weight=weight, avg_factor=avg_factor,
                                          loss_weight=loss_weight)
        return F.smooth_l1_loss(input, target, reduction=reduction, beta=self.beta,
                                weight=weight, avg_factor=avg_factor, loss_weight=getattr(self, "loss_weight", None))


class HuberLoss(torch.nn.HuberLoss):
    __doc__ = torch.nn.HuberLoss.__doc__
    _number_or_tensor = "delta"
    __setattr__ = _set_attribute

    def __init__(self, reduction: str = "mean", delta=1.0, *, loss_weight=None):
        if isinstance(delta, Tensor):
            super().__init__(reduction=reduction)
            _tensor_parameter(self, "delta", delta)
        else:
            super().__init__(reduction=reduction, delta=delta)
        self.loss_weight = loss_weight

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[_script.Number] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _script.reduction_of(self.reduction, reduction_override)
        if torch.jit.is_scripting():
            loss_weight: Optional[float] = None
            if hasattr(self, "loss_weight"):  # (not on torch's own modules under l1ext.patch())
                loss_weight = _script.optional_float(self.loss_weight)
            return _script.huber_loss(input, target, reduction, self.delta, weight, avg_factor,
                                      _script.module_loss_weight(loss_weight, weight))
        return F.huber_loss(input, target, reduction=reduction, delta=self.delta,
                            weight=weight, avg_factor=avg_factor, loss_weight=_module_loss_weight(self, weight))


class QuantileLoss(torch.nn.modules.loss._Loss):
    r"""Quantile (pinball) loss, see :func:`l1ext.functional.quantile_loss`.

    ``tau`` is a number in (0, 1) or a tensor of quantiles along the input's last dimension.
    """
    _number_or_tensor = "tau"
    __setattr__ = _set_attribute

    def __init__(self, tau=0.5, reduction: str = "mean", *, loss_weight=None):
        super().__init__(reduction=reduction)
        _tensor_parameter(self, "tau", tau)
        self.loss_weight = loss_weight

    def extra_repr(self) -> str:
        return f"tau={self.tau}"

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[_script.Number] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        reduction = _script.reduction_of(self.reduction, reduction_override)
        if torch.jit.is_scripting():
            loss_weight: Optional[float] = None
            if hasattr(self, "loss_weight"):  # (not on torch's own modules under l1ext.patch())
                loss_weight = _script.optional_float(self.loss_weight)
            return _script.quantile_loss(input, target, self.tau, reduction, weight, avg_factor,
                                         loss_weight)
        return F.quantile_loss(input, target, self.tau, reduction=reduction,
                               weight=weight, avg_factor=avg_factor, loss_weight=getattr(self, "loss_weight", None))
