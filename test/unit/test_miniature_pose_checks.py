"""Pose checks of the miniature world: scoring and gate calibration on hand-made records, and the zero-motion test
with a decoder whose matches contract (realm_ros.miniature.pose_checks)."""
import numpy as np
import pytest

from realm_ros.geometry.symmetric import PoseGates
from realm_ros.miniature.pose_checks import (calibrate_gates, false_positive_bound, is_false_positive,
                                             pose_error_vector, radius_ratio, summarize_records)


def _T(t, yaw_deg=0.0):
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    T = np.eye(4)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = t
    return T


def _inv(T):
    return np.linalg.inv(T)


def _fields(T_ref_cur, inliers=100, corr=200, ok=True, cov=1e-4):
    return dict(ok=ok, reason='' if ok else 'pnp_failed', inliers=inliers, corr=corr, ratio=inliers / corr,
                T_cur_ref=_inv(T_ref_cur) if ok else None, cov=np.eye(6) * cov if ok else None)


def _record(kind, gt, direct, swapped_T_ref_cur, mode='event_event', inliers=100):
    """``direct``: estimated T_ref_cur of the direct order; ``swapped_T_ref_cur``: what the swapped order estimates
    for the same motion (its own T_cur_ref)."""
    return dict(mode=mode, kind=kind, gap=3, T_gt=None if gt is None else _inv(gt),
                direct=_fields(direct, inliers), swapped=_fields(_inv(swapped_T_ref_cur), inliers),
                radius_ratio=0.97, radius_ratio_swapped=0.97, decode_s=0.0)


