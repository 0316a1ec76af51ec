"""The two-view Sampson refinement, compiled: residuals, their analytic Jacobian and the Gauss-Newton loop.

:func:`realm_ros.geometry.pose.refine_two_view` runs here. Written with numpy arrays of a few hundred
correspondences, each of its ten iterations was ~40 small array operations (~0.3 ms of interpreter and dispatch per
iteration, ~3.4 ms per refinement, three refinements per pose step); one compiled pass over the correspondences per
iteration does the same arithmetic in a few microseconds. Same model as before: the step is
``(exp(w) R, normalise(t + d3 b1 + d4 b2))`` with ``b1, b2`` an orthonormal basis of the plane normal to ``t``; the
residual of a correspondence is its signed Sampson distance ``x2^T E x1 / |grad|`` with ``E = [t]x R``; Huber weights
when ``huber > 0``. The 5 x 5 normal equations are solved by Gaussian elimination with partial pivoting (what
``numpy.linalg.solve`` does through LAPACK); a zero pivot ends the loop like numpy's ``LinAlgError`` did.
"""
from __future__ import annotations

import math

import numpy as np

from realm_ros.events._jit import HAVE_NUMBA, njit

__all__ = ['HAVE_NUMBA', 'direction_basis', 'refine_sampson', 'sampson_jacobian', 'so3_exp']


@njit
def _skew(v: np.ndarray) -> np.ndarray:
    out = np.zeros((3, 3))
    out[0, 1], out[0, 2] = -v[2], v[1]
    out[1, 0], out[1, 2] = v[2], -v[0]
    out[2, 0], out[2, 1] = -v[1], v[0]
    return out


@njit
def _matmul3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]
    return out


@njit
def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``w`` (the formula of ``cv2.Rodrigues``)."""
    theta = math.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2])
    R = np.eye(3)
    if theta < 2.220446049250313e-16:
        return R
    c, s = math.cos(theta), math.sin(theta)
    c1 = 1.0 - c
    r = w / theta
    rx = _skew(r)
    for i in range(3):
        for j in range(3):
            R[i, j] = (c if i == j else 0.0) + c1 * r[i] * r[j] + s * rx[i, j]
    return R


@njit
def direction_basis(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis ``(b1, b2)`` of the plane normal to the unit vector ``t``."""
    a = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    b1 = np.cross(t, a)
    b1 /= math.sqrt(b1[0] * b1[0] + b1[1] * b1[1] + b1[2] * b1[2])
    return b1, np.cross(t, b1)


