"""Symmetric relative pose (realm_ros.geometry.symmetric): both decoder orders, combination, agreement, gates.

A synthetic "decoder" renders a two-plane scene (wall ahead, ground below) for the camera poses named by the tokens:
``pts3d`` from ray casting, descriptors from random Fourier features of the world point (so reciprocal matching finds
the true correspondences). Its view-2 descriptors can be *contracted* toward the image centre by a factor, which is
the bias found in the miniature decoder: the one-order estimate then reports the wrong translation, the symmetric
one does not.
"""
import cv2
import numpy as np
import pytest
import torch

from realm_ros.geometry.keyframes import Keyframe
from realm_ros.geometry.pose import PnpParams, PoseResult
from realm_ros.geometry.relative_pose import MatchingParams, estimate_relative_pose
from realm_ros.geometry.symmetric import (PoseGates, combine_orders, decode_both_orders, gate_pose,
                                          invert_pose_covariance, order_agreement, symmetric_relative_pose)

from realm_testing.geometry import K, S, FakeDecoder
from realm_testing.geometry import pose_yaw as _pose
from realm_testing.geometry import tokens as _tok


def _kf(i):
    return Keyframe(id=i, source='rgb', tokens=_tok(i), cls=torch.zeros(8), image_shape=(S, S), K=K, stamp_ns=0)


MATCH = MatchingParams(subsample=3)
PNP = PnpParams(iterations=300, reprojection_error_px=2.0)


def _trans_dir_err(T_ref_cur_est, T_ref_cur_gt):
    a, b = T_ref_cur_est[:3, 3], T_ref_cur_gt[:3, 3]
    return np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def test_contraction_bias_flips_one_order_but_not_the_symmetric_estimate():
    poses = [_pose(), _pose(1.0, (0.05, 0.0, 0.2))]
    T_gt = np.linalg.inv(poses[0]) @ poses[1]                     # current camera in the keyframe frame
    dec = FakeDecoder(poses, contraction=0.05)
    one = estimate_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=PNP, matching=MATCH)
    assert one.pose.ok
    assert one.pose.T_ref_cur[2, 3] < 0 < T_gt[2, 3]              # the bias turns forward motion into backward
    sym = symmetric_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=PNP, matching=MATCH,
                                  gates=PoseGates(max_order_trans_ratio=10.0, max_order_rot_deg=10.0))
    assert sym.pose.ok, sym.pose.reason
    assert sym.pose.T_ref_cur[2, 3] > 0
    assert _trans_dir_err(sym.pose.T_ref_cur, T_gt) < 25.0 < _trans_dir_err(one.pose.T_ref_cur, T_gt)
    # the two orders disagree by about the bias: far more than without it
    unbiased = symmetric_relative_pose(FakeDecoder(poses), _kf(0), _tok(1), (S, S), K, pnp=PNP, matching=MATCH)
    assert unbiased.pose.ok, unbiased.pose.reason
    assert _trans_dir_err(unbiased.pose.T_ref_cur, T_gt) < 5.0
    assert unbiased.agreement.trans_m < 0.05 < sym.agreement.trans_m


def test_zero_motion_same_tokens_symmetric_is_identity_and_default_gates_reject_the_bias():
    dec = FakeDecoder([_pose()], contraction=0.03)
    one = estimate_relative_pose(dec, _kf(0), _tok(0), (S, S), K, pnp=PNP, matching=MATCH)
    assert one.pose.ok and one.pose.T_ref_cur[2, 3] < -0.1       # spurious backward motion
    sym = symmetric_relative_pose(dec, _kf(0), _tok(0), (S, S), K, pnp=PNP, matching=MATCH)
    ag = sym.agreement
    assert ag.trans_m > 0.2 and ag.trans_ratio > 1.0
    assert not sym.pose.ok and sym.pose.reason == 'order_disagreement_translation'
    # the combined (ungated) estimate is the identity up to second order: the two orders' biases cancel
    loose = symmetric_relative_pose(dec, _kf(0), _tok(0), (S, S), K, pnp=PNP, matching=MATCH,
                                    gates=PoseGates(max_order_trans_ratio=1e9))
    assert loose.pose.ok and np.linalg.norm(loose.pose.T_ref_cur[:3, 3]) < 0.02 * abs(one.pose.T_ref_cur[2, 3])
    assert loose.pose.rotation_deg < 1e-6


