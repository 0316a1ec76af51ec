"""``perception_node``: REALM event-camera perception as a ROS 2 lifecycle node.

Subscribes (best effort)
    ``events`` (event_camera_msgs/EventPacket, deep queue), ``camera_info`` (sensor_msgs/CameraInfo of the event
    camera; fallback intrinsics from parameters), and with ``keyframe.source: image`` an RGB ``image`` plus
    ``image/camera_info`` for cross-modal keyframes.
Publishes (``qos.output``, reliable by default)
    ``~/depth`` (32FC1 metres, NaN invalid) + ``~/depth/camera_info``, ``~/depth/color`` (bgr8), ``~/semantic`` (mono8
    class ids) + ``~/semantic/color`` (bgr8), ``~/points`` (PointCloud2 xyz + rgb), ``~/pose``
    (PoseWithCovarianceStamped), ``~/matches`` (bgr8), and ``/diagnostics``.

Threading: the events callback only decodes the packet (stateful decoder, ROS-time mapping) and appends the events to a
bounded buffer; a worker thread takes the newest complete window (older complete windows are dropped and counted),
runs the ROS-free :class:`realm_ros.pipeline.RealmPipeline` (encoder once, every enabled head reuses the tokens) and
publishes. Output stamps are the time of the window's last event (ROS time); frame_id is the event camera's.
When no events arrive, the last valid outputs are republished with a fresh stamp ("memory hold", flagged in the
diagnostics). The node never dies on input: bad packets are counted, reported and skipped.

Run: ``ros2 run realm_ros perception_node --ros-args --params-file config/perception.yaml`` (configures and
activates itself unless ``autostart`` is false), or ``python -m realm_ros.nodes.perception_node --ros-args ...``.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from event_camera_msgs.msg import EventPacket
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, \
    SetParametersResult
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from realm_ros.nodes import conversions as conv
from realm_ros.nodes.qos import QOS_NAMES, events_qos, qos_from_name, sensor_input_qos
from realm_ros.pipeline.windows import window_memory_bytes

# -------------------------------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: default, description, optional choices / range, and whether it may change at run time."""

    name: str
    default: Any
    description: str
    runtime: bool = False
    choices: Tuple[str, ...] = ()
    int_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None


