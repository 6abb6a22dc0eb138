"""l1ext: fused L1, Smooth L1 and Huber losses for PyTorch, drop-in for torch's own.

    import l1ext
    loss = l1ext.SmoothL1Loss(beta=0.1)(pred, target)       # as torch.nn.SmoothL1Loss
    loss = l1ext.functional.l1_loss(pred, target)            # as torch.nn.functional.l1_loss

The operators are also available as torch.ops.l1ext.* (reduction as torch's enum:
0 'none', 1 'mean', 2 'sum').
"""
import torch

from . import functional
from ._patch import is_patched, patch, unpatch
from .modules import HuberLoss, L1Loss, QuantileLoss, SmoothL1Loss

__version__ = "0.1.0"

__all__ = ["functional", "L1Loss", "SmoothL1Loss", "HuberLoss", "QuantileLoss", "cpu_capability", "patch", "unpatch",
           "is_patched"]


def cpu_capability() -> str:
    """Instruction set of the CPU kernels in use: 'DEFAULT', 'AVX2' or 'AVX512'.

    Set L1EXT_CPU_CAPABILITY (or torch's ATEN_CPU_CAPABILITY) to default/avx2/avx512 before the
    first call to pick a narrower one."""
    return torch.ops.l1ext.cpu_capability()
