"""Analysis helpers: the one-step curvature decomposition (NDS), distances between runs, multi-file loading.

One-step decomposition (docs/theory/nds.md). For an update ``Δw`` at ``w``::

    L(w + Δw) − L(w) ≈ gᵀΔw + ½ ΔwᵀHΔw

* first-order gain ``G = −gᵀΔw`` (positive when the step descends);
* curvature penalty ``C = ½ ΔwᵀHΔw = ½ ‖Δw‖² · NDS``;
* normalized directional sharpness ``NDS = ΔwᵀHΔw / ‖Δw‖²`` (a Rayleigh quotient, ≤ λmax(H));
* predicted decrease ``G − C``, actual decrease ``L(w) − L(w + Δw)`` and their gap (the Taylor model's error);
* with parameter blocks ``l`` (default ``problem.blocks``: one per model tensor) the layer split
  ``ΔwᵀHΔw = Σ_l Δw_lᵀH_llΔw_l (within) + Σ_{l≠l'} Δw_lᵀH_ll'Δw_l' (cross)``, from one batched HVP with one column
  ``H (Δw masked to block l)`` per block: ``B[l, l'] = Δw_lᵀ (H Δw_{l'})_l`` is the full block matrix of the quadratic
  form; ``within = trace(B)``, ``cross = sum(B) − trace(B)``.

>>> import pyrod, torch
>>> from pyrod.analysis import one_step_decomposition
>>> prob = pyrod.problem(toy="quadratic", spectrum=[4.0, 1.0], rotate=False)
>>> d = one_step_decomposition(prob, prob.w0, torch.tensor([-0.1, -0.1], dtype=torch.float64))
>>> round(d.nds, 6), round(d.curvature, 6)
(2.5, 0.025)

Runs and files: :func:`distance` / :func:`distances` compare runs (DataTree nodes, Datasets, DataArrays) on a
shared time axis; :func:`load_runs` stacks several NetCDF outputs along a new dimension (values given, or read
from each file's ``pyrod_config`` such as ``optimizer.lr``); :func:`late_mean`, :func:`first_crossing` are the
small statistics the experiments' summaries are built from.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["OneStep", "one_step_decomposition", "optimizer_update", "resolve_blocks", "distance", "distances",
           "load_runs", "config_value", "late_mean", "first_crossing", "matched_levels", "value_at_levels"]


# --------------------------------------------------------------------------------------------- one step
@dataclass
class OneStep:
    """The Taylor terms of one update ``Δw`` at ``w`` (docs/theory/nds.md). All floats; block fields empty without
    blocks.

    ``gain`` G = −gᵀΔw; ``curvature`` C = ½ΔwᵀHΔw; ``quad`` = ΔwᵀHΔw; ``nds`` = quad/‖Δw‖²;
    ``update_norm_sq`` = ‖Δw‖²; ``predicted_decrease`` = G − C; ``actual_decrease`` = L(w) − L(w+Δw);
    ``gap`` = actual − predicted (the error of the quadratic model); ``within``/``cross`` = within- and cross-layer
    parts of ``quad`` over the blocks; ``outside`` = the part involving parameters in no block (0 when the blocks
    cover every parameter, the default; then ``within + cross = quad`` up to round-off); ``within_nds``/``cross_nds``
    = those divided by ‖Δw‖²;
    ``block_names``, ``block_matrix`` (L×L, ``B[l, l'] = Δw_lᵀ H_ll' Δw_l'``), ``block_within`` (its diagonal, per
    block name), ``block_norm_sq`` (‖Δw_l‖² per block).
    """

    loss: float
    loss_after: float
    gain: float
    curvature: float
    quad: float
    nds: float
    update_norm_sq: float
    grad_norm: float
    predicted_decrease: float
    actual_decrease: float
    gap: float
    within: float = math.nan
    cross: float = math.nan
    outside: float = 0.0
    within_nds: float = math.nan
    cross_nds: float = math.nan
    block_names: list = field(default_factory=list)
    block_matrix: np.ndarray | None = None
    block_within: dict = field(default_factory=dict)
    block_norm_sq: dict = field(default_factory=dict)

    #: the scalar fields, in a stable order (for tables and NetCDF variables)
    SCALARS = ("loss", "loss_after", "gain", "curvature", "quad", "nds", "update_norm_sq", "grad_norm",
               "predicted_decrease", "actual_decrease", "gap", "within", "cross", "outside", "within_nds",
               "cross_nds")

    def scalars(self) -> dict:
        """The scalar fields as a dict of floats."""
        return {k: float(getattr(self, k)) for k in self.SCALARS}

    def as_dict(self) -> dict:
        """All fields, JSON-able (the block matrix as nested lists)."""
        d = asdict(self)
        if self.block_matrix is not None:
            d["block_matrix"] = np.asarray(self.block_matrix).tolist()
        return d

    @property
    def relative_gap(self) -> float:
        """``|gap| / |actual decrease|`` (how well the quadratic model explains the step)."""
        return abs(self.gap) / abs(self.actual_decrease) if self.actual_decrease else math.inf


def resolve_blocks(problem, blocks) -> list[tuple[str, torch.Tensor | slice]]:
    """``blocks`` → list of ``(name, index)``, index a ``slice`` or a LongTensor of flat positions.

    Accepts ``None`` (``problem.blocks``), a sequence of :class:`~pyrod.problems.Block`, ``slice``, index
    tensors/lists, ``(name, index)`` pairs, or a dict ``{name: index}``; ``()`` / ``False`` means no split.
    Blocks must be disjoint (overlap → ValueError); they need not cover every parameter.
    """
    if blocks is None:
        blocks = getattr(problem, "blocks", ())
    if blocks is False or blocks is None:
        return []
    if isinstance(blocks, dict):
        items = list(blocks.items())
    else:
        items = []
        for i, b in enumerate(blocks):
            if hasattr(b, "slice") and hasattr(b, "name"):
                items.append((b.name, b.slice))
            elif isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], str):
                items.append(b)
            else:
                items.append((f"block{i}", b))
    d = problem.dim
    seen = torch.zeros(d, dtype=torch.bool)
    out = []
    for name, idx in items:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(d)
            if step != 1:
                idx = torch.arange(start, stop, step)
            else:
                idx = slice(start, stop)
        else:
            idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d):
                raise ValueError(f"block {name!r}: indices outside [0, {d})")
        m = seen[idx]
        if bool(m.any()):
            raise ValueError(f"block {name!r} overlaps an earlier block")
        seen[idx] = True
        out.append((str(name), idx))
    return out


def one_step_decomposition(problem, w: torch.Tensor, update: torch.Tensor, blocks=None, *, loss=None,
                           grad=None, hvp_chunk: int = 64) -> OneStep:
    """The one-step Taylor decomposition of ``update`` (= Δw) at ``w`` on ``problem`` (docs/theory/nds.md).

    Costs one gradient (unless ``grad`` is given), one loss at ``w + Δw``, and one HVP per block (batched;
    ``hvp_chunk`` columns at a time), or a single HVP without blocks (``blocks=()``). ``blocks`` defaults to
    ``problem.blocks`` (see :func:`resolve_blocks`). Returns a :class:`OneStep`.
    """
    problem.check_vector(w, "w")
    problem.check_vector(update, "update")
    if loss is None or grad is None:
        loss, grad = problem.loss_and_grad(w)
    loss = float(loss)
    dw = update
    loss_after = float(problem.loss(w + dw))
    nsq = float(torch.dot(dw, dw))
    gain = -float(torch.dot(grad, dw))
    blk = resolve_blocks(problem, blocks)
    within = cross = math.nan
    outside = 0.0
    names, B, bw, bn = [], None, {}, {}
    if blk:
        L = len(blk)
        cols = []
        masked = []
        for _name, idx in blk:
            v = torch.zeros_like(dw)
            v[idx] = dw[idx]
            masked.append(v)
        for s in range(0, L, max(1, int(hvp_chunk))):
            V = torch.stack(masked[s:s + hvp_chunk], dim=1)
            cols.append(problem.hvp(w, V))
        HV = torch.cat(cols, dim=1)                                  # (d, L): column l' = H Δw_{l'}
        Bt = torch.stack([torch.stack([torch.dot(dw[idx], HV[idx, j]) for j in range(L)]) for _, idx in blk])
        B = Bt.detach().cpu().numpy().astype(np.float64)
        covered = torch.zeros_like(dw)
        for v in masked:
            covered = covered + v
        Hc = HV.sum(dim=1)                                           # H (Δw restricted to the blocks)
        rest = dw - covered
        if bool((rest != 0).any()):                                  # parameters outside every block
            Hdw = Hc + problem.hvp(w, rest)
        else:
            Hdw = Hc
        quad = float(torch.dot(dw, Hdw))
        within = float(np.trace(B))
        cross = float(B.sum()) - within
        outside = quad - float(B.sum())                              # 0 when the blocks cover every parameter
        names = [n for n, _ in blk]
        bw = {n: float(B[i, i]) for i, n in enumerate(names)}
        bn = {n: float(torch.dot(dw[idx], dw[idx])) for n, idx in blk}
    else:
        quad = float(torch.dot(dw, problem.hvp(w, dw)))
    nds = quad / nsq if nsq > 0 else math.nan
    curvature = 0.5 * quad
    predicted = gain - curvature
    actual = loss - loss_after
    return OneStep(loss=loss, loss_after=loss_after, gain=gain, curvature=curvature, quad=quad, nds=nds,
                   update_norm_sq=nsq, grad_norm=float(torch.linalg.vector_norm(grad)),
                   predicted_decrease=predicted, actual_decrease=actual, gap=actual - predicted,
                   within=within, cross=cross, outside=outside,
                   within_nds=within / nsq if nsq > 0 and blk else math.nan,
                   cross_nds=cross / nsq if nsq > 0 and blk else math.nan,
                   block_names=names, block_matrix=B, block_within=bw, block_norm_sq=bn)


def optimizer_update(optimizer, state, grad):
    """One step of a :mod:`pyrod.optimizers` optimizer from ``state`` with ``grad = ∇L(state.w)``.

    Returns ``(Δw, new_state)`` with ``Δw = new_state.w − state.w``: the update whose one-step decomposition
    :func:`one_step_decomposition` analyses.
    """
    new_state, _ = optimizer.step(state, grad)
    return new_state.w - state.w, new_state


# --------------------------------------------------------------------------------------------- distances
def _as_dataset(x, group=None):
    """DataTree / DataTree node / Dataset / path -> Dataset (a path or tree needs ``group``)."""
    import xarray as xr

    if isinstance(x, (str, os.PathLike)):
        from .io.reader import open_tree
        x = open_tree(x)
    if isinstance(x, xr.DataTree):
        if group is not None:
            x = x[group]
        return x.to_dataset(inherit=False) if hasattr(x, "to_dataset") else x.ds
    return x


def _as_dataarray(x, var, group=None):
    import xarray as xr

    if isinstance(x, xr.DataArray):
        return x
    ds = _as_dataset(x, group)
    if var not in ds:
        raise KeyError(f"variable {var!r} not found (have: {sorted(ds.data_vars)})")
    return ds[var]


def distance(a, b, var: str = "w", *, group: str | None = None, time_dim: str | None = None,
             relative: bool = False):
    """Euclidean distance between two runs' ``var`` at every common time.

    ``a``, ``b``: DataTree nodes, Datasets, DataArrays, or NetCDF paths (then ``group`` names the run group).
    The time axis is ``t`` (or ``t_snap`` for snapshots such as ``w``; override with ``time_dim``); the two are
    aligned on their common times (inner join) and the norm is taken over every other dimension (a scalar
    variable gives ``|a − b|``). ``relative=True`` divides by the norm of ``b``. Returns a DataArray over time.
    """
    import xarray as xr

    da, db = _as_dataarray(a, var, group), _as_dataarray(b, var, group)
    if time_dim is None:
        time_dim = next((d for d in ("t", "t_snap") if d in da.dims), da.dims[0] if da.dims else None)
    if time_dim not in db.dims:
        raise ValueError(f"{var!r}: time dim {time_dim!r} missing in the second run (dims {db.dims})")
    da, db = xr.align(da, db, join="inner")
    diff = da - db
    other = [d for d in diff.dims if d != time_dim]
    out = np.sqrt((diff ** 2).sum(dim=other, skipna=False)) if other else abs(diff)
    if relative:
        ref = np.sqrt((db ** 2).sum(dim=other, skipna=False)) if other else abs(db)
        out = out / ref
    out.name = f"{var}_distance" + ("_relative" if relative else "")
    out.attrs = {"long_name": f"{'relative ' if relative else ''}Euclidean distance of {var!r} between runs",
                 "units": "1"}
    return out


def distances(tree, var: str = "loss", *, runs: Sequence[str] | None = None, reference: str | None = None,
              relative: bool = False):
    """Pairwise :func:`distance` between the runs (children) of ``tree`` that hold ``var``.

    ``reference="discrete"`` compares every other run with that one only. Returns a Dataset with one variable
    per pair, named ``"a-b"`` (the central-flows reference's ``distances/{a-b}``), on the common time axis.
    """
    import xarray as xr

    if isinstance(tree, (str, os.PathLike)):
        from .io.reader import open_tree
        tree = open_tree(tree)
    names = [n for n in (runs or list(tree.children)) if var in tree[n].ds]
    if reference is not None:
        if reference not in names:
            raise KeyError(f"reference run {reference!r} has no variable {var!r} (runs with it: {names})")
        pairs = [(n, reference) for n in names if n != reference]
    else:
        pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
    out = {f"{x}-{y}": distance(tree[x], tree[y], var, relative=relative) for x, y in pairs}
    return xr.Dataset(out)


# --------------------------------------------------------------------------------------------- loading
def config_value(config: dict, key: str):
    """``config`` value at a dotted ``key`` (``"optimizer.lr"``, ``"problem.data_kwargs.alpha"``).

    A key without dots is looked up at the top level, then in ``optimizer``, then in ``problem``
    (KeyError when absent everywhere)."""
    def walk(d, parts):
        for p in parts:
            if not isinstance(d, dict) or p not in d:
                raise KeyError(key)
            d = d[p]
        return d

    parts = key.split(".")
    if len(parts) > 1:
        return walk(config, parts)
    for scope in ((), ("optimizer",), ("problem",), ("problem", "model_kwargs"), ("problem", "data_kwargs")):
        try:
            return walk(config, list(scope) + parts)
        except KeyError:
            continue
    raise KeyError(f"{key!r} is not in the config (top level, optimizer, problem)")


def load_runs(paths: Iterable, dim: str = "lr", values: Sequence | None = None, *, group: str | None = "discrete",
              key: str | None = None, join: str = "outer"):
    """Stack several pyrod NetCDF files into one xarray object along a new dimension ``dim``.

    ``values``: the coordinate of each file; default: read from each file's ``pyrod_config`` at ``key``
    (default ``dim``; dotted keys such as ``"optimizer.beta2"`` work, see :func:`config_value`).
    ``group``: the run group to stack (a Dataset is returned); ``None`` stacks every group present in all files
    and returns a DataTree. Times are aligned with an outer join (runs that stopped early are NaN-padded).
    Each file's root attributes go into ``attrs["runs"]`` (JSON list, one per file).
    """
    import xarray as xr

    from .io.reader import open_tree, stored_config

    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("load_runs: no paths given")
    trees = [open_tree(p) for p in paths]
    if values is None:
        k = key or dim
        values = []
        for p, tr in zip(paths, trees, strict=False):
            try:
                values.append(config_value(stored_config(tr), k))
            except KeyError:
                raise KeyError(f"{p}: no config value {k!r}; pass values=[...] or key=") from None
    values = list(values)
    if len(values) != len(paths):
        raise ValueError(f"load_runs: {len(paths)} paths but {len(values)} values")
    meta = json.dumps([{"path": p, **{k: _plain(v) for k, v in tr.attrs.items() if k != "pyrod_config"}}
                       for p, tr in zip(paths, trees, strict=False)], default=str)

    def stack(name):
        dss = []
        for p, tr in zip(paths, trees, strict=False):
            if name not in tr.children:
                raise KeyError(f"{p}: no run group {name!r} (groups: {sorted(tr.children)})")
            dss.append(tr[name].to_dataset(inherit=False))
        coord = xr.DataArray(values, dims=(dim,), name=dim)
        ds = xr.concat(dss, dim=coord, join=join, combine_attrs="drop_conflicts", coords="minimal",
                       compat="override")
        ds.attrs["runs"] = meta
        return ds

    if group is not None:
        return stack(group)
    common = set(trees[0].children)
    for tr in trees[1:]:
        common &= set(tr.children)
    return xr.DataTree.from_dict({f"/{g}": stack(g) for g in sorted(common)})


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


# --------------------------------------------------------------------------------------------- statistics
def _finite(t, y):
    t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    return t[keep], y[keep]


def late_mean(da, fraction: float = 0.25, *, time_dim: str = "t", stat: str = "mean") -> float:
    """Mean (or ``stat="median"``) of the finite values of ``da`` over the last ``fraction`` of its time span."""
    t, y = _finite(da[time_dim].values, da.values)
    if not len(t):
        return math.nan
    t0 = t.max() - fraction * (t.max() - t.min())
    sel = y[t >= t0]
    return float(np.median(sel) if stat == "median" else np.mean(sel))


def first_crossing(da, level: float, *, time_dim: str = "t", direction: str = "up") -> float | None:
    """First time at which ``da`` reaches ``level`` (``"up"``: ≥, ``"down"``: ≤); None if never."""
    t, y = _finite(da[time_dim].values, da.values)
    hit = np.flatnonzero(y >= level if direction == "up" else y <= level)
    return float(t[hit[0]]) if len(hit) else None


def matched_levels(losses: Sequence, n: int = 20, *, log: bool = True) -> np.ndarray:
    """``n`` loss levels reached by every run in ``losses`` (1-D arrays): from the largest of the runs' minima
    to the smallest of their starting values, geometric when ``log``."""
    lo = max(float(np.nanmin(np.asarray(l, dtype=float))) for l in losses)
    hi = min(float(np.asarray(l, dtype=float)[np.isfinite(l)][0]) for l in losses)
    if not (hi > lo):
        return np.array([])
    pad = 1e-9 * (hi - lo)
    return np.geomspace(hi - pad, lo + pad, n) if log and lo > 0 else np.linspace(hi - pad, lo + pad, n)


def value_at_levels(loss: Sequence, values: Sequence, levels: Sequence, *, window: int = 1) -> np.ndarray:
    """``values`` at the first index where ``loss`` ≤ each level (matched-loss comparison), averaged over
    ``window`` consecutive finite measurements starting there (NaN where the level is never reached)."""
    loss = np.asarray(loss, dtype=float)
    values = np.asarray(values, dtype=float)
    out = np.full(len(levels), np.nan)
    for i, lv in enumerate(levels):
        hit = np.flatnonzero(loss <= lv)
        if len(hit):
            seg = values[hit[0]:]
            seg = seg[np.isfinite(seg)][:max(1, window)]
            if len(seg):
                out[i] = float(np.mean(seg))
    return out
