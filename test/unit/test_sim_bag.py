"""Simulated bags: round trip through rosbags and realm_ros.events, packet timing, message contents."""
import numpy as np
import pytest

from realm_ros.events.bagio import iter_bag_messages, list_bag_topics
from realm_ros.events.packet import EventPacketDecoder
from realm_ros.events.types import EventArray
from realm_ros.sim import topics as T
from realm_ros.sim.bag import read_sim_info, write_sim_bag
from realm_ros.sim.camera import quaternion_to_rotation
from realm_ros.sim.packets import EventPacketizer
from realm_ros.sim.simulator import SimConfig, Simulator

CFG = SimConfig(width=64, height=48)
SECONDS = 0.15


def _sorted(ev: EventArray, t_offset: int = 0) -> np.ndarray:
    o = np.lexsort((ev.x, ev.p, ev.y, ev.t))
    return np.stack([ev.t[o] - t_offset, ev.x[o], ev.y[o], ev.p[o]])


@pytest.fixture(scope='module')
def sim_reference():
    sim = Simulator(CFG.with_(seed=11, duration_s=SECONDS))
    chunks = list(sim.stream())
    return sim, chunks


@pytest.fixture(scope='module')
def sqlite_bag(tmp_path_factory, sim_reference):
    path = tmp_path_factory.mktemp('simbag') / 'bag'
    summary = write_sim_bag(path, SECONDS, seed=11, config=CFG)
    return path, summary


def test_bag_lists_every_topic_with_its_type(sqlite_bag):
    path, summary = sqlite_bag
    topics = list_bag_topics(path)
    assert topics == {
        T.EVENTS_TOPIC: T.EVENT_PACKET_TYPE, T.EVENT_CAMERA_INFO_TOPIC: T.CAMERA_INFO_TYPE,
        T.EVENT_DEPTH_TOPIC: T.IMAGE_TYPE, T.EVENT_LABELS_TOPIC: T.IMAGE_TYPE, T.RGB_IMAGE_TOPIC: T.IMAGE_TYPE,
        T.RGB_CAMERA_INFO_TOPIC: T.CAMERA_INFO_TYPE, T.RGB_DEPTH_TOPIC: T.IMAGE_TYPE,
        T.RGB_LABELS_TOPIC: T.IMAGE_TYPE, T.TF_STATIC_TOPIC: T.TF_MESSAGE_TYPE, T.GT_POSE_TOPIC: T.POSE_STAMPED_TYPE}
    assert summary.num_frames == 5 and summary.message_counts[T.RGB_IMAGE_TOPIC] == 5
    assert summary.message_counts[T.EVENTS_TOPIC] == summary.num_packets
    # about one packet per millisecond of a moving camera
    assert 0.8 * SECONDS * 1000 <= summary.num_packets <= SECONDS * 1000 + 1
    info = read_sim_info(path)
    assert info['summary']['num_events'] == summary.num_events and info['config']['seed'] == 11


def test_decoded_events_equal_the_simulated_events_in_ros_time(sqlite_bag, sim_reference):
    path, summary = sqlite_bag
    _, chunks = sim_reference
    ref = EventArray.concat([c.events for c in chunks])
    dec = EventPacketDecoder()
    got, seqs, stamps, firsts, records = [], [], [], [], []
    for _topic, _type, t_rec, msg in iter_bag_messages(path, [T.EVENTS_TOPIC]):
        assert msg.encoding == 'evt3' and (msg.width, msg.height) == (64, 48) and msg.time_base == 0
        assert msg.header.frame_id == T.EVENT_FRAME_ID and not msg.is_bigendian
        ev = dec.decode_msg(msg)
        got.append(ev)
        seqs.append(msg.seq)
        stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        firsts.append(int(ev.t.min()))
        records.append(t_rec)
    ev = EventArray.concat(got)
    assert len(ev) == len(ref) == summary.num_events > 1000
    assert np.array_equal(_sorted(ev, summary.start_time_ns), _sorted(ref))
    assert seqs == list(range(len(seqs)))
    # header stamp = ROS time of the packet's first event; packets cover 1 ms windows of sensor time
    assert stamps == firsts
    sensor_us = (np.asarray(firsts) - summary.start_time_ns) // 1000 + summary.sensor_time_offset_us
    assert np.all(np.diff(sensor_us // 1000) > 0)
    assert np.all(np.asarray(records) >= np.asarray(stamps))
    assert dec.num_errors == 0 and dec.stats['dropped_packets'] == 0


def test_frames_ground_truth_and_transforms_round_trip(sqlite_bag, sim_reference):
    path, summary = sqlite_bag
    sim, chunks = sim_reference
    msgs = {}
    last_t = -1
    for topic, _type, t_rec, msg in iter_bag_messages(path):
        assert t_rec >= last_t                                     # record-time order
        last_t = t_rec
        msgs.setdefault(topic, []).append(msg)
    k = 2
    frame = chunks[k].frame
    t_ros = summary.start_time_ns + frame.t_ns

    def stamp(m):
        return m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec

    rgb = msgs[T.RGB_IMAGE_TOPIC][k]
    assert (rgb.encoding, rgb.width, rgb.height, rgb.step, stamp(rgb)) == ('rgb8', 64, 48, 192, t_ros)
    assert np.array_equal(np.asarray(rgb.data).reshape(48, 64, 3), frame.rgb)
    for topic, ref, enc, frame_id in ((T.RGB_DEPTH_TOPIC, frame.rgb_depth, '32FC1', T.RGB_FRAME_ID),
                                      (T.EVENT_DEPTH_TOPIC, frame.event_depth, '32FC1', T.EVENT_FRAME_ID),
                                      (T.RGB_LABELS_TOPIC, frame.rgb_labels, 'mono8', T.RGB_FRAME_ID),
                                      (T.EVENT_LABELS_TOPIC, frame.event_labels, 'mono8', T.EVENT_FRAME_ID)):
        m = msgs[topic][k]
        assert m.encoding == enc and m.header.frame_id == frame_id and stamp(m) == t_ros
        arr = np.frombuffer(np.asarray(m.data).tobytes(), ref.dtype).reshape(ref.shape)
        assert np.array_equal(arr, ref, equal_nan=True)
    info = msgs[T.EVENT_CAMERA_INFO_TOPIC][k]
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), sim.event_camera.K)
    assert (info.width, info.height, info.distortion_model) == (64, 48, 'plumb_bob')
    np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4)[:, :3], sim.event_camera.K)
    pose = msgs[T.GT_POSE_TOPIC][k]
    assert pose.header.frame_id == T.WORLD_FRAME_ID and stamp(pose) == t_ros
    p, q = pose.pose.position, pose.pose.orientation
    np.testing.assert_allclose([p.x, p.y, p.z], frame.T_world_event[:3, 3])
    np.testing.assert_allclose(quaternion_to_rotation([q.x, q.y, q.z, q.w]), frame.T_world_event[:3, :3],
                               atol=1e-12)
    (tf,) = msgs[T.TF_STATIC_TOPIC]
    (tr,) = tf.transforms
    assert (tr.header.frame_id, tr.child_frame_id) == (T.EVENT_FRAME_ID, T.RGB_FRAME_ID)
    assert tr.transform.rotation.w == pytest.approx(1.0) and tr.transform.translation.x == 0.0


