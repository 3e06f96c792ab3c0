"""Datasets: full-batch ``(X, Y)`` CPU tensors.

Every loader has the signature ``loader(*, classes, n, seed, path, **options) -> (X, Y)`` with

* ``X``: float64, shape ``(n, *point_shape)`` (``(n, 64)`` digits, ``(n, 3, 32, 32)`` CIFAR-10, ``(n, dim)``
  synthetic sets);
* ``Y``: int64 class labels ``(n,)`` in ``0..classes-1`` for classification, or float64 targets ``(n, out)``
  for regression (``synthetic_regression``).

``classes`` keeps the first ``classes`` classes (labels ``0..classes-1``; ``None`` = all / the loader's
default) and ``n`` the first ``n`` points after that (``None`` = all / the default; fewer when the source has
fewer). ``seed`` drives any randomness (synthetic sets, Zipf subsampling); ``path`` is only used by ``cifar10``.
Loaders ignore the arguments that do not apply to them (the registry always passes all four). Invalid option
values raise ValueError naming the option and the value. Nothing is ever downloaded.

=========================  =================================================================================
``digits``                 scikit-learn 8×8 digits (1797 points, 10 classes, ships offline)
``cifar10``                local ``cifar-10-batches-py`` folder (python pickle batches), EoS preprocessing
``synthetic_regression``   Gaussian inputs, linear or tanh-MLP teacher + Gaussian noise; float targets
``synthetic_classification``  Gaussian blobs, balanced classes
``zipf``                   class frequencies ∝ rank^−α, drawn from blobs or digits
=========================  =================================================================================
"""
from __future__ import annotations

import math
import os
import pickle

import numpy as np
import torch

__all__ = ["DATASETS", "digits", "cifar10", "synthetic_regression", "synthetic_classification", "zipf",
           "zipf_counts"]


# ------------------------------------------------------------------------------------------------ helpers
def _check_count(name, value, *, allow_none=True, minimum=1):
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}" + (" or None" if allow_none else ""))
    return int(value)


def _check_positive_float(name, value, *, allow_zero=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a real number") from None
    if isinstance(value, bool) or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r} must be a finite number {'>=' if allow_zero else '>'} 0")
    return v


def _check_classes(classes, available: int, dataset: str):
    classes = _check_count("classes", classes)
    if classes is not None and classes > available:
        raise ValueError(f"classes={classes!r}: {dataset} has only {available} classes")
    return available if classes is None else classes


def _subset(X, y, classes, n):
    """Keep points with label < classes, then the first n (numpy arrays)."""
    if classes is not None:
        keep = y < classes
        X, y = X[keep], y[keep]
    if n is not None:
        X, y = X[:n], y[:n]
    return X, y


