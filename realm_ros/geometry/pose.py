"""Relative pose from MASt3R matches: PnP-RANSAC (OpenCV SQPnP) between a keyframe's pointmap and current pixels.

Conventions
-----------
* Pixels: OpenCV convention, integer coordinates are pixel centres; (x, y) = (column, row).
* Intrinsics ``K`` belong to the image the pixels live in, i.e. the *model input* (448 x 448 after crop / resize /
  padding, or one tile). :class:`PixelTransform` maps sensor pixels to model pixels and adjusts ``K`` accordingly
  (:func:`intrinsics_after_crop`, :func:`intrinsics_after_resize`, :func:`intrinsics_after_pad`).
* The keyframe is view 1 of the decoder pair: its ``pts3d`` (H, W, 3) are in the keyframe camera frame. The current
  view is view 2: its matched pixels are the 2D side of PnP.
* :class:`PoseResult` holds ``R``, ``t`` of ``T_cur_ref`` (keyframe-frame points -> current camera frame, the
  OpenCV ``rvec/tvec`` pose) and ``T_ref_cur`` (the current camera's pose in the keyframe camera frame: the motion
  a robot wants). Its covariance (6 x 6, order x, y, z, rx, ry, rz as in ROS ``PoseWithCovariance``) is for
  ``T_ref_cur`` with a small rotation applied on the left (about the keyframe-frame axes).
* Degenerate or failed estimates are not raised: ``PoseResult.ok`` is False and ``reason`` says why
  (``too_few_matches``, ``non_finite_input``, ``degenerate_points``, ``degenerate_pixels``, ``pnp_failed``,
  ``non_finite_pose``, ``too_few_inliers``, ``low_inlier_ratio``, ``cheirality``, ``ill_conditioned``; the
  essential solver also ``essential_failed`` and ``inconsistent_scale``).
* Two solvers (:class:`PnpParams` ``solver``): PnP-RANSAC (:func:`solve_pnp`) uses the keyframe pointmap for the
  whole pose; the essential solver (:func:`solve_essential`) takes rotation and translation direction from the
  matched pixels alone (an essential matrix, MAGSAC++, then a robust Sampson refinement) and only the length of the
  translation from the pointmap. When the pointmap is much less accurate than the matches (event tokens through a
  decoder trained on RGB), the second is far more accurate (models/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from . import _sampson_jit

__all__ = [
    'PixelTransform', 'PnpParams', 'PoseResult', 'intrinsics_after_crop', 'intrinsics_after_resize',
    'intrinsics_after_pad', 'solve_pnp', 'solve_relative_pose_pnp', 'correspondences_from_matches', 'confidence_mask',
    'rotation_angle_deg', 'POSE_SOLVERS', 'solve_essential', 'sampson_residuals', 'refine_two_view',
    'normalised_pixels', 'metric_scale_from_points', 'parallax_deg', 'points_from_depth', 'solve_kept_matches',
    'warm_up_refinement',
]


# ---------------------------------------------------------------------------------------------------------------
# Intrinsics under crop / resize / padding / tiling

def _as_K(K: Any) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise ValueError(f'intrinsics must be a finite 3x3 matrix, got shape {K.shape}')
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'intrinsics need positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}')
    return K


@dataclass(frozen=True)
class PixelTransform:
    """Axis-aligned affine pixel map from a source image to a derived one: ``x' = sx*x + tx``, ``y' = sy*y + ty``.

    Built from :meth:`crop`, :meth:`resize` and :meth:`pad` and chained with :meth:`then` (first ``self``, then
    ``other``). A tile of a tiled input is a crop. Pixel centres are at integer coordinates.
    """

    sx: float = 1.0
    sy: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    @classmethod
    def crop(cls, x0: float, y0: float) -> PixelTransform:
        """Keep the region starting at column ``x0``, row ``y0`` (its size does not change the intrinsics)."""
        return cls(1.0, 1.0, -float(x0), -float(y0))

    @classmethod
    def pad(cls, left: float, top: float) -> PixelTransform:
        """Add ``left`` columns and ``top`` rows before the image (right/bottom padding does not matter)."""
        return cls(1.0, 1.0, float(left), float(top))

    @classmethod
    def resize(cls, src_wh: Sequence[int], dst_wh: Sequence[int]) -> PixelTransform:
        """Resample ``src_wh = (W, H)`` to ``dst_wh`` (pixel-area convention of cv2.resize / align_corners=False):
        ``x' = (x + 0.5) * W'/W - 0.5``."""
        (w, h), (w2, h2) = src_wh, dst_wh
        if min(w, h, w2, h2) <= 0:
            raise ValueError(f'resize sizes must be positive, got {src_wh} -> {dst_wh}')
        sx, sy = w2 / w, h2 / h
        return cls(sx, sy, 0.5 * sx - 0.5, 0.5 * sy - 0.5)

    def then(self, other: PixelTransform) -> PixelTransform:
        """Apply ``self`` first, then ``other``."""
        return PixelTransform(other.sx * self.sx, other.sy * self.sy,
                              other.sx * self.tx + other.tx, other.sy * self.ty + other.ty)

    def apply_to_intrinsics(self, K: Any) -> np.ndarray:
        """Intrinsics of the derived image (``fx' = sx fx``, ``cx' = sx cx + tx``; skew scales with sx)."""
        K = _as_K(K)
        A = np.array([[self.sx, 0.0, self.tx], [0.0, self.sy, self.ty], [0.0, 0.0, 1.0]])
        return A @ K

    def map_points(self, xy: Any) -> np.ndarray:
        """Source pixel coordinates (N, 2) -> derived image coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy * np.array([self.sx, self.sy]) + np.array([self.tx, self.ty])

    def unmap_points(self, xy: Any) -> np.ndarray:
        """Derived image pixel coordinates (N, 2) -> source image coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - np.array([self.tx, self.ty])) / np.array([self.sx, self.sy])


def intrinsics_after_crop(K: Any, x0: float, y0: float) -> np.ndarray:
    """``K`` of the crop whose top-left source pixel is (x0, y0)."""
    return PixelTransform.crop(x0, y0).apply_to_intrinsics(K)


def intrinsics_after_resize(K: Any, src_wh: Sequence[int], dst_wh: Sequence[int]) -> np.ndarray:
    """``K`` after resizing a (W, H) image to ``dst_wh`` (pixel centres; see :meth:`PixelTransform.resize`)."""
    return PixelTransform.resize(src_wh, dst_wh).apply_to_intrinsics(K)


def intrinsics_after_pad(K: Any, left: float, top: float) -> np.ndarray:
    """``K`` after padding ``left`` columns / ``top`` rows in front of the image."""
    return PixelTransform.pad(left, top).apply_to_intrinsics(K)


# ---------------------------------------------------------------------------------------------------------------
# Results and parameters

_RANSAC_FLAGS = {'sqpnp': cv2.SOLVEPNP_SQPNP, 'ap3p': cv2.SOLVEPNP_AP3P}


POSE_SOLVERS = ('pnp', 'essential')


@dataclass(frozen=True)
class PnpParams:
    """Relative-pose solver settings and acceptance thresholds.

    ``solver`` ``'pnp'`` (default of this class; MASt3R visloc: PnP-RANSAC of the keyframe pointmap against the
    current pixels, SQPnP, 5 px, 0.9999) or ``'essential'`` (:func:`solve_essential`: the essential matrix of the
    matched pixels, MAGSAC++, ``essential_threshold_px``; metric scale from the keyframe pointmap). The confidence
    thresholds, minimum counts and degeneracy checks apply to both solvers.
    """

    reprojection_error_px: float = 5.0
    iterations: int = 10_000
    confidence: float = 0.9999
    min_correspondences: int = 12
    min_inliers: int = 12
    min_inlier_ratio: float = 0.1
    point_conf_threshold: float = 1.5       # keyframe pts3d confidence (1 + exp) at the matched pixel
    desc_conf_threshold: float = 1.001      # min(desc_conf keyframe, desc_conf current), as visloc
    max_points: int = 100_000
    refine: bool = True                     # Levenberg-Marquardt refinement on the inliers
    min_point_spread: float = 1e-3          # 2nd singular value / 1st of the centred 3D points
    min_pixel_spread_px: float = 2.0        # 2nd singular value (px, RMS) of the centred pixels
    max_condition: float = 1e10             # of the 6x6 Gauss-Newton matrix
    seed: int | None = 0                    # OpenCV RNG seed (reproducible RANSAC); None leaves it alone
    ransac_kernel: str = 'sqpnp'            # hypotheses: 'sqpnp' (OpenCV: EPnP on 5 points, SQPnP on the inliers)
    #                                         or 'ap3p' (4 points, EPnP on the inliers; ~2.5x cheaper per call)

    solver: str = 'pnp'                     # 'pnp' | 'essential' (see the class docstring)
    essential_threshold_px: float = 2.0     # MAGSAC++ threshold (px in the current image) of the essential solver
    essential_confidence: float = 0.999
    essential_iterations: int = 1000
    huber_px: float = 1.0                   # Huber scale (px) of the Sampson refinement; <= 0: plain least squares
    # the essential solver's translation length uses only inliers seen under at least this parallax (angle between
    # the rotated keyframe ray and the current ray) when at least length_min_points have it (else every inlier: a
    # short baseline); 0 uses every inlier (the length then shrinks with the baseline: see metric_scale_from_points)
    length_min_parallax_deg: float = 3.0
    length_min_points: int = 6

    def __post_init__(self) -> None:
        if self.solver not in POSE_SOLVERS:
            raise ValueError(f'PnpParams.solver must be one of {list(POSE_SOLVERS)}, got {self.solver!r}')
        if self.ransac_kernel not in _RANSAC_FLAGS:
            raise ValueError(f'PnpParams.ransac_kernel must be one of {sorted(_RANSAC_FLAGS)}, '
                             f'got {self.ransac_kernel!r}')


@dataclass(frozen=True)
class PoseResult:
    """Outcome of a pose estimate; ``ok`` False means rejected, with ``reason`` and whatever was measured."""

    ok: bool
    reason: str = ''
    R: np.ndarray | None = None                    # 3x3 of T_cur_ref
    t: np.ndarray | None = None                    # (3,) of T_cur_ref
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    num_correspondences: int = 0
    reprojection_error_px: float = float('nan')    # RMS over inliers
    covariance: np.ndarray | None = None           # 6x6 of T_ref_cur, order x y z rx ry rz

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.shape[0])

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_correspondences if self.num_correspondences else 0.0

    @property
    def T_cur_ref(self) -> np.ndarray:
        """4x4 transform of keyframe-camera points into the current camera frame."""
        if self.R is None or self.t is None:
            raise ValueError(f'no pose: estimate rejected ({self.reason})')
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    @property
    def T_ref_cur(self) -> np.ndarray:
        """4x4 pose of the current camera in the keyframe camera frame (the camera motion)."""
        T = self.T_cur_ref
        inv = np.eye(4)
        inv[:3, :3] = T[:3, :3].T
        inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
        return inv

    @property
    def rotation_deg(self) -> float:
        """Rotation angle between keyframe and current camera (degrees)."""
        return rotation_angle_deg(self.R) if self.R is not None else float('nan')

    @property
    def translation_norm(self) -> float:
        """Distance between keyframe and current camera centres (pointmap units, metres for metric MASt3R)."""
        return float(np.linalg.norm(self.T_ref_cur[:3, 3])) if self.R is not None else float('nan')


def rotation_angle_deg(R: Any) -> float:
    """Angle of a rotation matrix in degrees."""
    c = (np.trace(np.asarray(R, dtype=np.float64)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _reject(reason: str, n: int, **kw: Any) -> PoseResult:
    return PoseResult(ok=False, reason=reason, num_correspondences=n, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Solvers

def _so3_exp(w: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(w, dtype=np.float64).reshape(3, 1))[0]


def _so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector of ``R``, exact for small angles too (``cv2.Rodrigues`` returns 0 below ~1e-5 rad, which
    made the numeric Jacobian of an identity rotation singular)."""
    R = np.asarray(R, dtype=np.float64)
    v = 0.5 * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    s = float(np.linalg.norm(v))
    c = (float(np.trace(R)) - 1.0) / 2.0
    if s < 1e-3:                                   # angle / sin(angle) = 1 + angle^2 / 6 + ...
        return v * (1.0 + s * s / 6.0) if c > 0 else cv2.Rodrigues(R)[0].reshape(3)
    return v * (np.arctan2(s, c) / s)


