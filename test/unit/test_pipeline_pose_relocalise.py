"""Tracking lost in pose.frame fixed: the newest view whose fixed-frame pose is known becomes the keyframe, so the
chain into pose.fixed_frame continues (realm_ros.pipeline.pose_tracker)."""
from types import SimpleNamespace

import numpy as np
import torch

from realm_ros.geometry.keyframes import KeyframePolicy
from realm_ros.geometry.matching import ReciprocalMatches
from realm_ros.geometry.pose import PoseResult
from realm_ros.pipeline.pose_tracker import PoseInput, PoseTracker

S = 56
K = np.array([[50.0, 0, 27.5], [0, 50.0, 27.5], [0, 0, 1.0]])


def _tracker(script):
    """A tracker whose estimates come from ``script`` (one PoseResult per step, in order)."""
    cfg = SimpleNamespace(keyframe_source='events', pose_symmetric=True, pose_frame='fixed', max_matches_drawn=10)
    counts = {}
    pipe = SimpleNamespace(config=cfg, input_size=S, device=torch.device('cpu'), mast3r=None,
                           _keyframe_policy=lambda c: KeyframePolicy(min_inliers=10, max_failures=3,
                                                                     max_translation=100.0, max_rotation_deg=90.0))
    tracker = PoseTracker(pipe, lambda k: counts.__setitem__(k, counts.get(k, 0) + 1))
    steps = iter(script)
    xy = np.stack([np.arange(60) % S, np.arange(60) // 2], axis=1).astype(np.int64)
    matches = ReciprocalMatches(xy, xy.copy())              # what the match drawing shows
    tracker._symmetric_pose = lambda *a, **kw: (next(steps), matches)
    return tracker, counts


def _input(i):
    tok = torch.full((1, 16, 8), float(i))
    cls = torch.zeros(8)
    cls[min(i, 1)] = 1.0                                    # keyframe selection: view 0 looks unlike the others
    return PoseInput(stamp_ns=i * 1_000_000, tokens=tok, cls=cls, K_model=K,
                     picture=np.zeros((S, S, 3), np.uint8))


def _moved(z):
    """A published estimate: the current camera z metres ahead of the keyframe (T_cur_ref: t = -z)."""
    return PoseResult(ok=True, R=np.eye(3), t=np.array([0.0, 0.0, -z]), inliers=np.arange(50),
                      num_correspondences=60, covariance=np.eye(6) * 1e-4)


def test_tracking_lost_relocalises_on_the_last_posed_view():
    fail = PoseResult(ok=False, reason='too_few_inliers')
    tracker, counts = _tracker([_moved(0.5), fail, fail, fail, _moved(0.2)])
    outs = [tracker.step(_input(i)) for i in range(6)]
    assert outs[0].pose.new_keyframe                        # view 0: the first keyframe, the fixed frame's origin
    np.testing.assert_allclose(outs[1].pose.t, [0, 0, 0.5])  # view 1 posed in the fixed frame
    assert all(o.pose is None for o in outs[2:5])           # three rejections: tracking lost at view 4
    assert counts['keyframe_reason.tracking_lost_last_posed'] == 1
    kf = tracker.keyframes.latest
    assert kf.stamp_ns == 1_000_000 and torch.equal(kf.tokens, _input(1).tokens)   # view 1, not view 4
    np.testing.assert_allclose(kf.T_fixed_kf[:3, 3], [0, 0, 0.5])
    # view 5 is posed against view 1 and still lands in the fixed frame: 0.5 + 0.2 m
    assert outs[5].pose is not None and outs[5].pose.reference == 'fixed'
    np.testing.assert_allclose(outs[5].pose.t, [0, 0, 0.7])
    assert 'fixed_pose_unknown' not in counts


def test_without_a_newer_posed_view_the_current_view_starts_an_unanchored_keyframe():
    fail = PoseResult(ok=False, reason='too_few_inliers')
    tracker, counts = _tracker([fail, fail, fail, _moved(0.2)])
    outs = [tracker.step(_input(i)) for i in range(5)]
    assert counts['keyframe_reason.tracking_lost'] == 1 and 'keyframe_reason.tracking_lost_last_posed' not in counts
    assert tracker.keyframes.latest.stamp_ns == 3_000_000 and tracker.keyframes.latest.T_fixed_kf is None
    assert outs[4].pose is None and counts['fixed_pose_unknown'] == 1       # its pose in the fixed frame is unknown
