"""Checkpoints: the complete state of a run, saved next to its NetCDF file and replaced atomically.

``PATH.ckpt`` (for the output file ``PATH``) holds, as one ``torch.save`` payload:

* ``spec``: the run's :class:`pyrod.spec.RunSpec` as a dict; ``k``: the steps done;
* ``runs``: each run's ``state_dict()`` — the discrete optimizer state ``(w, m, ν, k)``, each flow's state,
  integrator state (time, last accepted step size, saved half-step states), the central flow's tracked basis,
  eigenvalues and last complementarity solution, the measurers' eigen warm starts, event records, counters;
* ``pending``: the rows appended to the file but not yet written (they are written again on resume);
* ``counters``, ``rng`` (torch's CPU generator), ``wall_time_s``, ``stop_reason``.

Only the latest checkpoint is kept: it is written to a temporary file in the same folder, flushed to disk and
renamed over the old one (``os.replace``), so a process killed while checkpointing leaves the previous
checkpoint intact. Tensors are saved on the CPU and restored to the device of the run that loads them.
"""
from __future__ import annotations

import io
import os

import torch

__all__ = ["path_for", "save", "load", "remove_stale", "CHECKPOINT_FORMAT", "CheckpointError"]

CHECKPOINT_FORMAT = 1


class CheckpointError(FileNotFoundError):
    """No usable checkpoint (the message names the file and why)."""


def path_for(nc_path) -> str:
    """The checkpoint file of output file ``nc_path``: ``nc_path + ".ckpt"``."""
    return os.fspath(nc_path) + ".ckpt"


def save(path, payload: dict) -> int:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + ``os.replace``). Returns its size in bytes."""
    path = os.fspath(path)
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buf)
    data = buf.getbuffer()
    from .io.lock import ensure_space
    ensure_space(path, len(data), what="checkpoint")    # the previous checkpoint stays whole either way
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(data)


def remove_stale(path) -> None:
    """Delete the checkpoint ``path`` left by an earlier run of the same file (a new run replaced that file)."""
    try:
        os.unlink(os.fspath(path))
    except FileNotFoundError:
        pass


def load(path, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save` (CheckpointError when missing or unreadable)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        nc = path[:-5] if path.endswith(".ckpt") else path
        raise CheckpointError(f"no checkpoint {path!r}: {nc!r} was written without checkpoints "
                              f"(checkpoint_every=0, or no path), or before its first checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling error means the file is unusable
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path!r} is not a pyrod checkpoint of format {CHECKPOINT_FORMAT}")
    return payload
