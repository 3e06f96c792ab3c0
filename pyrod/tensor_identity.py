"""Cache keys by tensor identity, not content: reading a tensor's values on a CUDA device synchronises it.

A :class:`TensorKey` remembers a tensor's storage (data pointer, storage offset, shape, strides, dtype, device)
and its version counter (bumped by every in-place write; views share their base's counter), and **holds a
reference to the tensor**, so its storage cannot be freed and reused by another tensor while the key lives. A
later tensor matches the key exactly when it is the same memory, laid out the same way, not written since: the
same values, decided without touching them. A content-equal copy does not match (a cache miss, never a wrong
hit).

Used by the central flow's per-evaluation caches (the state ``y`` handed back by the integrator is the same tensor
for the right-hand side, the event checks and the accepted-step hook) and by the Hessian-graph cache of
:class:`pyrod.problems.problem.Problem`.
"""
from __future__ import annotations

import torch

__all__ = ["TensorKey"]


class TensorKey:
    """Identity-and-version key of a tensor (see the module docstring). ``TensorKey(x).matches(y)``."""

    __slots__ = ("tensor", "_sig", "_version")

    def __init__(self, x: torch.Tensor):
        self.tensor = x                      # held: keeps the storage (and so the pointer) alive
        self._sig = self._signature(x)
        self._version = x._version

    @staticmethod
    def _signature(x: torch.Tensor):
        return (x.data_ptr(), x.storage_offset(), tuple(x.shape), x.stride(), x.dtype, x.device)

    def matches(self, y: torch.Tensor) -> bool:
        """True when ``y`` is the keyed memory, with the same layout, unchanged since the key was made."""
        if y is self.tensor:
            return y._version == self._version
        return (isinstance(y, torch.Tensor) and not y.is_nested and y._version == self._version
                and self._signature(y) == self._sig)

    def __repr__(self):
        return f"TensorKey(ptr={self._sig[0]:#x}, shape={self._sig[2]}, version={self._version})"
