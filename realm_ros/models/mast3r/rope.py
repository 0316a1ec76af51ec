"""2D rotary position embedding (RoPE) of the DUNE-MASt3R decoder and the token grid positions it rotates by."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
