"""Compatibility module: pyrod's NetCDF writer and readers moved to the package :mod:`pyrod.io`, one job per module.
``from pyrod.output import RunWriter, open_tree, ...`` keeps working; new code imports from ``pyrod.io.*``.

What is where:

* :mod:`pyrod.io.writer`: ``RunWriter`` (incremental, crash-safe writer; ``RunWriter.resume``).
* :mod:`pyrod.io.resume`: copying a file up to a cut, for ``RunWriter.resume``.
* :mod:`pyrod.io.reader`: ``open_tree``, ``stored_config`` (here still ``config_of``), ``json_attr``, ``DamagedFileError``, ``hdf5_sizes``, and
  the salvage of damaged files.
* :mod:`pyrod.io.lock`: the one-writer-per-path lock and reading a file while it is written, ``FileBusyError``,
  ``ensure_space``, ``SPACE_RESERVE``, ``cannot_write``, ``os_error``.
* :mod:`pyrod.io.layout`: JSON-encoded attributes, reserved root attributes, chunk shapes, fill values.
* :mod:`pyrod.schema`: ``Var``, ``TIME_UNITS``, ``PARAMETER_UNITS``.

The names below are the same objects as in those modules. Private helpers (leading underscore) are not re-exported;
to monkeypatch one (e.g. ``_READ_PATIENCE_S``), patch it in its ``pyrod.io`` module.
"""
from __future__ import annotations

from .io.lock import SPACE_RESERVE as SPACE_RESERVE
from .io.lock import FileBusyError, ensure_space
from .io.lock import cannot_write as cannot_write
from .io.lock import os_error as os_error
from .io.reader import DamagedFileError, hdf5_sizes, json_attr, open_tree
from .io.reader import stored_config as config_of  # the stored dict (pyrod.config_of gives simulate keywords)
from .io.writer import RunWriter
from .schema import PARAMETER_UNITS, TIME_UNITS, Var

__all__ = ["Var", "RunWriter", "FileBusyError", "DamagedFileError", "open_tree", "config_of", "json_attr",
           "TIME_UNITS", "PARAMETER_UNITS", "ensure_space", "hdf5_sizes"]
