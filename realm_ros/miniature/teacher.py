"""Teacher pretraining: a ViT-Ti/14 "mini DUNE" trained on simulated RGB, then frozen.

The real DUNE is distilled from several foundation models; here no such models exist, so the miniature teacher is
trained with dense supervision that the simulator gives for free (a justified stand-in: what REALM transfers are the
teacher's *features*, and the heads later trained on them must find depth, semantics and matchable structure there):

* metric depth - a temporary :class:`~realm_ros.models.heads.DepthBinsHead` on the normed tokens, L1 on log depth
  (sky = the far bound, so the tokens also encode "far");
* semantics - the DINOv2-style projector (kept: it is part of the teacher checkpoint, as in DUNE, and the
  segmentation head reads it) followed by a temporary 1x1-conv classifier, class-weighted cross-entropy;
* local appearance - a temporary linear head reconstructing each patch's standardised luminance (14 x 14 values),
  so that tokens keep the sub-patch structure the matching decoder needs (and that events observe).

Progressive resizing (``low_res_steps``): the first steps render the same views at a lower resolution (the camera
keeps its field of view; the positional embedding is interpolated), four times cheaper per image at 112 px, before
the remaining steps at the final ``image_size``.

Only the encoder and the projector are kept: :func:`train_teacher` returns the frozen
:class:`~realm_ros.models.dune_model.DuneModel` (shipped in float32: later stages train against exactly that file).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realm_ros.common.schedule import warmup_cosine
from realm_ros.models.dune import vit_tiny
from realm_ros.models.dune_model import DINOV2_TEACHER, DuneModel
from realm_ros.models.heads import DepthBinsHead, DinoV2Projector, SegmentationHead
from realm_ros.sim.classes import NUM_CLASSES
from realm_ros.training.loop import OptimizerStep, run_steps

from .data import IMAGENET_MEAN, IMAGENET_STD, FrameBatch, FrameSampler, rgb_to_tensor, split_seeds

_LOG = logging.getLogger(__name__)

__all__ = ['TeacherConfig', 'build_teacher', 'TeacherPretrainer', 'train_teacher', 'round_to_half',
           'patch_luminance_targets', 'class_weights_from_labels', 'warmup_cosine']


@dataclass
class TeacherConfig:
    """Teacher pretraining settings (defaults: the shipped recipe)."""

    image_size: int = 224
    proj_dim: int = 256
    depth_bins: int = 256
    min_depth: float = 1.0
    max_depth: float = 81.0
    scenes: int = 200
    scene_duration_s: float = 12.0
    steps: int = 720
    batch_size: int = 16
    low_res: int = 112                 # progressive resizing: the first low_res_steps steps render at this size
    low_res_steps: int = 600
    low_res_batch_size: int = 32
    lr: float = 6e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 40
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    depth_weight: float = 1.0
    seg_weight: float = 1.0
    recon_weight: float = 0.5
    hflip: bool = True
    color_jitter: float = 0.2
    seed: int = 0
    log_every: int = 20
    val_scenes: int = 4
    val_frames: int = 32
    val_every: int = 200               # steps between validations (0 = never); a multiple of log_every


def build_teacher(cfg: TeacherConfig) -> DuneModel:
    """ViT-Ti/14 encoder (no registers, LayerScale, qkv bias: DUNE's layout) + a 1-block projector to ``proj_dim``
    under the DINOv2 teacher key (no qkv bias, like the paper checkpoint)."""
    encoder = vit_tiny(img_size=cfg.image_size)
    projector = DinoV2Projector(embed_dim=encoder.embed_dim, out_dim=cfg.proj_dim, num_heads=encoder.num_heads,
                                qkv_bias=False)
    return DuneModel(encoder, {DINOV2_TEACHER: projector})


def round_to_half(module: nn.Module) -> nn.Module:
    """Round every floating parameter and buffer to the nearest float16 value (kept as float32), in place."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return module


def patch_luminance_targets(rgb01: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, N, patch*patch) per-patch standardised luminance (row-major patches)."""
    y = 0.299 * rgb01[:, 0] + 0.587 * rgb01[:, 1] + 0.114 * rgb01[:, 2]
    b, h, w = y.shape
    cols = (y.reshape(b, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
            .reshape(b, (h // patch) * (w // patch), patch * patch))          # (B, N, p*p), row-major patches
    mean = cols.mean(-1, keepdim=True)
    std = cols.std(-1, keepdim=True)
    return (cols - mean) / (std + 0.02)


def class_weights_from_labels(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Median-frequency class weights (clipped to [0.1, 10]; absent classes 1) from a label sample."""
    from realm_ros.training.heads import median_frequency_weights
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return torch.tensor(median_frequency_weights(counts), dtype=torch.float32)


class TeacherPretrainer:
    """Runs the multi-task pretraining loop (see the module docstring)."""

    def __init__(self, cfg: TeacherConfig, device: torch.device | str = 'cpu',
                 log: Callable[[str], None] = _LOG.info) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.log = log
        torch.manual_seed(cfg.seed)
        self.model = build_teacher(cfg).to(self.device)
        enc = self.model.encoder
        self.patch = enc.patch_size
        self.heads = nn.ModuleDict(dict(
            depth=DepthBinsHead(enc.embed_dim, cfg.depth_bins, cfg.min_depth, cfg.max_depth),
            seg=SegmentationHead(cfg.proj_dim, NUM_CLASSES),
            recon=nn.Linear(enc.embed_dim, self.patch * self.patch),
        )).to(self.device)
        seeds = split_seeds('train', cfg.scenes)
        self.sampler = FrameSampler(seeds, cfg.image_size, cfg.scene_duration_s)
        self.low_sampler = (FrameSampler(seeds, cfg.low_res, cfg.scene_duration_s) if cfg.low_res_steps > 0
                            else None)
        self.rng = np.random.default_rng(cfg.seed)
        params = list(self.model.parameters()) + list(self.heads.parameters())
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.opt = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg.weight_decay},
                                      {'params': no_decay, 'weight_decay': 0.0}], lr=cfg.lr)
        sample = self.sampler.sample(32, np.random.default_rng(cfg.seed + 1))
        self.class_weights = class_weights_from_labels(sample.labels).to(self.device)
        self.history: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------------ batches
    def _augment(self, batch: FrameBatch) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        rgb = torch.from_numpy(batch.rgb).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        depth = torch.from_numpy(batch.depth).to(self.device).float()
        labels = torch.from_numpy(batch.labels).to(self.device).long()
        b = rgb.shape[0]
        if cfg.hflip:
            flip = torch.from_numpy(self.rng.random(b) < 0.5).to(self.device)
            rgb = torch.where(flip[:, None, None, None], rgb.flip(-1), rgb)
            depth = torch.where(flip[:, None, None], depth.flip(-1), depth)
            labels = torch.where(flip[:, None, None], labels.flip(-1), labels)
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            gain = torch.from_numpy(self.rng.uniform(1 - j, 1 + j, (b, 1, 1, 1))).float().to(self.device)
            chan = torch.from_numpy(self.rng.uniform(1 - j / 2, 1 + j / 2, (b, 3, 1, 1))).float().to(self.device)
            contrast = torch.from_numpy(self.rng.uniform(1 - j, 1 + j, (b, 1, 1, 1))).float().to(self.device)
            mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
            rgb = ((rgb - mean) * contrast + mean) * gain * chan
            rgb = rgb.clamp(0.0, 1.0)
        mean_t = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return dict(rgb01=rgb, image=(rgb - mean_t) / std_t, depth=depth, labels=labels)

    def losses(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Loss terms of one batch (``loss`` = weighted sum)."""
        cfg = self.cfg
        image = data['image']
        size = tuple(image.shape[-2:])
        enc = self.model.encoder
        grid = enc.grid_shape(*size)
        out = enc.forward_features(image)
        depth_pred = self.heads['depth'](out['x_norm_patchtokens'], out['x_norm_clstoken'], grid, out_size=size)[:, 0]
        gt = data['depth']
        gt = torch.where(torch.isfinite(gt) & (gt > 0), gt, torch.full_like(gt, cfg.max_depth))
        gt = gt.clamp(cfg.min_depth, cfg.max_depth)
        l_depth = (depth_pred.clamp_min(1e-3).log() - gt.log()).abs().mean()
        tokens = torch.cat([out['x_prenorm_clstoken'].unsqueeze(1), out['x_prenorm_patchtokens']], dim=1)
        _, proj = self.model.projector(tokens, grid)
        logits = self.heads['seg'](proj, out_size=size)
        l_seg = F.cross_entropy(logits, data['labels'], weight=self.class_weights)
        target = patch_luminance_targets(data['rgb01'], self.patch)
        l_rec = F.mse_loss(self.heads['recon'](out['x_norm_patchtokens']), target)
        loss = cfg.depth_weight * l_depth + cfg.seg_weight * l_seg + cfg.recon_weight * l_rec
        return dict(loss=loss, depth=l_depth.detach(), seg=l_seg.detach(), recon=l_rec.detach())

    @torch.no_grad()
    def validate(self) -> Dict[str, Any]:
        """Temporary-head quality on fixed frames of ``val`` scenes (depth abs error <= 30 m, mIoU)."""
        from .metrics import ConfusionMatrix, DepthErrorAccumulator
        if not hasattr(self, '_val_batch'):
            sampler = FrameSampler(split_seeds('val', self.cfg.val_scenes), self.cfg.image_size,
                                   self.cfg.scene_duration_s)
            self._val_batch = sampler.sample(self.cfg.val_frames, np.random.default_rng(12345))
        was = self.model.training
        self.model.eval()
        self.heads.eval()
        depth_acc, cm = DepthErrorAccumulator(cutoffs=(10.0, 30.0)), ConfusionMatrix(NUM_CLASSES)
        b = self._val_batch
        for s in range(0, len(b.rgb), 8):
            image = rgb_to_tensor(b.rgb[s:s + 8], self.device)
            size = tuple(image.shape[-2:])
            enc = self.model.encoder
            grid = enc.grid_shape(*size)
            out = enc.forward_features(image)
            d = self.heads['depth'](out['x_norm_patchtokens'], out['x_norm_clstoken'], grid, out_size=size)[:, 0]
            tokens = torch.cat([out['x_prenorm_clstoken'].unsqueeze(1), out['x_prenorm_patchtokens']], dim=1)
            seg = self.heads['seg'](self.model.projector(tokens, grid)[1], out_size=size).argmax(1)
            for i in range(len(d)):
                depth_acc.update(d[i].cpu().numpy(), b.depth[s + i])
                cm.update(seg[i].cpu().numpy(), b.labels[s + i])
        self.model.train(was)
        self.heads.train(was)
        r = depth_acc.result()
        return {'depth_abs_err_10m': r['abs_err_10m'], 'depth_abs_err_30m': r['abs_err_30m'],
                'miou': cm.scores()['miou'], 'accuracy': cm.scores()['accuracy']}

    # ------------------------------------------------------------------------------------------------ loop
    def train(self) -> DuneModel:
        """Run ``cfg.steps`` optimiser steps (:func:`realm_ros.training.loop.run_steps`) and freeze the teacher."""
        cfg = self.cfg
        self.model.train()
        self.heads.train()
        params = list(self.model.parameters()) + list(self.heads.parameters())
        stepper = OptimizerStep(self.opt, params, self.schedule, cfg.grad_clip, name='teacher')

        def compute(step: int) -> Dict[str, torch.Tensor]:
            if step < cfg.low_res_steps:
                assert self.low_sampler is not None  # built whenever low_res_steps > 0
                batch = self.low_sampler.sample(cfg.low_res_batch_size, self.rng)
            else:
                batch = self.sampler.sample(cfg.batch_size, self.rng)
            return self.losses(self._augment(batch))

        def on_record(rec: Dict[str, Any]) -> None:
            step = rec['step']
            if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
                rec.update({f'val_{k}': v for k, v in self.validate().items()})
            self.history.append(rec)
            val = (f' | val depth err <=10/30 m {rec["val_depth_abs_err_10m"]:.2f}/'
                   f'{rec["val_depth_abs_err_30m"]:.2f} mIoU {rec["val_miou"]:.3f}') if 'val_miou' in rec else ''
            self.log(f'teacher step {step}/{cfg.steps} loss {rec["loss"]:.4f} (depth {rec["depth"]:.3f} '
                     f'seg {rec["seg"]:.3f} recon {rec["recon"]:.3f}) {rec["seconds"]:.0f} s{val}')

        run_steps(stepper, cfg.steps, compute, cfg.log_every, on_record)
        self.model.eval().requires_grad_(False)
        return self.model

    def schedule(self, step: int) -> float:
        """Learning-rate factor of optimiser step ``step``: warm-up over ``warmup_steps``, cosine to
        ``min_lr_ratio`` at ``steps`` (the ramp ends at the last warm-up step)."""
        return warmup_cosine(step, self.cfg.steps, self.cfg.warmup_steps, self.cfg.min_lr_ratio)


def train_teacher(cfg: TeacherConfig, device: torch.device | str = 'cpu',
                  log: Callable[[str], None] = _LOG.info) -> tuple[DuneModel, Dict[str, object]]:
    """Train the mini teacher; returns the frozen model and a training record."""
    trainer = TeacherPretrainer(cfg, device, log)
    t0 = time.time()
    model = trainer.train()
    return model, dict(config=asdict(cfg), seconds=time.time() - t0, history=trainer.history,
                       class_weights=[float(w) for w in trainer.class_weights.cpu()])
