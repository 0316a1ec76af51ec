"""sim_event_camera as a separate process: EventPackets and images arrive over real DDS and decode correctly."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')


def test_sim_node_publishes_events_and_frames(child_env, tmp_path):
    from event_camera_msgs.msg import EventPacket
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from realm_ros.events.packet import EventPacketDecoder
    from realm_ros.nodes.qos import events_qos, qos_from_name
    from realm_ros.sim import topics as T

    ns = f'/simtest_{os.getpid()}_{int(time.time() * 1000) % 100000}'
    node_name = f'sim_event_camera_{os.getpid()}'
    cmd = [sys.executable, '-m', 'realm_ros.nodes.sim_camera_node', '--ros-args', '-r', f'__ns:={ns}',
           '-r', f'__node:={node_name}', '-p', 'width:=64', '-p', 'height:=48', '-p', 'duration_s:=0.25',
           '-p', 'max_runtime_s:=60.0', '-p', 'seed:=5', '-p', f'cache_dir:={tmp_path}']
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    packets, images, infos, depths, poses = [], [], [], [], []
    try:
        node = rclpy.create_node(f'sim_node_test_{os.getpid()}', context=context)
        node.create_subscription(EventPacket, ns + T.EVENTS_TOPIC, packets.append, events_qos())
        node.create_subscription(Image, ns + T.RGB_IMAGE_TOPIC, images.append, qos_profile_sensor_data)
        node.create_subscription(CameraInfo, ns + T.EVENT_CAMERA_INFO_TOPIC, infos.append, qos_from_name('reliable'))
        node.create_subscription(Image, ns + T.EVENT_DEPTH_TOPIC, depths.append, qos_from_name('reliable'))
        node.create_subscription(PoseStamped, ns + T.GT_POSE_TOPIC, poses.append, qos_from_name('reliable'))
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
            if len(packets) >= 450 and len(images) >= 14 and infos and depths and poses:
                break
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert len(packets) >= 450 and len(images) >= 14, f'packets {len(packets)}, images {len(images)}\n{out}'
    assert proc.returncode == 0, out
    assert infos and depths and poses, out
    assert list(tmp_path.glob('seq_*.npz')), 'the precomputed sequence was not cached'

    dec = EventPacketDecoder()
    sensor = EventPacketDecoder(time_mode='sensor')
    n = 0
    times, offsets = [], set()
    for m in packets:
        assert m.encoding == 'evt3' and (m.width, m.height) == (64, 48) and m.header.frame_id == T.EVENT_FRAME_ID
        ev = dec.decode_msg(m)
        n += len(ev)
        assert len(ev) and ev.x.max() < 64 and ev.y.max() < 48
        times.append(ev.t)
        # stamp - sensor time of the first event is one constant: sensor time continues exactly across loop passes
        offsets.add(m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec - int(sensor.decode_msg(m).t.min()))
        # stamps are the packet's first event in ROS time (the node's clock)
        stamp = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
        assert abs(int(ev.t.min()) - stamp) < 1_000_000
    assert n > 1000 and dec.num_errors == 0
    seqs = [m.seq for m in packets]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # the 0.25 s sequence is replayed in a loop: event time keeps increasing across the seam (sensor time continues)
    t_all = np.concatenate(times)
    assert np.all(np.diff(t_all) >= 0) and (t_all[-1] - t_all[0]) > 0.3e9
    assert len(offsets) == 1, sorted(offsets)[:5]
    img = images[-1]
    assert (img.encoding, img.width, img.height) == ('rgb8', 64, 48)
    rgb = np.frombuffer(img.data, np.uint8).reshape(48, 64, 3)
    assert rgb.std() > 5.0
    depth = np.frombuffer(depths[-1].data, np.float32).reshape(48, 64)
    assert depths[-1].encoding == '32FC1' and np.isfinite(depth).mean() > 0.3 and np.nanmin(depth) > 0
    assert infos[-1].k[0] > 0 and poses[-1].header.frame_id == T.WORLD_FRAME_ID
    # frames come at ~30 Hz of the node's clock
    stamps = [i.header.stamp.sec + i.header.stamp.nanosec * 1e-9 for i in images]
    assert np.median(np.diff(stamps)) == pytest.approx(1 / 30, abs=2e-3)
