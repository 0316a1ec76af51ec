"""Visualisations and geometry helpers of the pipeline outputs (numpy / OpenCV, vectorised, ROS-free).

All colour images are ``uint8`` BGR (OpenCV order, published as ``bgr8``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

#: colour of pixels without a valid value (NaN depth, ignored class)
INVALID_BGR = (0, 0, 0)


def colorize_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """Turbo colour map of a metric depth image on a log scale: near = red, far = blue, NaN = black.

    Args:
        depth: (H, W) float32 metres, NaN = invalid.
        min_depth, max_depth: metres mapped to the two ends of the colour map (values outside are clipped).
    """
    if not (0 < min_depth < max_depth):
        raise ValueError(f'depth colour range must satisfy 0 < min < max, got {min_depth}, {max_depth}')
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    logd = np.log(np.clip(np.where(valid, depth, min_depth), min_depth, max_depth))
    u = (np.log(max_depth) - logd) / (np.log(max_depth) - np.log(min_depth))     # 1 = near
    u8 = np.round(u * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)
    bgr[~valid] = INVALID_BGR
    return bgr


def event_frame(x: np.ndarray, y: np.ndarray, p: np.ndarray, height: int, width: int) -> np.ndarray:
    """BGR picture of an event window: pixels with more ON events blue, more OFF events red, none black."""
    idx = y.astype(np.int64) * width + x.astype(np.int64)
    sign = np.where(p > 0, 1.0, -1.0)
    balance = np.bincount(idx, weights=sign, minlength=height * width).reshape(height, width)
    img = np.zeros((height, width, 3), dtype=np.uint8)
    scale = max(1.0, float(np.percentile(np.abs(balance[balance != 0]), 99))) if np.any(balance) else 1.0
    mag = np.clip(np.abs(balance) / scale * 255, 0, 255).astype(np.uint8)
    img[..., 0] = np.where(balance > 0, mag, 0)
    img[..., 2] = np.where(balance < 0, mag, 0)
    return img


def voxel_picture(voxel: np.ndarray) -> np.ndarray:
    """BGR picture of a (C, H, W) voxel grid (sum over the bins; positive blue, negative red)."""
    s = np.asarray(voxel, dtype=np.float32).sum(axis=0)
    finite = np.isfinite(s)
    s = np.where(finite, s, 0.0)
    nz = np.abs(s[s != 0])
    scale = float(np.percentile(nz, 99)) if nz.size else 1.0
    scale = scale if scale > 0 else 1.0
    mag = np.clip(np.abs(s) / scale * 255, 0, 255).astype(np.uint8)
    img = np.zeros(s.shape + (3,), dtype=np.uint8)
    img[..., 0] = np.where(s > 0, mag, 0)
    img[..., 2] = np.where(s < 0, mag, 0)
    return img


def draw_matches(img1: np.ndarray, img2: np.ndarray, xy1: np.ndarray, xy2: np.ndarray,
                 inliers: Optional[np.ndarray] = None, max_drawn: int = 200, seed: int = 0) -> np.ndarray:
    """Side-by-side BGR image (img1 | img2) with up to ``max_drawn`` match lines (inliers green, outliers red).

    ``xy1``/``xy2``: (M, 2) pixel coordinates (x = column, y = row) in ``img1`` / ``img2``.
    """
    h = max(img1.shape[0], img2.shape[0])
    canvas = np.zeros((h, img1.shape[1] + img2.shape[1], 3), dtype=np.uint8)
    canvas[:img1.shape[0], :img1.shape[1]] = img1
    canvas[:img2.shape[0], img1.shape[1]:] = img2
    xy1 = np.asarray(xy1, dtype=np.float64).reshape(-1, 2)
    xy2 = np.asarray(xy2, dtype=np.float64).reshape(-1, 2)
    m = len(xy1)
    if m == 0:
        return canvas
    inl = np.ones(m, bool) if inliers is None else np.asarray(inliers, bool).reshape(-1)
    pick = np.arange(m)
    if m > max_drawn:
        pick = np.sort(np.random.default_rng(seed).choice(m, size=max_drawn, replace=False))
    p1 = np.round(xy1[pick]).astype(np.int32)
    p2 = np.round(xy2[pick]).astype(np.int32) + np.array([img1.shape[1], 0], np.int32)
    segments = np.stack([p1, p2], axis=1)                    # (K, 2, 2)
    for mask, colour in ((~inl[pick], (0, 0, 255)), (inl[pick], (0, 255, 0))):
        if mask.any():
            cv2.polylines(canvas, list(segments[mask]), False, colour, 1, cv2.LINE_8)
    return canvas


def backproject_depth(depth: np.ndarray, K: np.ndarray, stride: int = 1,
                      max_depth: float = float('inf')) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3D points (camera optical frame: x right, y down, z forward) of every ``stride``-th valid depth pixel.

    Returns ``(xyz (N, 3) float32, rows (N,), cols (N,))``; pixels with NaN, non-positive or > ``max_depth``
    depth are skipped. Pixel centres are at integer coordinates (the ROS ``CameraInfo`` convention).
    """
    if stride < 1:
        raise ValueError(f'point stride must be >= 1, got {stride}')
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    d = np.asarray(depth, dtype=np.float32)[::stride, ::stride]
    rows = np.arange(0, depth.shape[0], stride)
    cols = np.arange(0, depth.shape[1], stride)
    valid = np.isfinite(d) & (d > 0) & (d <= max_depth)
    vi, ui = np.nonzero(valid)
    v, u, z = rows[vi], cols[ui], d[vi, ui].astype(np.float64)
    yn = (v - K[1, 2]) / K[1, 1]
    xn = (u - K[0, 2] - K[0, 1] * yn) / K[0, 0]
    x, y = xn * z, yn * z
    return np.stack([x, y, z], axis=1).astype(np.float32), v, u
