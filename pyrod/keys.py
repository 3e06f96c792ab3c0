"""Checking option names: "unknown option 'lrr' in optimizer GD (did you mean 'lr'?)".

Shared by the run specification (:mod:`pyrod.spec`), the problem registry and the optimizers, so that a typo at
any depth of a spec is answered the same way. Pure functions, no heavy imports.
"""
from __future__ import annotations

import difflib
import inspect

__all__ = ["SpecError", "suggest", "unknown", "parameters_of"]


class SpecError(TypeError, ValueError):
    """An unknown, misplaced or ill-typed option (the message names it and lists the valid names). Both a
    TypeError (wrong keyword) and a ValueError (bad configuration), so either except clause catches it.
    (Defined here, below the spec, so that problems and optimizers raise it without importing the spec;
    ``pyrod.spec.SpecError`` is the same class.)"""


def suggest(name, valid) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(names, valid, where: str) -> str | None:
    """The message for the ``names`` that are not in ``valid`` (None when all are), naming ``where`` they were given,
    the closest valid name of each and the valid names."""
    bad = sorted(str(n) for n in names if n not in valid)
    if not bad:
        return None
    if len(bad) == 1:
        hints, what = suggest(bad[0], valid), repr(bad[0])
    else:
        close = [f"{b!r}: did you mean {suggest(b, valid)[15:-1]}" for b in bad if suggest(b, valid)]
        hints, what = (f" ({', '.join(close)})" if close else ""), str(bad)
    return f"unknown option{'s' if len(bad) > 1 else ''} {what} in {where}{hints}; valid names: {sorted(valid)}"


def parameters_of(fn, skip=(), named_only: bool = False) -> set | None:
    """Keyword names ``fn`` accepts, less ``skip``; None when it takes ``**kwargs`` (any name), unless
    ``named_only`` (then its named parameters only)."""
    params = inspect.signature(fn).parameters.values()
    if not named_only and any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - set(skip)
