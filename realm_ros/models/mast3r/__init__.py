"""DUNE-MASt3R decoder and heads: a clean-room PyTorch re-implementation (docs/models.md#dune-mast3r-decoder).

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
:func:`load_dune_mast3r`, :func:`load_dune_mast3r_backbone`, :func:`save_dune_mast3r`,
:func:`parse_mast3r_model_string`, :class:`RoPE2D`, :func:`patch_positions`, :class:`DuneMast3rCheckpointError`.

Modules (cut along the model's boundaries, module tree and state-dict keys unchanged): ``config`` (architecture,
constants, error), ``model_string`` (checkpoint model-string parser), ``rope`` (2D RoPE, token positions), ``blocks``
(attention, MLP, decoder block), ``dpt`` (DPT regression head), ``heads`` (``catmlp+dpt`` head), ``postprocess`` (raw
channels -> points, confidences, descriptors), ``model`` (:class:`DuneMast3rDecoder`), ``io`` (strict load / save).

The official weights (DUNE-MASt3R) are under non-commercial licences (NLE DUNE / CC BY-NC-SA 4.0); this code copies
none of the reference implementation.
"""

from __future__ import annotations

from .blocks import CrossAttention, DecoderBlock, Mlp, SelfAttention
from .config import IMAGENET_MEAN, IMAGENET_STD, PATCH_SIZE, DuneMast3rCheckpointError, DuneMast3rConfig, Mode
from .dpt import DPTOutputAdapter, DPTScratch, FeatureFusionBlock, Interpolate, ResidualConvUnit
from .heads import CatMlpDptHead
from .io import load_dune_mast3r, load_dune_mast3r_backbone, save_dune_mast3r
from .model import DuneMast3rDecoder, Mast3rCore
from .model_string import parse_mast3r_model_string
from .postprocess import postprocess_head_output
from .rope import RoPE2D, RotaryTables, patch_positions

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
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'Mode',
    'DPTScratch',
    'FeatureFusionBlock',
    'Interpolate',
    'ResidualConvUnit',
    'Mast3rCore',
]
