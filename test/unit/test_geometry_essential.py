"""The essential-matrix pose solver: rotation and direction from pixels, metric length from the pointmap."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from realm_testing.refinement import gauss_newton, perturbed
from realm_ros.geometry.pose import (
    PnpParams, metric_scale_from_points, normalised_pixels, parallax_deg, refine_two_view, sampson_residuals,
    solve_essential, solve_pnp, solve_relative_pose_pnp)

K1 = np.array([[320.0, 0.0, 223.5], [0.0, 318.0, 224.5], [0.0, 0.0, 1.0]])
K2 = np.array([[300.0, 0.0, 220.0], [0.0, 302.0, 230.0], [0.0, 0.0, 1.0]])     # another camera (RGB vs events)
ESS = PnpParams(solver='essential')


def _rot(axis, deg):
    axis = np.asarray(axis, dtype=np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(deg))[0]


def _project(pts, R, t, K):
    cam = pts @ R.T + t
    return cam[:, :2] / cam[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]


def _angle(a, b):
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def _rot_err(R, R_gt):
    return float(np.degrees(np.arccos(np.clip((np.trace(R.T @ R_gt) - 1) / 2, -1, 1))))


def _scene(rng, n=700, outliers=0.3, noise_px=0.7, rot_deg=3.0, baseline=0.8):
    """Keyframe points, their keyframe and current pixels (noise, outliers), T_cur_ref = (R, t), forward motion."""
    pts = np.column_stack([rng.uniform(-4, 4, n), rng.uniform(-2, 2, n), rng.uniform(4, 20, n)])
    R = _rot([0.2, 1.0, 0.1], rot_deg)
    c = np.array([0.15, -0.05, 1.0])
    c = c / np.linalg.norm(c) * baseline              # current camera centre in the keyframe frame: mostly forward
    t = -R @ c
    xy_ref = _project(pts, np.eye(3), np.zeros(3), K1) + rng.normal(0, noise_px, (n, 2))
    xy_cur = _project(pts, R, t, K2) + rng.normal(0, noise_px, (n, 2))
    bad = rng.choice(n, int(outliers * n), replace=False)
    xy_cur[bad] = rng.uniform(0, 448, (len(bad), 2))
    return pts, xy_ref, xy_cur, R, t


def test_recovers_pose_and_metric_length_with_outliers():
    """Forward motion, a narrow field of view, 30 % random matches: rotation and direction are coupled (a small
    yaw looks like a sideways step), so a few outliers that happen to fit cost some accuracy; still far below the
    motion itself (3 deg, 0.8 m) and the metric length from the pointmap within 5 %."""
    rots, dirs = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        pts, xy_ref, xy_cur, R, t = _scene(rng)
        res = solve_essential(xy_ref, xy_cur, K1, K2, pts, ESS)
        assert res.ok, res.reason
        rots.append(_rot_err(res.R, R))
        dirs.append(_angle(res.T_ref_cur[:3, 3], -R.T @ t))
        assert rots[-1] < 1.0 and dirs[-1] < 10.0, (rots[-1], dirs[-1])
        assert abs(res.translation_norm / np.linalg.norm(t) - 1) < 0.05          # metric length from the pointmap
        assert res.covariance is not None and np.all(np.linalg.eigvalsh(res.covariance) > 0)
        assert res.num_inliers >= 0.5 * len(pts)
    assert np.median(rots) < 0.5 and np.median(dirs) < 5.0, (rots, dirs)
    # without outliers the pose is exact up to the pixel noise
    rng = np.random.default_rng(0)
    pts, xy_ref, xy_cur, R, t = _scene(rng, outliers=0.0, noise_px=0.3)
    res = solve_essential(xy_ref, xy_cur, K1, K2, pts, ESS)
    assert _rot_err(res.R, R) < 0.1 and _angle(res.T_ref_cur[:3, 3], -R.T @ t) < 1.5


def test_wrong_pointmap_depths_spoil_pnp_but_not_the_essential_solver():
    """The reason for the solver: the pointmap of event tokens is far less accurate than their matches. With depths
    off by a smooth, view-dependent factor (a bad depth head) PnP bends rotation and direction; the essential
    solver takes both from the pixels and only the length from the (median) depth."""
    rots_e, rots_p, dirs_e, dirs_p = [], [], [], []
    for seed in range(4):
        rng = np.random.default_rng(10 + seed)
        pts, xy_ref, xy_cur, R, t = _scene(rng, outliers=0.2)
        x = normalised_pixels(xy_ref, K1)
        warp = 1.0 + 0.5 * x[:, 0] + 0.3 * x[:, 1] + rng.normal(0, 0.15, len(pts))   # depth error 15-50 %
        wrong = pts * warp[:, None]
        e = solve_essential(xy_ref, xy_cur, K1, K2, wrong, ESS)
        p = solve_pnp(wrong, xy_cur, K2, PnpParams(reprojection_error_px=5.0))
        assert e.ok and p.ok
        c_gt = -R.T @ t
        rots_e.append(_rot_err(e.R, R))
        rots_p.append(_rot_err(p.R, R))
        dirs_e.append(_angle(e.T_ref_cur[:3, 3], c_gt))
        dirs_p.append(_angle(p.T_ref_cur[:3, 3], c_gt))
    assert np.median(rots_e) < 0.3 and np.median(dirs_e) < 4.0
    assert np.median(rots_p) > 2 * np.median(rots_e) and np.median(dirs_p) > 2 * np.median(dirs_e)


def test_metric_scale_is_robust_to_wrong_depths():
    rng = np.random.default_rng(3)
    pts, xy_ref, xy_cur, R, t = _scene(rng, outliers=0.0, noise_px=0.3)
    wrong = pts.copy()
    bad = rng.choice(len(pts), len(pts) // 4, replace=False)
    wrong[bad] *= rng.uniform(0.2, 5.0, (len(bad), 1))                       # a quarter of the depths are wrong
    s = metric_scale_from_points(R, t / np.linalg.norm(t), wrong, normalised_pixels(xy_cur, K2))
    assert abs(s / np.linalg.norm(t) - 1) < 0.1
    assert np.isnan(metric_scale_from_points(R, t / np.linalg.norm(t), pts[:1], normalised_pixels(xy_cur[:1], K2)))


def test_length_from_parallax_matches_ignores_stuck_matches():
    """A decoder whose matches of large flows "stick" near the keyframe pixel (the miniature one: most matches move
    a fraction of their true flow): such matches lie on their epipolar lines, so they are essential-matrix inliers,
    and each says "almost no motion" to the length. Three quarters of the matches moving a tenth of their flow: the
    length from every inlier collapses, the length from the matches with >= 3 deg parallax keeps the truth."""
    rng = np.random.default_rng(4)
    pts, xy_ref, _, R, t = _scene(rng, n=800, outliers=0.0, noise_px=0.3, rot_deg=0.3, baseline=2.0)
    xy_true = _project(pts, R, t, K1)                      # one camera (event-event)
    xy_cur = xy_true + rng.normal(0, 0.3, xy_ref.shape)
    stuck = rng.choice(len(pts), len(pts) * 3 // 4, replace=False)
    xy_cur[stuck] = xy_ref[stuck] + 0.1 * (xy_true[stuck] - xy_ref[stuck])
    res = solve_essential(xy_ref, xy_cur, K1, K1, pts, ESS)
    every = solve_essential(xy_ref, xy_cur, K1, K1, pts, PnpParams(solver='essential', length_min_parallax_deg=0.0))
    assert res.ok and every.ok, (res.reason, every.reason)
    assert abs(res.translation_norm / 2.0 - 1) < 0.05, res.translation_norm
    assert every.translation_norm < 0.5 * 2.0, every.translation_norm
    x = normalised_pixels(xy_ref[:3], K1)
    assert np.all(parallax_deg(np.eye(3), x, x) < 1e-6)
    np.testing.assert_allclose(parallax_deg(_rot([0, 1, 0], 5.0), x[:1] * 0, x[:1] * 0), [5.0])


def test_refinement_converges_from_a_perturbed_start():
    rng = np.random.default_rng(5)
    pts, xy_ref, xy_cur, R, t = _scene(rng, outliers=0.0, noise_px=0.2)
    x1, x2 = normalised_pixels(xy_ref, K1), normalised_pixels(xy_cur, K2)
    R0 = _rot([1.0, 0.3, 0.0], 1.5) @ R
    t0 = t / np.linalg.norm(t) + np.array([0.2, -0.1, 0.0])
    Rr, tr = refine_two_view(R0, t0, x1, x2)
    assert _rot_err(Rr, R) < 0.1 and _angle(tr, t) < 1.0 and abs(np.linalg.norm(tr) - 1) < 1e-9
    before = np.abs(sampson_residuals(R0, t0 / np.linalg.norm(t0), x1, x2)).mean()
    after = np.abs(sampson_residuals(Rr, tr, x1, x2)).mean()
    assert after < 0.2 * before


def test_analytic_sampson_jacobian_equals_central_differences():
    """The refinement's analytic Jacobian (rotation and translation-direction steps) agrees with central differences
    of the residuals, so it is the derivative the Gauss-Newton step needs; its residuals are ``sampson_residuals``."""
    from realm_ros.geometry._sampson_jit import direction_basis, sampson_jacobian
    rng = np.random.default_rng(3)
    pts, xy_ref, xy_cur, R, t = _scene(rng, outliers=0.2, noise_px=0.5)
    x1, x2 = normalised_pixels(xy_ref, K1), normalised_pixels(xy_cur, K2)
    t = t / np.linalg.norm(t)
    basis = direction_basis(t)
    assert abs(basis[0] @ t) < 1e-12 and abs(basis[1] @ t) < 1e-12 and abs(basis[0] @ basis[1]) < 1e-12
    r, J = sampson_jacobian(R, t, basis[0], basis[1], x1, x2)
    np.testing.assert_allclose(r, sampson_residuals(R, t, x1, x2), rtol=1e-12, atol=1e-15)
    for k in range(5):
        d = np.zeros(5)
        d[k] = 1e-6
        num = (sampson_residuals(*perturbed(R, t, basis, d), x1, x2)
               - sampson_residuals(*perturbed(R, t, basis, -d), x1, x2)) / 2e-6
        np.testing.assert_allclose(J[:, k], num, rtol=1e-5, atol=1e-8 * np.abs(num).max())


def _reference_refinement(R, t, x1, x2, huber):
    """The refinement as numpy array operations (what the package ran before it was compiled), with the compiled
    Jacobian and direction basis."""
    from realm_ros.geometry._sampson_jit import direction_basis, sampson_jacobian
    return gauss_newton(R, t, huber, lambda R, t, b: sampson_jacobian(R, t, b[0], b[1], x1, x2),
                        basis=direction_basis)


@pytest.mark.parametrize('huber', [0.0, 0.003])
def test_compiled_refinement_equals_the_numpy_gauss_newton(huber):
    """Weights, damping, solve and update of the compiled loop are those of the plain numpy loop: 30 problems with
    outliers, perturbed starts, 20-600 correspondences, poses equal to 1e-12."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        pts, xy_ref, xy_cur, R, t = _scene(rng, outliers=0.2, noise_px=0.5)
        n = int(rng.integers(20, len(pts) + 1))
        x1, x2 = normalised_pixels(xy_ref[:n], K1), normalised_pixels(xy_cur[:n], K2)
        R0 = _rot(rng.normal(size=3), rng.uniform(0.0, 3.0)) @ R
        t0 = t / np.linalg.norm(t) + rng.normal(0, 0.1, 3)
        Ra, ta = refine_two_view(R0, t0, x1, x2, huber=huber)
        Rb, tb = _reference_refinement(R0, t0, x1, x2, huber)
        np.testing.assert_allclose(Ra, Rb, atol=1e-12)
        np.testing.assert_allclose(ta, tb, atol=1e-12)


