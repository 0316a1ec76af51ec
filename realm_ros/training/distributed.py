"""Processes and devices of a training run: the ``torchrun`` process group, the device and precision to use, the
per-rank data order that can resume mid-epoch, and the all-reduce helper of
:class:`~realm_ros.training.trainer.Trainer`.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from realm_ros.common.device import DeviceError
from realm_ros.common.device import resolve_device as _resolve_device

from .errors import TrainingError

__all__ = ['DistInfo', 'resolve_device', 'init_distributed', 'resolve_precision', 'ResumableDistributedSampler',
           'all_reduce', 'worker_init']


# ====================================================================================================== devices
@dataclass
class DistInfo:
    """Process-group facts: ``rank``/``world_size``/``local_rank`` (1 process: 0/1/0) and the device to use."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``'auto'`` -> the local rank's CUDA device if available, else CPU; ``'cuda'`` -> the local rank's GPU.

    :func:`realm_ros.common.device.resolve_device` without the CPU fallback: CUDA asked for where there is none (or a
    GPU index past the last one) is a :class:`TrainingError`.
    """
    try:
        return _resolve_device(spec, local_rank=local_rank, cuda_fallback=False)[0]
    except DeviceError as exc:
        raise TrainingError(f'run.device: {exc}') from None


def init_distributed(device_spec: str) -> DistInfo:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, Gloo on CPU)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(device_spec, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return DistInfo(rank, world, local_rank, device)


def resolve_precision(spec: str, device: torch.device) -> Tuple[Optional[torch.dtype], bool]:
    """``(autocast dtype or None, use a gradient scaler)`` for ``run.precision`` on ``device``."""
    if spec == 'auto':
        if device.type != 'cuda':
            return None, False
        spec = 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
    if spec == 'fp32':
        return None, False
    if spec == 'bf16':
        return torch.bfloat16, False
    if spec == 'fp16':
        if device.type != 'cuda':
            raise TrainingError('run.precision fp16 needs CUDA (use bf16 or fp32 on CPU)')
        return torch.float16, True
    raise TrainingError(f'unknown precision {spec!r}')


# ====================================================================================================== data order
class ResumableDistributedSampler(DistributedSampler):
    """:class:`DistributedSampler` (per-epoch seeded shuffle, rank partition) that can start mid-epoch.

    ``set_position(epoch, start)`` selects the epoch's permutation and skips this rank's first ``start`` indices, so a
    resumed run sees exactly the samples the interrupted run had not seen yet, without loading the skipped ones.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.set_epoch(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def worker_init(worker_id: int) -> None:
    """Data workers ignore SIGINT: the main process handles it and writes the checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def all_reduce(value: torch.Tensor, op: str, info: DistInfo) -> torch.Tensor:
    """``value`` reduced ('sum', 'max', 'min') over all processes (itself in a single process), on the CPU."""
    if not info.distributed:
        return value
    t = value.detach().clone().to(info.device)
    dist.all_reduce(t, op={'sum': dist.ReduceOp.SUM, 'max': dist.ReduceOp.MAX, 'min': dist.ReduceOp.MIN}[op])
    return t.cpu()
