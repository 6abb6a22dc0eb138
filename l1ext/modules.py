"""Drop-in twins of torch.nn.L1Loss, SmoothL1Loss and HuberLoss.

Each subclasses the torch module (isinstance holds; constructor, attributes, repr and state_dict
are torch's) and only replaces forward with l1ext's functional."""
import torch
from torch import Tensor

from . import functional as F

__all__ = ["L1Loss", "SmoothL1Loss", "HuberLoss"]


class L1Loss(torch.nn.L1Loss):
    __doc__ = torch.nn.L1Loss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    __doc__ = torch.nn.SmoothL1Loss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(torch.nn.HuberLoss):
    __doc__ = torch.nn.HuberLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)
