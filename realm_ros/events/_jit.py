"""numba ``njit(cache=True)`` with a pure-Python fallback when numba is not installed.

The fallback keeps every code path working (slowly) so that the package imports on minimal installs; the hot
loops are written so that they compile with numba in nopython mode.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

try:  # pragma: no cover - exercised implicitly
    import numba as _numba

    HAVE_NUMBA = True
except Exception:  # noqa: BLE001  # pragma: no cover - numba is a declared dependency
    _numba = None
    HAVE_NUMBA = False


def njit(*args: Any, **kwargs: Any) -> Callable:
    """``numba.njit(cache=True, ...)`` or identity when numba is missing."""
    kwargs.setdefault('cache', True)
    kwargs.setdefault('nogil', True)

    def wrap(fn: Callable) -> Callable:
        if HAVE_NUMBA:
            return _numba.njit(**kwargs)(fn)
        warnings.warn(f'numba is not installed: {fn.__name__} runs as slow pure Python', RuntimeWarning, stacklevel=2)
        return fn

    if args and callable(args[0]):
        return wrap(args[0])
    return wrap
