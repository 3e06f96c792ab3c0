"""Plug-ins: modules from outside pyrod that register run kinds, integrator backends or optimizers.

A plug-in is an ordinary Python module whose import registers what it provides (``pyrod.register_run_kind``,
``pyrod.integrate.register_backend``, an entry in ``pyrod.optimizers.REGISTRY``). pyrod finds plug-ins two ways:

* **installed**: a package declares an entry point in the group ``pyrod.plugins`` (``pyproject.toml``)::

      [project.entry-points."pyrod.plugins"]
      myflow = "mypackage.myflow"              # a module: importing it registers
      # or   = "mypackage.myflow:register"     # a function: called once, with no arguments
      # or   = "mypackage.myflow:KIND"         # a pyrod.RunKind: registered

  Installed plug-ins are loaded once per process, the first time pyrod needs a name it does not know (a run, a
  backend or an optimizer in a spec), and by the command lines before they parse (so that ``--runs`` offers them).
* **named**: ``load_plugins(["mymodule"])`` in Python (or just ``import mymodule``), ``--plugin mymodule`` on
  the command line (``python -m pyrod run``, ``resume``).

A file written with a run of a registered kind records, in the root attribute ``run_kind_modules``, which module
defined each such kind; :func:`pyrod.resume` names it when the kind is missing. pyrod never imports a module because
a file names it: resuming a file must not run code the user did not ask for.

This module is standard library only (the command lines call it before any heavy import).
"""
from __future__ import annotations

import importlib
import types
import warnings

__all__ = ["GROUP", "PluginError", "resolve", "load_plugins", "load_installed", "installed_failures", "failure_hint"]

#: the entry-point group of installed plug-ins
GROUP = "pyrod.plugins"

_state = {"installed_loaded": False, "failures": {}}


class PluginError(ImportError):
    """A plug-in named by the user (``--plugin``, :func:`load_plugins`) could not be loaded."""


def _apply(obj) -> None:
    """What an entry point or a ``module:attribute`` name gives: a module (its import registered), a declaration
    with a ``register()`` method (a ``RunKind``: registered unless it already is), or a function (called with no
    arguments). (Duck-typed: the registries import this module, not the other way round.)"""
    if isinstance(obj, (types.ModuleType, type)):
        return
    register = getattr(obj, "register", None)
    if callable(register):
        register()
    elif callable(obj):
        obj()


def resolve(obj):
    """``"module:attribute"`` (or ``"module"``) -> the attribute (or module), imported; anything else as it is."""
    if not isinstance(obj, str):
        return obj
    module, _, attr = obj.partition(":")
    value = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        value = getattr(value, part)
    return value


def _dotted(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def load_plugins(names=(), *, installed: bool = True) -> None:
    """Import the plug-ins ``names`` (``"module"`` or ``"module:attribute"``; a second load of the same module is a
    no-op, as for any import), then, with ``installed``, the installed ones (entry-point group ``pyrod.plugins``,
    once per process). A named plug-in that cannot be imported raises :class:`PluginError` naming it."""
    if isinstance(names, str):
        names = [names]
    for name in names:
        module, colon, attr = name.partition(":") if isinstance(name, str) else ("", "", "")
        if not _dotted(module) or (colon and not _dotted(attr)):
            raise PluginError(f"plugin {name!r} must be a module name, 'module' or 'module:attribute'")
        try:
            obj = resolve(name)
        except ImportError as e:
            raise PluginError(f"plugin {name!r}: cannot import {module!r} ({e}); is it on the Python path "
                              f"(PYTHONPATH, or installed)?") from e
        except AttributeError as e:
            raise PluginError(f"plugin {name!r}: {e}") from e
        if attr:
            _apply(obj)
    if installed:
        load_installed()


def load_installed() -> tuple:
    """Load the installed plug-ins (entry-point group ``pyrod.plugins``) once per process; returns the names of
    the entry points loaded by this call. One that fails to load is reported with a warning and remembered
    (:func:`installed_failures`; an unknown name's error mentions it), not raised: one broken package must not stop
    every run."""
    if _state["installed_loaded"]:
        return ()
    _state["installed_loaded"] = True
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=GROUP):
        try:
            _apply(ep.load())
        except Exception as e:      # noqa: BLE001 - any failure of a third-party import is reported, not raised
            where = f"{ep.name} = {ep.value}" + (f" (package {ep.dist.name})" if getattr(ep, "dist", None) else "")
            _state["failures"][ep.name] = f"{where}: {type(e).__name__}: {e}"
            warnings.warn(f"pyrod plugin {where} failed to load: {type(e).__name__}: {e}", RuntimeWarning,
                          stacklevel=2)
        else:
            loaded.append(ep.name)
    return tuple(loaded)


def installed_failures() -> dict:
    """``{entry point name: why}`` of installed plug-ins that failed to load in this process."""
    return dict(_state["failures"])


def failure_hint() -> str:
    """A sentence for an unknown name's error when installed plug-ins failed to load ('' when none did)."""
    failures = installed_failures()
    if not failures:
        return ""
    return " (installed pyrod plugins that failed to load: " + "; ".join(failures.values()) + ")"
