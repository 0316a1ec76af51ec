"""DUNE-MASt3R decoder and heads: a clean-room PyTorch re-implementation of MODEL_SPEC.md section 3.

Data flow (one image pair; every tensor float32 unless the decoder was cast to a lower precision)::

    tokens{1,2} (B, N, enc_dim)   pre-final-norm DUNE block-12 patch tokens (or REALM's stand-ins), row-major 14-px grid
      -> norm (LayerNorm, eps 1e-5)                         = hook 0 of both heads
      -> mast3r.decoder_embed (Linear enc_dim -> dec_dim)
      -> 2 x dec_depth cross-attention DecoderBlocks with 2D RoPE (view 1: dec_blocks, view 2: dec_blocks2;
         both read the previous pair)
      -> mast3r.dec_norm on the last pair
      -> downstream_head{1,2}: DPT on hooks (0, d/2, 3d/4, d) -> pts3d + conf; Cat-MLP on concat(hook 0, last)
         -> pixel shuffle -> desc + desc_conf
      -> post-processing with the modes parsed from the checkpoint's model string

State-dict keys mirror the official ``AsymmetricMASt3RWithDUNEBackbone`` (without ``dune_backbone.*``), including the
stored-but-unused ``mast3r.patch_embed``, ``mast3r.enc_norm``, ``mast3r.mask_token``, the DPT alias names
``scratch.layer_rn.{0..3}`` and ``refinenet4.resConfUnit1``; ``imagenet_mean/std`` are optional in a file.

Public API: :class:`DuneMast3rConfig`, :class:`DuneMast3rDecoder` (``forward(tokens1, tokens2, shape1, shape2)``),
:func:`load_dune_mast3r`, :func:`load_dune_mast3r_backbone`, :func:`save_dune_mast3r`, :func:`parse_mast3r_model_string`, :class:`RoPE2D`,
:func:`patch_positions`, :class:`DuneMast3rCheckpointError`.

The official weights (DUNE-MASt3R) are under non-commercial licences (NLE DUNE / CC BY-NC-SA 4.0); this code copies
none of the reference implementation.
"""

from __future__ import annotations

import ast
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointError

__all__ = [
    'PATCH_SIZE',
    'DuneMast3rCheckpointError',
    'DuneMast3rConfig',
    'DuneMast3rDecoder',
    'RoPE2D',
    'RotaryTables',
    'DecoderBlock',
    'SelfAttention',
    'CrossAttention',
    'Mlp',
    'DPTOutputAdapter',
    'CatMlpDptHead',
    'postprocess_head_output',
    'patch_positions',
    'parse_mast3r_model_string',
    'load_dune_mast3r',
    'load_dune_mast3r_backbone',
    'save_dune_mast3r',
]

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


# ---------------------------------------------------------------------------------------------------------------
# Configuration and the checkpoint's model string

