"""Vectorised parsing of the legacy per-event message types ``dvs_msgs/EventArray`` and
``prophesee_event_msgs/EventArray`` (docs/formats.md#legacy-event-arrays).

Both carry one struct per event with an absolute ROS time stamp, so they decode straight to ROS time. Parsing
works on the serialized bytes (ROS 2 CDR or ROS 1) with numpy strided views, never one Python object per event.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np

from realm_ros.common.errors import RealmError

from .types import EventArray

LEGACY_EVENT_ARRAY_TYPES = (
    'dvs_msgs/msg/EventArray', 'prophesee_event_msgs/msg/EventArray',
    'dvs_msgs/EventArray', 'prophesee_event_msgs/EventArray',
)

LEGACY_EVENT_MSG = """uint16 x
uint16 y
builtin_interfaces/Time ts
bool polarity
"""

LEGACY_EVENT_ARRAY_MSG = """std_msgs/Header header
uint32 height
uint32 width
{pkg}/Event[] events
"""


class LegacyParseError(RealmError, ValueError):
    """A serialized legacy EventArray is truncated or malformed."""


@dataclass
class Stamp:
    sec: int = 0
    nanosec: int = 0


@dataclass
class Header:
    stamp: Stamp = field(default_factory=Stamp)
    frame_id: str = ''


@dataclass
class LegacyEventArray:
    """A parsed dvs_msgs / prophesee_event_msgs EventArray: header, size and events already in ROS time (ns)."""

    header: Header
    height: int
    width: int
    events: EventArray
    msgtype: str = 'dvs_msgs/msg/EventArray'


# Element k >= 1 of a ROS 2 CDR Event[] array: x@0, y@2, sec@6, nsec@10, pol@14, stride 16
# (docs/formats.md#legacy-event-arrays).
_CDR_EVENT = np.dtype({'names': ['x', 'y', 'sec', 'nsec', 'pol'],
                       'formats': ['<u2', '<u2', '<i4', '<u4', 'u1'],
                       'offsets': [0, 2, 6, 10, 14], 'itemsize': 15})
_CDR_FIRST_EVENT = np.dtype({'names': ['x', 'y', 'sec', 'nsec', 'pol'],
                             'formats': ['<u2', '<u2', '<i4', '<u4', 'u1'],
                             'offsets': [0, 2, 4, 8, 12], 'itemsize': 13})
_ROS1_EVENT = np.dtype({'names': ['x', 'y', 'sec', 'nsec', 'pol'],
                        'formats': ['<u2', '<u2', '<u4', '<u4', 'u1'],
                        'offsets': [0, 2, 4, 8, 12], 'itemsize': 13})


def _need(buf_len: int, end: int, what: str) -> None:
    if end > buf_len:
        raise LegacyParseError(f'legacy EventArray truncated: {what} needs {end} bytes, message has {buf_len}')


def _times(sec: np.ndarray, nsec: np.ndarray) -> np.ndarray:
    return sec.astype(np.int64) * 1_000_000_000 + nsec.astype(np.int64)


def parse_legacy_event_array_cdr(raw: Any, msgtype: str = 'dvs_msgs/msg/EventArray') -> LegacyEventArray:
    """Parse a ROS 2 CDR (little endian) serialized dvs_msgs/prophesee_event_msgs EventArray.

    Raises:
        LegacyParseError: truncated message, big-endian CDR or inconsistent lengths.
    """
    buf = np.frombuffer(memoryview(raw).cast('B'), dtype=np.uint8)
    n_buf = len(buf)
    _need(n_buf, 16, 'header')
    if buf[1] != 1:
        raise LegacyParseError(f'legacy EventArray: unsupported CDR encapsulation {bytes(buf[:2]).hex()} '
                               '(only little endian is supported)')
    mv = buf.data  # memoryview for struct.unpack_from
    sec, nsec, slen = struct.unpack_from('<iII', mv, 4)
    _need(n_buf, 16 + slen, 'frame_id')
    frame_id = buf[16:16 + max(0, slen - 1)].tobytes().decode('utf-8', 'replace')
    pos = 16 + slen
    pos += (-(pos - 4)) % 4
    _need(n_buf, pos + 12, 'height/width/count')
    height, width, count = struct.unpack_from('<III', mv, pos)
    a = pos + 12
    header = Header(Stamp(sec, nsec), frame_id)
    if count == 0:
        return LegacyEventArray(header, height, width, EventArray.empty(), msgtype)
    end = a + 13 if count == 1 else a + 16 * count - 3
    _need(n_buf, end, f'{count} events')
    first = np.ndarray((1,), dtype=_CDR_FIRST_EVENT, buffer=buf, offset=a)
    if count > 1:
        rest = np.ndarray((count - 1,), dtype=_CDR_EVENT, buffer=buf, offset=a + 14, strides=(16,))
        x = np.concatenate([first['x'], rest['x']])
        y = np.concatenate([first['y'], rest['y']])
        t = np.concatenate([_times(first['sec'], first['nsec']), _times(rest['sec'], rest['nsec'])])
        p = np.concatenate([first['pol'], rest['pol']])
    else:
        x, y, t, p = first['x'], first['y'], _times(first['sec'], first['nsec']), first['pol']
    ev = EventArray(x.astype(np.uint16), y.astype(np.uint16), t, (p != 0).astype(np.uint8))
    return LegacyEventArray(header, height, width, ev, msgtype)


def parse_legacy_event_array_ros1(raw: Any, msgtype: str = 'dvs_msgs/EventArray') -> LegacyEventArray:
    """Parse a ROS 1 serialized dvs_msgs/prophesee_event_msgs EventArray (13 packed bytes per event)."""
    buf = np.frombuffer(memoryview(raw).cast('B'), dtype=np.uint8)
    mv = buf.data  # memoryview for struct.unpack_from
    n_buf = len(buf)
    _need(n_buf, 16, 'header')
    _seq, sec, nsec, slen = struct.unpack_from('<IIII', mv, 0)
    pos = 16 + slen
    _need(n_buf, pos + 12, 'frame_id/height/width/count')
    frame_id = buf[16:pos].tobytes().decode('utf-8', 'replace')
    height, width, count = struct.unpack_from('<III', mv, pos)
    a = pos + 12
    _need(n_buf, a + 13 * count, f'{count} events')
    rec = np.ndarray((count,), dtype=_ROS1_EVENT, buffer=buf, offset=a)
    ev = EventArray(rec['x'].astype(np.uint16), rec['y'].astype(np.uint16), _times(rec['sec'], rec['nsec']),
                    (rec['pol'] != 0).astype(np.uint8))
    return LegacyEventArray(Header(Stamp(sec, nsec), frame_id), height, width, ev, msgtype)


def legacy_events_from_message(msg: Any) -> EventArray:
    """Events (ROS time, ns) of an already deserialized legacy EventArray.

    Accepts a ``LegacyEventArray`` (zero cost) or a message object with an ``events`` list of Event objects
    (rclpy / rosbags). The latter walks one Python object per event because that is how those messages are
    built; subscribe with ``raw=True`` and use ``parse_legacy_event_array_cdr`` on hot paths instead.
    """
    if isinstance(msg, LegacyEventArray):
        return msg.events
    evs = msg.events
    n = len(evs)
    if n == 0:
        return EventArray.empty()
    x = np.fromiter((e.x for e in evs), np.uint16, n)
    y = np.fromiter((e.y for e in evs), np.uint16, n)
    sec = np.fromiter((e.ts.sec for e in evs), np.int64, n)
    nsec = np.fromiter((getattr(e.ts, 'nanosec', getattr(e.ts, 'nsec', 0)) for e in evs), np.int64, n)
    p = np.fromiter((1 if e.polarity else 0 for e in evs), np.uint8, n)
    return EventArray(x, y, sec * 1_000_000_000 + nsec, p)


def legacy_stats(msg: LegacyEventArray) -> Dict[str, int]:
    """Size summary used in logs."""
    return {'events': len(msg.events), 'width': int(msg.width), 'height': int(msg.height)}
