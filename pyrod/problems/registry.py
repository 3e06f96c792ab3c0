"""``pyrod.problem(...)``: build a Problem by name (model × data × loss, or an analytic toy)."""
from __future__ import annotations

import torch

from .problem import Problem, resolve_device, resolve_dtype
from . import data as _data
from . import models as _models
from . import toys as _toys

MODELS = _models.MODELS
DATASETS = _data.DATASETS
TOYS = _toys.TOYS


def problem(model: str = "mlp", data: str = "digits", *, classes: int | None = 4, n: int | None = 1000,
            loss: str = "mse", dtype="float64", device=None, seed: int = 0, toy: str | None = None,
            data_path: str | None = None, model_kwargs: dict | None = None, data_kwargs: dict | None = None,
            **toy_kwargs) -> Problem:
    """Build a named problem.

    Parameters
    ----------
    model : one of ``pyrod.problems.MODELS`` (``"mlp"``, ``"cnn"``, ``"vit"``, …).
    data : one of ``pyrod.problems.DATASETS`` (``"digits"`` ships with scikit-learn; ``"cifar10"`` needs
        ``data_path`` pointing at a local ``cifar-10-batches-py`` folder; synthetic and Zipf sets are generated).
    classes, n : keep the first ``classes`` classes and the first ``n`` points (None = all).
    loss : ``"mse"`` (one-hot targets) or ``"ce"``.
    dtype : ``"float64"`` (default) or ``"float32"``; device : ``None``/``"auto"`` = CUDA when available.
    seed : seeds the model initialisation and any synthetic data.
    toy : name of an analytic toy (``pyrod.problems.TOYS``); then ``model``/``data`` are ignored and
        ``toy_kwargs`` go to the toy.
    model_kwargs, data_kwargs : extra options (e.g. ``{"width": 64, "depth": 2, "activation": "tanh"}``).

    Returns a :class:`Problem` whose ``config`` rebuilds it: ``pyrod.problem(**prob.config)``.
    """
    dt = resolve_dtype(dtype)
    dev = resolve_device(device)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed={seed!r} must be an int")
    if toy is not None:
        if toy not in TOYS:
            raise ValueError(f"toy={toy!r} is unknown; valid names: {sorted(TOYS)}")
        prob = TOYS[toy](dtype=dt, device=dev, seed=seed, **toy_kwargs)
        prob.config = {"toy": toy, "dtype": str(dt).replace("torch.", ""), "seed": seed, **_jsonable(toy_kwargs)}
        return prob
    if toy_kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(toy_kwargs)} (toy options need toy=...)")
    if model not in MODELS:
        raise ValueError(f"model={model!r} is unknown; valid names: {sorted(MODELS)}")
    if data not in DATASETS:
        raise ValueError(f"data={data!r} is unknown; valid names: {sorted(DATASETS)}")
    if loss not in ("mse", "ce"):
        raise ValueError(f"loss={loss!r} is unknown; valid names: ['ce', 'mse']")
    for nm, v in (("classes", classes), ("n", n)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{nm}={v!r} must be a positive int or None")
    X, Y = DATASETS[data](classes=classes, n=n, seed=seed, path=data_path, **(data_kwargs or {}))
    out_dim = int(Y.max()) + 1 if not torch.is_floating_point(Y) else (Y.shape[1] if Y.ndim > 1 else 1)
    torch.manual_seed(seed)
    net = MODELS[model](in_shape=tuple(X.shape[1:]), out_dim=out_dim, **(model_kwargs or {}))
    cfg = {"model": model, "data": data, "classes": classes, "n": n, "loss": loss,
           "dtype": str(dt).replace("torch.", ""), "seed": seed, "data_path": data_path,
           "model_kwargs": _jsonable(model_kwargs or {}), "data_kwargs": _jsonable(data_kwargs or {})}
    return Problem.from_module(net, X, Y, loss, dtype=dt, device=dev, name=f"{model}-{data}", config=cfg)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().tolist()
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
