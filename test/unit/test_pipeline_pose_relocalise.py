"""Rejected steps and lost tracking in pose.frame fixed (realm_ros.pipeline.pose_tracker): the chain into
pose.fixed_frame continues through the motion-model bridge, the newest posed view, or a re-anchored keyframe."""
import numpy as np
import torch
from realm_testing.geometry import scripted_tracker

from realm_ros.geometry.pose import PoseResult
from realm_ros.pipeline.pose_tracker import PoseInput

S = 56
K = np.array([[50.0, 0, 27.5], [0, 50.0, 27.5], [0, 0, 1.0]])


def _tracker(script, max_bridged=0, motion_check=False):
    """A tracker whose estimates come from ``script`` (one PoseResult per step, in order)."""
    return scripted_tracker(script, size=S, max_bridged=max_bridged, pose_motion_check=motion_check)


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


def test_without_a_newer_posed_view_the_current_view_is_reanchored():
    """Tracking lost with no newer posed view and no motion model: the current view becomes the keyframe where the
    camera was last known (standing still), counted, and later estimates still land in the fixed frame."""
    fail = PoseResult(ok=False, reason='too_few_inliers')
    tracker, counts = _tracker([fail, fail, fail, _moved(0.2)])
    outs = [tracker.step(_input(i)) for i in range(5)]
    assert counts['keyframe_reason.tracking_lost'] == 1 and 'keyframe_reason.tracking_lost_last_posed' not in counts
    assert counts['fixed_frame_reanchored'] == 1
    assert tracker.keyframes.latest.stamp_ns == 3_000_000
    np.testing.assert_allclose(tracker.keyframes.latest.T_fixed_kf, np.eye(4))
    assert outs[4].pose is not None and outs[4].pose.reference == 'fixed' and 'fixed_pose_unknown' not in counts
    np.testing.assert_allclose(outs[4].pose.t, [0, 0, 0.2])


def test_rejected_steps_are_bridged_by_the_motion_model():
    """A rejected step's view becomes the keyframe at the constant-velocity prediction (0.5 m per ms), no pose is
    published for it, the next estimate chains onto it; at most max_bridged bridges in a row."""
    fail = PoseResult(ok=False, reason='dissimilar_views')
    tracker, counts = _tracker([_moved(0.5), fail, _moved(0.2), fail, fail, fail], max_bridged=2)
    outs = [tracker.step(_input(i)) for i in range(7)]
    np.testing.assert_allclose(outs[1].pose.t, [0, 0, 0.5])             # view 1 against view 0, 1 ms apart
    assert outs[2].pose is None                                         # view 2 bridged: predicted at 2 ms -> 1.0 m
    kf2 = tracker.keyframes.get(2)
    assert kf2 is not None and kf2.stamp_ns == 2_000_000
    np.testing.assert_allclose(kf2.T_fixed_kf[:3, 3], [0, 0, 1.0])
    np.testing.assert_allclose(outs[3].pose.t, [0, 0, 1.2])             # measured against the bridged keyframe
    assert counts['keyframe_reason.bridged'] == 3                       # views 2, 4, 5 (the count restarts at 3)
    assert tracker.keyframes.latest.stamp_ns == 5_000_000               # view 6: over the limit, not bridged
    # view 4 is predicted from view 3's motion (0.2 m in 1 ms) over the 2 ms since keyframe view 2: 1.0 + 0.4 m
    np.testing.assert_allclose(tracker.keyframes.get(3).T_fixed_kf[:3, 3], [0, 0, 1.4])
    assert all(o.pose is None for o in outs[4:])


def test_no_bridge_outside_the_fixed_frame():
    fail = PoseResult(ok=False, reason='dissimilar_views')
    tracker, counts = _tracker([_moved(0.5), fail], max_bridged=2)
    tracker._pipe.config.pose_frame = 'keyframe'
    [tracker.step(_input(i)) for i in range(3)]
    assert 'keyframe_reason.bridged' not in counts and len(tracker.keyframes) == 1


def test_estimates_that_contradict_the_motion_model_are_rejected():
    """The model says 0.5 m per ms forward; a short backward estimate is rejected (counted), two in a row drop the
    model and the next estimate is taken on its own; a consistent one passes."""
    back = _moved(-0.1)
    tracker, counts = _tracker([_moved(0.5), back, back, back], motion_check=True)
    outs = [tracker.step(_input(i)) for i in range(5)]
    assert outs[2].pose is None and outs[3].pose is None
    assert counts['pose_rejected.inconsistent_motion'] == 2
    assert outs[4].pose is not None                                     # no model any more: taken on its own
    np.testing.assert_allclose(outs[4].pose.t, [0, 0, -0.1])
    tracker, counts = _tracker([_moved(0.5), _moved(0.9), _moved(0.2)], motion_check=True)
    outs = [tracker.step(_input(i)) for i in range(4)]
    assert outs[2].pose is not None                                     # 0.9 m of a predicted 1.0 m: consistent
    assert outs[3].pose is None and counts['pose_rejected.inconsistent_motion'] == 1   # 0.2 of 1.5 m: too short
    tracker, counts = _tracker([_moved(0.5), back], motion_check=False)
    outs = [tracker.step(_input(i)) for i in range(3)]
    assert outs[2].pose is not None and 'pose_rejected.inconsistent_motion' not in counts
