"""Topic names, frame ids, message types and QoS intent of the simulated rig (bags and the live node).

Import these constants instead of spelling topic names (node, training, demo, tests):

=============================  ===================================  =========================================
topic                          type                                 content
=============================  ===================================  =========================================
``/event_camera/events``       event_camera_msgs/msg/EventPacket    EVT3 packets, ~1 per ms (best effort)
``/event_camera/camera_info``  sensor_msgs/msg/CameraInfo           event camera intrinsics (at RGB rate)
``/event_camera/depth``        sensor_msgs/msg/Image ``32FC1``      GT z-depth (m, +inf = sky), event camera
``/event_camera/labels``       sensor_msgs/msg/Image ``mono8``      GT class ids (DSEC 11), event camera
``/rgb/image_raw``             sensor_msgs/msg/Image ``rgb8``       RGB frames (30 Hz default)
``/rgb/camera_info``           sensor_msgs/msg/CameraInfo           RGB intrinsics
``/rgb/depth``                 sensor_msgs/msg/Image ``32FC1``      GT z-depth, RGB camera
``/rgb/labels``                sensor_msgs/msg/Image ``mono8``      GT class ids, RGB camera
``/tf_static``                 tf2_msgs/msg/TFMessage               event_camera -> rgb_camera extrinsic
``/gt/pose``                   geometry_msgs/msg/PoseStamped        event camera pose in ``world`` (at RGB rate)
=============================  ===================================  =========================================

Frames: ``event_camera`` and ``rgb_camera`` are optical frames (x right, y down, z forward); ``world`` is z-up.
The ``/tf_static`` transform has parent ``event_camera`` and child ``rgb_camera``: it maps RGB-camera coordinates to
event-camera coordinates (``T_event_rgb``). ``/gt/pose`` is ``T_world_event`` (camera-to-world).
"""
from __future__ import annotations

from dataclasses import dataclass

EVENTS_TOPIC = '/event_camera/events'
EVENT_CAMERA_INFO_TOPIC = '/event_camera/camera_info'
EVENT_DEPTH_TOPIC = '/event_camera/depth'
EVENT_LABELS_TOPIC = '/event_camera/labels'
RGB_IMAGE_TOPIC = '/rgb/image_raw'
RGB_CAMERA_INFO_TOPIC = '/rgb/camera_info'
RGB_DEPTH_TOPIC = '/rgb/depth'
RGB_LABELS_TOPIC = '/rgb/labels'
TF_STATIC_TOPIC = '/tf_static'
GT_POSE_TOPIC = '/gt/pose'

EVENT_FRAME_ID = 'event_camera'
RGB_FRAME_ID = 'rgb_camera'
WORLD_FRAME_ID = 'world'

EVENT_PACKET_TYPE = 'event_camera_msgs/msg/EventPacket'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
TF_MESSAGE_TYPE = 'tf2_msgs/msg/TFMessage'
POSE_STAMPED_TYPE = 'geometry_msgs/msg/PoseStamped'

#: Depth of the best-effort events publisher queue (metavision_driver's send_queue_size default).
EVENTS_QUEUE_DEPTH = 1000


@dataclass(frozen=True)
class SimTopics:
    """Topic names and frame ids of one simulated rig (defaults: the module constants)."""

    events: str = EVENTS_TOPIC
    event_camera_info: str = EVENT_CAMERA_INFO_TOPIC
    event_depth: str = EVENT_DEPTH_TOPIC
    event_labels: str = EVENT_LABELS_TOPIC
    rgb_image: str = RGB_IMAGE_TOPIC
    rgb_camera_info: str = RGB_CAMERA_INFO_TOPIC
    rgb_depth: str = RGB_DEPTH_TOPIC
    rgb_labels: str = RGB_LABELS_TOPIC
    tf_static: str = TF_STATIC_TOPIC
    gt_pose: str = GT_POSE_TOPIC
    event_frame_id: str = EVENT_FRAME_ID
    rgb_frame_id: str = RGB_FRAME_ID
    world_frame_id: str = WORLD_FRAME_ID

    def with_prefix(self, namespace: str) -> 'SimTopics':
        """All topics except ``/tf_static`` (global by convention) moved under ``namespace``
        (e.g. ``'/sim1'`` -> ``/sim1/event_camera/events``)."""
        ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
        fields = dict(self.__dict__)
        for k, v in fields.items():
            if not k.endswith('frame_id') and k != 'tf_static':
                fields[k] = ns + v
        return SimTopics(**fields)


DEFAULT_TOPICS = SimTopics()
