"""Moved to :mod:`realm_testing.training`; this name re-exports it while tests move over."""
from realm_testing.training import *  # noqa: F403
