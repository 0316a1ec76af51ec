"""``train_heads`` (``ros2 run realm_ros train_heads``): train the depth / segmentation head on frozen DUNE.

A thin entry point: everything lives in :mod:`realm_ros.training` (ROS-free). ROS 2 arguments
(``--ros-args -p field:=value``, ``--params-file``) are parsed without rclpy. Run with ``--help`` for all options.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; exits with the training exit code when called as a script."""
    from realm_ros.training.cli import heads_main
    code = heads_main(argv)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == '__main__':
    main()
