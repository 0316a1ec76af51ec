"""Synthetic data of the miniature world, drawn from :mod:`realm_ros.sim` (ROS-free, deterministic from seeds).

* :func:`split_seeds` - disjoint scene seeds for the train / val / test splits (separate scenes *and* trajectories).
* :class:`FrameSampler` - random RGB frames with metric depth and class ids (teacher pretraining): each sample picks a
  training scene and a time on its camera trajectory, renders the RGB camera there.
* :class:`PairSampler` - two frames of one trajectory a random time apart, with both poses (decoder training).
* :func:`correspondences` - ground-truth pixel correspondences of a frame pair from depth and poses, with an
  occlusion test against the second view's depth.
* :func:`sample_correspondences` - a training sample of correspondences drawn from *both* views (view-1 pixels seen
  in view 2 and view-2 pixels seen in view 1), so the sample does not favour contraction or expansion.
* :func:`rgb_to_tensor` - DUNE preprocessing of uint8 images (/255, ImageNet mean/std;
  docs/models.md#dune-checkpoint-files).

Scenes are built by :class:`realm_ros.sim.simulator.Simulator` (the same code the bags and the live node use), so the
teacher sees exactly the world the events come from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from realm_ros.sim.camera import PinholeCamera, invert_transform
from realm_ros.sim.simulator import SimConfig, Simulator

__all__ = ['SPLIT_BASES', 'split_seeds', 'sim_config', 'FrameSampler', 'PairSampler', 'correspondences',
           'rgb_to_tensor', 'IMAGENET_MEAN', 'IMAGENET_STD', 'pts3d_in_frame', 'sample_correspondences',
           'log_radius_ratio']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: First scene seed of each split; splits never share a seed (each split has < 10,000 scenes).
SPLIT_BASES: Dict[str, int] = {'train': 10_000, 'val': 20_000, 'test': 30_000}


def split_seeds(split: str, count: int) -> List[int]:
    """``count`` scene seeds of ``split`` (``'train'``, ``'val'`` or ``'test'``)."""
    if split not in SPLIT_BASES:
        raise ValueError(f'unknown split {split!r}; expected one of {sorted(SPLIT_BASES)}')
    if not 0 <= count < 10_000:
        raise ValueError(f'count must be in [0, 10000), got {count}')
    return [SPLIT_BASES[split] + i for i in range(count)]


def sim_config(seed: int, image_size: int, duration_s: float, **overrides: Any) -> SimConfig:
    """Simulator configuration of one miniature-world sequence.

    Square ``image_size`` event and RGB cameras (co-located, 80 deg FOV, the simulator default) so the network sees
    the sensor without crop or resize. Speed and motion amplitude vary with the seed (3-9 m/s, 0.6-1.4 x) unless
    overridden, so the splits cover a range of flows.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDA7A]))
    kw: Dict[str, Any] = dict(seed=int(seed), duration_s=float(duration_s), width=int(image_size),
                              height=int(image_size), speed_mps=float(rng.uniform(3.0, 9.0)),
                              motion_scale=float(rng.uniform(0.6, 1.4)))
    kw.update(overrides)
    return SimConfig(**kw)


def rgb_to_tensor(rgb: np.ndarray, device: torch.device | str = 'cpu') -> torch.Tensor:
    """uint8 RGB (H, W, 3) or (B, H, W, 3) -> float (B, 3, H, W), /255 then ImageNet mean/std (DUNE input)."""
    x = torch.as_tensor(np.ascontiguousarray(rgb), device=device)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f'expected RGB images (..., H, W, 3), got shape {tuple(x.shape)}')
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class _SceneBank:
    """Lazily built simulators of a list of scene seeds (scenes are cheap; built on first use)."""

    def __init__(self, seeds: Sequence[int], image_size: int, duration_s: float) -> None:
        if not len(seeds):
            raise ValueError('need at least one scene seed')
        self.seeds = list(seeds)
        self.image_size = int(image_size)
        self.duration_s = float(duration_s)
        self._sims: Dict[int, Simulator] = {}

    def sim(self, seed: int) -> Simulator:
        if seed not in self._sims:
            self._sims[seed] = Simulator(sim_config(seed, self.image_size, self.duration_s))
        return self._sims[seed]

    @property
    def camera(self) -> PinholeCamera:
        return self.sim(self.seeds[0]).rgb_camera


