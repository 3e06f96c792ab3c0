"""The discrete optimizer run and the second-order midpoint run.

The discrete run advances in chunks of steps. For steps ``k0 … k0+n−1`` it returns one record of
diagnostics per step and the states ``z_{k0} … z_{k0+n}`` (one step of look-ahead: the rod centre
``(z_k + z_{k+1})/2`` and the midpoint ``¼(w_{k−1} + 2w_k + w_{k+1})`` need ``z_{k+1}``). Other runs
(flows, midpoint) consume these chunks, so every run sees the same discrete trajectory and memory stays
bounded by one chunk.

Besides the standard diagnostics (:mod:`pyrod.runs.measure`), an optimizer with a second moment records the
variation of ν over one rod length, ``nu_variation_max`` and ``nu_variation_norm``, from its buffers before and
after each step (:mod:`pyrod.runs.nu_variation`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..optimizers.base import OptState
from ..schema import PARAMETER_UNITS, Var
from . import nu_variation
from .measure import Measurer, standard_variables

__all__ = ["DiscreteState", "Chunk", "DiscreteRun", "MidpointRun"]


@dataclass
class DiscreteState:
    """The discrete run at integer step ``k``: ``w``, ``m``, ``nu_used`` (the ν in ``P`` at step ``k``) and ``nu`` (the
    second-moment buffer before step ``k``, ``OptState.nu``; ``nu_used`` is the buffer after it)."""

    k: int
    w: torch.Tensor
    m: torch.Tensor | None
    nu_used: torch.Tensor | None
    loss: float = math.nan
    nu: torch.Tensor | None = None


@dataclass
class Chunk:
    """Discrete states ``k0 … k0+n`` (``n+1`` states) and the steps completed in this chunk."""

    k0: int
    states: list = field(default_factory=list)
    n_steps: int = 0

    def state(self, k: int) -> DiscreteState:
        return self.states[k - self.k0]


class DiscreteRun:
    """Runs the optimizer; measures every step; stops on divergence or a loss target."""

    name = "discrete"

    def __init__(self, problem, optimizer, measurer: Measurer, *, loss_target: float | None = None,
                 divergence_factor: float = 1e6, state: OptState | None = None):
        self.problem, self.opt, self.measurer = problem, optimizer, measurer
        self.loss_target = loss_target
        self.divergence_factor = divergence_factor
        if state is None:
            loss0, g0 = self._gradient(problem.w0)
            state = optimizer.init_state(problem.w0, g0)
            self._pending = (loss0, g0)
        else:
            self._pending = None
        self.state = state
        self.loss0 = None
        self.stop_reason = None
        self.on_step = None     # optional callback(k) after each step k (progress display; not state)

    def variables(self) -> list:
        out = standard_variables(self.measurer.n_eig, self.opt.has_nu)
        return out + nu_variation.variables() if self.opt.has_nu else out

    # ------------------------------------------------------------------ explicit state
    def state_dict(self) -> dict:
        """Everything the next chunk depends on (see :meth:`load_state_dict`): the optimizer state
        ``(w, m, ν, k, extra)``, the gradient taken at ``w_0`` before the first step, the initial loss
        (divergence test), the stop reason and the measurer's eigen warm starts. Tensors are not copied."""
        st = self.state
        return {"opt_state": {"w": st.w, "m": st.m, "nu": st.nu, "k": int(st.k), "extra": dict(st.extra)},
                "pending": self._pending, "loss0": self.loss0, "stop_reason": self.stop_reason,
                "measurer": self.measurer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`: the next :meth:`run_chunk` is bit-identical to the uninterrupted run's."""
        o = state["opt_state"]
        self.state = OptState(o["w"], o["m"], o["nu"], int(o["k"]), dict(o["extra"]))
        self._pending = state["pending"]
        self.loss0 = state["loss0"]
        self.stop_reason = state["stop_reason"]
        self.measurer.load_state_dict(state["measurer"])

    def _gradient(self, w):
        """``(loss, gradient)`` that step from ``w`` uses: the full batch here (a mini-batch run draws a batch)."""
        return self.problem.loss_and_grad(w)

    def _loss_grad(self):
        if self._pending is not None:
            out, self._pending = self._pending, None
            return out
        return self._gradient(self.state.w)

    def _measure(self, st: OptState, new_state: OptState, nu_p, loss, g) -> dict:
        """The row of step ``st.k`` (the step from ``st`` to ``new_state`` taken with gradient ``g``), read in one
        host transfer, with the key ``grad_finite`` (whether ``g`` is finite; :meth:`run_chunk` removes it). The
        ν variation over the rod ``[z_k, z_{k+1}]`` (the buffer before and after step ``k``) joins that transfer."""
        extra = nu_variation.relative_change_tensors(st.nu, new_state.nu) if self.opt.has_nu else None
        return self.measurer.measure(st.w, step=st.k, nu=nu_p, t=st.k, loss=loss, grad=g, grad_finite=True,
                                     extra=extra)

    def dims(self) -> dict:
        """No dimensions besides ``t`` and ``eig`` (:class:`pyrod.run_kinds.Run`)."""
        return {}

    def final_attrs(self) -> dict:
        return {}

    def attrs(self) -> dict:
        """Attributes of this run's group in the file."""
        return {"run": "discrete"}

    def run_chunk(self, n: int):
        """Advance ``n`` steps. Returns ``(records, chunk)``; ``records`` is a list of ``(t, values)``."""
        records, chunk = [], Chunk(k0=self.state.k)
        for _ in range(n):
            st = self.state
            loss, g = self._loss_grad()
            # the step is queued before anything is read from the device; the loss, the finiteness of the gradient
            # and the diagnostics are then read in one transfer (eigenvalues only at a finite point)
            new_state, nu_p = self.opt.step(st, g)
            values = self._measure(st, new_state, nu_p, loss, g)
            loss_f = values["loss"]
            if self.loss0 is None:
                self.loss0 = abs(loss_f)
            if not (math.isfinite(loss_f) and values.pop("grad_finite")):
                records.append((float(st.k), {"loss": loss_f}))
                chunk.states.append(DiscreteState(st.k, st.w, st.m, None, loss_f, st.nu))
                self.stop_reason = "diverged: non-finite loss or gradient at step %d" % st.k
                break
            records.append((float(st.k), values))
            chunk.states.append(DiscreteState(st.k, st.w, st.m, nu_p, loss_f, st.nu))
            chunk.n_steps += 1
            self.state = new_state
            if self.on_step is not None:
                self.on_step(st.k)
            if loss_f > self.divergence_factor * max(self.loss0, 1e-300):
                self.stop_reason = (f"diverged: loss {loss_f:.3g} exceeded divergence_factor="
                                    f"{self.divergence_factor:g} x initial loss at step {st.k}")
                break
            if self.loss_target is not None and loss_f <= self.loss_target:
                self.stop_reason = f"loss_target: loss {loss_f:.3g} <= {self.loss_target:g} at step {st.k}"
                break
        if chunk.n_steps == len(chunk.states):
            # look-ahead state z_{k0+n} (its nu_used is not known until its gradient is taken)
            st = self.state
            chunk.states.append(DiscreteState(st.k, st.w, st.m, None, nu=st.nu))
        return records, chunk


class MidpointRun:
    """Second-order midpoint of the discrete run: ``w*_k = ¼(w_{k−1} + 2w_k + w_{k+1})``, ``w*_0 = w_0``.

    Diagnostics are measured at ``w*_k`` with the discrete preconditioner of step ``k``.
    """

    name = "midpoint"

    def __init__(self, problem, optimizer, measurer: Measurer):
        self.problem, self.opt, self.measurer = problem, optimizer, measurer
        self.prev_w = None

    @classmethod
    def build(cls, problem, optimizer, measurer: Measurer, spec) -> "MidpointRun":
        """The run kind's builder (:mod:`pyrod.run_kinds`): the midpoint has no options."""
        return cls(problem, optimizer, measurer)

    def dims(self) -> dict:
        return {}

    def attrs(self) -> dict:
        return {"run": self.name}

    def final_attrs(self) -> dict:
        return {}

    def variables(self) -> list:
        return standard_variables(self.measurer.n_eig, self.opt.has_nu) + [
            Var("distance_to_discrete", ("t",), "Euclidean distance between w*_k and the discrete w_k",
                PARAMETER_UNITS)]

    def state_dict(self) -> dict:
        return {"prev_w": self.prev_w, "measurer": self.measurer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.prev_w = state["prev_w"]
        self.measurer.load_state_dict(state["measurer"])

    def advance(self, chunk: Chunk) -> list:
        records = []
        for i in range(chunk.n_steps):
            s, nxt = chunk.states[i], chunk.states[i + 1]
            w_star = s.w if self.prev_w is None else 0.25 * (self.prev_w + 2 * s.w + nxt.w)
            values = self.measurer.measure(w_star, step=s.k, nu=s.nu_used, t=s.k)
            values["distance_to_discrete"] = float(torch.linalg.vector_norm(w_star - s.w))
            records.append((float(s.k), values))
            self.prev_w = s.w
        return records
