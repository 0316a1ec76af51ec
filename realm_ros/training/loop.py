"""The optimiser-step mechanics every training loop of realm_ros shares.

Three loops train models here: :class:`realm_ros.training.trainer.Trainer` (distillation and heads: epochs,
accumulation, AMP, DDP, checkpoints, resume) and the miniature teacher and decoder pretrainers
(:mod:`realm_ros.miniature.teacher`, :mod:`realm_ros.miniature.decoder`: a fixed number of steps on simulated
batches). What a step *is* lives here, once:

* :class:`OptimizerStep` - back-propagate a loss unless it is NaN/inf, then one optimiser step: unscale (fp16 gradient
  scaler), clip the gradient norm (or measure it), skip the step when the loss or the gradient norm is not finite
  (counted; :attr:`OptimizerStep.diverged` after ``max_nonfinite``), step, zero the gradients and advance the
  learning-rate schedule (a :class:`torch.optim.lr_scheduler.LambdaLR` over a ``step -> factor`` function such as
  :func:`realm_ros.common.schedule.warmup_cosine`; a skipped step advances it too);
* :class:`MetricWindow` - per-step metrics averaged over the steps between two log records ("log every N steps and
  at the last step"), with the elapsed time and the sample rate of the window;
* :func:`run_steps` - the plain loop of the miniature pretrainers on top of both: ``steps`` times compute the loss
  terms, step, and hand a record to a callback every ``log_every`` steps.

The order of the floating-point operations is part of the contract: the shipped miniature models are reproduced bit
for bit by ``scripts/train_miniature.py`` through these functions (``test/unit/test_training_loop.py`` compares them
with a hand-written AdamW + clip + schedule sequence).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from .errors import DivergenceError

__all__ = ['OptimizerStep', 'StepOutcome', 'MetricWindow', 'run_steps', 'MAX_NONFINITE']

_LOG = logging.getLogger(__name__)

#: Non-finite losses tolerated (each skips its step) before a loop stops with :class:`DivergenceError`.
MAX_NONFINITE = 20


@dataclass(frozen=True)
class StepOutcome:
    """What one :meth:`OptimizerStep.step` did: ``skipped`` (non-finite loss or gradient), the gradient norm before
    clipping (NaN when the loss was not finite) and the learning rate the step used (first parameter group)."""

    skipped: bool
    grad_norm: float
    lr: float


class OptimizerStep:
    """One optimiser step at a time, with gradient clipping, the LR schedule and non-finite handling.

    Args:
        optimizer: the optimiser (its groups' ``lr`` is the peak learning rate).
        params: the parameters whose gradient norm is clipped / reported (in a fixed order: the norm is a float sum).
        schedule: ``step -> factor`` of the peak learning rate (0-based optimiser step).
        grad_clip: clip the total gradient norm to this value; 0 only measures it.
        scaler: an optional :class:`torch.amp.GradScaler` (fp16); when enabled it decides about overflowing steps.
        max_nonfinite: :attr:`diverged` becomes true after this many skipped steps in total.
        name: prefix of the log records (``[name] non-finite loss ...``).
        verbose: log skipped steps (rank 0 of a distributed run).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        schedule: Callable[[int], float],
        grad_clip: float,
        scaler: Optional[Any] = None,
        max_nonfinite: int = MAX_NONFINITE,
        name: str = 'train',
        verbose: bool = True,
    ) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        self.grad_clip = float(grad_clip)
        self.scaler = scaler
        self.max_nonfinite = int(max_nonfinite)
        self.name = name
        self.verbose = verbose
        self.nonfinite = 0
        optimizer.zero_grad(set_to_none=True)  # gradients left over from before the loop are not part of step 0
        # sets every group's lr to peak * schedule(0) now, and to peak * schedule(k) after the k-th step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    @property
    def _scaling(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    @property
    def step_index(self) -> int:
        """0-based index of the next optimiser step (the schedule's position; restored with its state dict)."""
        return int(self.scheduler.last_epoch)

    @property
    def diverged(self) -> bool:
        return self.nonfinite >= self.max_nonfinite

    @staticmethod
    def is_finite(loss: torch.Tensor) -> torch.Tensor:
        """1.0 if ``loss`` is finite else 0.0, as a 0-d float tensor (to all-reduce across processes)."""
        return torch.isfinite(loss.detach()).float().reshape(())

    def backward(self, loss: torch.Tensor, divisor: int = 1, finite: Optional[torch.Tensor] = None) -> bool:
        """Back-propagate ``loss / divisor`` (scaled by the gradient scaler) unless the loss is NaN/inf.

        ``finite`` overrides the check (e.g. the minimum over all processes of :meth:`is_finite`). Returns whether
        the gradients were accumulated; a ``False`` must make the next :meth:`step` a skipped one (``bad=True``).
        """
        if finite is None:
            finite = self.is_finite(loss)
        if not float(finite) > 0:
            return False
        target = loss.float() if divisor == 1 else loss.float() / divisor
        if self.scaler is not None:
            target = self.scaler.scale(target)
        target.backward()
        return True

    def grad_norm(self) -> torch.Tensor:
        """Clip the gradients to ``grad_clip`` (when > 0) and return their total norm before clipping."""
        if self.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        norms = [p.grad.detach().float().norm() for p in self.params if p.grad is not None]
        if not norms:
            return torch.zeros(())
        return torch.norm(torch.stack(norms))

    def step(self, bad: bool = False, where: str = '') -> StepOutcome:
        """Finish the optimiser step over the accumulated gradients (``bad``: a loss of the group was not finite).

        The step is skipped (gradients dropped, weights untouched, counted in :attr:`nonfinite`) when ``bad`` or when
        the gradient norm is not finite without a gradient scaler (with one, the scaler skips overflowing steps
        itself and lowers its scale). The schedule advances either way. ``where`` is added to the skip message.
        """
        index = self.step_index
        skipped = bad
        grad_norm = float('nan')
        if not skipped:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = float(self.grad_norm())
            if not math.isfinite(grad_norm) and not self._scaling:
                skipped = True
        if skipped:
            self.nonfinite += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self._scaling:
                self.scaler.update()  # type: ignore[union-attr]
            if self.verbose:
                _LOG.warning(
                    '[%s] non-finite loss at step %d%s: step skipped (%d/%d)',
                    self.name,
                    index,
                    where,
                    self.nonfinite,
                    self.max_nonfinite,
                )
        else:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        lr = float(self.optimizer.param_groups[0]['lr'])
        with warnings.catch_warnings():  # a skipped step still advances the schedule
            warnings.filterwarnings('ignore', message='Detected call of `lr_scheduler.step')
            self.scheduler.step()
        return StepOutcome(skipped, grad_norm, lr)


class MetricWindow:
    """Per-step metrics summed between two log records; :meth:`pop` returns their means.

    A record is :meth:`due` every ``every`` steps and at step ``total`` (steps counted from 1). The window also
    counts samples and measures its wall time (``samples_per_s``).
    """

    def __init__(self, every: int, total: int) -> None:
        if every < 1:
            raise ValueError(f'log interval must be >= 1, got {every}')
        self.every = int(every)
        self.total = int(total)
        self._reset()

    def _reset(self) -> None:
        self.sums: Dict[str, float] = {}
        self.steps = 0
        self.samples = 0.0
        self.t0 = time.perf_counter()

    def add(self, metrics: Mapping[str, float], samples: float = 0.0) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.samples += samples

    def due(self, step: int) -> bool:
        """Whether a record is due after ``step`` steps in total."""
        return step % self.every == 0 or step == self.total

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.perf_counter() - self.t0)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed

    def pop(self) -> Dict[str, float]:
        """Means of the window's metrics (insertion order kept); starts a new window."""
        means = {k: v / self.steps for k, v in self.sums.items()}
        self._reset()
        return means


