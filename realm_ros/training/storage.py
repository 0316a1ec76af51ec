"""Durable outputs of a training run: atomic file writes that never leave a half-written checkpoint (disk full ->
:class:`~realm_ros.training.errors.StorageError`, the previous file intact), the checkpoint file format, the RNG
state of a process, and ``metrics.jsonl`` (plus TensorBoard scalars when the package is installed).
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import random
import shutil
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from .errors import StorageError, TrainingError

__all__ = ['CHECKPOINT_FORMAT', 'atomic_write_bytes', 'save_checkpoint_file', 'load_checkpoint_file', 'rng_state',
           'set_rng_state', 'seed_everything', 'MetricsLogger', 'storage_error']

CHECKPOINT_FORMAT = 'realm_ros.training.checkpoint/1'
_LOG = logging.getLogger(__name__)
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


# ====================================================================================================== checkpoints
def storage_error(path: str, exc: OSError, what: str) -> StorageError:
    if exc.errno in _DISK_FULL_ERRNOS:
        reason = 'disk full (or quota / file-size limit reached)'
    else:
        reason = exc.strerror or str(exc)
    return StorageError(f'cannot write {what} {path!r}: {reason}')


def atomic_write_bytes(path: str, data: bytes, min_free_bytes: int = 0, what: str = 'file') -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename).

    Raises :class:`StorageError` when less than ``len(data) + min_free_bytes`` is free or the write fails; the previous
    ``path`` is left untouched and the temporary file removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise storage_error(path, exc, what) from None
    if free < len(data) + min_free_bytes:
        raise StorageError(f'cannot write {what} {path!r}: disk full ({free / 1e6:.1f} MB free, '
                           f'{(len(data) + min_free_bytes) / 1e6:.1f} MB needed)')
    tmp = f'{path}.tmp.{os.getpid()}'
    try:
        with open(tmp, 'wb') as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise storage_error(path, exc, what) from None
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint_file(path: str, state: Mapping[str, Any], min_free_bytes: int = 0) -> None:
    """``torch.save`` ``state`` atomically (see :func:`atomic_write_bytes`)."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    atomic_write_bytes(path, buf.getvalue(), min_free_bytes, 'checkpoint')


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """Load a training checkpoint written by :func:`save_checkpoint_file` (our own trusted file, full pickle)."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=False)
    except FileNotFoundError:
        raise TrainingError(f'--resume: no checkpoint at {path!r}') from None
    except Exception as exc:  # noqa: BLE001 - corrupt pickle / zip
        raise TrainingError(f'--resume: checkpoint {path!r} is unreadable: {exc}') from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise TrainingError(f'--resume: {path!r} is not a realm_ros training checkpoint')
    return state


def rng_state() -> Dict[str, Any]:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ====================================================================================================== metrics
class MetricsLogger:
    """JSON-lines metrics (``metrics.jsonl``) and optional TensorBoard; active on rank 0 only."""

    def __init__(self, out_dir: str, enabled: bool, tensorboard: bool, resume_step: Optional[int] = None) -> None:
        self.enabled = enabled
        self.path = os.path.join(out_dir, 'metrics.jsonl')
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and os.path.exists(self.path):
            self._truncate_after(resume_step)
        elif resume_step is None and os.path.exists(self.path):
            os.remove(self.path)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
                self.tb = SummaryWriter(os.path.join(out_dir, 'tensorboard'))
            except Exception:  # noqa: BLE001 - tensorboard not installed: JSONL only
                self.tb = None
                _LOG.warning('[train] tensorboard is not installed: metrics go to metrics.jsonl only '
                             '(pip install tensorboard for TensorBoard scalars)')

    def _truncate_after(self, step: int) -> None:
        """Drop records newer than the resumed step, so the file reads as one uninterrupted run."""
        kept = []
        with open(self.path, encoding='utf-8') as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get('step', 0) <= step and rec.get('kind') != 'end':
                    kept.append(json.dumps(rec))
        atomic_write_bytes(self.path, ('\n'.join(kept) + ('\n' if kept else '')).encode(), what='metrics file')

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in record.items()}
        try:
            with open(self.path, 'a', encoding='utf-8') as fh:
                fh.write(json.dumps(record) + '\n')
        except OSError as exc:
            raise storage_error(self.path, exc, 'metrics file') from None
        if self.tb is not None:
            kind = record.get('kind', 'train')
            step = int(record.get('step', 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ('step', 'epoch') and not isinstance(value, bool):
                    self.tb.add_scalar(f'{kind}/{key}', value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
