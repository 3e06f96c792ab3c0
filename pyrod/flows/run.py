"""``FlowRun``: integrates one flow model chunk by chunk alongside the discrete run.

For each chunk of discrete steps ``k0 … k1`` the flow is integrated (by the chosen backend) to
``k1 + ½`` with saves at every half step, then read out at each integer ``k``: the standard diagnostics
at the flow's centre, ``centre_distance`` = ‖w_flow(k + compare_shift) − (w_k + w_{k+1})/2‖ and its
relative version, model-specific extras (rod: iterate distance, half-length, rod loss), and cumulative
``n_grad``/``n_hvp``. Located events are collected into the group attribute ``events`` (JSON).
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from ..integrate import get_backend
from ..integrate.base import Event, FlowProblem
from ..integrate.fixed_step import DEFAULT_SUBSTEPS
from ..output import Var
from ..runs.measure import standard_variables
from .events import EventSpec

__all__ = ["FlowRun"]


class FlowRun:
    def __init__(self, model, measurer, *, backend="scipy", method=None, rtol=1e-6, atol=1e-9,
                 max_step=math.inf, events=(), restart_at=None, divergence_factor=1e6, substeps=None):
        self.model, self.measurer = model, measurer
        self.problem, self.opt = model.problem, model.opt
        self.name = model.name
        self.backend_name = backend
        self.integrate = get_backend(backend)
        self.method, self.rtol, self.atol, self.max_step = method, rtol, atol, max_step
        self.event_specs = list(events)
        self.k_start = int(restart_at or 0)
        self.divergence_factor = divergence_factor
        self.substeps = substeps
        self.rhs_t = model.rhs_fn()
        self.y = None          # torch state at self.t
        self.t = None
        self.saved = {}        # half-step index (2t) -> torch state
        self.h_last = None
        self.n_rhs = 0
        self.n_jvp = 0
        self.event_records = []
        self.stopped = None    # reason the flow stopped early
        self.loss0 = None
        self.fp = None
        self.cum = [0, 0]      # this run's gradient / HVP evaluations before the current chunk
        self._mark = (0, 0)
        if hasattr(model, "n_eig"):  # length of the "eig" dim of model-specific (t, eig) variables
            model.n_eig = measurer.k

    # ------------------------------------------------------------------ output schema
    def variables(self) -> list:
        return standard_variables(self.measurer.k, self.opt.has_nu) + [
            Var("centre_distance", ("t",), "distance of the flow centre to the discrete centre (w_k+w_{k+1})/2 "
                f"(flow read at k+{self.model.compare_shift:g})", "1"),
            Var("relative_centre_distance", ("t",), "centre_distance / norm of (w_k+w_{k+1})/2", "1"),
            Var("n_grad", ("t",), "cumulative gradient evaluations of this run", "1"),
            Var("n_hvp", ("t",), "cumulative Hessian-vector products of this run", "1"),
        ] + self.model.extra_variables()

    def attrs(self) -> dict:
        euler = str(self.method).lower() == "euler"
        return {"run": self.name, "backend": self.backend_name, "method": self.method or "default",
                **({"substeps": int(self._integrator_options().get("substeps") or DEFAULT_SUBSTEPS)} if euler else {}),
                "rtol": self.rtol, "atol": self.atol, "bea": int(self.model.bea),
                "restart_at": self.k_start, "compare_shift": self.model.compare_shift,
                "bias_factor_time_shift": self.model.tshift,
                "events_requested": json.dumps([e.name for e in self.event_specs]),
                **getattr(self.model, "run_attrs", dict)()}

    def final_attrs(self) -> dict:
        return {"events": json.dumps([e.as_dict() for e in self.event_records]), "n_rhs": self.n_rhs,
                "n_jvp": self.n_jvp, "flow_status": self.stopped or "ok",
                **getattr(self.model, "final_attrs", dict)()}

    # ------------------------------------------------------------------ numpy <-> torch
    def _to_torch(self, y):
        return torch.as_tensor(np.array(y, dtype=np.float64, copy=True)).to(
            device=self.problem.device, dtype=self.problem.dtype)

    @staticmethod
    def _to_numpy(y):
        return y.detach().to(dtype=torch.float64).cpu().numpy()

    def _flow_problem(self) -> FlowProblem:
        model, prob = self.model, self.problem

        def rhs(t, y):
            self.n_rhs += 1
            prob.n_grad += model.grads_per_rhs * (2 if model.bea else 1)
            if model.bea:
                prob.n_hvp += model.grads_per_rhs
            return self._to_numpy(self.rhs_t(float(t), self._to_torch(y)))

        def jvp(t, y, v):
            from torch.func import jvp as tjvp
            self.n_jvp += 1
            prob.n_hvp += model.grads_per_rhs
            out = tjvp(lambda yy: self.rhs_t(float(t), yy), (self._to_torch(y),), (self._to_torch(v),))[1]
            return self._to_numpy(out)

        on_accept = None
        if getattr(model, "on_accept", None) is not None:  # model hook, e.g. eigen-subspace refresh (central)
            def on_accept(t, y):
                model.on_accept(float(t), self._to_torch(y))

        return FlowProblem(rhs=rhs, n=model.layout.size, jvp=jvp, events=self._events(), method=self.method,
                           rtol=self.rtol, atol=self.atol, max_step=self.max_step, on_accept=on_accept,
                           options=self._integrator_options())

    def _integrator_options(self) -> dict:
        opts = dict(getattr(self.model, "integrator_options", dict)())
        if self.substeps is not None:
            opts["substeps"] = int(self.substeps)
        return opts

    def _events(self) -> list:
        from ..spectra import EigTracker

        out = []
        for spec in self.event_specs:
            if spec.kind == "eos":
                tracker = EigTracker(1, tol=1e-10, max_iter=50, warn=False)
                thr = float(self.opt.threshold())

                def fn(t, y, tracker=tracker, thr=thr):
                    yt = self._to_torch(y)
                    w, _ = self.model.centre(yt)
                    P = self.measurer.preconditioner(self.model.nu_of(yt), t + self.model.tshift)
                    lam, _, _ = tracker(self.problem, w, P)
                    return float(lam[0]) / thr - 1.0
                out.append(Event(spec.name, fn, +1, spec.terminal, "eos"))
            elif spec.kind == "loss_target":
                def fn(t, y, v=spec.value):
                    w, _ = self.model.centre(self._to_torch(y))
                    return float(self.problem.loss(w)) - v
                out.append(Event(spec.name, fn, -1, spec.terminal, "loss_target"))
            elif spec.kind == "divergence":
                def fn(t, y):
                    w, _ = self.model.centre(self._to_torch(y))
                    L = float(self.problem.loss(w))
                    bound = self.divergence_factor * max(self.loss0 or 0.0, 1e-300)
                    return (L - bound) if math.isfinite(L) else 1.0
                out.append(Event(spec.name, fn, +1, True, "divergence"))
        # model events (central: critical-set entries / exits); their fn takes the torch state
        for ev in getattr(self.model, "flow_events", list)():
            out.append(Event(ev.name, (lambda t, y, f=ev.fn: f(float(t), self._to_torch(y))), ev.direction,
                             ev.terminal, ev.kind))
        return out

    # ------------------------------------------------------------------ advancing
    def _initialise(self, chunk):
        k0 = self.k_start
        s0, s1 = chunk.state(k0), chunk.state(k0 + 1)
        nu_next = None
        if self.opt.has_nu:
            g1 = self.problem.grad(s1.w)
            nu_next = self.opt.nu_update(s0.nu_used, g1, k0 + 1)
        self.y = self.model.initial_state(s0, s1, nu_next)
        self.t = float(k0)
        self.saved = {2 * k0: self.y}
        self.loss0 = float(self.problem.loss(self.model.centre(self.y)[0]))
        self.fp = self._flow_problem()

    def advance(self, chunk) -> list:
        """Integrate through the chunk; return ``(t, values)`` records for its integer steps ≥ restart."""
        last = chunk.k0 + chunk.n_steps - 1
        if last < self.k_start or chunk.n_steps == 0:
            return []
        self._mark = (self.problem.n_grad, self.problem.n_hvp)
        if self.y is None:
            self._initialise(chunk)
        if getattr(self.model, "begin_chunk", None) is not None:  # model hook (central: deltas at integer t)
            self.model.begin_chunk(chunk)
        t_target = last + self.model.compare_shift if self.model.compare_shift else float(last)
        if self.stopped is None and t_target > self.t:
            self._integrate_to(t_target)
        records = []
        for k in range(max(chunk.k0, self.k_start), last + 1):
            yk = self.saved.get(2 * k)
            y_cmp = self.saved.get(int(round(2 * (k + self.model.compare_shift))))
            if yk is None or y_cmp is None:
                break  # the flow stopped before k (terminal event or failure)
            records.append((float(k), self._readout(k, yk, y_cmp, chunk)))
        # keep only what the next chunk can still need (the state at the last half step)
        self.saved = {i: v for i, v in self.saved.items() if i >= 2 * last - 1}
        self.cum = self._counts()
        return records

    def _counts(self):
        return [self.cum[0] + self.problem.n_grad - self._mark[0], self.cum[1] + self.problem.n_hvp - self._mark[1]]

    def _integrate_to(self, t1):
        half = np.arange(math.floor(2 * self.t) + 1, math.floor(2 * t1 + 1e-9) + 1) / 2.0
        t_save = half[(half > self.t) & (half <= t1)]
        if self.h_last is not None:
            self.fp.first_step = min(self.h_last, max(t1 - self.t, 1e-6))
        seg = self.integrate(self.fp, self.t, self._to_numpy(self.y), float(t1), t_save)
        for ts, ys in zip(seg.t_save, seg.y_save):
            self.saved[int(round(2 * ts))] = self._to_torch(ys)
        self.event_records.extend(seg.events)
        self.h_last = getattr(seg, "h_last", None)
        self.t, self.y = float(seg.t_end), self._to_torch(seg.y_end)
        if seg.status == "event":
            last = seg.events[-1] if seg.events else None
            self.stopped = f"terminal event {last.name} at t={last.t:.6g}" if last else "terminal event"
        elif seg.status == "failed":
            self.stopped = f"integration failed at t={seg.t_end:.6g}: {seg.message}"

    def _readout(self, k, yk, y_cmp, chunk) -> dict:
        model = self.model
        w, _ = model.centre(yk)
        nu = model.nu_of(yk)
        values = self.measurer.measure(w, step=k, nu=nu, t=k + model.tshift)
        s, s_next = chunk.state(k), chunk.state(k + 1)
        centre = 0.5 * (s.w + s_next.w)
        w_cmp, _ = model.centre(y_cmp)
        dist = float(torch.linalg.vector_norm(w_cmp - centre))
        values["centre_distance"] = dist
        values["relative_centre_distance"] = dist / max(float(torch.linalg.vector_norm(centre)), 1e-300)
        values["n_grad"], values["n_hvp"] = map(float, self._counts())
        y_prev_half = self.saved.get(2 * k - 1)
        values.update(model.readout(k, yk, y_prev_half, (s.w, s_next.w)))
        return values