PARAMS: Tuple[ParamSpec, ...] = (
    ParamSpec('autostart', True, 'configure and activate at start-up (false: wait for a lifecycle manager)'),
    ParamSpec('frame_id', '', 'frame_id of the outputs; empty = the frame_id of the event packets', runtime=True),
    # windows
    ParamSpec('window.mode', 'count', 'event window: fixed event count or fixed duration', runtime=True,
              choices=('count', 'time')),
    ParamSpec('window.count', 150_000, 'events per window (window.mode count)', runtime=True,
              int_range=(100, 10_000_000)),
    ParamSpec('window.duration_ms', 33.0, 'window length in ms (window.mode time)', runtime=True,
              float_range=(1.0, 2000.0)),
    ParamSpec('window.min_events', 1000, 'windows with fewer events trigger the memory hold instead of inference',
              runtime=True, int_range=(0, 10_000_000)),
    ParamSpec('buffer.max_events', 2_000_000, 'capacity of the event buffer (bounds memory under any input rate)',
              int_range=(10_000, 200_000_000)),
    # model and input
    ParamSpec('device', 'auto', 'torch device: auto, cpu, cuda, cuda:N (cuda without CUDA falls back to cpu)'),
    ParamSpec('precision', 'auto', 'inference precision (auto: fp16 on CUDA, fp32 on CPU)',
              choices=('auto', 'fp32', 'fp16', 'bf16')),
    ParamSpec('checkpoints.realm', '', 'REALM encoder checkpoint (safetensors + metadata)'),
    ParamSpec('checkpoints.dune', '', 'official DUNE checkpoint (.pth): DINOv2 projector, RGB keyframe encoder'),
    ParamSpec('checkpoints.depth_head', '', 'depth head checkpoint'),
    ParamSpec('checkpoints.seg_head', '', 'segmentation head checkpoint'),
    ParamSpec('checkpoints.projector', '', 'optional DINOv2 projector head checkpoint (default: the DUNE file\'s)'),
    ParamSpec('checkpoints.mast3r', '', 'DUNE-MASt3R decoder checkpoint (.pth): matching and pose'),
    ParamSpec('input.size', 0, 'model input size in pixels (0 = from the REALM checkpoint)', int_range=(0, 2016)),
    ParamSpec('input.mode', 'auto', 'fit the sensor to the model input: crop+resize, pad, 4 corner tiles, or auto',
              runtime=True, choices=('auto', 'crop', 'pad', 'tile')),
    ParamSpec('voxel.normalization', '', "voxel grid normalisation ('' = the checkpoint's)", runtime=True,
              choices=('', 'dsec', 'e2vid', 'none')),
    # heads
    ParamSpec('heads.depth', True, 'publish ~/depth, ~/depth/color, ~/depth/camera_info', runtime=True),
    ParamSpec('heads.semantic', True, 'publish ~/semantic and ~/semantic/color', runtime=True),
    ParamSpec('heads.points', True, 'publish ~/points (needs heads.depth)', runtime=True),
    ParamSpec('heads.pose', True, 'publish ~/pose and ~/matches', runtime=True),
    ParamSpec('depth.color_min_m', 1.0, 'near end of the depth colour map (m)', runtime=True,
              float_range=(0.01, 1000.0)),
    ParamSpec('depth.color_max_m', 81.0, 'far end of the depth colour map (m)', runtime=True,
              float_range=(0.02, 10000.0)),
    ParamSpec('points.stride', 2, 'use every n-th depth pixel in x and y for ~/points', runtime=True,
              int_range=(1, 32)),
    ParamSpec('points.max_depth_m', 80.0, 'drop points farther than this (m)', runtime=True,
              float_range=(0.1, 10000.0)),
    # pose / keyframes
    ParamSpec('keyframe.source', 'events', 'keyframes from earlier event windows or from the RGB image topic',
              choices=('events', 'image')),
    ParamSpec('keyframe.min_inliers', 30, 'fewer PnP inliers make the current view a keyframe', runtime=True,
              int_range=(4, 100_000)),
    ParamSpec('keyframe.max_translation_m', 0.5, 'camera motion (m) since the keyframe that triggers a new one',
              runtime=True, float_range=(0.001, 1000.0)),
    ParamSpec('keyframe.max_rotation_deg', 15.0, 'camera rotation since the keyframe that triggers a new one',
              runtime=True, float_range=(0.1, 180.0)),
    ParamSpec('keyframe.max_failures', 3, 'consecutive rejected pose estimates that trigger a new keyframe',
              runtime=True, int_range=(1, 1000)),
    ParamSpec('keyframe.min_interval_s', 0.0, 'no automatic new keyframe sooner than this', runtime=True,
              float_range=(0.0, 3600.0)),
    ParamSpec('pose.frame', 'keyframe', "~/pose relative to the keyframe, or chained in 'pose.fixed_frame'",
              runtime=True, choices=('keyframe', 'fixed')),
    ParamSpec('pose.fixed_frame', 'odom', 'frame_id of ~/pose when pose.frame is fixed', runtime=True),
    ParamSpec('matches.max_drawn', 200, 'matches drawn on ~/matches', runtime=True, int_range=(0, 100_000)),
    ParamSpec('matches.subsample', 8, 'seed grid pitch (px) of the reciprocal matching (MASt3R: 8)', runtime=True,
              int_range=(1, 64)),
    ParamSpec('pose.reprojection_px', 5.0, 'PnP-RANSAC inlier threshold (model-input pixels)', runtime=True,
              float_range=(0.1, 100.0)),
    ParamSpec('pose.ransac_iterations', 1000, 'PnP-RANSAC iterations', runtime=True, int_range=(10, 100_000)),
    # camera model
    ParamSpec('camera.fx', 0.0, 'fallback focal length x (px) when no camera_info arrives; 0 = from hfov',
              runtime=True, float_range=(0.0, 1e6)),
    ParamSpec('camera.fy', 0.0, 'fallback focal length y (px); 0 = camera.fx', runtime=True,
              float_range=(0.0, 1e6)),
    ParamSpec('camera.cx', -1.0, 'fallback principal point x (px); < 0 = image centre', runtime=True,
              float_range=(-1.0, 1e5)),
    ParamSpec('camera.cy', -1.0, 'fallback principal point y (px); < 0 = image centre', runtime=True,
              float_range=(-1.0, 1e5)),
    ParamSpec('camera.fallback_hfov_deg', 70.0, 'horizontal field of view for fallback intrinsics', runtime=True,
              float_range=(1.0, 179.0)),
    # robustness
    ParamSpec('memory_hold.timeout_s', 0.5, 'republish the last outputs when no new window came for this long',
              runtime=True, float_range=(0.01, 60.0)),
    ParamSpec('time_jump.backward_s', 0.5, 'a packet stamp this much older than the previous one resets the stream '
              '(bag restart, sim time)', runtime=True, float_range=(0.0, 3600.0)),
    ParamSpec('time_jump.forward_s', 30.0, 'a packet stamp this much newer than the previous one resets the stream',
              runtime=True, float_range=(0.1, 1e6)),
    ParamSpec('events.time_mode', 'smoothed', 'event time -> ROS time: smoothed header offset, per-packet header '
              'offset, or raw sensor time', choices=('smoothed', 'header', 'sensor')),
    ParamSpec('events.max_packet_span_s', 1.0, 'packets whose events lie farther than this from the packet stamp '
              'are rejected as corrupt (the decoder restarts)', runtime=True, float_range=(0.001, 3600.0)),
    ParamSpec('max_sensor_size', 8192, 'packets claiming a larger width or height are rejected as malformed',
              int_range=(1, 65535)),
    # QoS and diagnostics
    ParamSpec('qos.output', 'reliable', 'QoS of the outputs', choices=QOS_NAMES),
    ParamSpec('qos.output_depth', 5, 'queue depth of the outputs', int_range=(1, 1000)),
    ParamSpec('qos.events_depth', 1000, 'queue depth of the events subscription (best effort)',
              int_range=(1, 100_000)),
    ParamSpec('diagnostics.period_s', 1.0, 'period of /diagnostics', float_range=(0.05, 60.0)),
)
PARAM_BY_NAME = {p.name: p for p in PARAMS}

