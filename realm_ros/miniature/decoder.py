"""Training of the miniature MASt3R-style decoder on the frozen mini teacher.

Same module as the full-size DUNE-MASt3R (:class:`realm_ros.models.mast3r.DuneMast3rDecoder`), tiny configuration.
It reads the teacher's pre-final-norm patch tokens of two views (``encoder.get_mast3r_tokens``, the official
DUNE-MASt3R input) and is supervised with simulator ground truth:

* **3-D points** - ``pts3d`` of view 1 in its own camera frame and ``pts3d_in_other_view`` (view 2's pixels in view
  1's frame), from the rendered depth and the two poses. Confidence-weighted regression as in DUSt3R:
  ``conf * err - alpha * log(conf)`` with ``err = |p_hat - p| / max(|p|, 1 m)`` (relative far away, absolute up
  close, so a 100 m facade does not drown the near field) plus a weighted ray-direction error (reprojection, hence
  PnP, depends on it most); sky pixels are not supervised.
* **Descriptors** - InfoNCE over ground-truth correspondences (:func:`realm_ros.miniature.data.sample_correspondences`;
  drawing only view-1 pixels that stay visible in view 2, as the shipped decoder was trained, biases the sample
  toward contraction; ``both_directions=True`` draws from both views):
  for ``M`` sampled matches the descriptor of a pixel in view 1 must pick its partner in view 2 among the ``M``
  candidates (both directions, temperature ``tau``), weighted by the descriptor confidences with the same
  ``w * loss - beta * log(w)`` rule (descriptors get the unweighted InfoNCE gradient), so ``desc_conf`` learns
  where matches are reliable. The optimum is ``w = beta / loss``; ``beta`` and ``alpha`` are set so that the pose
  solver's default thresholds (``desc_conf >= 1.001``, ``conf >= 1.5``, as MASt3R's visloc) keep the better
  matches: ``desc_conf >= 1`` <=> InfoNCE loss <= ``beta``; ``conf >= 1.5`` <=> ``err <= alpha / 1.5``.

Progressive resizing (``low_res_steps``): the first steps use the same views rendered at a lower resolution (teacher
tokens at that size, the decoder is resolution-agnostic), four times cheaper per pair at 112 px.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realm_ros.models.dune_model import DuneModel
from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder
from realm_ros.training.loop import OptimizerStep, run_steps

from .data import PairBatch, PairSampler, pts3d_in_frame, rgb_to_tensor, sample_correspondences, split_seeds
from .teacher import round_to_half, warmup_cosine

_LOG = logging.getLogger(__name__)

PATCH_AREA = 14 * 14

__all__ = ['DecoderConfig', 'build_decoder', 'init_patch_constant', 'DecoderTrainer', 'train_decoder', 'pair_targets',
           'pts3d_loss', 'matching_loss']


@dataclass
class DecoderConfig:
    """Decoder architecture (tiny DUNE-MASt3R) and training settings (defaults: the shipped recipe)."""

    dec_depth: int = 2
    dec_embed_dim: int = 192
    dec_num_heads: int = 3
    dpt_feature_dim: int = 32
    dpt_layer_dims: Tuple[int, int, int, int] = (16, 32, 64, 128)
    local_mlp_ratio: float = 0.5
    desc_dim: int = 24
    scenes: int = 200
    scene_duration_s: float = 12.0
    min_dt: float = 0.03
    max_dt: float = 0.5
    steps: int = 800
    batch_size: int = 8
    low_res: int = 112                 # progressive resizing: the first low_res_steps steps use this image size
    low_res_steps: int = 500
    low_res_batch_size: int = 16
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 15
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    conf_alpha: float = 0.6           # conf = alpha / err at the optimum: >= 1.5 (the PnP threshold) <=> err <= 0.4
    dir_weight: float = 10.0
    matches_per_pair: int = 1024
    # matches drawn from both views (radius-neutral) instead of view-1 pixels only (biased inward, log-radius -0.054
    # on training pairs; the decoder shipped before 2026-12-06 was trained that way and contracted its matches)
    both_directions: bool = True
    tau: float = 0.07
    match_weight: float = 1.0
    desc_conf_beta: float = 5.0       # desc_conf = beta / InfoNCE loss: >= 1.001 <=> loss <= ~5 (of ln 1024 = 6.9)
    max_depth: float = 200.0
    calibration_scenes: int = 2
    calibration_pairs: int = 16
    keep_points: float = 0.95          # fraction of pixels / matches the PnP default thresholds keep after calibration
    keep_matches: float = 0.95
    seed: int = 1
    log_every: int = 10
    # second phase (0 = none): a warm restart from the phase-1 decoder as it is shipped (float16-rounded, confidences
    # calibrated) with a fresh AdamW, warm-up and a cosine of refine_steps at refine_lr, all at full resolution; the
    # confidences are calibrated again afterwards
    refine_steps: int = 0
    refine_lr: float = 2.5e-4


def build_decoder(cfg: DecoderConfig, enc_dim: int = 192) -> DuneMast3rDecoder:
    """The tiny DUNE-MASt3R decoder described by ``cfg`` (official module layout, ``realm_*`` model-string keys)."""
    mcfg = DuneMast3rConfig.tiny(enc_embed_dim=enc_dim, dec_embed_dim=cfg.dec_embed_dim, dec_depth=cfg.dec_depth,
                                 dec_num_heads=cfg.dec_num_heads, dpt_feature_dim=cfg.dpt_feature_dim,
                                 dpt_layer_dims=tuple(cfg.dpt_layer_dims), local_mlp_ratio=cfg.local_mlp_ratio,
                                 desc_dim=cfg.desc_dim)
    dec = DuneMast3rDecoder(mcfg, dune_backbone_name='mini_teacher')
    for head in (dec.mast3r.downstream_head1, dec.mast3r.downstream_head2):
        init_patch_constant(head.head_local_features.fc2, mcfg.local_feature_channels)
    return dec


@torch.no_grad()
def init_patch_constant(fc2: nn.Linear, channels: int, patch: int = 14) -> None:
    """Initialise the local-feature MLP output so that all ``patch x patch`` sub-pixels of a token start equal.

    The output index is ``c * patch**2 + i * patch + j`` (pixel shuffle), so row ``(c, 0, 0)`` is copied to every
    ``(c, i, j)``. A random init makes neighbouring pixels' descriptors independent noise that takes long to
    smooth out; this start gives patch-level descriptors at once (they vary with the decoder features), which
    training then refines below the patch size.
    """
    w = fc2.weight.view(channels, patch * patch, -1)
    w.copy_(w[:, :1].expand_as(w).clone())
    if fc2.bias is not None:
        b = fc2.bias.view(channels, patch * patch)
        b.copy_(b[:, :1].expand_as(b).clone())


def pair_targets(pairs: PairBatch, matches: int, rng: np.random.Generator, max_depth: float = 200.0,
                 both_directions: bool = False) -> Dict[str, torch.Tensor]:
    """Ground truth of a pair batch: ``pts1`` (B, H, W, 3) view-1 points in frame 1, ``pts2`` (B, H, W, 3) view-2
    points in frame 1 (NaN where no depth / beyond ``max_depth``), ``xy1``/``xy2`` (B, M, 2) sampled correspondences
    (int64 x, y) with ``match_valid`` (B, M) (False pads pairs with fewer than M matches), drawn from both views
    unless ``both_directions`` is False (:func:`realm_ros.miniature.data.sample_correspondences`)."""
    a, b = pairs.first, pairs.second
    K = a.K
    n = len(a.rgb)
    pts1, pts2, xy1s, xy2s, valid = [], [], [], [], []
    for i in range(n):
        T12 = np.linalg.inv(a.poses[i]) @ b.poses[i]
        d1 = np.where(a.depth[i] <= max_depth, a.depth[i], np.inf)
        d2 = np.where(b.depth[i] <= max_depth, b.depth[i], np.inf)
        pts1.append(pts3d_in_frame(d1, K))
        pts2.append(pts3d_in_frame(d2, K, T12))
        xy1, xy2 = sample_correspondences(d1, d2, a.poses[i], b.poses[i], K, matches, rng, both_directions)
        m = len(xy1)
        pad = matches - m
        xy1s.append(np.concatenate([xy1, np.zeros((pad, 2), np.int64)]))
        xy2s.append(np.concatenate([xy2, np.zeros((pad, 2), np.int64)]))
        valid.append(np.arange(matches) < m)
    return dict(pts1=torch.from_numpy(np.stack(pts1)).float(), pts2=torch.from_numpy(np.stack(pts2)).float(),
                xy1=torch.from_numpy(np.stack(xy1s)), xy2=torch.from_numpy(np.stack(xy2s)),
                match_valid=torch.from_numpy(np.stack(valid)))


def pts3d_loss(pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, alpha: float, dir_weight: float = 0.0
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Confidence-weighted 3-D point error over pixels with finite ground truth.

    Per pixel ``err = |p_hat - p| / max(|p|, 1 m) + dir_weight * |p_hat / |p_hat| - p / |p||`` (relative position
    error plus the ray-direction error, which is what reprojection - and so PnP - is sensitive to; 1 px at f = 133 px
    is 0.0075). Returns ``(loss, mean relative position error)``."""
    valid = torch.isfinite(gt).all(-1)
    g = torch.where(valid[..., None], gt, torch.zeros_like(gt))
    rel = (pred - g).norm(dim=-1) / g.norm(dim=-1).clamp_min(1.0)
    err = rel
    if dir_weight:
        unit_p = pred / pred.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        unit_g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        err = err + dir_weight * (unit_p - unit_g).norm(dim=-1)
    err = torch.where(valid, err, torch.zeros_like(err))
    rel = torch.where(valid, rel, torch.zeros_like(rel))
    c = torch.where(valid, conf, torch.ones_like(conf))
    n = valid.sum().clamp_min(1)
    loss = ((c * err - alpha * c.log()) * valid).sum() / n
    return loss, rel.sum().detach() / n


