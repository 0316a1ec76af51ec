"""The simulated rig end to end (in memory): determinism, physical sanity of events, poses and ground truth."""
import numpy as np
import pytest

from realm_ros.events.types import EventArray
from realm_ros.sim.camera import invert_transform
from realm_ros.sim.esim import EsimConfig
from realm_ros.sim.simulator import SimConfig, Simulator
from realm_ros.sim.trajectory import make_trajectory

SMALL = SimConfig(width=64, height=48, duration_s=0.2, seed=3)


def _run(cfg):
    sim = Simulator(cfg)
    chunks = list(sim.stream())
    return sim, chunks


def test_same_seed_same_sequence_other_seed_differs():
    _, a = _run(SMALL)
    _, b = _run(SMALL)
    _, c = _run(SMALL.with_(seed=4))
    assert len(a) == len(b) == 7                      # frames at 0, 1/30, ..., 0.2 s
    for x, y in zip(a, b):
        assert np.array_equal(x.events.t, y.events.t) and np.array_equal(x.events.x, y.events.x)
        assert np.array_equal(x.events.p, y.events.p) and np.array_equal(x.frame.rgb, y.frame.rgb)
        assert np.array_equal(x.frame.event_depth, y.frame.event_depth)
        assert np.array_equal(x.frame.T_world_event, y.frame.T_world_event)
    ea = EventArray.concat([x.events for x in a])
    ec = EventArray.concat([x.events for x in c])
    assert len(ea) > 1000 and (len(ea) != len(ec) or not np.array_equal(ea.t, ec.t))


def test_chunks_cover_frame_intervals_and_events_are_sorted():
    sim, chunks = _run(SMALL)
    times = sim.frame_times_ns()
    assert [c.frame.t_ns for c in chunks] == times.tolist()
    assert len(chunks[0].events) == 0 and chunks[0].renders == 1
    for prev, ch in zip(chunks, chunks[1:]):
        e = ch.events
        assert ch.t_start_ns == prev.t_end_ns
        assert np.all(np.diff(e.t) >= 0)
        assert np.all((e.t > ch.t_start_ns) & (e.t <= ch.t_end_ns)) and np.all(e.t % 1000 == 0)
        assert e.x.max() < 64 and e.y.max() < 48
        assert ch.renders >= int(np.ceil((ch.t_end_ns - ch.t_start_ns) / 1000 / sim.config.max_render_dt_us))


@pytest.mark.parametrize('sigma', [0.0, 0.03])
def test_net_event_polarity_follows_log_brightness_change(sigma):
    """Per pixel, ON/OFF events integrate to the log-intensity change: n_on*C+ - n_off*C- = R_end - R_start, and
    |L - R| stays below one threshold, so any change larger than C+ + C- has the matching net polarity."""
    cfg = SMALL.with_(esim=EsimConfig(sigma_threshold=sigma))
    sim, chunks = _run(cfg)
    eps = cfg.esim.log_eps
    L0 = np.log(chunks[0].frame.event_gray.astype(np.float64) + eps).ravel()
    L1 = np.log(chunks[-1].frame.event_gray.astype(np.float64) + eps).ravel()
    ev = EventArray.concat([c.events for c in chunks])
    idx = ev.y.astype(np.int64) * cfg.width + ev.x
    n_on = np.bincount(idx[ev.p == 1], minlength=L0.size)
    n_off = np.bincount(idx[ev.p == 0], minlength=L0.size)
    net = n_on * sim.esim.c_pos - n_off * sim.esim.c_neg
    dL = L1 - L0
    margin = sim.esim.c_pos + sim.esim.c_neg
    up, down = dL > margin, dL < -margin
    assert up.sum() > 20 and down.sum() > 20
    assert np.all(net[up] > 0) and np.all(net[down] < 0)
    # and the integrated events track the change to within one threshold step
    assert np.all(np.abs(net - dL) < margin + 1e-9)


def test_static_camera_and_scene_give_no_events_except_configured_noise():
    cfg = SMALL.with_(trajectory='static')
    _, chunks = _run(cfg)
    assert sum(len(c.events) for c in chunks) == 0
    assert all(c.renders > 0 for c in chunks[1:])
    rate = 20.0
    _, noisy = _run(cfg.with_(esim=EsimConfig(background_rate_hz=rate)))
    n = sum(len(c.events) for c in noisy)
    expected = rate * 64 * 48 * 0.2
    assert abs(n - expected) < 5 * np.sqrt(expected)


