"""One declaration of every perception-node setting (ROS-free).

Each :class:`Setting` names a parameter, its type (the type of ``default``), its default, its allowed values or range,
whether it may change while the node runs, and what it does. The perception node declares its ROS parameters from
this table (descriptors included), ``config/perception.yaml`` and the launch file's argument defaults are checked
against it by ``test/unit/test_pipeline_settings.py``, and :func:`validate` gives the same answer with or without ROS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: QoS profile names accepted for outputs (realm_ros.nodes.qos.qos_from_name).
QOS_NAMES = ('reliable', 'best_effort', 'sensor_data', 'system_default')


@dataclass(frozen=True)
class Setting:
    """One parameter: default (its type is the parameter type), description, choices / range, runtime-changeable."""

    name: str
    default: Any
    description: str
    runtime: bool = False
    choices: Tuple[str, ...] = ()
    int_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None

    @property
    def type(self) -> type:
        return type(self.default)

    def check(self, value: Any) -> Optional[str]:
        """Why ``value`` is not acceptable for this setting (None when it is)."""
        t = self.type
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not t:
            return f'{self.name}: expected {t.__name__}, got {type(value).__name__} {value!r}'
        if self.choices and value not in self.choices:
            return f'{self.name}: {value!r} is not one of {", ".join(repr(c) for c in self.choices)}'
        rng: Optional[Tuple[float, float]] = (self.int_range if t is int else
                                              self.float_range if t is float else None)
        number: Any = value                 # (mypy narrows ``value`` to object after the type check)
        if rng is not None and not rng[0] <= number <= rng[1]:
            return f'{self.name}: {value!r} is outside [{rng[0]}, {rng[1]}]'
        return None


PERCEPTION_SETTINGS: Tuple[Setting, ...] = (
    Setting('autostart', True, 'configure and activate at start-up (false: wait for a lifecycle manager)'),
    Setting('frame_id', '', 'frame_id of the outputs; empty = the frame_id of the event packets', runtime=True),
    # windows
    Setting('window.mode', 'count', 'event window: fixed event count or fixed duration', runtime=True,
              choices=('count', 'time')),
    Setting('window.count', 150_000, 'events per window (window.mode count)', runtime=True,
              int_range=(100, 10_000_000)),
    Setting('window.duration_ms', 33.0, 'window length in ms (window.mode time)', runtime=True,
              float_range=(1.0, 2000.0)),
    Setting('window.min_events', 1000, 'windows with fewer events trigger the memory hold instead of inference',
              runtime=True, int_range=(0, 10_000_000)),
    Setting('buffer.max_events', 2_000_000, 'capacity of the event buffer (bounds memory under any input rate)',
              int_range=(10_000, 200_000_000)),
    # model and input
    Setting('device', 'auto', 'torch device: auto, cpu, cuda, cuda:N (cuda without CUDA falls back to cpu)'),
    Setting('precision', 'auto', 'inference precision of the encoders and dense heads (auto: bf16 or fp16 on CUDA; '
            'on the CPU bf16 where it has bfloat16 arithmetic (AVX512-BF16, AMX), else fp32; fp32: the exact '
            'reference; bf16-embedder: the voxel embedder in bf16, the rest fp32)',
            choices=('auto', 'fp32', 'fp16', 'bf16', 'bf16-embedder')),
    Setting('checkpoints.realm', '', 'REALM encoder checkpoint (safetensors + metadata)'),
    Setting('checkpoints.dune', '', 'official DUNE checkpoint (.pth): DINOv2 projector, RGB keyframe encoder'),
    Setting('checkpoints.depth_head', '', 'depth head checkpoint'),
    Setting('checkpoints.seg_head', '', 'segmentation head checkpoint'),
    Setting('checkpoints.projector', '', 'optional DINOv2 projector head checkpoint (default: the DUNE file\'s)'),
    Setting('checkpoints.mast3r', '', 'DUNE-MASt3R decoder checkpoint (.pth): matching and pose'),
    Setting('input.size', 0, 'model input size in pixels (0 = from the REALM checkpoint)', int_range=(0, 2016)),
    Setting('input.mode', 'auto', 'fit the sensor to the model input: crop+resize, pad, 4 corner tiles, or auto',
              runtime=True, choices=('auto', 'crop', 'pad', 'tile')),
    Setting('voxel.normalization', '', "voxel grid normalisation ('' = the checkpoint's)", runtime=True,
              choices=('', 'dsec', 'e2vid', 'none')),
    # heads
    Setting('heads.depth', True, 'publish ~/depth, ~/depth/color, ~/depth/camera_info', runtime=True),
    Setting('heads.semantic', True, 'publish ~/semantic and ~/semantic/color', runtime=True),
    Setting('heads.points', True, 'publish ~/points (needs heads.depth)', runtime=True),
    Setting('heads.pose', True, 'publish ~/pose and ~/matches', runtime=True),
    Setting('depth.color_min_m', 1.0, 'near end of the depth colour map (m)', runtime=True,
              float_range=(0.01, 1000.0)),
    Setting('depth.color_max_m', 81.0, 'far end of the depth colour map (m)', runtime=True,
              float_range=(0.02, 10000.0)),
    Setting('points.stride', 2, 'use every n-th depth pixel in x and y for ~/points', runtime=True,
              int_range=(1, 32)),
    Setting('points.max_depth_m', 80.0, 'drop points farther than this (m)', runtime=True,
              float_range=(0.1, 10000.0)),
    # pose / keyframes
    Setting('keyframe.source', 'events', 'keyframes from earlier event windows or from the RGB image topic',
              choices=('events', 'image')),
    Setting('keyframe.min_inliers', 30, 'fewer PnP inliers make the current view a keyframe', runtime=True,
              int_range=(4, 100_000)),
    Setting('keyframe.max_translation_m', 0.5, 'camera motion (m) since the keyframe that triggers a new one',
              runtime=True, float_range=(0.001, 1000.0)),
    Setting('keyframe.max_rotation_deg', 15.0, 'camera rotation since the keyframe that triggers a new one',
              runtime=True, float_range=(0.1, 180.0)),
    Setting('keyframe.max_failures', 3, 'consecutive rejected pose estimates that trigger a new keyframe',
              runtime=True, int_range=(1, 1000)),
    Setting('keyframe.min_interval_s', 0.0, 'no automatic new keyframe sooner than this', runtime=True,
              float_range=(0.0, 3600.0)),
    Setting('keyframe.selection', 'newest', "which keyframe the pose step matches: 'newest' (shortest baseline) or "
              "'similar' (the recent one whose CLS token is most like the current view's)", runtime=True,
              choices=('newest', 'similar')),
    Setting('keyframe.max_bridged', 5, "pose.frame fixed: a rejected step's view becomes a keyframe with the pose "
              'the constant-velocity motion model predicts, at most this many times in a row (0: never)',
              runtime=True, int_range=(0, 100)),
    Setting('pose.motion_check', False, 'reject an estimate whose translation points more than 90 deg away from the '
              "motion model's prediction or is shorter than a third of it (prediction >= 0.3 m; two in a row drop the "
              'model)', runtime=True),
    Setting('pose.similar_window_fallback', True, 'when the newest window fails the appearance gate against the '
              'keyframe, step on the newest window since the last step that passes it (it then becomes the keyframe) '
              'instead of rejecting the step (pose.symmetric)', runtime=True),
    Setting('pose.frame', 'keyframe', "~/pose relative to the keyframe, or chained in 'pose.fixed_frame'",
              runtime=True, choices=('keyframe', 'fixed')),
    Setting('pose.fixed_frame', 'odom', 'frame_id of ~/pose when pose.frame is fixed', runtime=True),
    Setting('matches.max_drawn', 200, 'matches drawn on ~/matches', runtime=True, int_range=(0, 100_000)),
    Setting('matches.subsample', 8, 'seed grid pitch (px) of the reciprocal matching (MASt3R: 8)', runtime=True,
              int_range=(1, 64)),
    Setting('pose.solver', 'auto', "relative-pose solver: 'auto' = what the decoder's pose gates were calibrated "
              "with (its file records it; a file without the record: pnp), 'essential' (rotation and translation "
              "direction from the matched pixels, MAGSAC++ and a Sampson refinement; only the translation length "
              "from the keyframe pointmap), 'pnp' (PnP-RANSAC on the keyframe pointmap, MASt3R's visloc)",
              runtime=True, choices=('auto', 'essential', 'pnp')),
    Setting('pose.length_source', 'auto', "where the essential solver takes the translation length from: 'auto' = "
              "what the decoder's pose gates were calibrated with (a file without the record: point_map), "
              "'depth_head' (the depth head's metric depth of the view, needs checkpoints.depth_head; else the "
              "point map is used), 'point_map' (the decoder's point map)", runtime=True,
              choices=('auto', 'depth_head', 'point_map')),
    Setting('pose.reprojection_px', 5.0, 'PnP-RANSAC inlier threshold (model-input pixels; pose.solver pnp)',
              runtime=True,
              float_range=(0.1, 100.0)),
    Setting('pose.ransac_iterations', 1000, 'RANSAC iterations (PnP or essential matrix)', runtime=True,
              int_range=(10, 100_000)),
    Setting('pose.decoder_runtime', 'auto', "what runs the MASt3R decoder of the symmetric pose step on the CPU: "
            "'openvino' (compiled per input shape at start-up, ~0.7x the CPU time of torch, values within ~1e-6 of "
            "it), 'torch' (eager, the exact reference), 'auto' = openvino where it is installed, the device is the "
            "CPU and the decoder runs in fp32, else torch", choices=('auto', 'openvino', 'torch')),
    Setting('pose.decoder_precision', 'auto', "MASt3R decoder precision of the (symmetric) pose step: 'auto' = what "
              "the decoder's pose gates were calibrated with (its file records it; fp32 where the device has no "
              "bfloat16 arithmetic), except that an fp32-calibrated decoder runs as 'bf16-heads' on a CPU with "
              "bfloat16 arithmetic (same published poses on the held-out scenes, ~0.75x the decoder's CPU time); "
              "'fp32' (the exact path), 'bf16' (blocks and heads), 'bf16-heads' (fp32 cross-attention blocks, bf16 "
              "DPT and local-feature heads)", runtime=True, choices=('auto', 'fp32', 'bf16', 'bf16-heads')),
    Setting('pose.ransac_kernel', 'auto', "PnP-RANSAC hypotheses (pose.solver pnp): 'auto' = what the pose gates "
              "were calibrated with, "
              "'sqpnp' (EPnP on 5 points, SQPnP on the inliers: MASt3R's visloc), 'ap3p' (4 points, ~3x cheaper)",
              runtime=True, choices=('auto', 'sqpnp', 'ap3p')),
    Setting('pose.symmetric', True, 'decode (keyframe, current) in both orders, average the pose with the inverted '
              'swapped-order pose and publish it only through the calibrated gates (order agreement, inliers)',
              runtime=True),
    # camera model
    Setting('camera.fx', 0.0, 'fallback focal length x (px) when no camera_info arrives; 0 = from hfov',
              runtime=True, float_range=(0.0, 1e6)),
    Setting('camera.fy', 0.0, 'fallback focal length y (px); 0 = camera.fx', runtime=True,
              float_range=(0.0, 1e6)),
    Setting('camera.cx', -1.0, 'fallback principal point x (px); < 0 = image centre', runtime=True,
              float_range=(-1.0, 1e5)),
    Setting('camera.cy', -1.0, 'fallback principal point y (px); < 0 = image centre', runtime=True,
              float_range=(-1.0, 1e5)),
    Setting('camera.fallback_hfov_deg', 70.0, 'horizontal field of view for fallback intrinsics', runtime=True,
              float_range=(1.0, 179.0)),
    # robustness
    Setting('memory_hold.timeout_s', 0.5, 'republish the last outputs when no new window came for this long',
              runtime=True, float_range=(0.01, 60.0)),
    Setting('time_jump.backward_s', 0.5, 'a packet stamp this much older than the previous one resets the stream '
              '(bag restart, sim time)', runtime=True, float_range=(0.0, 3600.0)),
    Setting('time_jump.forward_s', 30.0, 'a packet stamp this much newer than the previous one resets the stream',
              runtime=True, float_range=(0.1, 1e6)),
    Setting('events.time_mode', 'smoothed', 'event time -> ROS time: smoothed header offset, per-packet header '
              'offset, or raw sensor time', choices=('smoothed', 'header', 'sensor')),
    Setting('events.max_packet_span_s', 0.1, 'packets whose events lie farther than this from the packet stamp '
              'are rejected as corrupt (the decoder restarts)', runtime=True, float_range=(0.001, 3600.0)),
    Setting('max_sensor_size', 8192, 'packets claiming a larger width or height are rejected as malformed',
              int_range=(1, 65535)),
    # QoS and diagnostics
    Setting('qos.output', 'reliable', 'QoS of the outputs', choices=QOS_NAMES),
    Setting('qos.output_depth', 5, 'queue depth of the outputs', int_range=(1, 1000)),
    Setting('qos.events_depth', 1000, 'queue depth of the events subscription (best effort)',
              int_range=(1, 100_000)),
    Setting('events.gather_ms', 8.0, 'after taking the event packets that have arrived, the intake thread waits this '
            'long before it looks again, so that packets are taken several at a time (less CPU per packet; adds at '
            'most this much latency; shorter at byte rates where a batch would pass 64 KB; 0: each packet as it '
            'arrives)', float_range=(0.0, 20.0)),
    Setting('diagnostics.period_s', 1.0, 'period of /diagnostics', float_range=(0.05, 60.0)),
    # real time: workers and their CPU share
    Setting('inference.threads', 0, 'torch and OpenCV threads of each inference worker (0: 1 per worker on CPU, so the '
            'dense and the pose worker each use one core; the defaults of torch and OpenCV on CUDA)',
            int_range=(0, 256)),
    Setting('inference.nice', 10, 'CPU niceness of the inference threads (0-19; > 0 keeps event intake and DDS ahead '
            'of inference on a loaded CPU, so packets are never lost to a busy model)', int_range=(0, 19)),
    Setting('inference.pose_nice', 10, 'CPU niceness of the pose worker (0-19; 10 = inference.nice: both workers '
            'share the cores alike; above it, the dense outputs keep their rate and pose takes what is left)',
            int_range=(0, 19)),
    Setting('pose.max_rate_hz', 0.0, 'upper bound of the pose steps per second (0: as often as the CPU allows; a '
            'cap leaves CPU to the rest of the robot)', runtime=True, float_range=(0.0, 1000.0)),
    Setting('dense.max_rate_hz', 0.0, 'upper bound of the dense outputs (depth, semantic, points) per second (0: every '
            'window the CPU allows; a cap leaves CPU to the pose worker and the rest of the robot; the windows it '
            'skips count as windows_dropped)', runtime=True, float_range=(0.0, 1000.0)),
    Setting('dense.lazy', True, 'compute only the dense outputs someone subscribes to (a head, colour image or '
            'point cloud without subscribers is skipped; a new subscriber gets outputs from the next window); false: '
            'every enabled dense head on every window', runtime=True),
    Setting('pose.wait_for_fresh_tokens', True, 'the pose worker exchanges tokens that waited more than half a window '
            'interval for the next window due within that interval (lower pose latency, a few ms idle)', runtime=True),
    Setting('pose.decoupled', True, 'run matching + pose in their own worker on the newest tokens (dense outputs never '
            'wait for pose); false: pose runs after the dense heads of the same window'),
    # stream identity
    Setting('stream.change_window', 20, 'packets looked at to confirm a change of encoding / resolution: an odd packet '
            'is a bad packet, a sustained change restarts the stream', runtime=True, int_range=(1, 10_000)),
    Setting('stream.change_fraction', 0.8, 'share of the last stream.change_window packets that must carry the new '
            'encoding / resolution before the stream changes', runtime=True, float_range=(0.5, 1.0)),
    Setting('time_jump.confirm_packets', 3, 'consecutive packets that must agree on a jumped time line before the '
            'stream resets (an isolated packet with an odd stamp is dropped)', runtime=True, int_range=(1, 1000)),
    # TF, odometry and trajectory
    Setting('tf.publish', True, 'publish the TF pose.fixed_frame -> tf.child_frame while tracking', runtime=True),
    Setting('tf.child_frame', '', 'child frame of the published TF and odometry; empty = the output frame_id',
            runtime=True),
    Setting('odometry.publish', True, 'publish nav_msgs/Odometry on ~/odometry (pose in pose.fixed_frame)',
            runtime=True),
    Setting('path.publish', True, 'publish the trajectory as nav_msgs/Path on ~/path', runtime=True),
    Setting('path.max_poses', 2000, 'poses kept in ~/path', runtime=True, int_range=(1, 1_000_000)),
)

SETTING_BY_NAME: Dict[str, Setting] = {s.name: s for s in PERCEPTION_SETTINGS}


def unknown_setting_names(names: Iterable[str]) -> Dict[str, List[str]]:
    """The names in ``names`` that are no setting, each with the settings it is close to (a misspelling), sorted.

    ROS 2 ignores a parameter override whose name no node declares; a misspelled ``keyframe.max_translation``
    would silently leave the default in place. ROS-level names (``use_sim_time``, ``qos_overrides.*``,
    ``start_type_description_service``) are not reported."""
    import difflib
    out: Dict[str, List[str]] = {}
    for name in sorted(set(names)):
        if name in SETTING_BY_NAME or name in ROS_PARAMETER_NAMES or name.startswith('qos_overrides.'):
            continue
        out[name] = difflib.get_close_matches(name, list(SETTING_BY_NAME), n=3, cutoff=0.6)
    return out


def describe_unknown(unknown: Mapping[str, Sequence[str]]) -> str:
    """``'a (did you mean b?), c'`` for :func:`unknown_setting_names`' result."""
    return ', '.join(f'{n} (did you mean {" or ".join(c)}?)' if c else n for n, c in unknown.items())


