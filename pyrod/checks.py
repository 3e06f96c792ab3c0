"""Typed value checks shared by the run specification and the options classes: each returns the value in its
canonical type or raises ValueError naming ``where.name=value`` and what it must be. Pure functions, stdlib only
(imported before any heavy module: the command line parses with them)."""
from __future__ import annotations

import math
import numbers

__all__ = ["is_int", "is_num", "check_int", "check_float", "check_bool", "set_frozen"]


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(where, name, v, lo=None, none=False):
    if v is None and none:
        return None
    if not is_int(v) or (lo is not None and v < lo):
        raise ValueError(f"{where}.{name}={v!r} must be an int" + (f" >= {lo}" if lo is not None else "")
                         + (" or None" if none else ""))
    return int(v)


def check_float(where, name, v, lo=None, hi=None, open_lo=True, open_hi=True, none=False, allow_inf=False):
    if v is None and none:
        return None
    ok = is_num(v) and (math.isfinite(v) or (allow_inf and v == math.inf))
    if ok and lo is not None:
        ok = v > lo if open_lo else v >= lo
    if ok and hi is not None:
        ok = v < hi if open_hi else v <= hi
    if not ok:
        rng = ""
        if lo is not None or hi is not None:
            rng = f" in {'(' if open_lo else '['}{lo if lo is not None else '-inf'}, " \
                  f"{hi if hi is not None else 'inf'}{')' if open_hi else ']'}"
        raise ValueError(f"{where}.{name}={v!r} must be a number{rng}" + (" or None" if none else ""))
    return float(v)


def check_bool(where, name, v):
    if not isinstance(v, bool):
        raise ValueError(f"{where}.{name}={v!r} must be True or False")
    return v


def set_frozen(obj, name, value):
    """Set a field of a frozen dataclass (in its ``__post_init__``: the canonical value)."""
    object.__setattr__(obj, name, value)