#: One rendered frame: RGB uint8 (H, W, 3), depth (H, W), labels (H, W), camera-to-world pose (4, 4).
Frame = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class FrameBatch:
    """A batch of rendered frames: ``rgb`` (B, H, W, 3) uint8, ``depth`` (B, H, W) float32 metres (+inf sky),
    ``labels`` (B, H, W) uint8, ``poses`` (B, 4, 4) camera-to-world, ``K`` (3, 3)."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    poses: np.ndarray
    K: np.ndarray


class FrameSampler:
    """Random frames of the given scenes. ``sample(batch, rng)`` renders ``batch`` frames at random trajectory times.

    ``duration_s`` is the length of each scene's trajectory the times are drawn from (longer = more street seen).
    """

    def __init__(self, seeds: Sequence[int], image_size: int, duration_s: float = 10.0) -> None:
        self.bank = _SceneBank(seeds, image_size, duration_s)

    @property
    def camera(self) -> PinholeCamera:
        return self.bank.camera

    def render(self, seed: int, t_s: float) -> Frame:
        """RGB uint8, depth, labels and the RGB camera pose of scene ``seed`` at trajectory time ``t_s``."""
        sim = self.bank.sim(seed)
        T = sim.pose_rgb(t_s * 1e9)
        out = sim.rgb_renderer.render(T, want_rgb=True)
        return out.rgb8(), out.depth, out.labels, T

    def sample(self, batch: int, rng: np.random.Generator) -> FrameBatch:
        rgb, depth, labels, poses = [], [], [], []
        for _ in range(batch):
            seed = self.bank.seeds[int(rng.integers(len(self.bank.seeds)))]
            r, d, l, T = self.render(seed, float(rng.uniform(0.0, self.bank.duration_s)))
            rgb.append(r)
            depth.append(d)
            labels.append(l)
            poses.append(T)
        return FrameBatch(np.stack(rgb), np.stack(depth), np.stack(labels), np.stack(poses), self.camera.K)


@dataclass
class PairBatch:
    """Frame pairs: ``first`` and ``second`` :class:`FrameBatch` (same scenes, the second ``dt`` seconds later or
    earlier)."""

    first: FrameBatch
    second: FrameBatch
    dt: np.ndarray


class PairSampler:
    """Frame pairs of one trajectory ``|dt|`` in ``[min_dt, max_dt]`` seconds apart (either order)."""

    def __init__(self, seeds: Sequence[int], image_size: int, duration_s: float = 10.0, min_dt: float = 0.03,
                 max_dt: float = 0.5) -> None:
        if not 0 <= min_dt <= max_dt < duration_s:
            raise ValueError(f'need 0 <= min_dt <= max_dt < duration_s, got {min_dt}, {max_dt}, {duration_s}')
        self.frames = FrameSampler(seeds, image_size, duration_s)
        self.min_dt = float(min_dt)
        self.max_dt = float(max_dt)

    @property
    def camera(self) -> PinholeCamera:
        return self.frames.camera

    def sample(self, batch: int, rng: np.random.Generator) -> PairBatch:
        bank = self.frames.bank
        a: List[Frame] = []
        b: List[Frame] = []
        dts = []
        for _ in range(batch):
            seed = bank.seeds[int(rng.integers(len(bank.seeds)))]
            dt = float(rng.uniform(self.min_dt, self.max_dt)) * (1.0 if rng.random() < 0.5 else -1.0)
            t0 = float(rng.uniform(max(0.0, -dt), bank.duration_s - max(0.0, dt)))
            a.append(self.frames.render(seed, t0))
            b.append(self.frames.render(seed, t0 + dt))
            dts.append(dt)

        def stack(items: List[Frame]) -> FrameBatch:
            rgb, depth, labels, poses = (np.stack([it[i] for it in items]) for i in range(4))
            return FrameBatch(rgb, depth, labels, poses, K=self.camera.K)
        return PairBatch(stack(a), stack(b), np.asarray(dts))


def pts3d_in_frame(depth: np.ndarray, K: np.ndarray, T_ref_cam: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W, 3) points of every pixel (z-depth ``depth``) in the camera frame, or mapped by ``T_ref_cam`` (4x4) into
    another frame. Sky pixels (non-finite depth) give non-finite points."""
    cam = PinholeCamera(depth.shape[1], depth.shape[0], float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                        float(K[1, 2]))
    rays = cam.pixel_rays()
    with np.errstate(invalid='ignore'):
        pts = rays * depth[..., None].astype(np.float64)
        if T_ref_cam is not None:
            pts = pts @ T_ref_cam[:3, :3].T + T_ref_cam[:3, 3]
    return pts


