"""The two-view Sampson refinement's Gauss-Newton loop as plain numpy (what ``refine_two_view`` ran before it was
compiled): the reference the compiled loop is tested against and the baseline ``benchmarks/bench_pose_step.py``
times it against, around any Jacobian (analytic, or central differences of the residuals)."""
from typing import Any, Callable, Tuple

import cv2
import numpy as np


def perturbed(R: Any, t: Any, basis: Tuple[Any, Any], d: Any) -> Tuple[np.ndarray, np.ndarray]:
    """``(exp(d[:3]) R, normalise(t + d[3] b1 + d[4] b2))``: the refinement's step."""
    tp = t + d[3] * basis[0] + d[4] * basis[1]
    return cv2.Rodrigues(np.asarray(d[:3], np.float64).reshape(3, 1))[0] @ R, tp / np.linalg.norm(tp)


def direction_basis(t: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis of the plane normal to the unit vector ``t`` (the refinement's rule, in numpy)."""
    a = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    b1 = np.cross(t, a)
    b1 /= np.linalg.norm(b1)
    return b1, np.cross(t, b1)


def gauss_newton(R: Any, t: Any, huber: float, jacobian: Callable[[Any, Any, Any], Tuple[Any, Any]],
                 basis: Callable[[Any], Tuple[Any, Any]] = direction_basis, iterations: int = 10
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """The loop around ``jacobian(R, t, basis) -> (residuals (N,), J (N, 5))``: Huber weights when ``huber`` > 0,
    normal equations damped by 1e-12 of their trace, stop on a step below 1e-10."""
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64) / np.linalg.norm(t)
    for _ in range(iterations):
        b = basis(t)
        r0, J = jacobian(R, t, b)
        ar = np.abs(r0)
        w = np.where(ar <= huber, 1.0, huber / np.maximum(ar, 1e-30)) if huber > 0 else np.ones_like(r0)
        H = J.T @ (J * w[:, None])
        step = -np.linalg.solve(H + 1e-12 * np.trace(H) * np.eye(5), J.T @ (w * r0))
        R, t = perturbed(R, t, b, step)
        if float(np.linalg.norm(step)) < 1e-10:
            break
    return R, t
