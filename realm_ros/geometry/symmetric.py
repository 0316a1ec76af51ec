"""Symmetric relative pose: decode the pair in both orders, solve PnP twice, combine, reject when the orders disagree.

Why: a DUNE-MASt3R-style decoder is not symmetric in its two views. The miniature decoder, for instance, pulls its
matches toward the image centre of view 2 (measured: with the *same* tokens in both views the matched radius shrinks
by 0.7 % on RGB tokens, 3.5-4.5 % on event tokens), which PnP turns into a spurious backward motion of about 0.1 m.
Solving the swapped pair (current = view 1, keyframe = view 2) gives the inverse motion with the *opposite* bias;
inverting it and averaging with the direct estimate cancels the bias to first order, and the difference between the
two is a direct measure of the error the bias and the noise leave (on unrelated views the orders disagree widely).

* :func:`decode_both_orders` - one batched decoder call for (keyframe, current) and (current, keyframe) when the
  two inputs have the same size (two calls otherwise);
* :func:`symmetric_relative_pose` - the pose estimate (drop-in for
  :func:`realm_ros.geometry.relative_pose.estimate_relative_pose`, same :class:`PoseResult` conventions) with
  :class:`PoseGates` applied and the order agreement reported;
* :func:`combine_orders`, :func:`order_agreement`, :func:`invert_pose_covariance` - the numpy pieces.

ROS-free (numpy, torch, OpenCV).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from .gates import SIMILARITY_CELLS, PoseGates, gates_for_decoder, token_grid, view_similarity
from .keyframes import Keyframe
from .matching import ReciprocalMatches, fast_reciprocal_nn
from .pose import PnpParams, PoseResult, normalised_pixels, refine_two_view
from .relative_pose import MatchingParams, _solve_on_device_gather, _sync

__all__ = ['PoseGates', 'OrderAgreement', 'SymmetricPoseEstimate', 'decode_both_orders', 'symmetric_relative_pose',
           'DECODER_DTYPES', 'DecoderDtype', 'split_decoder_dtype',
           'combine_orders', 'refine_combined', 'order_agreement', 'invert_pose_covariance', 'gate_pose', 'order_gate',
           'skew', 'gates_for_decoder', 'keyframe_similarity']


@dataclass(frozen=True)
class OrderAgreement:
    """How far the direct and the inverted swapped-order estimates of ``T_ref_cur`` are apart."""

    rot_deg: float              # angle of R_direct^T R_swapped
    trans_m: float              # distance between the two camera-centre estimates
    trans_ratio: float          # trans_m / max(mean translation norm, min_translation_m)
    dir_deg: float              # angle between the two translation directions (nan when one is ~0)
    delta: np.ndarray           # 6-vector (x, y, z, rx, ry, rz) swapped - direct, left rotation perturbation


@dataclass(frozen=True)
class SymmetricPoseEstimate:
    """Combined pose (``pose``; ``ok`` False with a reason when gated out) and what produced it."""

    pose: PoseResult
    direct: PoseResult                      # PnP of (keyframe, current): T_cur_ref
    swapped: PoseResult                     # PnP of (current, keyframe): T_ref_cur as its own T_cur_ref
    agreement: OrderAgreement | None
    matches: ReciprocalMatches              # matches of the direct order (keyframe = image 1)
    keyframe_id: int
    timings_s: dict[str, float] = field(default_factory=dict)
    pred_keyframe: dict[str, Tensor] | None = None
    pred_current: dict[str, Tensor] | None = None
    desc_conf_median: float = float('nan')  # median min(desc_conf) over the direct matches
    view_similarity: float = float('nan')   # :func:`realm_ros.geometry.gates.view_similarity` of the two views


def skew(v: Any) -> np.ndarray:
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def _inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def _log_so3(R: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(R, dtype=np.float64))[0].reshape(3)


def _exp_so3(w: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(w, dtype=np.float64).reshape(3, 1))[0]


def invert_pose_covariance(cov: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Covariance of ``T^-1`` from the covariance of ``T`` (6x6, order x y z rx ry rz, perturbation ``R' = exp(w) R``,
    ``t' = t + dt`` as :class:`PoseResult`): ``J C J^T`` with ``J = [[-R^T, -R^T [t]x], [0, -R^T]]``."""
    R, t = T[:3, :3], T[:3, 3]
    J = np.zeros((6, 6))
    J[:3, :3] = -R.T
    J[:3, 3:] = -R.T @ skew(t)
    J[3:, 3:] = -R.T
    return J @ np.asarray(cov, dtype=np.float64) @ J.T


