"""``realm-demo`` panel: event frame, depth and semantics (prediction / ground truth), matches and the estimated vs
ground-truth trajectory (top view), drawn from :class:`realm_ros.demo_scores.Received` into one PNG."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .demo_scores import Received, nearest_ground_truth


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2
    out = img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _tile(img: Optional[np.ndarray], size: Tuple[int, int], text: str) -> np.ndarray:
    import cv2
    h, w = size
    if img is None:
        canvas = np.full((h, w, 3), 40, np.uint8)
        cv2.putText(canvas, 'no data', (w // 2 - 30, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 200, 200), 1)
        return _label(canvas, text)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    scale = min(w / img.shape[1], h / img.shape[0])
    resized = cv2.resize(img, (max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))),
                         interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - resized.shape[0]) // 2, (w - resized.shape[1]) // 2
    canvas[y0:y0 + resized.shape[0], x0:x0 + resized.shape[1]] = resized
    return _label(canvas, text)


def _trajectory_picture(rec: Received, size: Tuple[int, int]) -> np.ndarray:
    """Top view (x-z plane of the first camera) of ground-truth and estimated camera positions.

    Estimates come from ``~/pose`` in the fixed frame (chained from the first keyframe), ground truth from the
    simulator, both expressed relative to the pose at the first estimate (or the first ground truth when the node
    published no pose, e.g. every estimate was rejected)."""
    import cv2
    h, w = size
    canvas = np.full((h, w, 3), 255, np.uint8)
    with rec.lock:
        poses = [(s, T) for s, _r, T, _f in rec.pose]
        gt = dict(rec.gt_pose)
    if not poses and not gt:
        return _tile(None, size, 'trajectory')
    G0 = None
    est_pos: List[np.ndarray] = []
    if poses:
        G0 = nearest_ground_truth(gt, poses[0][0])
        E0inv = np.linalg.inv(poses[0][1])
        est_pos = [(E0inv @ T)[:3, 3] for _s, T in poses]
    if G0 is None and gt:
        G0 = gt[min(gt)]
    gt_pos = []
    if G0 is not None:
        # the whole ground truth of the recording (also where no estimate was published: a sparse estimate is then
        # seen against the path it should have followed)
        G0inv = np.linalg.inv(G0)
        gt_pos = [(G0inv @ gt[s])[:3, 3] for s in sorted(gt)]
    pts = np.array(est_pos + gt_pos) if (est_pos or gt_pos) else np.zeros((1, 3))
    xz = pts[:, [0, 2]]
    lo, hi = xz.min(0), xz.max(0)
    span = max(float((hi - lo).max()), 1e-3)

    def to_px(p: np.ndarray) -> Tuple[int, int]:
        u = (p[0] - lo[0]) / span * (w - 40) + 20
        v = h - 40 - (p[2] - lo[1]) / span * (h - 80)
        return int(u), int(v)

    for seq, colour in ((gt_pos, (0, 160, 0)), (est_pos, (0, 0, 220))):
        steps = [float(np.linalg.norm(b - a)) for a, b in zip(seq, seq[1:])]
        jump = 10.0 * float(np.median(steps)) if steps else 0.0
        for a, b, step in zip(seq, seq[1:], steps):
            if step <= jump or step < 1e-9:          # not across a restart (the simulator's loop, a bag replayed)
                cv2.line(canvas, to_px(a), to_px(b), colour, 2, cv2.LINE_AA)
    for p in est_pos:                                   # every published pose visible, even a single one
        cv2.circle(canvas, to_px(p), 3, (0, 0, 220), -1, cv2.LINE_AA)
    cv2.putText(canvas, 'ground truth', (8, h - 24), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 160, 0), 1)
    cv2.putText(canvas, 'estimate (~/pose)' if est_pos else 'no pose published (estimates rejected)',
                (8, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 220), 1)
    return _label(canvas, 'trajectory (top view, x-z of the first camera)')


def write_panel(rec: Received, path: Path, sensor_shape: Optional[Tuple[int, int]]) -> None:
    import cv2

    from realm_ros.models.heads import colorize_segmentation
    from realm_ros.pipeline.render import colorize_depth
    size = (240, 320)
    with rec.lock:
        images = dict(rec.images)
        events = list(rec.events_xy)
        depth_stamp = images.get('depth', (None, None))[0]
        sem_stamp = images.get('semantic', (None, None))[0]
        gt_d = nearest_ground_truth(rec.gt_depth, depth_stamp) if depth_stamp is not None else None
        gt_l = nearest_ground_truth(rec.gt_labels, sem_stamp) if sem_stamp is not None else None
    ev_img = None
    if events and sensor_shape:
        xyp = np.concatenate(events[-40:])
        h, w = sensor_shape
        ev_img = np.full((h, w, 3), 255, np.uint8)
        ok = (xyp[:, 0] < w) & (xyp[:, 1] < h)
        xyp = xyp[ok]
        ev_img[xyp[:, 1], xyp[:, 0]] = np.where(xyp[:, 2:3] == 1, [[40, 40, 230]], [[230, 90, 30]]).astype(np.uint8)
    gt_d_img = colorize_depth(gt_d.astype(np.float32), 1.0, 81.0) if gt_d is not None else None
    gt_l_img = None
    if gt_l is not None:
        gt_l_img = colorize_segmentation(gt_l.astype(np.int64))
        gt_l_img = np.ascontiguousarray(gt_l_img[..., ::-1])        # palette is RGB, panel is BGR
    tiles = [
        _tile(ev_img, size, 'events (red ON, blue OFF)'),
        _tile(images.get('depth/color', (0, None))[1], size, 'depth (REALM on events)'),
        _tile(gt_d_img, size, 'depth ground truth'),
        _tile(images.get('matches', (0, None))[1], size, 'matches (keyframe | current)'),
        _tile(images.get('semantic/color', (0, None))[1], size, 'semantics (REALM on events)'),
        _tile(gt_l_img, size, 'semantics ground truth'),
    ]
    traj = _trajectory_picture(rec, (size[0] * 2, size[1]))
    grid = np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])
    panel = np.hstack([grid, traj])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), panel)
