"""The event stream of one camera topic, without ROS: packets in, windows out, every problem counted.

:class:`EventStream` is what the perception node's packet intake calls with the packets it took (``push_batch``; or
``push`` for one) and what its dense worker asks for the newest complete window (``next_window``). It owns

* **validation**: sensor sizes above ``max_sensor_size``, unknown encodings, undecodable payloads and payloads whose
  event times lie far from the packet stamp are refused as :class:`BadPacket` (``kind`` names the problem);
* **stream identity with hysteresis**: the stream is the (encoding, width, height) of its packets. A packet of
  another kind is held aside and counted (``bad_packets.other_stream``); only when at least
  ``change_fraction`` of the last ``change_window`` packets carry the new kind does the stream change (decoder,
  windows and keyframes restart; the held packets of the new kind are replayed, so none is lost). One odd packet
  (garbage labelled ``mono`` in an ``evt3`` stream) therefore never wipes the stream;
* **time handling**: event times in ROS time (:class:`~realm_ros.events.packet.EventPacketDecoder`); a jump of the
  packet stamps (bag restart, sim time) resets the stream only when ``confirm_packets`` consecutive packets agree on
  the new time line; an isolated packet with an odd stamp is a bad packet (``bad_packets.implausible_stamp``);
* **windows**: a :class:`~realm_ros.pipeline.windows.WindowScheduler` (newest complete window, stale ones dropped and
  counted);
* **diagnostics** as plain data (:meth:`diagnostics`).

``generation`` increases at every stream restart; consumers that keep per-stream state (keyframes) compare it.
Thread safety: ``push`` / ``push_batch`` are called from one thread (the packet intake), ``next_window`` /
``diagnostics`` / ``reset`` from others; shared state is guarded by one lock, decoding runs outside it.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from realm_ros.common.errors import RealmError
from realm_ros.events.codecs import SUPPORTED_ENCODINGS, normalize_encoding
from realm_ros.events.packet import EventPacketDecoder, stamp_to_ns
from realm_ros.events.types import EventArray

from .stats import Counters, RateMeter
from .windows import Window, WindowScheduler, window_memory_bytes

_LOG = logging.getLogger(__name__)

StreamKey = Tuple[str, int, int]


class BadPacket(RealmError, ValueError):
    """An event packet the stream refuses; ``kind`` names the problem (the diagnostics counter suffix)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class StreamSettings:
    """Validation, hysteresis and time-handling rules of an :class:`EventStream` (all changeable at run time)."""

    max_sensor_size: int = 8192
    time_mode: str = 'smoothed'
    time_jump_backward_s: float = 0.5
    time_jump_forward_s: float = 30.0
    max_packet_span_s: float = 0.1
    change_window: int = 20
    change_fraction: float = 0.8
    confirm_packets: int = 3

    def __post_init__(self) -> None:
        if self.max_sensor_size < 1:
            raise ValueError(f'max_sensor_size must be >= 1, got {self.max_sensor_size}')
        if self.change_window < 1 or not 0.5 <= self.change_fraction <= 1.0:
            raise ValueError(f'need change_window >= 1 and 0.5 <= change_fraction <= 1, got {self.change_window}, '
                             f'{self.change_fraction}')
        if self.confirm_packets < 1:
            raise ValueError(f'confirm_packets must be >= 1, got {self.confirm_packets}')

    @property
    def change_votes(self) -> int:
        """Packets of a new kind among the last ``change_window`` that confirm a stream change."""
        return max(1, math.ceil(self.change_fraction * self.change_window))


def _packet_key(msg: Any) -> StreamKey:
    """(normalised encoding, width, height) of a packet; legacy EventArray messages are ``'legacy'``."""
    encoding = getattr(msg, 'encoding', None)
    if encoding is None:
        return ('legacy', int(getattr(msg, 'width', 0)), int(getattr(msg, 'height', 0)))
    return (normalize_encoding(encoding), int(msg.width), int(msg.height))


