"""Bag and RAW input: typestore, sqlite3/mcap/ROS 1 reading, broken bags, legacy fast parse, RAW headers."""
import numpy as np
import pytest

from realm_testing.events import EVT3_BAG, EVT3_RAW, evt3_payloads
from realm_ros.events.bagio import (EVENT_PACKET_MSG, BagReadError, iter_bag_messages, iter_raw_evt3_chunks,
                                    list_bag_topics, make_typestore, read_raw_evt3, write_raw_evt3)
from realm_ros.events.legacy import parse_legacy_event_array_cdr, parse_legacy_event_array_ros1

RIHS01 = 'RIHS01_d6fa176260b1f37e5a40845305315e150a0f18191241eb64f407442aa29844aa'


def make_packet(ts, payload, seq, msgtype='event_camera_msgs/msg/EventPacket', encoding='evt3'):
    T = ts.types
    header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=5, nanosec=seq), frame_id='cam')
    return T[msgtype](header=header, height=480, width=640, seq=seq, time_base=0, encoding=encoding,
                      is_bigendian=False, events=np.frombuffer(payload, np.uint8))


def make_legacy(ts, n, seed=0, pkg='dvs_msgs', ros1=False):
    rng = np.random.default_rng(seed)
    T = ts.types
    time_t = T['builtin_interfaces/msg/Time']
    events = [T[f'{pkg}/msg/Event'](x=int(rng.integers(0, 640)), y=int(rng.integers(0, 480)),
                                    ts=time_t(sec=int(rng.integers(0, 2 ** 31)), nanosec=int(rng.integers(0, 10 ** 9))),
                                    polarity=bool(rng.integers(0, 2))) for _ in range(n)]
    header = T['std_msgs/msg/Header'](**({'seq': 3} if ros1 else {}), stamp=time_t(sec=1, nanosec=2),
                                      frame_id='dvs_frame')
    return T[f'{pkg}/msg/EventArray'](header=header, height=480, width=640, events=events)


def write_bag(path, plugin, msgs, version=9):
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = make_typestore()
    with Writer(path, version=version, storage_plugin=getattr(StoragePlugin, plugin)) as w:
        conns = {}
        for i, (topic, msgtype, msg) in enumerate(msgs):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=ts)
            w.write(conns[topic], 1000 + i, bytes(ts.serialize_cdr(msg, msgtype)))


def test_typestore_registers_event_types_with_the_upstream_hash():
    ts = make_typestore()
    assert ts.hash_rihs01('event_camera_msgs/msg/EventPacket') == RIHS01
    for name in ('event_array_msgs/msg/EventArray', 'dvs_msgs/msg/EventArray', 'prophesee_event_msgs/msg/EventArray'):
        assert name in ts.types
    interface = EVT3_BAG.parents[2] / 'interfaces' / 'event_camera_msgs' / 'msg' / 'EventPacket.msg'
    assert EVENT_PACKET_MSG == interface.read_text()  # one definition for bags and the built interface


def test_reads_the_sqlite_sample_as_directory_and_bare_file():
    for path in (EVT3_BAG, EVT3_BAG / 'test_events_1.db3'):
        msgs = list(iter_bag_messages(path))
        assert len(msgs) == 517
        topic, msgtype, t_ns, msg = msgs[0]
        expected = ('/event_camera/events', 'event_camera_msgs/msg/EventPacket', 'evt3', 640, 480)
        assert (topic, msgtype, msg.encoding, msg.width, msg.height) == expected
        assert msg.events.tobytes() == evt3_payloads()[0][0]
    assert list(iter_bag_messages(EVT3_BAG, topics=['/other'])) == []
    assert list_bag_topics(EVT3_BAG) == {'/event_camera/events': 'event_camera_msgs/msg/EventPacket'}
    with pytest.raises(FileNotFoundError, match='no_such_bag'):
        list(iter_bag_messages(EVT3_BAG.parent / 'no_such_bag'))


