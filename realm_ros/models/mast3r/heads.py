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
        """The local-feature channels of :meth:`forward` (same values, bit for bit), channels-last (B, 14 nh, 14 nw,
        C): what the descriptors are post-processed from, without the pixel shuffle and the concatenation with the
        DPT's channels (the pose step's decoder outputs, ``geometry.symmetric``).

        The last layer runs with its output features reordered pixel-major (:meth:`_pixel_major_fc2`): each token's
        output is then 14 rows of 14 x C contiguous values, and laying the tokens out as an image copies whole rows
        (C contiguous) instead of gathering every value with a stride of 196 (the shipped miniature head on one core,
        both orders of a 224 x 224 pair: 25.9 -> 21.6 ms median, ``bench_pose_step.py --local-feature-paths``)."""
        nh, nw = grid_hw
        mlp = self.head_local_features
        hidden = mlp.act(mlp.fc1(torch.cat([tokens[0], tokens[-1]], dim=-1)))
        weight, bias = self._pixel_major_fc2()
        local = F.linear(hidden, weight, bias)                        # (B, N, 14 * 14 * C): (i, j, c) per token
        b, c = local.shape[0], local.shape[-1] // PATCH_SIZE ** 2
        # feature (i * 14 + j) * C + c of token (y, x) is pixel (14 y + i, 14 x + j) of channel c
        local = local.view(b, nh, nw, PATCH_SIZE, PATCH_SIZE, c).permute(0, 1, 3, 2, 4, 5)
        return local.reshape(b, nh * PATCH_SIZE, nw * PATCH_SIZE, c)

    def _pixel_major_fc2(self) -> tuple[Tensor, Tensor | None]:
        """``head_local_features.fc2``'s weight and bias with the output features reordered from channel-major
        (c, i, j) to pixel-major (i, j, c); the same rows, so each output value is the same dot product. Cached
        while the parameters are unchanged (same storage, version, device and dtype: an optimiser step, a
        ``load_state_dict`` or ``.to()`` rebuild it)."""
        fc2 = self.head_local_features.fc2
        w, b = fc2.weight, fc2.bias
        training = torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad))
        key = (w.data_ptr(), w._version, w.device, w.dtype, None if b is None else (b.data_ptr(), b._version))
        cached = getattr(self, '_fc2_pixel_major', None)
        if not training and cached is not None and cached[0] == key:
            return cached[1], cached[2]
        c = w.shape[0] // PATCH_SIZE ** 2
        order = torch.arange(w.shape[0], device=w.device).view(c, PATCH_SIZE, PATCH_SIZE).permute(1, 2, 0).reshape(-1)
        if training:
            return w[order], None if b is None else b[order]          # differentiable, not cached
        with torch.no_grad():
            weight = w.detach()[order].contiguous()
            bias = None if b is None else b.detach()[order].contiguous()
        self._fc2_pixel_major = (key, weight, bias)
        return weight, bias
