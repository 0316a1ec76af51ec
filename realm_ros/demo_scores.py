"""``realm-demo`` results: what the collector received, and its scores against the simulator's ground truth.

:class:`Received` holds the outputs (with wall-clock receive times), the ground truth and the node's diagnostics;
:func:`score` gives depth error, mIoU and the pose errors of consecutive published poses (with the no-motion baseline
and the forward-sign rate); :func:`latency_by_output`, :func:`packet_loss` and :func:`pose_outcomes` read latency and
the node's own counters. ROS-free: the collector (``realm_ros.demo``) fills :class:`Received`.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

GT_MATCH_TOLERANCE_NS = 20_000_000      # an output and a ground-truth frame belong together within 20 ms


@dataclass
class Received:
    """Everything the collector heard, with wall-clock receive times (ns)."""

    depth: Deque[Tuple[int, int, np.ndarray]] = field(default_factory=lambda: deque(maxlen=400))   # (stamp, recv, d)
    semantic: Deque[Tuple[int, int, np.ndarray]] = field(default_factory=lambda: deque(maxlen=400))
    points: Deque[Tuple[int, int]] = field(default_factory=lambda: deque(maxlen=400))                # (stamp, recv)
    pose: List[Tuple[int, int, np.ndarray, str]] = field(default_factory=list)          # (stamp, recv, T, frame)
    images: Dict[str, Tuple[int, np.ndarray]] = field(default_factory=dict)             # latest colour images
    gt_depth: Dict[int, np.ndarray] = field(default_factory=dict)
    gt_labels: Dict[int, np.ndarray] = field(default_factory=dict)
    gt_pose: Dict[int, np.ndarray] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    diagnostics: Dict[str, Dict[str, str]] = field(default_factory=dict)
    events_xy: Deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=200))
    # per output: (stamp, DDS source timestamp, DDS received timestamp, callback time), all ns of the system clock
    delivery: Dict[str, Deque[Tuple[int, int, int, int]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def rate_hz(self, name: str, seconds: float) -> float:
        """Messages per second over a recording of ``seconds``."""
        return self.counts.get(name, 0) / max(1e-9, seconds)


def nearest_ground_truth(store: Dict[int, np.ndarray], stamp: int) -> Optional[np.ndarray]:
    if not store:
        return None
    keys = np.fromiter(store.keys(), dtype=np.int64)
    i = int(np.argmin(np.abs(keys - stamp)))
    return store[int(keys[i])] if abs(int(keys[i]) - stamp) <= GT_MATCH_TOLERANCE_NS else None


def score(rec: Received, num_classes: int = 11) -> Dict[str, Any]:
    """Depth, segmentation and pose scores of the collected outputs against the ground truth of the same stamps."""
    from realm_ros.miniature.metrics import (ConfusionMatrix, DepthErrorAccumulator, PoseErrorAccumulator,
                                             relative_pose)
    with rec.lock:
        depth = list(rec.depth)
        semantic = list(rec.semantic)
        poses = list(rec.pose)
        gt_depth, gt_labels, gt_pose = dict(rec.gt_depth), dict(rec.gt_labels), dict(rec.gt_pose)
    result: Dict[str, Any] = {}

    acc = DepthErrorAccumulator()
    matched = 0
    for stamp, _recv, pred in depth:
        gt = nearest_ground_truth(gt_depth, stamp)
        if gt is not None and gt.shape == pred.shape:
            acc.update(pred, gt)
            matched += 1
    result['depth'] = {'frames_scored': matched, **acc.result()} if matched else {'frames_scored': 0}

    from realm_ros.models.heads import DSEC_CLASSES
    cm = ConfusionMatrix(num_classes)
    matched = unpredicted = 0
    for stamp, _recv, pred in semantic:
        gt = nearest_ground_truth(gt_labels, stamp)
        if gt is not None and gt.shape == pred.shape:
            no_pred = pred >= num_classes                       # 255: outside what the model saw
            unpredicted += int(no_pred.sum())
            cm.update(np.where(no_pred, 0, pred), np.where(no_pred, cm.ignore_index, gt))
            matched += 1
    result['semantic'] = ({'frames_scored': matched, 'pixels_without_prediction': unpredicted,
                           **cm.scores(DSEC_CLASSES)} if matched else {'frames_scored': 0})

    pacc = PoseErrorAccumulator()
    no_motion = PoseErrorAccumulator()       # "the camera did not move": what an estimate must beat
    forward_ok: List[bool] = []
    pairs = 0
    for (s0, _r0, T0, f0), (s1, _r1, T1, f1) in zip(poses, poses[1:]):
        g0, g1 = nearest_ground_truth(gt_pose, s0), nearest_ground_truth(gt_pose, s1)
        if g0 is None or g1 is None or f0 != f1 or s1 == s0:
            continue
        T_est, T_gt = relative_pose(T0, T1), relative_pose(g0, g1)
        pacc.update(T_est, T_gt)
        no_motion.update(np.eye(4), T_gt)
        forward_ok.append(bool(np.sign(T_est[2, 3]) == np.sign(T_gt[2, 3])))
        pairs += 1
    if pairs:
        base = no_motion.result()
        result['pose'] = {'pairs_scored': pairs, **pacc.result(), 'forward_sign_ok': float(np.mean(forward_ok)),
                          'no_motion_rot_err_deg_median': base['rot_err_deg_median']}
    else:
        result['pose'] = {'pairs_scored': 0}
    result['pose']['trajectory'] = trajectory_score(poses, gt_pose)
    return result


def trajectory_score(poses: List[Any], gt_pose: Dict[int, np.ndarray], min_distance_m: float = 1.0
                     ) -> Dict[str, Any]:
    """Does the published trajectory follow the ground truth? Every published pose (fixed frame) and the ground
    truth at its stamp, both relative to the first published pose: the angle between the estimated and the true
    displacement since then (poses more than ``min_distance_m`` away), the ratio of their lengths, the position
    error, and the track itself (stamp, estimated and true position) for plotting. The consecutive-pair figures of
    :func:`score` difference two estimates a fraction of a second apart, which doubles their noise; this measures
    what the trajectory panel shows."""
    from realm_ros.miniature.metrics import translation_angle_error_deg
    track: List[Tuple[int, np.ndarray, np.ndarray]] = []
    for s, _r, T, _f in poses:
        G = nearest_ground_truth(gt_pose, s)
        if G is not None:
            track.append((s, T, G))
    if len(track) < 2:
        return {'poses_scored': len(track)}
    s0, E0, G0 = track[0]
    E0inv, G0inv = np.linalg.inv(E0), np.linalg.inv(G0)
    rows, angles, ratios, errors = [], [], [], []
    for s, T, G in track:
        pe, pg = (E0inv @ T)[:3, 3], (G0inv @ G)[:3, 3]
        rows.append([(s - s0) * 1e-9, *pe.tolist(), *pg.tolist()])
        errors.append(float(np.linalg.norm(pe - pg)))
        if np.linalg.norm(pg) > min_distance_m:
            angles.append(translation_angle_error_deg(pe, pg))
            ratios.append(float(np.linalg.norm(pe) / np.linalg.norm(pg)))
    return {'poses_scored': len(track), 'poses_beyond_min_distance': len(angles), 'min_distance_m': min_distance_m,
            'direction_from_start_deg_median': float(np.median(angles)) if angles else float('nan'),
            'length_ratio_median': float(np.median(ratios)) if ratios else float('nan'),
            'position_error_m_median': float(np.median(errors)),
            'true_distance_m_max': float(max(np.linalg.norm(np.asarray(r[4:7])) for r in rows)),
            'track_t_s_est_xyz_true_xyz': [[round(v, 4) for v in r] for r in rows]}


def pose_outcomes(diagnostics: Dict[str, Dict[str, str]]) -> Dict[str, int]:
    """The node's pose attempts and rejections by reason (``pose_attempts``, ``pose_rejected.<reason>``, ...) from
    its /diagnostics: every estimate it did not publish is counted there with the gate that stopped it."""
    out: Dict[str, int] = {}
    for values in diagnostics.values():
        for k, v in values.items():
            if k.startswith(('pose_attempts', 'pose_rejected.', 'pose_without_keyframe')):
                try:
                    out[k] = int(float(v))
                except ValueError:
                    continue
    return out


def _percentiles(lat: np.ndarray) -> Dict[str, Any]:
    if lat.size == 0:
        return {'samples': 0}
    return {'samples': int(lat.size), 'p50_ms': float(np.percentile(lat, 50)), 'p90_ms': float(np.percentile(lat, 90)),
            'p95_ms': float(np.percentile(lat, 95)), 'p99_ms': float(np.percentile(lat, 99)),
            'max_ms': float(lat.max())}


def latency_summary(rec: Received) -> Dict[str, Any]:
    """End-to-end latency of the depth outputs: receive wall time - stamp (the window's last event)."""
    with rec.lock:
        lat = np.array([(recv - stamp) * 1e-6 for stamp, recv, _ in rec.depth], dtype=np.float64)
    return _percentiles(lat)


def latency_by_output(rec: Received) -> Dict[str, Any]:
    """Per output (depth, semantic, points, pose): end-to-end latency percentiles."""
    with rec.lock:
        rows = {'depth': [(s, r) for s, r, _ in rec.depth], 'semantic': [(s, r) for s, r, _ in rec.semantic],
                'points': list(rec.points), 'pose': [(s, r) for s, r, _, _ in rec.pose]}
    return {k: _percentiles(np.array([(r - s) * 1e-6 for s, r in v], dtype=np.float64)) for k, v in rows.items()}


def latency_breakdown(rec: Received) -> Dict[str, Any]:
    """Where the end-to-end latency of each output goes, from the DDS timestamps of its messages:
    ``node`` = window's last event -> the node's publish (the DDS source timestamp: event delivery, window assembly,
    inference, conversion), ``transport`` = publish -> the message arrived at the collector's reader,
    ``collector`` = arrival -> the collector's callback ran (its executor's queueing; not the node's doing)."""
    with rec.lock:
        rows = {k: list(v) for k, v in rec.delivery.items()}
    out: Dict[str, Any] = {}
    for name, r in sorted(rows.items()):
        a = np.array(r, dtype=np.int64).reshape(-1, 4)
        ok = (a[:, 1] > 0) & (a[:, 2] > 0)                     # RMWs without timestamps report 0
        a = a[ok]
        out[name] = {part: _percentiles((a[:, j + 1] - a[:, j]) * 1e-6)
                     for j, part in enumerate(('node', 'transport', 'collector'))}
    return out


def packet_loss(diagnostics: Dict[str, Dict[str, str]]) -> Dict[str, int]:
    """Event packets the node received and lost (sequence gaps) according to its /diagnostics."""
    ev = next((v for k, v in diagnostics.items() if k.endswith(': events')), {})
    got, lost = int(float(ev.get('packets', 0))), int(float(ev.get('dropped_packets', 0)))
    return {'received': got, 'lost': lost, 'sent': got + lost}


def simulator_status(diagnostics: Dict[str, Dict[str, str]]) -> Dict[str, str]:
    """The newest /diagnostics values of ``sim_event_camera`` (empty when it reported none)."""
    return dict(next((v for k, v in diagnostics.items() if k.endswith(': simulated event camera')), {}))


def simulator_publishing(before: Dict[str, str], after: Dict[str, str]) -> Dict[str, Any]:
    """What the simulator published between two of its /diagnostics reports: packets, publications later than one
    packet period (its real-time figure), and the largest lag since it started (empty without a report)."""
    if not after:
        return {}

    def num(d: Dict[str, str], key: str) -> float:
        try:
            return float(d.get(key, 0.0))
        except (TypeError, ValueError):
            return 0.0

    packets = int(num(after, 'packets') - num(before, 'packets'))
    late = int(num(after, 'late_publishes') - num(before, 'late_publishes'))
    return {'packets': packets, 'late_publishes': late, 'late_fraction': late / packets if packets > 0 else 0.0,
            'max_lag_ms_since_start': num(after, 'max_lag_ms'),
            'process_cpu_ms_per_sensor_s': num(after, 'process_cpu_ms_per_sensor_s')}
