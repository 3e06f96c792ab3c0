"""Analytic toy problems with hand-derived closed forms.

``TOYS[name](*, dtype, device, seed, **options) -> Problem``. Each returned :class:`~pyrod.problems.Problem`
carries ``prob.closed_form``, a ``SimpleNamespace`` of functions of a flat ``w (d,)`` written out by hand (no
autograd), used by the tests to check the autodiff machinery:

* ``loss(w) -> ()``, ``grad(w) -> (d,)``, ``hessian(w) -> (d, d)``,
* ``d3(w, u, v) -> (d,)``: ``∇_w (uᵀ H(w) v) = Σ_jk ∂³L/∂w_i∂w_j∂w_k u_j v_k``,

plus toy-specific extras (documented per toy). ``accuracy`` is NaN for all toys (no classes).

=========================  =====================================================================================
``quadratic``              ``½ (w−w*)ᵀ A (w−w*)``, A with a given spectrum (randomly rotated)
``quartic``                self-stabilisation toy ``½ y² x² + κ/2 (y−y*)² + c x³/3`` (w = (x, y))
``scalar_factorization``   ``½ (ab − 1)²`` (w = (a, b))
``matrix_factorization``   ``½ ‖UVᵀ − M‖²_F / scale`` (w = (vec U, vec V), row-major)
=========================  =====================================================================================
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from .problem import Block, Problem

__all__ = ["TOYS", "quadratic", "quartic", "scalar_factorization", "matrix_factorization"]


def _real(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a real number") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ValueError(f"{name}={value!r} must be a finite real number")
    return v


def _vector(name, value, d, dtype, device):
    t = torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(-1)
    if t.numel() == 1 and d > 1:
        t = t.expand(d)
    if t.numel() != d or not torch.isfinite(t).all():
        raise ValueError(f"{name}={value!r} must be a finite scalar or a list of {d} numbers")
    return t.to(dtype=dtype, device=device).clone()


# ---------------------------------------------------------------------------------------------- quadratic
def quadratic(*, dtype=torch.float64, device="cpu", seed=0, spectrum=(10.0, 1.0, 0.1), dim=None, rotate=True,
              w_star=None, w0=None):
    """``L(w) = ½ (w − w*)ᵀ A (w − w*)`` with ``A = Q diag(λ) Qᵀ``, ``w (d,)``.

    * ``spectrum``: the eigenvalues λ (any real numbers; negative ones make a saddle). With ``dim=None``,
      ``d = len(spectrum)``. With ``dim`` given, ``spectrum`` is either ``dim`` numbers or a pair
      ``[λ_first, λ_last]`` filled geometrically (linearly if either is ≤ 0) over ``dim`` eigenvalues.
    * ``rotate=True``: ``Q`` is a Haar-random orthogonal matrix from ``seed`` (QR of a Gaussian matrix, sign-fixed);
      ``rotate=False``: ``Q = I`` (A diagonal, eigenvector i = e_i).
    * ``w_star`` (default 0) and ``w0`` (default all ones): scalars or ``d`` numbers.

    ``closed_form`` extras: ``A (d, d)``, ``eigenvalues (d,)``, ``eigenvectors (d, d)`` (columns), ``minimizer``.
    """
    if isinstance(spectrum, (int, float)):
        spectrum = [spectrum]
    lam = np.asarray([_real("spectrum", s) for s in spectrum], dtype=np.float64)
    if lam.size == 0:
        raise ValueError(f"spectrum={spectrum!r} must list at least one eigenvalue")
    if dim is not None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim={dim!r} must be a positive int or None")
        if lam.size == 2 and dim != 2:
            lo, hi = lam
            lam = np.geomspace(lo, hi, dim) if lo > 0 and hi > 0 else np.linspace(lo, hi, dim)
        elif lam.size != dim:
            raise ValueError(f"spectrum has {lam.size} values but dim={dim!r}: give dim values or a pair "
                             f"[first, last]")
    d = lam.size
    if rotate:
        rng = np.random.default_rng(seed)
        Q, R = np.linalg.qr(rng.standard_normal((d, d)))
        Q = Q * np.sign(np.diag(R))
    else:
        Q = np.eye(d)
    A_np = (Q * lam) @ Q.T
    A_np = 0.5 * (A_np + A_np.T)
    A = torch.as_tensor(A_np, dtype=dtype, device=device)
    ws = _vector("w_star", 0.0 if w_star is None else w_star, d, dtype, device)
    w_init = _vector("w0", 1.0 if w0 is None else w0, d, dtype, device)

    def loss_fn(w):
        r = w - ws
        return 0.5 * torch.dot(r, A @ r)

    cf = SimpleNamespace(
        loss=lambda w: 0.5 * torch.dot(w - ws, A @ (w - ws)),
        grad=lambda w: A @ (w - ws),
        hessian=lambda w: A.clone(),
        d3=lambda w, u, v: torch.zeros_like(w),
        A=A, eigenvalues=torch.as_tensor(lam, dtype=dtype, device=device),
        eigenvectors=torch.as_tensor(Q, dtype=dtype, device=device), minimizer=ws)
    prob = Problem(loss_fn=loss_fn, w0=w_init, name=f"quadratic{d}")
    prob.closed_form = cf
    return prob


# ------------------------------------------------------------------------------------------------ quartic
def quartic(*, dtype=torch.float64, device="cpu", seed=0, kappa=0.05, ystar=2.0, x0=0.1, y0=0.5, c=0.0):
    """Self-stabilisation toy ``L(x, y) = ½ y² x² + κ/2 (y − y*)² + c x³ / 3``, ``w = (x, y)``, ``w0 = (x0, y0)``.

    Why this one (docs/theory/stable_and_rod_flows.md, "sharpness penalty"): along ``x`` at ``x = 0`` the
    sharpness is ``y²`` (``H = diag(y², κ)``), and the
    ``κ`` term pulls ``y → y*`` (progressive sharpening when ``y* > y``). Once ``y² > 2/η`` GD oscillates in ``x``
    with amplitude ``δ``; the averaged gradient gains ``½∇³L[δ,δ] = (0, y δ²)``, which lowers ``y`` and with it the
    sharpness (self-stabilisation, Damian et al. 2022). The EoS 2-cycle of GD is an exact equilibrium of the rod
    flow for ``c = 0`` (the loss is a quartic polynomial). ``c ≠ 0`` breaks the ``x → −x`` symmetry (and makes
    the loss unbounded below: use small ``c``). ``seed`` is unused.

    Closed forms: ``∇L = (y² x + c x², y x² + κ (y − y*))``,
    ``H = [[y² + 2 c x, 2 x y], [2 x y, x² + κ]]``, third derivatives ``L_xxx = 2c, L_xxy = 2y, L_xyy = 2x,
    L_yyy = 0``; extra ``sharpness_x(w) = y² + 2 c x`` (the xx curvature).
    """
    kappa, ystar, c = _real("kappa", kappa), _real("ystar", ystar), _real("c", c)
    w_init = torch.tensor([_real("x0", x0), _real("y0", y0)], dtype=dtype, device=device)

    def loss_fn(w):
        # 1-element slices, not 0-d scalars: forward-mode AD upcasts float32 tangents of 0-d tensors combined with
        # Python numbers to float64 (pytorch/pytorch#90065), which would make float32 HVPs come back as float64.
        x, y = w[0:1], w[1:2]
        return (0.5 * y * y * x * x + 0.5 * kappa * (y - ystar) ** 2 + c * x ** 3 / 3).sum()

    def grad_cf(w):
        x, y = w[0], w[1]
        return torch.stack([y * y * x + c * x * x, y * x * x + kappa * (y - ystar)])

    def hess_cf(w):
        x, y = w[0], w[1]
        return torch.stack([torch.stack([y * y + 2 * c * x, 2 * x * y]), torch.stack([2 * x * y, x * x + kappa])])

    def d3_cf(w, u, v):
        x, y = w[0], w[1]
        # T_xxx = 2c, T_xxy = 2y, T_xyy = 2x, T_yyy = 0 (T fully symmetric)
        gx = 2 * c * u[0] * v[0] + 2 * y * (u[0] * v[1] + u[1] * v[0]) + 2 * x * u[1] * v[1]
        gy = 2 * y * u[0] * v[0] + 2 * x * (u[0] * v[1] + u[1] * v[0])
        return torch.stack([gx, gy])

    prob = Problem(loss_fn=loss_fn, w0=w_init, name="quartic",
                   blocks=(Block("x", 0, 1, (1,)), Block("y", 1, 2, (1,))))
    prob.closed_form = SimpleNamespace(loss=loss_fn, grad=grad_cf, hessian=hess_cf, d3=d3_cf,
                                       sharpness_x=lambda w: w[1] ** 2 + 2 * c * w[0])
    return prob


# ---------------------------------------------------------------------------------------- factorisations
def scalar_factorization(*, dtype=torch.float64, device="cpu", seed=0, a0=2.0, b0=0.2):
    """``L(a, b) = ½ (ab − 1)²``, ``w = (a, b)``, ``w0 = (a0, b0)``.

    Minima: the hyperbola ``ab = 1``, where ``H = [[b², 1], [1, a²]]`` has sharpness ``a² + b²`` (flattest at
    ``a = b = ±1``, sharpness 2). ``seed`` is unused.

    Closed forms (``r = ab − 1``): ``∇L = (r b, r a)``, ``H = [[b², 2ab − 1], [2ab − 1, a²]]``, third
    derivatives ``L_aab = 2b``, ``L_abb = 2a``, ``L_aaa = L_bbb = 0``; extra ``sharpness_at_minimum(w) = a² + b²``.
    """
    w_init = torch.tensor([_real("a0", a0), _real("b0", b0)], dtype=dtype, device=device)

    def loss_fn(w):
        return (0.5 * (w[0:1] * w[1:2] - 1) ** 2).sum()       # slices: see quartic (pytorch/pytorch#90065)

    def grad_cf(w):
        a, b = w[0], w[1]
        r = a * b - 1
        return torch.stack([r * b, r * a])

    def hess_cf(w):
        a, b = w[0], w[1]
        off = 2 * a * b - 1
        return torch.stack([torch.stack([b * b, off]), torch.stack([off, a * a])])

    def d3_cf(w, u, v):
        a, b = w[0], w[1]
        return torch.stack([2 * b * (u[0] * v[1] + u[1] * v[0]) + 2 * a * u[1] * v[1],
                            2 * b * u[0] * v[0] + 2 * a * (u[0] * v[1] + u[1] * v[0])])

    prob = Problem(loss_fn=loss_fn, w0=w_init, name="scalar_factorization",
                   blocks=(Block("a", 0, 1, (1,)), Block("b", 1, 2, (1,))))
    prob.closed_form = SimpleNamespace(loss=loss_fn, grad=grad_cf, hessian=hess_cf, d3=d3_cf,
                                       sharpness_at_minimum=lambda w: w[0] ** 2 + w[1] ** 2)
    return prob


def matrix_factorization(*, dtype=torch.float64, device="cpu", seed=0, rows=6, cols=5, rank=2, target_rank=None,
                         target=None, scale=1.0, init_scale=0.1):
    """``L(U, V) = ½ ‖U Vᵀ − M‖²_F / scale`` with ``U (rows, rank)``, ``V (cols, rank)`` (the brief's ``m × n``;
    named ``rows``/``cols`` because ``n`` is taken by ``pyrod.problem``'s data-size argument).

    ``w = concat(U.reshape(-1), V.reshape(-1))`` (row-major), ``d = (rows + cols)·rank``. The target ``M (rows, cols)``
    is ``target`` when given, else ``A Bᵀ / √target_rank`` with ``A (rows, target_rank)``, ``B (cols, target_rank)``
    standard normal (``target_rank`` defaults to ``rank``). ``U0, V0`` are ``init_scale · N(0, 1)``. All random draws
    come from numpy ``default_rng(seed)``.

    Closed forms, with ``R = UVᵀ − M`` and ``J(dU, dV) = dU Vᵀ + U dVᵀ``:
    ``∇_U L = R V / s``, ``∇_V L = Rᵀ U / s``; ``H (dU, dV) = (J V + R dV, Jᵀ U + Rᵀ dU) / s``;
    ``∇_w(aᵀ H b) = (J(b) a_V + J(a) b_V + P V, J(b)ᵀ a_U + J(a)ᵀ b_U + Pᵀ U) / s`` with ``P = a_U b_Vᵀ + b_U a_Vᵀ``.
    Extras: ``hvp(w, v)``, ``target``, ``unpack(w) -> (U, V)``.
    """
    for nm, v in (("rows", rows), ("cols", cols), ("rank", rank)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{nm}={v!r} must be a positive int")
    scale, init_scale = _real("scale", scale), _real("init_scale", init_scale)
    if scale <= 0:
        raise ValueError(f"scale={scale!r} must be > 0")
    rng = np.random.default_rng(seed)
    if target is None:
        tr = rank if target_rank is None else target_rank
        if not isinstance(tr, int) or isinstance(tr, bool) or tr < 1:
            raise ValueError(f"target_rank={target_rank!r} must be a positive int or None")
        M_np = rng.standard_normal((rows, tr)) @ rng.standard_normal((cols, tr)).T / math.sqrt(tr)
    else:
        if target_rank is not None:
            raise ValueError(f"target_rank={target_rank!r} cannot be combined with an explicit target")
        M_np = np.asarray(target, dtype=np.float64)
        if M_np.shape != (rows, cols) or not np.isfinite(M_np).all():
            raise ValueError(f"target must be a finite {rows}×{cols} matrix (rows={rows}, cols={cols}), "
                             f"got shape {M_np.shape}")
    U0 = init_scale * rng.standard_normal((rows, rank))
    V0 = init_scale * rng.standard_normal((cols, rank))
    M = torch.as_tensor(M_np, dtype=dtype, device=device)
    w_init = torch.as_tensor(np.concatenate([U0.ravel(), V0.ravel()]), dtype=dtype, device=device)
    nU = rows * rank
    d = nU + cols * rank

    def unpack(w):
        return w[:nU].reshape(rows, rank), w[nU:].reshape(cols, rank)

    def pack(gU, gV):
        return torch.cat([gU.reshape(-1), gV.reshape(-1)])

    def loss_fn(w):
        U, V = unpack(w)
        return 0.5 * ((U @ V.T - M) ** 2).sum() / scale

    def grad_cf(w):
        U, V = unpack(w)
        R = U @ V.T - M
        return pack(R @ V, R.T @ U) / scale

    def hvp_cf(w, v):
        U, V = unpack(w)
        dU, dV = unpack(v)
        R = U @ V.T - M
        J = dU @ V.T + U @ dV.T
        return pack(J @ V + R @ dV, J.T @ U + R.T @ dU) / scale

    def hess_cf(w):
        eye = torch.eye(d, dtype=w.dtype, device=w.device)
        return torch.stack([hvp_cf(w, eye[:, i]) for i in range(d)], dim=1)

    def d3_cf(w, a, b):
        U, V = unpack(w)
        aU, aV = unpack(a)
        bU, bV = unpack(b)
        Ja, Jb = aU @ V.T + U @ aV.T, bU @ V.T + U @ bV.T
        P = aU @ bV.T + bU @ aV.T
        return pack(Jb @ aV + Ja @ bV + P @ V, Jb.T @ aU + Ja.T @ bU + P.T @ U) / scale

    prob = Problem(loss_fn=loss_fn, w0=w_init, name=f"matrix_factorization{rows}x{cols}r{rank}",
                   blocks=(Block("U", 0, nU, (rows, rank)), Block("V", nU, d, (cols, rank))))
    prob.closed_form = SimpleNamespace(loss=loss_fn, grad=grad_cf, hessian=hess_cf, d3=d3_cf, hvp=hvp_cf,
                                       target=M, unpack=unpack)
    return prob


TOYS = {
    "quadratic": quadratic,
    "quartic": quartic,
    "scalar_factorization": scalar_factorization,
    "matrix_factorization": matrix_factorization,
}
