"""Dense outputs of one window, fast: depth, semantic labels, their colour images and the point cloud (ROS-free).

The heads run on the model input (``size`` x ``size``, one or more tiles) and their predictions are mapped back to
the sensor with the window's :class:`~realm_ros.events.spatial.PreparedInput`. The numbers are the ones of the plain
expressions (``prep.to_sensor`` over the whole sensor, NaN masks, ``argmax`` over the class axis, fancy-index colour
lookups); only the work is cheaper:

* values are mapped to the part of the sensor the model sees (:meth:`~realm_ros.events.spatial.SpatialPlan.
  to_sensor_region`; the crop square) instead of a NaN-filled full-size tensor;
* the class argmax is a branch-free running maximum over the class planes (ties: the lowest class id, as
  ``torch.argmax``); a pixel gets 255 where any class logit is not finite (checked once on the model-resolution
  logits: bounded finite logits stay finite through bilinear resizing and tile averaging, anything else takes the
  explicit per-pixel check);
* the sensor-size resizes (torch's bilinear kernel, so the same numbers) write into per-thread scratch buffers;
* colour images are table lookups (:func:`~realm_ros.pipeline.render.colorize_labels`) and the depth colour map is
  evaluated only where the model sees the scene.

Typical use (inside ``torch.inference_mode()``; ``tokens`` = the encoder output of ``prep.tensor``, possibly with
extra views after the first ``prep.plan.num_inputs``)::

    depth = run_depth(depth_head, tokens, grid, prep, size)                    # (H, W) float32 m, NaN invalid
    depth_bgr = colorize_depth_region(depth, 1.0, 81.0, prep)                 # (H, W, 3) uint8 BGR
    labels = run_semantic(encoder, projector, seg_head, tokens, grid, prep, size, bridge)   # (H, W) uint8
    labels_bgr = render.colorize_labels(labels)                                # (H, W, 3) uint8 BGR
    xyz, rgb = point_cloud(depth, K, stride, max_depth, labels=labels)

or all of it, with the pipeline's rules for which head needs what, in one call: :func:`compute_dense`.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from realm_ros.events.spatial import resize_bilinear
from realm_ros.models.heads import SegmentationHead

from . import render

IGNORE_LABEL = 255
#: model-resolution logits bounded by this stay finite through bilinear resizing and tile averaging
FINITE_BOUND = 1e30
#: pixels per class plane processed at once by :func:`argmax_channels` (bounds its scratch buffers)
CHUNK_ELEMENTS = 1 << 20

Autocast = Optional[Callable[[], ContextManager[Any]]]


class _Scratch(threading.local):
    """Per-thread scratch buffers reused window after window (intermediate values only, never returned): a fresh
    multi-megabyte allocation per window costs as much in page faults as the arithmetic that fills it."""

    def __init__(self) -> None:
        self.buffers: Dict[str, Any] = {}


_SCRATCH = _Scratch()


def _scratch_tensor(name: str, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    buf = _SCRATCH.buffers.get(name)
    if (not isinstance(buf, torch.Tensor) or tuple(buf.shape) != tuple(shape) or buf.dtype != like.dtype
            or buf.device != like.device):
        with torch.inference_mode(False):   # a normal tensor: writable in and outside inference mode
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
        _SCRATCH.buffers[name] = buf
    return buf


def _scratch_array(name: str, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    buf = _SCRATCH.buffers.get(name)
    if not isinstance(buf, np.ndarray) or buf.shape != tuple(shape) or buf.dtype != dtype:
        buf = np.empty(shape, dtype)
        _SCRATCH.buffers[name] = buf
    return buf


def clear_scratch() -> None:
    """Drop this thread's scratch buffers (e.g. after a sensor-size change or before a long idle period)."""
    _SCRATCH.buffers.clear()


def _region(plan: Any, x: torch.Tensor, name: str) -> torch.Tensor:
    """``plan.to_sensor_region(x)`` with the crop resize written into a reused CPU buffer."""
    out = None
    if x.device.type == 'cpu' and plan.mode == 'crop' and plan.crop_side != plan.size:
        out = _scratch_tensor(name, (1, x.shape[1], plan.crop_side, plan.crop_side), x)
    return plan.to_sensor_region(x, out=out)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:                                   # older torch: no device argument
        return bool(torch.is_autocast_cpu_enabled()) if device_type == 'cpu' else bool(torch.is_autocast_enabled())


def _ctx(autocast: Autocast) -> ContextManager[Any]:
    return autocast() if autocast is not None else contextlib.nullcontext()