def _biased_set(rng, n=40):
    """Forward motion with a backward bias of 0.3 m in the direct order (+0.3 m in the swapped one), zero-motion
    pairs with the same bias, unrelated pairs where the two orders disagree at random (rotations 5-15 deg apart)."""
    recs = []
    for _ in range(n):
        gt = _T([rng.normal(0, 0.05), 0.0, rng.uniform(0.4, 1.0)], rng.normal(0, 1))
        noise = rng.normal(0, 0.02, 3)
        d, s = gt.copy(), gt.copy()
        d[:3, 3] += noise + [0, 0, -0.6]
        s[:3, 3] += noise + [0, 0, 0.6]
        recs.append(_record('motion', gt, d, s))
    for _ in range(n // 2):
        d, s = _T([0, 0, -0.3]), _T([0, 0, 0.3])
        recs.append(_record('zero', np.eye(4), d, s))
        yaw = rng.normal(0, 5)
        a = _T(rng.normal(0, 1, 3), yaw)
        b = _T(rng.normal(0, 1, 3), yaw + rng.choice([-1, 1]) * rng.uniform(5, 15))
        recs.append(_record('unrelated', None, a, b, inliers=int(rng.integers(40, 120))))
    return recs


def test_symmetric_scoring_removes_the_bias_and_gates_reject_zero_and_unrelated_pairs():
    recs = _biased_set(np.random.default_rng(0), n=120)      # 60 zero-motion and 60 unrelated pairs
    loose = PoseGates(max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    d = summarize_records(recs, 'direct', loose)['event_event']
    s = summarize_records(recs, 'symmetric', loose)['event_event']
    assert d['forward_sign_correct'] < 0.8 and s['forward_sign_correct'] == 1.0
    assert s['trans_err_deg_median'] < 10 < d['trans_err_deg_median']
    assert d['false_positive_rate_zero'] == 1.0 and s['false_positive_rate_zero'] == 0.0   # identity after combining
    assert d['false_positive_rate_unrelated'] == 1.0
    grid = dict(min_inliers=(12, 100), min_inlier_ratio=(0.1,), max_order_rot_deg=(1.0, 1e9),
                max_order_trans_ratio=(0.5, 1.5))
    cal = calibrate_gates(recs, 'symmetric', max_fp_rate=0.05, grid=grid)
    out = cal['val']['event_event']
    assert out['false_positive_rate_unrelated'] <= 0.05 and out['false_positive_rate_zero'] <= 0.05
    direct = calibrate_gates(recs, 'direct', max_fp_rate=0.05, grid=grid)['val']['event_event']
    assert out['published_rate'] > direct['published_rate'] + 0.2      # order agreement separates, inliers do not
    assert out['auc_pose@20'] > direct['auc_pose@20']
    # the covariance scale makes the normalised squared error ~1 on the calibration set
    assert out['nees_mean'] == pytest.approx(1.0, rel=1e-3)


def test_false_positive_bound_is_the_clopper_pearson_upper_limit():
    assert false_positive_bound(0, 60) == pytest.approx(1 - 0.05 ** (1 / 60), rel=1e-9)      # 4.87 %
    assert false_positive_bound(1, 60) == pytest.approx(0.0766, abs=2e-4)                   # tables: 7.66 %
    assert false_positive_bound(0, 20) > 0.13 and false_positive_bound(0, 0) == 1.0
    assert false_positive_bound(3, 100, 0.5) < false_positive_bound(3, 100, 0.95)


def test_with_a_confidence_a_gate_that_lets_one_of_sixty_unrelated_pairs_through_is_refused():
    rng = np.random.default_rng(4)
    recs = [r for r in _biased_set(rng, n=120) if r['kind'] != 'unrelated']
    unrelated = []
    for _ in range(59):                      # unrelated pairs the order agreement rejects
        unrelated.append(_record('unrelated', None, _T(rng.normal(0, 1, 3), 0.0), _T(rng.normal(0, 1, 3), 10.0)))
    agreeing = _T([0.8, 0.1, 0.5], 4.0)      # ... and one whose two orders agree by chance
    grid = dict(min_inliers=(12,), min_inlier_ratio=(0.1,), max_order_rot_deg=(1.0,), max_order_trans_ratio=(1.5,))
    one_in_60 = recs + unrelated + [_record('unrelated', None, agreeing, agreeing)]
    assert calibrate_gates(one_in_60, 'symmetric', grid=grid)['gates'].publish is True    # (1 + 1) / 62 = 3.2 %
    assert calibrate_gates(one_in_60, 'symmetric', grid=grid, confidence=0.95)['gates'].publish is False  # CP 7.7 %
    none_in_60 = recs + unrelated + [_record('unrelated', None, _T([1, 0, 0]), _T([-1, 0, 0], 20))]
    assert calibrate_gates(none_in_60, 'symmetric', grid=grid, confidence=0.95)['gates'].publish is True  # CP 4.9 %
    assert calibrate_gates(none_in_60, 'symmetric', grid=grid, confidence=0.99)['gates'].publish is False


def test_false_positive_definition_and_error_vector():
    zero = _record('zero', np.eye(4), _T([0, 0, -0.05]), _T([0, 0, 0.05]))
    assert not is_false_positive(zero, True, _inv(_T([0, 0, 0.05])))          # within the identity tolerance
    assert is_false_positive(zero, True, _inv(_T([0, 0, 0.3])))
    assert is_false_positive(zero, True, _inv(_T([0, 0, 0.0], 1.0)))           # 1 deg rotation
    assert not is_false_positive(zero, False, None)
    unrelated = _record('unrelated', None, np.eye(4), np.eye(4))
    assert is_false_positive(unrelated, True, np.eye(4))
    e = pose_error_vector(_T([1, 2, 3], 2.0), _T([1, 2, 2.5]))
    np.testing.assert_allclose(e[:3], [0, 0, 0.5])
    assert np.degrees(np.linalg.norm(e[3:])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match='method'):
        summarize_records([zero], 'both')


def test_radius_ratio():
    K = np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]])
    xy1 = np.array([[90, 50], [50, 10], [10, 90], [50, 51]])
    xy2 = np.array([[86, 50], [50, 14], [14, 86], [50, 51]])                 # 10 % toward the centre
    assert radius_ratio(xy1, xy2, K, K) == pytest.approx(0.9, abs=1e-9)
    assert np.isnan(radius_ratio(np.zeros((0, 2)), np.zeros((0, 2)), K, K))