def test_poses_and_ground_truth_are_consistent_with_the_renderer():
    cfg = SMALL.with_(baseline_m=0.12, rgb_rotation_deg=(0.0, 2.0, 0.0), rgb_width=80, rgb_height=60)
    sim, chunks = _run(cfg)
    T_er = sim.T_event_rgb
    np.testing.assert_allclose(T_er[:3, 3], [0.12, 0.0, 0.0])
    f = chunks[3].frame
    np.testing.assert_allclose(f.T_world_event, sim.trajectory.pose(f.t_ns * 1e-9), atol=1e-12)
    np.testing.assert_allclose(f.T_world_rgb, f.T_world_event @ T_er, atol=1e-12)
    assert f.rgb.shape == (60, 80, 3) and f.rgb_depth.shape == (60, 80) and f.event_depth.shape == (48, 64)
    # event-camera ground truth equals a fresh render at the frame pose
    r = sim.event_renderer.render(f.T_world_event)
    assert np.array_equal(r.depth, f.event_depth) and np.array_equal(r.labels, f.event_labels)
    # RGB depth, moved through the extrinsic into the event camera, agrees with the event camera's depth
    # (inverse depth is bilinear in pixel coordinates on planes, so interpolating it is exact within a face)
    def moved_depth_error(T):
        vv, uu = np.nonzero(np.isfinite(f.rgb_depth))
        X_r = sim.rgb_camera.backproject(uu, vv, f.rgb_depth[vv, uu])
        uv, z = sim.event_camera.project(X_r @ T[:3, :3].T + T[:3, 3])
        inv, ok = _bilinear_same_surface(1.0 / f.event_depth, f.event_labels, uv)
        return np.abs(1.0 / inv[ok] - z[ok]) / z[ok]

    rel = moved_depth_error(T_er)
    assert len(rel) > 1000
    assert np.median(rel) < 1e-5 and np.mean(rel < 0.01) > 0.95
    wrong = moved_depth_error(invert_transform(T_er))        # the inverse extrinsic does not fit
    assert np.median(wrong) > 1e-3
    # the camera follows the street: height ~1.5 m, close to the lane, moving forward along +x
    p0, p1 = chunks[0].frame.T_world_event[:3, 3], chunks[-1].frame.T_world_event[:3, 3]
    assert abs(p0[2] - 1.5) < 0.3 and abs(p0[1] - sim.scene.lane_y) < 0.5
    assert p1[0] - p0[0] == pytest.approx(cfg.speed_mps * 0.2, rel=1e-6)
    # optical z axis looks roughly along +x
    assert (f.T_world_event[:3, 2] @ np.array([1.0, 0.0, 0.0])) > 0.9


def _bilinear_same_surface(img, labels, uv):
    """Bilinear samples of ``img`` at ``uv`` where the 4 neighbours are finite and share one label."""
    H, W = img.shape
    u, v = uv[:, 0], uv[:, 1]
    ok = np.isfinite(u) & (u >= 0) & (u < W - 1) & (v >= 0) & (v < H - 1)
    u0 = np.where(ok, np.floor(u), 0).astype(int)
    v0 = np.where(ok, np.floor(v), 0).astype(int)
    a, b = u - u0, v - v0
    q = [img[v0, u0], img[v0, u0 + 1], img[v0 + 1, u0], img[v0 + 1, u0 + 1]]
    lab = [labels[v0, u0], labels[v0, u0 + 1], labels[v0 + 1, u0], labels[v0 + 1, u0 + 1]]
    ok &= np.all([np.isfinite(x) & (x > 0) for x in q], axis=0) & np.all([x == lab[0] for x in lab], axis=0)
    val = (q[0] * (1 - a) + q[1] * a) * (1 - b) + (q[2] * (1 - a) + q[3] * a) * b
    return val, ok


