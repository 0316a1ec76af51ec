"""The intake's own EventPacket CDR reader agrees with rosbags' (an independent, kept serializer) on real recorded
packets and on every field layout, both byte orders; every malformed buffer is refused with CdrError, never read
past its end."""
import numpy as np
import pytest

from realm_testing.events import EVT3_BAG
from realm_ros.events.bagio import EVENT_PACKET_TYPE, make_typestore
from realm_ros.events.cdr import CdrError, event_packet_from_cdr

FIELDS = ('height', 'width', 'seq', 'time_base', 'encoding', 'is_bigendian')


def _packet(frame_id='cam', encoding='evt3', payload=b'\x01\x02\x03', **over):
    T = make_typestore().types
    header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=over.pop('sec', 5),
                                                                            nanosec=over.pop('nanosec', 7)),
                                      frame_id=frame_id)
    values = dict(height=480, width=640, seq=3, time_base=0, encoding=encoding, is_bigendian=False)
    values.update(over)
    return T[EVENT_PACKET_TYPE](header=header, events=np.frombuffer(payload, np.uint8), **values)


def _same(view, msg):
    assert (view.header.stamp.sec, view.header.stamp.nanosec, view.header.frame_id) == \
        (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)
    for name in FIELDS:
        assert getattr(view, name) == getattr(msg, name), name
    assert view.events.dtype == np.uint8 and view.events.tobytes() == np.asarray(msg.events).tobytes()


def test_recorded_packets_read_as_rosbags_reads_them():
    from rosbags.rosbag2 import Reader
    store = make_typestore()
    n = 0
    with Reader(EVT3_BAG) as reader:
        for conn, _t, raw in reader.messages():
            if conn.msgtype != EVENT_PACKET_TYPE:
                continue
            _same(event_packet_from_cdr(raw), store.deserialize_cdr(raw, EVENT_PACKET_TYPE))
            n += 1
    assert n > 10


@pytest.mark.parametrize('little_endian', [True, False])
def test_every_alignment_and_both_byte_orders(little_endian):
    """String lengths 0-12 shift every later field through all alignments (uint64 fields align to 8)."""
    rng = np.random.default_rng(0)
    store = make_typestore()
    for i in range(60):
        msg = _packet(frame_id='f' * (i % 13), encoding=['evt3', 'mono', '', 'libcaer_cmp', 'trigger'][i % 5],
                      payload=rng.integers(0, 256, i * 7 % 41, dtype=np.uint8).tobytes(),
                      sec=int(rng.integers(-2 ** 31, 2 ** 31)), nanosec=int(rng.integers(0, 2 ** 32)),
                      height=int(rng.integers(0, 2 ** 32)), width=int(rng.integers(0, 2 ** 32)),
                      seq=int(rng.integers(0, 2 ** 63)) * 2 + 1, time_base=int(rng.integers(0, 2 ** 63)),
                      is_bigendian=bool(i % 2))
        raw = bytes(store.serialize_cdr(msg, EVENT_PACKET_TYPE, little_endian=little_endian))
        assert raw[:2] == (b'\x00\x01' if little_endian else b'\x00\x00')
        _same(event_packet_from_cdr(raw), msg)


def test_events_are_a_read_only_view_of_the_buffer():
    raw = bytes(make_typestore().serialize_cdr(_packet(payload=bytes(range(50))), EVENT_PACKET_TYPE))
    view = event_packet_from_cdr(raw)
    assert not view.events.flags.writeable and view.events.base is not None
    assert event_packet_from_cdr(bytearray(raw)).events.tobytes() == bytes(range(50))
    assert event_packet_from_cdr(memoryview(raw)).seq == 3


def test_every_truncation_is_refused():
    raw = bytes(make_typestore().serialize_cdr(_packet(frame_id='camera', payload=bytes(40)), EVENT_PACKET_TYPE))
    for cut in range(len(raw)):
        with pytest.raises(CdrError):
            event_packet_from_cdr(raw[:cut])
    assert event_packet_from_cdr(raw).events.size == 40


def test_other_representations_and_broken_fields_are_refused_and_named():
    raw = bytearray(make_typestore().serialize_cdr(_packet(frame_id='cam'), EVENT_PACKET_TYPE))
    for head in (b'\x00\x07', b'\x00\x03', b'\x01\x01'):              # XCDR2, parameter list, garbage
        with pytest.raises(CdrError, match='not plain CDR'):
            event_packet_from_cdr(bytes(head) + bytes(raw[2:]))
    bad = bytearray(raw)
    bad[12:16] = (1 << 30).to_bytes(4, 'little')                       # frame_id length beyond the buffer
    with pytest.raises(CdrError, match='frame_id'):
        event_packet_from_cdr(bytes(bad))
    bad = bytearray(raw)
    bad[19] = ord('x')                                                  # frame_id 'cam' without its NUL
    with pytest.raises(CdrError, match='NUL'):
        event_packet_from_cdr(bytes(bad))
    bad = bytearray(raw)
    bad[16] = 0xff                                                      # not UTF-8
    with pytest.raises(CdrError, match='UTF-8'):
        event_packet_from_cdr(bytes(bad))
    bad = bytearray(raw)
    bad[-7:-3] = (4).to_bytes(4, 'little')                              # 4 event bytes announced, 3 present
    with pytest.raises(CdrError, match='4 event bytes announced'):
        event_packet_from_cdr(bytes(bad))
