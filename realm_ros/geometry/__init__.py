"""realm_ros.geometry: reciprocal matching, PnP relative pose and keyframes (ROS-free; numpy, torch, OpenCV).

Public API:
    fast_reciprocal_nn(desc1, desc2, subsample=8, ...) -> ReciprocalMatches(xy1, xy2)
    reference_reciprocal_nn(...)                       slow literal implementation (tests, benchmark)
    solve_relative_pose_pnp(xy_ref, xy_cur, pts3d_ref, K_cur, conf_ref=..., ...) -> PoseResult
    solve_pnp(points3d, pixels, K, params) -> PoseResult
    PnpParams, PoseResult, PixelTransform, intrinsics_after_{crop,resize,pad}
    KeyframeStore, KeyframePolicy, Keyframe, KeyframeDecision, compose_pose
    estimate_relative_pose(decoder, keyframe, tokens, image_shape, K_cur, ...) -> RelativePoseEstimate
        (DUNE-MASt3R decoder on (keyframe, current) -> fast_reciprocal_nn -> PnP)
"""
from .keyframes import SOURCES, Keyframe, KeyframeDecision, KeyframePolicy, KeyframeStore, compose_pose
from .matching import ReciprocalMatches, fast_reciprocal_nn, reference_reciprocal_nn, seed_grid, triton_available
from .pose import (PixelTransform, PnpParams, PoseResult, confidence_mask, correspondences_from_matches,
                   intrinsics_after_crop, intrinsics_after_pad, intrinsics_after_resize, rotation_angle_deg, solve_pnp,
                   solve_relative_pose_pnp)
from .relative_pose import MatchingParams, RelativePoseEstimate, estimate_relative_pose

__all__ = [
    'SOURCES', 'Keyframe', 'KeyframeDecision', 'KeyframePolicy', 'KeyframeStore', 'compose_pose',
    'ReciprocalMatches', 'fast_reciprocal_nn', 'reference_reciprocal_nn', 'seed_grid', 'triton_available',
    'PixelTransform', 'PnpParams', 'PoseResult', 'confidence_mask', 'correspondences_from_matches',
    'intrinsics_after_crop', 'MatchingParams', 'RelativePoseEstimate', 'estimate_relative_pose',
    'intrinsics_after_pad', 'intrinsics_after_resize', 'rotation_angle_deg', 'solve_pnp', 'solve_relative_pose_pnp',
]
