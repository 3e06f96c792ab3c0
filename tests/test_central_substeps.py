"""benchmarks/central_substeps.py: the central flow's cost and answers at several Euler substeps (docs/howto/cost.md)."""
import os
import sys

import pytest
import torch

import pyrod

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import central_substeps as cs  # noqa: E402


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_history_lists_the_first_step_and_every_change_of_the_critical_count():
    assert cs._history([1, 1, 0, 0, 1, 2, 2]) == "0:1 2:0 4:1 5:2"
    assert cs._history([0.0, 0.0]) == "0:0"


def test_relative_differences_skip_the_first_steps():
    med, mx = cs._rel([1.0, 9.0, 9.0, 9.0, 1.1, 1.2, 0.9], [1.0] * 7)
    assert med == pytest.approx(0.1) and mx == pytest.approx(0.2)      # steps 4-6: 0.1, 0.2, 0.1
    assert cs._rel([2.0, 1.0], [1.0, 1.0]) == (pytest.approx(0.5), pytest.approx(1.0))   # fewer than 4: all


@pytest.mark.filterwarnings("ignore:central flow. more than max_track")
def test_command_runs_each_substeps_value_and_compares_to_the_finest(capsys):
    cs.main(["--models", "cnn", "--substeps", "4,2", "--steps", "2", "--n", "4"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    head = _cells(lines[0])
    rows = [dict(zip(head, _cells(ln), strict=True)) for ln in lines[2:]]
    assert [r["substeps"] for r in rows] == ["2", "4"]                  # sorted; 4 is the finest
    assert rows[1]["predicted loss vs the most substeps: median / max"] == "0 / 0"
    assert rows[0]["predicted loss vs the most substeps: median / max"] != "0 / 0"   # τ = 1/2 is another flow
    assert all(r["critical set (step:count)"].startswith("0:") and float(r["CPU s"]) >= 0 for r in rows)


def test_command_rejects_bad_options():
    with pytest.raises(SystemExit, match="--models: unknown \\['resnet'\\]"):
        cs.main(["--models", "resnet"])
    with pytest.raises(SystemExit, match="--substeps '0,4'"):
        cs.main(["--substeps", "0,4"])
    with pytest.raises(SystemExit, match="--substeps 'two'"):
        cs.main(["--substeps", "two"])
    with pytest.raises(SystemExit, match="--opt rmsprop: only with --models ref-mlp alone .* got --models cnn"):
        cs.main(["--models", "cnn", "--opt", "rmsprop"])
    with pytest.raises(SystemExit, match="got --models ref-mlp,cnn"):        # refused before the first model runs
        cs.main(["--models", "ref-mlp,cnn", "--opt", "rmsprop"])
    with pytest.raises(SystemExit, match="--n 10: ref-mlp's data has 4 classes"):
        cs.main(["--models", "ref-mlp", "--n", "10"])


@pytest.mark.filterwarnings("ignore:central flow. more than max_track")   # RMSProp's first steps (ν from 0)
def test_reference_mlp_runs_at_its_own_learning_rate(capsys):
    """``ref-mlp``: the reference's MLP on vs_reference's data at its η = 0.037 (no λ0 solve), or the reference's
    RMSProp at η = 1e-4 with its step counter; tiny runs."""
    threads = torch.get_num_threads()
    try:                                    # --threads holds: building the problem does not reset torch's threads
        torch.set_num_threads(2)
        prob, opt, flow_options = cs.setup(cs.REF_MLP, 8)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert isinstance(opt, pyrod.optimizers.GD) and opt.lr == 0.037 and flow_options == {}
    assert prob.dim == 3 * 32 * 32 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4             # width 32, 4 classes
    _, rms, flow_options = cs.setup(cs.REF_MLP, 8, "rmsprop")
    assert isinstance(rms, pyrod.optimizers.RMSProp) and rms.lr == 1e-4 and rms.beta2 == 0.99
    assert flow_options == {"counter_rate": "1/beta2"}
    cs.main(["--models", "ref-mlp", "--substeps", "2", "--steps", "2", "--n", "8"])
    cs.main(["--models", "ref-mlp", "--opt", "rmsprop", "--substeps", "2", "--steps", "2", "--n", "8"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ref-mlp")]
    assert [_cells(ln)[:2] for ln in lines] == [["ref-mlp", "2"], ["ref-mlp (rmsprop)", "2"]]
