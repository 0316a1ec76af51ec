"""Shared pytest configuration for realm_ros.

Layout: test/unit (ROS-free core), test/ros (real rclpy over real DDS, nodes as subprocesses),
test/launch (launch_pytest; skipped with the reason when launch_pytest is not installed).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from realm_testing.paths import EVT3_BAG, EVT3_RAW, MONO_BAG, REPO_ROOT, TEST_DATA  # noqa: F401 (re-exported)

HAVE_RCLPY = importlib.util.find_spec('rclpy') is not None

# The ROS tests talk over real DDS. `./run.sh test` keeps them on this host and off other users' domains; do the same
# for `colcon test` / plain pytest in a ROS workspace (the user's own domain is left alone only if they chose one).
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))


def pytest_configure(config):
    config.addinivalue_line('markers', 'ros: needs rclpy and real DDS (skipped when rclpy is not importable)')
    config.addinivalue_line('markers', 'cuda: needs a CUDA device (skipped otherwise)')
    config.addinivalue_line('markers', 'slow: takes more than ~10 s on 2 cores; the fast tier skips it: -m "not slow"')
    config.addinivalue_line('markers', 'linter: runs the project linter over the sources (as ament_flake8 tests do)')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'test/ros/' in str(item.fspath).replace(os.sep, '/'):
            item.add_marker(pytest.mark.ros)
        if item.get_closest_marker('ros') and not HAVE_RCLPY:
            item.add_marker(pytest.mark.skip(reason='rclpy is not importable: run the tests through ./run.sh test '
                                                    'or source a ROS 2 install'))
        if item.get_closest_marker('cuda') and not _have_cuda():
            item.add_marker(pytest.mark.skip(reason='needs a CUDA device'))


def _have_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.fixture(autouse=True, scope='session')
def _one_torch_thread():
    """One intra-op torch thread for the whole suite: the tensors in tests are small, and on a 2-core machine
    oversubscribed threads (pytest + DDS + nodes in subprocesses) make forwards several times slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: set in the environment of the pytest process that runs test/unit/openvino_cases.py (test_models_compiled.py)
OPENVINO_IN_PROCESS = 'REALM_TEST_OPENVINO_IN_PROCESS'


@pytest.fixture(autouse=True, scope='session')
def _eager_pose_decoder_in_this_process():
    """Pipelines built in the test process itself resolve ``pose.decoder_runtime: auto`` to the eager torch decoder
    (an explicit ``openvino`` is left alone): their checks compare with the exact eager reference, and OpenVINO's
    own tests run in a pytest process of their own (test/unit/test_models_compiled.py says why); the node tests run
    nodes as subprocesses with the default."""
    if os.environ.get(OPENVINO_IN_PROCESS) == '1':
        yield
        return
    try:
        from realm_ros.pipeline.core import RealmPipeline
    except ImportError:
        yield
        return
    original = RealmPipeline._make_decoder_runtime

    def eager_for_auto(self, cfg):
        return None if cfg.pose_decoder_runtime == 'auto' else original(self, cfg)
    RealmPipeline._make_decoder_runtime = eager_for_auto
    yield
    RealmPipeline._make_decoder_runtime = original


@pytest.fixture(scope='session')
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope='session')
def evt3_bag() -> Path:
    return EVT3_BAG


def subprocess_env(**extra: str) -> dict:
    """Environment for child processes (nodes, tools): the current one, unbuffered, plus ``extra``."""
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env.update(extra)
    return env


@pytest.fixture
def child_env():
    return subprocess_env


@pytest.fixture(scope='session')
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (bit-level comparisons of training steps), then restore the count."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
