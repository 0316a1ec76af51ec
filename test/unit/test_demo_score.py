"""The demo's live pose score: consecutive published poses against ground truth, the no-motion baseline, the
forward-sign rate, and the node's pose outcomes from /diagnostics."""
import numpy as np
import pytest

from realm_ros.demo import Received, pose_outcomes, score


def _T(z: float, yaw_deg: float = 0.0) -> np.ndarray:
    a = np.deg2rad(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[2, 3] = z
    return T


def _received(est_sign: float) -> Received:
    rec = Received()
    for k in range(6):
        stamp = 1_000_000_000 + k * 100_000_000
        rec.gt_pose[stamp] = _T(0.5 * k, 1.0 * k)                       # forward, turning 1 deg per step
        rec.pose.append((stamp, stamp, _T(est_sign * 0.5 * k, 1.0 * k), 'odom'))
    return rec


def test_pose_score_reports_forward_sign_and_no_motion_baseline():
    good = score(_received(+1.0))['pose']
    assert good['pairs_scored'] == 5
    assert good['forward_sign_ok'] == 1.0
    assert good['rot_err_deg_median'] == pytest.approx(0.0, abs=1e-6)
    assert good['no_motion_rot_err_deg_median'] == pytest.approx(1.0, abs=1e-6)
    assert good['trans_err_deg_median'] < 1.0
    bad = score(_received(-1.0))['pose']                                  # moving backward: wrong sign
    assert bad['forward_sign_ok'] == 0.0 and bad['trans_err_deg_median'] > 90.0


def test_no_published_pose_scores_nothing():
    rec = _received(1.0)
    rec.pose.clear()
    assert score(rec)['pose'] == {'pairs_scored': 0, 'trajectory': {'poses_scored': 0}}


def test_trajectory_score_follows_the_displacement_since_the_first_published_pose():
    """The trajectory panel's question in numbers: estimated vs true displacement since the first published pose
    (direction, length ratio, position error), in any fixed frame (the estimate's origin is not the world's)."""
    offset = _T(3.0, 30.0)                                   # the fixed frame is not the ground truth's world frame
    rec = Received()
    for k in range(6):
        stamp = 1_000_000_000 + k * 100_000_000
        rec.gt_pose[stamp] = _T(0.5 * k, 1.0 * k)
        rec.pose.append((stamp, stamp, offset @ _T(0.4 * k, 1.0 * k), 'odom'))      # right way, 20 % short
    tr = score(rec)['pose']['trajectory']
    assert tr['poses_scored'] == 6 and tr['poses_beyond_min_distance'] == 3          # beyond 1 m: k = 3, 4, 5
    assert tr['direction_from_start_deg_median'] < 1.0
    assert tr['length_ratio_median'] == pytest.approx(0.8, abs=1e-6)
    assert tr['position_error_m_median'] == pytest.approx(0.1 * 2.5, abs=0.05)
    assert len(tr['track_t_s_est_xyz_true_xyz']) == 6 and tr['true_distance_m_max'] == pytest.approx(2.5, abs=1e-3)
    backwards = Received(gt_pose=dict(rec.gt_pose))
    backwards.pose.extend((s, r, offset @ np.linalg.inv(_T(0.4 * k)), f) for k, (s, r, _T_, f) in enumerate(rec.pose))
    assert score(backwards)['pose']['trajectory']['direction_from_start_deg_median'] > 170


def test_pose_outcomes_from_diagnostics():
    diag = {'realm: pose': {'pose_attempts': '12', 'pose_rejected.not_better_than_chance': '9',
                            'pose_rejected.too_few_inliers': '3', 'rate_hz': '2.1'},
            'realm: events': {'packets': '100'}, 'realm: other': {'pose_without_keyframe': 'n/a'}}
    assert pose_outcomes(diag) == {'pose_attempts': 12, 'pose_rejected.not_better_than_chance': 9,
                                   'pose_rejected.too_few_inliers': 3}


def test_simulator_publishing_counts_the_recording_only():
    from realm_ros.demo_scores import simulator_publishing, simulator_status
    start = {'/realm_demo/sim_event_camera: simulated event camera': {'packets': '5000', 'late_publishes': '40',
                                                                     'max_lag_ms': '120.5'},
             '/realm_demo/perception_node: events': {'packets': '4990'}}
    end = {'/realm_demo/sim_event_camera: simulated event camera': {'packets': '25000', 'late_publishes': '60',
                                                                   'max_lag_ms': '130.0',
                                                                   'process_cpu_ms_per_sensor_s': '210.5'}}
    s = simulator_publishing(simulator_status(start), simulator_status(end))
    assert s == {'packets': 20000, 'late_publishes': 20, 'late_fraction': 0.001, 'max_lag_ms_since_start': 130.0,
                 'process_cpu_ms_per_sensor_s': 210.5}
    assert simulator_publishing({}, simulator_status({'x: events': {}})) == {}          # no simulator (a bag)
    assert simulator_publishing({}, {'packets': 'n/a'})['packets'] == 0


def test_latency_breakdown_splits_each_message_at_its_dds_timestamps():
    from realm_ros.demo_scores import latency_breakdown
    rec = Received()
    ms = 1_000_000
    rec.delivery['depth'] = __import__('collections').deque(
        [(k * 100 * ms, k * 100 * ms + 80 * ms, k * 100 * ms + 82 * ms, k * 100 * ms + 90 * ms) for k in range(20)]
        + [(5 * ms, 0, 0, 300 * ms)])                      # an RMW without timestamps: left out, not counted as 0
    parts = latency_breakdown(rec)['depth']
    assert parts['node']['samples'] == parts['transport']['samples'] == parts['collector']['samples'] == 20
    assert parts['node']['p50_ms'] == pytest.approx(80.0)
    assert parts['transport']['p95_ms'] == pytest.approx(2.0)
    assert parts['collector']['max_ms'] == pytest.approx(8.0)
    assert latency_breakdown(Received()) == {}


@pytest.mark.parametrize('published', [0, 1, 6])
def test_panel_trajectory_shows_the_ground_truth_and_every_published_pose(tmp_path, published):
    import cv2
    from realm_ros.demo_panel import write_panel
    rec = _received(-1.0)                                           # estimates going backwards: apart from the truth
    rec.pose = rec.pose[:published]
    write_panel(rec, tmp_path / 'panel.png', None)
    panel = cv2.imread(str(tmp_path / 'panel.png'))
    traj = panel[20:-40, -320:]                                     # the trajectory tile without its labels (BGR)
    green = (traj[..., 1] > 120) & (traj[..., 0] < 60) & (traj[..., 2] < 60)
    red = (traj[..., 2] > 180) & (traj[..., 0] < 60) & (traj[..., 1] < 60)
    assert green.sum() > 100                                        # the ground-truth path, whatever was published
    assert bool(red.sum() > 10) == (published > 0)


def test_panel_trajectory_is_not_joined_across_a_restart(tmp_path):
    import cv2
    from realm_ros.demo_panel import write_panel
    rec = Received()
    for k in range(40):                                  # two passes of the same drive: forward, then to the side
        j = k % 20
        T = _T(0.5 * min(j, 10))
        T[0, 3] = 0.5 * max(j - 10, 0)
        rec.gt_pose[1_000_000_000 + k * 50_000_000] = T
    write_panel(rec, tmp_path / 'panel.png', None)
    traj = cv2.imread(str(tmp_path / 'panel.png'))[20:-40, -320:]
    green = (traj[..., 1] > 120) & (traj[..., 0] < 60) & (traj[..., 2] < 60)
    # an L-shaped path: the diagonal from its end back to its start (the loop restart) must not be drawn
    h, w = green.shape
    assert green[:, : w // 2].any() and green[h // 2:, :].any()
    ys, xs = np.nonzero(green)
    u = (xs - xs.min()) / max(1, np.ptp(xs))
    v = (ys.max() - ys) / max(1, np.ptp(ys))            # 0 at the start row, 1 at the far end
    assert not ((np.abs(u - v) < 0.05) & (u > 0.2) & (u < 0.8)).any()


def test_demo_simulator_trajectory_option():
    """``--sim-trajectory``: a forward drive at 2 m/s by default (long enough for the warm-up and the recording
    without the jump back of a looping sequence), the back-and-forth loop on request; anything else is refused."""
    from realm_ros.demo import build_parser, parse_args
    args = parse_args([])
    assert (args.sim_trajectory, args.sim_speed, args.sim_seconds) == ('drive', 2.0, 32.0)
    assert args.sim_seconds > 10 + args.duration                  # warm-up ~10 s + the recording, no loop jump
    loop = parse_args(['--sim-trajectory', 'loop'])
    assert (loop.sim_trajectory, loop.sim_seconds) == ('loop', 4.0)
    assert parse_args(['--sim-trajectory', 'loop', '--sim-seconds', '7']).sim_seconds == 7.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--sim-trajectory', 'circle'])


def test_demo_refuses_unknown_node_parameters(capsys):
    """A misspelled ``--node-param`` would otherwise be dropped by ROS and the demo run on the default: refused, with
    the parameter it resembles; known names pass."""
    from realm_ros.demo import parse_args
    assert parse_args(['--node-param', 'keyframe.max_translation_m:=0.2']).node_param == [
        'keyframe.max_translation_m:=0.2']
    with pytest.raises(SystemExit):
        parse_args(['--node-param', 'keyframe.max_translation:=0.2'])
    assert 'keyframe.max_translation (did you mean keyframe.max_translation_m' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(['--node-param', 'window.count=3'])
    assert "expected NAME:=VALUE" in capsys.readouterr().err