_TYPE_OF = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
            float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    d = ParameterDescriptor(name=spec.name, type=_TYPE_OF[type(spec.default)], description=spec.description,
                            read_only=not spec.runtime)
    if spec.choices:
        d.additional_constraints = 'one of: ' + ', '.join(repr(c) for c in spec.choices)
    if spec.int_range is not None:
        d.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=0)]
    if spec.float_range is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.float_range[0]),
                                                     to_value=float(spec.float_range[1]), step=0.0)]
    return d


def resolve_path(value: str) -> str:
    """Expand ``~`` and environment variables; ``package://<pkg>/<rest>`` -> ``<share of pkg>/<rest>`` (for
    realm_ros also the source checkout when the package is not installed)."""
    if not value:
        return value
    if value.startswith('package://'):
        pkg, _, rest = value[len('package://'):].partition('/')
        try:
            from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
            try:
                return os.path.join(get_package_share_directory(pkg), rest)
            except PackageNotFoundError:
                if pkg != 'realm_ros':
                    raise ValueError(f'{value}: package {pkg!r} not found') from None
        except ImportError:
            if pkg != 'realm_ros':
                raise ValueError(f'{value}: ament_index_python is needed to resolve package:// paths') from None
        return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), rest)
    return os.path.expandvars(os.path.expanduser(value))


