"""realm_ros.common: the shared layer under every other package (no imports from the rest of realm_ros).

* :mod:`.errors` - :class:`RealmError`, the base of every exception the package raises on purpose.
* :mod:`.stamps` - :func:`stamp_to_ns` (``builtin_interfaces/Time``-like -> int ns) without ROS types.
* :mod:`.schedule` - :func:`warmup_cosine`, the learning-rate schedule of every training loop.
* :mod:`.device` - :func:`resolve_device` (imports torch, so it is loaded on first use).
* :mod:`.signal_stack` - :func:`preserved_signal_stack`: a thread's alternate signal stack kept across native calls.
* :mod:`.metrics` - depth, semantic and relative-pose metrics (numpy only), used by head training, the miniature
  recipe and the demo.
"""
from __future__ import annotations

from typing import Any

from .errors import RealmError
from .schedule import warmup_cosine
from .stamps import NS_PER_S, stamp_to_ns

__all__ = ['RealmError', 'NS_PER_S', 'stamp_to_ns', 'warmup_cosine', 'DeviceError', 'resolve_device']


def __getattr__(name: str) -> Any:
    if name in ('DeviceError', 'resolve_device'):
        from . import device
        return getattr(device, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
