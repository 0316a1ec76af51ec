"""The shared layer (realm_ros.common): no imports from the rest of the package, one exception base, one schedule,
one stamp conversion, one device resolution."""
import ast
import importlib
import importlib.util
import inspect
import math
import pkgutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

import realm_ros
from realm_ros.common import RealmError, stamp_to_ns, warmup_cosine


def test_common_imports_nothing_else_from_realm_ros():
    code = ('import sys, realm_ros.common, realm_ros.common.metrics, realm_ros.common.device\n'
            'bad = sorted(m for m in sys.modules\n'
            '             if m.startswith("realm_ros.") and not m.startswith("realm_ros.common"))\n'
            'print(bad)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == '[]', out.stdout


def test_common_without_device_does_not_import_torch():
    code = 'import sys, realm_ros.common, realm_ros.common.metrics; print("torch" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == 'False'


def _project_exception_classes():
    found = {}
    for info in pkgutil.walk_packages(realm_ros.__path__, 'realm_ros.'):
        try:
            mod = importlib.import_module(info.name)
        except ImportError as exc:          # nodes without rclpy, optional extras
            if 'rclpy' in str(exc) or 'msgs' in str(exc) or 'launch' in str(exc):
                continue
            raise
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f'{info.name}.{name}'] = obj
    return found


def test_every_project_exception_derives_from_realm_error():
    classes = _project_exception_classes()
    assert 'realm_ros.models.checkpoints.CheckpointError' in classes
    assert 'realm_ros.training.errors.DataError' in classes
    for name in ('realm_ros.events.codecs.UnknownEncodingError', 'realm_ros.tools.events_cli.CliError',
                 'realm_ros.nodes.launch_params.ParamsFileError'):
        assert name in classes, name
    missing = sorted(name for name, cls in classes.items() if not issubclass(cls, RealmError))
    assert not missing, f'exception classes without the RealmError base: {missing}'


def test_exceptions_keep_their_builtin_bases():
    from realm_ros.models.checkpoints import CheckpointError
    from realm_ros.training.config import ConfigError
    from realm_ros.training.errors import TrainingError
    assert issubclass(CheckpointError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(TrainingError, RuntimeError)
    from realm_ros.events.codecs import UnknownEncodingError
    from realm_ros.nodes.launch_params import ParamsFileError
    assert issubclass(UnknownEncodingError, ValueError) and issubclass(ParamsFileError, ValueError)


def test_stamp_to_ns_ros2_and_ros1_stamps():
    assert stamp_to_ns(SimpleNamespace(sec=3, nanosec=7)) == 3_000_000_007
    assert stamp_to_ns(SimpleNamespace(sec=1, nsec=5)) == 1_000_000_005
    assert stamp_to_ns(SimpleNamespace(sec=2**31, nanosec=999_999_999)) == 2**31 * 10**9 + 999_999_999
    from realm_ros.events import stamp_to_ns as events_stamp_to_ns
    from realm_ros.training.bag_dataset import stamp_ns
    assert events_stamp_to_ns is stamp_to_ns
    assert stamp_ns(SimpleNamespace(stamp=SimpleNamespace(sec=4, nanosec=2))) == 4_000_000_002


def test_warmup_cosine_both_ramps():
    # default ramp = warmup: 1.0 at the last warm-up step
    assert warmup_cosine(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1) == warmup_cosine(1000, 100, 10, 0.1)
    # ramp = warmup + 1 (the trainer): continuous into the cosine
    assert warmup_cosine(0, 20, 4, 0.1, ramp=5) == pytest.approx(0.2)
    assert warmup_cosine(3, 20, 4, 0.1, ramp=5) == pytest.approx(0.8)
    assert warmup_cosine(4, 20, 4, 0.1, ramp=5) == pytest.approx(1.0)
    assert warmup_cosine(12, 20, 4, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    # no warm-up: cosine from the first step; degenerate totals do not divide by zero
    assert warmup_cosine(0, 10, 0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(5, 0, 0, 0.25) == pytest.approx(0.25)


def test_trainer_and_miniature_use_the_shared_schedule():
    from realm_ros.miniature import teacher
    from realm_ros.training.trainer import WarmupCosine
    assert teacher.warmup_cosine is warmup_cosine
    s = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert [s(k) for k in range(25)] == [warmup_cosine(k, 20, 4, 0.1, ramp=5) for k in range(25)]


def test_resolve_device_cpu_fallback_and_strict():
    torch = pytest.importorskip('torch')
    from realm_ros.common.device import DeviceError, resolve_device
    assert resolve_device('cpu') == (torch.device('cpu'), None)
    assert resolve_device(None)[0].type in ('cpu', 'cuda')
    with pytest.raises(DeviceError, match="'tpu9'"):
        resolve_device('tpu9')
    assert issubclass(DeviceError, RealmError) and issubclass(DeviceError, ValueError)
    if not torch.cuda.is_available():
        dev, warning = resolve_device('cuda:1')
        assert dev == torch.device('cpu') and 'CUDA is not available' in warning
        with pytest.raises(DeviceError, match='CUDA is not available'):
            resolve_device('cuda', cuda_fallback=False)
        from realm_ros.training.errors import TrainingError
        from realm_ros.training.trainer import resolve_device as trainer_device
        with pytest.raises(TrainingError, match='run.device'):
            trainer_device('cuda')
    else:
        assert resolve_device('cuda', local_rank=torch.cuda.device_count())[0] == torch.device('cuda', 0)
        dev, warning = resolve_device(f'cuda:{torch.cuda.device_count()}')
        assert dev == torch.device('cuda:0') and 'does not exist' in warning


def test_training_does_not_import_miniature():
    code = ('import sys, realm_ros.training, realm_ros.training.heads, realm_ros.training.cli\n'
            'print(sorted(m for m in sys.modules if m.startswith("realm_ros.miniature")))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == '[]', out.stdout
    # every import statement, function-level ones included (docstrings may name miniature modules)
    imports = {(m.__name__, target) for m in _training_modules() for target in _imported_modules(m)}
    bad = sorted((name, target) for name, target in imports if target.startswith('realm_ros.miniature'))
    assert not bad, bad


def _imported_modules(module):
    """Absolute names of the modules every import statement of ``module`` (at any depth) refers to."""
    package = module.__name__ if module.__file__.endswith('__init__.py') else module.__name__.rpartition('.')[0]
    names = []
    for node in ast.walk(ast.parse(open(module.__file__).read())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name('.' * node.level + (node.module or ''), package) if node.level \
                else node.module
            names += [base] + [f'{base}.{a.name}' for a in node.names]
    return names


def test_imported_modules_resolves_relative_imports():
    import realm_ros.training.heads as heads
    found = _imported_modules(heads)
    assert 'realm_ros.training.feature_cache' in found, found       # relative, module level
    assert 'realm_ros.common.metrics' in found, found               # absolute, inside a function


def _training_modules():
    import realm_ros.training as training
    return [importlib.import_module(i.name) for i in pkgutil.walk_packages(training.__path__, 'realm_ros.training.')]
