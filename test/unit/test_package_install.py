"""`colcon build` installs the package the way `ros2 run` / `ros2 launch` expect, and the executables start."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realm_testing.paths import REPO_ROOT

EXECUTABLES = ['perception_node', 'train_from_bag', 'train_heads', 'sim_event_camera', 'realm-events',
               'realm-convert-checkpoint', 'realm-demo']


def _tracked_copy(dst: Path) -> Path:
    """Copy the package's tracked and new-but-not-ignored files (what a fresh clone would have) to ``dst``."""
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                           cwd=REPO_ROOT, capture_output=True, check=True).stdout.split(b'\0')
    for rel in filter(None, files):
        rel = rel.decode()
        if rel.startswith('test/data/'):
            continue
        src = REPO_ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


@pytest.fixture(scope='module')
def colcon_install(tmp_path_factory):
    if shutil.which('colcon') is None:
        pytest.skip('colcon is not installed (./run.sh test installs colcon-common-extensions)')
    ws = tmp_path_factory.mktemp('colcon_ws')
    src = _tracked_copy(ws / 'src' / 'realm_ros')
    proc = subprocess.run(['colcon', 'build', '--packages-select', 'realm_ros', '--paths', str(src),
                           '--build-base', str(ws / 'build'), '--install-base', str(ws / 'install'),
                           '--event-handlers', 'console_direct-'],
                          cwd=ws, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'colcon build failed:\n{proc.stdout}\n{proc.stderr}'
    return ws / 'install' / 'realm_ros'


def test_colcon_installs_executables_and_share_folders(colcon_install):
    prefix = colcon_install
    for exe in EXECUTABLES:
        path = prefix / 'lib' / 'realm_ros' / exe
        assert path.is_file() and os.access(path, os.X_OK), f'missing executable {path}'
    share = prefix / 'share' / 'realm_ros'
    assert (share / 'package.xml').is_file()
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'realm_ros').is_file()
    for folder, pattern in [('launch', '*.launch.py'), ('config', '*.yaml'), ('config', '*.rviz'), ('models', '*')]:
        assert list((share / folder).glob(pattern)), f'nothing matching {folder}/{pattern} installed in {share}'


def test_installed_executable_prints_help(colcon_install):
    site = next((colcon_install / 'lib').glob('python3*/site-packages'))
    env = dict(os.environ)
    env['PYTHONPATH'] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    for exe in ['realm-events', 'train_from_bag']:
        proc = subprocess.run([sys.executable, str(colcon_install / 'lib' / 'realm_ros' / exe), '--help'],
                              env=env, capture_output=True, text=True, timeout=120, cwd=colcon_install)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert 'usage' in proc.stdout.lower(), proc.stdout
        # the installed copy is the one that ran, not the editable source tree
        probe = subprocess.run([sys.executable, '-c', 'import realm_ros; print(realm_ros.__file__)'], env=env,
                               capture_output=True, text=True, cwd=colcon_install)
        assert str(colcon_install) in probe.stdout, probe.stdout
