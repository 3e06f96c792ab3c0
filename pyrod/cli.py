"""Command lines generated from the typed run specification (tyro).

``python -m pyrod run [--spec FILE.json] [--problem JSON] [--optimizer JSON] [--runs ...] [--eig.k N] ...``
runs one simulation: every field of every :mod:`pyrod.spec` section is a typed flag with its default in
``--help`` (``--eig.every``, ``--integrator.method``, ``--central.tau``, ``--stop.steps``, ``--output.path``,
…). ``--spec`` starts from a spec saved as JSON (``pyrod.spec_of(path).to_json()``); flags override it.
``python -m pyrod resume PATH [--steps N]`` continues a run from its checkpoint.
``--plugin MODULE ...`` (both commands) imports modules that register run kinds (or backends, optimizers) before
the arguments are parsed, so that ``--runs`` offers their kinds and ``--run-options`` takes their options; installed
plug-ins (entry-point group ``pyrod.plugins``) are loaded without it (:mod:`pyrod.plugins`).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from .cli_errors import CommandLineError, fail, tyro_cli, user_errors
from .plugins import load_plugins
from .run_kinds import BUILTIN_RUNS, run_kind, run_kinds, run_names
from .spec import (
    CentralSpec,
    EigSpec,
    IntegratorSpec,
    MiniBatchSpec,
    OutputSpec,
    RodSpec,
    RunSpec,
    StableSpec,
    StopSpec,
)

__all__ = ["RunCommand", "run_command", "run_main", "resume_main"]

_DEFAULT_PROBLEM = '{"model": "mlp", "data": "digits", "classes": 4, "n": 300}'
_DEFAULT_OPTIMIZER = '{"name": "GD", "lr": 0.5}'


@functools.lru_cache(maxsize=None)
def _module_classes(filename: str) -> dict:
    """``{class name: ast.ClassDef}`` of a source file, parsed once (inspect.getsource would parse it per class)."""
    with open(filename, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def field_docs(cls) -> dict:
    """``{field: docstring}`` of a dataclass whose fields are documented by a string literal under them (fields
    declared by a base class, e.g. ``CentralSpec``'s in ``CentralOptions``, with the base's docstrings)."""
    out = {}
    for base in reversed(cls.__mro__):
        if base is not object and hasattr(base, "__dataclass_fields__"):
            out.update(_own_field_docs(base))
    return out


def _own_field_docs(cls) -> dict:
    node = _module_classes(inspect.getsourcefile(cls)).get(cls.__name__)
    if node is None:
        return {}
    body = node.body
    out = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(getattr(nxt, "value", None), ast.Constant) and isinstance(nxt.value.value, str):
            out[node.target.id] = " ".join(nxt.value.value.split())
    return out


def help_text(doc) -> str:
    """A docstring as command-line help: one paragraph, without reST markup."""
    return " ".join(str(doc or "").replace("``", "").split())


#: section fields the command line takes as JSON text
_JSON_FIELDS = {"options"}


def section_args(section) -> type:
    """The command-line twin of a spec section: the same fields, types and defaults, with each field's docstring as
    its help; dict fields (``options``) as JSON text. Made from the section itself, so that names, types, defaults
    and help cannot drift apart. ``to_section(args)`` / ``from_section(spec_section)`` convert."""
    docs, types = field_docs(section), typing.get_type_hints(section)
    fields = []
    for f in dataclasses.fields(section):
        if f.name in _JSON_FIELDS:
            typ, default, extra = str, "{}", " (JSON text)"
        else:
            typ, default, extra = types[f.name], f.default, ""
        arg = tyro.conf.arg(help=help_text(docs.get(f.name, "")) + extra)
        fields.append((f.name, Annotated[typ, arg], dataclasses.field(default=default)))
    cls = dataclasses.make_dataclass(section.__name__.replace("Spec", "Args"), fields)
    cls.__doc__ = help_text(section.__doc__)
    cls.section = section
    return cls


def to_section(args):
    """The spec section of a :func:`section_args` object (JSON fields decoded; invalid values raise SpecError)."""
    values = {}
    for f in dataclasses.fields(args):
        v = getattr(args, f.name)
        if f.name in _JSON_FIELDS:
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise CommandLineError(f"--{args.section._where}.{f.name} {v!r} is not JSON ({e})") from None
        values[f.name] = v
    return args.section(**values)


def from_section(args_cls, section):
    return args_cls(**{f.name: json.dumps(getattr(section, f.name)) if f.name in _JSON_FIELDS
                       else getattr(section, f.name) for f in dataclasses.fields(section)})


EigArgs, IntegratorArgs, StableArgs, RodArgs, CentralArgs, StopArgs, OutputArgs, MiniBatchArgs = (
    section_args(c) for c in (EigSpec, IntegratorSpec, StableSpec, RodSpec, CentralSpec, StopSpec, OutputSpec,
                              MiniBatchSpec))
_SECTIONS = tuple(RunSpec._sections)
#: ``--runs`` choices: the registered run kinds (:mod:`pyrod.run_kinds`); with plug-ins, see :func:`run_command`
RunName = typing.Literal[run_names()]


@dataclass
class RunCommand:
    """Run one pyrod simulation (discrete optimizer and flows side by side) and write a NetCDF file."""

    problem: str = _DEFAULT_PROBLEM
    """problem config as JSON: pyrod.problem(**problem), e.g. '{"toy": "quartic"}'"""
    optimizer: str = _DEFAULT_OPTIMIZER
    """optimizer config as JSON: {"name": "Adam", "lr": 1e-3, ...}"""
    runs: tuple[RunName, ...] = ("discrete",)
    """runs side by side (registered run kinds: pyrod.run_kinds)"""
    run_options: str = "{}"
    """options of run kinds registered from outside pyrod, as JSON: '{"myflow": {"scale": 2}}'"""
    plugin: tuple[str, ...] = ()
    """modules to import first ('module' or 'module:attribute'): plug-ins that register run kinds, backends or optimizers; installed ones (entry points pyrod.plugins) load without it"""
    restart_at: int | None = None
    """flows start from the discrete state at this step"""
    events: tuple[str, ...] = ()
    """flow events: eos, loss<VALUE, divergence (append ! for terminal)"""
    eig: EigArgs = field(default_factory=EigArgs)
    integrator: IntegratorArgs = field(default_factory=IntegratorArgs)
    stable: StableArgs = field(default_factory=StableArgs)
    rod: RodArgs = field(default_factory=RodArgs)
    central: CentralArgs = field(default_factory=CentralArgs)
    stop: StopArgs = field(default_factory=StopArgs)
    output: OutputArgs = field(default_factory=lambda: OutputArgs(path="run.nc"))
    minibatch: MiniBatchArgs = field(default_factory=MiniBatchArgs)
    threads: int | None = None
    """CPU threads (None: 1 for a small problem, all cores for a large one; torch's own if OMP_NUM_THREADS is set)"""
    progress: bool = True
    """show a progress bar"""

    def to_spec(self) -> RunSpec:
        problem, optimizer, run_options = (_json_flag(flag, getattr(self, flag.replace("-", "_")))
                                           for flag in ("problem", "optimizer", "run-options"))
        return RunSpec(problem=problem, optimizer=optimizer, runs=self.runs, restart_at=self.restart_at,
                       events=self.events, threads=self.threads, run_options=run_options,
                       **{name: to_section(getattr(self, name)) for name in _SECTIONS})

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "RunCommand":
        ev = []
        for e in spec.events:
            ev.append(e.name + ("!" if e.terminal and e.kind != "divergence" else ""))
        sections = {name: from_section(type(getattr(cls(), name)), getattr(spec, name)) for name in _SECTIONS}
        return cls(problem=json.dumps(spec.problem), optimizer=json.dumps(spec.optimizer), runs=tuple(spec.runs),
                   restart_at=spec.restart_at, events=tuple(ev), threads=spec.threads,
                   run_options=json.dumps(spec.run_options), **sections)


def _json_flag(flag: str, text: str):
    """The JSON value of ``--flag``, or an error that names the flag and its text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CommandLineError(f"--{flag} {text!r} must be JSON ({e})") from None


def run_command() -> type:
    """:class:`RunCommand`, or, when plug-ins have registered run kinds, its subclass whose ``--runs`` offers them
    too (the choices are a ``Literal`` fixed when a class is made)."""
    if all(kind in BUILTIN_RUNS for kind in run_kinds()):
        return RunCommand
    names = typing.Literal[run_names()]
    runs = (Annotated[tuple[names, ...], tyro.conf.arg(help=field_docs(RunCommand)["runs"])],
            field(default=("discrete",)))
    cls = dataclasses.make_dataclass("RunCommand", [("runs", *runs)], bases=(RunCommand,))
    cls.__doc__ = RunCommand.__doc__
    return cls


def flag_values(argv, flag: str = "--plugin") -> list:
    """The values given to ``flag`` in ``argv`` (``--plugin a b``, ``--plugin=a``): read before parsing, which
    needs the plug-ins' run kinds; tyro then parses the flag again."""
    out, argv = [], list(argv)
    for i, a in enumerate(argv):
        if a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
        elif a == flag:
            for b in argv[i + 1:]:
                if b.startswith("-"):
                    break
                out.append(b)
    return out


def _spec_file(argv):
    """``--spec FILE`` (consumed here) -> (RunSpec or None, remaining argv)."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--spec" or a.startswith("--spec="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else None)
            if value is None:
                raise CommandLineError("--spec needs a file name")
            del argv[i:i + (1 if "=" in a else 2)]
            try:
                with open(value) as f:
                    text = f.read()
            except OSError as e:
                raise CommandLineError(f"--spec {value}: {e.strerror or e}") from None
            try:
                return RunSpec.from_json(text), argv
            except json.JSONDecodeError as e:
                raise CommandLineError(f"--spec {value}: not a JSON run spec ({e})") from None
    return None, argv


def parse_run(argv) -> tuple[RunSpec, bool]:
    """Parse ``python -m pyrod run`` arguments into ``(spec, progress)``."""
    load_plugins(flag_values(argv))      # their run kinds are --runs choices, and a --spec file may name them
    for name in flag_values(argv, "--runs"):
        run_kind(name)      # an unknown run: the closest name, and how to load a plug-in that has it
    base, argv = _spec_file(argv)
    command = run_command()
    default = command.from_spec(base) if base is not None else command()
    cmd = tyro_cli(command, args=argv, default=default, prog="python -m pyrod run",
                   description=RunCommand.__doc__ + " Start from a saved spec with --spec FILE.json; flags override it.")
    return cmd.to_spec(), cmd.progress


def _interrupted(e) -> int:
    """A run stopped by Ctrl-C: its message, with the command that continues it (when it can be continued)."""
    print(e.message("cli") if hasattr(e, "message") else "pyrod: interrupted", file=sys.stderr)
    return 130


def run_main(argv=None) -> int:
    import pyrod

    argv = sys.argv[1:] if argv is None else argv
    try:
        spec, progress = parse_run(argv)
        tree = pyrod.simulate(spec, progress=progress)
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except user_errors() as e:
        return fail(e)
    print(json.dumps({"path": spec.output.path, "stop_reason": tree.attrs.get("stop_reason"),
                      "steps_completed": int(tree.attrs.get("steps_completed", 0)),
                      "runs": list(spec.runs)}, indent=2))
    return 0


@dataclass
class ResumeCommand:
    """Continue a pyrod run from its checkpoint (PATH.ckpt), bit-identically."""

    path: tyro.conf.Positional[str]
    """the run's NetCDF file"""
    steps: int | None = None
    """the new total number of steps (default: the run's own)"""
    threads: int | None = None
    """CPU threads (default: the count the run was started with, which a bit-identical resume needs)"""
    plugin: tuple[str, ...] = ()
    """modules to import first: plug-ins that register the run kinds of the file (its error names them)"""
    progress: bool = True
    """show a progress bar"""


def resume_main(argv=None) -> int:
    import pyrod

    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd = tyro_cli(ResumeCommand, args=argv, prog="python -m pyrod resume")
        if not os.path.exists(cmd.path):     # answered before torch is loaded
            return fail(f"cannot resume {cmd.path}: no such file")
        load_plugins(cmd.plugin)
        tree = pyrod.resume(cmd.path, steps=cmd.steps, progress=cmd.progress, threads=cmd.threads)
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except user_errors() as e:
        return fail(e)
    print(json.dumps({"path": cmd.path, "stop_reason": tree.attrs.get("stop_reason"),
                      "steps_completed": int(tree.attrs.get("steps_completed", 0))}, indent=2))
    return 0
