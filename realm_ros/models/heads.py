"""Task heads on DUNE / REALM tokens: depth bins, DINOv2 projector, segmentation; the token "bridges".

* :class:`DepthBinsHead` (REALM Table S6: 393,728 parameters at 768 -> 256 bins): spatial path 1x1 conv on the patch
  grid, global path linear on the CLS token (broadcast), logits summed, softmax over 256 bins linearly spaced
  1..81 m, depth = expected bin value, bilinear upsampling to the requested size. Reads *normed* tokens.
* :class:`DinoV2Projector` (docs/models.md#dinov2-projector): one DINOv2 block + Linear(768 -> 1024); official keys
  ``blocks.0.*``, ``linear.*``; 7,874,560 parameters without qkv bias (paper checkpoint), 7,876,864 with.
  Reads *un-normed* ``concat(cls, patches)``; returns (cls (B, 1024), patches (B, 1024, H/14, W/14)).
* :class:`SegmentationHead`: 1x1 conv 1024 -> 11 DSEC classes (11,275 parameters) on the projector patch map,
  bilinear upsampling.

Bridges (docs/models.md#bridges). REALM is distilled on *normed* tokens, but the projector and DUNE-MASt3R consume the
teacher's *pre-norm* block output. :func:`bridge_tokens` builds that input from an encoder output dictionary:

* ``'teacher_norm_inverse'`` - ``z = (x_norm - beta_t) / gamma_t`` with the *teacher's* final-norm affine: the
  standardised tokens the teacher's pre-norm output maps to. Any head that starts with a LayerNorm (the DUNE-MASt3R
  wrapper norm) sees - up to the LayerNorm epsilon - exactly what it would see from the teacher's pre-norm tokens with
  the same normed output. Default for the student.
* ``'student_prenorm'`` (alias ``'prenorm'``) - the encoder's own pre-norm block output. Exact for the teacher
  itself (the official path); for the student it relies on the pre-norm scale matching the teacher's.
Which reproduces the teacher's head outputs best is measured, not assumed: pass ``bridge=`` explicitly where it matters.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dune import Block

__all__ = ['DepthBinsHead', 'DinoV2Projector', 'SegmentationHead', 'DSEC_CLASSES', 'DSEC_PALETTE',
           'colorize_segmentation', 'BRIDGES', 'bridge_tokens', 'tokens_to_grid']

#: DSEC-Semantic / ESS 11 classes, in label-id order.
DSEC_CLASSES: Tuple[str, ...] = ('sky', 'building', 'fence', 'person', 'pole', 'road', 'sidewalk', 'vegetation',
                                 'car', 'wall', 'traffic light')
#: RGB colour per class id (Cityscapes colours of the same classes), shape (11, 3) uint8.
DSEC_PALETTE: np.ndarray = np.array([
    (70, 130, 180),   # sky
    (70, 70, 70),     # building
    (190, 153, 153),  # fence
    (220, 20, 60),    # person
    (153, 153, 153),  # pole
    (128, 64, 128),   # road
    (244, 35, 232),   # sidewalk
    (107, 142, 35),   # vegetation
    (0, 0, 142),      # car
    (102, 102, 156),  # wall
    (250, 170, 30),   # traffic light
], dtype=np.uint8)
DSEC_PALETTE.setflags(write=False)

#: Bridge names accepted by :func:`bridge_tokens`.
BRIDGES: Tuple[str, ...] = ('teacher_norm_inverse', 'student_prenorm', 'prenorm')


def colorize_segmentation(ids: np.ndarray, palette: np.ndarray = DSEC_PALETTE) -> np.ndarray:
    """Class-id image (H, W) -> RGB (H, W, 3) uint8; ids outside the palette (e.g. 255 = ignore) become black."""
    ids = np.asarray(ids)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:len(palette)] = palette
    if ids.dtype != np.uint8:
        ids = np.where((ids >= 0) & (ids < 256), ids, 255).astype(np.uint8)
    return np.take(lut, ids, axis=0)


def tokens_to_grid(tokens: torch.Tensor, grid_hw: Tuple[int, int]) -> torch.Tensor:
    """Row-major tokens (B, N, C) -> feature map (B, C, rows, cols)."""
    b, n, c = tokens.shape
    gh, gw = grid_hw
    if n != gh * gw:
        raise ValueError(f'{n} tokens do not form a {gh}x{gw} grid')
    return tokens.transpose(1, 2).reshape(b, c, gh, gw)


def _output_tensor(out: Dict[str, Optional[torch.Tensor]], key: str) -> torch.Tensor:
    """``out[key]``, which must be a tensor (the dictionary also holds optional entries such as ``masks``)."""
    value = out.get(key)
    if value is None:
        raise ValueError(f'encoder output has no tensor {key!r} (keys: {sorted(out)})')
    return value


def bridge_tokens(out: Dict[str, Optional[torch.Tensor]], bridge: str = 'teacher_norm_inverse',
                  norm_weight: Optional[torch.Tensor] = None,
                  norm_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Projector / MASt3R input ``concat(cls, patches)`` (B, 1+N, D) from an encoder output dictionary.

    Args:
        out: ``forward_features``-style dictionary (DUNE or REALM).
        bridge: ``'teacher_norm_inverse'`` (needs the teacher's final-norm ``norm_weight``/``norm_bias``) or
            ``'student_prenorm'``/``'prenorm'`` (the encoder's own pre-norm tokens). See the module docstring.
    DUNE-MASt3R takes the patch part ``[:, 1:]``.
    """
    if bridge in ('student_prenorm', 'prenorm'):
        cls, patches = _output_tensor(out, 'x_prenorm_clstoken'), _output_tensor(out, 'x_prenorm_patchtokens')
    elif bridge == 'teacher_norm_inverse':
        if norm_weight is None or norm_bias is None:
            raise ValueError("bridge 'teacher_norm_inverse' needs the teacher's final-norm weight and bias")
        normed_patches = _output_tensor(out, 'x_norm_patchtokens')
        w = norm_weight.to(normed_patches.dtype)
        w = torch.where(w.abs() < 1e-6, torch.full_like(w, 1e-6) * torch.where(w < 0, -1.0, 1.0), w)
        b = norm_bias.to(w.dtype)
        cls = (_output_tensor(out, 'x_norm_clstoken') - b) / w
        patches = (normed_patches - b) / w
    else:
        raise ValueError(f'unknown bridge {bridge!r}; choose one of {BRIDGES}')
    return torch.cat([cls.unsqueeze(1), patches], dim=1)