def _camera_pose_covariance(pts: np.ndarray, uv: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                            max_condition: float) -> tuple[np.ndarray | None, float]:
    """Covariance of T_ref_cur from the inlier reprojection residuals (Gauss-Newton, numeric Jacobian)."""
    Rc, tc = R.T, -R.T @ t                        # camera pose in the keyframe frame

    def residuals(delta: np.ndarray) -> np.ndarray:
        Rp = _so3_exp(delta[3:]) @ Rc
        tp = tc + delta[:3]
        Rcr, tcr = Rp.T, -Rp.T @ tp
        proj, _ = cv2.projectPoints(pts, _so3_log(Rcr), tcr, K, None)
        return (proj.reshape(-1, 2) - uv).reshape(-1)

    r0 = residuals(np.zeros(6))
    scale = max(1e-3, float(np.median(np.linalg.norm(pts, axis=1))))
    eps = np.array([1e-6 * scale] * 3 + [1e-6] * 3)
    J = np.empty((r0.size, 6))
    for i in range(6):
        d = np.zeros(6)
        d[i] = eps[i]
        J[:, i] = (residuals(d) - residuals(-d)) / (2 * eps[i])
    H = J.T @ J
    dof = max(1, r0.size - 6)
    sigma2 = float(r0 @ r0) / dof
    cond = float(np.linalg.cond(H))
    if not np.isfinite(cond) or cond > max_condition:
        return None, cond
    return sigma2 * np.linalg.inv(H), cond


