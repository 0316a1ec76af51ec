"""Helpers for the perception node tests and benchmark: the node as a subprocess, a probe node, packet playback.

Not a test module: imported by test/ros/test_perception_*.py, test/launch/test_perception_launch.py and
benchmarks/bench_node.py.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ('depth', 'depth/camera_info', 'depth/color', 'semantic', 'semantic/color', 'points', 'pose', 'matches',
           'odometry', 'path')
K_TEST = np.array([[330.0, 0.0, 318.0], [0.0, 331.0, 242.0], [0.0, 0.0, 1.0]])


def load_packets(bag: Path, limit: Optional[int] = None) -> List[Any]:
    """EventPacket messages (rosbags objects) of a recording, in order."""
    from realm_ros.events.bagio import iter_bag_messages
    out = []
    for _topic, _type, _t, msg in iter_bag_messages(bag):
        out.append(msg)
        if limit is not None and len(out) >= limit:
            break
    return out


def stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def to_rclpy_packet(m: Any, stamp_shift_ns: int = 0, **override: Any) -> Any:
    """rclpy EventPacket from a rosbags one (payload copied once), optionally with shifted stamp / fields."""
    from realm_ros.nodes.conversions import make_event_packet
    fields = dict(payload=np.asarray(m.events, dtype=np.uint8), encoding=m.encoding, width=int(m.width),
                  height=int(m.height), seq=int(m.seq), stamp_ns=stamp_ns(m) + stamp_shift_ns,
                  frame_id=m.header.frame_id, time_base=int(m.time_base), is_bigendian=bool(m.is_bigendian))
    fields.update(override)
    return make_event_packet(**fields)


def write_params(path: Path, checkpoints: Dict[str, Path], **overrides: Any) -> Path:
    """A --params-file for the node with the given checkpoints (CPU) and parameter overrides."""
    params: Dict[str, Any] = {
        'checkpoints.realm': str(checkpoints['realm']), 'checkpoints.dune': str(checkpoints['dune']),
        'checkpoints.depth_head': str(checkpoints['depth_head']),
        'checkpoints.seg_head': str(checkpoints['seg_head']),
        'checkpoints.mast3r': str(checkpoints.get('mast3r', '')), 'device': 'cpu',
    }
    params.update(overrides)
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    return path


class NodeProcess:
    """``python -m realm_ros.nodes.perception_node`` as a child process with its output captured."""

    def __init__(self, name: str, params_files: Sequence[Path], remaps: Dict[str, str],
                 env: Optional[Dict[str, str]] = None, extra_args: Sequence[str] = ()) -> None:
        args = [sys.executable, '-m', 'realm_ros.nodes.perception_node', '--ros-args', '-r', f'__node:={name}']
        for f in params_files:
            args += ['--params-file', str(f)]
        for src, dst in remaps.items():
            args += ['-r', f'{src}:={dst}']
        args += list(extra_args)
        child_env = dict(os.environ if env is None else env)
        child_env['PYTHONUNBUFFERED'] = '1'
        child_env.setdefault('OMP_NUM_THREADS', '1')
        self.name = name
        self.lines: Deque[str] = collections.deque(maxlen=2000)
        self.proc = subprocess.Popen(args, cwd=str(REPO), env=child_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return '\n'.join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.lines)):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)
                return any(text in line for line in list(self.lines))
            time.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        with open(f'/proc/{self.proc.pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
        return float('nan')

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode


class Received:
    """One received message and the wall time (time.monotonic) it arrived."""

    __slots__ = ('msg', 'wall')

    def __init__(self, msg: Any, wall: float) -> None:
        self.msg, self.wall = msg, wall


class Probe:
    """An rclpy node in its own context that feeds the perception node and records everything it publishes."""

    def __init__(self, name: str, node_ns: str, events_topic: str, camera_info_topic: str,
                 output_qos: str = 'reliable') -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from event_camera_msgs.msg import EventPacket
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.received: Dict[str, List[Received]] = {t: [] for t in OUTPUTS + ('diagnostics',)}
        types = {'depth': Image, 'depth/camera_info': CameraInfo, 'depth/color': Image, 'semantic': Image,
                 'semantic/color': Image, 'points': PointCloud2, 'pose': PoseWithCovarianceStamped,
                 'matches': Image}
        from nav_msgs.msg import Odometry, Path
        from tf2_msgs.msg import TFMessage
        types.update({'odometry': Odometry, 'path': Path})
        self.received['tf'] = []
        self.node.create_subscription(TFMessage, '/tf', self._recorder('tf'), 100)
        rel = ReliabilityPolicy.RELIABLE if output_qos == 'reliable' else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST, reliability=rel)
        self._output_types, self._output_qos, self._node_ns = types, qos, node_ns
        self._subscriptions: Dict[str, Any] = {}
        self.subscribe(tuple(types))
        self._diag_name = node_ns
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)
        pub_qos = QoSProfile(depth=1000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.events_pub = self.node.create_publisher(EventPacket, events_topic, pub_qos)
        self.info_pub = self.node.create_publisher(CameraInfo, camera_info_topic, 5)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribe to these output topics of the node (again); they are recorded in ``received``."""
        for topic in topics:
            if topic not in self._subscriptions:
                self._subscriptions[topic] = self.node.create_subscription(
                    self._output_types[topic], f'{self._node_ns}/{topic}', self._recorder(topic), self._output_qos)

    def unsubscribe(self, topics: Sequence[str]) -> None:
        """Stop receiving these output topics (the node then has no subscriber for them, unless others listen)."""
        for topic in topics:
            sub = self._subscriptions.pop(topic, None)
            if sub is not None:
                self.node.destroy_subscription(sub)

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _recorder(self, topic: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            with self.lock:
                self.received[topic].append(Received(msg, time.monotonic()))
        return record

    def _on_diag(self, msg: Any) -> None:
        mine = [s for s in msg.status if s.name.startswith(self._diag_name + ':')]
        if mine:
            with self.lock:
                self.received['diagnostics'].append(Received(mine, time.monotonic()))

    def clear(self) -> None:
        with self.lock:
            for v in self.received.values():
                v.clear()

    def messages(self, topic: str) -> List[Received]:
        with self.lock:
            return list(self.received[topic])

    def latest_diagnostics(self) -> Dict[str, Dict[str, str]]:
        """``{status suffix ('events' | 'pipeline'): {key: value, 'level': .., 'message': ..}}`` of the last array."""
        with self.lock:
            if not self.received['diagnostics']:
                return {}
            statuses = self.received['diagnostics'][-1].msg
        out = {}
        for st in statuses:
            values = {kv.key: kv.value for kv in st.values}
            values['level'] = int.from_bytes(st.level, 'little') if isinstance(st.level, bytes) else int(st.level)
            values['message'] = st.message
            out[st.name.split(': ', 1)[1]] = values
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def wait_for_subscriber(self, timeout: float = 30.0) -> bool:
        """Wait until discovery has matched both ends of the events topic: this publisher sees the node's
        subscription, and the node's diagnostics report that its subscription sees a publisher. (DDS discovery is
        not symmetric: a best-effort reader drops what a writer it has not matched yet sends, so a burst published
        as soon as the writer's side matches can be lost whole.)"""
        def matched() -> bool:
            if self.events_pub.get_subscription_count() == 0:
                return False
            events = self.latest_diagnostics().get('events', {})
            return int(events.get('publishers', '0')) > 0
        return self.wait_for(matched, timeout)

    def publish_camera_info(self, K: np.ndarray, width: int, height: int, frame_id: str, D: Sequence[float] = ()
                            ) -> None:
        from realm_ros.nodes.conversions import camera_info_from_intrinsics, make_header
        self.info_pub.publish(camera_info_from_intrinsics(K, width, height, make_header(0, frame_id), D=D))

    def play(self, packets: Sequence[Any], rate: float = 1.0, stamp_shift_ns: int = 0,
             inject: Optional[Dict[int, List[Any]]] = None, on_publish: Optional[Callable[[int, Any, float], None]]
             = None, skip: Sequence[int] = ()) -> float:
        """Publish rosbags packets paced by their header stamps / ``rate`` (0 = as fast as possible).

        ``inject[i]`` lists extra rclpy messages published right before packet ``i``; ``skip`` drops packets
        (seq gaps). Returns the wall time the playback took.
        """
        t_wall0 = time.monotonic()
        t_msg0 = stamp_ns(packets[0])
        for i, m in enumerate(packets):
            for extra in (inject or {}).get(i, []):
                self.events_pub.publish(extra)
            if i in skip:
                continue
            if rate > 0:
                due = t_wall0 + (stamp_ns(m) - t_msg0) / 1e9 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            msg = to_rclpy_packet(m, stamp_shift_ns)
            self.events_pub.publish(msg)
            if on_publish is not None:
                on_publish(i, msg, time.monotonic())
        return time.monotonic() - t_wall0

    def close(self) -> None:
        import rclpy
        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