@dataclass(frozen=True)
class DuneMast3rConfig:
    """Architecture and post-processing of a DUNE-MASt3R decoder.

    ``vit_base()`` / ``vit_small()`` give the published configurations (MODEL_SPEC 3.1/3.2); ``tiny()`` a miniature
    one for tests and the simulated world. ``dpt_feature_dim``, ``dpt_layer_dims`` and ``local_mlp_ratio`` are fixed
    (256, (96, 192, 384, 768), 4) in the official model; they are only configurable for miniature models and are
    written to the model string as ``realm_*`` keywords when they differ from the official values.
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
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    local_mlp_ratio: float = 4.0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.dec_embed_dim % self.dec_num_heads:
            raise ValueError(f'dec_embed_dim {self.dec_embed_dim} is not divisible by dec_num_heads {self.dec_num_heads}')
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
        """``dunemast3r_cvpr25_vitbase.pth`` (inferred official string, MODEL_SPEC 3.1)."""
        return cls(**overrides)

    @classmethod
    def vit_small(cls, **overrides: Any) -> DuneMast3rConfig:
        """``dunemast3r_cvpr25_vitsmall.pth``: encoder width 384, same decoder."""
        return cls(**{'enc_embed_dim': 384, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> DuneMast3rConfig:
        """Miniature decoder for tests and the simulated world (ViT-Ti/14 encoder width 192)."""
        base = dict(enc_embed_dim=192, dec_embed_dim=192, dec_depth=2, dec_num_heads=3, dpt_feature_dim=32,
                    dpt_layer_dims=(16, 32, 64, 128), local_mlp_ratio=1.0)
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


class _Symbol(str):
    """A bare name in the model string (e.g. ``patch_embed_cls=PatchEmbedDust3R``); kept as text, never resolved."""


_CONSTANT_NAMES = {'inf': _INF, 'nan': float('nan'), 'True': True, 'False': False, 'None': None}
# Keywords of the reference constructor that do not change weights or outputs of the DUNE-MASt3R decoder.
_IGNORED_KEYWORDS = {'img_size', 'patch_embed_cls', 'freeze', 'landscape_only', 'enc_num_heads', 'mask_ratio',
                     'patch_size', 'norm_layer'}
# Reference constructor defaults (CroCoNet / AsymmetricCroCo3DStereo / AsymmetricMASt3R) for absent keywords.
_REFERENCE_DEFAULTS: dict[str, Any] = {
    'enc_embed_dim': 768, 'enc_depth': 12, 'dec_embed_dim': 512, 'dec_depth': 8, 'dec_num_heads': 16,
    'mlp_ratio': 4.0, 'norm_im2_in_dec': True, 'pos_embed': 'cosine', 'output_mode': 'pts3d', 'head_type': 'linear',
    'depth_mode': ('exp', -_INF, _INF), 'conf_mode': ('exp', 1.0, _INF), 'desc_mode': 'norm', 'two_confs': False,
    'desc_conf_mode': None,
}


def _literal(node: ast.AST, where: str) -> Any:
    """Evaluate a literal sub-expression of the model string without ``eval`` (numbers, strings, tuples, inf)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e, where) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, where)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DuneMast3rCheckpointError(f'model string: unary sign on a non-number in {where}')
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name):
        if node.id in _CONSTANT_NAMES:
            return _CONSTANT_NAMES[node.id]
        return _Symbol(node.id)
    if isinstance(node, ast.Attribute) and node.attr == 'inf' and isinstance(node.value, ast.Name) \
            and node.value.id in ('np', 'numpy', 'math', 'torch'):
        return _INF
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'float' \
            and len(node.args) == 1 and not node.keywords:
        arg = _literal(node.args[0], where)
        if isinstance(arg, str) and arg.strip().lower() in ('inf', '+inf', '-inf', 'infinity', '-infinity', 'nan'):
            return float(arg)
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return float(arg)
    raise DuneMast3rCheckpointError(
        f'model string: unsupported expression {ast.dump(node)[:80]} in {where} (only literals are accepted)')