@pytest.mark.parametrize('plugin', ['MCAP', 'SQLITE3'])
def test_written_bags_round_trip_all_event_types(tmp_path, plugin):
    ts = make_typestore()
    payloads = [p for p, _, _ in evt3_payloads()[:5]]
    msgs = [('/cam/events', 'event_camera_msgs/msg/EventPacket', make_packet(ts, p, i)) for i, p in
            enumerate(payloads)]
    msgs.append(('/old/events', 'event_array_msgs/msg/EventArray',
                 make_packet(ts, payloads[0], 9, 'event_array_msgs/msg/EventArray', 'mono')))
    legacy = make_legacy(ts, 37, seed=1)
    msgs.append(('/dvs/events', 'dvs_msgs/msg/EventArray', legacy))
    bag = tmp_path / 'bag'
    write_bag(bag, plugin, msgs)
    got = list(iter_bag_messages(bag))
    assert [g[0] for g in got] == [m[0] for m in msgs]
    for (_, _, _, m), p in zip(got[:5], payloads):
        assert m.events.tobytes() == p
    assert got[5][3].encoding == 'mono' and got[5][1] == 'event_array_msgs/msg/EventArray'
    parsed = got[6][3]
    assert parsed.width == 640 and parsed.header.frame_id == 'dvs_frame' and len(parsed.events) == 37
    assert parsed.events.x.tolist() == [e.x for e in legacy.events]
    assert parsed.events.t.tolist() == [e.ts.sec * 10 ** 9 + e.ts.nanosec for e in legacy.events]
    assert parsed.events.p.tolist() == [int(e.polarity) for e in legacy.events]


def test_mcap_with_empty_storage_identifier_is_read_from_its_file(tmp_path):
    ts = make_typestore()
    bag = tmp_path / 'bag'
    write_bag(bag, 'MCAP', [('/e', 'event_camera_msgs/msg/EventPacket', make_packet(ts, b'\x01\x02', 0))])
    meta = bag / 'metadata.yaml'
    text = meta.read_text().replace('storage_identifier: mcap', 'storage_identifier: ""')
    meta.write_text(text)
    assert len(list(iter_bag_messages(bag))) == 1


