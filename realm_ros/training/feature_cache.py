"""Optional on-disk cache of frozen-teacher features, indexed by dataset sample.

The teacher (frozen DUNE) sees the same input every epoch, so its features can be computed once and memory-mapped
afterwards. One cache = a directory with one ``.npy`` per feature (``(num_samples, *shape)``, float16 or float32,
opened with :func:`numpy.lib.format.open_memmap`) plus ``filled.npy`` (uint8 per sample) and ``meta.json`` naming what
the features were computed from (teacher SHA-256, dataset fingerprint, input size). A different teacher or dataset gets
a different directory, never stale features.

Exactness: features are always rounded to the cache dtype before use - also on the epoch that computes them - so a run
gives the same numbers whether a sample came from the cache or not (this keeps resumed runs identical to uninterrupted
ones). Different ranks may write different rows of the same files concurrently (single node or shared file system).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Mapping, Sequence, Tuple

import numpy as np
import torch

from .errors import StorageError

__all__ = ['FeatureCache', 'cache_key']


def cache_key(**parts: object) -> str:
    """Short stable hash of keyword parts (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureCache:
    """Memory-mapped per-sample features.

    Args:
        directory: cache directory (created).
        num_samples: rows.
        shapes: ``{name: per-sample shape}``.
        dtype: ``'float16'`` or ``'float32'``.
        meta: what the features depend on (stored in ``meta.json``; a mismatch resets the cache).
    """

    def __init__(self, directory: str, num_samples: int, shapes: Mapping[str, Sequence[int]], dtype: str,
                 meta: Mapping[str, object]) -> None:
        self.directory = directory
        self.num_samples = int(num_samples)
        self.shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self.np_dtype = np.dtype(dtype)
        self.torch_dtype = torch.float16 if self.np_dtype == np.float16 else torch.float32
        want = dict(meta, num_samples=self.num_samples, shapes={k: list(v) for k, v in self.shapes.items()},
                    dtype=str(self.np_dtype))
        try:
            os.makedirs(directory, exist_ok=True)
            meta_path = os.path.join(directory, 'meta.json')
            have = None
            if os.path.exists(meta_path):
                with open(meta_path, encoding='utf-8') as fh:
                    have = json.load(fh)
            fresh = have != json.loads(json.dumps(want, default=str))
            from numpy.lib.format import open_memmap
            self.arrays: Dict[str, np.memmap] = {}
            for name, shape in self.shapes.items():
                path = os.path.join(directory, f'{name}.npy')
                if fresh or not os.path.exists(path):
                    self.arrays[name] = open_memmap(path, mode='w+', dtype=self.np_dtype,
                                                    shape=(self.num_samples, *shape))
                else:
                    self.arrays[name] = open_memmap(path, mode='r+')
            filled_path = os.path.join(directory, 'filled.npy')
            if fresh or not os.path.exists(filled_path):
                self.filled = open_memmap(filled_path, mode='w+', dtype=np.uint8, shape=(self.num_samples,))
                self.filled[:] = 0
                self.filled.flush()
                with open(meta_path, 'w', encoding='utf-8') as fh:
                    json.dump(want, fh, default=str, indent=1)
            else:
                self.filled = open_memmap(filled_path, mode='r+')
        except OSError as exc:
            raise StorageError(f'teacher feature cache {directory!r}: {exc.strerror or exc}') from None

    def round(self, t: torch.Tensor) -> torch.Tensor:
        """Round to the cache precision (and back to float32)."""
        return t.to(self.torch_dtype).float()

    def get_or_compute(self, index: torch.Tensor,
                       compute: Callable[[torch.Tensor], Dict[str, torch.Tensor]],
                       device: torch.device) -> Dict[str, torch.Tensor]:
        """Features for the samples ``index`` (B,): cached rows are read, the rest computed by ``compute(mask)``
        (``mask`` (B,) bool selects the batch rows to compute) and stored."""
        idx = index.cpu().numpy().astype(np.int64)
        have = self.filled[idx].astype(bool)
        out = {name: torch.empty((len(idx), *shape), dtype=torch.float32, device=device)
               for name, shape in self.shapes.items()}
        if have.any():
            rows = idx[have]
            sel = torch.from_numpy(np.nonzero(have)[0]).to(device)
            for name in self.shapes:
                out[name][sel] = torch.from_numpy(np.asarray(self.arrays[name][rows])).to(device).float()
        missing = ~have
        if missing.any():
            mask = torch.from_numpy(missing)
            computed = compute(mask.to(device))
            sel = torch.from_numpy(np.nonzero(missing)[0]).to(device)
            rows = idx[missing]
            try:
                for name in self.shapes:
                    value = computed[name].detach().to(self.torch_dtype)
                    self.arrays[name][rows] = value.cpu().numpy()
                    out[name][sel] = value.float()
                self.filled[rows] = 1
            except OSError as exc:
                raise StorageError(f'teacher feature cache {self.directory!r}: {exc.strerror or exc}') from None
        return out

    def flush(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.filled.flush()

    @property
    def fill_fraction(self) -> float:
        return float(np.asarray(self.filled).mean()) if self.num_samples else 1.0


def feature_shapes(tokens: int, dim: int) -> Dict[str, Tuple[int, ...]]:
    """Shapes of the distillation targets: ``cls`` (D,) and ``patch`` (N, D)."""
    return {'cls': (dim,), 'patch': (tokens, dim)}


__all__.append('feature_shapes')
