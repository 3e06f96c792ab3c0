"""Declared device ↔ host transfers: the only places where pyrod's GPU loops wait for the device.

On a CUDA device every read of a tensor's value on the host (``float(x)``, ``bool(x)``, ``x.item()``, ``x.cpu()``,
a Python ``if`` on a tensor, boolean-mask indexing, a ``torch.linalg`` call that checks its info) blocks until the
device has finished all queued work: the host stops queueing while it waits, and the device idles while the host
then queues the next kernels. The central flow, the eigen-solver and the torch backend therefore gather every small
value they must read into one tensor and read it through :func:`to_host` — one synchronisation for many values,
at a declared point. Small host results go back with :func:`to_device`, which does not synchronise on CUDA
(pinned memory, ``non_blocking``).

Tests count the calls (``monkeypatch`` :func:`to_host`), and the CUDA tests run the loops under
``torch.cuda.set_sync_debug_mode("error")`` with synchronisation allowed only inside :func:`to_host`.
On the CPU both are plain conversions (no copies beyond NumPy's view of the data).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_host", "to_device", "stack_scalars"]

#: the NumPy dtype of each torch floating dtype used here (host copies in the target precision)
NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def to_host(x: torch.Tensor) -> np.ndarray:
    """``x`` as a float64 NumPy array on the host: the one device → host transfer of a step (synchronises a CUDA
    device). Callers stack everything they need into ``x`` first (:func:`stack_scalars`)."""
    return x.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def to_device(a, like: torch.Tensor | None = None, *, dtype=None, device=None) -> torch.Tensor:
    """The host array ``a`` as a tensor of ``like``'s dtype and device (or the given ``dtype``, ``device``): on the
    CPU it shares ``a``'s memory where the dtype allows; on CUDA the copy is queued from pinned memory
    (``non_blocking``; the caching host allocator keeps the buffer until the copy is done), so the host does not
    wait for the device."""
    if like is not None:
        dtype, device = like.dtype, like.device
    device = torch.device(device)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=NUMPY_DTYPE.get(dtype, np.float64)))
    if device.type == "cpu":
        return t if t.dtype == dtype else t.to(dtype)
    return t.pin_memory().to(device=device, dtype=dtype, non_blocking=True)


def stack_scalars(parts, like: torch.Tensor) -> torch.Tensor:
    """One flat float64 tensor on ``like``'s device from tensors of any shape (flattened, in order), for one
    :func:`to_host` call; the caller splits the result by the parts' sizes."""
    flat = [torch.as_tensor(p, device=like.device).reshape(-1).to(torch.float64) for p in parts]
    return torch.cat(flat) if flat else like.new_zeros(0, dtype=torch.float64)
