"""Moved to :mod:`realm_testing.events`; this name re-exports it while tests move over."""
from realm_testing.events import *  # noqa: F403