@pytest.mark.parametrize('plugin,suffix', [('MCAP', '.mcap'), ('SQLITE3', '.db3')])
def test_truncated_or_corrupt_bags_raise_bag_read_error(tmp_path, plugin, suffix):
    ts = make_typestore()
    bag = tmp_path / 'bag'
    msgs = [('/e', 'event_camera_msgs/msg/EventPacket', make_packet(ts, p, i))
            for i, (p, _, _) in enumerate(evt3_payloads()[:200])]
    write_bag(bag, plugin, msgs)
    data_file = next(bag.glob('*' + suffix))
    broken = tmp_path / ('broken' + suffix)
    raw = data_file.read_bytes()
    broken.write_bytes(raw[:len(raw) // 3])
    with pytest.raises(BagReadError, match='broken'):
        list(iter_bag_messages(broken))
    garbage = tmp_path / ('garbage' + suffix)
    garbage.write_bytes(b'\x00not a bag' * 100)
    with pytest.raises(BagReadError, match='garbage'):
        list(iter_bag_messages(garbage))


def test_undeserializable_messages_are_counted_or_raised(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = make_typestore()
    bag = tmp_path / 'bag'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection('/dvs', 'dvs_msgs/msg/EventArray', typestore=ts)
        w.write(c, 1, bytes(ts.serialize_cdr(make_legacy(ts, 3), 'dvs_msgs/msg/EventArray')))
        w.write(c, 2, b'\x00\x01\x00\x00' + b'\x01' * 10)  # cut short
    with pytest.raises(BagReadError, match='/dvs'):
        list(iter_bag_messages(bag))
    errors = {}
    assert len(list(iter_bag_messages(bag, errors=errors))) == 1 and errors == {'bad_messages': 1}


@pytest.mark.parametrize('n', [0, 1, 2, 50])
def test_legacy_cdr_fast_parse_equals_rosbags(n):
    ts = make_typestore()
    for pkg in ('dvs_msgs', 'prophesee_event_msgs'):
        msg = make_legacy(ts, n, seed=n, pkg=pkg)
        raw = bytes(ts.serialize_cdr(msg, f'{pkg}/msg/EventArray'))
        parsed = parse_legacy_event_array_cdr(raw)
        ref = ts.deserialize_cdr(raw, f'{pkg}/msg/EventArray')
        assert (parsed.height, parsed.width, parsed.header.frame_id) == (480, 640, 'dvs_frame')
        assert (parsed.header.stamp.sec, parsed.header.stamp.nanosec) == (1, 2)
        assert parsed.events.x.tolist() == [e.x for e in ref.events]
        assert parsed.events.y.tolist() == [e.y for e in ref.events]
        assert parsed.events.t.tolist() == [e.ts.sec * 10 ** 9 + e.ts.nanosec for e in ref.events]
        assert parsed.events.p.tolist() == [int(e.polarity) for e in ref.events]


def test_ros1_bag_with_legacy_arrays(tmp_path):
    from rosbags.rosbag1 import Writer

    ts1 = make_typestore(ros1=True)
    msg = make_legacy(ts1, 25, seed=4, ros1=True)
    raw = bytes(ts1.serialize_ros1(msg, 'dvs_msgs/msg/EventArray'))
    assert len(raw) == 4 + 8 + 4 + len('dvs_frame') + 12 + 13 * 25  # packed 13 bytes per event
    parsed = parse_legacy_event_array_ros1(raw)
    assert parsed.events.t.tolist() == [e.ts.sec * 10 ** 9 + e.ts.nanosec for e in msg.events]
    path = tmp_path / 'x.bag'
    with Writer(path) as w:
        c = w.add_connection('/dvs/events', 'dvs_msgs/msg/EventArray', typestore=ts1)
        w.write(c, 42, raw)
    (topic, msgtype, t_ns, got), = list(iter_bag_messages(path))
    assert topic == '/dvs/events' and t_ns == 42
    assert got.events.x.tolist() == [e.x for e in msg.events]


def test_raw_file_header_payload_and_chunks(tmp_path):
    raw = read_raw_evt3(EVT3_RAW)
    assert raw.header[0] == '% evt 3.0' and raw.header[-1] == '% end'
    assert (raw.width, raw.height) == (640, 480) and raw.format == {'height': '480', 'width': '640'}
    assert raw.payload.tobytes() == b''.join(p for p, _, _ in evt3_payloads())
    chunks = list(iter_raw_evt3_chunks(EVT3_RAW, chunk_bytes=100_001))
    assert all(len(c) % 2 == 0 for c in chunks[:-1])
    assert np.concatenate(chunks).tobytes() == raw.payload.tobytes()
    out = tmp_path / 'w.raw'
    write_raw_evt3(out, b'\x01\x80\x02\x60', 346, 260)
    back = read_raw_evt3(out)
    assert (back.width, back.height, back.payload.tobytes()) == (346, 260, b'\x01\x80\x02\x60')
    # an old-style header without '% end' and with only a geometry line
    old = tmp_path / 'old.raw'
    old.write_bytes(b'% date 2020\n% geometry 1280x720\n' + b'\x05\x60')
    r = read_raw_evt3(old)
    assert (r.width, r.height, r.payload.tobytes()) == (1280, 720, b'\x05\x60')
    evt2 = tmp_path / 'evt2.raw'
    evt2.write_bytes(b'% evt 2.0\n% end\n\x00\x00\x00\x00')
    with pytest.raises(BagReadError, match='not EVT 3.0'):
        read_raw_evt3(evt2)
    with pytest.raises(FileNotFoundError):
        read_raw_evt3(tmp_path / 'missing.raw')


def test_ros1_event_packet_bag(tmp_path):
    from rosbags.rosbag1 import Writer

    ts1 = make_typestore(ros1=True)
    _, md5 = ts1.generate_msgdef('event_camera_msgs/msg/EventPacket', ros_version=1)
    # the md5 recorded in the ROS 1 sample bag (docs/formats.md#eventpacket-message)
    assert md5 == '8a6101b351a64529ac77bd8b71074e52'
    T = ts1.types
    payload = evt3_payloads()[0][0]
    header = T['std_msgs/msg/Header'](seq=1, stamp=T['builtin_interfaces/msg/Time'](sec=3, nanosec=4), frame_id='c')
    msg = T['event_camera_msgs/msg/EventPacket'](header=header, height=480, width=640, seq=7, time_base=0,
                                                 encoding='evt3', is_bigendian=False,
                                                 events=np.frombuffer(payload, np.uint8))
    path = tmp_path / 'p.bag'
    with Writer(path) as w:
        c = w.add_connection('/event_camera/events', 'event_camera_msgs/msg/EventPacket', typestore=ts1)
        w.write(c, 5, bytes(ts1.serialize_ros1(msg, 'event_camera_msgs/msg/EventPacket')))
    (_, msgtype, _, got), = list(iter_bag_messages(path))
    assert msgtype == 'event_camera_msgs/msg/EventPacket' and got.seq == 7 and got.events.tobytes() == payload
