"""Models: ``MODELS[name](in_shape, out_dim, **kw) -> torch.nn.Module``.

Every builder takes the shape of one input point ``in_shape`` (a tuple without the batch dimension: ``(64,)``
for digits, ``(3, 32, 32)`` for CIFAR-10) and the number of outputs ``out_dim``; the module maps a batch
``(n, *in_shape)`` to outputs ``(n, out_dim)``. The registry seeds torch (``torch.manual_seed(seed)``) before
calling the builder, so initialisation is deterministic.

All models are built from plain differentiable torch ops (no fused attention kernels, no batch norm, no
dropout), so ``torch.func.grad``/``jvp``/``vmap`` compose through them: forward-over-reverse HVPs and third
derivatives work (:class:`pyrod.problems.Problem`).

=======  ====================================================================================================
``mlp``  ``depth`` hidden layers of ``width`` units (flattens any input)
``cnn``  two (``channels``) conv + activation + 2×2 pooling stages, then a linear head
``vit``  patch embedding + positional embedding, ``depth`` pre-norm transformer blocks, mean (or cls) pooling
=======  ====================================================================================================
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .gpt import LayerNorm  # plain-op LayerNorm: torch's fused kernel has wrong third derivatives

__all__ = ["MODELS", "ACTIVATIONS", "mlp", "cnn", "vit", "image_shape"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "silu": nn.SiLU}


def _activation(activation: str) -> nn.Module:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is unknown; valid names: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[activation]()


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return value


def image_shape(in_shape) -> tuple[int, int, int]:
    """The ``(C, H, W)`` image shape a conv/vision model sees for inputs of shape ``in_shape``.

    ``(C, H, W)`` is kept; ``(H, W)`` becomes ``(1, H, W)``; a flat ``(d,)`` with ``d`` a perfect square
    (digits: 64) becomes ``(1, √d, √d)``. Anything else raises ValueError.
    """
    shape = tuple(int(s) for s in in_shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side == shape[0] and side > 0:
            return (1, side, side)
        raise ValueError(f"in_shape={shape}: a flat input can only be used as an image when its size is a perfect "
                         f"square (reshaped to 1×√d×√d); {shape[0]} is not. Pass (C, H, W) inputs instead.")
    raise ValueError(f"in_shape={shape}: expected (C, H, W), (H, W) or a flat (d,) with d a perfect square")


class _ToImage(nn.Module):
    """``(n, *in_shape) -> (n, C, H, W)`` (a reshape; no parameters)."""

    def __init__(self, in_shape, shape):
        super().__init__()
        self.n_in = len(tuple(in_shape))
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(*x.shape[: x.ndim - self.n_in], *self.shape)

    def extra_repr(self):
        return f"shape={self.shape}"


# ---------------------------------------------------------------------------------------------------- MLP
def mlp(in_shape, out_dim, width: int = 64, depth: int = 2, activation: str = "tanh", bias: bool = True):
    """Fully connected net: ``depth`` hidden layers of ``width`` units.

    ``(n, *in_shape)`` is flattened to ``(n, prod(in_shape))``; output ``(n, out_dim)``.
    """
    _activation(activation)
    width = _positive_int("width", width)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"depth={depth!r} must be a non-negative int")
    layers, d_in = [nn.Flatten()], int(math.prod(in_shape))
    for _ in range(depth):
        layers += [nn.Linear(d_in, width, bias=bias), _activation(activation)]
        d_in = width
    layers.append(nn.Linear(d_in, out_dim, bias=bias))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------------- CNN
def cnn(in_shape, out_dim, channels=(16, 32), kernel_size: int = 3, activation: str = "tanh", pool: str = "avg",
        bias: bool = True):
    """Small convolutional net.

    For each entry ``c`` of ``channels``: ``Conv2d(·, c, kernel_size, padding=kernel_size // 2)`` → activation →
    2×2 pooling (``pool="avg"`` (smooth, default) or ``"max"``; skipped once the feature map is smaller than
    2×2), then ``Flatten`` → ``Linear(·, out_dim)``.

    Input ``(n, *in_shape)`` with ``in_shape`` = ``(C, H, W)``, ``(H, W)``, or flat ``(d,)`` with ``d`` a
    perfect square (reshaped to ``(1, √d, √d)``, e.g. digits → 1×8×8; see :func:`image_shape`).
    Output ``(n, out_dim)``.
    """
    _activation(activation)
    kernel_size = _positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r} must be odd (same-size padding)")
    if isinstance(channels, int):
        channels = (channels,)
    channels = tuple(channels)
    if not channels:
        raise ValueError(f"channels={channels!r} must list at least one conv layer width")
    for c in channels:
        _positive_int("channels", c)
    if pool not in ("avg", "max"):
        raise ValueError(f"pool={pool!r} is unknown; valid names: ['avg', 'max']")
    C, H, W = image_shape(in_shape)
    layers = [_ToImage(in_shape, (C, H, W))]
    c_in = C
    for c in channels:
        layers += [nn.Conv2d(c_in, c, kernel_size, padding=kernel_size // 2, bias=bias), _activation(activation)]
        if H >= 2 and W >= 2:
            layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
            H, W = H // 2, W // 2
        c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * H * W, out_dim, bias=bias)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    """Multi-head self-attention from plain ops (matmul, softmax), so ``torch.func`` transforms compose.

    ``(n, T, dim) -> (n, T, dim)``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads!r} must divide dim={dim!r}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, T, dim = x.shape
        qkv = self.qkv(x).reshape(n, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                                # (n, heads, T, head_dim)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)  # (n, heads, T, T)
        out = (att @ v).transpose(1, 2).reshape(n, T, dim)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``. ``(n, T, dim) -> (n, T, dim)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, activation: str):
        super().__init__()
        self.norm1 = LayerNorm(dim, bias=True)
        self.attn = Attention(dim, heads)
        self.norm2 = LayerNorm(dim, bias=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), _activation(activation),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Small vision transformer; see :func:`vit`. ``(n, *in_shape) -> (n, out_dim)``."""

    def __init__(self, in_shape, out_dim, patch_size=4, dim=32, depth=1, heads=2, mlp_ratio=2, activation="gelu",
                 pool="mean"):
        super().__init__()
        C, H, W = image_shape(in_shape)
        p = patch_size
        if H % p or W % p:
            raise ValueError(f"patch_size={p!r} must divide the image size {H}×{W} (input shape {tuple(in_shape)})")
        self.to_image = _ToImage(in_shape, (C, H, W))
        self.patch_size, self.pool = p, pool
        n_tokens = (H // p) * (W // p)
        self.patch_embed = nn.Linear(C * p * p, dim)                    # = Conv2d(C, dim, p, stride=p)
        if pool == "cls":
            self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
            n_tokens += 1
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_tokens, dim))
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio, activation) for _ in range(depth)])
        self.norm = LayerNorm(dim, bias=True)
        self.head = nn.Linear(dim, out_dim)

    def patches(self, x):
        """``(n, C, H, W) -> (n, T, C·p·p)`` non-overlapping patches, row-major over the patch grid."""
        n, C, H, W = x.shape
        p = self.patch_size
        x = x.reshape(n, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, (H // p) * (W // p), C * p * p)

    def forward(self, x):
        x = self.patch_embed(self.patches(self.to_image(x)))          # (n, T, dim)
        if self.pool == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)         # (n, dim)
        return self.head(x)


def vit(in_shape, out_dim, patch_size: int = 4, dim: int = 32, depth: int = 1, heads: int = 2, mlp_ratio: int = 2,
        activation: str = "gelu", pool: str = "mean"):
    """Small vision transformer.

    Image ``(C, H, W)`` (see :func:`image_shape`; digits → 1×8×8) → ``patch_size``×``patch_size`` patches →
    linear embedding to ``dim`` + learned positional embedding → ``depth`` pre-norm blocks (``heads``-head
    self-attention written with plain ops, MLP of width ``mlp_ratio·dim``) → LayerNorm → mean over tokens
    (``pool="mean"``) or a class token (``pool="cls"``) → ``Linear(dim, out_dim)``.

    ``patch_size`` must divide H and W (4 works for 8×8 and 32×32). Output ``(n, out_dim)``.
    """
    _activation(activation)
    for nm, v in (("patch_size", patch_size), ("dim", dim), ("depth", depth), ("heads", heads),
                  ("mlp_ratio", mlp_ratio)):
        _positive_int(nm, v)
    if pool not in ("mean", "cls"):
        raise ValueError(f"pool={pool!r} is unknown; valid names: ['cls', 'mean']")
    return ViT(in_shape, out_dim, patch_size=patch_size, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
               activation=activation, pool=pool)


from .gpt import gpt  # noqa: E402  (causal transformer LM over token ids, pyrod/problems/gpt.py)

MODELS = {"mlp": mlp, "cnn": cnn, "vit": vit, "gpt": gpt}
