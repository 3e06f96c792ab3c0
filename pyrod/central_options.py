"""The central flow's options, declared once: :class:`CentralOptions` (names, types, defaults, field docstrings and
checks) is the ``central`` section of the run specification (:class:`pyrod.spec.CentralSpec` adds only the
section behaviour) and what :class:`pyrod.flows.central.CentralFlow` validates its keywords with and reads its
defaults from. Stdlib only: the command line builds its flags from it before importing torch.

Thresholds are fractions of the stability threshold (effective sharpness ``λmax(P⁻¹H)/threshold``); times are in
optimizer steps.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .checks import check_float, check_int, set_frozen

__all__ = ["CentralOptions", "COUNTER_RATES", "THIRD_DERIVATIVES", "TRACKING_HVPS"]

#: values of ``central.counter_rate``
COUNTER_RATES = ("1", "1/beta2")
#: values of ``central.third_derivative``: "autograd" (the problem's exact ``d3_pairs``) or "difference"
#: (:func:`pyrod.flows.third_derivatives.d3_pairs_by_difference`, float64 only)
THIRD_DERIVATIVES = ("autograd", "difference")
#: values of ``central.tracking_hvp``: "autograd" (the problem's exact ``hvp``) or "difference"
#: (:func:`pyrod.flows.difference_hvp.hvp_by_difference`, float64 only)
TRACKING_HVPS = ("autograd", "difference")


@dataclass(frozen=True)
class CentralOptions:
    """Central flow (docs/central_flows.md). Thresholds are fractions of the stability threshold (effective
    sharpness); the reference implementation's 1.95 and 1.5 are 0.975 and 0.75 here."""

    sdcp_threshold: float = 0.975
    """effective sharpness from which a direction enters the complementarity problem"""
    track_threshold: float = 0.75
    """effective sharpness from which a direction is tracked"""
    tau: float | None = None
    """relaxation time of the complementarity condition, in optimizer steps (None: 1/substeps)"""
    eig_tol: float = 1e-6
    """relative residual of the tracked subspace's LOBPCG refreshes"""
    eig_max_iter: int = 100
    """most LOBPCG iterations per refresh"""
    max_track: int = 8
    """most eigenpairs tracked"""
    sdcp_tol: float = 1e-10
    """tolerance of the semidefinite complementarity solver"""
    refresh_tol: float = 1e-3
    """Ritz residual above which the tracked subspace is improved"""
    watch_margin: float | None = 0.05
    """between the whole checks at integer times, the evaluations check only the leading tracked directions up to
    the last one that is critical, the next candidate, or projected (twice its recent rise) to come within this
    margin of sdcp_threshold (effective sharpness) by the next integer time; the others keep their last whole check
    (None: every tracked direction at every evaluation)"""
    counter_rate: str = "1"
    """rate of the optimizer's step counter along the flow: "1" (one step per unit time, what the equations give)
    or "1/beta2" (the reference implementation's convention, for comparisons; docs/central_flows.md §7)"""
    third_derivative: str = "autograd"
    """how the third derivatives ∇(u_iᵀHu_j) of the critical directions are computed: "autograd" (exact) or
    "difference" (second differences of gradients, k(k+1) gradients for k critical directions; float64 only;
    relative error about 1e-8; cheaper where autograd's reverse over reverse is dear: convolutions, attention)"""
    tracking_hvp: str = "autograd"
    """how the Hessian-vector products of the tracked basis's Rayleigh–Ritz steps and Davidson expansions are
    computed: "autograd" (exact) or "difference" (one-sided differences of gradients, one gradient per product;
    float64 only; relative error about 5e-8; LOBPCG refreshes and eigenvalue measurements stay exact)"""

    def __post_init__(self):
        w = "central"
        set_frozen(self, "sdcp_threshold", check_float(w, "sdcp_threshold", self.sdcp_threshold, lo=0, hi=1,
                                                       open_hi=False))
        set_frozen(self, "track_threshold", check_float(w, "track_threshold", self.track_threshold, lo=0,
                                                        hi=self.sdcp_threshold))
        set_frozen(self, "tau", check_float(w, "tau", self.tau, lo=0, none=True))
        set_frozen(self, "eig_tol", check_float(w, "eig_tol", self.eig_tol, lo=0, hi=1))
        set_frozen(self, "eig_max_iter", check_int(w, "eig_max_iter", self.eig_max_iter, lo=1))
        set_frozen(self, "max_track", check_int(w, "max_track", self.max_track, lo=1))
        set_frozen(self, "sdcp_tol", check_float(w, "sdcp_tol", self.sdcp_tol, lo=0, hi=1))
        set_frozen(self, "refresh_tol", check_float(w, "refresh_tol", self.refresh_tol, lo=0, hi=1))
        set_frozen(self, "watch_margin", check_float(w, "watch_margin", self.watch_margin, lo=0, hi=1,
                                                                  open_lo=False, none=True))
        if self.counter_rate not in COUNTER_RATES:
            raise ValueError(f"central.counter_rate={self.counter_rate!r} is not one of {list(COUNTER_RATES)}: '1' "
                             f"(one optimizer step per unit time) or '1/beta2' (the reference implementation's "
                             f"convention)")
        if self.third_derivative not in THIRD_DERIVATIVES:
            raise ValueError(f"central.third_derivative={self.third_derivative!r} is not one of "
                             f"{list(THIRD_DERIVATIVES)}: 'autograd' (exact) or 'difference' (second differences "
                             f"of gradients, float64 only)")
        if self.tracking_hvp not in TRACKING_HVPS:
            raise ValueError(f"central.tracking_hvp={self.tracking_hvp!r} is not one of {list(TRACKING_HVPS)}: "
                             f"'autograd' (exact) or 'difference' (one-sided differences of gradients, float64 only)")

    @classmethod
    def names(cls) -> tuple:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(CentralOptions))

    def model_options(self, substeps: int | None) -> dict:
        """Keyword options of :class:`pyrod.flows.central.CentralFlow` (with the integrator's ``substeps``)."""
        out = {name: getattr(self, name) for name in self.names()}
        if substeps is not None:
            out["substeps"] = substeps
        return out
