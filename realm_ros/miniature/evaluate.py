"""Evaluation of the miniature world on held-out simulated sequences.

For every test sequence (scene seeds of the ``test`` split, never seen in training) the simulator gives, at each RGB
frame time ``t_k`` (30 Hz): the RGB image, ground-truth depth and labels of both cameras, both poses, and the events
of ``(t_{k-1}, t_k]`` - exactly the window ``train_from_bag`` pairs with frame ``k`` (fixed-time window bounded by the
previous frame). Events become the 5-bin voxel grid (:func:`realm_ros.events.voxel_grid`, DSEC normalisation).

Scored (with :mod:`realm_ros.miniature.metrics`):

* depth (abs. error at 10 / 20 / 30 m) and semantics (accuracy, mIoU, per-class IoU) of the heads on the teacher's
  RGB tokens (``teacher_rgb``) and on REALM's event tokens (``realm_events``), each against its camera's ground truth;
* relative pose of frame pairs ``(k, k + gap)``: decoder -> reciprocal matches -> PnP-RANSAC
  (:func:`realm_ros.geometry.relative_pose.estimate_relative_pose`, the pipeline's own path) for ``rgb_rgb``
  (teacher-teacher, the upper bound), ``event_event`` (REALM-REALM) and ``rgb_event`` (an RGB keyframe against the
  current event window, cross-modal); rotation / translation errors and AUC@5/10/20;
* token alignment: cosine similarity of REALM's normed tokens to the teacher's on the synchronised RGB frame.

:class:`MiniModels` loads the shipped files through the same loaders as the perception node.
"""
from __future__ import annotations

import logging
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from realm_ros.sim.classes import CLASS_NAMES, NUM_CLASSES
from realm_ros.sim.simulator import Simulator

from .data import rgb_to_tensor, sim_config, split_seeds
from .metrics import (AUC_THRESHOLDS, ConfusionMatrix, DepthErrorAccumulator, PoseErrorAccumulator, relative_pose,
                      rotation_error_deg)

_LOG = logging.getLogger(__name__)

__all__ = ['EvalConfig', 'TestSequence', 'simulate_test_sequence', 'load_or_simulate', 'MiniModels',
           'evaluate', 'BRIDGE_CHOICES']

BRIDGE_CHOICES = ('teacher_norm_inverse', 'student_prenorm')


@dataclass
class EvalConfig:
    """Held-out evaluation settings (defaults: the shipped metrics)."""

    image_size: int = 224
    sequences: int = 3
    first_sequence: int = 0
    duration_s: float = 2.0
    bins: int = 5
    normalization: str = 'dsec'
    pair_gaps: Tuple[int, ...] = (3, 6, 12)
    pair_stride: int = 3
    max_frames: int = 0               # 0 = all frames of each sequence (the first, event-free frame is skipped)
    seg_bridge: str = 'teacher_norm_inverse'
    mast3r_bridge: str = 'teacher_norm_inverse'
    compare_bridges: bool = True
    pnp_iterations: int = 1000
    point_conf_threshold: Optional[float] = None   # None: the pose solver's (and the node's) defaults
    desc_conf_threshold: Optional[float] = None
    batch_size: int = 8
    symmetric: bool = True             # also score the symmetric (both decoder orders) estimate, ungated
    # how the symmetric estimate computes (the node's pose.decoder_precision / pose.ransac_kernel)
    pose_decoder_precision: str = 'fp32'
    pose_solver: str = 'essential'          # 'essential' | 'pnp' (the node's pose.solver)
    pose_length_source: str = 'depth_head'  # 'depth_head' | 'point_map' (the node's pose.length_source)
    ransac_kernel: str = 'sqpnp'


@dataclass
class TestSequence:
    """One simulated test sequence (arrays over its frames 1..K; frame 0 has no events and is dropped)."""

    seed: int
    rgb: np.ndarray             # (F, H, W, 3) uint8
    rgb_depth: np.ndarray       # (F, H, W) float32
    rgb_labels: np.ndarray      # (F, H, W) uint8
    event_depth: np.ndarray
    event_labels: np.ndarray
    voxels: np.ndarray          # (F, bins, H, W) float16
    num_events: np.ndarray      # (F,)
    T_world_rgb: np.ndarray     # (F, 4, 4)
    T_world_event: np.ndarray
    K_rgb: np.ndarray
    K_event: np.ndarray
    t_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.rgb)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + '.tmp.npz')
        np.savez_compressed(tmp, **asdict(self))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> 'TestSequence':
        with np.load(path) as z:
            d = {k: z[k] for k in z.files}
        d['seed'] = int(d['seed'])
        return cls(**d)