def test_nothing_is_published_when_no_gate_is_better_than_chance():
    rng = np.random.default_rng(2)
    recs = []
    for _ in range(30):                      # the estimate points anywhere: motion pairs are no better than chance
        gt = _T([0.0, 0.0, rng.uniform(0.5, 1.0)], rng.normal(0, 1))
        est = _T(rng.normal(0, 1, 3), rng.normal(0, 3))
        recs.append(_record('motion', gt, est, est))
    recs.append(_record('zero', np.eye(4), np.eye(4), np.eye(4)))
    cal = calibrate_gates(recs, 'symmetric', grid=dict(min_inliers=(12,), min_inlier_ratio=(0.1,),
                                                       max_order_rot_deg=(1e9,), max_order_trans_ratio=(1e9,)))
    assert cal['gates'].publish is False
    assert cal['val']['event_event']['published_rate'] == 0.0


def test_fit_covariance_makes_normalised_errors_unit_variance():
    from realm_ros.miniature.pose_checks import fit_covariance
    rng = np.random.default_rng(4)
    n = 400
    covs = np.stack([np.eye(6) * rng.uniform(1e-6, 1e-4) for _ in range(n)])
    # true error = what the estimate's covariance predicts x 30 plus a constant part it does not see
    errors = np.stack([rng.multivariate_normal(np.zeros(6), 900 * c + np.diag([0.04] * 3 + [1e-4] * 3))
                       for c in covs])
    scale, floor = fit_covariance(errors, covs)
    assert len(floor) == 6 and floor[0] > floor[3]               # per axis: metres^2 vs radians^2
    C = scale * covs + np.diag(floor)[None]
    nees = np.einsum('ni,ni->n', errors, np.linalg.solve(C, errors[..., None])[..., 0]) / 6
    assert np.mean(nees) == pytest.approx(1.0, abs=0.02)
    assert 0.75 < np.median(nees) < 1.0
    z = errors / np.sqrt(np.einsum('nii->ni', C))
    assert np.all(np.abs(z.var(0) - 1) < 0.35)
    assert fit_covariance(errors[:2], covs[:2]) == (1.0, (0.0, 0.0))


def test_zero_motion_contraction_measures_a_contracting_decoder():
    import torch
    from realm_testing.geometry import K, S, FakeDecoder
    from realm_testing.geometry import pose_yaw as _pose
    from realm_testing.geometry import tokens as _tok
    from realm_ros.geometry.pose import PnpParams
    from realm_ros.geometry.relative_pose import MatchingParams
    from realm_ros.miniature.pose_checks import zero_motion_contraction
    kw = dict(pnp=PnpParams(iterations=200, reprojection_error_px=2.0), matching=MatchingParams(subsample=3))
    with torch.no_grad():
        biased = zero_motion_contraction(FakeDecoder([_pose()], contraction=0.05), [_tok(0)], K, S, **kw)
        clean = zero_motion_contraction(FakeDecoder([_pose()]), [_tok(0)], K, S, **kw)
    assert biased['contraction'] == pytest.approx(0.05, abs=0.02) and biased['log_ratio_mean'] < -0.03
    assert biased['pnp_forward_m_median'] < -0.1 and biased['pnp_moved_fraction'] == 1.0
    assert abs(clean['contraction']) < 0.01 and abs(clean['log_ratio_mean']) < 1e-3     # every pixel on itself
    assert abs(clean['pnp_forward_m_median']) < 0.02 and clean['pnp_moved_fraction'] == 0.0


