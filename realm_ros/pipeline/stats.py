"""Thread-safe counters, rates and latency percentiles for the perception pipeline's diagnostics (ROS-free)."""
from __future__ import annotations

import collections
import threading
import time
from typing import Deque, Dict, Optional, Tuple

import numpy as np


class Counters:
    """Named integer counters, safe to bump from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, int] = collections.defaultdict(int)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += int(amount)

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        with self._lock:
            self._values.clear()


class ValueTracker:
    """The last ``maxlen`` values of a measure (e.g. the appearance gate's view similarity) and their percentiles."""

    def __init__(self, maxlen: int = 200) -> None:
        self._lock = threading.Lock()
        self._samples: Deque[float] = collections.deque(maxlen=maxlen)

    def add(self, value: float) -> None:
        with self._lock:
            self._samples.append(float(value))

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def percentiles(self, qs: Tuple[float, ...] = (10, 50), scale: float = 1.0) -> Optional[Dict[str, float]]:
        """``{'p10': v, 'p50': v}`` of the values times ``scale`` (q = 100 is named ``'max'``; ``None`` before the
        first sample)."""
        with self._lock:
            if not self._samples:
                return None
            data = np.asarray(self._samples) * scale
        return {('max' if q == 100 else f'p{q:g}'): float(np.percentile(data, q)) for q in qs}


class LatencyTracker(ValueTracker):
    """The last ``maxlen`` latency samples (seconds) and their percentiles in milliseconds."""

    def __init__(self, maxlen: int = 500) -> None:
        super().__init__(maxlen)

    def percentiles_ms(self, qs: Tuple[float, ...] = (50, 95, 100)) -> Optional[Dict[str, float]]:
        """``{'p50': ms, 'p95': ms, 'max': ms}`` (``None`` before the first sample)."""
        return self.percentiles(qs, scale=1e3)


class RateMeter:
    """Rate of events over a sliding wall-clock window (e.g. packets/s, events/s, outputs/s)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._lock = threading.Lock()
        self._window = float(window_s)
        self._marks: Deque[Tuple[float, float]] = collections.deque()

    def add(self, amount: float = 1.0, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._marks.append((now, float(amount)))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._marks and now - self._marks[0][0] > self._window:
            self._marks.popleft()

    def rate(self, now: Optional[float] = None) -> float:
        """Sum of the amounts in the last ``window_s`` seconds divided by ``window_s``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return sum(a for _, a in self._marks) / self._window


class LogThrottle:
    """``throttle(key)`` is True at most once per ``period_s`` per key: one log line per kind of problem, so that a
    flood of bad input cannot flood the log."""

    def __init__(self, period_s: float = 2.0) -> None:
        self.period_s = float(period_s)
        self._last: Dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.period_s:
            self._last[key] = now
            return True
        return False
