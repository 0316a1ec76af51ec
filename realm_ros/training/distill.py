"""REALM distillation objective and curricula (docs/models.md#distillation).

* :func:`token_loss` - per-token weighted sum of an L1-type distance, the cosine distance and the MSE between student
  and teacher *normalised* tokens (``x_norm_clstoken``, ``x_norm_patchtokens``).
* :func:`event_occupancy_mask` - the base spatial mask: patches with at least one event (voxel grid collapsed over its
  temporal bins, max-pooled to the token grid, binarised).
* :func:`dilate_token_mask` - dilation by ``r`` patches = 3x3 max-pool, stride 1, padding 1, applied ``r`` times.
* :func:`mask_dilation_at` / :func:`token_drop_at` - the epoch schedules (dilation 2/4/6 patches from epochs 10/15/20,
  token drop 30 % from epoch 8 in the paper; both configurable, epochs 0-based).
* :class:`DistillLoss` - the full objective: CLS always supervised, patch tokens averaged over the masked patches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ['token_loss', 'event_occupancy_mask', 'dilate_token_mask', 'mask_dilation_at', 'token_drop_at',
           'DistillLoss', 'LossWeights', 'token_metrics']


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three per-token terms and of the CLS / patch parts."""
    l1: float = 1.0
    cosine: float = 1.0
    mse: float = 1.0
    cls: float = 1.0
    patch: float = 1.0
    l1_beta: float = 0.0  # 0 = L1, > 0 = smooth-L1 with this transition point


def token_loss(student: torch.Tensor, teacher: torch.Tensor, weights: LossWeights) -> Dict[str, torch.Tensor]:
    """Per-token losses over the channel dimension (last axis) of (..., D) tensors.

    Returns a dict of tensors of shape ``student.shape[:-1]``: ``l1`` (mean |s - t|, or smooth-L1), ``cosine``
    (1 - cos(s, t)), ``mse`` (mean (s - t)^2) and ``total`` = the weighted sum. Computed in float32.
    """
    s = student.float()
    t = teacher.float()
    if weights.l1_beta > 0:
        l1 = F.smooth_l1_loss(s, t, reduction='none', beta=weights.l1_beta).mean(-1)
    else:
        l1 = (s - t).abs().mean(-1)
    cos = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-6)
    mse = (s - t).pow(2).mean(-1)
    total = weights.l1 * l1 + weights.cosine * cos + weights.mse * mse
    return {'l1': l1, 'cosine': cos, 'mse': mse, 'total': total}


