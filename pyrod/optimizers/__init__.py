"""Optimizers, each defined once (state, step, preconditioner ``P(ν,t)``, threshold, increment ``D``).

>>> import pyrod
>>> opt = pyrod.optimizers.Adam(lr=1e-3)
>>> round(opt.threshold(), 6)    # (2 + 2β1) / ((1 − β1) η)
38000.0

See :mod:`pyrod.optimizers.base` for the conventions every flow relies on.
"""
from __future__ import annotations

import dataclasses

from ..keys import suggest, unknown
from .base import Optimizer, OptState, bias_factor
from .family import (
    GD,
    Adagrad,
    Adam,
    AdamW,
    AMSGrad,
    HeavyBall,
    NAdam,
    Nesterov,
    Padam,
    PreconditionedMomentum,
    RMSProp,
    ScalarAdam,
    ScalarNAdam,
    ScalarRMSProp,
)

__all__ = ["Optimizer", "OptState", "bias_factor", "PreconditionedMomentum", "GD", "HeavyBall", "Nesterov",
           "RMSProp", "ScalarRMSProp", "Adam", "ScalarAdam", "NAdam", "ScalarNAdam", "AdamW", "AMSGrad",
           "Padam", "Adagrad", "REGISTRY", "get", "from_config", "check_config"]

REGISTRY: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (GD, HeavyBall, Nesterov, RMSProp, ScalarRMSProp, Adam, ScalarAdam, NAdam,
                              ScalarNAdam, AdamW, AMSGrad, Padam, Adagrad)
}

try:  # optimizers with their own modules (added as they land)
    from .adafactor import Adafactor  # noqa: F401
    REGISTRY["Adafactor"] = Adafactor
    __all__.append("Adafactor")
except ImportError:  # pragma: no cover
    pass
try:
    from .muon import Muon  # noqa: F401
    REGISTRY["Muon"] = Muon
    __all__.append("Muon")
except ImportError:  # pragma: no cover
    pass


def get(name: str) -> type[Optimizer]:
    """Optimizer class by name (case-insensitive); ValueError listing the valid names."""
    for key, cls in REGISTRY.items():
        if key.lower() == str(name).lower():
            return cls
    raise ValueError(f"optimizer={name!r} is unknown{suggest(name, REGISTRY)}; valid names: {sorted(REGISTRY)}")


def check_config(cfg: dict, where: str = "optimizer") -> list[str]:
    """What is wrong with the names in an optimizer config (``{"name": "GD", "lr": 0.1}``): an unknown optimizer or
    unknown options, each with the closest valid name. Values are checked when the optimizer is built."""
    try:
        cls = get(cfg.get("name"))
    except ValueError as e:
        return [f"{where}: {e}"]
    msg = unknown(set(cfg) - {"name"}, [f.name for f in dataclasses.fields(cls)], f"{where} {cls.name}")
    return [msg] if msg else []


def from_config(cfg: dict) -> Optimizer:
    """Rebuild an optimizer from :meth:`Optimizer.config` output."""
    import torch

    from ..keys import SpecError

    wrong = check_config(cfg)
    if wrong:
        raise SpecError("; ".join(wrong))
    cfg = dict(cfg)
    cls = get(cfg.pop("name"))
    if cfg.get("frozen_nu") is not None:
        cfg["frozen_nu"] = torch.tensor(cfg["frozen_nu"], dtype=torch.float64)
    return cls(**cfg)
