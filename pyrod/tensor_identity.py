"""Cache keys for tensors that never read the tensor's values (so never synchronise a CUDA device).

A cache of something computed at a point ``w`` (a graph of ∇L, an eigenbasis, a right-hand side) must know whether
a later ``w`` holds the same values. Comparing values (``torch.equal``, a hash of the bytes) reads the tensor, which
on CUDA waits for every queued kernel and copies a flag to the host. :class:`TensorKey` answers instead from
metadata only:

* the same memory: storage address (``untyped_storage().data_ptr()``) and ``storage_offset()``;
* the same layout: ``shape``, ``stride()``, ``dtype``, ``device``;
* not written since: the tensor's version counter ``_version`` is what it was when the key was made. Every in-place
  torch operation (``add_``, ``copy_``, ``x[i] = …``, ``out=``) bumps it, on the tensor and on every view of the same
  base and every ``detach()`` of it, since they all share one counter.

The key holds a reference to the tensor it was made from. Its storage therefore stays allocated while the key lives,
so no other tensor can later be allocated at that address: a tensor freed and reallocated elsewhere can never
match. A view of the same base at the same offset with the same layout matches (its values are the same memory); a
copy with equal values never does (other memory). Matching is conservative: a miss costs a recomputation, never a
wrong answer, provided every write goes through torch.

Not seen (document it where keys are used): writes that bypass the version counter, i.e. through ``tensor.data``
(a separate counter) or through a NumPy array sharing the memory (``tensor.numpy()``, ``torch.from_numpy``).
Tensors without a storage or a version counter (inference-mode tensors, ``torch.func`` wrapped tensors, sparse,
nested or meta tensors) get a key that matches nothing.

Example::

    key = TensorKey(w)          # remember w (keeps it alive)
    ...
    if key.matches(w_new):      # metadata only: no device sync
        reuse()
"""
from __future__ import annotations

import torch

__all__ = ["TensorKey"]


def _signature(t: torch.Tensor):
    """``(storage address, storage offset, shape, stride, dtype, device, version)``, or None when ``t`` has no
    storage or no version counter (such a tensor is never treated as the same as anything)."""
    try:
        if t.layout != torch.strided or t.is_nested or t.is_meta or t.is_inference():
            return None
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return None
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype,
                t.device, t._version)
    except (RuntimeError, NotImplementedError):     # no storage / no version counter (subclasses, meta, fake)
        return None


class TensorKey:
    """The identity of a tensor's current values, compared from metadata alone (module docstring).

    ``TensorKey(t)`` remembers ``t`` (holding a reference to it) with its storage address, offset, shape, strides,
    dtype, device and version. ``key.matches(s)`` is True exactly when ``s`` has the same address, offset, shape,
    strides, dtype and device as ``t`` and the shared version counter has not moved: then ``s`` holds the values
    ``t`` held when the key was made. It never reads values and never synchronises a device. ``key.tensor`` is the
    remembered tensor.
    """

    __slots__ = ("tensor", "_sig")

    def __init__(self, tensor: torch.Tensor):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"TensorKey needs a torch.Tensor, got {type(tensor).__name__}")
        self.tensor = tensor
        self._sig = _signature(tensor)

    def matches(self, other) -> bool:
        """True when ``other`` certainly holds the values the key's tensor held when the key was made."""
        if self._sig is None or not isinstance(other, torch.Tensor):
            return False
        if other is self.tensor:                     # fast path: the very object; only the version can differ
            try:
                return other._version == self._sig[6]
            except RuntimeError:
                return False
        return _signature(other) == self._sig

    @property
    def valid(self) -> bool:
        """False for a key that can match nothing (its tensor has no storage or no version counter)."""
        return self._sig is not None

    def __repr__(self):
        if self._sig is None:
            return "TensorKey(<matches nothing>)"
        ptr, off, shape, stride, dtype, device, version = self._sig
        return (f"TensorKey(ptr=0x{ptr:x}, offset={off}, shape={shape}, stride={stride}, dtype={dtype}, "
                f"device={device}, version={version})")
