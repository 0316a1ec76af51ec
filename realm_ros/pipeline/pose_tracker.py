"""Relative pose of event windows against keyframes: MASt3R decoder -> reciprocal matches -> PnP-RANSAC.

:class:`PoseTracker` is the pose half of :class:`~realm_ros.pipeline.core.RealmPipeline`. The dense half hands it a
:class:`PoseInput` per window (decoder tokens, CLS token, model-space intrinsics, a picture for the match drawing);
the tracker keeps its own lock, so it can run in a worker of its own on the newest input while the dense outputs of
later windows are computed (the perception node does that). Every estimate carries the stamp of its window.

Keyframes come from earlier event windows (``keyframe_source='events'``) or from RGB images encoded by the DUNE
teacher (``'image'``, cross-modal pose); :class:`~realm_ros.geometry.keyframes.KeyframeStore` decides when the current
view becomes a keyframe (too few inliers, too much motion, repeated failures, an explicit request).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import render


#: the motion check (``pose.motion_check``) only judges estimates when the motion model predicts at least this (m)
MOTION_CHECK_MIN_M = 0.3


@dataclass
class PoseEstimate:
    """Pose of the current window's camera (optical frame) in ``reference``.

    ``reference`` is ``'keyframe'`` (the keyframe camera) or ``'fixed'`` (the first keyframe's camera; keyframe
    poses are chained). ``R``/``t`` map current-camera coordinates into the reference frame; ``covariance`` is 6x6
    (x y z rx ry rz, rotation perturbations about the reference axes) from the PnP solver; in the fixed frame it is
    rotated into that frame (the keyframe's own uncertainty is not added). ``T_fixed`` is the camera pose in the
    fixed frame when it is known (for TF / odometry), whatever ``reference`` is.
    """

    R: np.ndarray
    t: np.ndarray
    covariance: np.ndarray
    reference: str
    keyframe_stamp_ns: int
    num_matches: int
    num_inliers: int
    new_keyframe: bool
    T_fixed: Optional[np.ndarray] = None


@dataclass
class PoseInput:
    """What the pose worker needs of one window (computed by the dense half; detached from the encoder)."""

    stamp_ns: int
    tokens: torch.Tensor            # (1, N, D) decoder input tokens of the current view
    cls: torch.Tensor               # (D,) CLS token (keyframe selection)
    K_model: np.ndarray             # 3x3 intrinsics of the model input
    # (S, S, 3) uint8 BGR picture of the model input for the match drawing; None: rendered from ``event_sum`` when
    # first drawn (:meth:`drawing`), in the pose worker and only for the windows it steps on
    picture: Optional[np.ndarray] = None
    recv_monotonic_ns: int = 0      # arrival of the packet that completed the window (latency bookkeeping)
    generation: int = 0             # stream generation the window belongs to
    # (normed patch tokens (1, N, D), normed CLS (1, D)) for the depth head when the pose step takes the essential
    # solver's translation length from it (pose.length_source depth_head); None otherwise
    depth_tokens: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    # set by PoseTracker.choose_input: an earlier window stepped on instead of the newest, whose view failed the
    # appearance gate against the keyframe (pose.similar_window_fallback); a published estimate makes it a keyframe
    intermediate: bool = False
    event_sum: Optional[np.ndarray] = None      # (S, S) float32 sum of the window's voxel bins (the picture's source)

    def drawing(self) -> np.ndarray:
        """The picture for the match drawing (``picture``, rendered from ``event_sum`` at the first call)."""
        if self.picture is None:
            self.picture = (render.event_sum_picture(self.event_sum) if self.event_sum is not None
                            else np.zeros((1, 1, 3), np.uint8))
        return self.picture


@dataclass
class PoseOutput:
    """Result of one pose step: the estimate (None when rejected / no keyframe) and the match drawing."""

    stamp_ns: int
    pose: Optional[PoseEstimate] = None
    matches_image: Optional[np.ndarray] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)
    # the appearance gate's measure of this step's keyframe and view, and the gate's threshold (None: not computed,
    # e.g. no keyframe yet or pose.symmetric false)
    view_similarity: Optional[float] = None
    min_view_similarity: Optional[float] = None


class PoseTracker:
    """Keyframes + matching + PnP for one stream (thread-safe; see the module docstring).

    ``pipeline`` provides the models and the runtime configuration (``config``, ``mast3r``, ``dune``, ``device``,
    ``input_size``, ``_autocast``); ``count`` adds to the pipeline's diagnostics counters.
    """

    def __init__(self, pipeline: Any, count: Callable[[str], None]) -> None:
        from realm_ros.geometry.keyframes import KeyframeStore
        self._pipe = pipeline
        self._count = count
        self._lock = threading.RLock()
        self._pending_image: Optional[Tuple[np.ndarray, np.ndarray, int]] = None
        self._reset_requested = False
        # the newest view whose pose in the fixed frame is known, and that pose
        self._last_posed: Optional[Tuple[PoseInput, np.ndarray]] = None
        # the motion model: the last accepted estimate's T_kf_cur and its time span (s); rejected steps bridged so far
        self._motion: Optional[Tuple[np.ndarray, float]] = None
        self._bridged = 0
        self._inconsistent = 0          # estimates in a row that contradicted the motion model
        self.keyframes = KeyframeStore(pipeline._keyframe_policy(pipeline.config), device=pipeline.device)

    # ------------------------------------------------------------------------------------------------ control
    def reset(self) -> None:
        """Forget keyframes and the pose chain before the next step (never blocks)."""
        self._reset_requested = True

    def _apply_reset(self) -> None:
        if self._reset_requested:
            self._reset_requested = False
            self.keyframes.clear()
            self._pending_image = None
            self._last_posed = None
            self._motion = None
            self._bridged = 0
            self._inconsistent = 0

    def request_keyframe(self) -> None:
        self.keyframes.request_new()

    def offer_image(self, rgb: np.ndarray, K: np.ndarray, stamp_ns: int) -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f'keyframe image must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}')
        self._pending_image = (rgb, np.asarray(K, dtype=np.float64).reshape(3, 3), int(stamp_ns))

    def clear(self) -> None:
        with self._lock:
            self.keyframes.clear()

    # ------------------------------------------------------------------------------------------------ steps
    def _keyframe_sources(self) -> Tuple[str, ...]:
        """The keyframes a step may match: RGB ones (``keyframe.source image``) or earlier event windows."""
        return ('rgb',) if self._pipe.config.keyframe_source == 'image' else ('events',)

    def choose_input(self, candidates: Sequence[PoseInput]) -> PoseInput:
        """The window to step on among ``candidates`` (oldest first; the last is the newest).

        The newest, unless ``pose.similar_window_fallback`` is on (symmetric estimate, calibrated appearance gate)
        and the newest view fails the appearance gate against the keyframe it would be matched with (it would be
        rejected as ``dissimilar_views`` before decoding): then the newest earlier candidate that passes the gate and
        is newer than that keyframe, marked ``intermediate`` (its step publishes through the same gates, and
        :meth:`KeyframeStore.update` makes a view with a valid estimate the next keyframe, so the chain keeps a
        measured link instead of a bridged one). No candidate passes: the newest. Costs one appearance measure per
        candidate tried (0.26 ms on one idle core at 224 x 224)."""
        from realm_ros.geometry.symmetric import gates_for_decoder, keyframe_similarity
        newest = candidates[-1]
        cfg = self._pipe.config
        if len(candidates) < 2 or not cfg.pose_symmetric or not cfg.pose_similar_window_fallback \
                or self._pipe.mast3r is None:
            return newest
        with self._lock, torch.inference_mode():
            if self._reset_requested:
                return newest
            kf = self.keyframes.select(newest.cls, self._keyframe_sources())
            if kf is None:
                return newest
            gates = gates_for_decoder(self._pipe.mast3r, kf.source)
            size = (self._pipe.input_size, self._pipe.input_size)

            def passes(view: PoseInput) -> bool:         # broken model output (non-finite tokens): it does not
                return bool(torch.isfinite(view.tokens).all()) and not gates.views_differ(
                    keyframe_similarity(kf, view.tokens, size, gates.similarity_cells))
            if not gates.publish or passes(newest) or not bool(torch.isfinite(newest.tokens).all()):
                return newest                # (non-finite tokens: the step rejects them as non_finite_input)
            for cand in reversed(candidates[:-1]):
                if cand.stamp_ns <= kf.stamp_ns:
                    break
                if cand.generation == newest.generation and passes(cand):
                    return replace(cand, intermediate=True)
        return newest

    def _image_keyframe(self, T_fixed: Optional[np.ndarray]) -> Any:
        """Encode the newest offered RGB image with the DUNE teacher and store it (cross-modal keyframe)."""
        from realm_ros.events.spatial import prepare_input
        pipe = self._pipe
        pending, self._pending_image = self._pending_image, None
        if pending is None:
            return None
        rgb, K_img, stamp = pending
        device = pipe.device
        img = torch.from_numpy(rgb).to(device).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406], device=device)[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225], device=device)[:, None, None]
        prep = prepare_input((img - mean) / std, size=pipe.input_size, mode='crop')
        with pipe._autocast():
            feats = pipe.dune.encoder.forward_features(prep.tensor[:1], apply_norm=True)
        depth = self._view_depth((feats['x_norm_patchtokens'].float(), feats['x_norm_clstoken'].float()))
        picture = (prep.tensor[0] * std + mean).clamp(0, 1).mul(255).byte().permute(1, 2, 0).cpu().numpy()
        self._count('image_keyframes')
        return self.keyframes.add(feats['x_prenorm_patchtokens'].float(), feats['x_norm_clstoken'].float(),
                                  (pipe.input_size, pipe.input_size), prep.model_intrinsics(K_img)[0], stamp,
                                  source='rgb', T_fixed_kf=T_fixed,
                                  extras={'picture': np.ascontiguousarray(picture[..., ::-1]), 'depth': depth})

    def _view_depth(self, depth_tokens: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> Optional[np.ndarray]:
        """Depth-head map (model input size) of a view from its normed tokens, when the pose step takes the
        essential solver's translation length from it (``pose.length_source``); None otherwise."""
        pipe = self._pipe
        if depth_tokens is None or not getattr(pipe, 'pose_uses_depth_head', False):
            return None
        patch, cls = depth_tokens
        n = int(pipe.input_size) // int(pipe.patch_size)
        grid = (n, n)
        with torch.no_grad(), pipe._autocast():
            d = pipe.depth_head(patch.to(pipe.device), cls.to(pipe.device), grid,
                                out_size=(pipe.input_size, pipe.input_size))
        return d[0, 0].float().cpu().numpy()

    def _symmetric_pose(self, kf: Any, cur_tokens: torch.Tensor, size: Tuple[int, int], K_model: np.ndarray,
                        out: PoseOutput,
                        depth_current: Optional[Callable[[], Optional[np.ndarray]]] = None) -> Tuple[Any, Any]:
        """``pose.symmetric``: both decoder orders, combined pose, gates calibrated for the loaded decoder
        (:mod:`realm_ros.geometry.symmetric`); returns (PoseResult, matches of the keyframe-first order) and adds
        the stage times to ``out.timings_ms`` (``pose_decoder_ms``, ``pose_matching_direct_ms``, ...) and the
        appearance gate's measure and threshold to ``out``."""
        from realm_ros.geometry.relative_pose import MatchingParams
        from realm_ros.geometry.symmetric import gates_for_decoder, symmetric_relative_pose
        pipe = self._pipe
        gates = gates_for_decoder(pipe.mast3r, kf.source)
        est = symmetric_relative_pose(pipe.mast3r, kf, cur_tokens, size, K_model, pnp=pipe._pnp_params,
                                      matching=MatchingParams(subsample=pipe.config.match_subsample, border=3),
                                      gates=gates, decoder_dtype=pipe.pose_decoder_dtype,
                                      depth_keyframe=kf.extras.get('depth'), depth_current=depth_current,
                                      decoder_maps=pipe.pose_decoder_maps)
        out.timings_ms.update({f'pose_{k}_ms': v * 1e3 for k, v in est.timings_s.items()})
        if np.isfinite(est.view_similarity):                         # NaN: rejected before it was measured
            out.view_similarity = float(est.view_similarity)
            out.min_view_similarity = float(gates.min_view_similarity) if gates.publish else None
        return est.pose, est.matches

    def _gate_direct(self, result: Any, kf: Any, cur_tokens: torch.Tensor, size: Tuple[int, int]) -> Any:
        """``pose.symmetric: false``: the one-order estimate through the gates calibrated for it (``direct``),
        the appearance gate included."""
        from realm_ros.geometry.gates import gates_for_decoder
        from realm_ros.geometry.symmetric import gate_pose, keyframe_similarity
        if not result.ok:
            return result
        gates = gates_for_decoder(self._pipe.mast3r, kf.source, method='direct')
        sim = keyframe_similarity(kf, cur_tokens, size, gates.similarity_cells)
        reason = gate_pose(result, result, None, float(np.linalg.norm(result.t)), gates, sim)
        if reason:
            return replace(result, ok=False, reason=reason)
        if result.covariance is None:
            return result
        # the covariance model calibrated with the gates (the one the calibration scored)
        return replace(result, covariance=np.asarray(result.covariance) * gates.covariance_scale
                       + np.diag(gates.floor_diagonal))

    def _predict(self, kf: Any, inp: PoseInput) -> Optional[np.ndarray]:
        """The motion model's ``T_kf_cur`` for ``inp`` (None without a model or beyond its reach)."""
        from realm_ros.geometry.keyframes import extrapolate_motion
        if self._motion is None:
            return None
        return extrapolate_motion(*self._motion, (inp.stamp_ns - kf.stamp_ns) * 1e-9)

    def _check_motion(self, result: Any, kf: Any, inp: PoseInput) -> Any:
        """``pose.motion_check``: reject an estimate that contradicts the motion model (translation pointing more
        than 90 deg away from the predicted one, or shorter than a third of it, while the prediction is at least
        ``MOTION_CHECK_MIN_M``) as ``inconsistent_motion``: the miniature decoder's matches that stick near the
        keyframe pixel pass the gates as a short, often backward, motion. Two such rejections in a row drop the model
        (the camera may really have stopped or reversed), so the next estimate is taken on its own."""
        if not result.ok or not self._pipe.config.pose_motion_check:
            return result
        T_pred = self._predict(kf, inp)
        if T_pred is None or np.linalg.norm(T_pred[:3, 3]) < MOTION_CHECK_MIN_M:
            self._inconsistent = 0
            return result
        pred, est = T_pred[:3, 3], result.T_ref_cur[:3, 3]
        cos = float(pred @ est) / max(float(np.linalg.norm(pred) * np.linalg.norm(est)), 1e-12)
        if cos >= 0.0 and np.linalg.norm(est) >= np.linalg.norm(pred) / 3.0:
            self._inconsistent = 0
            return result
        self._inconsistent += 1
        if self._inconsistent >= 2:
            self._motion, self._inconsistent = None, 0
        return replace(result, ok=False, reason='inconsistent_motion')

    def _bridge(self, kf: Any, inp: PoseInput, add_current: Callable[..., Any]) -> bool:
        """A rejected step in a fixed-frame chain of event keyframes: make the current view a keyframe with the pose
        the constant-velocity motion model predicts (the last accepted estimate's motion, scaled to this view's time
        since the keyframe), so the next step matches a short baseline instead of a growing one and the chain stays
        in ``pose.fixed_frame``. At most ``keyframe.max_bridged`` times in a row; no pose is published for the
        bridged view itself (counted as ``keyframe_reason.bridged``). Returns whether it bridged."""
        cfg = self._pipe.config
        if (cfg.pose_frame != 'fixed' or cfg.keyframe_source == 'image' or kf.T_fixed_kf is None
                or self._bridged >= self.keyframes.policy.max_bridged):
            return False
        T_pred = self._predict(kf, inp)
        if T_pred is None:
            return False
        self._bridged += 1
        add_current(kf.T_fixed_kf @ T_pred)
        self._count('keyframe_reason.bridged')
        return True

    def step(self, inp: PoseInput) -> PoseOutput:
        """Match ``inp`` against the best keyframe, solve PnP, update the keyframe store."""
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            self._apply_reset()
            out = PoseOutput(stamp_ns=inp.stamp_ns)
            self._step(inp, out)
            out.timings_ms['pose_ms'] = (time.perf_counter() - t0) * 1e3
            return out

    def _step(self, inp: PoseInput, out: PoseOutput) -> None:
        from realm_ros.geometry.matching import fast_reciprocal_nn
        from realm_ros.geometry.pose import solve_relative_pose_pnp
        pipe = self._pipe
        cfg = pipe.config
        store = self.keyframes
        size = (pipe.input_size, pipe.input_size)
        stamp_ns, cur_tokens, cur_cls, K_model = inp.stamp_ns, inp.tokens, inp.cls, inp.K_model
        image_source = cfg.keyframe_source == 'image'
        sources = self._keyframe_sources()
        first = len(store) == 0

        depths: Dict[int, Optional[np.ndarray]] = {}

        def depth_of(view: PoseInput) -> Optional[np.ndarray]:
            if id(view) not in depths:
                depths[id(view)] = self._view_depth(view.depth_tokens)
            return depths[id(view)]

        def add_current(T_fixed: Optional[np.ndarray], view: PoseInput = inp) -> Any:
            self._count('event_keyframes')
            return store.add(view.tokens, view.cls, size, view.K_model, view.stamp_ns, source='events',
                             T_fixed_kf=T_fixed, extras={'picture': view.drawing(), 'depth': depth_of(view)})

        kf = store.select(cur_cls, sources)
        if kf is None:
            if image_source:
                kf = self._image_keyframe(np.eye(4) if first else None)
                if kf is None:
                    self._count('pose_without_keyframe')     # no RGB image received yet
                    return
            else:
                kf = add_current(np.eye(4) if first else None)
                ref = 'fixed' if cfg.pose_frame == 'fixed' else 'keyframe'
                if ref == 'keyframe' or kf.T_fixed_kf is not None:
                    T = kf.T_fixed_kf if ref == 'fixed' else np.eye(4)
                    out.pose = PoseEstimate(R=T[:3, :3].copy(), t=T[:3, 3].copy(), covariance=np.zeros((6, 6)),
                                            reference=ref, keyframe_stamp_ns=kf.stamp_ns, num_matches=0,
                                            num_inliers=0, new_keyframe=True, T_fixed=kf.T_fixed_kf)
                picture = inp.drawing()
                out.matches_image = render.draw_matches(picture, picture, np.zeros((0, 2)), np.zeros((0, 2)))
                return
        if cfg.pose_symmetric:
            result, matches = self._symmetric_pose(kf, cur_tokens, size, K_model, out,
                                                   depth_current=lambda: depth_of(inp))
        else:
            pred1, pred2 = pipe.mast3r(kf.tokens, cur_tokens, kf.image_shape, size)
            matches = fast_reciprocal_nn(pred1['desc'][0], pred2['desc'][0], subsample=cfg.match_subsample,
                                         border=3)
            result = solve_relative_pose_pnp(matches.xy1, matches.xy2, pred1['pts3d'][0], K_model,
                                             conf_ref=pred1.get('conf', [None])[0],
                                             desc_conf_ref=pred1.get('desc_conf', [None])[0],
                                             desc_conf_cur=pred2.get('desc_conf', [None])[0],
                                             params=pipe._pnp_params, K_ref=kf.K, depth_ref=kf.extras.get('depth'))
            result = self._gate_direct(result, kf, cur_tokens, size)
        self._count('pose_attempts')
        result = self._check_motion(result, kf, inp)
        decision = store.update(kf, result, stamp_ns, intermediate=inp.intermediate and not image_source)
        inliers = np.zeros(matches.count, bool)
        if result.inliers.size:
            inliers[result.inliers] = True
        out.matches_image = render.draw_matches(kf.extras.get('picture', inp.drawing()), inp.drawing(), matches.xy1,
                                                matches.xy2, inliers, cfg.max_matches_drawn)
        if not result.ok:
            self._count(f'pose_rejected.{result.reason}')
        else:
            T_kf_cur = result.T_ref_cur
            cov = np.asarray(result.covariance, np.float64) if result.covariance is not None else np.zeros((6, 6))
            T, ref = T_kf_cur, 'keyframe'
            if cfg.pose_frame == 'fixed':
                T, ref = decision.T_fixed_cur, 'fixed'
                if T is not None and kf.T_fixed_kf is not None:
                    R_fk = kf.T_fixed_kf[:3, :3]
                    A = np.kron(np.eye(2), R_fk)
                    cov = A @ cov @ A.T
                else:
                    self._count('fixed_pose_unknown')       # keyframe without a fixed-frame pose (tracking lost)
            if T is not None:
                out.pose = PoseEstimate(R=T[:3, :3].copy(), t=T[:3, 3].copy(), covariance=cov, reference=ref,
                                        keyframe_stamp_ns=kf.stamp_ns, num_matches=matches.count,
                                        num_inliers=result.num_inliers, new_keyframe=False,
                                        T_fixed=decision.T_fixed_cur)
        if result.ok and decision.T_fixed_cur is not None and not image_source:
            self._last_posed = (inp, decision.T_fixed_cur)
        if result.ok:
            dt = (stamp_ns - kf.stamp_ns) * 1e-9
            self._motion = (result.T_ref_cur, dt) if dt > 0 else None
            self._bridged = 0
        elif self._bridge(kf, inp, add_current):
            return
        if decision.add:
            last = self._last_posed
            if (not image_source and decision.T_fixed_cur is None and decision.reason.startswith('tracking_lost')
                    and last is not None and last[0].stamp_ns > kf.stamp_ns):
                # tracking lost: the newest view with a known fixed-frame pose becomes the keyframe (not the current
                # one, whose pose is unknown), so later estimates against it still chain into pose.fixed_frame
                self._last_posed = None
                add_current(last[1], view=last[0])
                self._count('keyframe_reason.tracking_lost_last_posed')
            else:
                T_new = decision.T_fixed_cur
                if (T_new is None and not image_source and cfg.pose_frame == 'fixed' and kf.T_fixed_kf is not None
                        and decision.reason.startswith('tracking_lost')):
                    # tracking lost in an anchored chain: the current view is re-anchored where the motion model
                    # puts it (standing still when it has none), so the chain stays in pose.fixed_frame
                    T_pred = self._predict(kf, inp)
                    T_new = kf.T_fixed_kf @ (T_pred if T_pred is not None else np.eye(4))
                    self._count('fixed_frame_reanchored')
                new = self._image_keyframe(None) if image_source else add_current(T_new)
                if new is not None:
                    self._count('keyframe_reason.' + decision.reason.split(' ')[0])
                    if out.pose is not None:
                        out.pose.new_keyframe = True
