"""The evaluation metrics, kept importable under their old name; they live in :mod:`realm_ros.common.metrics`
(shared with head training, so that training does not import the miniature package)."""
from __future__ import annotations

from realm_ros.common.metrics import (AUC_THRESHOLDS, DEPTH_CUTOFFS, ConfusionMatrix, DepthErrorAccumulator,
                                      PoseErrorAccumulator, confusion_matrix, depth_abs_errors, pose_auc,
                                      pose_errors, relative_pose, rotation_error_deg, segmentation_scores,
                                      translation_angle_error_deg, translation_error_m)

__all__ = [
    'DEPTH_CUTOFFS', 'AUC_THRESHOLDS', 'DepthErrorAccumulator', 'depth_abs_errors', 'ConfusionMatrix',
    'confusion_matrix', 'segmentation_scores', 'rotation_error_deg', 'translation_angle_error_deg',
    'translation_error_m', 'relative_pose', 'pose_errors', 'pose_auc', 'PoseErrorAccumulator',
]
