"""The ``catmlp+dpt`` downstream head of DUNE-MASt3R: DPT (points, confidence) + local-feature MLP (descriptors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Mlp
from .config import PATCH_SIZE, DuneMast3rConfig
from .dpt import DPTOutputAdapter


class CatMlpDptHead(nn.Module):
    """``Cat_MLP_LocalFeatures_DPT_Pts3d`` without post-processing: raw (B, 4 + desc_dim + two_confs, H, W)."""

    def __init__(self, config: DuneMast3rConfig) -> None:
        super().__init__()
        c = config
        self.dpt = DPTOutputAdapter(
            dim_tokens=(c.enc_embed_dim, c.dec_embed_dim, c.dec_embed_dim, c.dec_embed_dim), hooks=c.hooks,
            num_channels=3 + int(c.has_conf), feature_dim=c.dpt_feature_dim, layer_dims=c.dpt_layer_dims)
        idim = c.enc_embed_dim + c.dec_embed_dim
        self.head_local_features = Mlp(idim, int(c.local_mlp_ratio * idim), c.local_feature_channels * PATCH_SIZE ** 2)

    def forward(self, tokens: Sequence[Tensor], grid_hw: tuple[int, int]) -> Tensor:
        nh, nw = grid_hw
        dense = self.dpt(tokens, grid_hw)
        cat = torch.cat([tokens[0], tokens[-1]], dim=-1)
        local = self.head_local_features(cat)                         # (B, N, C * 14 * 14)
        b = local.shape[0]
        local = local.transpose(-1, -2).reshape(b, -1, nh, nw)
        local = F.pixel_shuffle(local, PATCH_SIZE)                    # (B, C, 14 nh, 14 nw)
        return torch.cat([dense, local], dim=1)

    def local_feature_map(self, tokens: Sequence[Tensor], grid_hw: tuple[int, int]) -> Tensor:
        """The local-feature channels of :meth:`forward` (same values), channels-last (B, 14 nh, 14 nw, C), in one
        copy: what the descriptors are post-processed from, without the pixel shuffle and the concatenation with
        the DPT's channels (the pose step's decoder outputs, ``geometry.symmetric``)."""
        nh, nw = grid_hw
        local = self.head_local_features(torch.cat([tokens[0], tokens[-1]], dim=-1))   # (B, N, C * 14 * 14)
        b, c = local.shape[0], local.shape[-1] // PATCH_SIZE ** 2
        # feature index c * 196 + i * 14 + j of token (y, x) is pixel (14 y + i, 14 x + j) of channel c
        local = local.view(b, nh, nw, c, PATCH_SIZE, PATCH_SIZE).permute(0, 1, 4, 2, 5, 3)
        return local.reshape(b, nh * PATCH_SIZE, nw * PATCH_SIZE, c)
