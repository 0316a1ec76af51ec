"""Strict loading and saving of DUNE-MASt3R checkpoints (the official ``dunemast3r_cvpr25_*.pth`` layout)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from realm_ros.common.files import chmod_like_new_file
from realm_ros.geometry.gates import parse_pose_compute, parse_pose_gates

from .config import IMAGENET_MEAN, IMAGENET_STD, DuneMast3rCheckpointError
from .model import DuneMast3rDecoder
from .model_string import parse_mast3r_model_string


_OPTIONAL_BUFFERS = {'imagenet_mean': (1, 3, 1, 1), 'imagenet_std': (1, 3, 1, 1)}


def _validated_state(model: DuneMast3rDecoder, state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """Check ``state`` against the model: every key, shape, dtype kind and value; resolve aliases; raise on issues."""
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
        A :class:`DuneMast3rDecoder` in eval mode with ``requires_grad=False`` parameters, and ``pose_gates``: the
        pose gates calibrated for this decoder when the file carries them (optional metadata ``pose_gates``, see
        :mod:`realm_ros.geometry.gates`; invalid gates are a checkpoint error), else ``{}``, and
        ``pose_gates_compute``: the decoder precision and RANSAC kernel they were calibrated with (optional
        metadata ``pose_gates_compute``; ``{}`` when not recorded).
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
    try:
        pose_gates = parse_pose_gates(extra.get('pose_gates'), f'{path}: pose_gates')
        compute = extra.get('pose_gates_compute')
        pose_compute = parse_pose_compute(compute, f'{path}: pose_gates_compute') if compute is not None else {}
    except ValueError as exc:
        raise DuneMast3rCheckpointError(str(exc)) from None

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
    model.pose_gates = pose_gates
    model.pose_gates_compute = pose_compute
    return model


def load_dune_mast3r_backbone(path: str | os.PathLike[str], device: torch.device | str = 'cpu', *,
                              allow_pickle: bool = True) -> Any:
    """The DUNE encoder stored in a DUNE-MASt3R file as ``dune_backbone.*``, or None when the file has none.

    The published ``dunemast3r_cvpr25_*.pth`` files hold no encoder (docs/models.md#checkpoint-and-model-string):
    load the DUNE checkpoint named by ``DuneMast3rDecoder.dune_backbone_name`` with
    :func:`realm_ros.models.checkpoints.load_dune` instead. A full
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
        chmod_like_new_file(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
