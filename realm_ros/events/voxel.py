"""Voxel grid of events (docs/formats.md#voxel-grid): temporal bilinear splatting of +-1 polarities into B bins.

For event i of a window (time-sorted; t_0 first, t_{N-1} last):

* ``t* = (B - 1) * (t_i - t_0) / dT`` with ``dT = t_{N-1} - t_0`` (``dT = 0 -> 1``, the E2VID guard). The
  difference ``t_i - t_0`` and its product with ``B - 1`` are **int64**; only then is a float64 quotient formed
  (correctly rounded, so integer t* such as the last event's ``B - 1`` are exact). Absolute ns time stamps never
  reach a float.
* value ``2p - 1`` goes with weight ``1 - frac`` to bin ``floor(t*)`` and ``frac`` to the next bin if it exists
  (the last event lands exactly on bin B-1). Sum of the grid = N_on - N_off exactly.
* ``t_range=(t_start, t_end)`` normalises by fixed window bounds instead (``dT = t_end - t_start``; events outside
  ``[t_start, t_end]`` are dropped); ``temporal_scale='bins'`` uses B instead of B-1 (tonic; the last event drops).
* normalisation over the non-zero cells: ``'dsec'`` (default; mean / unbiased std, divide only if std > 0),
  ``'e2vid'`` (mean / population std; zero std is guarded the same way instead of producing inf), ``'none'``.
* events with x >= W or y >= H are ignored.

Backends: ``'numba'`` (CPU: a two-pass scatter per chunk of events, then sequential SIMD passes for the
statistics and the normalisation) and ``'torch'`` (any device: cell indices and weights
computed on the host into a reused pinned buffer, one host->device copy, ``index_add_`` scatter, statistics
reduced on the device and read back in one transfer, one elementwise normalisation pass). ``'auto'`` picks
numba on CPU and torch elsewhere.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from ._jit import njit
from .types import EventArray, as_event_array

NORMALIZATIONS = ('dsec', 'e2vid', 'none')


def _canonical(x: Any, y: Any, t: Any, p: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous uint16 / uint16 / int64 / uint8 arrays (no copy when they already are)."""
    return (np.ascontiguousarray(x, np.uint16), np.ascontiguousarray(y, np.uint16), np.ascontiguousarray(t, np.int64),
            np.ascontiguousarray(p, np.uint8))


