"""The learning-rate schedule shared by every training loop: linear warm-up, then cosine decay."""
from __future__ import annotations

import math
from typing import Optional

__all__ = ['warmup_cosine']


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float, *, ramp: Optional[int] = None) -> float:
    """Learning-rate factor at optimiser step ``step`` (0-based).

    During the first ``warmup`` steps the factor rises linearly as ``(step + 1) / ramp``; from step ``warmup`` on it
    follows ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup) / (total - warmup)``
    clipped to [0, 1], so it reaches ``min_ratio`` at ``total`` and stays there.

    ``ramp`` defaults to ``warmup``: the factor reaches 1 at the last warm-up step. ``ramp = warmup + 1`` makes the
    ramp end exactly where the cosine starts (the distillation / head trainer uses that; the miniature teacher and
    decoder use the default - both settings are part of how the shipped miniature weights were made).
    """
    warmup = max(0, int(warmup))
    if step < warmup:
        return (step + 1) / max(1, warmup if ramp is None else int(ramp))
    progress = min(1.0, (step - warmup) / max(1, int(total) - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
