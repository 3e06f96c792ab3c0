"""One error style for every pyrod command line: a single ``error: …`` line on stderr and exit code 2.

``python -m pyrod demo|run|resume|experiments`` and ``python -m pyrod.experiments`` (``pyrod-experiments``) all
report bad input this way — argparse's usage errors (:class:`ArgumentParser`), tyro's error boxes
(:func:`tyro_cli`) and the errors pyrod raises for bad options, bad files and busy files
(:data:`USER_ERRORS`) alike. Errors that are not the user's (bugs) keep their traceback. This module imports
nothing heavy: the command lines answer ``--help`` and bad flags before torch is loaded.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys

__all__ = ["CommandLineError", "ArgumentParser", "tyro_cli", "fail", "one_line", "user_errors", "EXIT_USAGE"]

EXIT_USAGE = 2


class CommandLineError(ValueError):
    """Bad input on a command line (the message is one line)."""


def one_line(text) -> str:
    """``text`` with its lines and runs of blanks joined by single spaces."""
    return re.sub(r"\s+", " ", str(text)).strip()


def fail(message) -> int:
    """Print ``error: message`` (one line) on stderr; return the exit code 2."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def user_errors() -> tuple:
    """The exceptions that are the user's input (bad options, values, files; a busy file; a run that does not
    fit in memory): reported as one line. Imports the modules that define them (call after the run's imports)."""
    errors = [CommandLineError, ValueError, TypeError, OSError]
    for module, name in (("pyrod.io.lock", "FileBusyError"), ("pyrod.simulation", "RunOutOfMemory"),
                         ("pyrod.integrate", "BackendUnavailable"), ("pyrod.plugins", "PluginError")):
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if cls is not None:
            errors.append(cls)
    return tuple(errors)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its usage errors raised as :class:`CommandLineError` (one line, pointing at ``--help``)."""

    def error(self, message):
        raise CommandLineError(f"{message} (see {self.prog} --help)")


def tyro_cli(cls, *, args, prog: str, **kwargs):
    """``tyro.cli(cls, args=args, prog=prog, **kwargs)``; a parse error becomes :class:`CommandLineError` with
    tyro's message on one line (and its suggestion, when it has one). ``--help`` prints and exits as usual."""
    import tyro

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return tyro.cli(cls, args=list(args), prog=prog, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            sys.stderr.write(buf.getvalue())
            raise
        raise CommandLineError(_tyro_message(buf.getvalue(), prog)) from None


def _tyro_message(text: str, prog: str) -> str:
    """tyro's error box -> one line: its message, ``did you mean`` from its "Perhaps you meant", ``--help``."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip().strip("│╭╮╰╯─|").strip()
        if line and not re.fullmatch(r"[-─━═╌ ]+", line):
            lines.append(line)
    message, suggestion, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(("For full helptext", "Argument helptext")):
            break
        if line.startswith("Perhaps you meant"):
            if i + 1 < len(lines):
                suggestion = lines[i + 1].split()[0]
            break
        message.append(line)
        i += 1
    body = [m for m in message[1:]] or message       # the first line is the box's title
    out = " ".join(body) if body else "could not parse the arguments"
    if suggestion:
        out += f" (did you mean {suggestion}?)"
    return f"{out} (see {prog} --help)"
