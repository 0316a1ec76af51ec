"""The simulated sensor rig: an event camera and an RGB camera moving through a procedural street.

:class:`Simulator` ties together the scene (:mod:`.scene`), the camera trajectory (:mod:`.trajectory`), the renderer
(:mod:`.render`) and the ESIM event model (:mod:`.esim`). :meth:`Simulator.stream` yields, for every RGB frame time
``t_k = k / rgb_rate_hz``, a :class:`SimChunk` with the events of ``(t_{k-1}, t_k]`` and a :class:`SimFrame` holding
the RGB image, ground-truth depth and labels for both cameras and both poses at ``t_k``.

Time here is *simulation time* in nanoseconds from the start of the sequence (events are whole microseconds).
Mapping to sensor time (EVT3 microsecond counter) and ROS time is done by the writers (:mod:`.bag`, the live node).

Event-camera frames are rendered adaptively: the step is chosen from the predicted optical flow (known poses and the
last depth map) so that no pixel moves more than ``max_flow_px`` between renders (ESIM's adaptive sampling), bounded
by ``[min_render_dt_us, max_render_dt_us]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from ..events.types import EventArray
from .camera import PinholeCamera, invert_transform, make_transform, rot_x, rot_y, rot_z
from .esim import EsimConfig, EsimEventGenerator
from .render import Renderer, RenderOutput
from .scene import Scene, generate_street_scene
from .trajectory import TRAJECTORY_KINDS, SmoothTrajectory, make_trajectory


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated sequence; equal configs give identical outputs.

    Cameras: the event camera is ``width`` x ``height`` with horizontal FOV ``hfov_deg``; the RGB camera defaults to
    the same intrinsics. ``baseline_m`` shifts the RGB camera along the event camera's x axis (to the right) and
    ``rgb_rotation_deg`` (rx, ry, rz, applied as Rz Ry Rx) rotates it; the default (0, (0, 0, 0)) co-locates both
    cameras (identity extrinsic), so ground truth of one camera is valid for the other.
    """

    seed: int = 0
    duration_s: float = 2.0
    width: int = 224
    height: int = 224
    hfov_deg: float = 80.0
    rgb_width: int | None = None
    rgb_height: int | None = None
    rgb_hfov_deg: float | None = None
    baseline_m: float = 0.0
    rgb_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rgb_rate_hz: float = 30.0
    trajectory: str = 'drive'
    speed_mps: float = 10.0
    motion_scale: float = 1.0
    camera_height_m: float = 1.5
    max_flow_px: float = 1.0
    min_render_dt_us: int = 100
    max_render_dt_us: int = 2000
    esim: EsimConfig = field(default_factory=EsimConfig)

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f'duration_s must be positive, got {self.duration_s}')
        for name in ('width', 'height'):
            v = getattr(self, name)
            if not 8 <= int(v) <= 2048:
                raise ValueError(f'{name} must be in 8..2048 (EVT3 has 11-bit addresses), got {v}')
        for name in ('rgb_width', 'rgb_height'):
            v = getattr(self, name)
            if v is not None and not 8 <= int(v) <= 8192:
                raise ValueError(f'{name} must be in 8..8192 or None (same as the event camera), got {v}')
        if self.trajectory not in TRAJECTORY_KINDS:
            raise ValueError(f'unknown trajectory {self.trajectory!r}; expected one of {TRAJECTORY_KINDS}')
        if not self.rgb_rate_hz > 0:
            raise ValueError(f'rgb_rate_hz must be positive, got {self.rgb_rate_hz}')
        if not 1 <= self.min_render_dt_us <= self.max_render_dt_us:
            raise ValueError(f'need 1 <= min_render_dt_us <= max_render_dt_us, got {self.min_render_dt_us}, '
                             f'{self.max_render_dt_us}')
        if not self.max_flow_px > 0:
            raise ValueError(f'max_flow_px must be positive, got {self.max_flow_px}')

    def with_(self, **changes) -> 'SimConfig':
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class SimFrame:
    """Ground truth at one RGB frame time ``t_ns`` (simulation time).

    ``rgb`` (H, W, 3) uint8, ``rgb_depth`` (H, W) float32 z-depth in metres (+inf = sky), ``rgb_labels`` uint8 class
    ids: RGB camera. ``event_depth`` / ``event_labels`` / ``event_gray`` (luminance in [0, 1]): event camera.
    Poses are camera-to-world 4x4 (optical frames).
    """

    index: int
    t_ns: int
    rgb: np.ndarray
    rgb_depth: np.ndarray
    rgb_labels: np.ndarray
    event_depth: np.ndarray
    event_labels: np.ndarray
    event_gray: np.ndarray
    T_world_event: np.ndarray
    T_world_rgb: np.ndarray


