"""realm_ros: REALM event-camera perception for ROS 2.

The ROS-free core (``realm_ros.events``, ``realm_ros.models``, ``realm_ros.geometry``, ``realm_ros.training``,
``realm_ros.sim``, ``realm_ros.pipeline``) imports and runs without rclpy; ``realm_ros.nodes`` are thin rclpy adapters.
"""

__version__ = '0.1.0'
