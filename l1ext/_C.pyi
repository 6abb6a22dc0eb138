# l1ext._C registers the torch.ops.l1ext operators when imported (csrc/python/module.cpp).
from torch import Tensor

def loss_fast(kind: int, input: object, target: object, reduction: object, param: object, weight: object,
              avg_factor: object, loss_weight: object) -> Tensor | None:
    """The common call of l1_loss (kind 0), smooth_l1_loss (1) or huber_loss (2), plain or in the
    weighted convention, in C++; None where l1ext.functional must handle the call in full."""

def empty_cache() -> int:
    """Frees the CPU output cache's idle memory; returns its bytes (l1ext.empty_cache)."""