def test_refinement_solves_like_lapack_and_stops_on_singular_equations():
    """The 5 x 5 solve equals numpy's (LAPACK); singular normal equations (no correspondences) end the loop with
    the start pose, as numpy's ``LinAlgError`` did."""
    from realm_ros.geometry._sampson_jit import _solve5
    rng = np.random.default_rng(2)
    for _ in range(20):
        A = rng.normal(size=(5, 5))
        A = A @ A.T + 0.1 * np.eye(5)
        b = rng.normal(size=5)
        x, ok = _solve5(A, b)
        assert ok
        np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-12)
    assert not _solve5(np.zeros((5, 5)), np.ones(5))[1]
    R0 = _rot([0.0, 1.0, 0.0], 2.0)
    R, t = refine_two_view(R0, np.array([0.0, 0.0, 2.0]), np.zeros((0, 2)), np.zeros((0, 2)))
    np.testing.assert_array_equal(R, R0)
    np.testing.assert_array_equal(t, [0.0, 0.0, 1.0])


def test_normalised_pixels_invert_the_intrinsics():
    K = np.array([[300.0, 2.0, 100.0], [0.0, 310.0, 120.0], [0.0, 0.0, 1.0]])
    xy = np.array([[100.0, 120.0], [400.0, 20.0]])
    x = normalised_pixels(xy, K)
    back = (K @ np.c_[x, np.ones(2)].T).T[:, :2]
    assert np.allclose(back, xy) and np.allclose(x[0], 0)


