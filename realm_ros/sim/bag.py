"""Write simulated sequences as ROS 2 bags with rosbags (no ROS install needed).

:func:`write_sim_bag` runs a :class:`~realm_ros.sim.simulator.Simulator` and writes every topic of
:mod:`realm_ros.sim.topics`: EVT3 EventPackets (~1 per ms, stamped as a metavision_driver would, see
:mod:`realm_ros.sim.packets`), RGB frames, camera_info for both cameras, ground-truth depth/labels for both cameras,
the event camera's ground-truth pose and ``/tf_static``. Record times: event packets at the end of their window,
everything else at its header stamp, so the bag is in record-time order. Alongside the storage file the bag directory
gets ``realm_sim.json`` (simulator config, clocks and counts) for evaluation tools.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..events.bagio import make_typestore
from . import topics as T
from .camera import PinholeCamera, rotation_to_quaternion
from .packets import DEFAULT_SENSOR_TIME_OFFSET_US, DEFAULT_START_TIME_NS, EventPacketizer, PacketData
from .simulator import SimConfig, SimFrame, Simulator
from .topics import DEFAULT_TOPICS, SimTopics

STORAGE_PLUGINS = ('sqlite3', 'mcap')
SIM_INFO_FILE = 'realm_sim.json'


@dataclass
class SimBagSummary:
    """What :func:`write_sim_bag` wrote."""

    path: str
    storage: str
    duration_s: float
    num_events: int
    num_packets: int
    num_frames: int
    renders: int
    start_time_ns: int
    sensor_time_offset_us: int
    wall_time_s: float
    message_counts: dict[str, int] = field(default_factory=dict)

    @property
    def event_rate_mev_s(self) -> float:
        return self.num_events / max(self.duration_s, 1e-9) / 1e6


class RosbagsMessageFactory:
    """Builds rosbags (typestore) messages for the simulator's topics."""

    def __init__(self, typestore: Any | None = None) -> None:
        self.ts = typestore or make_typestore()
        t = self.ts.types
        self._Time = t['builtin_interfaces/msg/Time']
        self._Header = t['std_msgs/msg/Header']
        self._Image = t['sensor_msgs/msg/Image']
        self._CameraInfo = t['sensor_msgs/msg/CameraInfo']
        self._Roi = t['sensor_msgs/msg/RegionOfInterest']
        self._Packet = t[T.EVENT_PACKET_TYPE]
        self._TF = t['tf2_msgs/msg/TFMessage']
        self._TS = t['geometry_msgs/msg/TransformStamped']
        self._Transform = t['geometry_msgs/msg/Transform']
        self._Vec = t['geometry_msgs/msg/Vector3']
        self._Quat = t['geometry_msgs/msg/Quaternion']
        self._Point = t['geometry_msgs/msg/Point']
        self._Pose = t['geometry_msgs/msg/Pose']
        self._PoseStamped = t['geometry_msgs/msg/PoseStamped']

    def header(self, t_ns: int, frame_id: str) -> Any:
        return self._Header(stamp=self._Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000)),
                            frame_id=frame_id)

    def image(self, array: np.ndarray, encoding: str, t_ns: int, frame_id: str) -> Any:
        a = np.ascontiguousarray(array)
        h, w = a.shape[:2]
        return self._Image(header=self.header(t_ns, frame_id), height=h, width=w, encoding=encoding,
                           is_bigendian=0, step=a.strides[0], data=a.view(np.uint8).reshape(-1))

    def camera_info(self, cam: PinholeCamera, t_ns: int, frame_id: str) -> Any:
        K = cam.K
        P = np.zeros((3, 4))
        P[:, :3] = K
        return self._CameraInfo(header=self.header(t_ns, frame_id), height=cam.height, width=cam.width,
                                distortion_model='plumb_bob', d=np.zeros(5), k=K.reshape(9), r=np.eye(3).reshape(9),
                                p=P.reshape(12), binning_x=0, binning_y=0,
                                roi=self._Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    def event_packet(self, pkt: PacketData, width: int, height: int, frame_id: str) -> Any:
        return self._Packet(header=self.header(pkt.stamp_ns, frame_id), height=height, width=width, seq=pkt.seq,
                            time_base=0, encoding='evt3', is_bigendian=False,
                            events=np.frombuffer(pkt.payload, np.uint8))

    def _pose_parts(self, T_mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(T_mat[:3, 3], np.float64), rotation_to_quaternion(T_mat[:3, :3])

    def tf_static(self, T_parent_child: np.ndarray, t_ns: int, parent: str, child: str) -> Any:
        p, q = self._pose_parts(T_parent_child)
        tr = self._Transform(translation=self._Vec(x=p[0], y=p[1], z=p[2]),
                             rotation=self._Quat(x=q[0], y=q[1], z=q[2], w=q[3]))
        return self._TF(transforms=[self._TS(header=self.header(t_ns, parent), child_frame_id=child, transform=tr)])

    def pose_stamped(self, T_world_cam: np.ndarray, t_ns: int, frame_id: str) -> Any:
        p, q = self._pose_parts(T_world_cam)
        return self._PoseStamped(header=self.header(t_ns, frame_id),
                                 pose=self._Pose(position=self._Point(x=p[0], y=p[1], z=p[2]),
                                                 orientation=self._Quat(x=q[0], y=q[1], z=q[2], w=q[3])))


def _qos_profiles(kind: str) -> list:
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    zero = QosTime(sec=0, nsec=0)
    if kind == 'events':
        rel, dur, depth = QosReliability.BEST_EFFORT, QosDurability.VOLATILE, T.EVENTS_QUEUE_DEPTH
    elif kind == 'tf_static':
        rel, dur, depth = QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, 1
    else:
        rel, dur, depth = QosReliability.RELIABLE, QosDurability.VOLATILE, 10
    return [Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=rel, durability=dur, deadline=zero,
                lifespan=zero, liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
                avoid_ros_namespace_conventions=False)]


def frame_messages(factory: RosbagsMessageFactory, sim: Simulator, frame: SimFrame, t_ros_ns: int,
                   topics: SimTopics, ground_truth: bool = True) -> list[tuple[str, str, Any]]:
    """(topic, msgtype, message) for everything published at one frame time."""
    ev_f, rgb_f = topics.event_frame_id, topics.rgb_frame_id
    out = [
        (topics.rgb_image, T.IMAGE_TYPE, factory.image(frame.rgb, 'rgb8', t_ros_ns, rgb_f)),
        (topics.rgb_camera_info, T.CAMERA_INFO_TYPE, factory.camera_info(sim.rgb_camera, t_ros_ns, rgb_f)),
        (topics.event_camera_info, T.CAMERA_INFO_TYPE, factory.camera_info(sim.event_camera, t_ros_ns, ev_f)),
    ]
    if ground_truth:
        out += [
            (topics.rgb_depth, T.IMAGE_TYPE, factory.image(frame.rgb_depth.astype(np.float32), '32FC1', t_ros_ns,
                                                           rgb_f)),
            (topics.rgb_labels, T.IMAGE_TYPE, factory.image(frame.rgb_labels, 'mono8', t_ros_ns, rgb_f)),
            (topics.event_depth, T.IMAGE_TYPE, factory.image(frame.event_depth.astype(np.float32), '32FC1',
                                                             t_ros_ns, ev_f)),
            (topics.event_labels, T.IMAGE_TYPE, factory.image(frame.event_labels, 'mono8', t_ros_ns, ev_f)),
            (topics.gt_pose, T.POSE_STAMPED_TYPE, factory.pose_stamped(frame.T_world_event, t_ros_ns,
                                                                      topics.world_frame_id)),
        ]
    return out


def write_sim_bag(path: str | Path, seconds: float, seed: int = 0, *, config: SimConfig | None = None,
                  storage: str = 'sqlite3', topics: SimTopics = DEFAULT_TOPICS, ground_truth: bool = True,
                  start_time_ns: int = DEFAULT_START_TIME_NS,
                  sensor_time_offset_us: int = DEFAULT_SENSOR_TIME_OFFSET_US, packet_interval_us: int = 1000,
                  stamp_latency_ns: int = 0, stamp_jitter_ns: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> SimBagSummary:
    """Simulate ``seconds`` of the rig from ``seed`` and write a ROS 2 bag at ``path`` (must not exist).

    Args:
        config: simulator settings; its ``seed`` and ``duration_s`` are replaced by ``seed`` and ``seconds``.
        storage: ``'sqlite3'`` (default) or ``'mcap'``.
        topics: topic names / frame ids (default :data:`~realm_ros.sim.topics.DEFAULT_TOPICS`).
        ground_truth: also write depth, labels and ``/gt/pose``.
        start_time_ns, sensor_time_offset_us, packet_interval_us, stamp_latency_ns, stamp_jitter_ns: clocks and
            packet timing (see :mod:`realm_ros.sim.packets`).
        progress: called as ``progress(frame_index, num_frames)`` after every frame.

    Returns:
        A :class:`SimBagSummary`; the same numbers are stored in ``<path>/realm_sim.json``.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = Path(path)
    if storage not in STORAGE_PLUGINS:
        raise ValueError(f'unknown storage {storage!r}; expected one of {STORAGE_PLUGINS}')
    if path.exists():
        raise FileExistsError(f'bag path already exists: {path}')
    if not seconds > 0:
        raise ValueError(f'seconds must be positive, got {seconds}')
    cfg = (config or SimConfig()).with_(seed=int(seed), duration_s=float(seconds))
    t_wall = time.monotonic()
    sim = Simulator(cfg)
    factory = RosbagsMessageFactory()
    packetizer = EventPacketizer(packet_interval_us, start_time_ns, sensor_time_offset_us, stamp_latency_ns,
                                 stamp_jitter_ns, seed=cfg.seed)
    counts: dict[str, int] = {}
    plugin = StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP
    n_frames = len(sim.frame_times_ns())
    renders = 0
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}

        def conn(topic: str, msgtype: str, qos_kind: str = 'default') -> Any:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=factory.ts,
                                                     offered_qos_profiles=_qos_profiles(qos_kind))
            return conns[topic]

        def write(topic: str, msgtype: str, msg: Any, t_ns: int, qos_kind: str = 'default') -> None:
            writer.write(conn(topic, msgtype, qos_kind), int(t_ns), factory.ts.serialize_cdr(msg, msgtype))
            counts[topic] = counts.get(topic, 0) + 1

        def write_packets(pkts: list[PacketData]) -> None:
            for pkt in pkts:
                write(topics.events, T.EVENT_PACKET_TYPE,
                      factory.event_packet(pkt, cfg.width, cfg.height, topics.event_frame_id), pkt.publish_ns,
                      'events')

        # declare every topic up front so even an event-free bag lists the events topic
        conn(topics.events, T.EVENT_PACKET_TYPE, 'events')
        write(topics.tf_static, T.TF_MESSAGE_TYPE,
              factory.tf_static(sim.T_event_rgb, start_time_ns, topics.event_frame_id, topics.rgb_frame_id),
              start_time_ns, 'tf_static')
        for chunk in sim.stream():
            renders += chunk.renders
            write_packets(packetizer.push(chunk.events, chunk.t_end_ns))
            t_ros = int(packetizer.ros_ns(chunk.frame.t_ns))
            for topic, msgtype, msg in frame_messages(factory, sim, chunk.frame, t_ros, topics, ground_truth):
                write(topic, msgtype, msg, t_ros)
            if progress is not None:
                progress(chunk.frame.index, n_frames)
        write_packets(packetizer.flush())
    summary = SimBagSummary(path=str(path), storage=storage, duration_s=float(seconds),
                            num_events=packetizer.num_events, num_packets=packetizer.seq, num_frames=n_frames,
                            renders=renders, start_time_ns=int(start_time_ns),
                            sensor_time_offset_us=int(sensor_time_offset_us),
                            wall_time_s=time.monotonic() - t_wall, message_counts=counts)
    info = {'summary': asdict(summary), 'config': _jsonable(asdict(cfg)), 'topics': asdict(topics),
            'T_event_rgb': sim.T_event_rgb.tolist(), 'event_K': sim.event_camera.K.tolist(),
            'rgb_K': sim.rgb_camera.K.tolist(), 'packet_interval_us': packet_interval_us,
            'stamp_latency_ns': stamp_latency_ns, 'stamp_jitter_ns': stamp_jitter_ns}
    (path / SIM_INFO_FILE).write_text(json.dumps(info, indent=2))
    return summary


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def read_sim_info(path: str | Path) -> dict:
    """The ``realm_sim.json`` written next to a simulated bag (raises FileNotFoundError naming the path)."""
    p = Path(path) / SIM_INFO_FILE
    if not p.exists():
        raise FileNotFoundError(f'{p} not found: {path} was not written by write_sim_bag')
    return json.loads(p.read_text())
