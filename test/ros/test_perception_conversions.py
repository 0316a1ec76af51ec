"""Message <-> numpy conversions of the perception node (real rclpy message classes, no DDS traffic needed)."""
import array
import math
import statistics
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')

from realm_ros.nodes import conversions as cv


def header(t_ns=1_675_956_550_318_916_461, frame='event_cam'):
    return cv.make_header(t_ns, frame)


def test_stamp_round_trip_and_negative_time_rejected():
    h = header(1_675_956_550_318_916_461)
    assert (h.stamp.sec, h.stamp.nanosec) == (1_675_956_550, 318_916_461)
    assert cv.stamp_to_ns(h.stamp) == 1_675_956_550_318_916_461
    with pytest.raises(ValueError, match='negative'):
        cv.ns_to_stamp(-1)


@pytest.mark.parametrize('encoding, dtype, shape', [
    ('32FC1', np.float32, (37, 51)),
    ('bgr8', np.uint8, (37, 51, 3)),
    ('rgb8', np.uint8, (4, 5, 3)),
    ('mono8', np.uint8, (37, 51)),
    ('16UC1', np.uint16, (12, 7)),
    ('bgra8', np.uint8, (3, 2, 4)),
])
def test_image_round_trip(encoding, dtype, shape):
    rng = np.random.default_rng(0)
    if dtype == np.float32:
        img = rng.uniform(0.5, 80, shape).astype(dtype)
        img[3, 4] = np.nan
    else:
        img = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    msg = cv.image_from_array(img, encoding, header())
    assert isinstance(msg.data, array.array) and msg.data.typecode == 'B'
    assert (msg.height, msg.width, msg.encoding) == (shape[0], shape[1], encoding)
    itemsize = np.dtype(dtype).itemsize
    channels = shape[2] if len(shape) == 3 else 1
    assert msg.step == shape[1] * channels * itemsize
    assert len(msg.data) == msg.step * msg.height
    assert msg.header.frame_id == 'event_cam'
    back = cv.image_to_array(msg)
    assert back.dtype == dtype and back.shape == shape
    assert np.array_equal(back, img, equal_nan=True)


def test_depth_image_bytes_are_little_endian_float32_metres():
    depth = np.array([[1.5, np.nan], [80.0, 2.25]], dtype=np.float32)
    msg = cv.image_from_array(depth, '32FC1', header())
    assert msg.is_bigendian is False or msg.is_bigendian == 0
    raw = np.frombuffer(msg.data, dtype='<f4').reshape(2, 2)
    assert raw[0, 0] == 1.5 and math.isnan(raw[0, 1]) and raw[1, 0] == 80.0


def test_image_to_array_honours_row_padding_and_big_endian():
    from sensor_msgs.msg import Image
    values = np.arange(6, dtype=np.uint16).reshape(2, 3) * 1000
    rows = []
    for row in values:
        rows.append(row.astype('>u2').tobytes() + b'\xee\xee')     # 2 bytes of padding per row
    msg = Image(height=2, width=3, encoding='16UC1', is_bigendian=True, step=8)
    msg.data = cv.bytes_to_uint8_array(b''.join(rows))
    back = cv.image_to_array(msg)
    assert back.dtype == np.uint16 and back.dtype.isnative
    assert np.array_equal(back, values)


def test_image_errors_name_the_problem():
    with pytest.raises(ValueError, match="'32FC1'"):
        cv.image_from_array(np.zeros((4, 4), np.float64), '32FC1', header())
    with pytest.raises(ValueError, match='bgr8'):
        cv.image_from_array(np.zeros((4, 4), np.uint8), 'bgr8', header())
    with pytest.raises(ValueError, match="'yuv422'"):
        cv.image_from_array(np.zeros((4, 4), np.uint8), 'yuv422', header())
    msg = cv.image_from_array(np.zeros((4, 4), np.float32), '32FC1', header())
    msg.height = 5
    with pytest.raises(ValueError, match='expected 80'):
        cv.image_to_array(msg)


