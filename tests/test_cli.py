"""``python -m pyrod run|resume``: command lines generated from the typed run spec."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pyrod
from pyrod.cli import RunCommand, parse_run
from pyrod.cli_errors import CommandLineError

ROOT = Path(__file__).resolve().parents[1]


def test_every_spec_field_is_a_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        parse_run(["--help"])
    out = capsys.readouterr().out
    for flag in ("--eig.every", "--eig.max-iter", "--integrator.method", "--integrator.max-rhs-per-unit",
                 "--central.tau", "--central.sdcp-threshold", "--rod.bea", "--stop.steps", "--stop.loss-target",
                 "--output.checkpoint-every", "--runs", "--restart-at", "--events"):
        assert flag in out, flag
    assert "(default: 0.975)" in out          # defaults are shown


def test_flags_build_the_spec_and_a_saved_spec_is_the_starting_point(tmp_path):
    spec, _ = parse_run(["--problem", '{"toy": "quartic"}', "--runs", "discrete", "rod", "--stop.steps", "12",
                         "--integrator.method", "RK45", "--rod.bea", "--events", "loss<0.5!",
                         "--integrator.options", '{"max_steps": 1000}', "--output.path", "x.nc"])
    assert spec.problem == {"toy": "quartic"} and spec.runs == ("discrete", "rod") and spec.steps == 12
    assert spec.integrator.method == "RK45" and spec.rod.bea and spec.events[0].terminal
    assert spec.integrator.options == {"max_steps": 1000}
    f = tmp_path / "spec.json"
    f.write_text(spec.to_json())
    again, _ = parse_run(["--spec", str(f), "--stop.steps", "20"])
    assert again == spec.replace({"stop.steps": 20})
    assert RunCommand.from_spec(spec).to_spec() == spec


def test_bad_flag_values_are_refused():
    with pytest.raises(CommandLineError, match=r"--stop.steps: invalid literal .* \(see python -m pyrod run --help\)"):
        parse_run(["--stop.steps", "many"])
    with pytest.raises(CommandLineError, match="must be JSON"):
        parse_run(["--problem", "{toy: quartic}"])


def test_run_then_resume_from_the_command_line(tmp_path):
    path = tmp_path / "c.nc"
    run = [sys.executable, "-m", "pyrod", "run", "--problem", '{"toy": "quartic"}', "--runs", "discrete", "rod",
           "--stop.steps", "10", "--output.chunk", "5", "--output.path", str(path), "--no-progress"]
    p = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["steps_completed"] == 10
    p = subprocess.run([sys.executable, "-m", "pyrod", "resume", str(path), "--steps", "15", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert pyrod.open(path)["rod"].ds.sizes["t"] == 15
    p = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)   # exists, no overwrite
    assert p.returncode == 2 and "exists" in p.stderr and "pyrod.resume" in p.stderr
