"""package.xml declares what the code imports on a ROS install (issue 14 item 13: cv_bridge, sensor_msgs_py)."""
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _deps(kind):
    return {e.text.strip() for e in ET.parse(REPO / 'package.xml').getroot().iter(kind)}


def test_official_converters_are_exec_depends():
    exec_deps = _deps('exec_depend')
    assert {'cv_bridge', 'sensor_msgs_py', 'sensor_msgs', 'python3-numpy', 'python3-opencv'} <= exec_deps
    text = (REPO / 'realm_ros' / 'nodes' / 'conversions.py').read_text()
    assert 'from cv_bridge import CvBridge' in text and 'from sensor_msgs_py import point_cloud2' in text
