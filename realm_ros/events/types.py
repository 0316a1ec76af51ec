"""Plain numpy containers for decoded events and triggers.

``EventArray`` is the currency of the whole package: four parallel arrays
``x`` (uint16, column), ``y`` (uint16, row), ``t`` (int64, nanoseconds) and ``p`` (uint8, 1 = ON / brighter,
0 = OFF). What the time stamps mean (decoded sensor time or ROS time) depends on who produced the array; the
codecs document it (docs/formats.md#encodings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

X_DTYPE = np.uint16
Y_DTYPE = np.uint16
T_DTYPE = np.int64
P_DTYPE = np.uint8


def _as(arr: Any, dtype: Any) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != dtype:
        a = a.astype(dtype)
    return a.reshape(-1)


@dataclass
class EventArray:
    """Change-detection events as four equally long arrays.

    Attributes:
        x: uint16 column index (0 = left).
        y: uint16 row index (0 = top).
        t: int64 time stamps in nanoseconds.
        p: uint8 polarity, 1 = ON (brighter), 0 = OFF.
    """

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x)
        if not (len(self.y) == n and len(self.t) == n and len(self.p) == n):
            raise ValueError(
                f'EventArray fields differ in length: x {len(self.x)}, y {len(self.y)}, t {len(self.t)}, '
                f'p {len(self.p)}')

    @classmethod
    def _trusted(cls, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray) -> 'EventArray':
        """Internal constructor for arrays already known to be consistent (skips validation; hot paths)."""
        obj = cls.__new__(cls)
        obj.x, obj.y, obj.t, obj.p = x, y, t, p
        return obj

    @classmethod
    def from_arrays(cls, x: Any, y: Any, t: Any, p: Any) -> 'EventArray':
        """Build from any array-likes, converting to the canonical dtypes (p: nonzero -> 1)."""
        p_arr = np.asarray(p).reshape(-1)
        if p_arr.dtype != P_DTYPE or (p_arr.size and p_arr.max() > 1):
            p_arr = (p_arr > 0).astype(P_DTYPE)
        return cls(_as(x, X_DTYPE), _as(y, Y_DTYPE), _as(t, T_DTYPE), p_arr)

    @classmethod
    def empty(cls) -> 'EventArray':
        """An array with zero events."""
        return cls(np.empty(0, X_DTYPE), np.empty(0, Y_DTYPE), np.empty(0, T_DTYPE), np.empty(0, P_DTYPE))

    @classmethod
    def concat(cls, arrays: Iterable['EventArray']) -> 'EventArray':
        """Concatenate in the given order (no sorting)."""
        arrays = [a for a in arrays if len(a)]
        if not arrays:
            return cls.empty()
        if len(arrays) == 1:
            return arrays[0]
        return cls(np.concatenate([a.x for a in arrays]), np.concatenate([a.y for a in arrays]),
                   np.concatenate([a.t for a in arrays]), np.concatenate([a.p for a in arrays]))

    def __len__(self) -> int:
        return self.x.shape[0]

    def slice(self, i: int, j: int) -> 'EventArray':
        """Events ``i`` .. ``j-1`` (views, no copy)."""
        return EventArray._trusted(self.x[i:j], self.y[i:j], self.t[i:j], self.p[i:j])

    def select(self, index: Any) -> 'EventArray':
        """Events picked by a boolean mask or an index array (copies)."""
        return EventArray(self.x[index], self.y[index], self.t[index], self.p[index])

    def copy(self) -> 'EventArray':
        return EventArray(self.x.copy(), self.y.copy(), self.t.copy(), self.p.copy())

    def shifted(self, dt_ns: int) -> 'EventArray':
        """Same events with ``dt_ns`` added to every time stamp (x, y, p shared)."""
        return EventArray._trusted(self.x, self.y, self.t + np.int64(dt_ns), self.p)

    def time_range(self, t_start_ns: int, t_end_ns: int) -> 'EventArray':
        """Events with ``t_start_ns <= t < t_end_ns``; requires time-sorted input (binary search, views)."""
        i = int(np.searchsorted(self.t, t_start_ns, side='left'))
        j = int(np.searchsorted(self.t, t_end_ns, side='left'))
        return self.slice(i, max(i, j))

    @property
    def num_on(self) -> int:
        return int(np.count_nonzero(self.p))

    @property
    def num_off(self) -> int:
        return len(self) - self.num_on

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.y.nbytes + self.t.nbytes + self.p.nbytes)

    def is_time_sorted(self) -> bool:
        return bool(len(self) < 2 or np.all(self.t[1:] >= self.t[:-1]))

    def __repr__(self) -> str:
        if len(self):
            return f'EventArray(n={len(self)}, t=[{int(self.t[0])}, {int(self.t[-1])}] ns, on={self.num_on})'
        return 'EventArray(n=0)'


@dataclass
class TriggerArray:
    """External trigger edges: time (int64 ns), channel id (uint8) and polarity / edge (uint8, 1 = rising)."""

    t: np.ndarray
    id: np.ndarray
    polarity: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.t) == len(self.id) == len(self.polarity)):
            raise ValueError('TriggerArray fields differ in length')

    @classmethod
    def empty(cls) -> 'TriggerArray':
        return cls(np.empty(0, T_DTYPE), np.empty(0, np.uint8), np.empty(0, np.uint8))

    @classmethod
    def _trusted(cls, t: np.ndarray, id: np.ndarray, polarity: np.ndarray) -> 'TriggerArray':  # noqa: A002
        """Internal constructor without validation (hot paths)."""
        obj = cls.__new__(cls)
        obj.t, obj.id, obj.polarity = t, id, polarity
        return obj

    @classmethod
    def from_arrays(cls, t: Any, id: Any, polarity: Any) -> 'TriggerArray':  # noqa: A002 (field name)
        return cls(_as(t, T_DTYPE), _as(id, np.uint8), (np.asarray(polarity).reshape(-1) > 0).astype(np.uint8))

    @classmethod
    def concat(cls, arrays: Iterable['TriggerArray']) -> 'TriggerArray':
        arrays = [a for a in arrays if len(a)]
        if not arrays:
            return cls.empty()
        if len(arrays) == 1:
            return arrays[0]
        return cls(np.concatenate([a.t for a in arrays]), np.concatenate([a.id for a in arrays]),
                   np.concatenate([a.polarity for a in arrays]))

    def __len__(self) -> int:
        return self.t.shape[0]

    def shifted(self, dt_ns: int) -> 'TriggerArray':
        return TriggerArray._trusted(self.t + np.int64(dt_ns), self.id, self.polarity)

    def select(self, index: Any) -> 'TriggerArray':
        return TriggerArray(self.t[index], self.id[index], self.polarity[index])


@dataclass
class DecodeResult:
    """What one ``Decoder.decode`` call produced.

    ``events`` and ``triggers`` carry the codec's decoded time in ns (docs/formats.md#encodings); ``errors`` holds the
    error counters incremented by this call only (the decoder's running totals are in ``Decoder.stats``).
    """

    events: EventArray
    triggers: TriggerArray = field(default_factory=TriggerArray.empty)
    errors: Dict[str, int] = field(default_factory=dict)

    @property
    def num_errors(self) -> int:
        return int(sum(self.errors.values()))


def as_event_array(obj: Any) -> EventArray:
    """Accept an ``EventArray``, an object with x/y/t/p attributes, or an (x, y, t, p) sequence."""
    if isinstance(obj, EventArray):
        return obj
    if all(hasattr(obj, k) for k in ('x', 'y', 't', 'p')):
        return EventArray.from_arrays(obj.x, obj.y, obj.t, obj.p)
    if isinstance(obj, Sequence) and len(obj) == 4:
        return EventArray.from_arrays(*obj)
    raise TypeError(f'cannot interpret {type(obj).__name__} as events: expected EventArray or (x, y, t, p)')


def merge_counts(into: Dict[str, int], new: Optional[Dict[str, int]]) -> Dict[str, int]:
    """Add counter dict ``new`` into ``into`` (in place) and return it."""
    if new:
        for k, v in new.items():
            into[k] = into.get(k, 0) + int(v)
    return into