def parse_mast3r_model_string(model_str: str) -> DuneMast3rConfig:
    """Parse a checkpoint's ``mast3r_model_str`` (``AsymmetricMASt3R(...)``) into a :class:`DuneMast3rConfig`.

    The string is parsed with :mod:`ast` and only literal keyword values are accepted; nothing is evaluated or
    imported. Absent keywords take the reference constructor defaults (so an absent ``desc_conf_mode`` means
    ``conf_mode``; an absent ``two_confs`` means False). Raises :class:`DuneMast3rCheckpointError` for anything the
    DUNE-MASt3R decoder cannot represent (other head types, cosine position embeddings, encoder blocks, ...).
    """
    if not isinstance(model_str, str) or not model_str.strip():
        raise DuneMast3rCheckpointError(f'model string must be a non-empty str, got {type(model_str).__name__}')
    if len(model_str) > 10_000:
        raise DuneMast3rCheckpointError(f'model string is implausibly long ({len(model_str)} characters)')
    try:
        tree = ast.parse(model_str.strip(), mode='eval')
    except SyntaxError as exc:
        raise DuneMast3rCheckpointError(f'model string is not a valid call expression: {exc.msg}') from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise DuneMast3rCheckpointError('model string must be a call such as AsymmetricMASt3R(...)')
    if call.func.id != 'AsymmetricMASt3R':
        raise DuneMast3rCheckpointError(f'model string builds {call.func.id!r}, expected AsymmetricMASt3R')
    if call.args:
        raise DuneMast3rCheckpointError('model string: positional arguments are not supported')
    kw: dict[str, Any] = {}
    for k in call.keywords:
        if k.arg is None:
            raise DuneMast3rCheckpointError('model string: **kwargs expansion is not supported')
        if k.arg in kw:
            raise DuneMast3rCheckpointError(f'model string: keyword {k.arg!r} repeated')
        kw[k.arg] = _literal(k.value, f'keyword {k.arg!r}')

    known = set(_REFERENCE_DEFAULTS) | _IGNORED_KEYWORDS | {
        'enc_depth', 'realm_dpt_feature_dim', 'realm_dpt_layer_dims', 'realm_local_mlp_ratio'}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise DuneMast3rCheckpointError(f'model string: unsupported keyword(s) {unknown}')
    if 'patch_size' in kw and kw['patch_size'] != PATCH_SIZE:
        raise DuneMast3rCheckpointError(f'model string: patch_size={kw["patch_size"]!r}, DUNE-MASt3R uses 14')
    args = {**_REFERENCE_DEFAULTS, **kw}

    if args.get('enc_depth', 12) != 0:
        raise DuneMast3rCheckpointError(
            f'model string: enc_depth={args.get("enc_depth")!r}; the DUNE-MASt3R decoder has no MASt3R encoder blocks '
            '(enc_depth=0)')
    if args['head_type'] != 'catmlp+dpt':
        raise DuneMast3rCheckpointError(f'model string: head_type={args["head_type"]!r}, only catmlp+dpt is supported')
    m = re.fullmatch(r'RoPE(\d+(?:\.\d*)?)', str(args['pos_embed']))
    if not m:
        raise DuneMast3rCheckpointError(f'model string: pos_embed={args["pos_embed"]!r}, only RoPE<freq> is supported')
    m_out = re.fullmatch(r'pts3d\+desc(\d+)', str(args['output_mode']))
    if not m_out:
        raise DuneMast3rCheckpointError(
            f'model string: output_mode={args["output_mode"]!r}, expected pts3d+desc<dim>')

    def mode(name: str) -> Mode | None:
        value = args[name]
        if value is None:
            return None
        if isinstance(value, str):      # e.g. desc_mode=('norm') is just 'norm'
            raise DuneMast3rCheckpointError(f'model string: {name}={value!r} is not a (type, vmin, vmax) tuple')
        if not (isinstance(value, tuple) and len(value) == 3):
            raise DuneMast3rCheckpointError(f'model string: {name}={value!r} is not a (type, vmin, vmax) tuple')
        return (str(value[0]), float(value[1]), float(value[2]))

    desc_mode = args['desc_mode']
    if isinstance(desc_mode, tuple) and len(desc_mode) >= 1:
        desc_mode = desc_mode[0]
    extra = {k: kw[k] for k in sorted(set(kw) & _IGNORED_KEYWORDS)}
    try:
        return DuneMast3rConfig(
            enc_embed_dim=int(args['enc_embed_dim']), dec_embed_dim=int(args['dec_embed_dim']),
            dec_depth=int(args['dec_depth']), dec_num_heads=int(args['dec_num_heads']),
            mlp_ratio=float(args['mlp_ratio']), rope_freq=float(m.group(1)),
            norm_im2_in_dec=bool(args['norm_im2_in_dec']), desc_dim=int(m_out.group(1)),
            two_confs=bool(args['two_confs']), depth_mode=mode('depth_mode'), conf_mode=mode('conf_mode'),
            desc_mode=str(desc_mode), desc_conf_mode=mode('desc_conf_mode'),
            dpt_feature_dim=int(kw.get('realm_dpt_feature_dim', 256)),
            dpt_layer_dims=tuple(int(v) for v in kw.get('realm_dpt_layer_dims', (96, 192, 384, 768))),
            local_mlp_ratio=float(kw.get('realm_local_mlp_ratio', 4.0)),
            extra=extra)
    except (TypeError, ValueError) as exc:
        raise DuneMast3rCheckpointError(f'model string: {exc}') from None


# ---------------------------------------------------------------------------------------------------------------
# 2D rotary position embedding

def patch_positions(batch: int, grid_h: int, grid_w: int, device: torch.device | str | None = None) -> Tensor:
    """Token positions of a row-major ``grid_h x grid_w`` patch grid: int64 (batch, grid_h*grid_w, 2) = (row, col)."""
    ys = torch.arange(grid_h, device=device, dtype=torch.int64)
    xs = torch.arange(grid_w, device=device, dtype=torch.int64)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1).reshape(1, grid_h * grid_w, 2)
    return pos.expand(batch, -1, -1)


class RotaryTables(NamedTuple):
    """Per-token cos/sin tables of one view, shape (B, 1, N, head_dim/2) each, ready to rotate (B, heads, N, .)."""

    cos_y: Tensor
    sin_y: Tensor
    cos_x: Tensor
    sin_x: Tensor


