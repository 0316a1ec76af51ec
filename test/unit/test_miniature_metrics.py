"""Miniature-world metrics against hand-computed values."""
import math

import numpy as np
import pytest

from realm_ros.miniature.metrics import (ConfusionMatrix, DepthErrorAccumulator, PoseErrorAccumulator,
                                         confusion_matrix, depth_abs_errors, pose_auc, pose_errors, relative_pose,
                                         rotation_error_deg, segmentation_scores, translation_angle_error_deg)


def rot_z(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def test_depth_cutoffs_hand_computed():
    gt = np.array([[5.0, 15.0, 25.0, np.inf], [8.0, 40.0, 0.0, np.nan]])
    pred = np.array([[6.0, 12.0, 25.5, 3.0], [np.nan, 30.0, 7.0, 1.0]])
    r = depth_abs_errors([pred], [gt])
    # <=10 m: pixel gt 5 (err 1) scored; gt 8 has a NaN prediction -> missing
    assert r['abs_err_10m'] == pytest.approx(1.0)
    assert r['pixels_10m'] == 1 and r['missing_10m'] == 1
    # <=20 m: errors 1, 3
    assert r['abs_err_20m'] == pytest.approx(2.0)
    # <=30 m: errors 1, 3, 0.5; gt 40, inf, 0 and NaN never scored
    assert r['abs_err_30m'] == pytest.approx(4.5 / 3)
    assert r['pixels_30m'] == 3 and r['missing_30m'] == 1


def test_depth_pooled_over_frames_and_shape_check():
    acc = DepthErrorAccumulator(cutoffs=(10.0,))
    acc.update(np.array([1.0]), np.array([2.0]))        # err 1
    acc.update(np.array([4.0, 4.0, 4.0]), np.array([1.0, 1.0, 1.0]))  # err 3 x3
    assert acc.result()['abs_err_10m'] == pytest.approx((1 + 9) / 4)  # pixel-pooled, not frame-averaged (2.0)
    with pytest.raises(ValueError, match='shape'):
        acc.update(np.zeros(2), np.zeros(3))
    assert math.isnan(DepthErrorAccumulator().result()['abs_err_20m'])


def test_confusion_and_miou_hand_computed():
    gt = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, gt, num_classes=4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    s = segmentation_scores(cm, ['a', 'b', 'c', 'd'])
    # IoU a = 1/(2+2-1) = 1/3, b = 2/(2+3-2) = 2/3, c = 0/(1+0) = 0, d absent -> excluded
    assert s['iou']['a'] == pytest.approx(1 / 3) and s['iou']['b'] == pytest.approx(2 / 3)
    assert s['iou']['c'] == 0.0 and s['iou']['d'] is None
    assert s['miou'] == pytest.approx(1 / 3)
    assert s['accuracy'] == pytest.approx(3 / 5) and s['pixels'] == 5


def test_confusion_accumulates_and_rejects_bad_labels():
    cmx = ConfusionMatrix(num_classes=2)
    cmx.update(np.array([0, 1]), np.array([0, 1]))
    cmx.update(np.array([1]), np.array([0]))
    assert cmx.matrix.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match='label 7'):
        confusion_matrix(np.array([0]), np.array([7]), 2)
    with pytest.raises(ValueError, match='predicted label 5'):
        confusion_matrix(np.array([5]), np.array([0]), 2)


def test_rotation_and_translation_errors():
    assert rotation_error_deg(rot_z(10), rot_z(-20)) == pytest.approx(30.0)
    assert rotation_error_deg(np.eye(3), np.eye(3)) == pytest.approx(0.0, abs=1e-6)
    assert translation_angle_error_deg([1, 0, 0], [1, 1, 0]) == pytest.approx(45.0)
    assert math.isnan(translation_angle_error_deg([0, 0, 0], [1, 0, 0]))


def test_relative_pose_maps_cam1_points_into_cam2():
    T1 = np.eye(4); T1[:3, :3] = rot_z(30); T1[:3, 3] = [1, 2, 3]
    T2 = np.eye(4); T2[:3, :3] = rot_z(-15); T2[:3, 3] = [0, -1, 2]
    p_c1 = np.array([0.3, -0.2, 4.0])
    p_w = T1[:3, :3] @ p_c1 + T1[:3, 3]
    p_c2 = T2[:3, :3].T @ (p_w - T2[:3, 3])
    T21 = relative_pose(T1, T2)
    np.testing.assert_allclose(T21[:3, :3] @ p_c1 + T21[:3, 3], p_c2, atol=1e-12)


def test_pose_errors_and_failure():
    T_gt = np.eye(4); T_gt[:3, 3] = [0, 0, 1]
    T_est = np.eye(4); T_est[:3, :3] = rot_z(4); T_est[:3, 3] = [1, 0, 1]
    e = pose_errors(T_est, T_gt)
    assert e['rot_deg'] == pytest.approx(4.0) and e['trans_deg'] == pytest.approx(45.0)
    assert e['trans_m'] == pytest.approx(1.0) and e['max_deg'] == pytest.approx(45.0)
    assert pose_errors(None, T_gt)['rot_deg'] == math.inf


def test_pose_auc_hand_computed():
    # sorted errors 1, 3, 6, inf (recall 1/4 steps): area to 5 = 0.125 + 0.75 + 1.0 = 1.875 -> 0.375
    a5, a10 = pose_auc([3.0, math.inf, 1.0, 6.0], thresholds=(5.0, 10.0))
    assert a5 == pytest.approx(0.375)
    # to 10: segments 0-1: 0.125, 1-3: 0.75, 3-6: (0.5+0.75)/2*3 = 1.875, 6-10: flat 0.75*4 = 3.0
    assert a10 == pytest.approx((0.125 + 0.75 + 1.875 + 0.75 * 4) / 10)
    assert pose_auc([0.0, 0.0]) == pytest.approx([1.0, 1.0, 1.0])
    assert pose_auc([math.nan]) == [0.0, 0.0, 0.0]


def test_pose_accumulator_counts_failures():
    acc = PoseErrorAccumulator(thresholds=(5.0,))
    T_gt = np.eye(4); T_gt[:3, 3] = [1, 0, 0]
    T_ok = np.eye(4); T_ok[:3, :3] = rot_z(2); T_ok[:3, 3] = [1, 0, 0]
    acc.update(T_ok, T_gt)
    acc.update(None, T_gt)
    r = acc.result()
    assert r['pairs'] == 2 and r['success_rate'] == 0.5
    assert r['rot_err_deg_mean_ok'] == pytest.approx(2.0)
    assert r['rot_err_deg_median'] == math.inf  # median of (2, inf)
    # recall 0.5 from error 2: area = 0.5*2*0.5/... trapezoid 0->2 rising 0->0.5 = 0.5, then 0.5*3 = 1.5 -> 2.0/5
    assert r['auc_rot@5'] == pytest.approx(0.4)