def order_agreement(T_direct: np.ndarray, T_swapped: np.ndarray, min_translation_m: float = 0.2) -> OrderAgreement:
    """Disagreement of two estimates of the same ``T_ref_cur`` (4x4 camera poses in the keyframe frame)."""
    Ra, ta = T_direct[:3, :3], T_direct[:3, 3]
    Rb, tb = T_swapped[:3, :3], T_swapped[:3, 3]
    w = _log_so3(Rb @ Ra.T)
    d = tb - ta
    na, nb = float(np.linalg.norm(ta)), float(np.linalg.norm(tb))
    ref = max(0.5 * (na + nb), float(min_translation_m), 1e-9)
    dir_deg = float('nan')
    if min(na, nb) > 1e-9:
        dir_deg = float(np.degrees(np.arccos(np.clip(ta @ tb / (na * nb), -1.0, 1.0))))
    return OrderAgreement(rot_deg=float(np.degrees(np.linalg.norm(w))), trans_m=float(np.linalg.norm(d)),
                          trans_ratio=float(np.linalg.norm(d)) / ref, dir_deg=dir_deg,
                          delta=np.concatenate([d, w]))


def combine_orders(T_direct: np.ndarray, T_swapped: np.ndarray, cov_direct: np.ndarray | None = None,
                   cov_swapped: np.ndarray | None = None, gates: PoseGates = PoseGates()
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Midpoint of two estimates of ``T_ref_cur`` (geodesic rotation midpoint, mean camera centre) and its
    covariance (see :class:`PoseGates`; None when either input covariance is missing)."""
    Ra, Rb = T_direct[:3, :3], T_swapped[:3, :3]
    R = _exp_so3(0.5 * _log_so3(Rb @ Ra.T)) @ Ra
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = 0.5 * (T_direct[:3, 3] + T_swapped[:3, 3])
    if cov_direct is None or cov_swapped is None:
        return T, None
    d = order_agreement(T_direct, T_swapped).delta
    cov = gates.covariance_scale * (0.5 * (np.asarray(cov_direct) + np.asarray(cov_swapped)) + np.outer(d, d) / 4)
    cov = cov + np.diag(gates.floor_diagonal)
    return T, 0.5 * (cov + cov.T)


def gate_pose(direct: PoseResult, swapped: PoseResult, agreement: OrderAgreement | None, translation_m: float,
              gates: PoseGates, similarity: float | None = None) -> str:
    """The first failing gate's reason ('' when all pass). ``similarity`` (:func:`view_similarity` of the pair)
    None skips the appearance gate (callers that do not know it)."""
    if not gates.publish:
        return 'not_better_than_chance'
    if similarity is not None and gates.views_differ(similarity):
        return 'dissimilar_views'
    for res in (direct, swapped):
        reason = order_gate(res, gates)
        if reason:
            return reason
    if agreement is not None:
        if agreement.rot_deg > gates.max_order_rot_deg:
            return 'order_disagreement_rotation'
        if agreement.trans_ratio > gates.max_order_trans_ratio:
            return 'order_disagreement_translation'
    if gates.max_translation_m > 0 and translation_m > gates.max_translation_m:
        return 'implausible_motion'
    return ''


def keyframe_similarity(keyframe: Keyframe, tokens: Tensor, image_shape: tuple[int, int],
                        cells: int = SIMILARITY_CELLS) -> float:
    """:func:`view_similarity` of a keyframe and the current view's decoder input tokens (the appearance gate's
    measure, pooled to ``cells`` x ``cells``: ``PoseGates.similarity_cells`` of the gates it is compared with)."""
    return view_similarity(keyframe.tokens, token_grid(keyframe.image_shape, keyframe.tokens), tokens,
                           token_grid(image_shape, tokens), cells)


def order_gate(res: PoseResult, gates: PoseGates) -> str:
    """The gates one order's PnP result must pass on its own (solved, ``min_inliers``, ``min_inlier_ratio``): the
    first failing one's reason, '' when it passes."""
    if not res.ok:
        return res.reason or 'pnp_failed'
    if res.num_inliers < gates.min_inliers:
        return 'too_few_inliers'
    if res.inlier_ratio < gates.min_inlier_ratio:
        return 'low_inlier_ratio'
    return ''


