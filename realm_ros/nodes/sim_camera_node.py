"""``sim_event_camera``: publishes the simulated event + RGB rig live, in real time, over ROS 2.

Same topics as the simulated bags (:mod:`realm_ros.sim.topics`), published under the node's namespace (names are
relative, so ``--ros-args -r __ns:=/sim1`` moves them; ``/tf_static`` and ``/diagnostics`` stay global):

* ``event_camera/events`` EventPacket evt3, one packet per ``packet_interval_us`` of sensor time (1 ms, like
  metavision_driver's default; the default 224x224 loop gives 1000 packets/s of ~1.2k events, ~4.8 KB; not tiny, so
  not merged into fewer larger packets), BEST_EFFORT KEEP_LAST 1000
* ``event_camera/camera_info``, ``rgb/camera_info``, ``rgb/image_raw`` (rgb8), and with ``publish_ground_truth``:
  ``rgb/depth``, ``event_camera/depth`` (32FC1), ``rgb/labels``, ``event_camera/labels`` (mono8), ``gt/pose``
  (PoseStamped in ``world``): RELIABLE KEEP_LAST 10
* ``/tf_static`` (event_camera -> rgb_camera, RELIABLE TRANSIENT_LOCAL) when ``tf2_msgs`` is importable
* ``/diagnostics``: packets, frames, late publications (later than one packet period), max lag, packets/s, packet
  size and the node's CPU per second of sensor time.

Real time on a small CPU: the sequence (``duration_s`` seconds, several seconds of CPU per simulated second at
224x224) is simulated once and cached on disk; its EVT3 packets are encoded once and serialised once, and a
publisher thread replays them against the wall clock (``rate`` x real time), looping when ``loop`` is true with
continuing stamps, sequence numbers and sensor time (each pass starts a whole number of 4096 us after the previous
one, so later passes only move the payloads' TIME_HIGH words). With the default ``'loop'`` trajectory the camera
path is periodic in ``duration_s``, so loops join without a pose jump. Header stamps are the node's clock at the
start of publishing plus simulation time; each packet's stamp is the ROS time of its first event.

First start (nothing cached): a background process (low priority) simulates the sequence and streams it to the node,
which starts publishing as soon as ``first_segment_s`` is simulated, replaying the simulated prefix (the same stream;
the pose jumps back at the end of each prefix pass) and logging progress, until the whole loop is there (and cached).
With ``loop`` false the node waits for the whole sequence, then publishes it once and exits.

SIGINT / SIGTERM (once or repeatedly) end the node within a fraction of a second, whatever it is doing, exit code 0.

Parameters: declared from :data:`realm_ros.sim.params.SIM_PARAMETERS` (type, range, description; all read-only;
defaults also in ``config/sim_camera.yaml``): ``seed``, ``width``, ``height``, ``hfov_deg``, ``rgb_rate_hz``,
``duration_s``, ``loop``, ``trajectory``, ``speed_mps``, ``motion_scale``, ``baseline_m``, ``contrast_threshold``,
``background_rate_hz``, ``packet_interval_us``, ``rate``, ``publish_ground_truth``, ``max_runtime_s``, ``use_cache``,
``cache_dir``, ``first_segment_s``, ``diagnostics_period_s``.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..sim import topics as T
from ..sim.camera import rotation_to_quaternion
from ..sim.live import PassPlan, ProgressiveSequence, SimWorker, start_sequence
from ..sim.packets import PacketData, shift_evt3_payload
from ..sim.params import SIM_PARAMETERS, SimParam, check_values, sim_config_from_values
from ..sim.replay import Replayer
from ..sim.sequence import cache_path
from .conversions import camera_info_from_intrinsics, image_from_array, make_header
from .parameters import coerce_integer_overrides
from .participant import OwnParticipantNode, transport_summary, use_large_shm_segment
from .qos import events_qos, qos_from_name
from .sim_messages import PacketSerializer, SerializedPacket

NODE_NAME = 'sim_event_camera'
_ROS_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
              float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def _rel(topic: str) -> str:
    """Relative topic name (so the node namespace applies)."""
    return topic.lstrip('/')


def parameter_descriptor(spec: SimParam) -> ParameterDescriptor:
    """The ROS descriptor of one table entry (type, range or choices, read-only, description)."""
    d = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type], description=spec.description,
                            read_only=spec.read_only)
    if spec.low is not None and spec.high is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
    elif spec.low is not None and spec.high is not None and spec.type is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                     step=0.0)]
    if spec.choices:
        d.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    return d


class SimCameraNode(Node):
    """rclpy adapter over :mod:`realm_ros.sim.live` (see module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        p = self._declare_parameters()
        self.params = p
        self.sim_config = sim_config_from_values(p)
        reliable = qos_from_name('reliable', 10)
        from event_camera_msgs.msg import EventPacket
        from sensor_msgs.msg import CameraInfo, Image
        # the packets in a DDS participant of their own, so that the images cannot push them out of the shared-
        # memory transport's buffers before a busy subscriber reads them (see realm_ros.nodes.participant)
        self._events = OwnParticipantNode(f'{self.get_name()}_events', self.get_namespace(),
                                          self.context.get_domain_id())
        self.pub_events = self._events.node.create_publisher(
            EventPacket, self.resolve_topic_name(_rel(T.EVENTS_TOPIC)), events_qos())
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
        self.pub_diag = self._make_diagnostics_publisher()
        self.rate = float(p['rate'])
        self.replayer: Replayer | None = None
        self.worker: SimWorker | None = None
        self.sequence: ProgressiveSequence | None = None
        self.failed = False
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name='sim_publisher', daemon=True)
        self._frame_msgs: dict[int, list] = {}
        self._serialized: dict[int, list[SerializedPacket | None]] = {}   # None: built as a message when sent
        self._last_progress_log = 0.0
        self.create_timer(float(p['diagnostics_period_s']), self._publish_diagnostics)

    # ------------------------------------------------------------------------------------------------------------
    def _declare_parameters(self) -> dict:
        values = {}
        for name in coerce_integer_overrides(getattr(self, '_parameter_overrides', None),
                                             ((spec.name, type(spec.default)) for spec in SIM_PARAMETERS)):
            self.get_logger().info(f'parameter {name}: integer value taken as a double')
        for spec in SIM_PARAMETERS:
            values[spec.name] = self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec)).value
        return check_values(values)

    def destroy_node(self) -> None:
        try:
            self._events.close()
        finally:
            super().destroy_node()

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

    def _make_diagnostics_publisher(self):
        try:
            from diagnostic_msgs.msg import DiagnosticArray
        except ImportError:
            return None
        return self.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def start(self) -> None:
        """Start the simulation/publisher thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop publishing and the background simulation; returns within about ``timeout_s``."""
        self._stop.set()
        if self.worker is not None:
            self.worker.stop(timeout_s / 2)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s / 2)

    # ------------------------------------------------------------------------------------------------------------
    def _open_sequence(self) -> ProgressiveSequence:
        cfg, p, log = self.sim_config, self.params, self.get_logger()
        if p['loop'] and cfg.trajectory == 'drive':
            log.info(f"replaying the {cfg.duration_s:g} s drive in a loop: the camera jumps back to its start every "
                     f"{cfg.duration_s / float(p['rate']):g} s (the pose chain re-anchors); trajectory 'loop' goes "
                     'back and forth without a jump')
        cache_dir = p['cache_dir'] or None
        t0 = time.monotonic()
        seq, worker = start_sequence(cfg, int(p['packet_interval_us']), int(p['seed']), cache_dir,
                                     bool(p['use_cache']), on_progress=self._log_progress,
                                     urgent_s=float(p['first_segment_s']) if p['loop'] else 0.0)
        self.worker = worker
        if worker is None:
            log.info(f'loaded {len(seq.frames)} frames and {seq.num_events} events '
                     f'({seq.num_events / cfg.duration_s / 1e6:.2f} Mev/s) from the cache in '
                     f'{time.monotonic() - t0:.1f} s ({cache_path(cfg, cache_dir)})')
        else:
            log.info(f'simulating {cfg.duration_s:.2f} s at {cfg.width}x{cfg.height} (seed {cfg.seed}, trajectory '
                     f'{cfg.trajectory}) in a background process'
                     + (f'; publishing starts after the first {p["first_segment_s"]:.2f} s' if p['loop'] else
                        '; loop=false: publishing starts when all of it is simulated')
                     + (f'; cached in {cache_path(cfg, cache_dir)} for the next start' if p['use_cache'] else ''))
        return seq

    def _log_progress(self, seq: ProgressiveSequence) -> None:
        now = time.monotonic()
        if now - self._last_progress_log < 3.0 or self.worker is None or seq.simulated_s <= 0:
            return
        self._last_progress_log = now
        done, total = seq.simulated_s, self.sim_config.duration_s
        spent = now - self.worker.started
        eta = spent * (total - done) / done if done > 0 else float('nan')
        self.get_logger().info(f'simulated {done:.2f} of {total:.2f} s ({100 * done / total:.0f} %) in {spent:.0f} s, '
                               f'~{eta:.0f} s left; {seq.num_events} events')

    def _run(self) -> None:
        try:
            seq = self._open_sequence()
            self.sequence = seq
            if not self._stop.is_set():
                self._publish_loop(seq)
            if seq.error is not None and not self._stop.is_set():
                self.failed = True
                self.get_logger().error(seq.error)
        except Exception as exc:  # noqa: BLE001 - report and end the node cleanly
            if not self._stop.is_set():
                self.failed = True
                self.get_logger().error(f'simulation failed: {type(exc).__name__}: {exc}')
        finally:
            if self.worker is not None and self.worker.saved:
                self.get_logger().info(f'the simulated sequence is cached in {self.worker.saved}')
            self.finished.set()

    def _publish_loop(self, seq: ProgressiveSequence) -> None:
        """Replay passes against the wall clock (:class:`realm_ros.sim.replay.Replayer`, this node as its sink)."""
        p = self.params
        self._serializer = PacketSerializer(self.sim_config.width, self.sim_config.height, T.EVENT_FRAME_ID)
        if not self._serializer.usable:
            self.get_logger().warning('EventPacket CDR layout not recognised: publishing message objects (more CPU '
                                      'per packet)')
        self.replayer = Replayer(seq, self, rate=self.rate, loop=bool(p['loop']),
                                 first_segment_s=float(p['first_segment_s']), max_runtime_s=float(p['max_runtime_s']),
                                 packet_interval_us=int(p['packet_interval_us']),
                                 now_ros_ns=lambda: self.get_clock().now().nanoseconds, log=self.get_logger(),
                                 stop=self._stop)
        self.replayer.run()

    # ReplaySink ----------------------------------------------------------------------------------------------------
    def prepare(self, seq: ProgressiveSequence, plan: PassPlan) -> None:
        """Serialise the packets and build the frame messages of a pass before it starts (once per frame: later
        passes only patch stamps), so that publishing does no per-message building."""
        ser = self._serializer
        for i in range(plan.num_frames):
            if self._stop.is_set():
                return
            if i not in self._serialized and ser.usable:
                self._serialized[i] = [ser.serialize(pkt) for pkt in seq.packets[i]]
            if i not in self._frame_msgs:
                self._frame_msgs[i] = self._build_frame(seq, i)
        if plan.complete and -1 not in self._serialized and ser.usable:
            self._serialized[-1] = [ser.serialize(pkt) for pkt in plan.end_packets]

    def started(self, start_ros_ns: int) -> None:
        if self.pub_tf is not None and self.sequence is not None:
            self.pub_tf.publish(self._tf_msg(self.sequence.T_event_rgb, start_ros_ns))

    def packet(self, key: tuple[int, int] | None, pkt: PacketData, stamp_ns: int, seq_no: int,
               shift_us: int) -> int:
        ser = self._serializer
        blob = None
        if ser.usable:
            blobs = self._serialized.get(key[0]) if key is not None else None
            blob = blobs[key[1]] if blobs is not None and key is not None else ser.serialize(pkt)
        if blob is not None:
            self.pub_events.publish(ser.render(blob, stamp_ns, seq_no, shift_us))
            return blob.num_bytes
        payload = shift_evt3_payload(pkt.payload, shift_us) if shift_us else pkt.payload
        self.pub_events.publish(ser.message(payload, seq_no, stamp_ns))
        return len(payload)

    def frame(self, index: int, t_ros_ns: int) -> None:
        msgs = self._frame_msgs.get(index)
        if msgs is None:
            assert self.sequence is not None
            msgs = self._frame_msgs[index] = self._build_frame(self.sequence, index)
        stamp = make_header(t_ros_ns, '').stamp
        for pub, msg in msgs:
            msg.header.stamp = stamp
            pub.publish(msg)

    def _build_frame(self, seq: ProgressiveSequence, i: int) -> list:
        """The messages of frame ``i`` (built once; only their stamps change between passes)."""
        frame = seq.frames[i]
        ev_cam, rgb_cam = seq.cameras()
        rgb_h, ev_h = make_header(0, T.RGB_FRAME_ID), make_header(0, T.EVENT_FRAME_ID)
        out = [(self.pub_rgb, image_from_array(frame.rgb, 'rgb8', rgb_h)),
               (self.pub_rgb_info, camera_info_from_intrinsics(rgb_cam.K, rgb_cam.width, rgb_cam.height, rgb_h,
                                                               D=np.zeros(5), distortion_model='plumb_bob')),
               (self.pub_ev_info, camera_info_from_intrinsics(ev_cam.K, ev_cam.width, ev_cam.height, ev_h,
                                                              D=np.zeros(5), distortion_model='plumb_bob'))]
        if self.gt:
            out += [(self.pub_rgb_depth, image_from_array(frame.rgb_depth.astype(np.float32), '32FC1', rgb_h)),
                    (self.pub_rgb_labels, image_from_array(frame.rgb_labels, 'mono8', rgb_h)),
                    (self.pub_ev_depth, image_from_array(frame.event_depth.astype(np.float32), '32FC1', ev_h)),
                    (self.pub_ev_labels, image_from_array(frame.event_labels, 'mono8', ev_h)),
                    (self.pub_pose, _pose_msg(frame.T_world_event, make_header(0, T.WORLD_FRAME_ID)))]
        return out

    # ------------------------------------------------------------------------------------------------------------
    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (s) of the publisher thread and of this whole process (not the simulation worker)."""
        thread_cpu = 0.0
        if self._thread.ident is not None and self._thread.is_alive():
            try:
                thread_cpu = time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))
            except (OSError, AttributeError):
                thread_cpu = 0.0
        return thread_cpu, time.process_time()

    def _publish_diagnostics(self) -> None:
        if self.replayer is None:
            values = {'packets': 0, 'sensor_s': 0.0, 'simulated_s': round(self.sequence.simulated_s, 3) if
                      self.sequence else 0.0, 'sequence_complete': bool(self.sequence and self.sequence.complete)}
            period = {'late_in_period': 0, 'max_lag_in_period_ms': 0.0}
        else:
            values = self.replayer.period_figures(*self.cpu_seconds())
            period = values
        self.last_diagnostics = values
        if self.pub_diag is None:
            return
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        st = DiagnosticStatus(name=f'{self.get_name()}: simulated event camera', hardware_id=NODE_NAME)
        if self.failed:
            st.level, st.message = DiagnosticStatus.ERROR, 'simulation failed'
        elif period['late_in_period']:
            st.level = DiagnosticStatus.WARN
            st.message = (f"{period['late_in_period']} publications later than one packet period "
                          f"(max {period['max_lag_in_period_ms']:.1f} ms)")
        else:
            st.level = DiagnosticStatus.OK
            st.message = 'publishing in real time' if values['sensor_s'] > 0 else 'simulating'
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self.pub_diag.publish(arr)

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


def _pose_msg(T_world_cam: np.ndarray, header) -> PoseStamped:
    msg = PoseStamped()
    msg.header = header
    t = T_world_cam[:3, 3]
    q = rotation_to_quaternion(T_world_cam[:3, :3])
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in t)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)
    return msg



def main(args: list[str] | None = None, exit_process: bool = True) -> int:
    """Console entry point ``sim_event_camera`` (``--ros-args -p name:=value`` for parameters).

    SIGINT and SIGTERM only set a flag (no KeyboardInterrupt, however many arrive): the main loop sees it within
    0.1 s, stops the background simulation and the publisher, shuts ROS down and, with ``exit_process``, ends the
    process at once with the exit code (``os._exit`` after flushing): the interpreter's own teardown (numba, LLVM)
    takes 0.5-1 s on a busy 2-core machine, which would eat most of the 2 s a launch file allows after SIGINT.
    """
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    from rclpy.signals import SignalHandlerOptions
    shm_profile = use_large_shm_segment()     # before the first participant: a 16 MB shared-memory segment
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    rc = 0
    try:
        node = SimCameraNode()
        node.get_logger().info(transport_summary(shm_profile))
        node.start()
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and not node.finished.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        rc = 1 if node.failed else 0
    except Exception as exc:  # noqa: BLE001 - a clear message instead of a traceback for bad parameters
        # The node's logger (console and /rosout) once it exists; before that (bad parameters fail the constructor)
        # a logger of the node's name, which writes the same [FATAL] line to the console (stderr).
        logger = node.get_logger() if node is not None else rclpy.logging.get_logger(NODE_NAME)
        logger.fatal(f'{type(exc).__name__}: {exc}')
        rc = 1
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown(uninstall_handlers=False)
        # The process is ending: ignore further signals. (Python's finalisation resets the handlers it installed to
        # SIG_DFL, so a second Ctrl-C arriving during interpreter exit would kill the process with -2; SIG_IGN is
        # left alone.)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    if exit_process:
        from realm_ros.nodes.process_exit import end_process
        end_process(rc)
    return rc


if __name__ == '__main__':
    raise SystemExit(main())
