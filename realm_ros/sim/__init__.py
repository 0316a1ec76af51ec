"""realm_ros.sim: a miniature event-camera world (ROS-free).

Procedural street scenes ray-cast analytically (boxes, cylinders, ellipsoids with anti-aliased procedural textures),
ground-truth depth and DSEC-11 labels, smooth 6-DoF trajectories with known poses, an ESIM-style event model fed by
adaptive high-rate renders, EVT3 packetisation like a metavision_driver, and ROS 2 bag output.

Typical use::

    from realm_ros.sim import SimConfig, Simulator, write_sim_bag
    summary = write_sim_bag('/tmp/sim_bag', seconds=2.0, seed=1)          # all topics, sqlite3
    for chunk in Simulator(SimConfig(seed=1, duration_s=1.0)).stream():   # or in memory
        chunk.events, chunk.frame.rgb, chunk.frame.event_depth, chunk.frame.T_world_event

Topics written by :func:`write_sim_bag` and published by the ``sim_event_camera`` node (names are the constants of
:mod:`realm_ros.sim.topics`; import them rather than spelling them):

* ``/event_camera/events`` (event_camera_msgs/msg/EventPacket, evt3, ~1 packet per ms, best effort)
* ``/event_camera/camera_info``, ``/rgb/camera_info`` (sensor_msgs/msg/CameraInfo)
* ``/rgb/image_raw`` (rgb8, 30 Hz), ``/rgb/depth`` and ``/event_camera/depth`` (32FC1 z-depth in metres, +inf sky),
  ``/rgb/labels`` and ``/event_camera/labels`` (mono8 DSEC class ids)
* ``/tf_static`` (tf2_msgs/msg/TFMessage: event_camera -> rgb_camera), ``/gt/pose`` (geometry_msgs/msg/PoseStamped,
  event camera in ``world``)

The live node's ROS-free parts: :mod:`.params` (its one parameter table), :mod:`.live` (the sequence filled from the
cache or by the background :mod:`.worker` process; lateness bookkeeping) and :mod:`.replay` (the real-time schedule).
"""
from .bag import SimBagSummary, read_sim_info, write_sim_bag
from .camera import PinholeCamera, invert_transform, quaternion_to_rotation, rotation_to_quaternion
from .classes import CLASS_NAMES, NUM_CLASSES
from .esim import EsimConfig, EsimEventGenerator
from .packets import DEFAULT_SENSOR_TIME_OFFSET_US, DEFAULT_START_TIME_NS, EventPacketizer, PacketData
from .render import Renderer, RenderOutput
from .scene import Scene, generate_street_scene
from .simulator import SimChunk, SimConfig, SimFrame, Simulator
from .topics import DEFAULT_TOPICS, SimTopics
from .trajectory import SmoothTrajectory, make_trajectory

__all__ = [
    'CLASS_NAMES', 'DEFAULT_SENSOR_TIME_OFFSET_US', 'DEFAULT_START_TIME_NS', 'DEFAULT_TOPICS', 'EsimConfig',
    'EsimEventGenerator', 'EventPacketizer', 'NUM_CLASSES', 'PacketData', 'PinholeCamera', 'RenderOutput', 'Renderer',
    'Scene', 'SimBagSummary', 'SimChunk', 'SimConfig', 'SimFrame', 'SimTopics', 'Simulator', 'SmoothTrajectory',
    'generate_street_scene', 'invert_transform', 'make_trajectory', 'quaternion_to_rotation', 'read_sim_info',
    'rotation_to_quaternion', 'write_sim_bag',
]