def test_zero_motion_publishes_no_bogus_translation():
    """Both views the same (a robot standing still): the essential matrix is undefined; the result is either
    rejected or a motion far below a centimetre, never a made-up translation."""
    rng = np.random.default_rng(7)
    pts, xy_ref, _, _, _ = _scene(rng, outliers=0.0)
    xy_cur = xy_ref + rng.normal(0, 0.3, xy_ref.shape)
    res = solve_essential(xy_ref, xy_cur, K1, K1, pts, ESS)
    assert (not res.ok) or res.translation_norm < 0.05, (res.reason, res.translation_norm)


@pytest.mark.parametrize('case, reason', [
    ('few', 'too_few_matches'), ('nan', 'non_finite_input'), ('same_pixel', 'degenerate_pixels'),
    ('random', None)])
def test_bad_inputs_rejected_with_reason(case, reason):
    rng = np.random.default_rng(1)
    pts, xy_ref, xy_cur, _, _ = _scene(rng, n=200, outliers=0.0)
    if case == 'few':
        pts, xy_ref, xy_cur = pts[:6], xy_ref[:6], xy_cur[:6]
    elif case == 'nan':
        pts = np.full_like(pts, np.nan)
    elif case == 'same_pixel':
        xy_cur = np.tile([[100.0, 100.0]], (len(pts), 1))
    else:                                              # unrelated views: matches are noise
        xy_cur = rng.uniform(0, 448, xy_cur.shape)
    res = solve_essential(xy_ref, xy_cur, K1, K2, pts, ESS)
    assert not res.ok
    if reason is not None:
        assert res.reason == reason
    else:                                              # rejected by the inlier checks or the scale
        assert res.reason in ('too_few_inliers', 'low_inlier_ratio', 'inconsistent_scale', 'cheirality',
                              'essential_failed'), res.reason