def run_steps(
    stepper: OptimizerStep,
    steps: int,
    compute: Callable[[int], Mapping[str, torch.Tensor]],
    log_every: int,
    on_record: Callable[[Dict[str, Any]], None],
) -> List[StepOutcome]:
    """The plain training loop: for ``step`` in ``range(steps)`` back-propagate ``compute(step)['loss']``, take the
    optimiser step and add every term (scalar tensors) to a :class:`MetricWindow`; every ``log_every`` steps and
    after the last one call ``on_record`` with the window's means plus ``step`` (1-based) and ``seconds`` (since the
    start). Raises :class:`DivergenceError` after ``stepper.max_nonfinite`` non-finite losses. Returns the outcomes.
    """
    t0 = time.time()
    window = MetricWindow(log_every, steps)
    outcomes: List[StepOutcome] = []
    for step in range(steps):
        terms = compute(step)
        ok = stepper.backward(terms['loss'])
        outcomes.append(stepper.step(bad=not ok))
        if stepper.diverged:
            raise DivergenceError(
                f'[{stepper.name}] {stepper.nonfinite} steps had a NaN/inf loss or gradient '
                f'(limit {stepper.max_nonfinite}): training stopped at step {step + 1}/{steps}'
            )
        window.add({k: float(v.detach()) for k, v in terms.items()})
        if window.due(step + 1):
            record: Dict[str, Any] = dict(window.pop())
            record.update(step=step + 1, seconds=time.time() - t0)
            on_record(record)
    return outcomes