def test_decode_both_orders_batches_and_matches_two_calls():
    dec = FakeDecoder([_pose(), _pose(2.0, (0, 0, 0.5))])
    a, b, c, d = decode_both_orders(dec, _tok(0), _tok(1), (S, S), (S, S))
    p1, p2 = dec(_tok(1), _tok(0), (S, S), (S, S))
    assert torch.equal(c['desc'], p1['desc']) and torch.equal(d['desc'], p2['desc'])
    q1, _ = dec(_tok(0), _tok(1), (S, S), (S, S))
    assert torch.equal(a['pts3d'], q1['pts3d']) and a['pts3d'].shape[0] == 1


def test_invert_pose_covariance_matches_sampled_inverses():
    rng = np.random.default_rng(3)
    T = _pose(20.0, (1.0, -0.5, 3.0))
    A = rng.normal(size=(6, 6)) * 1e-3
    C = A @ A.T
    L = np.linalg.cholesky(C)
    deltas = []
    Ti = np.linalg.inv(T)
    for _ in range(4000):
        e = L @ rng.normal(size=6)
        Tp = T.copy()
        Tp[:3, :3] = cv2.Rodrigues(e[3:])[0] @ T[:3, :3]
        Tp[:3, 3] = T[:3, 3] + e[:3]
        Tpi = np.linalg.inv(Tp)
        w = cv2.Rodrigues(Tpi[:3, :3] @ Ti[:3, :3].T)[0].reshape(3)
        deltas.append(np.concatenate([Tpi[:3, 3] - Ti[:3, 3], w]))
    emp = np.cov(np.asarray(deltas).T)
    pred = invert_pose_covariance(C, T)
    assert np.abs(emp - pred).max() < 0.08 * np.abs(pred).max()


def test_combine_and_agreement():
    T = _pose(4.0, (0.2, 0.0, 1.0))
    Ta, Tb = T.copy(), T.copy()
    Ta[:3, 3] += [0.0, 0.0, -0.1]
    Tb[:3, 3] += [0.0, 0.0, 0.1]
    Ta[:3, :3] = cv2.Rodrigues(np.array([0.0, 0.01, 0.0]))[0] @ T[:3, :3]
    Tb[:3, :3] = cv2.Rodrigues(np.array([0.0, -0.01, 0.0]))[0] @ T[:3, :3]
    C = np.eye(6) * 1e-4
    Tm, cov = combine_orders(Ta, Tb, C, C, PoseGates(covariance_scale=2.0, covariance_floor=(1e-3, 0.0)))
    np.testing.assert_allclose(Tm, T, atol=1e-9)
    ag = order_agreement(Ta, Tb, min_translation_m=0.2)
    assert ag.trans_m == pytest.approx(0.2) and ag.rot_deg == pytest.approx(np.degrees(0.02), rel=1e-6)
    assert ag.trans_ratio == pytest.approx(0.2 / np.linalg.norm(T[:3, 3]), rel=0.05)
    # covariance: scale * (mean + d d^T / 4) + floor; the disagreement shows up on z and ry
    assert cov[2, 2] == pytest.approx(2.0 * (1e-4 + 0.01) + 1e-3)
    assert cov[4, 4] == pytest.approx(2.0 * (1e-4 + 1e-4))
    assert cov[0, 0] == pytest.approx(2.0 * 1e-4 + 1e-3)
    assert combine_orders(Ta, Tb)[1] is None
    per_axis = combine_orders(Ta, Tb, C, C, PoseGates(covariance_floor=(1, 2, 3, 4, 5, 6)))[1]
    np.testing.assert_allclose(np.diag(per_axis) - np.diag(combine_orders(Ta, Tb, C, C)[1]), [1, 2, 3, 4, 5, 6])


