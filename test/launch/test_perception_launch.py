"""launch/perception.launch.py: a launch_pytest test that starts it and waits for depth output, plus a static check
of its arguments that runs everywhere.

launch_pytest, launch and launch_ros are not on PyPI: the launch test skips with the reason unless a ROS 2 install
(apt / rosdep) provides them and the package is built with colcon (the launch file starts the installed
``perception_node`` executable).
"""
import ast
import importlib.util
import os
import sys
from pathlib import Path

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


if MISSING:
    def test_perception_launch_with_launch_pytest():
        pytest.skip(f'{", ".join(MISSING)} not installed (not on PyPI): run with a ROS 2 install that provides '
                    'launch_pytest and a colcon-built realm_ros')
else:
    import launch_pytest
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    sys.path.insert(0, str(REPO / 'test' / 'ros'))
    from perception_harness import Probe, load_packets, write_params  # noqa: E402

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