def _lookalike_set(rng, n=80):
    """Motion pairs whose two orders agree, and unrelated pairs of look-alike scenes whose two orders agree as
    well (geometry alone cannot reject them) but whose views are less alike (``view_similarity``)."""
    recs = []
    for _ in range(n):
        gt = _T([rng.normal(0, 0.05), 0.0, rng.uniform(0.4, 1.0)], rng.normal(0, 1))
        est = gt.copy()
        est[:3, 3] += rng.normal(0, 0.02, 3)
        r = _record('motion', gt, est, est, inliers=int(rng.integers(80, 150)))
        r['view_similarity'] = float(rng.uniform(0.95, 0.99))
        recs.append(r)
        z = _record('zero', np.eye(4), np.eye(4), np.eye(4), inliers=300)
        z['view_similarity'] = 1.0
        recs.append(z)
        fake = _T([0, 0, rng.uniform(0.1, 0.3)])
        u = _record('unrelated', None, fake, fake, inliers=int(rng.integers(80, 150)))
        u['view_similarity'] = float(rng.uniform(0.80, 0.95))
        recs.append(u)
    return recs


def test_similarity_threshold_lets_the_allowed_number_of_unrelated_pairs_pass():
    from realm_ros.miniature.pose_checks import similarity_threshold
    u = np.linspace(0.5, 0.9, 80)                         # (k + 1) / 82 <= 0.05 allows k = 3 of 80 pairs
    thr = similarity_threshold(u, 0.05)
    assert int(np.sum(u >= thr)) == 3 and u[-4] < thr <= u[-4] + 1.1e-6
    # the upper confidence bound allows fewer: at 95 %, 0 of 80 is a 3.7 % bound, 1 of 80 a 5.8 % bound
    thr95 = similarity_threshold(u, 0.05, confidence=0.95)
    assert int(np.sum(u >= thr95)) == 0 and thr95 > u[-1]
    assert similarity_threshold(u, 1.0) == -1.0           # every pair may pass: no gate
    assert similarity_threshold(u[:10], 0.05) > u[:10].max()        # 10 pairs cannot vouch for 5 %: none may pass
    with pytest.raises(ValueError, match='finite'):
        similarity_threshold(np.array([0.5, np.nan]))


def test_calibration_adds_the_appearance_gate_where_geometry_lets_look_alike_scenes_through():
    recs = _lookalike_set(np.random.default_rng(1))
    grid = dict(min_inliers=(12, 100), min_inlier_ratio=(0.1,), max_order_rot_deg=(1.0, 1e9),
                max_order_trans_ratio=(0.5, 1e9))
    # geometry that cannot tell the scenes apart: the appearance gate alone decides (the joint rule)
    without = calibrate_gates(recs, 'symmetric', grid=grid, view_similarity_gate=False, independent_geometry=False)
    assert without['gates'].min_view_similarity == -1.0
    # geometry alone: only the inlier count is left to reject the look-alike pairs, at the cost of most motion pairs
    assert without['val']['event_event']['published_rate'] < 0.6
    cal = calibrate_gates(recs, 'symmetric', grid=grid, independent_geometry=False)
    g = cal['gates']
    assert 0.94 < g.min_view_similarity < 0.95 and g.publish
    out = cal['val']['event_event']
    assert out['false_positive_rate_unrelated'] <= 0.05
    assert out['published_rate'] > 0.9                    # motion pairs look alike: nearly all are published
    # the gate is applied by name: a record below the threshold is rejected as dissimilar views
    from realm_ros.miniature.pose_checks import _estimate
    low = next(r for r in recs if r['kind'] == 'unrelated' and r['view_similarity'] < 0.9)
    assert _estimate(low, 'symmetric', g)[1] == 'dissimilar_views'
    # records without the measure (collected before the gate existed) calibrate as before
    old = [{k: v for k, v in r.items() if k != 'view_similarity'} for r in recs]
    assert calibrate_gates(old, 'symmetric', grid=grid, independent_geometry=False)['gates'] == without['gates']
    # required to hold the limit alone, this geometry (orders agree on the look-alike pairs) cannot: nothing is
    # published rather than trusting the appearance check alone
    assert not calibrate_gates(recs, 'symmetric', grid=grid)['gates'].publish


