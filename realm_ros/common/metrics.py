"""Evaluation metrics of the miniature world, the demo and head training: depth, semantics and relative pose.

ROS-free, numpy only. Protocols (docs/models.md#evaluation-protocols):

* **Depth** (MVSEC / e2depth protocol): average absolute depth error over ground-truth pixels closer than a cut-off
  (10 / 20 / 30 m). Pixels whose ground truth is not finite or not positive (sky, holes) are never scored; predictions
  that are not finite count as missing and are reported separately (``missing``) instead of being silently dropped
  from the denominator of the covered pixels. Errors are *pooled over pixels* of all frames (each scored pixel weighs
  the same), which :class:`DepthErrorAccumulator` implements incrementally.
* **Semantics** (DSEC-Semantic / ESS protocol): confusion matrix over the labelled pixels (``ignore_index`` skipped),
  pixel accuracy and mean IoU over the classes that occur in the ground truth or the prediction (a class absent from
  both has no IoU and is left out of the mean, as ``nanmean`` does).
* **Relative pose** (EventPoint / VECtor protocol, as REALM reports it): rotation error = geodesic angle of
  ``R_est^T R_gt`` in degrees; translation error both as the angle between the translation directions (degrees,
  scale-free) and as the metric distance; area under the cumulative error curve up to 5 / 10 / 20 degrees (AUC of the
  rotation error as in REALM's tables, and of ``max(rotation, translation-angle)`` as in SuperGlue-style benchmarks).
  A pair whose pose could not be estimated counts with an infinite error (it lowers the AUC and the recall) - it is
  never dropped.

All functions take arrays in any float dtype and return plain Python floats / dicts (JSON-serialisable).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    'DEPTH_CUTOFFS', 'AUC_THRESHOLDS', 'DepthErrorAccumulator', 'depth_abs_errors', 'ConfusionMatrix',
    'confusion_matrix', 'segmentation_scores', 'rotation_error_deg', 'translation_angle_error_deg',
    'translation_error_m', 'relative_pose', 'pose_errors', 'pose_auc', 'PoseErrorAccumulator',
]

#: Depth cut-offs of the e2depth protocol (metres).
DEPTH_CUTOFFS: tuple = (10.0, 20.0, 30.0)
#: Error thresholds (degrees) of the pose AUCs.
AUC_THRESHOLDS: tuple = (5.0, 10.0, 20.0)

_trapezoid = getattr(np, 'trapezoid', None) or getattr(np, 'trapz')  # noqa: B009 - numpy 2 renamed trapz (gone in 2.4)


# ----------------------------------------------------------------------------------------------------------- depth
@dataclass
class DepthErrorAccumulator:
    """Pixel-pooled average absolute depth error at several cut-offs, accumulated frame by frame.

    ``update(pred, gt)`` with (H, W) (or any equal-shape) arrays in metres. For each cut-off ``c`` a pixel is *scored*
    when ``gt`` is finite, ``0 < gt <= c``; a scored pixel whose prediction is not finite is *missing* (counted, not
    averaged). ``result()`` -> ``{'abs_err_10m': ..., 'abs_err_20m': ..., 'abs_err_30m': ..., 'pixels_10m': ...,
    'missing_10m': ..., ...}`` (NaN error when no pixel was scored).
    """

    cutoffs: Sequence[float] = DEPTH_CUTOFFS
    sums: Dict[float, float] = field(default_factory=dict)
    counts: Dict[float, int] = field(default_factory=dict)
    missing: Dict[float, int] = field(default_factory=dict)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred, dtype=np.float64)
        gt = np.asarray(gt, dtype=np.float64)
        if pred.shape != gt.shape:
            raise ValueError(f'depth prediction shape {pred.shape} differs from ground-truth shape {gt.shape}')
        gt_ok = np.isfinite(gt) & (gt > 0)
        pred_ok = np.isfinite(pred)
        err = np.abs(np.where(pred_ok, pred, 0.0) - np.where(gt_ok, gt, 0.0))
        for c in self.cutoffs:
            scored = gt_ok & (gt <= c)
            hit = scored & pred_ok
            self.sums[c] = self.sums.get(c, 0.0) + float(err[hit].sum())
            self.counts[c] = self.counts.get(c, 0) + int(hit.sum())
            self.missing[c] = self.missing.get(c, 0) + int((scored & ~pred_ok).sum())

    def result(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for c in self.cutoffs:
            n = self.counts.get(c, 0)
            key = f'{c:g}m'
            out[f'abs_err_{key}'] = self.sums.get(c, 0.0) / n if n else float('nan')
            out[f'pixels_{key}'] = n
            out[f'missing_{key}'] = self.missing.get(c, 0)
        return out


def depth_abs_errors(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray],
                     cutoffs: Sequence[float] = DEPTH_CUTOFFS) -> Dict[str, float]:
    """Average absolute depth error at ``cutoffs`` over paired frames (see :class:`DepthErrorAccumulator`)."""
    acc = DepthErrorAccumulator(cutoffs=tuple(cutoffs))
    for p, g in zip(preds, gts):
        acc.update(p, g)
    return acc.result()


# ----------------------------------------------------------------------------------------------------- semantics
def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    Pixels with ``gt == ignore_index`` are skipped; a ground-truth id outside [0, num_classes) other than
    ``ignore_index`` is an error (names the value); predicted ids outside the range are an error too.
    """
    pred = np.asarray(pred).astype(np.int64).ravel()
    gt = np.asarray(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f'segmentation prediction has {pred.size} pixels, ground truth {gt.size}')
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        bad = gt[(gt < 0) | (gt >= num_classes)][0]
        raise ValueError(f'ground-truth label {bad} is outside [0, {num_classes}) and not ignore_index={ignore_index}')
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        bad = pred[(pred < 0) | (pred >= num_classes)][0]
        raise ValueError(f'predicted label {bad} is outside [0, {num_classes})')
    return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class ConfusionMatrix:
    """Accumulating confusion matrix; ``scores()`` gives accuracy, mIoU and the per-class IoU."""

    num_classes: int
    ignore_index: int = 255
    matrix: Optional[np.ndarray] = None

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        cm = confusion_matrix(pred, gt, self.num_classes, self.ignore_index)
        self.matrix = cm if self.matrix is None else self.matrix + cm

    def scores(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        cm = self.matrix if self.matrix is not None else np.zeros((self.num_classes,) * 2, dtype=np.int64)
        return segmentation_scores(cm, class_names)


def segmentation_scores(cm: np.ndarray, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Pixel accuracy, mIoU (mean over classes with a non-empty union) and per-class IoU of a confusion matrix.

    Returns ``{'accuracy', 'miou', 'iou': {name: IoU or None}, 'pixels'}``; ``None`` marks a class absent from both the
    ground truth and the prediction.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f'{len(names)} class names for a {n}-class confusion matrix')
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    total = cm.sum()
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = np.where(union > 0, tp / np.maximum(union, 1e-300), np.nan)
    valid = union > 0
    return {
        'accuracy': float(tp.sum() / total) if total else float('nan'),
        'miou': float(iou[valid].mean()) if valid.any() else float('nan'),
        'iou': {name: (None if not valid[i] else float(iou[i])) for i, name in enumerate(names)},
        'pixels': int(total),
    }


# ---------------------------------------------------------------------------------------------------------- pose
def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Geodesic angle (degrees) of ``R_est^T R_gt``; clipped to [0, 180] against rounding."""
    R = np.asarray(R_est, dtype=np.float64).T @ np.asarray(R_gt, dtype=np.float64)
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def translation_angle_error_deg(t_est: np.ndarray, t_gt: np.ndarray, eps: float = 1e-9) -> float:
    """Angle (degrees) between two translation directions; NaN when either is (almost) zero."""
    a = np.asarray(t_est, dtype=np.float64).ravel()
    b = np.asarray(t_gt, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < eps or nb < eps:
        return float('nan')
    return float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0))))


def translation_error_m(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Euclidean distance between two translations (metres when both are metric)."""
    diff = np.asarray(t_est, dtype=np.float64).ravel() - np.asarray(t_gt, dtype=np.float64).ravel()
    return float(np.linalg.norm(diff))


def relative_pose(T_world_cam1: np.ndarray, T_world_cam2: np.ndarray) -> np.ndarray:
    """``T_cam2_cam1`` (4x4): maps points of camera 1 into camera 2 (what PnP with camera-1 3-D points returns)."""
    T1 = np.asarray(T_world_cam1, dtype=np.float64)
    T2 = np.asarray(T_world_cam2, dtype=np.float64)
    R2t = T2[:3, :3].T
    out = np.eye(4)
    out[:3, :3] = R2t @ T1[:3, :3]
    out[:3, 3] = R2t @ (T1[:3, 3] - T2[:3, 3])
    return out


def pose_errors(T_est: Optional[np.ndarray], T_gt: np.ndarray) -> Dict[str, float]:
    """Errors of an estimated relative pose (4x4, or ``None`` for a failure -> infinite errors).

    Keys: ``rot_deg``, ``trans_deg`` (direction angle; NaN when the true baseline is zero), ``trans_m``, ``max_deg``
    (max of the two angles, the rotation error alone when the direction is undefined).
    """
    if T_est is None or not np.all(np.isfinite(np.asarray(T_est, dtype=np.float64))):
        return {'rot_deg': math.inf, 'trans_deg': math.inf, 'trans_m': math.inf, 'max_deg': math.inf}
    T_est = np.asarray(T_est, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    r = rotation_error_deg(T_est[:3, :3], T_gt[:3, :3])
    ta = translation_angle_error_deg(T_est[:3, 3], T_gt[:3, 3])
    return {'rot_deg': r, 'trans_deg': ta, 'trans_m': translation_error_m(T_est[:3, 3], T_gt[:3, 3]),
            'max_deg': r if math.isnan(ta) else max(r, ta)}


def pose_auc(errors: Union[Sequence[float], np.ndarray], thresholds: Sequence[float] = AUC_THRESHOLDS) -> List[float]:
    """Area under the cumulative error curve up to each threshold, normalised to [0, 1] (SuperGlue definition).

    The recall curve is the fraction of pairs with error <= e (failures / NaN count as infinite errors); its integral
    from 0 to the threshold (trapezoid rule between the sorted errors) divided by the threshold. Empty input -> NaNs.
    """
    e = np.asarray(list(errors), dtype=np.float64)
    if e.size == 0:
        return [float('nan')] * len(thresholds)
    e = np.where(np.isnan(e), np.inf, e)
    n = e.size
    e = np.sort(e)
    recall = np.arange(1, n + 1, dtype=np.float64) / n
    e = np.concatenate([[0.0], e])
    recall = np.concatenate([[0.0], recall])
    aucs = []
    for th in thresholds:
        last = int(np.searchsorted(e, th, side='right'))
        xs = np.concatenate([e[:last], [th]])
        ys = np.concatenate([recall[:last], [recall[last - 1]]])
        aucs.append(float(_trapezoid(ys, xs) / th))
    return aucs


@dataclass
class PoseErrorAccumulator:
    """Collects per-pair pose errors; ``result()`` gives medians, means over successes, success rate and AUCs."""

    thresholds: Sequence[float] = AUC_THRESHOLDS
    records: List[Dict[str, float]] = field(default_factory=list)

    def update(self, T_est: Optional[np.ndarray], T_gt: np.ndarray, **extra: float) -> Dict[str, float]:
        rec = pose_errors(T_est, T_gt)
        rec.update(extra)
        self.records.append(rec)
        return rec

    def result(self) -> Dict[str, object]:
        n = len(self.records)
        rot = np.array([r['rot_deg'] for r in self.records], dtype=np.float64)
        tdeg = np.array([r['trans_deg'] for r in self.records], dtype=np.float64)
        tm = np.array([r['trans_m'] for r in self.records], dtype=np.float64)
        mx = np.array([r['max_deg'] for r in self.records], dtype=np.float64)
        ok = np.isfinite(rot)

        def med(a: np.ndarray) -> float:
            # median over all pairs with failures as +inf (a failure can never look good); NaN entries are dropped
            a = a[~np.isnan(a)]
            return float(np.median(a)) if a.size else float('nan')

        def mean_ok(a: np.ndarray) -> float:
            a = a[ok & np.isfinite(a)]
            return float(a.mean()) if a.size else float('nan')

        out: Dict[str, object] = {
            'pairs': n, 'success_rate': float(ok.mean()) if n else float('nan'),
            'rot_err_deg_median': med(rot), 'trans_err_deg_median': med(tdeg), 'trans_err_m_median': med(tm),
            'rot_err_deg_mean_ok': mean_ok(rot), 'trans_err_deg_mean_ok': mean_ok(tdeg),
            'trans_err_m_mean_ok': mean_ok(tm),
        }
        for th, a in zip(self.thresholds, pose_auc(rot, self.thresholds)):
            out[f'auc_rot@{th:g}'] = a
        for th, a in zip(self.thresholds, pose_auc(mx, self.thresholds)):
            out[f'auc_pose@{th:g}'] = a
        return out
