"""Child process for the DDS round-trip test: publishes real EventPackets read from a bag.

usage: python packet_publisher.py BAG TOPIC COUNT
Waits until a subscriber has matched, publishes COUNT packets (reliable, keep-all), then waits for the
subscriber to leave (or 20 s) so that nothing is lost at shutdown.
"""
import array
import sys
import time

import rclpy
from event_camera_msgs.msg import EventPacket
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from realm_ros.events.bagio import iter_bag_messages


def main() -> int:
    bag, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rclpy.init()
    node = rclpy.create_node('dds_roundtrip_publisher')
    qos = QoSProfile(depth=count, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(EventPacket, topic, qos)
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if pub.get_subscription_count() == 0:
        print('no subscriber matched', file=sys.stderr)
        return 2
    sent = 0
    for _topic, _type, _t, m in iter_bag_messages(bag):
        msg = EventPacket()
        msg.header.stamp.sec = int(m.header.stamp.sec)
        msg.header.stamp.nanosec = int(m.header.stamp.nanosec)
        msg.header.frame_id = m.header.frame_id
        msg.height, msg.width = int(m.height), int(m.width)
        msg.seq, msg.time_base = int(m.seq), int(m.time_base)
        msg.encoding, msg.is_bigendian = m.encoding, bool(m.is_bigendian)
        payload = array.array('B')
        payload.frombytes(memoryview(m.events).cast('B'))
        msg.events = payload
        pub.publish(msg)
        sent += 1
        if sent == count:
            break
    assert sent == count, f'the bag {bag} holds only {sent} packets, {count} were requested'
    print(f'sent {sent}', flush=True)
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() > 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