class RoPE2D(nn.Module):
    """2D rotary position embedding (CroCo ``RoPE2D``, frequency base ``base``, F0 = 1), pure PyTorch.

    Each head of dimension D is split in a row half (dims 0..D/2-1, rotated by the token's row) and a column half
    (rotated by its column). For one half u (d = D/2 dims) and integer position p: ``inv_freq[k] = 1/base^(2k/d)``,
    ``theta = p * inv_freq`` (float32), ``cos = cat(cos theta, cos theta)``, ``sin`` likewise and
    ``u' = u * cos + rotate_half(u) * sin`` with ``rotate_half([a, b]) = [-b, a]``.

    The tables are computed in float32 (as the reference does for float32 tokens) and cast to the token dtype.
    No parameters or buffers (nothing in the state dict).
    """

    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = float(base)
        self._cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}

    def extra_repr(self) -> str:
        return f'base={self.base:g}'

    def _table(self, dim: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (dim, length, str(device))
        hit = self._cache.get(key)
        if hit is None:
            inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device).float() / dim))
            t = torch.arange(length, device=device, dtype=torch.float32)
            freqs = t[:, None] * inv_freq[None, :]
            freqs = torch.cat((freqs, freqs), dim=-1)
            hit = (freqs.cos(), freqs.sin())
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def tables(self, positions: Tensor, head_dim: int, max_position: int | None = None,
               dtype: torch.dtype = torch.float32) -> RotaryTables:
        """Gather the tables for ``positions`` (B, N, 2) int64. ``max_position`` (host int) avoids a device sync."""
        if positions.ndim != 3 or positions.shape[-1] != 2:
            raise ValueError(f'positions must be (B, N, 2), got {tuple(positions.shape)}')
        if head_dim % 4:
            raise ValueError(f'head dimension must be divisible by 4 for 2D RoPE, got {head_dim}')
        if max_position is None:
            max_position = int(positions.max()) if positions.numel() else 0
        cos, sin = self._table(head_dim // 2, max_position + 1, positions.device)
        pos_y, pos_x = positions[..., 0], positions[..., 1]
        return RotaryTables(*(F.embedding(p, t)[:, None].to(dtype)
                              for p, t in ((pos_y, cos), (pos_y, sin), (pos_x, cos), (pos_x, sin))))

    @staticmethod
    def _rotate_half(u: Tensor) -> Tensor:
        a, b = u.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)

    @classmethod
    def apply_tables(cls, tokens: Tensor, tables: RotaryTables) -> Tensor:
        """Rotate ``tokens`` (B, heads, N, D) with precomputed :class:`RotaryTables`."""
        y, x = tokens.chunk(2, dim=-1)
        y = y * tables.cos_y + cls._rotate_half(y) * tables.sin_y
        x = x * tables.cos_x + cls._rotate_half(x) * tables.sin_x
        return torch.cat((y, x), dim=-1)

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``tokens`` (B, heads, N, D) by ``positions`` (B, N, 2) int64 (row, col)."""
        return self.apply_tables(tokens, self.tables(positions, tokens.shape[-1], dtype=tokens.dtype))


# ---------------------------------------------------------------------------------------------------------------
# Transformer pieces (keys: attn.qkv/proj, cross_attn.projq/projk/projv/proj, mlp.fc1/fc2, norm1/2/3, norm_y)

def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, use_sdpa: bool) -> Tensor:
    if use_sdpa:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale
    return attn.softmax(dim=-1) @ v


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with 2D RoPE on q and k (explicit float softmax, or SDPA when enabled)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_sdpa = False

    def forward(self, x: Tensor, rope: RotaryTables) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = RoPE2D.apply_tables(q, rope)
        k = RoPE2D.apply_tables(k, rope)
        out = _attend(q, k, v, self.scale, self.use_sdpa)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: q from the view's own tokens (own positions), k/v from the other view's."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_sdpa = False

    def forward(self, query: Tensor, key: Tensor, value: Tensor, qrope: RotaryTables, krope: RotaryTables) -> Tensor:
        b, nq, c = query.shape
        h = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.reshape(b, t.shape[1], h, c // h).permute(0, 2, 1, 3)

        q = RoPE2D.apply_tables(heads(self.projq(query)), qrope)
        k = RoPE2D.apply_tables(heads(self.projk(key)), krope)
        v = heads(self.projv(value))
        out = _attend(q, k, v, self.scale, self.use_sdpa)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the (normed) other view, MLP; LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_mem: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, qkv_bias)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=1e-6) if norm_mem else nn.Identity()

    def forward(self, x: Tensor, y: Tensor, xrope: RotaryTables, yrope: RotaryTables) -> Tensor:
        """Update view tokens ``x`` (B, Nx, C) given the other view ``y`` (B, Ny, C); ``y`` is not modified."""
        x = x + self.attn(self.norm1(x), xrope)
        y_ = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y_, y_, xrope, yrope)
        return x + self.mlp(self.norm3(x))


# ---------------------------------------------------------------------------------------------------------------
# DPT head (keys: act_postprocess.*, scratch.layer{1..4}_rn + alias scratch.layer_rn.*, scratch.refinenet*, head.*)

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
        self.resConfUnit1 = ResidualConvUnit(features)   # noqa: N815 (official key name)
        self.resConfUnit2 = ResidualConvUnit(features)   # noqa: N815

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


def _dense_conf(x: Tensor, mode: Mode) -> Tensor:
    kind, vmin, vmax = mode
    if kind == 'exp':
        return vmin + x.exp().clip(max=vmax - vmin)
    if kind == 'sigmoid':
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f'bad confidence mode {mode!r}')


def postprocess_head_output(raw: Tensor, config: DuneMast3rConfig) -> dict[str, Tensor]:
    """Map raw head channels (B, C, H, W) to ``pts3d``, ``conf``, ``desc``, ``desc_conf`` (channels-last)."""
    fmap = raw.permute(0, 2, 3, 1)
    xyz = fmap[..., 0:3]
    kind = config.depth_mode[0]
    if kind == 'linear':
        pts = xyz
    else:
        d = xyz.norm(dim=-1, keepdim=True)
        unit = xyz / d.clip(min=1e-8)
        pts = unit * (d.square() if kind == 'square' else torch.expm1(d))
    out = {'pts3d': pts}
    start = 3
    if config.conf_mode is not None:
        out['conf'] = _dense_conf(fmap[..., 3], config.conf_mode)
        start = 4
    desc = fmap[..., start:start + config.desc_dim]
    if config.desc_mode == 'norm':
        desc = desc / desc.norm(dim=-1, keepdim=True)
    out['desc'] = desc
    if config.two_confs:
        mode = config.effective_desc_conf_mode
        if mode is None:
            raise ValueError('two_confs needs a desc_conf_mode or conf_mode')
        out['desc_conf'] = _dense_conf(fmap[..., start + config.desc_dim], mode)
    elif 'conf' in out:
        out['desc_conf'] = out['conf'].clone()
    return out


# ---------------------------------------------------------------------------------------------------------------
# The model

class _StoredPatchEmbed(nn.Module):
    """MASt3R's patch embedding: stored in the checkpoint, never used by the DUNE-MASt3R forward."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH_SIZE, stride=PATCH_SIZE)