def test_publish_cost_of_448_depth_image_is_a_buffer_copy():
    """Building + publishing a 448x448 32FC1 image must cost a buffer copy, not per-element Python work.

    The exact number (target < 2 ms) is measured by benchmarks/bench_node.py; this bound only catches
    element-by-element filling, which costs tens of milliseconds for 800 kB.
    """
    import rclpy
    from sensor_msgs.msg import Image
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node(f'conv_cost_{time.monotonic_ns() % 10**9}', context=ctx)
        pub = node.create_publisher(Image, f'conv_cost_{time.monotonic_ns() % 10**9}', 1)
        depth = np.random.default_rng(1).uniform(1, 80, (448, 448)).astype(np.float32)
        costs = []
        for _ in range(15):
            t0 = time.perf_counter()
            pub.publish(cv.image_from_array(depth, '32FC1', header()))
            costs.append(time.perf_counter() - t0)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    assert statistics.median(costs) < 0.015, f'median publish cost {statistics.median(costs) * 1e3:.1f} ms'


def test_camera_info_round_trip_and_projection_matrix():
    K = np.array([[320.5, 0, 319.2], [0, 321.0, 241.7], [0, 0, 1]])
    msg = cv.camera_info_from_intrinsics(K, 640, 480, header(), D=[0.1, -0.2, 0, 0, 0.01])
    assert msg.distortion_model == 'plumb_bob'
    assert np.allclose(np.asarray(msg.p).reshape(3, 4)[:, :3], K) and np.all(np.asarray(msg.p).reshape(3, 4)[:, 3] == 0)
    assert np.allclose(np.asarray(msg.r).reshape(3, 3), np.eye(3))
    intr = cv.intrinsics_from_camera_info(msg)
    assert (intr.width, intr.height) == (640, 480)
    assert np.allclose(intr.K, K) and np.allclose(intr.D, [0.1, -0.2, 0, 0, 0.01])


def test_uncalibrated_camera_info_is_rejected():
    from sensor_msgs.msg import CameraInfo
    msg = CameraInfo(width=640, height=480)              # K all zeros: driver without calibration
    with pytest.raises(ValueError, match='not a calibrated'):
        cv.intrinsics_from_camera_info(msg)
    msg = cv.camera_info_from_intrinsics(np.eye(3), 0, 480, header())
    with pytest.raises(ValueError, match='invalid size'):
        cv.intrinsics_from_camera_info(msg)


def test_point_cloud_layout_follows_pointfield_spec():
    from sensor_msgs.msg import PointField
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(100, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (100, 3)).astype(np.uint8)
    xyz[7] = np.nan                                         # invalid depth: dropped
    msg = cv.pointcloud2_xyzrgb(xyz, rgb, header())
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1), ('z', 8, PointField.FLOAT32, 1),
        ('rgb', 12, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 99, 16, 16 * 99)
    assert msg.is_dense and isinstance(msg.data, array.array) and len(msg.data) == 16 * 99
    pts = cv.pointcloud2_to_array(msg)
    keep = np.ones(100, bool)
    keep[7] = False
    assert np.array_equal(np.stack([pts['x'], pts['y'], pts['z']], 1), xyz[keep])
    assert np.array_equal(cv.unpack_rgb(pts['rgb']), rgb[keep])
    # the packed colour is 0x00RRGGBB in the bits of the float field (PCL / RViz convention)
    first = np.frombuffer(msg.data, dtype=np.uint8)[12:16].view('<u4')[0]
    r, g, b = rgb[0]
    assert first == (int(r) << 16) | (int(g) << 8) | int(b)


def test_point_cloud_rejects_mismatched_colours():
    with pytest.raises(ValueError, match='3 points but 2 colours'):
        cv.pointcloud2_xyzrgb(np.zeros((3, 3)), np.zeros((2, 3)), header())


def _random_rotation(rng):
    q = rng.normal(size=4)
    return cv.quaternion_to_rotation_matrix(q / np.linalg.norm(q))