def _disagreeing_unrelated_set(rng, n=80, unrelated_similarity=(0.80, 0.94)):
    """Motion pairs whose orders disagree by 0-8 deg; unrelated pairs whose orders disagree by 5-15 deg."""
    recs = []
    for _ in range(n):
        gt = _T([rng.normal(0, 0.05), 0.0, rng.uniform(0.4, 1.0)], rng.uniform(3, 8))
        d = gt.copy()
        d[:3, 3] += rng.normal(0, 0.02, 3)
        s = d @ _T([0, 0, 0], rng.uniform(0, 8))
        r = _record('motion', gt, d, s, inliers=int(rng.integers(80, 150)))
        r['view_similarity'] = float(rng.uniform(0.95, 0.99))
        z = _record('zero', np.eye(4), np.eye(4), np.eye(4), inliers=300)
        z['view_similarity'] = 1.0
        a = _T([0, 0, rng.uniform(0.3, 0.6)], rng.normal(0, 3))
        u = _record('unrelated', None, a, a @ _T([0, 0, 0], rng.choice([-1, 1]) * rng.uniform(5, 15)),
                    inliers=int(rng.integers(80, 150)))
        u['view_similarity'] = float(rng.uniform(*unrelated_similarity))
        recs += [r, z, u]
    return recs


def test_the_geometric_gates_are_calibrated_to_hold_the_limit_without_the_appearance_gate():
    """Validation scenes that look less alike than the test scenes: the appearance gate removes every unrelated
    validation pair, so under the joint rule nothing constrains the order agreement and look-alike unrelated test
    pairs get through; required to hold the limit alone, the geometry rejects them."""
    rng = np.random.default_rng(3)
    val = _disagreeing_unrelated_set(rng)
    test = _disagreeing_unrelated_set(rng, unrelated_similarity=(0.96, 0.99))       # look-alike test scenes
    grid = dict(min_inliers=(12,), min_inlier_ratio=(0.1,))
    joint = calibrate_gates(val, 'symmetric', grid=grid, confidence=0.95, independent_geometry=False)['gates']
    both = calibrate_gates(val, 'symmetric', grid=grid, confidence=0.95)['gates']
    assert joint.publish and both.publish and joint.min_view_similarity == both.min_view_similarity > 0.93
    # joint: no unrelated validation pair is left after the appearance gate, the loosest geometry publishes most;
    # alone, order disagreement up to 6 deg would pass unrelated pairs (5-15 deg): 4 deg is the loosest that holds
    assert joint.max_order_rot_deg == 1e9 and both.max_order_rot_deg == 4.0
    fp_joint = summarize_records(test, 'symmetric', joint)['event_event']
    fp_both = summarize_records(test, 'symmetric', both)['event_event']
    assert fp_joint['false_positive_rate_unrelated'] > 0.5 and fp_both['false_positive_rate_unrelated'] == 0.0
    assert 0.3 < fp_both['published_rate'] < fp_joint['published_rate']      # the price: fewer motion pairs


def test_scoring_uses_the_essential_solvers_jointly_refined_estimate():
    """Records of the essential solver carry the estimate refined on both orders' inliers (``combined_T_cur_ref``):
    it is what the node publishes, so scoring uses it instead of the midpoint; the gates still read the two orders."""
    gt = _T([0.1, 0.0, 1.0], 1.0)
    rec = _record('motion', gt, _T([0.5, 0.0, 1.0], 1.0), _T([-0.3, 0.0, 1.0], 1.0))       # midpoint: right
    loose = PoseGates(max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    mid = summarize_records([rec], 'symmetric', loose)['event_event']
    assert mid['trans_err_deg_median'] < 1.0
    rec['combined_T_cur_ref'] = _inv(_T([0.0, 0.0, -1.0], 1.0))                            # refined: backwards
    joint = summarize_records([rec], 'symmetric', loose)['event_event']
    assert joint['trans_err_deg_median'] > 170 and joint['forward_sign_correct'] == 0.0
    strict = summarize_records([rec], 'symmetric', PoseGates(max_order_trans_ratio=0.1))['event_event']
    assert strict['published_rate'] == 0.0                                # the orders disagree: gated out anyway