def _checked_pose(R: np.ndarray, t: np.ndarray, pts: np.ndarray, uv: np.ndarray, K: np.ndarray, inl: np.ndarray,
                  index: np.ndarray, n_in: int, params: PnpParams, metric_cheirality: bool = True) -> PoseResult:
    """The checks both solvers end with (inlier count and ratio, cheirality of the inlier points, a conditioned
    covariance) and the accepted :class:`PoseResult` of ``T_cur_ref = (R, t)``: ``inl`` indexes the filtered
    correspondences ``pts`` / ``uv``, ``index`` maps them back to the caller's input (``n_in`` correspondences).
    ``metric_cheirality`` False skips the check that the inlier points lie in front of the current camera."""
    inliers = index[inl]
    partial = dict(R=R, t=t, inliers=inliers)
    if inl.size < params.min_inliers:
        return _reject('too_few_inliers', n_in, **partial)
    if inl.size / n_in < params.min_inlier_ratio:
        return _reject('low_inlier_ratio', n_in, **partial)
    if metric_cheirality and np.mean((pts[inl] @ R.T + t)[:, 2] > 0) < 0.9:
        return _reject('cheirality', n_in, **partial)
    proj, _ = cv2.projectPoints(pts[inl], cv2.Rodrigues(R)[0], t, K, None)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - uv[inl]) ** 2, axis=1))))
    cov, _cond = _camera_pose_covariance(pts[inl], uv[inl], K, R, t, params.max_condition)
    if cov is None:
        return _reject('ill_conditioned', n_in, reprojection_error_px=rms, **partial)
    return PoseResult(ok=True, R=R, t=t, inliers=inliers, num_correspondences=n_in, reprojection_error_px=rms,
                      covariance=cov)


