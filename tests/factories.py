"""Problem factories for tests of ``Problem.from_factory`` (imported as ``factories:NAME``: pytest puts
``tests/`` on ``sys.path`` because ``tests/conftest.py`` lives there without an ``__init__.py``)."""
from __future__ import annotations

import torch
from torch import nn

import pyrod


def mlp_regression(seed=0, n=48, width=6, dims=(3, 2)):
    """A tanh MLP regression: returns the tuple (model, X, Y, loss)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    X = torch.randn(n, dims[0], generator=gen, dtype=torch.float64)
    Y = torch.randn(n, dims[1], generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dims[0], width), nn.Tanh(), nn.Linear(width, dims[1]))
    return model, X, Y, "mse"


class _BNNet(nn.Module):
    def __init__(self, d_in, width, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.bn = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def bn_classifier(seed=0, n=40, d_in=5, width=7, classes=3, eval_mode=True):
    """A classifier with BatchNorm (non-trivial running statistics), cross-entropy; eval mode by default."""
    gen = torch.Generator().manual_seed(2000 + seed)
    X = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    Y = torch.randint(0, classes, (n,), generator=gen)
    torch.manual_seed(seed)
    model = _BNNet(d_in, width, classes).double()
    with torch.no_grad():
        model.bn.running_mean.copy_(0.3 * torch.randn(width, generator=gen, dtype=torch.float64))
        model.bn.running_var.copy_(0.5 + torch.rand(width, generator=gen, dtype=torch.float64))
    if eval_mode:
        model.eval()
    return model, X, Y, "ce"


def named_problem(width=8, seed=0):
    """Returns a ready Problem (built by the registry)."""
    return pyrod.problem(model="mlp", data="digits", classes=3, n=40, seed=seed, device="cpu",
                         model_kwargs={"width": width})


def not_a_problem(**kwargs):
    return 3
