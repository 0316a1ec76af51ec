"""The base of every exception this package raises on purpose.

``except RealmError`` catches any of them; each concrete class also derives from the built-in exception that
describes it best (``ValueError`` for bad input, ``RuntimeError`` for failed runs), so existing ``except ValueError``
handlers keep working.
"""
from __future__ import annotations

__all__ = ['RealmError']


class RealmError(Exception):
    """Base class of the exceptions raised by realm_ros (bad input, bad checkpoints, failed training runs, ...)."""
