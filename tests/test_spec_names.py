"""Every name at every depth of a run spec is checked at once, with the closest valid name; values changed on the
user's behalf are refused where they change the experiment."""
from __future__ import annotations

import pytest

import pyrod
from pyrod.spec import RunSpec, SpecError

GD = {"name": "GD", "lr": 0.1}


@pytest.mark.parametrize("changes, match", [
    ({"optimizer": {"name": "GD", "lrr": 0.1}}, r"unknown option 'lrr' in optimizer GD \(did you mean 'lr'\?\)"),
    ({"optimizer": {"name": "Adamm", "lr": 0.1}}, r"optimizer='Adamm' is unknown \(did you mean 'Adam'\?\)"),
    ({"problem": {"toy": "quartic", "sed": 1}}, r"unknown option 'sed' in problem \(toy 'quartic'\) "
                                                r"\(did you mean 'seed'\?\)"),
    ({"problem": {"toy": "quartc"}}, r"problem.toy='quartc' is not a known toy \(did you mean 'quartic'\?\)"),
    ({"problem": {"model": "mlp", "clases": 4}}, r"unknown option 'clases' in problem \(did you mean 'classes'\?\)"),
    ({"problem": {"model": "mlpp"}}, r"problem.model='mlpp' is not a known model \(did you mean 'mlp'\?\)"),
    ({"problem": {"data": "digit"}}, r"problem.data='digit' is not a known data set \(did you mean 'digits'\?\)"),
    ({"problem": {"model": "mlp", "model_kwargs": {"widht": 8}}},
     r"unknown option 'widht' in problem.model_kwargs of 'mlp' \(did you mean 'width'\?\)"),
    ({"problem": {"data": "synthetic_classification", "data_kwargs": {"dims": 8}}},
     r"unknown option 'dims' in problem.data_kwargs of 'synthetic_classification' \(did you mean 'dim'\?\)"),
    ({"problem": {"model": "mlp", "loss": "mes"}}, r"problem.loss='mes' is not a known loss \(did you mean 'mse'\?\)"),
    ({"eig": {"evry": 3}}, r"unknown option 'evry' in eig \(did you mean 'every'\?\)"),
    ({"integrator": {"options": {"jak": "jvp"}}}, r"unknown option 'jak' in integrator.options .*did you mean 'jac'"),
    ({"integrator": {"method": "RK46"}}, r"integrator.method='RK46' is not a method .*did you mean 'RK45'"),
    ({"integrator": {"backend": "scipi"}}, r"integrator.backend='scipi' is not a known backend \(did you mean "
                                           r"'scipy'\?\)"),
    ({"runs": ("discrete", "rod"), "events": ["eso"]}, r"event 'eso' is unknown \(did you mean 'eos'\?\)"),
    ({"runs": ("discrete", "rod"), "events": [{"kind": "eos", "terminl": True}]},
     r"unknown option 'terminl' in event .*did you mean 'terminal'"),
    ({"stpo": {"steps": 3}}, r"unknown option 'stpo' in RunSpec \(did you mean 'stop'\?\)"),
])
def test_a_typo_at_any_depth_names_the_closest_valid_name(changes, match):
    with pytest.raises(SpecError, match=match):
        RunSpec.from_dict({"problem": {"toy": "quartic"}, "optimizer": GD, **changes})


def test_all_wrong_names_are_reported_at_once():
    with pytest.raises(SpecError) as e:
        RunSpec(problem={"toy": "quartic", "sed": 1}, optimizer={"name": "GD", "learning_rate": 0.1},
                eig={"evry": 3}, integrator={"options": {"jak": "jvp"}})
    msg = str(e.value)
    for part in ("'sed'", "'learning_rate'", "'evry'", "'jak'"):
        assert part in msg, msg


def test_replace_validates_what_it_returns():
    spec = RunSpec(problem={"toy": "quartic"}, optimizer=GD)
    with pytest.raises(SpecError, match=r"unknown option 'lrr' in optimizer GD \(did you mean 'lr'\?\)"):
        spec.replace({"optimizer.lrr": 0.2})
    with pytest.raises(SpecError, match=r"'sed'.*did you mean 'seed'"):
        spec.replace({"problem.sed": 1})
    assert spec.replace({"optimizer.lr": 0.2}).optimizer["lr"] == 0.2


def test_the_keyword_forms_check_names_too():
    prob = pyrod.problem(toy="quartic")
    with pytest.raises(SpecError, match=r"unknown option 'learning_rate' in optimizer GD"):
        pyrod.simulate(prob, {"name": "GD", "learning_rate": 0.1}, steps=3)
    with pytest.raises(SpecError, match=r"unknown option 'sed' in pyrod.problem \(toy 'quartic'\) .*'seed'"):
        pyrod.problem(toy="quartic", sed=1)
    with pytest.raises(SpecError, match=r"unknown option 'clases' in pyrod.problem \(did you mean 'classes'\?\)"):
        pyrod.problem(model="mlp", clases=4)
    with pytest.raises(SpecError, match=r"'widht'.*did you mean 'width'"):
        pyrod.problem(model="mlp", n=10, model_kwargs={"widht": 8})


def test_an_n_the_data_cannot_supply_is_refused_not_shrunk():
    with pytest.raises(ValueError, match=r"n=100000: data='digits' has only 720 points of classes 0–3; give "
                                         r"n <= 720 \(or n=None for all of them\)"):
        pyrod.problem(data="digits", classes=4, n=100000)
    assert pyrod.problem(data="digits", classes=4, n=720).config["n"] == 720
    p = pyrod.problem(data="digits", classes=4)          # the default n (1000, or all when fewer) is not the user's
    assert p.config["n"] == 720
    assert pyrod.problem(**p.config).config == p.config   # and its config replays


def test_old_specs_still_load():
    """A spec dict as written by earlier pyrod versions (no ``threads``) still loads and runs."""
    old = RunSpec(problem={"toy": "quartic"}, optimizer=GD, stop={"steps": 3}).to_dict()
    old.pop("threads")
    assert RunSpec.from_dict(old).threads is None
