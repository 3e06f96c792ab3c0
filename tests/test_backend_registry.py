"""The backend registry: a backend defined and registered outside pyrod (here: a fixed-step Euler in NumPy on the
shared step loop) is selected by name everywhere — the spec's checks, the flat keywords of ``pyrod.simulate``, the
flow's default method by trait — and runs a rod flow to the same numbers as the built-in Euler integrator."""
from __future__ import annotations

import numpy as np
import pytest

import pyrod
from pyrod import integrate
from pyrod.integrate import Backend, register_backend, unregister_backend
from pyrod.integrate.driver import Counter, drive, prepare

SUBSTEPS = {"toy_substeps": "Euler steps per unit time (int >= 1, default 2)"}


class _Euler:
    """The stepper protocol of pyrod.integrate.driver.drive: step, interp, h_next, restart, finished."""

    def __init__(self, problem, t0, y0, t1, counter, n):
        self.problem, self.t1, self.counter, self.h = problem, t1, counter, 1.0 / n
        self.restart(t0, y0, None)

    @property
    def finished(self):
        return self.t >= self.t1

    def step(self):
        tn = min(self.t + self.h, self.t1)
        if self.t1 - tn < 1e-9 * self.h:
            tn = self.t1
        self.counter.rhs += 1
        f = np.asarray(self.problem.rhs(self.t, self.y), dtype=np.float64)
        self.t_old, self.y_old = self.t, self.y
        self.t, self.y = tn, self.y + (tn - self.t) * f

    def interp(self, s):
        a = 0.0 if self.t == self.t_old else (s - self.t_old) / (self.t - self.t_old)
        return (1 - a) * self.y_old + a * self.y

    def h_next(self):
        return self.h

    def restart(self, t, y, first_step):
        self.t, self.y = float(t), np.array(y, dtype=np.float64)
        self.t_old, self.y_old = self.t, self.y


def toy_euler(problem, t0, y0, t1, t_save):
    t0, y0, t1, ts = prepare(problem, t0, y0, t1, t_save)
    n = int(problem.options.get("toy_substeps", 2))
    stepper = _Euler(problem, t0, y0, t1, Counter(), n) if t1 > t0 else None
    return drive(stepper, problem, t0, y0, t1, ts, stepper.counter if stepper else Counter(),
                 max_rhs_per_unit=max(problem.max_rhs_per_unit or 0, 2.0 * n))


TOY = Backend(name="toyeuler", integrate_segment=toy_euler, methods=("euler",), default_method="euler",
              options=SUBSTEPS, trait_methods={"low_order": "euler", "fixed_step": "euler"})


@pytest.fixture
def toy():
    register_backend(TOY)
    yield TOY
    unregister_backend(TOY.name)
    assert "toyeuler" not in integrate.BACKEND_NAMES


def _run(**kw):
    prob = pyrod.problem(toy="quartic", kappa=0.05, ystar=2.0, x0=0.05, y0=1.45)
    return pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.8), steps=10, runs=["discrete", "rod"], eigs=1,
                          eig_every=5, progress=False, **kw)


def test_registered_backend_runs_a_rod_flow(toy):
    assert "toyeuler" in integrate.BACKEND_NAMES and integrate.methods_of("toyeuler") == ("euler",)
    got = _run(backend="toyeuler", toy_substeps=4)          # its option is a flat keyword of simulate
    rod = got["rod"]
    assert rod.attrs["backend"] == "toyeuler" and rod.attrs["method"] == "euler"
    assert rod.attrs["method_is_flow_default"] == 1        # the rod flow's "low_order" trait -> its euler
    assert rod.attrs["flow_status"] == "ok"
    ref = _run(backend="scipy", method="euler", substeps=4)["rod"]
    for v in ("loss", "grad_norm", "sharpness"):
        np.testing.assert_allclose(rod[v].values, ref[v].values, rtol=1e-10, atol=1e-14, equal_nan=True, err_msg=v)
    assert np.isfinite(rod["loss"].values).all()


def test_registered_backend_is_checked_like_the_built_in_ones(toy):
    with pytest.raises(ValueError, match=r"method='RK45' is not a method of backend 'toyeuler'.*\['euler'\]"):
        _run(backend="toyeuler", method="RK45")
    with pytest.raises((ValueError, TypeError), match=r"'jac'.*backend 'toyeuler'.*toy_substeps"):
        _run(backend="toyeuler", jac="fd")
    with pytest.raises(ValueError, match="already registered"):
        register_backend(Backend(name="toyeuler", integrate_segment=toy_euler, methods=("euler",),
                                 default_method="euler", options={}))


def test_backend_descriptor_refuses_inconsistent_declarations():
    with pytest.raises(ValueError, match="default_method='rk4' is not one of its methods"):
        Backend(name="x", integrate_segment=toy_euler, methods=("euler",), default_method="rk4", options={})
    with pytest.raises(ValueError, match="trait 'smooth' is unknown"):
        Backend(name="x", integrate_segment=toy_euler, methods=("euler",), default_method="euler", options={},
                trait_methods={"smooth": "euler"})
    with pytest.raises(ValueError, match="'auto' is reserved"):
        register_backend(Backend(name="auto", integrate_segment=toy_euler, methods=("euler",),
                                 default_method="euler", options={}))


def test_built_in_backends_derive_from_descriptors():
    """BACKENDS, BACKEND_NAMES, the default backend per device and the flat backend keywords of simulate all come
    from the registered descriptors."""
    regs = integrate.registered_backends()
    assert set(regs) == {"scipy", "torch", "sundials", "julia"}
    assert integrate.BACKEND_NAMES == (*regs, "auto")
    assert {n: integrate.BACKENDS[n] for n in regs} == {n: b.integrate_segment for n, b in regs.items()}
    assert integrate.default_backends() == {"cpu": "scipy", "cuda": "torch"}
    assert integrate.trait_method("scipy", "low_order") == "RK23" and integrate.trait_method("torch", "fixed_step") \
        == "euler" and integrate.trait_method("sundials", "low_order") is None
    from pyrod.spec import backend_option_keywords
    assert set(backend_option_keywords()) == {"jac", "max_steps", "exact_saves", "linsolver", "krylov_dim",
                                              "max_order", "max_nonlin_iters", "max_conv_fails", "julia_linsolve"}