class Mast3rCore(nn.Module):
    """The ``mast3r`` submodule: decoder (two block stacks) and the two heads; encoder parts stored only."""

    def __init__(self, config: DuneMast3rConfig) -> None:
        super().__init__()
        c = config
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dec_embed_dim))        # unused, stored (decoder width)
        self.patch_embed = _StoredPatchEmbed(c.enc_embed_dim)                      # unused, stored
        self.rope = RoPE2D(c.rope_freq)
        self.enc_blocks = nn.ModuleList()                                           # enc_depth = 0
        self.enc_norm = nn.LayerNorm(c.enc_embed_dim, eps=1e-6)                     # unused, stored
        self.decoder_embed = nn.Linear(c.enc_embed_dim, c.dec_embed_dim)

        def blocks() -> nn.ModuleList:
            return nn.ModuleList([DecoderBlock(c.dec_embed_dim, c.dec_num_heads, c.mlp_ratio, True,
                                               c.norm_im2_in_dec) for _ in range(c.dec_depth)])
        self.dec_blocks = blocks()
        self.dec_norm = nn.LayerNorm(c.dec_embed_dim, eps=1e-6)
        self.dec_blocks2 = blocks()
        self.downstream_head1 = CatMlpDptHead(c)
        self.downstream_head2 = CatMlpDptHead(c)


def _as_hw(shape: Any, name: str) -> tuple[int, int]:
    """Accept (H, W), a (2,) tensor or a (B, 2) ``true_shape`` with identical rows."""
    if isinstance(shape, Tensor):
        s = shape.detach().to('cpu', torch.int64)
        if s.ndim == 2:
            if s.shape[1] != 2 or not bool((s == s[0]).all()):
                raise ValueError(f'{name}: a (B, 2) true_shape must have identical rows, got {s.tolist()}')
            s = s[0]
        shape = s.tolist()
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be an (H, W) pair, got {shape!r}') from None
    if h <= 0 or w <= 0 or h % PATCH_SIZE or w % PATCH_SIZE:
        raise ValueError(f'{name}=({h}, {w}): height and width must be positive multiples of {PATCH_SIZE}')
    return h, w