@dataclass
class SimChunk:
    """Events of ``(t_start_ns, t_end_ns]`` (simulation time, sorted) and the frame at ``t_end_ns``."""

    t_start_ns: int
    t_end_ns: int
    events: EventArray
    frame: SimFrame
    renders: int = 0


def _rgb_extrinsic(cfg: SimConfig) -> np.ndarray:
    rx, ry, rz = np.radians(np.asarray(cfg.rgb_rotation_deg, dtype=np.float64))
    return make_transform(rot_z(rz) @ rot_y(ry) @ rot_x(rx), (cfg.baseline_m, 0.0, 0.0))


class Simulator:
    """A deterministic simulated event + RGB camera rig (see module docstring)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        cfg = config or SimConfig()
        self.config = cfg
        self.event_camera = PinholeCamera.from_hfov(cfg.width, cfg.height, cfg.hfov_deg)
        self.rgb_camera = PinholeCamera.from_hfov(cfg.rgb_width or cfg.width, cfg.rgb_height or cfg.height,
                                                  cfg.rgb_hfov_deg or cfg.hfov_deg)
        #: pose of the RGB camera in the event camera frame (maps RGB-camera points to event-camera points)
        self.T_event_rgb = _rgb_extrinsic(cfg)
        self.scene, self.trajectory = self._build_world(cfg)
        self.event_renderer = Renderer(self.scene, self.event_camera)
        self.rgb_renderer = Renderer(self.scene, self.rgb_camera)
        self._shared_camera = (self.event_camera == self.rgb_camera and np.allclose(self.T_event_rgb, np.eye(4)))
        self.esim = EsimEventGenerator(cfg.width, cfg.height, cfg.esim, seed=cfg.seed)
        self._probe = self._flow_probe_pixels()

    @staticmethod
    def _build_world(cfg: SimConfig) -> tuple[Scene, SmoothTrajectory]:
        margin = 60.0
        if cfg.trajectory == 'loop':
            amp = cfg.speed_mps * cfg.duration_s / (2 * np.pi)
            length = 2 * amp + 2 * margin
            x_start = amp + margin
        else:
            x_start = 5.0
            length = x_start + cfg.speed_mps * cfg.duration_s + margin
        scene = generate_street_scene(cfg.seed, length)
        traj = make_trajectory(cfg.trajectory, cfg.seed, cfg.duration_s, lane_y=scene.lane_y, x_start=x_start,
                               speed_mps=cfg.speed_mps, height_m=cfg.camera_height_m, motion_scale=cfg.motion_scale)
        return scene, traj

    # ------------------------------------------------------------------------------------------------------------
    def pose_event(self, t_ns: int | float) -> np.ndarray:
        """Event camera pose (camera-to-world) at simulation time ``t_ns``."""
        return self.trajectory.pose(float(t_ns) * 1e-9)

    def pose_rgb(self, t_ns: int | float) -> np.ndarray:
        """RGB camera pose (camera-to-world) at simulation time ``t_ns``."""
        return self.pose_event(t_ns) @ self.T_event_rgb

    def render_event_camera(self, t_ns: int, want_rgb: bool = False) -> RenderOutput:
        return self.event_renderer.render(self.pose_event(t_ns), want_rgb=want_rgb)

    def frame_times_ns(self) -> np.ndarray:
        """RGB frame times (simulation ns, whole microseconds) in [0, duration]."""
        n = int(np.floor(self.config.duration_s * self.config.rgb_rate_hz + 1e-9)) + 1
        return np.round(np.arange(n) * 1e6 / self.config.rgb_rate_hz).astype(np.int64) * 1000

    # ------------------------------------------------------------------------------------------------------------
    def _flow_probe_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        cam = self.event_camera
        step = max(4, min(cam.width, cam.height) // 24)
        vv, uu = np.mgrid[step // 2:cam.height:step, step // 2:cam.width:step]
        # always include the image corners (largest rotational flow)
        uu = np.concatenate([uu.ravel(), [0, cam.width - 1, 0, cam.width - 1]])
        vv = np.concatenate([vv.ravel(), [0, 0, cam.height - 1, cam.height - 1]])
        return uu.astype(np.int64), vv.astype(np.int64)

    def _next_dt_us(self, t_us: int, depth: np.ndarray) -> int:
        """Render step so that the predicted max pixel motion stays below ``max_flow_px``."""
        cfg = self.config
        dt_probe = cfg.max_render_dt_us
        uu, vv = self._probe
        d = depth[vv, uu].astype(np.float64)
        d = np.where(np.isfinite(d), d, 1e4)
        cam = self.event_camera
        pts = cam.backproject(uu, vv, d)
        T0 = self.trajectory.pose(t_us * 1e-6)
        T1 = self.trajectory.pose((t_us + dt_probe) * 1e-6)
        T10 = invert_transform(T1) @ T0
        q = pts @ T10[:3, :3].T + T10[:3, 3]
        ok = q[:, 2] > 0.05
        if not np.any(ok):
            return cfg.min_render_dt_us
        uv, _ = cam.project(q[ok])
        flow = float(np.max(np.hypot(uv[:, 0] - uu[ok], uv[:, 1] - vv[ok])))
        if flow <= cfg.max_flow_px:
            return dt_probe
        return int(np.clip(dt_probe * cfg.max_flow_px / flow, cfg.min_render_dt_us, dt_probe))

    def _make_frame(self, index: int, t_ns: int, ev_out: RenderOutput) -> SimFrame:
        T_we = self.pose_event(t_ns)
        T_wr = T_we @ self.T_event_rgb
        if self._shared_camera and ev_out.rgb is not None:
            rgb_out = ev_out
        else:
            rgb_out = self.rgb_renderer.render(T_wr, want_rgb=True)
        return SimFrame(index=index, t_ns=int(t_ns), rgb=rgb_out.rgb8(), rgb_depth=rgb_out.depth,
                        rgb_labels=rgb_out.labels, event_depth=ev_out.depth, event_labels=ev_out.labels,
                        event_gray=ev_out.gray, T_world_event=T_we, T_world_rgb=T_wr)

    def frame_at(self, t_ns: int, index: int = -1) -> SimFrame:
        """Ground truth and RGB at simulation time ``t_ns`` without running the event model (e.g. to train an RGB
        teacher on many frames cheaply)."""
        t_ns = int(t_ns)
        return self._make_frame(index, t_ns, self.render_event_camera(t_ns, want_rgb=True))

    def stream(self) -> Iterator[SimChunk]:
        """Yield one :class:`SimChunk` per RGB frame over ``[0, duration_s]`` (the first has no events).

        Restarts the event model, so two calls on one simulator give the same output.
        """
        times = self.frame_times_ns()
        first = self.render_event_camera(0, want_rgb=True)
        self.esim = EsimEventGenerator(self.config.width, self.config.height, self.config.esim, seed=self.config.seed)
        self.esim.reset(first.gray, 0)
        yield SimChunk(0, 0, EventArray.empty(), self._make_frame(0, 0, first), renders=1)
        last = first
        t_us = 0
        for k in range(1, len(times)):
            target_us = int(times[k] // 1000)
            parts = []
            renders = 0
            t_start = t_us
            while t_us < target_us:
                dt = self._next_dt_us(t_us, last.depth)
                t_next = min(target_us, t_us + dt)
                if target_us - t_next < self.config.min_render_dt_us // 2:
                    t_next = target_us
                last = self.render_event_camera(t_next * 1000, want_rgb=(t_next == target_us))
                parts.append(self.esim.step(last.gray, t_next))
                renders += 1
                t_us = t_next
            yield SimChunk(t_start * 1000, target_us * 1000, EventArray.concat(parts),
                           self._make_frame(k, target_us * 1000, last), renders=renders)
