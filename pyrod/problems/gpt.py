"""A small GPT-style causal transformer language model, written with plain differentiable ops.

``gpt(in_shape=(T,), out_dim=V, ...)`` maps token ids ``(n, T)`` to next-token logits ``(n, T, V)``:

    x = tok_emb[ids] + pos_emb[:T]                              (n, T, dim)
    for each of ``depth`` blocks:   x = x + attn(ln1(x));   x = x + mlp(ln2(x))      (pre-norm)
    logits = head(ln_f(x))          (head tied to tok_emb when ``tie=True``)

Attention is ``heads``-head causal self-attention with separate ``q``, ``k``, ``v``, ``o`` projections,
``softmax(q kᵀ/√head_dim + causal mask) v`` written with matmuls and ``masked_fill`` (no fused kernel), so
``torch.func`` forward-over-reverse HVPs and third derivatives go through it; the MLP is ``fc`` (dim → mlp_ratio·dim),
GELU, ``proj`` (back to dim). Initialisation as GPT-2: normal(0, 0.02) for embeddings and matrices, the two
residual projections (``attn.o``, ``mlp.proj``) with std 0.02/√(2·depth), zero biases, unit LayerNorm gains.

The inputs arrive as floats (``Problem.from_module`` casts every input to the problem's dtype); they are
rounded back to integer ids. With ``loss="ce"`` the loss is the mean cross-entropy over all ``n·T`` next-token
positions. Parameter names (the problem's blocks): ``tok_emb.weight (V, dim)``, ``pos_emb.weight (T, dim)``,
``blocks.{i}.ln1.weight``, ``blocks.{i}.attn.{q,k,v,o}.weight (dim, dim)``, ``blocks.{i}.ln2.weight``,
``blocks.{i}.mlp.fc.weight``, ``blocks.{i}.mlp.proj.weight`` (+ ``.bias`` entries with ``bias=True``),
``ln_f.weight``, ``head.weight (V, dim)`` (absent when tied).

Muon split (:data:`MUON_ADAM_PARAMS`): as in the seed paper and common practice (Keller Jordan's Muon; modded
nanoGPT), Muon orthogonalises the 2-D hidden matrices (attention q/k/v/o, MLP fc/proj) and Adam updates the
embeddings, the output head, LayerNorm gains and biases. Pass ``Muon(adam_params=MUON_ADAM_PARAMS)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GPT", "gpt", "MUON_ADAM_PARAMS", "CausalSelfAttention"]

#: parameter-name patterns (fnmatch) of the 2-D tensors that stay on Adam under Muon: embeddings and output head
MUON_ADAM_PARAMS = ("tok_emb.weight", "pos_emb.weight", "head.weight")

_ACT = {"gelu": nn.GELU, "tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


class LayerNorm(nn.Module):
    """``(x − mean) / √(var + eps) · weight (+ bias)`` over the last axis, written with plain ops.

    Not ``torch.nn.LayerNorm``: torch's fused kernel (``native_layer_norm``) gives wrong *third* derivatives
    when the input and the gain are differentiated together (checked against central differences in
    tests/test_pcfg_gpt.py), which would corrupt ``Problem.d3``. First and second derivatives agree with it."""

    def __init__(self, dim: int, bias: bool, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        xc = x - x.mean(dim=-1, keepdim=True)
        y = xc / torch.sqrt((xc * xc).mean(dim=-1, keepdim=True) + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


class CausalSelfAttention(nn.Module):
    """``(n, T, dim) -> (n, T, dim)``: multi-head attention where position ``t`` sees positions ``≤ t`` only."""

    def __init__(self, dim: int, heads: int, context: int, bias: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads!r} must divide dim={dim!r}")
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.o = nn.Linear(dim, dim, bias=bias)
        self.register_buffer("future", torch.triu(torch.ones(context, context, dtype=torch.bool), diagonal=1),
                             persistent=False)

    def forward(self, x):
        n, T, dim = x.shape
        split = lambda y: y.reshape(n, T, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))         # (n, heads, T, head_dim)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)         # (n, heads, T, T)
        scores = scores.masked_fill(self.future[:T, :T], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v                                  # (n, heads, T, head_dim)
        return self.o(out.transpose(1, 2).reshape(n, T, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str, bias: bool):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.act = _ACT[activation]()
        self.proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``. ``(n, T, dim) -> (n, T, dim)``."""

    def __init__(self, dim, heads, context, mlp_ratio, activation, bias):
        super().__init__()
        self.ln1 = LayerNorm(dim, bias)
        self.attn = CausalSelfAttention(dim, heads, context, bias)
        self.ln2 = LayerNorm(dim, bias)
        self.mlp = MLP(dim, mlp_ratio * dim, activation, bias)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Causal transformer LM; see the module docstring. ``(n, T)`` token ids (any dtype) -> ``(n, T, vocab)``."""

    def __init__(self, vocab: int, context: int, dim: int = 32, depth: int = 2, heads: int = 2, mlp_ratio: int = 4,
                 activation: str = "gelu", bias: bool = False, tie: bool = False):
        super().__init__()
        self.vocab, self.context, self.tie = vocab, context, tie
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, context, mlp_ratio, activation, bias) for _ in range(depth)])
        self.ln_f = LayerNorm(dim, bias)
        self.head = None if tie else nn.Linear(dim, vocab, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim == 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("attn.o.weight", "mlp.proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.ones_(p)

    def forward(self, x):
        ids = torch.round(x).to(torch.long) if torch.is_floating_point(x) else x.to(torch.long)
        if ids.ndim != 2:
            raise ValueError(f"gpt expects token ids of shape (n, T), got {tuple(ids.shape)}")
        T = ids.shape[1]
        if T > self.context:
            raise ValueError(f"sequence length {T} exceeds the model's context={self.context}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab:
            raise ValueError(f"token ids must lie in [0, {self.vocab - 1}] (vocab={self.vocab}); got [{lo}, {hi}]")
        h = self.tok_emb(ids) + self.pos_emb.weight[:T]
        for blk in self.blocks:
            h = blk(h)
        h = self.ln_f(h)
        return h @ self.tok_emb.weight.T if self.tie else self.head(h)


def gpt(in_shape, out_dim, dim: int = 32, depth: int = 2, heads: int = 2, mlp_ratio: int = 4,
        activation: str = "gelu", bias: bool = False, tie: bool = False, vocab: int | None = None):
    """GPT builder for the registry: ``in_shape = (T,)`` (the context length), ``vocab`` = ``out_dim`` unless
    given (it must be ``≥ out_dim``; pass the grammar's vocabulary so models over different samples agree).

    Output ``(n, T, vocab)`` logits. Options as :class:`GPT`; ``bias=False`` (default) drops linear and
    LayerNorm biases, ``tie=True`` uses ``tok_emb.weight`` as the output head.
    """
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 1:
        raise ValueError(f"gpt needs token sequences of shape (n, T); got points of shape {shape}")
    for nm, v in (("dim", dim), ("depth", depth), ("heads", heads), ("mlp_ratio", mlp_ratio)):
        _positive_int(nm, v)
    if activation not in _ACT:
        raise ValueError(f"activation={activation!r} is unknown; valid names: {sorted(_ACT)}")
    if vocab is None:
        vocab = int(out_dim)
    vocab = _positive_int("vocab", vocab)
    if vocab < out_dim:
        raise ValueError(f"vocab={vocab!r} is smaller than the largest target id + 1 ({out_dim})")
    for nm, v in (("bias", bias), ("tie", tie)):
        if not isinstance(v, bool):
            raise ValueError(f"{nm}={v!r} must be True or False")
    return GPT(vocab, shape[0], dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, activation=activation,
               bias=bias, tie=tie)
