"""``sim_event_camera``: publishes the simulated event + RGB rig live, in real time, over ROS 2.

Same topics as the simulated bags (:mod:`realm_ros.sim.topics`), published under the node's namespace (names are
relative, so ``--ros-args -r __ns:=/sim1`` moves them; ``/tf_static`` stays global):

* ``event_camera/events`` EventPacket evt3, ~1 packet per ms, BEST_EFFORT KEEP_LAST 1000 (like metavision_driver)
* ``event_camera/camera_info``, ``rgb/camera_info``, ``rgb/image_raw`` (rgb8), and with ``publish_ground_truth``:
  ``rgb/depth``, ``event_camera/depth`` (32FC1), ``rgb/labels``, ``event_camera/labels`` (mono8), ``gt/pose``
  (PoseStamped in ``world``): RELIABLE KEEP_LAST 10
* ``/tf_static`` (event_camera -> rgb_camera, RELIABLE TRANSIENT_LOCAL) when ``tf2_msgs`` is importable.

Real time on a small CPU: at start-up the node simulates ``duration_s`` seconds once (about 10 s of CPU per
simulated second at 224x224; cached on disk for the next start) and encodes its EVT3 packets once, then a publisher
thread replays them against the wall clock (``rate`` x real time), looping when ``loop`` is true with continuing
stamps, sequence numbers and sensor time (pass k starts at k * P, P = ``duration_s`` rounded up to 4.096 ms, so later
passes only move the payloads' TIME_HIGH words). With the default ``'loop'`` trajectory the camera path is periodic
in ``duration_s``, so loops join without a pose jump. Header stamps are the node's clock at the start of publishing
plus simulation time; each packet's stamp is the ROS time of its first event.

Parameters: ``seed`` (0), ``width`` (224), ``height`` (224), ``hfov_deg`` (80), ``rgb_rate_hz`` (30), ``duration_s``
(3), ``loop`` (true), ``trajectory`` ('loop' | 'drive' | 'static'), ``speed_mps`` (8), ``motion_scale`` (1),
``baseline_m`` (0), ``contrast_threshold`` (0.2), ``background_rate_hz`` (0), ``packet_interval_us`` (1000),
``rate`` (1.0), ``publish_ground_truth`` (true), ``max_runtime_s`` (0 = run until shut down; with ``loop`` false the
node exits after one pass), ``use_cache`` (true: keep the precomputed sequence in ``cache_dir``, default
``~/.cache/realm_ros/sim``, so the next start with the same parameters is immediate).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..sim import topics as T
from ..sim.camera import rotation_to_quaternion
from ..sim.esim import EsimConfig
from ..sim.packets import (DEFAULT_SENSOR_TIME_OFFSET_US, EVT3_TIME_HIGH_US, EventPacketizer, PacketData,
                           shift_evt3_payload)
from ..sim.sequence import SimSequence, cache_path, load_or_simulate
from ..sim.simulator import SimConfig, SimFrame
from .conversions import camera_info_from_intrinsics, image_from_array, make_event_packet, make_header
from .qos import events_qos, qos_from_name

NODE_NAME = 'sim_event_camera'


def _rel(topic: str) -> str:
    """Relative topic name (so the node namespace applies)."""
    return topic.lstrip('/')


class SimCameraNode(Node):
    """Thin rclpy wrapper around :class:`realm_ros.sim.Simulator` (see module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        p = self._declare_parameters()
        self.params = p
        self.sim_config = SimConfig(
            seed=p['seed'], duration_s=p['duration_s'], width=p['width'], height=p['height'], hfov_deg=p['hfov_deg'],
            rgb_rate_hz=p['rgb_rate_hz'], trajectory=p['trajectory'], speed_mps=p['speed_mps'],
            motion_scale=p['motion_scale'], baseline_m=p['baseline_m'],
            esim=EsimConfig(contrast_pos=p['contrast_threshold'], contrast_neg=p['contrast_threshold'],
                            background_rate_hz=p['background_rate_hz']))
        reliable = qos_from_name('reliable', 10)
        self.pub_events = self.create_publisher(_event_packet_type(), _rel(T.EVENTS_TOPIC), events_qos())
        from sensor_msgs.msg import CameraInfo, Image
        self.pub_rgb = self.create_publisher(Image, _rel(T.RGB_IMAGE_TOPIC), reliable)
        self.pub_rgb_info = self.create_publisher(CameraInfo, _rel(T.RGB_CAMERA_INFO_TOPIC), reliable)
        self.pub_ev_info = self.create_publisher(CameraInfo, _rel(T.EVENT_CAMERA_INFO_TOPIC), reliable)
        self.gt = bool(p['publish_ground_truth'])
        if self.gt:
            self.pub_rgb_depth = self.create_publisher(Image, _rel(T.RGB_DEPTH_TOPIC), reliable)
            self.pub_rgb_labels = self.create_publisher(Image, _rel(T.RGB_LABELS_TOPIC), reliable)
            self.pub_ev_depth = self.create_publisher(Image, _rel(T.EVENT_DEPTH_TOPIC), reliable)
            self.pub_ev_labels = self.create_publisher(Image, _rel(T.EVENT_LABELS_TOPIC), reliable)
            self.pub_pose = self.create_publisher(PoseStamped, _rel(T.GT_POSE_TOPIC), reliable)
        self.pub_tf = self._make_tf_publisher()
        self.stats = {'packets': 0, 'events': 0, 'frames': 0, 'loops': 0, 'late_publishes': 0, 'max_lag_ms': 0.0}
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name='sim_publisher', daemon=True)

    # ------------------------------------------------------------------------------------------------------------
    def _declare_parameters(self) -> dict:
        defaults = {
            'seed': 0, 'width': 224, 'height': 224, 'hfov_deg': 80.0, 'rgb_rate_hz': 30.0, 'duration_s': 3.0,
            'loop': True, 'trajectory': 'loop', 'speed_mps': 8.0, 'motion_scale': 1.0, 'baseline_m': 0.0,
            'contrast_threshold': 0.2, 'background_rate_hz': 0.0, 'packet_interval_us': 1000, 'rate': 1.0,
            'publish_ground_truth': True, 'max_runtime_s': 0.0, 'use_cache': True, 'cache_dir': '',
        }
        out = {}
        for name, value in defaults.items():
            out[name] = self.declare_parameter(name, value).value
        if out['rate'] <= 0:
            raise ValueError(f"parameter 'rate' must be positive, got {out['rate']}")
        if out['packet_interval_us'] < 1:
            raise ValueError(f"parameter 'packet_interval_us' must be >= 1, got {out['packet_interval_us']}")
        return out

    def _make_tf_publisher(self):
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            self.get_logger().warning('tf2_msgs is not installed: /tf_static (event_camera -> rgb_camera) is not '
                                      'published; the extrinsic is identity unless baseline_m is set')
            return None
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        return self.create_publisher(TFMessage, T.TF_STATIC_TOPIC, qos)

    def start(self) -> None:
        """Start the simulation/publisher thread."""
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    # ------------------------------------------------------------------------------------------------------------
    def _precompute(self) -> SimSequence:
        cfg = self.sim_config
        log = self.get_logger()
        if self.params['loop'] and cfg.trajectory == 'drive':
            log.warning("loop=true with trajectory 'drive': the pose jumps back at every loop; use 'loop'")
        use_cache = bool(self.params['use_cache'])
        cache_dir = self.params['cache_dir'] or None
        where = cache_path(cfg, cache_dir)
        if not (use_cache and where.exists()):
            log.info(f'simulating {cfg.duration_s:.2f} s at {cfg.width}x{cfg.height} (seed {cfg.seed}, trajectory '
                     f'{cfg.trajectory}) before publishing; a few seconds of CPU per simulated second')
        t0 = time.monotonic()
        seq, cached = load_or_simulate(cfg, cache_dir, use_cache, should_stop=self._stop.is_set)
        n_ev = seq.num_events
        log.info(f"{'loaded' if cached else 'simulated'} {len(seq.frames)} frames and {n_ev} events "
                 f'({n_ev / cfg.duration_s / 1e6:.2f} Mev/s) in {time.monotonic() - t0:.1f} s'
                 + (f' (cache: {where})' if use_cache else ''))
        return seq

    def _run(self) -> None:
        try:
            seq = self._precompute()
            if not self._stop.is_set():
                self._publish_loop(seq)
        except InterruptedError:
            pass
        except Exception as exc:  # noqa: BLE001 - report and end the node cleanly
            self.get_logger().error(f'simulation failed: {type(exc).__name__}: {exc}')
        finally:
            self.finished.set()

    def _encode_packets(self, seq: SimSequence) -> tuple[list[list[PacketData]], list[PacketData]]:
        """EVT3 packets of one pass, encoded once (times relative to the pass start): the packets due before each
        frame, and the tail after the last frame."""
        packetizer = EventPacketizer(int(self.params['packet_interval_us']), 0, DEFAULT_SENSOR_TIME_OFFSET_US,
                                     seed=int(self.params['seed']))
        per_frame = [packetizer.push(ev, frame.t_ns) for ev, frame in zip(seq.events, seq.frames)]
        return per_frame, packetizer.flush()

    def _publish_loop(self, seq: SimSequence) -> None:
        """Replay the sequence against the wall clock. Pass k starts at k * P, P = the sequence length rounded up to
        a multiple of 4096 us, so the precomputed EVT3 payloads are reused with only their TIME_HIGH words moved
        (:func:`shift_evt3_payload`): sensor time, stamps and seq continue across passes."""
        p = self.params
        rate = float(p['rate'])
        per_frame, tail = self._encode_packets(seq)
        period_us = -(-max(seq.period_ns // 1000, 1) // EVT3_TIME_HIGH_US) * EVT3_TIME_HIGH_US
        start_ros = self.get_clock().now().nanoseconds
        start_wall = time.monotonic()
        if self.pub_tf is not None:
            self.pub_tf.publish(self._tf_msg(seq.T_event_rgb, start_ros))
        max_runtime = float(p['max_runtime_s'])
        last_log = start_wall
        loop = 0
        n_frames = len(seq.frames)
        self._seq_no = 0
        while not self._stop.is_set():
            # frames of one pass: all of them the first time, then skip frame 0 (it repeats the previous pass's end)
            first = 0 if loop == 0 else 1
            shift_us = loop * period_us
            base_ros = start_ros + shift_us * 1000
            for i in range(first, n_frames):
                if self._stop.is_set():
                    return
                if not self._publish_packets(per_frame[i], seq, base_ros, shift_us, start_ros, start_wall, rate):
                    return
                frame = seq.frames[i]
                t_ros = base_ros + frame.t_ns
                if not self._wait_until(t_ros, start_ros, start_wall, rate):
                    return
                self._publish_frame(seq, frame, t_ros)
                now = time.monotonic()
                if max_runtime > 0 and now - start_wall >= max_runtime:
                    self.get_logger().info(f'max_runtime_s reached; published {self.stats}')
                    return
                if now - last_log >= 5.0:
                    last_log = now
                    self.get_logger().info(f'published {self.stats}')
            if not self._publish_packets(tail, seq, base_ros, shift_us, start_ros, start_wall, rate):
                return
            loop += 1
            self.stats['loops'] = loop
            if not p['loop']:
                self.get_logger().info(f'sequence finished (loop=false); published {self.stats}')
                return

    def _publish_packets(self, packets: list[PacketData], seq: SimSequence, base_ros: int, shift_us: int,
                         start_ros: int, start_wall: float, rate: float) -> bool:
        for pkt in packets:
            if not self._wait_until(base_ros + pkt.publish_ns, start_ros, start_wall, rate):
                return False
            payload = shift_evt3_payload(pkt.payload, shift_us) if shift_us else pkt.payload
            self.pub_events.publish(make_event_packet(payload, 'evt3', seq.event_camera.width,
                                                      seq.event_camera.height, self._seq_no,
                                                      base_ros + pkt.stamp_ns, T.EVENT_FRAME_ID))
            self._seq_no += 1
            self.stats['packets'] += 1
            self.stats['events'] += pkt.num_events
        return True

    def _wait_until(self, t_ros_ns: int, start_ros: int, start_wall: float, rate: float) -> bool:
        """Sleep until the wall time of ROS time ``t_ros_ns``; False if stopping."""
        due = start_wall + (t_ros_ns - start_ros) * 1e-9 / rate
        while True:
            lag = time.monotonic() - due
            if lag >= 0:
                if lag > 0.005:
                    self.stats['late_publishes'] += 1
                    self.stats['max_lag_ms'] = max(self.stats['max_lag_ms'], round(lag * 1e3, 2))
                return not self._stop.is_set()
            if self._stop.wait(min(-lag, 0.05)):
                return False

    def _publish_frame(self, seq: SimSequence, frame: SimFrame, t_ros: int) -> None:
        rgb_h = make_header(t_ros, T.RGB_FRAME_ID)
        ev_h = make_header(t_ros, T.EVENT_FRAME_ID)
        self.pub_rgb.publish(image_from_array(frame.rgb, 'rgb8', rgb_h))
        self.pub_rgb_info.publish(camera_info_from_intrinsics(seq.rgb_camera.K, seq.rgb_camera.width,
                                                              seq.rgb_camera.height, rgb_h, D=np.zeros(5),
                                                              distortion_model='plumb_bob'))
        self.pub_ev_info.publish(camera_info_from_intrinsics(seq.event_camera.K, seq.event_camera.width,
                                                             seq.event_camera.height, ev_h, D=np.zeros(5),
                                                             distortion_model='plumb_bob'))
        if self.gt:
            self.pub_rgb_depth.publish(image_from_array(frame.rgb_depth.astype(np.float32), '32FC1', rgb_h))
            self.pub_rgb_labels.publish(image_from_array(frame.rgb_labels, 'mono8', rgb_h))
            self.pub_ev_depth.publish(image_from_array(frame.event_depth.astype(np.float32), '32FC1', ev_h))
            self.pub_ev_labels.publish(image_from_array(frame.event_labels, 'mono8', ev_h))
            self.pub_pose.publish(_pose_msg(frame.T_world_event, make_header(t_ros, T.WORLD_FRAME_ID)))
        self.stats['frames'] += 1

    def _tf_msg(self, T_event_rgb: np.ndarray, t_ros: int):
        from geometry_msgs.msg import TransformStamped
        from tf2_msgs.msg import TFMessage
        tr = TransformStamped()
        tr.header = make_header(t_ros, T.EVENT_FRAME_ID)
        tr.child_frame_id = T.RGB_FRAME_ID
        t = T_event_rgb[:3, 3]
        q = rotation_to_quaternion(T_event_rgb[:3, :3])
        tr.transform.translation.x, tr.transform.translation.y, tr.transform.translation.z = (float(v) for v in t)
        r = tr.transform.rotation
        r.x, r.y, r.z, r.w = (float(v) for v in q)
        msg = TFMessage()
        msg.transforms = [tr]
        return msg


def _event_packet_type():
    from event_camera_msgs.msg import EventPacket
    return EventPacket


def _pose_msg(T_world_cam: np.ndarray, header) -> PoseStamped:
    msg = PoseStamped()
    msg.header = header
    t = T_world_cam[:3, 3]
    q = rotation_to_quaternion(T_world_cam[:3, :3])
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in t)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)
    return msg


def main(args: list[str] | None = None) -> int:
    """Console entry point ``sim_event_camera`` (``--ros-args -p name:=value`` for parameters)."""
    rclpy.init(args=args)
    node = None
    rc = 0
    try:
        node = SimCameraNode()
        node.start()
        while rclpy.ok() and not node.finished.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - a clear message instead of a traceback for bad parameters
        print(f'{NODE_NAME}: {type(exc).__name__}: {exc}', flush=True)
        rc = 1
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return rc


if __name__ == '__main__':
    raise SystemExit(main())
