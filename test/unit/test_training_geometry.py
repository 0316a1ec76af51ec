"""RGB -> event-camera warp (rotation + plane homography, distortion), TF chains, camera_info parsing."""
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pytest

from realm_ros.training.camera_geometry import (CameraModel, TfTree, build_warp_maps, camera_from_info,
                                                quaternion_to_matrix, valid_mask_from_maps)
from realm_ros.training.errors import DataError

K = np.array([[90.0, 0, 47.5], [0, 92.0, 35.5], [0, 0, 1]])


def rot_y(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def sample(maps, u, v):
    """Bilinear lookup of the remap tables at (u, v)."""
    mx = cv2.remap(maps[0], np.float32([[u]]), np.float32([[v]]), cv2.INTER_LINEAR)[0, 0]
    my = cv2.remap(maps[1], np.float32([[u]]), np.float32([[v]]), cv2.INTER_LINEAR)[0, 0]
    return np.array([mx, my])


def test_pure_rotation_equals_the_rotation_homography():
    ev, rgb = CameraModel(96, 72, K), CameraModel(128, 96, K * [[1.2], [1.2], [1]])
    R = rot_y(3.0)
    maps = build_warp_maps(ev, rgb, R, np.zeros(3), 0.0)
    H = rgb.K @ R.T @ np.linalg.inv(ev.K)  # event pixel -> rgb pixel
    vv, uu = np.mgrid[0:72, 0:96]
    pts = cv2.perspectiveTransform(np.stack([uu, vv], -1).reshape(-1, 1, 2).astype(np.float64), H).reshape(72, 96, 2)
    assert np.abs(maps[0] - pts[..., 0]).max() < 1e-3 and np.abs(maps[1] - pts[..., 1]).max() < 1e-3
    # a translation is irrelevant for plane_depth = 0 (infinity)
    maps_t = build_warp_maps(ev, rgb, R, np.array([0.1, 0, 0]), 0.0)
    assert np.allclose(maps_t[0], maps[0])


def test_points_on_the_plane_land_on_their_rgb_pixels():
    ev, rgb = CameraModel(96, 72, K), CameraModel(96, 72, K)
    R, t, depth = rot_y(-2.0), np.array([0.08, -0.01, 0.02]), 6.0  # p_event = R p_rgb + t
    maps = build_warp_maps(ev, rgb, R, t, depth)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x_rgb = np.array([rng.uniform(-2, 2), rng.uniform(-1.5, 1.5), depth])  # on the plane z_rgb = depth
        u_rgb = (K @ (x_rgb / x_rgb[2]))[:2]
        x_ev = R @ x_rgb + t
        u_ev = (K @ (x_ev / x_ev[2]))[:2]
        if not (1 <= u_ev[0] <= 94 and 1 <= u_ev[1] <= 70):
            continue
        assert np.abs(sample(maps, *u_ev) - u_rgb).max() < 0.05
    # off-plane points are displaced (the documented parallax limitation): 0.08 m baseline, point at 2 m
    x_rgb = np.array([0.0, 0.0, 2.0])
    x_ev = R @ x_rgb + t
    u_ev = (K @ (x_ev / x_ev[2]))[:2]
    err = np.abs(sample(maps, *u_ev) - (K @ (x_rgb / 2.0))[:2])[0]
    assert err == pytest.approx(90.0 * 0.08 * (1 / 2.0 - 1 / 6.0), rel=0.15)


@pytest.mark.parametrize('model,d', [('plumb_bob', [-0.25, 0.08, 0.001, -0.002, 0.0]),
                                     ('equidistant', [0.05, -0.02, 0.01, 0.0])])
def test_distorted_event_camera(model, d):
    ev = CameraModel(96, 72, K, np.array(d), model)
    rgb = CameraModel(96, 72, K)  # undistorted (rectified) RGB, same pose
    maps = build_warp_maps(ev, rgb, np.eye(3), np.zeros(3), 10.0)
    for u_rgb in ([20.0, 15.0], [47.5, 35.5], [80.0, 60.0], [10.0, 55.0]):
        ray = np.linalg.inv(K) @ [*u_rgb, 1.0]
        obj = ray.reshape(1, 1, 3)
        if model == 'equidistant':
            u_ev, _ = cv2.fisheye.projectPoints(obj, np.zeros(3), np.zeros(3), K, np.array(d).reshape(4, 1))
        else:
            u_ev, _ = cv2.projectPoints(obj, np.zeros(3), np.zeros(3), K, np.array(d))
        assert np.abs(sample(maps, *u_ev.ravel()) - u_rgb).max() < 0.05


def test_valid_mask_marks_pixels_outside_the_rgb_frame():
    ev, rgb = CameraModel(96, 72, K), CameraModel(96, 72, K)
    # R turns the RGB optical axis to +x of the event frame: the RGB camera looks 10 deg to the right
    maps = build_warp_maps(ev, rgb, rot_y(10.0), np.zeros(3), 0.0)
    valid = valid_mask_from_maps(maps, (96, 72))
    assert not valid[:, :5].any() and valid[:, -5:].all()


def test_tf_tree_chains_and_disconnected_frames():
    def tr(parent, child, xyz, q):
        return NS(header=NS(frame_id=parent), child_frame_id=child,
                  transform=NS(translation=NS(x=xyz[0], y=xyz[1], z=xyz[2]),
                               rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3])))

    qz = (0.0, 0.0, np.sin(np.pi / 8), np.cos(np.pi / 8))  # 45 deg about z
    tf = TfTree()
    tf.add_message(NS(transforms=[tr('base', 'rig', (1, 0, 0), qz), tr('rig', 'cam_a', (0, 0.1, 0), (0, 0, 0, 1))]))
    tf.add_message(NS(transforms=[tr('/base', 'cam_b', (0, 0, 0.5), (0, 0, 0, 1)), tr('x', 'y', (0, 0, 0), qz)]))

    def mat(xyz, q):
        m = np.eye(4)
        m[:3, :3] = quaternion_to_matrix(q)
        m[:3, 3] = xyz
        return m

    base_a = mat((1, 0, 0), qz) @ mat((0, 0.1, 0), (0, 0, 0, 1))
    base_b = mat((0, 0, 0.5), (0, 0, 0, 1))
    assert np.allclose(tf.lookup('cam_b', 'cam_a'), np.linalg.inv(base_b) @ base_a)
    p_a = np.array([0.3, -0.2, 2.0, 1.0])
    assert np.allclose(tf.lookup('cam_a', 'cam_b') @ (tf.lookup('cam_b', 'cam_a') @ p_a), p_a)
    assert tf.lookup('cam_a', 'y') is None and np.allclose(tf.lookup('cam_a', 'cam_a'), np.eye(4))


def test_camera_info_parsing_errors():
    def info(**kw):
        base = dict(width=96, height=72, k=K.ravel(), d=np.zeros(5), distortion_model='plumb_bob',
                    header=NS(frame_id='cam'))
        base.update(kw)
        return NS(**base)

    cam = camera_from_info(info())
    assert cam.frame_id == 'cam' and not cam.distorted
    with pytest.raises(DataError, match="/cam_info: unsupported distortion model 'kannala'"):
        camera_from_info(info(distortion_model='kannala'), '/cam_info')
    with pytest.raises(DataError, match='invalid intrinsics'):
        camera_from_info(info(k=np.zeros(9)))
    with pytest.raises(DataError, match='invalid size'):
        camera_from_info(info(width=0))
