"""How many CPU threads torch uses for a run: the ``threads`` option of the run specification.

``threads=N`` (an int ≥ 1) uses N threads. ``threads=None`` (the default) chooses:

1. When the environment sets ``OMP_NUM_THREADS`` (a batch system, a Dask worker, ``scripts/test.sh``), torch's
   own setting is kept: whoever set it knows how many cores this process may use.
2. Otherwise pyrod times one gradient of the problem on one thread (CPU time, so a busy machine does not inflate
   it): below :data:`SMALL_GRADIENT_SECONDS` the run uses one thread; above it every core this process may use
   (``os.sched_getaffinity``), unless the machine is busy — the 1-minute load average, less this process, leaves
   less than one core free — when it uses one thread too. Problems on a CUDA device keep torch's setting (the CPU
   only feeds the GPU).

Why: for small problems (the README's examples, the digits MLPs: a gradient in a few milliseconds) torch's
default of one thread per core is slower than one thread even on an idle 2-core machine, and many times slower
on a shared one (the same Adam run took 249.5 s with the default threads and 11.3 s with one on a machine at
load 5–7), because the threads wait for each other at every small BLAS call. Large problems (a gradient of tens of
milliseconds and more) gain from the cores. The crossover was measured with ``python benchmarks/threads.py``
(docs/howto/threads.md has the table and the load it was measured at).

The count used is recorded in the file (root attribute ``threads``) and in the checkpoint; :func:`pyrod.resume`
uses it again, so that a resumed run is bit-identical (floating-point reductions depend on the thread count).
"""
from __future__ import annotations

import contextlib
import os
import time

__all__ = ["SMALL_GRADIENT_SECONDS", "available_cores", "busy_cores", "choose", "using", "gradient_cpu_seconds"]

#: one-thread CPU time of one gradient below which a run uses one thread (benchmarks/threads.py)
SMALL_GRADIENT_SECONDS = 0.02


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def gradient_cpu_seconds(problem) -> float:
    """CPU seconds of one gradient of ``problem`` at ``w0`` on one thread (``grad_fn``: not counted in ``n_grad``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w = problem.w0
        problem.grad_fn(w)                  # warm-up: the first call builds torch.func's machinery (~1 s)
        t0 = time.thread_time()
        problem.grad_fn(w)
        return time.thread_time() - t0
    finally:
        torch.set_num_threads(before)


def choose(threads, problem) -> tuple[int | None, str]:
    """``(count, why)``: the thread count for a run of ``problem`` (None: keep torch's setting) and the rule's
    reason in words (recorded in the file)."""
    if threads is not None:
        return int(threads), "threads given"
    if "OMP_NUM_THREADS" in os.environ:
        return None, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} in the environment"
    if getattr(problem.device, "type", "cpu") != "cpu":
        return None, f"problem on {problem.device}"
    cores = available_cores()
    if cores == 1:
        return 1, "one core available"
    sec = gradient_cpu_seconds(problem)
    grad = f"one gradient takes {sec * 1e3:.3g} ms"
    if sec < SMALL_GRADIENT_SECONDS:
        return 1, f"small problem: {grad} < {SMALL_GRADIENT_SECONDS * 1e3:g} ms"
    others = busy_cores()
    if others is not None and cores - others < 1:
        return 1, f"large problem ({grad}), but the machine is busy (load of other work {others:.1f} on {cores} cores)"
    return cores, f"large problem: {grad} >= {SMALL_GRADIENT_SECONDS * 1e3:g} ms"


def busy_cores() -> float | None:
    """Cores other work keeps busy: the 1-minute load average less this process's own share (None where the
    load average is unknown)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return max(0.0, load - 1.0)


@contextlib.contextmanager
def using(count: int | None):
    """Run the block with torch at ``count`` threads (None: unchanged); the old setting is restored after."""
    import torch

    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(int(count))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
