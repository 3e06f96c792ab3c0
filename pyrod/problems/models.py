"""Models. (Minimal version; extended by the problems work.)"""
from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "silu": nn.SiLU}


def mlp(in_shape, out_dim, width: int = 64, depth: int = 2, activation: str = "tanh", bias: bool = True):
    """Fully connected net: ``depth`` hidden layers of ``width`` units."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is unknown; valid names: {sorted(ACTIVATIONS)}")
    layers, d_in = [nn.Flatten()], int(math.prod(in_shape))
    for _ in range(depth):
        layers += [nn.Linear(d_in, width, bias=bias), ACTIVATIONS[activation]()]
        d_in = width
    layers.append(nn.Linear(d_in, out_dim, bias=bias))
    return nn.Sequential(*layers)


MODELS = {"mlp": mlp}
