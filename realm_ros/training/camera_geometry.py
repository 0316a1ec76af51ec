"""Camera models from ``sensor_msgs/CameraInfo``, static TF chains and the RGB -> event-camera warp.

The teacher must see the RGB frame *as the event camera sees the scene*. Each event pixel (raw, distorted - events are
never undistorted, as in the paper) is mapped to an RGB pixel once per bag:

1. undistort the event pixel with the event camera's intrinsics/distortion -> viewing ray ``r`` (event frame);
2. intersect the ray with the fronto-parallel plane ``z_rgb = plane_depth`` of the RGB camera (``p_rgb = R^T (s r - t)``
   with ``p_event = R p_rgb + t``); ``plane_depth = 0`` means infinity, i.e. a pure rotation ``p_rgb ~ R^T r``;
3. project into the RGB camera with its intrinsics and distortion -> remap tables for :func:`cv2.remap`.

For undistorted cameras this is exactly the rotation + plane-at-depth homography ``K_rgb (R^T - R^T t n^T / d') ...``;
with distortion it is the same transfer done per pixel. **Limitation:** a homography is exact only for a pure rotation
or for scene points on the plane. Off-plane points are displaced by about ``f * b * |1/Z - 1/plane_depth|`` pixels
(``b`` = baseline): for a 10 cm baseline, f = 500 px and plane_depth = 20 m, a point at 5 m is off by 7.5 px. Keep the
baseline small relative to scene depth, choose ``plane_depth_m`` near the typical depth, or use bags whose RGB is
already rectified/registered to the event camera (``extrinsics: identity``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .errors import DataError

__all__ = ['CameraModel', 'camera_from_info', 'quaternion_to_matrix', 'TfTree', 'build_warp_maps',
           'warp_image', 'valid_mask_from_maps', 'identity_maps', 'SUPPORTED_DISTORTION']

SUPPORTED_DISTORTION = ('', 'none', 'plumb_bob', 'rational_polynomial', 'equidistant', 'fisheye')


@dataclass
class CameraModel:
    """Pinhole camera with optional OpenCV distortion (``plumb_bob``/``rational_polynomial`` or ``equidistant``)."""
    width: int
    height: int
    K: np.ndarray
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    model: str = 'plumb_bob'
    frame_id: str = ''

    @property
    def distorted(self) -> bool:
        return self.D.size > 0 and bool(np.any(self.D != 0))


def camera_from_info(msg: Any, topic: str = 'camera_info') -> CameraModel:
    """:class:`CameraModel` from a ``sensor_msgs/CameraInfo`` (rosbags or rclpy message); checks intrinsics."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not (np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0):
        raise DataError(f'{topic}: camera_info has invalid intrinsics K={k.ravel().tolist()}')
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise DataError(f'{topic}: camera_info has invalid size {msg.width}x{msg.height}')
    model = str(msg.distortion_model or '').strip().lower()
    if model not in SUPPORTED_DISTORTION:
        raise DataError(f'{topic}: unsupported distortion model {msg.distortion_model!r} (supported: plumb_bob, '
                        f'rational_polynomial, equidistant)')
    d = np.asarray(msg.d, dtype=np.float64).ravel()
    if model in ('', 'none'):
        d = np.zeros(0)
    if model in ('equidistant', 'fisheye') and d.size not in (0, 4):
        raise DataError(f'{topic}: equidistant distortion needs 4 coefficients, got {d.size}')
    if model in ('plumb_bob', 'rational_polynomial') and d.size not in (0, 4, 5, 8, 12, 14):
        raise DataError(f'{topic}: {model} distortion with {d.size} coefficients is not supported')
    return CameraModel(int(msg.width), int(msg.height), k, d, 'equidistant' if model == 'fisheye' else model,
                       str(msg.header.frame_id))


def quaternion_to_matrix(q: Any) -> np.ndarray:
    """Rotation matrix of a quaternion ``(x, y, z, w)`` (normalised first)."""
    x, y, z, w = (float(v) for v in q)
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if n < 1e-12:
        raise DataError(f'zero-length quaternion {q}')
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


class TfTree:
    """Static transforms (``tf2_msgs/TFMessage``) and lookups between frames that share a root.

    A ``TransformStamped`` with parent ``header.frame_id`` and ``child_frame_id`` is the child's pose in the parent:
    ``p_parent = R p_child + t``.
    """

    def __init__(self) -> None:
        self.parent: Dict[str, Tuple[str, np.ndarray]] = {}

    def add_message(self, msg: Any) -> None:
        for tr in msg.transforms:
            child = str(tr.child_frame_id).lstrip('/')
            parent = str(tr.header.frame_id).lstrip('/')
            r = quaternion_to_matrix((tr.transform.rotation.x, tr.transform.rotation.y, tr.transform.rotation.z,
                                      tr.transform.rotation.w))
            t = np.array([tr.transform.translation.x, tr.transform.translation.y, tr.transform.translation.z])
            m = np.eye(4)
            m[:3, :3] = r
            m[:3, 3] = t
            self.parent[child] = (parent, m)

    def __len__(self) -> int:
        return len(self.parent)

    def _to_root(self, frame: str) -> Tuple[str, np.ndarray]:
        frame = frame.lstrip('/')
        m = np.eye(4)
        seen = set()
        while frame in self.parent:
            if frame in seen:
                raise DataError(f'/tf_static has a cycle through frame {frame!r}')
            seen.add(frame)
            parent, t = self.parent[frame]
            m = t @ m
            frame = parent
        return frame, m

    def lookup(self, target: str, source: str) -> Optional[np.ndarray]:
        """4x4 ``T`` with ``p_target = T p_source``, or ``None`` when the frames are not connected."""
        if target.lstrip('/') == source.lstrip('/'):
            return np.eye(4)
        root_t, t_root_target = self._to_root(target)
        root_s, t_root_source = self._to_root(source)
        if root_t != root_s:
            return None
        return np.linalg.inv(t_root_target) @ t_root_source


