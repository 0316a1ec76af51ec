"""Choosing the torch device from a user's setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``)."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from .errors import RealmError

__all__ = ['DeviceError', 'cpu_has_native_bf16', 'resolve_device']


class DeviceError(RealmError, ValueError):
    """A device setting torch does not know, or CUDA asked for where it is not available (strict mode)."""


def resolve_device(requested: Optional[str], *, local_rank: Optional[int] = None,
                   cuda_fallback: bool = True) -> Tuple[torch.device, Optional[str]]:
    """Map a device setting to a usable :class:`torch.device`; returns ``(device, warning or None)``.

    * ``'auto'`` (or empty): CUDA when available, else CPU.
    * ``'cuda'``: with ``local_rank`` (distributed training) the local rank's GPU (``local_rank % device_count``),
      otherwise the current CUDA device (unindexed ``cuda``). ``'auto'`` resolving to CUDA does the same.
    * CUDA asked for without CUDA: CPU and a warning with ``cuda_fallback`` (nodes, demo, benchmarks), otherwise
      :class:`DeviceError` (training: a run must not silently take days on the CPU).
    * ``'cuda:N'`` past the last GPU: ``cuda:0`` and a warning with ``cuda_fallback``, otherwise :class:`DeviceError`.
    * Anything torch does not parse, or a device type other than cpu/cuda/mps/xpu: :class:`DeviceError`.
    """
    req = (requested or 'auto').strip().lower()
    if req == 'auto':
        req = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        dev = torch.device(req)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f'invalid device {requested!r}: {exc}') from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            if not cuda_fallback:
                raise DeviceError(f'device {requested!r} requested but CUDA is not available')
            return torch.device('cpu'), f'device {requested!r} requested but CUDA is not available: running on CPU'
        count = torch.cuda.device_count()
        if dev.index is None:
            if local_rank is not None:
                return torch.device('cuda', int(local_rank) % max(1, count)), None
            return dev, None
        if dev.index >= count:
            message = f'device {requested!r} does not exist ({count} CUDA devices)'
            if not cuda_fallback:
                raise DeviceError(message)
            return torch.device('cuda:0'), f'{message}: using cuda:0'
    elif dev.type not in ('cpu', 'mps', 'xpu'):
        raise DeviceError(f'unsupported device {requested!r}')
    return dev, None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = '/proc/cpuinfo') -> bool:
    """Whether this CPU computes bfloat16 dot products in hardware (x86 ``avx512_bf16`` or ``amx_bf16``, as Linux
    reports them) and torch's oneDNN backend can use them. Elsewhere (other CPUs, other systems) False: oneDNN would
    emulate bfloat16, which is slower than float32."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith('flags'):
                    flags = set(line.split(':', 1)[1].split())
                    return bool(flags & {'avx512_bf16', 'amx_bf16'})
    except (OSError, AttributeError, RuntimeError):
        pass
    return False