def simulate_test_sequence(seed: int, image_size: int, duration_s: float, bins: int = 5,
                           normalization: str = 'dsec', max_frames: int = 0) -> TestSequence:
    """Run the simulator for one test scene and collect frames, ground truth and event voxel grids."""
    from realm_ros.events import voxel_grid

    sim = Simulator(sim_config(seed, image_size, duration_s))
    rows: Dict[str, list] = {k: [] for k in ('rgb', 'rgb_depth', 'rgb_labels', 'event_depth', 'event_labels',
                                             'voxels', 'num_events', 'T_world_rgb', 'T_world_event', 't_ns')}
    for chunk in sim.stream():
        if chunk.frame.index == 0:
            continue
        f = chunk.frame
        ev = chunk.events
        grid = voxel_grid(ev, bins=bins, height=image_size, width=image_size, normalization=normalization)
        rows['rgb'].append(f.rgb)
        rows['rgb_depth'].append(f.rgb_depth)
        rows['rgb_labels'].append(f.rgb_labels)
        rows['event_depth'].append(f.event_depth)
        rows['event_labels'].append(f.event_labels)
        rows['voxels'].append(grid.numpy().astype(np.float16))
        rows['num_events'].append(len(ev))
        rows['T_world_rgb'].append(f.T_world_rgb)
        rows['T_world_event'].append(f.T_world_event)
        rows['t_ns'].append(f.t_ns)
        if max_frames and len(rows['rgb']) >= max_frames:
            break
    arrays = {k: np.stack(v) if k not in ('num_events', 't_ns') else np.asarray(v, dtype=np.int64)
              for k, v in rows.items()}
    return TestSequence(seed=int(seed), K_rgb=sim.rgb_camera.K, K_event=sim.event_camera.K, **arrays)


def load_or_simulate(cfg: EvalConfig, cache_dir: Optional[os.PathLike] = None,
                     log: Callable[[str], None] = _LOG.info) -> List[TestSequence]:
    """The configured test sequences, simulated once and cached as ``.npz`` under ``cache_dir`` (if given)."""
    seeds = split_seeds('test', cfg.first_sequence + cfg.sequences)[cfg.first_sequence:]
    out = []
    for seed in seeds:
        path = None
        if cache_dir is not None:
            name = (f'test_{seed}_{cfg.image_size}px_{cfg.duration_s:g}s_{cfg.bins}b_{cfg.normalization}'
                    f'_{cfg.max_frames}f.npz')
            path = Path(cache_dir) / name
            if path.is_file():
                out.append(TestSequence.load(path))
                continue
        log(f'simulating test sequence seed {seed} ({cfg.duration_s:g} s)')
        seq = simulate_test_sequence(seed, cfg.image_size, cfg.duration_s, cfg.bins, cfg.normalization,
                                     cfg.max_frames)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            seq.save(path)
        out.append(seq)
    return out


@dataclass
class MiniModels:
    """The miniature models: teacher (DuneModel), REALM encoder, depth / segmentation heads, decoder (optional)."""

    teacher: torch.nn.Module
    realm: torch.nn.Module
    depth_head: torch.nn.Module
    seg_head: torch.nn.Module
    decoder: Optional[torch.nn.Module] = None
    seg_bridge: str = 'teacher_norm_inverse'

    @classmethod
    def load(cls, teacher: os.PathLike, realm: os.PathLike, depth_head: os.PathLike, seg_head: os.PathLike,
             decoder: Optional[os.PathLike] = None, device: str = 'cpu') -> 'MiniModels':
        """Load shipped files with the node's loaders (teacher hash checked against REALM and the heads)."""
        from realm_ros.models.checkpoints import load_dune, load_head_checkpoint, load_realm_checkpoint
        from realm_ros.models.mast3r import load_dune_mast3r

        dune = load_dune(teacher, device=device)
        enc = load_realm_checkpoint(realm, dune=dune, device=device)
        depth = load_head_checkpoint(depth_head, device=device, teacher_sha256=dune.source_sha256,
                                     kind='depth_bins')
        seg = load_head_checkpoint(seg_head, device=device, teacher_sha256=dune.source_sha256, kind='segmentation')
        dec = load_dune_mast3r(decoder, device=device) if decoder else None
        bridge = (seg.checkpoint_metadata or {}).get('bridge') or 'teacher_norm_inverse'
        return cls(dune, enc, depth, seg, dec, bridge)


