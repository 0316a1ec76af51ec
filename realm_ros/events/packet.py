"""Whole-message decoding: EventPacket (any encoding) and legacy EventArray messages -> events in ROS time.

``EventPacketDecoder`` is meant for one topic. Per message it

1. checks ``seq`` (gaps = dropped messages, counted; a lower value = publisher restart, counted),
2. picks the codec by (encoding, width, height); a change replaces the decoder and restarts time mapping (counted);
   an unknown encoding is counted and reported in ``last_error`` (it raises only with ``strict=True``),
3. decodes the payload with the stateful codec decoder (docs/formats.md#encodings),
4. maps sensor time to ROS time (docs/formats.md#time-stamps-and-clocks):
   ``time_mode='smoothed'`` (default) adds a smoothed
   ``header.stamp - t_first_event`` offset; ``'header'`` uses each message's own offset; ``'sensor'`` returns decoded
   sensor time unchanged,
5. keeps output time non-decreasing across messages (offset updates can step backwards; clamped events counted).

Legacy ``dvs_msgs`` / ``prophesee_event_msgs`` EventArray messages (``LegacyEventArray`` from ``bagio`` or message
objects with an ``events`` list) already carry absolute ROS time per event and pass through unchanged.

``msg`` may be an rclpy message, a rosbags message, or any object with the EventPacket fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Set, Tuple

import numpy as np

from realm_ros.common.errors import RealmError
from realm_ros.common.stamps import stamp_to_ns

from .codecs import Decoder, UnknownEncodingError, make_decoder, normalize_encoding, time_base_i64
from .legacy import LegacyEventArray, legacy_events_from_message
from .timesync import TIME_MODES, OffsetEstimator
from .types import EventArray, TriggerArray, merge_counts


@dataclass
class PacketResult:
    """Everything ``decode_msg_full`` learned from one message.

    ``events`` / ``triggers`` are in ROS time (or sensor time with ``time_mode='sensor'``); ``offset_ns`` is the
    offset that was added (ros = sensor + offset); ``dropped_before`` the number of messages missing before this one
    according to ``seq``; ``errors`` this message's error counts.
    """

    events: EventArray
    triggers: TriggerArray
    stamp_ns: int = 0
    offset_ns: int = 0
    dropped_before: int = 0
    errors: Dict[str, int] = field(default_factory=dict)


class _GeometryError(RealmError, ValueError):
    """A message announces a non-positive sensor size."""


def _is_legacy(msg: Any) -> bool:
    if isinstance(msg, LegacyEventArray):
        return True
    return not hasattr(msg, 'encoding') and isinstance(getattr(msg, 'events', None), (list, tuple))


class EventPacketDecoder:
    """Stateful decoder for one event topic (see module docstring).

    Args:
        time_mode: ``'smoothed'`` | ``'header'`` | ``'sensor'``.
        offset_window_s: smoothing horizon of the offset (sensor seconds).
        offset_mode: ``'ema'`` or ``'min'`` (running minimum).
        reset_threshold_s: an offset sample this far from the estimate restarts the estimate.
        strict: raise on unknown encodings / invalid geometry instead of counting them.
    """

    def __init__(self, time_mode: str = 'smoothed', offset_window_s: float = 10.0, offset_mode: str = 'ema',
                 reset_threshold_s: float = 0.5, strict: bool = False):
        if time_mode not in TIME_MODES:
            raise ValueError(f'time_mode must be one of {TIME_MODES}, got {time_mode!r}')
        self.time_mode = time_mode
        self.strict = bool(strict)
        self.offset = OffsetEstimator(int(offset_window_s * 1e9), offset_mode, int(reset_threshold_s * 1e9))
        self.decoder: Optional[Decoder] = None
        self._key: Optional[Tuple[str, int, int]] = None
        self._raw_key: Any = None
        self._last_seq: Optional[int] = None
        self._last_out_t: Optional[int] = None
        self._retired: Dict[str, int] = {}
        self._retired_padding = 0
        self._counts: Dict[str, int] = {
            'packets': 0, 'events': 0, 'triggers': 0, 'dropped_packets': 0, 'seq_gaps': 0, 'seq_resets': 0,
            'encoding_changes': 0, 'resolution_changes': 0, 'unknown_encoding': 0, 'bad_geometry': 0,
            'decode_exceptions': 0, 'clamped_events': 0, 'empty_packets': 0, 'legacy_packets': 0}
        self.unknown_encodings: Set[str] = set()
        self.last_error: Optional[str] = None
        self.width: Optional[int] = None
        self.height: Optional[int] = None
        self.encoding: Optional[str] = None
        self.frame_id: str = ''
        self.last_stamp_ns: Optional[int] = None

    # ---------------------------------------------------------------------------------------------- reporting
    @property
    def stats(self) -> Dict[str, Any]:
        """Counters plus the current decoder's ``errors`` merged with those of replaced decoders."""
        out: Dict[str, Any] = dict(self._counts)
        dec_errors = dict(self._retired)
        if self.decoder is not None:
            merge_counts(dec_errors, self.decoder.stats['errors'])
        out['decoder_errors'] = dec_errors
        # EVT3 padding words (0x9999): counted, but not errors
        out['padding_words'] = self._retired_padding + (
            int(self.decoder.stats.get('padding_words', 0)) if self.decoder is not None else 0)
        out['offset_resets'] = self.offset.resets
        out['offset_ns'] = self.offset.offset_ns
        return out

    @property
    def num_errors(self) -> int:
        """Total of all error-like counters (decoder errors, unknown encodings, exceptions, seq resets)."""
        s = self.stats
        return int(sum(s['decoder_errors'].values()) + s['unknown_encoding'] + s['bad_geometry']
                   + s['decode_exceptions'] + s['seq_resets'])

    @property
    def offset_ns(self) -> int:
        return self.offset.offset_ns

    def sensor_to_ros(self, t_sensor_ns: Any) -> Any:
        """Map sensor time(s) with the current offset (identity in ``'sensor'`` mode)."""
        if self.time_mode == 'sensor':
            return t_sensor_ns
        return t_sensor_ns + np.int64(self.offset.offset_ns)

    # ---------------------------------------------------------------------------------------------- decoding
    def decode_msg(self, msg: Any) -> EventArray:
        """Decode one message; returns its CD events in ROS time (ns). Never raises unless ``strict``."""
        return self.decode_msg_full(msg).events

    def decode_msg_full(self, msg: Any) -> PacketResult:
        """Decode one message; returns events, triggers, the offset used, seq gap and errors."""
        self._counts['packets'] += 1
        try:
            return self._decode(msg)
        except (UnknownEncodingError, _GeometryError) as exc:
            if self.strict:
                raise
            self.last_error = str(exc)
            return PacketResult(EventArray.empty(), TriggerArray.empty(), errors={'rejected': 1})
        except Exception as exc:  # a malformed message must never take the node down
            if self.strict:
                raise
            self._counts['decode_exceptions'] += 1
            self.last_error = f'{type(exc).__name__}: {exc}'
            return PacketResult(EventArray.empty(), TriggerArray.empty(), errors={'decode_exceptions': 1})

    def _check_seq(self, msg: Any) -> int:
        seq = getattr(msg, 'seq', None)
        if seq is None:
            return 0
        seq = int(seq)
        dropped = 0
        if self._last_seq is not None:
            if seq > self._last_seq + 1:
                dropped = seq - self._last_seq - 1
                self._counts['dropped_packets'] += dropped
                self._counts['seq_gaps'] += 1
            elif seq <= self._last_seq:
                self._counts['seq_resets'] += 1
        self._last_seq = seq
        return dropped

    def _select_decoder(self, encoding: str, width: int, height: int) -> Decoder:
        key = (encoding, width, height)
        if self._key == key and self.decoder is not None:
            return self.decoder
        try:
            dec = make_decoder(encoding, width, height)
        except UnknownEncodingError:
            self._counts['unknown_encoding'] += 1
            self.unknown_encodings.add(encoding)
            raise
        except ValueError as exc:
            self._counts['bad_geometry'] += 1
            raise _GeometryError(f'event packet with invalid sensor size {width}x{height} ({encoding})') from exc
        if self._key is not None:
            if self._key[0] != encoding:
                self._counts['encoding_changes'] += 1
            else:
                self._counts['resolution_changes'] += 1
            if self.decoder is not None:
                merge_counts(self._retired, self.decoder.stats['errors'])
                self._retired_padding += int(self.decoder.stats.get('padding_words', 0))
            self.offset.reset()
            self._last_out_t = None
        self.decoder = dec
        self._key = key
        self.encoding, self.width, self.height = encoding, width, height
        return dec

    def _decode(self, msg: Any) -> PacketResult:
        header = getattr(msg, 'header', None)
        stamp_ns = stamp_to_ns(header.stamp) if header is not None else 0
        if header is not None:
            self.frame_id = str(getattr(header, 'frame_id', ''))
        self.last_stamp_ns = stamp_ns
        dropped = self._check_seq(msg)
        if _is_legacy(msg):
            self._counts['legacy_packets'] += 1
            ev = legacy_events_from_message(msg)
            self.width, self.height = int(getattr(msg, 'width', 0)), int(getattr(msg, 'height', 0))
            if self.width and self.height and len(ev):
                ok = (ev.x < self.width) & (ev.y < self.height)
                bad = len(ev) - int(np.count_nonzero(ok))
                if bad:
                    ev = ev.select(ok)
                    self._retired['out_of_range'] = self._retired.get('out_of_range', 0) + bad
            ev = self._monotonic(ev, check_all=True)
            self._counts['events'] += len(ev)
            return PacketResult(ev, TriggerArray.empty(), stamp_ns, 0, dropped, {})
        raw_key = (msg.encoding, msg.width, msg.height)
        if raw_key == self._raw_key and self.decoder is not None:
            dec = self.decoder
        else:
            dec = self._select_decoder(normalize_encoding(msg.encoding), int(msg.width), int(msg.height))
            self._raw_key = raw_key
        res = dec.decode(msg.events, int(getattr(msg, 'time_base', 0)), bool(getattr(msg, 'is_bigendian', False)))
        ev, tr = res.events, res.triggers
        if len(ev) == 0 and len(tr) == 0:
            self._counts['empty_packets'] += 1
        offset = 0
        if self.time_mode != 'sensor':
            firsts = [int(a.t[0]) for a in (ev, tr) if len(a)]
            if firsts and header is not None:
                t_first = min(firsts)
                # modulo 2^64 like the codecs' time_base arithmetic: a uint64 time_base >= 2^63 maps back exactly
                sample = int(time_base_i64(stamp_ns - t_first))
                if self.time_mode == 'header':
                    offset = sample
                else:
                    offset = self.offset.update(sample, t_first)
            else:
                offset = self.offset.offset_ns
            if offset:
                # the codec's output arrays are fresh and owned here: shift in place
                if len(ev):
                    np.add(ev.t, np.int64(offset), out=ev.t)
                if len(tr):
                    np.add(tr.t, np.int64(offset), out=tr.t)
        ev = self._monotonic(ev, check_all='time_backwards' in res.errors)
        self._counts['events'] += len(ev)
        self._counts['triggers'] += len(tr)
        return PacketResult(ev, tr, stamp_ns, offset, dropped, res.errors)

    def _monotonic(self, ev: EventArray, check_all: bool) -> EventArray:
        """Clamp times so that output never goes backwards (offset steps, sensor glitches).

        Codec output is non-decreasing unless the codec counted ``time_backwards``; only then (or for legacy
        arrays) is the whole message scanned, otherwise just its head against the previous message.
        """
        if len(ev) == 0:
            return ev
        last = self._last_out_t
        t = ev.t
        needs = (last is not None and t[0] < last)
        if check_all and not needs and len(t) > 1:
            needs = not bool(np.all(t[1:] >= t[:-1]))
        if needs:
            t2 = t.copy()
            if last is not None:
                np.maximum(t2, last, out=t2)
            np.maximum.accumulate(t2, out=t2)
            self._counts['clamped_events'] += int(np.count_nonzero(t2 != t))
            ev = EventArray(ev.x, ev.y, t2, ev.p)
        self._last_out_t = int(ev.t[-1])
        return ev
