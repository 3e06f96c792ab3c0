"""The experiments' parameters: scales, the parameters every experiment has, their help, how overrides are applied
(:func:`resolve_params`) and how a ``--set key=value`` string is parsed by type (:func:`parse_value`, shared with
the typed command line of :mod:`pyrod.experiments.cli`).

Each experiment declares ``DEFAULTS[scale]`` (every parameter with its default); :func:`params_class` turns the
parameters of one scale into a frozen dataclass whose field types come from the defaults (bool, int, float, str,
``tuple[float, ...]`` for a list of numbers, ``str | None`` for a path that defaults to None; dict parameters are
JSON text, merged key by key into the default).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
from typing import Annotated, Optional

__all__ = ["SCALES", "COMMON_DEFAULTS", "PARAM_HELP", "ExperimentError", "resolve_params", "require_positive",
           "params_class", "param_help", "parse_value", "set_tokens", "JSON_FIELDS"]

SCALES = ("tiny", "small", "medium", "paper")

#: parameters every experiment has (the experiment's DEFAULTS may override their values)
COMMON_DEFAULTS = {
    "seed": 0,
    "dtype": "float64",
    "device": "cpu",       # "auto": CUDA when available
    "threads": 1,          # torch CPU threads; 1 is fastest for these small problems on a busy machine
    "data_path": None,     # local cifar-10-batches-py folder (paper scale)
    "eig_tol": 1e-5,       # LOBPCG residual tolerance of the eigen-solves (eigenvalue error ~ tol²·λ)
}

#: help text of the parameters that several experiments share (an experiment's own are its ``PARAM_HELP``)
PARAM_HELP = {
    "seed": "seed of the model initialisation and of generated data",
    "dtype": "float64 or float32",
    "device": "cpu, cuda, or auto (CUDA when available)",
    "threads": "torch CPU threads per run (1: fastest for these small problems on a shared machine)",
    "data_path": "local cifar-10-batches-py folder (data=cifar10, paper scale)",
    "eig_tol": "LOBPCG relative residual of the eigen-solves (eigenvalue error ~ tol² · λ)",
    "steps": "optimizer steps of each run",
    "model": "model: mlp, cnn, vit or gpt",
    "data": "data set: digits, cifar10, synthetic_classification, synthetic_regression, zipf or zipf_pcfg",
    "data_kwargs": "the data set's own options (JSON), e.g. {\"dim\": 16}",
    "classes": "number of classes kept (the first ones)",
    "n": "number of training points (full batch)",
    "loss": "mse (one-hot targets) or ce (cross-entropy)",
    "width": "hidden width of the model",
    "depth": "number of hidden layers (transformer blocks for gpt)",
    "activation": "activation function: tanh, relu, gelu, …",
    "eigs": "top eigenvalues of P⁻¹H measured",
    "eig_every": "steps between eigenvalue measurements",
    "late_fraction": "last fraction of each run over which late-run means are taken",
    "lrs": "learning rates η",
    "optimizers": "optimizers to run",
    "hyper": "fixed hyper-parameters per optimizer (JSON, merged key by key into the default)",
}


class ExperimentError(ValueError):
    """A bad experiment name, parameter or value, or a missing prerequisite (clear message, no traceback)."""


# --------------------------------------------------------------------------------------------- parameters
def resolve_params(module, scale: str, overrides: dict | None = None) -> dict:
    """Defaults of ``module`` at ``scale`` with ``overrides`` applied.

    ``overrides``: ``{key: value}``; string values are parsed by the typed parser of the experiments' command
    line (:func:`parse_value`, the CLI's ``--set``), other values are taken as given; a dict value updates a dict default key by key (recursively). Unknown keys
    raise :class:`ExperimentError` listing the valid ones."""
    if scale not in SCALES:
        raise ExperimentError(f"--scale {scale!r} is unknown; valid scales: {', '.join(SCALES)}")
    defaults = getattr(module, "DEFAULTS", {})
    if scale not in defaults:
        raise ExperimentError(f"experiment {module.NAME!r} has no {scale!r} scale")
    params = {**COMMON_DEFAULTS, **defaults[scale]}
    overrides = dict(overrides or {})
    for key, choices in getattr(module, "PRESETS", {}).items():   # a preset first, so that --set values win
        if key in params and key in overrides:
            value = overrides[key]
            if value not in choices:
                raise ExperimentError(f"{key}={value!r}: choose one of {sorted(choices)}")
            for k, v in choices[value].items():
                params[k] = _deep_merge(params[k], v) if isinstance(params[k], dict) and isinstance(v, dict) else v
    bad = []
    for k, v in overrides.items():
        if k not in params:
            bad.append(k)
            continue
        if isinstance(v, str):
            new = parse_value(module, scale, k, v, params[k])
        else:
            new = v
        if isinstance(params[k], dict) and isinstance(new, dict):
            new = _deep_merge(params[k], new)   # dict parameters are updated key by key (recursively)
        params[k] = new
    if bad:
        raise ExperimentError(f"unknown parameter(s) {', '.join(repr(b) for b in bad)} for experiment "
                              f"{module.NAME!r}; valid keys: {', '.join(sorted(params))}")
    _validate_common(params)
    check = getattr(module, "check_params", None)
    if check is not None:
        check(params)
    return params


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def _validate_common(p: dict) -> None:
    if not isinstance(p["threads"], int) or p["threads"] < 1:
        raise ExperimentError(f"threads={p['threads']!r} must be an int >= 1")
    if p["dtype"] not in ("float64", "float32"):
        raise ExperimentError(f"dtype={p['dtype']!r} must be 'float64' or 'float32'")
    if not (isinstance(p["eig_tol"], float) and 0 < p["eig_tol"] < 1):
        raise ExperimentError(f"eig_tol={p['eig_tol']!r} must be a number in (0, 1)")
    if not isinstance(p["seed"], int):
        raise ExperimentError(f"seed={p['seed']!r} must be an int")
    if p.get("data") == "cifar10":
        dp = p.get("data_path")
        if not dp:
            raise ExperimentError("this setting trains on CIFAR-10, which pyrod never downloads: pass "
                                  "--set data_path=/path/to/cifar-10-batches-py (the extracted python version "
                                  "of CIFAR-10), or --set data=digits")
        folder = os.path.expanduser(str(dp))
        if not os.path.isdir(folder):
            raise ExperimentError(f"data_path={dp!r} is not a folder; it must be the extracted "
                                  "cifar-10-batches-py directory (data_batch_1..5, test_batch)")
        if not any(os.path.isfile(os.path.join(f, "data_batch_1"))
                   for f in (folder, os.path.join(folder, "cifar-10-batches-py"))):
            raise ExperimentError(f"data_path={dp!r} holds no data_batch_1: it must be the extracted "
                                  "cifar-10-batches-py directory of the python version of CIFAR-10")


def require_positive(p: dict, *keys) -> None:
    for k in keys:
        v = p[k]
        vals = v if isinstance(v, (list, tuple)) else [v]
        for x in vals:
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0 or not math.isfinite(x):
                raise ExperimentError(f"{k}={v!r}: every value must be a positive number")


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