def test_mcap_storage_and_noisy_stamps(tmp_path):
    path = tmp_path / 'bag_mcap'
    summary = write_sim_bag(path, 0.05, seed=12, config=CFG, storage='mcap', stamp_latency_ns=300_000,
                            stamp_jitter_ns=200_000, ground_truth=False)
    assert any(p.suffix == '.mcap' for p in path.iterdir())
    topics = list_bag_topics(path)
    assert T.GT_POSE_TOPIC not in topics and T.RGB_DEPTH_TOPIC not in topics and T.RGB_IMAGE_TOPIC in topics
    dec = EventPacketDecoder(time_mode='sensor')
    n = 0
    for _topic, _type, _t, msg in iter_bag_messages(path, [T.EVENTS_TOPIC]):
        ev = dec.decode_msg(msg)
        n += len(ev)
        first_ros = summary.start_time_ns + (int(ev.t.min()) // 1000 - summary.sensor_time_offset_us) * 1000
        lag = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec - first_ros
        assert 300_000 <= lag < 500_000
    assert n == summary.num_events > 0


def test_bad_arguments_raise_clear_errors(tmp_path):
    (tmp_path / 'exists').mkdir()
    with pytest.raises(FileExistsError, match='exists'):
        write_sim_bag(tmp_path / 'exists', 0.1)
    with pytest.raises(ValueError, match='storage'):
        write_sim_bag(tmp_path / 'x', 0.1, storage='rosbag1')
    with pytest.raises(ValueError, match='seconds'):
        write_sim_bag(tmp_path / 'y', 0.0)
    with pytest.raises(FileNotFoundError, match='write_sim_bag'):
        read_sim_info(tmp_path)


def test_packetizer_windows_carry_over_and_sensor_wrap():
    # events at sensor times close to the 2^24 us wrap, pushed in two pieces
    offset = (1 << 24) - 1500
    pk = EventPacketizer(packet_interval_us=1000, start_time_ns=10**18, sensor_time_offset_us=offset)
    t = np.array([1, 400, 999, 1000, 1600, 2400, 3100], np.int64) * 1000
    ev = EventArray.from_arrays(np.arange(7), np.arange(7), t, np.ones(7))
    first = pk.push(ev.slice(0, 5), t_until_ns=2_000_000)
    # windows are aligned to sensor time: [.. -500), [-500, 500), [500, 1500) us of simulation time ...
    sensor = offset + t // 1000
    win = sensor // 1000
    n_first = int(np.sum(win < (offset + 2000) // 1000))
    assert sum(p.num_events for p in first) == n_first
    rest = pk.push(ev.slice(5, 7), t_until_ns=3_100_000) + pk.flush()
    packets = first + rest
    assert [p.seq for p in packets] == list(range(len(packets)))
    assert sum(p.num_events for p in packets) == 7 and len(packets) == len(np.unique(win))
    assert all(p.stamp_ns == p.first_event_ros_ns for p in packets)
    from realm_ros.events.codecs import make_decoder
    dec = make_decoder('evt3', 64, 48)
    out = EventArray.concat([dec.decode(p.payload).events for p in packets])
    # decoded sensor time continues across the 24-bit wrap
    np.testing.assert_array_equal(out.t, sensor * 1000)
    with pytest.raises(ValueError, match='back in time'):
        pk.push(ev.slice(0, 1), t_until_ns=4_000_000)


def test_shifted_evt3_payload_equals_re_encoding():
    from realm_ros.events.encoders import encode_evt3
    from realm_ros.sim.packets import shift_evt3_payload
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(16_770_000, 16_790_000, 500))          # crosses the 2^24 us wrap
    x, y, p = rng.integers(0, 300, 500), rng.integers(0, 200, 500), rng.integers(0, 2, 500)
    payload = encode_evt3(x, y, t, p)
    for k in (1, 7, 4095, 4096 * 3 + 5):
        assert shift_evt3_payload(payload, 4096 * k) == encode_evt3(x, y, t + 4096 * k, p)
    with pytest.raises(ValueError, match='multiple of 4096'):
        shift_evt3_payload(payload, 1000)
