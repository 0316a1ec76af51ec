"""A thread's alternate signal stack (``sigaltstack(2)``), read and kept across calls into native libraries.

CPython installs every Python-level signal handler with ``SA_ONSTACK``, so a handler runs on the receiving thread's
alternate stack when it has one. A native library that points a thread at a stack of its own and later frees it
(OpenVINO 2026.4 does, see :mod:`realm_ros.models.mast3r.compiled`) leaves the next signal (Ctrl-C, a child's
SIGCHLD) to a freed stack: the process dies with SIGSEGV, or the signal frame overwrites reused memory.
:func:`preserved_signal_stack` puts the stack back as it was. Linux only; elsewhere both functions do nothing.
"""
from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Tuple

__all__ = ['signal_stack', 'preserved_signal_stack']

_SS_ONSTACK, _SS_DISABLE = 1, 2


class _StackT(ctypes.Structure):
    """``stack_t`` of ``sigaltstack(2)`` (Linux)."""

    _fields_ = [('ss_sp', ctypes.c_void_p), ('ss_flags', ctypes.c_int), ('ss_size', ctypes.c_size_t)]


def _sigaltstack_function() -> Any:
    if not sys.platform.startswith('linux'):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.POINTER(_StackT), ctypes.POINTER(_StackT)]
    fn.restype = ctypes.c_int
    return fn


_SIGALTSTACK = _sigaltstack_function()


def signal_stack() -> Optional[Tuple[int, int, int]]:
    """The calling thread's alternate signal stack ``(address, size, flags)``; None where it cannot be read."""
    if _SIGALTSTACK is None:
        return None
    cur = _StackT()
    if _SIGALTSTACK(None, ctypes.byref(cur)) != 0:
        return None
    return int(cur.ss_sp or 0), int(cur.ss_size), int(cur.ss_flags)


@contextmanager
def preserved_signal_stack() -> Iterator[None]:
    """Put the calling thread's alternate signal stack back as it was when the block ends (module docstring: what
    OpenVINO does to it). A no-op where ``sigaltstack`` is not available."""
    saved = signal_stack()
    try:
        yield
    finally:
        if saved is not None and _SIGALTSTACK is not None:
            now = signal_stack()
            address, size, flags = saved
            if now is not None and now != saved and not now[2] & _SS_ONSTACK:
                stack = _StackT(address or None, _SS_DISABLE if flags & _SS_DISABLE else 0, size)
                _SIGALTSTACK(ctypes.byref(stack), None)
