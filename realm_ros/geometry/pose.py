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
  ``non_finite_pose``, ``too_few_inliers``, ``low_inlier_ratio``, ``cheirality``, ``ill_conditioned``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = [
    'PixelTransform', 'PnpParams', 'PoseResult', 'intrinsics_after_crop', 'intrinsics_after_resize',
    'intrinsics_after_pad', 'solve_pnp', 'solve_relative_pose_pnp', 'correspondences_from_matches', 'confidence_mask',
    'rotation_angle_deg',
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


@dataclass(frozen=True)
class PnpParams:
    """PnP-RANSAC settings and acceptance thresholds (defaults follow MASt3R visloc: SQPnP, 5 px, 0.9999)."""

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

    def __post_init__(self) -> None:
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
    R = cv2.Rodrigues(rvec)[0]
    t = tvec.reshape(3)
    inliers = index[inl]
    partial = dict(R=R, t=t, inliers=inliers)
    if inl.size < params.min_inliers:
        return _reject('too_few_inliers', n_in, **partial)
    if inl.size / n_in < params.min_inlier_ratio:
        return _reject('low_inlier_ratio', n_in, **partial)
    depth = (pts[inl] @ R.T + t)[:, 2]
    if np.mean(depth > 0) < 0.9:
        return _reject('cheirality', n_in, **partial)
    proj, _ = cv2.projectPoints(pts[inl], cv2.Rodrigues(R)[0], t, K, None)
    rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - uv[inl]) ** 2, axis=1))))
    cov, _cond = _camera_pose_covariance(pts[inl], uv[inl], K, R, t, params.max_condition)
    if cov is None:
        return _reject('ill_conditioned', n_in, reprojection_error_px=rms, **partial)
    return PoseResult(ok=True, R=R, t=t, inliers=inliers, num_correspondences=n_in, reprojection_error_px=rms,
                      covariance=cov)


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
                            params: PnpParams = PnpParams()) -> PoseResult:
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

    Returns:
        :class:`PoseResult` (``inliers`` index the matches; ``ok`` False with a reason when rejected).
    """
    pts, uv, index = correspondences_from_matches(xy_ref, xy_cur, pts3d_ref, conf_ref=conf_ref,
                                                  desc_conf_ref=desc_conf_ref, desc_conf_cur=desc_conf_cur,
                                                  params=params)
    res = solve_pnp(pts, uv, K_cur, params)
    inliers = index[res.inliers] if res.inliers.size else res.inliers
    return PoseResult(ok=res.ok, reason=res.reason, R=res.R, t=res.t, inliers=inliers,
                      num_correspondences=res.num_correspondences,
                      reprojection_error_px=res.reprojection_error_px, covariance=res.covariance)
