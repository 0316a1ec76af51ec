"""Keyframe store: bounded storage, newest / CLS selection among recent keyframes, add policy, fixed-frame composition,
the constant-velocity prediction."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from realm_ros.geometry import (KeyframePolicy, KeyframeStore, PoseResult, compose_pose, fast_reciprocal_nn,
                                solve_pnp, solve_relative_pose_pnp)
from realm_ros.geometry.keyframes import extrapolate_motion


K = np.array([[200.0, 0, 111.5], [0, 200.0, 111.5], [0, 0, 1]])


def _tokens(seed: int, n: int = 16, c: int = 8) -> torch.Tensor:
    return torch.randn(1, n, c, generator=torch.Generator().manual_seed(seed))


def _cls(vec) -> torch.Tensor:
    return torch.tensor(vec, dtype=torch.float32)


def _result(R=np.eye(3), t=np.zeros(3), inliers=200, ok=True, reason='') -> PoseResult:
    if not ok:
        return PoseResult(ok=False, reason=reason, num_correspondences=10)
    return PoseResult(ok=True, R=np.asarray(R, float), t=np.asarray(t, float), inliers=np.arange(inliers),
                      num_correspondences=inliers + 10, reprojection_error_px=0.5, covariance=np.eye(6) * 1e-4)


def _add(store, i, cls=None, source='events', **kw):
    cls = cls if cls is not None else torch.randn(8, generator=torch.Generator().manual_seed(100 + i))
    return store.add(_tokens(i), cls, (56, 56), K, stamp_ns=1_000 * i, source=source, **kw)


def test_capacity_eviction_and_ids():
    store = KeyframeStore(KeyframePolicy(capacity=3))
    frames = [_add(store, i) for i in range(5)]
    assert len(store) == 3
    assert [k.id for k in store.keyframes] == [f.id for f in frames[2:]]
    assert store.latest.id == frames[-1].id and store.get(frames[0].id) is None
    assert store.counters['added'] == 5 and store.counters['evicted'] == 2
    assert store.latest.tokens.shape == (1, 16, 8) and not store.latest.tokens.requires_grad


def test_select_by_cls_among_recent_k_and_sources():
    store = KeyframeStore(KeyframePolicy(capacity=10, recent_k=3, selection='similar'))
    q = _cls([1, 0, 0, 0, 0, 0, 0, 0])
    old_perfect = _add(store, 0, cls=q.clone())                        # best match but too old
    a = _add(store, 1, cls=_cls([0, 1, 0, 0, 0, 0, 0, 0]))
    b = _add(store, 2, cls=_cls([0.8, 0.6, 0, 0, 0, 0, 0, 0]), source='rgb')
    c = _add(store, 3, cls=_cls([0.5, 0, 0.5, 0, 0, 0, 0, 0]))
    assert store.select(q).id == b.id                                   # recent 3 = a, b, c; b most similar
    # events-only recent 3 = old_perfect, a, c -> old_perfect is among them and wins
    assert store.select(q, sources=['events']).id == old_perfect.id
    _add(store, 4, cls=_cls([0, 0, 0, 1, 0, 0, 0, 0]))
    _add(store, 5, cls=_cls([0, 0, 0, 0, 1, 0, 0, 0]))
    assert store.select(q, sources=['events']).id == c.id               # old_perfect has left the recent 3
    assert store.select(q, sources=['rgb']).id == b.id
    assert KeyframeStore().select(q) is None
    assert a.id != b.id


def test_select_newest_of_the_allowed_sources_by_default():
    store = KeyframeStore(KeyframePolicy(capacity=10, recent_k=3))
    q = _cls([1, 0, 0, 0, 0, 0, 0, 0])
    _add(store, 0, cls=q.clone())                                       # most similar, but older
    newest_events = _add(store, 1, cls=_cls([0, 1, 0, 0, 0, 0, 0, 0]))
    rgb = _add(store, 2, cls=_cls([0, 0, 1, 0, 0, 0, 0, 0]), source='rgb')
    assert store.select(q).id == rgb.id
    assert store.select(q, sources=['events']).id == newest_events.id
    with pytest.raises(ValueError, match='selection'):
        KeyframePolicy(selection='closest')
    with pytest.raises(ValueError, match='max_bridged'):
        KeyframePolicy(max_bridged=-1)


def test_extrapolate_motion_scales_angle_and_translation():
    R = cv2.Rodrigues(np.array([[0.0], [0.1], [0.0]]))[0]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, [0.1, 0.0, 1.0]
    P = extrapolate_motion(T, 0.25, 0.5)                                # twice the span: twice the motion
    np.testing.assert_allclose(cv2.Rodrigues(P[:3, :3])[0].ravel(), [0, 0.2, 0], atol=1e-12)
    np.testing.assert_allclose(P[:3, 3], [0.2, 0.0, 2.0])
    np.testing.assert_allclose(extrapolate_motion(T, 0.25, 0.25), T, atol=1e-12)
    assert extrapolate_motion(T, 0.25, 1.01) is None                    # beyond 4x the measured span
    assert extrapolate_motion(T, 0.0, 0.1) is None and extrapolate_motion(T, 0.1, -0.1) is None
    bad = T.copy()
    bad[0, 3] = np.nan
    assert extrapolate_motion(bad, 0.1, 0.1) is None


def test_policy_decisions():
    policy = KeyframePolicy(min_inliers=50, max_translation=0.5, max_rotation_deg=10.0, max_failures=2)
    store = KeyframeStore(policy)
    assert store.update(None, None, 0) == (True, 'empty', None)
    kf = _add(store, 1)
    assert store.update(kf, _result(inliers=200), 10).add is False
    assert store.update(kf, _result(inliers=20), 10).reason.startswith('low_inliers')
    # camera centre moved 0.8 m: t = -R c
    assert store.update(kf, _result(t=[-0.8, 0, 0]), 10).reason.startswith('translation')
    R = cv2.Rodrigues(np.array([0.0, np.radians(12.0), 0.0]))[0]
    assert store.update(kf, _result(R=R), 10).reason.startswith('rotation')
    small = cv2.Rodrigues(np.array([0.0, np.radians(5.0), 0.0]))[0]
    assert store.update(kf, _result(R=small, t=[0.1, 0, 0]), 10).add is False
    # consecutive rejections -> tracking lost
    d1 = store.update(kf, _result(ok=False, reason='too_few_inliers'), 10)
    assert not d1.add and d1.reason == 'rejected: too_few_inliers'
    d2 = store.update(kf, _result(ok=False, reason='pnp_failed'), 10)
    assert d2.add and d2.reason.startswith('tracking_lost')
    # a service request wins, and adding clears it
    store.request_new()
    assert store.update(kf, _result(), 10).reason == 'requested'
    _add(store, 2)
    assert store.update(store.latest, _result(), 10).add is False
    # no keyframe of the wanted source
    assert store.update(None, None, 10).reason == 'no_keyframe_for_source'


def test_min_interval_rate_limits_automatic_additions():
    store = KeyframeStore(KeyframePolicy(min_interval_ns=1_000_000, min_inliers=50))
    kf = store.add(_tokens(0), torch.ones(8), (56, 56), K, stamp_ns=5_000_000, source='rgb')
    assert store.update(kf, _result(inliers=5), 5_500_000).reason == 'min_interval'
    assert store.update(kf, _result(inliers=5), 6_500_000).reason.startswith('low_inliers')
    store.request_new()
    assert store.update(kf, _result(inliers=5), 5_600_000).reason == 'requested'


def test_an_intermediate_view_with_a_valid_estimate_becomes_a_keyframe():
    """pose.similar_window_fallback's rule: a valid estimate of an earlier window taken because the newest was unlike
    the keyframe adds it when no other rule does, never within min_interval, never for a rejected estimate."""
    store = KeyframeStore(KeyframePolicy(min_inliers=50, max_translation=0.5))
    kf = _add(store, 1)
    assert store.update(kf, _result(), 10).add is False
    d = store.update(kf, _result(), 10, intermediate=True)
    assert d.add and d.reason.startswith('intermediate')
    assert store.update(kf, _result(t=[-0.8, 0, 0]), 10, intermediate=True).reason.startswith('translation')
    assert not store.update(kf, _result(ok=False, reason='too_few_inliers'), 10, intermediate=True).add
    store = KeyframeStore(KeyframePolicy(min_interval_ns=1_000_000, min_inliers=50))
    kf = store.add(_tokens(3), torch.ones(8), (56, 56), K, stamp_ns=5_000_000, source='events')
    assert store.update(kf, _result(), 5_500_000, intermediate=True).reason == 'min_interval'
    assert store.update(kf, _result(), 6_500_000, intermediate=True).reason.startswith('intermediate')


def test_relative_pose_composed_into_fixed_frame():
    rng = np.random.default_rng(0)
    # ground truth: keyframe and current camera poses in the fixed frame
    T_fw_kf = np.eye(4)
    T_fw_kf[:3, :3] = cv2.Rodrigues(np.array([0.1, -0.2, 0.3]))[0]
    T_fw_kf[:3, 3] = [2.0, -1.0, 0.5]
    T_kf_cur = np.eye(4)
    T_kf_cur[:3, :3] = cv2.Rodrigues(np.array([0.0, 0.08, 0.02]))[0]
    T_kf_cur[:3, 3] = [0.3, 0.05, 0.1]
    T_cur_kf = np.linalg.inv(T_kf_cur)
    # keyframe pointmap: random depth, back-projected in the keyframe camera
    h, w = 112, 112
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = rng.uniform(3, 6) + 0.5 * np.sin(xs / 9) + 0.3 * np.cos(ys / 7)
    Kk = np.array([[100.0, 0, 55.5], [0, 100.0, 55.5], [0, 0, 1]])
    pts3d = np.stack([(xs - 55.5) / 100 * depth, (ys - 55.5) / 100 * depth, depth], -1)
    sel = np.column_stack([xs[4:-4:2, 4:-4:2].ravel(), ys[4:-4:2, 4:-4:2].ravel()]).astype(np.int64)
    p = pts3d[sel[:, 1], sel[:, 0]]
    cam = p @ T_cur_kf[:3, :3].T + T_cur_kf[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * 100 + 55.5
    ok = (uv >= 0).all(1) & (uv < [w, h]).all(1)
    res = solve_pnp(p[ok], uv[ok], Kk)                         # exact sub-pixel observations: exact pose
    assert res.ok, res.reason
    store = KeyframeStore(KeyframePolicy(min_inliers=10, max_translation=5, max_rotation_deg=45))
    kf = store.add(_tokens(1), torch.ones(8), (h, w), Kk, 0, source='rgb', T_fixed_kf=T_fw_kf, fixed_frame='map')
    decision = store.update(kf, res, 1)
    assert not decision.add
    T_fw_cur = decision.T_fixed_cur
    gt = T_fw_kf @ T_kf_cur
    np.testing.assert_allclose(T_fw_cur, gt, atol=1e-6)
    np.testing.assert_allclose(compose_pose(T_fw_kf, np.eye(4)), T_fw_kf)
    # without a fixed-frame pose there is nothing to compose
    kf2 = store.add(_tokens(2), torch.ones(8), (h, w), Kk, 2, source='events')
    assert store.update(kf2, res, 3).T_fixed_cur is None


def test_bad_inputs():
    store = KeyframeStore()
    with pytest.raises(ValueError, match='source'):
        store.add(_tokens(0), torch.ones(8), (56, 56), K, 0, source='lidar')
    with pytest.raises(ValueError, match='cls has 4 channels'):
        store.add(_tokens(0), torch.ones(4), (56, 56), K, 0, source='rgb')
    with pytest.raises(ValueError, match='K must be'):
        store.add(_tokens(0), torch.ones(8), (56, 56), np.eye(2), 0, source='rgb')
    with pytest.raises(ValueError, match='tokens must be'):
        store.add(torch.zeros(2, 3, 8), torch.ones(8), (56, 56), K, 0, source='rgb')
    with pytest.raises(ValueError, match='T_fixed_kf'):
        store.add(_tokens(0), torch.ones(8), (56, 56), K, 0, source='rgb', T_fixed_kf=np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match='sources'):
        KeyframePolicy(sources=('radar',))
    assert len(store) == 0


def test_concurrent_adds_stay_bounded():
    store = KeyframeStore(KeyframePolicy(capacity=5))

    def worker(offset):
        for i in range(50):
            _add(store, offset + i)
            store.select(torch.ones(8))

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 5 and store.counters['added'] == 200 and store.counters['evicted'] == 195
    assert len({k.id for k in store.keyframes}) == 5


def test_estimate_relative_pose_chain_on_tiny_decoder():
    """decoder -> matches -> PnP in one call equals the step-by-step public API (random weights: any verdict)."""
    from realm_ros.geometry import MatchingParams, PnpParams, estimate_relative_pose
    from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder
    torch.manual_seed(0)
    model = DuneMast3rDecoder(DuneMast3rConfig.tiny()).eval()
    hw = (56, 70)
    t_rgb, t_ev = torch.randn(1, 20, 192), torch.randn(1, 20, 192)
    store = KeyframeStore()
    kf = store.add(t_rgb, torch.randn(192), hw, K, 0, source='rgb')
    params = PnpParams(point_conf_threshold=1.0, desc_conf_threshold=0.0, min_inliers=4, min_correspondences=6,
                       min_inlier_ratio=0.0, min_pixel_spread_px=0.0, min_point_spread=0.0, max_condition=1e30)
    est = estimate_relative_pose(model, kf, t_ev[0], hw, K, pnp=params, matching=MatchingParams(subsample=2),
                                 keep_predictions=True)
    assert est.keyframe_id == kf.id and set(est.timings_s) == {'decoder', 'matching', 'pnp'}
    pred1, pred2 = est.pred_keyframe, est.pred_current     # keyframe (rgb) = view 1, current (events) = view 2
    m = fast_reciprocal_nn(pred1['desc'][0], pred2['desc'][0], subsample=2)
    assert np.array_equal(m.xy1, est.matches.xy1) and m.count > 6
    ref = solve_relative_pose_pnp(m.xy1, m.xy2, pred1['pts3d'], K, conf_ref=pred1['conf'],
                                  desc_conf_ref=pred1['desc_conf'], desc_conf_cur=pred2['desc_conf'], params=params)
    assert isinstance(est.pose, PoseResult) and (est.pose.ok or est.pose.reason)
    assert (est.pose.ok, est.pose.reason, est.pose.num_correspondences) == (ref.ok, ref.reason,
                                                                            ref.num_correspondences)
    assert np.array_equal(est.pose.inliers, ref.inliers)
    if ref.R is not None:
        np.testing.assert_allclose(est.pose.R, ref.R, atol=1e-9)
