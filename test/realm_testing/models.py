"""Helpers for model tests: the official checkpoint key layouts recorded in ``test/data/model_keys`` and random
weights that make every branch of a model matter."""
from pathlib import Path

import torch

KEYS_DIR = Path(__file__).resolve().parents[1] / 'data' / 'model_keys'


def read_keys(name: str) -> dict:
    out = {}
    for line in (KEYS_DIR / name).read_text().splitlines():
        if line.startswith('#') or not line.strip():
            continue
        key, shape, _ = line.split('\t')
        out[key] = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
    return out


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights of a size that makes every branch matter (LayerScale 1e-4 would hide the blocks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if 'gamma' in name or 'norm' in name else 0.1))
            if name.endswith('norm.weight') or name.endswith('norm1.weight') or name.endswith('norm2.weight'):
                p.add_(1.0)
    return model


def tiny_decoder(seed: int = 0, **overrides):
    """A random miniature DUNE-MASt3R decoder (``DuneMast3rConfig.tiny(**overrides)``) in eval mode, frozen."""
    from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder
    torch.manual_seed(seed)
    dec = DuneMast3rDecoder(DuneMast3rConfig.tiny(**overrides)).eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    return dec


def decoder_tokens(n: int, seed: int, batch: int = 1, width: int = 192) -> torch.Tensor:
    """Random decoder input tokens (batch, n, width) from their own generator."""
    return torch.randn(batch, n, width, generator=torch.Generator().manual_seed(seed))