def solve_pnp(points3d: Any, pixels: Any, K: Any, params: PnpParams = PnpParams()) -> PoseResult:
    """PnP-RANSAC (``cv2.solvePnPRansac`` with ``SOLVEPNP_SQPNP``) plus checks, refinement and covariance.

    Args:
        points3d: (N, 3) points in the reference (keyframe) camera frame.
        pixels: (N, 2) their observations (x, y) in the current image.
        K: 3x3 intrinsics of the current image (the image the pixels live in).
        params: thresholds, see :class:`PnpParams`.
    """
    K = _as_K(K)
    pts = np.asarray(points3d, dtype=np.float64).reshape(-1, 3)
    uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] != uv.shape[0]:
        raise ValueError(f'points3d ({pts.shape[0]}) and pixels ({uv.shape[0]}) differ in length')
    n_in = pts.shape[0]
    finite = np.isfinite(pts).all(1) & np.isfinite(uv).all(1)
    if n_in and not finite.any():
        return _reject('non_finite_input', n_in)
    index = np.nonzero(finite)[0]
    pts, uv = pts[index], uv[index]
    n = pts.shape[0]
    if n < max(params.min_correspondences, 5):
        return _reject('too_few_matches', n_in)
    if n > params.max_points:
        keep = np.random.default_rng(0).choice(n, params.max_points, replace=False)
        keep.sort()
        index, pts, uv, n = index[keep], pts[keep], uv[keep], params.max_points

    centred = pts - pts.mean(0)
    s3 = np.linalg.svd(centred / np.sqrt(n), compute_uv=False)
    if s3[0] <= 0 or s3[1] / s3[0] < params.min_point_spread:
        return _reject('degenerate_points', n_in)
    s2 = np.linalg.svd((uv - uv.mean(0)) / np.sqrt(n), compute_uv=False)
    if s2[1] < params.min_pixel_spread_px:
        return _reject('degenerate_pixels', n_in)

    if params.seed is not None:
        cv2.setRNGSeed(int(params.seed))
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            pts, uv, K, None, iterationsCount=int(params.iterations),
            reprojectionError=float(params.reprojection_error_px), confidence=float(params.confidence),
            flags=_RANSAC_FLAGS[params.ransac_kernel])
    except cv2.error as exc:
        return _reject(f'pnp_failed: {str(exc).strip().splitlines()[-1][:120]}', n_in)
    if not ok or inl is None or rvec is None:
        return _reject('pnp_failed', n_in)
    if not (np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))):
        return _reject('non_finite_pose', n_in)
    inl = inl.reshape(-1)
    if params.refine and inl.size >= 6:
        rvec, tvec = cv2.solvePnPRefineLM(pts[inl], uv[inl], K, None, rvec.copy(), tvec.copy())
        if not (np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))):
            return _reject('non_finite_pose', n_in)
        # re-score all correspondences with the refined pose
        proj, _ = cv2.projectPoints(pts, rvec, tvec, K, None)
        err = np.linalg.norm(proj.reshape(-1, 2) - uv, axis=1)
        inl = np.nonzero(err <= params.reprojection_error_px)[0]
    return _checked_pose(cv2.Rodrigues(rvec)[0], tvec.reshape(3), pts, uv, K, inl, index, n_in, params)


