"""What the central flow's two options for derivatives from differences of gradients share
(``central.third_derivative`` and ``central.tracking_hvp``, each ``"autograd" | "difference"``): the refusals
(float32, unknown values), the spec and command-line round trip, and a bit-identical resume. Their accuracy and the
flow's answers are tested per option in tests/test_third_derivatives.py and tests/test_difference_hvp.py."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pyrod
from pyrod.flows.central import CentralFlow
from pyrod.optimizers import GD

#: each option, with the central-flow counter that shows the work it changes was done
OPTIONS = {"third_derivative": "central_n_t3", "tracking_hvp": "central_rr_hvp"}


def _small_mlp(dtype="float64"):
    return pyrod.problem(model="mlp", data="digits", classes=4, n=64, seed=0, dtype=dtype,
                         model_kwargs={"width": 8, "depth": 2, "activation": "gelu"})


@pytest.mark.parametrize("option", OPTIONS)
def test_float32_and_unknown_values_are_refused_by_name(option):
    prob32 = _small_mlp("float32")
    with pytest.raises(ValueError, match=rf"float64 problem, not torch\.float32.*{option}='autograd'"):
        CentralFlow(prob32, GD(lr=0.1), **{option: "difference"})
    CentralFlow(prob32, GD(lr=0.1))              # autograd, the default, is fine in float32
    prob = _small_mlp()
    with pytest.raises(ValueError, match=rf"{option}='finite'.*'autograd', 'difference'"):
        CentralFlow(prob, GD(lr=0.1), **{option: "finite"})
    with pytest.raises(ValueError, match=rf"{option}='finite'"):
        pyrod.simulate(prob, GD(lr=0.1), steps=2, runs=["discrete", "central"], **{option: "finite"})


@pytest.mark.parametrize("option", OPTIONS)
def test_the_option_is_recorded_and_read_back(tmp_path, option):
    """A flat keyword of ``simulate``, stored in the file's spec; a file written before the option existed reads
    back as autograd (what pyrod did then)."""
    prob = _small_mlp()
    path = tmp_path / "run.nc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyrod.simulate(prob, GD(lr=0.1), steps=2, runs=["discrete", "central"], path=path,
                       **{option: "difference"})
    assert getattr(pyrod.spec_of(path).central, option) == "difference"
    d = pyrod.spec_of(path).to_dict()
    d["central"].pop(option)
    assert getattr(pyrod.RunSpec.from_dict(d).central, option) == "autograd"


@pytest.mark.parametrize("option", OPTIONS)
def test_the_command_line_takes_the_option(option):
    """``--central.<option> difference`` reaches the run's spec (the flag is built from the options' one
    declaration)."""
    from pyrod.cli import parse_run
    flag = "--central." + option.replace("_", "-")
    spec, _ = parse_run(["--problem", '{"toy": "quartic"}', "--runs", "discrete", "central", flag, "difference"])
    assert getattr(spec.central, option) == "difference"
    assert getattr(parse_run(["--problem", '{"toy": "quartic"}'])[0].central, option) == "autograd"


@pytest.mark.parametrize("option", OPTIONS)
def test_a_resumed_run_keeps_the_option_and_its_bits(tmp_path, option):
    """A finished 8-step run (chunk 4) extended to 12 steps equals a 12-step run variable by variable: the resumed
    run takes the option from the file (an autograd resume would differ at about 1e-9 to 1e-8)."""
    prob = _small_mlp()
    lam = float(torch.linalg.eigvalsh(prob.hessian(prob.w0))[-1])
    kw = dict(runs=["discrete", "central"], restart_at=2, chunk=4, threads=1, **{option: "difference"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = pyrod.simulate(prob, GD(lr=2.1 / lam), steps=12, path=tmp_path / "whole.nc", **kw)
        pyrod.simulate(prob, GD(lr=2.1 / lam), steps=8, path=tmp_path / "part.nc", **kw)
        resumed = pyrod.resume(tmp_path / "part.nc", steps=12)
    assert whole["central"].attrs[OPTIONS[option]] > 0
    for name in ("predicted_loss", "predicted_variances", "n_critical", "critical_sharpness"):
        np.testing.assert_array_equal(resumed["central"].ds[name].values, whole["central"].ds[name].values)