# ------------------------------------------------------------------------------------------------- digits
def _digits_raw():
    """(X (1797, 64) float64 in [0, 1], y (1797,) int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float64) / 16.0, d.target.astype(np.int64)


def digits(*, classes=None, n=None, seed=0, path=None):
    """scikit-learn's 8×8 digits (1797 points, 10 classes, ships offline).

    Pixels scaled to [0, 1], first ``classes`` classes and first ``n`` points kept, then centred per feature
    (mean over the kept points). Returns ``X (n, 64)`` float64, ``Y (n,)`` int64. ``seed``/``path`` unused.
    """
    classes = _check_classes(classes, 10, "digits")
    n = _check_count("n", n)
    X, y = _digits_raw()
    X, y = _subset(X, y, classes, n)
    X = X - X.mean(0, keepdims=True)
    return torch.from_numpy(X), torch.from_numpy(y)


# ------------------------------------------------------------------------------------------------ CIFAR-10
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_HELP = ("the folder must be the extracted `cifar-10-batches-py` directory of the python version of CIFAR-10 "
               "(cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted with "
               "`tar xzf`), holding data_batch_1 … data_batch_5 and test_batch; pyrod never downloads it")


def _cifar_folder(path) -> str:
    if path is None:
        raise ValueError("data='cifar10' needs data_path=<path to the extracted cifar-10-batches-py folder>; " + _CIFAR_HELP)
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "data_batch_1")):
        inner = os.path.join(path, "cifar-10-batches-py")
        if os.path.isdir(inner):                     # the parent of the extracted folder was given
            return inner
    if os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 path {path} is a file, not a folder; {_CIFAR_HELP}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CIFAR-10 folder not found: {path}; {_CIFAR_HELP}")
    return path


def _load_cifar_batch(file: str):
    """One pickle batch -> (x (N, 3, 32, 32) uint8, y (N,) int64). The file is trusted (python pickle)."""
    with open(file, "rb") as fh:
        try:
            d = pickle.load(fh, encoding="bytes")
        except Exception as exc:  # noqa: BLE001 — corrupt or not a pickle
            raise ValueError(f"{file} is not a CIFAR-10 python pickle batch ({type(exc).__name__}: {exc}); "
                             f"{_CIFAR_HELP}") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{file} is not a CIFAR-10 batch: expected a dict with keys b'data' and b'labels', got {keys}")
    x = np.asarray(d[b"data"])
    y = np.asarray(d[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{file}: b'data' has shape {x.shape} and b'labels' {y.shape}; expected (N, 3072) and (N,)")
    return x.reshape(-1, 3, 32, 32), y


def cifar10(*, classes=None, n=None, seed=0, path=None, split="train", center="channel", standardize=True):
    """CIFAR-10 from a local ``cifar-10-batches-py`` folder (``path``; nothing is downloaded).

    Reads ``data_batch_1..5`` (``split="train"``, in that order, stopping once ``n`` points are found) or
    ``test_batch`` (``split="test"``); each is a python pickle dict with ``b"data"`` (N, 3072) uint8 (1024 red,
    1024 green, 1024 blue values, row-major 32×32) and ``b"labels"`` (N,). Keeps the first ``classes`` classes
    and then the first ``n`` points, then preprocesses as in the EoS papers:

    1. ``x / 255``;
    2. ``center="channel"`` (default): subtract the per-channel mean over the kept points; ``"feature"``: the
       per-pixel-and-channel mean (locuslab/edge-of-stability); ``None``/``"none"``: no centring;
    3. ``standardize=True`` (default): divide by the std at the same granularity (per channel / per feature; over
       the kept points). Statistics are those of the subset, not of all 50 000 training images.

    Returns ``X (n, 3, 32, 32)`` float64 (NCHW) and ``Y (n,)`` int64. A missing folder or file raises
    FileNotFoundError naming the exact path. ``seed`` is unused (the subset is the first ``n`` points).
    """
    classes = _check_classes(classes, 10, "cifar10")
    n = _check_count("n", n)
    if split not in _CIFAR_FILES:
        raise ValueError(f"split={split!r} is unknown; valid names: {sorted(_CIFAR_FILES)}")
    if center == "none":
        center = None
    if center not in ("channel", "feature", None):
        raise ValueError(f"center={center!r} is unknown; valid values: 'channel', 'feature', None")
    if not isinstance(standardize, (bool, np.bool_)):
        raise ValueError(f"standardize={standardize!r} must be True or False")
    folder = _cifar_folder(path)
    files = [os.path.join(folder, f) for f in _CIFAR_FILES[split]]
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"CIFAR-10 file not found: {f}; {_CIFAR_HELP}")
    xs, ys, have = [], [], 0
    for f in files:
        x, y = _load_cifar_batch(f)
        x, y = _subset(x, y, classes, None if n is None else n - have)
        xs.append(x)
        ys.append(y)
        have += len(y)
        if n is not None and have >= n:
            break
    X = np.concatenate(xs).astype(np.float64) / 255.0
    Y = np.concatenate(ys)
    if len(Y) == 0:
        raise ValueError(f"no CIFAR-10 points with labels < {classes} in {folder} (split={split!r})")
    axes = {"channel": (0, 2, 3), "feature": (0,), None: None}[center]
    if axes is not None:
        X = X - X.mean(axis=axes, keepdims=True)
        if standardize:
            std = X.std(axis=axes, keepdims=True)
            X = X / np.where(std > 0, std, 1.0)
    elif standardize:
        X = X / X.std()
    return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(Y)


# --------------------------------------------------------------------------------------------- synthetic
def synthetic_regression(*, classes=None, n=None, seed=0, path=None, dim=10, out=1, teacher="mlp", width=32,
                         noise=0.1):
    """Regression: ``x ~ N(0, I_dim)``, ``y = f(x) + noise · N(0, I_out)``.

    ``teacher="linear"``: ``f(x) = W x / √dim`` with ``W (out, dim)`` standard normal; ``teacher="mlp"``:
    ``f(x) = V tanh(W x / √dim) / √width`` with ``W (width, dim)``, ``V (out, width)`` standard normal.
    ``n`` defaults to 1000. Returns ``X (n, dim)`` float64 and float64 targets ``Y (n, out)``. Deterministic in
    ``seed`` (numpy ``default_rng``). ``classes``/``path`` are ignored (regression has no classes).
    """
    n = _check_count("n", n) or 1000
    dim = _check_count("dim", dim, allow_none=False)
    out = _check_count("out", out, allow_none=False)
    width = _check_count("width", width, allow_none=False)
    noise = _check_positive_float("noise", noise, allow_zero=True)
    if teacher not in ("linear", "mlp"):
        raise ValueError(f"teacher={teacher!r} is unknown; valid names: ['linear', 'mlp']")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim))
    if teacher == "linear":
        W = rng.standard_normal((out, dim))
        F = X @ W.T / math.sqrt(dim)
    else:
        W = rng.standard_normal((width, dim))
        V = rng.standard_normal((out, width))
        F = np.tanh(X @ W.T / math.sqrt(dim)) @ V.T / math.sqrt(width)
    Y = F + noise * rng.standard_normal((n, out))
    return torch.from_numpy(X), torch.from_numpy(Y)


def _blobs(counts, dim, separation, std, rng):
    """Gaussian blobs: class ``k`` has ``counts[k]`` points ``μ_k + std·N(0, I)``, ``μ_k ~ separation·N(0, I)``.

    Returns ``X (sum(counts), dim)``, ``y`` int64, shuffled by ``rng``.
    """
    centres = separation * rng.standard_normal((len(counts), dim))
    y = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    X = centres[y] + std * rng.standard_normal((len(y), dim))
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


def synthetic_classification(*, classes=None, n=None, seed=0, path=None, dim=10, separation=1.0, std=1.0):
    """Gaussian blobs: ``classes`` (default 4) centres ``μ_k ~ separation · N(0, I_dim)``, points
    ``μ_k + std · N(0, I_dim)``; balanced (class sizes differ by at most one), shuffled. ``n`` defaults to 1000.

    Returns ``X (n, dim)`` float64, ``Y (n,)`` int64. Deterministic in ``seed``. ``path`` is ignored.
    """
    classes = _check_count("classes", classes) or 4
    n = _check_count("n", n) or 1000
    dim = _check_count("dim", dim, allow_none=False)
    separation = _check_positive_float("separation", separation, allow_zero=True)
    std = _check_positive_float("std", std, allow_zero=True)
    if n < classes:
        raise ValueError(f"n={n!r} is smaller than classes={classes!r}: every class needs a point")
    counts = np.full(classes, n // classes) + (np.arange(classes) < n % classes)
    X, y = _blobs(counts, dim, separation, std, np.random.default_rng(seed))
    return torch.from_numpy(X), torch.from_numpy(y)


# ------------------------------------------------------------------------------------------------- Zipf
def zipf_counts(n: int, classes: int, alpha: float) -> np.ndarray:
    """Class sizes ``(classes,)`` summing to ``n`` with ``count_k ≈ n p_k``, ``p_k ∝ (k+1)^−α``.

    Largest-remainder rounding: ``|count_k − n p_k| < 1`` for every class (class 0 is the most frequent).
    """
    p = np.arange(1, classes + 1, dtype=np.float64) ** (-alpha)
    p /= p.sum()
    exact = n * p
    counts = np.floor(exact).astype(np.int64)
    rest = n - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")     # largest fractional parts first, ties by rank
    counts[order[:rest]] += 1
    return counts


def zipf(*, classes=None, n=None, seed=0, path=None, alpha=1.0, base="blobs", dim=10, separation=1.0, std=1.0):
    """Zipf-imbalanced classification: class ``k`` (0-based rank) has frequency ∝ ``(k+1)^−alpha``.

    Class sizes come from :func:`zipf_counts` (exact up to rounding, ``|count_k − n p_k| < 1``).
    ``classes`` defaults to 10.

    * ``base="blobs"``: Gaussian blobs as in :func:`synthetic_classification` (options ``dim``, ``separation``,
      ``std``); ``n`` defaults to 1000. Returns ``X (n, dim)``.
    * ``base="digits"``: ``count_k`` digits of class ``k`` drawn without replacement (random, by ``seed``) from
      scikit-learn's digits, scaled to [0, 1] and centred per feature; ``n`` defaults to the largest size the
      ~180 images per class allow. Returns ``X (n, 64)``.

    Points are shuffled (by ``seed``); ``Y (n,)`` int64. Every class must get at least one point (ValueError
    otherwise). Deterministic in ``seed``; ``path`` is ignored.
    """
    if base not in ("blobs", "digits"):
        raise ValueError(f"base={base!r} is unknown; valid names: ['blobs', 'digits']")
    alpha = _check_positive_float("alpha", alpha, allow_zero=True)
    classes = _check_count("classes", classes) or 10
    n = _check_count("n", n)
    rng = np.random.default_rng(seed)
    if base == "digits":
        if classes > 10:
            raise ValueError(f"classes={classes!r}: digits has only 10 classes")
        Xd, yd = _digits_raw()
        avail = np.bincount(yd, minlength=10)[:classes]
        if n is None:
            p = np.arange(1, classes + 1, dtype=np.float64) ** (-alpha)
            p /= p.sum()
            n = int(np.floor((avail / p).min()))
            while n > 0 and np.any(zipf_counts(n, classes, alpha) > avail):
                n -= 1
    elif n is None:
        n = 1000
    counts = zipf_counts(n, classes, alpha)
    if counts.min() < 1:
        raise ValueError(f"n={n!r} is too small for classes={classes!r} with alpha={alpha!r}: class {classes - 1} "
                         f"would get {n} · p = {n * (classes ** -alpha) / (np.arange(1, classes + 1) ** -alpha).sum():.3g} "
                         f"< 1 point")
    if base == "blobs":
        dim = _check_count("dim", dim, allow_none=False)
        separation = _check_positive_float("separation", separation, allow_zero=True)
        std = _check_positive_float("std", std, allow_zero=True)
        X, y = _blobs(counts, dim, separation, std, rng)
    else:
        if np.any(counts > avail):
            k = int(np.argmax(counts > avail))
            raise ValueError(f"n={n!r}: zipf on digits needs {counts[k]} images of class {k} but only {avail[k]} "
                             f"exist (alpha={alpha!r}); lower n or alpha")
        idx = np.concatenate([rng.permutation(np.flatnonzero(yd == k))[:c] for k, c in enumerate(counts)])
        idx = idx[rng.permutation(len(idx))]
        X, y = Xd[idx], yd[idx]
        X = X - X.mean(0, keepdims=True)
    return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(y))


from .pcfg import zipf_pcfg as _zipf_pcfg  # noqa: E402
from .pcfg import zipf_pcfg_stream as _zipf_pcfg_stream  # noqa: E402

DATASETS = {
    "digits": digits,
    "cifar10": cifar10,
    "synthetic_regression": synthetic_regression,
    "synthetic_classification": synthetic_classification,
    "zipf": zipf,
    "zipf_pcfg": _zipf_pcfg,   # token sequences from a Zipf(α) PCFG (pyrod/problems/pcfg.py)
}

#: data sets that can also give an unlimited stream of fresh samples (mini-batch runs with
#: ``minibatch.source="stream"``): ``stream(*, key, seed, **options)`` with the data set's own options, returning an
#: object with ``draw(n) -> (X, Y)`` (NumPy arrays), ``state_dict()`` and ``load_state_dict()``; ``key`` (a tuple of
#: ints) separates independent streams of one data set (training, held-out, measurement batches)
STREAMS = {
    "zipf_pcfg": _zipf_pcfg_stream,
}
