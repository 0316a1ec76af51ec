"""Lint as a test, the way ament_flake8 / ament_pep257 tests do in ROS packages: ``colcon test`` and plain pytest
run the project's linter (ruff, settings in pyproject.toml) over the package, its tests, benchmarks and scripts.

CI also runs ``ruff check .`` before the tests; this keeps the check in ``colcon test`` on a ROS install, where the
CI script is not used. Per-file copyright headers are not used (the licence is declared once in LICENSE, NOTICE and
package.xml), so there is no ament_copyright test.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list:
    try:
        import ruff  # noqa: F401 - only to find out whether the module is installed
        return [sys.executable, '-m', 'ruff']
    except ImportError:
        exe = shutil.which('ruff')
        if exe is None:
            pytest.skip('ruff is not installed (pip install -r requirements-test.txt)')
        return [exe]


@pytest.mark.linter
def test_ruff_finds_nothing():
    proc = subprocess.run(_ruff() + ['check', '--no-cache', 'realm_ros', 'test', 'benchmarks', 'scripts', 'setup.py'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
