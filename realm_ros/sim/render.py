"""Renderer: a :class:`~realm_ros.sim.scene.Scene` seen by a :class:`~realm_ros.sim.camera.PinholeCamera` at a pose.

Outputs per frame (:class:`RenderOutput`): RGB in [0, 1], luminance in [0, 1] (what the event camera integrates),
metric z-depth (metres along the optical axis; ``+inf`` for sky, following REP 118's "too far" convention) and class
ids (:mod:`realm_ros.sim.classes`). Rendering is deterministic: the same scene and pose give bit-identical images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import PinholeCamera
from .raycast import render_kernel
from .scene import Scene


@dataclass
class RenderOutput:
    """One rendered frame. ``rgb`` is None when rendering luminance only."""

    gray: np.ndarray            # (H, W) float32 luminance in [0, 1]
    depth: np.ndarray           # (H, W) float32 z-depth in metres, +inf for sky
    labels: np.ndarray          # (H, W) uint8 class ids
    rgb: np.ndarray | None      # (H, W, 3) float32 in [0, 1]

    def rgb8(self) -> np.ndarray:
        """(H, W, 3) uint8 image (``rgb8`` encoding)."""
        if self.rgb is None:
            raise ValueError('this frame was rendered without colour (want_rgb=False)')
        return np.round(self.rgb * 255.0).astype(np.uint8)


class Renderer:
    """Ray-casts a scene for one camera. ``render(T_world_cam)`` takes the camera-to-world pose (4x4)."""

    def __init__(self, scene: Scene, camera: PinholeCamera) -> None:
        self.scene = scene
        self.camera = camera

    def render(self, T_world_cam: np.ndarray, want_rgb: bool = True) -> RenderOutput:
        """Render the scene from camera pose ``T_world_cam`` (camera-to-world, 4x4)."""
        T = np.asarray(T_world_cam, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f'T_world_cam must be a finite 4x4 matrix, got shape {T.shape}')
        cam = self.camera
        s = self.scene
        H, W = cam.height, cam.width
        gray = np.empty((H, W), np.float32)
        depth = np.empty((H, W), np.float32)
        labels = np.empty((H, W), np.uint8)
        rgb = np.empty((H, W, 3), np.float32) if want_rgb else np.empty((1, 1, 3), np.float32)
        render_kernel(np.ascontiguousarray(T[:3, :3]), np.ascontiguousarray(T[:3, 3]),
                      float(cam.fx), float(cam.fy), float(cam.cx), float(cam.cy), W, H,
                      s.kind, s.center, s.half, np.cos(s.yaw), np.sin(s.yaw), s.corners, s.cls, s.tex, s.color,
                      s.param, s.pseed, s.sun, s.sky, float(s.ambient), float(s.haze_m), np.int64(s.seed),
                      rgb, gray, depth, labels, bool(want_rgb))
        return RenderOutput(gray=gray, depth=depth, labels=labels, rgb=rgb if want_rgb else None)
