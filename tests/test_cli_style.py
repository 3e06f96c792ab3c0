"""Every pyrod command line answers bad input with one ``error:`` line and exit code 2, answers ``--help`` and
bad flags without loading torch (the measured times are in the issue's closing note, not asserted here), gives
help for every flag, prints resume hints as command lines, and runs from any folder."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyrod
from pyrod.__main__ import main
from pyrod.cli import RunCommand, field_docs
from pyrod.experiments import EXPERIMENTS, get_experiment
from pyrod.experiments.cli import param_help
from pyrod.experiments.common import COMMON_DEFAULTS
from pyrod.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "xarray", "netCDF4", "dask", "distributed", "scipy", "matplotlib")


def _one_error_line(capsys, rc, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for p in parts:
        assert p in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("argv, parts", [
    (["demo", "--steps", "0"], ["--steps", "'0' must be > 0", "python -m pyrod demo --help"]),
    (["demo", "--lr", "-1"], ["--lr", "'-1' must be > 0"]),
    (["demo", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["nosuch"], ["invalid choice: 'nosuch'"]),
    (["run", "--eig.k", "x"], ["--eig.k", "invalid literal", "python -m pyrod run --help"]),
    (["run", "--eig.evry", "3"], ["--eig.evry", "did you mean --eig.every?"]),
    (["run", "--output.chunk", "0"], ["output.chunk=0 must be an int >= 1"]),
    (["run", "--problem", "{toy"], ["--problem '{toy' must be JSON"]),
    (["run", "--optimizer", '{"name": "GD", "lrr": 0.1}'], ["unknown option 'lrr' in optimizer GD",
                                                            "did you mean 'lr'"]),
    (["run", "--spec", "/nonexistent/spec.json"], ["--spec /nonexistent/spec.json"]),
    (["resume", "/nonexistent/run.nc"], ["cannot resume /nonexistent/run.nc: no such file"]),
    (["resume"], ["python -m pyrod resume --help"]),
    (["experiments", "run", "nosuch"], ["unknown experiment 'nosuch'"]),
    (["experiments", "run", "aeos", "--steps", "many"], ["--steps", "python -m pyrod experiments run aeos"]),
    (["experiments", "run", "aeos", "--set", "nokey=1"], ["unknown parameter(s) 'nokey'"]),
    (["experiments", "run", "aeos", "--jobs", "0"], ["--jobs: 0 must be >= 1"]),
    (["experiments", "nosuch"], ["invalid choice: 'nosuch'"]),
])
def test_bad_input_is_one_error_line_with_exit_code_2(argv, parts, capsys):
    _one_error_line(capsys, main(argv), *parts)


def test_file_errors_name_the_users_path(tmp_path, capsys):
    text = tmp_path / "notes.nc"
    text.write_text("not a netcdf file\n")
    _one_error_line(capsys, main(["resume", str(text)]), f"cannot resume: {text} is not a NetCDF4/HDF5 file")
    _one_error_line(capsys, main(["run", "--problem", '{"toy": "quartic"}', "--stop.steps", "2", "--output.path",
                                  str(tmp_path)]), str(tmp_path), "is a directory")
    _one_error_line(capsys, main(["run", "--problem", '{"toy": "quartic"}', "--stop.steps", "2", "--output.path",
                                  "/proc/pyrod-test.nc", "--no-progress"]),
                    "cannot write /proc/pyrod-test.nc", "does not accept new files")
    assert ".lock" not in capsys.readouterr().err


def test_a_second_writer_is_one_error_line(tmp_path, capsys):
    from pyrod.output import RunWriter

    path = tmp_path / "busy.nc"
    with RunWriter(path, config={}):
        rc = main(["run", "--problem", '{"toy": "quartic"}', "--stop.steps", "2", "--output.path", str(path),
                   "--output.overwrite", "--no-progress"])
        line = _one_error_line(capsys, rc, str(path), "is being written by pid")
    assert ".lock" not in line


def test_help_and_bad_flags_do_not_load_torch():
    script = ("import sys, contextlib, io\n"
              "from pyrod.__main__ import main\n"
              "for argv in (['--help'], ['demo', '--help'], ['run', '--help'], ['resume', '--help'],\n"
              "             ['experiments', '--help'], ['demo', '--steps', '0'], ['run', '--eig.k', 'x'],\n"
              "             ['resume', '/nonexistent.nc'], ['experiments', 'run', 'aeos', '--help']):\n"
              "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
              "        try:\n"
              "            main(argv)\n"
              "        except SystemExit:\n"
              "            pass\n"
              f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", p.stdout


def test_top_level_help_describes_every_command_in_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("demo", "run", "resume FILE", "experiments"):
        assert f"\n  {cmd}" in out, out
    assert "``" not in out


def test_every_flag_has_help():
    own = {f.name for f in dataclasses.fields(RunCommand)} - set(RunSpec._sections)
    assert own <= set(field_docs(RunCommand)), own - set(field_docs(RunCommand))
    for name, section in RunSpec._sections.items():
        docs = field_docs(section)
        missing = [f.name for f in dataclasses.fields(section) if not docs.get(f.name)]
        assert not missing, f"{name}: {missing}"
    for name in EXPERIMENTS:
        mod, helps = get_experiment(name), param_help(get_experiment(name))
        for scale, params in mod.DEFAULTS.items():
            missing = sorted(k for k in {**COMMON_DEFAULTS, **params} if not helps.get(k))
            assert not missing, f"experiment {name} ({scale}): parameters without help text: {missing}"


def test_experiment_help_lists_parameters_with_their_help():
    p = subprocess.run([sys.executable, "-m", "pyrod", "experiments", "run", "frozen-adam", "--scale", "tiny",
                        "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert "freeze" in p.stdout and "step of the source Adam run whose ν becomes the frozen preconditioner" in p.stdout


def test_experiments_run_from_any_folder(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pyrod", "experiments", "list"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert "aeos" in p.stdout and "arXiv" in p.stdout


def test_interrupted_run_hint_is_a_command_line():
    e = pyrod.RunInterrupted("interrupted at step 40", path="runs/a b.nc", step=40, resumable=True)
    assert e.message("cli").endswith("continue with python -m pyrod resume 'runs/a b.nc'")
    assert str(e).endswith("continue with pyrod.resume('runs/a b.nc')")
    no = pyrod.RunInterrupted("stopped at once at step 3", path="x.nc", step=3, resumable=False,
                              why_not="no checkpoint had been written yet")
    assert "resume" not in no.message("cli").replace("cannot be resumed", "")


def test_progress_moves_within_a_chunk(monkeypatch):
    """The bar's position after each update: with one chunk of 30 steps, it must pass through positions between
    0 and 30 before the chunk ends (it used to jump from 0 to 30)."""
    import tqdm.auto

    positions = []

    class Bar:
        def __init__(self, *a, total=None, initial=0, **k):
            self.n = initial

        def update(self, d):
            self.n += d
            positions.append(self.n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    pyrod.simulate(pyrod.problem(toy="quartic"), pyrod.optimizers.GD(lr=0.2), steps=30, runs=["discrete", "rod"],
                   chunk=30, progress=True)
    inside = [p for p in positions if 0 < p < 30]
    assert len(inside) > 10 and positions == sorted(positions) and positions[-1] == pytest.approx(30), positions


def test_cli_run_prints_json_summary(tmp_path, capsys):
    path = tmp_path / "q.nc"
    assert main(["run", "--problem", '{"toy": "quartic"}', "--stop.steps", "3", "--output.path", str(path),
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["steps_completed"] == 3
