"""pose.similar_window_fallback (PoseTracker.choose_input): when the newest window fails the appearance gate against
the keyframe, the pose step takes the newest earlier window that passes it, and a published estimate of such a
window makes it the keyframe. The gate and the similarity measure are the real ones; the estimates are scripted
(the estimator is tested in test_geometry_symmetric*.py)."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from realm_testing.geometry import scripted_tracker

import realm_ros.geometry.symmetric as symmetric
from realm_ros.geometry.gates import PoseGates
from realm_ros.geometry.pose import PoseResult
from realm_ros.pipeline.pose_tracker import PoseInput

S = 56                                                      # 4 x 4 tokens of 14 px
K = np.array([[50.0, 0, 27.5], [0, 50.0, 27.5], [0, 0, 1.0]])
BASE = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def gates(monkeypatch):
    g = PoseGates(min_view_similarity=0.9, similarity_cells=2)
    monkeypatch.setattr(symmetric, 'gates_for_decoder', lambda decoder, source, method='symmetric': g)
    return g


def _tracker(script, fallback=True, **config):
    return scripted_tracker(script, size=S, mast3r=object(), max_bridged=2, pose_similar_window_fallback=fallback,
                            **config)


def _view(i, like_keyframe, generation=0):
    """Window ``i`` (stamp i ms): tokens like view 0's (cosine of the pooled layout ~1) or unrelated ones."""
    if like_keyframe:
        tok = BASE + 0.01 * torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(i))
    else:
        tok = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(100 + i))
    return PoseInput(stamp_ns=i * 1_000_000, tokens=tok, cls=torch.ones(8), K_model=K,
                     picture=np.zeros((S, S, 3), np.uint8), generation=generation)


def _moved(z):
    return PoseResult(ok=True, R=np.eye(3), t=np.array([0.0, 0.0, -z]), inliers=np.arange(50),
                      num_correspondences=60, covariance=np.eye(6) * 1e-4)


def _with_keyframe(**kw):
    tracker, counts = _tracker([_moved(0.2), _moved(0.3), _moved(0.4)], **kw)
    tracker.step(_view(0, True))                            # the first keyframe
    return tracker, counts


def test_newest_window_that_passes_the_gate_is_taken():
    tracker, _ = _with_keyframe()
    cands = [_view(1, True), _view(2, True), _view(3, True)]
    assert tracker.choose_input(cands) is cands[-1] and not cands[-1].intermediate


def test_newest_unlike_the_keyframe_falls_back_to_the_newest_earlier_window_that_passes():
    tracker, _ = _with_keyframe()
    cands = [_view(1, True), _view(2, True), _view(3, False), _view(4, False)]
    chosen = tracker.choose_input(cands)
    assert chosen.stamp_ns == 2_000_000 and chosen.intermediate
    assert torch.equal(chosen.tokens, cands[1].tokens) and not cands[1].intermediate     # a marked copy


@pytest.mark.parametrize('case', ['all_unlike', 'older_than_keyframe', 'other_generation', 'switched_off',
                                  'not_symmetric', 'gate_off', 'broken_tokens'])
def test_no_fallback(case, gates, monkeypatch):
    tracker, _ = _with_keyframe(fallback=case != 'switched_off', pose_symmetric=case != 'not_symmetric')
    cands = [_view(1, case != 'all_unlike', generation=int(case == 'other_generation')), _view(5, False)]
    if case == 'older_than_keyframe':
        cands[0] = _view(0, True)                           # the keyframe's own time: not after it
    if case == 'gate_off':                                   # gates calibrated not to publish this mode
        monkeypatch.setattr(symmetric, 'gates_for_decoder', lambda *a, **kw: replace(gates, publish=False))
    if case == 'broken_tokens':
        cands[-1].tokens[0, 0, 0] = float('nan')
    chosen = tracker.choose_input(cands)
    assert chosen is cands[-1] and not chosen.intermediate


def test_broken_earlier_window_is_skipped():
    tracker, _ = _with_keyframe()
    cands = [_view(1, True), _view(2, True), _view(3, False)]
    cands[1].tokens[0, 3, 1] = float('inf')
    assert tracker.choose_input(cands).stamp_ns == 1_000_000


def test_a_published_earlier_window_becomes_the_keyframe():
    """Its estimate is published in the fixed frame and the view becomes the keyframe (no translation or inlier rule
    asked for one); the next step is measured against it. A window that was the newest anyway does not."""
    tracker, counts = _with_keyframe()
    chosen = tracker.choose_input([_view(1, True), _view(2, False)])
    out = tracker.step(chosen)
    assert out.pose is not None and out.pose.new_keyframe and counts['keyframe_reason.intermediate'] == 1
    np.testing.assert_allclose(out.pose.t, [0, 0, 0.2])
    kf = tracker.keyframes.latest
    assert kf.stamp_ns == 1_000_000 and torch.equal(kf.tokens, chosen.tokens)
    np.testing.assert_allclose(kf.T_fixed_kf[:3, 3], [0, 0, 0.2])
    out = tracker.step(_view(3, True))                       # against view 1: 0.2 + 0.3 m
    np.testing.assert_allclose(out.pose.t, [0, 0, 0.5])
    assert not out.pose.new_keyframe and len(tracker.keyframes) == 2 and counts['keyframe_reason.intermediate'] == 1


def test_a_rejected_earlier_window_does_not_become_a_keyframe_by_itself():
    tracker, counts = _tracker([PoseResult(ok=False, reason='too_few_inliers')])
    tracker.step(_view(0, True))
    chosen = tracker.choose_input([_view(1, True), _view(2, False)])
    assert chosen.intermediate and tracker.step(chosen).pose is None
    assert 'keyframe_reason.intermediate' not in counts and len(tracker.keyframes) == 1
