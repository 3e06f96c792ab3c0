"""The mini-batch discrete run: each step's gradient on a mini-batch, measurements on a fixed set.

Step ``k`` draws the next mini-batch ``B_k`` (:class:`pyrod.runs.sampling.MiniBatchData`), takes
``(L_{B_k}(w_k), ∇L_{B_k}(w_k))`` and calls the optimizer's one ``step`` with that gradient — the same definition
as a full-batch step, nothing per optimizer (docs/theory/optimizers.md). The gradient at ``w_0`` that initialises
the optimizer state is the first batch's, which step 0 then uses (as the full-batch run uses its ``g_0``).

Recorded per step (group ``discrete``; one time unit = one optimizer step):

* ``loss``, ``grad_norm``: on the step's mini-batch (``accuracy`` is NaN: see ``heldout_accuracy``); ``nu_norm``;
* every ``minibatch.heldout_every`` steps: ``heldout_loss`` (and ``heldout_accuracy`` for classification) on the
  held-out split, ``train_loss`` on the whole training split (finite data sets);
* every ``eig.every`` steps, on the measurement set M (attribute ``measured_on``): ``eigs``, ``sharpness``,
  ``preconditioned_sharpness``, ``threshold``, ``effective_sharpness``, ``eig_residual``, and with
  ``minibatch.batch_sharpness > 0`` the ``batch_sharpness`` over that many fresh mini-batches;
* every ``minibatch.nds_every`` steps (default ``eig.every``; 0: never): ``nds`` = ΔwᵀH_MΔw/‖Δw‖² of the update actually taken,
  Δw = w_{k+1} − w_k, and ``update_norm_sq`` = ‖Δw‖².

State (``state_dict``): the discrete run's (optimizer state, pending gradient, …) plus the sampler's position.
"""
from __future__ import annotations

import math

import torch

from .. import host
from ..schema import Var
from . import nu_variation
from .discrete import DiscreteRun
from .measure import standard_variables
from .sampling import batch_sharpness, update_nds

__all__ = ["MiniBatchRun", "minibatch_variables"]

_PER_STEP = {"loss": "mini-batch loss (the batch of this step)", "accuracy": "NaN in a mini-batch run (see "
             "heldout_accuracy)", "grad_norm": "Euclidean norm of the mini-batch gradient"}


def minibatch_variables(k: int, has_nu: bool, *, finite_train: bool, classification: bool,
                        sharpness: bool) -> list:
    """The variables of a mini-batch run's group."""
    out = []
    for v in standard_variables(k, has_nu):
        if v.name in _PER_STEP:
            v = Var(v.name, v.dims, _PER_STEP[v.name], v.units)
        elif v.name in ("eigs", "sharpness", "preconditioned_sharpness", "effective_sharpness"):
            v = Var(v.name, v.dims, v.long_name + " on the measurement set (attribute measured_on)", v.units)
        out.append(v)
    out += [Var("heldout_loss", ("t",), "loss on the held-out split", "1"),
            Var("nds", ("t",), "NDS of the update dw = w(k+1) - w(k): dw.H.dw/|dw|^2, H on the measurement set", "1"),
            Var("update_norm_sq", ("t",), "squared norm of the update |w(k+1) - w(k)|^2", "1")]
    if classification:
        out.append(Var("heldout_accuracy", ("t",), "accuracy on the held-out split", "1"))
    if finite_train:
        out.append(Var("train_loss", ("t",), "loss on the whole training split", "1"))
    if sharpness:
        out.append(Var("batch_sharpness", ("t",), "batch sharpness: mean over fresh mini-batches B of "
                       "g_B.H_B.g_B/|g_B|^2", "1"))
    return out


class MiniBatchRun(DiscreteRun):
    """:class:`~pyrod.runs.discrete.DiscreteRun` with mini-batch gradients (module docstring).

    ``data``: the run's :class:`~pyrod.runs.sampling.MiniBatchData`; ``measurer``: a Measurer over
    ``data.measure_problem``; ``eig_every``, ``nds_every``, ``heldout_every``, ``sharpness_batches``: the schedule."""

    def __init__(self, problem, optimizer, measurer, data, *, nds_every: int, heldout_every: int,
                 sharpness_batches: int = 0, loss_target=None, divergence_factor: float = 1e6):
        self.data = data
        self.nds_every, self.heldout_every = int(nds_every), int(heldout_every)
        self.sharpness_batches = int(sharpness_batches)
        super().__init__(problem, optimizer, measurer, loss_target=loss_target, divergence_factor=divergence_factor)

    def variables(self) -> list:
        out = minibatch_variables(self.measurer.n_eig, self.opt.has_nu, finite_train=self.data.train_problem is not None,
                                  classification=self.problem.samples.classification,
                                  sharpness=self.sharpness_batches > 0)
        return out + nu_variation.variables() if self.opt.has_nu else out

    def attrs(self) -> dict:
        sp = self.data.spec
        return {"run": "discrete", "minibatch_size": sp.size, "minibatch_seed": sp.seed, "minibatch_source": sp.source,
                "heldout_size": sp.heldout, "measured_on": sp.measured_on, "measure_size": self.data.measure_size,
                "training_samples": -1 if self.data.n_train is None else self.data.n_train}

    # ------------------------------------------------------------------ explicit state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "sampler": self.data.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.data.load_state_dict(state["sampler"])

    # ------------------------------------------------------------------ one step
    def _gradient(self, w):
        return self.data.next_batch().loss_and_grad(w)

    def _measure(self, st, new_state, nu_p, loss, g) -> dict:
        """The row of step ``k = st.k``: the mini-batch loss and gradient norm, ν's norm and its variation over the rod,
        and at held-out steps the held-out (and finite training set's) loss, read from the device in one transfer;
        then, where due, the eigen diagnostics, the batch sharpness and the NDS of the update (their own solves)."""
        k = st.k
        data = self.data
        parts = {"loss": loss, "grad_norm": torch.linalg.vector_norm(g), "grad_finite": torch.isfinite(g).all()}
        if nu_p is not None:
            parts["nu_norm"] = torch.linalg.vector_norm(nu_p)
        if self.opt.has_nu:          # ν over the rod [z_k, z_{k+1}], as on a full-batch run
            parts.update(nu_variation.relative_change_tensors(st.nu, new_state.nu))
        if k % self.heldout_every == 0:
            if data.heldout_problem is not None:
                parts["heldout_loss"] = data.heldout_problem.loss(st.w)
                if self.problem.samples.classification:
                    parts["heldout_accuracy"] = data.heldout_problem.accuracy_tensor(st.w)
            if data.train_problem is not None:
                parts["train_loss"] = data.train_problem.loss(st.w)
        read = dict(zip(parts, host.to_host(host.stack_scalars(list(parts.values()), st.w)).tolist(), strict=True))
        values = {"loss": read["loss"], "accuracy": math.nan, "grad_norm": read["grad_norm"]}
        if nu_p is not None:
            values["nu_norm"] = read["nu_norm"]
        values["grad_finite"] = bool(read["grad_finite"])
        if not (math.isfinite(values["loss"]) and values["grad_finite"]):
            return values
        values.update((n, v) for n, v in read.items() if n not in values)
        if self.measurer.wants_eigs(k):
            values.update(self.measurer.spectrum(st.w, nu_p, float(k)))
            if self.sharpness_batches:
                values["batch_sharpness"] = batch_sharpness(st.w, data.sharpness_batches(k, self.sharpness_batches))[0]
        if self.nds_every and k % self.nds_every == 0:
            values.update(update_nds(data.measure_problem, st.w, new_state.w - st.w))
        return values