@njit
def sampson_jacobian(R: np.ndarray, t: np.ndarray, b1: np.ndarray, b2: np.ndarray, x1: np.ndarray,
                     x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (N,) and their Jacobian (N, 5) with respect to the step at 0 (normalised coordinates x1, x2 (N, 2)):
    rotation ``exp(w) R`` (``dE/dw_k = [t]x [e_k]x R``), translation direction ``t + d3 b1 + d4 b2``
    (``dE/dd = [b]x R``; the normalisation is of second order). For ``r = n / sqrt(q)``:
    ``dr = dn / sqrt(q) - n dq / (2 q^(3/2))``."""
    tx = _skew(t)
    E = _matmul3(tx, R)
    gens = np.empty((5, 3, 3))
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        gens[k] = _matmul3(tx, _matmul3(_skew(e), R))
    gens[3] = _matmul3(_skew(b1), R)
    gens[4] = _matmul3(_skew(b2), R)
    n = x1.shape[0]
    r = np.empty(n)
    J = np.empty((n, 5))
    for i in range(n):
        u1, v1, u2, v2 = x1[i, 0], x1[i, 1], x2[i, 0], x2[i, 1]
        e0 = E[0, 0] * u1 + E[0, 1] * v1 + E[0, 2]             # E h1
        e1 = E[1, 0] * u1 + E[1, 1] * v1 + E[1, 2]
        e2 = E[2, 0] * u1 + E[2, 1] * v1 + E[2, 2]
        f0 = E[0, 0] * u2 + E[1, 0] * v2 + E[2, 0]             # E^T h2
        f1 = E[0, 1] * u2 + E[1, 1] * v2 + E[2, 1]
        num = u2 * e0 + v2 * e1 + e2
        root = math.sqrt(max(e0 * e0 + e1 * e1 + f0 * f0 + f1 * f1, 1e-24))
        r[i] = num / root
        for k in range(5):
            G = gens[k]
            g0 = G[0, 0] * u1 + G[0, 1] * v1 + G[0, 2]
            g1 = G[1, 0] * u1 + G[1, 1] * v1 + G[1, 2]
            g2 = G[2, 0] * u1 + G[2, 1] * v1 + G[2, 2]
            k0 = G[0, 0] * u2 + G[1, 0] * v2 + G[2, 0]
            k1 = G[0, 1] * u2 + G[1, 1] * v2 + G[2, 1]
            dnum = u2 * g0 + v2 * g1 + g2
            dden = 2.0 * (e0 * g0 + e1 * g1 + f0 * k0 + f1 * k1)
            J[i, k] = dnum / root - num * dden / (2.0 * root * root * root)
    return r, J


@njit
def _solve5(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
    """``A x = b`` (5 x 5) by Gaussian elimination with partial pivoting; ``ok`` False on a zero pivot."""
    n = 5
    M = A.copy()
    x = b.copy()
    for c in range(n):
        p = c
        for i in range(c + 1, n):
            if abs(M[i, c]) > abs(M[p, c]):
                p = i
        if M[p, c] == 0.0:
            return x, False
        if p != c:
            for j in range(n):
                M[c, j], M[p, j] = M[p, j], M[c, j]
            x[c], x[p] = x[p], x[c]
        for i in range(c + 1, n):
            f = M[i, c] / M[c, c]
            for j in range(c, n):
                M[i, j] -= f * M[c, j]
            x[i] -= f * x[c]
    for c in range(n - 1, -1, -1):
        s = x[c]
        for j in range(c + 1, n):
            s -= M[c, j] * x[j]
        x[c] = s / M[c, c]
    return x, True


@njit
def refine_sampson(R: np.ndarray, t: np.ndarray, x1: np.ndarray, x2: np.ndarray, huber: float,
                   iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton (Huber-reweighted when ``huber`` > 0) on the Sampson residuals from ``(R, unit t)``; returns
    ``(R, unit t)``. Stops early on a step below 1e-10, a non-finite step or singular normal equations."""
    R = R.copy()
    t = t.copy()
    for _ in range(iterations):
        b1, b2 = direction_basis(t)
        r, J = sampson_jacobian(R, t, b1, b2, x1, x2)
        H = np.zeros((5, 5))
        g = np.zeros(5)
        for i in range(r.shape[0]):
            w = 1.0
            if huber > 0:
                ar = abs(r[i])
                w = 1.0 if ar <= huber else huber / max(ar, 1e-30)
            for a in range(5):
                wa = w * J[i, a]
                g[a] += wa * r[i]
                for c in range(5):
                    H[a, c] += wa * J[i, c]
        damp = 1e-12 * (H[0, 0] + H[1, 1] + H[2, 2] + H[3, 3] + H[4, 4])
        for a in range(5):
            H[a, a] += damp
        step, ok = _solve5(H, g)
        if not ok:
            break
        finite = True
        for a in range(5):
            step[a] = -step[a]
            if not math.isfinite(step[a]):
                finite = False
        if not finite:
            break
        R = _matmul3(so3_exp(step[:3]), R)
        tp = t + step[3] * b1 + step[4] * b2
        t = tp / math.sqrt(tp[0] * tp[0] + tp[1] * tp[1] + tp[2] * tp[2])
        if math.sqrt(np.sum(step * step)) < 1e-10:
            break
    return R, t
