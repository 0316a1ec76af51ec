"""Generic, resumable training loop shared by REALM distillation and head training.

Features: AdamW + linear warm-up + cosine decay; gradient accumulation; gradient clipping; bf16/fp16 autocast on CUDA
(fp16 with a gradient scaler); DistributedDataParallel under ``torchrun`` (distributed sampler, rank-0 logging and
checkpoints, gradient sync only on the last micro-batch of a group); data loading in worker processes; a tqdm progress
bar (loss, learning rate, samples/s, ETA); JSONL metrics (``metrics.jsonl``) and TensorBoard scalars when the
``tensorboard`` package is installed; validation every ``run.val_every`` epochs; atomic checkpoints
(``checkpoints/last.pt`` + optional per-epoch links) every epoch, at ``run.max_steps`` and on SIGINT/SIGTERM; exact
resume (trainable weights, optimiser, scheduler, gradient scaler, Python/numpy/torch/CUDA RNG of every rank, epoch and
position inside the epoch); non-finite losses skipped and counted (too many -> :class:`DivergenceError`, no new
checkpoint); disk full -> :class:`StorageError` with the previous checkpoint intact.

The model-specific part is a :class:`TrainTask`: it owns the modules, turns a batch into a loss dictionary, computes
validation sums and exports the final artefact. The optimiser step itself (clip, schedule, non-finite skip, metric
window) is :mod:`realm_ros.training.loop`, shared with the miniature pretrainers; process groups, devices and the
resumable sampler are in :mod:`realm_ros.training.distributed`; atomic checkpoint files, RNG state and
``metrics.jsonl`` in :mod:`realm_ros.training.storage` (their names are re-exported here).
"""
from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from realm_ros.common.schedule import warmup_cosine

from .distributed import (DistInfo, ResumableDistributedSampler, all_reduce, init_distributed, resolve_device,
                          resolve_precision, worker_init)
from .errors import DivergenceError, Interrupted, TrainingError
from .loop import MetricWindow, OptimizerStep, StepOutcome
from .storage import (CHECKPOINT_FORMAT, MetricsLogger, atomic_write_bytes, load_checkpoint_file, rng_state,
                      save_checkpoint_file, seed_everything, set_rng_state, storage_error)

__all__ = ['TrainTask', 'DistInfo', 'init_distributed', 'resolve_device', 'resolve_precision',
           'ResumableDistributedSampler', 'WarmupCosine', 'atomic_write_bytes', 'save_checkpoint_file',
           'load_checkpoint_file', 'MetricsLogger', 'Trainer', 'CHECKPOINT_FORMAT', 'seed_everything', 'StopFlag']

_LOG = logging.getLogger(__name__)


# ====================================================================================================== task API
class TrainTask(abc.ABC):
    """What the :class:`Trainer` needs from a model. Subclasses implement every abstract method."""

    name = 'task'

    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The module whose trainable parameters are optimised (wrapped in DDP when distributed)."""

    @abc.abstractmethod
    def set_module(self, module: nn.Module) -> None:
        """Receive the (possibly DDP-wrapped) module to call in :meth:`train_step`."""

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook, empty by default
        """Apply per-epoch curricula (mask dilation, token drop)."""

    @abc.abstractmethod
    def train_step(self, batch: Any, epoch: int) -> Dict[str, torch.Tensor]:
        """Forward a training batch (under autocast); must return ``loss`` (scalar) and ``n`` (samples)."""

    @abc.abstractmethod
    def val_step(self, batch: Any, epoch: int) -> Dict[str, torch.Tensor]:
        """Validation *sums* for a batch (scalars, summed over ranks by the trainer)."""

    @abc.abstractmethod
    def val_summary(self, sums: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """Turn summed validation tensors (float64, summed over batches and ranks) into metrics; ``loss`` (lower
        is better) selects the best epoch."""

    @abc.abstractmethod
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Trainable state for checkpoints."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`."""

    def fingerprint(self) -> Dict[str, Any]:
        """What must not change between a checkpoint and ``--resume`` (architecture, teacher hash, data)."""
        return {}

    @abc.abstractmethod
    def export(self, out_dir: str, metrics: Mapping[str, Any]) -> str:
        """Write the final artefact (rank 0 only) and return its path."""

