"""``perception_node``: REALM event-camera perception as a ROS 2 lifecycle node (a thin adapter).

Subscribes (best effort)
    ``events`` (event_camera_msgs/EventPacket, deep queue), ``camera_info`` (sensor_msgs/CameraInfo of the event
    camera; fallback intrinsics from parameters), and with ``keyframe.source: image`` an RGB ``image`` plus
    ``image/camera_info`` for cross-modal keyframes.
Publishes (``qos.output``, reliable by default)
    ``~/depth`` (32FC1 metres, NaN invalid) + ``~/depth/camera_info``, ``~/depth/color`` (bgr8), ``~/semantic``
    (mono8 class ids) + ``~/semantic/color`` (bgr8), ``~/points`` (PointCloud2 xyz + rgb), ``~/pose``
    (PoseWithCovarianceStamped), ``~/matches`` (bgr8), ``~/odometry`` and ``~/path`` (nav_msgs), ``/tf``
    (``pose.fixed_frame`` -> camera while tracking) and ``/diagnostics``.

Everything else lives in the ROS-free core: :class:`~realm_ros.pipeline.stream.EventStream` (packet validation,
stream identity, time jumps, windows), :class:`~realm_ros.pipeline.runner.PipelineRunner` (dense and pose workers,
memory hold, per-output rates and latencies), :class:`~realm_ros.pipeline.core.RealmPipeline` (the models) and
:mod:`realm_ros.pipeline.settings` (every parameter, declared once). The events callback only decodes and buffers.

Run: ``ros2 run realm_ros perception_node --ros-args --params-file config/perception.yaml`` (configures and
activates itself unless ``autostart`` is false).
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from event_camera_msgs.msg import EventPacket
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.logging import get_logger
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from realm_ros.events.cdr import event_packet_from_cdr
from realm_ros.nodes import conversions as conv
from realm_ros.nodes.diagnostics import node_statuses
from realm_ros.nodes.intake import EventIntake, make_executor
from realm_ros.nodes.parameters import ParameterError, coerce_integer_overrides, descriptor
from realm_ros.nodes.participant import transport_summary, use_large_shm_segment
from realm_ros.nodes.messages import OutputPublisher, RosLogHandler, rgb8_from_image
from realm_ros.nodes.process_exit import end_process
from realm_ros.nodes.qos import events_qos, qos_from_name, sensor_input_qos
from realm_ros.pipeline import settings
from realm_ros.pipeline.stats import LogThrottle
from realm_ros.pipeline.settings import PERCEPTION_SETTINGS, SETTING_BY_NAME, resolve_path
from realm_ros.pipeline.stream import EventStream, StreamSettings

__all__ = ['PerceptionNode', 'main', 'resolve_path', 'PARAM_BY_NAME']

PARAM_BY_NAME = SETTING_BY_NAME


class PerceptionNode(LifecycleNode):
    """REALM perception lifecycle node (see the module docstring for topics and behaviour)."""

    def __init__(self, node_name: str = 'perception_node', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name in coerce_integer_overrides(getattr(self, '_parameter_overrides', None),
                                             ((s.name, s.type) for s in PERCEPTION_SETTINGS)):
            self.get_logger().info(f'parameter {name}: integer value taken as a double')
        for s in PERCEPTION_SETTINGS:
            try:
                self.declare_parameter(s.name, s.default, descriptor(s))
            except InvalidParameterTypeException as exc:     # e.g. a string given for a number: say which and why
                raise ParameterError(f'parameter {s.name} expects a {s.type.__name__} ({s.description}): '
                                     f'{exc}') from None
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        unknown = settings.unknown_setting_names(getattr(self, '_parameter_overrides', {}))
        if unknown:             # rclpy drops overrides nobody declares: say so instead of running on the defaults
            self.get_logger().warning(f'ignored unknown parameters: {settings.describe_unknown(unknown)}')
        self._log_handler = RosLogHandler(self)
        logging.getLogger('realm_ros').addHandler(self._log_handler)
        logging.getLogger('realm_ros').setLevel(logging.INFO)
        self._pipeline: Any = None
        self._stream: Optional[EventStream] = None
        self._runner: Any = None
        self._outputs: Any = None
        self._ros_objects: List[Tuple[str, Any]] = []
        self._input_subs: List[Any] = []
        self._intake: Optional[EventIntake] = None
        self._camera_info: Optional[conv.CameraIntrinsics] = None
        self._camera_info_problem = ''
        self._k_source = 'none yet'
        self._image_K: Optional[np.ndarray] = None
        self._last_error = ''
        self._throttled = LogThrottle()
        self._jump_handle: Any = None
        self._diag_memory: Dict[str, Any] = {}
        # a bound method: rclpy (Kilted) calls what it stored for a plain function and then calls the result, so a
        # lambda made every shutdown end in "TypeError: 'bool' object is not callable" (and skipped end_process)
        self.context.on_shutdown(self._on_context_shutdown)

    def destroy_node(self) -> None:
        """Destroy the node, including rclpy's lifecycle state machine.

        rclpy's LifecycleNode (Kilted) never destroys its state machine, which keeps the node's handle and with it the
        context alive: the DDS participant was then never finalised and Fast DDS left its shared-memory segment in
        /dev/shm at every exit (measured: one segment per run of the node; none with this)."""
        state_machine = getattr(self, '_state_machine', None)
        destroy = getattr(state_machine, 'destroy_when_not_in_use', None)
        if destroy is not None:
            destroy()           # freed once the lifecycle services below are destroyed
        super().destroy_node()

    def _on_context_shutdown(self) -> None:
        """ROS is shutting down (Ctrl-C, launch): tell the workers to stop at their next check."""
        if self._runner is not None:
            self._runner.signal_stop()

    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    # ------------------------------------------------------------------------------------------------ parameters
    def _validate_parameters(self, params: List[Any]) -> SetParametersResult:
        problem = settings.check_changes({p.name: p.value for p in params}, self._p, self._pipeline)
        return SetParametersResult(successful=problem is None, reason=problem or '')

    def _apply_parameters(self, params: List[Any]) -> None:
        names = {p.name for p in params}
        if self._stream is not None:
            window = settings.window_settings(self._p) if names & set(settings.WINDOW_SETTINGS) else {}
            self._stream.configure(StreamSettings(**settings.stream_settings(self._p)), **window)
        if self._pipeline is not None:
            self._pipeline.update(**settings.pipeline_runtime_settings(self._p))
        if self._runner is not None:
            self._runner.memory_hold_timeout_s = float(self._p('memory_hold.timeout_s'))
            self._runner.pose_max_rate_hz = float(self._p('pose.max_rate_hz'))
            self._runner.dense_max_rate_hz = float(self._p('dense.max_rate_hz'))
            self._runner.pose_wait_fresh = bool(self._p('pose.wait_for_fresh_tokens'))

    # ------------------------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        import torch

        from realm_ros.pipeline import PipelineConfig, RealmPipeline
        from realm_ros.pipeline.runner import PipelineRunner, prepare_workers
        path = lambda name: resolve_path(str(self._p(name)))                  # noqa: E731
        try:
            config = PipelineConfig(
                realm_checkpoint=path('checkpoints.realm'), dune_checkpoint=path('checkpoints.dune'),
                depth_head_checkpoint=path('checkpoints.depth_head'), seg_head_checkpoint=path('checkpoints.seg_head'),
                projector_checkpoint=path('checkpoints.projector'), mast3r_checkpoint=path('checkpoints.mast3r'),
                device=self._p('device'), precision=self._p('precision'), input_size=int(self._p('input.size')),
                keyframe_source=self._p('keyframe.source'), pose_decoder_runtime=self._p('pose.decoder_runtime'),
                **settings.pipeline_runtime_settings(self._p))
            self._pipeline = RealmPipeline(config, log=self.get_logger().warning)
        except Exception as exc:  # noqa: BLE001 - missing / incompatible checkpoint, bad device string, ...
            self.get_logger().error(f'cannot configure: {exc}')
            self._last_error, self._pipeline = str(exc), None
            return TransitionCallbackReturn.FAILURE
        t0 = time.monotonic()
        decoupled = bool(self._p('pose.decoupled'))
        threads = prepare_workers(self._pipeline, int(self._p('inference.threads')), decoupled)
        self.get_logger().info(f'event kernels ready in {time.monotonic() - t0:.1f} s')
        if 'pose' in self._pipeline.active_heads:
            try:                            # the compiled decoder (OpenVINO) for this input size: no first-step wait
                seconds = self._pipeline.warm_up_pose()
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot compile: fail the transition, say why
                self.get_logger().error(f'cannot configure: {exc}')
                self._last_error, self._pipeline = str(exc), None
                return TransitionCallbackReturn.FAILURE
            if seconds:
                self.get_logger().info(f'pose decoder compiled ({self._pipeline.pose_decoder_runtime}) in '
                                       f'{seconds:.1f} s')
        self.get_logger().info(f'pipeline ready: {self._pipeline.describe()}, {torch.get_num_threads()} torch '
                               f'threads{f" ({threads} OpenCV)" if threads else ""}, pose '
                               f'{"in its own worker" if decoupled else "after the dense heads"}')
        self._stream = EventStream(StreamSettings(**settings.stream_settings(self._p)),
                                   capacity_events=int(self._p('buffer.max_events')),
                                   **{f'window_{k}': v for k, v in settings.window_settings(self._p).items()})
        qos = qos_from_name(self._p('qos.output'), int(self._p('qos.output_depth')))
        self._outputs = OutputPublisher(self, qos, self._p, lambda: self._camera_info)
        stream = self._stream
        self._runner = PipelineRunner(self._pipeline, self._stream, self._outputs, self._intrinsics,
                                      frame_id=lambda: self._p('frame_id') or stream.frame_id,
                                      decoupled=decoupled, nice=int(self._p('inference.nice')),
                                      pose_nice=int(self._p('inference.pose_nice')),
                                      pose_max_rate_hz=float(self._p('pose.max_rate_hz')),
                                      dense_max_rate_hz=float(self._p('dense.max_rate_hz')),
                                      pose_wait_fresh=bool(self._p('pose.wait_for_fresh_tokens')),
                                      memory_hold_timeout_s=float(self._p('memory_hold.timeout_s')))
        self._ros_objects = [
            ('publisher', self.create_publisher(DiagnosticArray, '/diagnostics', 10)),
            ('service', self.create_service(Trigger, '~/new_keyframe', self._on_new_keyframe)),
            ('timer', self.create_timer(float(self._p('diagnostics.period_s')), self._publish_diagnostics))]
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-0.001), on_clock_change=True),
            post_callback=self._on_clock_jump)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._stream is not None and self._outputs is not None, 'activated before configure'
        self._stream.reset('activated', count=False)
        self._outputs.clear_trajectory()
        self._intake = EventIntake(self.context, f'{self.get_name()}_events', self.resolve_topic_name('events'),
                                   EventPacket, events_qos(int(self._p('qos.events_depth'))), self._on_events,
                                   raw_decoder=event_packet_from_cdr, on_error=self._on_unreadable_packet,
                                   gather_s=float(self._p('events.gather_ms')) / 1000.0,
                                   batch_callback=self._on_event_batch)
        self._input_subs = [
            self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, sensor_input_qos())]
        if self._p('keyframe.source') == 'image':
            self._input_subs += [
                self.create_subscription(Image, 'image', self._on_image, sensor_input_qos(2)),
                self.create_subscription(CameraInfo, 'image/camera_info', self._on_image_info, sensor_input_qos())]
        self._runner.start()
        self.get_logger().info(f'active: waiting for event packets on {self.resolve_topic_name("events")}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    on_shutdown = on_error = on_cleanup

    def _stop_inputs(self, timeout: float = 1.0) -> bool:
        """Stop the workers (waiting at most ``timeout``) and the subscriptions; True if a worker still runs."""
        lingering = self._runner is not None and not self._runner.stop(timeout=timeout)
        if lingering:
            self.get_logger().info('an inference was still running at stop: its outputs are discarded')
        if self._intake is not None:
            self._intake.close()
            self._intake = None
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        self._input_subs = []
        return lingering

    def release(self, timeout: float = 1.0) -> bool:
        """Stop the workers and free every ROS object and the models (cleanup, shutdown, exit); True if a worker
        was still inside an inference (its models are then left to it and freed when it ends)."""
        lingering = self._stop_inputs(timeout)
        for kind, obj in self._ros_objects:
            getattr(self, f'destroy_{kind}')(obj)
        self._ros_objects = []
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        if self._outputs is not None:
            self._outputs.destroy()
        if self._pipeline is not None and not lingering:
            self._pipeline.close()
        self._pipeline = self._stream = self._runner = self._outputs = None
        return lingering

    # ------------------------------------------------------------------------------------------------ inputs
    def _on_events(self, msg: Any) -> None:
        """One packet (the intake's executor fallback): as a batch of one."""
        self._on_event_batch([msg])

    def _on_event_batch(self, msgs: List[Any]) -> None:
        """Decode and buffer the packets the intake took at one wake-up, the events handed to the windows at once.
        Never raises: every problem is counted and logged (throttled)."""
        stream = self._stream
        if stream is None:
            return
        try:
            events, refused = stream.push_batch(msgs)
        except Exception as failure:  # noqa: BLE001 - a failure of the stream itself: the intake must go on
            if self._throttled('intake'):
                self.get_logger().error(f'event packets lost in the stream: {type(failure).__name__}: {failure}')
            return
        if events:
            self._runner.wake()
        for msg, bad in refused:
            if self._throttled(f'bad:{bad.kind}'):
                self.get_logger().warning(f'dropped event packet seq={getattr(msg, "seq", "?")} '
                                          f'encoding={getattr(msg, "encoding", "?")!r}: {bad}')

    def _on_unreadable_packet(self, exc: Exception) -> None:
        """A serialized event packet nothing could convert: counted (``bad_packets.unreadable``) and logged."""
        if self._stream is not None:
            self._stream.count_unreadable()
        if self._throttled('bad:unreadable'):
            self.get_logger().warning(f'dropped an unreadable event packet: {type(exc).__name__}: {exc}')

    def _on_clock_jump(self, jump: Any) -> None:
        if (jump.clock_change != 0 or jump.delta.nanoseconds < 0) and self._stream is not None:
            self._stream.counters.add('clock_jumps')
            self.get_logger().warning(f'ROS clock jumped ({jump.delta.nanoseconds / 1e9:+.3f} s): resetting stream')
            self._stream.reset('ROS clock jumped')

    def _on_new_keyframe(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """``~/new_keyframe`` (std_srvs/Trigger): the next window (or RGB image) becomes a keyframe."""
        if self._pipeline is None:
            response.success, response.message = False, 'not configured'
        else:
            self._pipeline.request_keyframe()
            response.success, response.message = True, 'the next window becomes a keyframe'
        return response

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._camera_info, self._camera_info_problem = conv.intrinsics_from_camera_info(msg), ''
        except ValueError as exc:
            if self._stream is not None:
                self._stream.counters.add('bad_camera_info')
            self._camera_info_problem = str(exc)
            if self._throttled('camera_info'):
                self.get_logger().warning(f'ignoring camera_info: {exc}; using fallback intrinsics')

    def _on_image_info(self, msg: CameraInfo) -> None:
        try:
            self._image_K = conv.intrinsics_from_camera_info(msg).K
        except ValueError as exc:
            if self._throttled('image_info'):
                self.get_logger().warning(f'ignoring image camera_info: {exc}')

    def _on_image(self, msg: Image) -> None:
        try:
            if self._image_K is None:
                raise ValueError('no camera_info received for the image topic yet')
            if self._pipeline is not None:
                self._pipeline.offer_image_keyframe(rgb8_from_image(msg), self._image_K,
                                                    conv.stamp_to_ns(msg.header.stamp))
        except Exception as exc:  # noqa: BLE001
            if self._stream is not None:
                self._stream.counters.add('bad_images')
            if self._throttled('image'):
                self.get_logger().warning(f'ignoring keyframe image: {exc}')

    def _intrinsics(self, width: int, height: int) -> Tuple[np.ndarray, str]:
        """Event-camera K for the current sensor size: from camera_info, else from the fallback parameters."""
        info = self._camera_info
        use_info = info is not None and (info.width, info.height) == (width, height)
        self._camera_info_problem = '' if use_info or info is None else (
            f'camera_info size {info.width}x{info.height} differs from the events {width}x{height}')
        if self._outputs is not None:
            self._outputs.uses_camera_info = use_info
        if use_info and info is not None:
            self._k_source = 'camera_info'
            return info.K, 'camera_info'
        self._k_source = 'fallback'
        return settings.fallback_intrinsics(self._p, width, height), 'fallback'

    # ------------------------------------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            pub = self._ros_objects[0][1] if self._ros_objects else None
            if pub is not None:
                pub.publish(conv.diagnostic_array(self._diagnostic_statuses(), self.get_clock().now().nanoseconds))
        except Exception as exc:  # noqa: BLE001
            if self._throttled('diagnostics'):
                self.get_logger().error(f'diagnostics failed: {exc}')

    def _diagnostic_statuses(self) -> list:
        publishers = None
        intake = self._intake
        if intake is not None:
            try:
                publishers = intake.subscription.get_publisher_count()
            except Exception:  # noqa: BLE001 - the subscription is being destroyed (deactivation): no count
                pass
        return node_statuses(self.get_fully_qualified_name(), self._stream, self._runner, self._pipeline,
                             k_source=self._k_source, camera_info=self._camera_info,
                             camera_info_problem=self._camera_info_problem, last_error=self._last_error,
                             memory=self._diag_memory, events_publishers=publishers,
                             intake=intake.stats() if intake is not None else None)



def main(args: Optional[List[str]] = None) -> int:
    """Entry point of ``ros2 run realm_ros perception_node``: runs the node and ends the process with its exit code
    (1 when configuration fails)."""
    # rclpy's SIGINT / SIGTERM handlers shut the context down (spin then returns) and chain to this Python handler:
    # while spinning it does nothing (no KeyboardInterrupt inside an rclpy callback or task); before that (model
    # loading and kernel warm-up can take 20 s on a first start) it ends the process at once.
    spinning = [False]

    def on_signal(signum: int, frame: Any) -> None:
        if not spinning[0]:
            end_process(0)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # a 16 MB Fast DDS shared-memory segment: one window's outputs (~0.6 MB at 224 x 224, several MB at 640 x 480)
    # overflow the default 512 KB, and a reliable subscriber (RViz) then waits for retransmissions
    shm_profile = use_large_shm_segment()
    rclpy.init(args=args)
    sys.setswitchinterval(0.0005)    # the events callback gets the GIL within 0.5 ms of asking, whatever workers do
    try:
        node = PerceptionNode()
    except ParameterError as exc:
        get_logger('perception_node').fatal(f'{exc}; exiting')
        rclpy.try_shutdown()
        return 1
    node.get_logger().info(transport_summary(shm_profile))
    executor = make_executor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('configuration failed (see above); exiting')
                code = 1
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('activation failed; exiting')
                code = 1
        if code == 0:
            spinning[0] = True
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C (process group) must not interrupt exit
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.release(timeout=0.5)
        executor.shutdown(timeout_sec=0.5)
        node.destroy_node()
        rclpy.try_shutdown()
    end_process(code)           # interpreter teardown would take seconds (see process_exit)

if __name__ == '__main__':
    sys.exit(main())
