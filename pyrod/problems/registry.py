"""``pyrod.problem(...)``: build a Problem by name (model × data × loss, an analytic toy, or a factory)."""
from __future__ import annotations

import numbers

import torch

from ..keys import parameters_of, suggest, unknown
from . import data as _data
from . import models as _models
from . import toys as _toys
from .problem import UNREPRODUCIBLE_KEY, Problem, check_batch_size, check_hvp_mode, resolve_device, resolve_dtype

MODELS = _models.MODELS
DATASETS = _data.DATASETS
TOYS = _toys.TOYS


class _UpTo(int):
    """The default ``n``: this many points, or all of them when the data has fewer (a given ``n`` is exact)."""

    def __repr__(self) -> str:
        return f"{int(self)} (or all when fewer)"


#: ``pyrod.problem``'s default number of points
DEFAULT_N = _UpTo(1000)


def problem(model: str = "mlp", data: str = "digits", *, classes: int | None = 4, n: int | None = DEFAULT_N,
            loss: str = "mse", dtype=None, device=None, seed: int = 0, toy: str | None = None,
            data_path: str | None = None, model_kwargs: dict | None = None, data_kwargs: dict | None = None,
            batch_size: int | None = None, factory: str | None = None, kwargs: dict | None = None,
            hvp_mode: str = "auto", **toy_kwargs) -> Problem:
    """Build a named problem.

    Parameters
    ----------
    model : one of ``pyrod.problems.MODELS`` (``"mlp"``, ``"cnn"``, ``"vit"``, …).
    data : one of ``pyrod.problems.DATASETS`` (``"digits"`` ships with scikit-learn; ``"cifar10"`` needs
        ``data_path`` pointing at a local ``cifar-10-batches-py`` folder; synthetic and Zipf sets are generated).
    classes, n : keep the first ``classes`` classes and the first ``n`` points (None = all). A given ``n`` that the
        data cannot supply is an error naming how many there are (digits has 720 points of classes 0–3); the
        default, 1000, takes all points when there are fewer, and ``config["n"]`` records the number used, so that
        replaying the config loads the same points.
    loss : ``"mse"`` (one-hot targets) or ``"ce"``.
    dtype : ``"float64"`` (the default, also for ``None``) or ``"float32"``; device : ``None``/``"auto"`` = CUDA
        when available.
    seed : seeds the model initialisation and any synthetic data.
    toy : name of an analytic toy (``pyrod.problems.TOYS``); then ``model``/``data`` are ignored and
        ``toy_kwargs`` go to the toy.
    model_kwargs, data_kwargs : extra options (e.g. ``{"width": 64, "depth": 2, "activation": "tanh"}``).
    batch_size : ``None`` (one full batch) or an int ≥ 1: exact full-batch values accumulated over micro-batches
        of at most ``batch_size`` samples (bounded memory; :meth:`Problem.from_module`). Recorded in the config.
    factory, kwargs : a custom problem from ``Problem.from_factory(factory, factory_kwargs=kwargs, dtype=,
        device=, batch_size=)`` (``factory="package.module:function"``); the other arguments are then unused.
        This is how the config of a factory-built problem replays.
    hvp_mode : how HVPs and third derivatives are computed: ``"auto"`` (by device type), ``"graph"``,
        ``"batched"`` or ``"forward"`` (``pyrod.problems.problem.HVP_MODES``; same values up to rounding).
        Recorded in the config when not ``"auto"``.

    Returns
    -------
    Problem
        A :class:`Problem` whose ``config`` rebuilds it: ``pyrod.problem(**prob.config)``.

    Notes
    -----
    NumPy integers are accepted wherever an int is (``n``, ``classes``, ``seed``, ``batch_size``, values in
    ``model_kwargs``/``data_kwargs``/toy options) and are recorded as Python ints. Every name is checked before
    anything is built (:func:`check_config`), with the closest valid name for a typo.
    """
    if UNREPRODUCIBLE_KEY in toy_kwargs:
        raise ValueError(f"this config cannot be replayed: {toy_kwargs[UNREPRODUCIBLE_KEY]}")
    if factory is None:     # names at every depth, with the closest valid one, before anything is built
        names = ({"toy": toy, **toy_kwargs} if toy is not None else
                 {"model": model, "data": data, "loss": loss, "model_kwargs": model_kwargs,
                  "data_kwargs": data_kwargs, **toy_kwargs})
        wrong = check_config(names, where="pyrod.problem")
        if wrong:
            from ..keys import SpecError
            raise SpecError("; ".join(wrong))
    if factory is not None:
        return Problem.from_factory(factory, factory_kwargs=kwargs, dtype=dtype, device=device,
                                    batch_size=batch_size, hvp_mode=hvp_mode)
    if kwargs is not None:
        raise TypeError(f"kwargs={kwargs!r} is only used with factory='module:function'")
    dt = resolve_dtype("float64" if dtype is None else dtype)
    dev = resolve_device(device)
    seed = _as_int("seed", seed)
    batch_size = check_batch_size(batch_size)
    check_hvp_mode(hvp_mode)
    if toy is not None:
        if toy not in TOYS:
            raise ValueError(f"toy={toy!r} is unknown; valid names: {sorted(TOYS)}")
        if batch_size is not None:
            raise ValueError(f"batch_size={batch_size!r}: analytic toys have no samples to split")
        toy_kwargs = _py(toy_kwargs)
        prob = TOYS[toy](dtype=dt, device=dev, seed=seed, **toy_kwargs)
        prob.config = {"toy": toy, "dtype": str(dt).replace("torch.", ""), "seed": seed, **_jsonable(toy_kwargs)}
        if hvp_mode != "auto":
            prob.hvp_mode = hvp_mode
            prob.config["hvp_mode"] = hvp_mode
        return prob
    if toy_kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(toy_kwargs)} (toy options need toy=...)")
    if model not in MODELS:
        raise ValueError(f"model={model!r} is unknown; valid names: {sorted(MODELS)}")
    if data not in DATASETS:
        raise ValueError(f"data={data!r} is unknown; valid names: {sorted(DATASETS)}")
    if loss not in ("mse", "ce"):
        raise ValueError(f"loss={loss!r} is unknown; valid names: ['ce', 'mse']")
    classes = _as_count("classes", classes)
    model_kwargs, data_kwargs = _py(model_kwargs or {}), _py(data_kwargs or {})
    given_n = n is not None and not isinstance(n, _UpTo)
    n = _as_count("n", n)
    X, Y = DATASETS[data](classes=classes, n=n, seed=seed, path=data_path, **data_kwargs)
    if n is not None and Y.shape[0] < n:
        if given_n:
            which = f" of classes 0–{classes - 1}" if classes is not None else ""
            raise ValueError(f"n={n}: data={data!r} has only {Y.shape[0]} points{which}; give n <= {Y.shape[0]} "
                             f"(or n=None for all of them)")
        n = int(Y.shape[0])      # record what was used: replaying n=len(Y) gives the same points
    out_dim = int(Y.max()) + 1 if not torch.is_floating_point(Y) else (Y.shape[1] if Y.ndim > 1 else 1)
    torch.manual_seed(seed)
    net = MODELS[model](in_shape=tuple(X.shape[1:]), out_dim=out_dim, **model_kwargs)
    cfg = {"model": model, "data": data, "classes": classes, "n": n, "loss": loss,
           "dtype": str(dt).replace("torch.", ""), "seed": seed, "data_path": data_path,
           "model_kwargs": _jsonable(model_kwargs), "data_kwargs": _jsonable(data_kwargs), "batch_size": batch_size}
    return Problem.from_module(net, X, Y, loss, dtype=dt, device=dev, name=f"{model}-{data}", config=cfg,
                               batch_size=batch_size, hvp_mode=hvp_mode)