def test_gate_reasons_and_validation():
    ok = PoseResult(ok=True, inliers=np.arange(50), num_correspondences=100)
    few = PoseResult(ok=True, inliers=np.arange(5), num_correspondences=100)
    bad = PoseResult(ok=False, reason='cheirality')
    T = _pose(0.0, (0, 0, 1.0))
    agree = order_agreement(T, T)
    g = PoseGates(min_inliers=12, min_inlier_ratio=0.6, max_order_rot_deg=1.0, max_order_trans_ratio=0.5)
    assert gate_pose(ok, ok, agree, 1.0, g) == 'low_inlier_ratio'
    g = PoseGates(min_inliers=12, min_inlier_ratio=0.1, max_order_rot_deg=1.0, max_order_trans_ratio=0.5,
                  max_translation_m=0.5)
    assert gate_pose(ok, few, agree, 0.1, g) == 'too_few_inliers'
    assert gate_pose(bad, ok, agree, 0.1, g) == 'cheirality'
    assert gate_pose(ok, ok, agree, 1.0, g) == 'implausible_motion'
    assert gate_pose(ok, ok, agree, 0.4, g) == ''
    T2 = _pose(3.0, (0, 0, 1.0))
    assert gate_pose(ok, ok, order_agreement(T, T2), 0.4, g) == 'order_disagreement_rotation'
    T3 = _pose(0.0, (0, 0, -1.0))
    assert gate_pose(ok, ok, order_agreement(T, T3), 0.4, g) == 'order_disagreement_translation'
    assert gate_pose(ok, ok, agree, 0.4, PoseGates(publish=False)) == 'not_better_than_chance'
    with pytest.raises(ValueError, match='max_order_rot_deg'):
        PoseGates(max_order_rot_deg=float('nan'))
    with pytest.raises(ValueError, match='covariance_floor'):
        PoseGates(covariance_floor=(-1.0, 0.0))
    with pytest.raises(ValueError, match='covariance_floor'):
        PoseGates(covariance_floor=(1.0, 0.0, 0.0))


def test_pose_gates_metadata_round_trip_and_errors():
    import json
    from realm_ros.geometry.gates import parse_pose_gates, pose_gates_metadata
    gates = {'symmetric': {'rgb_rgb': PoseGates(min_inliers=100, covariance_scale=0.0125,
                                                covariance_floor=(0.02, 0.007, 1.8, 7e-05, 2e-4, 1e-4)),
                           'event_event': PoseGates(publish=False)},
             'direct': {'rgb_event': PoseGates(min_inliers=40)}}
    meta = pose_gates_metadata(gates)
    assert parse_pose_gates(json.loads(json.dumps(meta))) == gates      # survives JSON (tuples become lists)
    assert parse_pose_gates(None) == {}
    with pytest.raises(ValueError, match=r'file\.st: unknown estimate method .both.'):
        parse_pose_gates({'both': {}}, 'file.st')
    with pytest.raises(ValueError, match=r'file\.st\.direct: unknown pose mode .lidar_rgb.'):
        parse_pose_gates({'direct': {'lidar_rgb': {}}}, 'file.st')
    with pytest.raises(ValueError, match=r'f\.symmetric\.event_event: unknown gate setting.*min_inlier\b'):
        parse_pose_gates({'symmetric': {'event_event': {'min_inlier': 3}}}, 'f')
    with pytest.raises(ValueError, match=r'f\.symmetric\.rgb_event: PoseGates\.max_order_rot_deg'):
        parse_pose_gates({'symmetric': {'rgb_event': {'max_order_rot_deg': -1.0}}}, 'f')
    with pytest.raises(ValueError, match='expected a mapping'):
        parse_pose_gates([1, 2], 'f')
    with pytest.raises(ValueError, match='expected a mapping'):
        parse_pose_gates({'direct': [1]}, 'f')


class _Textureless(FakeDecoder):
    def forward(self, t1, t2, shape1, shape2):
        p1, p2 = super().forward(t1, t2, shape1, shape2)
        for p in (p1, p2):
            p['desc'] = torch.ones_like(p['desc']) / np.sqrt(p['desc'].shape[-1])
        return p1, p2


def test_textureless_view_is_rejected_without_crashing():
    dec = _Textureless([_pose(), _pose(1.0, (0, 0, 0.3))])
    sym = symmetric_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=PNP, matching=MATCH)
    assert not sym.pose.ok and sym.pose.reason and sym.agreement is None


def test_different_input_sizes_decode_in_two_calls():
    calls = []

    class Counting(FakeDecoder):
        def forward(self, t1, t2, shape1, shape2):
            calls.append((tuple(shape1), tuple(shape2)))
            return super().forward(t1, t2, (S, S), (S, S))
    dec = Counting([_pose(), _pose(1.0, (0, 0, 0.3))])
    decode_both_orders(dec, _tok(0), _tok(1), (S, S), (S, S + 14))
    assert calls == [((S, S), (S, S + 14)), ((S, S + 14), (S, S))]


