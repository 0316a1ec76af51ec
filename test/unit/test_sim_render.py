"""Simulator scenes and renderer: analytic depth, labels, determinism and multi-view consistency."""
import numpy as np
import pytest

from realm_ros.sim import classes as C
from realm_ros.sim import raycast as rc
from realm_ros.sim.camera import (R_BODY_OPTICAL, PinholeCamera, make_transform, quaternion_to_rotation, rot_x,
                                  rot_y, rot_z, rotation_to_quaternion)
from realm_ros.sim.render import Renderer
from realm_ros.sim.scene import SceneBuilder, generate_street_scene

CAM = PinholeCamera.from_hfov(64, 48, 70.0)


def _scene(build):
    b = SceneBuilder(seed=1)
    build(b)
    return b.build(sun=np.array([0.0, 0.0, 1.0]), sky=np.array([0.3, 0.5, 0.9, 0.8, 0.85, 0.9, 200.0, 0.4]))


def _looking_along_x(height=0.0):
    """Camera at (0, 0, height) looking along world +x, level."""
    return make_transform(R_BODY_OPTICAL, (0.0, 0.0, height))


def test_class_order_matches_models_heads():
    heads = pytest.importorskip('realm_ros.models.heads')
    assert tuple(heads.DSEC_CLASSES) == C.CLASS_NAMES
    assert C.NUM_CLASSES == 11 and C.CLASS_NAMES[C.TRAFFIC_LIGHT] == 'traffic light'


