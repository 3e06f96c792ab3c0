"""Central flow with the complementarity projection (Cohen, Damian et al. 2025; docs/central_flows.md).

Model: the iterates oscillate around a smooth centre, ``z_k = z(t) + δ_k``, with ``E[δ_w] = 0`` and
``E[δ_w δ_wᵀ] = Σ = U X Uᵀ`` supported on the *critical* eigen-directions ``U`` (``d×k``) of ``P̃⁻¹H`` whose effective
eigenvalue has reached the stability threshold. Units: ``P̃ = (threshold/2)·P`` (``P`` = the optimizer's
preconditioner without η), so that the effective eigenvalues ``λ̃ = λ(P̃⁻¹H) = 2·λ(P⁻¹H)/threshold`` are 2 at the
threshold (the reference's scale: for GD ``P̃ = 1/η``, ``λ̃ = ηλ``), ``UᵀP̃U = I``, ``HU = P̃U diag(λ̃)``. Time
averaging the optimizer's increment ``D`` to second order in δ::

    dz/dt = D(z; g → g + ½ ∇⟨H, Σ⟩, ν, t)              (= −P̃⁻¹[∇L + ½∇⟨H,Σ⟩] for GD / RMSProp)
    dν/dt = ν-velocity(ν, tgt(g) + E[tgt(Hδ)])       (E[tgt(Hδ)] = diag(HΣH), or tr(HΣH) for scalar ν)

``D`` is affine in ``g`` and linear in ``m`` for every optimizer with a central flow here, so the average over δ
only touches the gradient. ``X ⪰ 0`` solves, at every right-hand-side evaluation, the semidefinite
complementarity problem (SDCP) with a *relaxation time* ``τ`` (the continuous-time version of the reference's
Euler prediction ``A_next = A + dt·dA/dt``)::

    A = Uᵀ(2P̃ − H)U = diag(2 − λ̃),   dA/dt = Uᵀ(2 dP̃/dt − dH/dt)U  (U frozen),
    X ⪰ 0,   A + τ·dA/dt(X) ⪰ 0,   ⟨X, A + τ·dA/dt(X)⟩ = 0.

Where ``X`` is active this imposes ``dA/dt = −A/τ`` (the critical eigenvalues relax to 2 with time constant τ);
``τ → 0`` is the exact constraint, ``τ = dt`` is the reference's Euler scheme (default ``τ = 1/substeps``).
``dA/dt`` is affine in ``X`` (``α + β[X]``): ``dH/dt`` along ``dw/dt`` from third derivatives
``T_ij = ∇_w(u_iᵀHu_j)`` (one batched ``Problem.d3`` call for all pairs), ``dP̃/dt`` from ``∂P/∂ν·dν/dt + ∂P/∂t``.

Eigen-subspace tracking: a basis of the top eigenvectors of ``P̃^{-1/2}HP̃^{-1/2}`` is kept between steps. Each
right-hand side does a Rayleigh–Ritz of the pencil (H, P̃) on it at its own ``(w, ν, t)`` (``k_track`` HVPs), so
``U``, ``λ̃``, ``HU`` belong to the evaluation point; after every accepted step (``FlowProblem.on_accept``) the Ritz
residuals are checked and the basis improved by a Davidson expansion, or re-solved by warm LOBPCG
(:func:`pyrod.spectra.top_eigs`) when the tracked set changes. Read-outs at integer times are computed in
``on_accept`` with the basis current there, at the saved state (``FlowProblem.on_save``: the step end on Euler,
the step's interpolant where an adaptive step passes the integer time: :meth:`CentralFlow.on_accept`). Tracked: every
eigenvalue with effective sharpness ``λ/threshold ≥ track_threshold`` (0.75, the reference's 1.5) plus one below
it; critical: ``≥ sdcp_threshold`` (0.975, the reference's 1.95). Events of kind ``critical_set`` record each
entry / exit of an eigenvalue (``critical_enter_j`` / ``critical_leave_j``: the j-th largest crossed
``sdcp_threshold`` up / down), located to ``CRITICAL_EVENT_XTOL`` steps.

Momentum methods (EMA heavy ball, Adam, …): the same averaged increment in the phase space ``z = (w, m)`` with
the threshold ``opt.threshold()`` (``(2+2β1)/((1−β1)η)`` for EMA heavy ball / Adam); see
docs/momentum_central_flow.md. **Experimental** (warning + group attribute ``experimental = 1``).

Code layout: this module holds the model (options, right-hand side, read-out, events, state); the SDCP
projection (building α, β and solving) is :mod:`pyrod.flows.central_projection`; the subspace tracking
(Rayleigh–Ritz, Davidson expansion, LOBPCG refresh, residual checks) is :mod:`pyrod.flows.central_tracking`; the
state layout ``(w[, m][, ν])`` is shared with the stable flow (:class:`pyrod.flows.models.PhaseSpaceState`).

See docs/central_flows.md for the derivation, the options and the validation numbers.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .. import host
from ..central_options import CentralOptions
from ..integrate.base import Event
from ..integrate.fixed_step import DEFAULT_SUBSTEPS, check_substeps
from ..tensor_identity import TensorKey
from .central_projection import Eval, project
from .central_tracking import SubspaceTracking
from .difference_hvp import check_dtype as check_tracking_hvp_dtype
from .models import FlowModel, PhaseSpaceState
from .third_derivatives import check_dtype

__all__ = ["CentralFlow", "CentralFlowExperimentalWarning", "CENTRAL_OPTIONS", "check_options"]

#: option names accepted by :class:`CentralFlow` (through ``pyrod.simulate(..., runs=["central"], **options)``):
#: those of :class:`pyrod.central_options.CentralOptions` (names, defaults and checks declared there, once), the
#: integrator's ``substeps`` and ``bea`` (refused)
CENTRAL_OPTIONS = (*CentralOptions.names(), "substeps", "bea")

#: how finely a ``critical_set`` event's time is located, in steps. Each evaluation of its function is a Rayleigh–Ritz
#: with a Davidson expansion (2k HVPs) at an interpolated state, and the Ritz values it compares are good to about
#: ``refresh_tol²`` relative, a time resolution of ~1e-6 steps for eigenvalues that move by ~1 % per step: a finer
#: location (the driver's default 1e-12·t) took ~23 evaluations per crossing and changes nothing but the record.
CRITICAL_EVENT_XTOL = 1e-6


def check_options(options, spec) -> None:
    """The central run kind's check (:mod:`pyrod.run_kinds`): its options with the spec's integrator ``substeps``
    (:meth:`CentralFlow.validate_options`), before anything is computed."""
    CentralFlow.validate_options(**options.model_options(spec.integrator.substeps))


class _CounterClock:
    """The optimizer seen with its step counter running at ``rate`` per unit time from ``t0`` (the flow's start):
    every time argument ``t`` of :meth:`preconditioner`, :meth:`direction` and :meth:`increment` becomes
    ``t0 + rate·(t − t0)`` (and :meth:`preconditioner_rate`, ``∂P/∂t``, is scaled by ``rate``); everything else is
    the optimizer's own. Used for ``counter_rate="1/beta2"``."""

    def __init__(self, opt, rate: float):
        self._opt, self.rate, self.t0 = opt, float(rate), 0.0

    def clock(self, t):
        return self.t0 + self.rate * (t - self.t0)

    def preconditioner(self, nu, t):
        return self._opt.preconditioner(nu, self.clock(t))

    def preconditioner_rate(self, nu, t, P=None):
        return self.rate * self._opt.preconditioner_rate(nu, self.clock(t), P)

    def direction(self, w, m, g, nu, t):
        return self._opt.direction(w, m, g, nu, self.clock(t))

    def increment(self, w, m, g, nu, t):
        return self._opt.increment(w, m, g, nu, self.clock(t))

    def __getattr__(self, name):
        return getattr(self._opt, name)

def _stash_entry(v):
    """A stashed read-out ``(values, spectrum or None)`` from its checkpoint form ``[values, spectrum]`` (checkpoints
    written before the state cache was keyed by identity have a state digest first: ``[digest, values, spectrum]``)."""
    if len(v) == 3:
        v = v[1:]
    values, spec = v
    return dict(values), None if spec is None else dict(spec)


class CentralFlowExperimentalWarning(UserWarning):
    """The central flow of a momentum method is experimental (docs/momentum_central_flow.md)."""


class CentralFlow(PhaseSpaceState, SubspaceTracking, FlowModel):
    """Central flow of an optimizer with a smooth increment affine in the gradient (GD, (scalar) RMSProp; momentum
    methods experimentally). State ``y = (w[, m][, ν])`` as the stable flow; IC ``w(0) = w_0``, ``m(0) = 0``,
    ``ν(0) = ν_used(0)``; compared with the discrete centre ``(w_k + w_{k+1})/2`` at ``k + ½``.

    Options (all keyword; pyrod units are fractions of the threshold, i.e. effective sharpness):

    * ``sdcp_threshold`` (0.975): effective sharpness from which an eigen-direction enters the SDCP;
    * ``track_threshold`` (0.75): eigenpairs with effective sharpness above it are tracked (plus one below);
    * ``substeps`` (4): Euler substeps per unit time for ``method="euler"`` (passed to the integrator), and the
      default relaxation time ``τ = 1/substeps``;
    * ``tau`` (None → 1/substeps): relaxation time of the complementarity condition (see the module docstring);
    * ``eig_tol`` (1e-6), ``eig_max_iter`` (100): warm LOBPCG refreshes of the tracked subspace;
    * ``max_track`` (8): cap on the tracked eigenpairs (a warning once if more would be needed);
    * ``sdcp_tol`` (1e-10): tolerance of :func:`pyrod.sdcp.solve_sdcp`;
    * ``refresh_tol`` (1e-3): the tracked subspace is refreshed (warm LOBPCG) after an accepted step when a
      critical Ritz pair (or the next candidate) has a relative residual above it;
    * ``bea``: must be False (the backward-error correction needs a differentiable RHS; the SDCP is not).
    """

    name = "central"
    #: without a user ``method``: Euler with ``substeps`` per unit time (the reference's scheme, τ = 1/substeps), on
    #: the SciPy and the torch backend alike (:attr:`FlowModel.method_trait`).
    #: An adaptive method at rtol 1e-6 follows the non-smooth right-hand side (the critical set changes, the SDCP
    #: switches) with tiny steps: GD on a 4-class digits MLP (n = 400) did not finish 1200 steps in 30 minutes.
    method_trait = "fixed_step"
    tshift = 0.0
    compare_shift = 0.5
    grads_per_rhs = 1

    def __init__(self, problem, optimizer, *, bea: bool = False, substeps: int = DEFAULT_SUBSTEPS, **options):
        """``options``: the fields of :class:`pyrod.central_options.CentralOptions` (``sdcp_threshold``,
        ``track_threshold``, ``tau``, ``eig_tol``, ``eig_max_iter``, ``max_track``, ``sdcp_tol``, ``refresh_tol``,
        ``watch_margin``, ``counter_rate``, ``third_derivative``, ``tracking_hvp``; defaults there); ``substeps``:
        Euler steps per unit time."""
        o = self.validate_options(bea=bea, substeps=substeps, **options)
        super().__init__(problem, optimizer, bea=False)
        self.counter_rate = o["counter_rate"]
        if self.counter_rate == "1/beta2":
            beta2 = getattr(optimizer, "beta2", None)
            if not optimizer.has_nu or beta2 is None:
                raise ValueError(f"counter_rate='1/beta2' needs an optimizer with a second moment and beta2; "
                                 f"{optimizer.name} has none")
            self.opt = _CounterClock(optimizer, 1.0 / float(beta2))
        sdcp_threshold, track_threshold, substeps, tau = (o["sdcp_threshold"], o["track_threshold"], o["substeps"],
                                                          o["tau"])
        eig_tol, eig_max_iter, max_track, sdcp_tol, refresh_tol = (o["eig_tol"], o["eig_max_iter"], o["max_track"],
                                                                   o["sdcp_tol"], o["refresh_tol"])
        thr = float(optimizer.threshold())
        if not (math.isfinite(thr) and thr > 0):
            raise ValueError(f"optimizer {optimizer.name} has no finite stability threshold ({thr!r}); "
                             f"the central flow needs one")
        self.thr = thr
        self.c = thr / 2.0                                  # P̃ = c·P
        self.s_sdcp = 2.0 * float(sdcp_threshold)           # thresholds on λ̃ (2 = the stability threshold)
        self.s_track = 2.0 * float(track_threshold)
        self.sdcp_threshold, self.track_threshold = float(sdcp_threshold), float(track_threshold)
        self.substeps, self.tau = int(substeps), float(tau)
        self.eig_tol, self.eig_max_iter = float(eig_tol), int(eig_max_iter)
        self.max_track = int(min(max_track, self.d))
        self.sdcp_tol = float(sdcp_tol)
        self.refresh_tol = float(refresh_tol)
        self.third_derivative = o["third_derivative"]
        if self.third_derivative == "difference":
            check_dtype(self.problem.dtype)
        self.tracking_hvp = o["tracking_hvp"]
        if self.tracking_hvp == "difference":
            check_tracking_hvp_dtype(self.problem.dtype)
        # on λ̃ (2 = the stability threshold), as s_sdcp
        self.watch_margin = None if o["watch_margin"] is None else 2.0 * float(o["watch_margin"])
        self.n_eig = self.max_track                         # length of the "eig" dim (FlowRun sets measurer.n_eig)
        self.layout = self._phase_layout()                  # y = (w[, m][, ν]), as the stable flow
        self.experimental = bool(self.has_m)
        if self.experimental:
            warnings.warn(f"the central flow of {optimizer.name} (momentum) is experimental: derived in "
                          f"docs/momentum_central_flow.md, validated less than GD/RMSProp",
                          CentralFlowExperimentalWarning, stacklevel=2)
        self._check_affine()
        # --- tracking state (Y, k_track, lam_last, _cache: central_tracking)
        self._init_tracking()
        self._X_prev = None         # the last SDCP solution (warm start)
        self._pt_memo = None        # (t, TensorKey(ν) or None, P̃): the last P_tilde (pure)
        self._failed_dev = None     # device count of SDCP solves without a solution (flush_device_counts)
        self._warned = set()
        self._chunk = None          # discrete states of the chunk being integrated (FlowRun.begin_chunk)
        self._stash = {}            # k -> (read-out values, spectrum or None) computed during integration
        self._pending = []          # [(k, y(k))] integer read-out times saved inside the step being accepted (on_save)
        # --- counters (reported in the group attributes)
        self.stats = dict(n_rhs=0, n_refresh=0, refresh_grow=0, refresh_shrink=0, refresh_residual=0,
                          refresh_nonfinite=0, refresh_unconverged=0, refresh_hvp=0,
                          n_expand=0, expand_hvp=0, rr_hvp=0, n_t3=0, n_t3_calls=0, n_sdcp=0,
                          sdcp_iterations=0, sdcp_unconverged=0, sdcp_max_merit=0.0, t_eig=0.0, t_t3=0.0,
                          t_sdcp=0.0, max_critical=0, max_tracked=1, readout_fresh=0, refine_hvp=0,
                          n_planned_check=0, n_watched_check=0, sdcp_max_asymmetry=0.0)

    def warn_once(self, key: str, message: str) -> None:
        """A RuntimeWarning the first time ``key`` comes up in this run (the keys given are state)."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def count_device_failures(self, flag: torch.Tensor) -> None:
        """Remember a 0-dim device bool (a device SDCP solve without a solution), summed into the statistics at
        the next :meth:`flush_device_counts` (no transfer now)."""
        self._failed_dev = flag.to(torch.int64) if self._failed_dev is None else self._failed_dev + flag

    def flush_device_counts(self) -> None:
        """Read the device counters into ``stats`` (one transfer; at chunk boundaries and at the end)."""
        if self._failed_dev is None:
            return
        n = int(host.to_host(self._failed_dev)[()])
        self._failed_dev = None
        if n:
            self.stats["sdcp_unconverged"] += n
            self.stats["sdcp_max_merit"] = max(self.stats["sdcp_max_merit"], 1.0)
            self.warn_once("sdcp", f"central flow: SDCP not converged ({n} solves, k=1): α < 0 and β ≤ 0, the QP is "
                                   f"unbounded below, no SDCP solution (X = 0 used)")

    @staticmethod
    def validate_options(**options) -> dict:
        """Check central-flow options without building the flow (for ``prepare_flows``): TypeError for an unknown
        name, ValueError for a bad value. Returns the options with defaults filled in (``tau`` resolved)."""
        unknown = set(options) - set(CENTRAL_OPTIONS)
        if unknown:
            raise TypeError(f"unexpected central-flow options {sorted(unknown)}; valid: {sorted(CENTRAL_OPTIONS)}")
        o = dict(options)
        if o.pop("bea", False):
            raise ValueError("bea=True is not available for the central flow: the backward-error correction "
                             "differentiates the right-hand side, which contains the SDCP solve")
        substeps = check_substeps(o.pop("substeps", DEFAULT_SUBSTEPS))
        o = {**CentralOptions(**o).model_options(substeps), "bea": False}   # ValueError naming a bad value
        if o["tau"] is None:
            o["tau"] = 1.0 / substeps
        return o

    # ------------------------------------------------------------------ FlowModel interface
    # initial_state, centre, nu_of, _velocity: PhaseSpaceState (shared with the stable flow)
    def rhs(self, t, y):
        with torch.no_grad():
            ev = self.evaluate(t, y, count=False)   # FlowRun counts the RHS gradient
        return ev.dy

    def measure_time(self, k):
        """With ``counter_rate="1/beta2"`` the read-out's P⁻¹H uses the flow's own (mapped) counter, as its dynamics."""
        t = k + self.tshift
        return self.opt.clock(t) if isinstance(self.opt, _CounterClock) else t

    def initial_state(self, s0, s1, nu_next) -> torch.Tensor:
        if isinstance(self.opt, _CounterClock):
            self.opt.t0 = float(s0.k)          # the counter runs at 1/β2 from the flow's start
        self._pt_memo = None
        return PhaseSpaceState.initial_state(self, s0, s1, nu_next)

    # hooks read by FlowRun
    def integrator_options(self) -> dict:
        # no landing asked of an adaptive method: the read-outs at integer times are taken at the saved states
        # (on_save), from the step's interpolant where a step passes one
        return {"substeps": self.substeps}

    def on_save(self, t, y):
        """A saved state at an integer time of the chunk not yet read out: kept for :meth:`on_accept` of the step
        that reached it (the integrator saves before it accepts the step)."""
        if self._readout_due(t):
            self._pending.append((float(t), y))

    def on_accept(self, t, y):
        """After each accepted step: check / improve the tracked subspace
        (:meth:`~pyrod.flows.central_tracking.SubspaceTracking.track`) and compute the read-out at each integer time
        of the chunk the step reached, with the basis current there. An adaptive method's steps need not land on
        the integers: where a step passed one, ``k``, the state saved there (from the step's interpolant,
        :meth:`on_save`) is read out.

        * Far from the critical set at the last check (every tracked value below the track threshold) the check
          due at ``k`` is made there, and none at the step end unless the step ends on an integer time too (the
          next is due at the next integer time): one check per unit time, as when the steps landed on the integers.
        * Otherwise ``k`` is read out with a Rayleigh–Ritz on the basis of the last check (nothing of the tracking
          changes; the SDCP's warm start is put back, so the flow does not depend on its read-outs), then the step
          end is checked as after every step (its Rayleigh–Ritz is the one the event checks already made there).

        Where the step ends on an integer time (a fixed-step method, or an adaptive one asked to land there with
        ``exact_saves``) the read-out is taken at the accepted state after its check."""
        t = float(t)
        pending, self._pending = self._pending, []
        inside = [(k, yk) for k, yk in pending if k < t]
        with torch.no_grad():
            if inside and self._far():
                for k, yk in inside:
                    if self.track(k, yk):
                        self._stash_readout(k, yk)
                self._cache.clear()          # values at other states came from the basis before these checks
                if len(inside) < len(pending) and self.track(t, y):     # the step also ended on an integer time
                    self._stash_readout(t, y)
                return
            if inside and self.Y is not None:
                warm = self._X_prev
                for k, yk in inside:
                    self._stash_readout(k, yk)
                self._X_prev = warm
            if self.track(t, y):
                self._stash_readout(t, y)

    def on_start(self, t, y):
        """The flow's first state: the first refresh of the tracked subspace (the one its first right-hand side
        would do) and the read-out there (the integrator does not accept a step at it, so :meth:`readout` would
        otherwise solve the same eigenproblem again at the same state)."""
        with torch.no_grad():
            p = self.layout.unpack(y)
            self._ritz(float(t), y, p["w"], p.get("nu"), self.P_tilde(p.get("nu"), float(t)))
            self._stash_readout(float(t), y)

    def begin_chunk(self, chunk):
        """FlowRun hook: the discrete states of the chunk about to be integrated (for ``deltas`` at integer t).
        The evaluation cache is cleared: it is a pure cache, and a resumed run (empty cache) must do exactly
        the same HVPs as an uninterrupted one."""
        self._chunk = chunk
        self._cache = self._new_cache()
        self._grad_memo = self._new_cache(size=1)
        self._pending = []
        self._pt_memo = None
        self.flush_device_counts()
        self._stash = {k: v for k, v in self._stash.items() if k >= chunk.k0}

    def state_dict(self) -> dict:
        """Tracking state between chunks: basis ``Y``, ``k_track``, ``lam_last``, the SDCP warm start ``X_prev``,
        read-outs computed during integration (``stash``), ``stats`` (``n_refresh`` seeds LOBPCG) and the
        warnings already given. The cache and the chunk are not state (cleared / set by ``begin_chunk``)."""
        self.flush_device_counts()
        return {**self.tracking_state(), "X_prev": self._X_prev,
                "clock_t0": self.opt.t0 if isinstance(self.opt, _CounterClock) else None,
                "stash": {int(k): [dict(v[0]), None if v[1] is None else dict(v[1])]
                          for k, v in self._stash.items()},
                "stats": dict(self.stats), "warned": sorted(self._warned)}

    def load_state_dict(self, state: dict) -> None:
        self.load_tracking_state(state)
        if isinstance(self.opt, _CounterClock):
            self.opt.t0 = float(state["clock_t0"])
        self._pt_memo = None
        self._X_prev = None if state["X_prev"] is None else np.array(state["X_prev"])
        self._stash = {int(k): _stash_entry(v) for k, v in state["stash"].items()}
        self.stats = {**{k: type(v)(0) for k, v in self.stats.items()}, **state["stats"]}   # counters added later: 0
        self._warned = set(state["warned"])

    def _readout_due(self, t) -> bool:
        """Whether ``t`` is an integer time of the chunk being integrated not yet read out."""
        k = round(t)
        ck = self._chunk
        return t == k and ck is not None and ck.k0 <= k < ck.k0 + len(ck.states) and k not in self._stash

    def _stash_readout(self, t, y):
        """At an integer time ``t`` of the chunk, at the state the integrator saves there (an accepted step's end, a
        step's interpolant passed to :meth:`on_save`, or the flow's first state, :meth:`on_start`), compute the
        read-out now, with the basis that is current there (FlowRun reads out after the whole chunk, when the
        tracked basis has moved on). That state is the one FlowRun reads out at ``k``, so the stash is keyed by
        ``k`` alone."""
        if not self._readout_due(t):
            return
        k, ck = round(t), self._chunk
        pred = self._predictions(float(k), y, ck.state(k).w)
        spec = None
        if self.spectrum_at is not None:
            # the run's eigen diagnostics here too, from the tracked Ritz pairs at this very state: used as they are
            # when their residuals meet the measurement's tolerance, else as the warm start of its eigen-solve
            # (P~^{1/2} U: eigenvectors of P^{-1/2} H P^{-1/2}, eigenvalues c·λ~ with P~ = c·P)
            p = self.layout.unpack(y)
            Pt = self.P_tilde(p.get("nu"), float(k))
            rr = self._ritz(float(k), y, p["w"], p.get("nu"), Pt)
            need = self.spectrum_needs(k) if self.spectrum_needs is not None else None
            if need is not None:       # polish the pairs the measurement needs (not the tracked basis: the flow
                # does not depend on how often it is measured), from exact products (tracking_hvp="difference")
                rr = self._refine(p["w"], Pt, self.exact_products(p["w"], Pt, rr), *need)
            sq = Pt.sqrt()[:, None] if Pt.numel() > 1 else Pt.sqrt()[0]
            # V = P~^{1/2} U and S V = P^{-1/2} H P^{-1/2} V = c P~^{-1/2} H U (no HVPs)
            spec = self.spectrum_at(k, y, sq * rr.U, init_AX=self.c * rr.HU / sq, known=(self.c * rr.lam, rr.rel))
        self._stash[k] = (pred, spec)

    def stashed_spectrum(self, k, y_k):
        got = self._stash.get(k)
        return None if got is None else got[1]

    def run_attrs(self) -> dict:
        return {"sdcp_threshold": self.sdcp_threshold, "track_threshold": self.track_threshold,
                "tau": self.tau, "substeps": self.substeps, "max_track": self.max_track,
                "eig_tol": self.eig_tol, "sdcp_tol": self.sdcp_tol, "refresh_tol": self.refresh_tol,
                "watch_margin": "none" if self.watch_margin is None else self.watch_margin / 2.0,
                "counter_rate": self.counter_rate,
                "experimental": int(self.experimental),
                "units": "X, deltas, predicted_variances: P~-orthonormal coordinates, P~ = (threshold/2) P "
                         "(for GD P~ = 1/lr, as the reference implementation)"}

    def final_attrs(self) -> dict:
        self.flush_device_counts()
        return {f"central_{k}": (float(v) if isinstance(v, float) else int(v)) for k, v in self.stats.items()}

    def flow_events(self) -> list:
        """Events of kind ``critical_set``: the j-th largest effective eigenvalue crosses ``sdcp_threshold``."""
        out = []
        for j in range(self.max_track):
            fn = (lambda t, y, j=j: self._event_value(t, y, j))
            out.append(Event(f"critical_enter_{j + 1}", fn, +1, False, "critical_set", CRITICAL_EVENT_XTOL))
            out.append(Event(f"critical_leave_{j + 1}", fn, -1, False, "critical_set", CRITICAL_EVENT_XTOL))
        return out

    # ------------------------------------------------------------------ pieces
    def P_tilde(self, nu, t) -> torch.Tensor:
        """``P̃(ν, t) = (threshold/2)·P(ν, t)``: shape ``(d,)`` or ``(1,)``. The last value is kept for the same
        ``ν`` (:class:`~pyrod.tensor_identity.TensorKey`: the same tensor memory, not written since) and ``t``: the
        event checks, the right-hand side and the tracking ask for it at one state many times. Callers must not
        write into the result."""
        memo = self._pt_memo
        if memo is not None and memo[0] == t and (nu is None or memo[1].matches(nu)):
            return memo[2]
        if not self.has_nu:
            P = torch.ones(1, dtype=self.problem.dtype, device=self.problem.device)
        else:
            P = self.opt.preconditioner(nu, t)
        Pt = (self.c * P).to(dtype=self.problem.dtype, device=self.problem.device).reshape(-1)
        if nu is None:
            self._pt_memo = (t, None, Pt)
        else:
            self._pt_memo = (t, TensorKey(nu), Pt)
        return Pt

    def _check_affine(self):
        """D must be affine in g (and ν's target quadratic) for the average over δ used here."""
        gen = torch.Generator().manual_seed(0)
        d = self.d
        dt, dev = self.problem.dtype, self.problem.device
        r = lambda: torch.randn(d, generator=gen, dtype=torch.float64).to(dtype=dt, device=dev)  # noqa: E731
        w, m, a, b = r(), r(), r(), r()
        m = m if self.has_m else None
        nu = None
        if self.has_nu:
            nu = self.opt.nu_target(r()).abs() + 1.0
        D = lambda g: self.opt.direction(w, m, g, nu, 3.0)[0]  # noqa: E731
        z = torch.zeros_like(a)
        err = torch.linalg.vector_norm(D(a + b) - D(a) - D(b) + D(z))
        scale = torch.linalg.vector_norm(D(a)) + torch.linalg.vector_norm(D(b)) + 1e-300
        tol = max(1e-8, 100 * torch.finfo(dt).eps)   # relative: 1e-8 (float64), 1.2e-5 (float32) round-off
        bad = float(err / scale) > tol
        if self.has_nu and not bad:
            q = self.opt.nu_target
            e2 = torch.linalg.vector_norm(q(a + b) + q(a - b) - 2 * q(a) - 2 * q(b))
            bad = float(e2 / (torch.linalg.vector_norm(q(a)) + torch.linalg.vector_norm(q(b)))) > tol
        if bad:
            raise ValueError(f"optimizer {self.opt.name}: the central flow needs an increment D affine in the "
                             f"gradient and a quadratic second-moment target")

    def _event_value(self, t, y, j):
        if self._far():
            lam = self.lam_last          # far from critical: the last accepted values suffice (no HVPs)
        else:
            hit = self._cache.get("rr", float(t), y)       # the other events at this state: no P̃, no unpacking
            if hit is not None and hit.n_basis < self._basis_cols(float(t)):
                hit = None                   # a right-hand side's, on fewer columns than the check here takes
            if hit is not None:
                lam = self.with_unwatched(hit.lam, hit.n_basis)
            elif (lam := self.lam_at(float(t))) is not None:
                pass                         # a segment's first state: the last accepted check's values there
            else:
                # the accepted step's check will expand the basis here when due (track): do it now, once (the
                # event values then come from the pairs the step end keeps, as in a tensor backend's probe)
                p = self.layout.unpack(y)
                with torch.no_grad():
                    rr = self._ritz(float(t), y, p["w"], p.get("nu"), self.P_tilde(p.get("nu"), float(t)),
                                    expand=self.expand_due)
                # between whole checks the unwatched pairs give their values at the last whole check
                lam = self.with_unwatched(rr.lam, rr.n_basis)
        if j < lam.size:
            return float(lam[j]) - self.s_sdcp
        return min(float(lam[-1]), self.s_track) - self.s_sdcp

    def evaluate(self, t, y, count: bool = True) -> Eval:
        """All central-flow quantities at ``(t, y)``: Ritz pairs, X (SDCP) and ``dy/dt`` (cached per state and
        basis). ``count``: add the gradient to ``problem.n_grad`` (FlowRun counts the RHS calls itself)."""
        t = float(t)
        hit = self._cache.get("ev", t, y)
        if hit is not None:
            return hit
        ev = self._evaluate(t, y)
        self._cache.put("ev", t, y, ev)
        if count:
            self.problem.n_grad += 1
        return ev

    def _evaluate(self, t, y) -> Eval:
        """Ritz pairs at ``(t, y)``; with critical pairs, the SDCP projection (:func:`.central_projection.project`)."""
        opt = self.opt
        p = self.layout.unpack(y)
        w, m, nu = p["w"], p.get("m"), p.get("nu")
        ev = Eval()
        ev.t, ev.w, ev.m, ev.nu = t, w, m, nu
        far = self._far()
        # near the critical set the state's Rayleigh–Ritz (the event checks', usually done already) builds the
        # graph of ∇L for its HVPs: the gradient comes from it (the same values, one backward pass less)
        # (with tracking_hvp="difference" there is no graph: the gradient the differences started from)
        if not far and self.tracking_hvp == "difference":
            g = self.base_grad(w)
        else:
            g = None if far else self.problem.graph_grad(w)
            if g is None and not far:
                self._ritz(t, y, w, nu, self.P_tilde(nu, t), check=False)
                g = self.problem.graph_grad(w)
            g = self.grad(w).detach() if g is None else g
        ev.g = g
        Pt = self.P_tilde(nu, t)
        ev.Pt = Pt
        self.stats["n_rhs"] += 1
        # --- critical subspace at this point (λ̃ on the host: the critical count is read without a transfer)
        if far:
            lam, U, HU = self.lam_last, None, None
            kc = 0
        else:
            rr = self._ritz(t, y, w, nu, Pt, check=False)
            lam, U, HU = rr.lam, rr.U, rr.HU
            kc = int((lam > self.s_sdcp).sum())
        ev.lam, ev.kc = lam, kc
        ev.U = None if U is None else U[:, :kc]
        ev.HU = None if HU is None else HU[:, :kc]
        self.stats["max_critical"] = max(self.stats["max_critical"], kc)
        tgt0 = opt.nu_target(g) if self.has_nu else None
        if kc == 0:
            ev.set_host(X=np.zeros((0, 0)))
            ev.x = torch.zeros(0, dtype=g.dtype, device=g.device)
            ev.That = ev.Ghat = None
            self._X_prev = None
            ev.dy = self._velocity(w, m, nu, t, g, tgt0)
            return ev
        return project(self, ev, tgt0)

    # ------------------------------------------------------------------ read-out
    def extra_variables(self) -> list:
        from ..schema import Var
        return [
            Var("predicted_loss", ("t",), "central-flow prediction of the time-averaged loss L(w) + 1/2 <H, Sigma>",
                "1"),
            Var("predicted_grad_norm_sq", ("t",), "prediction of the time-averaged squared gradient norm "
                "||g||^2 + tr(H Sigma H)", "1"),
            Var("sigma_trace", ("t",), "trace of the predicted oscillation covariance Sigma = U X U^T (Euclidean)",
                "1"),
            Var("predicted_variances", ("t", "track"), "eigenvalues of X (descending): predicted variances of "
                "u_i^T P~ delta in the eigenbasis of Sigma, P~ = (threshold/2) P", "1"),
            Var("deltas", ("t", "track"), "empirical u_i^T P~ (w_k - w_central(k)) in the eigenbasis of Sigma "
                "(compare deltas^2 with predicted_variances on average; the sign is that of the eigenvector u_i, arbitrary)", "1"),
            Var("n_critical", ("t",), "number of eigen-directions in the SDCP (effective sharpness >= "
                "sdcp_threshold)", "1"),
            Var("n_tracked", ("t",), "number of tracked eigenpairs", "1"),
            Var("critical_sharpness", ("t", "track"), "effective sharpness lambda(P^-1 H)/threshold of the tracked "
                "directions (Rayleigh-Ritz at the central point, descending)", "1"),
            Var("sdcp_complementarity", ("t",), "relative complementarity residual of the SDCP solve", "1"),
        ]

    def extra_dims(self) -> dict:
        """``track``: one entry per tracked eigenpair (``max_track``), for ``predicted_variances``, ``deltas`` and
        ``critical_sharpness`` (NaN beyond the pairs tracked at that step), independent of ``eigs``."""
        return {"track": self.max_track}

    def readout(self, k, y_k, y_prev_half, discrete) -> dict:
        got = self._stash.pop(k, None)
        if got is not None:
            return got[0]
        # the integrator did not stop exactly at k: fresh eigen-solve at y_k
        self.stats["readout_fresh"] += 1
        saved = (self.Y, self.k_track, self.lam_last, self.lam_t, self._cache, self._X_prev, self.n_near,
                 self.full_next, self.full_prev)
        try:
            self._cache = self._new_cache()
            self.n_near = self.full_next = None         # a fresh basis: its Rayleigh–Ritz takes all of it
            with torch.no_grad():
                p = self.layout.unpack(y_k)
                self._refresh(float(k), p["w"], p.get("nu"))
                return self._predictions(float(k), y_k, discrete[0])
        finally:
            (self.Y, self.k_track, self.lam_last, self.lam_t, self._cache, self._X_prev, self.n_near,
             self.full_next, self.full_prev) = saved

    def _predictions(self, t, y, wk) -> dict:
        """Predictions at ``(t, y)`` (an integer time) and the empirical ``deltas`` against the discrete ``w_k``;
        the device values are read in one transfer."""
        with torch.no_grad():
            ev = self.evaluate(t, y)
            w, kc = ev.w, ev.kc
            n = self.max_track                 # everything computed is recorded (dim "track"), whatever eigs is
            parts = [self.problem.loss(w), torch.dot(ev.g, ev.g)]
            if kc:
                PU = (ev.Pt[:, None] * ev.U) if ev.Pt.numel() > 1 else ev.Pt[0] * ev.U
                parts += [ev.U.T @ ev.HU, ev.HU.T @ ev.HU, ev.U.T @ ev.U, PU.T @ (wk - w), ev.X_dev]
                if ev.alpha_dev is not None:           # the device closed form: its α, β come along
                    parts += [ev.alpha_dev, ev.beta_dev]
            vals = host.to_host(host.stack_scalars(parts, w))
            L, gn2 = float(vals[0]), float(vals[1])
            out = {"n_critical": float(kc), "n_tracked": float(self.k_track),
                   "critical_sharpness": np.asarray(ev.lam[:n], dtype=np.float64) / 2.0}
            if kc == 0:
                out.update(predicted_loss=L, predicted_grad_norm_sq=gn2, sigma_trace=0.0,
                           sdcp_complementarity=0.0)
                return out
            q = kc * kc
            UtHU, HtH, UtU = (vals[2 + i * q: 2 + (i + 1) * q].reshape(kc, kc) for i in range(3))
            PUdw = vals[2 + 3 * q: 2 + 3 * q + kc]
            X = vals[2 + 3 * q + kc: 2 + 4 * q + kc].reshape(kc, kc)
            if ev.alpha_dev is not None:
                ev.set_host(X=X, alpha=vals[-2:-1].reshape(1, 1), beta=vals[-1:].reshape(1, 1))
            xe, Q = np.linalg.eigh(0.5 * (X + X.T))
            xe, Q = xe[::-1].copy(), Q[:, ::-1].copy()
            out["predicted_loss"] = L + 0.5 * float((X * (0.5 * (UtHU + UtHU.T))).sum())
            out["predicted_grad_norm_sq"] = gn2 + float((X * HtH).sum())
            out["sigma_trace"] = float((X * UtU).sum())
            out["predicted_variances"] = xe[:n]
            out["deltas"] = (Q.T @ PUdw)[:n]
            out["sdcp_complementarity"] = float(ev.sdcp.complementarity)
        return out
