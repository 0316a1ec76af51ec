"""Head training on frozen DUNE features of RGB frames (docs/models.md#head-training).

* Depth (:class:`~realm_ros.models.heads.DepthBinsHead` on the normed tokens): targets with NaN/inf/<= 0 are masked,
  valid targets are clamped to ``[min_depth, max_depth]``; loss in log space = ``si_weight`` x scale-invariant log loss
  ``mean(d^2) - lambda mean(d)^2`` (per image, ``d = log pred - log gt`` over valid pixels) + ``grad_weight`` x
  multi-scale gradient loss (mean |horizontal and vertical differences of d| over valid neighbour pairs, at
  ``grad_scales`` scales each subsampled by 2).
* Segmentation (:class:`~realm_ros.models.heads.SegmentationHead` on DUNE's DINOv2 projector output): multi-class
  focal loss (gamma) weighted per class + class-weighted soft Dice; label 255 (``ignore_index``) excluded.
  The class-weight vector is static: from the configuration, or median-frequency balancing of the training labels.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .feature_cache import FeatureCache
from .trainer import TrainTask

__all__ = ['scale_invariant_log_loss', 'multiscale_gradient_loss', 'depth_loss', 'focal_loss', 'dice_loss',
           'segmentation_loss', 'median_frequency_weights', 'HeadTask', 'depth_valid_mask']


# ====================================================================================================== depth
def depth_valid_mask(target: torch.Tensor) -> torch.Tensor:
    """Valid ground-truth pixels: finite and > 0 (NaN/inf/0 mean missing)."""
    return torch.isfinite(target) & (target > 0)


def scale_invariant_log_loss(log_diff: torch.Tensor, valid: torch.Tensor, lam: float) -> torch.Tensor:
    """Mean over images (with >= 1 valid pixel) of ``mean(d^2) - lam * mean(d)^2`` over valid pixels."""
    v = valid.float()
    n = v.flatten(1).sum(1)
    d = torch.where(valid, log_diff, torch.zeros_like(log_diff))
    s1 = d.flatten(1).sum(1)
    s2 = (d * d).flatten(1).sum(1)
    has = n > 0
    if not bool(has.any()):
        return log_diff.sum() * 0.0
    n_ = n.clamp_min(1.0)
    per = s2 / n_ - lam * (s1 / n_) ** 2
    return per[has].mean()


def multiscale_gradient_loss(log_diff: torch.Tensor, valid: torch.Tensor, scales: int) -> torch.Tensor:
    """Sum over scales of the mean |dx| + |dy| of ``log_diff`` over valid neighbour pairs (subsampled by 2^k)."""
    total = log_diff.sum() * 0.0
    for k in range(scales):
        step = 2 ** k
        d = log_diff[..., ::step, ::step]
        m = valid[..., ::step, ::step]
        if d.shape[-1] < 2 and d.shape[-2] < 2:
            break
        mx = m[..., :, 1:] & m[..., :, :-1]
        my = m[..., 1:, :] & m[..., :-1, :]
        gx = (d[..., :, 1:] - d[..., :, :-1]).abs()
        gy = (d[..., 1:, :] - d[..., :-1, :]).abs()
        count = mx.sum() + my.sum()
        if int(count) == 0:
            continue
        total = total + (torch.where(mx, gx, torch.zeros_like(gx)).sum()
                         + torch.where(my, gy, torch.zeros_like(gy)).sum()) / count
    return total


def depth_loss(pred: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float, si_weight: float,
               si_lambda: float, grad_weight: float, grad_scales: int) -> Dict[str, torch.Tensor]:
    """Depth loss terms for prediction / target (B, 1, H, W) metres. Keys: ``si``, ``grad``, ``loss``, ``valid``."""
    valid = depth_valid_mask(target)
    tgt = torch.where(valid, target, torch.ones_like(target)).clamp(min_depth, max_depth)
    log_diff = torch.log(pred.float().clamp_min(1e-3)) - torch.log(tgt.float())
    log_diff = torch.where(valid, log_diff, torch.zeros_like(log_diff))
    si = scale_invariant_log_loss(log_diff, valid, si_lambda)
    grad = multiscale_gradient_loss(log_diff, valid, grad_scales)
    return {'si': si, 'grad': grad, 'loss': si_weight * si + grad_weight * grad,
            'valid_fraction': valid.float().mean().detach()}


# ====================================================================================================== segmentation
def focal_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, gamma: float,
               ignore_index: int) -> torch.Tensor:
    """Class-weighted multi-class focal loss ``-w_y (1 - p_y)^gamma log p_y``, averaged over labelled pixels."""
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    logp = F.log_softmax(logits.float(), dim=1)
    logp_y = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    p_y = logp_y.exp()
    w = weights.to(logits.device)[safe]
    loss = -w * (1.0 - p_y).pow(gamma) * logp_y
    n = valid.sum()
    if int(n) == 0:
        return logits.sum() * 0.0
    return torch.where(valid, loss, torch.zeros_like(loss)).sum() / n


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, ignore_index: int,
              eps: float = 1.0) -> torch.Tensor:
    """Class-weighted soft Dice loss ``sum_c w_c (1 - dice_c) / sum_c w_c`` over labelled pixels of the batch."""
    c = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1).float()
    safe = torch.where(labels != ignore_index, labels, torch.zeros_like(labels)).long()
    probs = F.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(safe, c).permute(0, 3, 1, 2).float() * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + eps) / (denom + eps)
    w = weights.to(logits.device).float()
    return ((1.0 - dice) * w).sum() / w.sum().clamp_min(1e-12)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, focal_weight: float,
                      gamma: float, dice_weight: float, ignore_index: int) -> Dict[str, torch.Tensor]:
    """Focal + Dice terms for logits (B, C, H, W) and labels (B, H, W)."""
    fl = focal_loss(logits, labels, weights, gamma, ignore_index)
    dl = dice_loss(logits, labels, weights, ignore_index)
    return {'focal': fl, 'dice': dl, 'loss': focal_weight * fl + dice_weight * dl}


def median_frequency_weights(counts: np.ndarray, clip: Sequence[float] = (0.1, 10.0)) -> List[float]:
    """Median-frequency balancing ``median(f) / f_c`` over classes present; absent classes get 1; clipped."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return [1.0] * len(counts)
    freq = counts / total
    present = freq > 0
    med = float(np.median(freq[present]))
    w = np.ones_like(freq)
    w[present] = med / freq[present]
    return [float(v) for v in np.clip(w, clip[0], clip[1])]


