"""Optimizers: hyper-parameter types checked generically from the dataclass field types (bools must be bools;
NumPy integers and floats accepted where ints and floats are, stored as Python numbers)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import pyrod
from pyrod.optimizers import GD, REGISTRY, Adam, from_config
from pyrod.optimizers.base import _annotation_kinds

BOOL_FIELDS = [(cls, f.name) for cls in REGISTRY.values() for f in dataclasses.fields(cls)
               if "bool" in _annotation_kinds(f)]
FLOAT_FIELDS = [(cls, f.name) for cls in REGISTRY.values() for f in dataclasses.fields(cls)
                if "float" in _annotation_kinds(f)]


def test_bool_fields_found():
    names = {(c.name, f) for c, f in BOOL_FIELDS}
    assert {("Adam", "bias_correction"), ("RMSProp", "bias_correction"), ("Muon", "nesterov"),
            ("Muon", "flatten_nd")} <= names


@pytest.mark.parametrize("cls,field", BOOL_FIELDS, ids=[f"{c.name}.{f}" for c, f in BOOL_FIELDS])
@pytest.mark.parametrize("bad", ["no", 1, 0, None, 1.0])
def test_non_bool_is_refused(cls, field, bad):
    with pytest.raises(ValueError) as e:
        cls(**{field: bad, **({} if cls.name in ("Muon", "Adafactor") else {"lr": 0.1})})
    assert str(e.value).startswith(f"{field}={bad!r}") and "bool" in str(e.value)


def test_numpy_bool_accepted_as_bool():
    a = Adam(lr=1e-3, bias_correction=np.False_)
    assert a.bias_correction is False and a.config() == Adam(lr=1e-3, bias_correction=False).config()
    m = pyrod.optimizers.Muon(nesterov=np.bool_(True))
    assert m.nesterov is True


def test_adam_string_bias_correction_no_longer_means_true():
    with pytest.raises(ValueError, match="bias_correction='no'"):
        Adam(lr=1e-3, bias_correction="no")


def test_numpy_numbers_accepted_and_stored_as_python():
    a = Adam(lr=np.float32(0.001), beta1=np.float64(0.9), beta2=np.float16(0.5), eps=np.int64(0))
    assert all(type(getattr(a, k)) is float for k in ("lr", "beta1", "beta2", "eps"))
    assert a.lr == float(np.float32(0.001)) and a.eps == 0.0 and a.beta2 == 0.5
    text = json.dumps(a.config())
    assert json.dumps(from_config(json.loads(text)).config()) == text
    assert a.threshold() == Adam(lr=float(np.float32(0.001)), beta1=0.9, beta2=0.5, eps=0.0).threshold()
    g = GD(lr=np.int64(1))
    assert type(g.lr) is float and g.lr == 1.0
    m = pyrod.optimizers.Muon(ns_steps=np.int64(3), momentum=np.float32(0.5))
    assert type(m.ns_steps) is int and m.ns_steps == 3 and type(m.momentum) is float
    # the same steps as with Python numbers
    w, gr = torch.ones(3, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    b = Adam(lr=float(np.float32(0.001)), beta1=0.9, beta2=0.5, eps=0.0)
    sa, _ = a.step(a.init_state(w, gr), gr)
    sb, _ = b.step(b.init_state(w, gr), gr)
    assert torch.equal(sa.w, sb.w)


@pytest.mark.parametrize("cls,field", FLOAT_FIELDS, ids=[f"{c.name}.{f}" for c, f in FLOAT_FIELDS])
def test_float_fields_refuse_strings_and_bools(cls, field):
    base = {} if cls.name in ("Muon", "Adafactor") else {"lr": 0.1}
    for bad in ("0.1", True):
        with pytest.raises(ValueError) as e:
            cls(**{**base, field: bad})
        assert str(e.value).startswith(f"{field}={bad!r}")


def test_int_fields_refuse_floats_and_bools():
    for bad in (3.0, True, "3"):
        with pytest.raises(ValueError) as e:
            pyrod.optimizers.Muon(ns_steps=bad)
        assert str(e.value).startswith(f"ns_steps={bad!r}")
