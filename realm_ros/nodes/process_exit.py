"""Ending a node process quickly and cleanly after its ROS shutdown.

Interpreter teardown with torch, numba and the DDS libraries loaded takes seconds (3-5 s measured for the
perception node, 0.5-1 s for the simulator), longer when a worker thread is still inside an inference, and a second
Ctrl-C during it kills the process with -2. After a node has released everything, :func:`end_process` finalises the
DDS participant (so its shared-memory segments are unlinked) and ends the process with the exit code at once.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def end_process(code: int) -> NoReturn:
    """Destroy rclpy's default context, flush the logs and output, and ``os._exit(code)``."""
    try:
        import rclpy
        rclpy.get_default_context().destroy()
    except Exception:  # noqa: BLE001 - already destroyed, never initialised, or an rclpy without Context.destroy
        pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
