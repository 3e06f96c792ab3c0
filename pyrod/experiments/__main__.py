"""``python -m pyrod experiments list | run NAME [--scale tiny|small|paper] [--out DIR] [--jobs N] [--PARAM VALUE ...]``.

Every parameter of an experiment is a typed flag generated from its defaults, with its help text
(:mod:`pyrod.experiments.cli`, tyro): ``python -m pyrod experiments run aeos --scale tiny --help`` lists them with
their defaults at that scale; ``--set KEY=VALUE`` is the same thing in key=value form. The same command line is the
console script ``pyrod-experiments`` and, in a checkout, ``python -m experiments``; bad input is one ``error:`` line
(exit code 2), as in every pyrod command line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _list(verbose: bool) -> int:
    from . import EXPERIMENTS, get_experiment
    from .common import COMMON_DEFAULTS

    width = max(len(n) for n in EXPERIMENTS)
    for name in EXPERIMENTS:
        mod = get_experiment(name)
        print(f"{name:<{width}}  {mod.TITLE}")
        print(f"{'':<{width}}  reproduces: {mod.PAPER}; small scale: {mod.RUNTIME}")
        if verbose:
            keys = {k: v for k, v in mod.DEFAULTS["small"].items()}
            for k, v in sorted({**COMMON_DEFAULTS, **keys}.items()):
                print(f"{'':<{width}}    {k} = {json.dumps(v)}")
    return 0


def _parse_sets(items) -> dict:
    from .common import ExperimentError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ExperimentError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            raise ExperimentError(f"--set {item!r}: empty key")
        out[k] = v
    return out


def _param_help(argv, prog) -> int:
    """``run NAME [--scale S] --help``: the experiment's typed parameters with their defaults at that scale."""
    from . import get_experiment
    from .cli import parse_flags

    scale = "small"
    if "--scale" in argv:
        i = argv.index("--scale")
        scale = argv[i + 1] if i + 1 < len(argv) else scale
    mod = get_experiment(argv[1])
    try:
        parse_flags(mod, scale, ["--help"], prog=f"{prog} run {argv[1]} --scale {scale} "
                    "[--out DIR] [--jobs N] [--scheduler ADDRESS] [--set KEY=VALUE]")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _default_prog() -> str:
    return "pyrod-experiments" if os.path.basename(sys.argv[0] or "") == "pyrod-experiments" else \
        "python -m pyrod experiments"


def _parser(prog):
    from ..cli_errors import ArgumentParser

    # allow_abbrev=False: an experiment's own flag must never be taken for an abbreviation of ours (``--n 1000``
    # would otherwise be read as ``--no-progress`` followed by a stray ``1000``)
    p = ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Reproduce the papers' headline figures with pyrod (NetCDF + PNG + summary.json); the papers "
                    "are listed with each experiment (list).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  {prog} list\n  {prog} run aeos\n"
               f"  {prog} run rod-tracking --scale tiny --out /tmp/rod\n"
               f"  {prog} run aeos --steps 800 --lrs 0.01 0.02\n"
               f"  {prog} run aeos --set steps=800 --set lrs=1e-3,2e-3\n"
               f"  {prog} run aeos --scale paper --data_path ~/data/cifar-10-batches-py")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list the experiments")
    ls.add_argument("-v", "--verbose", action="store_true", help="also print every parameter and its default")
    r = sub.add_parser("run", help="run one experiment (run NAME --help: its parameters)", allow_abbrev=False)
    r.add_argument("name", help="experiment name (see `list`)")
    r.add_argument("--scale", default="small", choices=["tiny", "small", "medium", "paper"],
                   help="tiny: seconds (CI); small (default): minutes on a 2-core CPU; medium (muon-zipf, "
                        "muon-curvature): mini-batches from a stream, ~1 h on 2 cores; paper: the papers' sizes")
    r.add_argument("--out", default=None, help="output folder (default: results/experiments/NAME)")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable); `list -v` shows the keys")
    r.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes for the experiment's runs (default: one per core; 1: serially here)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://host:8786 (see the README's Sweeps section)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show progress bars (default: when stderr is a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv=None, prog: str | None = None) -> int:
    """The experiments' command line (``python -m pyrod experiments``, ``pyrod-experiments``); returns the exit code:
    0, or 2 with one ``error:`` line for bad input."""
    from ..cli_errors import fail, user_errors

    prog = prog or _default_prog()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(argv) >= 2 and argv[0] == "run" and ("-h" in argv[2:] or "--help" in argv[2:]):
            return _param_help(argv, prog)
        p = _parser(prog)
        args, extra = p.parse_known_args(argv)
        if extra and args.cmd != "run":
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.cmd == "list":
            return _list(args.verbose)
        if args.jobs is not None and args.jobs < 1:
            p.error(f"argument --jobs: {args.jobs} must be >= 1")
        from .common import run_experiment

        overrides = _parse_sets(args.sets)
        flags = list(extra)   # the experiment's typed parameters (--steps 80 --lrs 0.01 0.02)
        if flags:
            from . import get_experiment
            from .cli import parse_flags
            typed = parse_flags(get_experiment(args.name), args.scale, flags, prog=f"{prog} run {args.name}")
            overrides.update(typed)
        summary = run_experiment(args.name, scale=args.scale, out=args.out, overrides=overrides,
                                 progress=args.progress, jobs=args.jobs if args.jobs is not None else (os.cpu_count() or 1),
                                 scheduler=args.scheduler)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to continue (finished runs are kept, the others "
              f"resume from their checkpoints)", file=sys.stderr)
        return 130
    except user_errors() as e:
        return fail(e)
    out = args.out or f"results/experiments/{summary['experiment']}"
    res = summary["results"]
    headline = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
    print(json.dumps({"experiment": summary["experiment"], "scale": summary["scale"],
                      "wall_time_s": summary["wall_time_s"], "out": out, "files": summary["files"],
                      "summary": os.path.join(out, "summary.json"),
                      "results": headline or res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
