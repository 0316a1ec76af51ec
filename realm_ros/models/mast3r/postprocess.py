"""Post-processing of raw DUNE-MASt3R head channels with the modes parsed from the checkpoint's model string."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import DuneMast3rConfig, Mode


def _dense_conf(x: Tensor, mode: Mode) -> Tensor:
    kind, vmin, vmax = mode
    if kind == 'exp':
        return vmin + x.exp().clip(max=vmax - vmin)
    if kind == 'sigmoid':
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f'bad confidence mode {mode!r}')


def postprocess_points(fmap: Tensor, config: DuneMast3rConfig) -> dict[str, Tensor]:
    """``pts3d`` (and ``conf`` when the model has one) from the DPT's channels, channels-last (B, H, W, 3 [+ 1])."""
    xyz = fmap[..., 0:3]
    kind = config.depth_mode[0]
    if kind == 'linear':
        pts = xyz
    else:
        d = xyz.norm(dim=-1, keepdim=True)
        unit = xyz / d.clip(min=1e-8)
        pts = unit * (d.square() if kind == 'square' else torch.expm1(d))
    out = {'pts3d': pts}
    if config.conf_mode is not None:
        out['conf'] = _dense_conf(fmap[..., 3], config.conf_mode)
    return out


def postprocess_local_features(fmap: Tensor, config: DuneMast3rConfig) -> dict[str, Tensor]:
    """``desc`` and, with ``two_confs``, ``desc_conf`` from the local-feature channels, channels-last
    (B, H, W, desc_dim [+ 1])."""
    desc = fmap[..., :config.desc_dim]
    if config.desc_mode == 'norm':
        desc = desc / desc.norm(dim=-1, keepdim=True)
    out = {'desc': desc}
    if config.two_confs:
        mode = config.effective_desc_conf_mode
        if mode is None:
            raise ValueError('two_confs needs a desc_conf_mode or conf_mode')
        out['desc_conf'] = _dense_conf(fmap[..., config.desc_dim], mode)
    return out


def postprocess_head_output(raw: Tensor, config: DuneMast3rConfig) -> dict[str, Tensor]:
    """Map raw head channels (B, C, H, W) to ``pts3d``, ``conf``, ``desc``, ``desc_conf`` (channels-last)."""
    fmap = raw.permute(0, 2, 3, 1)
    out = postprocess_points(fmap, config)
    out.update(postprocess_local_features(fmap[..., 3 + int(config.conf_mode is not None):], config))
    if not config.two_confs and 'conf' in out:
        out['desc_conf'] = out['conf'].clone()
    return out