def test_gates_for_decoder_uses_the_decoders_own_calibration():
    from realm_ros.geometry.symmetric import gates_for_decoder
    dec = FakeDecoder([_pose()])
    assert gates_for_decoder(dec, 'events') == PoseGates()              # uncalibrated decoder: the defaults
    calibrated = {'symmetric': {'event_event': PoseGates(publish=False), 'rgb_event': PoseGates(min_inliers=40)},
                  'direct': {'event_event': PoseGates(min_inliers=90)}}
    dec.pose_gates = calibrated
    assert gates_for_decoder(dec, 'events') is calibrated['symmetric']['event_event']
    assert gates_for_decoder(dec, 'rgb') is calibrated['symmetric']['rgb_event']
    assert gates_for_decoder(dec, 'events', method='direct') is calibrated['direct']['event_event']
    assert gates_for_decoder(dec, 'rgb', method='direct') == PoseGates()   # no calibration for that method/mode
    assert gates_for_decoder(dec, 'rgb', 'rgb') == PoseGates()
    with pytest.raises(ValueError, match='source'):
        gates_for_decoder(dec, 'lidar')
    with pytest.raises(ValueError, match='method'):
        gates_for_decoder(dec, 'rgb', method='both')


def test_decoder_checkpoint_carries_its_gates(tmp_path):
    """load_dune_mast3r parses ``extra.pose_gates`` of the file into ``decoder.pose_gates``; bad gates are a
    checkpoint error naming the file; the shipped decoder carries the calibration recorded in the metrics file."""
    import json
    from pathlib import Path
    from realm_ros.geometry.gates import METHODS, pose_gates_metadata
    from realm_ros.models.checkpoints import read_safetensors, write_safetensors
    from realm_ros.models.mast3r import DuneMast3rCheckpointError, load_dune_mast3r
    models = Path(__file__).resolve().parents[2] / 'models'
    tensors, meta = read_safetensors(models / 'mini_mast3r.safetensors')
    meta = json.loads(json.dumps(meta))
    mine = {'direct': {'rgb_event': PoseGates(min_inliers=77)}}
    meta['extra']['pose_gates'] = pose_gates_metadata(mine)
    write_safetensors(tmp_path / 'dec.safetensors', tensors, meta)
    assert load_dune_mast3r(tmp_path / 'dec.safetensors').pose_gates == mine
    meta['extra']['pose_gates'] = {'direct': {'rgb_event': {'min_inliers': -5}}}
    write_safetensors(tmp_path / 'bad.safetensors', tensors, meta)
    with pytest.raises(DuneMast3rCheckpointError, match=r'bad\.safetensors: pose_gates\.direct\.rgb_event'):
        load_dune_mast3r(tmp_path / 'bad.safetensors')
    del meta['extra']['pose_gates']
    write_safetensors(tmp_path / 'none.safetensors', tensors, meta)
    assert load_dune_mast3r(tmp_path / 'none.safetensors').pose_gates == {}

    shipped = load_dune_mast3r(models / 'mini_mast3r.safetensors').pose_gates
    doc = json.loads((models / 'miniature_metrics.json').read_text())
    for method in METHODS:
        recorded = doc['pose_trust'][method]['gates']
        assert set(shipped[method]) == {'rgb_rgb', 'event_event', 'rgb_event'} == set(recorded)
        assert shipped[method]['event_event'].min_view_similarity > 0.9       # the appearance gate is calibrated
        for mode, gates in recorded.items():
            got = shipped[method][mode]
            assert got.publish == gates['publish'], (method, mode)
            for k in ('min_inliers', 'min_inlier_ratio', 'min_view_similarity', 'max_order_rot_deg',
                      'max_order_trans_ratio', 'covariance_scale'):
                assert getattr(got, k) == pytest.approx(gates[k]), (method, mode, k)
            np.testing.assert_allclose(got.covariance_floor, gates['covariance_floor'], rtol=1e-6)


