"""Windows of events across packet boundaries (docs/models.md#input: 150,000 events or 33 ms; training uses the window
ending at each RGB frame time).

* ``EventRingBuffer``: bounded, preallocated circular store of the most recent events (time-sorted input).
* ``FixedCountSlicer``: consecutive windows of exactly ``n`` events (optionally overlapping with ``stride``).
* ``FixedTimeSlicer``: windows ``[t0 + k*stride, t0 + k*stride + duration)``, emitted once complete; empty windows
  are emitted too (for "memory hold"), long gaps are skipped and counted.
* ``window_ending_at``: the events before a time stamp, limited by count and/or duration and a lower bound.

All windows are half-open in time: ``t_start <= t < t_end``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional, Union

import numpy as np

from .types import EventArray

Side = Literal['left', 'right']  # np.searchsorted's side


@dataclass
class EventWindow:
    """One window: its events and its time bounds (ns, ``t_start <= t < t_end``); ``index`` counts windows."""

    events: EventArray
    t_start_ns: int
    t_end_ns: int
    index: int = 0

    def __len__(self) -> int:
        return len(self.events)


class EventRingBuffer:
    """Bounded circular buffer of events (x, y, t, p preallocated); the oldest events are overwritten.

    Append time-sorted events; queries use binary search on time. Not thread-safe: a producer thread (subscription
    callback) and a consumer thread (inference worker) must share it under a lock.

    Attributes:
        capacity: maximum number of events held.
        overwritten: events dropped because the buffer was full.
        total_appended: events appended over the buffer's lifetime.
    """

    def __init__(self, capacity_events: int):
        if int(capacity_events) <= 0:
            raise ValueError(f'ring buffer capacity must be positive, got {capacity_events}')
        self.capacity = int(capacity_events)
        self._x = np.empty(self.capacity, np.uint16)
        self._y = np.empty(self.capacity, np.uint16)
        self._t = np.empty(self.capacity, np.int64)
        self._p = np.empty(self.capacity, np.uint8)
        self._start = 0  # physical index of the oldest event
        self._size = 0
        self.overwritten = 0
        self.total_appended = 0

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        self._start = 0
        self._size = 0

    @property
    def t_first(self) -> Optional[int]:
        return int(self._t[self._start]) if self._size else None

    @property
    def t_last(self) -> Optional[int]:
        return int(self._t[(self._start + self._size - 1) % self.capacity]) if self._size else None

    def append(self, events: EventArray) -> None:
        """Append events (time-sorted, not older than the newest held); overwrites the oldest when full."""
        n = len(events)
        if n == 0:
            return
        self.total_appended += n
        cap = self.capacity
        if n >= cap:
            self.overwritten += self._size + n - cap
            last = events.slice(n - cap, n)
            self._x[:], self._y[:], self._t[:], self._p[:] = last.x, last.y, last.t, last.p
            self._start, self._size = 0, cap
            return
        overflow = self._size + n - cap
        if overflow > 0:
            self.overwritten += overflow
            self._start = (self._start + overflow) % cap
            self._size -= overflow
        w = (self._start + self._size) % cap
        first = min(n, cap - w)
        for dst, src in ((self._x, events.x), (self._y, events.y), (self._t, events.t), (self._p, events.p)):
            dst[w:w + first] = src[:first]
            if first < n:
                dst[:n - first] = src[first:]
        self._size += n

    def _segments(self):
        """Physical (start, stop) ranges of the logical content, oldest first."""
        end = self._start + self._size
        if end <= self.capacity:
            return [(self._start, end)]
        return [(self._start, self.capacity), (0, end - self.capacity)]

    def search(self, t_ns: int, side: Side = 'left') -> int:
        """Logical index where ``t_ns`` would be inserted (like ``np.searchsorted`` on the held times)."""
        idx = 0
        for a, b in self._segments():
            seg = self._t[a:b]
            k = int(np.searchsorted(seg, t_ns, side=side))
            if k < len(seg):
                return idx + k
            idx += len(seg)
        return idx

    def get(self, i: int, j: int) -> EventArray:
        """Copy of logical events ``i`` .. ``j-1`` (0 = oldest held)."""
        i = max(0, min(int(i), self._size))
        j = max(i, min(int(j), self._size))
        if i == j:
            return EventArray.empty()
        a = (self._start + i) % self.capacity
        b = a + (j - i)
        if b <= self.capacity:
            return EventArray(self._x[a:b].copy(), self._y[a:b].copy(), self._t[a:b].copy(), self._p[a:b].copy())
        b -= self.capacity
        return EventArray(np.concatenate([self._x[a:], self._x[:b]]), np.concatenate([self._y[a:], self._y[:b]]),
                          np.concatenate([self._t[a:], self._t[:b]]), np.concatenate([self._p[a:], self._p[:b]]))

    def latest(self, n: int) -> EventArray:
        """Copy of the newest ``n`` events (fewer if fewer are held)."""
        return self.get(self._size - int(n), self._size)

    def all(self) -> EventArray:
        return self.get(0, self._size)

    def drop_oldest(self, n: int) -> int:
        """Forget the ``n`` oldest events (O(1), no copy); returns how many were dropped."""
        k = max(0, min(int(n), self._size))
        self._start = (self._start + k) % self.capacity
        self._size -= k
        return k

    def drop_before(self, t_ns: int) -> int:
        """Forget events older than ``t_ns``; returns how many were dropped."""
        k = self.search(t_ns, 'left')
        self._start = (self._start + k) % self.capacity
        self._size -= k
        return k

    def window_ending_at(self, t_end_ns: int, count: Optional[int] = None, duration_ns: Optional[int] = None,
                         t_start_min_ns: Optional[int] = None) -> EventArray:
        """``window_ending_at`` on the held events (copy)."""
        j = self.search(t_end_ns, 'left')
        i = _window_start(self.search, j, t_end_ns, count, duration_ns, t_start_min_ns)
        return self.get(i, j)


def _window_start(search, j: int, t_end_ns: int, count: Optional[int], duration_ns: Optional[int],
                  t_start_min_ns: Optional[int]) -> int:
    i = 0
    if count is not None:
        if count < 0:
            raise ValueError(f'count must be >= 0, got {count}')
        i = max(i, j - int(count))
    if duration_ns is not None:
        if duration_ns < 0:
            raise ValueError(f'duration_ns must be >= 0, got {duration_ns}')
        i = max(i, search(int(t_end_ns) - int(duration_ns), 'left'))
    if t_start_min_ns is not None:
        i = max(i, search(int(t_start_min_ns), 'left'))
    return min(i, j)


def window_ending_at(events: Union[EventArray, EventRingBuffer], t_end_ns: int, count: Optional[int] = None,
                     duration_ns: Optional[int] = None, t_start_min_ns: Optional[int] = None) -> EventArray:
    """Events with ``t < t_end_ns``: the newest ``count`` of them and/or those within ``duration_ns`` before
    ``t_end_ns``, never older than ``t_start_min_ns`` (e.g. the previous RGB frame). All given limits apply; with
    none, every event before ``t_end_ns``. Requires time-sorted events. May return fewer than ``count`` events.
    """
    if isinstance(events, EventRingBuffer):
        return events.window_ending_at(t_end_ns, count, duration_ns, t_start_min_ns)
    t = events.t

    def search(v: int, side: Side = 'left') -> int:
        return int(np.searchsorted(t, v, side=side))

    j = search(int(t_end_ns), 'left')
    i = _window_start(search, j, t_end_ns, count, duration_ns, t_start_min_ns)
    return events.slice(i, j)


class _Pending:
    """Chunks waiting to be sliced; concatenated lazily."""

    def __init__(self) -> None:
        self.chunks: List[EventArray] = []
        self.size = 0

    def add(self, ev: EventArray) -> None:
        if len(ev):
            self.chunks.append(ev)
            self.size += len(ev)

    def merged(self) -> EventArray:
        if len(self.chunks) > 1:
            self.chunks = [EventArray.concat(self.chunks)]
        return self.chunks[0] if self.chunks else EventArray.empty()

    def keep_from(self, i: int) -> None:
        ev = self.merged()
        rest = ev.slice(i, len(ev))
        self.chunks = [rest] if len(rest) else []
        self.size = len(rest)


class FixedCountSlicer:
    """Windows of exactly ``n`` events (default 150,000), advancing by ``stride`` events (default ``n``).

    ``push`` returns every window completed by the new events (oldest first); with ``latest_only=True`` only the
    newest one, counting the others in ``skipped`` (latency over throughput).
    """

    def __init__(self, n: int = 150_000, stride: Optional[int] = None, latest_only: bool = False):
        if int(n) <= 0:
            raise ValueError(f'window size must be positive, got {n}')
        self.n = int(n)
        self.stride = int(stride) if stride is not None else self.n
        if not 0 < self.stride:
            raise ValueError(f'stride must be positive, got {stride}')
        self.latest_only = bool(latest_only)
        self.skipped = 0
        self.emitted = 0
        self._pending = _Pending()

    @property
    def pending(self) -> int:
        """Events buffered towards the next window."""
        return self._pending.size

    def reset(self) -> None:
        self._pending = _Pending()

    def push(self, events: EventArray) -> List[EventWindow]:
        self._pending.add(events)
        if self._pending.size < self.n:
            return []
        ev = self._pending.merged()
        starts = list(range(0, len(ev) - self.n + 1, self.stride))
        if self.latest_only and len(starts) > 1:
            self.skipped += len(starts) - 1
            starts = starts[-1:]
        out = []
        for s in starts:
            w = ev.slice(s, s + self.n)
            out.append(EventWindow(w, int(w.t[0]), int(w.t[-1]) + 1, self.emitted))
            self.emitted += 1
        self._pending.keep_from(starts[-1] + self.stride)
        return out


class FixedTimeSlicer:
    """Windows ``[t0 + k*stride, t0 + k*stride + duration)`` (default 33 ms, stride = duration).

    ``t0`` defaults to the first event's time. A window is emitted when an event at or after its end has arrived,
    so it is complete. Empty windows are emitted (callers may hold their last output); when more than
    ``max_empty`` consecutive windows would be empty, the slicer jumps to the next event and counts the skipped
    windows in ``skipped``.
    """

    def __init__(self, duration_ns: int = 33_000_000, stride_ns: Optional[int] = None, t0_ns: Optional[int] = None,
                 max_empty: int = 100, latest_only: bool = False):
        if int(duration_ns) <= 0:
            raise ValueError(f'window duration must be positive, got {duration_ns}')
        self.duration = int(duration_ns)
        self.stride = int(stride_ns) if stride_ns is not None else self.duration
        if self.stride <= 0:
            raise ValueError(f'stride must be positive, got {stride_ns}')
        self.max_empty = int(max_empty)
        self.latest_only = bool(latest_only)
        self._next_start: Optional[int] = None if t0_ns is None else int(t0_ns)
        self.skipped = 0
        self.emitted = 0
        self._pending = _Pending()

    def reset(self, t0_ns: Optional[int] = None) -> None:
        self._pending = _Pending()
        self._next_start = None if t0_ns is None else int(t0_ns)

    def push(self, events: EventArray) -> List[EventWindow]:
        self._pending.add(events)
        if self._pending.size == 0:
            return []
        ev = self._pending.merged()
        t = ev.t
        if self._next_start is None:
            self._next_start = int(t[0])
        t_latest = int(t[-1])
        out: List[EventWindow] = []
        empty_run = 0
        while self._next_start + self.duration <= t_latest:
            s = self._next_start
            e = s + self.duration
            i = int(np.searchsorted(t, s, 'left'))
            j = int(np.searchsorted(t, e, 'left'))
            if i == j:
                empty_run += 1
                if empty_run > self.max_empty:
                    # jump over the gap: next window is the one containing the next event
                    k = int(np.searchsorted(t, e, 'left'))
                    nxt = int(t[k]) if k < len(t) else t_latest
                    steps = max(1, (nxt - s) // self.stride)
                    self.skipped += int(steps)
                    self._next_start = s + steps * self.stride
                    empty_run = 0
                    continue
            else:
                empty_run = 0
            out.append(EventWindow(ev.slice(i, j), s, e, self.emitted))
            self.emitted += 1
            self._next_start = s + self.stride
        keep = int(np.searchsorted(t, self._next_start, 'left'))
        self._pending.keep_from(keep)
        if self.latest_only and len(out) > 1:
            self.skipped += len(out) - 1
            out = out[-1:]
        return out

    def flush(self) -> List[EventWindow]:
        """Emit the pending (incomplete) window, if it has events."""
        if self._pending.size == 0 or self._next_start is None:
            return []
        ev = self._pending.merged()
        s = self._next_start
        w = EventWindow(ev.time_range(s, s + self.duration), s, s + self.duration, self.emitted)
        self.emitted += 1
        self._pending = _Pending()
        self._next_start = s + self.stride
        return [w] if len(w) else []
