"""launch/perception.launch.py: a launch_pytest test that starts it and waits for depth output; `ros2 launch ...
sim:=true` ended with SIGINT (to `ros2 launch`, or to its process group as a terminal's Ctrl-C) while publishing and
while starting; plus static checks of its arguments that run everywhere.

launch_pytest, launch and launch_ros are not on PyPI: the launch test skips with the reason unless a ROS 2 install
(apt / rosdep) provides them and the package is built with colcon (the launch file starts the installed
``perception_node`` executable).
"""
import ast
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / 'launch' / 'perception.launch.py'
REQUIRED_ARGS = {'params_file', 'namespace', 'events_topic', 'camera_info_topic', 'image_topic',
                 'image_camera_info_topic', 'realm_checkpoint', 'dune_checkpoint', 'depth_head_checkpoint',
                 'seg_head_checkpoint', 'mast3r_checkpoint', 'device', 'rviz', 'sim', 'use_sim_time'}
MISSING = [m for m in ('launch_pytest', 'launch', 'launch_ros') if importlib.util.find_spec(m) is None]


def test_launch_file_declares_the_documented_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text())
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'DeclareLaunchArgument'}
    assert REQUIRED_ARGS <= declared, REQUIRED_ARGS - declared
    text = LAUNCH_FILE.read_text()
    assert "'perception.yaml'" in text and "'realm.rviz'" in text and "executable='sim_event_camera'" in text
    assert (REPO / 'config' / 'perception.yaml').is_file() and (REPO / 'config' / 'realm.rviz').is_file()


def test_params_file_declares_only_parameters_the_node_knows():
    pytest.importorskip('rclpy')
    import yaml
    from realm_ros.nodes.perception_node import PARAM_BY_NAME
    params = yaml.safe_load((REPO / 'config' / 'perception.yaml').read_text())['/**']['ros__parameters']
    unknown = sorted(set(params) - set(PARAM_BY_NAME))
    assert not unknown, f'config/perception.yaml sets unknown parameters {unknown}'
    for name, value in params.items():
        default = PARAM_BY_NAME[name].default
        assert type(value) is type(default), f'{name}: YAML type {type(value).__name__}, declared ' \
                                             f'{type(default).__name__}'
    assert sorted(set(PARAM_BY_NAME) - set(params)) == [], 'every parameter is documented in the YAML file'


