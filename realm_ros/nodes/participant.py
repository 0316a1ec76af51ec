"""Large and fast messages over Fast DDS's shared-memory transport: a participant of their own, a larger segment.

Fast DDS (the default RMW) gives each participant one shared-memory segment (512 KB by default) for all of its
writers, and when a writer needs room it recycles the oldest buffers whether every reader has taken them or not. A
process that publishes event packets *and* images from one participant (the simulator with its ground truth, a bag
player) therefore loses event packets whenever a subscriber is descheduled for a few tens of milliseconds: the images
(~0.65 MB per frame at 224 x 224 with ground truth) push the packets out of the segment before they are read. Measured
on this project's 2-core machine with two busy processes beside it: 287 of ~15,000 packets lost in 15 s with one
participant, 0 of ~35,000 with the events in their own participant. rclpy creates one participant per context, so
the node lives in a context of its own.

The segment itself must hold what arrives while a subscriber is stalled: at 5.6 Mev/s (~28 KB packets) the default
512 KB is ~20 ms, 4 MB ~140 ms. Measured with a subscriber of events and images stopped (SIGSTOP) ten times: 40 ms
stops, one participant: 431 of ~12,000 packets lost; own participant: 6. 150 ms stops at 5.6 Mev/s, own participant
and a 4 MB segment: 330 lost; 16 MB: 0 (also with 300 ms stops). The default segment size can only be changed through
a Fast DDS XML profile read when the process creates its first participant: :func:`use_large_shm_segment` writes one
and points ``FASTDDS_DEFAULT_PROFILES_FILE`` at it, unless the user configured Fast DDS (a profile, builtin
transports), static peers or another RMW. It costs 16 MB of ``/dev/shm`` per participant of that process.

The simulator uses it for its packets, and the perception node for its outputs: one window's images and point cloud
(~0.6 MB at 224 x 224, several MB at 640 x 480) overflow the default segment at once, and a reliable subscriber then
waits for retransmissions. In the demo (node + simulator + a collector subscribing to the outputs, 2 cores) the
end-to-end depth latency p95 / max went from 425-439 / 809 ms to 224 / 358 ms with 16 MB segments everywhere
(node-internal latency p95 ~135 ms in both).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, MutableMapping, Optional

#: Shared-memory segment of the simulator and the perception node (Fast DDS's default is 512 KB).
SHM_SEGMENT_BYTES = 16 * 1024 * 1024

#: Free space ``/dev/shm`` must have for the large segment (a few processes' segments; Docker's default is 64 MB).
SHM_MIN_FREE_BYTES = 8 * SHM_SEGMENT_BYTES

_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- written by realm_ros (realm_ros/nodes/participant.py): Fast DDS's builtin transports (shared memory + UDPv4) with
     a {size}-byte shared-memory segment instead of 512 KB, so that event packets and large outputs survive a busy
     subscriber{note} -->
<profiles xmlns="http://www.eprosima.com">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>realm_ros_shm</transport_id>
      <type>SHM</type>
      <segment_size>{size}</segment_size>
    </transport_descriptor>
    <transport_descriptor>
      <transport_id>realm_ros_udpv4</transport_id>
      <type>UDPv4</type>{udp_extra}
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="realm_ros" is_default_profile="true">
    <rtps>{builtin}
      <userTransports>
        <transport_id>realm_ros_shm</transport_id>
        <transport_id>realm_ros_udpv4</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""

# ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, as rmw_fastrtps configures it (no multicast discovery, localhost as the
# initial peer, 32 participants per host); the process then runs with SYSTEM_DEFAULT so that rmw keeps the profile
_LOCALHOST = dict(
    note=';\n     discovery on this host only (what ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST sets up)',
    udp_extra='\n      <maxInitialPeersRange>32</maxInitialPeersRange>',
    builtin="""
      <builtin>
        <metatrafficUnicastLocatorList>
          <locator/>
        </metatrafficUnicastLocatorList>
        <initialPeersList>
          <locator>
            <udpv4>
              <address>127.0.0.1</address>
            </udpv4>
          </locator>
        </initialPeersList>
      </builtin>""")


def use_large_shm_segment(size_bytes: int = SHM_SEGMENT_BYTES,
                          environ: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
    """Point Fast DDS at a profile with a ``size_bytes`` shared-memory segment (call before ``rclpy.init``).

    With ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` the profile also sets up what rmw_fastrtps does for that range
    (no multicast discovery, 127.0.0.1 as the initial peer) and the range becomes ``SYSTEM_DEFAULT``, so that rmw
    uses the profile as it is (for LOCALHOST it would add transports of its own to it). Returns the profile's path,
    or None (with nothing changed) when the RMW is not Fast DDS, a Fast DDS profile, builtin-transport choice or
    static peers are configured, ``ROS_LOCALHOST_ONLY=1``, discovery is off, ``/dev/shm`` has less than
    :data:`SHM_MIN_FREE_BYTES` free (Docker's default 64 MB would fill up), or the file cannot be written."""
    env = os.environ if environ is None else environ
    if shm_profile_skipped(env) is not None:
        return None
    localhost = env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').upper() == 'LOCALHOST'
    name = f'realm_ros_fastdds_shm_{int(size_bytes)}{"_localhost" if localhost else ""}.xml'
    path = os.path.join(tempfile.gettempdir(), name)
    text = _PROFILE.format(size=int(size_bytes), **(_LOCALHOST if localhost else dict(note='', udp_extra='',
                                                                                        builtin='')))
    try:
        with open(path) as fh:
            same = fh.read() == text
    except OSError:
        same = False
    if not same:
        tmp = f'{path}.{os.getpid()}'
        try:
            with open(tmp, 'w') as fh:
                fh.write(text)
            os.replace(tmp, path)
        except OSError:                 # a read-only or full temporary directory: run with the defaults
            return None
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = path
    if localhost:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SYSTEM_DEFAULT'
    return path


def shm_profile_skipped(env: Mapping[str, str]) -> Optional[str]:
    """Why :func:`use_large_shm_segment` leaves the transports alone in ``env`` (None: it does not)."""
    rmw = env.get('RMW_IMPLEMENTATION', '')
    if rmw and not rmw.startswith('rmw_fastrtps'):
        return f'RMW_IMPLEMENTATION={rmw}'
    for key in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS'):
        if env.get(key):
            return f'{key} is set'
    if env.get('ROS_LOCALHOST_ONLY', '') == '1':
        return 'ROS_LOCALHOST_ONLY=1'
    if env.get('ROS_STATIC_PEERS'):
        return 'ROS_STATIC_PEERS is set'
    if env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').upper() not in ('', 'SUBNET', 'SYSTEM_DEFAULT', 'LOCALHOST'):
        return f'ROS_AUTOMATIC_DISCOVERY_RANGE={env["ROS_AUTOMATIC_DISCOVERY_RANGE"]}'
    free = shm_free_bytes()
    if free is not None and free < SHM_MIN_FREE_BYTES:
        return f'/dev/shm has {free >> 20} MB free (a container\'s default 64 MB?)'
    return None


def shm_free_bytes(path: str = '/dev/shm') -> Optional[int]:
    """Free bytes of the shared-memory file system (None where there is none, e.g. not Linux)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


class OwnParticipantNode:
    """``node``: an rclpy node in a context (DDS participant) of its own; :meth:`close` destroys both.

    The node has no parameter services and no rosout, and ignores the process's global ROS arguments: give it
    fully resolved topic names (``Node.resolve_topic_name`` of the owning node, remappings applied).
    """

    def __init__(self, name: str, namespace: str = '', domain_id: int | None = None) -> None:
        import rclpy
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions
        self.context: Any = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        try:
            self.node: Any = Node(name, namespace=namespace or '/', context=self.context,
                                  use_global_arguments=False, start_parameter_services=False, enable_rosout=False)
        except Exception:
            rclpy.shutdown(context=self.context, uninstall_handlers=False)
            raise

    def close(self) -> None:
        """Destroy the node and shut its context down (idempotent)."""
        import rclpy
        if self.context.ok():
            try:
                self.node.destroy_node()
            finally:
                rclpy.shutdown(context=self.context, uninstall_handlers=False)
                destroy = getattr(self.context, 'destroy', None)
                if destroy is not None:     # finalises the participant: its shared-memory files are unlinked
                    destroy()


def transport_summary(profile: Optional[str], environ: Optional[Mapping[str, str]] = None) -> str:
    """One log line on what :func:`use_large_shm_segment` did (``profile``: its return value)."""
    if profile:
        return f'Fast DDS shared-memory segment {SHM_SEGMENT_BYTES >> 20} MB ({profile})'
    reason = shm_profile_skipped(os.environ if environ is None else environ) or 'the profile could not be written'
    return f'DDS transports left as configured ({reason})'