def test_arguments_checked():
    with pytest.raises(ValueError, match='solver'):
        PnpParams(solver='five_point')
    with pytest.raises(ValueError, match='differ in length'):
        solve_essential(np.zeros((10, 2)), np.zeros((9, 2)), K1, K2, np.zeros((10, 3)))
    with pytest.raises(ValueError, match='K_ref'):
        solve_relative_pose_pnp(np.zeros((10, 2), int), np.zeros((10, 2), int), np.ones((20, 20, 3)), K2,
                                params=ESS)


def test_relative_pose_from_pointmap_matches_with_the_essential_solver():
    """``solve_relative_pose_pnp`` gathers the pointmap at integer matches and solves with either solver."""
    rng = np.random.default_rng(2)
    R, c = _rot([0.0, 1.0, 0.0], 2.0), np.array([0.1, 0.0, 0.7])
    t = -R @ c
    h = w = 224
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = 6.0 + 4.0 * (yy / h) + 0.5 * np.sin(xx / 17.0)
    ray = np.stack([(xx - K1[0, 2] / 2) / (K1[0, 0] / 2), (yy - K1[1, 2] / 2) / (K1[1, 1] / 2), np.ones_like(xx)], -1)
    pts3d = ray * depth[..., None]
    Kh = K1.copy()
    Kh[:2] /= 2
    xy_ref = np.column_stack([rng.integers(5, w - 5, 400), rng.integers(5, h - 5, 400)])
    X = pts3d[xy_ref[:, 1], xy_ref[:, 0]]
    xy_cur = np.round(_project(X, R, t, Kh)).astype(np.int64)
    res = solve_relative_pose_pnp(xy_ref, xy_cur, pts3d, Kh, params=ESS, K_ref=Kh)
    assert res.ok, res.reason
    assert _rot_err(res.R, R) < 0.5 and _angle(res.T_ref_cur[:3, 3], c) < 5.0
    assert abs(res.translation_norm / np.linalg.norm(c) - 1) < 0.1


def test_warm_up_compiles_the_refinement():
    """The node calls ``warm_up_refinement`` at configure: afterwards the kernel has its float64 signature, so the
    first pose step does not compile it."""
    from realm_ros.geometry import _sampson_jit
    from realm_ros.geometry.pose import warm_up_refinement
    if not _sampson_jit.HAVE_NUMBA:
        pytest.skip('numba not installed: the refinement runs as Python')
    warm_up_refinement()
    assert len(_sampson_jit.refine_sampson.signatures) >= 1
