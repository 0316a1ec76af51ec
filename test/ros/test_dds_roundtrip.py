"""A real EventPacket from the recording crosses real DDS between two processes byte-identical."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from realm_ros.events.bagio import iter_bag_messages

rclpy = pytest.importorskip('rclpy')

COUNT = 25


def test_event_packets_round_trip_between_processes(evt3_bag, child_env):
    from event_camera_msgs.msg import EventPacket
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    expected = []
    for _topic, _type, _t, m in iter_bag_messages(evt3_bag):
        expected.append(m)
        if len(expected) == COUNT:
            break
    assert len(expected) == COUNT

    topic = f'/roundtrip_{int(time.time() * 1000) % 100000}/events'
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('dds_roundtrip_subscriber', context=context)
        got = []
        done = threading.Event()

        def on_msg(msg):
            got.append(msg)
            if len(got) == COUNT:
                done.set()

        qos = QoSProfile(depth=COUNT, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(EventPacket, topic, on_msg, qos)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)

        publisher = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name('packet_publisher.py')), str(evt3_bag), topic, str(COUNT)],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline and publisher.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        node.destroy_node()
        out, err = publisher.communicate(timeout=30)
        assert publisher.returncode == 0, f'publisher failed: {out}\n{err}'
    finally:
        rclpy.shutdown(context=context)

    assert len(got) == COUNT, f'received {len(got)} of {COUNT} packets'
    for m, r in zip(expected, got):
        assert r.encoding == m.encoding == 'evt3'
        assert (r.width, r.height, r.seq, r.time_base) == (m.width, m.height, m.seq, m.time_base)
        assert (r.header.stamp.sec, r.header.stamp.nanosec) == (m.header.stamp.sec, m.header.stamp.nanosec)
        assert r.header.frame_id == m.header.frame_id
        assert r.is_bigendian == m.is_bigendian
        received = np.frombuffer(r.events, dtype=np.uint8)
        assert received.tobytes() == np.asarray(m.events, dtype=np.uint8).tobytes()
