"""sim_event_camera with bad parameters: exit code 1 and one [FATAL] line naming the parameter, no traceback."""
import subprocess
import sys

import pytest

pytest.importorskip('rclpy')


@pytest.mark.parametrize('param, words', [('width:=3', ['width', 'out of range']),
                                          ('trajectory:=sideways', ['trajectory', 'sideways'])])
def test_bad_parameter_is_reported_by_the_logger(child_env, param, words):
    cmd = [sys.executable, '-m', 'realm_ros.nodes.sim_camera_node', '--ros-args', '-p', param]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
    fatal = [line for line in proc.stderr.splitlines() if '[FATAL]' in line]
    assert len(fatal) == 1, proc.stderr
    assert '[sim_event_camera]' in fatal[0] and all(w in fatal[0] for w in words), fatal[0]
