"""Event windows for live streams: buffer decoded packets, hand out the newest complete window, drop stale ones.

:class:`WindowScheduler` is the hand-off between the subscription callback (``push``: cheap, never blocks on
inference) and the inference worker (``next_window``). It implements "latency over throughput": when several windows
completed while the worker was busy, only the newest is returned and the others are counted as dropped. Memory is
bounded: events are held in a preallocated :class:`realm_ros.events.slicing.EventRingBuffer` (the oldest are
overwritten when it is full) and events no future window can contain are released at every push.

Window rules (event times in ns, normally ROS time):

* ``count``: a window is ready once ``count`` new events arrived since the previous window; it holds the newest
  ``count`` events (never empty: ``min_events`` does not apply); its stamp is the last event's time.
* ``time``: windows tile the time axis in steps of ``duration_ns`` starting at the first event; a window covers
  ``[end - duration, end)`` and is ready once an event (or an empty packet's stamp) lies at or past ``end``. A window
  with fewer than ``min_events`` events is returned with ``empty=True`` (the node republishes its last outputs:
  memory hold). The stamp is the window's last event, or ``end - 1`` when it has none.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from realm_ros.events.slicing import EventRingBuffer
from realm_ros.events.types import EventArray

WINDOW_MODES = ('count', 'time')


@dataclass
class Window:
    """One window handed to the worker."""

    events: EventArray
    t_end_ns: int              # output stamp: last event of the window (or the window end when empty)
    skipped: int               # complete windows dropped in favour of this one
    recv_monotonic_ns: int     # time.monotonic_ns() when the packet that completed the window arrived
    empty: bool                # fewer than min_events events


class WindowScheduler:
    """Thread-safe event buffer + newest-window policy (see the module docstring)."""

    def __init__(self, mode: str = 'count', count: int = 150_000, duration_ns: int = 33_000_000,
                 min_events: int = 1, capacity_events: int = 2_000_000) -> None:
        self._lock = threading.Lock()
        self._buffer = EventRingBuffer(capacity_events)
        self.capacity_events = self._buffer.capacity
        self.mode = ''
        self.count = self.duration_ns = 0
        self._latest_t: Optional[int] = None    # newest stream time, first event time, end of the last window
        self._first_t: Optional[int] = None
        self._last_end: Optional[int] = None
        self.reset()
        self.configure(mode, count, duration_ns, min_events)

    def configure(self, mode: str = 'count', count: int = 150_000, duration_ns: int = 33_000_000,
                  min_events: int = 1) -> None:
        """Change the window rule (takes effect for the next window)."""
        if mode not in WINDOW_MODES:
            raise ValueError(f'window mode must be one of {WINDOW_MODES}, got {mode!r}')
        if count < 1 or duration_ns < 1 or min_events < 0:
            raise ValueError(f'need count >= 1, duration_ns >= 1, min_events >= 0; got {count}, {duration_ns}, '
                             f'{min_events}')
        if mode == 'count' and count > self.capacity_events:
            raise ValueError(f'window count {count} exceeds the buffer capacity {self.capacity_events}')
        with self._lock:
            changed = (mode, count, duration_ns) != (self.mode, self.count, self.duration_ns)
            self.mode, self.count, self.duration_ns = mode, int(count), int(duration_ns)
            self.min_events = int(min_events)
            if changed:
                self._consumed = self._buffer.total_appended
                if self._latest_t is not None:
                    self._last_end = self._latest_t + 1

    def reset(self) -> None:
        """Drop all buffered events and window state (stream restart, time jump, sensor change)."""
        with self._lock:
            self._buffer.clear()
            self._buffer.total_appended = 0
            self._consumed = 0
            self._latest_t = None
            self._first_t = None
            self._last_end = None
            self._latest_recv = 0
            self.out_of_order_events = 0

    @property
    def buffered_events(self) -> int:
        with self._lock:
            return len(self._buffer)

    @property
    def evicted_events(self) -> int:
        """Events overwritten because the buffer was full (a sign of a too small ``capacity_events``)."""
        with self._lock:
            return self._buffer.overwritten

    @property
    def latest_time_ns(self) -> Optional[int]:
        """Newest known stream time (last event, or an empty packet's stamp)."""
        with self._lock:
            return self._latest_t

    # ------------------------------------------------------------------------------------------------ producer
    def push(self, events: EventArray, latest_time_ns: Optional[int] = None, recv_monotonic_ns: int = 0) -> None:
        """Append one packet's events (time-ordered). Events older than the newest buffered one are dropped and
        counted in ``out_of_order_events``. ``latest_time_ns`` (the packet stamp) advances the stream time when the
        packet holds no events, so fixed-time windows complete (empty) while the sensor sees nothing."""
        with self._lock:
            self._push_locked(events, latest_time_ns, recv_monotonic_ns)

    def push_many(self, packets: Sequence[Tuple[EventArray, Optional[int], int]]) -> None:
        """``push`` of several packets ``(events, latest_time_ns, recv_monotonic_ns)`` in order, under one lock: the
        same buffer, times and counters as pushing them one by one. Packets whose events continue each other
        (each non-empty, times non-decreasing across them and not before the newest buffered event) are appended
        in one copy where the buffer has room for all of them; anything else goes packet by packet."""
        if not packets:
            return
        with self._lock:
            t_last = self._buffer.t_last
            total, prev, joinable = 0, t_last, True
            for events, _, _ in packets:
                n = len(events)
                if n == 0 or (prev is not None and int(events.t[0]) < prev):
                    joinable = False
                    break
                total += n
                prev = int(events.t[-1])
            if not joinable or len(self._buffer) + total > self._buffer.capacity or len(packets) == 1:
                for events, latest, recv in packets:
                    self._push_locked(events, latest, recv)
                return
            joined = EventArray.concat([events for events, _, _ in packets])
            self._push_locked(joined, None, packets[-1][2])

    def _push_locked(self, events: EventArray, latest_time_ns: Optional[int], recv_monotonic_ns: int) -> None:
        self._latest_recv = int(recv_monotonic_ns)
        t_last = self._buffer.t_last
        if len(events) and t_last is not None and int(events.t[0]) < t_last:
            keep = events.t >= t_last                 # the buffer must stay time-sorted
            self.out_of_order_events += len(events) - int(keep.sum())
            events = events.select(keep)
        if len(events):
            self._buffer.append(events)
            if self._first_t is None:
                self._first_t = int(events.t[0])
            t_last = int(events.t[-1])
            self._latest_t = t_last if self._latest_t is None else max(self._latest_t, t_last)
        elif latest_time_ns is not None and self._latest_t is not None:
            self._latest_t = max(self._latest_t, int(latest_time_ns))
        self._release()

    def _release(self) -> None:
        """Forget events that no future window can contain."""
        buf = self._buffer
        if self.mode == 'count':
            buf.drop_oldest(len(buf) - self.count)      # a count window holds the newest `count` events
        elif self._latest_t is not None and self._first_t is not None:
            # future windows start at or after the start of the newest window that is complete now
            last_end = self._last_end if self._last_end is not None else self._first_t
            k = max((self._latest_t - last_end) // self.duration_ns, 0)
            buf.drop_before(last_end + max(k - 1, 0) * self.duration_ns)

    # ------------------------------------------------------------------------------------------------ consumer
    def next_window(self) -> Optional[Window]:
        """The newest complete window not handed out yet, or ``None``."""
        with self._lock:
            if self.mode == 'count':
                return self._next_count_window()
            return self._next_time_window()

    def _next_count_window(self) -> Optional[Window]:
        new = self._buffer.total_appended - self._consumed
        if new < self.count or len(self._buffer) < self.count:
            return None
        events = self._buffer.latest(self.count)
        skipped = new // self.count - 1
        self._consumed = self._buffer.total_appended
        return Window(events=events, t_end_ns=int(events.t[-1]), skipped=int(skipped),
                      recv_monotonic_ns=self._latest_recv, empty=False)

    def _next_time_window(self) -> Optional[Window]:
        if self._latest_t is None or self._first_t is None:
            return None
        if self._last_end is None:
            self._last_end = self._first_t               # the first window starts at the first event
        # a window [end - d, end) is complete once the stream time reached end
        k = (self._latest_t - self._last_end) // self.duration_ns
        if k < 1:
            return None
        end = self._last_end + k * self.duration_ns
        events = self._buffer.window_ending_at(end, duration_ns=self.duration_ns)
        self._last_end = end
        stamp = int(events.t[-1]) if len(events) else int(end - 1)
        return Window(events=events, t_end_ns=stamp, skipped=int(k - 1), recv_monotonic_ns=self._latest_recv,
                      empty=len(events) < max(self.min_events, 1))


def window_memory_bytes(num_events: int) -> int:
    """Bytes held by ``num_events`` buffered events (x, y uint16, t int64, p uint8)."""
    return int(num_events) * (2 + 2 + 8 + 1)


__all__ = ['Window', 'WindowScheduler', 'WINDOW_MODES', 'window_memory_bytes']
