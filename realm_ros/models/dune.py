"""DUNE encoder: a DINOv2-style Vision Transformer whose state-dict keys equal the official DUNE checkpoints.

Clean-room implementation of docs/models.md#dune-encoder (no code copied from the reference repositories).

State-dict layout (docs/models.md#dune-encoder, prefix ``encoder.`` inside an official ``ckpt['model']``)::

    cls_token (1, 1, D)   pos_embed (1, 1 + M*M, D)   [register_tokens (1, R, D) iff R > 0]   mask_token (1, D)
    patch_embed.proj.{weight (D, C, P, P), bias (D)}
    blocks.0.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}   (one block chunk)
    norm.{weight, bias}

Maths: pre-norm blocks ``x = x + ls1(attn(norm1(x)))``, ``x = x + ls2(mlp(norm2(x)))``; LayerNorm eps 1e-6; exact (erf)
GELU; attention through ``F.scaled_dot_product_attention`` (scale 1/sqrt(head_dim), no mask, no dropout).

Three "encoder outputs" exist (docs/models.md#positional-embedding), all available here:

* ``forward_features(x)`` / ``model(x)`` - the hub encoder: final ``norm`` applied
  (``x_norm_clstoken``, ``x_norm_patchtokens``); also returns the un-normed ``x_prenorm``.
* ``get_encoder_output(x)`` - the DUNE projector input: *un-normed* ``concat(cls, patches)`` (B, 1+N, D), registers
  dropped.
* ``get_mast3r_tokens(x)`` - the DUNE-MASt3R input: *un-normed* patch tokens only (B, N, D).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6
HEAD_DIM = 64

__all__ = [
    'LAYER_NORM_EPS', 'LayerScale', 'Mlp', 'Attention', 'Block', 'BlockChunk', 'PatchEmbed',
    'DinoVisionTransformer', 'vit_tiny', 'vit_small', 'vit_base', 'VIT_FACTORIES', 'interpolate_pos_embed',
]


class LayerScale(nn.Module):
    """Element-wise learnable scale ``x * gamma`` (key ``gamma``)."""

    def __init__(self, dim: int, init_values: float = 1e-4) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer MLP ``fc2(GELU(fc1(x)))`` with exact GELU."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and SDPA.

    ``qkv(x)`` is reshaped to (B, T, 3, heads, head_dim) and split into q, k, v of shape (B, heads, T, head_dim).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """DINOv2 transformer block (pre-norm, LayerScale on both residual branches)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, layerscale_init: Optional[float] = 1e-4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class BlockChunk(nn.ModuleList):
    """A run of blocks applied in sequence; the official model holds one chunk, hence keys ``blocks.0.<i>``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: Conv2d(k=s=patch) then flatten to row-major (B, N, D) tokens."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int,
                          offset: float = 0.1, antialias: bool = False) -> torch.Tensor:
    """Resample a (1, 1 + M*M, D) positional embedding to a ``grid_h`` x ``grid_w`` patch grid.

    Follows docs/models.md#positional-embedding: the table is returned unchanged when the grid is M x M (square and
    same count); otherwise the M x M grid part is resampled in float32 with bicubic interpolation, ``antialias`` off,
    using the *scale factors* ``((grid_h + offset) / M, (grid_w + offset) / M)`` (not an output ``size``: the kernel
    uses the given factors, which changes the numbers). The cls slot is kept. Output (1, 1 + grid_h*grid_w, D), input
    dtype.
    """
    n = pos_embed.shape[1] - 1
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    m = int(round(math.sqrt(n)))
    if m * m != n:
        raise ValueError(f'pos_embed grid part has {n} entries, which is not a square')
    dtype = pos_embed.dtype
    pe = pos_embed.float()
    dim = pe.shape[-1]
    grid = pe[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((grid_h + offset) / m, (grid_w + offset) / m)
        grid = F.interpolate(grid, scale_factor=scale, mode='bicubic', antialias=antialias)
    else:
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode='bicubic', antialias=antialias)
    if tuple(grid.shape[-2:]) != (grid_h, grid_w):
        raise RuntimeError(f'pos-embed interpolation produced {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}')
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([pe[:, :1], grid], dim=1).to(dtype)


class DinoVisionTransformer(nn.Module):
    """DINOv2-style ViT with the official DUNE key names (see the module docstring).

    Args:
        img_size: training image size; only sets the pos-embed table length ``1 + (img_size // patch_size)**2``.
        patch_size: patch side in pixels (14 for DUNE).
        in_chans: input channels of ``patch_embed`` (3 for RGB).
        embed_dim, depth, num_heads, mlp_ratio: transformer shape.
        qkv_bias, proj_bias, ffn_bias: biases of the attention input/output and MLP linears.
        layerscale_init: LayerScale init value (``None``/0 disables LayerScale and its ``ls*.gamma`` keys).
        num_register_tokens: register tokens R (0 for the DUNE paper checkpoint, 4 for the public-code default).
        interpolate_offset, interpolate_antialias: pos-embed resampling rule (docs/models.md#positional-embedding).
    """

    def __init__(self, img_size: int = 448, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, layerscale_init: Optional[float] = 1e-4,
                 num_register_tokens: int = 0, interpolate_offset: float = 0.1,
                 interpolate_antialias: bool = False) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f'img_size {img_size} is not a multiple of patch_size {patch_size}')
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.proj_bias = proj_bias
        self.ffn_bias = ffn_bias
        self.layerscale_init = layerscale_init
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens > 0 else None)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList([BlockChunk([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_bias, ffn_bias, layerscale_init)
            for _ in range(depth)])])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------------ set-up
    def reset_parameters(self) -> None:
        """Random initialisation in the DINOv2 manner (truncated-normal linears/pos-embed, tiny cls/register init)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def architecture(self) -> Dict[str, object]:
        """JSON-serialisable constructor arguments (used in checkpoint metadata)."""
        return dict(img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
                    embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                    qkv_bias=self.qkv_bias, proj_bias=self.proj_bias, ffn_bias=self.ffn_bias,
                    layerscale_init=self.layerscale_init, num_register_tokens=self.num_register_tokens,
                    interpolate_offset=self.interpolate_offset, interpolate_antialias=self.interpolate_antialias)

    @property
    def block_list(self) -> BlockChunk:
        """The transformer blocks (the single chunk ``blocks[0]``)."""
        return self.blocks[0]

    # ------------------------------------------------------------------------------------------------ pieces
    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Patch grid (H/P, W/P) for an input of ``height`` x ``width`` pixels; both must be multiples of P."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f'input size {height}x{width} is not a multiple of the patch size {p}')
        return height // p, width // p

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Positional embedding (1, 1 + grid_h*grid_w, D) for a patch grid (docs/models.md#positional-embedding)."""
        return interpolate_pos_embed(self.pos_embed, grid_h, grid_w, self.interpolate_offset,
                                     self.interpolate_antialias)

    def tokens_from_patches(self, patch_tokens: torch.Tensor, grid_hw: Tuple[int, int],
                            masks: Optional[torch.Tensor] = None,
                            keep_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Turn row-major patch embeddings (B, N, D) into the block input (B, 1+R+K, D).

        Steps: optional ``mask_token`` substitution where ``masks`` (B, N) bool is True; prepend ``cls_token``; add the
        (interpolated) positional embedding; optionally keep only the patch tokens at ``keep_index`` (B, K) (MAE-style
        token drop: positions are added before dropping); insert the register tokens after cls.
        """
        b, n, d = patch_tokens.shape
        gh, gw = grid_hw
        if n != gh * gw:
            raise ValueError(f'{n} patch tokens do not form a {gh}x{gw} grid')
        x = patch_tokens
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.interpolate_pos_encoding(gh, gw).to(x.dtype)
        if keep_index is not None:
            kept = torch.gather(x[:, 1:], 1, keep_index.unsqueeze(-1).expand(-1, -1, d))
            x = torch.cat([x[:, :1], kept], dim=1)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        return x

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image (B, C, H, W) -> block input tokens (B, 1+R+N, D)."""
        grid_hw = self.grid_shape(x.shape[-2], x.shape[-1])
        return self.tokens_from_patches(self.patch_embed(x), grid_hw, masks)

    def split_outputs(self, x: torch.Tensor, apply_norm: bool = True,
                      masks: Optional[torch.Tensor] = None) -> Dict[str, Optional[torch.Tensor]]:
        """Block output (B, 1+R+N, D) -> the ``forward_features`` dictionary.

        Keys: ``x_norm_clstoken`` (B, D), ``x_norm_regtokens`` (B, R, D), ``x_norm_patchtokens`` (B, N, D) (normed by
        ``norm`` when ``apply_norm``), ``x_prenorm`` (B, 1+R+N, D) and its slices ``x_prenorm_clstoken``,
        ``x_prenorm_patchtokens`` (additions to the DINOv2 dictionary), ``masks``.
        """
        r = self.num_register_tokens
        x_norm = self.norm(x) if apply_norm else x
        return {
            'x_norm_clstoken': x_norm[:, 0],
            'x_norm_regtokens': x_norm[:, 1:1 + r],
            'x_norm_patchtokens': x_norm[:, 1 + r:],
            'x_prenorm': x,
            'x_prenorm_clstoken': x[:, 0],
            'x_prenorm_patchtokens': x[:, 1 + r:],
            'masks': masks,
        }

    # ------------------------------------------------------------------------------------------------ forwards
    def forward_features(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None,
                         apply_norm: bool = True) -> Dict[str, Optional[torch.Tensor]]:
        """Image (B, C, H, W), H and W multiples of ``patch_size`` -> output dictionary (see ``split_outputs``)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f'expected an image batch (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}')
        tokens = self.prepare_tokens_with_masks(x, masks)
        return self.split_outputs(self.blocks[0](tokens), apply_norm, masks)

    def forward(self, x: torch.Tensor, masks: Optional[torch.Tensor] = None,
                apply_norm: bool = True) -> Dict[str, Optional[torch.Tensor]]:
        """Same as :meth:`forward_features` (the hub encoder applies the final norm)."""
        return self.forward_features(x, masks, apply_norm)

    def get_encoder_output(self, x: torch.Tensor) -> torch.Tensor:
        """DUNE projector input: un-normed ``concat(cls, patch tokens)`` (B, 1+N, D), registers dropped."""
        out = self.forward_features(x, apply_norm=False)
        cls_token = out['x_prenorm_clstoken']
        assert cls_token is not None
        return torch.cat([cls_token.unsqueeze(1), out['x_prenorm_patchtokens']], dim=1)

    def get_mast3r_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """DUNE-MASt3R input: un-normed last-block patch tokens (B, N, D) (no cls, no registers, no final norm)."""
        return self.forward_features(x, apply_norm=False)['x_prenorm_patchtokens']


def _make(embed_dim: int, depth: int, num_heads: int, **kwargs) -> DinoVisionTransformer:
    kwargs.setdefault('patch_size', 14)
    return DinoVisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, **kwargs)


def vit_base(**kwargs) -> DinoVisionTransformer:
    """ViT-B/14: dim 768, 12 blocks, 12 heads (DUNE ViT-Base). Defaults: img_size 448, 0 registers."""
    return _make(768, 12, 12, **kwargs)


def vit_small(**kwargs) -> DinoVisionTransformer:
    """ViT-S/14: dim 384, 12 blocks, 6 heads (DUNE ViT-Small)."""
    return _make(384, 12, 6, **kwargs)


def vit_tiny(**kwargs) -> DinoVisionTransformer:
    """ViT-Ti/14 miniature: dim 192, 6 blocks, 3 heads (used for the simulated miniature world, img_size 224)."""
    kwargs.setdefault('img_size', 224)
    return _make(192, 6, 3, **kwargs)


VIT_FACTORIES = {'vit_tiny': vit_tiny, 'vit_small': vit_small, 'vit_base': vit_base}
