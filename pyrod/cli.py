"""Command lines generated from the typed run specification (tyro).

``python -m pyrod run [--spec FILE.json] [--problem JSON] [--optimizer JSON] [--runs ...] [--eig.k N] ...``
runs one simulation: every field of every :mod:`pyrod.spec` section is a typed flag with its default in
``--help`` (``--eig.every``, ``--integrator.method``, ``--central.tau``, ``--stop.steps``, ``--output.path``,
…). ``--spec`` starts from a spec saved as JSON (``pyrod.spec_of(path).to_json()``); flags override it.
``python -m pyrod resume PATH [--steps N]`` continues a run from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field

import tyro

from .spec import (
    CentralSpec,
    EigSpec,
    IntegratorSpec,
    MiniBatchSpec,
    OutputSpec,
    RodSpec,
    RunSpec,
    SpecError,
    StableSpec,
    StopSpec,
)

__all__ = ["RunCommand", "run_main", "resume_main"]

_DEFAULT_PROBLEM = '{"model": "mlp", "data": "digits", "classes": 4, "n": 300}'
_DEFAULT_OPTIMIZER = '{"name": "GD", "lr": 0.5}'


# IntegratorSpec's fields as flags, except ``options`` (a dict), which the command line takes as JSON text; made
# from the spec's own fields so that names, types and defaults cannot drift apart
IntegratorArgs = dataclasses.make_dataclass(
    "IntegratorArgs",
    [(f.name, "str", dataclasses.field(default="{}")) if f.name == "options" else (f.name, f.type, dataclasses.field(
        default=f.default)) for f in dataclasses.fields(IntegratorSpec)])
IntegratorArgs.__doc__ = ("How flows are integrated (pyrod.spec.IntegratorSpec); --integrator.options is the backend's "
                          "own options as JSON, e.g. '{\"jac\": \"jvp\"}'")


@dataclass
class RunCommand:
    """Run one pyrod simulation (discrete optimizer and flows side by side) and write a NetCDF file."""

    problem: str = _DEFAULT_PROBLEM
    """problem config as JSON: pyrod.problem(**problem), e.g. '{"toy": "quartic"}'"""
    optimizer: str = _DEFAULT_OPTIMIZER
    """optimizer config as JSON: {"name": "Adam", "lr": 1e-3, ...}"""
    runs: tuple[str, ...] = ("discrete",)
    """runs side by side: discrete, midpoint, stable, rod, central"""
    restart_at: int | None = None
    """flows start from the discrete state at this step"""
    events: tuple[str, ...] = ()
    """flow events: eos, loss<VALUE, divergence (append ! for terminal)"""
    eig: EigSpec = field(default_factory=EigSpec)
    integrator: IntegratorArgs = field(default_factory=IntegratorArgs)
    stable: StableSpec = field(default_factory=StableSpec)
    rod: RodSpec = field(default_factory=RodSpec)
    central: CentralSpec = field(default_factory=CentralSpec)
    stop: StopSpec = field(default_factory=StopSpec)
    output: OutputSpec = field(default_factory=lambda: OutputSpec(path="run.nc"))
    minibatch: MiniBatchSpec = field(default_factory=MiniBatchSpec)
    progress: bool = True
    """show a progress bar"""

    def to_spec(self) -> RunSpec:
        try:
            problem = json.loads(self.problem)
            optimizer = json.loads(self.optimizer)
            options = json.loads(self.integrator.options)
        except json.JSONDecodeError as e:
            raise SpecError(f"--problem/--optimizer/--integrator.options must be JSON: {e}") from None
        ig = dataclasses.asdict(self.integrator)
        ig["options"] = options
        return RunSpec(problem=problem, optimizer=optimizer, runs=self.runs, restart_at=self.restart_at,
                       events=self.events, eig=self.eig, integrator=IntegratorSpec(**ig), stable=self.stable,
                       rod=self.rod, central=self.central, stop=self.stop, output=self.output,
                       minibatch=self.minibatch)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> "RunCommand":
        ig = spec.integrator.to_dict()
        ig["options"] = json.dumps(ig["options"])
        ig["max_step"] = spec.integrator.max_step
        ev = []
        for e in spec.events:
            ev.append(e.name + ("!" if e.terminal and e.kind != "divergence" else ""))
        return cls(problem=json.dumps(spec.problem), optimizer=json.dumps(spec.optimizer), runs=tuple(spec.runs),
                   restart_at=spec.restart_at, events=tuple(ev), eig=spec.eig, integrator=IntegratorArgs(**ig),
                   stable=spec.stable, rod=spec.rod, central=spec.central, stop=spec.stop, output=spec.output,
                   minibatch=spec.minibatch)


def _spec_file(argv):
    """``--spec FILE`` (consumed here) -> (RunSpec or None, remaining argv)."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--spec" or a.startswith("--spec="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else None)
            if value is None:
                raise SpecError("--spec needs a file name")
            del argv[i:i + (1 if "=" in a else 2)]
            with open(value) as f:
                return RunSpec.from_json(f.read()), argv
    return None, argv


def parse_run(argv) -> tuple[RunSpec, bool]:
    """Parse ``python -m pyrod run`` arguments into ``(spec, progress)``."""
    base, argv = _spec_file(argv)
    default = RunCommand.from_spec(base) if base is not None else RunCommand()
    cmd = tyro.cli(RunCommand, args=argv, default=default, prog="python -m pyrod run",
                   description=RunCommand.__doc__ + " Start from a saved spec with --spec FILE.json; flags override it.")
    return cmd.to_spec(), cmd.progress


def run_main(argv=None) -> int:
    import pyrod

    argv = sys.argv[1:] if argv is None else argv
    try:
        spec, progress = parse_run(argv)
        tree = pyrod.simulate(spec, progress=progress)
    except (SpecError, ValueError, FileExistsError, FileNotFoundError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except pyrod.RunInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
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
    progress: bool = True


def resume_main(argv=None) -> int:
    import pyrod

    argv = sys.argv[1:] if argv is None else argv
    cmd = tyro.cli(ResumeCommand, args=argv, prog="python -m pyrod resume")
    try:
        tree = pyrod.resume(cmd.path, steps=cmd.steps, progress=cmd.progress)
    except (SpecError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except pyrod.RunInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    print(json.dumps({"path": cmd.path, "stop_reason": tree.attrs.get("stop_reason"),
                      "steps_completed": int(tree.attrs.get("steps_completed", 0))}, indent=2))
    return 0
