"""Sensor time -> ROS time (docs/formats.md#time-stamps-and-clocks).

Three clocks exist: the bag record time (never used), ``header.stamp`` (host wall clock when the driver received the
first SDK packet of the message) and the sensor time decoded from the payload (evt3: device microseconds with no
epoch; libcaer: host start time + camera clock, drifting; mono: time_base + dt). The offset
``stamp - t_sensor(first event of the message)`` jitters by a few ms from message to message, so ROS time is
``t_sensor + smoothed offset``.

``OffsetEstimator`` keeps that smoothed offset: a bias-corrected exponential moving average over ``window_ns``
(default 10 s of sensor time) or a running minimum over the same window (``mode='min'``: robust to latency spikes,
which only ever add delay). A sample further than ``reset_threshold_ns`` from the estimate (sensor clock reset,
lost evt3 wrap tracking after > 16 s of dropped packets, driver restart) restarts the estimate and is counted.
The offset is held as an exact int64 reference plus a float deviation, so epoch-sized offsets keep ns precision.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Deque, Optional, Tuple

TIME_MODES = ('smoothed', 'header', 'sensor')


class OffsetEstimator:
    """Smoothed ``ros - sensor`` offset in ns.

    Args:
        window_ns: smoothing horizon in sensor ns (EMA time constant, or running-minimum window).
        mode: ``'ema'`` or ``'min'``.
        reset_threshold_ns: a sample this far from the current estimate restarts the estimator.
    """

    def __init__(self, window_ns: int = 10_000_000_000, mode: str = 'ema', reset_threshold_ns: int = 500_000_000):
        if mode not in ('ema', 'min'):
            raise ValueError(f"offset mode must be 'ema' or 'min', got {mode!r}")
        if window_ns <= 0:
            raise ValueError(f'offset window must be positive, got {window_ns}')
        self.window_ns = int(window_ns)
        self.mode = mode
        self.reset_threshold_ns = int(reset_threshold_ns)
        self.resets = 0
        self.samples = 0
        self._ref: Optional[int] = None
        self._m = 0.0
        self._k = 0
        self._last_t: Optional[int] = None
        self._win: Deque[Tuple[int, int]] = deque()

    def reset(self) -> None:
        """Forget all samples (the reset counter is kept)."""
        self._ref = None
        self._m = 0.0
        self._k = 0
        self._last_t = None
        self._win.clear()

    @property
    def ready(self) -> bool:
        return self._ref is not None

    @property
    def offset_ns(self) -> int:
        """Current estimate (0 before the first sample)."""
        if self._ref is None:
            return 0
        if self.mode == 'min':
            return int(self._win[0][1]) if self._win else int(self._ref)
        return int(self._ref + round(self._m))

    def update(self, sample_ns: int, t_sensor_ns: int) -> int:
        """Add one ``stamp - t_sensor`` sample taken at sensor time ``t_sensor_ns``; returns the new estimate."""
        sample_ns = int(sample_ns)
        t_sensor_ns = int(t_sensor_ns)
        if self._ref is not None and abs(sample_ns - self.offset_ns) > self.reset_threshold_ns:
            self.resets += 1
            self.reset()
        self.samples += 1
        if self._ref is None:
            self._ref = sample_ns
            self._m = 0.0
            self._k = 0
            self._last_t = None
        if self.mode == 'min':
            while self._win and self._win[-1][1] >= sample_ns:
                self._win.pop()
            self._win.append((t_sensor_ns, sample_ns))
            while self._win and self._win[0][0] < t_sensor_ns - self.window_ns:
                self._win.popleft()
            return self.offset_ns
        # running mean for the first samples, then an EMA with time constant window_ns (sensor time)
        self._k += 1
        dt = max(0, t_sensor_ns - (self._last_t if self._last_t is not None else t_sensor_ns))
        self._last_t = t_sensor_ns if self._last_t is None else max(self._last_t, t_sensor_ns)
        alpha = max(1.0 / self._k, 1.0 - math.exp(-dt / self.window_ns))
        self._m += alpha * (float(sample_ns - self._ref) - self._m)
        return self.offset_ns
