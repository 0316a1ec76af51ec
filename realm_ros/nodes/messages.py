"""The perception node's messages: pipeline results -> ROS messages on their topics (the runner's sink), RGB
keyframe images -> arrays, and the bridge from the core's ``logging`` to the node's logger.

Dense outputs (depth, semantic, points) and pose outputs (pose, matches, TF, odometry, path) are published by the
worker that computed them, each with the stamp of its window. The last messages of each kind are kept for the
memory hold (republished with a new stamp when no events come).

TF and odometry: while the pose is known in the fixed frame (``pose.fixed_frame``, default ``odom``; the first
keyframe's camera is its origin), the node broadcasts ``fixed_frame -> child`` on ``/tf`` (``tf.child_frame``, default
the output frame_id) and publishes nav_msgs/Odometry on ``~/odometry`` and the trajectory as nav_msgs/Path on
``~/path``. RViz users set the Fixed Frame to ``pose.fixed_frame``; robots whose camera frame already has a parent in
their TF tree set ``tf.child_frame`` to a frame of its own (or ``tf.publish`` false).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, FrozenSet, List, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from realm_ros.nodes import conversions as conv
from realm_ros.pipeline.core import PipelineOutput
from realm_ros.pipeline.dense import DENSE_OUTPUTS
from realm_ros.pipeline.pose_tracker import PoseOutput

try:                                    # nav_msgs / tf2_msgs are in every ROS install; optional on PyPI-only set-ups
    from nav_msgs.msg import Odometry, Path
except ImportError:                     # pragma: no cover - depends on the install
    Odometry = Path = None
try:
    from tf2_msgs.msg import TFMessage
except ImportError:                     # pragma: no cover
    TFMessage = None

DENSE_TOPICS = {
    'depth': ('~/depth', Image), 'depth_info': ('~/depth/camera_info', CameraInfo),
    'depth_color': ('~/depth/color', Image), 'semantic': ('~/semantic', Image),
    'semantic_color': ('~/semantic/color', Image), 'points': ('~/points', PointCloud2),
}
POSE_TOPICS = {'pose': ('~/pose', PoseWithCovarianceStamped), 'matches': ('~/matches', Image)}
TRAJECTORY_TOPICS = {'odometry': ('~/odometry', Odometry), 'path': ('~/path', Path)}


class OutputPublisher:
    """Implements :class:`realm_ros.pipeline.runner.OutputSink` for a node (see the module docstring)."""

    def __init__(self, node: Any, qos: Any, param: Callable[[str], Any],
                 camera_info: Callable[[], Optional[conv.CameraIntrinsics]]) -> None:
        self._node = node
        self._p = param
        self._camera_info = camera_info
        self._lock = threading.Lock()
        topics = dict(DENSE_TOPICS, **POSE_TOPICS)
        topics.update({k: v for k, v in TRAJECTORY_TOPICS.items() if v[1] is not None})
        self.publishers = {key: node.create_lifecycle_publisher(msg_type, topic, qos)
                           for key, (topic, msg_type) in topics.items()}
        self._tf = node.create_publisher(TFMessage, '/tf', 100) if TFMessage is not None else None
        self._last: Dict[str, Dict[str, Any]] = {'dense': {}, 'pose': {}}
        self._path: List[PoseStamped] = []
        self.uses_camera_info = False

    def destroy(self) -> None:
        for pub in self.publishers.values():
            self._node.destroy_lifecycle_publisher(pub)
        self.publishers = {}
        if self._tf is not None:
            self._node.destroy_publisher(self._tf)
            self._tf = None
        self._last = {'dense': {}, 'pose': {}}

    def _live(self) -> bool:
        """False once the node's context is shut down (Ctrl-C): workers finishing a window publish nothing."""
        return bool(self.publishers) and self._node.context.ok()

    def _send(self, pub: Any, msg: Any) -> None:
        """Publish, unless the context was shut down (Ctrl-C) between the :meth:`_live` check and the call: rcl then
        refuses ("publisher's context is invalid") and the message is dropped quietly; other failures propagate."""
        try:
            pub.publish(msg)
        except Exception:                   # rclpy raises its RCLError here; re-raised while the context lives
            if self._live():
                raise

    def _publish(self, group: str, msgs: Dict[str, Any]) -> None:
        if not self._live():
            return
        for key, msg in msgs.items():
            pub = self.publishers.get(key)
            if pub is not None:
                self._send(pub, msg)
        with self._lock:
            self._last[group] = msgs

    # ------------------------------------------------------------------------------------------------ sink
    def wanted_dense(self) -> Optional[FrozenSet[str]]:
        """The dense outputs with subscribers (``dense.lazy``; None: all): ``depth`` for ``~/depth`` or its
        ``~/depth/camera_info``, ``depth_color``, ``semantic``, ``semantic_color``, ``points``."""
        if not self._p('dense.lazy'):
            return None
        pubs = self.publishers
        try:
            subscribed = {key for key in DENSE_TOPICS if key in pubs and pubs[key].get_subscription_count() > 0}
        except Exception:                   # rclpy's RCLError once the context is shut down (Ctrl-C): no receiver
            if self._live():
                raise
            return frozenset()
        if 'depth_info' in subscribed:
            subscribed.add('depth')
        return frozenset(subscribed.intersection(DENSE_OUTPUTS))

    def dense(self, out: PipelineOutput, frame_id: str) -> None:
        header = conv.make_header(out.stamp_ns, frame_id)
        msgs: Dict[str, Any] = {}
        if out.depth is not None:
            msgs['depth'] = conv.image_from_array(out.depth, '32FC1', header)
        if out.depth_color is not None:
            msgs['depth_color'] = conv.image_from_array(out.depth_color, 'bgr8', header)
        if out.depth is not None or out.depth_color is not None:
            info = self._camera_info() if self.uses_camera_info else None   # same K and distortion as the sensor
            msgs['depth_info'] = conv.camera_info_from_intrinsics(
                out.K, out.width, out.height, header, D=info.D if info is not None else (),
                distortion_model=info.distortion_model if info is not None else '')
        if out.semantic is not None:
            msgs['semantic'] = conv.image_from_array(out.semantic, 'mono8', header)
            if out.semantic_color is not None:
                msgs['semantic_color'] = conv.image_from_array(out.semantic_color, 'bgr8', header)
        if out.points_xyz is not None and out.points_rgb is not None:
            msgs['points'] = conv.pointcloud2_xyzrgb(out.points_xyz, out.points_rgb, header)
        if out.pose is not None or out.matches_image is not None:        # pose computed with the window
            self.pose(PoseOutput(out.stamp_ns, out.pose, out.matches_image), frame_id)
        self._publish('dense', msgs)

    def pose(self, out: PoseOutput, frame_id: str) -> None:
        msgs: Dict[str, Any] = {}
        if out.matches_image is not None:
            msgs['matches'] = conv.image_from_array(out.matches_image, 'bgr8', conv.make_header(out.stamp_ns,
                                                                                                   frame_id))
        est = out.pose
        if est is not None:
            fixed = str(self._p('pose.fixed_frame'))
            pose_frame = fixed if est.reference == 'fixed' else f'{frame_id}_keyframe'
            msgs['pose'] = conv.pose_with_covariance(est.R, est.t, est.covariance,
                                                     conv.make_header(out.stamp_ns, pose_frame))
            if est.T_fixed is not None:
                self._trajectory(out.stamp_ns, est, fixed, str(self._p('tf.child_frame')) or frame_id, msgs)
        self._publish('pose', msgs)

    def _trajectory(self, stamp_ns: int, est: Any, fixed: str, child: str, msgs: Dict[str, Any]) -> None:
        T = np.asarray(est.T_fixed, np.float64)
        R, t = T[:3, :3], T[:3, 3]
        cov = est.covariance if est.reference == 'fixed' else np.zeros((6, 6))
        header = conv.make_header(stamp_ns, fixed)
        pose_cov = conv.pose_with_covariance(R, t, cov, header)
        if self._tf is not None and self._p('tf.publish') and self._live():
            tr = TransformStamped()
            tr.header = header
            tr.child_frame_id = child
            p = pose_cov.pose.pose
            tr.transform.translation.x, tr.transform.translation.y, tr.transform.translation.z = \
                p.position.x, p.position.y, p.position.z
            tr.transform.rotation = p.orientation
            self._send(self._tf, TFMessage(transforms=[tr]))
        if Odometry is not None and self._p('odometry.publish'):
            odom = Odometry()
            odom.header = header
            odom.child_frame_id = child
            odom.pose = pose_cov.pose
            msgs['odometry'] = odom
        if Path is not None and self._p('path.publish'):
            stamped = PoseStamped()
            stamped.header = header
            stamped.pose = pose_cov.pose.pose
            self._path.append(stamped)
            del self._path[:max(0, len(self._path) - int(self._p('path.max_poses')))]
            path = Path()
            path.header = header
            path.poses = list(self._path)
            msgs['path'] = path

    def clear_trajectory(self) -> None:
        """Forget the path (stream restart: a new fixed frame origin)."""
        self._path = []

    def hold(self, stamp_ns: int, reason: str) -> bool:
        """Republish the last outputs with ``stamp_ns`` (memory hold); False when there is nothing to hold."""
        with self._lock:
            groups = [dict(g) for g in self._last.values()]
        if not any(groups) or not self._live():
            return False
        stamp = conv.ns_to_stamp(stamp_ns)
        for msgs in groups:
            for key, msg in msgs.items():
                if key == 'path':
                    continue
                msg.header.stamp = stamp
                pub = self.publishers.get(key)
                if pub is not None:
                    pub.publish(msg)
        return True


def rgb8_from_image(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an 8-bit Image (rgb8, bgr8, rgba8, bgra8, mono8); ValueError for other encodings."""
    img = conv.image_to_array(msg)
    if msg.encoding in ('bgr8', 'bgra8'):
        img = img[..., 2::-1]
    elif msg.encoding == 'rgba8':
        img = img[..., :3]
    elif img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'RGB keyframe images must be 8-bit colour or mono, got {msg.encoding!r}')
    return np.ascontiguousarray(img)


class RosLogHandler(logging.Handler):
    """Forward the ROS-free core's ``logging`` records (``realm_ros.*``) to a node's logger."""

    def __init__(self, node: Any) -> None:
        super().__init__()
        self._node = node

    def emit(self, record: logging.LogRecord) -> None:
        log = self._node.get_logger()
        level = record.levelno
        fn = log.error if level >= logging.ERROR else log.warning if level >= logging.WARNING else log.info
        fn(self.format(record))
