"""A CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``: inside :func:`forbid_host_reads` every way of
reading a tensor's values on the host (each of which synchronises a CUDA device) raises, except inside the functions
named as allowed (the declared transfers), which are counted.

Caught: ``bool``/``float``/``int``/``index`` of a tensor (``if x:``, ``float(x)``, ``range(x)``), ``.item()``,
``.tolist()``, ``.numpy()``, ``.cpu()``, ``torch.equal``, ``.nonzero()``/``torch.nonzero``,
boolean-mask indexing, and the ``torch.linalg`` factorizations that check their info on CUDA (``eigh``,
``eigvalsh``, ``cholesky``, ``svd``, ``svdvals``, ``solve``, ``inv``). A test that passes here makes no host read
outside the allowed functions, on any device (``.to(device)`` is not caught: on the CPU the problem's own device is
the host).
"""
from __future__ import annotations

import contextlib
import functools

import torch


class HostRead(AssertionError):
    """A tensor was read on the host outside the declared transfers."""


_TENSOR_METHODS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy", "cpu", "nonzero")
_TORCH_FUNCS = ("equal", "nonzero")
_LINALG_FUNCS = ("eigh", "eigvalsh", "cholesky", "svd", "svdvals", "solve", "inv")


@contextlib.contextmanager
def forbid_host_reads(allowed):
    """``allowed``: list of ``(owner, attribute name)`` pairs whose calls are the declared transfers (patched to
    count and to lift the ban while they run). Yields a dict ``{"count": n}`` of allowed calls made."""
    state = {"depth": 0, "count": 0}
    saved = []

    def guard(owner, name, fn, check=None):
        @functools.wraps(fn)
        def wrapped(*a, **k):
            if state["depth"] == 0 and (check is None or check(*a, **k)):
                raise HostRead(f"host read of a tensor outside the declared transfers: {name}")
            return fn(*a, **k)
        saved.append((owner, name, fn))
        setattr(owner, name, wrapped)

    def allow(owner, name):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapped(*a, **k):
            state["count"] += 1
            state["depth"] += 1
            try:
                return fn(*a, **k)
            finally:
                state["depth"] -= 1
        saved.append((owner, name, fn))
        setattr(owner, name, wrapped)

    def is_bool_index(self, idx, *a, **k):
        items = idx if isinstance(idx, tuple) else (idx,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

    for owner, name in allowed:
        allow(owner, name)
    try:
        for name in _TENSOR_METHODS:
            guard(torch.Tensor, name, getattr(torch.Tensor, name))
        guard(torch.Tensor, "__getitem__", torch.Tensor.__getitem__, is_bool_index)
        for name in _TORCH_FUNCS:
            guard(torch, name, getattr(torch, name))
        for name in _LINALG_FUNCS:
            guard(torch.linalg, name, getattr(torch.linalg, name))
        yield state
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)
