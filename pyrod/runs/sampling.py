"""Where a mini-batch run's samples come from: samplers, the held-out split, the measurement set, batch sharpness.

A mini-batch run (``RunSpec.minibatch.size`` set; docs/minibatch.md) takes each step's gradient on ``size`` samples:

* ``source="dataset"`` — :class:`EpochSampler`: the problem's own samples (its training split: all but the last
  ``heldout``) in shuffled epochs. Epoch ``e`` is the permutation ``default_rng([seed, e, 0xE90C])`` of the
  training indices, read in consecutive slices of ``size``; a batch that reaches the end of an epoch continues
  with the next one (its samples moved behind in that epoch's order, so that no batch holds a sample twice), so
  every training sample is used exactly once per epoch. State: the epoch, the position in it and its order.
* ``source="stream"`` — :class:`StreamSampler`: fresh samples from the data set's generator
  (:data:`pyrod.problems.data.STREAMS`; the Zipf-PCFG's :class:`~pyrod.problems.pcfg.TokenStream`), never reused.
  State: the generator's state and the tokens drawn but not yet used.

Both states are part of the run's checkpoint, so a resumed run draws exactly the batches of an uninterrupted one.

Independent random streams (the problem's ``seed`` fixes the model, its data and the grammar; the run's
``minibatch.seed`` the sampling): the training stream has the key ``(seed, 0x7A1)``, the held-out samples
``(seed, 0x4E1D)``, the fresh batches of the batch-sharpness measurement at step ``k`` ``(seed, 0xB5, k)`` (a finite
data set: ``default_rng([seed, k, 0xB5])`` picks them), so measuring never moves the training sampler.

Measurements of a mini-batch run are taken on a fixed set M (``measure_on``): the first ``measure_size`` held-out
samples, or the whole training split. Pure functions here: :func:`update_nds` (NDS of an update on M) and
:func:`batch_sharpness` (Andreyev & Beneventano's batch sharpness over given batches).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["EpochSampler", "StreamSampler", "MiniBatchData", "batch_sharpness", "update_nds", "TRAIN_KEY",
           "HELDOUT_KEY", "SHARPNESS_KEY"]

#: stream keys (after the sampling seed) of the training stream, the held-out samples and the measurement batches
TRAIN_KEY, HELDOUT_KEY, SHARPNESS_KEY = 0x7A1, 0x4E1D, 0xB5
_EPOCH_KEY = 0xE90C


class EpochSampler:
    """Indices of mini-batches of ``size`` out of ``n`` samples, in shuffled epochs without replacement.

    Epoch ``e`` reads the permutation ``default_rng([seed, e, 0xE90C])`` in consecutive slices of ``size``. A batch
    that reaches the end of an epoch takes its remaining samples from the start of the next one; so that it never
    holds a sample twice, the samples it already has are moved behind the ones it takes in that next epoch's order
    (the order is otherwise the permutation). Every sample is used exactly once per epoch.
    ``next_indices()`` -> int64 array ``(size,)``; ``state_dict()``: ``{"epoch", "position", "order"}`` (the
    current epoch's order, None before it starts)."""

    def __init__(self, n: int, size: int, seed: int):
        if size > n:
            raise ValueError(f"minibatch.size={size} is more than the {n} training samples; a batch never holds a "
                             f"sample twice")
        self.n, self.size, self.seed = int(n), int(size), int(seed)
        self.epoch, self.position = 0, 0
        self.order = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The permutation of epoch ``epoch`` (a pure function of the seed and the epoch)."""
        return np.random.default_rng([self.seed, int(epoch), _EPOCH_KEY]).permutation(self.n)

    def _epoch_order(self, epoch: int, taken: np.ndarray, need: int) -> np.ndarray:
        perm = self.permutation(epoch)
        if not len(taken):
            return perm
        fresh = perm[~np.isin(perm, taken)][:need]            # the batch's other samples, in permutation order
        return np.concatenate([fresh, perm[~np.isin(perm, fresh)]])

    def next_indices(self) -> np.ndarray:
        parts, need = [], self.size
        while need:
            if self.order is None:
                taken = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
                self.order = self._epoch_order(self.epoch, taken, need)
            take = self.order[self.position:self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position == self.n:
                self.epoch, self.position, self.order = self.epoch + 1, 0, None
        return np.concatenate(parts)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position,
                "order": None if self.order is None else self.order.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = None if state["order"] is None else np.asarray(state["order"], dtype=np.int64).copy()


class StreamSampler:
    """Mini-batches of ``size`` fresh samples from a stream (``draw(n) -> (X, Y)``, ``state_dict``)."""

    def __init__(self, stream, size: int):
        self.stream, self.size = stream, int(size)

    def next_batch(self):
        return self.stream.draw(self.size)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])


class MiniBatchData:
    """The samples of one mini-batch run of ``problem`` as ``spec`` (a :class:`pyrod.spec.MiniBatchSpec`) says.

    Attributes: ``heldout_problem`` (the held-out split, or None), ``measure_problem`` (the measurement set M),
    ``train_problem`` (the whole training split; None for a stream), ``n_train`` (None for a stream).
    :meth:`next_batch` gives the next step's mini-batch as a :class:`~pyrod.problems.Problem` (the same model and
    loss on those samples); :meth:`sharpness_batches` the fresh batches of the batch-sharpness measurement at a step.
    Invalid combinations with the problem (no samples, a source that has no stream, sizes larger than the data)
    raise ValueError naming the value.
    """

    def __init__(self, problem, spec):
        self.problem, self.spec = problem, spec
        self.size, self.seed = spec.size, spec.seed
        if problem.samples is None:
            raise ValueError(f"minibatch.size={spec.size}: problem {problem.name!r} has no samples to draw "
                             f"mini-batches from (analytic toys and problems written as a loss function have none); "
                             f"use a model and data (pyrod.problem(model=..., data=...))")
        smp = problem.samples
        h = spec.heldout
        if spec.source == "dataset":
            if h >= smp.n:
                raise ValueError(f"minibatch.heldout={h} leaves no training samples: the problem has {smp.n}")
            self.n_train = smp.n - h
            self._train_X, self._train_Y = smp.X[:self.n_train], smp.Y[:self.n_train]
            self.sampler = EpochSampler(self.n_train, spec.size, spec.seed)
            self.train_problem = problem if h == 0 else problem.on_samples(self._train_X, self._train_Y, name="train")
            heldout = (smp.X[self.n_train:], smp.Y[self.n_train:]) if h else None
        else:
            self._make_stream = _stream_factory(problem)
            self.n_train = None
            self.sampler = StreamSampler(self._make_stream((spec.seed, TRAIN_KEY)), spec.size)
            self.train_problem = None
            heldout = self._make_stream((spec.seed, HELDOUT_KEY)).draw(h)
        self.heldout_problem = problem.on_samples(*heldout, name="heldout") if heldout is not None else None
        if spec.measured_on == "heldout":
            m = spec.measure_size or h
            self.measure_problem = self.heldout_problem if m == h else problem.on_samples(
                heldout[0][:m], heldout[1][:m], name="measure")
            self.measure_size = m
        else:
            self.measure_problem = self.train_problem
            self.measure_size = self.n_train

    # ------------------------------------------------------------------ batches
    def next_batch(self):
        """The next step's mini-batch (advances the sampler)."""
        if isinstance(self.sampler, EpochSampler):
            idx = torch.as_tensor(self.sampler.next_indices(), device=self._train_X.device)
            return self.problem.on_samples(self._train_X[idx], self._train_Y[idx], name="minibatch")
        return self.problem.on_samples(*self.sampler.next_batch(), name="minibatch")

    def sharpness_batches(self, step: int, count: int) -> list:
        """``count`` fresh mini-batches of ``size`` samples for the batch-sharpness measurement at ``step``: drawn
        from their own random stream, keyed by the step (the training sampler does not move)."""
        if self.n_train is not None:
            rng = np.random.default_rng([self.seed, int(step), SHARPNESS_KEY])
            out = []
            for _ in range(count):
                idx = torch.as_tensor(rng.choice(self.n_train, size=self.size, replace=False),
                                      device=self._train_X.device)
                out.append(self.problem.on_samples(self._train_X[idx], self._train_Y[idx], name="sharpness-batch"))
            return out
        stream = self._make_stream((self.seed, SHARPNESS_KEY, int(step)))
        return [self.problem.on_samples(*stream.draw(self.size), name="sharpness-batch") for _ in range(count)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The sampler's position (an epoch sampler's epoch and index, a stream's generator state and buffer)."""
        return {"source": self.spec.source, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["source"] != self.spec.source:
            raise ValueError(f"checkpoint of a {state['source']!r} sampler loaded into a {self.spec.source!r} run")
        self.sampler.load_state_dict(state["sampler"])


def _stream_factory(problem):
    """``key -> stream`` of the problem's data set (its config's ``data``, ``seed`` and ``data_kwargs``)."""
    from ..problems.data import STREAMS

    cfg = problem.config or {}
    name = cfg.get("data")
    if "model" not in cfg or name not in STREAMS:
        raise ValueError(f"minibatch.source='stream' needs a problem built by pyrod.problem(model=..., data=...) on a "
                         f"data set with a generator ({sorted(STREAMS)}); this problem's data is {name!r}")
    kwargs = dict(cfg.get("data_kwargs") or {})
    seed = int(cfg.get("seed", 0))
    return lambda key: STREAMS[name](key=key, seed=seed, **kwargs)


# ---------------------------------------------------------------------------------------------- measurements
def update_nds(problem, w: torch.Tensor, dw: torch.Tensor) -> dict:
    """NDS of the update ``dw`` at ``w`` on ``problem`` (one HVP): ``{"nds": ΔwᵀHΔw/‖Δw‖², "update_norm_sq":
    ‖Δw‖²}`` (docs/theory/nds.md); NaN for a zero update."""
    nsq = float(torch.dot(dw, dw))
    if not nsq > 0:
        return {"nds": math.nan, "update_norm_sq": nsq}
    return {"nds": float(torch.dot(dw, problem.hvp(w, dw))) / nsq, "update_norm_sq": nsq}


def batch_sharpness(w: torch.Tensor, batches) -> tuple[float, np.ndarray]:
    """Batch sharpness at ``w`` over mini-batch problems ``batches`` (Andreyev & Beneventano, "Edge of Stochastic
    Stability", 2024): the mean over the batches ``B`` of ``⟨g_B, H_B g_B⟩ / ‖g_B‖²``, with ``g_B``, ``H_B`` the
    gradient and Hessian of the loss on ``B`` alone. Returns ``(mean, per-batch values (len(batches),))``. A batch
    whose gradient is zero gives NaN (left out of the mean). Cost: one gradient and one HVP per batch."""
    vals = []
    for bp in batches:
        g = bp.grad(w)
        gsq = float(torch.dot(g, g))
        vals.append(float(torch.dot(g, bp.hvp(w, g))) / gsq if gsq > 0 else math.nan)
    v = np.asarray(vals, dtype=np.float64)
    ok = np.isfinite(v)
    return (float(v[ok].mean()) if ok.any() else math.nan), v