def correspondences(depth1: np.ndarray, depth2: np.ndarray, T_world_cam1: np.ndarray, T_world_cam2: np.ndarray,
                    K: np.ndarray, occlusion_tol: float = 0.03, max_depth: float = 1e3
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Ground-truth correspondences of view 1 pixels in view 2.

    Every view-1 pixel with finite depth is back-projected, moved into camera 2 and projected; it is kept when it
    lands inside image 2 in front of the camera and its depth agrees with view 2's depth at the nearest pixel within
    ``occlusion_tol`` (relative), i.e. the point is not occluded. Returns integer pixel arrays ``xy1`` (M, 2) and
    ``xy2`` (M, 2) (x = column, y = row; nearest pixel in view 2).
    """
    h, w = depth1.shape
    T21 = invert_transform(T_world_cam2) @ T_world_cam1
    pts = pts3d_in_frame(depth1, K, T21)
    z = pts[..., 2]
    ok = np.isfinite(depth1) & (depth1 < max_depth) & np.isfinite(z) & (z > 0.05)
    with np.errstate(invalid='ignore', divide='ignore'):
        u = K[0, 0] * pts[..., 0] / z + K[0, 2]
        v = K[1, 1] * pts[..., 1] / z + K[1, 2]
    ui = np.rint(np.where(ok, u, -1)).astype(np.int64)
    vi = np.rint(np.where(ok, v, -1)).astype(np.int64)
    ok &= (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    d2 = np.full((h, w), np.inf)
    d2[ok] = depth2[vi[ok], ui[ok]]
    with np.errstate(invalid='ignore'):
        ok &= np.abs(d2 - z) <= occlusion_tol * z
    ys, xs = np.nonzero(ok)
    return np.stack([xs, ys], 1), np.stack([ui[ok], vi[ok]], 1)


def sample_correspondences(depth1: np.ndarray, depth2: np.ndarray, T_world_cam1: np.ndarray,
                           T_world_cam2: np.ndarray, K: np.ndarray, count: int, rng: np.random.Generator,
                           both_directions: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` ground-truth correspondences ``(xy1, xy2)`` of a frame pair for the matching loss.

    ``both_directions=False`` draws them from view-1 pixels that stay visible in view 2 only (:func:`correspondences`).
    That selection is not neutral: when the camera moves forward, the view-1 pixels near the border leave view 2 and
    are never drawn, while moving backward keeps all of them, so on average the drawn matches *contract* from view 1 to
    view 2 (measured log-radius ratio about -0.06, -0.19 near the view-1 border) and a decoder learns to pull matches
    toward the image centre. ``both_directions=True`` (default) draws half of the sample from view-1 pixels seen in
    view 2 and half from view-2 pixels seen in view 1 (:func:`correspondences` of the swapped pair), so the sample of
    the pair (a, b) is the mirror image of the sample of (b, a): over pairs of either order the mean log-radius ratio
    is zero. Pixels already used (in either view) are not drawn twice, so every sampled pixel has one partner (the
    InfoNCE targets stay unique).
    """
    count = int(count)
    if count < 0:
        raise ValueError(f'count must be >= 0, got {count}')
    a1, a2 = correspondences(depth1, depth2, T_world_cam1, T_world_cam2, K)
    if not both_directions:
        m = min(count, len(a1))
        pick = rng.choice(len(a1), size=m, replace=False) if m else np.zeros(0, dtype=np.int64)
        return a1[pick], a2[pick]
    b2, b1 = correspondences(depth2, depth1, T_world_cam2, T_world_cam1, K)
    w = depth1.shape[1]
    all1, all2 = np.concatenate([a1, b1]), np.concatenate([a2, b2])
    if not len(all1):
        return np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
    # random draws of each direction, interleaved (which direction leads is random), then repeated pixels dropped
    pa, pb = rng.permutation(len(a1)), rng.permutation(len(b1)) + len(a1)
    if rng.random() < 0.5:
        pa, pb = pb, pa
    n = min(len(pa), len(pb))
    order = np.concatenate([np.stack([pa[:n], pb[:n]], 1).reshape(-1), pa[n:], pb[n:]])
    x1, x2 = all1[order], all2[order]
    lin1 = x1[:, 1] * w + x1[:, 0]
    lin2 = x2[:, 1] * depth2.shape[1] + x2[:, 0]
    # greedy in draw order, vectorised in rounds: keep a candidate when it is the first remaining one of both its
    # pixels, then drop the candidates that reuse a kept pixel
    kept = np.zeros(len(x1), bool)
    alive = np.ones(len(x1), bool)
    used1 = np.zeros(depth1.size, bool)
    used2 = np.zeros(depth2.size, bool)
    for _ in range(8):
        cand = np.nonzero(alive)[0]
        if not len(cand) or kept.sum() >= count:
            break
        first1 = np.zeros(len(x1), bool)
        first1[cand[np.unique(lin1[cand], return_index=True)[1]]] = True
        first2 = np.zeros(len(x1), bool)
        first2[cand[np.unique(lin2[cand], return_index=True)[1]]] = True
        new = alive & first1 & first2
        kept |= new
        used1[lin1[new]] = True
        used2[lin2[new]] = True
        alive &= ~kept & ~used1[lin1] & ~used2[lin2]
    sel = np.nonzero(kept)[0][:count]
    return x1[sel].astype(np.int64), x2[sel].astype(np.int64)


def log_radius_ratio(xy1: np.ndarray, xy2: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``log(r2 / r1)`` per correspondence, ``r`` = distance to the principal point (NaN where ``r1`` or ``r2`` is
    below 1 px). Negative = the match moves toward the centre from view 1 to view 2 (contraction)."""
    c = np.array([K[0, 2], K[1, 2]])
    r1 = np.linalg.norm(np.asarray(xy1, np.float64) - c, axis=1)
    r2 = np.linalg.norm(np.asarray(xy2, np.float64) - c, axis=1)
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where((r1 >= 1.0) & (r2 >= 1.0), np.log(r2 / r1), np.nan)
