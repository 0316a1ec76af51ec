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

import logging
import os
import signal
import sys
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
from ..sim.live import LatenessMonitor, PassPlan, ProgressiveSequence, SimWorker, start_sequence
from ..sim.packets import PacketData
from ..sim.params import SIM_PARAMETERS, SimParam, check_values, sim_config_from_values
from ..sim.sequence import cache_path
from .conversions import camera_info_from_intrinsics, image_from_array, make_header
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
    if spec.low is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
    elif spec.low is not None and spec.type is float:
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
        self.pub_events = self.create_publisher(EventPacket, _rel(T.EVENTS_TOPIC), events_qos())
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
        self.lateness = LatenessMonitor(p['packet_interval_us'] * 1e-6 / self.rate)
        self.stats = {'packets': 0, 'events': 0, 'bytes': 0, 'frames': 0, 'loops': 0, 'prefix_passes': 0,
                      'late_publishes': 0, 'max_lag_ms': 0.0}
        self.sensor_s = 0.0                       # sensor time published so far (s)
        self.worker: SimWorker | None = None
        self.sequence: ProgressiveSequence | None = None
        self.failed = False
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name='sim_publisher', daemon=True)
        self._frame_msgs: dict[int, list] = {}
        self._serialized: dict[int, list[SerializedPacket]] = {}
        self._diag_last = (time.monotonic(), 0.0, 0.0, 0.0, 0, 0)
        self._last_progress_log = 0.0
        self.create_timer(float(p['diagnostics_period_s']), self._publish_diagnostics)

    # ------------------------------------------------------------------------------------------------------------
    def _declare_parameters(self) -> dict:
        values = {}
        for spec in SIM_PARAMETERS:
            values[spec.name] = self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec)).value
        return check_values(values)

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
            log.warning("loop=true with trajectory 'drive': the pose jumps back at every loop; use 'loop'")
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
        """Replay passes against the wall clock (module docstring); returns when stopping or done."""
        p, log = self.params, self.get_logger()
        self._serializer = PacketSerializer(self.sim_config.width, self.sim_config.height, T.EVENT_FRAME_ID)
        if not self._serializer.usable:
            log.warning('EventPacket CDR layout not recognised: publishing message objects (more CPU per packet)')
        loop, max_runtime = bool(p['loop']), float(p['max_runtime_s'])
        self._seq_no, offset_us, n_pass, start = 0, 0, 0, None
        last_log, announced_complete = 0.0, False
        while not self._stop.is_set():
            plan = seq.plan(float(p['first_segment_s']), whole=not loop, should_stop=self._stop.is_set)
            if plan is None:
                return
            self._prepare(seq, plan)
            if start is None:
                start = (self.get_clock().now().nanoseconds, time.monotonic())
                last_log = start[1]
                if self.pub_tf is not None:
                    self.pub_tf.publish(self._tf_msg(seq.T_event_rgb, start[0]))
                if plan.complete:
                    log.info(f'publishing the {plan.period_us * 1e-6:.2f} s sequence at {self.rate:g}x real time'
                             + (' in a loop' if loop else ' once'))
                else:
                    log.info(f'publishing the first {plan.period_us * 1e-6:.2f} s of the loop at {self.rate:g}x real '
                             f'time, replayed while the rest is simulated (the pose jumps back at the end of each '
                             f'such pass)')
                announced_complete = plan.complete
            elif plan.complete and not announced_complete:
                announced_complete = True
                log.info(f'the whole {plan.period_us * 1e-6:.2f} s loop is simulated; replaying it from now on')
            if not self._publish_pass(seq, plan, n_pass, offset_us, start, max_runtime):
                return
            offset_us += plan.period_us
            n_pass += 1
            self.stats['loops' if plan.complete else 'prefix_passes'] += 1
            if not loop:
                log.info(f'sequence finished (loop=false); published {self._summary()}')
                return
            if time.monotonic() - last_log >= 5.0:
                last_log = time.monotonic()
                log.info(f'published {self._summary()}')

    def _publish_pass(self, seq: ProgressiveSequence, plan: PassPlan, n_pass: int, offset_us: int,
                      start: tuple[int, float], max_runtime: float) -> bool:
        base_ros = start[0] + offset_us * 1000
        for i in range(0 if n_pass == 0 else 1, plan.num_frames):
            if not self._publish_packets(seq.packets[i], i, base_ros, offset_us, start):
                return False
            t_ros = base_ros + seq.frames[i].t_ns
            if not self._wait_until(t_ros, start):
                return False
            self._publish_frame(seq, i, t_ros)
            if max_runtime > 0 and time.monotonic() - start[1] >= max_runtime:
                self.get_logger().info(f'max_runtime_s reached; published {self._summary()}')
                return False
        return self._publish_packets(plan.end_packets, -1 if plan.complete else None, base_ros, offset_us, start)

    def _prepare(self, seq: ProgressiveSequence, plan: PassPlan) -> None:
        """Serialise the packets and build the frame messages of a pass before it starts (once per frame: later
        passes only patch stamps), so that publishing does no per-message building."""
        for i in range(plan.num_frames):
            if self._stop.is_set():
                return
            if i not in self._serialized and self._serializer.usable:
                self._serialized[i] = [self._serializer.serialize(pkt) for pkt in seq.packets[i]]
            if i not in self._frame_msgs:
                self._frame_msgs[i] = self._build_frame(seq, i)
        if plan.complete and -1 not in self._serialized and self._serializer.usable:
            self._serialized[-1] = [self._serializer.serialize(pkt) for pkt in plan.end_packets]

    def _publish_packets(self, packets: list[PacketData], key: int | None, base_ros: int, shift_us: int,
                         start: tuple[int, float]) -> bool:
        """Publish ``packets`` at their due times; ``key`` caches their serialised form (None: not cached)."""
        ser = self._serializer
        blobs = self._serialized.get(key) if key is not None else None
        if blobs is None and ser.usable:
            blobs = [ser.serialize(pkt) for pkt in packets]
            if key is not None:
                self._serialized[key] = blobs
        for j, pkt in enumerate(packets):
            if not self._wait_until(base_ros + pkt.publish_ns, start):
                return False
            stamp = base_ros + pkt.stamp_ns
            blob = blobs[j] if blobs is not None else None
            if blob is not None:
                self.pub_events.publish(ser.render(blob, stamp, self._seq_no, shift_us))
                self.stats['bytes'] += blob.num_bytes
            else:
                from ..sim.packets import shift_evt3_payload
                payload = shift_evt3_payload(pkt.payload, shift_us) if shift_us else pkt.payload
                self.pub_events.publish(ser.message(payload, self._seq_no, stamp))
                self.stats['bytes'] += len(payload)
            self._seq_no += 1
            self.stats['packets'] += 1
            self.stats['events'] += pkt.num_events
        return True

    def _wait_until(self, t_ros_ns: int, start: tuple[int, float]) -> bool:
        """Sleep until the wall time of ROS time ``t_ros_ns`` and book the lateness; False if stopping."""
        due = start[1] + (t_ros_ns - start[0]) * 1e-9 / self.rate
        while True:
            lag = time.monotonic() - due
            if lag >= 0:
                if self.lateness.record(lag):
                    self.stats['late_publishes'] = self.lateness.late
                    self.stats['max_lag_ms'] = round(self.lateness.max_lag_s * 1e3, 2)
                self.sensor_s = (t_ros_ns - start[0]) * 1e-9
                return not self._stop.is_set()
            if -lag < 0.005:
                time.sleep(-lag)          # cheaper than Event.wait (~1000 short waits per second)
            elif self._stop.wait(min(-lag, 0.05)):
                return False

    def _publish_frame(self, seq: ProgressiveSequence, i: int, t_ros: int) -> None:
        msgs = self._frame_msgs.get(i)
        if msgs is None:
            msgs = self._frame_msgs[i] = self._build_frame(seq, i)
        stamp = make_header(t_ros, '').stamp
        for pub, msg in msgs:
            msg.header.stamp = stamp
            pub.publish(msg)
        self.stats['frames'] += 1

    def _build_frame(self, seq: ProgressiveSequence, i: int) -> list:
        """The messages of frame ``i`` (built once; only their stamps change between passes)."""
        frame, rgb_cam, ev_cam = seq.frames[i], seq.rgb_camera, seq.event_camera
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

    def _summary(self) -> dict:
        out = dict(self.stats)
        out['sensor_s'] = round(self.sensor_s, 2)
        return out

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        thread_cpu, proc_cpu = self.cpu_seconds()
        t0, s0, c0, p0, n0, b0 = self._diag_last
        self._diag_last = (now, self.sensor_s, thread_cpu, proc_cpu, self.stats['packets'], self.stats['bytes'])
        period = self.lateness.take_period()
        d_sensor, d_n = self.sensor_s - s0, self.stats['packets'] - n0
        values = dict(self._summary())
        values.update({
            'late_in_period': period['late'], 'max_lag_in_period_ms': round(period['max_lag_s'] * 1e3, 2),
            'late_tolerance_ms': round(self.lateness.tolerance_s * 1e3, 3),
            'packets_per_s': round(d_n / (now - t0), 1) if now > t0 else 0.0,
            'mean_packet_bytes': round((self.stats['bytes'] - b0) / d_n) if d_n else 0,
            'publisher_cpu_ms_per_sensor_s': round((thread_cpu - c0) * 1e3 / d_sensor, 1) if d_sensor > 0 else 0.0,
            'process_cpu_ms_per_sensor_s': round((proc_cpu - p0) * 1e3 / d_sensor, 1) if d_sensor > 0 else 0.0,
            'simulated_s': round(self.sequence.simulated_s, 3) if self.sequence else 0.0,
            'sequence_complete': bool(self.sequence and self.sequence.complete),
        })
        self.last_diagnostics = values
        if self.pub_diag is None:
            return
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        st = DiagnosticStatus(name=f'{self.get_name()}: simulated event camera', hardware_id=NODE_NAME)
        if self.failed:
            st.level, st.message = DiagnosticStatus.ERROR, 'simulation failed'
        elif period['late']:
            st.level = DiagnosticStatus.WARN
            st.message = (f"{period['late']} publications later than one packet period "
                          f"(max {period['max_lag_s'] * 1e3:.1f} ms)")
        else:
            st.level = DiagnosticStatus.OK
            st.message = 'publishing in real time' if self.sensor_s > 0 else 'simulating'
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
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    rc = 0
    try:
        node = SimCameraNode()
        node.start()
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and not node.finished.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        rc = 1 if node.failed else 0
    except Exception as exc:  # noqa: BLE001 - a clear message instead of a traceback for bad parameters
        print(f'{NODE_NAME}: {type(exc).__name__}: {exc}', file=sys.stderr, flush=True)
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
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == '__main__':
    raise SystemExit(main())
