"""REALM voxel embedder: event voxel grid (B, bins, H, W) -> token grid (B, grid*grid, embed_dim).

The paper fixes the structure (docs/models.md#voxel-embedder) - conv stem, three progressive downsampling stages of
residual encoder blocks, projection to the embedding width, adaptive pooling to the token grid - and the size (5,232,832
parameters) but not the widths. The defaults chosen here:

    stem     Conv3x3(5 -> 16, stride 1) + LN + GELU                             at H x W      (448 x 448)
    stage 1  ResBlock(16 -> 64, stride 2)                                      at H/2         (224)
    stage 2  ResBlock(64 -> 128, stride 2) + 1 x ResBlock(128)                 at H/4         (112)
    stage 3  ResBlock(128 -> 256, stride 2) + 3 x ResBlock(256)                at H/8         (56)
    proj     Conv1x1(256 -> 768, bias)
    pool     AdaptiveAvgPool2d(32 x 32) -> flatten row-major -> (B, 1024, 768)

= **5,232,240** parameters (0.011 % below the paper's 5,232,832; an exact match needs irregular widths). Most weights
sit in the lowest-resolution stage, which keeps the cost near the minimum for this parameter budget (~23 GMAC at 448).
ResBlock = Conv3x3(stride s) -> LN -> GELU -> Conv3x3 -> LN (zero-initialised gamma), plus a Conv1x1(stride s) + LN
shortcut when the shape changes, then GELU. LN = per-pixel LayerNorm over channels (:class:`LayerNorm2d`: local and
batch independent, so a token depends only on nearby events). Convolutions have no bias (a norm follows each one).

The miniature configuration (:data:`TINY_EMBEDDER`) maps 224 x 224 to a 16 x 16 grid of 192-d tokens.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, TypedDict, Union

import torch
from torch import nn

__all__ = ['VoxelEmbedder', 'ResidualBlock', 'DEFAULT_WIDTHS', 'DEFAULT_BLOCKS', 'TINY_EMBEDDER',
           'PAPER_EMBEDDER_PARAMS']

#: Stem width followed by the three stage widths.
DEFAULT_WIDTHS: Tuple[int, int, int, int] = (16, 64, 128, 256)
#: Residual blocks per stage (the first of each stage downsamples by 2).
DEFAULT_BLOCKS: Tuple[int, int, int] = (1, 2, 4)
#: Parameter count printed in REALM Table S6.
PAPER_EMBEDDER_PARAMS = 5_232_832


class EmbedderParams(TypedDict):
    """:class:`VoxelEmbedder` keyword arguments (``VoxelEmbedder(**params)``)."""

    in_channels: int
    embed_dim: int
    grid_size: int
    widths: Tuple[int, int, int, int]
    blocks: Tuple[int, int, int]


#: Miniature-world configuration (teacher ViT-Ti/14 at 224 x 224 -> 16 x 16 tokens of width 192).
TINY_EMBEDDER = EmbedderParams(in_channels=5, embed_dim=192, grid_size=16, widths=(16, 32, 64, 128), blocks=(1, 1, 2))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of every pixel of a (B, C, H, W) map (per-pixel, batch independent).

    Unlike BatchNorm it does not depend on the batch, and unlike GroupNorm it does not couple distant pixels through
    per-image statistics: a token only depends on the events in its receptive field.

    ``eps`` is 1e-2, not the usual 1e-6: event voxel grids are mostly empty, and at an empty pixel the (bias-free)
    convolutions give an all-zero channel vector whose variance is 0, so the normalisation's gradient scales with
    ``1/sqrt(eps)`` and compounds over the stacked blocks. With 1e-6 the gradient norm of the embedder on a 3 %-occupied
    voxel grid is ~4e4 (grad-clipping then freezes everything else); with 1e-2 it is ~5e-2
    (``test_models_embedder_gradients_bounded_on_sparse_events``).
    """

    def __init__(self, channels: int, eps: float = 1e-2) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if not torch.is_grad_enabled():
            # inference: the permuted view is already a channels-last (B, C, H, W) tensor, what the next convolution
            # wants; making it NCHW-contiguous cost ~10 % of the miniature encoder (and the conv converts it back)
            return y
        # contiguous(): torch 2.13's CPU backward of a strided conv fed by a permuted view segfaults for some widths
        return y.contiguous()


