"""l1ext: fused L1, Smooth L1 and Huber losses for PyTorch, drop-in for torch's own.

    import l1ext
    loss = l1ext.SmoothL1Loss(beta=0.1)(pred, target)       # as torch.nn.SmoothL1Loss
    loss = l1ext.functional.l1_loss(pred, target)            # as torch.nn.functional.l1_loss

The operators are also available as torch.ops.l1ext.* (reduction as torch's enum:
0 'none', 1 'mean', 2 'sum').
"""
import torch

from . import _C, functional
from ._patch import is_patched, patch, unpatch
from .modules import HuberLoss, L1Loss, QuantileLoss, SmoothL1Loss

__version__ = "0.1.0"

__all__ = ["functional", "L1Loss", "SmoothL1Loss", "HuberLoss", "QuantileLoss", "cpu_capability",
           "empty_cache", "patch", "unpatch", "is_patched"]


def cpu_capability() -> str:
    """Instruction set of the CPU kernels in use: 'DEFAULT', 'AVX2' or 'AVX512'.

    Set L1EXT_CPU_CAPABILITY (or torch's ATEN_CPU_CAPABILITY) to default/avx2/avx512 before the
    first call to pick a narrower one."""
    return torch.ops.l1ext.cpu_capability()


def empty_cache() -> int:
    """Frees the memory l1ext keeps for its next large CPU outputs and returns its bytes.

    CPU outputs of 8 MiB and more (a loss with reduction='none', the gradients a forward writes
    for its backward, the backward's gradients) reuse the memory of l1ext outputs the program has
    released, as torch's CUDA caching allocator does, so a training loop does not fault in and zero
    a fresh gradient every step. At most four released blocks are kept; set L1EXT_OUTPUT_CACHE=0
    before the first call to keep none. Like torch.cuda.empty_cache() for CUDA memory."""
    return _C.empty_cache()
