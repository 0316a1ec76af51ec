"""Miniature-world data: split seeds, DUNE preprocessing, ground-truth points and correspondences."""
import numpy as np
import pytest
import torch

from realm_ros.miniature.data import (IMAGENET_MEAN, IMAGENET_STD, PairSampler, correspondences, pts3d_in_frame,
                                      rgb_to_tensor, sim_config, split_seeds)
from realm_ros.sim.camera import PinholeCamera, invert_transform, make_transform, rot_y


def test_split_seeds_are_disjoint_and_validated():
    tr, va, te = split_seeds('train', 500), split_seeds('val', 50), split_seeds('test', 50)
    assert len(set(tr) | set(va) | set(te)) == 600
    with pytest.raises(ValueError, match='unknown split'):
        split_seeds('holdout', 1)
    cfg = sim_config(tr[0], 112, 1.0)
    assert (cfg.width, cfg.height, cfg.seed) == (112, 112, tr[0])
    assert cfg == sim_config(tr[0], 112, 1.0)           # deterministic speed / motion from the seed
    assert sim_config(tr[1], 112, 1.0).speed_mps != cfg.speed_mps


def test_rgb_to_tensor_is_dune_preprocessing():
    img = np.zeros((2, 3, 4, 3), np.uint8)
    img[..., 0] = 255
    x = rgb_to_tensor(img)
    assert x.shape == (2, 3, 3, 4)
    assert torch.allclose(x[:, 0], torch.tensor((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    assert torch.allclose(x[:, 1], torch.tensor(-IMAGENET_MEAN[1] / IMAGENET_STD[1]))
    with pytest.raises(ValueError, match='RGB'):
        rgb_to_tensor(np.zeros((4, 4), np.uint8))


def test_pts3d_matches_camera_backprojection():
    cam = PinholeCamera.from_hfov(8, 6, 70.0)
    depth = np.linspace(1, 20, 48, dtype=np.float32).reshape(6, 8)
    depth[0, 0] = np.inf
    pts = pts3d_in_frame(depth, cam.K)
    v, u = 3, 5
    np.testing.assert_allclose(pts[v, u], cam.backproject(u, v, depth[v, u]), rtol=1e-6)
    assert not np.isfinite(pts[0, 0]).all()
    T = make_transform(rot_y(0.3), [1.0, -2.0, 0.5])
    moved = pts3d_in_frame(depth, cam.K, T)
    np.testing.assert_allclose(moved[v, u], T[:3, :3] @ pts[v, u] + T[:3, 3], rtol=1e-6)


def test_correspondences_of_a_fronto_parallel_wall():
    # a wall at z = 10 m; camera 2 moved 1 m to the right: pixels shift by -f/10 px, nothing is occluded
    cam = PinholeCamera.from_hfov(40, 30, 60.0)
    d = np.full((30, 40), 10.0, np.float32)
    T1 = np.eye(4)
    T2 = make_transform(np.eye(3), [1.0, 0.0, 0.0])
    xy1, xy2 = correspondences(d, d, T1, T2, cam.K)
    shift = cam.fx / 10.0
    np.testing.assert_allclose(xy2[:, 0], np.rint(xy1[:, 0] - shift), atol=1)
    np.testing.assert_array_equal(xy2[:, 1], xy1[:, 1])
    assert len(xy1) == np.sum(xy1[:, 0] - shift > -0.5)      # every pixel still inside image 2 is matched
    # an occluder in view 2 (depth 3 m where the wall should be seen) removes those matches
    d2 = d.copy()
    d2[:, :10] = 3.0
    xy1b, xy2b = correspondences(d, d2, T1, T2, cam.K)
    assert len(xy1b) < len(xy1) and (xy2b[:, 0] >= 10).all()


def test_pair_sampler_correspondences_agree_photometrically():
    ps = PairSampler(split_seeds('train', 2), 56, duration_s=3.0, min_dt=0.05, max_dt=0.2)
    pb = ps.sample(2, np.random.default_rng(0))
    assert pb.first.rgb.shape == (2, 56, 56, 3) and np.all(np.abs(pb.dt) >= 0.05)
    for i in range(2):
        T12 = invert_transform(pb.first.poses[i]) @ pb.second.poses[i]
        assert np.linalg.norm(T12[:3, 3]) > 0.01                   # the camera moved
        xy1, xy2 = correspondences(pb.first.depth[i], pb.second.depth[i], pb.first.poses[i], pb.second.poses[i],
                                   pb.first.K)
        assert len(xy1) > 500
        c1 = pb.first.rgb[i][xy1[:, 1], xy1[:, 0]].astype(float)
        c2 = pb.second.rgb[i][xy2[:, 1], xy2[:, 0]].astype(float)
        shuffled = c2[np.random.default_rng(1).permutation(len(c2))]
        assert np.abs(c1 - c2).mean() < 0.5 * np.abs(c1 - shuffled).mean()


def test_sampled_correspondences_come_from_both_views_and_are_radius_neutral():
    """The matching loss's sample must not favour contraction: drawn from view-1 pixels only (the old sampler), the
    matches of street pairs shrink toward the image centre on average, whatever the order of the two views; drawn
    from both views, the sample of (a, b) mirrors the sample of (b, a) and the mean log-radius ratio is ~0."""
    from realm_ros.miniature.data import log_radius_ratio, sample_correspondences
    ps = PairSampler(split_seeds('train', 4), 96, 8.0, 0.2, 0.5)
    batch = ps.sample(10, np.random.default_rng(5))
    K = batch.first.K
    means = {False: [], True: []}
    for i in range(10):
        a = (batch.first.depth[i], batch.first.poses[i])
        b = (batch.second.depth[i], batch.second.poses[i])
        for both in (False, True):
            fwd = sample_correspondences(a[0], b[0], a[1], b[1], K, 4000, np.random.default_rng(i), both)
            rev = sample_correspondences(b[0], a[0], b[1], a[1], K, 4000, np.random.default_rng(i), both)
            m_fwd = np.nanmean(log_radius_ratio(*fwd, K))
            m_rev = np.nanmean(log_radius_ratio(*rev, K))
            means[both] += [m_fwd, m_rev]
            if both:
                assert abs(m_fwd + m_rev) < 0.02                    # mirror images of each other
                # unique pixels on both sides (one InfoNCE target per pixel)
                assert len(np.unique(fwd[0][:, 1] * 96 + fwd[0][:, 0])) == len(fwd[0])
                assert len(np.unique(fwd[1][:, 1] * 96 + fwd[1][:, 0])) == len(fwd[1])
                one = sample_correspondences(a[0], b[0], a[1], b[1], K, 10 ** 6, np.random.default_rng(0), False)
                full = sample_correspondences(a[0], b[0], a[1], b[1], K, 10 ** 6, np.random.default_rng(0), True)
                # one-to-one (the old sample repeats view-2 pixels where the view contracts) with at least as many
                # distinct view-2 pixels
                assert len(full[0]) >= len(np.unique(one[1][:, 1] * 96 + one[1][:, 0]))
    assert np.mean(means[False]) < -0.02                            # the old sampler contracts
    assert abs(np.mean(means[True])) < 0.005
    with pytest.raises(ValueError, match='count'):
        sample_correspondences(a[0], b[0], a[1], b[1], K, -1, np.random.default_rng(0))
    # one direction = the sampler the shipped decoder was trained with (same draws from the same generator)
    xy1, xy2 = correspondences(a[0], b[0], a[1], b[1], K)
    pick = np.random.default_rng(9).choice(len(xy1), size=500, replace=False)
    old = sample_correspondences(a[0], b[0], a[1], b[1], K, 500, np.random.default_rng(9), both_directions=False)
    np.testing.assert_array_equal(old[0], xy1[pick])
    np.testing.assert_array_equal(old[1], xy2[pick])
