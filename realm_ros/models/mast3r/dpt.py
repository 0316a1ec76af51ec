"""DPT regression head of DUNE-MASt3R (dense points + confidence from four hooked decoder layers).

State-dict keys: ``act_postprocess.*``, ``scratch.layer{1..4}_rn`` plus the alias ``scratch.layer_rn.*`` (same
tensors), ``scratch.refinenet*``, ``head.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .config import PATCH_SIZE


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """out = RCU2(x0 [+ RCU1(x1)]) -> bilinear x2 (align_corners=True) -> 1x1 out_conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)   # official key names (camelCase)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        out = x if skip is None else x + self.resConfUnit1(skip)
        out = self.resConfUnit2(out)
        out = F.interpolate(out, scale_factor=2, mode='bilinear', align_corners=True)
        return self.out_conv(out)


class Interpolate(nn.Module):
    """Bilinear resize by a fixed factor (align_corners=True); no parameters."""

    def __init__(self, scale_factor: float) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def extra_repr(self) -> str:
        return f'scale_factor={self.scale_factor}'

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode='bilinear', align_corners=True)


class DPTScratch(nn.Module):
    """Projection convs to ``features`` channels (plus their official alias ``layer_rn``) and the 4 fusion blocks."""

    def __init__(self, layer_dims: Sequence[int], features: int) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(layer_dims[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(layer_dims[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(layer_dims[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(layer_dims[3], features, 3, padding=1, bias=False)
        # Same modules under a second name: the official state dict holds both key sets (same tensors).
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features)


class DPTOutputAdapter(nn.Module):
    """DPT regression head for 14-px tokens: 4 hooked token maps -> (B, num_channels, 14*nh, 14*nw)."""

    def __init__(self, dim_tokens: Sequence[int], hooks: Sequence[int], num_channels: int = 4,
                 feature_dim: int = 256, layer_dims: Sequence[int] = (96, 192, 384, 768),
                 last_dim: int | None = None) -> None:
        super().__init__()
        last_dim = feature_dim // 2 if last_dim is None else last_dim
        self.hooks = tuple(hooks)
        self.scratch = DPTScratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            Interpolate(2 * PATCH_SIZE / 16),          # the DUNE wrapper's 2 * 14/16 = 1.75
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(last_dim, num_channels, 1),
        )
        ld = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dim_tokens[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dim_tokens[2], ld[2], 1)),
            nn.Sequential(nn.Conv2d(dim_tokens[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, stride=2, padding=1)),
        ])

    def forward(self, tokens: Sequence[Tensor], grid_hw: tuple[int, int]) -> Tensor:
        nh, nw = grid_hw
        maps = []
        for idx, hook in enumerate(self.hooks):
            t = tokens[hook]
            t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], nh, nw)
            maps.append(self.scratch.layer_rn[idx](self.act_postprocess[idx](t)))
        l1, l2, l3, l4 = maps
        p4 = self.scratch.refinenet4(l4)[:, :, :l3.shape[2], :l3.shape[3]]
        p3 = self.scratch.refinenet3(p4, l3)
        p2 = self.scratch.refinenet2(p3, l2)
        p1 = self.scratch.refinenet1(p2, l1)
        return self.head(p1)