# ====================================================================================================== task
class HeadTask(TrainTask):
    """Train one head on frozen DUNE features.

    Args:
        task: ``'depth'`` or ``'segmentation'``.
        dune: the loaded :class:`~realm_ros.models.dune_model.DuneModel` (frozen here).
        head: the head module to train.
        cfg: :class:`~realm_ros.training.config.HeadsConfig`.
        device: compute device.
        class_weights: static class weights (segmentation).
        caches: optional teacher-feature caches per split.
        export_info: metadata for the exported head checkpoint (``teacher_sha256`` and more).
        fingerprint: what ``--resume`` must find unchanged.
    """

    def __init__(self, task: str, dune: nn.Module, head: nn.Module, cfg: Any, device: torch.device,
                 class_weights: Optional[Sequence[float]], caches: Optional[Mapping[str, FeatureCache]],
                 export_info: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
        self.task = task
        self.name = f'head_{task}'
        self.cfg = cfg
        self.device = device
        self.dune = dune.to(device).eval().requires_grad_(False)
        self.encoder = self.dune.encoder
        self.head = head
        self.wrapped: nn.Module = head
        self.caches = dict(caches or {})
        self.export_info = dict(export_info)
        self._fingerprint = dict(fingerprint)
        self.class_weights = torch.tensor(list(class_weights or [1.0] * cfg.head.classes), dtype=torch.float32)
        self.patch = self.encoder.patch_size

    def module(self) -> nn.Module:
        return self.head

    def set_module(self, module: nn.Module) -> None:
        self.wrapped = module

    # ------------------------------------------------------------------------------------------ features
    def feature_shapes(self, image_size: int) -> Dict[str, tuple]:
        g = image_size // self.patch
        if self.task == 'depth':
            return {'cls': (self.encoder.embed_dim,), 'patch': (g * g, self.encoder.embed_dim)}
        return {'proj': (self.dune.projector.out_dim, g, g)}

    def _features(self, batch: Mapping[str, torch.Tensor], split: str) -> Dict[str, torch.Tensor]:
        rgb = batch['rgb'].to(self.device, non_blocking=True)

        def compute(sel: torch.Tensor) -> Dict[str, torch.Tensor]:
            x = rgb[sel]
            with torch.no_grad():
                if self.task == 'depth':
                    out = self.encoder.forward_features(x)
                    return {'cls': out['x_norm_clstoken'].float(), 'patch': out['x_norm_patchtokens'].float()}
                _, patches = self.dune.get_projector_output(x)
                return {'proj': patches.float()}

        cache = self.caches.get(split)
        if cache is None:
            return compute(torch.ones(rgb.shape[0], dtype=torch.bool, device=self.device))
        return cache.get_or_compute(batch['index'], compute, self.device)

    def _predict(self, feats: Mapping[str, torch.Tensor], size: tuple) -> torch.Tensor:
        if self.task == 'depth':
            g = int(round(feats['patch'].shape[1] ** 0.5))
            return self.wrapped(feats['patch'], feats['cls'], (g, g), out_size=size)
        return self.wrapped(feats['proj'], out_size=size)

    def _target(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Depth (B, 1, S, S) float metres (NaN = invalid) or labels (B, S, S) int64."""
        target = batch['target'].to(self.device, non_blocking=True)
        if self.task == 'depth':
            if target.dim() != 3:
                raise ValueError(f'depth targets must be (B, H, W), got {tuple(target.shape)}')
            return target.float().unsqueeze(1)
        return target.long()

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        if pred.shape[0] != target.shape[0] or pred.shape[-2:] != target.shape[-2:]:
            raise ValueError(f'prediction {tuple(pred.shape)} and target {tuple(target.shape)} do not match')
        if self.task == 'depth':
            c, h = self.cfg.depth_loss, self.cfg.head
            return depth_loss(pred, target, h.min_depth, h.max_depth, c.si_weight, c.si_lambda, c.grad_weight,
                              c.grad_scales)
        c = self.cfg.seg_loss
        return segmentation_loss(pred, target, self.class_weights, c.focal_weight, c.focal_gamma,
                                 c.dice_weight, c.ignore_index)

    # ------------------------------------------------------------------------------------------ TrainTask API
    def train_step(self, batch: Mapping[str, torch.Tensor], epoch: int) -> Dict[str, torch.Tensor]:
        target = self._target(batch)
        feats = self._features(batch, 'train')
        pred = self._predict(feats, tuple(target.shape[-2:]))
        terms = self._loss(pred, target)
        terms['n'] = torch.tensor(float(target.shape[0]))
        return terms

    def val_step(self, batch: Mapping[str, torch.Tensor], epoch: int) -> Dict[str, torch.Tensor]:
        target = self._target(batch)
        feats = self._features(batch, 'val')
        pred = self._predict(feats, tuple(target.shape[-2:]))
        terms = self._loss(pred, target)
        n = target.shape[0]
        out = {'n': torch.tensor(float(n), dtype=torch.float64), 'loss': terms['loss'].detach().double().cpu() * n}
        if self.task == 'depth':
            h = self.cfg.head
            valid = depth_valid_mask(target)
            gt = torch.where(valid, target, torch.ones_like(target)).clamp(h.min_depth, h.max_depth)
            p = pred.float().clamp(h.min_depth, h.max_depth)
            err = (p - gt).abs()
            ratio = torch.maximum(p / gt, gt / p)
            vf = valid.float()
            out.update(abs_err=(err * vf).sum(), abs_rel=(err / gt * vf).sum(),
                       delta1=((ratio < 1.25).float() * vf).sum(), pixels=vf.sum())
        else:
            c = self.cfg.head.classes
            lab = target.long()
            keep = lab != self.cfg.seg_loss.ignore_index
            pr = pred.argmax(1)
            idx = lab[keep].clamp(0, c - 1) * c + pr[keep]
            out['confusion'] = torch.bincount(idx, minlength=c * c).reshape(c, c)
        return {k: v.detach().double().cpu() for k, v in out.items()}

    def val_summary(self, sums: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        n = max(1.0, float(sums['n']))
        res = {'loss': float(sums['loss']) / n}
        if self.task == 'depth':
            px = max(1.0, float(sums['pixels']))
            res.update(abs_error_m=float(sums['abs_err']) / px, abs_rel=float(sums['abs_rel']) / px,
                       delta1=float(sums['delta1']) / px)
        else:
            from realm_ros.common.metrics import segmentation_scores
            scores = segmentation_scores(sums['confusion'].numpy())
            res.update(accuracy=scores['accuracy'], miou=scores['miou'])
        return res

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.head.load_state_dict(dict(state), strict=True)

    def fingerprint(self) -> Dict[str, Any]:
        return dict(self._fingerprint)

    def export(self, out_dir: str, metrics: Mapping[str, Any]) -> str:
        from realm_ros.models.checkpoints import save_head_checkpoint
        from .distill_task import _save_guarded
        name = 'depth_head.safetensors' if self.task == 'depth' else 'segmentation_head.safetensors'
        path = os.path.join(out_dir, name)
        meta = dict(self.export_info)
        meta['metrics'] = dict(metrics)
        sha = meta.pop('teacher_sha256', None)
        _save_guarded(lambda p, h: save_head_checkpoint(p, h, meta, teacher_sha256=sha), path, self.head)
        return path