# ====================================================================================================== schedule
class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay from 1 to ``min_ratio`` at ``total``."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup = max(0, int(warmup))
        self.total = max(1, int(total))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        # the ramp ends where the cosine starts (ramp = warmup + 1)
        return warmup_cosine(step, self.total, self.warmup, self.min_ratio, ramp=self.warmup + 1)


# ====================================================================================================== signals
class StopFlag:
    """SIGINT/SIGTERM -> finish the current optimiser step, checkpoint and stop; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ''
        self._old: Dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        _LOG.warning('[train] %s received: finishing the current step and writing a checkpoint (press Ctrl-C again '
                     'to abort without saving)', self.signal_name)

    def __enter__(self) -> 'StopFlag':
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

# ====================================================================================================== trainer
def _collate_default(samples: List[Any]) -> Any:
    return torch.utils.data.default_collate(samples)


class Trainer:
    """Runs a :class:`TrainTask` over a training and a validation dataset.

    Args:
        task: the model-specific part.
        train_set, val_set: map-style datasets (``val_set`` may be empty / None).
        optim, run: :class:`~realm_ros.training.config.OptimConfig` / ``RunConfig``.
        out_dir: output directory (``checkpoints/``, ``metrics.jsonl``).
        info: process group facts from :func:`init_distributed`.
        config_dict: the full configuration (stored in checkpoints and metrics).
        num_workers: data-loading worker processes.
        collate_fn: batch collation.
    """

    def __init__(self, task: TrainTask, train_set: Dataset, val_set: Optional[Dataset], optim: Any, run: Any,
                 out_dir: str, info: DistInfo, config_dict: Mapping[str, Any], num_workers: int = 0,
                 collate_fn: Callable[[List[Any]], Any] = _collate_default) -> None:
        self.task = task
        self.train_set = train_set
        self.val_set = val_set if val_set is not None and len(val_set) > 0 else None
        self.optim_cfg = optim
        self.run_cfg = run
        self.out_dir = out_dir
        self.info = info
        self.config_dict = dict(config_dict)
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.ckpt_dir = os.path.join(out_dir, 'checkpoints')
        self.last_path = os.path.join(self.ckpt_dir, 'last.pt')
        self.stop = StopFlag()
        self.amp_dtype, use_scaler = resolve_precision(run.precision, info.device)
        self.scaler = torch.amp.GradScaler('cuda', enabled=use_scaler)
        # state
        self.epoch = 0
        self.micro_in_epoch = 0
        self.global_step = 0
        self.best_val: Optional[float] = None
        self.last_val: Dict[str, float] = {}
        self.history: List[float] = []  # per-step training loss (for callers and tests)
        self.step_callback: Optional[Callable[['Trainer'], None]] = None

        module = task.module().to(info.device)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise TrainingError('the task has no trainable parameters')
        self.params = params
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel
            # permuted (channels-last) conv gradients only cost a copy in the reducer
            warnings.filterwarnings('ignore', message='Grad strides do not match bucket view strides')
            ddp = DistributedDataParallel(module, device_ids=[info.device.index] if info.device.type == 'cuda'
                                          else None, find_unused_parameters=False)
            self.wrapped: nn.Module = ddp
        else:
            self.wrapped = module
        task.set_module(self.wrapped)
        fused = info.device.type == 'cuda'
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas),
                                           weight_decay=optim.weight_decay, **({'fused': True} if fused else {}))
        self.sampler = ResumableDistributedSampler(train_set, info.world_size, info.rank, shuffle=True,
                                                   seed=run.seed)
        self.micro_per_epoch = math.ceil(self.sampler.num_samples / optim.batch_size)
        if self.micro_per_epoch == 0:
            raise TrainingError('the training set is empty')
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / optim.accumulation)
        self.total_steps = self.steps_per_epoch * optim.epochs
        if run.max_steps:
            self.total_steps = min(self.total_steps, run.max_steps)
        warmup = optim.warmup_steps if optim.warmup_steps >= 0 else int(round(0.05 * self.total_steps))
        self.schedule = WarmupCosine(warmup, self.total_steps, optim.min_lr_ratio)
        self.stepper = OptimizerStep(self.optimizer, params, self.schedule, optim.grad_clip, self.scaler,
                                     run.max_nonfinite, name=task.name, verbose=info.is_main)
        self.scheduler = self.stepper.scheduler

    @property
    def nonfinite(self) -> int:
        """Optimiser steps skipped so far for a NaN/inf loss or gradient (restored on resume)."""
        return self.stepper.nonfinite

    @nonfinite.setter
    def nonfinite(self, value: int) -> None:
        self.stepper.nonfinite = int(value)

    # -------------------------------------------------------------------------------------------------- helpers
    def _loader(self, dataset: Dataset, sampler: Any, shuffle_seed: int) -> DataLoader:
        gen = torch.Generator()
        gen.manual_seed(shuffle_seed)  # keeps the global RNG untouched by DataLoader iterator creation
        return DataLoader(dataset, batch_size=self.optim_cfg.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=self.collate_fn,
                          pin_memory=self.info.device.type == 'cuda', worker_init_fn=worker_init,
                          generator=gen, persistent_workers=False,
                          prefetch_factor=2 if self.num_workers > 0 else None)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.info.device.type, dtype=self.amp_dtype)

    def _progress(self) -> Any:
        mode = self.run_cfg.progress
        enabled = self.info.is_main and (mode == 'on' or (mode == 'auto' and sys.stderr.isatty()))
        if not enabled:
            return None
        from tqdm import tqdm
        return tqdm(total=self.total_steps, initial=self.global_step, unit='step', dynamic_ncols=True,
                    desc=self.task.name, file=sys.stderr)

    def _log(self, msg: str, level: int = logging.INFO) -> None:
        if self.info.is_main:
            _LOG.log(level, '[%s] %s', self.task.name, msg)

    # -------------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> Dict[str, Any]:
        rng = rng_state()
        if self.info.distributed:
            gathered: List[Any] = [None] * self.info.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        return {
            'format': CHECKPOINT_FORMAT, 'task': self.task.name, 'model': self.task.state_dict(),
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict(), 'rng': rngs, 'epoch': self.epoch,
            'micro_in_epoch': self.micro_in_epoch, 'global_step': self.global_step, 'nonfinite': self.nonfinite,
            'best_val': self.best_val, 'last_val': self.last_val, 'world_size': self.info.world_size,
            'batch_size': self.optim_cfg.batch_size, 'accumulation': self.optim_cfg.accumulation,
            'train_samples': len(self.train_set), 'fingerprint': self.task.fingerprint(),
            'config': self.config_dict, 'time': time.time(),
        }

    def save_checkpoint(self, epoch_end: bool) -> None:
        """Write ``last.pt`` (all ranks take part in gathering RNG states; rank 0 writes)."""
        state = self.checkpoint_state()
        if not self.info.is_main:
            return
        min_free = int(self.run_cfg.min_free_disk_mb * 1e6)
        save_checkpoint_file(self.last_path, state, min_free)
        if epoch_end and self.run_cfg.keep_checkpoints > 0:
            epoch_path = os.path.join(self.ckpt_dir, f'epoch_{self.epoch:04d}.pt')
            with contextlib.suppress(OSError):
                if os.path.exists(epoch_path):
                    os.remove(epoch_path)
            try:
                os.link(self.last_path, epoch_path)
            except OSError:
                try:
                    shutil.copyfile(self.last_path, epoch_path)
                except OSError as exc:
                    raise storage_error(epoch_path, exc, 'checkpoint') from None
            epochs = sorted(f for f in os.listdir(self.ckpt_dir) if f.startswith('epoch_') and f.endswith('.pt'))
            for old in epochs[:-self.run_cfg.keep_checkpoints]:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.ckpt_dir, old))

    def resume(self) -> None:
        """Restore everything from ``last.pt`` (raises :class:`TrainingError` on an incompatible checkpoint)."""
        state = load_checkpoint_file(self.last_path)
        if state.get('task') != self.task.name:
            raise TrainingError(f'--resume: {self.last_path!r} is a {state.get("task")!r} checkpoint, '
                                f'not {self.task.name!r}')
        mine = self.task.fingerprint()
        theirs = state.get('fingerprint', {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise TrainingError(f'--resume: {self.last_path!r} was written for a different setup '
                                f'(changed: {", ".join(diff)})')
        for key in ('batch_size', 'train_samples', 'world_size'):
            ours = {'batch_size': self.optim_cfg.batch_size, 'train_samples': len(self.train_set),
                    'world_size': self.info.world_size}[key]
            if state.get(key) != ours:
                self._log(f'warning: {key} changed since the checkpoint ({state.get(key)} -> {ours}); '
                          f'the resumed data order is not identical to an uninterrupted run', logging.WARNING)
        self.task.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
        rngs = state['rng']
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:
            seed_everything(self.run_cfg.seed + 7919 * self.info.rank + state['global_step'])
        self.epoch = int(state['epoch'])
        self.micro_in_epoch = int(state['micro_in_epoch'])
        self.global_step = int(state['global_step'])
        self.nonfinite = int(state['nonfinite'])
        self.best_val = state.get('best_val')
        self.last_val = dict(state.get('last_val') or {})
        if self.micro_in_epoch >= self.micro_per_epoch:
            self.epoch += 1
            self.micro_in_epoch = 0
        self._log(f'resumed from {self.last_path}: epoch {self.epoch}, step {self.global_step}')

    # -------------------------------------------------------------------------------------------------- validation
    def validate(self, epoch: int) -> Dict[str, float]:
        if self.val_set is None:
            return {}
        sampler = DistributedSampler(self.val_set, num_replicas=self.info.world_size, rank=self.info.rank,
                                     shuffle=False, drop_last=False)
        loader = self._loader(self.val_set, sampler, self.run_cfg.seed + 1)
        sums: Dict[str, torch.Tensor] = {}
        self.wrapped.eval()
        with torch.no_grad():
            for batch in loader:
                with self._autocast():
                    out = self.task.val_step(batch, epoch)
                for key, value in out.items():
                    sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64)) + value.detach().double().cpu()
        self.wrapped.train()
        if self.info.distributed:  # every rank has the same keys (each rank holds at least one sample)
            sums = {k: all_reduce(sums[k], 'sum', self.info) for k in sorted(sums)}
        return self.task.val_summary(sums)

    # -------------------------------------------------------------------------------------------------- main loop
    def _record_step(self, group_losses: List[Dict[str, float]], outcome: StepOutcome, epoch: int,
                     window: MetricWindow, bar: Any, logger: MetricsLogger) -> None:
        """Per-step bookkeeping: the step's metrics (mean over its micro-batches) into :attr:`history`, the progress
        bar and the metric window; a ``train`` record every ``run.log_every`` steps and at the last step."""
        if group_losses:
            step_metrics = {k: float(np.mean([g[k] for g in group_losses if k in g]))
                            for k in group_losses[0] if k != 'n'}
            n_samples = sum(g.get('n', 0.0) for g in group_losses)
        else:
            step_metrics, n_samples = {'loss': float('nan')}, 0.0
        self.history.append(step_metrics.get('loss', float('nan')))
        window.add(step_metrics, n_samples * self.info.world_size)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_metrics.get('loss', float('nan')):.4f}", lr=f'{outcome.lr:.2e}',
                            sps=f'{window.samples_per_s:.1f}', epoch=epoch)
        if window.due(self.global_step):
            rec: Dict[str, Any] = {'kind': 'train', 'step': self.global_step, 'epoch': epoch, 'lr': outcome.lr,
                                   'grad_norm': outcome.grad_norm, 'samples_per_s': window.samples_per_s,
                                   'nonfinite': self.nonfinite}
            rec.update(window.pop())
            logger.log(rec)

    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train until the last epoch or ``run.max_steps``; returns the final metrics and export path."""
        if self.info.is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        if resume:
            self.resume()
        else:
            seed_everything(self.run_cfg.seed + 7919 * self.info.rank)
        logger = MetricsLogger(self.out_dir, self.info.is_main, self.run_cfg.tensorboard,
                               resume_step=self.global_step if resume else None)
        if not resume:
            logger.log({'kind': 'start', 'step': 0, 'task': self.task.name, 'train_samples': len(self.train_set),
                        'val_samples': len(self.val_set) if self.val_set is not None else 0,
                        'world_size': self.info.world_size, 'total_steps': self.total_steps,
                        'effective_batch': self.optim_cfg.batch_size * self.optim_cfg.accumulation
                        * self.info.world_size})
        bar = self._progress()
        accum = self.optim_cfg.accumulation
        window = MetricWindow(self.run_cfg.log_every, self.total_steps)
        finished = self.global_step >= self.total_steps
        try:
            with self.stop:
                self.wrapped.train()
                while not finished and self.epoch < self.optim_cfg.epochs:
                    epoch = self.epoch
                    self.task.on_epoch_start(epoch)
                    self.sampler.set_position(epoch, self.micro_in_epoch * self.optim_cfg.batch_size)
                    loader = self._loader(self.train_set, self.sampler, self.run_cfg.seed * 1000003 + epoch)
                    group_losses: List[Dict[str, float]] = []
                    group_bad = False
                    for batch in loader:
                        m = self.micro_in_epoch
                        group_start = (m // accum) * accum
                        group_size = min(accum, self.micro_per_epoch - group_start)
                        last_in_group = (m - group_start) == group_size - 1
                        sync = (contextlib.nullcontext() if last_in_group or not self.info.distributed
                                else self.wrapped.no_sync())
                        with sync:
                            with self._autocast():
                                out = self.task.train_step(batch, epoch)
                            loss = out['loss']
                            finite = all_reduce(self.stepper.is_finite(loss).cpu(), 'min', self.info)
                            if self.stepper.backward(loss, group_size, finite):
                                group_losses.append({k: float(v.detach()) for k, v in out.items()
                                                     if v.dim() == 0})
                            else:
                                group_bad = True
                        self.micro_in_epoch += 1
                        if not last_in_group:
                            continue
                        outcome = self.stepper.step(group_bad, where=f' (epoch {epoch})')
                        self.global_step += 1
                        group_bad = False
                        self._record_step(group_losses, outcome, epoch, window, bar, logger)
                        group_losses = []
                        if self.stepper.diverged:
                            kept = (f'the last good checkpoint {self.last_path!r} was kept'
                                    if os.path.exists(self.last_path) else 'no checkpoint had been written yet')
                            logger.log({'kind': 'diverged', 'step': self.global_step, 'epoch': epoch})
                            raise DivergenceError(
                                f'{self.nonfinite} steps had a NaN/inf loss (run.max_nonfinite = '
                                f'{self.run_cfg.max_nonfinite}): training stopped; {kept}')
                        if self.step_callback is not None:
                            self.step_callback(self)
                        stop = torch.tensor(1.0 if self.stop.requested else 0.0)
                        if float(all_reduce(stop, 'max', self.info)) > 0:
                            self.save_checkpoint(epoch_end=False)
                            logger.log({'kind': 'interrupted', 'step': self.global_step, 'epoch': epoch})
                            raise Interrupted(f'stopped by {self.stop.signal_name or "request"} at step '
                                              f'{self.global_step} (epoch {epoch}); checkpoint written to '
                                              f'{self.last_path!r}: rerun with --resume to continue')
                        if self.global_step >= self.total_steps:
                            finished = True
                            break
                    # ------------------------------------------------------------------ end of epoch / max_steps
                    epoch_done = self.micro_in_epoch >= self.micro_per_epoch
                    val_due = (self.run_cfg.val_every > 0 and
                               ((epoch + 1) % self.run_cfg.val_every == 0 or epoch + 1 == self.optim_cfg.epochs
                                or finished))
                    if val_due and (epoch_done or finished):
                        metrics = self.validate(epoch)
                        if metrics:
                            self.last_val = metrics
                            if self.best_val is None or metrics.get('loss', math.inf) < self.best_val:
                                self.best_val = metrics.get('loss', math.inf)
                            logger.log({'kind': 'val', 'step': self.global_step, 'epoch': epoch, **metrics})
                            self._log('validation epoch %d: %s' % (epoch, ', '.join(
                                f'{k} {v:.4f}' for k, v in metrics.items())))
                    if epoch_done:
                        self.epoch += 1
                        self.micro_in_epoch = 0
                    self.save_checkpoint(epoch_end=epoch_done)
                    if epoch_done:
                        logger.log({'kind': 'epoch', 'step': self.global_step, 'epoch': epoch})
        finally:
            if bar is not None:
                bar.close()
        result: Dict[str, Any] = {'steps': self.global_step, 'epochs': self.epoch, 'nonfinite': self.nonfinite,
                                  'val': self.last_val, 'best_val_loss': self.best_val,
                                  'checkpoint': self.last_path}
        if self.info.is_main:
            result['export'] = self.task.export(self.out_dir, {'val': self.last_val, 'steps': self.global_step,
                                                              'epochs': self.epoch, 'nonfinite': self.nonfinite})
            logger.log({'kind': 'end', 'step': self.global_step, 'export': result['export']})
            self._log(f"done: {self.global_step} steps, exported {result['export']}")
        logger.close()
        if self.info.distributed:
            dist.barrier()
        return result
