"""Can a published pose be trusted? Pose checks of the miniature world beyond the plain accuracy of ``evaluate``.

Three kinds of pairs per modality (``rgb_rgb``: teacher-teacher, ``event_event``: REALM-REALM, ``rgb_event``: RGB
keyframe against the current event window):

* ``motion`` - frames ``(k, k + gap)`` of one sequence (the accuracy pairs of :mod:`.evaluate`);
* ``zero`` - no motion: the same frame in both views (``rgb_rgb`` / ``event_event``: the *same tokens*, so any
  motion found is the decoder's bias; ``rgb_event``: the RGB frame and the event window ending at it, co-located
  cameras). A decoder that contracts its matches toward the image centre shows up here as a match-radius ratio
  ``r(view 2) / r(view 1)`` below 1 and as a backward PnP motion;
* ``unrelated`` - frame ``k`` of one sequence against frame ``k`` of another scene: nothing to find.

Every pair is decoded in both orders (:func:`realm_ros.geometry.symmetric.decode_both_orders`) and solved both ways,
so one pass gives the one-order estimate (``direct``, what :func:`estimate_relative_pose` returns) and the symmetric
one. :func:`collect_pose_records` returns one plain record per pair (features for gates, ground truth);
:func:`summarize_records` scores a method (``'direct'`` or ``'symmetric'``) under given gates;
:func:`calibrate_gates` picks gates and the covariance scale on validation records. ``benchmarks/bench_pose_quality.py``
runs all of it.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from realm_ros.geometry.pose import PnpParams
from realm_ros.geometry.relative_pose import MatchingParams
from realm_ros.geometry.gates import SIMILARITY_CELLS, token_grid, view_similarity
from realm_ros.geometry.symmetric import (DecoderDtype, PoseGates, _desc_conf_median, _match_and_solve, combine_orders,
                                          decode_both_orders, gate_pose, invert_pose_covariance, order_agreement,
                                          refine_combined)

from .data import rgb_to_tensor
from .metrics import pose_auc, relative_pose, rotation_error_deg, translation_angle_error_deg

_LOG = logging.getLogger(__name__)

__all__ = ['MODES', 'KINDS', 'sequence_tokens', 'sequence_depths',
           'zero_motion_contraction', 'collect_pose_records', 'summarize_records',
           'false_positive_bound', 'calibrate_gates', 'fit_covariance', 'collect_trust_records', 'pose_trust_summary',
           'calibrated_gates', 'write_decoder_gates', 'similarity_threshold',
           'radius_ratio', 'pose_error_vector', 'is_false_positive', 'IDENTITY_TRANSLATION_M', 'IDENTITY_ROTATION_DEG']

MODES = {'rgb_rgb': ('rgb', 'rgb'), 'event_event': ('event', 'event'), 'rgb_event': ('rgb', 'event')}
KINDS = ('motion', 'zero', 'unrelated')
#: a published pose of a zero-motion pair counts as a false positive beyond these (an "identity" pose is harmless)
IDENTITY_TRANSLATION_M = 0.1
IDENTITY_ROTATION_DEG = 0.5


@torch.no_grad()
def _sequence_outputs(models, seq, bridge: str, batch: int, device: torch.device | str, depths: bool
                      ) -> Tuple[Dict[str, List[torch.Tensor]], Optional[Dict[str, np.ndarray]]]:
    """One encoder pass over a :class:`TestSequence`: decoder input tokens (:func:`sequence_tokens`) and, with
    ``depths``, the depth head's maps (:func:`sequence_depths`)."""
    size = seq.rgb.shape[1]
    patch = models.teacher.encoder.patch_size
    grid = (size // patch, size // patch)
    toks: Dict[str, List[torch.Tensor]] = {'rgb': [], 'event': []}
    maps: Dict[str, List[np.ndarray]] = {'rgb': [], 'event': []}
    for s in range(0, len(seq), batch):
        sl = slice(s, min(len(seq), s + batch))
        t = models.teacher.encoder.forward_features(rgb_to_tensor(seq.rgb[sl], device))
        r = models.realm(torch.from_numpy(seq.voxels[sl].astype(np.float32)).to(device))
        ev = models.realm.head_tokens(r, bridge)[:, 1:]
        for i in range(sl.stop - sl.start):
            toks['rgb'].append(t['x_prenorm_patchtokens'][i:i + 1])
            toks['event'].append(ev[i:i + 1])
        if depths:
            for key, o in (('rgb', t), ('event', r)):
                d = models.depth_head(o['x_norm_patchtokens'], o['x_norm_clstoken'], grid, out_size=(size, size))
                maps[key].append(d[:, 0].float().cpu().numpy())
    return toks, ({k: np.concatenate(v) for k, v in maps.items()} if depths else None)


def sequence_tokens(models, seq, bridge: str = 'teacher_norm_inverse', batch: int = 8,
                    device: torch.device | str = 'cpu') -> Dict[str, List[torch.Tensor]]:
    """Decoder input tokens of every frame of a :class:`TestSequence`: ``{'rgb': [(1, N, C)...], 'event': [...]}``
    (teacher pre-norm patch tokens of the RGB frames, REALM tokens of the event windows through ``bridge``)."""
    return _sequence_outputs(models, seq, bridge, batch, device, depths=False)[0]


def sequence_depths(models, seq, batch: int = 8, device: torch.device | str = 'cpu') -> Dict[str, np.ndarray]:
    """Metric depth maps (F, H, W) of every frame of a :class:`TestSequence` from the depth head: ``'rgb'`` on the
    teacher's features of the RGB frames, ``'event'`` on REALM's of the event windows (what the node's pose step
    uses as the essential solver's length source, ``pose.length_source: depth_head``)."""
    maps = _sequence_outputs(models, seq, 'teacher_norm_inverse', batch, device, depths=True)[1]
    assert maps is not None
    return maps


def radius_ratio(xy1: np.ndarray, xy2: np.ndarray, K1: np.ndarray, K2: np.ndarray, min_radius_px: float = 10.0
                 ) -> float:
    """Median ``r2 / r1`` of matched pixels (``r`` = distance to the principal point; pixels closer than
    ``min_radius_px`` to it in view 1 are left out). Below 1: the matches contract toward the centre."""
    if not len(xy1):
        return float('nan')
    r1 = np.linalg.norm(xy1 - np.array([K1[0, 2], K1[1, 2]]), axis=1)
    r2 = np.linalg.norm(xy2 - np.array([K2[0, 2], K2[1, 2]]), axis=1)
    ok = r1 >= min_radius_px
    return float(np.median(r2[ok] / r1[ok])) if ok.any() else float('nan')


@torch.no_grad()
def zero_motion_contraction(decoder, tokens: Sequence[torch.Tensor], K: np.ndarray, image_size: int,
                            pnp: PnpParams = PnpParams(iterations=1000),
                            matching: MatchingParams = MatchingParams()) -> Dict[str, float]:
    """The zero-motion test: the *same* tokens as both views (one order). An unbiased decoder matches every pixel
    to itself; a decoder that contracts its matches gives a radius ratio below 1 and PnP a backward motion.

    Returns the mean over views of the per-view median radius ratio ``r2 / r1`` (``contraction`` = 1 - that),
    the mean log ratio over all matches, the median forward motion of PnP (``T_ref_cur`` z, metres; negative =
    backward) and the fraction of views with a PnP motion beyond :data:`IDENTITY_TRANSLATION_M`."""
    shape = (image_size, image_size)
    ratios, logs, fwd, moved = [], [], [], []
    for tok in tokens:
        p1, p2 = decoder(tok, tok, shape, shape)
        res, m = _match_and_solve(p1, p2, K, pnp, matching, K1=K)
        ratios.append(radius_ratio(m.xy1, m.xy2, K, K))
        if m.count:
            c = np.array([K[0, 2], K[1, 2]])
            r1 = np.linalg.norm(m.xy1 - c, axis=1)
            r2 = np.linalg.norm(m.xy2 - c, axis=1)
            ok = (r1 >= 10) & (r2 >= 1)
            logs.append(np.log(r2[ok] / r1[ok]))
        if res.ok:
            fwd.append(float(res.T_ref_cur[2, 3]))
            moved.append(bool(np.linalg.norm(res.T_ref_cur[:3, 3]) > IDENTITY_TRANSLATION_M))
    return {'views': len(tokens), 'radius_ratio': float(np.nanmean(ratios)) if ratios else float('nan'),
            'contraction': 1.0 - float(np.nanmean(ratios)) if ratios else float('nan'),
            'log_ratio_mean': float(np.mean(np.concatenate(logs))) if logs else float('nan'),
            'pnp_forward_m_median': float(np.median(fwd)) if fwd else float('nan'),
            'pnp_moved_fraction': float(np.mean(moved)) if moved else float('nan')}


def _pose_fields(res) -> Dict[str, Any]:
    return dict(ok=bool(res.ok), reason=res.reason, inliers=res.num_inliers, corr=res.num_correspondences,
                ratio=res.inlier_ratio, T_cur_ref=res.T_cur_ref if res.R is not None else None,
                cov=res.covariance)


def collect_pose_records(models, sequences: Sequence, gaps: Iterable[int] = (3, 6, 12), stride: int = 3,
                         zero_stride: int = 6, unrelated_stride: int = 6, pnp: PnpParams = PnpParams(iterations=1000),
                         matching: MatchingParams = MatchingParams(), bridge: str = 'teacher_norm_inverse',
                         modes: Iterable[str] = tuple(MODES), device: torch.device | str = 'cpu',
                         log: Callable[[str], None] = _LOG.info, decoder_dtype: DecoderDtype = None,
                         length_source: str = 'point_map', similarity_cells: int = SIMILARITY_CELLS
                         ) -> List[Dict[str, Any]]:
    """One record per pair (see the module docstring): ``mode``, ``kind``, ``gap``, ``seeds``, ``T_gt`` (T_cur_ref,
    None for unrelated pairs), ``direct`` / ``swapped`` PnP fields, ``radius_ratio`` of the direct matches,
    ``decode_s`` (both orders, batched), ``desc_conf`` / ``desc_conf_swapped`` (median descriptor confidence of the
    matches), ``matches`` / ``matches_swapped`` and ``view_similarity`` (the appearance gate's measure,
    :func:`realm_ros.geometry.gates.view_similarity`). ``decoder_dtype``: the decoder's compute type
    (:func:`realm_ros.geometry.symmetric.decode_both_orders`; None: fp32). ``length_source`` ``'depth_head'``: the
    essential solver's translation length from the depth head's maps (:func:`sequence_depths`)."""
    size = sequences[0].rgb.shape[1]
    shape = (size, size)
    outputs = [_sequence_outputs(models, s, bridge, 8, device, depths=length_source == 'depth_head')
               for s in sequences]
    toks = [o[0] for o in outputs]
    depths = [o[1] for o in outputs]
    pairs = []
    for si, seq in enumerate(sequences):
        n = len(seq)
        for gap in gaps:
            for i in range(0, n - gap, stride):
                pairs.append(('motion', gap, si, i, si, i + gap))
        for i in range(0, n, zero_stride):
            pairs.append(('zero', 0, si, i, si, i))
        if len(sequences) > 1:
            sj = (si + 1) % len(sequences)
            for i in range(0, min(n, len(sequences[sj])), unrelated_stride):
                pairs.append(('unrelated', -1, si, i, sj, i))
    records: List[Dict[str, Any]] = []
    t_start = time.time()
    for kind, gap, sa, i, sb, j in pairs:
        A, B = sequences[sa], sequences[sb]
        for mode in modes:
            s1, s2 = MODES[mode]
            tok1, tok2 = toks[sa][s1][i], toks[sb][s2][j]
            K1 = A.K_rgb if s1 == 'rgb' else A.K_event
            K2 = B.K_rgb if s2 == 'rgb' else B.K_event
            T1 = A.T_world_rgb[i] if s1 == 'rgb' else A.T_world_event[i]
            T2 = B.T_world_rgb[j] if s2 == 'rgb' else B.T_world_event[j]
            t0 = time.perf_counter()
            kf_d, cur_d, cur_s, kf_s = decode_both_orders(models.decoder, tok1, tok2, shape, shape,
                                                          view2_points=False, compute_dtype=decoder_dtype)
            t1 = time.perf_counter()
            da, db = depths[sa], depths[sb]
            d1 = da[s1][i] if da is not None else None
            d2 = db[s2][j] if db is not None else None
            direct, m = _match_and_solve(kf_d, cur_d, K2, pnp, matching, K1=K1, depth1=d1)
            swapped, ms = _match_and_solve(cur_s, kf_s, K1, pnp, matching, K1=K2, depth1=d2)
            combined = None                  # the essential solver refines the midpoint on both orders' inliers
            if pnp.solver == 'essential' and pnp.refine and direct.ok and swapped.ok:
                mid, _ = combine_orders(direct.T_ref_cur, swapped.T_cur_ref)
                combined = _inv(refine_combined(mid, direct, m, swapped, ms, K1, K2, pnp))
            rec = dict(mode=mode, kind=kind, gap=gap, seeds=(int(A.seed), int(B.seed)), frames=(i, j),
                       T_gt=relative_pose(T1, T2) if kind != 'unrelated' else None,
                       direct=_pose_fields(direct), swapped=_pose_fields(swapped), combined_T_cur_ref=combined,
                       radius_ratio=radius_ratio(m.xy1, m.xy2, K1, K2),
                       radius_ratio_swapped=radius_ratio(ms.xy1, ms.xy2, K2, K1), decode_s=t1 - t0,
                       # candidate gate features for later studies (not used by the calibration yet)
                       desc_conf=_desc_conf_median(kf_d, cur_d, m),
                       desc_conf_swapped=_desc_conf_median(cur_s, kf_s, ms),
                       matches=int(m.count), matches_swapped=int(ms.count),
                       view_similarity=view_similarity(tok1, token_grid(shape, tok1), tok2, token_grid(shape, tok2),
                                                       similarity_cells))
            records.append(rec)
        if len(records) % 60 < len(list(modes)):
            log(f'pose records: {len(records)} of {len(pairs) * len(list(modes))} ({time.time() - t_start:.0f} s)')
    log(f'pose records: {len(records)} ({len(pairs)} pairs x {len(list(modes))} modes) in '
        f'{time.time() - t_start:.0f} s')
    return records


# ---------------------------------------------------------------------------------------------------------------
def _inv(T: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def pose_error_vector(T_ref_cur_est: np.ndarray, T_ref_cur_gt: np.ndarray) -> np.ndarray:
    """6-vector error (x, y, z, rx, ry, rz) of a camera pose in the keyframe frame, in the covariance convention of
    :class:`realm_ros.geometry.pose.PoseResult` (``t_est - t_gt``, ``log(R_est R_gt^T)``)."""
    import cv2
    w = cv2.Rodrigues(T_ref_cur_est[:3, :3] @ T_ref_cur_gt[:3, :3].T)[0].reshape(3)
    return np.concatenate([T_ref_cur_est[:3, 3] - T_ref_cur_gt[:3, 3], w])


def _estimate(rec: Dict[str, Any], method: str, gates: PoseGates, pnp_direct_gates: bool = True):
    """(published, reason, T_cur_ref, covariance, agreement) of a record under a method and gates."""
    d, s = rec['direct'], rec['swapped']

    class _R:  # minimal PoseResult-like view for gate_pose (reads ok, reason, num_inliers, inlier_ratio)
        def __init__(self, f: Dict[str, Any]) -> None:
            self.ok, self.reason = f['ok'], f['reason']
            self.num_inliers, self.inlier_ratio = f['inliers'], f['ratio']

    def view(f: Dict[str, Any]) -> Any:
        return _R(f)
    if not gates.publish:
        return False, 'not_better_than_chance', None, None, None
    sim = rec.get('view_similarity')                 # None in records collected before the appearance gate
    if sim is not None and gates.views_differ(sim):
        return False, 'dissimilar_views', None, None, None
    if method == 'direct':
        if not d['ok']:
            return False, d['reason'], None, None, None
        reason = gate_pose(view(d), view(d), None, 0.0, gates)
        cov = d['cov'] * gates.covariance_scale if d['cov'] is not None else None
        if cov is not None:
            cov = cov + np.diag(gates.floor_diagonal)
        return not reason, reason, d['T_cur_ref'], cov, None
    if method != 'symmetric':
        raise ValueError(f"unknown method {method!r}; expected 'direct' or 'symmetric'")
    if not (d['ok'] and s['ok']):
        f = d if not d['ok'] else s
        return False, f['reason'], None, None, None
    T_a = _inv(d['T_cur_ref'])
    T_b = s['T_cur_ref']
    ag = order_agreement(T_a, T_b, gates.min_translation_m)
    cov_b = invert_pose_covariance(s['cov'], _inv(s['T_cur_ref'])) if s['cov'] is not None else None
    T, cov = combine_orders(T_a, T_b, d['cov'], cov_b, gates)
    if rec.get('combined_T_cur_ref') is not None:          # the essential solver's jointly refined estimate
        T = _inv(rec['combined_T_cur_ref'])
    reason = gate_pose(view(d), view(s), ag, float(np.linalg.norm(T[:3, 3])), gates)
    return not reason, reason, _inv(T), cov, ag


def is_false_positive(rec: Dict[str, Any], published: bool, T_cur_ref: Optional[np.ndarray]) -> bool:
    """A published pose of an unrelated pair, or a published non-identity pose of a zero-motion pair (translation
    beyond :data:`IDENTITY_TRANSLATION_M` or rotation beyond :data:`IDENTITY_ROTATION_DEG` from the truth)."""
    if not published or rec['kind'] == 'motion':
        return False
    if rec['kind'] == 'unrelated':
        return True
    if T_cur_ref is None:
        raise ValueError('a published pose needs its T_cur_ref')
    e = pose_error_vector(_inv(T_cur_ref), _inv(rec['T_gt']))
    return bool(np.linalg.norm(e[:3]) > IDENTITY_TRANSLATION_M or np.degrees(np.linalg.norm(e[3:]))
                > IDENTITY_ROTATION_DEG)


def summarize_records(records: Sequence[Dict[str, Any]], method: str, gates: PoseGates = PoseGates()
                      ) -> Dict[str, Dict[str, Any]]:
    """Per mode: accuracy on motion pairs (all pairs; rejected ones count as failures with infinite error, as in
    :mod:`.metrics`), the forward-sign rate, AUC_pose, the rate of published poses, the false-positive rates on
    zero-motion and unrelated pairs, the zero-motion contraction and the normalised errors of the published
    covariance (``nees`` = mean of ``e^T C^-1 e / 6``; per-axis variance of ``e_i / sigma_i``)."""
    out: Dict[str, Dict[str, Any]] = {}
    for mode in sorted({r['mode'] for r in records}):
        rs = [r for r in records if r['mode'] == mode]
        rot, tdeg, mx, fwd_ok, nees, z_axes, pub_motion = [], [], [], [], [], [], []
        fp: Dict[str, List[bool]] = {'zero': [], 'unrelated': []}
        zero_ratio, zero_back = [], []
        for r in rs:
            published, reason, T, cov, ag = _estimate(r, method, gates)
            if r['kind'] == 'motion':
                pub_motion.append(published)
                Tg = r['T_gt']
                if published:
                    re = rotation_error_deg(T[:3, :3], Tg[:3, :3])
                    te = translation_angle_error_deg(_inv(T)[:3, 3], _inv(Tg)[:3, 3])
                    fwd_ok.append(bool(np.sign(_inv(T)[2, 3]) == np.sign(_inv(Tg)[2, 3])))
                    if cov is not None:
                        e = pose_error_vector(_inv(T), _inv(Tg))
                        try:
                            nees.append(float(e @ np.linalg.solve(cov, e)) / 6.0)
                            z_axes.append(e / np.sqrt(np.maximum(np.diag(cov), 1e-30)))
                        except np.linalg.LinAlgError:
                            pass
                else:
                    re = te = float('inf')
                    fwd_ok.append(False)
                rot.append(re)
                tdeg.append(te)
                mx.append(max(re, te))
            else:
                fp[r['kind']].append(is_false_positive(r, published, T))
                if r['kind'] == 'zero':
                    zero_ratio.append(r['radius_ratio'])
                    if r['direct']['ok']:
                        zero_back.append(float(_inv(r['direct']['T_cur_ref'])[2, 3]
                                               - _inv(r['T_gt'])[2, 3]))
        auc = pose_auc(np.asarray(mx), (5.0, 10.0, 20.0)) if mx else [float('nan')] * 3
        za = np.asarray(z_axes)
        out[mode] = {
            'motion_pairs': len(rot), 'published_rate': float(np.mean(pub_motion)) if pub_motion else float('nan'),
            'rot_err_deg_median': float(np.median(rot)) if rot else float('nan'),
            'trans_err_deg_median': float(np.median(tdeg)) if tdeg else float('nan'),
            'forward_sign_correct': float(np.mean(fwd_ok)) if fwd_ok else float('nan'),
            'auc_pose@5': auc[0], 'auc_pose@10': auc[1], 'auc_pose@20': auc[2],
            'false_positive_rate_zero': float(np.mean(fp['zero'])) if fp['zero'] else float('nan'),
            'false_positive_rate_unrelated': float(np.mean(fp['unrelated'])) if fp['unrelated'] else float('nan'),
            'zero_pairs': len(fp['zero']), 'unrelated_pairs': len(fp['unrelated']),
            'zero_motion_radius_ratio_median': float(np.nanmedian(zero_ratio)) if zero_ratio else float('nan'),
            'zero_motion_direct_forward_m_median': float(np.median(zero_back)) if zero_back else float('nan'),
            'nees_mean': float(np.mean(nees)) if nees else float('nan'),
            'nees_median': float(np.median(nees)) if nees else float('nan'),
            'normalised_error_var': [float(v) for v in za.var(0)] if len(za) > 1 else None,
        }
    return out


def _false_positive_rate(records, method, gates) -> float:
    """The larger of the false-positive rates of the zero-motion and the unrelated-scene pairs."""
    rates = []
    for kind in ('zero', 'unrelated'):
        flags = [is_false_positive(r, *_estimate(r, method, gates)[0:3:2]) for r in records if r['kind'] == kind]
        if flags:
            rates.append(float(np.mean(flags)))
    return max(rates) if rates else 0.0


def _features(records: Sequence[Dict[str, Any]], method: str, base: PoseGates) -> Dict[str, np.ndarray]:
    """Per-record quantities that do not depend on the thresholds being calibrated (one pass over the records)."""
    loose = replace(base, min_inliers=0, min_inlier_ratio=0.0, max_order_rot_deg=1e12, max_order_trans_ratio=1e12,
                    max_translation_m=0.0, covariance_scale=1.0, covariance_floor=(0.0, 0.0), publish=True,
                    min_view_similarity=-1.0)
    cols: Dict[str, list] = {k: [] for k in ('kind', 'ok', 'inl', 'ratio', 'rot_dis', 'tr_dis', 'max_err', 'fp',
                                             'rot_err', 'dir_err', 'true_rot', 'err_vec', 'cov', 'sim')}
    for r in records:
        published, _, T, cov, ag = _estimate(r, method, loose)
        d, sw = r['direct'], r['swapped']
        cols['kind'].append(r['kind'])
        sim = r.get('view_similarity')
        cols['sim'].append(float('nan') if sim is None else float(sim))
        cols['ok'].append(published)
        cols['inl'].append(d['inliers'] if method == 'direct' else min(d['inliers'], sw['inliers']))
        cols['ratio'].append(d['ratio'] if method == 'direct' else min(d['ratio'], sw['ratio']))
        cols['rot_dis'].append(ag.rot_deg if ag is not None else 0.0)
        cols['tr_dis'].append(ag.trans_ratio if ag is not None else 0.0)
        re = te = tr = float('inf')
        e, c = np.full(6, np.nan), np.full((6, 6), np.nan)
        if r['kind'] == 'motion':
            Tg = r['T_gt']
            tr = rotation_error_deg(np.eye(3), Tg[:3, :3])
            if published:
                re = rotation_error_deg(T[:3, :3], Tg[:3, :3])
                te = translation_angle_error_deg(_inv(T)[:3, 3], _inv(Tg)[:3, 3])
                e = pose_error_vector(_inv(T), _inv(Tg))
                if cov is not None:
                    c = cov
        cols['rot_err'].append(re)
        cols['dir_err'].append(te)
        cols['true_rot'].append(tr)
        cols['max_err'].append(max(re, te))
        cols['err_vec'].append(e)
        cols['cov'].append(c)
        cols['fp'].append(is_false_positive(r, True, T) if published else False)
    return {k: np.asarray(v) for k, v in cols.items()}


@functools.lru_cache(maxsize=4096)
def false_positive_bound(fp: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate from ``fp`` events in ``n`` trials: the rate ``p`` at which
    ``P(X <= fp | n, p) = 1 - confidence`` (1.0 for ``n == 0``). ``fp == 0`` gives ``1 - (1 - confidence)**(1/n)``,
    e.g. 4.9 % for 60 pairs at 95 %. Cached: a calibration asks for the same few (fp, n) thousands of times."""
    if n <= 0 or fp >= n:
        return 1.0

    def cdf(p: float) -> float:                      # P(X <= fp) for X ~ Binomial(n, p), 0 < p < 1
        lp, lq = math.log(p), math.log1p(-p)
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
                   for k in range(fp + 1))

    lo, hi = fp / n, 1.0
    for _ in range(60):                              # cdf decreases with p; mid stays inside (0, 1)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) > 1.0 - confidence else (lo, mid)
    return hi


def _fp_rate(fp: int, n: int, confidence: Optional[float]) -> float:
    """The false-positive rate a calibration compares with its limit: ``(fp + 1) / (n + 2)`` without a confidence,
    else the upper confidence bound."""
    if confidence is None:
        return (fp + 1.0) / (n + 2.0)
    return false_positive_bound(fp, n, confidence)


def calibrate_gates(records: Sequence[Dict[str, Any]], method: str = 'symmetric', max_fp_rate: float = 0.05,
                    base: PoseGates = PoseGates(), grid: Optional[Dict[str, Sequence[float]]] = None,
                    min_published: int = 5, max_direction_error_deg: float = 90.0,
                    confidence: Optional[float] = None, view_similarity_gate: bool = True,
                    independent_geometry: bool = True) -> Dict[str, Any]:
    """Choose gates on validation records (of one mode, or pooled): among a grid of (``min_inliers``,
    ``min_inlier_ratio``, ``max_order_rot_deg``, ``max_order_trans_ratio``; ``grid`` overrides the candidate values
    by field name), the one that keeps the false-positive rate of the zero-motion pairs and of the unrelated pairs
    each at most ``max_fp_rate``, whose published motion pairs (at least ``min_published``) are better than chance
    (median rotation error below the median true rotation, i.e. better than assuming no motion, and median
    translation-direction error below ``max_direction_error_deg``), and maximises AUC_pose@20 of the motion pairs
    (rejected pairs count as failures; ties: more published motion pairs). The false-positive rates are estimated
    as ``(fp + 1) / (n + 2)`` (``confidence`` None, the rule of the shipped gates), or at their one-sided upper
    confidence bound (:func:`false_positive_bound` at ``confidence``, stricter); with few validation pairs nothing
    qualifies either way. Neither protects against validation scenes whose unrelated pairs are easier to reject than
    the test scenes' (models/README.md: with a REALM distilled at LoRA r=64, gates that passed 0 of 80 unrelated
    validation pairs passed 8 of 60 test pairs); the appearance gate is the guard against that.

    Appearance gate first (``view_similarity_gate`` and records that carry ``view_similarity``): the lowest
    ``min_view_similarity`` that, *on its own*, keeps the estimated rate of unrelated validation pairs passing it
    within ``max_fp_rate`` (same rate rule). The geometric grid is then searched on the pairs it passes, so a pose
    is published only when the views look alike *and* the geometry checks out: two checks, each calibrated to the
    limit alone, that fail on different pairs. With ``independent_geometry`` (default) a geometric candidate must
    also keep the false positives within ``max_fp_rate`` *without* the appearance gate (on every validation pair):
    otherwise, once the appearance gate has removed the unrelated validation pairs, nothing constrains the geometry
    and test scenes that look more alike than the validation scenes get through (80-sequence REALM-mini: 9 of 60
    unrelated test pairs published with the joint rule, 2 of 60 with this one). No candidate: nothing is published
    (``publish`` False). Then the covariance model (:func:`fit_covariance`) on the published motion pairs.
    Returns ``{'gates', 'val' (summary), 'grid' (size)}``."""
    grid = dict(grid or {})
    inl_grid = grid.get('min_inliers', (12, 30, 40, 50, 60, 70, 80, 100, 120, 150))
    ratio_grid = grid.get('min_inlier_ratio', (0.1, 0.15, 0.18, 0.2, 0.22, 0.25, 0.3, 0.35, 0.4))
    sym = method == 'symmetric'
    rot_grid = grid.get('max_order_rot_deg', (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 1e9)) if sym \
        else (base.max_order_rot_deg,)
    tr_grid = grid.get('max_order_trans_ratio', (0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 1e9)) if sym \
        else (base.max_order_trans_ratio,)
    f = _features(records, method, base)
    motion = f['kind'] == 'motion'
    extra = {k: f['kind'] == k for k in ('zero', 'unrelated') if np.any(f['kind'] == k)}
    min_sim = base.min_view_similarity
    if view_similarity_gate and 'unrelated' in extra and np.all(np.isfinite(f['sim'])):
        min_sim = similarity_threshold(f['sim'][extra['unrelated']], max_fp_rate, confidence)
    looks_alike = f['sim'] >= min_sim if min_sim > -1.0 else np.ones(len(motion), bool)
    base = replace(base, min_view_similarity=float(min_sim))

    def too_many_false_positives(passed: np.ndarray) -> bool:
        # a handful of validation pairs cannot vouch for a rate they are too few to measure (a gate that passed 0
        # of 20 unrelated validation pairs published 17 % of the unrelated test pairs)
        return any(_fp_rate(int(np.sum(f['fp'][m] & passed[m])), int(np.sum(m)), confidence) > max_fp_rate
                   for m in extra.values())
    best, best_key, count = None, None, 0
    for mi in inl_grid:
        for ir in ratio_grid:
            for mr in rot_grid:
                for tr in tr_grid:
                    count += 1
                    geometry = f['ok'] & (f['inl'] >= mi) & (f['ratio'] >= ir)
                    if sym:
                        geometry &= (f['rot_dis'] <= mr) & (f['tr_dis'] <= tr)
                    pub = geometry & looks_alike
                    if too_many_false_positives(pub) or (independent_geometry
                                                         and too_many_false_positives(geometry)):
                        continue                 # together, or the geometry alone, lets too many through
                    kept = pub & motion
                    if kept.sum() < min_published or not (
                            np.median(f['rot_err'][kept]) < np.median(f['true_rot'][kept])
                            and np.median(f['dir_err'][kept]) < max_direction_error_deg):
                        continue                 # what would be published is not better than chance
                    err = np.where(kept, f['max_err'], np.inf)[motion]
                    key = (pose_auc(err, (20.0,))[0] if err.size else 0.0, float(np.mean(pub[motion])))
                    if best_key is None or key > best_key:
                        best_key = key
                        best = replace(base, min_inliers=int(mi), min_inlier_ratio=float(ir),
                                       max_order_rot_deg=float(mr), max_order_trans_ratio=float(tr))
    if best is None:
        best = replace(base, publish=False)         # no gate is better than chance with few false positives
    else:
        kept = f['ok'] & looks_alike & motion & (f['inl'] >= best.min_inliers) & (f['ratio'] >= best.min_inlier_ratio)
        if sym:
            kept &= (f['rot_dis'] <= best.max_order_rot_deg) & (f['tr_dis'] <= best.max_order_trans_ratio)
        scale, floor = fit_covariance(f['err_vec'][kept], f['cov'][kept])
        best = replace(best, covariance_scale=scale, covariance_floor=floor)
    return {'gates': best, 'val': summarize_records(records, method, best), 'grid': count}


def similarity_threshold(unrelated: np.ndarray, max_fp_rate: float = 0.05, confidence: Optional[float] = None
                         ) -> float:
    """The appearance gate's threshold: the lowest ``min_view_similarity`` at which the unrelated-scene pairs'
    similarities (``unrelated``, 1-D) passing it keep the estimated rate (``(k + 1) / (n + 2)``, or the upper
    confidence bound at ``confidence``) within ``max_fp_rate``. Lets the ``k`` most similar pairs pass for the
    largest such ``k`` (the threshold is the ``(k + 1)``-th largest similarity rounded up to the next multiple of
    1e-6, strictly above it); -1 (no gate) when all may pass; above every value when none may (then nothing can be
    calibrated)."""
    u = np.sort(np.asarray(unrelated, dtype=np.float64).reshape(-1))[::-1]
    if u.size == 0 or not np.all(np.isfinite(u)):
        raise ValueError(f'need finite similarities of unrelated pairs, got {u.size} values')
    n = int(u.size)
    k = 0
    while k < n and _fp_rate(k + 1, n, confidence) <= max_fp_rate:
        k += 1
    if k >= n:
        return -1.0
    return float(min(1.0, (math.floor(u[k] * 1e6) + 1) / 1e6))


def fit_covariance(errors: np.ndarray, covs: np.ndarray) -> Tuple[float, Tuple[float, ...]]:
    """``(scale, floor)`` of ``C = scale * C_est + diag(floor)`` (six per-axis values) such that the
    normalised squared errors ``e^T C^-1 e / 6`` of the given pairs have mean 1 and a median near that of a
    chi-square with 6 degrees of freedom / 6 (0.89): a constant floor for the error the estimate's own covariance
    does not see (decoder bias), a scale for the part it does. Grid search over the floor as a fraction of the
    mean squared error per axis; the scale is then solved for mean 1 by bisection."""
    errors = np.asarray(errors, np.float64).reshape(-1, 6)
    covs = np.asarray(covs, np.float64).reshape(-1, 6, 6)
    ok = np.isfinite(errors).all(1) & np.isfinite(covs).all((1, 2))
    errors, covs = errors[ok], covs[ok]
    if len(errors) < 3:
        return 1.0, (0.0, 0.0)
    msq = np.mean(errors ** 2, axis=0)

    def nees(scale: float, floor: np.ndarray) -> np.ndarray:
        C = scale * covs + np.diag(floor)[None]
        try:
            return np.einsum('ni,ni->n', errors, np.linalg.solve(C, errors[..., None])[..., 0]) / 6.0
        except np.linalg.LinAlgError:
            return np.full(len(errors), np.inf)

    best: Tuple[float, Tuple[float, ...]] = (1.0, (0.0, 0.0))
    best_cost = np.inf
    for frac in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        floor = np.array([float(f'{v:.4g}') for v in frac * msq])
        lo, hi = -8.0, 8.0                          # log10 of the scale; mean NEES decreases with the scale
        if np.mean(nees(10 ** lo, floor)) < 1.0:
            scale = 0.0                             # the floor alone already covers the errors
        else:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if np.mean(nees(10 ** mid, floor)) > 1.0 else (lo, mid)
            scale = float(f'{10 ** hi:.4g}')
        v = nees(scale, floor)
        cost = (np.mean(v) - 1.0) ** 2 + (np.median(v) - 0.89) ** 2
        if cost < best_cost:
            best, best_cost = (scale, tuple(float(x) for x in floor)), cost
    return best


def collect_trust_records(models, val: Sequence, test: Sequence, gaps: Iterable[int] = (3, 6, 12),
                          val_stride: int = 6, test_stride: int = 3, extra_stride: int = 6,
                          records: Optional[Dict[str, List[Dict[str, Any]]]] = None,
                          log: Callable[[str], None] = _LOG.info, pnp: PnpParams = PnpParams(iterations=1000),
                          decoder_dtype: DecoderDtype = None, length_source: str = 'point_map',
                          similarity_cells: int = SIMILARITY_CELLS) -> Dict[str, List[Dict[str, Any]]]:
    """``{'val': [...], 'test': [...]}`` records of the validation and test sequences (:func:`collect_pose_records`,
    motion pairs every ``*_stride`` frames, zero-motion and unrelated pairs every ``extra_stride``); parts already
    in ``records`` are kept, missing ones are collected into it."""
    recs = records if records is not None else {}
    for name, seqs, stride in (('val', val, val_stride), ('test', test, test_stride)):
        if name not in recs:
            recs[name] = collect_pose_records(models, seqs, gaps=tuple(gaps), stride=stride,
                                              zero_stride=extra_stride, unrelated_stride=extra_stride, log=log,
                                              pnp=pnp, decoder_dtype=decoder_dtype, length_source=length_source,
                                              similarity_cells=similarity_cells)
    return recs


def pose_trust_summary(models, val: Sequence, test: Sequence, gaps: Iterable[int] = (3, 6, 12), val_stride: int = 6,
                       test_stride: int = 3, extra_stride: int = 6, max_fp_rate: float = 0.05,
                       confidence: Optional[float] = None, records: Optional[Dict[str, List[Dict[str, Any]]]] = None,
                       log: Callable[[str], None] = _LOG.info, view_similarity_gate: bool = True,
                       pnp: PnpParams = PnpParams(iterations=1000), decoder_dtype: DecoderDtype = None,
                       independent_geometry: bool = True, length_source: str = 'point_map',
                       similarity_cells: int = SIMILARITY_CELLS) -> Dict[str, Any]:
    """Calibrate the gates of the one-order (``direct``) and the symmetric estimate per mode on the validation
    sequences and score them on the test sequences (zero-motion, unrelated-scene and motion pairs).

    ``records`` (``{'val': [...], 'test': [...]}``) reuses collected records; missing parts are collected and stored
    in it. Returns ``{method: {'uncalibrated_test', 'gates' ({mode: PoseGates as dict}), 'val', 'test'}}`` plus
    ``'records'`` (counts); the gates of both methods are what a decoder checkpoint carries
    (:func:`calibrated_gates`, :func:`realm_ros.geometry.gates.pose_gates_metadata`)."""
    from dataclasses import asdict
    gaps = tuple(gaps)
    recs = collect_trust_records(models, val, test, gaps, val_stride, test_stride, extra_stride, records, log, pnp,
                                 decoder_dtype, length_source, similarity_cells)
    modes = sorted({str(r['mode']) for r in recs['test']})
    loose = PoseGates(max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    summary: Dict[str, Any] = {}
    for method in ('direct', 'symmetric'):
        part: Dict[str, Dict[str, Any]] = {'uncalibrated_test': summarize_records(recs['test'], method, loose),
                                              'gates': {}, 'val': {}, 'test': {}}
        for mode in modes:                       # gates per modality (the node knows its keyframe source)
            cal = calibrate_gates([r for r in recs['val'] if r['mode'] == mode], method, max_fp_rate=max_fp_rate,
                                  confidence=confidence, view_similarity_gate=view_similarity_gate,
                                  independent_geometry=independent_geometry,
                                  base=PoseGates(similarity_cells=similarity_cells))
            g = cal['gates']
            assert isinstance(g, PoseGates)
            part['gates'][mode] = asdict(g)
            part['val'][mode] = cal['val'][mode]
            part['test'][mode] = summarize_records([r for r in recs['test'] if r['mode'] == mode], method, g)[mode]
            log(f'{method} {mode}: gates {g}')
        summary[method] = part
    summary['records'] = {k: len(v) for k, v in recs.items()}
    summary['val_seeds'] = [int(s.seed) for s in val]
    summary['test_seeds'] = [int(s.seed) for s in test]
    summary['strides'] = {'val_motion': val_stride, 'test_motion': test_stride, 'zero_and_unrelated': extra_stride}
    summary['pair_gaps'] = list(gaps)
    summary['max_fp_rate'] = max_fp_rate
    summary['fp_confidence'] = confidence
    summary['view_similarity_gate'] = view_similarity_gate
    summary['independent_geometry'] = independent_geometry
    return summary


def calibrated_gates(summary: Dict[str, Any]) -> Dict[str, Dict[str, PoseGates]]:
    """``{method: {mode: PoseGates}}`` of a :func:`pose_trust_summary` (JSON round-tripped or not): what a decoder
    checkpoint carries."""
    from realm_ros.geometry.gates import METHODS, parse_pose_gates
    return parse_pose_gates({m: summary[m]['gates'] for m in METHODS}, 'pose_trust')


def write_decoder_gates(path, gates: Dict[str, Dict[str, PoseGates]], compute: Optional[Dict[str, str]] = None
                        ) -> None:
    """Store calibrated gates in a decoder safetensors file (``extra.pose_gates``) and what they were calibrated
    with (``extra.pose_gates_compute``: decoder precision, RANSAC kernel; default: fp32 / SQPnP) and its ``.json``
    sidecar, in place; the tensors are untouched."""
    import json
    from pathlib import Path

    from realm_ros.geometry.gates import parse_pose_compute, pose_gates_metadata
    from realm_ros.models.checkpoints import read_safetensors, write_safetensors
    path = Path(path)
    tensors, meta = read_safetensors(path)
    meta = dict(meta)
    extra = dict(meta.get('extra') or {})
    extra['pose_gates'] = pose_gates_metadata(gates)
    extra['pose_gates_compute'] = parse_pose_compute(compute, 'compute')
    meta['extra'] = extra
    write_safetensors(path, tensors, meta)
    sidecar = path.with_suffix('.json')
    if sidecar.is_file():
        sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