def _autocast_to(device_type: str, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` (None: no context, exact fp32)."""
    return torch.autocast(device_type=device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _lean_head_outputs(head: Any, tokens: list[Tensor], grid: tuple[int, int], config: Any,
                       compute_dtype: torch.dtype | None, points: bool = True,
                       channels_last: bool | None = None) -> tuple[dict[str, Tensor], bool]:
    """Post-processed outputs of one view's ``catmlp+dpt`` head (``two_confs``): ``desc`` / ``desc_conf`` from the
    local-feature channels, and with ``points`` also ``pts3d`` / ``conf`` from the DPT. Each part is
    post-processed from its own map (:meth:`CatMlpDptHead.local_feature_map`), not from the concatenated raw
    output: no pixel shuffle, no concatenation, no zero channels for a skipped DPT. The values are bit-identical to
    ``postprocess_head_output(head(tokens))``: the channel reductions (descriptor and point norms) run over the same
    memory layout as there, that of the DPT's output, which ``torch.cat`` passes on to the raw output (channels-last
    from the CPU convolutions: no copy; otherwise the local map is laid out channel-first, one copy). Without
    ``points``, ``channels_last`` gives that layout (the other view's of the same call). Returns the outputs and
    the layout. ``compute_dtype``: the raw maps are computed under autocast to it and post-processed in fp32."""
    with _autocast_to(tokens[0].device.type, compute_dtype):
        dense = head.dpt(tokens, grid) if points else None
        local = head.local_feature_map(tokens, grid)
    if dense is not None:
        channels_last = dense.is_contiguous(memory_format=torch.channels_last) and not dense.is_contiguous()
    local = local.float()
    if not channels_last:
        local = local.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return _postprocess_maps(dense.permute(0, 2, 3, 1) if dense is not None else None, local, config), \
        bool(channels_last)


def _postprocess_maps(dense: Tensor | None, local: Tensor, config: Any, raw_buffers: bool = False
                      ) -> dict[str, Tensor]:
    """``pts3d`` / ``conf`` of a channels-last DPT map (B, H, W, C; None: none) and ``desc`` / ``desc_conf`` of a
    channels-last local-feature map, in fp32. ``raw_buffers``: the maps are a runtime's reused output buffers, so
    an output that is a view of them (a linear point mode, unnormalised descriptors) is copied."""
    from realm_ros.models.mast3r.postprocess import postprocess_local_features, postprocess_points
    with torch.autocast(device_type=local.device.type, enabled=False):
        out = postprocess_points(dense.float(), config) if dense is not None else {}
        out.update(postprocess_local_features(local.float(), config))
    if raw_buffers:
        raw = {m.untyped_storage().data_ptr() for m in (dense, local) if m is not None}
        out = {k: v.clone() if v.untyped_storage().data_ptr() in raw else v for k, v in out.items()}
    return out


#: what a decoder pass computes in: None (fp32, exact), one dtype for the decoder blocks and the heads, or a pair
#: ``(blocks, heads)`` (e.g. ``(None, torch.bfloat16)``: fp32 blocks, bf16 DPT and local-feature heads)
DecoderDtype = Union[torch.dtype, Tuple[Optional[torch.dtype], Optional[torch.dtype]], None]

#: ``pose.decoder_precision`` -> :data:`DecoderDtype`: ``bf16-heads`` keeps the cross-attention blocks in fp32 and
#: runs the heads (view 1's DPT, both local-feature MLPs; ~55 % of the miniature decoder's CPU time) in bf16
DECODER_DTYPES: dict[str, DecoderDtype] = {'fp32': None, 'bf16': torch.bfloat16, 'bf16-heads': (None, torch.bfloat16)}


def split_decoder_dtype(dtype: DecoderDtype) -> tuple[torch.dtype | None, torch.dtype | None]:
    """``(blocks, heads)`` compute types of a :data:`DecoderDtype`."""
    if isinstance(dtype, tuple):
        if len(dtype) != 2:
            raise ValueError(f'a decoder dtype pair is (blocks, heads), got {dtype!r}')
        return dtype[0], dtype[1]
    return dtype, dtype


def _decode_pair(decoder: Any, t1: Tensor, t2: Tensor, shape1: Any, shape2: Any, view2_points: bool,
                 compute_dtype: DecoderDtype = None, maps: Any = None
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``decoder(t1, t2, shape1, shape2)``; with ``view2_points`` False, the ``catmlp+dpt`` head and a separate
    descriptor confidence (``two_confs``), view 2's DPT branch (points and their confidence, which pose never reads:
    PnP takes view 1's points) is skipped and view 2 gets only ``desc`` / ``desc_conf`` (bit-identical to the full
    forward).

    ``compute_dtype`` (e.g. ``torch.bfloat16``, or a ``(blocks, heads)`` pair, :data:`DecoderDtype`): the decoder
    blocks and / or the heads run under autocast to that type (an approximation: the raw head outputs are cast back
    to fp32 and post-processed in fp32); None: exact fp32.

    ``maps`` (e.g. :class:`realm_ros.models.mast3r.compiled.OpenVinoPairMaps`; needs ``view2_points`` False and fp32
    decoder blocks): computes the raw maps ``(dense1, local1, local2)`` of the pair instead of the eager decoder
    (:class:`realm_ros.models.mast3r.compiled.PairMaps`), with the heads in the heads' compute type; they are
    post-processed here as the eager ones are."""
    from realm_ros.models.mast3r.heads import CatMlpDptHead
    from realm_ros.models.mast3r.model import DuneMast3rDecoder, _as_hw
    if view2_points or not isinstance(decoder, DuneMast3rDecoder) or not decoder.config.two_confs \
            or not isinstance(decoder.mast3r.downstream_head2, CatMlpDptHead):
        if compute_dtype is None:
            return decoder(t1, t2, shape1, shape2)      # (without two_confs, desc_conf is the DPT's confidence)
        raise ValueError('a reduced-precision decoder needs the catmlp+dpt head with two_confs (DUNE-MASt3R)')
    hw1, hw2 = _as_hw(shape1, 'shape1'), _as_hw(shape2, 'shape2')
    grid1 = decoder._check_tokens(t1, hw1, 'tokens1')
    grid2 = decoder._check_tokens(t2, hw2, 'tokens2')
    blocks_dtype, heads_dtype = split_decoder_dtype(compute_dtype)
    if maps is not None:
        if blocks_dtype is not None:
            raise ValueError('compiled decoder maps run the decoder blocks in fp32: no blocks compute_dtype')
        dense1, local1, local2 = maps(t1, t2, grid1, grid2, copy=False, heads_dtype=heads_dtype)
        cfg = decoder.config
        return (_postprocess_maps(dense1, local1, cfg, raw_buffers=True),
                _postprocess_maps(None, local2, cfg, raw_buffers=True))
    with _autocast_to(t1.device.type, blocks_dtype):
        dec1, dec2 = decoder.decode(t1, t2, grid1, grid2)
    if heads_dtype is None:
        dec1, dec2 = [t.float() for t in dec1], [t.float() for t in dec2]
    m, cfg = decoder.mast3r, decoder.config
    pred1, layout = _lean_head_outputs(m.downstream_head1, list(dec1), grid1, cfg, heads_dtype)
    pred2, _ = _lean_head_outputs(m.downstream_head2, list(dec2), grid2, cfg, heads_dtype, points=False,
                                  channels_last=layout)
    return pred1, pred2


def decode_both_orders(decoder: Any, tokens_kf: Tensor, tokens_cur: Tensor, shape_kf: Any, shape_cur: Any, *,
                       view2_points: bool = True, compute_dtype: DecoderDtype = None, maps: Any = None
                       ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Decoder outputs of (keyframe, current) and (current, keyframe): ``(kf_direct, cur_direct, cur_swapped,
    kf_swapped)``, each with a batch dimension of 1. One batched call when both inputs have the same size.

    ``view2_points`` False: the view-2 outputs (``cur_direct``, ``kf_swapped``) hold only ``desc`` and
    ``desc_conf`` (what matching and PnP read of view 2); the decoder then skips their DPT branch, which is about
    half of its head cost. The outputs that are returned are bit-identical either way. ``compute_dtype``: see
    :func:`_decode_pair` (needs ``view2_points`` False); so does ``maps`` (compiled raw maps, see there)."""
    if compute_dtype is not None and view2_points:
        raise ValueError('compute_dtype needs view2_points=False')
    if maps is not None and view2_points:
        raise ValueError('compiled decoder maps need view2_points=False')
    device = next(decoder.parameters()).device
    a = (tokens_kf if tokens_kf.ndim == 3 else tokens_kf[None]).to(device)
    b = (tokens_cur if tokens_cur.ndim == 3 else tokens_cur[None]).to(device)
    with torch.no_grad():
        if tuple(shape_kf) == tuple(shape_cur) and a.shape == b.shape:
            p1, p2 = _decode_pair(decoder, torch.cat([a, b]), torch.cat([b, a]), tuple(shape_kf), tuple(shape_cur),
                                  view2_points, compute_dtype, maps)
            first = {k: v[:1] for k, v in p1.items()}
            second = {k: v[:1] for k, v in p2.items()}
            swap1 = {k: v[1:2] for k, v in p1.items()}
            swap2 = {k: v[1:2] for k, v in p2.items()}
            return first, second, swap1, swap2
        f1, f2 = _decode_pair(decoder, a, b, tuple(shape_kf), tuple(shape_cur), view2_points, compute_dtype, maps)
        s1, s2 = _decode_pair(decoder, b, a, tuple(shape_cur), tuple(shape_kf), view2_points, compute_dtype, maps)
        return f1, f2, s1, s2


def _match_and_solve(pred1: dict[str, Tensor], pred2: dict[str, Tensor], K2: Any, pnp: PnpParams,
                     matching: MatchingParams, timings: dict[str, float] | None = None, order: str = '',
                     K1: Any = None, depth1: Any = None) -> tuple[PoseResult, ReciprocalMatches]:
    t0 = time.perf_counter()
    matches = fast_reciprocal_nn(pred1['desc'][0], pred2['desc'][0], matching.subsample, max_iter=matching.max_iter,
                                 border=matching.border, compute_dtype=matching.compute_dtype, prune=matching.prune)
    t1 = time.perf_counter()
    if not matches.count:
        res = PoseResult(ok=False, reason='too_few_matches')
    else:
        res = _solve_on_device_gather(pred1, pred2, matches, K2, pnp, K_ref=K1, depth_ref=depth1)
    if timings is not None:
        timings[f'matching_{order}'] = t1 - t0
        timings[f'pnp_{order}'] = time.perf_counter() - t1
    return res, matches


def refine_combined(T_ref_cur: np.ndarray, direct: PoseResult, m_direct: ReciprocalMatches, swapped: PoseResult,
                    m_swapped: ReciprocalMatches, K_ref: Any, K_cur: Any, params: PnpParams) -> np.ndarray:
    """The essential solver's combined estimate: the midpoint of the two orders (``T_ref_cur``) refined on the
    inliers of *both* orders together (:func:`realm_ros.geometry.pose.refine_two_view`, robust Sampson residuals;
    rotation and translation direction), keeping the midpoint's translation length. Returns ``T_ref_cur``."""
    x_ref = np.concatenate([m_direct.xy1[direct.inliers], m_swapped.xy2[swapped.inliers]]).astype(np.float64)
    x_cur = np.concatenate([m_direct.xy2[direct.inliers], m_swapped.xy1[swapped.inliers]]).astype(np.float64)
    Tc = _inv(T_ref_cur)
    length = float(np.linalg.norm(Tc[:3, 3]))
    if len(x_ref) < 5 or not length > 0:
        return T_ref_cur
    K_cur = np.asarray(K_cur, dtype=np.float64)
    f = 0.5 * (K_cur[0, 0] + K_cur[1, 1])
    R, t = refine_two_view(Tc[:3, :3], Tc[:3, 3], normalised_pixels(x_ref, K_ref), normalised_pixels(x_cur, K_cur),
                           huber=max(0.0, params.huber_px) / f)
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return T_ref_cur
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R, t * length
    return _inv(out)


def _desc_conf_median(pred1: dict[str, Tensor], pred2: dict[str, Tensor], m: ReciprocalMatches) -> float:
    if not m.count or 'desc_conf' not in pred1:
        return float('nan')
    d1 = pred1['desc_conf'][0][torch.as_tensor(m.xy1[:, 1]), torch.as_tensor(m.xy1[:, 0])]
    d2 = pred2['desc_conf'][0][torch.as_tensor(m.xy2[:, 1]), torch.as_tensor(m.xy2[:, 0])]
    return float(torch.minimum(d1.float().cpu(), d2.float().cpu()).median())


def symmetric_relative_pose(decoder: Any, keyframe: Keyframe, tokens: Tensor, image_shape: Any, K_cur: Any, *,
                            pnp: PnpParams = PnpParams(), matching: MatchingParams = MatchingParams(),
                            gates: PoseGates = PoseGates(), keep_predictions: bool = False,
                            view2_points: bool = False, decoder_dtype: DecoderDtype = None,
                            depth_keyframe: Any = None, depth_current: Any = None,
                            decoder_maps: Any = None) -> SymmetricPoseEstimate:
    """Relative pose of the current view against ``keyframe`` from both decoder orders (see the module docstring).

    Same arguments as :func:`realm_ros.geometry.relative_pose.estimate_relative_pose` plus ``gates``. The returned
    ``pose`` has ``T_cur_ref`` / ``T_ref_cur`` like the one-order estimate, the inliers and correspondence count of
    the direct order, and the covariance of :func:`combine_orders`; it is rejected (``ok`` False, ``reason`` from
    :func:`gate_pose`) when either order fails or the two disagree beyond the gates.

    ``view2_points`` (default False, or True with ``keep_predictions``): also compute view 2's pointmap in each
    order, which the estimate does not use (see :func:`decode_both_orders`; the result is identical either way).
    ``decoder_dtype`` (``torch.bfloat16``, or ``(None, torch.bfloat16)`` for the heads only: :data:`DECODER_DTYPES`;
    not with ``keep_predictions``): the decoder in reduced precision (:func:`_decode_pair`), ~1.6x (heads only
    ~1.3x) cheaper on CPUs with native bf16, an approximation. ``timings_s`` has ``decoder``, ``matching_direct`` /
    ``matching_swapped``, ``pnp_direct`` / ``pnp_swapped`` and ``combine`` (seconds). ``depth_keyframe`` /
    ``depth_current``: optional metric depth maps (model input size) of the two views; the essential solver then
    takes each order's translation length from its view 1's depth map instead of the decoder's point map.
    ``depth_current`` may be a function returning the map: it is called only when the swapped order is solved (a
    pair rejected before that costs no depth map). ``decoder_maps`` (fp32 decoder blocks: ``decoder_dtype`` None or
    heads only): a compiled runtime of the decoder's raw maps
    (:class:`realm_ros.models.mast3r.compiled.OpenVinoPairMaps`) instead of the eager decoder; with
    ``keep_predictions`` or ``view2_points`` (view 2's points wanted) the eager decoder runs.

    Tokens with NaN or infinite values are rejected as ``non_finite_input`` without decoding. The appearance gate
    comes next: when the views are less alike than ``gates.min_view_similarity`` the pair is
    rejected as ``dissimilar_views`` without decoding (no matches, ``timings_s`` has only ``similarity``). When the
    direct order alone already fails its gates (:func:`order_gate`: not solved, too few inliers, low inlier ratio)
    the swapped order is not matched and solved: the estimate is rejected for the direct order's reason (``swapped``
    is then a result with reason ``not_solved``). Published estimates are the same either way; only a rejection
    whose two orders both fail may name the direct order's reason where it named the swapped order's before.
    """
    device = next(decoder.parameters()).device
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def rejected_early(reason: str, sim: float) -> SymmetricPoseEstimate:
        rejected = PoseResult(ok=False, reason=reason)
        none = ReciprocalMatches(np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
        return SymmetricPoseEstimate(pose=rejected, direct=rejected, swapped=rejected, agreement=None, matches=none,
                                     keyframe_id=keyframe.id, timings_s=timings, view_similarity=sim)
    if not (bool(torch.isfinite(tokens).all()) and bool(torch.isfinite(keyframe.tokens).all())):
        return rejected_early('non_finite_input', float('nan'))      # a broken model output: nothing to decode
    sim = keyframe_similarity(keyframe, tokens, image_shape, gates.similarity_cells)
    timings['similarity'] = time.perf_counter() - t0
    if gates.publish and gates.views_differ(sim):
        return rejected_early('dissimilar_views', sim)
    t0 = time.perf_counter()
    kf_d, cur_d, cur_s, kf_s = decode_both_orders(decoder, keyframe.tokens, tokens, keyframe.image_shape,
                                                  image_shape, view2_points=view2_points or keep_predictions,
                                                  compute_dtype=decoder_dtype,
                                                  maps=None if keep_predictions or view2_points else decoder_maps)
    _sync(device)
    t1 = time.perf_counter()
    direct, m_direct = _match_and_solve(kf_d, cur_d, K_cur, pnp, matching, timings, 'direct', keyframe.K,
                                        depth_keyframe)
    early = order_gate(direct, gates) if gates.publish else ''
    m_swapped = ReciprocalMatches(np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))
    if early:
        swapped = PoseResult(ok=False, reason='not_solved')
    else:
        depth_swapped = depth_current() if callable(depth_current) else depth_current
        swapped, m_swapped = _match_and_solve(cur_s, kf_s, keyframe.K, pnp, matching, timings, 'swapped', K_cur,
                                               depth_swapped)
    t2 = time.perf_counter()
    timings.update(decoder=t1 - t0, matching_pnp=t2 - t1)
    agreement = None
    pose: PoseResult
    if early:
        pose = replace(direct, ok=False, reason=early)
    elif direct.ok and swapped.ok:
        T_a = direct.T_ref_cur
        T_b = swapped.T_cur_ref                   # the swapped order's reference is the current view
        agreement = order_agreement(T_a, T_b, gates.min_translation_m)
        cov_b = invert_pose_covariance(swapped.covariance, swapped.T_ref_cur) \
            if swapped.covariance is not None else None
        T, cov = combine_orders(T_a, T_b, direct.covariance, cov_b, gates)
        if pnp.solver == 'essential' and pnp.refine:
            T = refine_combined(T, direct, m_direct, swapped, m_swapped, keyframe.K, K_cur, pnp)
        reason = gate_pose(direct, swapped, agreement, float(np.linalg.norm(T[:3, 3])), gates, sim)
        Tc = _inv(T)
        pose = PoseResult(ok=not reason, reason=reason, R=Tc[:3, :3], t=Tc[:3, 3], inliers=direct.inliers,
                          num_correspondences=direct.num_correspondences,
                          reprojection_error_px=direct.reprojection_error_px, covariance=cov)
    else:
        failed = direct if not direct.ok else swapped
        pose = replace(failed, ok=False, reason=failed.reason or 'pnp_failed')
    dcm = _desc_conf_median(kf_d, cur_d, m_direct)
    timings['combine'] = time.perf_counter() - t2
    return SymmetricPoseEstimate(pose=pose, direct=direct, swapped=swapped, agreement=agreement, matches=m_direct,
                                 keyframe_id=keyframe.id, timings_s=timings,
                                 pred_keyframe=kf_d if keep_predictions else None,
                                 pred_current=cur_d if keep_predictions else None,
                                 desc_conf_median=dcm, view_similarity=sim)