def _undistort_rays(cam: CameraModel, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised rays (N, 3) of pixels ``(u, v)`` (OpenCV convention: integer coordinates = pixel centres)."""
    import cv2
    pts = np.stack([u, v], axis=-1).reshape(-1, 1, 2).astype(np.float64)
    if cam.distorted:
        if cam.model == 'equidistant':
            xy = cv2.fisheye.undistortPoints(pts, cam.K, cam.D.reshape(4, 1))
        else:
            xy = cv2.undistortPoints(pts, cam.K, cam.D, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                                                                   20, 1e-9))
        xy = xy.reshape(-1, 2)
    else:
        hom = np.concatenate([pts.reshape(-1, 2), np.ones((pts.shape[0], 1))], axis=1)
        rays = hom @ np.linalg.inv(cam.K).T
        return rays / rays[:, 2:3]
    return np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1)


def _project(cam: CameraModel, p: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) of camera-frame points (N, 3) with z > 0 (distortion applied)."""
    import cv2
    if cam.distorted:
        obj = p.reshape(-1, 1, 3).astype(np.float64)
        zero = np.zeros(3)
        if cam.model == 'equidistant':
            uv, _ = cv2.fisheye.projectPoints(obj, zero, zero, cam.K, cam.D.reshape(4, 1))
        else:
            uv, _ = cv2.projectPoints(obj, zero, zero, cam.K, cam.D)
        return uv.reshape(-1, 2)
    xy = p[:, :2] / p[:, 2:3]
    return xy @ cam.K[:2, :2].T + cam.K[:2, 2]


def build_warp_maps(event_cam: CameraModel, rgb_cam: CameraModel, rotation: np.ndarray, translation: np.ndarray,
                    plane_depth_m: float) -> Tuple[np.ndarray, np.ndarray]:
    """Remap tables (map_x, map_y), float32 (H_ev, W_ev): RGB pixel sampled for every event pixel.

    ``rotation``/``translation``: ``p_event = R p_rgb + t``. Event pixels whose ray misses the plane (or points behind
    the RGB camera) get -1 (sampled as black / invalid).
    """
    h, w = event_cam.height, event_cam.width
    vv, uu = np.mgrid[0:h, 0:w]
    rays = _undistort_rays(event_cam, uu.ravel().astype(np.float64), vv.ravel().astype(np.float64))
    rt = np.asarray(rotation, dtype=np.float64).T
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    dirs = rays @ rt.T  # R^T r
    if plane_depth_m and plane_depth_m > 0:
        rtt = rt @ t
        with np.errstate(divide='ignore', invalid='ignore'):
            s = (plane_depth_m + rtt[2]) / dirs[:, 2]
        p_rgb = s[:, None] * dirs - rtt[None, :]
        ok = np.isfinite(s) & (s > 0) & (p_rgb[:, 2] > 1e-9)
    else:
        p_rgb = dirs
        ok = dirs[:, 2] > 1e-9
    uv = np.full((rays.shape[0], 2), -1.0)
    if ok.any():
        uv[ok] = _project(rgb_cam, p_rgb[ok])
    bad = ~np.isfinite(uv).all(axis=1)
    uv[bad] = -1.0
    return uv[:, 0].reshape(h, w).astype(np.float32), uv[:, 1].reshape(h, w).astype(np.float32)


def warp_image(image: np.ndarray, maps: Tuple[np.ndarray, np.ndarray], interpolation: str = 'linear') -> np.ndarray:
    """Sample ``image`` (H, W[, C]) at the remap tables; outside the image -> 0."""
    import cv2
    flag = cv2.INTER_LINEAR if interpolation == 'linear' else cv2.INTER_NEAREST
    return cv2.remap(image, maps[0], maps[1], flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def valid_mask_from_maps(maps: Tuple[np.ndarray, np.ndarray], rgb_size: Tuple[int, int]) -> np.ndarray:
    """(H_ev, W_ev) uint8 mask: 1 where the event pixel samples inside the RGB image (w, h = ``rgb_size``)."""
    w, h = rgb_size
    mx, my = maps
    return ((mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)).astype(np.uint8)


def identity_maps(width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Remap tables of the identity warp."""
    vv, uu = np.mgrid[0:height, 0:width]
    return uu.astype(np.float32), vv.astype(np.float32)