def event_occupancy_mask(voxel: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Base spatial mask (B, H/P, W/P) bool: True where the patch holds at least one event.

    ``voxel`` is the network input (B, C, H, W) with H, W multiples of ``patch_size``; pixels without events are exactly
    zero in every bin (also in padding / tiles outside the sensor). The grid is collapsed over C with ``|.|.amax``,
    max-pooled with kernel = stride = ``patch_size`` and binarised.
    """
    if voxel.dim() != 4:
        raise ValueError(f'voxel must be (B, C, H, W), got shape {tuple(voxel.shape)}')
    h, w = voxel.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f'voxel size {h}x{w} is not a multiple of the patch size {patch_size}')
    occupancy = voxel.detach().abs().amax(dim=1, keepdim=True).float()
    pooled = F.max_pool2d(occupancy, kernel_size=patch_size, stride=patch_size)
    return pooled[:, 0] > 0


def dilate_token_mask(mask: torch.Tensor, patches: int) -> torch.Tensor:
    """Dilate a (B, h, w) bool token mask by ``patches`` (3x3 max-pool, stride 1, padding 1, repeated)."""
    if patches <= 0:
        return mask
    m = mask.float().unsqueeze(1)
    for _ in range(int(patches)):
        m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)
    return m[:, 0] > 0


def mask_dilation_at(epoch: int, epochs: Sequence[int], patches: Sequence[int]) -> int:
    """Dilation (patches) in force at 0-based ``epoch``: the entry of the last schedule epoch <= ``epoch``, else 0."""
    r = 0
    for start, value in zip(epochs, patches):
        if epoch >= start:
            r = int(value)
    return r


def token_drop_at(epoch: int, rate: float, start_epoch: int) -> float:
    """Token-drop fraction at 0-based ``epoch``: ``rate`` from ``start_epoch`` on, 0 before."""
    return float(rate) if epoch >= start_epoch else 0.0


def token_metrics(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                  mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Validation sums (not means) for a batch: cosine similarity of CLS and patch tokens, masked L1 and the count.

    Returns float64 scalars ``n`` (samples), ``cls_cos``, ``patch_cos`` (sum over all patches), ``n_patch``,
    ``masked_patch_cos`` and ``masked_l1`` (sum over masked patches of mean |s - t|), ``n_masked``.
    """
    s_cls = student['x_norm_clstoken'].float()
    t_cls = teacher['x_norm_clstoken'].float()
    s_p = student['x_norm_patchtokens'].float()
    t_p = teacher['x_norm_patchtokens'].float()
    m = mask.reshape(mask.shape[0], -1).float()
    cos_p = F.cosine_similarity(s_p, t_p, dim=-1)
    l1_p = (s_p - t_p).abs().mean(-1)
    d = torch.float64
    return {
        'n': torch.tensor(float(s_cls.shape[0]), dtype=d),
        'cls_cos': F.cosine_similarity(s_cls, t_cls, dim=-1).sum().to(d),
        'patch_cos': cos_p.sum().to(d),
        'n_patch': torch.tensor(float(cos_p.numel()), dtype=d),
        'masked_patch_cos': (cos_p * m).sum().to(d),
        'masked_l1': (l1_p * m).sum().to(d),
        'n_masked': m.sum().to(d),
    }


class DistillLoss:
    """REALM objective on normalised tokens under the progressive spatial mask.

    ``loss = w_cls * mean_b token_loss(cls) + w_patch * sum_{b,n} mask * token_loss(patch) / max(1, sum mask)``.
    With ``spatial_mask=False`` every patch is supervised.
    """

    def __init__(self, weights: LossWeights, patch_size: int, spatial_mask: bool = True,
                 dilation_epochs: Sequence[int] = (10, 15, 20), dilation_patches: Sequence[int] = (2, 4, 6)) -> None:
        self.weights = weights
        self.patch_size = int(patch_size)
        self.spatial_mask = bool(spatial_mask)
        self.dilation_epochs = list(dilation_epochs)
        self.dilation_patches = list(dilation_patches)

    def dilation(self, epoch: int) -> int:
        """Mask dilation in patches at ``epoch``."""
        return mask_dilation_at(epoch, self.dilation_epochs, self.dilation_patches)

    def mask(self, voxel: torch.Tensor, epoch: int) -> torch.Tensor:
        """Token mask (B, h, w) for the network input ``voxel`` at ``epoch``."""
        if not self.spatial_mask:
            b, _, h, w = voxel.shape
            return torch.ones(b, h // self.patch_size, w // self.patch_size, dtype=torch.bool, device=voxel.device)
        return dilate_token_mask(event_occupancy_mask(voxel, self.patch_size), self.dilation(epoch))

    def __call__(self, student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                 mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss terms for a batch; ``mask`` (B, h, w) or (B, N) bool. Key ``loss`` is the scalar to minimise.

        With token drop the student dict carries ``keep_index`` (B, K): teacher tokens and mask are gathered there.
        """
        w = self.weights
        t_patch = teacher['x_norm_patchtokens']
        m = mask.reshape(mask.shape[0], -1)
        keep = student.get('keep_index')
        if keep is not None:  # token drop: only the kept tokens have student outputs
            t_patch = torch.gather(t_patch, 1, keep.unsqueeze(-1).expand(-1, -1, t_patch.shape[-1]))
            m = torch.gather(m, 1, keep)
        cls_terms = token_loss(student['x_norm_clstoken'], teacher['x_norm_clstoken'], w)
        patch_terms = token_loss(student['x_norm_patchtokens'], t_patch, w)
        m = m.to(patch_terms['total'].dtype)
        if m.shape != patch_terms['total'].shape:
            raise ValueError(f'mask has {m.shape[1]} tokens per sample, the model {patch_terms["total"].shape[1]}')
        denom = m.sum().clamp_min(1.0)
        out: Dict[str, torch.Tensor] = {}
        for key in ('l1', 'cosine', 'mse', 'total'):
            out[f'cls_{key}'] = cls_terms[key].mean()
            out[f'patch_{key}'] = (patch_terms[key] * m).sum() / denom
        out['loss'] = w.cls * out['cls_total'] + w.patch * out['patch_total']
        out['mask_fraction'] = m.mean().detach()
        return out

    @staticmethod
    def from_config(loss_cfg: Any, patch_size: int) -> 'DistillLoss':
        """Build from a :class:`~realm_ros.training.config.DistillLossConfig`."""
        c = loss_cfg
        weights = LossWeights(l1=c.l1_weight, cosine=c.cosine_weight, mse=c.mse_weight, cls=c.cls_weight,
                              patch=c.patch_weight, l1_beta=c.l1_beta)
        return DistillLoss(weights, patch_size, c.spatial_mask, c.mask_dilation_epochs, c.mask_dilation_patches)
