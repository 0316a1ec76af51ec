"""Console-script entry points of the nodes (``ros2 run realm_ros perception_node`` / ``sim_event_camera``).

Importing a node module loads numpy, numba and rclpy, which takes seconds; a Ctrl-C in that time would print a
``KeyboardInterrupt`` traceback and end with -2 (``ros2 launch`` reports "process has died"). These entry points first
make SIGINT / SIGTERM end the process quietly with code 0, then import the node and run it; the node's ``main``
installs its own handling before it starts ROS.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(0)


def _run(module: str) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_quietly)
    sys.exit(importlib.import_module(module).main())


def perception_node() -> None:
    _run('realm_ros.nodes.perception_node')


def sim_event_camera() -> None:
    _run('realm_ros.nodes.sim_camera_node')