def normalised_pixels(xy: Any, K: Any) -> np.ndarray:
    """Pixels (N, 2) -> normalised image coordinates ``K^-1 [x, y, 1]`` (first two components; no skew assumed
    beyond what ``K`` holds)."""
    K = _as_K(K)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    y = (xy[:, 1] - K[1, 2]) / K[1, 1]
    x = (xy[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return np.stack([x, y], axis=1)


def points_from_depth(depth: Any, xy: np.ndarray, K: Any) -> np.ndarray:
    """3-D points (N, 3) of integer pixels ``xy`` (x, y) of a depth map (H, W; tensor or array, z-depth along the
    optical axis) with intrinsics ``K``; NaN where the depth is not finite and positive."""
    d = depth.detach().float().cpu().numpy() if hasattr(depth, 'detach') else np.asarray(depth, dtype=np.float64)
    d = d.reshape(d.shape[-2], d.shape[-1])
    z = d[xy[:, 1], xy[:, 0]].astype(np.float64)
    z = np.where(np.isfinite(z) & (z > 0), z, np.nan)
    return np.concatenate([normalised_pixels(xy, K), np.ones((len(xy), 1))], axis=1) * z[:, None]


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _homogeneous(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def sampson_residuals(R: np.ndarray, t: np.ndarray, x_ref: np.ndarray, x_cur: np.ndarray) -> np.ndarray:
    """Signed Sampson distances (normalised coordinates) of correspondences under ``T_cur_ref = (R, t)``:
    ``x_cur^T E x_ref / |grad|`` with ``E = [t]x R``."""
    E = _skew(t) @ R
    h1, h2 = _homogeneous(x_ref), _homogeneous(x_cur)
    Ex1 = h1 @ E.T
    Etx2 = h2 @ E
    num = np.sum(h2 * Ex1, axis=1)
    den = Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2
    return num / np.sqrt(np.maximum(den, 1e-24))


def refine_two_view(R: np.ndarray, t: np.ndarray, x_ref: np.ndarray, x_cur: np.ndarray, huber: float = 0.0,
                    iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton on the Sampson residuals over rotation and translation *direction* (5 degrees of freedom);
    ``(R, t)`` of ``T_cur_ref`` with any ``|t| > 0``, returns ``(R, unit t)``. ``huber`` > 0 (normalised units):
    iteratively reweighted with Huber weights (outliers the RANSAC let through pull less). The step is
    ``(exp(w) R, normalise(t + d3 b1 + d4 b2))`` with an analytic Jacobian; the loop runs compiled
    (:func:`realm_ros.geometry._sampson_jit.refine_sampson`: ~0.26 ms for 450 correspondences where the same
    arithmetic as numpy array operations took ~3 ms)."""
    R = np.ascontiguousarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    t = t / np.linalg.norm(t)
    x1 = np.ascontiguousarray(x_ref, dtype=np.float64).reshape(-1, 2)
    x2 = np.ascontiguousarray(x_cur, dtype=np.float64).reshape(-1, 2)
    return _sampson_jit.refine_sampson(R, t, x1, x2, float(huber), int(iterations))


def warm_up_refinement() -> None:
    """Compile / load the Sampson refinement once (numba: a few seconds the first time on a machine, then ~0.4 s from
    its cache), e.g. when a pose worker starts, so that the first pose step does not pay it."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.3, (8, 2))
    refine_two_view(np.eye(3), np.array([0.0, 0.0, 1.0]), x, x + 0.01, huber=1e-3, iterations=1)


def parallax_deg(R: np.ndarray, x_ref: np.ndarray, x_cur: np.ndarray) -> np.ndarray:
    """Angle (degrees) between each keyframe ray rotated into the current camera (``R [x_ref, 1]``) and the current
    ray ``[x_cur, 1]`` (normalised coordinates, N x 2 each): the parallax the translation caused, rotation removed."""
    a = np.concatenate([x_ref, np.ones((len(x_ref), 1))], axis=1) @ np.asarray(R, dtype=np.float64).T
    b = np.concatenate([x_cur, np.ones((len(x_cur), 1))], axis=1)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, axis=1)))


def metric_scale_from_points(R: np.ndarray, t_unit: np.ndarray, points_ref: np.ndarray, x_cur: np.ndarray) -> float:
    """Length ``s`` of the translation for which the keyframe points ``points_ref`` (N, 3) reproject onto their
    matches ``x_cur`` (normalised, N x 2) under ``(R, s t_unit)``: per point and image axis ``s`` solves
    ``u (Y_z + s t_z) = Y_x + s t_x`` (``Y = R X``); the median over all equations whose coefficient is not tiny
    (robust to wrong depths). NaN when fewer than 3 equations are usable.

    Give it matches with parallax (:func:`parallax_deg`): a match that did not move although its point is near
    says ``s = 0``, and such "stuck" matches are essential-matrix inliers for any translation when the rotation is
    small. The miniature decoder's matches of large flows are mostly stuck (validation event pairs 0.4-1.2 m apart:
    59-84 % of the matches whose true flow exceeds 3 px moved less than a third of it), which pulled the median
    length of the confidence-filtered matches to 0.58x of the truth at 6 frames and 0.31x at 12; from those with
    >= 3 deg parallax 0.88x / 0.43x."""
    Y = points_ref @ R.T
    a = np.concatenate([x_cur[:, 0] * t_unit[2] - t_unit[0], x_cur[:, 1] * t_unit[2] - t_unit[1]])
    b = np.concatenate([Y[:, 0] - x_cur[:, 0] * Y[:, 2], Y[:, 1] - x_cur[:, 1] * Y[:, 2]])
    ok = np.abs(a) > 1e-3
    if int(ok.sum()) < 3:
        return float('nan')
    return float(np.median(b[ok] / a[ok]))


def solve_essential(xy_ref: Any, xy_cur: Any, K_ref: Any, K_cur: Any, points3d_ref: Any,
                    params: PnpParams = PnpParams(solver='essential')) -> PoseResult:
    """Relative pose from matched pixels: essential matrix (``cv2.findEssentialMat``, MAGSAC++), the cheirality
    check of ``cv2.recoverPose``, a robust Sampson refinement on the inliers, then the metric length of the
    translation from the keyframe points (:func:`metric_scale_from_points`). Same result conventions and checks as
    :func:`solve_pnp` (``T_cur_ref``; covariance of ``T_ref_cur`` from the reprojection of the inlier keyframe points,
    the same Gauss-Newton model as PnP's).

    Args:
        xy_ref, xy_cur: (N, 2) matched pixels (x, y) of the keyframe and the current image.
        K_ref, K_cur: their intrinsics (model-input pixels).
        points3d_ref: (N, 3) keyframe pointmap at ``xy_ref`` (keyframe camera frame).
    """
    K_ref, K_cur = _as_K(K_ref), _as_K(K_cur)
    uv_ref = np.asarray(xy_ref, dtype=np.float64).reshape(-1, 2)
    uv = np.asarray(xy_cur, dtype=np.float64).reshape(-1, 2)
    pts = np.asarray(points3d_ref, dtype=np.float64).reshape(-1, 3)
    if not (len(uv_ref) == len(uv) == len(pts)):
        raise ValueError(f'xy_ref ({len(uv_ref)}), xy_cur ({len(uv)}) and points3d_ref ({len(pts)}) differ in length')
    n_in = pts.shape[0]
    finite = np.isfinite(pts).all(1) & np.isfinite(uv).all(1) & np.isfinite(uv_ref).all(1)
    if n_in and not finite.any():
        return _reject('non_finite_input', n_in)
    index = np.nonzero(finite)[0]
    pts, uv, uv_ref = pts[index], uv[index], uv_ref[index]
    n = pts.shape[0]
    if n < max(params.min_correspondences, 8):
        return _reject('too_few_matches', n_in)
    if n > params.max_points:
        keep = np.sort(np.random.default_rng(0).choice(n, params.max_points, replace=False))
        index, pts, uv, uv_ref, n = index[keep], pts[keep], uv[keep], uv_ref[keep], params.max_points
    for xy in (uv, uv_ref):
        s2 = np.linalg.svd((xy - xy.mean(0)) / np.sqrt(n), compute_uv=False)
        if s2[1] < params.min_pixel_spread_px:
            return _reject('degenerate_pixels', n_in)
    x_ref, x_cur = normalised_pixels(uv_ref, K_ref), normalised_pixels(uv, K_cur)
    f = 0.5 * (K_cur[0, 0] + K_cur[1, 1])
    try:
        E, mask = cv2.findEssentialMat(x_ref, x_cur, np.eye(3), method=cv2.USAC_MAGSAC,
                                       prob=float(params.essential_confidence),
                                       threshold=float(params.essential_threshold_px) / f,
                                       maxIters=int(params.essential_iterations))
    except cv2.error as exc:
        return _reject(f'essential_failed: {str(exc).strip().splitlines()[-1][:120]}', n_in)
    if E is None or E.ndim != 2 or E.shape[0] < 3 or E.shape[1] != 3 or mask is None:
        return _reject('essential_failed', n_in)
    E = E[:3]
    if not np.all(np.isfinite(E)):
        return _reject('non_finite_pose', n_in)
    _, R, t_unit, mask2 = cv2.recoverPose(E, x_ref, x_cur, np.eye(3), mask=mask.copy())
    inl = np.nonzero(mask2.reshape(-1) > 0)[0]
    t_unit = t_unit.reshape(3)
    if inl.size < 5:
        return _reject('cheirality' if int((mask.reshape(-1) > 0).sum()) >= 5 else 'too_few_inliers', n_in,
                       inliers=index[inl])
    if params.refine:
        R, t_unit = refine_two_view(R, t_unit, x_ref[inl], x_cur[inl], huber=max(0.0, params.huber_px) / f)
        resid = np.abs(sampson_residuals(R, t_unit, x_ref, x_cur)) * f
        # re-score: within the threshold and in front of both cameras (the mask of recoverPose)
        front = np.zeros(n, dtype=bool)
        front[inl] = True
        inl = np.nonzero((resid <= params.essential_threshold_px) & front)[0]
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t_unit))):
        return _reject('non_finite_pose', n_in)
    inliers = index[inl]
    use = inl
    if params.length_min_parallax_deg > 0 and inl.size:
        wide = inl[parallax_deg(R, x_ref[inl], x_cur[inl]) >= params.length_min_parallax_deg]
        if wide.size >= max(1, params.length_min_points):
            use = wide
    scale = metric_scale_from_points(R, t_unit, pts[use], x_cur[use]) if use.size else float('nan')
    if not np.isfinite(scale) or scale <= 0:
        return _reject('inconsistent_scale', n_in, R=R, t=t_unit * (scale if np.isfinite(scale) else 0.0),
                       inliers=inliers)
    # no cheirality check in metric terms: recoverPose checked every inlier's triangulation already, and with the
    # right length a stuck match of a near point (an essential-matrix inlier, its depth-head point a few metres
    # away) lands behind the camera; validation pairs: 5-6 % of the event pairs rejected so, no pose more accurate
    return _checked_pose(R, t_unit * scale, pts, uv, K_cur, inl, index, n_in, params, metric_cheirality=False)


