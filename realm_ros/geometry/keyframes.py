"""Keyframes for relative pose: a bounded store of encoder tokens with the policy that decides when to add one.

Two sources feed the store: RGB images encoded with DUNE (``source='rgb'``, matched cross-modally against REALM event
tokens) and earlier event windows encoded with REALM (``source='events'``, event-event matching). A keyframe keeps
what the DUNE-MASt3R decoder needs to pair it with the current view (pre-norm patch tokens, model-input size and
intrinsics) plus the CLS token used to pick the most similar keyframe, its stamp and, when known, its camera pose in
a fixed frame (then relative poses are composed into that frame).

Policy (:class:`KeyframePolicy`): add a keyframe when the store is empty, when asked (service call), when the last
estimate had fewer inliers than ``min_inliers``, when the motion since the keyframe exceeds ``max_translation`` or
``max_rotation_deg``, or after ``max_failures`` consecutive rejected estimates; selection (``selection``) picks the
newest keyframe of the allowed sources (``'newest'``: the shortest baseline, what a moving camera needs) or, among the
``recent_k`` most recent, the one whose CLS token has the highest cosine similarity with the current view's
(``'similar'``: revisits; with the miniature models it picked a keyframe twice as far back as the newest, whose longer
baseline gave a worse pose).

Thread-safe (one lock): the perception worker and a service callback may use it concurrently.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .pose import PoseResult

__all__ = ['Keyframe', 'KeyframePolicy', 'KeyframeStore', 'KeyframeDecision', 'SOURCES', 'SELECTIONS',
           'compose_pose', 'extrapolate_motion']

SOURCES = ('rgb', 'events')
SELECTIONS = ('newest', 'similar')


@dataclass(frozen=True)
class Keyframe:
    """One keyframe. ``tokens`` (1, N, C) are the encoder's pre-final-norm patch tokens (the decoder input)."""

    id: int
    source: str
    tokens: Tensor
    cls: Tensor
    image_shape: tuple[int, int]
    K: np.ndarray
    stamp_ns: int
    frame_id: str = ''
    T_fixed_kf: np.ndarray | None = None
    fixed_frame: str = ''
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def has_fixed_pose(self) -> bool:
        return self.T_fixed_kf is not None


@dataclass(frozen=True)
class KeyframePolicy:
    """When to add keyframes and how to choose one.

    Attributes:
        capacity: keyframes kept (oldest evicted first).
        recent_k: selection looks at this many most recent keyframes.
        min_inliers: add a keyframe when the last estimate had fewer inliers.
        max_translation: add when the camera moved farther than this from the keyframe (pointmap units, metres).
        max_rotation_deg: add when the camera turned more than this since the keyframe.
        max_failures: add after this many consecutive rejected estimates (tracking lost).
        min_interval_ns: no automatic addition sooner than this after the last one (requests and an empty store
            ignore it).
        sources: sources selection may use ('rgb', 'events').
        selection: 'newest' or 'similar' (see the module docstring).
        max_bridged: how many rejected steps in a row the pose tracker may bridge with its motion model
            (:class:`realm_ros.pipeline.pose_tracker.PoseTracker`; the store only carries the setting).
    """

    capacity: int = 8
    recent_k: int = 4
    min_inliers: int = 60
    max_translation: float = 0.5
    max_rotation_deg: float = 15.0
    max_failures: int = 3
    min_interval_ns: int = 0
    sources: tuple[str, ...] = SOURCES
    selection: str = 'newest'
    max_bridged: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.recent_k < 1:
            raise ValueError(f'capacity and recent_k must be >= 1, got {self.capacity}, {self.recent_k}')
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ValueError(f'sources must be a non-empty subset of {SOURCES}, got {self.sources}')
        if self.selection not in SELECTIONS:
            raise ValueError(f'selection must be one of {SELECTIONS}, got {self.selection!r}')
        if self.max_bridged < 0:
            raise ValueError(f'max_bridged must be >= 0, got {self.max_bridged}')


class KeyframeDecision(NamedTuple):
    """Outcome of :meth:`KeyframeStore.update`: whether to add a keyframe now, why, and the composed pose."""

    add: bool
    reason: str
    T_fixed_cur: np.ndarray | None


def compose_pose(T_fixed_kf: np.ndarray, T_kf_cur: np.ndarray) -> np.ndarray:
    """Pose of the current camera in the fixed frame: ``T_fixed_kf @ T_kf_cur`` (4x4 each)."""
    a = np.asarray(T_fixed_kf, dtype=np.float64)
    b = np.asarray(T_kf_cur, dtype=np.float64)
    if a.shape != (4, 4) or b.shape != (4, 4):
        raise ValueError(f'poses must be 4x4, got {a.shape} and {b.shape}')
    return a @ b