# ---------------------------------------------------------------------------------------------------------------
def _teacher_outputs(models: MiniModels, rgb: np.ndarray, device: torch.device) -> Dict[str, torch.Tensor]:
    enc = models.teacher.encoder
    out = enc.forward_features(rgb_to_tensor(rgb, device))
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _realm_outputs(models: MiniModels, voxels: np.ndarray, device: torch.device) -> Dict[str, torch.Tensor]:
    out = models.realm(torch.from_numpy(voxels.astype(np.float32)).to(device))
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _depth(models: MiniModels, out: Dict[str, torch.Tensor], grid: Tuple[int, int], size: int) -> np.ndarray:
    d = models.depth_head(out['x_norm_patchtokens'], out['x_norm_clstoken'], grid, out_size=(size, size))
    return d[:, 0].float().cpu().numpy()


def _seg(models: MiniModels, tokens: torch.Tensor, grid: Tuple[int, int], size: int) -> np.ndarray:
    _, patches = models.teacher.projector(tokens, grid)
    return models.seg_head(patches, out_size=(size, size)).argmax(1).cpu().numpy()


def _teacher_tokens(out: Dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([out['x_prenorm_clstoken'].unsqueeze(1), out['x_prenorm_patchtokens']], dim=1)


def _nan_to_none(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


@torch.no_grad()
def evaluate(models: MiniModels, sequences: Sequence[TestSequence], cfg: EvalConfig,
             device: torch.device | str = 'cpu', log: Callable[[str], None] = _LOG.info) -> Dict[str, Any]:
    """Score the models on ``sequences`` (see the module docstring); returns a JSON-serialisable dictionary."""
    device = torch.device(device)
    size = cfg.image_size
    patch = models.teacher.encoder.patch_size
    grid = (size // patch, size // patch)
    bridges = list(BRIDGE_CHOICES) if cfg.compare_bridges else [cfg.seg_bridge]
    depth_acc = {'teacher_rgb': DepthErrorAccumulator(), 'realm_events': DepthErrorAccumulator()}
    seg_acc = {'teacher_rgb': ConfusionMatrix(NUM_CLASSES)}
    for b in bridges:
        seg_acc[f'realm_events[{b}]'] = ConfusionMatrix(NUM_CLASSES)
    cos_cls, cos_patch, cos_patch_active = [], [], []
    frames = 0
    pose_data = []
    for seq in sequences:
        n = len(seq)
        rgb_tokens, ev_tokens = {}, {}
        depths: Dict[str, List[np.ndarray]] = {'rgb': [], 'event': []}   # the pose step's lengths (depth head)
        for s in range(0, n, cfg.batch_size):
            sl = slice(s, min(n, s + cfg.batch_size))
            t_out = _teacher_outputs(models, seq.rgb[sl], device)
            r_out = _realm_outputs(models, seq.voxels[sl], device)
            depth_t = _depth(models, t_out, grid, size)
            depth_r = _depth(models, r_out, grid, size)
            depths['rgb'].append(depth_t)
            depths['event'].append(depth_r)
            seg_t = _seg(models, _teacher_tokens(t_out), grid, size)
            for i, k in enumerate(range(sl.start, sl.stop)):
                depth_acc['teacher_rgb'].update(depth_t[i], seq.rgb_depth[k])
                depth_acc['realm_events'].update(depth_r[i], seq.event_depth[k])
                seg_acc['teacher_rgb'].update(seg_t[i], seq.rgb_labels[k])
            for b in bridges:
                seg_r = _seg(models, models.realm.head_tokens(r_out, b), grid, size)
                for i, k in enumerate(range(sl.start, sl.stop)):
                    seg_acc[f'realm_events[{b}]'].update(seg_r[i], seq.event_labels[k])
            cos_cls.append(F.cosine_similarity(r_out['x_norm_clstoken'], t_out['x_norm_clstoken'], dim=-1).cpu())
            cp = F.cosine_similarity(r_out['x_norm_patchtokens'], t_out['x_norm_patchtokens'], dim=-1).cpu()
            cos_patch.append(cp.flatten())
            occ = torch.from_numpy(np.abs(seq.voxels[sl].astype(np.float32)).sum(1) > 0)
            occ = F.max_pool2d(occ.float().unsqueeze(1), patch).flatten(1) > 0
            cos_patch_active.append(cp[occ])
            for i, k in enumerate(range(sl.start, sl.stop)):
                rgb_tokens[k] = t_out['x_prenorm_patchtokens'][i:i + 1]
                ev_tokens[k] = models.realm.head_tokens(r_out, cfg.mast3r_bridge)[i:i + 1, 1:]
            frames += sl.stop - sl.start
        pose_data.append((seq, rgb_tokens, ev_tokens, {k: np.concatenate(v) for k, v in depths.items()}))
        log(f'evaluated dense heads on sequence {seq.seed} ({n} frames, '
            f'{int(seq.num_events.mean())} events per window)')

    result: Dict[str, Any] = {
        'frames': frames, 'sequences': [int(s.seed) for s in sequences],
        'events_per_window_mean': float(np.mean(np.concatenate([s.num_events for s in sequences]))),
        'depth': {k: v.result() for k, v in depth_acc.items()},
        'segmentation': {k: v.scores(CLASS_NAMES) for k, v in seg_acc.items()},
        'token_cosine': {'cls': float(torch.cat(cos_cls).mean()), 'patch': float(torch.cat(cos_patch).mean()),
                         'patch_with_events': float(torch.cat(cos_patch_active).mean())},
    }
    result['segmentation']['realm_events'] = result['segmentation'][f'realm_events[{models.seg_bridge}]'] \
        if f'realm_events[{models.seg_bridge}]' in result['segmentation'] \
        else result['segmentation'][f'realm_events[{bridges[0]}]']
    if models.decoder is not None:
        result['pose'] = _evaluate_pose(models, pose_data, cfg, device, log)
    return _nan_to_none(result)


def _evaluate_pose(models: MiniModels, pose_data, cfg: EvalConfig, device: torch.device,
                   log: Callable[[str], None]) -> Dict[str, Any]:
    from realm_ros.geometry.keyframes import Keyframe
    from realm_ros.geometry.pose import PnpParams
    from realm_ros.geometry.relative_pose import estimate_relative_pose
    from realm_ros.geometry.symmetric import DECODER_DTYPES, PoseGates, symmetric_relative_pose

    # the symmetric estimate is scored before any gate (every pair both orders solve), like the one-order one
    open_gates = PoseGates(min_inliers=0, min_inlier_ratio=0.0, max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    over: Dict[str, Any] = {k: v for k, v in (('point_conf_threshold', cfg.point_conf_threshold),
                                              ('desc_conf_threshold', cfg.desc_conf_threshold)) if v is not None}
    pnp = PnpParams(iterations=cfg.pnp_iterations, ransac_kernel=cfg.ransac_kernel, solver=cfg.pose_solver,
                    essential_iterations=cfg.pnp_iterations, **over)
    decoder_dtype = DECODER_DTYPES[cfg.pose_decoder_precision]
    size = cfg.image_size
    modes = {'rgb_rgb': ('rgb', 'rgb'), 'event_event': ('event', 'event'), 'rgb_event': ('rgb', 'event')}
    acc = {m: PoseErrorAccumulator(AUC_THRESHOLDS) for m in modes}
    per_gap = {m: {g: PoseErrorAccumulator(AUC_THRESHOLDS) for g in cfg.pair_gaps} for m in modes}
    # reference: "the camera did not move" (identity relative pose). The simulated pairs rotate by only a few
    # degrees, so a rotation error is only informative when it beats this baseline.
    no_motion = {m: PoseErrorAccumulator(AUC_THRESHOLDS) for m in modes}
    true_rot: Dict[str, List[float]] = {m: [] for m in modes}
    true_trans: Dict[str, List[float]] = {m: [] for m in modes}
    inliers: Dict[str, List[int]] = {m: [] for m in modes}
    reasons: Dict[str, Dict[str, int]] = {m: {} for m in modes}
    sym = {m: PoseErrorAccumulator(AUC_THRESHOLDS) for m in modes} if cfg.symmetric else {}
    forward_ok: Dict[str, Dict[str, List[bool]]] = {'one_order': {m: [] for m in modes},
                                                    'symmetric': {m: [] for m in modes}}
    for seq, rgb_tokens, ev_tokens, seq_depths in pose_data:
        n = len(seq)
        depths = seq_depths if cfg.pose_length_source == 'depth_head' else None
        for gap in cfg.pair_gaps:
            for i in range(0, n - gap, cfg.pair_stride):
                j = i + gap
                for mode, (src1, src2) in modes.items():
                    tok1 = rgb_tokens[i] if src1 == 'rgb' else ev_tokens[i]
                    tok2 = rgb_tokens[j] if src2 == 'rgb' else ev_tokens[j]
                    T1 = seq.T_world_rgb[i] if src1 == 'rgb' else seq.T_world_event[i]
                    T2 = seq.T_world_rgb[j] if src2 == 'rgb' else seq.T_world_event[j]
                    K2 = seq.K_rgb if src2 == 'rgb' else seq.K_event
                    K1 = seq.K_rgb if src1 == 'rgb' else seq.K_event
                    kf = Keyframe(id=i, source='rgb' if src1 == 'rgb' else 'events', tokens=tok1,
                                  cls=torch.zeros(1), image_shape=(size, size), K=K1, stamp_ns=int(seq.t_ns[i]))
                    d1 = depths['rgb' if src1 == 'rgb' else 'event'][i] if depths is not None else None
                    d2 = depths['rgb' if src2 == 'rgb' else 'event'][j] if depths is not None else None
                    est = estimate_relative_pose(models.decoder, kf, tok2, (size, size), K2, pnp=pnp,
                                                 depth_keyframe=d1)
                    T_gt = relative_pose(T1, T2)
                    T_est = est.pose.T_cur_ref if est.pose.ok else None
                    acc[mode].update(T_est, T_gt)
                    no_motion[mode].update(np.eye(4), T_gt)
                    true_rot[mode].append(rotation_error_deg(np.eye(3), T_gt[:3, :3]))
                    true_trans[mode].append(float(np.linalg.norm(T_gt[:3, 3])))
                    per_gap[mode][gap].update(T_est, T_gt)
                    if est.pose.ok:
                        inliers[mode].append(est.pose.num_inliers)
                    else:
                        reasons[mode][est.pose.reason] = reasons[mode].get(est.pose.reason, 0) + 1
                    forward_ok['one_order'][mode].append(_forward_sign_ok(T_est, T_gt))
                    if cfg.symmetric:
                        s_est = symmetric_relative_pose(models.decoder, kf, tok2, (size, size), K2, pnp=pnp,
                                                        gates=open_gates, decoder_dtype=decoder_dtype,
                                                        depth_keyframe=d1, depth_current=d2)
                        T_sym = s_est.pose.T_cur_ref if s_est.pose.ok else None
                        sym[mode].update(T_sym, T_gt)
                        forward_ok['symmetric'][mode].append(_forward_sign_ok(T_sym, T_gt))
        log(f'evaluated relative pose on sequence {seq.seed}')
    out: Dict[str, Any] = {}
    for mode in modes:
        r = acc[mode].result()
        r['inliers_median'] = float(np.median(inliers[mode])) if inliers[mode] else 0.0
        r['failures'] = reasons[mode]
        base = no_motion[mode].result()
        r['no_motion_baseline'] = {k: base[k] for k in ('rot_err_deg_median', 'auc_rot@5', 'auc_rot@10',
                                                          'auc_rot@20')}
        r['true_motion'] = {'rot_deg_median': float(np.median(true_rot[mode])) if true_rot[mode] else None,
                            'trans_m_median': float(np.median(true_trans[mode])) if true_trans[mode] else None}
        r['by_gap_frames'] = {str(g): {k: v for k, v in per_gap[mode][g].result().items()
                                       if k.startswith(('auc_rot', 'rot_err_deg_median', 'trans_err_deg_median',
                                                        'success', 'pairs'))}
                              for g in cfg.pair_gaps}
        r['forward_sign_ok'] = _rate(forward_ok['one_order'][mode])
        if cfg.symmetric:
            rs = sym[mode].result()
            rs['forward_sign_ok'] = _rate(forward_ok['symmetric'][mode])
            r['symmetric'] = rs
        out[mode] = r
    return out


def _forward_sign_ok(T_est: Optional[np.ndarray], T_gt: np.ndarray) -> bool:
    """Whether the estimate moves the camera along its optical axis the same way as the truth (a failure: no)."""
    if T_est is None:
        return False
    return bool(np.sign(T_est[2, 3]) == np.sign(T_gt[2, 3]))


def _rate(flags: Sequence[bool]) -> Optional[float]:
    return float(np.mean(flags)) if len(flags) else None


def write_metrics(path: os.PathLike, metrics: Dict[str, Any]) -> Path:
    """Write a metrics dictionary as pretty JSON (atomic)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + '.tmp')
    tmp.write_text(json.dumps(_nan_to_none(metrics), indent=2, sort_keys=False) + '\n')
    os.replace(tmp, p)
    return p
