"""README "With a real ROS 2 install" (issue 14 item 12): the steps an integrator needs on Ubuntu 24.04 are there and
agree with the repository (test requirements before colcon test, torch pin, PEP 668 venv, numpy constraints,
nested interface package, `ros2 run` for every tool)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def section():
    text = (REPO / 'README.md').read_text()
    start = text.index('## With a real ROS 2 install')
    return text[start:text.index('\n## ', start + 5)]


def test_test_requirements_are_installed_before_colcon_test():
    s = section()
    pip = s.index('-r src/realm_ros/requirements-test.txt')
    assert pip < s.index('colcon test')
    assert "No module named 'hypothesis'" in s


def test_torch_pin_matches_the_pypi_setup():
    pinned = set(re.findall(r'torch==([0-9.]+)', (REPO / 'scripts' / 'setup_env.sh').read_text()))
    assert len(pinned) == 1
    assert f'pip install torch=={pinned.pop()} --index-url' in section()


def test_pep668_venv_and_numpy_constraints():
    s = section()
    assert 'PEP 668' in s and 'python3 -m venv --system-site-packages' in s and 'COLCON_IGNORE' in s
    assert 'python3 -m colcon build' in s and 'PIP_BREAK_SYSTEM_PACKAGES' in s
    assert '-c src/realm_ros/constraints-ros.txt' in s
    constraints = [ln.split('#')[0].strip() for ln in (REPO / 'constraints-ros.txt').read_text().splitlines()]
    assert 'numpy<2' in constraints and 'opencv-python-headless<4.12' in constraints
    required = [ln.split('#')[0].strip() for ln in (REPO / 'requirements-ml.txt').read_text().splitlines()]
    assert any(r.startswith('opencv-python-headless') for r in required)   # the package the constraint bounds


def test_nested_interface_package_is_built_up_to_realm_ros():
    s = section()
    assert 'colcon build --packages-up-to realm_ros' in s
    assert 'ln -s realm_ros/interfaces/event_camera_msgs src/event_camera_msgs' in s
    assert (REPO / 'interfaces' / 'event_camera_msgs' / 'package.xml').is_file()


def test_every_tool_is_shown_with_ros2_run():
    setup = (REPO / 'setup.py').read_text()
    scripts = re.findall(r"'([\w-]+) = realm_ros\.", setup)
    tools = [name for name in scripts if name not in ('perception_node', 'sim_event_camera')]   # started by launch
    assert {'realm-events', 'realm-convert-checkpoint', 'train_heads', 'realm-demo', 'train_from_bag'} <= set(tools)
    s = section()
    for name in tools:
        assert f'ros2 run realm_ros {name}' in s, name
