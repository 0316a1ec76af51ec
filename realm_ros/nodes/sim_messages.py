"""Cheap publishing for ``sim_event_camera``: EventPackets serialised once, frame messages built once.

At ~1000 packets per second the per-packet cost matters (the simulator shares 2 cores with the perception node).
:class:`PacketSerializer` serialises each simulated EVT3 packet once (CDR, stamp 0 and seq 0) and, per publication,
patches a copy of those bytes: the header stamp, ``seq`` and the payload's TIME_HIGH words (a pass of a looped
replay is the same packets moved by whole 4096 us steps). The patched bytes go to ``Publisher.publish(bytes)``
(rclpy's raw publish), so no message object is converted per packet. The byte layout is checked against
``rclpy.serialization`` at construction; where it does not hold (another middleware's CDR), :meth:`usable` is
false and the node builds message objects instead.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message

from ..sim.packets import PacketData, shift_evt3_payload
from .conversions import make_event_packet

_STAMP = struct.Struct('<iI')
_SEQ = struct.Struct('<Q')
_CDR_LE = b'\x00\x01'


@dataclass
class SerializedPacket:
    """One packet's CDR bytes (stamp/seq zero) and where its TIME_HIGH words are."""

    data: bytes
    payload_offset: int
    num_words: int
    high_index: np.ndarray      # indices (in uint16 words of the payload) of the TIME_HIGH words
    high_value: np.ndarray      # their 12-bit values in the unshifted payload
    num_events: int
    num_bytes: int


class PacketSerializer:
    """Serialise evt3 :class:`~realm_ros.sim.packets.PacketData` once, publish patched copies (module docstring)."""

    def __init__(self, width: int, height: int, frame_id: str) -> None:
        self.width, self.height, self.frame_id = int(width), int(height), str(frame_id)
        self.seq_offset = -1
        self.usable = False
        try:
            self._probe()
        except (ValueError, struct.error, IndexError):
            self.usable = False

    def message(self, payload: Any, seq: int, stamp_ns: int) -> Any:
        """The message object (the reference, and the fallback path)."""
        return make_event_packet(payload, 'evt3', self.width, self.height, seq, stamp_ns, self.frame_id)

    def _probe(self) -> None:
        payload = bytes(range(1, 33))
        a = serialize_message(self.message(payload, 0, 0))
        b = serialize_message(self.message(payload, 0x0807060504030201, 0))
        if a[:2] != _CDR_LE or len(a) != len(b) or not a.endswith(payload):
            return
        where = b.find(_SEQ.pack(0x0807060504030201))
        if where < 0 or a[where:where + 8] != bytes(8):
            return
        self.seq_offset = where
        # round trip of a patched packet with a moved payload must equal the message built directly
        pkt = PacketData(0, 0, 0, _evt3_probe_payload(), 1, 0)
        ser = self.serialize(pkt)
        self.usable = ser is not None
        if ser is not None:
            got = self.render(ser, 123_456_789_012, 77, 4096 * 5)
            want = self.message(shift_evt3_payload(pkt.payload, 4096 * 5), 77, 123_456_789_012)
            self.usable = same_packet(deserialize_message(got, type(want)), want)

    def serialize(self, pkt: PacketData) -> SerializedPacket | None:
        data = serialize_message(self.message(pkt.payload, 0, 0))
        n = len(pkt.payload)
        if not data.endswith(pkt.payload) or n % 2:
            return None
        words = np.frombuffer(pkt.payload, dtype='<u2')
        high = np.flatnonzero((words >> 12) == 8)
        return SerializedPacket(bytes(data), len(data) - n, n // 2, high, (words[high] & 0xFFF).astype(np.uint16),
                                pkt.num_events, len(data))

    def render(self, ser: SerializedPacket, stamp_ns: int, seq: int, shift_us: int) -> bytes:
        """CDR bytes of the packet with header stamp ``stamp_ns``, ``seq`` and events ``shift_us`` later (a multiple
        of 4096 us)."""
        buf = bytearray(ser.data)
        _STAMP.pack_into(buf, 4, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
        _SEQ.pack_into(buf, self.seq_offset, seq)
        k = (shift_us // 4096) & 0xFFF
        if k and len(ser.high_index):
            words = np.frombuffer(buf, dtype='<u2', count=ser.num_words, offset=ser.payload_offset)
            words[ser.high_index] = 0x8000 | ((ser.high_value + k) & 0xFFF)
            del words
        return bytes(buf)


def _evt3_probe_payload() -> bytes:
    from ..events.encoders import encode_evt3
    x = np.array([1, 2, 3], np.uint16)
    return encode_evt3(x, x, np.array([5_000_000, 5_004_100, 5_009_000], np.int64), np.array([1, 0, 1], np.int8))


def same_packet(a: Any, b: Any) -> bool:
    """Two EventPackets hold the same header, fields and payload. (Serialised bytes are not compared: CDR
    alignment padding is not zeroed by the serialiser, so equal messages may differ there.)"""
    return (a.header.stamp.sec, a.header.stamp.nanosec, a.header.frame_id, a.height, a.width, a.seq, a.time_base,
            a.encoding, a.is_bigendian, bytes(a.events)) == \
        (b.header.stamp.sec, b.header.stamp.nanosec, b.header.frame_id, b.height, b.width, b.seq, b.time_base,
         b.encoding, b.is_bigendian, bytes(b.events))