#: keys of a problem config besides the toy's own options (toy form) and pyrod.problem's (model × data form)
_GENERAL_KEYS = ("dtype", "device", "seed", "batch_size")
_FACTORY_KEYS = ("factory", "kwargs", "dtype", "device", "batch_size", "name")


def check_config(cfg: dict, where: str = "problem") -> list[str]:
    """What is wrong with the names in a problem config (``pyrod.problem(**cfg)``) at every depth — an unknown
    key, model, data set, toy, model option or data option — each with the closest valid name. Nothing is built
    and no data is loaded; values are checked when the problem is built. A factory's own ``kwargs`` are the
    factory's business (not checked)."""
    if not isinstance(cfg, dict):
        return [f"{where} must be a dict (pyrod.problem's keywords), got {type(cfg).__name__}"]
    cfg = {k: v for k, v in cfg.items() if k != UNREPRODUCIBLE_KEY}
    out = []

    def add(msg):
        if msg:
            out.append(msg)

    def named(key, table, label):
        name = cfg.get(key)
        if name is not None and name not in table:
            add(f"{where}.{key}={name!r} is not a known {label}{suggest(name, table)}; valid names: {sorted(table)}")
            return None
        return name

    if "factory" in cfg:
        add(unknown(cfg, _FACTORY_KEYS, f"{where} (factory form)"))
        return out
    if "toy" in cfg:
        toy = named("toy", TOYS, "toy")
        if toy is not None:
            own = parameters_of(TOYS[toy], skip=("dtype", "device", "seed"))
            if own is not None:
                add(unknown(cfg, {"toy", *_GENERAL_KEYS, *own}, f"{where} (toy {toy!r})"))
        return out
    add(unknown(cfg, parameters_of(problem, skip=("toy", "factory", "kwargs"), named_only=True), where))
    model = named("model", MODELS, "model") if "model" in cfg else "mlp"
    data = named("data", DATASETS, "data set") if "data" in cfg else "digits"
    if cfg.get("loss", "mse") not in ("mse", "ce"):
        add(f"{where}.loss={cfg['loss']!r} is not a known loss{suggest(cfg['loss'], ('mse', 'ce'))}; "
            f"valid names: ['ce', 'mse']")
    for key, fn, skip in (("model_kwargs", MODELS.get(model), ("in_shape", "out_dim")),
                          ("data_kwargs", DATASETS.get(data), ("classes", "n", "seed", "path"))):
        given = cfg.get(key)
        if fn is None or not given:
            continue
        if not isinstance(given, dict):
            add(f"{where}.{key} must be a dict, got {type(given).__name__}")
            continue
        valid = parameters_of(fn, skip=skip)
        if valid is not None:
            add(unknown(given, valid, f"{where}.{key} of {model if key == 'model_kwargs' else data!r}"))
    return out


def _as_int(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}={v!r} must be an int")
    return int(v)


def _as_count(name, v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name}={v!r} must be a positive int or None")
    return int(v)


def _py(v):
    """NumPy scalars -> Python scalars, recursively through dicts, lists and tuples (other values unchanged)."""
    if isinstance(v, dict):
        return {k: _py(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_py(x) for x in v)
    if type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        return v.item()
    return v


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().tolist()
        elif type(v).__module__ == "numpy" and hasattr(v, "tolist"):
            v = v.tolist()
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
