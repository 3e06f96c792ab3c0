"""The typed run specification: validation, the keyword form, JSON round trips, replay from the file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import pyrod
from pyrod.spec import CentralSpec, EigSpec, IntegratorSpec, OutputSpec, RunSpec, SpecError, StopSpec, spec_from_kwargs


def quad():
    return pyrod.problem(toy="quadratic")


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, match", [
    ({"eig_evry": 3}, r"unknown option 'eig_evry' \(did you mean 'eig_every'\?\)"),
    ({"rtoll": 1e-3}, r"did you mean 'rtol'"),
    ({"central": {"eig_tl": 1e-3}}, r"unknown option 'eig_tl' in central \(did you mean 'eig_tol'\?\)"),
    ({"integrator": {"substep": 4}}, r"in integrator \(did you mean 'substeps'\?\)"),
])
def test_unknown_option_names_it_and_suggests(kw, match):
    with pytest.raises(SpecError, match=match):
        pyrod.simulate(quad(), pyrod.optimizers.GD(lr=0.1), steps=5, runs=["discrete", "rod"], **kw)


@pytest.mark.parametrize("kw, match", [
    ({"bea": True}, r"bea"),                                   # a flow option without any flow
    ({"sdcp_threshold": 0.9}, r"central options \['sdcp_threshold'\] apply to the 'central' run"),
    ({"rtol": 1e-3}, r"integrator options \['rtol'\] apply to flow runs"),
    ({"restart_at": 2}, r"restart_at=2 applies to flow runs"),
    ({"events": ["eos"]}, r"events=\['eos'\] apply to flow runs"),
])
def test_misplaced_option_is_refused(kw, match):
    with pytest.raises((SpecError, ValueError), match=match):
        pyrod.simulate(quad(), pyrod.optimizers.GD(lr=0.1), steps=5, runs=["discrete"], **kw)


@pytest.mark.parametrize("kw, match", [
    ({"steps": 0}, r"steps=0 must be an int >= 1"),
    ({"steps": 2.5}, r"steps=2.5 must be an int"),
    ({"eigs": 4}, r"eigs=4 is more than the problem.s dimension d=3"),
    ({"eig_every": True}, r"eig_every=True must be an int"),
    ({"path": ""}, r"path='' is empty"),
    ({"overwrite": "yes"}, r"overwrite='yes' must be True or False"),
    ({"runs": ["discrete", "rood"]}, r"run 'rood' is unknown \(did you mean 'rod'\?\)"),
    ({"runs": []}, r"runs=\(\) is empty"),
    ({"divergence_factor": 1.0}, r"divergence_factor=1.0 must be a number in \(1"),
    ({"loss_target": float("nan")}, r"loss_target=nan must be a number"),
])
def test_bad_values_name_the_value(kw, match):
    with pytest.raises((SpecError, ValueError), match=match):
        kw = {"steps": 5, **kw}
        pyrod.simulate(quad(), pyrod.optimizers.GD(lr=0.1), **kw)


def test_numpy_integers_are_integers(tmp_path):
    tree = pyrod.simulate(quad(), pyrod.optimizers.GD(lr=0.1), steps=np.int64(6), eigs=np.int32(1),
                          eig_every=np.int64(2), chunk=np.int64(3))
    assert tree["discrete"].ds.sizes["t"] == 6


def test_directory_as_path_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        pyrod.simulate(quad(), pyrod.optimizers.GD(lr=0.1), steps=3, path=tmp_path, overwrite=True)


def test_sections_validate_their_fields():
    with pytest.raises(ValueError, match=r"central.track_threshold=0.99 must be a number in \(0, 0.975\)"):
        CentralSpec(track_threshold=0.99)
    with pytest.raises(ValueError, match=r"integrator.max_step=0 must be a number in \(0"):
        IntegratorSpec(max_step=0)
    with pytest.raises(ValueError, match=r"output.checkpoint_every=-1"):
        OutputSpec(checkpoint_every=-1)
    assert EigSpec(k=np.int64(2)).k == 2 and type(EigSpec(k=np.int64(2)).k) is int


# ----------------------------------------------------------------------------------------- keyword form
def test_flat_keywords_land_in_their_sections():
    spec = spec_from_kwargs({"toy": "quadratic"}, {"name": "GD", "lr": 0.1}, dict(
        steps=7, runs=["discrete", "stable", "rod", "central"], eigs=2, eig_every=3, eig_tol=1e-7,
        eig_max_iter=50, backend="scipy", method="RK45", rtol=1e-5, atol=1e-8, max_step=0.5, substeps=8,
        min_step=1e-9, max_rhs_per_unit=300, bea=True, sdcp_threshold=0.95, track_threshold=0.7, tau=0.1,
        max_track=4, sdcp_tol=1e-9, refresh_tol=1e-2, jac="jvp", loss_target=1e-3, divergence_factor=1e3,
        chunk=5, checkpoint_every=10, snapshot_every=2, restart_at=3, events=["eos", "loss<1e-2!"],
        central={"eig_tol": 1e-5, "eig_max_iter": 30}))
    assert spec.stop == StopSpec(steps=7, loss_target=1e-3, divergence_factor=1e3)
    assert spec.eig == EigSpec(k=2, every=3, tol=1e-7, max_iter=50)
    ig = spec.integrator
    assert (ig.method, ig.rtol, ig.atol, ig.max_step, ig.substeps, ig.min_step, ig.max_rhs_per_unit, ig.options) \
        == ("RK45", 1e-5, 1e-8, 0.5, 8, 1e-9, 300, {"jac": "jvp"})
    assert spec.stable.bea and spec.rod.bea
    c = spec.central
    # the measurement's eig_tol and the central flow's are different options (issue: they were conflated)
    assert (c.eig_tol, c.eig_max_iter, spec.eig.tol) == (1e-5, 30, 1e-7)
    assert (c.sdcp_threshold, c.track_threshold, c.tau, c.max_track, c.sdcp_tol, c.refresh_tol) == \
        (0.95, 0.7, 0.1, 4, 1e-9, 1e-2)
    assert spec.output == OutputSpec(chunk=5, checkpoint_every=10, snapshot_every=2)
    assert spec.restart_at == 3 and [e.name for e in spec.events] == ["eos", "loss<0.01"]
    assert spec.events[1].terminal


def test_json_round_trip_every_section():
    spec = spec_from_kwargs({"toy": "quadratic"}, {"name": "Adam", "lr": 1e-2}, dict(
        steps=7, runs=["discrete", "rod"], events=[pyrod.flows.EventSpec("loss_target", 0.5, True), "eos"],
        bea=True, method="euler", substeps=2, max_step=float("inf")))
    text = spec.to_json()
    back = RunSpec.from_json(text)
    assert back == spec
    assert json.loads(text)["integrator"]["max_step"] == "inf"


def test_replace_with_dotted_keys():
    spec = RunSpec(problem={"toy": "quadratic"}, optimizer={"name": "GD", "lr": 0.1}, stop={"steps": 5})
    s2 = spec.replace({"optimizer.lr": 0.2, "problem.seed": 3, "stop.steps": 9, "eig.k": 2})
    assert (s2.get("optimizer.lr"), s2.problem["seed"], s2.steps, s2.eig.k) == (0.2, 3, 9, 2)
    assert spec.steps == 5                      # frozen: the original is unchanged
    with pytest.raises(SpecError, match=r"key 'stop.stesp': stop has no option 'stesp' \(did you mean 'steps'"):
        spec.replace({"stop.stesp": 3})
    with pytest.raises(SpecError, match=r"has no section 'outptu'"):
        spec.replace({"outptu.path": "x.nc"})
    s3 = spec.replace({"optimizer.name": "Adam"})      # another optimizer starts from its own defaults
    assert s3.optimizer == {"name": "Adam"}


# ----------------------------------------------------------------------------------------- replay
EVENT_FORMS = [["eos"], ["loss<0.5!"], [pyrod.flows.EventSpec("loss_target", 0.5, terminal=True)],
               [{"kind": "divergence"}]]


@pytest.mark.parametrize("events", EVENT_FORMS, ids=["str", "str-terminal", "EventSpec", "dict"])
def test_replay_from_file_is_bit_identical_for_every_event_form(tmp_path, events):
    prob = pyrod.problem(toy="quartic")
    path = tmp_path / "a.nc"
    t1 = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.2), steps=12, runs=["discrete", "stable"], eig_every=3,
                        events=events, path=path, chunk=4)
    t2 = pyrod.simulate(**pyrod.config_of(path))
    t3 = pyrod.simulate(pyrod.spec_of(path).replace({"output.path": str(tmp_path / "b.nc")}))
    for t in (t2, t3):
        for g in ("discrete", "stable"):
            xr.testing.assert_identical(t1[g].ds.drop_attrs(), t[g].ds.drop_attrs())
            assert t1[g].ds.attrs["events"] == t[g].ds.attrs["events"] if g == "stable" else True


@pytest.mark.parametrize("kind", ["registry", "toy"])
def test_replay_for_problem_kinds(tmp_path, kind):
    if kind == "registry":
        prob = pyrod.problem(model="mlp", data="digits", classes=2, n=40, model_kwargs={"width": 8})
    else:
        prob = pyrod.problem(toy="matrix_factorization")
    t1 = pyrod.simulate(prob, pyrod.optimizers.Adam(lr=1e-2), steps=6, eig_every=2, path=tmp_path / "r.nc")
    t2 = pyrod.simulate(**pyrod.config_of(tmp_path / "r.nc"))
    xr.testing.assert_identical(t1["discrete"].ds.drop_attrs(), t2["discrete"].ds.drop_attrs())


def test_from_module_problem_runs_but_refuses_replay(tmp_path):
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    X, Y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    prob = pyrod.Problem.from_module(model, X, Y, "ce")
    pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, path=tmp_path / "m.nc")
    with pytest.raises(ValueError, match=r"Problem.from_module.*Problem.from_factory"):
        pyrod.simulate(**pyrod.config_of(tmp_path / "m.nc"))
    with pytest.raises(ValueError, match=r"Problem.from_module.*Problem.from_factory"):
        pyrod.resume(tmp_path / "m.nc", steps=5)


def test_a_spec_given_as_data_may_carry_sections_of_runs_it_does_not_ask_for():
    """Misplaced options are refused in the keyword form; a spec (e.g. read from a file written with other
    defaults) runs as long as it is valid."""
    spec = RunSpec(problem={"toy": "quadratic"}, optimizer={"name": "GD", "lr": 0.1}, stop={"steps": 3},
                   integrator={"rtol": 1e-6, "atol": 1e-9}, central={"tau": 0.5})
    assert pyrod.simulate(spec)["discrete"].ds.sizes["t"] == 3


def test_from_call_is_the_keyword_form():
    """RunSpec.from_call is the one keywords -> spec conversion: simulate's stored spec, prepare_flows, the
    experiments' ctx.spec and a sweep's dict base all give the same spec for the same call."""
    import pyrod
    from pyrod.simulation import prepare_flows
    from pyrod.sweep import _as_spec

    prob = pyrod.problem(toy="quartic")
    opt = pyrod.optimizers.GD(lr=0.3)
    kw = dict(eigs=1, eig_every=2, method="euler", substeps=2, sdcp_threshold=0.9)
    spec = pyrod.RunSpec.from_call(prob, opt, 3, ["discrete", "central"], **kw)
    assert spec.stop.steps == 3 and spec.central.sdcp_threshold == 0.9 and spec.integrator.substeps == 2
    assert spec.problem == prob.replay_config() and spec.optimizer == opt.config()
    tree = pyrod.simulate(prob, opt, 3, ["discrete", "central"], progress=False, **kw)
    assert pyrod.RunSpec.from_dict(json.loads(tree.attrs["pyrod_config"])) == spec
    assert _as_spec({"problem": prob, "optimizer": opt, "steps": 3, "runs": ["discrete", "central"], **kw}) == spec
    flows = prepare_flows(prob, opt, ["central"], steps=3, **kw)
    assert flows["central"].spec == spec