def confidence_mask(conf_ref: Any = None, desc_conf_ref: Any = None, desc_conf_cur: Any = None,
                    params: PnpParams = PnpParams()) -> np.ndarray | None:
    """Which correspondences pass the thresholds, from per-correspondence confidence values (1-D each).

    ``conf_ref >= params.point_conf_threshold`` and ``min(desc_conf_ref, desc_conf_cur) >=
    params.desc_conf_threshold``; None when no confidence is given.
    """
    keep = None
    if conf_ref is not None:
        keep = np.asarray(conf_ref) >= params.point_conf_threshold
    if desc_conf_ref is not None and desc_conf_cur is not None:
        ok = np.minimum(np.asarray(desc_conf_ref), np.asarray(desc_conf_cur)) >= params.desc_conf_threshold
        keep = ok if keep is None else keep & ok
    return keep


def correspondences_from_matches(xy_ref: Any, xy_cur: Any, pts3d_ref: Any, *, conf_ref: Any = None,
                                 desc_conf_ref: Any = None, desc_conf_cur: Any = None,
                                 params: PnpParams = PnpParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3D-2D correspondences from matched pixels, filtered by the confidence thresholds of ``params``.

    Returns (points3d (M, 3), pixels (M, 2) float64, index (M,) into the matches).
    """
    xy_ref = np.asarray(xy_ref, dtype=np.int64).reshape(-1, 2)
    xy_cur = np.asarray(xy_cur, dtype=np.int64).reshape(-1, 2)
    if xy_ref.shape != xy_cur.shape:
        raise ValueError(f'match arrays differ in shape: {xy_ref.shape} vs {xy_cur.shape}')
    pts_map = _as_numpy(pts3d_ref, 'pts3d_ref', 3)
    if pts_map.shape[-1] != 3:
        raise ValueError(f'pts3d_ref must be (H, W, 3), got {pts_map.shape}')
    h, w = pts_map.shape[:2]
    inside = (xy_ref[:, 0] >= 0) & (xy_ref[:, 0] < w) & (xy_ref[:, 1] >= 0) & (xy_ref[:, 1] < h)
    if not inside.all():
        raise ValueError(f'xy_ref has {int((~inside).sum())} matches outside the {w}x{h} pointmap')
    c_ref = dc_ref = dc_cur = None
    if conf_ref is not None:
        c_ref = _as_numpy(conf_ref, 'conf_ref', 2)[xy_ref[:, 1], xy_ref[:, 0]]
    if desc_conf_ref is not None and desc_conf_cur is not None:
        dc_ref = _as_numpy(desc_conf_ref, 'desc_conf_ref', 2)[xy_ref[:, 1], xy_ref[:, 0]]
        dc_map = _as_numpy(desc_conf_cur, 'desc_conf_cur', 2)
        hc, wc = dc_map.shape
        if not ((xy_cur >= 0).all() and (xy_cur[:, 0] < wc).all() and (xy_cur[:, 1] < hc).all()):
            raise ValueError(f'xy_cur has matches outside the {wc}x{hc} desc_conf_cur map')
        dc_cur = dc_map[xy_cur[:, 1], xy_cur[:, 0]]
    keep = confidence_mask(c_ref, dc_ref, dc_cur, params)
    index = np.arange(len(xy_ref)) if keep is None else np.nonzero(keep)[0]
    pts = pts_map[xy_ref[index, 1], xy_ref[index, 0]].astype(np.float64)
    return pts, xy_cur[index].astype(np.float64), index


def _as_numpy(x: Any, name: str, ndim: int) -> np.ndarray:
    """Tensor or array -> numpy; a leading batch dimension of 1 is dropped."""
    if hasattr(x, 'detach'):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == ndim + 1 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != ndim:
        raise ValueError(f'{name} must have {ndim} dimensions, got shape {x.shape}')
    return x


def solve_relative_pose_pnp(xy_ref: Any, xy_cur: Any, pts3d_ref: Any, K_cur: Any, *, conf_ref: Any = None,
                            desc_conf_ref: Any = None, desc_conf_cur: Any = None,
                            params: PnpParams = PnpParams(), K_ref: Any = None, depth_ref: Any = None
                            ) -> PoseResult:
    """Pose of the current view relative to a keyframe from matches (keyframe = decoder view 1).

    Args:
        xy_ref, xy_cur: matched integer pixels (M, 2) as (x, y), e.g. ``ReciprocalMatches.xy1`` / ``.xy2`` with
            the keyframe as image 1.
        pts3d_ref: keyframe pointmap (H, W, 3) in the keyframe camera frame (``pred1['pts3d'][0]``).
        K_cur: 3x3 intrinsics of the current view's model input (see :class:`PixelTransform`).
        conf_ref: optional keyframe pointmap confidence (H, W) (``pred1['conf'][0]``), thresholded with
            ``params.point_conf_threshold``.
        desc_conf_ref, desc_conf_cur: optional descriptor confidences; pairs with
            ``min(ref, cur) < params.desc_conf_threshold`` are dropped.
        params: settings; ``params.solver`` ``'essential'`` solves with :func:`solve_essential` (then ``K_ref``,
            the keyframe image's intrinsics, is required; ``depth_ref``, an optional metric depth map of the keyframe,
            then gives the translation length instead of ``pts3d_ref``).

    Returns:
        :class:`PoseResult` (``inliers`` index the matches; ``ok`` False with a reason when rejected).
    """
    pts, uv, index = correspondences_from_matches(xy_ref, xy_cur, pts3d_ref, conf_ref=conf_ref,
                                                  desc_conf_ref=desc_conf_ref, desc_conf_cur=desc_conf_cur,
                                                  params=params)
    xy_kf = np.asarray(xy_ref, dtype=np.int64).reshape(-1, 2)[index]
    return solve_kept_matches(xy_kf, uv, pts, index, K_cur, params, K_ref=K_ref, depth_ref=depth_ref)


def solve_kept_matches(xy_ref: np.ndarray, xy_cur: np.ndarray, pts3d_ref: np.ndarray, index: np.ndarray, K_cur: Any,
                       params: PnpParams, *, K_ref: Any = None, depth_ref: Any = None) -> PoseResult:
    """Solve ``params.solver`` on the matches that passed the confidence filter and map the inliers back.

    ``xy_ref`` / ``xy_cur`` (M, 2) pixels and ``pts3d_ref`` (M, 3) keyframe points of the kept matches, ``index``
    (M,) their positions among all matches. PnP uses the points; the essential solver needs ``K_ref`` and takes
    the translation length from ``depth_ref`` (a metric depth map of the keyframe, :func:`points_from_depth`) when
    given, else from the points. The result's ``inliers`` index all matches."""
    if params.solver == 'essential':
        if K_ref is None:
            raise ValueError('the essential solver needs K_ref, the intrinsics of the keyframe image')
        pts = pts3d_ref if depth_ref is None else points_from_depth(depth_ref, xy_ref, K_ref)
        res = solve_essential(xy_ref, xy_cur, K_ref, K_cur, pts, params)
    else:
        res = solve_pnp(pts3d_ref, np.asarray(xy_cur, dtype=np.float64), K_cur, params)
    inliers = index[res.inliers] if res.inliers.size else res.inliers
    return PoseResult(ok=res.ok, reason=res.reason, R=res.R, t=res.t, inliers=inliers,
                      num_correspondences=res.num_correspondences,
                      reprojection_error_px=res.reprojection_error_px, covariance=res.covariance)
