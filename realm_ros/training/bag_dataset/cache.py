"""The on-disk cache of prepared bags: :class:`PreparedBag` (memory-mapped arrays, pair table, metadata), the
cache-directory key of a bag and its data settings, appenders that turn a full disk into
:class:`~realm_ros.training.errors.StorageError`, and the atomic move of a finished preparation into place."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ..errors import StorageError

PREP_VERSION = 1
_EVENT_FILES = (('x', np.uint16), ('y', np.uint16), ('t', np.int64), ('p', np.uint8))


@dataclass
class PreparedBag:
    """A prepared bag directory: memory-mapped events/frames/targets, pair table, geometry and statistics."""
    directory: str
    meta: Dict[str, Any]
    pairs: Dict[str, np.ndarray]
    _maps: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.meta['bag']

    @property
    def num_pairs(self) -> int:
        return int(len(self.pairs['frame']))

    @property
    def stats(self) -> Dict[str, int]:
        return self.meta['stats']

    def array(self, name: str) -> np.ndarray:
        """Memory-mapped array ``name`` (opened lazily, per process)."""
        if name not in self._maps:
            spec = self.meta['arrays'][name]
            path = os.path.join(self.directory, spec['file'])
            shape = tuple(spec['shape'])
            if int(np.prod(shape)) == 0:
                self._maps[name] = np.zeros(shape, dtype=spec['dtype'])
            else:
                self._maps[name] = np.memmap(path, dtype=spec['dtype'], mode='r', shape=shape)
        return self._maps[name]

    def __getstate__(self) -> Dict[str, Any]:  # memmaps are reopened in worker processes
        return {'directory': self.directory, 'meta': self.meta, 'pairs': self.pairs, '_maps': {}}

    @staticmethod
    def load(directory: str) -> 'PreparedBag':
        with open(os.path.join(directory, 'meta.json'), encoding='utf-8') as fh:
            meta = json.load(fh)
        with np.load(os.path.join(directory, 'pairs.npz')) as z:
            pairs = {k: z[k] for k in z.files}
        return PreparedBag(directory, meta, pairs)


class _Appender:
    """Append raw arrays to a file; :class:`StorageError` on a full disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        try:
            self.fh = open(path, 'wb')
        except OSError as exc:
            raise StorageError(f'cannot write {path!r}: {exc.strerror or exc}') from None

    def write(self, arr: np.ndarray) -> None:
        try:
            self.fh.write(np.ascontiguousarray(arr).tobytes())
        except OSError as exc:
            raise StorageError(f'cannot write {self.path!r} while preparing the bag: '
                               f'{exc.strerror or exc} (disk full?)') from None
        self.count += len(arr)

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError as exc:
            raise StorageError(f'cannot write {self.path!r}: {exc.strerror or exc}') from None


def _bag_identity(path: str) -> List[Any]:
    p = Path(path)
    files = sorted(p.rglob('*')) if p.is_dir() else [p]
    return [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files if f.is_file()]


def _prep_dir(cache_root: str, path: str, kind: str, cfg_dict: Dict[str, Any]) -> str:
    ident = {'version': PREP_VERSION, 'kind': kind, 'path': os.path.abspath(path), 'files': _bag_identity(path),
             'cfg': cfg_dict}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stem = Path(path).name.replace('.', '_') or 'bag'
    return os.path.join(cache_root, f'{stem}-{kind}-{key}')


def _make_tmp_dir(final: str) -> str:
    """A fresh ``<final>.tmp-<host>-<pid>`` directory; leftovers of dead processes on this host are removed."""
    host = socket.gethostname()
    parent = os.path.dirname(final) or '.'
    prefix = f'{os.path.basename(final)}.tmp-{host}-'
    with_prefix = [d for d in os.listdir(parent) if d.startswith(prefix)] if os.path.isdir(parent) else []
    for name in with_prefix:
        try:
            os.kill(int(name[len(prefix):]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except (ValueError, PermissionError):
            pass
    tmp = os.path.join(parent, f'{prefix}{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
    except OSError as exc:
        raise StorageError(f'cannot create {tmp!r}: {exc.strerror or exc}') from None
    return tmp


def _write_meta_and_finish(tmp: str, final: str, meta: Dict[str, Any]) -> None:
    """Write ``meta.json`` into the temporary preparation directory, then move it into place atomically."""
    try:
        with open(os.path.join(tmp, 'meta.json'), 'w', encoding='utf-8') as fh:
            json.dump(meta, fh, indent=1)
    except OSError as exc:
        raise StorageError(f'cannot write {tmp}/meta.json: {exc.strerror or exc}') from None
    _finish_dir(tmp, final)


def _finish_dir(tmp: str, final: str) -> None:
    try:
        os.replace(tmp, final)
    except OSError:
        if os.path.exists(os.path.join(final, 'meta.json')):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def _data_fields(data: Any, names: Sequence[str]) -> Dict[str, Any]:
    d = {n: getattr(data, n) for n in names}
    d['topics'] = vars(data.topics).copy()
    return d
