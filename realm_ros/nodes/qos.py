"""QoS profiles for realm_ros nodes, built from plain parameter values.

Event packets arrive at up to ~1 kHz from drivers that publish best effort (metavision_driver, libcaer_driver), so
the events subscription is BEST_EFFORT with a deep KEEP_LAST queue. Outputs default to RELIABLE, which every
subscriber (RViz, ``ros2 topic echo``, reliable test subscribers) can match; a best-effort output profile is available
for bandwidth-limited links. Profiles are named by strings so they can be parameters and launch arguments.
"""

from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data, qos_profile_system_default)

#: Names accepted by :func:`qos_from_name` (case-insensitive).
QOS_NAMES = ('reliable', 'best_effort', 'sensor_data', 'system_default')

#: Default queue depth of the events subscription: ~1 s of packets at the metavision driver's 1 kHz default.
EVENTS_QUEUE_DEPTH = 1000


def qos_from_name(name: str, depth: int = 10) -> QoSProfile:
    """Return a KEEP_LAST, VOLATILE profile for ``name`` with queue ``depth``.

    ``reliable`` / ``best_effort`` set the reliability; ``sensor_data`` is rclpy's sensor-data preset (best effort)
    and ``system_default`` the RMW default, both with the given depth. Raises ``ValueError`` naming the bad value.
    """
    key = str(name).strip().lower().replace('-', '_')
    if depth < 1:
        raise ValueError(f'QoS depth must be >= 1, got {depth}')
    if key == 'reliable':
        reliability = ReliabilityPolicy.RELIABLE
    elif key == 'best_effort':
        reliability = ReliabilityPolicy.BEST_EFFORT
    elif key == 'sensor_data':
        reliability = qos_profile_sensor_data.reliability
    elif key == 'system_default':
        reliability = qos_profile_system_default.reliability
    else:
        raise ValueError(f'unknown QoS profile name {name!r}; expected one of {", ".join(QOS_NAMES)}')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def events_qos(depth: int = EVENTS_QUEUE_DEPTH) -> QoSProfile:
    """Subscription profile for EventPacket topics: BEST_EFFORT, KEEP_LAST ``depth``, VOLATILE.

    A best-effort subscriber matches both best-effort and reliable publishers (drivers, ``ros2 bag play``).
    """
    return qos_from_name('best_effort', depth)


def sensor_input_qos(depth: int = 5) -> QoSProfile:
    """Subscription profile for camera_info and image inputs (best effort, matches any publisher)."""
    return qos_from_name('best_effort', depth)
