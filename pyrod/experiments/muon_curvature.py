"""Why Muon beats Adam, a curvature view ("Why Muon Outperforms Adam: A Curvature Perspective", arXiv 2606.04662,
Figs. 1, 2, 4, 9): one-step decomposition along training.

Adam and Muon train the same network full batch. Default setting (the paper's): a small causal transformer
(``model="gpt"``) on next-token prediction over Zipf-PCFG token sequences (``data="zipf_pcfg"``, grammar
probabilities Zipf(α)); ``--set model=mlp data=zipf n=500 width=64 activation=tanh`` gives the earlier MLP on Zipf-imbalanced digits.
Every ``analyze_every`` steps the update actually taken, Δw, is decomposed with
:func:`pyrod.analysis.one_step_decomposition` (docs/theory/nds.md): first-order gain G = −gᵀΔw, curvature penalty
C = ½ΔwᵀHΔw = ½‖Δw‖²·NDS, the normalized directional sharpness NDS, ‖Δw‖², the predicted decrease G − C against
the actual decrease, and the within-layer / cross-layer split of ΔwᵀHΔw over the model's tensors (one batched
HVP per analysed step), with every tensor pair's part kept (``block_matrix_nds``). "Layer" is read two ways:
one tensor (``within_nds``/``cross_nds``, ``block_localisation``; the paper's per-matrix view of Muon) and one
transformer layer, all tensors of ``blocks.{i}`` together (summary ``layer_level``; the paper's Fig. 9 axis).

The two runs are compared at matched training-loss levels (the first analysed step at which each run's loss
falls below the level; the paper matches validation loss): Adam-to-Muon ratios of C, NDS and ‖Δw‖² (Fig. 2c), the
decomposition itself (Fig. 1), within- vs cross-layer NDS by training stage (Fig. 4; stages = the first, middle
and last third of the log-spaced matched loss levels), and the per-tensor localisation of the within-layer gap
(Fig. 9).

Muon: pyrod's ``Muon`` (torch's update; Newton–Schulz in ``muon_ns_dtype``); with ``muon_split="hidden"``
(default) the transformer's hidden matrices (attention q/k/v/o, MLP fc/proj) are Muon's and the embeddings,
output head, LayerNorm gains (and biases) are Adam's (the paper's and common practice); ``"all2d"`` gives every
2-D tensor to Muon. The MLP always uses ``"all2d"``. Weight decay 0 for both optimizers, so that only the update
directions differ. The split (tensor names) is stored in the file and the summary.

Files: ``muon_curvature.nc`` (groups ``adam``, ``muon``; coordinate ``t``; variables ``loss``, ``gain``,
``curvature``, ``nds``, ``update_norm_sq``, ``predicted_decrease``, ``actual_decrease``, ``gap``, ``within_nds``,
``cross_nds``, ``block_within_nds (t, block)``, ``block_matrix_nds (t, block, block2)``), PNGs; summary from the
file.

Why one module of ~650 lines: an experiment is one module (its defaults, runs, analysis, plots and summary, as
the experiments' registry expects); its medium scale's shared stream machinery is ``muon_stream.py``.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from ..papers import cite
from . import muon_stream as ms
from .common import Context, ExperimentError, figure, require_positive, savefig

NAME = "muon-curvature"
TITLE = "Muon vs Adam: one-step gain / curvature penalty / NDS / ‖Δw‖² at matched loss, within vs cross layer"
PAPER = cite("muon-curvature", "Figs. 1, 2, 4, 9")
RUNTIME = "~40 s (~26 s with --jobs 2 on idle cores); medium: ~10 min with --jobs 2"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP)
PARAM_HELP = {
    "alpha": "Zipf exponent α of the grammar's rule / terminal probabilities (or of the class sizes, data=zipf)",
    "grammar": "the Zipf-PCFG grammar's options (JSON; pyrod/problems/pcfg.py)",
    "n": "training sequences (data=zipf_pcfg) or points (data=zipf)",
    "width": "model width (embedding size for gpt)",
    "heads": "attention heads (gpt)", "mlp_ratio": "MLP width / model width (gpt)",
    "data_base": "data=zipf: the data the imbalanced classes are drawn from (digits or blobs)",
    "adam_lr": "Adam's learning rate", "adam_beta1": "Adam's β1", "adam_beta2": "Adam's β2",
    "muon_lr": "Muon's learning rate", "muon_momentum": "Muon's momentum",
    "muon_ns_dtype": "dtype of Muon's Newton–Schulz iteration",
    "muon_split": "which tensors Muon updates: hidden (the transformer's hidden matrices) or all2d",
    "analyze_every": "steps between one-step decompositions of the update",
    "levels": "matched training-loss levels at which Adam and Muon are compared",
    "match_window": "analysed steps averaged around each matched level",
    **ms.PARAM_HELP,  # the medium scale (pyrod.experiments.muon_stream)
}

SCALARS = ("loss", "gain", "curvature", "nds", "update_norm_sq", "grad_norm", "predicted_decrease",
           "actual_decrease", "gap", "within", "cross", "within_nds", "cross_nds")
#: the medium scale's extra scalars (mini-batch runs; :func:`train_and_analyze` with ``data``)
MEDIUM_SCALARS = ("train_loss", "measure_loss")
_UNITS = {"loss": "training loss L(w)", "gain": "first-order gain G = -g.dw", "curvature":
          "curvature penalty C = dw.H.dw/2", "nds": "normalized directional sharpness dw.H.dw/|dw|^2",
          "update_norm_sq": "squared update norm |dw|^2", "grad_norm": "gradient norm |g|",
          "predicted_decrease": "predicted decrease G - C", "actual_decrease": "actual decrease L(w) - L(w+dw)",
          "gap": "actual - predicted decrease", "within": "within-layer part of dw.H.dw",
          "cross": "cross-layer part of dw.H.dw", "within_nds": "within-layer part / |dw|^2",
          "cross_nds": "cross-layer part / |dw|^2", "train_loss": "mean mini-batch loss around the step",
          "measure_loss": "loss on the fixed held-out measurement batch"}

#: Zipf-PCFG grammar (pyrod/problems/pcfg.py); every entry goes into the problem's data_kwargs (replayable)
GRAMMAR = ms.GRAMMAR_CPU

_BASE = dict(model="gpt", data="zipf_pcfg", alpha=1.0, n=32, grammar=GRAMMAR, loss="ce",
             width=32, depth=2, heads=2, mlp_ratio=4, activation="gelu",
             data_base="digits", classes=10,                       # model=mlp data=zipf only
             adam_lr=3e-3, adam_beta1=0.9, adam_beta2=0.999, muon_lr=0.02, muon_momentum=0.95,
             muon_ns_dtype="float32", muon_split="hidden", analyze_every=5, levels=24, match_window=3)

DEFAULTS = {
    "tiny": {**_BASE, "n": 4, "grammar": {**GRAMMAR, "context": 8, "n_terminals": 12}, "width": 8, "depth": 1,
             "mlp_ratio": 2, "steps": 12, "analyze_every": 2, "levels": 4},
    "small": {**_BASE, "steps": 150},
    # the paper: GPT-2-size models on a large Zipf-PCFG corpus; here the largest that is still full batch
    "paper": {**_BASE, "n": 256, "grammar": {**GRAMMAR, "context": 64, "n_terminals": 128, "n_nonterminals": 16,
                                             "n_emit": 16}, "width": 128, "depth": 4, "heads": 4, "steps": 3000,
              "analyze_every": 20, "levels": 40},
    # mini-batches of fresh sentences, matched on held-out loss, rates tuned on a grid (pyrod.experiments.muon_stream)
    "medium": {**ms.MEDIUM, "alpha": 1.0, "analyze_every": 40, "levels": 24},
}
PRESETS = ms.PRESETS

_PAIRS = {"gpt": "zipf_pcfg", "mlp": "zipf"}


def _medium(p) -> bool:
    return "batch_size" in p


def check_params(p):
    if _medium(p):
        ms.check_params(p)
        require_positive(p, "analyze_every")
        if p["alpha"] < 0:
            raise ExperimentError(f"alpha={p['alpha']!r} must be >= 0")
        return
    require_positive(p, "steps", "analyze_every", "adam_lr", "muon_lr", "levels", "width", "n")
    if p["model"] not in _PAIRS:
        raise ExperimentError(f"model={p['model']!r}: choose 'gpt' (with data=zipf_pcfg) or 'mlp' (with data=zipf)")
    if p["data"] != _PAIRS[p["model"]]:
        raise ExperimentError(f"data={p['data']!r} does not fit model={p['model']!r}: use data={_PAIRS[p['model']]!r} "
                              f"(token sequences need the gpt, images the mlp)")
    if p["alpha"] < 0:
        raise ExperimentError(f"alpha={p['alpha']!r} must be >= 0")
    if p["muon_ns_dtype"] not in ("bfloat16", "float32", "float64"):
        raise ExperimentError(f"muon_ns_dtype={p['muon_ns_dtype']!r}: choose bfloat16, float32 or float64")
    if p["muon_split"] not in ("hidden", "all2d"):
        raise ExperimentError(f"muon_split={p['muon_split']!r}: choose 'hidden' (embeddings/head on Adam) or 'all2d'")
    bad = sorted(set(p["grammar"]) - set(GRAMMAR))
    if bad:
        raise ExperimentError(f"grammar keys {bad} unknown; valid: {sorted(GRAMMAR)}")


def make_problem(ctx, alpha=None, n="default", seed=None):
    p = ctx.p
    a = p["alpha"] if alpha is None else alpha
    kw = {} if seed is None else {"seed": seed}
    if p["model"] == "gpt":
        g = {**GRAMMAR, **p["grammar"]}
        return ctx.problem(model="gpt", data="zipf_pcfg", n=p["n"] if n == "default" else n, loss=p["loss"],
                           classes=None, data_kwargs={"alpha": a, **g},
                           model_kwargs={"dim": p["width"], "depth": p["depth"], "heads": p["heads"],
                                         "mlp_ratio": p["mlp_ratio"], "activation": p["activation"],
                                         "vocab": g["n_terminals"] + 1}, **kw)
    return ctx.problem(model=p["model"], data=p["data"], classes=p["classes"], n=p["n"] if n == "default" else n,
                       loss=p["loss"], model_kwargs={"width": p["width"], "depth": p["depth"],
                                                     "activation": p["activation"]},
                       data_kwargs={"alpha": a, "base": p["data_base"]}, **kw)


def make_optimizers(p, problem) -> dict:
    import pyrod
    from pyrod.problems.gpt import MUON_ADAM_PARAMS

    adam = pyrod.optimizers.Adam(lr=p["adam_lr"], beta1=p["adam_beta1"], beta2=p["adam_beta2"], eps=1e-8,
                                 bias_correction=True, nu0="zero")
    hidden = p["model"] == "gpt" and p["muon_split"] == "hidden"
    muon = pyrod.optimizers.Muon(lr=p["muon_lr"], momentum=p["muon_momentum"], weight_decay=0.0,
                                 ns_dtype=p["muon_ns_dtype"], adam_lr=p["adam_lr"], adam_beta1=p["adam_beta1"],
                                 adam_beta2=p["adam_beta2"],
                                 adam_params=MUON_ADAM_PARAMS if hidden else ()).bind(problem)
    return {"adam": adam, "muon": muon}


def muon_split_names(muon, problem) -> dict:
    """``{"muon": [tensor names], "adam": [...]}`` of a bound Muon."""
    return muon.split([b.name for b in problem.blocks])


def train_and_analyze(problem, opt, steps: int, every: int, progress_desc=None, blocks=None, data=None):
    """Train with ``opt`` for ``steps`` steps; decompose the update every ``every`` steps.

    ``data=None``: full batch, the decomposition on the training loss. ``data``: a
    :class:`pyrod.runs.sampling.MiniBatchData` (the medium scale): each step's gradient on the next mini-batch, the
    decomposition on the fixed measurement batch ``data.measure_problem`` (gain, curvature, NDS and actual decrease
    all on that batch), ``loss`` = the held-out loss (``data.heldout_problem``), ``train_loss`` = the mean
    mini-batch loss over the ``every`` steps centred on the analysed step (NaN at the end, where the window is
    cut), ``measure_loss`` = the measurement batch's loss.

    ``blocks=None``: the problem's tensors (within/cross split, one batched HVP of one column per tensor);
    ``blocks=()``: NDS only (one HVP). Returns ``(t, rows, block_names, block_nds)``: analysed steps, list of
    scalar dicts, tensor names, array (n_analysed, n_blocks) of the per-block within-layer NDS contributions
    Δw_lᵀH_llΔw_l/‖Δw‖², and (n_analysed, n_blocks, n_blocks) of every pair's Δw_lᵀH_ll'Δw_l'/‖Δw‖² (NaN without
    the split)."""
    from pyrod.analysis import one_step_decomposition, optimizer_update

    def gradient(w):
        return problem.loss_and_grad(w) if data is None else data.next_batch().loss_and_grad(w)

    loss, g = gradient(problem.w0)
    state = opt.init_state(problem.w0, g)
    ts, rows, bnds, bmat, batch_losses = [], [], [], [], []
    names = [b.name for b in problem.blocks]
    it = range(steps)
    if progress_desc:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=progress_desc, unit="step", leave=False)
    for k in it:
        batch_losses.append(float(loss))
        dw, new_state = optimizer_update(opt, state, g)
        if k % every == 0:
            if data is None:
                r = one_step_decomposition(problem, state.w, dw, blocks=blocks, loss=loss, grad=g)
            else:
                r = one_step_decomposition(data.measure_problem, state.w, dw, blocks=blocks)
            if not math.isfinite(r.loss):
                break
            row = r.scalars()
            if data is not None:
                row["measure_loss"] = row["loss"]
                row["loss"] = float(data.heldout_problem.loss(state.w))
            ts.append(k)
            rows.append(row)
            bnds.append([r.block_within.get(nm, math.nan) / r.update_norm_sq for nm in names])
            L = len(names)
            bmat.append(np.asarray(r.block_matrix, float) / r.update_norm_sq
                        if r.block_matrix is not None and r.block_matrix.shape == (L, L) else np.full((L, L), np.nan))
        state = new_state
        loss, g = gradient(state.w)
        if not math.isfinite(float(loss)):
            break
    if data is not None:                 # the training loss around each analysed step (fresh batches: unbiased)
        bl = np.asarray(batch_losses, float)
        for t, row in zip(ts, rows, strict=True):
            lo = t - every // 2
            row["train_loss"] = float(bl[lo:lo + every].mean()) if lo >= 0 and lo + every <= len(bl) else math.nan
    L = len(names)
    return (np.array(ts, float), rows, names, np.array(bnds, float).reshape(len(ts), L),
            np.array(bmat, float).reshape(len(ts), L, L))


def layer_groups(names) -> list[str]:
    """The transformer layer (or module) of each tensor: ``blocks.{i}.…`` → ``"blocks.{i}"``; any other name →
    its module (``tok_emb.weight`` → ``"tok_emb"``; the MLP's ``3.weight``/``3.bias`` → ``"3"``)."""
    out = []
    for nm in names:
        parts = nm.split(".")
        out.append(".".join(parts[:2]) if parts[0] == "blocks" and len(parts) > 2 else ".".join(parts[:-1]) or nm)
    return out


def layer_split(ds) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """From ``block_matrix_nds`` (per analysed step ``B[l, l'] = Δw_lᵀH_ll'Δw_l'/‖Δw‖²`` over tensors): the
    within-*layer* NDS with layers = :func:`layer_groups` (all pairs of tensors in one transformer layer), the
    cross-layer rest, the group names and the per-group within part ``(t, group)``."""
    names = block_names(ds)
    B = ds["block_matrix_nds"].values
    groups = layer_groups(names)
    uniq = list(dict.fromkeys(groups))
    G = np.zeros((len(uniq), len(names)))
    for j, gname in enumerate(groups):
        G[uniq.index(gname), j] = 1.0
    per = np.einsum("gl,tlm,gm->tg", G, B, G)
    within = per.sum(axis=1)
    return within, ds["nds"].values - within, uniq, per


def write(path, config: dict, runs: dict, attrs: dict | None = None, minibatch: bool = False):
    """Write ``{group: (t, rows, names, block_nds, block_matrix_nds)}`` (the output of
    :func:`train_and_analyze`) to one NetCDF file (pyrod's RunWriter). ``minibatch``: the medium scale's file
    (``loss`` is the held-out loss; ``train_loss`` and ``measure_loss`` added)."""
    from pyrod.io.writer import RunWriter
    from pyrod.schema import Var

    names_ = SCALARS + (MEDIUM_SCALARS if minibatch else ())
    units = {**_UNITS, "loss": "held-out loss"} if minibatch else _UNITS
    with RunWriter(path, config=config, attrs=attrs or {}, overwrite=True, chunk=64) as w:
        for group, (t, rows, names, bn, bm) in runs.items():
            L = max(1, len(names))
            vars_ = [Var(k, ("t",), units.get(k, k), "1") for k in names_]
            vars_.append(Var("block_within_nds", ("t", "block"), "per-tensor within-layer NDS contribution "
                             "dw_l.H_ll.dw_l/|dw|^2", "1"))
            vars_.append(Var("block_matrix_nds", ("t", "block", "block2"), "tensor-pair NDS contributions "
                             "dw_l.H_ll'.dw_l'/|dw|^2 (NaN without the split)", "1"))
            w.add_group(group, vars_, dims={"block": L, "block2": L},
                        attrs={"block_names": names, "optimizer": config["optimizers"][group]})
            for i, tt in enumerate(t):
                vals = {k: rows[i][k] for k in names_}
                vals["block_within_nds"] = bn[i]
                vals["block_matrix_nds"] = bm[i]
                w.append(group, tt, vals)


def matched(ds_a, ds_b, n_levels: int, window: int) -> dict:
    """Values of both runs at matched loss levels; ratios a/b."""
    from pyrod.analysis import matched_levels, value_at_levels

    la, lb = ds_a["loss"].values, ds_b["loss"].values
    levels = matched_levels([la, lb], n_levels)
    out = {"levels": levels}
    for k in ("gain", "curvature", "nds", "update_norm_sq", "predicted_decrease", "actual_decrease", "within_nds",
              "cross_nds", "gap"):
        va = value_at_levels(la, ds_a[k].values, levels, window=window)
        vb = value_at_levels(lb, ds_b[k].values, levels, window=window)
        out[f"a_{k}"], out[f"b_{k}"] = va, vb
    return out


def _med(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def summarize_file(path, n_levels: int, window: int) -> dict:
    import pyrod

    tree = pyrod.open(path)
    A, M = tree["adam"].ds, tree["muon"].ds
    mt = matched(A, M, n_levels, window)
    r = {}
    for k in ("curvature", "nds", "update_norm_sq", "gain", "within_nds", "cross_nds"):
        ratio = mt[f"a_{k}"] / mt[f"b_{k}"]
        r[f"adam_over_muon_{k}_median"] = _med(ratio)
    third = max(1, len(mt["levels"]) // 3)
    late = slice(len(mt["levels"]) - third, None)
    ratio_c = mt["a_curvature"] / mt["b_curvature"]
    ratio_n = mt["a_nds"] / mt["b_nds"]
    ratio_u = mt["a_update_norm_sq"] / mt["b_update_norm_sq"]
    ok = np.isfinite(ratio_c) & np.isfinite(ratio_n) & (ratio_c > 0) & (ratio_n > 0)
    corr = float(np.corrcoef(np.log(ratio_c[ok]), np.log(ratio_n[ok]))[0, 1]) if ok.sum() > 2 else None
    gap_w = mt["a_within_nds"] - mt["b_within_nds"]
    gap_c = mt["a_cross_nds"] - mt["b_cross_nds"]
    r.update({
        "n_levels": int(len(mt["levels"])),
        "loss_levels": [float(x) for x in mt["levels"]],
        "fraction_levels_muon_smaller_curvature": float(np.mean(ratio_c[np.isfinite(ratio_c)] > 1))
        if np.isfinite(ratio_c).any() else None,
        "fraction_levels_muon_smaller_nds": float(np.mean(ratio_n[np.isfinite(ratio_n)] > 1))
        if np.isfinite(ratio_n).any() else None,
        "corr_log_ratio_curvature_vs_nds": corr,
        "median_ratio_update_norm_sq": _med(ratio_u),
        "late_levels_nds_gap_within": _med(gap_w[late]), "late_levels_nds_gap_cross": _med(gap_c[late]),
        "adam_final_loss": float(A["loss"].values[-1]), "muon_final_loss": float(M["loss"].values[-1]),
        "adam_median_relative_taylor_gap": _med(np.abs(A["gap"].values) / np.abs(A["actual_decrease"].values)),
        "muon_median_relative_taylor_gap": _med(np.abs(M["gap"].values) / np.abs(M["actual_decrease"].values)),
        "adam_median_gain_minus_curvature_at_levels": _med(mt["a_predicted_decrease"]),
        "muon_median_gain_minus_curvature_at_levels": _med(mt["b_predicted_decrease"]),
    })
    r["stages"] = stage_split(mt)
    r["block_localisation"] = block_localisation(A, M, mt["levels"], window)
    r["layer_level"] = layer_level(A, M, mt["levels"], window)
    return r


def layer_level(A, M, levels, window) -> dict:
    """The same stage split and localisation with *layers* = transformer layers (:func:`layer_groups`): within
    = all tensor pairs inside one layer, cross = pairs in different layers."""
    from pyrod.analysis import value_at_levels

    if "block_matrix_nds" not in A or not len(levels) or not np.isfinite(A["block_matrix_nds"].values).any():
        return {}
    wa, ca, groups, pa = layer_split(A)
    wm, cm, _, pm = layer_split(M)
    la, lm = A["loss"].values, M["loss"].values
    at = lambda loss, v: value_at_levels(loss, v, levels, window=window)  # noqa: E731
    mt = {"levels": levels, "a_nds": at(la, A["nds"].values), "b_nds": at(lm, M["nds"].values),
          "a_within_nds": at(la, wa), "b_within_nds": at(lm, wm), "a_cross_nds": at(la, ca), "b_cross_nds": at(lm, cm)}
    gap = np.stack([at(la, pa[:, j]) - at(lm, pm[:, j]) for j in range(len(groups))], axis=1)
    loc = {s: {g: _med(gap[sl, j]) for j, g in enumerate(groups)} for s, sl in _stage_slices(len(levels)).items()}
    return {"groups": groups, "stages": stage_split(mt), "within_gap_per_layer": loc}


STAGES = ("early", "middle", "late")


def _stage_slices(n: int) -> dict:
    """The first, middle and last third of ``n`` matched levels (highest losses first)."""
    e = np.linspace(0, n, 4).round().astype(int)
    return {s: slice(e[i], e[i + 1]) for i, s in enumerate(STAGES)}


def stage_split(mt) -> dict:
    """Per training stage (thirds of the matched loss levels): median Adam − Muon gaps of NDS and of its within-
    and cross-layer parts, the within share of the total gap (median of within-gap / total-gap), and the median
    Adam/Muon NDS ratio."""
    out = {}
    tot = mt["a_nds"] - mt["b_nds"]
    gw = mt["a_within_nds"] - mt["b_within_nds"]
    gc = mt["a_cross_nds"] - mt["b_cross_nds"]
    for s, sl in _stage_slices(len(mt["levels"])).items():
        lv = mt["levels"][sl]
        out[s] = {"loss_range": [float(lv[0]), float(lv[-1])] if len(lv) else None,
                  "nds_gap": _med(tot[sl]), "within_gap": _med(gw[sl]), "cross_gap": _med(gc[sl]),
                  "within_share_of_gap": _med(gw[sl] / tot[sl]),
                  "adam_over_muon_nds": _med(mt["a_nds"][sl] / mt["b_nds"][sl]),
                  "within_gap_dominates": bool(_med(np.abs(gw[sl]) - np.abs(gc[sl])) is not None
                                               and _med(np.abs(gw[sl]) - np.abs(gc[sl])) > 0)}
    return out


def block_names(ds) -> list:
    """The tensor names of a run group (stored as a JSON list attribute)."""
    import json

    v = ds.attrs.get("block_names", [])
    if isinstance(v, str):
        v = json.loads(v) if v.startswith("[") else [v]
    return [str(x) for x in v]


def block_within_at_levels(ds, levels, window) -> np.ndarray:
    """``(n_levels, n_blocks)``: each tensor's within-layer NDS contribution at the matched levels."""
    from pyrod.analysis import value_at_levels

    bw = ds["block_within_nds"].values
    loss = ds["loss"].values
    return np.stack([value_at_levels(loss, bw[:, j], levels, window=window) for j in range(bw.shape[1])], axis=1)


def block_localisation(A, M, levels, window) -> dict:
    """Fig. 9: where the within-layer gap Adam − Muon sits, per tensor and stage (medians over the stage's levels),
    and the tensor holding the largest share of the late-stage gap."""
    names = block_names(A)
    if not len(levels) or not names:
        return {}
    ga = block_within_at_levels(A, levels, window) - block_within_at_levels(M, levels, window)
    per = {}
    for s, sl in _stage_slices(len(levels)).items():
        per[s] = {nm: _med(ga[sl, j]) for j, nm in enumerate(names)}
    late = np.array([per["late"][nm] if per["late"][nm] is not None else np.nan for nm in names])
    ok = np.isfinite(late)
    out = {"gap_per_block": per}
    if ok.any():
        j = int(np.nanargmax(np.where(ok, late, -np.inf)))
        pos = np.clip(late[ok], 0, None).sum()
        out.update({"late_top_block": names[j], "late_top_block_gap": float(late[j]),
                    "late_top_block_share_of_positive_gap": float(late[j] / pos) if pos > 0 else None})
        kinds = {}
        for nm, v in zip(names, late, strict=True):
            if np.isfinite(v):
                kind = ".".join(x for x in nm.split(".") if not x.isdigit() and x != "blocks")
                kinds[kind] = kinds.get(kind, 0.0) + float(v)
        out["late_gap_by_tensor_kind"] = kinds
    return out


OPTIMIZERS = ("adam", "muon")


def worker_context(name: str, p: dict):
    """A bare :class:`Context` over the parameters ``p`` (no client, no files) so that a worker process of
    :meth:`Context.map` builds its problem exactly as :meth:`Context.problem` does in the main process; sets
    torch's thread count to ``p["threads"]`` there, as :func:`run_experiment` does here."""
    import torch

    torch.set_num_threads(p["threads"])
    return Context(name=name, scale="", params=p, out=Path("."))


def train_point(p: dict, name: str, progress: bool = False) -> dict:
    """One optimizer's run of :func:`run` (one task of :meth:`Context.map`; plain data in and out).

    Builds the problem and both optimizers from the parameters ``p`` and trains ``name`` (``"adam"`` or
    ``"muon"``) with :func:`train_and_analyze` (per-tensor split on; a per-step bar when ``progress``).
    Returns ``{"run": (t, rows, block_names, block_nds, block_matrix_nds), "problem": problem config,
    "optimizer": optimizer config, "dim": number of parameters, "split": muon_split_names}``."""
    ctx = worker_context(NAME, p)
    prob = make_problem(ctx)
    opts = make_optimizers(p, prob)
    result = train_and_analyze(prob, opts[name], p["steps"], p["analyze_every"],
                               progress_desc=name if progress else None)
    return {"run": result, "problem": prob.config, "optimizer": opts[name].config(), "dim": prob.dim,
            "split": muon_split_names(opts["muon"], prob)}


def train_point_medium(p: dict, chosen: dict, name: str) -> dict:
    """One optimizer's decomposition run at the medium scale (one task of :meth:`Context.map`): mini-batches from the
    stream (the sweep runs' data: same problem config and sampling), the decomposition on the fixed held-out batch
    every ``analyze_every`` steps, at the rate ``chosen[name]``. Returns what :func:`train_point` returns."""
    import torch

    import pyrod
    from pyrod.runs.sampling import MiniBatchData
    from pyrod.spec import MiniBatchSpec

    torch.set_num_threads(p["threads"])
    prob = pyrod.problem(**ms.problem_config(p, p["alpha"], p["seed"]))
    opts = {k: pyrod.optimizers.from_config(ms.optimizer_config(p, k, chosen[k])).bind(prob) for k in OPTIMIZERS}
    data = MiniBatchData(prob, MiniBatchSpec(size=p["batch_size"], seed=0, source="stream", heldout=p["heldout"],
                                             heldout_every=p["heldout_every"], measure_size=p["measure_size"]))
    result = train_and_analyze(prob, opts[name], p["steps"], p["analyze_every"], data=data)
    return {"run": result, "problem": prob.config, "optimizer": opts[name].config(), "dim": prob.dim,
            "split": muon_split_names(opts["muon"], prob)}


def run_medium(ctx) -> dict:
    """Rates from the grid (the tuning sweep at ``alpha`` on ``tune_seed``), then both decomposition runs on seed
    ``seed`` in parallel; matched on held-out loss; the memorisation check at the matched levels."""
    p = ctx.p
    if p["tune_seed"] == p["seed"]:
        raise ExperimentError(f"tune_seed={p['tune_seed']} equals seed: the rates are chosen on another seed")
    tuned = ms.tune(ctx, [float(p["alpha"])])[f"{float(p['alpha']):g}"]
    chosen = {k: tuned[k] for k in OPTIMIZERS}
    pts = dict(zip(OPTIMIZERS, ctx.map(functools.partial(train_point_medium, p, chosen), OPTIMIZERS, "optimizers"),
                   strict=True))
    runs = {name: pt["run"] for name, pt in pts.items()}
    split = pts["muon"]["split"]
    config = {"problem": pts["adam"]["problem"], "optimizers": {k: pt["optimizer"] for k, pt in pts.items()},
              "steps": p["steps"], "analyze_every": p["analyze_every"], "experiment": NAME, "muon_split": split,
              "minibatch": {"size": p["batch_size"], "source": "stream", "heldout": p["heldout"],
                            "measure_size": p["measure_size"]}}
    path = ctx.path("muon_curvature.nc")
    write(path, config, runs, minibatch=True,
          attrs={"title": TITLE, "dim": pts["adam"]["dim"], "muon_tensors": split["muon"],
                 "adam_tensors_under_muon": split["adam"], "matched_on": "held-out loss"})
    results = summarize_file(path, p["levels"], p["match_window"])
    results["muon_split"] = split
    results["tuning"] = tuned
    results["choice_rule"] = (f"per optimizer, the rate of the grid (adam {p['adam_lrs']}, muon {p['muon_lrs']}) with "
                              f"the lowest mean held-out loss over the last {p['select_last']} evaluations on tuning "
                              f"seed {p['tune_seed']}")
    import pyrod

    tree = pyrod.open(path)
    levels = np.asarray(results["loss_levels"], float)
    gaps = []
    for g in OPTIMIZERS:
        ds = tree[g].ds
        held, train = ds["loss"].values, ds["train_loss"].values
        for lv in levels:
            hit = np.flatnonzero(held <= lv)
            if len(hit) and np.isfinite(train[hit[0]]):
                gaps.append(abs(held[hit[0]] / train[hit[0]] - 1.0))
    results["memorisation_gap_max"] = float(max(gaps)) if gaps else None
    results["memorisation_check_passed"] = bool(gaps and max(gaps) <= p["memorisation_tolerance"])
    plot(ctx, path, loss_name="held-out loss")
    return results


def run(ctx):
    p = ctx.p
    if _medium(p):
        return run_medium(ctx)
    # one task per optimizer (each rebuilds the same seeded problem): in parallel with --jobs; per-step bars only
    # when the runs are in this process
    inner = ctx.progress and ctx.in_process
    pts = dict(zip(OPTIMIZERS, ctx.map(functools.partial(train_point, p, progress=inner), OPTIMIZERS, "optimizers"),
                   strict=True))
    runs = {name: pt["run"] for name, pt in pts.items()}
    split = pts["muon"]["split"]
    config = {"problem": pts["adam"]["problem"], "optimizers": {k: pt["optimizer"] for k, pt in pts.items()},
              "steps": p["steps"], "analyze_every": p["analyze_every"], "experiment": NAME, "muon_split": split}
    path = ctx.path("muon_curvature.nc")
    write(path, config, runs, attrs={"title": TITLE, "dim": pts["adam"]["dim"], "muon_tensors": split["muon"],
                                     "adam_tensors_under_muon": split["adam"]})
    results = summarize_file(path, p["levels"], p["match_window"])
    results["muon_split"] = split
    plot(ctx, path)
    return results


def plot(ctx, path, loss_name: str = "training loss"):
    import pyrod

    p = ctx.p
    tree = pyrod.open(path)
    A, M = tree["adam"].ds, tree["muon"].ds
    mt = matched(A, M, p["levels"], p["match_window"])
    lv = mt["levels"]
    ca, cm = "tab:orange", "tab:green"
    # Fig. 1: one-step decomposition at matched loss
    fig, ax = figure(1, 4, width=3.8, height=3.3)
    for a, (k, lab) in zip(ax[0], [("gain", "first-order gain G = −gᵀΔw"),
                                   ("curvature", "curvature penalty C = ½ΔwᵀHΔw"),
                                   ("predicted_decrease", "predicted decrease G − C"),
                                   ("actual_decrease", "actual decrease L(w) − L(w+Δw)")], strict=True):
        a.plot(lv, mt[f"a_{k}"], "o-", ms=3, color=ca, label="Adam")
        a.plot(lv, mt[f"b_{k}"], "s-", ms=3, color=cm, label="Muon")
        a.set(xscale="log", yscale="log", xlabel=f"{loss_name} level (matched)", ylabel=lab,
              title=lab.split(" =")[0])
        a.invert_xaxis()
        a.legend(fontsize=7)
    fig.suptitle("One-step decomposition along training at matched loss (%s on %s, Zipf α=%g)"
                 % (p["model"], p["data"], p["alpha"]))
    savefig(ctx, fig, "muon_curvature_decomposition.png")
    # Fig. 2: NDS, update norm, ratios
    fig, ax = figure(1, 4, width=3.8, height=3.3)
    ax[0, 0].plot(A["t"], A["loss"], color=ca, label="Adam")
    ax[0, 0].plot(M["t"], M["loss"], color=cm, label="Muon")
    ax[0, 0].set(yscale="log", xlabel="step", ylabel=loss_name, title=loss_name)
    ax[0, 1].plot(lv, mt["a_nds"], "o-", ms=3, color=ca, label="Adam")
    ax[0, 1].plot(lv, mt["b_nds"], "s-", ms=3, color=cm, label="Muon")
    ax[0, 1].set(xscale="log", yscale="log", xlabel=f"{loss_name} level", ylabel="NDS", title="(a) NDS")
    ax[0, 2].plot(lv, mt["a_update_norm_sq"], "o-", ms=3, color=ca, label="Adam")
    ax[0, 2].plot(lv, mt["b_update_norm_sq"], "s-", ms=3, color=cm, label="Muon")
    ax[0, 2].set(xscale="log", yscale="log", xlabel=f"{loss_name} level", ylabel="‖Δw‖²", title="(b) update norm²")
    for k, c, lab in (("curvature", "tab:red", "curvature penalty C"), ("nds", "tab:purple", "NDS"),
                      ("update_norm_sq", "tab:gray", "‖Δw‖²")):
        ax[0, 3].plot(lv, mt[f"a_{k}"] / mt[f"b_{k}"], "o-", ms=3, color=c, label=lab)
    ax[0, 3].axhline(1.0, color="k", lw=0.8, ls="--")
    ax[0, 3].set(xscale="log", yscale="log", xlabel=f"{loss_name} level", ylabel="Adam / Muon",
                 title="(c) Adam-to-Muon ratios")
    for a in ax[0, 1:]:
        a.invert_xaxis()
    for a in ax[0]:
        a.legend(fontsize=7)
    savefig(ctx, fig, "muon_curvature_nds.png")
    # Fig. 4: within vs cross layer
    fig, ax = figure(1, 4, width=4.0, height=3.3)
    for a, k, title in ((ax[0, 0], "within_nds", "(a) within-layer ΣΔw_lᵀH_llΔw_l / ‖Δw‖²"),
                        (ax[0, 1], "cross_nds", "(b) cross-layer ΣΔw_lᵀH_ll'Δw_l' / ‖Δw‖²")):
        a.plot(lv, mt[f"a_{k}"], "o-", ms=3, color=ca, label="Adam")
        a.plot(lv, mt[f"b_{k}"], "s-", ms=3, color=cm, label="Muon")
        a.axhline(0, color="k", lw=0.6)
        a.set(xscale="log", xlabel=f"{loss_name} level", ylabel="NDS part", title=title)
        a.invert_xaxis()
        a.legend(fontsize=7)
    a = ax[0, 2]
    a.plot(lv, mt["a_within_nds"] - mt["b_within_nds"], "o-", ms=3, color="tab:blue", label="within-layer gap")
    a.plot(lv, mt["a_cross_nds"] - mt["b_cross_nds"], "s-", ms=3, color="tab:red", label="cross-layer gap")
    a.plot(lv, mt["a_nds"] - mt["b_nds"], "k--", lw=1, label="total NDS gap")
    a.axhline(0, color="k", lw=0.6)
    a.set(xscale="log", xlabel=f"{loss_name} level", ylabel="Adam − Muon", title="(c) NDS gap, layer = tensor")
    a.invert_xaxis()
    a.legend(fontsize=7)
    a = ax[0, 3]
    if "block_matrix_nds" in A and np.isfinite(A["block_matrix_nds"].values).any():
        from pyrod.analysis import value_at_levels

        wa, ca_, _, _ = layer_split(A)
        wm, cm_, _, _ = layer_split(M)
        at = lambda ds, v: value_at_levels(ds["loss"].values, v, lv, window=p["match_window"])  # noqa: E731
        a.plot(lv, at(A, wa) - at(M, wm), "o-", ms=3, color="tab:blue", label="within-layer gap")
        a.plot(lv, at(A, ca_) - at(M, cm_), "s-", ms=3, color="tab:red", label="cross-layer gap")
        a.plot(lv, mt["a_nds"] - mt["b_nds"], "k--", lw=1, label="total NDS gap")
        a.legend(fontsize=7)
    a.axhline(0, color="k", lw=0.6)
    a.set(xscale="log", xlabel=f"{loss_name} level", ylabel="Adam − Muon",
          title="(d) NDS gap, layer = transformer layer")
    a.invert_xaxis()
    savefig(ctx, fig, "muon_curvature_layers.png")
    # Fig. 9: per-tensor localisation of the within-layer gap, by stage
    names = block_names(A)
    if len(lv) and names:
        ga = block_within_at_levels(A, lv, p["match_window"]) - block_within_at_levels(M, lv, p["match_window"])
        sl = _stage_slices(len(lv))
        G = np.array([[_med(ga[sl[s], j]) if _med(ga[sl[s], j]) is not None else np.nan for s in STAGES]
                      for j in range(len(names))])
        fig, ax = figure(1, 1, width=5.2, height=0.25 * len(names) + 1.6)
        lim = np.nanmax(np.abs(G)) if np.isfinite(G).any() else 1.0
        im = ax[0, 0].imshow(G, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax[0, 0].set_xticks(range(3), STAGES)
        ax[0, 0].set_yticks(range(len(names)), names, fontsize=7)
        ax[0, 0].set(xlabel="training stage (thirds of the matched loss levels)", ylabel="tensor",
                     title="within-layer NDS gap Adam − Muon per tensor")
        fig.colorbar(im, ax=ax[0, 0], label="Δw_lᵀH_llΔw_l/‖Δw‖², Adam − Muon")
        savefig(ctx, fig, "muon_curvature_blocks.png")
