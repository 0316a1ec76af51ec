"""DUNE-MASt3R architecture configuration (:class:`DuneMast3rConfig`), its constants and its checkpoint error.

The configuration writes itself back as the checkpoint's model string (:meth:`DuneMast3rConfig.to_model_string`);
:mod:`.model_string` parses one. Layout and keywords: docs/models.md#checkpoint-and-model-string.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checkpoints import CheckpointError

PATCH_SIZE = 14
"""Token grid pitch in pixels (DUNE ViT/14; the wrapper forces MASt3R's patch size to 14)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INF = float('inf')
Mode = tuple  # ('exp', vmin, vmax) or ('linear'|'square'|'sigmoid', vmin, vmax)


class DuneMast3rCheckpointError(CheckpointError):
    """A DUNE-MASt3R checkpoint (or its model string) is incomplete or does not match the architecture.

    Unreadable files raise the base :class:`~realm_ros.models.checkpoints.CheckpointError` of the shared reader.
    """



@dataclass(frozen=True)
class DuneMast3rConfig:
    """Architecture and post-processing of a DUNE-MASt3R decoder.

    ``vit_base()`` / ``vit_small()`` give the published configurations (docs/models.md#dune-mast3r-decoder);
    ``tiny()`` a miniature one for tests and the simulated world. ``dpt_feature_dim``, ``dpt_layer_dims`` and
    ``local_mlp_ratio`` are fixed (256, (96, 192, 384, 768), 4) in the official model; they are only configurable for
    miniature models and are written to the model string as ``realm_*`` keywords when they differ from the official
    values.
    """

    enc_embed_dim: int = 768
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    norm_im2_in_dec: bool = True
    desc_dim: int = 24
    two_confs: bool = True
    depth_mode: Mode = ('exp', -_INF, _INF)
    conf_mode: Mode | None = ('exp', 1.0, _INF)
    desc_mode: str = 'norm'
    desc_conf_mode: Mode | None = ('exp', 0.0, _INF)
    dpt_feature_dim: int = 256
    dpt_layer_dims: tuple[int, ...] = (96, 192, 384, 768)
    local_mlp_ratio: float = 4.0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.dec_embed_dim % self.dec_num_heads:
            raise ValueError(f'dec_embed_dim {self.dec_embed_dim} is not divisible by '
                             f'dec_num_heads {self.dec_num_heads}')
        if (self.dec_embed_dim // self.dec_num_heads) % 4:
            raise ValueError('2D RoPE needs a head dimension divisible by 4, got '
                             f'{self.dec_embed_dim // self.dec_num_heads}')
        if self.dec_depth < 1:
            raise ValueError(f'dec_depth must be >= 1, got {self.dec_depth}')
        if len(self.dpt_layer_dims) != 4:
            raise ValueError(f'dpt_layer_dims needs 4 entries, got {self.dpt_layer_dims}')
        for name in ('depth_mode', 'conf_mode', 'desc_conf_mode'):
            mode = getattr(self, name)
            if mode is not None:
                _check_mode(name, mode)
        if self.depth_mode[0] not in ('linear', 'square', 'exp'):
            raise ValueError(f'unsupported depth_mode {self.depth_mode!r}')
        if not (self.depth_mode[1] == -_INF and self.depth_mode[2] == _INF):
            raise ValueError(f'depth_mode {self.depth_mode!r}: only unbounded depth modes exist in MASt3R')
        for name in ('conf_mode', 'desc_conf_mode'):
            mode = getattr(self, name)
            if mode is not None and mode[0] not in ('exp', 'sigmoid'):
                raise ValueError(f'unsupported {name} {mode!r}')
        if self.desc_mode not in ('norm', 'none'):
            raise ValueError(f'unsupported desc_mode {self.desc_mode!r}')

    # -- derived quantities
    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """DPT hook indices into the per-view list [normed encoder tokens, block 1, ..., dec_norm(block d)]."""
        d = self.dec_depth
        return (0, d * 2 // 4, d * 3 // 4, d)

    @property
    def has_conf(self) -> bool:
        return self.conf_mode is not None

    @property
    def effective_desc_conf_mode(self) -> Mode | None:
        """``desc_conf_mode`` falls back to ``conf_mode`` when the string does not set it."""
        return self.desc_conf_mode if self.desc_conf_mode is not None else self.conf_mode

    @property
    def local_feature_channels(self) -> int:
        return self.desc_dim + int(self.two_confs)

    # -- presets
    @classmethod
    def vit_base(cls, **overrides: Any) -> DuneMast3rConfig:
        """``dunemast3r_cvpr25_vitbase.pth`` (inferred official string, docs/models.md#checkpoint-and-model-string)."""
        return cls(**overrides)

    @classmethod
    def vit_small(cls, **overrides: Any) -> DuneMast3rConfig:
        """``dunemast3r_cvpr25_vitsmall.pth``: encoder width 384, same decoder."""
        return cls(**{'enc_embed_dim': 384, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> DuneMast3rConfig:
        """Miniature decoder for tests and the simulated world (ViT-Ti/14 encoder width 192)."""
        base: dict[str, Any] = dict(enc_embed_dim=192, dec_embed_dim=192, dec_depth=2, dec_num_heads=3,
                                    dpt_feature_dim=32, dpt_layer_dims=(16, 32, 64, 128), local_mlp_ratio=1.0)
        base.update(overrides)
        return cls(**base)

    def to_model_string(self) -> str:
        """The ``mast3r_model_str`` stored in a checkpoint (official keywords; ``realm_*`` ones for miniature dims)."""
        def fmt(v: Any) -> str:
            if isinstance(v, tuple):
                return '(' + ', '.join(fmt(x) for x in v) + (',)' if len(v) == 1 else ')')
            if isinstance(v, float) and math.isinf(v):
                return 'inf' if v > 0 else '-inf'
            return repr(v)

        rope = f'RoPE{self.rope_freq:g}'
        kw: list[tuple[str, Any]] = [
            ('enc_depth', 0), ('dec_depth', self.dec_depth), ('enc_embed_dim', self.enc_embed_dim),
            ('dec_embed_dim', self.dec_embed_dim), ('enc_num_heads', max(1, self.enc_embed_dim // 64)),
            ('dec_num_heads', self.dec_num_heads), ('pos_embed', rope), ('patch_embed_cls', 'PatchEmbedDust3R'),
            ('img_size', (518, 518)), ('head_type', 'catmlp+dpt'), ('output_mode', f'pts3d+desc{self.desc_dim}'),
            ('depth_mode', self.depth_mode), ('conf_mode', self.conf_mode), ('two_confs', self.two_confs),
        ]
        if self.desc_conf_mode is not None:
            kw.append(('desc_conf_mode', self.desc_conf_mode))
        if self.mlp_ratio != 4.0:
            kw.append(('mlp_ratio', self.mlp_ratio))
        if not self.norm_im2_in_dec:
            kw.append(('norm_im2_in_dec', False))
        if self.desc_mode != 'norm':
            kw.append(('desc_mode', self.desc_mode))
        if self.dpt_feature_dim != 256:
            kw.append(('realm_dpt_feature_dim', self.dpt_feature_dim))
        if tuple(self.dpt_layer_dims) != (96, 192, 384, 768):
            kw.append(('realm_dpt_layer_dims', tuple(self.dpt_layer_dims)))
        if self.local_mlp_ratio != 4.0:
            kw.append(('realm_local_mlp_ratio', self.local_mlp_ratio))
        return 'AsymmetricMASt3R(' + ', '.join(f'{k}={fmt(v)}' for k, v in kw) + ')'


def _check_mode(name: str, mode: Any) -> None:
    if not (isinstance(mode, tuple) and len(mode) == 3 and isinstance(mode[0], str)
            and all(isinstance(v, (int, float)) for v in mode[1:])):
        raise ValueError(f'{name} must be a (str, number, number) tuple, got {mode!r}')