class ResidualBlock(nn.Module):
    """Basic residual block (two 3x3 convolutions) with an optional strided 1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = LayerNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(out_channels)
        self.act = nn.GELU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          LayerNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        nn.init.zeros_(self.norm2.weight)  # each block starts as (projected) identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class VoxelEmbedder(nn.Module):
    """Convolutional event embedder replacing DUNE's patch embedding.

    Args:
        in_channels: voxel-grid temporal bins (5).
        embed_dim: output token width (768 for ViT-B, 192 for the miniature ViT-Ti).
        grid_size: output token grid, an int (square) or (rows, cols); 32 for 448 x 448 input.
        widths: stem width and the three stage widths.
        blocks: residual blocks per stage (>= 1 each).

    ``forward(voxel (B, in_channels, H, W)) -> (B, rows*cols, embed_dim)`` tokens in row-major order (matching the
    ViT patch order). H and W must be at least 8 x the grid so that pooling only averages.
    """

    def __init__(self, in_channels: int = 5, embed_dim: int = 768, grid_size: Union[int, Sequence[int]] = 32,
                 widths: Sequence[int] = DEFAULT_WIDTHS, blocks: Sequence[int] = DEFAULT_BLOCKS) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        blocks = tuple(int(b) for b in blocks)
        if len(widths) != 4 or len(blocks) != 3 or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f'widths must be (stem, s1, s2, s3) and blocks three counts >= 1; got {widths}, {blocks}')
        grid = (int(grid_size), int(grid_size)) if isinstance(grid_size, int) else tuple(int(g) for g in grid_size)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f'grid_size must be a positive int or (rows, cols), got {grid_size!r}')
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.grid_size = grid
        self.widths = widths
        self.blocks = blocks

        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  LayerNorm2d(widths[0]), nn.GELU())
        stages = []
        prev = widths[0]
        for width, count in zip(widths[1:], blocks):
            layers = [ResidualBlock(prev, width, stride=2)]
            layers += [ResidualBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(prev, embed_dim, 1)
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def config(self) -> Dict[str, object]:
        """JSON-serialisable constructor arguments (stored in REALM checkpoint metadata)."""
        return dict(in_channels=self.in_channels, embed_dim=self.embed_dim, grid_size=list(self.grid_size),
                    widths=list(self.widths), blocks=list(self.blocks))

    def forward(self, voxel: torch.Tensor) -> torch.Tensor:
        if voxel.dim() != 4 or voxel.shape[1] != self.in_channels:
            raise ValueError(f'voxel input must be (B, {self.in_channels}, H, W), got shape {tuple(voxel.shape)}')
        h, w = voxel.shape[-2:]
        if h < 8 * self.grid_size[0] or w < 8 * self.grid_size[1]:
            raise ValueError(f'voxel input {h}x{w} is too small for a {self.grid_size[0]}x{self.grid_size[1]} token '
                             f'grid (needs at least {8 * self.grid_size[0]}x{8 * self.grid_size[1]})')
        # weights converted to another dtype (``embedder.to(torch.bfloat16)``: precision bf16-embedder) take the
        # voxel grid in that dtype and give tokens in the input's dtype back
        cast = voxel.dtype != self.proj.weight.dtype and not torch.is_autocast_enabled(voxel.device.type)
        x = voxel.to(self.proj.weight.dtype) if cast else voxel
        # channels-last keeps the per-pixel LayerNorms contiguous (and suits oneDNN / cuDNN convolutions)
        x = self.proj(self.stages(self.stem(x.contiguous(memory_format=torch.channels_last))))
        tokens = self.pool(x).flatten(2).transpose(1, 2)
        return tokens.to(voxel.dtype) if cast else tokens