class BadPacket(ValueError):
    """An event packet the node refuses; ``kind`` names the problem for the diagnostics counters."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Throttle:
    """Allow one log line per ``period_s`` and key (the node must stay quiet under a flood of bad packets)."""

    def __init__(self, period_s: float = 2.0) -> None:
        self._period = period_s
        self._last: Dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self._period:
            self._last[key] = now
            return True
        return False


# -------------------------------------------------------------------------------------------------------------------
# the node

OUTPUT_TOPICS = {
    'depth': ('~/depth', Image), 'depth_info': ('~/depth/camera_info', CameraInfo),
    'depth_color': ('~/depth/color', Image), 'semantic': ('~/semantic', Image),
    'semantic_color': ('~/semantic/color', Image), 'points': ('~/points', PointCloud2),
    'pose': ('~/pose', PoseWithCovarianceStamped), 'matches': ('~/matches', Image),
}


class PerceptionNode(LifecycleNode):
    """REALM perception lifecycle node (see the module docstring for topics and behaviour)."""

    def __init__(self, node_name: str = 'perception_node', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._hot: Dict[str, Any] = {}
        self._refresh_hot_parameters()
        self._throttle = _Throttle()
        self._lock = threading.Lock()
        self._pipeline = None
        self._scheduler = None
        self._decoder = None
        self._outputs: Dict[str, Any] = {}
        self._diag_pub = None
        self._diag_timer = None
        self._keyframe_srv = None
        self._input_subs: List[Any] = []
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._jump_handle = None
        self._retired_decoder_stats: Dict[str, int] = {}
        self._reset_stream_state()
        from realm_ros.pipeline.stats import Counters, LatencyTracker, RateMeter
        self._counters = Counters()
        self._latency = LatencyTracker()
        self._processing = LatencyTracker()
        self._packet_rate = RateMeter()
        self._event_rate = RateMeter()
        self._output_rate = RateMeter(window_s=5.0)
        self._camera_info: Optional[conv.CameraIntrinsics] = None
        self._k_source = 'none yet'
        self._camera_info_problem = ''
        self._image_K: Optional[np.ndarray] = None
        self._last_outputs: Dict[str, Any] = {}
        self._last_output_wall = 0.0
        self._last_output_stamp = 0
        self._hold_active = False
        self._hold_reason = ''
        self._last_error = ''
        self._warnings: List[str] = []

    # ------------------------------------------------------------------------------------------------ parameters
    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _path(self, name: str) -> str:
        """A file parameter with ``~``, ``$VARS`` and ``package://<package>/<path>`` resolved ('' stays '')."""
        return resolve_path(str(self._p(name)))

    def _validate_parameters(self, params: List[rclpy.parameter.Parameter]) -> SetParametersResult:
        for p in params:
            spec = PARAM_BY_NAME.get(p.name)
            if spec is None:
                continue
            if spec.choices and p.value not in spec.choices:
                return SetParametersResult(successful=False,
                                           reason=f'{p.name}: {p.value!r} is not one of {", ".join(spec.choices)}')
            if p.name == 'window.count' and p.value > int(self._p('buffer.max_events')):
                return SetParametersResult(successful=False, reason=f'window.count {p.value} exceeds '
                                           f'buffer.max_events {self._p("buffer.max_events")}')
            if p.name.startswith('heads.') and p.value and self._pipeline is not None:
                head = p.name.split('.', 1)[1]
                missing = self._pipeline.missing_for_head(head)
                if missing:
                    return SetParametersResult(successful=False, reason=f'{p.name} cannot be enabled: {missing}')
        pipeline = self._pipeline
        if pipeline is not None:
            from dataclasses import replace
            from realm_ros.pipeline import PipelineConfigError
            try:
                settings = self._pipeline_runtime_settings({p.name: p.value for p in params})
                pipeline.validate_runtime_changes(replace(pipeline.config, **settings))
            except (PipelineConfigError, ValueError) as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    #: parameters read for every packet: cached (get_parameter costs microseconds per call)
    HOT_PARAMETERS = ('max_sensor_size', 'time_jump.backward_s', 'time_jump.forward_s', 'events.max_packet_span_s')

    def _refresh_hot_parameters(self) -> None:
        self._hot = {name: self.get_parameter(name).value for name in self.HOT_PARAMETERS}

    def _apply_parameters(self, params: List[rclpy.parameter.Parameter]) -> None:
        self._refresh_hot_parameters()
        names = {p.name for p in params}
        if self._scheduler is not None and names & {'window.mode', 'window.count', 'window.duration_ms',
                                                    'window.min_events'}:
            self._scheduler.configure(**self._window_settings())
        if self._pipeline is not None:
            self._pipeline.update(**self._pipeline_runtime_settings())

    def _window_settings(self) -> Dict[str, Any]:
        return dict(mode=self._p('window.mode'), count=int(self._p('window.count')),
                    duration_ns=int(round(float(self._p('window.duration_ms')) * 1e6)),
                    min_events=int(self._p('window.min_events')))

    def _pipeline_runtime_settings(self, pending: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Runtime pipeline settings from the parameters (``pending``: values about to be set take precedence)."""
        pending = pending or {}

        def p(name: str) -> Any:
            return pending[name] if name in pending else self._p(name)
        return dict(heads=tuple(h for h in ('depth', 'semantic', 'points', 'pose') if p(f'heads.{h}')),
                    spatial_mode=p('input.mode'), normalization=p('voxel.normalization'),
                    depth_color_range=(float(p('depth.color_min_m')), float(p('depth.color_max_m'))),
                    points_stride=int(p('points.stride')), points_max_depth=float(p('points.max_depth_m')),
                    keyframe_min_inliers=int(p('keyframe.min_inliers')),
                    keyframe_max_translation=float(p('keyframe.max_translation_m')),
                    keyframe_max_rotation_deg=float(p('keyframe.max_rotation_deg')),
                    keyframe_max_failures=int(p('keyframe.max_failures')),
                    keyframe_min_interval_s=float(p('keyframe.min_interval_s')), pose_frame=p('pose.frame'),
                    max_matches_drawn=int(p('matches.max_drawn')), match_subsample=int(p('matches.subsample')),
                    pnp_reprojection_px=float(p('pose.reprojection_px')),
                    pnp_iterations=int(p('pose.ransac_iterations')))

    # ------------------------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from realm_ros.pipeline import PipelineConfig, RealmPipeline, WindowScheduler
        self._counters.reset()
        self._warnings = []
        settings = self._pipeline_runtime_settings()
        try:
            config = PipelineConfig(
                realm_checkpoint=self._path('checkpoints.realm'), dune_checkpoint=self._path('checkpoints.dune'),
                depth_head_checkpoint=self._path('checkpoints.depth_head'),
                seg_head_checkpoint=self._path('checkpoints.seg_head'),
                projector_checkpoint=self._path('checkpoints.projector'),
                mast3r_checkpoint=self._path('checkpoints.mast3r'),
                device=self._p('device'), precision=self._p('precision'), input_size=int(self._p('input.size')),
                keyframe_source=self._p('keyframe.source'), **settings)
            self._pipeline = RealmPipeline(config, log=self.get_logger().warning)
        except Exception as exc:  # missing / incompatible checkpoint, bad device string, ...
            self.get_logger().error(f'cannot configure: {exc}')
            self._last_error = str(exc)
            self._pipeline = None
            return TransitionCallbackReturn.FAILURE
        self._warnings = list(self._pipeline.warnings)
        self.get_logger().info(f'pipeline ready: {self._pipeline.describe()}')
        self._scheduler = WindowScheduler(capacity_events=int(self._p('buffer.max_events')),
                                          **self._window_settings())
        qos = qos_from_name(self._p('qos.output'), int(self._p('qos.output_depth')))
        self._outputs = {key: self.create_lifecycle_publisher(msg_type, topic, qos)
                            for key, (topic, msg_type) in OUTPUT_TOPICS.items()}
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._keyframe_srv = self.create_service(Trigger, '~/new_keyframe', self._on_new_keyframe)
        self._diag_timer = self.create_timer(float(self._p('diagnostics.period_s')), self._publish_diagnostics)
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-0.001), on_clock_change=True),
            post_callback=self._on_clock_jump)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._reset_stream_state()
        self._input_subs = [
            self.create_subscription(EventPacket, 'events', self._on_events,
                                     events_qos(int(self._p('qos.events_depth')))),
            self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, sensor_input_qos()),
        ]
        if self._p('keyframe.source') == 'image':
            self._input_subs += [
                self.create_subscription(Image, 'image', self._on_image, sensor_input_qos(2)),
                self.create_subscription(CameraInfo, 'image/camera_info', self._on_image_info, sensor_input_qos()),
            ]
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name='realm_worker', daemon=True)
        self._worker.start()
        self.get_logger().info('active: waiting for event packets on '
                               f'{self.resolve_topic_name("events")}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        self._input_subs = []
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    def _release(self) -> None:
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        self._input_subs = []
        for pub in self._outputs.values():
            self.destroy_lifecycle_publisher(pub)
        self._outputs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        if self._keyframe_srv is not None:
            self.destroy_service(self._keyframe_srv)
            self._keyframe_srv = None
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        self._scheduler = None
        self._last_outputs = {}

    # ------------------------------------------------------------------------------------------------ inputs
    def _reset_stream_state(self) -> None:
        """Forget everything about the current event stream (start, bag restart, time jump, sensor change)."""
        self._stream_key: Optional[Tuple[str, int, int]] = None
        self._stream_frame_id = ''
        self._last_packet_stamp: Optional[int] = None
        if getattr(self, '_decoder', None) is not None:
            self._retire_decoder_stats(self._decoder)
        self._decoder = None
        if self._scheduler is not None:
            self._scheduler.reset()
        if self._pipeline is not None:
            self._pipeline.reset()

    def _retire_decoder_stats(self, decoder: Any) -> None:
        """Keep the counters of a decoder that is being replaced (diagnostics report lifetime totals)."""
        totals = self._retired_decoder_stats
        for k, v in self._flat_decoder_stats(decoder).items():
            totals[k] = totals.get(k, 0) + v

    @staticmethod
    def _flat_decoder_stats(decoder: Any) -> Dict[str, int]:
        stats = decoder.stats
        flat = {k: int(v) for k, v in stats.items() if isinstance(v, (int, np.integer)) and k != 'offset_ns'}
        for k, v in (stats.get('decoder_errors') or {}).items():
            flat[f'codec_errors.{k}'] = int(v)
        return flat

    def decoder_stats(self) -> Dict[str, int]:
        """Lifetime counters of the event decoders (packets, dropped_packets, seq_gaps, codec errors, ...)."""
        totals = dict(self._retired_decoder_stats)
        decoder = self._decoder
        if decoder is not None:
            for k, v in self._flat_decoder_stats(decoder).items():
                totals[k] = totals.get(k, 0) + v
        return totals

    def _on_clock_jump(self, jump: Any) -> None:
        if jump.clock_change != 0 or jump.delta.nanoseconds < 0:
            self._counters.add('clock_jumps')
            self.get_logger().warning(f'ROS clock jumped ({jump.delta.nanoseconds / 1e9:+.3f} s): resetting the stream')
            with self._lock:
                self._reset_stream_state()

    def _on_events(self, msg: Any) -> None:
        """Decode and buffer one packet. Never raises: every problem is counted and logged (throttled)."""
        recv = time.monotonic_ns()
        self._counters.add('packets')
        self._packet_rate.add(1.0)
        try:
            events = self._decode_packet(msg)
        except Exception as exc:  # noqa: BLE001 - the node must survive any input
            kind = exc.kind if isinstance(exc, BadPacket) else type(exc).__name__
            self._counters.add('bad_packets')
            self._counters.add(f'bad_packets.{kind}')
            if self._throttle(f'bad:{kind}'):
                self.get_logger().warning(f'dropped event packet seq={getattr(msg, "seq", "?")} '
                                          f'encoding={getattr(msg, "encoding", "?")!r}: {exc}')
            return
        if events is None:
            return
        self._event_rate.add(float(len(events)))
        self._counters.add('events', len(events))
        stamp = conv.stamp_to_ns(msg.header.stamp)
        self._scheduler.push(events, latest_time_ns=stamp, recv_monotonic_ns=recv)
        self._wake.set()

    def _decode_packet(self, msg: Any) -> Optional[Any]:
        """Validate the packet, handle time jumps and stream changes, return its events in ROS time (or None).

        Decoding, seq-gap counting, encoding / resolution changes and the sensor -> ROS time mapping are done by
        :class:`realm_ros.events.packet.EventPacketDecoder`; this adds the checks that protect the node: a sensor
        size above ``max_sensor_size`` (a voxel grid of that size would exhaust memory) and stamp jumps (bag
        restart, sim time) that would otherwise clamp every later event to the last time seen.
        """
        from realm_ros.events.packet import EventPacketDecoder
        width, height = int(msg.width), int(msg.height)
        max_size = int(self._hot['max_sensor_size'])
        if width > max_size or height > max_size:
            raise BadPacket('too_large', f'sensor size {width}x{height} exceeds max_sensor_size {max_size}')
        stamp = conv.stamp_to_ns(msg.header.stamp)
        with self._lock:
            if self._last_packet_stamp is not None:
                dt = stamp - self._last_packet_stamp
                if dt < -float(self._hot['time_jump.backward_s']) * 1e9 or \
                        dt > float(self._hot['time_jump.forward_s']) * 1e9:
                    self._counters.add('time_jumps')
                    self.get_logger().warning(f'event packet stamps jumped by {dt / 1e9:+.3f} s (bag restart or '
                                              'clock change): resetting the stream')
                    self._reset_stream_state()
            if self._decoder is None:
                self._decoder = EventPacketDecoder(time_mode=self._p('events.time_mode'))
            decoder = self._decoder
        result = decoder.decode_msg_full(msg)
        events = result.events
        if len(events) and decoder.time_mode != 'sensor':
            # Corrupt payloads (e.g. random bytes in an evt3 packet) can carry time words far from the packet
            # stamp; the codec would then clamp every later event to that time. Reject such a packet and restart
            # decoding so the stream recovers at the next time word.
            limit = float(self._hot['events.max_packet_span_s']) * 1e9
            lo, hi = int(events.t[0]) - stamp, int(events.t[-1]) - stamp
            if hi > limit or lo < -limit:
                self._counters.add('implausible_packets')
                with self._lock:
                    if self._decoder is decoder:
                        self._retire_decoder_stats(decoder)
                        self._decoder = None
                raise BadPacket('implausible_times', f'event times {lo / 1e9:+.3f} .. {hi / 1e9:+.3f} s from the '
                                f'packet stamp (limit {limit / 1e9:g} s): corrupt payload, decoder restarted')
        if result.errors.get('rejected') or result.errors.get('decode_exceptions'):
            reason = decoder.last_error or 'rejected by the decoder'
            kind = ('decode_exception' if result.errors.get('decode_exceptions') else
                    'unknown_encoding' if 'encoding' in reason else 'invalid_size' if 'size' in reason else 'rejected')
            raise BadPacket(kind, reason)
        if result.errors and self._throttle('decode_errors'):
            self.get_logger().warning(f'decode errors in packet seq={getattr(msg, "seq", "?")}: {result.errors}')
        key = (decoder.encoding, decoder.width, decoder.height)
        with self._lock:
            if self._decoder is not decoder:          # reset by a concurrent clock jump: drop this packet
                return None
            if self._stream_key is not None and key != self._stream_key:
                what = 'encoding' if key[0] != self._stream_key[0] else 'resolution'
                self.get_logger().warning(f'event stream changed {what}: {self._stream_key} -> {key}; '
                                          'restarting windows and keyframes')
                if self._scheduler is not None:
                    self._scheduler.reset()
                if self._pipeline is not None:
                    self._pipeline.reset()
            self._stream_key = key
            self._stream_frame_id = decoder.frame_id
            self._last_packet_stamp = stamp if self._last_packet_stamp is None else max(stamp,
                                                                                      self._last_packet_stamp)
        return events

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
            self._camera_info = conv.intrinsics_from_camera_info(msg)
            self._camera_info_problem = ''
        except ValueError as exc:
            self._counters.add('bad_camera_info')
            self._camera_info_problem = str(exc)
            if self._throttle('camera_info'):
                self.get_logger().warning(f'ignoring camera_info: {exc}; using fallback intrinsics')

    def _on_image_info(self, msg: CameraInfo) -> None:
        try:
            self._image_K = conv.intrinsics_from_camera_info(msg).K
        except ValueError as exc:
            self._counters.add('bad_image_camera_info')
            if self._throttle('image_info'):
                self.get_logger().warning(f'ignoring image camera_info: {exc}')

    def _on_image(self, msg: Image) -> None:
        try:
            img = conv.image_to_array(msg)
            if msg.encoding in ('bgr8', 'bgra8'):
                img = img[..., 2::-1]
            elif msg.encoding in ('rgba8',):
                img = img[..., :3]
            elif img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            if img.dtype != np.uint8:
                raise ValueError(f'RGB keyframe images must be 8-bit, got {msg.encoding!r}')
            if self._image_K is None:
                raise ValueError('no camera_info received for the image topic yet')
            if self._pipeline is not None:
                self._pipeline.offer_image_keyframe(np.ascontiguousarray(img), self._image_K,
                                                    conv.stamp_to_ns(msg.header.stamp))
        except Exception as exc:  # noqa: BLE001
            self._counters.add('bad_images')
            if self._throttle('image'):
                self.get_logger().warning(f'ignoring keyframe image: {exc}')

    # ------------------------------------------------------------------------------------------------ worker
    def _intrinsics(self, width: int, height: int) -> Tuple[np.ndarray, str]:
        """Event-camera K for the current sensor size: from camera_info, else from the fallback parameters."""
        info = self._camera_info
        if info is not None and (info.width, info.height) == (width, height):
            self._camera_info_problem = ''
            return info.K, 'camera_info'
        if info is not None:
            self._camera_info_problem = (f'camera_info size {info.width}x{info.height} differs from the events '
                                         f'{width}x{height}')
        fx = float(self._p('camera.fx'))
        if fx <= 0:
            fx = 0.5 * width / np.tan(np.radians(float(self._p('camera.fallback_hfov_deg'))) / 2)
        fy = float(self._p('camera.fy')) or fx
        cx = float(self._p('camera.cx'))
        cy = float(self._p('camera.cy'))
        cx = (width - 1) / 2 if cx < 0 else cx
        cy = (height - 1) / 2 if cy < 0 else cy
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), 'fallback'

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                window = self._scheduler.next_window() if self._scheduler is not None else None
                if window is None:
                    self._maybe_hold()
                    continue
                if window.skipped:
                    self._counters.add('windows_dropped', window.skipped)
                if window.empty:
                    self._counters.add('empty_windows')
                    self._memory_hold(window.t_end_ns, 'window without enough events')
                    continue
                self._process(window)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive whatever happens
                if not self.context.ok():     # Ctrl-C / shutdown while publishing: not a processing error
                    break
                self._counters.add('processing_errors')
                self._last_error = f'{type(exc).__name__}: {exc}'
                if self._throttle('worker'):
                    self.get_logger().error(f'window processing failed: {self._last_error}\n'
                                            f'{traceback.format_exc(limit=4)}')

    def _process(self, window: Any) -> None:
        from realm_ros.pipeline import WindowSkipped
        with self._lock:
            key, frame = self._stream_key, self._stream_frame_id
        if key is None:
            return
        _, width, height = key
        K, k_source = self._intrinsics(width, height)
        self._k_source = k_source
        t0 = time.monotonic()
        try:
            out = self._pipeline.process(window.events, height=height, width=width, K=K, stamp_ns=window.t_end_ns)
        except WindowSkipped as exc:
            self._counters.add(f'windows_skipped.{exc.reason}')
            self._last_error = str(exc)
            if self._throttle(f'skip:{exc.reason}'):
                self.get_logger().warning(f'window skipped: {exc}')
            return
        self._processing.add(time.monotonic() - t0)
        frame_id = self._p('frame_id') or frame
        self._publish(out, frame_id)
        done = time.monotonic_ns()
        self._latency.add((done - window.recv_monotonic_ns) / 1e9)
        self._counters.add('windows_processed')
        self._output_rate.add(1.0)
        self._hold_active = False

    def _publish(self, out: Any, frame_id: str) -> None:
        header = conv.make_header(out.stamp_ns, frame_id)
        msgs: Dict[str, Any] = {}
        if out.depth is not None:
            msgs['depth'] = conv.image_from_array(out.depth, '32FC1', header)
            # the depth image has the raw sensor geometry: same K and distortion as the event camera_info
            info = self._camera_info if self._k_source == 'camera_info' else None
            msgs['depth_info'] = conv.camera_info_from_intrinsics(
                out.K, out.width, out.height, header, D=info.D if info is not None else (),
                distortion_model=info.distortion_model if info is not None else '')
            msgs['depth_color'] = conv.image_from_array(out.depth_color, 'bgr8', header)
        if out.semantic is not None:
            msgs['semantic'] = conv.image_from_array(out.semantic, 'mono8', header)
            msgs['semantic_color'] = conv.image_from_array(out.semantic_color, 'bgr8', header)
        if out.points_xyz is not None:
            msgs['points'] = conv.pointcloud2_xyzrgb(out.points_xyz, out.points_rgb, header)
        if out.pose is not None:
            pose_frame = (self._p('pose.fixed_frame') if out.pose.reference == 'fixed'
                          else f'{frame_id}_keyframe')
            msgs['pose'] = conv.pose_with_covariance(out.pose.R, out.pose.t, out.pose.covariance,
                                                     conv.make_header(out.stamp_ns, pose_frame))
        if out.matches_image is not None:
            msgs['matches'] = conv.image_from_array(out.matches_image, 'bgr8', header)
        for key, msg in msgs.items():
            self._outputs[key].publish(msg)
        self._last_outputs = msgs
        self._last_output_wall = time.monotonic()
        self._last_output_stamp = out.stamp_ns

    def _maybe_hold(self) -> None:
        if not self._last_outputs:
            return
        idle = time.monotonic() - self._last_output_wall
        if idle < float(self._p('memory_hold.timeout_s')):
            return
        latest = self._scheduler.latest_time_ns if self._scheduler is not None else None
        stamp = self._last_output_stamp + int(idle * 1e9)
        if latest is not None and latest > self._last_output_stamp:
            stamp = max(stamp, latest)
        self._memory_hold(stamp, 'no events')

    def _memory_hold(self, stamp_ns: int, reason: str) -> None:
        """Republish the last valid outputs with a new stamp (flagged in the diagnostics)."""
        if not self._last_outputs:
            return
        for key, msg in self._last_outputs.items():
            msg.header.stamp = conv.ns_to_stamp(stamp_ns)
            self._outputs[key].publish(msg)
        self._counters.add('memory_holds')
        self._hold_active = True
        self._hold_reason = reason
        self._last_output_wall = time.monotonic()
        self._last_output_stamp = stamp_ns

    # ------------------------------------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        try:
            self._diag_pub.publish(conv.diagnostic_array(self._diagnostic_statuses(),
                                                         self.get_clock().now().nanoseconds))
        except Exception as exc:  # noqa: BLE001
            if self._throttle('diagnostics'):
                self.get_logger().error(f'diagnostics failed: {exc}')

    def _diagnostic_statuses(self) -> list:
        c = self._counters.snapshot()
        name = self.get_fully_qualified_name()
        key = self._stream_key
        dec = self.decoder_stats()
        codec_errors = {k: v for k, v in dec.items() if k.startswith('codec_errors.')}
        decode_errors = (sum(codec_errors.values()) + dec.get('unknown_encoding', 0) + dec.get('bad_geometry', 0)
                         + dec.get('decode_exceptions', 0))
        events_values: Dict[str, Any] = {
            'packets': c.get('packets', 0), 'packets_per_s': self._packet_rate.rate(),
            'events': c.get('events', 0), 'events_per_s': self._event_rate.rate(),
            'bad_packets': c.get('bad_packets', 0), 'decode_errors': decode_errors,
            'dropped_packets': dec.get('dropped_packets', 0), 'seq_gaps': dec.get('seq_gaps', 0),
            'seq_resets': dec.get('seq_resets', 0), 'unknown_encoding': dec.get('unknown_encoding', 0),
            'encoding_changes': dec.get('encoding_changes', 0),
            'resolution_changes': dec.get('resolution_changes', 0), 'time_jumps': c.get('time_jumps', 0),
            'clock_jumps': c.get('clock_jumps', 0), 'clamped_events': dec.get('clamped_events', 0),
            'offset_resets': dec.get('offset_resets', 0),
            'buffered_events': self._scheduler.buffered_events if self._scheduler is not None else 0,
            'buffer_overwritten_events': self._scheduler.evicted_events if self._scheduler is not None else 0,
            'buffer_mb': window_memory_bytes(self._scheduler.capacity_events) / 2**20 if self._scheduler else 0.0,
            'encoding': key[0] if key else '', 'width': key[1] if key else 0, 'height': key[2] if key else 0,
            'intrinsics': self._k_source,
            'camera_info': 'ok' if self._camera_info is not None and not self._camera_info_problem else
            (self._camera_info_problem or 'not received: fallback intrinsics'),
        }
        events_values.update(sorted(codec_errors.items()))
        for k, v in sorted(c.items()):
            if k.startswith('bad_packets.'):
                events_values[k] = v
        ev_problems = []
        if c.get('bad_packets', 0) or decode_errors:
            ev_problems.append('bad packets or decode errors')
        if self._camera_info is None or self._camera_info_problem:
            ev_problems.append('no usable camera_info: fallback intrinsics')
        if c.get('packets', 0) == 0:
            ev_problems.append('no event packets received')
        events_status = conv.diagnostic_status(f'{name}: events', 'WARN' if ev_problems else 'OK',
                                               '; '.join(ev_problems) or 'receiving events', events_values,
                                               hardware_id=self._stream_frame_id)
        lat = self._latency.percentiles_ms() or {}
        proc = self._processing.percentiles_ms() or {}
        pipe_values: Dict[str, Any] = {
            'state': 'active' if self._worker is not None else 'inactive',
            'windows_processed': c.get('windows_processed', 0), 'windows_dropped': c.get('windows_dropped', 0),
            'empty_windows': c.get('empty_windows', 0), 'memory_holds': c.get('memory_holds', 0),
            'memory_hold': str(self._hold_active).lower(), 'processing_errors': c.get('processing_errors', 0),
            'output_rate_hz': self._output_rate.rate(),
            'latency_ms_p50': lat.get('p50', float('nan')), 'latency_ms_p95': lat.get('p95', float('nan')),
            'latency_ms_max': lat.get('max', float('nan')), 'processing_ms_p50': proc.get('p50', float('nan')),
            'last_error': self._last_error,
        }
        for k, v in sorted(c.items()):
            if k.startswith('windows_skipped.'):
                pipe_values[k] = v
        if self._pipeline is not None:
            pipe_values.update(self._pipeline.diagnostics())
        problems = list(self._warnings)
        if self._hold_active:
            problems.append(f'memory hold: {self._hold_reason}')
        if any(k.startswith('windows_skipped.') for k in c):
            problems.append('windows skipped (see windows_skipped.*)')
        if self._pipeline is None:
            level, message = 'ERROR', f'not configured: {self._last_error}'
        else:
            level = 'WARN' if problems else 'OK'
            message = '; '.join(problems) or 'running'
        pipe_status = conv.diagnostic_status(f'{name}: pipeline', level, message, pipe_values,
                                             hardware_id=self._stream_frame_id)
        return [events_status, pipe_status]


# -------------------------------------------------------------------------------------------------------------------

def main(args: Optional[List[str]] = None) -> int:
    """Entry point of ``ros2 run realm_ros perception_node``; returns the process exit code."""
    rclpy.init(args=args)
    node = PerceptionNode()
    executor = SingleThreadedExecutor()
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
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_worker()
        node._release()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