def test_reprojection_between_frames_lands_on_the_same_point():
    """A pixel back-projected with its depth and pose at t1, moved into the camera at t2, lands on the surface point
    the renderer sees there (same depth and class)."""
    sim = Simulator(SimConfig(seed=2, width=96, height=72, duration_s=1.0))
    T1, T2 = sim.pose_event(100_000_000), sim.pose_event(300_000_000)
    r1, r2 = sim.event_renderer.render(T1), sim.event_renderer.render(T2)
    cam = sim.event_camera

    def errors(T_first, T_second):
        vv, uu = np.nonzero(np.isfinite(r1.depth))
        X_w = cam.backproject(uu, vv, r1.depth[vv, uu]) @ T_first[:3, :3].T + T_first[:3, 3]
        T_cw = invert_transform(T_second)
        uv, z = cam.project(X_w @ T_cw[:3, :3].T + T_cw[:3, 3])
        inv, ok = _bilinear_same_surface(1.0 / r2.depth, r2.labels, uv)
        ok &= z > 0.1
        hit = r2.labels[np.round(uv[ok, 1]).astype(int), np.round(uv[ok, 0]).astype(int)]
        same_class = hit == r1.labels[vv, uu][ok]
        return np.abs(1.0 / inv[ok] - z[ok]) / z[ok], same_class

    rel, same_class = errors(T1, T2)
    assert len(rel) > 0.25 * cam.width * cam.height
    # visible points agree exactly; the rest are disocclusions
    assert np.median(rel) < 1e-5 and np.mean(rel < 1e-3) > 0.85 and same_class.mean() > 0.9
    # a wrong pose (the camera 5 cm off) breaks it
    T2_off = T2.copy()
    T2_off[:3, 3] += T2[:3, 0] * 0.05
    assert np.median(errors(T1, T2_off)[0]) > 1e-3


def test_loop_trajectory_is_periodic_and_smooth():
    traj = make_trajectory('loop', 7, 2.0, speed_mps=8.0)
    np.testing.assert_allclose(traj.pose(0.0), traj.pose(2.0), atol=1e-9)
    t = np.linspace(0, 2.0, 401)
    P = traj.poses(t)
    step = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    assert step.max() < 8.0 * 1.5 * (t[1] - t[0])            # no jumps
    R_rel = np.einsum('nji,njk->nik', P[:-1, :3, :3], P[1:, :3, :3])
    angles = np.degrees(np.arccos(np.clip((np.trace(R_rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angles.max() < 1.0 and angles.max() > 0.0
    with pytest.raises(ValueError, match='trajectory kind'):
        make_trajectory('spiral', 0, 1.0)


def test_adaptive_render_step_shrinks_with_motion():
    slow, fast = Simulator(SMALL.with_(speed_mps=1.0)), Simulator(SMALL.with_(speed_mps=40.0, motion_scale=3.0))
    d = slow.render_event_camera(0).depth
    assert slow._next_dt_us(0, d) == slow.config.max_render_dt_us
    dt_fast = fast._next_dt_us(0, fast.render_event_camera(0).depth)
    assert fast.config.min_render_dt_us <= dt_fast < fast.config.max_render_dt_us


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match='width'):
        SimConfig(width=4000)
    with pytest.raises(ValueError, match='trajectory'):
        SimConfig(trajectory='fly')
    with pytest.raises(ValueError, match='duration_s'):
        SimConfig(duration_s=0)


def test_sequence_cache_round_trip(tmp_path):
    from realm_ros.sim.sequence import SimSequence, cache_path, load_or_simulate
    cfg = SMALL.with_(duration_s=0.1)
    seq, cached = load_or_simulate(cfg, tmp_path)
    assert not cached and cache_path(cfg, tmp_path).exists()
    again, cached = load_or_simulate(cfg, tmp_path)
    assert cached and len(again.frames) == len(seq.frames) == 4 and again.period_ns == 100_000_000
    for a, b in zip(seq.events, again.events):
        assert np.array_equal(a.t, b.t) and np.array_equal(a.x, b.x) and np.array_equal(a.p, b.p)
    for a, b in zip(seq.frames, again.frames):
        assert a.t_ns == b.t_ns and np.array_equal(a.rgb, b.rgb) and np.array_equal(a.event_depth, b.event_depth)
        assert np.array_equal(a.T_world_event, b.T_world_event)
    # another configuration has another cache entry, and a file saved for one config is refused for another
    other = cfg.with_(seed=9)
    assert cache_path(other, tmp_path) != cache_path(cfg, tmp_path)
    with pytest.raises(ValueError, match='another simulator configuration'):
        SimSequence.load(cache_path(cfg, tmp_path), other)


def test_frame_at_matches_the_streamed_frame():
    sim, chunks = _run(SMALL.with_(duration_s=0.1))
    f = chunks[2].frame
    g = Simulator(SMALL.with_(duration_s=0.1)).frame_at(f.t_ns, index=2)
    assert g.index == 2 and g.t_ns == f.t_ns
    for name in ('rgb', 'rgb_depth', 'rgb_labels', 'event_depth', 'event_labels', 'event_gray', 'T_world_event'):
        assert np.array_equal(getattr(f, name), getattr(g, name)), name