def extrapolate_motion(T_motion: np.ndarray, dt_motion_s: float, dt_s: float, max_factor: float = 4.0
                       ) -> np.ndarray | None:
    """Constant-velocity prediction: the rigid motion ``T_motion`` (4x4, made over ``dt_motion_s`` seconds) scaled
    to ``dt_s`` seconds (rotation angle and translation times ``dt_s / dt_motion_s``). None when the factor is not
    in (0, ``max_factor``] (a prediction that far out is a guess) or the input is not finite."""
    if not (dt_motion_s > 0 and dt_s > 0) or not np.all(np.isfinite(T_motion)):
        return None
    f = dt_s / dt_motion_s
    if f > max_factor:
        return None
    rotvec = cv2.Rodrigues(np.asarray(T_motion[:3, :3], dtype=np.float64))[0]
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(rotvec * f)[0]
    out[:3, 3] = T_motion[:3, 3] * f
    return out


class KeyframeStore:
    """Bounded, thread-safe keyframe store with the add/select policy of :class:`KeyframePolicy`."""

    def __init__(self, policy: KeyframePolicy | None = None, device: torch.device | str | None = None) -> None:
        self.policy = policy or KeyframePolicy()
        self.device = torch.device(device) if device is not None else None
        self._frames: deque[Keyframe] = deque(maxlen=self.policy.capacity)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._requested = False
        self._failures = 0
        self._last_add_ns: int | None = None
        self.counters = {'added': 0, 'evicted': 0, 'requests': 0, 'failures': 0}

    # -- contents
    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    @property
    def keyframes(self) -> list[Keyframe]:
        """Keyframes, oldest first."""
        with self._lock:
            return list(self._frames)

    @property
    def latest(self) -> Keyframe | None:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def get(self, keyframe_id: int) -> Keyframe | None:
        with self._lock:
            return next((k for k in self._frames if k.id == keyframe_id), None)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._failures = 0

    def add(self, tokens: Tensor, cls: Tensor, image_shape: Sequence[int], K: Any, stamp_ns: int, *,
            source: str, frame_id: str = '', T_fixed_kf: Any = None, fixed_frame: str = '',
            extras: dict[str, Any] | None = None) -> Keyframe:
        """Store a keyframe (tokens are detached and kept on the store's device); evicts the oldest when full.

        Args:
            tokens: (N, C) or (1, N, C) pre-final-norm patch tokens of the keyframe view.
            cls: (C,) or (1, C) CLS token (normed; used for similarity).
            image_shape: (H, W) of the model input the tokens come from.
            K: 3x3 intrinsics of that model input.
            stamp_ns: timestamp (ROS time, ns).
            source: 'rgb' (DUNE on an image) or 'events' (REALM on an event window).
            T_fixed_kf: optional 4x4 camera pose in ``fixed_frame``.
        """
        if source not in SOURCES:
            raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
        if not isinstance(tokens, Tensor) or tokens.ndim not in (2, 3) or (tokens.ndim == 3 and tokens.shape[0] != 1):
            raise ValueError(f'tokens must be (N, C) or (1, N, C), got '
                             f'{tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}')
        tokens = tokens.detach().reshape(1, tokens.shape[-2], tokens.shape[-1])
        cls = cls.detach().reshape(-1) if isinstance(cls, Tensor) else torch.as_tensor(cls).reshape(-1)
        if cls.shape[0] != tokens.shape[-1]:
            raise ValueError(f'cls has {cls.shape[0]} channels, tokens have {tokens.shape[-1]}')
        if not bool(torch.isfinite(cls).all()):
            raise ValueError('cls contains non-finite values')
        h, w = (int(v) for v in image_shape)
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise ValueError(f'K must be a finite 3x3 matrix, got shape {K.shape}')
        pose = None
        if T_fixed_kf is not None:
            pose = np.asarray(T_fixed_kf, dtype=np.float64)
            if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
                raise ValueError(f'T_fixed_kf must be a finite 4x4 matrix, got shape {pose.shape}')
        if self.device is not None:
            tokens, cls = tokens.to(self.device), cls.to(self.device)
        with self._lock:
            kf = Keyframe(id=next(self._ids), source=source, tokens=tokens, cls=cls, image_shape=(h, w), K=K,
                          stamp_ns=int(stamp_ns), frame_id=frame_id, T_fixed_kf=pose, fixed_frame=fixed_frame,
                          extras=dict(extras or {}))
            if len(self._frames) == self._frames.maxlen:
                self.counters['evicted'] += 1
            self._frames.append(kf)
            self.counters['added'] += 1
            self._requested = False
            self._failures = 0
            self._last_add_ns = kf.stamp_ns
        return kf

    # -- policy
    def request_new(self) -> None:
        """Ask for a keyframe at the next opportunity (e.g. from a ROS service)."""
        with self._lock:
            self._requested = True
            self.counters['requests'] += 1

    def select(self, cls: Tensor, sources: Iterable[str] | None = None) -> Keyframe | None:
        """The newest keyframe of the allowed sources (``policy.selection`` 'newest') or the one among the
        ``recent_k`` most recent most similar to ``cls`` (cosine; 'similar')."""
        allowed = tuple(sources) if sources is not None else self.policy.sources
        with self._lock:
            candidates = [k for k in self._frames if k.source in allowed][-self.policy.recent_k:]
        if not candidates:
            return None
        if len(candidates) == 1 or self.policy.selection == 'newest':
            return candidates[-1]
        query = cls.detach().reshape(-1).float()
        bank = torch.stack([k.cls.to(query.device).float() for k in candidates])
        sims = torch.nn.functional.cosine_similarity(bank, query[None], dim=1)
        sims = torch.nan_to_num(sims, nan=-2.0)
        best = int(torch.argmax(sims))          # ties: the older keyframe (first maximum)
        return candidates[best]

    def update(self, keyframe: Keyframe | None, result: PoseResult | None, stamp_ns: int,
               intermediate: bool = False) -> KeyframeDecision:
        """Feed the latest estimate against ``keyframe`` and decide whether the current view should become one.

        ``intermediate``: the view is an earlier window the pose step took because the newest was too unlike the
        keyframe (``pose.similar_window_fallback``); a valid estimate of it makes it a keyframe (``intermediate``)
        when no other rule does, outside ``min_interval``: the next view will be at least as far from the keyframe.

        Returns the decision and, when the estimate is valid and the keyframe's fixed-frame pose is known, the
        current camera pose in the fixed frame (``T_fixed_kf @ T_kf_cur``).
        """
        p = self.policy
        with self._lock:
            empty = len(self._frames) == 0
            requested = self._requested
            if result is not None and not result.ok:
                self._failures += 1
                self.counters['failures'] += 1
            elif result is not None:
                self._failures = 0
            failures = self._failures
            recent_add = (self._last_add_ns is not None and p.min_interval_ns > 0
                          and int(stamp_ns) - self._last_add_ns < p.min_interval_ns)
        T_fixed_cur = None
        if keyframe is not None and result is not None and result.ok and keyframe.T_fixed_kf is not None:
            T_fixed_cur = compose_pose(keyframe.T_fixed_kf, result.T_ref_cur)
        if empty:
            return KeyframeDecision(True, 'empty', T_fixed_cur)
        if requested:
            return KeyframeDecision(True, 'requested', T_fixed_cur)
        if recent_add:
            return KeyframeDecision(False, 'min_interval', T_fixed_cur)
        if keyframe is None:
            return KeyframeDecision(True, 'no_keyframe_for_source', T_fixed_cur)
        if result is None:
            return KeyframeDecision(False, 'no_estimate', T_fixed_cur)
        if not result.ok:
            if failures >= p.max_failures:
                return KeyframeDecision(True, f'tracking_lost ({failures} failures, last: {result.reason})', None)
            return KeyframeDecision(False, f'rejected: {result.reason}', None)
        if result.num_inliers < p.min_inliers:
            return KeyframeDecision(True, f'low_inliers ({result.num_inliers} < {p.min_inliers})', T_fixed_cur)
        if result.translation_norm > p.max_translation:
            return KeyframeDecision(True, f'translation ({result.translation_norm:.3f} > {p.max_translation})',
                                    T_fixed_cur)
        if result.rotation_deg > p.max_rotation_deg:
            return KeyframeDecision(True, f'rotation ({result.rotation_deg:.1f} > {p.max_rotation_deg} deg)',
                                    T_fixed_cur)
        if intermediate:
            return KeyframeDecision(True, 'intermediate (the newest view was unlike the keyframe)', T_fixed_cur)
        return KeyframeDecision(False, 'tracking', T_fixed_cur)
