"""Time-stamp conversion shared by the ROS-free core and the nodes (no ROS message types needed)."""
from __future__ import annotations

from typing import Any

__all__ = ['NS_PER_S', 'stamp_to_ns']

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """Integer nanoseconds of a ``builtin_interfaces/Time``-like object.

    Reads ``sec`` and ``nanosec`` (ROS 2); a ROS 1 style ``nsec`` is accepted when ``nanosec`` is absent. Works on
    message objects from rclpy, rosbags or any object with those attributes.
    """
    nsec: Any = getattr(stamp, 'nanosec', None)
    if nsec is None:
        nsec = getattr(stamp, 'nsec', 0)
    return int(stamp.sec) * NS_PER_S + int(nsec)
