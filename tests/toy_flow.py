"""A flow defined outside pyrod and registered as a run kind (the example of docs/architecture.md, "Adding a flow").

``scaled_gd``: the gradient flow of gradient descent with its clock scaled, ``dw/dt = −s·η·∇L(w)`` (``s = scale``,
one time unit = one optimizer step). For ``s = 1`` it is GD's stable flow; on a quadratic
``L = ½ wᵀAw`` its solution is ``w(t) = exp(−s·η·A·t) w₀``, which the tests compare with.
Importing this module registers the kind (a second import is a no-op), so that a subprocess, a replay or a resume
can find it.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyrod
from pyrod.flows import FlowModel
from pyrod.flows.models import PhaseSpaceState
from pyrod.run_kinds import run_names


@dataclass(frozen=True)
class ScaledOptions:
    """Options of the ``scaled_gd`` run (checked when the spec is built)."""

    scale: float = 1.0
    """the clock factor s (> 0)"""

    def __post_init__(self):
        if not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise ValueError(f"scale={self.scale!r} must be a positive number")


class ScaledGradientFlow(PhaseSpaceState, FlowModel):
    """``dw/dt = −scale · η · ∇L(w)``; state ``y = w`` (d,); compared with the discrete centre at ``k + ½``."""

    compare_shift = 0.5

    def __init__(self, problem, optimizer, *, scale: float = 1.0):
        super().__init__(problem, optimizer)
        if optimizer.has_momentum or optimizer.has_nu:
            raise ValueError(f"scaled_gd is a flow of plain gradient descent, not of {optimizer.name}")
        self.scale = float(scale)
        self.layout = self._phase_layout()

    def rhs(self, t, y):
        return -self.scale * self.opt.lr * self.grad(y)

    def run_attrs(self) -> dict:
        return {"scale": self.scale}


KIND = pyrod.RunKind("scaled_gd", "gradient flow of GD with its clock scaled by `scale`", flow=True,
                     model=ScaledGradientFlow, options=ScaledOptions, color="tab:purple", label="scaled GD flow")
if "scaled_gd" not in run_names():
    pyrod.register_run_kind(KIND)
