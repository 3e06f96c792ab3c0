"""The run-kind registry (pyrod.run_kinds): a flow registered from outside pyrod (tests/toy_flow.py) runs through
``pyrod.simulate``, is written, replayed and resumed like a built-in one; its answer matches the closed form; bad
registrations and bad options fail with clear messages; the built-in kinds are declared once and everything else
(spec, command line, plots) derives from the registry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_flow  # noqa: F401  (registers "scaled_gd")
from test_resume import _kill9_after_checkpoint, assert_same_run

import pyrod
from pyrod import run_kinds
from pyrod.keys import SpecError

ROOT = Path(__file__).resolve().parents[1]
QUAD = {"toy": "quadratic", "model_kwargs": {"spectrum": [3.0, 1.0, 0.2], "rotate": True, "seed": 1}}


def _kw(path, steps=20, scale=0.5, **more):
    return dict(problem=QUAD, optimizer={"name": "GD", "lr": 0.1}, steps=steps, runs=["discrete", "scaled_gd"],
                scaled_gd={"scale": scale}, method="DOP853", rtol=1e-10, atol=1e-12, eigs=1, eig_every=5, chunk=5,
                checkpoint_every=5, path=str(path), overwrite=True, **more)


def test_registered_flow_matches_its_closed_form_and_is_written(tmp_path):
    tree = pyrod.simulate(**_kw(tmp_path / "a.nc"))
    ds = tree["scaled_gd"].ds
    assert ds.attrs["run"] == "scaled_gd" and ds.attrs["scale"] == 0.5
    assert ds.attrs["flow_status"] == "ok"
    prob = pyrod.problem(**QUAD)
    A = prob.closed_form.A
    lam, Q = torch.linalg.eigh(A)
    t = ds["t"].values
    # w(t) = exp(-s η A t) w0, so L(w(t)) = ½ Σ_i λ_i c_i² exp(-2 s η λ_i t) with c = Qᵀ w0
    c = (Q.T @ prob.w0).numpy()
    exact = 0.5 * np.sum(lam.numpy()[None] * c[None] ** 2 * np.exp(-2 * 0.5 * 0.1 * lam.numpy()[None] * t[:, None]),
                         axis=1)
    np.testing.assert_allclose(ds["loss"].values, exact, rtol=1e-8)
    # λmax of the flow's Hessian is A's top eigenvalue (a quadratic), measured where due
    sharp = ds["sharpness"].values
    np.testing.assert_allclose(sharp[np.isfinite(sharp)], lam.max().item(), rtol=1e-6)
    spec = pyrod.spec_of(tmp_path / "a.nc")
    assert spec.runs == ("discrete", "scaled_gd") and spec.flows == ("scaled_gd",)
    assert spec.run_options == {"scaled_gd": {"scale": 0.5}}
    assert run_kinds.run_kind("scaled_gd").options_of(spec) == toy_flow.ScaledOptions(scale=0.5)


def test_builtin_runs_keep_their_json(tmp_path):
    """Files of pyrod's own runs have no run_options key: the JSON spec is what it was before run kinds."""
    pyrod.simulate(problem=QUAD, optimizer={"name": "GD", "lr": 0.1}, steps=4, runs=["discrete", "rod"],
                   path=str(tmp_path / "b.nc"))
    raw = json.loads(pyrod.open(tmp_path / "b.nc").attrs["pyrod_config"])
    assert "run_options" not in raw
    assert pyrod.spec_of(tmp_path / "b.nc").run_options == {}


def test_registered_flow_replays_and_resumes_bit_identically(tmp_path):
    full = pyrod.simulate(**_kw(tmp_path / "full.nc", steps=40))
    # replay from the file's spec
    again = pyrod.simulate(pyrod.spec_of(tmp_path / "full.nc").replace({"output.path": str(tmp_path / "r.nc")}))
    assert_same_run(again, full, ["discrete", "scaled_gd"])
    # a finished 20-step run extended to 40 (20 is a multiple of the chunk: the same segments, the same bits)
    pyrod.simulate(**_kw(tmp_path / "ext.nc", steps=20))
    extended = pyrod.resume(tmp_path / "ext.nc", steps=40)
    assert_same_run(extended, full, ["discrete", "scaled_gd"])
    # an option changed through replace lands in run_options and changes the flow
    other = pyrod.spec_of(tmp_path / "full.nc").replace({"run_options.scaled_gd.scale": 1.0,
                                                          "output.path": str(tmp_path / "s1.nc")})
    assert other.run_options == {"scaled_gd": {"scale": 1.0}}
    s1 = pyrod.simulate(other)
    assert not np.allclose(s1["scaled_gd"].ds["loss"].values[1:], full["scaled_gd"].ds["loss"].values[1:])