class DepthBinsHead(nn.Module):
    """Metric depth from normed tokens by classification over depth bins.

    Args:
        embed_dim: token width (768).
        bins: number of bins (256), centres linearly spaced ``min_depth``..``max_depth`` metres (1..81).
        upsample_logits: if True, bilinearly upsample the bin logits before the softmax (the paper's wording allows
            both); default False upsamples the expected depth (same result on smooth maps, 256x cheaper).
    """

    def __init__(self, embed_dim: int = 768, bins: int = 256, min_depth: float = 1.0, max_depth: float = 81.0,
                 upsample_logits: bool = False) -> None:
        super().__init__()
        if not (0 < min_depth < max_depth) or bins < 2:
            raise ValueError(f'need bins >= 2 and 0 < min_depth < max_depth; got {bins}, {min_depth}, {max_depth}')
        self.embed_dim = embed_dim
        self.num_bins = bins
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.upsample_logits = upsample_logits
        self.conv = nn.Conv2d(embed_dim, bins, kernel_size=1)
        self.linear = nn.Linear(embed_dim, bins)
        self.register_buffer('bin_centers', torch.linspace(min_depth, max_depth, bins), persistent=False)

    def config(self) -> Dict[str, object]:
        return dict(embed_dim=self.embed_dim, bins=self.num_bins, min_depth=self.min_depth,
                    max_depth=self.max_depth, upsample_logits=self.upsample_logits)

    def bin_logits(self, patch_tokens: torch.Tensor, cls_token: torch.Tensor,
                   grid_hw: Tuple[int, int]) -> torch.Tensor:
        """Summed logits (B, bins, rows, cols): conv on the patch grid + linear on CLS broadcast."""
        spatial = self.conv(tokens_to_grid(patch_tokens, grid_hw))
        return spatial + self.linear(cls_token)[:, :, None, None]

    def forward(self, patch_tokens: torch.Tensor, cls_token: torch.Tensor, grid_hw: Tuple[int, int],
                out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Normed patch tokens (B, N, D) and CLS (B, D) -> depth in metres (B, 1, H, W) (``out_size`` or the grid)."""
        logits = self.bin_logits(patch_tokens, cls_token, grid_hw)
        centers = self.bin_centers.to(logits.dtype)[None, :, None, None]
        if out_size is not None and self.upsample_logits:
            logits = F.interpolate(logits, size=tuple(out_size), mode='bilinear', align_corners=False)
        depth = (logits.softmax(dim=1) * centers).sum(dim=1, keepdim=True)
        if out_size is not None and not self.upsample_logits:
            depth = F.interpolate(depth, size=tuple(out_size), mode='bilinear', align_corners=False)
        return depth


class DinoV2Projector(nn.Module):
    """DUNE ``TransformerProjector`` for the DINOv2 teacher: ``scale * linear(blocks(tokens))``.

    Args:
        embed_dim: encoder width (768). out_dim: teacher width (1024). num_heads: encoder heads (12; 6 for ViT-S).
        num_blocks: projector blocks (1). qkv_bias: False for the paper checkpoint, True for the public default.
        scale: output scale; ``0.0`` means a learnable ``scale`` parameter (official convention).
    """

    def __init__(self, embed_dim: int = 768, out_dim: int = 1024, num_heads: int = 12, num_blocks: int = 1,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, layerscale_init: Optional[float] = 1e-4,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias,
                                           layerscale_init=layerscale_init) for _ in range(num_blocks)])
        self.linear = nn.Linear(embed_dim, out_dim)
        self.learnable_scale = scale == 0.0
        if self.learnable_scale:
            self.scale = nn.Parameter(torch.ones(1))
        else:
            self.scale = float(scale)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def config(self) -> Dict[str, object]:
        return dict(embed_dim=self.embed_dim, out_dim=self.out_dim, num_heads=self.num_heads,
                    num_blocks=len(self.blocks), qkv_bias=self.qkv_bias,
                    scale=0.0 if self.learnable_scale else self.scale)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1+N, D) un-normed encoder tokens -> (B, 1+N, out_dim)."""
        x = tokens
        for block in self.blocks:
            x = block(x)
        return self.scale * self.linear(x)

    def forward(self, tokens: torch.Tensor, grid_hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, 1+N, D) -> (cls (B, out_dim), patches (B, out_dim, rows, cols))."""
        out = self.project(tokens)
        return out[:, 0], tokens_to_grid(out[:, 1:], grid_hw)


class SegmentationHead(nn.Module):
    """1x1 conv classifier on the projector patch map + bilinear upsampling (11,275 parameters at 1024 -> 11)."""

    def __init__(self, in_dim: int = 1024, classes: int = 11, class_names: Sequence[str] = DSEC_CLASSES) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = classes
        self.class_names = tuple(class_names) if len(class_names) == classes else tuple(
            f'class_{i}' for i in range(classes))
        self.conv = nn.Conv2d(in_dim, classes, kernel_size=1)

    def config(self) -> Dict[str, object]:
        return dict(in_dim=self.in_dim, classes=self.num_classes, class_names=list(self.class_names))

    def forward(self, features: torch.Tensor, out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Projector patch map (B, in_dim, rows, cols) -> class logits (B, classes, H, W)."""
        logits = self.conv(features)
        if out_size is not None:
            logits = F.interpolate(logits, size=tuple(out_size), mode='bilinear', align_corners=False)
        return logits
