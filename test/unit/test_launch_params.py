"""perception.launch.py parameter merging (issue 14 item 11): with sim:=true a user's params_file keeps its
window.* (and checkpoints); the sim defaults fill only what nobody set."""
from pathlib import Path

import pytest

from realm_ros.nodes.launch_params import (ParamsFileError, params_file_values, perception_parameters,
                                           user_parameter_names)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = str(REPO / 'config' / 'perception.yaml')
SIM = {'checkpoints.realm': 'package://realm_ros/models/mini_realm.safetensors',
       'checkpoints.depth_head': 'package://realm_ros/models/mini_depth.safetensors',
       'window.mode': 'time', 'window.duration_ms': 34.0}


def write(tmp_path, text, name='user.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_sim_defaults_override_the_shipped_file_only():
    params = perception_parameters({'params_file': SHIPPED, 'sim': 'true'}, SHIPPED, SIM)
    assert params[0] == SHIPPED
    assert params[1] == dict(SIM, use_sim_time=False)


def test_user_window_wins_over_the_sim_defaults(tmp_path):
    user = write(tmp_path, '/**:\n  ros__parameters:\n    window.mode: count\n    window.count: 30000\n')
    params = perception_parameters({'params_file': user}, SHIPPED, SIM)
    assert params[0] == user
    overrides = params[1]
    assert 'window.mode' not in overrides and 'window.duration_ms' not in overrides   # the file's window is kept
    assert overrides['checkpoints.realm'] == SIM['checkpoints.realm']                # not set by the file


def test_one_window_parameter_keeps_the_whole_window_group(tmp_path):
    user = write(tmp_path, 'perception_node:\n  ros__parameters:\n    window:\n      duration_ms: 10.0\n')
    overrides = perception_parameters({'params_file': user}, SHIPPED, SIM)[1]
    assert not any(k.startswith('window.') for k in overrides)


def test_user_checkpoints_win_and_empty_values_do_not_count(tmp_path):
    user = write(tmp_path, '/**:\n  ros__parameters:\n    checkpoints.realm: /data/realm.safetensors\n'
                           '    checkpoints.depth_head: ""\n')
    overrides = perception_parameters({'params_file': user}, SHIPPED, SIM)[1]
    assert 'checkpoints.realm' not in overrides
    assert overrides['checkpoints.depth_head'] == SIM['checkpoints.depth_head']
    assert overrides['window.mode'] == 'time'


def test_launch_arguments_beat_everything(tmp_path):
    user = write(tmp_path, '/**:\n  ros__parameters:\n    checkpoints.realm: /data/realm.safetensors\n')
    overrides = perception_parameters({'params_file': user, 'realm_checkpoint': '/arg/realm.safetensors',
                                       'device': 'cpu', 'use_sim_time': 'true', 'image_topic': '/rgb'},
                                      SHIPPED, SIM)[1]
    assert overrides['checkpoints.realm'] == '/arg/realm.safetensors'
    assert overrides['device'] == 'cpu' and overrides['use_sim_time'] is True
    assert overrides['keyframe.source'] == 'image'


def test_without_sim_nothing_is_added(tmp_path):
    assert perception_parameters({'params_file': SHIPPED}, SHIPPED, None) == [SHIPPED, {'use_sim_time': False}]
    assert perception_parameters({}, SHIPPED, None) == [{'use_sim_time': False}]


def test_node_keys_select_the_right_node(tmp_path):
    text = ('/other_node:\n  ros__parameters:\n    window.mode: count\n'
            '/cam1/perception_node:\n  ros__parameters:\n    window.count: 5\n'
            '/**/perception_node:\n  ros__parameters:\n    device: cpu\n')
    user = write(tmp_path, text)
    assert params_file_values(user, 'perception_node', 'cam1') == {'window.count': 5, 'device': 'cpu'}
    assert params_file_values(user, 'perception_node', '') == {'device': 'cpu'}
    assert user_parameter_names(user, SHIPPED, 'perception_node', '') == {'device'}
    # /cam1 sets a window: the sim window is not forced on it; the un-namespaced node gets the sim window
    assert 'window.mode' not in perception_parameters({'params_file': user, 'namespace': 'cam1'}, SHIPPED, SIM)[1]
    assert perception_parameters({'params_file': user}, SHIPPED, SIM)[1]['window.mode'] == 'time'


@pytest.mark.parametrize('text', ['[1, 2]', 'node: 3\n', 'a: {b: 1}\n', ': : :\n  - ['])
def test_bad_params_file_is_named(tmp_path, text):
    user = write(tmp_path, text, 'bad.yaml')
    with pytest.raises(ParamsFileError, match='bad.yaml'):
        perception_parameters({'params_file': user}, SHIPPED, SIM)
    with pytest.raises(ParamsFileError, match='cannot be read'):
        params_file_values(str(tmp_path / 'missing.yaml'))
