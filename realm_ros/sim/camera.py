"""Pinhole cameras, rigid transforms and rotation conventions used by the simulator.

Conventions (REP 103 / REP 105):

* Camera frames are *optical* frames: x right, y down, z forward. Pixel ``(u, v)`` = (column, row); integer
  coordinates are pixel centres (OpenCV convention), so ``u = fx * X / Z + cx``.
* The world frame is z-up (x forward along the street, y left).
* A pose ``T_world_cam`` (4x4, float64) maps camera coordinates to world coordinates: ``p_w = R p_c + t``; it is the
  camera-to-world transform, i.e. the camera's pose in the world.
* Quaternions are ``(x, y, z, w)`` as in ``geometry_msgs/Quaternion``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class PinholeCamera:
    """An undistorted pinhole camera: image size and intrinsics in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(f'camera size must be positive, got width={self.width} height={self.height}')
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f'focal lengths must be positive, got fx={self.fx} fy={self.fy}')

    @classmethod
    def from_hfov(cls, width: int, height: int, hfov_deg: float = 75.0) -> 'PinholeCamera':
        """Square-pixel camera with the given horizontal field of view and the principal point at the centre."""
        if not 1.0 < hfov_deg < 179.0:
            raise ValueError(f'hfov_deg must be in (1, 179), got {hfov_deg}')
        f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2.0)
        return cls(int(width), int(height), float(f), float(f), (width - 1) / 2.0, (height - 1) / 2.0)

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (..., 3) camera-frame points; returns ``(uv (..., 2), z (...))``. Points with z <= 0 give NaN."""
        p = np.asarray(points_cam, dtype=np.float64)
        z = p[..., 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            zi = np.where(z > 0, 1.0 / z, np.nan)
        uv = np.stack([self.fx * p[..., 0] * zi + self.cx, self.fy * p[..., 1] * zi + self.cy], axis=-1)
        return uv, z

    def backproject(self, u: np.ndarray, v: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) of pixels ``(u, v)`` with z-depth ``depth`` (metres)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        d = np.asarray(depth, dtype=np.float64)
        return np.stack([(u - self.cx) / self.fx * d, (v - self.cy) / self.fy * d, d], axis=-1)

    def pixel_rays(self) -> np.ndarray:
        """(H, W, 3) ray directions in the camera frame, scaled so that z == 1 (ray parameter = z-depth)."""
        u = (np.arange(self.width, dtype=np.float64) - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float64) - self.cy) / self.fy
        rays = np.empty((self.height, self.width, 3))
        rays[..., 0] = u[None, :]
        rays[..., 1] = v[:, None]
        rays[..., 2] = 1.0
        return rays

    def scaled(self, width: int, height: int) -> 'PinholeCamera':
        """The same camera resampled to another image size (intrinsics scaled per axis)."""
        sx = width / self.width
        sy = height / self.height
        return PinholeCamera(int(width), int(height), self.fx * sx, self.fy * sy,
                             (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)


# ----------------------------------------------------------------------------------------------------------------
# Rotations and rigid transforms


def rot_x(a: float) -> np.ndarray:
    """Rotation matrix about x by ``a`` radians."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    """Rotation matrix about y by ``a`` radians."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    """Rotation matrix about z by ``a`` radians."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


#: Rotation from a camera optical frame (x right, y down, z forward) to a body frame (x forward, y left, z up).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def make_transform(R: np.ndarray, t: ArrayLike) -> np.ndarray:
    """4x4 homogeneous transform from a 3x3 rotation and a translation (3 numbers)."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (works on stacks (..., 4, 4))."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum('...ij,...j->...i', Rt, t)
    out[..., 3, 3] = 1.0
    return out


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (..., 3) points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ T[:3, :3].T + T[:3, 3]


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a 3x3 rotation matrix (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s])
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = np.array([0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s])
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = np.array([(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = np.array([(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s])
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a quaternion ``(x, y, z, w)`` (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
