"""Datasets: full-batch ``(X, Y)`` tensors. (Minimal version; extended by the problems work.)"""
from __future__ import annotations

import numpy as np
import torch


def _subset(X, y, classes, n):
    if classes is not None:
        keep = y < classes
        X, y = X[keep], y[keep]
    if n is not None:
        X, y = X[:n], y[:n]
    return X, y


def digits(*, classes=None, n=None, seed=0, path=None):
    """scikit-learn's 8×8 digits (1797 points, ships offline), scaled to [0, 1] and centred per feature."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data.astype(np.float64) / 16.0, d.target.astype(np.int64)
    X, y = _subset(X, y, classes, n)
    X = X - X.mean(0, keepdims=True)
    return torch.from_numpy(X), torch.from_numpy(y)


DATASETS = {"digits": digits}
