"""A synthetic two-view "decoder" for pose tests (no model, no training).

:class:`FakeDecoder` renders a two-plane scene (wall ahead, ground below) for the camera poses named by the tokens
(``tokens[0, 0, 0]`` indexes ``poses``): ``pts3d`` by ray casting, descriptors from random Fourier features of the world
point, so reciprocal matching finds the true correspondences. Its view-2 descriptors can be *contracted* toward the
image centre by a factor (the bias of a decoder trained on one-direction correspondences). ``S`` x ``S`` images with
intrinsics ``K``; :func:`pose_yaw` builds camera-to-world poses, :func:`tokens` the token stand-in of a pose index.
"""
import numpy as np
import torch

S = 64
F = 48.0
K = np.array([[F, 0, (S - 1) / 2], [0, F, (S - 1) / 2], [0, 0, 1.0]])


def pose_yaw(yaw_deg=0.0, t=(0.0, 0.0, 0.0)):
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T = np.eye(4)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = t
    return T


class FakeDecoder(torch.nn.Module):
    """Decoder stand-in: tokens[0, 0, 0] is an index into ``poses`` (camera-to-world)."""

    def __init__(self, poses, contraction=0.0, dim=32, seed=0):
        super().__init__()
        self.poses = poses
        self.contraction = contraction
        rng = np.random.default_rng(seed)
        self.W = rng.normal(0, 1.2, (dim, 3))
        self.b = rng.uniform(0, 2 * np.pi, dim)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def _world(self, T, scale):
        ys, xs = np.mgrid[0:S, 0:S].astype(np.float64)
        c = K[0, 2]
        xs, ys = c + (xs - c) * scale, c + (ys - c) * scale
        rays = np.stack([(xs - K[0, 2]) / F, (ys - K[1, 2]) / F, np.ones_like(xs)], -1)
        d = rays @ T[:3, :3].T
        o = T[:3, 3]
        with np.errstate(divide='ignore', invalid='ignore'):
            s_wall = (12.0 - o[2]) / d[..., 2]
            s_ground = (1.6 - o[1]) / d[..., 1]
        s_wall = np.where(s_wall > 0, s_wall, np.inf)
        s_ground = np.where(s_ground > 0, s_ground, np.inf)
        s = np.minimum(s_wall, s_ground)
        return o + d * s[..., None], rays * s[..., None]

    def _desc(self, X):
        f = np.sin(X @ self.W.T + self.b)
        return f / np.linalg.norm(f, axis=-1, keepdims=True)

    def forward(self, t1, t2, shape1, shape2):
        p1, p2 = [], []
        for a, b in zip(t1[:, 0, 0].tolist(), t2[:, 0, 0].tolist()):
            T1, T2 = self.poses[int(round(a))], self.poses[int(round(b))]
            X1, cam1 = self._world(T1, 1.0)
            # view 2's pixel q shows the point of pixel c + (q - c) / (1 - k): matches contract by (1 - k)
            X2, _ = self._world(T2, 1.0 / (1.0 - self.contraction))
            T12 = np.linalg.inv(T1) @ T2
            X2_in_1 = (X2 - T1[:3, 3]) @ T1[:3, :3]
            p1.append(dict(pts3d=cam1, conf=np.full((S, S), 3.0), desc=self._desc(X1), desc_conf=np.full((S, S), 2.0)))
            p2.append(dict(pts3d_in_other_view=X2_in_1, conf=np.full((S, S), 3.0), desc=self._desc(X2),
                           desc_conf=np.full((S, S), 2.0)))
            del T12

        def stack(ds):
            return {k: torch.from_numpy(np.stack([d[k] for d in ds])).float() for k in ds[0]}
        return stack(p1), stack(p2)


def tokens(i):
    t = torch.zeros(1, 4, 8)
    t[..., 0] = float(i)
    return t




def scripted_tracker(script, *, size=56, mast3r=None, max_bridged=0, **config):
    """A :class:`realm_ros.pipeline.pose_tracker.PoseTracker` whose estimates come from ``script`` (one
    ``PoseResult`` per decoded step, in order) on a stand-in pipeline of ``size`` x ``size`` input; ``config``
    overrides the pipeline settings the tracker reads (event keyframes, symmetric estimate, ``pose.frame fixed``).
    Returns ``(tracker, counts)``, the counters it added."""
    from types import SimpleNamespace

    from realm_ros.geometry.keyframes import KeyframePolicy
    from realm_ros.geometry.matching import ReciprocalMatches
    from realm_ros.pipeline.pose_tracker import PoseTracker
    cfg = SimpleNamespace(**{**dict(keyframe_source='events', pose_symmetric=True, pose_frame='fixed',
                                    max_matches_drawn=10, pose_motion_check=False,
                                    pose_similar_window_fallback=True), **config})
    counts = {}
    pipe = SimpleNamespace(config=cfg, input_size=size, device=torch.device('cpu'), mast3r=mast3r,
                           _keyframe_policy=lambda c: KeyframePolicy(min_inliers=10, max_failures=3,
                                                                     max_translation=100.0, max_rotation_deg=90.0,
                                                                     max_bridged=max_bridged))
    tracker = PoseTracker(pipe, lambda k: counts.__setitem__(k, counts.get(k, 0) + 1))
    steps = iter(script)
    xy = np.stack([np.arange(60) % size, np.arange(60) // 2], axis=1).astype(np.int64)
    matches = ReciprocalMatches(xy, xy.copy())              # what the match drawing shows
    tracker._symmetric_pose = lambda *a, **kw: (next(steps), matches)
    return tracker, counts