def test_registered_flow_resumes_after_kill9(tmp_path):
    """A subprocess that registers the kind (imports tests/toy_flow.py) is killed after its first checkpoint; this
    process resumes it and gets the bits of a run never stopped."""
    path = tmp_path / "killed.nc"
    kw = _kw(path, steps=400)
    script = textwrap.dedent(f"""
        import json, torch
        torch.set_num_threads(1)
        import pyrod, toy_flow
        pyrod.simulate(**json.loads({json.dumps(json.dumps(kw))}))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _kill9_after_checkpoint(proc, path, 0.1)
    killed_at = pyrod.open(path)["discrete"].ds.sizes["t"]
    resumed = pyrod.resume(path)
    ref = pyrod.simulate(**{**kw, "path": str(tmp_path / "ref.nc")})
    assert killed_at < 400
    assert_same_run(resumed, ref, ["discrete", "scaled_gd"])


def test_options_of_a_registered_kind_are_checked():
    base = dict(problem=QUAD, optimizer={"name": "GD", "lr": 0.1}, steps=4, runs=["discrete", "scaled_gd"])
    with pytest.raises(SpecError, match=r"scael.*did you mean 'scale'"):
        pyrod.simulate(**base, scaled_gd={"scael": 2.0})
    with pytest.raises(ValueError, match=r"run_options\['scaled_gd'\]: scale=-1.0 must be a positive number"):
        pyrod.simulate(**base, scaled_gd={"scale": -1.0})
    with pytest.raises(SpecError, match=r"run_options\['scaled_gd'\] apply to the 'scaled_gd' run"):
        pyrod.simulate(**{**base, "runs": ["discrete"]}, scaled_gd={"scale": 2.0})
    with pytest.raises(ValueError, match="plain gradient descent"):
        pyrod.simulate(**{**base, "optimizer": {"name": "Adam", "lr": 0.01}})
    with pytest.raises(SpecError, match=r"the 'rod' run's options are the spec section 'rod'"):
        pyrod.RunSpec(optimizer={"name": "GD", "lr": 0.1}, runs=["discrete", "rod"], run_options={"rod": {}})


def test_unknown_and_unregistered_kinds_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"run 'scaled_gf' is unknown.*did you mean 'scaled_gd'.*register_run_kind"):
        pyrod.RunSpec(optimizer={"name": "GD", "lr": 0.1}, runs=["discrete", "scaled_gf"])
    kind = run_kinds.run_kind("scaled_gd")
    pyrod.simulate(**_kw(tmp_path / "u.nc", steps=5))
    run_kinds.unregister_run_kind("scaled_gd")
    try:    # a file with a run of an unregistered kind: resume says what to register
        with pytest.raises(ValueError, match=r"run kind 'scaled_gd' \(defined in module 'toy_flow' when the file "
                                             r"was written: `import toy_flow` first.*is not registered"):
            pyrod.resume(tmp_path / "u.nc", steps=10)
    finally:
        pyrod.register_run_kind(kind)
    with pytest.raises(ValueError, match="built into pyrod"):
        pyrod.register_run_kind(pyrod.RunKind("rod", "mine", flow=True, model=toy_flow.ScaledGradientFlow))
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        pyrod.register_run_kind(pyrod.RunKind("scaled_gd", "again", flow=True, model=toy_flow.ScaledGradientFlow))
    with pytest.raises(ValueError, match="must be a Python identifier"):
        pyrod.RunKind("my flow", "x", flow=True, model=toy_flow.ScaledGradientFlow)
    with pytest.raises(ValueError, match="a flow needs model="):
        pyrod.RunKind("nomodel", "x", flow=True)
    with pytest.raises(ValueError, match="section= is for pyrod's own kinds"):
        pyrod.register_run_kind(pyrod.RunKind("sec", "x", flow=True, model=toy_flow.ScaledGradientFlow,
                                              section="rod"))


def test_everything_derives_from_the_registry():
    from pyrod import cli, spec
    from pyrod.plotting import _style

    builtin = tuple(k.name for k in run_kinds.BUILTIN_RUNS)
    assert builtin == ("discrete", "midpoint", "stable", "rod", "central") == spec.RUN_NAMES
    assert run_kinds.run_names()[:5] == builtin and "scaled_gd" in run_kinds.run_names()
    assert set(run_kinds.flow_names()) >= {"stable", "rod", "central", "scaled_gd"}
    flows = run_kinds.flow_models()
    assert flows["scaled_gd"] is toy_flow.ScaledGradientFlow and flows["central"].__name__ == "CentralFlow"
    # every built-in flow's options section is a RunSpec section; misplaced options are refused by section
    assert {k.section for k in run_kinds.BUILTIN_RUNS if k.flow} == {"stable", "rod", "central"}
    assert set(spec.sections_used(pyrod.RunSpec(optimizer={"name": "GD", "lr": 0.1}, runs=["discrete", "rod"]))) \
        == {"integrator", "stable", "rod", "central"}
    assert typing_args(cli.RunName) == run_kinds.run_names()[:len(typing_args(cli.RunName))]
    assert _style("scaled_gd") == {"color": "tab:purple", "label": "scaled GD flow", "ls": "-", "lw": 1.4}
    assert _style("central")["label"] == "central flow" and _style("nothing")["label"] == "nothing"
    src = (ROOT / "pyrod" / "simulation.py").read_text()
    assert 'name == "central"' not in src and "hasattr(run" not in src


def typing_args(t):
    import typing
    return typing.get_args(t)
