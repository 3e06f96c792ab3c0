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

import contextlib
import dataclasses
import io
import json
from typing import Annotated, Optional

from .common import COMMON_DEFAULTS, PARAM_HELP, ExperimentError

__all__ = ["params_class", "parse_flags", "parse_value", "set_tokens", "param_help", "JSON_FIELDS"]

JSON_FIELDS = "__json_fields__"


def _field_type(value):
    """The field type for a default value (and whether the field is JSON text)."""
    if isinstance(value, bool):
        return bool, False
    if isinstance(value, int):
        return int, False
    if isinstance(value, float):
        return float, False
    if isinstance(value, str):
        return str, False
    if value is None:
        return Optional[str], False
    if isinstance(value, (list, tuple)) and value:
        kinds = {type(x) for x in value}
        if kinds == {bool}:
            return tuple[bool, ...], False
        if kinds == {int}:
            return tuple[int, ...], False
        if kinds <= {int, float}:
            return tuple[float, ...], False
        if kinds == {str}:
            return tuple[str, ...], False
    return str, True   # dicts, empty or mixed lists: JSON text


def params_class(module, scale: str) -> type:
    """A frozen dataclass with one typed field per parameter of ``module`` at ``scale`` (defaults included), each
    with its help text (:func:`param_help`)."""
    import tyro

    defaults = {**COMMON_DEFAULTS, **module.DEFAULTS[scale]}
    helps = param_help(module)
    fields, json_fields = [], set()
    for key, value in defaults.items():
        typ, is_json = _field_type(value)
        if is_json:
            json_fields.add(key)
            value = json.dumps(value)
        elif isinstance(value, list):
            value = tuple(value)
        typ = Annotated[typ, tyro.conf.arg(help=helps.get(key, ""))]
        fields.append((key, typ, dataclasses.field(default=value)))
    name = "".join(p.capitalize() for p in module.NAME.replace("-", "_").split("_")) + "Params"
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__doc__ = f"{module.TITLE} ({module.PAPER}); parameters at --scale {scale}."
    setattr(cls, JSON_FIELDS, frozenset(json_fields))
    return cls


def param_help(module) -> dict:
    """``{parameter: help}`` of an experiment: the shared help (:data:`pyrod.experiments.common.PARAM_HELP`) with the
    experiment's own ``PARAM_HELP`` over it."""
    return {**PARAM_HELP, **getattr(module, "PARAM_HELP", {})}


def _typed(cls, key, value):
    """A parsed field value as the experiment expects it (lists, decoded JSON)."""
    if key in getattr(cls, JSON_FIELDS):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ExperimentError(f"{key}={value!r}: expected JSON ({e})") from None
    return list(value) if isinstance(value, tuple) else value


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


def set_tokens(key: str, text: str, like) -> list:
    """``--set key=text`` as typed-flag tokens: a list default takes comma-separated or JSON-list values."""
    if isinstance(like, (list, tuple)) and not (like and isinstance(like[0], (list, dict))):
        t = text.strip()
        if t.startswith("["):
            try:
                items = json.loads(t)
            except json.JSONDecodeError as e:
                raise ExperimentError(f"--set {key}={text!r}: not a valid JSON list ({e})") from None
            items = [x if isinstance(x, str) else json.dumps(x) for x in items]
        else:
            items = [s.strip() for s in t.split(",") if s.strip()]
        return [f"--{key}", *items]
    if like is None and text.strip().lower() in ("none", "null", ""):
        return [f"--{key}", "None"]
    if isinstance(like, bool):
        low = text.strip().lower()
        text = "True" if low in ("1", "true", "yes", "on", "y") else "False" if low in (
            "0", "false", "no", "off", "n") else text
    return [f"--{key}", text]


def parse_value(module, scale: str, key: str, text: str, like):
    """One ``key=text`` override parsed by the typed parser; ExperimentError naming the key, the value and the
    expected type (no usage dump)."""
    import tyro

    cls = params_class(module, scale)
    field = {f.name: f for f in dataclasses.fields(cls)}[key]
    tokens = set_tokens(key, text, like)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parsed = tyro.cli(cls, args=tokens, config=(tyro.conf.FlagConversionOff,))
    except SystemExit:
        kind = "JSON" if key in getattr(cls, JSON_FIELDS) else getattr(field.type, "__name__", str(field.type))
        raise ExperimentError(f"--set {key}={text!r}: expected {kind} (like the default {like!r})") from None
    return _typed(cls, key, getattr(parsed, key))