def _gather(x: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """x (B, H, W, C) or (B, H, W) at integer pixels xy (B, M, 2) -> (B, M, C) / (B, M)."""
    b, h, w = x.shape[:3]
    idx = (xy[..., 1] * w + xy[..., 0]).to(x.device)
    flat = x.reshape(b, h * w, -1)
    out = torch.gather(flat, 1, idx.unsqueeze(-1).expand(-1, -1, flat.shape[-1]))
    return out if x.dim() == 4 else out[..., 0]


def matching_loss(desc1: torch.Tensor, desc2: torch.Tensor, dconf1: torch.Tensor, dconf2: torch.Tensor,
                  xy1: torch.Tensor, xy2: torch.Tensor, valid: torch.Tensor, tau: float, beta: float
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over sampled correspondences plus the descriptor-confidence fit
    ``w * loss.detach() - beta * log(w)``. Returns ``(loss, top-1 accuracy)``."""
    d1 = _gather(desc1, xy1)                  # (B, M, D)
    d2 = _gather(desc2, xy2)
    w = (_gather(dconf1, xy1) * _gather(dconf2, xy2)).clamp_min(1e-6).sqrt()
    logits = torch.einsum('bmd,bnd->bmn', d1, d2) / tau
    vd = valid.to(logits.device)
    mask = vd[:, :, None] & vd[:, None, :]
    logits = logits.masked_fill(~mask, -1e4)
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    l12 = F.cross_entropy(logits.transpose(1, 2), target, reduction='none')
    l21 = F.cross_entropy(logits, target, reduction='none')   # rows of logits^T: each view-2 pixel over view 1
    per = 0.5 * (l12 + l21)
    v = valid.to(per.device).float()
    n = v.sum().clamp_min(1)
    # descriptors get the plain InfoNCE gradient; the confidence is fitted to the (detached) per-match loss, so a
    # low confidence never starves the descriptor of gradient (optimum w = beta / loss)
    loss = ((per + w * per.detach() - beta * w.log()) * v).sum() / n
    acc = ((logits.argmax(-1) == target).float() * v).sum() / n
    return loss, acc.detach()


class DecoderTrainer:
    """Trains a tiny decoder on a frozen teacher with pairs from the training scenes."""

    def __init__(self, cfg: DecoderConfig, teacher: DuneModel, image_size: int, device: torch.device | str = 'cpu',
                 log: Callable[[str], None] = _LOG.info, init: Optional[DuneMast3rDecoder] = None) -> None:
        """``init``: start from this decoder's weights and run the refine phase (``cfg.refine_steps`` at
        ``cfg.refine_lr``, full resolution, its own random stream) instead of phase 1."""
        self.refine = init is not None
        if self.refine:
            cfg = replace(cfg, steps=cfg.refine_steps, lr=cfg.refine_lr, low_res_steps=0, seed=cfg.seed + 1000)
        self.cfg = cfg
        self.device = torch.device(device)
        self.log = log
        self.image_size = int(image_size)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        torch.manual_seed(cfg.seed)
        self.decoder = build_decoder(cfg, teacher.encoder.embed_dim).to(self.device)
        if init is not None:
            self.decoder.load_state_dict(init.state_dict())
            self.decoder.requires_grad_(True)
        self.decoder.set_attention_impl('sdpa')
        seeds = split_seeds('train', cfg.scenes)
        self.sampler = PairSampler(seeds, image_size, cfg.scene_duration_s, cfg.min_dt, cfg.max_dt)
        self.low_sampler = (PairSampler(seeds, cfg.low_res, cfg.scene_duration_s, cfg.min_dt, cfg.max_dt)
                            if cfg.low_res_steps > 0 else None)
        self.rng = np.random.default_rng(cfg.seed)
        params = list(self.decoder.parameters())
        self.opt = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2],
                                       'weight_decay': cfg.weight_decay},
                                      {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                                     lr=cfg.lr)
        self.history: List[Dict[str, Any]] = []

    @torch.no_grad()
    def tokens(self, rgb: np.ndarray) -> torch.Tensor:
        """Teacher pre-norm patch tokens of uint8 RGB images (B, H, W, 3)."""
        return self.teacher.encoder.get_mast3r_tokens(rgb_to_tensor(rgb, self.device))

    def losses(self, pairs: PairBatch) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        gt = pair_targets(pairs, cfg.matches_per_pair, self.rng, cfg.max_depth, cfg.both_directions)
        t1, t2 = self.tokens(pairs.first.rgb), self.tokens(pairs.second.rgb)
        shape = tuple(pairs.first.rgb.shape[1:3])
        p1, p2 = self.decoder(t1, t2, shape, shape)
        l1, e1 = pts3d_loss(p1['pts3d'], p1['conf'], gt['pts1'].to(self.device), cfg.conf_alpha, cfg.dir_weight)
        l2, e2 = pts3d_loss(p2['pts3d_in_other_view'], p2['conf'], gt['pts2'].to(self.device), cfg.conf_alpha,
                            cfg.dir_weight)
        lm, acc = matching_loss(p1['desc'], p2['desc'], p1['desc_conf'], p2['desc_conf'], gt['xy1'], gt['xy2'],
                                gt['match_valid'], cfg.tau, cfg.desc_conf_beta)
        loss = l1 + l2 + cfg.match_weight * lm
        return dict(loss=loss, pts1=l1.detach(), pts2=l2.detach(), rel_err1=e1, rel_err2=e2, match=lm.detach(),
                    match_acc=acc)

    def train(self) -> DuneMast3rDecoder:
        """Run ``cfg.steps`` optimiser steps (:func:`realm_ros.training.loop.run_steps`), freeze the decoder and
        round it to float16 values."""
        cfg = self.cfg
        self.decoder.train()
        stepper = OptimizerStep(self.opt, list(self.decoder.parameters()), self.schedule, cfg.grad_clip,
                                name='decoder')

        def compute(step: int) -> Dict[str, torch.Tensor]:
            if step < cfg.low_res_steps:
                assert self.low_sampler is not None  # built whenever low_res_steps > 0
                pairs = self.low_sampler.sample(cfg.low_res_batch_size, self.rng)
            else:
                pairs = self.sampler.sample(cfg.batch_size, self.rng)
            return self.losses(pairs)

        def on_record(rec: Dict[str, Any]) -> None:
            self.history.append(rec)
            self.log(f'decoder step {rec["step"]}/{cfg.steps} loss {rec["loss"]:.4f} (pts rel err '
                     f'{rec["rel_err1"]:.3f}/{rec["rel_err2"]:.3f}, match acc {rec["match_acc"]:.3f}) '
                     f'{rec["seconds"]:.0f} s')

        run_steps(stepper, cfg.steps, compute, cfg.log_every, on_record)
        self.decoder.eval().requires_grad_(False)
        round_to_half(self.decoder)
        return self.decoder

    def schedule(self, step: int) -> float:
        """Learning-rate factor of optimiser step ``step`` (warm-up, then cosine to ``min_lr_ratio``)."""
        return warmup_cosine(step, self.cfg.steps, self.cfg.warmup_steps, self.cfg.min_lr_ratio)


@torch.no_grad()
def calibrate_confidences(decoder: DuneMast3rDecoder, teacher: DuneModel, image_size: int, seeds: List[int],
                          pairs: int = 16, keep_points: float = 0.95, keep_matches: float = 0.95, seed: int = 7,
                          device: torch.device | str = 'cpu') -> Dict[str, Any]:
    """Shift the confidence logits so that the pose solver's default thresholds keep a chosen fraction.

    The PnP step keeps keyframe points with ``conf >= 1.5`` and matches with ``min(desc_conf) >= 1.001``
    (:class:`realm_ros.geometry.pose.PnpParams`, MASt3R visloc values) - absolute numbers that only mean something
    for a decoder trained like MASt3R. Here the raw confidences are measured on frame pairs of ``seeds`` (validation
    scenes): the ``1 - keep_points`` quantile of ``conf`` over pixels and the ``1 - keep_matches`` quantile of
    ``min(desc_conf1, desc_conf2)`` over reciprocal matches are mapped onto the thresholds by adding a constant to
    the biases of the confidence output channels (the ranking of pixels is unchanged). Returns the applied shifts.
    """
    from realm_ros.geometry.matching import fast_reciprocal_nn
    from realm_ros.geometry.pose import PnpParams

    device = torch.device(device)
    params = PnpParams()
    sampler = PairSampler(seeds, image_size, duration_s=6.0, min_dt=0.1, max_dt=0.4)
    batch = sampler.sample(pairs, np.random.default_rng(seed))
    enc = teacher.encoder
    t1 = enc.get_mast3r_tokens(rgb_to_tensor(batch.first.rgb, device))
    t2 = enc.get_mast3r_tokens(rgb_to_tensor(batch.second.rgb, device))
    conf_vals, desc_vals = [], []
    shape = (image_size, image_size)
    for i in range(pairs):
        p1, p2 = decoder(t1[i:i + 1], t2[i:i + 1], shape, shape)
        valid = torch.from_numpy(np.isfinite(batch.first.depth[i]))
        conf_vals.append(p1['conf'][0][valid].flatten())
        m = fast_reciprocal_nn(p1['desc'][0], p2['desc'][0], 8)
        if m.count:
            d1 = p1['desc_conf'][0][m.xy1[:, 1], m.xy1[:, 0]]
            d2 = p2['desc_conf'][0][m.xy2[:, 1], m.xy2[:, 0]]
            desc_vals.append(torch.minimum(d1, d2).flatten())
    conf_all = torch.cat(conf_vals).double()
    q_conf = float(torch.quantile(conf_all[torch.randperm(len(conf_all))[:200_000]], 1.0 - keep_points))
    # conf = 1 + exp(x): shift x so that conf(q) == threshold
    shift_conf = float(np.log(params.point_conf_threshold - 1.0) - np.log(max(q_conf - 1.0, 1e-30)))
    shift_desc = 0.0
    if desc_vals:
        q_desc = float(torch.quantile(torch.cat(desc_vals).double(), 1.0 - keep_matches))
        shift_desc = float(np.log(params.desc_conf_threshold) - np.log(max(q_desc, 1e-30)))   # desc_conf = exp(x)
    c = decoder.config
    n_desc = c.desc_dim
    for head in (decoder.mast3r.downstream_head1, decoder.mast3r.downstream_head2):
        last = head.dpt.head[-1]
        last.bias[3] += shift_conf
        if c.two_confs:
            fc2 = head.head_local_features.fc2
            fc2.bias.view(c.local_feature_channels, PATCH_AREA)[n_desc] += shift_desc
    round_to_half(decoder)
    return {'point_conf_shift': shift_conf, 'desc_conf_shift': shift_desc, 'keep_points': keep_points,
            'keep_matches': keep_matches, 'pairs': pairs, 'seeds': list(seeds)}


def train_decoder(cfg: DecoderConfig, teacher: DuneModel, image_size: int, device: torch.device | str = 'cpu',
                  log: Callable[[str], None] = _LOG.info) -> Tuple[DuneMast3rDecoder, Dict[str, object]]:
    """Train the decoder, then calibrate its confidences on validation scenes; returns the frozen
    (float16-rounded) decoder and a training record."""
    trainer = DecoderTrainer(cfg, teacher, image_size, device, log)
    t0 = time.time()
    dec = trainer.train()
    calib = calibrate_confidences(dec, trainer.teacher, image_size, split_seeds('val', cfg.calibration_scenes),
                                  cfg.calibration_pairs, cfg.keep_points, cfg.keep_matches, device=device)
    log(f'decoder confidences calibrated on {cfg.calibration_pairs} validation pairs: {calib}')
    record: Dict[str, object] = dict(config=asdict(cfg), seconds=time.time() - t0, history=trainer.history,
                                     calibration=calib)
    if cfg.refine_steps > 0:
        dec, refined = refine_decoder(cfg, dec, trainer.teacher, image_size, device, log)
        record.update(seconds=time.time() - t0, refine=refined)
    return dec, record


def refine_decoder(cfg: DecoderConfig, decoder: DuneMast3rDecoder, teacher: DuneModel, image_size: int,
                   device: torch.device | str = 'cpu', log: Callable[[str], None] = _LOG.info
                   ) -> Tuple[DuneMast3rDecoder, Dict[str, object]]:
    """The refine phase (``cfg.refine_steps``) from ``decoder`` (phase 1 as shipped: float16-rounded, confidences
    calibrated), then the confidences calibrated again. Returns the new frozen decoder and its record."""
    t0 = time.time()
    trainer = DecoderTrainer(cfg, teacher, image_size, device, log, init=decoder)
    dec = trainer.train()
    calib = calibrate_confidences(dec, trainer.teacher, image_size, split_seeds('val', cfg.calibration_scenes),
                                  cfg.calibration_pairs, cfg.keep_points, cfg.keep_matches, device=device)
    log(f'refined decoder confidences calibrated: {calib}')
    return dec, dict(seconds=time.time() - t0, history=trainer.history, calibration=calib)