def test_one_order_estimate_goes_through_the_direct_gates():
    """``pose.symmetric: false``: the node applies the gates calibrated for the one-order estimate, the appearance
    gate included, and their covariance model (scale and floor, as the calibration scored it)."""
    from types import SimpleNamespace

    from realm_ros.geometry.pose import PoseResult
    from realm_ros.pipeline.pose_tracker import PoseTracker
    tracker = PoseTracker.__new__(PoseTracker)
    tracker._pipe = SimpleNamespace(mast3r=SimpleNamespace(pose_gates={
        'direct': {'event_event': PoseGates(min_inliers=50, min_view_similarity=0.9, covariance_scale=2.0,
                                            covariance_floor=(0.01, 0.001)),
                   'rgb_event': PoseGates(publish=False)}}))
    g = torch.Generator().manual_seed(0)
    tok = torch.randn(1, 16, 8, generator=g)
    other = torch.randn(1, 16, 8, generator=g)
    ev, rgb = SimpleNamespace(source='events', tokens=tok, image_shape=(56, 56)), \
        SimpleNamespace(source='rgb', tokens=tok, image_shape=(56, 56))
    res = PoseResult(ok=True, R=np.eye(3), t=np.array([0.0, 0.0, 0.3]), inliers=np.arange(40), num_correspondences=80)
    assert tracker._gate_direct(res, ev, tok, (56, 56)).reason == 'too_few_inliers'
    assert not tracker._gate_direct(res, ev, tok, (56, 56)).ok
    assert tracker._gate_direct(res, rgb, tok, (56, 56)).reason == 'not_better_than_chance'
    many = PoseResult(ok=True, R=np.eye(3), t=np.array([0.0, 0.0, 0.3]), inliers=np.arange(60), num_correspondences=80)
    assert tracker._gate_direct(many, ev, tok, (56, 56)) is many                  # passes: published unchanged
    assert tracker._gate_direct(many, ev, other, (56, 56)).reason == 'dissimilar_views'
    failed = PoseResult(ok=False, reason='pnp_failed')
    assert tracker._gate_direct(failed, ev, tok, (56, 56)) is failed
    with_cov = PoseResult(ok=True, R=np.eye(3), t=np.array([0.0, 0.0, 0.3]), inliers=np.arange(60),
                          num_correspondences=80, covariance=np.eye(6) * 1e-4)
    out = tracker._gate_direct(with_cov, ev, tok, (56, 56))
    assert out.ok and np.allclose(np.diag(out.covariance), [0.0102] * 3 + [0.0012] * 3)


def test_view_similarity_keeps_the_layout_and_checks_its_input():
    from realm_ros.geometry.gates import token_grid, view_similarity
    g = torch.Generator().manual_seed(3)
    base = torch.randn(16, 16, 32, generator=g) + 4.0 * torch.randn(32, generator=g)   # a shared direction
    tok = base.reshape(1, 256, 32)
    assert view_similarity(tok, (16, 16), tok.clone(), (16, 16)) == pytest.approx(1.0, abs=1e-12)
    # the same tokens, rearranged: top and bottom halves swapped. The plain mean cannot see it; the 2 x 2 layout can
    flipped = torch.cat([base[8:], base[:8]]).reshape(1, 256, 32)
    plain = view_similarity(tok, (16, 16), flipped, (16, 16), cells=1)
    layout = view_similarity(tok, (16, 16), flipped, (16, 16))
    assert plain == pytest.approx(1.0, abs=1e-9) and layout < plain - 1e-3
    # numpy input, other grids: each view is pooled to 2 x 2, so a 14 x 18 grid compares with a 16 x 16 one
    other = np.random.default_rng(0).normal(size=(14 * 18, 32))
    assert -1.0 <= view_similarity(tok, (16, 16), other, (14, 18)) <= 1.0
    with pytest.raises(ValueError, match='tokens_b: expected .252, C. tokens on a 14 x 18 grid'):
        view_similarity(tok, (16, 16), other[:100], (14, 18))
    with pytest.raises(ValueError, match='non-finite'):
        view_similarity(tok, (16, 16), np.full((256, 32), np.nan), (16, 16))
    with pytest.raises(ValueError, match='channel counts'):
        view_similarity(tok, (16, 16), other[:, :16], (14, 18))
    assert token_grid((224, 224), tok) == (16, 16)
    assert token_grid((196, 252), torch.zeros(1, 252, 8)) == (14, 18)
    assert token_grid((S, S), _tok(0)) == (2, 2)                   # test doubles: the grid of the token count
    with pytest.raises(ValueError, match='do not form a patch grid'):
        token_grid((224, 224), torch.zeros(1, 7, 8))
    with pytest.raises(ValueError, match='min_view_similarity'):
        PoseGates(min_view_similarity=1.5)


