"""config/realm.rviz works for a real camera as for the simulator: its Fixed Frame is the node's fixed frame (the
node publishes TF from it), every display subscribes best effort (matches any qos.output) to a topic the node
publishes."""
from pathlib import Path

import yaml

from realm_ros.pipeline.settings import SETTING_BY_NAME

REPO = Path(__file__).resolve().parents[2]
NODE_TOPICS = {'depth', 'depth/color', 'depth/camera_info', 'semantic', 'semantic/color', 'points', 'pose', 'matches',
               'odometry', 'path'}


def _displays(cfg):
    return cfg['Visualization Manager']['Displays']


def test_rviz_fixed_frame_is_the_frame_the_node_publishes_tf_from():
    cfg = yaml.safe_load((REPO / 'config' / 'realm.rviz').read_text())
    assert cfg['Visualization Manager']['Global Options']['Fixed Frame'] == SETTING_BY_NAME['pose.fixed_frame'].default
    assert SETTING_BY_NAME['tf.publish'].default is True


def test_rviz_subscriptions_match_every_output_qos_and_exist():
    cfg = yaml.safe_load((REPO / 'config' / 'realm.rviz').read_text())
    topics = []
    for d in _displays(cfg):
        topic = d.get('Topic')
        if isinstance(topic, dict):
            assert topic['Reliability Policy'] == 'Best Effort', d['Name']      # matches reliable and best effort
            topics.append(topic['Value'])
    assert topics and all(t.startswith('/perception_node/') for t in topics)
    assert {t.split('/perception_node/', 1)[1] for t in topics} <= NODE_TOPICS
    assert {'/perception_node/odometry', '/perception_node/path', '/perception_node/points'} <= set(topics)
