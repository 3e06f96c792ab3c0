"""``FlowRun``: integrates one flow model chunk by chunk alongside the discrete run.

For each chunk of discrete steps ``k0 … k1`` the flow is integrated (by the chosen backend) to
``k1 + ½`` with saves at every half step, then read out at each integer ``k``: the standard diagnostics
at the flow's centre, ``centre_distance`` = ‖w_flow(k + compare_shift) − (w_k + w_{k+1})/2‖ and its
relative version, model-specific extras (rod: iterate distance, half-length, rod loss), and cumulative
``n_grad``/``n_hvp``. Located events are collected into the group attribute ``events`` (JSON).
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import torch

from ..integrate import get_backend, resolve_backend, takes_tensors, trait_method
from ..integrate.base import Event, EventRecord, FlowProblem
from ..integrate.fixed_step import DEFAULT_SUBSTEPS
from ..runs.measure import standard_variables
from ..schema import PARAMETER_UNITS, Var
from .cost import CountingProblem

__all__ = ["FlowRun"]

_STATE_VERSION = 1


class FlowRun:
    """One flow run: a :class:`~pyrod.flows.models.FlowModel` integrated chunk by chunk (see the module docstring).

    ``backend``/``method``/``rtol``/``atol``/``max_step``/``substeps``/``options``: the integrator (``options``:
    backend keys, checked by :func:`pyrod.integrate.check_options`). ``events``: :class:`EventSpec` list.
    ``restart_at``: the flow starts from the discrete state at this step. Bounded work on a diverging flow
    (each ends the flow with ``flow_status`` saying why): ``divergence_factor`` (the loss at the flow centre above
    this multiple of its initial value, or ``‖y‖`` above this multiple of ``max(1, ‖y0‖)``), ``min_step``
    (relative step-size floor) and ``max_rhs_per_unit`` (right-hand sides per optimizer step of progress, per
    segment); see :class:`pyrod.integrate.FlowProblem`.

    Cost counters belong to the run: the model and the measurer see the problem through a
    :class:`~pyrod.flows.cost.CountingProblem`, so runs sharing a ``Problem`` never mix their counts.
    :meth:`state_dict` / :meth:`load_state_dict` (between chunks) make a run resumable bit for bit.
    """

    def __init__(self, model, measurer, *, backend=None, method=None, rtol=None, atol=None,
                 max_step=math.inf, events=(), restart_at=None, divergence_factor=1e6, substeps=None,
                 min_step=1e-9, max_rhs_per_unit=2000.0, options=None):
        from ..integrate import check_method, check_options

        self.problem = CountingProblem(model.problem)   # this run's own gradient / HVP counters
        model.problem = self.problem
        measurer.problem = self.problem
        self.model, self.measurer = model, measurer
        self.opt = model.opt
        self.name = model.name
        # the concrete backend: None -> "torch" on a CUDA problem, else "scipy"; "auto" -> torch on CUDA, else Julia
        # or SciPy (recorded in the group attribute ``backend``)
        backend = resolve_backend(backend, model.problem.device)
        self.backend_name = backend
        self.integrate = get_backend(backend)
        # a tensor backend (TENSORS = True, e.g. "torch") gets and returns torch tensors on the problem's device and
        # dtype: no host copy per right-hand side (see _flow_problem)
        self.tensors = takes_tensors(self.integrate)
        model.tensor_states = self.tensors
        # per-flow default integrator (``FlowModel.method_trait`` -> ``Backend.trait_methods``: stable / rod RK23 or
        # bosh3, central
        # Euler) where the user gave no method; the spec keeps method=None (the user's intent), the group attributes
        # record the method used (only when the user chose neither a method nor tolerances: a given rtol means
        # "this accuracy, with the backend's own default method")
        flow_default = trait_method(backend, model.method_trait)
        self.method_from_model = method is None and rtol is None and atol is None and flow_default is not None
        if self.method_from_model:
            method = flow_default
        # tolerances the user did not give: the model's defaults for its default method, else 1e-6 / 1e-9
        tol = getattr(model, "default_tolerances", None) if self.method_from_model else None
        if rtol is None:
            rtol = tol[0] if tol else 1e-6
        if atol is None:
            atol = tol[1] if tol else 1e-9
        self.method, self.rtol, self.atol, self.max_step = method, rtol, atol, max_step
        self.event_specs = list(events)
        self.k_start = int(restart_at or 0)
        self.divergence_factor = divergence_factor
        self.substeps = substeps
        self.min_step, self.max_rhs_per_unit = min_step, max_rhs_per_unit
        self.user_options = dict(options or {})
        check_method(backend, method)
        check_options(backend, self.user_options, method)
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
        self.max_norm = None   # ‖y‖ bound (divergence), set from the initial state
        self.fp = None
        self.progress = None   # optional callback(t) after each accepted step (progress display; not state)
        # [(t, n_grad, n_hvp)] at the start of the chunk's integration and after each accepted step of it (on_accept):
        # the rows' cumulative counts (_row_counts); rebuilt by every chunk, so not state
        self._cost_log = []
        # the "eos" event's warm-started eigen tracker (state, restored by load_state_dict)
        self._eos_tracker = None
        if any(e.kind == "eos" for e in self.event_specs):
            from ..spectra import EigTracker
            self._eos_tracker = EigTracker(1, tol=1e-10, max_iter=50, warn=False)
        model.n_eig = measurer.n_eig  # length of the "eig" dim of model-specific (t, eig) variables
        model.spectrum_at = self._spectrum_at
        model.spectrum_needs = self._spectrum_needs

    @property
    def cum(self) -> list:
        """``[n_grad, n_hvp]`` of this run so far."""
        return [self.problem.n_grad, self.problem.n_hvp]

    # ------------------------------------------------------------------ state (between chunks)
    def state_dict(self) -> dict:
        """Everything that affects what comes next, as tensors / arrays / scalars / str / None in lists and dicts
        (``torch.save``-able). Call between chunks (after :meth:`advance` returned). A fresh ``FlowRun`` built with
        the same model class, options, problem and optimizer continues bit-identically after
        :meth:`load_state_dict`."""
        st = {
            "version": _STATE_VERSION, "name": self.name,
            "y": self.y, "t": self.t, "saved": dict(self.saved), "h_last": self.h_last,
            "loss0": self.loss0, "max_norm": self.max_norm, "stopped": self.stopped,
            "event_records": [e.as_dict() for e in self.event_records],
            "n_rhs": self.n_rhs, "n_jvp": self.n_jvp,
            "n_grad": self.problem.n_grad, "n_hvp": self.problem.n_hvp,
            "eos_tracker": None if self._eos_tracker is None else self._eos_tracker.state_dict(),
            "measurer": self.measurer.state_dict(),
            "model": self.model.state_dict(),
        }
        return copy.deepcopy(st)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into this run (freshly constructed, same configuration)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"flow state version {state.get('version')!r} is not {_STATE_VERSION}")
        if state.get("name") != self.name:
            raise ValueError(f"flow state of run {state.get('name')!r} cannot be loaded into run {self.name!r}")
        if (state["eos_tracker"] is None) != (self._eos_tracker is None):
            raise ValueError("flow state and this run disagree on the 'eos' event")
        state = copy.deepcopy(state)
        dev, dt = self.problem.device, self.problem.dtype

        def tensor(v):
            return None if v is None else v.to(device=dev, dtype=dt)

        self.y, self.t = tensor(state["y"]), (None if state["t"] is None else float(state["t"]))
        self.saved = {int(i): tensor(v) for i, v in state["saved"].items()}
        self.h_last, self.loss0, self.max_norm = state["h_last"], state["loss0"], state["max_norm"]
        self.stopped = state["stopped"]
        self.event_records = [EventRecord(**e) for e in state["event_records"]]
        self.n_rhs, self.n_jvp = int(state["n_rhs"]), int(state["n_jvp"])
        self.problem.set_counts(state["n_grad"], state["n_hvp"])
        if self._eos_tracker is not None:
            self._eos_tracker.load_state_dict(state["eos_tracker"])
        self.measurer.load_state_dict(state["measurer"])
        self.model.load_state_dict(state["model"])
        self.fp = self._flow_problem() if self.y is not None else None

    # ------------------------------------------------------------------ output schema
    def variables(self) -> list:
        return standard_variables(self.measurer.n_eig, self.opt.has_nu) + [
            Var("centre_distance", ("t",), "distance of the flow centre to the discrete centre (w_k+w_{k+1})/2 "
                f"(flow read at k+{self.model.compare_shift:g})", PARAMETER_UNITS),
            Var("relative_centre_distance", ("t",), "centre_distance / norm of (w_k+w_{k+1})/2", "1"),
            Var("n_grad", ("t",), "cumulative gradient evaluations of this run through row t: its integration up to "
                "the last accepted step that ended at or before the row's time (t, or t + compare_shift), that "
                "step's checks included, plus the read-outs of its chunk's rows up to t (a chunk is integrated "
                "first, then read out)", "1"),
            Var("n_hvp", ("t",), "cumulative Hessian-vector products of this run through row t (as n_grad; third "
                "derivatives count their backward passes: pyrod.flows.cost)", "1"),
        ] + self.model.extra_variables()

    def dims(self) -> dict:
        """Dimensions of the model's own variables besides ``t`` and ``eig`` (``FlowModel.extra_dims``)."""
        return dict(self.model.extra_dims())

    def attrs(self) -> dict:
        euler = str(self.method).lower() == "euler"
        return {"run": self.name, "backend": self.backend_name, "method": self.method or "default",
                "method_is_flow_default": int(self.method_from_model),
                **({"substeps": int(self._integrator_options().get("substeps") or DEFAULT_SUBSTEPS)} if euler else {}),
                "rtol": self.rtol, "atol": self.atol, "bea": int(self.model.bea),
                "restart_at": self.k_start, "compare_shift": self.model.compare_shift,
                "bias_factor_time_shift": self.model.tshift,
                "events_requested": json.dumps([e.name for e in self.event_specs]),
                **self.model.run_attrs()}

    def final_attrs(self) -> dict:
        return {"events": json.dumps([e.as_dict() for e in self.event_records]), "n_rhs": self.n_rhs,
                "n_jvp": self.n_jvp, "flow_status": self.stopped or "ok",
                **self.model.final_attrs()}

    # ------------------------------------------------------------------ numpy <-> torch
    def _to_torch(self, y):
        """The state ``y`` as a tensor on the problem's device and dtype. A NumPy state equal to the one converted
        last (``np.array_equal``, on the host: no device synchronisation) gets the very same tensor back, unless
        that tensor was written in place since: a SciPy backend hands the accepted state to ``on_accept``, the
        divergence check and the next right-hand side as separate arrays, and caches keyed by tensor identity
        (the problem's Hessian graph, :class:`pyrod.tensor_identity.TensorKey`) then see one point, not three."""
        if isinstance(y, torch.Tensor):   # a tensor backend's state: already on the device (no copy when it matches)
            return y.to(device=self.problem.device, dtype=self.problem.dtype)
        memo = getattr(self, "_np_memo", None)
        if memo is not None and memo[1]._version == memo[2] and np.shape(y) == memo[0].shape \
                and np.array_equal(memo[0], y):
            return memo[1]
        arr = np.array(y, dtype=np.float64, copy=True)
        t = torch.as_tensor(arr.copy()).to(device=self.problem.device, dtype=self.problem.dtype)
        self._np_memo = (arr, t, t._version)
        return t

    @staticmethod
    def _to_numpy(y):
        return y.detach().to(dtype=torch.float64).cpu().numpy()

    def _flow_problem(self) -> FlowProblem:
        model, prob = self.model, self.problem
        n_grad_rhs = model.grads_per_rhs * (2 if model.bea else 1)
        n_hvp_rhs = model.grads_per_rhs if model.bea else 0

        def rhs(t, y):
            self.n_rhs += 1
            prob.count(grad=n_grad_rhs, hvp=n_hvp_rhs)
            return self._to_numpy(self.rhs_t(float(t), self._to_torch(y)))

        if self.tensors:   # the state stays a tensor on the problem's device: no conversion at all
            def rhs(t, y):  # noqa: F811
                self.n_rhs += 1
                prob.count(grad=n_grad_rhs, hvp=n_hvp_rhs)
                return self.rhs_t(float(t), y)

        def jvp(t, y, v):
            from torch.func import jvp as tjvp
            self.n_jvp += 1
            prob.count(hvp=model.grads_per_rhs)
            out = tjvp(lambda yy: self.rhs_t(float(t), yy), (self._to_torch(y),), (self._to_torch(v),))[1]
            return out if self.tensors else self._to_numpy(out)

        hook = model.has_on_accept()   # model hook, e.g. eigen-subspace refresh (central)

        def on_accept(t, y):
            """After each accepted step, as the last thing of it (and at a terminal event's state): the model's
            hook, then the counts so far (:meth:`_row_counts`)."""
            if hook:
                model.on_accept(float(t), self._to_torch(y))
            self._cost_log.append((float(t), prob.n_grad, prob.n_hvp))

        on_save = None
        if model.has_on_save():     # e.g. central: its read-outs at integer times inside a step

            def on_save(t, y):
                # a saved state is not the accepted one: keep the conversion memo of the step end (_to_torch), so
                # that on_accept gets the very tensor its event checks got
                memo = getattr(self, "_np_memo", None)
                model.on_save(float(t), self._to_torch(y))
                self._np_memo = memo

        probe = None
        if self.tensors and model.has_probe():   # e.g. central: its tracking Rayleigh–Ritz in the step's transfer
            probe = model.probe
        return FlowProblem(rhs=rhs, n=model.layout.size, jvp=jvp, events=self._events(), method=self.method,
                           rtol=self.rtol, atol=self.atol, max_step=self.max_step, on_accept=on_accept,
                           on_save=on_save, probe=probe, options=self._integrator_options(), max_norm=self.max_norm,
                           diverged=self._score_hook() if self.tensors else self._diverged,
                           min_step=self.min_step, max_rhs_per_unit=self.max_rhs_per_unit)

    def _report(self, t):
        if self.progress is not None and isinstance(t, (float, int, np.floating)):
            self.progress(float(t))

    def _row_counts(self, t_row: float, integrated: list, read_out: list, start: int = 0,
                    final: bool = False) -> tuple:
        """``(n_grad, n_hvp, step)`` of the row whose states reach time ``t_row``: the counts after the last
        accepted step that ended at or before ``t_row`` (the chunk's start when none did; the chunk's whole
        integration, ``integrated``, for the ``final`` row the chunk writes (at its end, or the last before a
        terminal event or failure), and where no step was logged), plus what the
        chunk's read-outs have cost so far (``read_out``, the counts beyond ``integrated``); ``step`` is that
        step's index in the log, where the search for a later row may ``start``. A step that passes ``t_row``
        counts in a later row with the work of its ``on_accept`` (the central flow's checks and its read-outs at
        the integer times the step reached among them): no row counts work done after its time."""
        log, step = self._cost_log, start
        while step + 1 < len(log) and log[step + 1][0] <= t_row + 1e-9:
            step += 1
        g, h = (log[step][1], log[step][2]) if len(log) > 1 and not final else integrated
        return float(g + read_out[0]), float(h + read_out[1]), step

    def _diverged(self, t, y):
        """Divergence check after each accepted step: the loss at the flow centre (one forward pass)."""
        self._report(t)
        w, _ = self.model.centre(self._to_torch(y))
        L = float(self.problem.loss(w))
        if not math.isfinite(L):
            return f"non-finite loss {L} at the flow centre"
        bound = self.divergence_factor * max(self.loss0 or 0.0, 1e-300)
        if L > bound:
            return (f"loss {L:.3g} at the flow centre exceeded divergence_factor={self.divergence_factor:g} x "
                    f"initial loss {self.loss0:.3g}")
        return None

    def _score_hook(self):
        def score(t, y):
            return self._diverged_score(t, y)
        score.tensor_score, score.explain = True, self._diverged
        return score

    def _diverged_score(self, t, y):
        """Tensor form of :meth:`_diverged` for tensor backends: ``L(centre) − bound`` as a 0-dim tensor (``> 0`` or
        NaN is divergence), read by the backend in its one host transfer per step; ``explain`` gives the message."""
        self._report(t)
        w, _ = self.model.centre(y)
        L = self.problem.loss(w)
        bound = self.divergence_factor * max(self.loss0 or 0.0, 1e-300)
        return torch.where(torch.isfinite(L), L - bound, torch.full_like(L, float("nan")))

    def _integrator_options(self) -> dict:
        """Model hints the backend accepts, then ``substeps`` (where accepted), then the user's options."""
        from ..integrate import options_of
        valid = options_of(self.backend_name, self.method)
        opts = {k: v for k, v in self.model.integrator_options().items() if k in valid}
        if self.substeps is not None and "substeps" in valid:
            opts["substeps"] = int(self.substeps)
        opts.update(self.user_options)
        return opts

    def _events(self) -> list:
        out = []
        for spec in self.event_specs:
            if spec.kind == "eos":
                tracker = self._eos_tracker
                thr = float(self.opt.threshold())

                def fn(t, y, tracker=tracker, thr=thr):
                    yt = self._to_torch(y)
                    w, _ = self.model.centre(yt)
                    P = self.measurer.preconditioner(self.model.nu_of(yt), self.model.measure_time(t))
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
        # model events (central: critical-set entries / exits); their fn takes the torch state. The driver evaluates
        # every event of a step end on one state array in a row: the model's events share its conversion (the
        # last (t, array object) converted; a new array or another t converts again, through _to_torch's memo)
        memo = [None]

        def state(t, y):
            m = memo[0]
            if m is not None and m[0] == t and m[1] is y and not isinstance(y, torch.Tensor):
                return m[2]
            yt = self._to_torch(y)
            memo[0] = (t, y, yt, yt._version)
            return yt

        def state_checked(t, y):
            yt = state(t, y)
            if yt._version != memo[0][3]:            # written in place since: convert afresh
                memo[0] = None
                yt = state(t, y)
            return yt

        for ev in self.model.flow_events():
            out.append(Event(ev.name, (lambda t, y, f=ev.fn: f(float(t), state_checked(float(t), y))), ev.direction,
                             ev.terminal, ev.kind, ev.xtol))
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
        y0n = float(torch.linalg.vector_norm(self.y.to(torch.float64)))
        self.max_norm = float(self.divergence_factor) * max(1.0, y0n) if math.isfinite(y0n) else None
        self.fp = self._flow_problem()

    def advance(self, chunk) -> list:
        """Integrate through the chunk; return ``(t, values)`` records for its integer steps ≥ restart."""
        last = chunk.k0 + chunk.n_steps - 1
        if last < self.k_start or chunk.n_steps == 0:
            return []
        starting = self.y is None
        if starting:
            self._initialise(chunk)
        self.model.begin_chunk(chunk)   # e.g. central: discrete states for deltas; clears its pure cache
        if starting:
            self.model.on_start(self.t, self.y)
        t_target = last + self.model.compare_shift if self.model.compare_shift else float(last)
        self._cost_log = [(self.t, *self.cum)]
        if self.stopped is None and t_target > self.t:
            self._integrate_to(t_target)
        integrated, step = self.cum, 0
        records = []

        def states(k):
            return self.saved.get(2 * k), self.saved.get(int(round(2 * (k + self.model.compare_shift))))

        for k in range(max(chunk.k0, self.k_start), last + 1):
            yk, y_cmp = states(k)
            if yk is None or y_cmp is None:
                break  # the flow stopped before k (terminal event or failure)
            values = self._readout(k, yk, y_cmp, chunk)
            read_out = [now - before for now, before in zip(self.cum, integrated, strict=True)]
            final = k == last or None in states(k + 1)      # the chunk's last row: its whole integration
            values["n_grad"], values["n_hvp"], step = self._row_counts(max(k, k + self.model.compare_shift),
                                                                       integrated, read_out, step, final)
            records.append((float(k), values))
        self._cost_log = []
        # keep only what the next chunk can still need (the state at the last half step)
        self.saved = {i: v for i, v in self.saved.items() if i >= 2 * last - 1}
        return records

    def _integrate_to(self, t1):
        half = np.arange(math.floor(2 * self.t) + 1, math.floor(2 * t1 + 1e-9) + 1) / 2.0
        t_save = half[(half > self.t) & (half <= t1)]
        self.fp.first_step = None if self.h_last is None else min(self.h_last, max(t1 - self.t, 1e-6))
        y0 = self.y if self.tensors else self._to_numpy(self.y)
        seg = self.integrate(self.fp, self.t, y0, float(t1), t_save)
        for ts, ys in zip(seg.t_save, seg.y_save, strict=True):
            self.saved[int(round(2 * ts))] = ys.clone() if self.tensors else self._to_torch(ys)
        self.event_records.extend(seg.events)
        self.h_last = getattr(seg, "h_last", None)
        self.t, self.y = float(seg.t_end), self._to_torch(seg.y_end)
        if seg.status == "event":
            last = seg.events[-1] if seg.events else None
            self.stopped = f"terminal event {last.name} at t={last.t:.6g}" if last else "terminal event"
        elif seg.status == "failed":
            self.stopped = f"integration failed at t={seg.t_end:.6g}: {seg.message}"

    def _spectrum_needs(self, k):
        """``(k eigenpairs, relative residual tolerance)`` of the measurement at integer time ``k``; None if none."""
        if not self.measurer.wants_eigs(k):
            return None
        tr = self.measurer.tracker
        return tr.k, max(tr.tol, tr.floor)

    def _spectrum_at(self, k, y, init=None, init_AX=None, known=None):
        """The measurer's eigen diagnostics at integer time ``k`` from the flow state ``y`` (what :meth:`_readout`
        would measure there), warm-started from ``init`` (and ``init_AX``, the measurer's operator applied to its
        first columns, when known; with ``known`` eigenvalues and residuals, see
        :meth:`pyrod.runs.measure.Measurer.spectrum`); None where no eigenvalues are due at ``k``. The central flow
        calls this while its tracked eigenvectors at ``k`` are at hand (one warm solve instead of two)."""
        if not self.measurer.wants_eigs(k):
            return None
        w, _ = self.model.centre(y)
        return self.measurer.spectrum(w, self.model.nu_of(y), self.model.measure_time(k), init=init,
                                      init_AX=init_AX, known=known)

    def _readout(self, k, yk, y_cmp, chunk) -> dict:
        model = self.model
        w, _ = model.centre(yk)
        nu = model.nu_of(yk)
        s, s_next = chunk.state(k), chunk.state(k + 1)
        centre = 0.5 * (s.w + s_next.w)
        w_cmp, _ = model.centre(y_cmp)
        values = self.measurer.measure(w, step=k, nu=nu, t=model.measure_time(k),
                                       spectrum=model.stashed_spectrum(k, yk),
                                       extra={"centre_distance": torch.linalg.vector_norm(w_cmp - centre),
                                              "centre_norm": torch.linalg.vector_norm(centre)})
        dist = values["centre_distance"]
        values["relative_centre_distance"] = dist / max(values.pop("centre_norm"), 1e-300)
        y_prev_half = self.saved.get(2 * k - 1)
        values.update(model.readout(k, yk, y_prev_half, (s.w, s_next.w)))
        return values
