"""Event specifications for flows: EoS entry, loss targets, divergence.

Users name events as strings or :class:`EventSpec`:

* ``"eos"`` — the effective sharpness λmax(P⁻¹H)/threshold at the flow's centre crosses 1 upward
  (evaluated with a warm-started top eigenpair, a few HVPs per call, not a full solve);
* ``"loss<1e-3"`` — the loss at the flow's centre falls below the value;
* ``"divergence"`` — the loss exceeds ``divergence_factor`` × the initial loss (terminal by default);

``EventSpec(kind, value=None, terminal=False)`` or a dict with those keys chooses terminal behaviour;
a trailing ``"!"`` on a string (``"loss<1e-3!"``) makes it terminal too.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..keys import suggest, unknown

__all__ = ["EventSpec", "parse_events"]

_KINDS = ("eos", "loss_target", "divergence")


@dataclass(frozen=True)
class EventSpec:
    kind: str
    value: float | None = None
    terminal: bool = False

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"event kind={self.kind!r} is unknown{suggest(self.kind, _KINDS)}; valid kinds: "
                             f"{list(_KINDS)}")
        if self.kind == "loss_target" and (self.value is None or not math.isfinite(self.value)):
            raise ValueError(f"loss_target event needs a finite value, got {self.value!r}")

    @property
    def name(self) -> str:
        if self.kind == "loss_target":
            return f"loss<{self.value:g}"
        return self.kind


def parse_events(events) -> list:
    """Strings / dicts / EventSpec -> list of EventSpec (ValueError naming a bad entry)."""
    if events is None:
        return []
    if isinstance(events, (str, dict, EventSpec)):
        events = [events]
    out = []
    for e in events:
        if isinstance(e, EventSpec):
            out.append(e)
        elif isinstance(e, dict):
            msg = unknown(e, ("kind", "value", "terminal"), f"event {e!r}")
            if msg:
                raise TypeError(msg)
            out.append(EventSpec(**e))
        elif isinstance(e, str):
            s, terminal = (e[:-1], True) if e.endswith("!") else (e, False)
            s = s.strip()
            m = re.fullmatch(r"loss\s*<\s*([0-9.eE+-]+)", s)
            if s == "eos":
                out.append(EventSpec("eos", terminal=terminal))
            elif s == "divergence":
                out.append(EventSpec("divergence", terminal=True))
            elif m:
                try:
                    v = float(m.group(1))
                except ValueError:
                    raise ValueError(f"event {e!r}: cannot read the loss value") from None
                out.append(EventSpec("loss_target", v, terminal))
            else:
                raise ValueError(f"event {e!r} is unknown{suggest(s, ('eos', 'divergence', 'loss<VALUE'))}; use "
                                 f"'eos', 'loss<VALUE', 'divergence' (append '!' for terminal) or EventSpec")
        else:
            raise TypeError(f"event {e!r} must be a str, dict or EventSpec")
    return out
