"""realm_ros.pipeline: ROS-free REALM inference on event streams (used by the perception node, demo, benchmarks).

* :class:`RealmPipeline` / :class:`PipelineConfig` (``core``): one event window -> voxel grid -> REALM tokens (once)
  -> depth, semantics, point cloud, matches and relative pose (:class:`PipelineOutput`).
* :class:`WindowScheduler` (``windows``): bounded event buffer handing out the newest complete window.
* ``render``: colour maps, event pictures, match drawings, depth back-projection.
* ``stats``: counters, rates and latency percentiles for diagnostics.
"""
from .core import (HEADS, NORMALIZATIONS, PRECISIONS, SPATIAL_MODES, PipelineConfig,
                   PipelineConfigError, PipelineOutput, PoseEstimate, RealmPipeline, WindowSkipped, resolve_device,
                   resolve_precision)
from .windows import WINDOW_MODES, Window, WindowScheduler

__all__ = ['RealmPipeline', 'PipelineConfig', 'PipelineOutput', 'PoseEstimate', 'PipelineConfigError',
           'WindowSkipped', 'resolve_device', 'resolve_precision', 'HEADS', 'SPATIAL_MODES', 'NORMALIZATIONS',
           'PRECISIONS', 'Window', 'WindowScheduler', 'WINDOW_MODES']
