"""One call from a keyframe and the current view's tokens to a relative pose: decoder -> matches -> PnP.

The keyframe is view 1 of the DUNE-MASt3R pair (its pointmap ``pred1['pts3d']`` is in its camera frame), the
current view is view 2 (its matched pixels and its model-input intrinsics feed PnP). Works for both keyframe
sources: RGB keyframes (DUNE tokens; cross-modal against REALM event tokens) and event keyframes (event-event).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .keyframes import Keyframe
from .matching import ReciprocalMatches, fast_reciprocal_nn
from .pose import PnpParams, PoseResult, confidence_mask, solve_kept_matches

__all__ = ['MatchingParams', 'RelativePoseEstimate', 'estimate_relative_pose']


@dataclass(frozen=True)
class MatchingParams:
    """Reciprocal matching settings (MASt3R defaults)."""

    subsample: int = 8
    border: int = 3
    max_iter: int = 10
    compute_dtype: torch.dtype | None = None      # None: float16 on CUDA, float32 on CPU
    prune: bool = True                            # CPU: exact tile-bound pruning of the search (same matches)


@dataclass(frozen=True)
class RelativePoseEstimate:
    """Pose of the current view against ``keyframe_id`` plus what produced it (for diagnostics and point clouds)."""

    pose: PoseResult
    matches: ReciprocalMatches
    keyframe_id: int
    timings_s: dict[str, float] = field(default_factory=dict)
    pred_keyframe: dict[str, Tensor] | None = None
    pred_current: dict[str, Tensor] | None = None


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def estimate_relative_pose(decoder: Any, keyframe: Keyframe, tokens: Tensor, image_shape: Any, K_cur: Any, *,
                           pnp: PnpParams = PnpParams(), matching: MatchingParams = MatchingParams(),
                           keep_predictions: bool = False, depth_keyframe: Any = None) -> RelativePoseEstimate:
    """Run the DUNE-MASt3R decoder on (keyframe, current), match descriptors and solve the pose (``pnp.solver``).

    Args:
        decoder: a :class:`realm_ros.models.mast3r.DuneMast3rDecoder` (any device).
        keyframe: the keyframe to match against (its tokens are moved to the decoder's device).
        tokens: (1, N, C) or (N, C) pre-final-norm patch tokens of the current view (REALM or DUNE).
        image_shape: (H, W) of the current view's model input.
        K_cur: 3x3 intrinsics of the current view's model input.
        pnp, matching: settings.
        keep_predictions: also return the decoder outputs (e.g. to publish the keyframe's point cloud).
        depth_keyframe: optional metric depth map of the keyframe (model input size) for the essential solver's
            translation length (see :func:`_solve_on_device_gather`).
    """
    device = next(decoder.parameters()).device
    if tokens.ndim == 2:
        tokens = tokens[None]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        pred1, pred2 = decoder(keyframe.tokens.to(device), tokens.to(device), keyframe.image_shape, image_shape)
    _sync(device)
    t1 = time.perf_counter()
    matches = fast_reciprocal_nn(pred1['desc'][0], pred2['desc'][0], matching.subsample, max_iter=matching.max_iter,
                                 border=matching.border, compute_dtype=matching.compute_dtype, prune=matching.prune)
    t2 = time.perf_counter()
    if matches.count:
        pose = _solve_on_device_gather(pred1, pred2, matches, K_cur, pnp, K_ref=keyframe.K, depth_ref=depth_keyframe)
    else:
        pose = PoseResult(ok=False, reason='too_few_matches', num_correspondences=0)
    t3 = time.perf_counter()
    timings.update(decoder=t1 - t0, matching=t2 - t1, pnp=t3 - t2)
    return RelativePoseEstimate(pose=pose, matches=matches, keyframe_id=keyframe.id, timings_s=timings,
                                pred_keyframe=pred1 if keep_predictions else None,
                                pred_current=pred2 if keep_predictions else None)


def _solve_on_device_gather(pred1: dict[str, Tensor], pred2: dict[str, Tensor], matches: ReciprocalMatches,
                            K_cur: Any, params: PnpParams, K_ref: Any = None, depth_ref: Any = None) -> PoseResult:
    """Gather pts3d / confidences at the matches on the decoder's device (one small copy), filter, solve (PnP, or
    the essential solver, which also needs ``K_ref``, the intrinsics of view 1). ``depth_ref`` (H, W metric depth of
    view 1, e.g. the depth head's): the essential solver takes the translation length from it instead of the
    decoder's point map (:func:`points_from_depth`)."""
    dev = pred1['pts3d'].device
    w1 = pred1['pts3d'].shape[2]
    w2 = pred2['desc'].shape[2]
    i1 = torch.as_tensor(matches.xy1[:, 1] * w1 + matches.xy1[:, 0], device=dev)
    i2 = torch.as_tensor(matches.xy2[:, 1] * w2 + matches.xy2[:, 0], device=dev)
    gathered = [pred1['pts3d'][0].reshape(-1, 3)[i1]]
    names = ['pts3d']
    for name, pred, idx in (('conf', pred1, i1), ('desc_conf_ref', pred1, i1), ('desc_conf_cur', pred2, i2)):
        key = 'conf' if name == 'conf' else 'desc_conf'
        if key in pred:
            gathered.append(pred[key][0].reshape(-1)[idx][:, None])
            names.append(name)
    host = torch.cat([g.float() for g in gathered], dim=1).cpu().numpy().astype(np.float64)
    cols = {'pts3d': host[:, :3]}
    for j, name in enumerate(names[1:]):
        cols[name] = host[:, 3 + j]
    keep = confidence_mask(cols.get('conf'), cols.get('desc_conf_ref'), cols.get('desc_conf_cur'), params)
    index = np.arange(matches.count) if keep is None else np.nonzero(keep)[0]
    return solve_kept_matches(matches.xy1[index], matches.xy2[index], cols['pts3d'][index], index, K_cur, params,
                              K_ref=K_ref, depth_ref=depth_ref)