class _CountingDecoder(FakeDecoder):
    """FakeDecoder that records its calls (``calls``): shows whether a pair was decoded at all."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def forward(self, t1, t2, shape1, shape2):
        self.calls.append(1)
        return super().forward(t1, t2, shape1, shape2)


def test_dissimilar_views_are_rejected_before_decoding():
    dec = _CountingDecoder([_pose(), _pose(1.0, (0.05, 0.0, 0.2))])
    calls = dec.calls
    kf = Keyframe(id=0, source='events', tokens=torch.tensor([[[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]]),
                  cls=torch.zeros(3), image_shape=(S, S), K=K, stamp_ns=0)
    far = torch.tensor([[[0.0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]]])          # half of the layout differs
    gates = PoseGates(min_view_similarity=0.9, max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    est = symmetric_relative_pose(dec, kf, far, (S, S), K, pnp=PNP, matching=MATCH, gates=gates)
    assert est.view_similarity == pytest.approx(0.5)
    assert not est.pose.ok and est.pose.reason == 'dissimilar_views' and est.matches.count == 0
    assert calls == [] and set(est.timings_s) == {'similarity'}
    # alike enough: decoded as usual, and the similarity is reported
    near = kf.tokens.clone()
    est = symmetric_relative_pose(dec, kf, near, (S, S), K, pnp=PNP, matching=MATCH, gates=gates)
    assert calls and est.view_similarity == pytest.approx(1.0) and est.pose.reason != 'dissimilar_views'
    assert gate_pose(est.direct, est.swapped, est.agreement, 0.1, gates, 0.5) == 'dissimilar_views'


def test_swapped_order_is_not_solved_when_the_direct_order_already_fails_its_gates(monkeypatch):
    """Same published outcome, less work: a direct order with too few inliers rejects the estimate before the
    swapped order is matched and solved."""
    import realm_ros.geometry.symmetric as sym_mod
    solved = []
    real = sym_mod._match_and_solve

    def counting(*a, **kw):
        solved.append(a[6] if len(a) > 6 else kw.get('order'))
        return real(*a, **kw)
    monkeypatch.setattr(sym_mod, '_match_and_solve', counting)
    dec = FakeDecoder([_pose(), _pose(1.0, (0.05, 0.0, 0.2))])
    loose = PoseGates(max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    full = symmetric_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=PNP, matching=MATCH, gates=loose)
    assert full.pose.ok and solved == ['direct', 'swapped']
    n = full.direct.num_inliers
    solved.clear()
    strict = PoseGates(min_inliers=n + 1, max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    est = symmetric_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=PNP, matching=MATCH, gates=strict)
    assert solved == ['direct'] and not est.pose.ok and est.pose.reason == 'too_few_inliers'
    assert est.swapped.reason == 'not_solved' and est.matches.count == full.matches.count
    np.testing.assert_array_equal(est.pose.inliers, full.direct.inliers)
    # what the full computation would have said about the same pair
    assert gate_pose(full.direct, full.swapped, full.agreement, 0.2, strict) == 'too_few_inliers'


def test_non_finite_tokens_are_rejected_without_decoding():
    dec = _CountingDecoder([_pose(), _pose(1.0, (0.05, 0.0, 0.2))])
    calls = dec.calls
    bad = _tok(1).clone()
    bad[0, 2, 3] = float('nan')
    est = symmetric_relative_pose(dec, _kf(0), bad, (S, S), K, pnp=PNP, matching=MATCH)
    assert not est.pose.ok and est.pose.reason == 'non_finite_input' and calls == []
    assert np.isnan(est.view_similarity) and est.matches.count == 0


def test_decoder_file_records_what_its_gates_were_calibrated_with(tmp_path):
    """write_decoder_gates stores the decoder precision and RANSAC kernel next to the gates
    (``extra.pose_gates_compute``); load_dune_mast3r reads them; a file without the record means fp32 / SQPnP; a bad
    record is a checkpoint error naming the file and the entry."""
    import shutil
    from pathlib import Path
    from realm_ros.geometry.gates import (POSE_COMPUTE_DEFAULTS, parse_pose_compute, pose_compute_for_decoder)
    from realm_ros.miniature.pose_checks import write_decoder_gates
    from realm_ros.models.checkpoints import read_safetensors, write_safetensors
    from realm_ros.models.mast3r import DuneMast3rCheckpointError, load_dune_mast3r
    src = Path(__file__).resolve().parents[2] / 'models' / 'mini_mast3r.safetensors'
    path = tmp_path / 'dec.safetensors'
    shutil.copy(src, path)
    shutil.copy(src.with_suffix('.json'), path.with_suffix('.json'))
    gates = {'symmetric': {'event_event': PoseGates(min_inliers=40)}}
    write_decoder_gates(path, gates, {'decoder_precision': 'bf16', 'solver': 'essential', 'length_source': 'depth_head',
                                      'ransac_kernel': 'ap3p'})
    dec = load_dune_mast3r(path)
    assert dec.pose_gates == gates
    assert dec.pose_gates_compute == {'decoder_precision': 'bf16', 'solver': 'essential',
                                      'length_source': 'depth_head', 'ransac_kernel': 'ap3p'}
    assert pose_compute_for_decoder(dec) == dec.pose_gates_compute
    assert '"ransac_kernel": "ap3p"' in path.with_suffix('.json').read_text()            # the sidecar follows
    write_decoder_gates(path, gates)                                                       # default: fp32 / SQPnP
    assert load_dune_mast3r(path).pose_gates_compute == POSE_COMPUTE_DEFAULTS
    tensors, meta = read_safetensors(path)
    del meta['extra']['pose_gates_compute']
    write_safetensors(tmp_path / 'old.safetensors', tensors, meta)
    old = load_dune_mast3r(tmp_path / 'old.safetensors')
    assert old.pose_gates_compute == {} and pose_compute_for_decoder(old) == POSE_COMPUTE_DEFAULTS
    meta['extra']['pose_gates_compute'] = {'ransac_kernel': 'p3p'}
    write_safetensors(tmp_path / 'bad.safetensors', tensors, meta)
    with pytest.raises(DuneMast3rCheckpointError, match=r'bad\.safetensors: pose_gates_compute\.ransac_kernel'):
        load_dune_mast3r(tmp_path / 'bad.safetensors')
    with pytest.raises(ValueError, match=r"unknown entry \['precision'\]"):
        parse_pose_compute({'precision': 'bf16'})
    assert parse_pose_compute({'decoder_precision': 'bf16'}) == {'decoder_precision': 'bf16', 'solver': 'pnp',
                                                                 'length_source': 'point_map',
                                                                 'ransac_kernel': 'sqpnp'}
    with pytest.raises(ValueError, match=r"solver: 'five_point' is not one of \['pnp', 'essential'\]"):
        parse_pose_compute({'solver': 'five_point'})


def test_essential_solver_gives_the_symmetric_pose_with_metric_length():
    """``pnp.solver='essential'``: each order from its matched pixels (length from its view-1 pointmap), the
    midpoint refined on both orders' inliers. Unbiased matches: the true motion with its metric length. Contracted
    matches (not a rigid motion of the pixels) pull the two orders' rotations apart: the order gate rejects it.
    (With 0.5 px of parallax, e.g. 0.2 m toward a wall 12 m away in this 64-px image, the pixels cannot give the
    direction and PnP on an exact pointmap is the better solver: the calibration chooses per decoder.)"""
    from dataclasses import replace
    poses = [_pose(), _pose(2.0, (0.3, 0.0, 1.5))]
    T_gt = np.linalg.inv(poses[0]) @ poses[1]
    ess = replace(PNP, solver='essential')
    est = symmetric_relative_pose(FakeDecoder(poses), _kf(0), _tok(1), (S, S), K, pnp=ess, matching=MATCH)
    assert est.pose.ok, est.pose.reason
    assert _trans_dir_err(est.pose.T_ref_cur, T_gt) < 2.0
    assert abs(est.pose.translation_norm / np.linalg.norm(T_gt[:3, 3]) - 1) < 0.05
    R_err = est.pose.T_ref_cur[:3, :3].T @ T_gt[:3, :3]
    assert np.degrees(np.arccos(np.clip((np.trace(R_err) - 1) / 2, -1, 1))) < 0.5
    assert est.direct.ok and est.swapped.ok and est.agreement.rot_deg < 1.0
    biased = symmetric_relative_pose(FakeDecoder(poses, contraction=0.05), _kf(0), _tok(1), (S, S), K, pnp=ess,
                                     matching=MATCH)
    assert not biased.pose.ok and biased.pose.reason == 'order_disagreement_rotation'


def test_essential_solver_takes_the_translation_length_from_depth_maps():
    """``depth_keyframe`` / ``depth_current``: each order's length comes from its view 1's depth map (the depth
    head's in the node) instead of the decoder's point map; rotation and direction do not depend on it."""
    from dataclasses import replace

    from realm_ros.geometry.pose import points_from_depth
    poses = [_pose(), _pose(2.0, (0.3, 0.0, 1.5))]
    dec = FakeDecoder(poses)
    ess = replace(PNP, solver='essential')
    z = [dec._world(T, 1.0)[1][..., 2] for T in poses]                    # true z-depth of each view
    xy = np.array([[5, 7], [30, 40]])
    np.testing.assert_allclose(points_from_depth(z[0], xy, K), dec._world(poses[0], 1.0)[1][xy[:, 1], xy[:, 0]],
                               rtol=1e-9)
    base = symmetric_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=ess, matching=MATCH)
    same = symmetric_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=ess, matching=MATCH,
                                   depth_keyframe=z[0], depth_current=z[1])
    double = symmetric_relative_pose(dec, _kf(0), _tok(1), (S, S), K, pnp=ess, matching=MATCH,
                                     depth_keyframe=2 * z[0], depth_current=2 * z[1])
    assert base.pose.ok and same.pose.ok and double.pose.ok
    assert same.pose.translation_norm == pytest.approx(base.pose.translation_norm, rel=0.02)
    assert double.pose.translation_norm == pytest.approx(2 * same.pose.translation_norm, rel=0.02)
    np.testing.assert_allclose(double.pose.R, same.pose.R, atol=1e-9)


def test_appearance_gate_pools_with_the_cells_its_threshold_was_calibrated_for():
    """Swapping the left and right halves inside each quadrant leaves every 2 x 2 cell mean unchanged but moves the
    4 x 4 cells: gates calibrated with 2 cells pass the pair, gates with 4 cells reject it before decoding."""
    from realm_ros.geometry.gates import parse_pose_gates, pose_gates_metadata
    from realm_ros.geometry.symmetric import keyframe_similarity
    g = torch.Generator().manual_seed(5)
    base = torch.randn(16, 16, 32, generator=g) + 2.0 * torch.randn(32, generator=g)
    moved = base.clone()
    for c0 in (0, 8):                                     # swap columns c0..c0+3 with c0+4..c0+7 in both halves
        moved[:, c0:c0 + 4], moved[:, c0 + 4:c0 + 8] = base[:, c0 + 4:c0 + 8].clone(), base[:, c0:c0 + 4].clone()
    kf = Keyframe(id=1, source='events', tokens=base.reshape(1, 256, 32), cls=torch.zeros(32), image_shape=(224, 224),
                  K=np.eye(3), stamp_ns=0)
    cur = moved.reshape(1, 256, 32)
    assert keyframe_similarity(kf, cur, (224, 224), 2) == pytest.approx(1.0, abs=1e-9)
    assert keyframe_similarity(kf, cur, (224, 224), 4) < 0.99
    four = PoseGates(min_view_similarity=0.99, similarity_cells=4)
    est = symmetric_relative_pose(FakeDecoder([_pose()]), kf, cur, (224, 224), np.eye(3), gates=four)
    assert est.pose.reason == 'dissimilar_views' and est.view_similarity < 0.99 and 'decoder' not in est.timings_s
    # the field survives the decoder metadata; files without it mean 2 cells
    meta = pose_gates_metadata({'symmetric': {'event_event': four}})
    assert parse_pose_gates(meta)['symmetric']['event_event'].similarity_cells == 4
    assert parse_pose_gates({'symmetric': {'event_event': {'min_inliers': 3}}})['symmetric']['event_event'] \
        .similarity_cells == 2
    with pytest.raises(ValueError, match='similarity_cells'):
        PoseGates(similarity_cells=0)
