"""Per-run cost counters: a :class:`~pyrod.problems.Problem` view that counts its own gradients and HVPs.

Every run (and every worker) that shares one ``Problem`` gets its own :class:`CountingProblem`; the counts of
two runs never mix. The view forwards everything to the shared problem, whose global counters
(``problem.n_grad``/``n_hvp``) keep counting too (older code diffs them).

Counted like :class:`~pyrod.problems.Problem` itself: ``grad`` and ``loss_and_grad`` are one gradient each;
``hvp(w, v)`` one HVP per column of ``v``; ``d3(w, u, v)`` two HVPs per column; ``d3_pairs`` as the problem counts
it (one per pair plus one per distinct second column on its cached graph); ``loss`` and ``grad_fn`` (the
pure function used inside flow right-hand sides) are not counted — flows add their RHS gradients with
:meth:`CountingProblem.count`.
"""
from __future__ import annotations

__all__ = ["CountingProblem"]


class CountingProblem:
    """A counting view of ``problem`` (see the module docstring). ``n_grad``/``n_hvp`` are this view's counts;
    assigning them (``view.n_grad += 1``) adds the difference to both the view and the shared problem."""

    def __init__(self, problem):
        if isinstance(problem, CountingProblem):
            problem = problem.base
        object.__setattr__(self, "base", problem)
        object.__setattr__(self, "_n_grad", 0)
        object.__setattr__(self, "_n_hvp", 0)

    # ------------------------------------------------------------------ counters
    @property
    def n_grad(self) -> int:
        return self._n_grad

    @n_grad.setter
    def n_grad(self, value) -> None:
        self.count(grad=int(value) - self._n_grad)

    @property
    def n_hvp(self) -> int:
        return self._n_hvp

    @n_hvp.setter
    def n_hvp(self, value) -> None:
        self.count(hvp=int(value) - self._n_hvp)

    def count(self, grad: int = 0, hvp: int = 0) -> None:
        """Add ``grad`` gradients and ``hvp`` HVPs (to this view and to the shared problem)."""
        object.__setattr__(self, "_n_grad", self._n_grad + int(grad))
        object.__setattr__(self, "_n_hvp", self._n_hvp + int(hvp))
        self.base.n_grad += int(grad)
        self.base.n_hvp += int(hvp)

    def set_counts(self, n_grad: int, n_hvp: int) -> None:
        """Restore this view's counts (a resumed run); the shared problem's counters are not touched."""
        object.__setattr__(self, "_n_grad", int(n_grad))
        object.__setattr__(self, "_n_hvp", int(n_hvp))

    # ------------------------------------------------------------------ counted calls (the base counts too)
    def grad(self, w):
        object.__setattr__(self, "_n_grad", self._n_grad + 1)
        return self.base.grad(w)

    def loss_and_grad(self, w):
        object.__setattr__(self, "_n_grad", self._n_grad + 1)
        return self.base.loss_and_grad(w)

    def hvp(self, w, v):
        object.__setattr__(self, "_n_hvp", self._n_hvp + (1 if v.ndim == 1 else int(v.shape[1])))
        return self.base.hvp(w, v)

    jvp_grad = hvp

    def d3(self, w, u, v):
        object.__setattr__(self, "_n_hvp", self._n_hvp + (2 if u.ndim == 1 else 2 * int(u.shape[1])))
        return self.base.d3(w, u, v)

    def d3_pairs(self, w, U, iu, ju):
        """Counted as the shared problem counts it (``m + len(set(ju))`` backward passes on its graph, ``2m`` in
        its forward mode)."""
        before = self.base.n_hvp
        out = self.base.d3_pairs(w, U, iu, ju)
        object.__setattr__(self, "_n_hvp", self._n_hvp + self.base.n_hvp - before)
        return out

    def hessian(self, w):
        import torch
        eye = torch.eye(self.base.dim, dtype=self.base.dtype, device=self.base.device)
        H = self.hvp(w, eye)
        return 0.5 * (H + H.T)

    # ------------------------------------------------------------------ everything else: the shared problem
    def __getattr__(self, name):
        return getattr(self.base, name)

    def __setattr__(self, name, value):
        if name not in ("n_grad", "n_hvp"):
            raise AttributeError(f"CountingProblem is a read-only view; cannot set {name!r}")
        object.__setattr__(self, name, value)   # the counter properties

    def __repr__(self) -> str:
        return f"CountingProblem({self.base!r}, n_grad={self._n_grad}, n_hvp={self._n_hvp})"
