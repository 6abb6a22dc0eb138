"""l1ext.patch(): route torch's own L1-family losses to l1ext without editing the calling code."""
import threading

import torch
import torch.nn.functional as F

from . import functional as LF
from . import modules as LM

_NAMES = ("l1_loss", "smooth_l1_loss", "huber_loss")
_MODULES = (
    (torch.nn.L1Loss, LM.L1Loss),
    (torch.nn.SmoothL1Loss, LM.SmoothL1Loss),
    (torch.nn.HuberLoss, LM.HuberLoss),
)
_lock = threading.Lock()
_saved = None  # torch's originals while patched


class _Patch:
    """Returned by patch(); as a context manager it restores torch's functions on exit, if this
    call was the one that patched."""

    def __init__(self, owner):
        self._owner = owner

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._owner:
            unpatch()
        return False


def patch():
    """Routes ``torch.nn.functional.l1_loss / smooth_l1_loss / huber_loss`` and the forward of
    ``torch.nn.L1Loss / SmoothL1Loss / HuberLoss`` (existing instances too) to l1ext.

    Use as a plain call (undo with :func:`unpatch`) or as a context manager::

        with l1ext.patch():
            loss = F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum")   # l1ext's kernels

    Calls l1ext cannot serve exactly (integer or complex dtypes, devices without l1ext kernels,
    tensor subclasses' own overrides) still reach torch's implementation. Code that bound the
    functions before patching (``from torch.nn.functional import l1_loss``) keeps torch's.
    """
    global _saved
    with _lock:
        if _saved is not None:
            return _Patch(owner=False)
        _saved = {
            "functional": {name: getattr(F, name) for name in _NAMES},
            "forward": {cls: cls.__dict__["forward"] for cls, _ in _MODULES},
        }
        for name in _NAMES:
            setattr(F, name, getattr(LF, name))
        for cls, ours in _MODULES:
            cls.forward = ours.forward
        _forget_scripted_forwards()
        return _Patch(owner=True)


def unpatch():
    """Restores torch's functions and module forwards (a no-op when not patched)."""
    global _saved
    with _lock:
        if _saved is None:
            return
        for name, fn in _saved["functional"].items():
            setattr(F, name, fn)
        for cls, forward in _saved["forward"].items():
            cls.forward = forward
        _forget_scripted_forwards()
        _saved = None


def _forget_scripted_forwards():
    # torch.jit.script compiles a module class's forward once and reuses it for every later
    # instance: without this, a module scripted before patch() would keep torch's forward under
    # it, and one scripted under it would keep l1ext's after unpatch().
    store = getattr(getattr(torch.jit, "_recursive", None), "concrete_type_store", None)
    if store is None or not hasattr(store, "type_store"):
        return
    for cls, _ in _MODULES:
        for concrete_type in store.type_store.pop(cls, []):
            getattr(store, "methods_compiled", set()).discard(concrete_type)


def is_patched():
    return _saved is not None
