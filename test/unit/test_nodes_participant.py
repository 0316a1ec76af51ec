"""The Fast DDS profile the simulator starts with: when it applies, what it contains, and what it leaves alone."""
import xml.etree.ElementTree as ET

import pytest

from realm_ros.nodes.participant import SHM_SEGMENT_BYTES, shm_profile_skipped, use_large_shm_segment

NS = {'f': 'http://www.eprosima.com'}


def _profile(path):
    root = ET.parse(path).getroot()
    seg = root.find('.//f:transport_descriptor[f:type="SHM"]/f:segment_size', NS)
    part = root.find('f:participant', NS)
    return root, int(seg.text), part


def test_default_range_gets_a_large_segment_and_both_builtin_transports(tmp_path, monkeypatch):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    env = {'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp'}
    path = use_large_shm_segment(environ=env)
    assert path is not None and env['FASTDDS_DEFAULT_PROFILES_FILE'] == path and path.startswith(str(tmp_path))
    root, size, part = _profile(path)
    assert size == SHM_SEGMENT_BYTES == 16 * 1024 * 1024
    assert part.get('is_default_profile') == 'true'
    types = [t.text for t in root.findall('.//f:transport_descriptor/f:type', NS)]
    assert types == ['SHM', 'UDPv4']
    assert part.find('f:rtps/f:useBuiltinTransports', NS).text == 'false'
    assert len(part.findall('f:rtps/f:userTransports/f:transport_id', NS)) == 2
    assert part.find('f:rtps/f:builtin', NS) is None          # discovery as Fast DDS's default (SUBNET)
    assert 'ROS_AUTOMATIC_DISCOVERY_RANGE' not in env
    assert use_large_shm_segment(environ={}) == path          # the same file again (rewritten only when it differs)


def test_localhost_range_is_reproduced_in_the_profile(tmp_path, monkeypatch):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    path = use_large_shm_segment(1 << 20, environ=env)
    _, size, part = _profile(path)
    assert size == 1 << 20
    # rmw_fastrtps would add its own transports to the profile for LOCALHOST: the process runs with SYSTEM_DEFAULT
    # and the profile does what LOCALHOST does (no multicast discovery, localhost as the initial peer)
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SYSTEM_DEFAULT'
    builtin = part.find('f:rtps/f:builtin', NS)
    assert builtin.find('f:metatrafficMulticastLocatorList', NS) is None
    assert builtin.find('f:metatrafficUnicastLocatorList/f:locator', NS) is not None
    assert builtin.find('f:initialPeersList/f:locator/f:udpv4/f:address', NS).text == '127.0.0.1'


@pytest.mark.parametrize('env, reason', [
    ({'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}, 'RMW_IMPLEMENTATION=rmw_cyclonedds_cpp'),
    ({'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/my.xml'}, 'FASTDDS_DEFAULT_PROFILES_FILE is set'),
    ({'FASTRTPS_DEFAULT_PROFILES_FILE': '/etc/my.xml'}, 'FASTRTPS_DEFAULT_PROFILES_FILE is set'),
    ({'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA'}, 'FASTDDS_BUILTIN_TRANSPORTS is set'),
    ({'ROS_LOCALHOST_ONLY': '1'}, 'ROS_LOCALHOST_ONLY=1'),
    ({'ROS_STATIC_PEERS': '192.168.0.7'}, 'ROS_STATIC_PEERS is set'),
    ({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'OFF'}, 'ROS_AUTOMATIC_DISCOVERY_RANGE=OFF'),
])
def test_what_the_user_configured_is_left_alone(env, reason):
    before = dict(env)
    assert shm_profile_skipped(env) == reason
    assert use_large_shm_segment(environ=env) is None and env == before


def test_nothing_configured_is_not_skipped():
    assert shm_profile_skipped({}) is None
    assert shm_profile_skipped({'RMW_IMPLEMENTATION': 'rmw_fastrtps_dynamic_cpp',
                                'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}) is None


def test_an_unwritable_temporary_directory_leaves_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path / 'does_not_exist'))
    env = {}
    assert use_large_shm_segment(environ=env) is None and env == {}


def test_transport_summary_says_what_was_done():
    from realm_ros.nodes.participant import transport_summary
    assert transport_summary('/tmp/x.xml', {}) == 'Fast DDS shared-memory segment 16 MB (/tmp/x.xml)'
    assert transport_summary(None, {'RMW_IMPLEMENTATION': 'rmw_zenoh_cpp'}) == \
        'DDS transports left as configured (RMW_IMPLEMENTATION=rmw_zenoh_cpp)'
    assert transport_summary(None, {}) == 'DDS transports left as configured (the profile could not be written)'


def test_a_small_dev_shm_leaves_the_defaults(monkeypatch):
    import realm_ros.nodes.participant as participant
    monkeypatch.setattr(participant, 'shm_free_bytes', lambda path='/dev/shm': 64 << 20)
    env = {}
    assert participant.shm_profile_skipped(env) == "/dev/shm has 64 MB free (a container's default 64 MB?)"
    assert participant.use_large_shm_segment(environ=env) is None and env == {}
    monkeypatch.setattr(participant, 'shm_free_bytes', lambda path='/dev/shm': None)      # no /dev/shm at all
    assert participant.shm_profile_skipped({}) is None