def _load_launch_file_with_stubs(monkeypatch):
    """Import launch/perception.launch.py against minimal stand-ins of launch / launch_ros / ament_index_python
    (runs everywhere); returns (module, {argument: default}, OpaqueFunction callable)."""
    import types

    class Declare:
        def __init__(self, name, default_value='', **kw):
            self.name, self.default_value = name, default_value

    class Opaque:
        def __init__(self, function):
            self.function = function

    class Config:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class Node:
        def __init__(self, **kw):
            self.kw = kw

    class NotFound(KeyError):
        pass

    def share(name):
        raise NotFound(name)

    mods = {
        'launch': types.SimpleNamespace(LaunchDescription=lambda entities: entities),
        'launch.actions': types.SimpleNamespace(DeclareLaunchArgument=Declare, OpaqueFunction=Opaque),
        'launch.conditions': types.SimpleNamespace(IfCondition=lambda value: ('if', value)),
        'launch.substitutions': types.SimpleNamespace(LaunchConfiguration=Config),
        'launch_ros': types.SimpleNamespace(), 'launch_ros.actions': types.SimpleNamespace(Node=Node),
        'ament_index_python': types.SimpleNamespace(),
        'ament_index_python.packages': types.SimpleNamespace(PackageNotFoundError=NotFound,
                                                             get_package_share_directory=share),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location('perception_launch_under_test', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description()
    defaults = {e.name: e.default_value for e in entities if isinstance(e, Declare)}
    opaque = [e for e in entities if isinstance(e, Opaque)][0]
    return module, defaults, opaque.function


def _perception_params(monkeypatch, **arguments):
    _, defaults, nodes = _load_launch_file_with_stubs(monkeypatch)
    actions = nodes(dict(defaults, **arguments))
    perception = [a for a in actions if a.kw.get('executable') == 'perception_node'][0]
    sim = [a for a in actions if a.kw.get('executable') == 'sim_event_camera']
    return perception.kw['parameters'], bool(sim)


def test_sim_launch_keeps_the_window_of_a_users_params_file(monkeypatch, tmp_path):
    user = tmp_path / 'mine.yaml'
    user.write_text('/**:\n  ros__parameters:\n    window.mode: count\n    window.count: 40000\n')
    params, sim = _perception_params(monkeypatch, sim='true', params_file=str(user))
    assert sim and params[0] == str(user)
    assert not any(k.startswith('window.') for k in params[1]), params[1]   # the user's window wins
    assert params[1]['checkpoints.realm'].startswith('package://realm_ros/models/')


def test_sim_launch_with_the_shipped_params_uses_the_miniature_window(monkeypatch):
    params, sim = _perception_params(monkeypatch, sim='true')
    assert sim and params[0] == str(REPO / 'config' / 'perception.yaml')
    assert params[1]['window.mode'] == 'time' and params[1]['window.duration_ms'] > 0
    params, sim = _perception_params(monkeypatch, realm_checkpoint='/x/realm.safetensors')
    assert not sim and params[1] == {'checkpoints.realm': '/x/realm.safetensors', 'use_sim_time': False}


def _sim_node_params(monkeypatch, **arguments):
    _, defaults, nodes = _load_launch_file_with_stubs(monkeypatch)
    actions = nodes(dict(defaults, sim='true', **arguments))
    sim = [a for a in actions if a.kw.get('executable') == 'sim_event_camera']
    assert len(sim) == 1
    return sim[0].kw['parameters'][0]


def test_sim_launch_runs_the_demo_rig(monkeypatch):
    """sim:=true simulates what realm-demo shows (a held-out scene driven forward), not the node's test loop."""
    from realm_ros.demo import parse_args
    demo = parse_args([])
    params = _sim_node_params(monkeypatch)
    assert params == {'seed': demo.seed, 'trajectory': 'drive', 'speed_mps': demo.sim_speed, 'loop': True,
                      'duration_s': demo.sim_seconds, 'use_sim_time': False}
    assert params['trajectory'] == 'drive' and params['duration_s'] == 32.0 and params['speed_mps'] == 2.0
    loop = _sim_node_params(monkeypatch, sim_trajectory='loop', sim_seed='3', sim_speed='4', use_sim_time='true')
    assert loop == {'seed': 3, 'trajectory': 'loop', 'speed_mps': 4.0, 'loop': True, 'duration_s': 4.0,
                    'use_sim_time': True}
    assert _sim_node_params(monkeypatch, sim_seconds='12.5')['duration_s'] == 12.5
    with pytest.raises(RuntimeError, match=r"sim_speed:='fast' is not a number"):
        _sim_node_params(monkeypatch, sim_speed='fast')
    with pytest.raises(RuntimeError, match=r"sim_\* launch arguments: parameter 'speed_mps' must be in"):
        _sim_node_params(monkeypatch, sim_speed='-1')
    with pytest.raises(RuntimeError, match=r"sim_seed:='1.5' is not an integer"):
        _sim_node_params(monkeypatch, sim_seed='1.5')


def _ros2_launch_ready() -> str:
    """Why `ros2 launch realm_ros ...` cannot run here ('' when it can: ros2 CLI, launch and a built realm_ros)."""
    if MISSING:
        return f'{", ".join(MISSING)} not installed (not on PyPI)'
    if shutil.which('ros2') is None:
        return 'the ros2 command is not on PATH (source a ROS 2 install)'
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    try:
        get_package_share_directory('realm_ros')
    except PackageNotFoundError:
        return 'realm_ros is not built with colcon (source install/setup.bash)'
    return ''


def _start_sim_launch(log, domain_id: int) -> subprocess.Popen:
    """`ros2 launch realm_ros perception.launch.py sim:=true` in its own process group, as a terminal starts it: SIGINT
    at its default (a shell's background job inherits it ignored), private domain, discovery on this host only."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    return subprocess.Popen(['ros2', 'launch', 'realm_ros', 'perception.launch.py', 'sim:=true', 'device:=cpu'],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt(proc: subprocess.Popen, target: str) -> Tuple[Optional[int], float]:
    """SIGINT to the launch process only, or to its whole process group (a terminal's Ctrl-C); returns (exit code or
    None, seconds until the launch process exited). Whatever is left of the group is killed."""
    t0 = time.monotonic()
    if target == 'group':
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    try:
        code: Optional[int] = proc.wait(timeout=25)
    except subprocess.TimeoutExpired:
        code = None
    elapsed = time.monotonic() - t0
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return code, elapsed


def _assert_clean_exit(code: Optional[int], elapsed: float, text: str) -> None:
    tail = text[-4000:]
    assert 'user interrupted with ctrl-c (SIGINT)' in text, tail
    for bad in ('escalating to', 'Traceback', 'KeyboardInterrupt', 'process has died'):
        assert bad not in text, f'{bad!r} in the launch output:\n{tail}'
    assert code == 0 and elapsed < 2.0, (code, round(elapsed, 2), tail)
    assert text.count('process has finished cleanly') == 2, tail


@pytest.mark.slow
@pytest.mark.parametrize('target', ['launch', 'group'])
def test_ros2_launch_sim_ends_within_2s_of_sigint_while_publishing(target, tmp_path):
    """A user's `ros2 launch ... sim:=true` ended with Ctrl-C (SIGINT to the whole process group) or one SIGINT to
    `ros2 launch`: every process finishes cleanly within 2 s, while depth is being published."""
    why = _ros2_launch_ready()
    if why:
        pytest.skip(why)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    domain_id = 1 + (os.getpid() + (target == 'group')) % 100
    log_path = tmp_path / 'launch.log'
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = rclpy.create_node(f'sigint_probe_{os.getpid()}', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    depth: List[float] = []
    node.create_subscription(Image, '/perception_node/depth', lambda m: depth.append(time.monotonic()),
                             qos_profile_sensor_data)
    with open(log_path, 'w') as log:
        proc = _start_sim_launch(log, domain_id)
        try:
            deadline = time.monotonic() + 240                      # a first start compiles kernels and simulates
            while len(depth) < 3 and time.monotonic() < deadline and proc.poll() is None:
                executor.spin_once(timeout_sec=0.1)
            assert len(depth) >= 3, log_path.read_text()[-4000:]
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown(context=context)
            code, elapsed = _interrupt(proc, target) if proc.poll() is None else (proc.returncode, 0.0)
    _assert_clean_exit(code, elapsed, log_path.read_text())


@pytest.mark.slow
def test_ros2_launch_sim_ends_within_2s_of_sigint_during_startup(tmp_path):
    """Ctrl-C while the perception node is still starting (0.5 s after launch started it)."""
    why = _ros2_launch_ready()
    if why:
        pytest.skip(why)
    log_path = tmp_path / 'launch.log'
    with open(log_path, 'w') as log:
        proc = _start_sim_launch(log, 1 + (os.getpid() + 2) % 100)
        deadline = time.monotonic() + 60
        while 'perception_node-1]: process started' not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        code, elapsed = _interrupt(proc, 'group')
    _assert_clean_exit(code, elapsed, log_path.read_text())


def test_rviz_without_rviz2_fails_before_starting_any_node(monkeypatch):
    """rviz:=true where rviz2 is not installed: a clear error before any node is built (a real `ros2 launch` used
    to start perception_node and sim_event_camera, fail on rviz2 and leave both running without a parent)."""
    _, defaults, nodes = _load_launch_file_with_stubs(monkeypatch)   # the stub package index knows no package
    with pytest.raises(RuntimeError, match=r"rviz:=true, but the ROS package 'rviz2' is not installed"):
        nodes(dict(defaults, sim='true', rviz='true'))
    actions = nodes(dict(defaults, sim='true', rviz='false'))          # without RViz the same launch builds its nodes
    assert [a.kw['executable'] for a in actions] == ['perception_node', 'sim_event_camera', 'rviz2']
    assert actions[-1].kw['condition'] == ('if', 'false')


if MISSING:
    def test_perception_launch_with_launch_pytest():
        pytest.skip(f'{", ".join(MISSING)} not installed (not on PyPI): run with a ROS 2 install that provides '
                    'launch_pytest and a colcon-built realm_ros')
else:
    import launch_pytest
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from realm_testing.perception import Probe, load_packets, write_params

    NAMESPACE = f'launch_test_{os.getpid()}'
    EVENTS = f'/{NAMESPACE}/cam/events'
    INFO = f'/{NAMESPACE}/cam/camera_info'

    @pytest.fixture(scope='module')
    def params_file(tmp_path_factory):
        from realm_ros.pipeline.tiny import write_random_tiny_checkpoints
        d = tmp_path_factory.mktemp('launch')
        ckpts = write_random_tiny_checkpoints(d)
        return write_params(d / 'params.yaml', ckpts, **{'window.count': 30000, 'matches.subsample': 16})

    @launch_pytest.fixture(scope='module')
    def perception_launch(params_file):
        include = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
            launch_arguments={'params_file': str(params_file), 'namespace': NAMESPACE, 'events_topic': EVENTS,
                              'camera_info_topic': INFO, 'device': 'cpu', 'rviz': 'false'}.items())
        return LaunchDescription([include, launch_pytest.actions.ReadyToTest()])

    @pytest.mark.launch(fixture=perception_launch)
    def test_perception_launch_publishes_depth(evt3_bag):
        probe = Probe(f'{NAMESPACE}_probe', f'/{NAMESPACE}/perception_node', EVENTS, INFO)
        try:
            assert probe.wait_for_subscriber(120), 'perception_node did not come up'
            probe.play(load_packets(evt3_bag), rate=0)
            assert probe.wait_for(lambda: len(probe.messages('depth')) > 0, 60)
            msg = probe.messages('depth')[0].msg
            assert (msg.encoding, msg.width, msg.height) == ('32FC1', 640, 480)
        finally:
            probe.close()