#: parameters every rclpy node may have besides its own
ROS_PARAMETER_NAMES = frozenset({'use_sim_time', 'start_type_description_service'})


def defaults() -> Dict[str, Any]:
    """Every setting's default value by name."""
    return {s.name: s.default for s in PERCEPTION_SETTINGS}


def validate(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Defaults overlaid with ``values``; raises ``ValueError`` naming the first unknown or invalid setting."""
    out = defaults()
    for name, value in values.items():
        setting = SETTING_BY_NAME.get(name)
        if setting is None:
            raise ValueError(f'unknown setting {name!r}')
        problem = setting.check(value)
        if problem:
            raise ValueError(problem)
        out[name] = float(value) if setting.type is float else value
    if out['window.count'] > out['buffer.max_events']:
        raise ValueError(f'window.count {out["window.count"]} exceeds buffer.max_events {out["buffer.max_events"]}')
    return out


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


# -------------------------------------------------------------------------------------------------------------------
# settings -> the configuration objects of the ROS-free core (the node passes its parameter getter)

Getter = Callable[[str], Any]
WINDOW_SETTINGS = ('window.mode', 'window.count', 'window.duration_ms', 'window.min_events')
STREAM_FIELDS = {'max_sensor_size': 'max_sensor_size', 'events.time_mode': 'time_mode',
                 'time_jump.backward_s': 'time_jump_backward_s', 'time_jump.forward_s': 'time_jump_forward_s',
                 'events.max_packet_span_s': 'max_packet_span_s', 'stream.change_window': 'change_window',
                 'stream.change_fraction': 'change_fraction', 'time_jump.confirm_packets': 'confirm_packets'}


def _overlay(get: Getter, pending: Optional[Mapping[str, Any]]) -> Getter:
    pending = pending or {}
    return lambda name: pending[name] if name in pending else get(name)


def stream_settings(get: Getter, pending: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Keyword arguments of :class:`realm_ros.pipeline.stream.StreamSettings`."""
    p = _overlay(get, pending)
    return {field: p(name) for name, field in STREAM_FIELDS.items()}


def window_settings(get: Getter, pending: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Keyword arguments of :meth:`realm_ros.pipeline.windows.WindowScheduler.configure`."""
    p = _overlay(get, pending)
    return dict(mode=p('window.mode'), count=int(p('window.count')),
                duration_ns=int(round(float(p('window.duration_ms')) * 1e6)), min_events=int(p('window.min_events')))


def pipeline_runtime_settings(get: Getter, pending: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The runtime fields of :class:`realm_ros.pipeline.core.PipelineConfig`."""
    p = _overlay(get, pending)
    return dict(heads=tuple(h for h in ('depth', 'semantic', 'points', 'pose') if p(f'heads.{h}')),
                spatial_mode=p('input.mode'), normalization=p('voxel.normalization'),
                depth_color_range=(float(p('depth.color_min_m')), float(p('depth.color_max_m'))),
                points_stride=int(p('points.stride')), points_max_depth=float(p('points.max_depth_m')),
                keyframe_min_inliers=int(p('keyframe.min_inliers')),
                keyframe_max_translation=float(p('keyframe.max_translation_m')),
                keyframe_max_rotation_deg=float(p('keyframe.max_rotation_deg')),
                keyframe_max_failures=int(p('keyframe.max_failures')),
                keyframe_min_interval_s=float(p('keyframe.min_interval_s')),
                keyframe_selection=p('keyframe.selection'), keyframe_max_bridged=int(p('keyframe.max_bridged')),
                pose_motion_check=bool(p('pose.motion_check')),
                pose_similar_window_fallback=bool(p('pose.similar_window_fallback')),
                pose_frame=p('pose.frame'),
                max_matches_drawn=int(p('matches.max_drawn')), match_subsample=int(p('matches.subsample')),
                pnp_reprojection_px=float(p('pose.reprojection_px')), pnp_iterations=int(p('pose.ransac_iterations')),
                pose_symmetric=bool(p('pose.symmetric')), pose_decoder_precision=p('pose.decoder_precision'),
                pose_solver=p('pose.solver'), pose_length_source=p('pose.length_source'),
                pnp_ransac_kernel=p('pose.ransac_kernel'))


def fallback_intrinsics(get: Getter, width: int, height: int) -> Any:
    """3x3 K of a sensor without camera_info: ``camera.fx/fy/cx/cy`` where set, else from the field of view and the
    image centre."""
    import numpy as np
    fx = float(get('camera.fx')) or 0.5 * width / np.tan(np.radians(float(get('camera.fallback_hfov_deg'))) / 2)
    fy = float(get('camera.fy')) or fx
    cx, cy = float(get('camera.cx')), float(get('camera.cy'))
    return np.array([[fx, 0, (width - 1) / 2 if cx < 0 else cx], [0, fy, (height - 1) / 2 if cy < 0 else cy],
                     [0, 0, 1.0]])


def check_changes(pending: Mapping[str, Any], get: Getter, pipeline: Any = None) -> Optional[str]:
    """Why the parameter changes ``pending`` cannot be applied (None when they can): type / range / choices, the
    window against the buffer, the stream rules, and with a running ``pipeline`` its runtime checks and whether an
    enabled head has its weights."""
    from dataclasses import replace
    for name, value in pending.items():
        setting = SETTING_BY_NAME.get(name)
        problem = setting.check(value) if setting is not None else None
        if problem is None and name.startswith('heads.') and value and pipeline is not None:
            missing = pipeline.missing_for_head(name.split('.', 1)[1])
            problem = f'{name} cannot be enabled: {missing}' if missing else None
        if problem:
            return problem
    p = _overlay(get, pending)
    if p('window.count') > p('buffer.max_events'):
        return f'window.count {p("window.count")} exceeds buffer.max_events {p("buffer.max_events")}'
    try:
        from .stream import StreamSettings
        StreamSettings(**stream_settings(get, pending))
        if pipeline is not None:
            pipeline.validate_runtime_changes(replace(pipeline.config, **pipeline_runtime_settings(get, pending)))
    except ValueError as exc:
        return str(exc)
    return None
