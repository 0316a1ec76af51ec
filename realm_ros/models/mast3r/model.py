"""The DUNE-MASt3R decoder module (:class:`DuneMast3rDecoder`): wrapper ``norm`` + ``mast3r`` (decoder and heads)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .blocks import CrossAttention, DecoderBlock, SelfAttention
from .config import IMAGENET_MEAN, IMAGENET_STD, PATCH_SIZE, DuneMast3rConfig
from .heads import CatMlpDptHead
from .postprocess import postprocess_head_output
from .rope import RoPE2D, patch_positions


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
        #: pose gates calibrated for this decoder ({method: {mode: PoseGates}} from its checkpoint; {}: uncalibrated)
        self.pose_gates: dict[str, Any] = {}
        #: what those gates were calibrated with (decoder precision, RANSAC kernel; {}: not recorded, the defaults of
        #: realm_ros.geometry.gates.POSE_COMPUTE_DEFAULTS)
        self.pose_gates_compute: dict[str, str] = {}
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
