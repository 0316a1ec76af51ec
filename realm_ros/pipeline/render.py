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
        depth: (H, W) float32 metres, NaN = invalid (any shape works: the map is per pixel).
        min_depth, max_depth: metres mapped to the two ends of the colour map (values outside are clipped).
    """
    if not (0 < min_depth < max_depth):
        raise ValueError(f'depth colour range must satisfy 0 < min < max, got {min_depth}, {max_depth}')
    depth = np.asarray(depth, dtype=np.float32)
    shape = depth.shape
    depth = depth.reshape(1, -1) if depth.ndim != 2 else depth
    valid = np.isfinite(depth)
    np.greater(depth, 0, out=valid, where=valid)
    # the numbers of the plain expression, with fewer temporaries:
    # u = (log(max) - log(clip(where(valid, d, min), min, max))) / (log(max) - log(min)); u8 = round(u * 255)
    logd = np.where(valid, depth, np.float32(min_depth))
    np.clip(logd, min_depth, max_depth, out=logd)
    np.log(logd, out=logd)
    u = np.log(max_depth) - logd
    u /= np.log(max_depth) - np.log(min_depth)
    u *= 255
    np.round(u, out=u)
    bgr = cv2.applyColorMap(u.astype(np.uint8), cv2.COLORMAP_TURBO)
    if not valid.all():
        bgr[~valid] = INVALID_BGR
    return bgr.reshape(shape + (3,))


def label_lut_bgr(palette: Optional[np.ndarray] = None) -> np.ndarray:
    """(256, 1, 3) uint8 BGR lookup table of class ids (``palette`` RGB rows; ids beyond it black, 255 = none)."""
    if palette is None:
        from realm_ros.models.heads import DSEC_PALETTE as palette
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    key = palette.tobytes()
    lut = _LABEL_LUTS.get(key)
    if lut is None:
        if len(palette) > 255:
            raise ValueError(f'a label palette holds at most 255 classes (255 = none), got {len(palette)}')
        lut = np.zeros((256, 1, 3), dtype=np.uint8)
        lut[:len(palette), 0] = palette[:, ::-1]
        lut.setflags(write=False)
        _LABEL_LUTS[key] = lut
    return lut


_LABEL_LUTS: dict = {}


def colorize_labels(labels: np.ndarray, palette: Optional[np.ndarray] = None,
                    out: Optional[np.ndarray] = None) -> np.ndarray:
    """Class-id image (H, W) uint8 -> BGR (H, W, 3) uint8 by table lookup; ids beyond the palette (255) black.

    Same pixels as ``colorize_segmentation(labels)[..., ::-1]``; ``out`` (H, W, 3) uint8 is written if given.
    """
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f'labels must be a (H, W) uint8 image, got {labels.shape} {labels.dtype}')
    lut = label_lut_bgr(palette)
    if out is not None and (out.shape != labels.shape + (3,) or out.dtype != np.uint8):
        raise ValueError(f'out must be a {labels.shape + (3,)} uint8 array, got {out.shape} {out.dtype}')
    if labels.size == 0:
        return np.zeros(labels.shape + (3,), np.uint8) if out is None else out
    if out is None:
        return cv2.applyColorMap(np.ascontiguousarray(labels), lut)
    if out.flags.c_contiguous:
        cv2.applyColorMap(np.ascontiguousarray(labels), lut, dst=out)
    else:
        out[...] = cv2.applyColorMap(np.ascontiguousarray(labels), lut)
    return out


def label_rgb(labels: np.ndarray, palette: Optional[np.ndarray] = None) -> np.ndarray:
    """Class ids (any shape, uint8) -> RGB (..., 3) uint8 (ids beyond the palette black): point-cloud colours."""
    lut = label_lut_bgr(palette)[:, 0, ::-1]
    return np.take(lut, np.asarray(labels, dtype=np.uint8), axis=0)


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
    return event_sum_picture(np.asarray(voxel, dtype=np.float32).sum(axis=0))


def event_sum_picture(s: np.ndarray) -> np.ndarray:
    """BGR picture of the bin sum (H, W) of a voxel grid: positive blue, negative red, scaled to the 99th percentile
    of the non-zero magnitudes; non-finite values black."""
    s = np.asarray(s, dtype=np.float32)
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
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f'depth must be an (H, W) image, got shape {depth.shape}')
    d = np.ascontiguousarray(depth[::stride, ::stride], dtype=np.float32)
    valid = d > 0                                                   # False for NaN
    if max_depth == float('inf'):
        np.less(d, np.inf, out=valid, where=valid)
    else:
        np.less_equal(d, max_depth, out=valid, where=valid)         # also drops +inf
    idx = np.flatnonzero(valid)
    vi, ui = np.divmod(idx, d.shape[1])
    v, u = vi * stride, ui * stride
    z = d.ravel()[idx].astype(np.float64)
    yn = (v - K[1, 2]) / K[1, 1]
    xn = (u - K[0, 2] - K[0, 1] * yn) / K[0, 0]
    xyz = np.empty((len(idx), 3), np.float32)
    np.multiply(xn, z, out=xyz[:, 0], casting='same_kind')
    np.multiply(yn, z, out=xyz[:, 1], casting='same_kind')
    xyz[:, 2] = z
    return xyz, v, u
