"""Errors of the training tools; each carries the process exit code the command-line tools return.

| exit code | error | meaning |
|---|---|---|
| 2 | :class:`~realm_ros.training.config.ConfigError` | bad configuration or command line |
| 3 | :class:`DataError` | unreadable/truncated bag, missing topic, wrong message type, no usable pairs, bad teacher |
| 4 | :class:`DivergenceError` | too many NaN/inf losses (the last good checkpoint is kept) |
| 5 | :class:`StorageError` | disk full / not writable (the last good checkpoint is intact) |
| 130 | :class:`Interrupted` | SIGINT/SIGTERM: a checkpoint was written, ``--resume`` continues exactly |
"""
from __future__ import annotations

from realm_ros.common.errors import RealmError

__all__ = ['TrainingError', 'DataError', 'DivergenceError', 'StorageError', 'Interrupted', 'EXIT_CONFIG']

EXIT_CONFIG = 2


class TrainingError(RealmError, RuntimeError):
    """Base class; ``exit_code`` is what the command-line tools exit with."""
    exit_code = 1


class DataError(TrainingError):
    """Bad input data (bag, topic, message type, pairs, teacher checkpoint). The message names the input."""
    exit_code = 3


class DivergenceError(TrainingError):
    """Training stopped because too many steps had a non-finite loss."""
    exit_code = 4


class StorageError(TrainingError):
    """Writing an output failed (disk full, quota, permissions); earlier checkpoints are intact."""
    exit_code = 5


class Interrupted(TrainingError):
    """Stopped by a signal after writing a resumable checkpoint."""
    exit_code = 130