def test_quaternion_round_trip_including_half_turns():
    rng = np.random.default_rng(3)
    rotations = [_random_rotation(rng) for _ in range(200)]
    rotations += [np.diag([1, -1, -1.0]), np.diag([-1, 1, -1.0]), np.diag([-1, -1, 1.0]), np.eye(3)]
    for R in rotations:
        q = cv.rotation_matrix_to_quaternion(R)
        assert abs(np.linalg.norm(q) - 1) < 1e-12 and q[3] >= 0
        assert np.allclose(cv.quaternion_to_rotation_matrix(q), R, atol=1e-9)
    # a known value: +90 degrees about z
    Rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    assert np.allclose(cv.rotation_matrix_to_quaternion(Rz), [0, 0, math.sqrt(0.5), math.sqrt(0.5)])


def test_pose_with_covariance_message():
    Rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    cov = np.diag([0.01, 0.02, 0.03, 0.001, 0.002, 0.003])
    msg = cv.pose_with_covariance(Rz, [1.0, -2.0, 0.5], cov, header(frame='kf'))
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    assert (p.x, p.y, p.z) == (1.0, -2.0, 0.5)
    assert np.allclose([o.x, o.y, o.z, o.w], [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    assert np.allclose(np.asarray(msg.pose.covariance).reshape(6, 6), cov)
    assert msg.header.frame_id == 'kf'


def test_diagnostics_levels_and_values():
    from diagnostic_msgs.msg import DiagnosticStatus
    st = cv.diagnostic_status('realm: pipeline', 'WARN', 'memory hold', {'latency_ms_p50': 12.3456789,
                                                                        'decode_errors': 3}, 'cam0')
    assert st.level == DiagnosticStatus.WARN
    assert cv.diagnostic_values(st) == {'latency_ms_p50': '12.3457', 'decode_errors': '3'}
    arr = cv.diagnostic_array([st], 5_000_000_123)
    assert (arr.header.stamp.sec, arr.header.stamp.nanosec) == (5, 123) and arr.status[0].hardware_id == 'cam0'
    with pytest.raises(ValueError, match="'BAD'"):
        cv.diagnostic_status('x', 'BAD', '', {})


def test_events_status_says_when_no_publisher_is_matched():
    """The events status names the first thing a user must fix: no publisher on the topic (a remapping or QoS
    mismatch) is told apart from a publisher that sends nothing."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from realm_ros.nodes.diagnostics import node_statuses

    def events(publishers):
        st = node_statuses('/realm', None, None, None, k_source='fallback', camera_info=None, camera_info_problem='',
                           last_error='', events_publishers=publishers)[0]
        return st, cv.diagnostic_values(st)
    st, values = events(0)
    assert st.level == DiagnosticStatus.WARN and values['publishers'] == '0'
    assert 'no publisher on the events topic' in st.message and 'no event packets' not in st.message
    st, values = events(2)
    assert values['publishers'] == '2' and 'no event packets received' in st.message
    st, values = events(None)                                   # no subscription (inactive node): no such key
    assert 'publishers' not in values and 'no event packets received' in st.message


def test_event_packet_payload_is_copied_once_into_a_byte_array():
    payload = np.arange(1000, dtype=np.uint16).tobytes()
    msg = cv.make_event_packet(payload, 'evt3', 640, 480, seq=7, stamp_ns=3_000_000_001, frame_id='cam')
    assert isinstance(msg.events, array.array) and msg.events.tobytes() == payload
    assert (msg.width, msg.height, msg.seq, msg.encoding) == (640, 480, 7, 'evt3')
    assert cv.stamp_to_ns(msg.header.stamp) == 3_000_000_001


# ------------------------------------------------------------------------------------------------ official converters
# On a ROS install cv_bridge / sensor_msgs_py build the messages; the package's own conversions are the fallback.
# Both must give identical messages: the wire bytes are pinned below, and compared path against path.

def _image_fields(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id, msg.height, msg.width,
            msg.encoding, bool(msg.is_bigendian), msg.step, bytes(msg.data))


def _cloud_fields(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id, msg.height, msg.width,
            [(f.name, f.offset, f.datatype, f.count) for f in msg.fields], bool(msg.is_bigendian), msg.point_step,
            msg.row_step, bytes(msg.data), bool(msg.is_dense))


@pytest.fixture
def own_only(monkeypatch):
    """Force the package's own conversions (as on a PyPI-only install)."""
    monkeypatch.setattr(cv, '_OFFICIAL', {'cv_bridge': None, 'sensor_msgs_py': None})


def test_own_image_conversion_gives_the_known_bytes(own_only):
    depth = np.array([[1.0, -2.5], [np.inf, 0.0]], np.float32)
    msg = cv.image_from_array(depth, '32FC1', header(5_000_000_007, 'cam'))
    assert _image_fields(msg) == (5, 7, 'cam', 2, 2, '32FC1', False, 8, bytes.fromhex(
        '0000803f' '000020c0' '0000807f' '00000000'))
    bgr = np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8)
    msg = cv.image_from_array(bgr, 'bgr8', header(7, 'c'))
    assert _image_fields(msg)[3:] == (1, 2, 'bgr8', False, 6, bytes([1, 2, 3, 4, 5, 6]))
    assert cv.image_to_array(msg).tolist() == bgr.tolist()


def test_own_point_cloud_gives_the_known_bytes(own_only):
    xyz = np.array([[1.0, 2.0, -0.5], [np.nan, 0, 0], [0.25, 0.0, 8.0]], np.float32)
    rgb = np.array([[255, 0, 16], [1, 1, 1], [1, 2, 3]], np.uint8)
    msg = cv.pointcloud2_xyzrgb(xyz, rgb, header(3, 'cam'))
    assert _cloud_fields(msg) == (
        0, 3, 'cam', 1, 2, [('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1), ('rgb', 12, 7, 1)], False, 16, 32,
        bytes.fromhex('0000803f' '00000040' '000000bf' '1000ff00'
                      '0000803e' '00000000' '00000041' '03020100'), True)


def _official_or_skip(name):
    got = cv._official(name)
    if got is None:
        pytest.skip(f'{name} is not importable here ({cv.official_converters()[name]}): the official path runs on '
                    f'a ROS install (rosdep key {name}); the package conversions are tested above')
    return got


IMAGES = [('32FC1', np.float32, (37, 51)), ('bgr8', np.uint8, (5, 7, 3)), ('rgb8', np.uint8, (4, 5, 3)),
          ('mono8', np.uint8, (9, 3)), ('8UC1', np.uint8, (2, 2)), ('16UC1', np.uint16, (12, 7)),
          ('mono16', np.uint16, (3, 3)), ('bgra8', np.uint8, (3, 2, 4)), ('rgba8', np.uint8, (1, 1, 4)),
          ('8UC3', np.uint8, (2, 3, 3))]


def _image(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    if dtype == np.float32:
        img = rng.uniform(0.5, 80, shape).astype(dtype)
        img.flat[3] = np.nan
        return img
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _compare_paths(monkeypatch):
    """Messages and arrays of the active (official) path vs the forced fallback, for every encoding and clouds."""
    for encoding, dtype, shape in IMAGES:
        img = _image(dtype, shape)
        official = cv.image_from_array(img, encoding, header())
        back_official = cv.image_to_array(official)
        saved = dict(cv._OFFICIAL)
        monkeypatch.setattr(cv, '_OFFICIAL', {'cv_bridge': None, 'sensor_msgs_py': None})
        own = cv.image_from_array(img, encoding, header())
        back_own = cv.image_to_array(official)
        monkeypatch.setattr(cv, '_OFFICIAL', saved)
        assert _image_fields(official) == _image_fields(own), encoding
        assert back_official.dtype == back_own.dtype and back_official.shape == back_own.shape == shape
        assert np.array_equal(back_official, back_own, equal_nan=True) and np.array_equal(back_own, img, equal_nan=True)
    rng = np.random.default_rng(3)
    for n in (0, 1, 500):
        xyz = rng.normal(size=(n, 3)).astype(np.float32)
        rgb = rng.integers(0, 256, (n, 3)).astype(np.uint8)
        if n > 2:
            xyz[2] = np.inf
        official = cv.pointcloud2_xyzrgb(xyz, rgb, header())
        saved = dict(cv._OFFICIAL)
        monkeypatch.setattr(cv, '_OFFICIAL', {'cv_bridge': None, 'sensor_msgs_py': None})
        own = cv.pointcloud2_xyzrgb(xyz, rgb, header())
        monkeypatch.setattr(cv, '_OFFICIAL', saved)
        assert _cloud_fields(official) == _cloud_fields(own), n


def test_official_converters_give_identical_messages(monkeypatch):
    _official_or_skip('cv_bridge')
    _official_or_skip('sensor_msgs_py')
    assert cv.official_converters() == {'cv_bridge': 'in use', 'sensor_msgs_py': 'in use'}
    _compare_paths(monkeypatch)


def test_official_path_is_wired_through_the_public_functions(monkeypatch):
    """Where cv_bridge / sensor_msgs_py are missing (PyPI), stand-ins with their documented API (written for this
    test, same contract as the upstream functions) check that the public functions really delegate to them."""
    import types
    from sensor_msgs.msg import Image, PointCloud2
    calls = []

    class StandInBridge:
        def cv2_to_imgmsg(self, cvim, encoding='passthrough', header=None):
            calls.append('cv2_to_imgmsg')
            msg = Image(height=cvim.shape[0], width=cvim.shape[1], encoding=encoding)
            if header is not None:
                msg.header = header
            msg.data.frombytes(cvim.tobytes())
            msg.step = len(msg.data) // msg.height
            return msg

        def imgmsg_to_cv2(self, msg, desired_encoding='passthrough'):
            calls.append('imgmsg_to_cv2')
            dtype, ch = cv.IMAGE_ENCODINGS[msg.encoding]
            im = np.ndarray((msg.height, msg.step // dtype.itemsize // ch, ch), dtype, buffer=msg.data)
            im = np.ascontiguousarray(im[:, :msg.width])
            return im[..., 0] if ch == 1 else im

    def dtype_from_fields(fields, point_step=None):
        return np.dtype({'names': [f.name for f in fields], 'formats': ['<f4'] * len(fields),
                         'offsets': [f.offset for f in fields]})

    def create_cloud(header, fields, points, point_step=None):
        calls.append('create_cloud')
        assert points.dtype == dtype_from_fields(fields)
        msg = PointCloud2(header=header, height=1, width=len(points), is_dense=False, is_bigendian=False,
                          fields=fields, point_step=points.dtype.itemsize, row_step=points.dtype.itemsize * len(points))
        data = array.array('B')
        data.frombytes(memoryview(points.view(np.uint8)))
        msg.data = data
        return msg

    monkeypatch.setattr(cv, '_OFFICIAL', {'cv_bridge': StandInBridge(), 'sensor_msgs_py': types.SimpleNamespace(
        create_cloud=create_cloud, dtype_from_fields=dtype_from_fields)})
    _compare_paths(monkeypatch)
    assert calls.count('cv2_to_imgmsg') == len(IMAGES) and calls.count('imgmsg_to_cv2') == len(IMAGES)
    assert calls.count('create_cloud') == 3
    # inputs the official converters do not take go to the package's own code: foreign byte order, odd padding
    calls.clear()
    msg = Image(height=1, width=3, encoding='16UC1', is_bigendian=True, step=7)
    msg.data = cv.bytes_to_uint8_array(np.array([1, 2, 3], '>u2').tobytes() + b'\x00')
    assert cv.image_to_array(msg).tolist() == [[1, 2, 3]] and calls == []
    assert cv.image_from_array(np.zeros((0, 4), np.float32), '32FC1', header()).height == 0 and calls == []
