"""Typed command lines of the experiments, generated from their parameters by tyro.

Each experiment declares ``DEFAULTS[scale]`` (every parameter with its default); :func:`params_class` turns the
parameters of one scale into a frozen dataclass whose field types come from the defaults (bool, int, float,
str, ``tuple[float, ...]`` for a list of numbers, ``str | None`` for a path that defaults to None; dict
parameters are JSON text, merged key by key into the default). tyro builds the command line from it::

    python -m experiments run aeos --scale tiny --steps 80 --lrs 0.01 0.02      # typed flags
    python -m experiments run aeos --help                                       # every parameter, its default
    python -m experiments run aeos --set steps=80 --set lrs=0.01,0.02           # the same, key=value form

``--set KEY=VALUE`` is shorthand for ``--KEY VALUE`` (a comma-separated or JSON list gives several values);
both go through the same typed parser, so a bad value is refused with the key, the value and the type.
"""
from __future__ import annotations

import dataclasses

from .params import (  # noqa: F401  (the typed parsing lives in params; these names stay importable here)
    JSON_FIELDS,
    _typed,
    param_help,
    params_class,
    parse_value,
    set_tokens,
)

__all__ = ["params_class", "parse_flags", "parse_value", "set_tokens", "param_help", "JSON_FIELDS"]


def parse_flags(module, scale: str, tokens, *, prog: str | None = None) -> dict:
    """Parse typed flags (``["--steps", "80", "--lrs", "0.01", "0.02"]``) against the experiment's parameters at
    ``scale``; return only the parameters that were given, typed. ``--help`` prints them all with defaults."""
    import tyro

    from ..cli_errors import tyro_cli

    cls = params_class(module, scale)
    parsed = tyro_cli(cls, args=list(tokens), prog=prog or f"python -m pyrod experiments run {module.NAME}",
                      description=cls.__doc__, config=(tyro.conf.FlagConversionOff,))
    base = cls()
    return {f.name: _typed(cls, f.name, getattr(parsed, f.name)) for f in dataclasses.fields(cls)
            if getattr(parsed, f.name) != getattr(base, f.name)}
