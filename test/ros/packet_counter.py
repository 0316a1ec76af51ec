"""Child process of test_sim_node: counts event packets (and sequence gaps) and images for a while, prints JSON.

    python packet_counter.py NAMESPACE SECONDS

It subscribes like the perception node (events: best effort, deep queue) and like the demo's collector (images:
reliable), so the simulator sends it both over DDS. SECONDS count from the first packet.
"""
import json
import sys
import time

import rclpy
from event_camera_msgs.msg import EventPacket
from sensor_msgs.msg import Image

from realm_ros.nodes.qos import events_qos, qos_from_name
from realm_ros.sim import topics as T


def main() -> None:
    ns, seconds = sys.argv[1], float(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node('packet_counter')
    st = {'packets': 0, 'gaps': 0, 'lost': 0, 'images': 0}
    last = [None]

    def on_packet(m):
        if last[0] is not None and m.seq != last[0] + 1:
            st['gaps'] += 1
            st['lost'] += max(0, m.seq - last[0] - 1)
        last[0] = m.seq
        st['packets'] += 1

    def on_image(m):
        st['images'] += 1

    node.create_subscription(EventPacket, ns + T.EVENTS_TOPIC, on_packet, events_qos())
    for topic in (T.RGB_IMAGE_TOPIC, T.RGB_DEPTH_TOPIC, T.EVENT_DEPTH_TOPIC, T.RGB_LABELS_TOPIC, T.EVENT_LABELS_TOPIC):
        node.create_subscription(Image, ns + topic, on_image, qos_from_name('reliable', 10))
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    print('ready', flush=True)
    t0 = None
    while t0 is None or time.monotonic() - t0 < seconds:
        executor.spin_once(timeout_sec=0.05)
        if t0 is None and st['packets']:
            t0 = time.monotonic()
            print('receiving', flush=True)
    print(json.dumps(st), flush=True)


if __name__ == '__main__':
    main()