def _dense_count(prep: Any, n: Optional[int]) -> int:
    count = int(prep.plan.num_inputs)
    if n is not None and int(n) != count:
        raise ValueError(f'n={n} dense views given, the spatial plan has {count}')
    return count


def _head_view(tokens: Dict[str, Any], n: int) -> Dict[str, Any]:
    """The first ``n`` views of an encoder output dictionary (per-view ops give the same numbers on a slice)."""
    return {k: (v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in tokens.items()}


# ------------------------------------------------------------------------------------------------------ depth
def depth_to_sensor(depth_model: torch.Tensor, prep: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, 1, size, size) model-input depth -> (H, W) float32 metres, NaN where invalid or unseen.

    Same numbers as ``d = prep.to_sensor(depth_model.float())[0]`` with non-finite and non-positive values set to
    NaN. ``out`` (H, W) float32 is filled if given (else a new array).
    """
    plan = prep.plan
    region = _region(plan, plan.check_predictions(depth_model).detach().float(), 'depth_region')
    if region.shape[0] != 1:
        raise ValueError(f'depth predictions must have one channel, got {tuple(depth_model.shape)}')
    shape = (plan.height, plan.width)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f'out must be a {shape} float32 array, got {out.shape} {out.dtype}')
    rows, cols = plan.sensor_region()
    if plan.mode == 'crop':
        out.fill(np.nan)
    dst = out[rows, cols]
    np.copyto(dst, region[0].detach().cpu().numpy())
    good = dst > 0                     # False for NaN
    np.less(dst, np.inf, out=good, where=good)
    if not good.all():
        np.copyto(dst, np.float32(np.nan), where=~good)
    return out


def run_depth(depth_head: Any, tokens: Dict[str, Any], grid: Tuple[int, int], prep: Any, size: Tuple[int, int],
              n: Optional[int] = None, autocast: Autocast = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Depth head on the dense views of ``tokens`` -> (H, W) float32 metres, NaN invalid (see :func:`depth_to_sensor`).

    Args:
        depth_head: :class:`~realm_ros.models.DepthBinsHead` (reads normed tokens).
        tokens: encoder output dictionary of ``prep.tensor`` (extra views after ``prep.plan.num_inputs`` ignored).
        grid: token grid (rows, cols). size: model input (size, size). n: dense views (default and only valid
            value: ``prep.plan.num_inputs``). autocast: context factory the head runs under (e.g. bf16 on CUDA).
    """
    n = _dense_count(prep, n)
    with _ctx(autocast):
        d = depth_head(tokens['x_norm_patchtokens'][:n], tokens['x_norm_clstoken'][:n], grid, out_size=size)
    return depth_to_sensor(d, prep, out=out)


def colorize_depth_region(depth: np.ndarray, min_depth: float, max_depth: float, prep: Any = None,
                          out: Optional[np.ndarray] = None) -> np.ndarray:
    """``render.colorize_depth`` of a sensor depth image, evaluated only inside ``prep``'s sensor region (the rest
    is NaN there and black in the picture). Same pixels as the full-image call."""
    if prep is None:
        return render.colorize_depth(depth, min_depth, max_depth)
    rows, cols = prep.plan.sensor_region()
    shape = depth.shape + (3,)
    if out is None:
        out = np.zeros(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f'out must be a {shape} uint8 array, got {out.shape} {out.dtype}')
    else:
        out.fill(0)
    out[rows, cols] = render.colorize_depth(depth[rows, cols], min_depth, max_depth)
    return out


# ------------------------------------------------------------------------------------------------------ semantic
def argmax_channels(values: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Index of the largest value along axis 0 of (K, h, w) float values, as uint8 (K <= 255).

    Same result as ``torch.argmax(dim=0)`` / ``np.argmax(axis=0)`` for finite values (ties: the lowest index); a
    running maximum over the K planes (branch-free: the same cost on noisy and smooth maps), ``CHUNK_ELEMENTS``
    pixels at a time. ``out`` (h, w) uint8 may be a view.
    """
    if values.ndim != 3:
        raise ValueError(f'expected (K, h, w) values, got shape {values.shape}')
    k, h, w = values.shape
    if not 1 <= k <= 255:
        raise ValueError(f'argmax_channels handles 1..255 classes, got {k}')
    if out is None:
        out = np.empty((h, w), np.uint8)
    elif out.shape != (h, w) or out.dtype != np.uint8:
        raise ValueError(f'out must be a ({h}, {w}) uint8 array, got {out.shape} {out.dtype}')
    if h == 0 or w == 0:
        return out
    step = max(1, CHUNK_ELEMENTS // w)
    rows = min(step, h)
    best_buf = _scratch_array('argmax_best', (rows, w), values.dtype)
    mask_buf = _scratch_array('argmax_mask', (rows, w), np.dtype(bool))
    code_buf = _scratch_array('argmax_code', (rows, w), np.dtype(np.uint8))
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        best, mask, code, dst = best_buf[:r1 - r0], mask_buf[:r1 - r0], code_buf[:r1 - r0], out[r0:r1]
        np.copyto(best, values[0, r0:r1])
        dst.fill(0)
        mask_u8 = mask.view(np.uint8)
        for c in range(1, k):
            plane = values[c, r0:r1]
            np.greater(plane, best, out=mask)
            np.maximum(best, plane, out=best)
            # branch-free "dst[mask] = c": dst < c here, so max(dst, mask * c) is c where mask, dst elsewhere
            np.multiply(mask_u8, np.uint8(c), out=code)
            np.maximum(dst, code, out=dst)
    return out


def labels_to_sensor(logits_model: torch.Tensor, prep: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, K, size, size) model-input class logits -> (H, W) uint8 labels (255 = unseen / non-finite logits).

    Same labels as ``argmax`` over the class axis of ``prep.to_sensor(logits_model.float())`` with 255 where any
    class value is not finite. ``out`` (H, W) uint8 is filled if given.
    """
    plan = prep.plan
    x = logits_model.detach().float()
    if x.dim() != 4 or x.shape[1] > 255:
        raise ValueError(f'expected (N, K <= 255, size, size) logits, got {tuple(x.shape)}')
    shape = (plan.height, plan.width)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f'out must be a {shape} uint8 array, got {out.shape} {out.dtype}')
    lo, hi = torch.aminmax(x)
    bounded = bool(torch.isfinite(lo) & torch.isfinite(hi)) and max(-float(lo), float(hi)) < FINITE_BOUND
    region = _region(plan, plan.check_predictions(x), 'semantic_region')
    rows, cols = plan.sensor_region()
    if plan.mode == 'crop':
        out.fill(IGNORE_LABEL)
    dst = out[rows, cols]
    if region.device.type == 'cpu':
        values = region.detach().numpy()
        argmax_channels(values, out=dst)
        if not bounded:
            np.copyto(dst, np.uint8(IGNORE_LABEL), where=~np.isfinite(values).all(axis=0))
    else:
        labels = region.argmax(dim=0).to(torch.uint8)
        if not bounded:
            labels[~torch.isfinite(region).all(dim=0)] = IGNORE_LABEL
        np.copyto(dst, labels.cpu().numpy())
    return out


def run_semantic(encoder: Any, projector: Any, seg_head: Any, tokens: Dict[str, Any], grid: Tuple[int, int],
                 prep: Any, size: Tuple[int, int], bridge: str, n: Optional[int] = None, autocast: Autocast = None,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
    """DINOv2 projector + segmentation head on the dense views -> (H, W) uint8 class ids (255 = none).

    Args:
        encoder: the REALM encoder (its ``head_tokens(tokens, bridge)`` builds the projector input).
        projector: :class:`~realm_ros.models.DinoV2Projector`. seg_head: :class:`~realm_ros.models.SegmentationHead`.
        tokens, grid, prep, size, n, autocast: as :func:`run_depth`. bridge: token bridge name.
    """
    n = _dense_count(prep, n)
    with _ctx(autocast):
        proj_in = encoder.head_tokens(_head_view(tokens, n), bridge)
        _, feat = projector(proj_in, grid)
        if (type(seg_head).forward is SegmentationHead.forward and feat.device.type == 'cpu'
                and feat.dtype == torch.float32 and not _autocast_enabled('cpu')):
            low = seg_head(feat)                  # its forward's own resize, into a reused buffer
            logits = resize_bilinear(low, size, _scratch_tensor('semantic_model', tuple(low.shape[:2]) + tuple(size),
                                                                low))
        else:
            logits = seg_head(feat, out_size=size)
    return labels_to_sensor(logits, prep, out=out)


# ------------------------------------------------------------------------------------------------------ points
def point_cloud(depth: np.ndarray, K: np.ndarray, stride: int, max_depth: float,
                labels: Optional[np.ndarray] = None, depth_color: Optional[np.ndarray] = None,
                depth_range: Tuple[float, float] = (1.0, 81.0),
                palette: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Every ``stride``-th valid depth pixel as a 3D point (optical frame) with its colour.

    Returns ``(xyz (N, 3) float32, rgb (N, 3) uint8)``. Colour: the class colour of ``labels`` if given, else the
    pixel of ``depth_color`` (BGR image) if given, else the depth colour map of the point's depth over
    ``depth_range`` - the same colours as looking the points up in the corresponding BGR image.
    """
    xyz, rows, cols = render.backproject_depth(depth, K, stride, max_depth)
    if labels is not None:
        rgb = render.label_rgb(labels[rows, cols], palette)
    elif depth_color is not None:
        rgb = depth_color[rows, cols, ::-1]
    else:
        rgb = render.colorize_depth(depth[rows, cols], *depth_range)[:, ::-1]
    return xyz, np.ascontiguousarray(rgb)


# ------------------------------------------------------------------------------------------------------ all at once
@dataclass
class DenseResult:
    """The dense outputs of one window (None where the head is off); ``timings_ms``: depth_ms, semantic_ms,
    points_ms of the heads that ran."""

    depth: Optional[np.ndarray] = None
    depth_color: Optional[np.ndarray] = None
    semantic: Optional[np.ndarray] = None
    semantic_color: Optional[np.ndarray] = None
    points_xyz: Optional[np.ndarray] = None
    points_rgb: Optional[np.ndarray] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)


#: the dense outputs a consumer can ask for (``compute_dense``'s / ``RealmPipeline.process_dense``'s ``outputs``)
DENSE_OUTPUTS = ('depth', 'depth_color', 'semantic', 'semantic_color', 'points')


def compute_dense(heads: Iterable[str], tokens: Dict[str, Any], grid: Tuple[int, int], prep: Any,
                  size: Tuple[int, int], K: np.ndarray, *, depth_head: Any = None, encoder: Any = None,
                  projector: Any = None, seg_head: Any = None, bridge: str = 'teacher_norm_inverse',
                  depth_color_range: Tuple[float, float] = (1.0, 81.0), points_stride: int = 2,
                  points_max_depth: float = 80.0, autocast: Autocast = None,
                  outputs: Optional[Iterable[str]] = None) -> DenseResult:
    """Every enabled dense head of one window: ``'depth'`` (depth + colour), ``'semantic'`` (labels + colour),
    ``'points'`` (needs the depth head; coloured by class if ``'semantic'`` is enabled, else by depth).

    ``outputs``: the outputs wanted (:data:`DENSE_OUTPUTS`; None: all): a head none of whose outputs is wanted does
    not run and an unwanted colour image is not drawn. What is computed does not depend on what else is wanted (the
    points keep their class colours when only they are wanted: the semantic head runs for them). Same outputs as
    the per-head expressions of ``RealmPipeline`` before this module (tests compare them).
    """
    heads = set(heads)
    want = set(DENSE_OUTPUTS) if outputs is None else set(outputs)
    unknown = want.difference(DENSE_OUTPUTS)
    if unknown:
        raise ValueError(f'unknown dense outputs {sorted(unknown)}; known: {", ".join(DENSE_OUTPUTS)}')
    res = DenseResult()
    points = 'points' in heads and 'points' in want
    depth: Optional[np.ndarray] = None
    if ('depth' in heads and want & {'depth', 'depth_color'}) or points:
        t = time.perf_counter()
        depth = run_depth(depth_head, tokens, grid, prep, size, autocast=autocast)
        if 'depth' in heads:
            res.depth = depth if 'depth' in want else None
            if 'depth_color' in want:
                res.depth_color = colorize_depth_region(depth, *depth_color_range, prep=prep)
        res.timings_ms['depth_ms'] = (time.perf_counter() - t) * 1e3
    labels: Optional[np.ndarray] = None
    if 'semantic' in heads and (want & {'semantic', 'semantic_color'} or points):
        t = time.perf_counter()
        labels = run_semantic(encoder, projector, seg_head, tokens, grid, prep, size, bridge, autocast=autocast)
        res.semantic = labels if 'semantic' in want else None
        if 'semantic_color' in want:
            res.semantic_color = render.colorize_labels(labels)
        res.timings_ms['semantic_ms'] = (time.perf_counter() - t) * 1e3
    if points and depth is not None:     # depth ran: 'points' is one of its conditions above
        t = time.perf_counter()
        res.points_xyz, res.points_rgb = point_cloud(depth, K, points_stride, points_max_depth,
                                                     labels=labels, depth_color=res.depth_color,
                                                     depth_range=depth_color_range)
        res.timings_ms['points_ms'] = (time.perf_counter() - t) * 1e3
    return res