class EventStream:
    """One event topic: validated packets -> ROS-time events -> windows (see the module docstring)."""

    def __init__(self, settings: Optional[StreamSettings] = None, *, window_mode: str = 'count',
                 window_count: int = 150_000, window_duration_ns: int = 33_000_000, window_min_events: int = 1,
                 capacity_events: int = 2_000_000) -> None:
        self.settings = settings or StreamSettings()
        self.scheduler = WindowScheduler(mode=window_mode, count=window_count, duration_ns=window_duration_ns,
                                         min_events=window_min_events, capacity_events=capacity_events)
        self.counters = Counters()
        self.packet_rate = RateMeter()
        self.event_rate = RateMeter()
        self._lock = threading.Lock()
        self._retired: Dict[str, int] = {}
        self.generation = 0
        self.last_reset_reason = ''
        # push_batch: the decoded packets (events, stamp, recv, generation) for the scheduler, None outside it
        self._deferred: Optional[List[Tuple[EventArray, int, int, int]]] = None
        self._clear()

    # ------------------------------------------------------------------------------------------------ state
    def _clear(self) -> None:
        self.key: Optional[StreamKey] = None
        self.frame_id = ''
        self._decoder: Optional[EventPacketDecoder] = None
        self._last_stamp: Optional[int] = None
        self._recent: Deque[StreamKey] = deque(maxlen=self.settings.change_window)
        self._held: Deque[Tuple[StreamKey, Any, int]] = deque(maxlen=self.settings.change_window)
        self._jump: List[Tuple[Any, int, int]] = []     # (msg, stamp, recv) of a jump awaiting confirmation

    def reset(self, reason: str, count: bool = True) -> None:
        """Forget the stream (decoder, windows, time line); ``generation`` increases. Thread-safe. ``count``: report
        it as a stream reset (not for a plain (re)start)."""
        with self._lock:
            self._reset_locked(reason, count)

    def _reset_locked(self, reason: str, count: bool = True) -> None:
        if self._decoder is not None:
            self._retire(self._decoder)
        self._clear()
        self.scheduler.reset()
        self.generation += 1
        if count:
            self.last_reset_reason = reason
            self.counters.add('stream_resets')

    def configure(self, settings: Optional[StreamSettings] = None, **window: Any) -> None:
        """New rules (``settings``) and / or window rule (``mode``, ``count``, ``duration_ns``, ``min_events``)."""
        with self._lock:
            if settings is not None:
                if settings.change_window != self.settings.change_window:
                    self._recent = deque(self._recent, maxlen=settings.change_window)
                    self._held = deque(self._held, maxlen=settings.change_window)
                self.settings = settings
            if window:
                current: Dict[str, Any] = dict(mode=self.scheduler.mode, count=self.scheduler.count,
                                               duration_ns=self.scheduler.duration_ns,
                                               min_events=self.scheduler.min_events)
                current.update(window)
                self.scheduler.configure(**current)

    def update_settings(self, **changes: Any) -> None:
        """Change some :class:`StreamSettings` fields (validated first)."""
        self.configure(replace(self.settings, **changes))

    # ------------------------------------------------------------------------------------------------ intake
    def push(self, msg: Any, recv_monotonic_ns: Optional[int] = None) -> int:
        """Decode one message and buffer its events; returns the number of events buffered.

        Raises :class:`BadPacket` for a refused packet (already counted under ``bad_packets.<kind>``); the stream is
        unchanged by it. Any other exception from a malformed message is turned into ``BadPacket('decode_exception')``.
        """
        recv = time.monotonic_ns() if recv_monotonic_ns is None else int(recv_monotonic_ns)
        self.counters.add('packets')
        self.packet_rate.add(1.0)
        return self._push_counted(msg, recv)

    def push_batch(self, msgs: Sequence[Any], recv_monotonic_ns: Optional[int] = None
                   ) -> Tuple[int, List[Tuple[Any, BadPacket]]]:
        """:meth:`push` of several messages in arrival order (what the intake took at one wake-up): the same stream
        state, counters and buffered events as pushing them one by one, the events handed to the window scheduler
        once (:meth:`WindowScheduler.push_many`) instead of per packet. Returns the events buffered and the refused
        messages with their :class:`BadPacket` (each already counted, as by :meth:`push`)."""
        recv = time.monotonic_ns() if recv_monotonic_ns is None else int(recv_monotonic_ns)
        self.counters.add('packets', len(msgs))
        self.packet_rate.add(float(len(msgs)))
        total = 0
        refused: List[Tuple[Any, BadPacket]] = []
        self._deferred = []
        try:
            for msg in msgs:
                try:
                    total += self._push_counted(msg, recv)
                except BadPacket as exc:
                    refused.append((msg, exc))
        finally:
            deferred, self._deferred = self._deferred, None
            with self._lock:
                generation = self.generation
            # events decoded before a reset (another thread's, or a jump in this batch) would have been cleared
            self.scheduler.push_many([(ev, stamp, rc) for ev, stamp, rc, gen in deferred if gen == generation])
        return total, refused

    def _push_counted(self, msg: Any, recv: int) -> int:
        try:
            return self._push(msg, recv)
        except BadPacket as exc:
            self._count_bad(exc.kind)
            raise
        except Exception as exc:
            self._count_bad('decode_exception')
            raise BadPacket('decode_exception', f'{type(exc).__name__}: {exc}') from exc

    def count_unreadable(self) -> None:
        """Count a packet whose message could not even be read (``bad_packets.unreadable``): a serialized message
        that neither the intake's decoder nor rclpy can convert."""
        self.counters.add('packets')
        self._count_bad('unreadable')

    def _count_bad(self, kind: str) -> None:
        self.counters.add('bad_packets')
        self.counters.add(f'bad_packets.{kind}')

    def _push(self, msg: Any, recv: int) -> int:
        s = self.settings
        key = _packet_key(msg)
        encoding, width, height = key
        if encoding != 'legacy':
            if encoding not in SUPPORTED_ENCODINGS:
                raise BadPacket('unknown_encoding', f'unknown encoding {encoding!r}; supported: '
                                f'{", ".join(SUPPORTED_ENCODINGS)}')
            if not (0 < width <= s.max_sensor_size and 0 < height <= s.max_sensor_size):
                kind = 'too_large' if width > s.max_sensor_size or height > s.max_sensor_size else 'invalid_size'
                raise BadPacket(kind, f'sensor size {width}x{height} outside 1..max_sensor_size '
                                f'{s.max_sensor_size}')
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            replay = self._vote(key, msg, stamp, recv)
            if replay is None:
                cur = self.key or ('', 0, 0)
                raise BadPacket('other_stream', f'packet {key[0]} {key[1]}x{key[2]} differs from the stream '
                                f'{cur[0]} {cur[1]}x{cur[2]} (held aside: a change of stream needs '
                                f'{s.change_votes} of the last {s.change_window} packets)')
            confirmed = self._check_time(msg, stamp, recv)
            if confirmed is None:
                raise BadPacket('implausible_stamp', f'packet stamp {stamp / 1e9:.3f} s is off the stream\'s time '
                                f'line ({(self._last_stamp or 0) / 1e9:.3f} s): held until {s.confirm_packets} '
                                'packets confirm a jump')
            if confirmed:
                replay = confirmed
            if self._decoder is None:
                self._decoder = EventPacketDecoder(time_mode=s.time_mode)
            decoder = self._decoder
        total = 0
        error: Optional[BadPacket] = None
        for m, st, rc in replay:
            try:
                total += self._decode_into_windows(decoder, m, st, rc)
            except BadPacket as exc:
                if m is msg:
                    error = exc
                else:
                    self._count_bad(exc.kind)
        if error is not None:
            raise error
        return total

    def _vote(self, key: StreamKey, msg: Any, stamp: int, recv: int) -> Optional[List[Tuple[Any, int, int]]]:
        """Stream identity with hysteresis: the packets to decode now, or None when ``msg`` is held aside."""
        self._recent.append(key)
        if self.key is None:
            self.key = key
            return [(msg, stamp, recv)]
        if key == self.key:
            return [(msg, stamp, recv)]
        self._held.append((key, msg, recv))
        votes = sum(1 for k in self._recent if k == key)
        if votes < self.settings.change_votes:
            return None
        old = self.key
        what = 'encoding' if key[0] != old[0] else 'resolution'
        held = [(m, stamp_to_ns(m.header.stamp), r) for k, m, r in self._held if k == key]
        self._reset_locked(f'{what} changed: {old[0]} {old[1]}x{old[2]} -> {key[0]} {key[1]}x{key[2]}')
        self.counters.add(f'{what}_changes')
        _LOG.warning('event stream %s; restarting decoder, windows and keyframes', self.last_reset_reason)
        self.key = key
        self._recent.extend([key] * len(held))
        self.counters.add('replayed_packets', max(0, len(held) - 1))
        return held

    def _check_time(self, msg: Any, stamp: int, recv: int) -> Optional[List[Tuple[Any, int, int]]]:
        """Time jumps: [] to go on, the packets to decode after a confirmed jump (the stream was reset; the current
        packet is the last of them), or None while a jump awaits confirmation (``msg`` is held)."""
        s = self.settings
        last = self._last_stamp
        if last is None:
            self._last_stamp = stamp
            return []
        back, fwd = s.time_jump_backward_s * 1e9, s.time_jump_forward_s * 1e9
        dt = stamp - last
        if -back <= dt <= fwd:
            if self._jump:              # odd packet(s), then the old time line again: they were garbage
                self._jump = []
            self._last_stamp = max(stamp, last)
            return []
        if self._jump and not -back <= stamp - self._jump[-1][1] <= fwd:
            self._jump = []             # not the same new time line as the held packets
        self._jump.append((msg, stamp, recv))
        if len(self._jump) < s.confirm_packets:
            return None
        pending, self._jump = self._jump, []
        key = self.key
        self._reset_locked(f'packet stamps jumped by {dt / 1e9:+.3f} s (bag restart or clock change)')
        self.counters.add('time_jumps')
        _LOG.warning('event stream: %s; restarting decoder, windows and keyframes', self.last_reset_reason)
        self.key = key
        if key is not None:
            self._recent.append(key)
        self._last_stamp = max(p[1] for p in pending)
        self.counters.add('replayed_packets', len(pending) - 1)
        return pending

    def _decode_into_windows(self, decoder: EventPacketDecoder, msg: Any, stamp: int, recv: int) -> int:
        result = decoder.decode_msg_full(msg)
        events = result.events
        if result.errors.get('rejected') or result.errors.get('decode_exceptions'):
            reason = decoder.last_error or 'rejected by the decoder'
            kind = ('decode_exception' if result.errors.get('decode_exceptions') else
                    'unknown_encoding' if 'encoding' in reason else 'invalid_size' if 'size' in reason else 'rejected')
            raise BadPacket(kind, reason)
        if len(events) and decoder.time_mode != 'sensor':
            # A corrupt payload (random bytes labelled evt3) can carry time words far from the packet stamp; the
            # codec would then clamp every later event to that time. Refuse the packet and restart the decoder so
            # the stream recovers at the next time word.
            limit = self.settings.max_packet_span_s * 1e9
            lo, hi = int(events.t[0]) - stamp, int(events.t[-1]) - stamp
            if hi > limit or lo < -limit:
                with self._lock:
                    if self._decoder is decoder:
                        self._retire(decoder)
                        self._decoder = None
                self.counters.add('implausible_packets')
                raise BadPacket('implausible_times', f'event times {lo / 1e9:+.3f} .. {hi / 1e9:+.3f} s from the '
                                f'packet stamp (limit {limit / 1e9:g} s): corrupt payload, decoder restarted')
        with self._lock:
            if self._decoder is not decoder and self._decoder is not None:
                return 0                      # the stream was reset meanwhile (clock jump): drop
            self.frame_id = decoder.frame_id
        n = len(events)
        if n:
            self.counters.add('events', n)
            self.event_rate.add(float(n))
            if self._deferred is not None:                 # in push_batch: handed over at its end
                self._deferred.append((events, stamp, recv, self.generation))
            else:
                self.scheduler.push(events, latest_time_ns=stamp, recv_monotonic_ns=recv)
        return n

    # ------------------------------------------------------------------------------------------------ output
    def next_window(self) -> Optional[Window]:
        """The newest complete window (older complete ones are dropped and counted), or None."""
        window = self.scheduler.next_window()
        if window is not None and window.skipped:
            self.counters.add('windows_dropped', window.skipped)
        return window

    @property
    def latest_time_ns(self) -> Optional[int]:
        return self.scheduler.latest_time_ns

    # ------------------------------------------------------------------------------------------------ reporting
    def _retire(self, decoder: EventPacketDecoder) -> None:
        for k, v in self._flat(decoder).items():
            self._retired[k] = self._retired.get(k, 0) + v

    @staticmethod
    def _flat(decoder: EventPacketDecoder) -> Dict[str, int]:
        stats = decoder.stats
        flat = {k: int(v) for k, v in stats.items() if isinstance(v, (int, np.integer)) and k != 'offset_ns'}
        for k, v in (stats.get('decoder_errors') or {}).items():
            flat[f'codec_errors.{k}'] = int(v)
        return flat

    def decoder_stats(self) -> Dict[str, int]:
        """Lifetime decoder counters (packets, dropped_packets, seq_gaps, codec_errors.*, ...) over all restarts."""
        totals = dict(self._retired)
        decoder = self._decoder
        if decoder is not None:
            for k, v in self._flat(decoder).items():
                totals[k] = totals.get(k, 0) + v
        return totals

    def diagnostics(self) -> Dict[str, Any]:
        """Key/values of the stream for /diagnostics (plain data)."""
        c = self.counters.snapshot()
        dec = self.decoder_stats()
        codec_errors = {k: v for k, v in dec.items() if k.startswith('codec_errors.')}
        decode_errors = sum(codec_errors.values())
        key = self.key
        values: Dict[str, Any] = {
            'packets': c.get('packets', 0), 'packets_per_s': self.packet_rate.rate(),
            'events': c.get('events', 0), 'events_per_s': self.event_rate.rate(),
            'bad_packets': c.get('bad_packets', 0), 'decode_errors': decode_errors,
            'dropped_packets': dec.get('dropped_packets', 0), 'seq_gaps': dec.get('seq_gaps', 0),
            'seq_resets': dec.get('seq_resets', 0),
            'encoding_changes': c.get('encoding_changes', 0), 'resolution_changes': c.get('resolution_changes', 0),
            'time_jumps': c.get('time_jumps', 0), 'stream_resets': c.get('stream_resets', 0),
            'replayed_packets': c.get('replayed_packets', 0),
            'clamped_events': dec.get('clamped_events', 0), 'offset_resets': dec.get('offset_resets', 0),
            'padding_words': dec.get('padding_words', 0),
            'unknown_encoding': c.get('bad_packets.unknown_encoding', 0) + dec.get('unknown_encoding', 0),
            'clock_jumps': c.get('clock_jumps', 0), 'bad_camera_info': c.get('bad_camera_info', 0),
            'buffered_events': self.scheduler.buffered_events,
            'buffer_overwritten_events': self.scheduler.evicted_events,
            'buffer_mb': window_memory_bytes(self.scheduler.capacity_events) / 2**20,
            'windows_dropped': c.get('windows_dropped', 0),
            'encoding': key[0] if key else '', 'width': key[1] if key else 0, 'height': key[2] if key else 0,
            'last_reset': self.last_reset_reason,
        }
        values.update(sorted(codec_errors.items()))
        values.update(sorted((k, v) for k, v in c.items() if k.startswith('bad_packets.')))
        return values

