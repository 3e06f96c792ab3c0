"""How a run stops, and what it says then: Ctrl-C (:class:`InterruptFlag`, :class:`RunInterrupted`), out of memory
(:class:`RunOutOfMemory`), a full disk, a problem that cannot be rebuilt (:class:`NotReproducible`). Each message
names the step, what the file keeps and how to continue (:func:`explain_failure`). Used by :mod:`pyrod.simulation`,
which re-exports the public names."""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading

import torch

__all__ = ["RunInterrupted", "RunOutOfMemory", "NotReproducible", "NOT_REPRODUCIBLE", "explain_failure",
           "InterruptFlag"]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run. The message says at which step, that the file is valid, and how to continue — only
    when a checkpoint exists to continue from. Attributes: ``path`` (the file), ``step`` (steps done),
    ``resumable`` (a checkpoint of this run exists); :meth:`message` gives the text with the hint as a Python
    call (``form="python"``) or as a command line (``form="cli"``)."""

    def __init__(self, what: str, *, path=None, step=None, resumable: bool = False, why_not: str = ""):
        self.what, self.path, self.step, self.resumable, self.why_not = what, path, step, resumable, why_not
        super().__init__(self.message())

    def message(self, form: str = "python") -> str:
        text = f"pyrod: run {self.what}; the file {self.path!r} is valid"
        if self.resumable:
            how = (f"python -m pyrod resume {_shell_quote(self.path)}" if form == "cli"
                   else f"pyrod.resume({self.path!r})")
            return f"{text}; continue with {how}"
        return f"{text}; it cannot be resumed: {self.why_not}" if self.why_not else text


def _shell_quote(path) -> str:
    import shlex
    return shlex.quote(os.fspath(path))


class RunOutOfMemory(torch.cuda.OutOfMemoryError):
    """A run ran out of memory (CUDA or host). The message names the step, what is kept, and the remedy: a
    problem ``batch_size`` (exact full-batch values over micro-batches, in bounded memory)."""


def explain_failure(e, *, path, k, problem, ckpt_k):
    """A clearer error for a run stopped by ``e`` (None: ``e`` says enough): out of memory (CUDA or host) names
    ``batch_size`` as the remedy; a full disk says what the file holds. Both say how to continue."""
    kept = ""
    if path is not None:
        kept = f"; {path} holds the steps before {k} and is valid"
        if ckpt_k is not None:
            kept += f"; continue with pyrod.resume({path!r}) (from its checkpoint at step {ckpt_k})"
    oom = isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))
    if oom and not isinstance(e, RunOutOfMemory):
        bs = getattr(problem, "batch_size", None)
        remedy = (f"a smaller batch_size than {bs}" if bs else
                  "a batch_size, e.g. pyrod.problem(..., batch_size=256) or problem.batch_size in the run spec")
        where = f"on {problem.device}" if getattr(problem, "device", None) is not None else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        when = f"at step {k}" if k is not None else "while setting the run up"
        return RunOutOfMemory(f"out of memory {where} {when} ({first}); give the problem {remedy}: the same "
                              f"exact full-batch values, computed over micro-batches in bounded memory (fewer "
                              f"eigenvalues, eigs=, also need less){kept}")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        from .io.lock import os_error
        return os_error(OSError, errno.ENOSPC, f"{e}; the run stopped at step {k}"
                        f"{kept.replace('continue with', 'free some space, then continue with')}")
    return None


class NotReproducible(ValueError):
    """The run's problem has no replay config (built in memory: ``Problem(loss_fn=...)`` or
    ``Problem.from_module``)."""


NOT_REPRODUCIBLE = ("the problem was built in memory (Problem(loss_fn=..., w0=...) or Problem.from_module), which "
                    "records no way to rebuild it; use pyrod.Problem.from_factory('package.module:function', "
                    "**kwargs) (a function that returns the problem, or (model, X, Y, loss)) to make the run "
                    "reproducible, or pass problem=... to resume")


class InterruptFlag:
    """First Ctrl-C: finish the chunk, checkpoint, stop. Second: stop now (KeyboardInterrupt)."""

    def __init__(self, checkpoints: bool = True):
        self.requested = False
        self._old = None
        self._then = "to save a checkpoint" if checkpoints else "(this run writes no checkpoints)"

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # not the main interpreter
                self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\npyrod: Ctrl-C: finishing the current chunk {self._then} (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
