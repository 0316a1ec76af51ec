"""The ROS-free core imports and works in a process where rclpy and every ROS message package are hidden."""
import subprocess
import sys
import textwrap

from realm_testing.paths import EVT3_BAG, REPO_ROOT

HIDE_ROS = textwrap.dedent('''
    import importlib.abc, sys
    BLOCKED = ('rclpy', 'rosidl_runtime_py', 'std_msgs', 'sensor_msgs', 'geometry_msgs', 'diagnostic_msgs',
               'event_camera_msgs', 'builtin_interfaces', 'lifecycle_msgs', 'launch', 'launch_ros')
    class HideRos(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(f'{name} is hidden for this test')
            return None
    sys.meta_path.insert(0, HideRos())
''')

CORE_WORK = textwrap.dedent('''
    import importlib, pkgutil
    import realm_ros
    CORE = ['realm_ros.common', 'realm_ros.events', 'realm_ros.models', 'realm_ros.geometry', 'realm_ros.training',
            'realm_ros.sim', 'realm_ros.miniature', 'realm_ros.pipeline']
    imported = []
    for pkg_name in CORE:
        pkg = importlib.import_module(pkg_name)
        imported.append(pkg_name)
        for info in pkgutil.walk_packages(getattr(pkg, '__path__', []), pkg_name + '.'):
            importlib.import_module(info.name)
            imported.append(info.name)
    try:
        import rclpy  # noqa: F401
        raise SystemExit('rclpy was importable: the test harness is broken')
    except ImportError:
        pass

    # Real work with the core: decode the recording and build a voxel grid.
    from realm_ros.events import make_decoder, voxel_grid
    from realm_ros.events.bagio import iter_bag_messages
    dec = make_decoder('evt3', 640, 480)
    n = 0
    chunks = []
    for _topic, _type, _t, msg in iter_bag_messages(BAG):
        chunks.append(dec.decode(bytes(msg.events)).events)
        n += 1
        if n == 20:
            break
    from realm_ros.events import EventArray
    ev = EventArray.concat(chunks)
    grid = voxel_grid(ev, bins=5, height=480, width=640, normalization='none')
    assert tuple(grid.shape) == (5, 480, 640), grid.shape
    on = int((ev.p == 1).sum()); off = len(ev) - on
    assert abs(float(grid.sum()) - (on - off)) < 1e-2 * max(1, len(ev)), (float(grid.sum()), on, off)
    print('OK', len(imported), len(ev))
''')


def test_core_imports_and_works_without_rclpy():
    code = HIDE_ROS + f'BAG = {str(EVT3_BAG)!r}\n' + CORE_WORK
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith('OK'), proc.stdout
    _, n_modules, n_events = proc.stdout.split()
    assert int(n_modules) >= 5 and int(n_events) > 0
