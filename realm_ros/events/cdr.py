"""``event_camera_msgs/msg/EventPacket`` from its serialized (CDR) form, without rclpy.

The perception node takes event packets serialized from DDS and reads them here: rclpy's own take-and-convert of a
2.5 KB packet cost ~47-69 us of the intake thread, the serialized take ~13-19 us and :func:`event_packet_from_cdr`
~3 us (development machine; rosbags' general deserializer ~21 us). The layout is the plain CDR (XCDR1) of the
message as every ROS 2 middleware writes it: a 4-byte encapsulation header (``00 00`` big-endian, ``00 01``
little-endian), then, aligned to their size relative to the end of that header:

    int32 stamp.sec, uint32 stamp.nanosec, string frame_id   (uint32 length including the NUL, bytes, NUL)
    uint32 height, uint32 width, uint64 seq, uint64 time_base, string encoding, bool is_bigendian,
    sequence<uint8> events                                    (uint32 length, bytes)

Other representations (XCDR2, parameter lists) are refused with :class:`CdrError`; the caller then converts the
message with rclpy.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from realm_ros.common.errors import RealmError

__all__ = ['CdrError', 'EventPacketView', 'event_packet_from_cdr']


class CdrError(RealmError, ValueError):
    """A serialized message that is not plain CDR of the expected type, or is truncated / malformed."""


@dataclass(frozen=True)
class Stamp:
    """``builtin_interfaces/Time``."""

    sec: int = 0
    nanosec: int = 0


@dataclass(frozen=True)
class Header:
    """``std_msgs/Header``."""

    stamp: Stamp = field(default_factory=Stamp)
    frame_id: str = ''


@dataclass(frozen=True)
class EventPacketView:
    """An ``EventPacket`` read from its serialized form: the message's fields; ``events`` a read-only uint8 array
    over the serialized buffer (no copy)."""

    header: Header
    height: int
    width: int
    seq: int
    time_base: int
    encoding: str
    is_bigendian: bool
    events: np.ndarray


_FORMATS = {b'\x00\x00': '>', b'\x00\x01': '<'}
_ORIGIN = 4      # CDR alignment is relative to the end of the encapsulation header


def _string(raw: bytes, at: int, order: str, what: str) -> tuple[str, int]:
    """A CDR string at ``at`` (aligned already): (text, offset after it)."""
    (n,) = struct.unpack_from(order + 'I', raw, at)
    end = at + 4 + n
    if end > len(raw):
        raise CdrError(f'serialized EventPacket: {what} of {n} bytes runs past the end ({len(raw)} bytes)')
    body = raw[at + 4:end]
    if n and body[-1:] != b'\x00':
        raise CdrError(f'serialized EventPacket: {what} is not NUL-terminated')
    try:
        return body[:-1].decode('utf-8') if n else '', end
    except UnicodeDecodeError as exc:
        raise CdrError(f'serialized EventPacket: {what} is not UTF-8 ({exc})') from exc


def _align(at: int, size: int) -> int:
    return _ORIGIN + -(-(at - _ORIGIN) // size) * size


def event_packet_from_cdr(raw: bytes | bytearray | memoryview) -> EventPacketView:
    """Read one serialized ``event_camera_msgs/msg/EventPacket`` (see the module docstring).

    Raises:
        CdrError: not plain CDR, truncated, or a length that runs past the end of the buffer.
    """
    raw = bytes(raw) if not isinstance(raw, bytes) else raw
    order = _FORMATS.get(raw[:2])
    if order is None or len(raw) < _ORIGIN:
        raise CdrError(f'serialized EventPacket: CDR representation {raw[:2].hex() or "(empty)"} is not plain CDR '
                       '(0000 / 0001)')
    try:
        sec, nanosec = struct.unpack_from(order + 'iI', raw, _ORIGIN)
        frame_id, at = _string(raw, _ORIGIN + 8, order, 'frame_id')
        at = _align(at, 4)
        height, width = struct.unpack_from(order + 'II', raw, at)
        at = _align(at + 8, 8)
        seq, time_base = struct.unpack_from(order + 'QQ', raw, at)
        encoding, at = _string(raw, at + 16, order, 'encoding')
        if at >= len(raw):
            raise CdrError('serialized EventPacket: truncated before is_bigendian')
        is_bigendian = raw[at] != 0
        at = _align(at + 1, 4)
        (n,) = struct.unpack_from(order + 'I', raw, at)
    except struct.error as exc:
        raise CdrError(f'serialized EventPacket of {len(raw)} bytes is truncated ({exc})') from exc
    at += 4
    if at + n > len(raw):
        raise CdrError(f'serialized EventPacket: {n} event bytes announced, {len(raw) - at} present')
    return EventPacketView(Header(Stamp(sec, nanosec), frame_id), height, width, seq, time_base, encoding,
                           is_bigendian, np.frombuffer(raw, np.uint8, n, at))
