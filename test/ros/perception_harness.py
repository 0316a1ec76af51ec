"""Moved to :mod:`realm_testing.perception`; this name re-exports it while tests move over."""
from realm_testing.perception import *  # noqa: F403