def test_box_front_face_depth_and_label():
    scene = _scene(lambda b: b.box((10.0, 0.0, 0.0), (1.0, 3.0, 3.0), C.WALL, rc.TEX_BRICK, (0.6, 0.3, 0.2)))
    out = Renderer(scene, CAM).render(_looking_along_x())
    # the face x = 9 is a fronto-parallel plane: z-depth 9 wherever it is visible
    face = out.labels == C.WALL
    assert face[CAM.height // 2, CAM.width // 2]
    np.testing.assert_allclose(out.depth[face], 9.0, rtol=1e-5)
    # the face spans |y|, |z| <= 3 at 9 m: its pixel extent follows from the intrinsics
    u = np.arange(CAM.width)
    inside_u = np.abs((u - CAM.cx) / CAM.fx * 9.0) < 3.0 - 1e-6
    assert np.array_equal(face[CAM.height // 2], inside_u)
    sky = ~face
    assert np.all(np.isinf(out.depth[sky])) and np.all(out.labels[sky] == C.SKY)
    assert out.gray.min() >= 0.0 and out.gray.max() <= 1.0 and out.rgb.shape == (48, 64, 3)


def test_ground_plane_depth_follows_camera_height():
    h = 1.5
    scene = _scene(lambda b: b.box((50.0, 0.0, -0.5), (100.0, 100.0, 0.5), C.ROAD, rc.TEX_ASPHALT, (0.3, 0.3, 0.3),
                                   param=(4.0, 30.0, 0.0, 0.0)))
    out = Renderer(scene, CAM).render(_looking_along_x(h))
    for v in range(int(np.ceil(CAM.cy)) + 2, CAM.height):
        expected = h * CAM.fy / (v - CAM.cy)
        np.testing.assert_allclose(out.depth[v], expected, rtol=1e-5)
        assert np.all(out.labels[v] == C.ROAD)
    assert np.all(np.isinf(out.depth[: int(CAM.cy) - 1]))


@pytest.mark.parametrize('shape', ['cylinder', 'ellipsoid'])
def test_round_primitives_nearest_point(shape):
    def build(b):
        if shape == 'cylinder':
            b.cylinder((8.0, 0.0), -2.0, 2.0, 0.5, C.POLE, rc.TEX_METAL, (0.5, 0.5, 0.5), param=(1.0, 0, 0, 0))
        else:
            b.ellipsoid((8.0, 0.0, 0.0), (0.5, 0.5, 0.5), C.VEGETATION, rc.TEX_FOLIAGE, (0.2, 0.4, 0.1),
                        param=(2.0, 0, 0, 0))
    cam = PinholeCamera(65, 49, 60.0, 60.0, 32.0, 24.0)
    out = Renderer(_scene(build), cam).render(_looking_along_x())
    assert out.depth[24, 32] == pytest.approx(7.5, rel=1e-6)
    cls = C.POLE if shape == 'cylinder' else C.VEGETATION
    assert out.labels[24, 32] == cls
    # depth grows away from the nearest point (curved surface)
    assert out.depth[24, 34] > out.depth[24, 32]


def test_occlusion_nearest_surface_wins():
    def build(b):
        b.box((20.0, 0.0, 0.0), (1.0, 5.0, 5.0), C.BUILDING, rc.TEX_FACADE, (0.7, 0.6, 0.5), (0.4, 0.4, 0.4),
              param=(2.5, 3.0, 0.5, 0.0))
        b.box((10.0, 0.0, 0.0), (0.5, 0.5, 0.5), C.CAR, rc.TEX_CAR, (0.8, 0.1, 0.1))
    out = Renderer(_scene(build), CAM).render(_looking_along_x())
    assert out.labels[24, 32] == C.CAR and out.depth[24, 32] == pytest.approx(9.5, rel=1e-6)
    assert out.labels[24, 22] == C.BUILDING and out.depth[24, 22] == pytest.approx(19.0, rel=1e-6)


def test_street_scene_is_deterministic_and_seed_dependent():
    a, b, c = generate_street_scene(4, 80.0), generate_street_scene(4, 80.0), generate_street_scene(5, 80.0)
    for name in ('kind', 'center', 'half', 'yaw', 'cls', 'tex', 'color', 'param', 'pseed'):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert len(a) != len(c) or not np.array_equal(a.center, c.center)
    # a street has every class but sky as primitives
    hist = a.class_histogram()
    assert all(hist[k] > 0 for k in (C.BUILDING, C.ROAD, C.SIDEWALK, C.VEGETATION, C.POLE, C.PERSON, C.CAR))
    cam = PinholeCamera.from_hfov(96, 72, 80.0)
    T = make_transform(R_BODY_OPTICAL, (5.0, a.lane_y, 1.5))
    o1, o2 = Renderer(a, cam).render(T), Renderer(b, cam).render(T)
    assert np.array_equal(o1.rgb, o2.rgb) and np.array_equal(o1.depth, o2.depth)
    assert np.array_equal(o1.labels, o2.labels)
    o3 = Renderer(c, cam).render(make_transform(R_BODY_OPTICAL, (5.0, c.lane_y, 1.5)))
    assert not np.array_equal(o1.rgb, o3.rgb)
    # a street view shows road, sky and buildings, and textures have edges (non-trivial gradients)
    present = set(np.unique(o1.labels).tolist())
    assert {C.SKY, C.ROAD, C.BUILDING} <= present
    finite = np.isfinite(o1.depth)
    assert np.all(o1.depth[finite] > 0) and np.all((o1.labels == C.SKY) == ~finite)
    assert np.abs(np.diff(np.log(o1.gray + 1e-3), axis=1)).max() > 0.5


def test_quaternion_round_trip_and_pinhole_projection():
    rng = np.random.default_rng(0)
    for _ in range(20):
        R = rot_z(rng.uniform(-3, 3)) @ rot_y(rng.uniform(-1.5, 1.5)) @ rot_x(rng.uniform(-3, 3))
        q = rotation_to_quaternion(R)
        assert q[3] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(quaternion_to_rotation(q), R, atol=1e-12)
    cam = PinholeCamera.from_hfov(320, 240, 90.0)
    assert cam.fx == pytest.approx(160.0) and cam.cx == pytest.approx(159.5)
    pts = cam.backproject(np.array([0.0, 100.0]), np.array([5.0, 200.0]), np.array([2.0, 7.0]))
    uv, z = cam.project(pts)
    np.testing.assert_allclose(uv, [[0.0, 5.0], [100.0, 200.0]], atol=1e-9)
    np.testing.assert_allclose(z, [2.0, 7.0])
    with pytest.raises(ValueError, match='hfov_deg'):
        PinholeCamera.from_hfov(10, 10, 200.0)
    with pytest.raises(ValueError, match='T_world_cam'):
        Renderer(generate_street_scene(0, 20.0), cam).render(np.eye(3))