def _to_numpy_events(events: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(events, EventArray):
        return _canonical(events.x, events.y, events.t, events.p)
    try:
        import torch

        if isinstance(events, (tuple, list)) and len(events) == 4 and any(isinstance(a, torch.Tensor) for a in events):
            events = tuple(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a for a in events)
    except ImportError:  # pragma: no cover - torch is required for the grid anyway
        pass
    ev = as_event_array(events)
    return _canonical(ev.x, ev.y, ev.t, ev.p)


def _time_params(t: np.ndarray, bins: int, t_range: Optional[Tuple[int, int]], temporal_scale: str
                 ) -> Tuple[int, int, int]:
    """(t0, dT, scale) with int semantics."""
    if temporal_scale not in ('bins_minus_one', 'bins'):
        raise ValueError(f"temporal_scale must be 'bins_minus_one' or 'bins', got {temporal_scale!r}")
    scale = bins - 1 if temporal_scale == 'bins_minus_one' else bins
    if t_range is not None:
        t0, t1 = int(t_range[0]), int(t_range[1])
        if t1 < t0:
            raise ValueError(f't_range end {t1} is before its start {t0}')
        return t0, max(1, t1 - t0), scale
    if len(t) == 0:
        return 0, 1, scale
    t0 = int(t[0])
    return t0, max(1, int(t[-1]) - t0), scale


_SCATTER_CHUNK = 4096


@njit(error_model='numpy')
def _voxel_weights(x, y, t, p, t0, dT, scale, bins, height, width, start, idx, w0, w1):  # pragma: no cover
    """Cell index and the two float32 weights of events ``start .. start + len(idx) - 1``; returns events used.

    Every event adds ``w0`` at cell ``idx`` and ``w1`` at ``idx + H*W`` (``idx`` when ``bins == 1``): an event in
    the last bin is addressed as the pair (B-2, B-1) with weight 0 below, and a dropped event (outside the window
    or the sensor) adds 0 to cells 0 and H*W, so adding both weights of every event gives exactly the grid of
    adding only the valid ones. Shared by the CPU scatter and the torch (GPU) backend.
    """
    hw = height * width
    fdT = np.float64(dT)
    t_end = t0 + dT
    hi = np.float64(bins + 1)
    zero = np.float32(0.0)
    used = 0
    for k in range(idx.shape[0]):
        i = np.uint64(start + k)   # unsigned indices: no negative-index wrap-around code in the loop
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        ti = t[i]
        # int64 difference first; (dt * scale) / dT is then a correctly rounded float64 quotient. Clamped so
        # that the float->int conversion is defined for events outside the window (they are dropped).
        ts = min(max(np.float64((ti - t0) * scale) / fdT, -1.0), hi)
        b = np.int64(ts)
        frac = ts - np.float64(b)
        ok = (xi < width) & (yi < height) & (ti >= t0) & (ti <= t_end) & (ts >= 0.0) & (b < bins)
        last = ok & (b == bins - 1) & (bins >= 2)
        v = np.float64(2 * np.int64(p[i] != 0) - 1)   # polarity +-1 (branch-free: polarities are random)
        lo = v * (1.0 - frac)
        up = v * frac if b + 1 < bins else 0.0
        idx[k] = np.int32((b - np.int64(last)) * hw + yi * width + xi) if ok else np.int32(0)
        w0[k] = (zero if last else np.float32(lo)) if ok else zero
        w1[k] = (np.float32(lo) if last else np.float32(up)) if ok else zero
        used += ok
    return used


@njit(error_model='numpy')
def _voxel_scatter(x, y, t, p, t0, dT, scale, bins, height, width, grid):  # pragma: no cover - compiled
    """Temporal bilinear splatting of +-1 into the zeroed float32 ``grid`` (bins*H*W < 2**31); returns events used.

    Two passes per chunk of events: :func:`_voxel_weights` (branch-light, vectorised), then a tight loop adds the
    weights. The tight loop keeps many cache misses in flight; one fused loop (the division and checks between the
    random accesses) was 1.3-2x slower, most on cold caches and 1280x720 grids (benchmarks/RESULTS.md).
    """
    step = np.uint64(height * width if bins >= 2 else 0)
    n = x.shape[0]
    chunk = max(1, min(n, _SCATTER_CHUNK))
    idx = np.empty(chunk, np.int32)
    w0 = np.empty(chunk, np.float32)
    w1 = np.empty(chunk, np.float32)
    used = 0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        used += _voxel_weights(x, y, t, p, t0, dT, scale, bins, height, width, start, idx[:m], w0[:m], w1[:m])
        for k in range(m):
            j = np.uint64(idx[k])
            grid[j] += w0[k]
            grid[j + step] += w1[k]
    return used


@njit(fastmath=True)
def _nonzero_stats(grid):  # pragma: no cover - compiled
    """(count, sum, sum of squares) of the non-zero cells; one sequential (SIMD) pass."""
    s = 0.0
    ss = 0.0
    c = 0
    for i in range(grid.shape[0]):
        v = np.float64(grid[i])
        c += v != 0.0
        s += v
        ss += v * v
    return c, s, ss


@njit(fastmath=True)
def _normalize_nonzero(grid, mean, inv):  # pragma: no cover - compiled
    m = np.float32(mean)
    iv = np.float32(inv)
    zero = np.float32(0.0)
    for i in range(grid.shape[0]):
        v = grid[i]
        grid[i] = (v - m) * iv if v != zero else zero


def _normalization_params(c: int, s: float, ss: float, normalization: str) -> Optional[Tuple[float, float]]:
    """(mean, 1/std) from the count, sum and sum of squares of the non-zero cells; None when nothing is to be done
    (``'none'``, or an empty grid). A zero std divides by 1 (for ``'e2vid'`` too, instead of producing inf)."""
    if normalization == 'none' or c == 0:
        return None
    mean = s / c
    var_sum = max(ss - s * mean, 0.0)  # sum of squared deviations of the non-zero cells
    if normalization == 'e2vid':
        std = math.sqrt(var_sum / c)
    else:
        std = math.sqrt(var_sum / (c - 1)) if c > 1 else 0.0
    return mean, (1.0 / std if std > 0.0 else 1.0)


def _normalize_numpy_grid(flat: np.ndarray, normalization: str) -> None:
    """In-place non-zero normalisation of a float32 grid (CPU)."""
    if normalization == 'none':
        return
    count, total, total_sq = _nonzero_stats(flat)
    params = _normalization_params(count, total, total_sq, normalization)
    if params is not None:
        _normalize_nonzero(flat, *params)


def _normalize_torch(flat: Any, normalization: str) -> None:
    """In-place non-zero normalisation on any device: the three statistics are reduced on the device and read back
    in one transfer, then one elementwise pass in float32 with the same formula as the CPU backend."""
    import torch

    if normalization == 'none':
        return
    v = flat.double()
    c, s, ss = torch.stack([torch.count_nonzero(flat).double(), v.sum(), torch.dot(v, v)]).tolist()
    params = _normalization_params(int(c), s, ss, normalization)
    if params is None:
        return
    mean, inv = (float(np.float32(a)) for a in params)   # float32 constants, as the CPU kernel uses
    flat.copy_(torch.where(flat != 0, (flat - mean) * inv, flat))   # zero cells stay (+)0


class _Staging(threading.local):
    """Per-thread pinned host buffers for the single host->device copy (reused; guarded by a CUDA event)."""

    def __init__(self) -> None:
        self.buffers: Dict[str, Any] = {}
        self.events: Dict[str, Any] = {}


_STAGING = _Staging()


def _host_buffer(device: Any, nbytes: int) -> Any:
    """A uint8 host tensor of at least ``nbytes``: pinned and reused for CUDA, plain otherwise."""
    import torch

    if device.type != 'cuda':
        return torch.empty(nbytes, dtype=torch.uint8)
    key = str(device)
    ev = _STAGING.events.get(key)
    if ev is not None:
        ev.synchronize()  # the previous copy out of this buffer has finished
    buf = _STAGING.buffers.get(key)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(int(nbytes * 1.25) + 4096, dtype=torch.uint8, pin_memory=True)
        _STAGING.buffers[key] = buf
    return buf


def _voxel_torch(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, t0: int, dT: int, scale: int,
                 bins: int, height: int, width: int, normalization: str, device: Any) -> Any:
    """Voxel grid on any torch device: per-event cell indices and weights computed on the host straight into one
    (pinned, reused) buffer, one host->device copy of it, then two ``index_add_`` calls and the normalisation on
    the device (one 24-byte read-back of its statistics).

    The host pass is the same :func:`_voxel_weights` kernel as the CPU backend (it writes 12 bytes per event, about
    what copying the raw 13-byte events into the staging buffer cost), so the device runs 3 operations for the
    splatting instead of ~45 elementwise ones, each a kernel launch (the normalisation takes ~9 more).
    """
    import torch

    hw = height * width
    n = len(x)
    flat = torch.zeros(bins * hw, dtype=torch.float32, device=device)
    if n:
        # layout: idx int32 | w0 float32 | w1 float32 (each n entries, 4-byte aligned)
        nbytes = 12 * n
        host = _host_buffer(device, nbytes)
        hb = host.numpy()
        idx = hb[:4 * n].view(np.int32)
        w0 = hb[4 * n:8 * n].view(np.float32)
        w1 = hb[8 * n:12 * n].view(np.float32)
        _voxel_weights(x, y, t, p, np.int64(t0), np.int64(dT), np.int64(scale), np.int64(bins), np.int64(height),
                       np.int64(width), np.int64(0), idx, w0, w1)
        if device.type == 'cuda':
            dev = host[:nbytes].to(device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(device))
            _STAGING.events[str(device)] = ev
        else:
            dev = host[:nbytes]
        idx_d = dev[:4 * n].view(torch.int32)
        # upper weights first: in a time-sorted window a cell's contributions from the previous bin's events (their
        # upper weights) precede those of its own bin, so on the CPU the sums are in the numba backend's order
        flat.index_add_(0, idx_d + (hw if bins >= 2 else 0), dev[8 * n:12 * n].view(torch.float32))
        flat.index_add_(0, idx_d, dev[4 * n:8 * n].view(torch.float32))
    _normalize_torch(flat, normalization)
    return flat.view(bins, height, width)


def _check_out(out: Any, numel: int) -> None:
    import torch
    if not isinstance(out, torch.Tensor) or out.device.type != 'cpu' or out.dtype != torch.float32 \
            or not out.is_contiguous() or out.numel() != numel:
        desc = (f'{tuple(out.shape)} {out.dtype} on {out.device}{"" if out.is_contiguous() else ", not contiguous"}'
                if isinstance(out, torch.Tensor) else type(out).__name__)
        raise ValueError(f'out must be a contiguous float32 CPU tensor with {numel} elements, got {desc}')


def voxel_grid(events: Any, bins: int = 5, height: Optional[int] = None, width: Optional[int] = None, *,
               normalization: str = 'dsec', device: Union[str, Any] = 'cpu',
               t_range: Optional[Tuple[int, int]] = None, temporal_scale: str = 'bins_minus_one',
               backend: str = 'auto', out: Optional[Any] = None) -> Any:
    """Build a (bins, height, width) float32 torch voxel grid on ``device``.

    Args:
        events: ``EventArray`` or an (x, y, t_ns, p) tuple of arrays/tensors, time-sorted.
        bins: number of temporal bins (B, default 5).
        height, width: sensor size (required).
        normalization: ``'dsec'`` | ``'e2vid'`` | ``'none'`` (see module docstring).
        device: torch device for the result.
        t_range: optional fixed (t_start, t_end) ns for the time normalisation instead of the first/last event.
        temporal_scale: ``'bins_minus_one'`` (E2VID/DSEC/Zhu) or ``'bins'`` (tonic).
        backend: ``'auto'`` | ``'numba'`` (CPU only) | ``'torch'``.
        out: optional contiguous float32 CPU tensor with ``bins * height * width`` elements to build the grid in
            (numba backend only). A caller that makes one grid per window and is done with it before the next
            (the inference pipeline) saves allocating and first touching a fresh 6-18 MB grid (up to a few tenths
            of a ms of a 2.2-3.4 ms decode + voxel of 150k events; benchmarks/RESULTS.md). The result is a view of
            ``out``.
    """
    import torch

    if height is None or width is None or int(height) <= 0 or int(width) <= 0:
        raise ValueError(f'voxel_grid needs a positive height and width, got {height}x{width}')
    if int(bins) < 1:
        raise ValueError(f'bins must be >= 1, got {bins}')
    if normalization not in NORMALIZATIONS:
        raise ValueError(f'normalization must be one of {NORMALIZATIONS}, got {normalization!r}')
    bins, height, width = int(bins), int(height), int(width)
    if bins * height * width >= 2 ** 31:
        raise ValueError(f'a {bins}x{height}x{width} voxel grid has 2**31 cells or more (8 GB as float32); '
                         'use fewer bins or a smaller sensor crop')
    x, y, t, p = _to_numpy_events(events)
    t0, dT, scale = _time_params(t, bins, t_range, temporal_scale)
    dev = torch.device(device)
    if backend == 'auto':
        backend = 'numba' if dev.type == 'cpu' else 'torch'
    if backend == 'numba':
        if dev.type != 'cpu':
            raise ValueError('the numba voxel backend runs on the CPU only; use backend="torch" for GPUs')
        if out is None:
            grid = torch.zeros(bins * height * width, dtype=torch.float32)
        else:
            _check_out(out, bins * height * width)
            grid = out.view(-1)
            grid.zero_()
        flat = grid.numpy()
        _voxel_scatter(x, y, t, p, np.int64(t0), np.int64(dT), np.int64(scale), np.int64(bins), np.int64(height),
                       np.int64(width), flat)
        _normalize_numpy_grid(flat, normalization)
        return grid.view(bins, height, width)
    if backend != 'torch':
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if out is not None:
        raise ValueError('out= is supported by the numba (CPU) backend only; the torch backend allocates on '
                         f'{dev} (the CUDA caching allocator already reuses that memory)')
    return _voxel_torch(x, y, t, p, t0, dT, scale, bins, height, width, normalization, dev)
