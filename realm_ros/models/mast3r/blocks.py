"""Transformer pieces of the DUNE-MASt3R decoder (CroCo decoder blocks with 2D RoPE).

State-dict keys: ``attn.qkv/proj``, ``cross_attn.projq/projk/projv/proj``, ``mlp.fc1/fc2``, ``norm1/2/3``,
``norm_y``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .rope import RoPE2D, RotaryTables


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