class DuneMast3rDecoder(nn.Module):
    """DUNE-MASt3R minus the DUNE encoder: wrapper ``norm`` + ``mast3r`` (decoder and heads).

    ``forward(tokens1, tokens2, shape1, shape2)`` takes the encoder tokens of the two views, so any pair of encoders
    with the same width can be mixed (DUNE RGB tokens with REALM event tokens: cross-modal pairs). The two views may
    have different image sizes (the decoder handles it; the official wrapper only accepts equal sizes).
    """

    def __init__(self, config: DuneMast3rConfig | None = None, dune_backbone_name: str = '') -> None:
        super().__init__()
        self.config = config or DuneMast3rConfig.vit_base()
        self.dune_backbone_name = dune_backbone_name
        self.register_buffer('imagenet_mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('imagenet_std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.norm = nn.LayerNorm(self.config.enc_embed_dim, eps=1e-5)
        self.mast3r = Mast3rCore(self.config)

    @property
    def patch_size(self) -> int:
        return PATCH_SIZE

    def set_attention_impl(self, impl: str) -> None:
        """'explicit' (reference float softmax, default) or 'sdpa' (torch fused attention: faster, ~1e-6 different)."""
        if impl not in ('explicit', 'sdpa'):
            raise ValueError(f"attention impl must be 'explicit' or 'sdpa', got {impl!r}")
        for mod in self.modules():
            if isinstance(mod, (SelfAttention, CrossAttention)):
                mod.use_sdpa = impl == 'sdpa'

    def cast_decoder(self, dtype: torch.dtype) -> DuneMast3rDecoder:
        """Run the wrapper norm and the decoder blocks in ``dtype`` (e.g. bf16 on CUDA); heads stay float32."""
        for mod in (self.norm, self.mast3r.decoder_embed, self.mast3r.dec_blocks, self.mast3r.dec_blocks2,
                    self.mast3r.dec_norm):
            mod.to(dtype)
        return self

    def alias_keys(self) -> dict[str, str]:
        """State-dict keys that name the same tensor as an earlier key: {alias: canonical}."""
        seen: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for key, tensor in self.state_dict(keep_vars=True).items():
            ident = id(tensor)
            if ident in seen:
                aliases[key] = seen[ident]
            else:
                seen[ident] = key
        return aliases

    def _check_tokens(self, tokens: Tensor, hw: tuple[int, int], name: str) -> tuple[int, int]:
        if not isinstance(tokens, Tensor) or tokens.ndim != 3:
            raise ValueError(f'{name} must be a (B, N, C) tensor, got '
                             f'{tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__}')
        nh, nw = hw[0] // PATCH_SIZE, hw[1] // PATCH_SIZE
        if tokens.shape[1] != nh * nw:
            raise ValueError(f'{name} has {tokens.shape[1]} tokens, a {hw[0]}x{hw[1]} image has {nh}x{nw}={nh * nw}')
        if tokens.shape[2] != self.config.enc_embed_dim:
            raise ValueError(f'{name} has width {tokens.shape[2]}, the decoder expects {self.config.enc_embed_dim}')
        return nh, nw

    def decode(self, tokens1: Tensor, tokens2: Tensor, grid1: tuple[int, int], grid2: tuple[int, int]
               ) -> tuple[list[Tensor], list[Tensor]]:
        """Decoder only: per view [norm(tokens), block 1 .. block d-1 outputs, dec_norm(block d)] (d+1 tensors)."""
        m = self.mast3r
        dtype = self.norm.weight.dtype
        b = tokens1.shape[0]
        f1 = self.norm(tokens1.to(dtype))
        f2 = self.norm(tokens2.to(dtype))
        head_dim = self.config.dec_embed_dim // self.config.dec_num_heads
        pos1 = patch_positions(b, *grid1, device=tokens1.device)
        pos2 = patch_positions(b, *grid2, device=tokens2.device)
        r1 = m.rope.tables(pos1, head_dim, max(grid1) - 1, dtype)
        r2 = m.rope.tables(pos2, head_dim, max(grid2) - 1, dtype)
        out1, out2 = [f1], [f2]
        x1, x2 = m.decoder_embed(f1), m.decoder_embed(f2)
        for blk1, blk2 in zip(m.dec_blocks, m.dec_blocks2):
            x1, x2 = blk1(x1, x2, r1, r2), blk2(x2, x1, r2, r1)       # both read the previous pair
            out1.append(x1)
            out2.append(x2)
        out1[-1] = m.dec_norm(out1[-1])
        out2[-1] = m.dec_norm(out2[-1])
        return out1, out2

    def forward(self, tokens1: Tensor, tokens2: Tensor, shape1: Any, shape2: Any
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Decode a view pair.

        Args:
            tokens1, tokens2: (B, N_i, enc_dim) pre-final-norm encoder patch tokens, row-major on the 14-px grid.
            shape1, shape2: image size (H, W) of each view (multiples of 14), or a (B, 2) ``true_shape`` tensor.

        Returns:
            ``pred1 = {pts3d (B,H,W,3), conf (B,H,W), desc (B,H,W,desc_dim), desc_conf (B,H,W)}`` and
            ``pred2 = {pts3d_in_other_view, conf, desc, desc_conf}``; all points are in view 1's camera frame.
        """
        hw1, hw2 = _as_hw(shape1, 'shape1'), _as_hw(shape2, 'shape2')
        grid1 = self._check_tokens(tokens1, hw1, 'tokens1')
        grid2 = self._check_tokens(tokens2, hw2, 'tokens2')
        if tokens1.shape[0] != tokens2.shape[0]:
            raise ValueError(f'tokens1 and tokens2 batch sizes differ: {tokens1.shape[0]} vs {tokens2.shape[0]}')
        dec1, dec2 = self.decode(tokens1, tokens2, grid1, grid2)
        with torch.autocast(device_type=tokens1.device.type, enabled=False):
            raw1 = self.mast3r.downstream_head1([t.float() for t in dec1], grid1)
            raw2 = self.mast3r.downstream_head2([t.float() for t in dec2], grid2)
            pred1 = postprocess_head_output(raw1, self.config)
            pred2 = postprocess_head_output(raw2, self.config)
        pred2['pts3d_in_other_view'] = pred2.pop('pts3d')
        return pred1, pred2


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints

_OPTIONAL_BUFFERS = {'imagenet_mean': (1, 3, 1, 1), 'imagenet_std': (1, 3, 1, 1)}


def _validated_state(model: DuneMast3rDecoder, state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """Check ``state`` against the model: every key, shape, dtype kind and value; resolve aliases; raise on any issue."""
    given: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, value in state.items():
        if not isinstance(key, str):
            problems.append(f'non-string key {key!r}')
            continue
        if not isinstance(value, Tensor):
            problems.append(f'{key}: not a tensor ({type(value).__name__})')
            continue
        given[key] = value

    for key, shape in _OPTIONAL_BUFFERS.items():
        if key in given:
            t = given.pop(key)
            if tuple(t.shape) != shape:
                problems.append(f'{key}: shape {tuple(t.shape)}, expected {shape}')

    expected = model.state_dict()
    aliases = model.alias_keys()
    for alias, canonical in aliases.items():
        if alias in given and canonical in given:
            a, c = given[alias], given[canonical]
            if a.shape != c.shape or not torch.equal(a, c):
                problems.append(f'{alias} is an alias of {canonical} but holds different values')
        elif alias in given:
            given[canonical] = given[alias]
        elif canonical in given:
            given[alias] = given[canonical]

    dune_keys = sorted(k for k in given if k.startswith('dune_backbone.'))
    for k in dune_keys:        # the official loader tolerates a missing backbone; stored backbone weights are unused
        del given[k]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing:
        problems.append(f'{len(missing)} missing key(s): {missing[:8]}{" ..." if len(missing) > 8 else ""}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {unexpected[:8]}{" ..." if len(unexpected) > 8 else ""}')
    for key, ref in expected.items():
        t = given.get(key)
        if t is None:
            continue
        if tuple(t.shape) != tuple(ref.shape):
            problems.append(f'{key}: shape {tuple(t.shape)}, expected {tuple(ref.shape)}')
        elif not t.is_floating_point():
            problems.append(f'{key}: dtype {t.dtype}, expected a floating-point tensor')
        elif not bool(torch.isfinite(t).all()):
            problems.append(f'{key}: contains NaN or infinite values')
    if problems:
        shown = '; '.join(problems[:12])
        more = f' (+{len(problems) - 12} more)' if len(problems) > 12 else ''
        raise DuneMast3rCheckpointError(f'{path}: checkpoint does not match the DUNE-MASt3R architecture '
                                        f'(config {model.config.enc_embed_dim}->{model.config.dec_embed_dim}, '
                                        f'depth {model.config.dec_depth}): {shown}{more}')
    return given


def load_dune_mast3r(path: str | os.PathLike[str], device: torch.device | str = 'cpu', *,
                     dtype: torch.dtype | None = None, allow_pickle: bool = True) -> DuneMast3rDecoder:
    """Load ``dunemast3r_cvpr25_vit{base,small}.pth`` (or a file in the same layout) strictly.

    The file is a dict with ``'model'`` (state dict: ``norm.*`` and ``mast3r.*``; ``imagenet_mean/std`` optional),
    ``'mast3r_model_str'`` (parsed, never evaluated) and ``'dune_backbone_name'``. Reading goes through
    :func:`realm_ros.models.checkpoints.read_checkpoint`, so a ``.safetensors`` made by ``realm-convert-checkpoint``
    (or found converted next to the ``.pth``) is used the same way, and ``module.``/``_orig_mod.`` prefixes are
    stripped. Every parameter must be present with its shape and finite values, and no unknown key may be present;
    alias keys (``scratch.layer_rn.*``) must agree with their originals (or may be absent). On any problem a
    :class:`DuneMast3rCheckpointError` (a :class:`~realm_ros.models.checkpoints.CheckpointError`) naming the file
    and the keys is raised and no model is returned.

    Args:
        path: checkpoint file (.pth or converted .safetensors).
        device: where the returned model lives.
        dtype: optional dtype for the decoder blocks (heads stay float32), e.g. ``torch.bfloat16`` on CUDA.
        allow_pickle: allow full unpickling when the safe loader refuses the file (trusted files only).

    Returns:
        A :class:`DuneMast3rDecoder` in eval mode with ``requires_grad=False`` parameters.
    """
    from ..checkpoints import read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'DUNE-MASt3R checkpoint not found: {path}')
    state, info = read_checkpoint(path, allow_pickle=allow_pickle)
    extra = info.get('extra') or {}
    model_str = extra.get('mast3r_model_str')
    if model_str is None:
        raise DuneMast3rCheckpointError(f'{path}: missing top-level key mast3r_model_str (a DUNE-MASt3R checkpoint '
                                        f'has model, mast3r_model_str and dune_backbone_name; found extra entries '
                                        f'{sorted(extra)[:10]})')
    try:
        config = parse_mast3r_model_string(model_str)
    except DuneMast3rCheckpointError as exc:
        raise DuneMast3rCheckpointError(f'{path}: {exc}') from None
    backbone = extra.get('dune_backbone_name', '')
    backbone = backbone if isinstance(backbone, str) else str(backbone)

    with torch.device('meta'):
        model = DuneMast3rDecoder(config, dune_backbone_name=backbone)
    given = _validated_state(model, state, path)
    model = model.to_empty(device='cpu')
    model.imagenet_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    model.imagenet_std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    model.load_state_dict({k: v.float() for k, v in given.items()}, strict=True)
    model.requires_grad_(False).eval()
    model.to(device)
    if dtype is not None:
        model.cast_decoder(dtype)
    return model


def load_dune_mast3r_backbone(path: str | os.PathLike[str], device: torch.device | str = 'cpu', *,
                              allow_pickle: bool = True) -> Any:
    """The DUNE encoder stored in a DUNE-MASt3R file as ``dune_backbone.*``, or None when the file has none.

    The published ``dunemast3r_cvpr25_*.pth`` files hold no encoder (MODEL_SPEC 3.1): load the DUNE checkpoint named
    by ``DuneMast3rDecoder.dune_backbone_name`` with :func:`realm_ros.models.checkpoints.load_dune` instead. A full
    wrapper state dict (decoder + ``dune_backbone.*``) yields a :class:`~realm_ros.models.dune.DinoVisionTransformer`
    built and strictly loaded by the DUNE loader; feed its ``get_mast3r_tokens(img)`` to the decoder.
    """
    from ..checkpoints import dune_model_from_state_dict, read_checkpoint

    state, info = read_checkpoint(path, allow_pickle=allow_pickle)
    prefix = 'dune_backbone.'
    enc = {'encoder.' + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not enc:
        return None
    dune = dune_model_from_state_dict(enc, info.get('args') or {}, name=f'{path} (dune_backbone)')
    return dune.encoder.to(device).eval()


def save_dune_mast3r(path: str | os.PathLike[str], model: DuneMast3rDecoder, *,
                     dune_backbone_name: str | None = None, include_imagenet: bool = True) -> Path:
    """Write ``model`` in the official ``dunemast3r_cvpr25_*.pth`` layout (atomic rename).

    The state dict keeps the alias keys sharing storage with their originals, like the official file.
    """
    path = Path(path)
    state: dict[str, Tensor] = {}
    if include_imagenet:
        state['imagenet_mean'] = model.imagenet_mean.detach().float().cpu()
        state['imagenet_std'] = model.imagenet_std.detach().float().cpu()
    state.update({k: v.detach().float().cpu() if v.dtype != torch.float32 or v.device.type != 'cpu' else v.detach()
                  for k, v in model.state_dict().items()})
    # keep alias storage sharing after any dtype/device conversion above
    for alias, canonical in model.alias_keys().items():
        state[alias] = state[canonical]
    name = model.dune_backbone_name if dune_backbone_name is None else dune_backbone_name
    ckpt = {'model': state, 'dune_backbone_name': name, 'mast3r_model_str': model.config.to_model_string()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

