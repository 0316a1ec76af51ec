"""PnP pose from pointmap matches: synthetic scenes with ground truth, intrinsics transforms, rejections."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from realm_ros.geometry.pose import (
    PixelTransform, PnpParams, intrinsics_after_crop, intrinsics_after_pad, intrinsics_after_resize, solve_pnp,
    solve_relative_pose_pnp)


K = np.array([[320.0, 0.0, 223.5], [0.0, 318.0, 224.5], [0.0, 0.0, 1.0]])


def _rot(axis, deg):
    axis = np.asarray(axis, dtype=np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(deg))[0]


def _project(pts, R, t, K):
    cam = pts @ R.T + t
    uv = cam[:, :2] / cam[:, 2:3]
    return uv * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]], cam[:, 2]


def _pose_errors(res, R_gt, t_gt):
    rot = np.degrees(np.arccos(np.clip((np.trace(res.R.T @ R_gt) - 1) / 2, -1, 1)))
    # baseline = distance between camera centres; error of the camera centre relative to it
    c_gt, c_est = -R_gt.T @ t_gt, -res.R.T @ res.t
    return rot, np.linalg.norm(c_est - c_gt) / np.linalg.norm(c_gt)


def _scene(rng, n=600, outlier_ratio=0.25, noise_px=0.5, baseline=0.6, rot_deg=8.0):
    pts = np.column_stack([rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(3, 9, n)])
    R = _rot([0.3, 1.0, -0.2], rot_deg)
    c = np.array([1.0, 0.2, 0.3])
    c = c / np.linalg.norm(c) * baseline                 # camera 2 centre in camera 1 frame
    t = -R @ c
    uv, depth = _project(pts, R, t, K)
    uv = uv + rng.normal(0, noise_px, uv.shape)
    n_out = int(outlier_ratio * n)
    out = rng.choice(n, n_out, replace=False)
    uv[out] = rng.uniform(0, 448, (n_out, 2))
    return pts, uv, R, t, out


@pytest.mark.parametrize('seed', range(5))
def test_pose_recovered_with_noise_and_outliers(seed):
    rng = np.random.default_rng(seed)
    pts, uv, R, t, out = _scene(rng)
    res = solve_pnp(pts, uv, K)
    assert res.ok, res.reason
    rot_err, rel_t_err = _pose_errors(res, R, t)
    assert rot_err < 0.5 and rel_t_err < 0.01, (rot_err, rel_t_err)
    assert len(set(res.inliers.tolist()) & set(out.tolist())) <= 0.05 * len(out)     # outliers rejected
    assert res.num_inliers >= 0.7 * len(pts) and res.reprojection_error_px < 1.5
    assert np.allclose(res.T_ref_cur @ res.T_cur_ref, np.eye(4))
    assert res.covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(res.covariance) > 0)


def test_covariance_matches_monte_carlo_spread():
    rng = np.random.default_rng(42)
    pts, uv_clean, R, t, _ = _scene(rng, n=300, outlier_ratio=0.0, noise_px=0.0)
    centres, covs = [], []
    for _ in range(25):
        res = solve_pnp(pts, uv_clean + rng.normal(0, 1.0, uv_clean.shape), K)
        assert res.ok
        centres.append(res.T_ref_cur[:3, 3])
        covs.append(res.covariance)
    emp = np.var(np.array(centres), axis=0, ddof=1)
    pred = np.mean([c[:3, :3].diagonal() for c in covs], axis=0)
    ratio = emp / pred
    assert np.all((ratio > 0.3) & (ratio < 3.0)), ratio
    # more pixel noise -> larger predicted covariance
    res_lo = solve_pnp(pts, uv_clean + rng.normal(0, 0.2, uv_clean.shape), K)
    res_hi = solve_pnp(pts, uv_clean + rng.normal(0, 2.0, uv_clean.shape), K)
    assert np.trace(res_hi.covariance) > 10 * np.trace(res_lo.covariance)


def _depth_scene(h=224, w=280):
    """Keyframe pointmap of a tilted ground plane plus a box, in the keyframe camera frame."""
    Kr = np.array([[200.0, 0, (w - 1) / 2], [0, 200.0, (h - 1) / 2], [0, 0, 1]])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = 4.0 + 0.02 * (h - ys) + 0.01 * xs
    depth[60:140, 80:180] = 2.5 + 0.005 * xs[60:140, 80:180]
    rays = np.stack([(xs - Kr[0, 2]) / Kr[0, 0], (ys - Kr[1, 2]) / Kr[1, 1], np.ones_like(xs)], -1)
    return rays * depth[..., None], Kr


def test_relative_pose_from_pointmap_matches_and_confidences():
    rng = np.random.default_rng(3)
    pts3d, Kr = _depth_scene()
    h, w = pts3d.shape[:2]
    R = _rot([0.1, 1.0, 0.05], 5.0)
    t = np.array([-0.5, 0.03, 0.08])
    # the current view is a crop + half-size resize of its sensor: pixels live in the model image with K_cur
    K_sensor = np.array([[420.0, 0, 300.0], [0, 410.0, 240.0], [0, 0, 1]])
    tf = PixelTransform.crop(20, 8).then(PixelTransform.resize((560, 448), (280, 224)))
    K_cur = tf.apply_to_intrinsics(K_sensor)
    ys, xs = np.mgrid[3:h - 3:3, 3:w - 3:3]
    xy_ref = np.column_stack([xs.ravel(), ys.ravel()])
    uv, depth = _project(pts3d[xy_ref[:, 1], xy_ref[:, 0]], R, t, K_cur)
    xy_cur = np.rint(uv).astype(np.int64)                          # integer match pixels (quantisation noise)
    inside = (xy_cur[:, 0] >= 0) & (xy_cur[:, 0] < w) & (xy_cur[:, 1] >= 0) & (xy_cur[:, 1] < h) & (depth > 0)
    xy_ref, xy_cur = xy_ref[inside], xy_cur[inside]
    n_out = len(xy_ref) // 5
    xy_cur[:n_out] = rng.integers(0, [w, h], (n_out, 2))         # 20 % wrong matches
    conf = np.full((h, w), 5.0)
    conf[:, :20] = 1.2                                             # low confidence stripe: must not be used
    res = solve_relative_pose_pnp(xy_ref, xy_cur, pts3d[None], K_cur, conf_ref=conf)
    assert res.ok, res.reason
    rot_err, rel_t_err = _pose_errors(res, R, t)
    assert rot_err < 0.5 and rel_t_err < 0.01, (rot_err, rel_t_err)
    assert np.all(xy_ref[res.inliers, 0] >= 20)                   # inliers index the matches; stripe excluded
    assert res.num_correspondences == int(np.sum(xy_ref[:, 0] >= 20))
    # descriptor confidence threshold: min(ref, cur) below it drops the pair
    dc_ref = np.full((h, w), 2.0)
    dc_cur = np.full((h, w), 2.0)
    dc_cur[:, : w // 2] = 0.5
    res2 = solve_relative_pose_pnp(xy_ref, xy_cur, pts3d, K_cur, desc_conf_ref=dc_ref, desc_conf_cur=dc_cur)
    assert res2.ok and np.all(xy_cur[res2.inliers, 0] >= w // 2)


@pytest.mark.parametrize('case, reason', [
    ('few', 'too_few_matches'),
    ('nan', 'non_finite_input'),
    ('collinear', 'degenerate_points'),
    ('same_pixel', 'degenerate_pixels'),
    ('random', 'too_few_inliers|low_inlier_ratio|pnp_failed'),
])
def test_degenerate_inputs_rejected_with_reason(case, reason):
    rng = np.random.default_rng(1)
    pts, uv, _R, _t, _ = _scene(rng, n=200, outlier_ratio=0.0)
    if case == 'few':
        pts, uv = pts[:6], uv[:6]
    elif case == 'nan':
        pts = np.full_like(pts, np.nan)
    elif case == 'collinear':
        pts = np.outer(np.linspace(1, 5, len(pts)), [0.2, 0.1, 1.0])
    elif case == 'same_pixel':
        uv = np.tile([[100.0, 120.0]], (len(pts), 1)) + rng.normal(0, 0.1, uv.shape)
    elif case == 'random':
        uv = rng.uniform(0, 448, uv.shape)
    res = solve_pnp(pts, uv, K, PnpParams(min_inlier_ratio=0.5))
    assert not res.ok
    assert res.reason.split(':')[0] in reason.split('|'), res.reason
    if res.R is None:
        with pytest.raises(ValueError, match='rejected'):
            _ = res.T_ref_cur


def test_partial_nan_points_are_skipped():
    rng = np.random.default_rng(5)
    pts, uv, R, t, _ = _scene(rng, outlier_ratio=0.1)
    pts[::7] = np.nan
    res = solve_pnp(pts, uv, K)
    assert res.ok and not np.any(np.isin(res.inliers, np.arange(0, len(pts), 7)))
    assert _pose_errors(res, R, t)[0] < 0.5


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='3x3'):
        solve_pnp(np.zeros((10, 3)), np.zeros((10, 2)), np.eye(2))
    with pytest.raises(ValueError, match='differ in length'):
        solve_pnp(np.zeros((10, 3)), np.zeros((9, 2)), K)
    with pytest.raises(ValueError, match='outside'):
        solve_relative_pose_pnp([[500, 1]], [[1, 1]], np.zeros((10, 10, 3)), K)


# ---------------------------------------------------------------------------------------------------------------
# Intrinsics under crop / resize / pad / tiles

def test_intrinsics_transforms_follow_projection():
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50), rng.uniform(2, 5, 50)])
    uv, _ = _project(pts, np.eye(3), np.zeros(3), K)
    chain = (PixelTransform.crop(16, 40).then(PixelTransform.resize((416, 368), (448, 448)))
             .then(PixelTransform.pad(0, 12)))
    K2 = chain.apply_to_intrinsics(K)
    uv2, _ = _project(pts, np.eye(3), np.zeros(3), K2)
    np.testing.assert_allclose(uv2, chain.map_points(uv), atol=1e-9)
    np.testing.assert_allclose(chain.unmap_points(uv2), uv, atol=1e-9)
    np.testing.assert_allclose(intrinsics_after_crop(K, 5, 7)[:2, 2], K[:2, 2] - [5, 7])
    np.testing.assert_allclose(intrinsics_after_pad(K, 5, 7)[:2, 2], K[:2, 2] + [5, 7])
    Kr = intrinsics_after_resize(K, (640, 480), (320, 240))
    np.testing.assert_allclose([Kr[0, 0], Kr[1, 1]], [K[0, 0] / 2, K[1, 1] / 2])
    np.testing.assert_allclose(Kr[:2, 2], (K[:2, 2] + 0.5) / 2 - 0.5)
    # a tile is a crop: the four 224-px corners of a 448 image
    tiles = [PixelTransform.crop(x0, y0) for y0 in (0, 224) for x0 in (0, 224)]
    assert [tuple(t.apply_to_intrinsics(K)[:2, 2]) for t in tiles][3] == (K[0, 2] - 224, K[1, 2] - 224)


def test_resize_convention_matches_cv2_resize():
    """A horizontal ramp I(x, y) = x resized with cv2 INTER_LINEAR holds the source coordinate of each pixel."""
    src = np.tile(np.arange(64, dtype=np.float32), (48, 1))
    src_y = np.tile(np.arange(48, dtype=np.float32)[:, None], (1, 64))
    dst_wh = (40, 30)
    dst = cv2.resize(src, dst_wh, interpolation=cv2.INTER_LINEAR)
    dst_y = cv2.resize(src_y, dst_wh, interpolation=cv2.INTER_LINEAR)
    tf = PixelTransform.resize((64, 48), dst_wh)
    ys, xs = np.mgrid[2:28, 2:38]
    back = tf.unmap_points(np.column_stack([xs.ravel(), ys.ravel()]))
    np.testing.assert_allclose(dst[ys, xs].ravel(), back[:, 0], atol=1e-4)
    np.testing.assert_allclose(dst_y[ys, xs].ravel(), back[:, 1], atol=1e-4)


def test_covariance_of_an_exact_identity_pose_is_defined():
    """Zero motion with exact correspondences (the same view twice): the numeric Jacobian must not lose the rotation
    columns (cv2.Rodrigues snaps rotations below ~1e-5 rad to zero)."""
    from realm_ros.geometry.pose import _camera_pose_covariance, _so3_log
    rng = np.random.default_rng(0)
    pts = rng.uniform([-3, -2, 4], [3, 2, 12], (300, 3))
    K = np.array([[48.0, 0, 31.5], [0, 48, 31.5], [0, 0, 1]])
    uv = pts @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    uv_noisy = uv + rng.normal(0, 0.5, uv.shape)
    cov, cond = _camera_pose_covariance(pts, uv_noisy, K, np.eye(3), np.zeros(3), 1e10)
    assert cov is not None and np.isfinite(cond) and np.all(np.diag(cov) > 0)
    for w in (np.array([1e-7, -2e-7, 3e-8]), np.array([0.3, -0.2, 0.1]), np.array([0.0, 3.0, 0.0])):
        R = cv2.Rodrigues(w.reshape(3, 1))[0]
        np.testing.assert_allclose(_so3_log(R), w, rtol=1e-6, atol=1e-12)
