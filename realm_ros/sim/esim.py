"""ESIM-style event generation from a sequence of intensity frames (docs/formats.md#event-simulation).

Model (per pixel):

* log intensity ``L = log(I + log_eps)`` with ``I`` in [0, 1];
* the first frame only initialises the reference ``R = L_0`` (no events);
* for every later frame interval ``(t_prev, t_new]`` with ``|L_new - L_prev| > 1e-6`` the polarity is the sign of the
  change and ``C`` the pixel's ON or OFF threshold (drawn once per pixel from ``N(C+-, sigma_threshold)`` and
  optionally jittered per interval by ``N(0, sigma_threshold_interval)``, clipped to ``min_threshold``);
* every level ``R + k * pol * C`` lying in ``(L_prev, L_new]`` (ON) or ``[L_new, L_prev)`` (OFF) is a crossing, with
  a time linearly interpolated between the frames: ``t = t_prev + (level - L_prev) / (L_new - L_prev) * dt``; the
  count starts at the first level beyond ``L_prev`` (identical to ESIM in steady state, and robust when a jittered
  threshold shrinks);
* a crossing is emitted unless the pixel emitted an event less than ``refractory_ns`` earlier; ``R`` moves to the
  crossed level either way (suppressed crossings too);
* timestamps are quantised up to whole microseconds, so each event of an interval lies in ``(t_prev, t_new]``;
* optional noise: background activity (Poisson, ``background_rate_hz`` per pixel, uniform times, random polarity)
  and ``hot_pixels`` pixels firing at ``hot_pixel_rate_hz``; noise events do not move the reference.

All per-pixel work runs in a numba kernel (no Python loop over pixels or events); output events are sorted by time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ..events.types import EventArray


@dataclass(frozen=True)
class EsimConfig:
    """Contrast thresholds, noise and timing of the event model (defaults: vid2e / v2e 'clean' preset)."""

    contrast_pos: float = 0.2
    contrast_neg: float = 0.2
    sigma_threshold: float = 0.03            # per-pixel fixed threshold mismatch
    sigma_threshold_interval: float = 0.0    # per-pixel per-interval threshold noise (ESIM sigma_C)
    min_threshold: float = 0.01
    refractory_ns: int = 0
    log_eps: float = 1e-3
    background_rate_hz: float = 0.0          # per pixel
    hot_pixels: int = 0
    hot_pixel_rate_hz: float = 300.0

    def __post_init__(self) -> None:
        if not (self.contrast_pos > 0 and self.contrast_neg > 0):
            raise ValueError(f'contrast thresholds must be positive, got {self.contrast_pos}, {self.contrast_neg}')
        if self.sigma_threshold < 0 or self.sigma_threshold_interval < 0:
            raise ValueError('threshold sigmas must be >= 0')
        if not self.min_threshold > 0:
            raise ValueError(f'min_threshold must be positive, got {self.min_threshold}')
        if self.refractory_ns < 0:
            raise ValueError(f'refractory_ns must be >= 0, got {self.refractory_ns}')
        if not self.log_eps > 0:
            raise ValueError(f'log_eps must be positive, got {self.log_eps}')
        if self.background_rate_hz < 0 or self.hot_pixel_rate_hz < 0 or self.hot_pixels < 0:
            raise ValueError('noise rates and hot pixel count must be >= 0')


@njit(cache=True, error_model='numpy')
def _count_crossings(L_prev, L_new, ref, c_pos, c_neg):
    n = L_prev.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        lp = L_prev[i]
        ln = L_new[i]
        d = ln - lp
        if abs(d) <= 1e-6:
            continue
        r = ref[i]
        if d > 0:
            c = c_pos[i]
            k_lo = max(1, np.int64(np.floor((lp - r) / c)) + 1)
            k_hi = np.int64(np.floor((ln - r) / c))
        else:
            c = c_neg[i]
            k_lo = max(1, np.int64(np.floor((r - lp) / c)) + 1)
            k_hi = np.int64(np.floor((r - ln) / c))
        if k_hi >= k_lo:
            counts[i] = k_hi - k_lo + 1
    return counts


@njit(cache=True, error_model='numpy')
def _emit_crossings(L_prev, L_new, ref, c_pos, c_neg, t_last, counts, t_prev_us, dt_us, refractory_us,
                    out_idx, out_t, out_p, out_keep):
    """Fill crossings (pixel index, t in us, polarity, kept?) and update ``ref`` and ``t_last`` in place."""
    n = L_prev.shape[0]
    j = 0
    for i in range(n):
        m = counts[i]
        if m == 0:
            continue
        lp = L_prev[i]
        ln = L_new[i]
        d = ln - lp
        r = ref[i]
        if d > 0:
            c = c_pos[i]
            pol = 1
            k_lo = max(1, np.int64(np.floor((lp - r) / c)) + 1)
        else:
            c = c_neg[i]
            pol = -1
            k_lo = max(1, np.int64(np.floor((r - lp) / c)) + 1)
        level = r
        for k in range(k_lo, k_lo + m):
            level = r + pol * k * c
            frac = (level - lp) / d
            frac = min(1.0, max(0.0, frac))
            tq = t_prev_us + np.int64(np.ceil(frac * dt_us))
            if tq <= t_prev_us:
                tq = t_prev_us + 1
            keep = t_last[i] < 0 or (tq - t_last[i]) >= refractory_us
            out_idx[j] = i
            out_t[j] = tq
            out_p[j] = 1 if pol > 0 else 0
            out_keep[j] = keep
            if keep:
                t_last[i] = tq
            j += 1
        ref[i] = level
    return j


class EsimEventGenerator:
    """Stateful per-pixel event generator for a ``width`` x ``height`` sensor.

    Feed frames in increasing time order: :meth:`reset` with the first frame, then :meth:`step` for each new frame;
    ``step`` returns the events of the interval ``(t_prev, t_new]``. Frame times are integer microseconds (the
    sensor's time resolution); event times are returned in nanoseconds (multiples of 1000).
    """

    def __init__(self, width: int, height: int, config: EsimConfig | None = None, seed: int = 0) -> None:
        if width < 1 or height < 1:
            raise ValueError(f'sensor size must be positive, got {width}x{height}')
        self.width = int(width)
        self.height = int(height)
        self.config = config or EsimConfig()
        cfg = self.config
        self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xE5]))
        n = self.width * self.height
        self.c_pos = np.maximum(self._rng.normal(cfg.contrast_pos, cfg.sigma_threshold, n) if cfg.sigma_threshold
                                else np.full(n, cfg.contrast_pos), cfg.min_threshold)
        self.c_neg = np.maximum(self._rng.normal(cfg.contrast_neg, cfg.sigma_threshold, n) if cfg.sigma_threshold
                                else np.full(n, cfg.contrast_neg), cfg.min_threshold)
        self.hot_pixel_index = (self._rng.choice(n, size=min(cfg.hot_pixels, n), replace=False).astype(np.int64)
                                if cfg.hot_pixels else np.empty(0, np.int64))
        self._ref: np.ndarray | None = None
        self._L_prev: np.ndarray | None = None
        self._t_prev_us: int | None = None
        self._t_last = np.full(n, -1, dtype=np.int64)
        self.stats = {'frames': 0, 'events': 0, 'suppressed_refractory': 0, 'noise_events': 0}

    @property
    def initialized(self) -> bool:
        return self._ref is not None

    @property
    def t_prev_us(self) -> int | None:
        """Time (us) of the last frame fed in, or None before :meth:`reset`."""
        return self._t_prev_us

    def log_image(self, intensity: np.ndarray) -> np.ndarray:
        """Flattened float64 log intensity of an (H, W) image in [0, 1]."""
        img = np.asarray(intensity)
        if img.shape != (self.height, self.width):
            raise ValueError(f'intensity image has shape {img.shape}, expected {(self.height, self.width)}')
        return np.log(img.astype(np.float64).ravel() + self.config.log_eps)

    def reset(self, intensity: np.ndarray, t_us: int) -> None:
        """Initialise the reference from the first frame at time ``t_us`` (emits nothing)."""
        L = self.log_image(intensity)
        self._ref = L.copy()
        self._L_prev = L
        self._t_prev_us = int(t_us)
        self._t_last[:] = -1
        self.stats['frames'] += 1

    def step(self, intensity: np.ndarray, t_us: int) -> EventArray:
        """Add the frame at ``t_us`` and return the events of ``(t_prev, t_us]`` sorted by time."""
        t_prev_us = self._t_prev_us
        if self._ref is None or t_prev_us is None:
            raise RuntimeError('EsimEventGenerator.step() before reset(): feed the first frame with reset()')
        t_us = int(t_us)
        if t_us <= t_prev_us:
            raise ValueError(f'frame time {t_us} us is not after the previous frame ({t_prev_us} us)')
        cfg = self.config
        L_new = self.log_image(intensity)
        c_pos, c_neg = self.c_pos, self.c_neg
        if cfg.sigma_threshold_interval > 0:
            n = L_new.shape[0]
            c_pos = np.maximum(c_pos + self._rng.normal(0.0, cfg.sigma_threshold_interval, n), cfg.min_threshold)
            c_neg = np.maximum(c_neg + self._rng.normal(0.0, cfg.sigma_threshold_interval, n), cfg.min_threshold)
        counts = _count_crossings(self._L_prev, L_new, self._ref, c_pos, c_neg)
        total = int(counts.sum())
        idx = np.empty(total, np.int64)
        tt = np.empty(total, np.int64)
        pp = np.empty(total, np.uint8)
        keep = np.empty(total, np.bool_)
        dt_us = t_us - t_prev_us
        refr_us = -(-int(cfg.refractory_ns) // 1000)
        _emit_crossings(self._L_prev, L_new, self._ref, c_pos, c_neg, self._t_last, counts, t_prev_us,
                        float(dt_us), refr_us, idx, tt, pp, keep)
        if total and not keep.all():
            self.stats['suppressed_refractory'] += int(total - keep.sum())
            idx, tt, pp = idx[keep], tt[keep], pp[keep]
        idx, tt, pp = self._add_noise(idx, tt, pp, t_prev_us, t_us)
        order = np.argsort(tt, kind='stable')
        idx, tt, pp = idx[order], tt[order], pp[order]
        self._L_prev = L_new
        self._t_prev_us = t_us
        self.stats['frames'] += 1
        self.stats['events'] += len(tt)
        return EventArray(x=(idx % self.width).astype(np.uint16), y=(idx // self.width).astype(np.uint16),
                          t=tt * 1000, p=pp)

    def _add_noise(self, idx, tt, pp, t0_us: int, t1_us: int):
        cfg = self.config
        dt_s = (t1_us - t0_us) * 1e-6
        parts_i, parts_t, parts_p = [idx], [tt], [pp]
        n_pix = self.width * self.height
        if cfg.background_rate_hz > 0:
            k = int(self._rng.poisson(cfg.background_rate_hz * n_pix * dt_s))
            if k:
                parts_i.append(self._rng.integers(0, n_pix, k).astype(np.int64))
                parts_t.append(self._rng.integers(t0_us + 1, t1_us + 1, k).astype(np.int64))
                parts_p.append(self._rng.integers(0, 2, k).astype(np.uint8))
        if len(self.hot_pixel_index):
            ks = self._rng.poisson(cfg.hot_pixel_rate_hz * dt_s, len(self.hot_pixel_index))
            k = int(ks.sum())
            if k:
                parts_i.append(np.repeat(self.hot_pixel_index, ks))
                parts_t.append(self._rng.integers(t0_us + 1, t1_us + 1, k).astype(np.int64))
                parts_p.append(self._rng.integers(0, 2, k).astype(np.uint8))
        if len(parts_i) == 1:
            return idx, tt, pp
        self.stats['noise_events'] += sum(len(a) for a in parts_i[1:])
        return np.concatenate(parts_i), np.concatenate(parts_t), np.concatenate(parts_p)
