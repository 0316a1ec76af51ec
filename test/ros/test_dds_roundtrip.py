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


@pytest.mark.parametrize('receiver', ['subscription', 'serialized_intake'])
def test_event_packets_round_trip_between_processes(evt3_bag, child_env, receiver):
    """``subscription``: rclpy's own conversion; ``serialized_intake``: the perception node's packet intake, which
    takes the serialized packets and reads them itself (:mod:`realm_ros.events.cdr`)."""
    from event_camera_msgs.msg import EventPacket

    from realm_ros.events.cdr import event_packet_from_cdr
    from realm_ros.nodes.intake import EventIntake
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
        errors = []
        intake = None
        if receiver == 'subscription':
            node.create_subscription(EventPacket, topic, on_msg, qos)
        else:
            intake = EventIntake(context, 'dds_roundtrip_intake', topic, EventPacket, qos, on_msg,
                                 raw_decoder=event_packet_from_cdr, on_error=errors.append, gather_s=0.002)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)

        publisher = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name('packet_publisher.py')), str(evt3_bag), topic, str(COUNT)],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline and publisher.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        if intake is not None:
            intake.close()
        node.destroy_node()
        out, err = publisher.communicate(timeout=30)
        assert publisher.returncode == 0, f'publisher failed: {out}\n{err}'
    finally:
        rclpy.shutdown(context=context)

    assert len(got) == COUNT, f'received {len(got)} of {COUNT} packets'
    assert not errors
    if receiver == 'serialized_intake':
        assert all(type(r).__name__ == 'EventPacketView' for r in got)
    for m, r in zip(expected, got):
        assert r.encoding == m.encoding == 'evt3'
        assert (r.width, r.height, r.seq, r.time_base) == (m.width, m.height, m.seq, m.time_base)
        assert (r.header.stamp.sec, r.header.stamp.nanosec) == (m.header.stamp.sec, m.header.stamp.nanosec)
        assert r.header.frame_id == m.header.frame_id
        assert r.is_bigendian == m.is_bigendian
        received = np.frombuffer(r.events, dtype=np.uint8)
        assert received.tobytes() == np.asarray(m.events, dtype=np.uint8).tobytes()


def test_serialized_intake_falls_back_to_rclpy_and_reports_what_nothing_reads():
    """A packet the intake's reader refuses is converted by rclpy instead (nothing lost); bytes that neither can
    read go to ``on_error``, and the intake thread goes on."""
    from event_camera_msgs.msg import EventPacket
    from rclpy.qos import QoSProfile
    from rclpy.serialization import serialize_message

    from realm_ros.events.cdr import CdrError, event_packet_from_cdr
    from realm_ros.nodes.intake import EventIntake

    msg = EventPacket(encoding='evt3', width=640, height=480, seq=9)
    msg.events.frombytes(b'\x10\x20\x30')
    raw = serialize_message(msg)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        for decoder, want in ((event_packet_from_cdr, 'EventPacketView'), (_refuse, 'EventPacket')):
            got, errors = [], []
            intake = EventIntake(context, 'fallback_intake', '/fallback_events', EventPacket, QoSProfile(depth=5),
                                 got.append, raw_decoder=decoder, on_error=errors.append)
            try:
                intake._deliver_serialized(raw)
                intake._deliver_serialized(b'\x00\x01\x00\x00\xff')
            finally:
                intake.close()
            assert [type(m).__name__ for m in got] == [want]
            assert (got[0].seq, got[0].encoding, bytes(got[0].events)) == (9, 'evt3', b'\x10\x20\x30')
            assert len(errors) == 1 and isinstance(errors[0], Exception) and not isinstance(errors[0], CdrError)
    finally:
        rclpy.shutdown(context=context)


def _refuse(raw):
    from realm_ros.events.cdr import CdrError
    raise CdrError('refused for the test')
