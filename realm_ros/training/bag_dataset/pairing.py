"""Pairing event windows with RGB frames (vectorised over the sorted event times) and train/val splits."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def compute_pairs(t: np.ndarray, frame_stamps: np.ndarray, prev_stamps: np.ndarray, window: str, count: int,
                  duration_ns: int, min_events: int, bound: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event windows ending at each frame stamp (vectorised binary searches over the sorted times ``t``).

    Returns ``(start, end, ok)``: events ``start:end`` (``t <= stamp``) for each frame, and whether the window has at
    least ``min_events`` events. ``prev_stamps`` (previous frame stamp or ``-inf`` as int64 min) bounds the window
    from below when ``bound``.
    """
    end = np.searchsorted(t, frame_stamps, side='right').astype(np.int64)
    if window == 'count':
        start = np.maximum(end - int(count), 0)
    else:
        start = np.searchsorted(t, frame_stamps - int(duration_ns), side='right').astype(np.int64)
    if bound:
        lower = np.searchsorted(t, prev_stamps, side='right').astype(np.int64)
        start = np.maximum(start, lower)
    start = np.minimum(start, end)
    ok = (end - start) >= int(min_events)
    return start, end, ok


def split_pairs(n: int, split: str, val_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) of a bag's ``n`` pairs: all train / all val / last ``val_fraction`` held out."""
    idx = np.arange(n)
    if split == 'train':
        return idx, idx[:0]
    if split == 'val':
        return idx[:0], idx
    n_val = int(math.ceil(n * val_fraction)) if val_fraction > 0 and n >= 2 else 0
    n_val = min(n_val, n - 1) if n > 1 else 0
    return idx[:n - n_val], idx[n - n_val:]


def _evenly(n: int, k: int) -> np.ndarray:
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))
