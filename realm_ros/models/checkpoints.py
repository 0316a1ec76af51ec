"""Checkpoint IO: official DUNE ``.pth`` files, their safetensors conversion, REALM and head checkpoints.

Every loader validates the *whole* file against the module it builds (missing keys, unexpected keys, shapes) before a
single tensor is copied, and returns a freshly built module: a failure raises :class:`CheckpointError` (a
``ValueError``) whose message names the file and the problem, and nothing is left half-loaded.

Official DUNE files (docs/models.md#dune-checkpoint-files):
``{'model': state_dict, 'args': argparse.Namespace, 'iter': int, ...}``
with keys ``encoder.*``, ``projectors.<teacher>.*``, ``teacher_norms.<teacher>.normalizers.<cls|patch>.{mean,std}``,
optionally prefixed by ``module.`` / ``_orig_mod.``. Modules are sized from the file itself (register tokens, qkv
bias, depth, width, pos-embed length) - never from a guess. These are pickles: :func:`read_checkpoint` first tries
``torch.load(weights_only=True)`` with only ``argparse.Namespace`` and numpy arrays allowed, and falls back to a full
unpickle (which can run code) only with ``allow_pickle=True``. Load pickles only from trusted sources; convert once
with ``realm-convert-checkpoint`` and the loaders prefer the ``.safetensors`` file next to the ``.pth``.

Converted files (``<stem>.safetensors``): the prefix-stripped ``ckpt['model']`` tensors; header metadata key
``realm_ros`` holds JSON ``{"format": "realm_ros.converted", "source_sha256", "source_size", "source_name",
"args": {...JSON-safe ckpt['args']...}, "extra": {other top-level str/int/float entries}}``; a ``<stem>.json`` copy is
written for people (the header is authoritative).

REALM checkpoints (safetensors, header key ``realm_ros`` = JSON metadata)::

    embedder.*                        voxel embedder
    norm.weight, norm.bias            the trained final norm
    teacher_norm.weight, .bias        the teacher's final-norm affine (for the heads' bridge)
    lora.<blocks.0.<i>.attn.qkv|attn.proj|mlp.fc1|mlp.fc2>.lora_A.weight (r, in) / .lora_B.weight (out, r)   mode 'lora'
    encoder.<all DUNE encoder keys except patch_embed.* and norm.*> (LoRA merged into the linears)       mode 'merged'

    metadata: {"format": "realm_ros.realm", "version": 1, "mode": "lora"|"merged", "architecture": {dune, embedder,
               lora}, "teacher_sha256": str|null, "voxel": {...}, "window": {...}, "training": {...},
               "metrics": {...}, ...caller entries}

A 'lora' checkpoint needs the DUNE teacher it was trained from; a 'merged' one is self-contained. Loading with a
teacher whose SHA-256 differs from ``teacher_sha256`` is refused (:class:`TeacherMismatchError`) unless
``force=True``. Head checkpoints (``realm_ros.head``) store one head's tensors + ``kind``, ``config`` and the teacher
hash, with the same rule.

Size: over 500 lines because every checkpoint kind (official DUNE, converted, REALM, heads) goes through the same
read / validate / build path defined here; the DUNE-MASt3R loader lives in :mod:`realm_ros.models.mast3r.io`.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from realm_ros.common.errors import RealmError
from realm_ros.common.files import chmod_like_new_file

from .dune import DinoVisionTransformer
from .dune_model import DuneModel, TeacherNorm
from .embedder import VoxelEmbedder
from .heads import DepthBinsHead, DinoV2Projector, SegmentationHead
from .realm import RealmEncoder

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = [
    'CheckpointError', 'TeacherMismatchError', 'sha256_file', 'strip_prefixes', 'read_checkpoint',
    'read_safetensors', 'write_safetensors', 'dune_model_from_state_dict', 'load_dune', 'save_dune_checkpoint',
    'convert_checkpoint', 'save_realm_checkpoint', 'load_realm_checkpoint', 'realm_checkpoint_tensors',
    'save_head_checkpoint', 'load_head_checkpoint', 'HEAD_KINDS', 'META_KEY',
]

META_KEY = 'realm_ros'
REALM_FORMAT = 'realm_ros.realm'
HEAD_FORMAT = 'realm_ros.head'
CONVERTED_FORMAT = 'realm_ros.converted'
_PREFIX_PARTS = ('module', '_orig_mod')


class CheckpointError(RealmError, ValueError):
    """A checkpoint file cannot be read or does not match the module it should build."""


class TeacherMismatchError(CheckpointError):
    """A REALM/head checkpoint was trained against a different DUNE teacher than the one supplied."""


# ---------------------------------------------------------------------------------------------------- basics
_SHA_CACHE: Dict[Tuple[str, int, int], str] = {}


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file (cached per path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 22), b''):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def strip_prefixes(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Drop DDP / torch.compile wrapper components (``module.``, ``_orig_mod.``) from every key."""
    out: Dict[str, Any] = {}
    for key, value in state.items():
        clean = '.'.join(part for part in key.split('.') if part not in _PREFIX_PARTS)
        if clean in out:
            raise CheckpointError(f'keys collide after removing wrapper prefixes: {key!r} -> {clean!r}')
        out[clean] = value
    return out


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Best-effort JSON-safe copy: numpy scalars -> Python, arrays and unknown objects -> a short description."""
    if depth > 8:
        return repr(value)[:200]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return {'__array__': True, 'shape': list(value.shape), 'dtype': str(value.dtype)}
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, Path):
        return str(value)
    return repr(value)[:200]


def _safe_globals() -> List[Any]:
    allowed: List[Any] = [argparse.Namespace, np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    allowed += [_reconstruct, scalar]
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return allowed


def _brief(error: BaseException) -> str:
    """One readable line describing a loader exception."""
    text = str(error)
    if 'WeightsUnpickler error:' in text:
        text = text.split('WeightsUnpickler error:', 1)[1].split('Check the documentation')[0]
    text = ' '.join(text.split())
    return f'{type(error).__name__}: {text[:300]}' if text else type(error).__name__


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as safe_error:  # classified below
        if 'Unsupported global' not in str(safe_error):
            raise CheckpointError(f'{path}: cannot read the file as a PyTorch checkpoint (truncated, corrupt or not '
                                  f'a checkpoint): {_brief(safe_error)}') from safe_error
        if not allow_pickle:
            raise CheckpointError(f'{path}: the pickle needs objects outside the safe allow-list and allow_pickle is '
                                  f'False ({_brief(safe_error)})') from safe_error
    log.warning('%s: full unpickling (can execute code) - load pickles only from trusted sources; convert the file '
                'once with realm-convert-checkpoint to avoid this', path)
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise CheckpointError(f'{path}: cannot read the file as a PyTorch checkpoint (truncated, corrupt or not a '
                              f'checkpoint): {_brief(error)}') from error


def read_safetensors(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Tensors and the parsed ``realm_ros`` JSON metadata (``{}`` if absent) of a safetensors file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f'{p}: no such checkpoint file')
    try:
        tensors: Dict[str, torch.Tensor] = {}
        with safe_open(str(p), framework='pt', device='cpu') as f:
            header = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as error:
        raise CheckpointError(f'{p}: cannot read the file as safetensors (truncated or corrupt): '
                              f'{_brief(error)}') from error
    meta: Dict[str, Any] = {}
    if META_KEY in header:
        try:
            meta = json.loads(header[META_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(f'{p}: metadata entry {META_KEY!r} is not valid JSON: {error}') from error
    return tensors, meta


def write_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write tensors + JSON metadata atomically (temp file + rename). Shared storages are copied apart.

    The file gets the usual permissions of a new file (0666 minus the umask), like ``torch.save`` outputs.
    """
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    seen_storages = set()
    clean: Dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        t = t.detach().to('cpu')
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storages or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)  # aliases (e.g. DPT layer_rn) need their own copy
        seen_storages.add(t.untyped_storage().data_ptr())
        clean[key] = t
    header = {META_KEY: json.dumps(_json_safe(dict(meta)), sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=p.name + '.', suffix='.tmp', dir=str(p.parent))
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=header)
        chmod_like_new_file(tmp)  # mkstemp made it 0600: readable by other users like any new file (umask)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def read_checkpoint(path: PathLike, allow_pickle: bool = True,
                    prefer_safetensors: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read an official-style checkpoint: ``(state_dict, info)``.

    ``state_dict`` is ``ckpt['model']`` with wrapper prefixes stripped (or the file itself when it is a bare state
    dict). ``info``: ``args`` (JSON-safe dict), ``extra`` (other top-level str/number entries, e.g. DUNE-MASt3R's
    ``mast3r_model_str``), ``source_sha256`` (SHA-256 of the original ``.pth``), ``path`` (the file actually read),
    ``format`` (``'pth'`` or ``'safetensors'``). For ``x.pth`` with a converted ``x.safetensors`` beside it (made
    from this very file: same size and SHA-256), the safetensors file is read instead when ``prefer_safetensors``.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f'{p}: no such checkpoint file')
    if p.suffix != '.safetensors' and prefer_safetensors:
        sibling = p.with_suffix('.safetensors')
        if sibling.is_file():
            try:
                _, meta = _peek_safetensors_meta(sibling)
                if (meta.get('format') == CONVERTED_FORMAT and meta.get('source_size') == p.stat().st_size
                        and meta.get('source_sha256') == sha256_file(p)):
                    log.info('%s: using the converted %s', p, sibling.name)
                    p = sibling
                else:
                    log.warning('%s: %s was converted from another file (size/SHA-256 differ); reading the .pth',
                                p, sibling.name)
            except CheckpointError as error:
                log.warning('%s: ignoring %s (%s)', p, sibling.name, error)
    if p.suffix == '.safetensors':
        tensors, meta = read_safetensors(p)
        if meta.get('format') not in (None, CONVERTED_FORMAT):
            raise CheckpointError(f'{p}: is a {meta.get("format")!r} file, not a converted official checkpoint')
        info = dict(args=meta.get('args', {}), extra=meta.get('extra', {}), source_sha256=meta.get('source_sha256'),
                    path=str(p), format='safetensors')
        return strip_prefixes(tensors), info

    obj = _torch_load(p, allow_pickle)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'{p}: not a checkpoint dictionary (found {type(obj).__name__})')
    if 'model' in obj and isinstance(obj['model'], Mapping):
        state = obj['model']
        args = obj.get('args')
        extra = {k: v for k, v in obj.items() if k not in ('model', 'args', 'optimizer')
                 and isinstance(v, (str, int, float, bool))}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, args, extra = obj, None, {}
    else:
        raise CheckpointError(f'{p}: no "model" state dict in the checkpoint (top-level keys: '
                              f'{sorted(map(str, obj.keys()))[:10]})')
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'{p}: state-dict entries that are not tensors: {bad[:5]}')
    info = dict(args=_json_safe(args) if args is not None else {}, extra=_json_safe(extra),
                source_sha256=sha256_file(p), path=str(p), format='pth')
    return strip_prefixes(state), info


def _peek_safetensors_meta(path: Path) -> Tuple[List[str], Dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework='pt', device='cpu') as f:
            header = f.metadata() or {}
            keys = list(f.keys())
        return keys, json.loads(header.get(META_KEY, '{}'))
    except Exception as error:
        raise CheckpointError(f'{path}: unreadable safetensors header: {error}') from error


# ---------------------------------------------------------------------------------------------------- validation
def _check_state(name: str, expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                 what: str, prefix: str = '') -> None:
    """Raise one CheckpointError listing missing/unexpected keys and shape mismatches (keys shown with ``prefix``)."""
    missing = sorted(prefix + k for k in set(expected) - set(given))
    unexpected = sorted(prefix + k for k in set(given) - set(expected))
    shapes = [f'{prefix}{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}'
              for k in sorted(set(expected) & set(given)) if tuple(expected[k].shape) != tuple(given[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f'missing keys ({len(missing)}): {missing[:8]}{" ..." if len(missing) > 8 else ""}')
        if unexpected:
            parts.append(f'unexpected keys ({len(unexpected)}): {unexpected[:8]}'
                         f'{" ..." if len(unexpected) > 8 else ""}')
        if shapes:
            parts.append(f'wrong shapes ({len(shapes)}): {shapes[:6]}{" ..." if len(shapes) > 6 else ""}')
        raise CheckpointError(f'{name}: {what} does not match: ' + '; '.join(parts))


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, what: str) -> None:
    _check_state(name, module.state_dict(), state, what)
    module.load_state_dict(dict(state), strict=True)


def _sub(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _require(state: Mapping[str, torch.Tensor], key: str, name: str, ndim: int) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f'{name}: missing key {key!r}')
    t = state[key]
    if t.dim() != ndim:
        raise CheckpointError(f'{name}: {key!r} has shape {tuple(t.shape)}, expected {ndim} dimensions')
    return t


_BLOCK_RE = re.compile(r'^blocks\.(\d+)\.(\d+)\.')


def _encoder_config(enc: Mapping[str, torch.Tensor], enc_args: Mapping[str, Any], name: str) -> Dict[str, Any]:
    """Size a DinoVisionTransformer from its state dict (keys without ``encoder.``)."""
    cls = _require(enc, 'cls_token', name, 3)
    dim = int(cls.shape[-1])
    patch_w = _require(enc, 'patch_embed.proj.weight', name, 4)
    patch = int(patch_w.shape[-1])
    pos = _require(enc, 'pos_embed', name, 3)
    m = int(round((pos.shape[1] - 1) ** 0.5))
    if m * m != pos.shape[1] - 1:
        raise CheckpointError(f'{name}: pos_embed has {pos.shape[1]} entries, not 1 + a square grid')
    chunks = {int(mt.group(1)) for k in enc if (mt := _BLOCK_RE.match(k))}
    if chunks != {0}:
        raise CheckpointError(f'{name}: expected one block chunk (keys encoder.blocks.0.<i>.*), found chunks '
                              f'{sorted(chunks)}')
    depth = 1 + max(int(mt.group(2)) for k in enc if (mt := _BLOCK_RE.match(k)))
    fc1 = _require(enc, 'blocks.0.0.mlp.fc1.weight', name, 2)
    reg = enc.get('register_tokens')
    num_heads = int(enc_args.get('num_heads') or max(1, dim // 64))
    return dict(img_size=m * patch, patch_size=patch, in_chans=int(patch_w.shape[1]), embed_dim=dim, depth=depth,
                num_heads=num_heads, mlp_ratio=fc1.shape[0] / dim,
                qkv_bias='blocks.0.0.attn.qkv.bias' in enc, proj_bias='blocks.0.0.attn.proj.bias' in enc,
                ffn_bias='blocks.0.0.mlp.fc1.bias' in enc,
                layerscale_init=float(enc_args.get('layerscale_init') or 1e-4) if 'blocks.0.0.ls1.gamma' in enc
                else None,
                num_register_tokens=int(reg.shape[1]) if reg is not None else 0,
                interpolate_offset=float(enc_args.get('interpolate_offset', 0.1)),
                interpolate_antialias=bool(enc_args.get('interpolate_antialias', False)))


def dune_model_from_state_dict(state: Mapping[str, torch.Tensor], args: Optional[Mapping[str, Any]] = None,
                               name: str = 'checkpoint') -> DuneModel:
    """Build a :class:`DuneModel` sized from ``state`` (prefix-stripped ``ckpt['model']``) and load it strictly.

    Every entry must belong to ``encoder.``, ``projectors.<teacher>.`` or ``teacher_norms.<teacher>.``; the encoder is
    checked key-for-key and shape-for-shape, projectors and teacher norms likewise for each teacher present.
    """
    args = dict(args or {})
    enc_args = dict(args.get('enc_args') or {})
    proj_args = dict(args.get('proj_args') or {})
    if not any(k.startswith('encoder.') for k in state):
        hint = ''
        if any(k.startswith('mast3r.') for k in state):
            hint = ' (this looks like a DUNE-MASt3R decoder file: load it with realm_ros.models.mast3r)'
        elif any(k.startswith(('embedder.', 'lora.')) for k in state):
            hint = ' (this looks like a REALM checkpoint: use load_realm_checkpoint)'
        raise CheckpointError(f'{name}: not a DUNE checkpoint: no "encoder.*" keys among {len(state)} entries, e.g. '
                              f'{sorted(state)[:5]}{hint}')
    others = sorted(k for k in state if not k.startswith(('encoder.', 'projectors.', 'teacher_norms.')))
    if others:
        raise CheckpointError(f'{name}: unexpected keys outside encoder/projectors/teacher_norms: {others[:8]}')
    enc_state = _sub(state, 'encoder.')
    cfg = _encoder_config(enc_state, enc_args, name)
    if 'num_register_tokens' in enc_args and int(enc_args['num_register_tokens']) != cfg['num_register_tokens']:
        log.warning('%s: args.enc_args.num_register_tokens=%s but the weights have %d register tokens; using the '
                    'weights', name, enc_args['num_register_tokens'], cfg['num_register_tokens'])
    with torch.device('meta'):  # no random init work: every tensor comes from the file (assign=True below)
        encoder = DinoVisionTransformer(**cfg)
    _check_state(name, encoder.state_dict(), enc_state, 'DUNE encoder', 'encoder.')

    projectors: Dict[str, DinoV2Projector] = {}
    teachers = sorted({k.split('.')[1] for k in state if k.startswith('projectors.')})
    for teacher in teachers:
        pst = _sub(state, f'projectors.{teacher}.')
        pname = f'{name} projector {teacher!r}'
        lin = _require(pst, 'linear.weight', pname, 2)
        n_blocks = len({k.split('.')[1] for k in pst if k.startswith('blocks.')})
        scale = 0.0 if 'scale' in pst else float(proj_args.get('scale', 1.0) or 1.0)
        with torch.device('meta'):
            proj = DinoV2Projector(embed_dim=cfg['embed_dim'], out_dim=int(lin.shape[0]),
                                   num_heads=cfg['num_heads'], num_blocks=n_blocks,
                                   mlp_ratio=float(proj_args.get('mlp_ratio', 4)),
                                   qkv_bias='blocks.0.attn.qkv.bias' in pst,
                                   layerscale_init=1e-4 if 'blocks.0.ls1.gamma' in pst else None, scale=scale)
        _check_state(name, proj.state_dict(), pst, f'projector {teacher!r}', f'projectors.{teacher}.')
        projectors[teacher] = proj

    norms: Dict[str, TeacherNorm] = {}
    for teacher in sorted({k.split('.')[1] for k in state if k.startswith('teacher_norms.')}):
        nst = _sub(state, f'teacher_norms.{teacher}.')
        kinds = sorted({k.split('.')[1] for k in nst if k.startswith('normalizers.')})
        if not kinds:
            raise CheckpointError(f'{name}: teacher_norms.{teacher} has no normalizers.* entries')
        dim = int(_require(nst, f'normalizers.{kinds[0]}.mean', name, 1).shape[0])
        tn = TeacherNorm(dim, kinds)
        _check_state(name, tn.state_dict(), nst, f'teacher norm {teacher!r}', f'teacher_norms.{teacher}.')
        norms[teacher] = tn

    model = DuneModel(encoder, projectors, norms)
    model.load_state_dict(dict(state), strict=True, assign=True)
    return model


def load_dune(path: PathLike, device: Union[str, torch.device] = 'cpu', dtype: Optional[torch.dtype] = None,
              allow_pickle: bool = True, prefer_safetensors: bool = True) -> DuneModel:
    """Load an official DUNE checkpoint (``.pth`` or converted ``.safetensors``) as a :class:`DuneModel` in eval mode.

    ``model.encoder`` is the hub-style encoder (final norm applied in ``forward``), ``model.projector`` the DINOv2
    projector, ``model.teacher_norms`` the teacher statistics, ``model.source_sha256`` the teacher identity (SHA-256
    of the original ``.pth``; copied onto ``model.encoder.source_sha256`` too).
    """
    state, info = read_checkpoint(path, allow_pickle=allow_pickle, prefer_safetensors=prefer_safetensors)
    model = dune_model_from_state_dict(state, info['args'], name=str(info['path']))
    model.args = info['args']
    model.source_sha256 = info['source_sha256']
    model.source_path = info['path']
    model.encoder.source_sha256 = info['source_sha256']
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval().requires_grad_(False)


def save_dune_checkpoint(path: PathLike, model: Union[DuneModel, DinoVisionTransformer],
                         args: Optional[Mapping[str, Any]] = None, iteration: int = 0) -> Path:
    """Write a DUNE model in the official ``.pth`` layout ``{'model', 'args' (Namespace), 'iter'}``.

    Used for the miniature-world teacher and for tests; ``args`` defaults to ``image_size``, ``enc_args``
    (``num_register_tokens``), ``proj_args`` (``qkv_bias``) and ``teachers`` taken from the model.
    """
    if isinstance(model, DinoVisionTransformer):
        model = DuneModel(model)
    enc = model.encoder
    default_args: Dict[str, Any] = dict(
        image_size=enc.img_size, enc_args={'num_register_tokens': enc.num_register_tokens},
        proj_args={'qkv_bias': bool(next(iter(model.projectors.values())).qkv_bias)} if len(model.projectors) else {},
        teachers=sorted(model.projectors))
    default_args.update(dict(args or {}))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tmp = p.with_name(p.name + '.tmp')
    torch.save({'model': state, 'args': argparse.Namespace(**default_args), 'iter': int(iteration)}, tmp)
    os.replace(tmp, p)
    return p


def convert_checkpoint(src: PathLike, dst: Optional[PathLike] = None, allow_pickle: bool = True,
                       validate_dune: bool = True) -> Path:
    """Convert an official pickled checkpoint to ``<stem>.safetensors`` (+ ``<stem>.json``) once.

    Works for DUNE files and other ``{'model': ...}`` checkpoints such as DUNE-MASt3R (their string entries, e.g.
    ``mast3r_model_str``, go to ``extra``). With ``validate_dune`` a file with ``encoder.*`` keys is first checked by
    building the DUNE model from it. Returns the written path.
    """
    src = Path(src)
    state, info = read_checkpoint(src, allow_pickle=allow_pickle, prefer_safetensors=False)
    if validate_dune and any(k.startswith('encoder.') for k in state):
        dune_model_from_state_dict(state, info['args'], name=str(src))
    dst = Path(dst) if dst is not None else src.with_suffix('.safetensors')
    meta = dict(format=CONVERTED_FORMAT, version=1, source_name=src.name, source_size=src.stat().st_size,
                source_sha256=info['source_sha256'], args=info['args'], extra=info['extra'],
                converted=datetime.datetime.now(datetime.timezone.utc).isoformat())
    write_safetensors(dst, state, meta)
    dst.with_suffix('.json').write_text(json.dumps(_json_safe(meta), indent=2, sort_keys=True) + '\n')
    return dst


# ---------------------------------------------------------------------------------------------------- REALM
def realm_checkpoint_tensors(encoder: RealmEncoder) -> Dict[str, torch.Tensor]:
    """The tensors of a REALM checkpoint (see the module docstring) for the encoder's current mode."""
    out: Dict[str, torch.Tensor] = {f'embedder.{k}': v for k, v in encoder.embedder.state_dict().items()}
    out['norm.weight'] = encoder.backbone.norm.weight
    out['norm.bias'] = encoder.backbone.norm.bias
    out['teacher_norm.weight'] = encoder.teacher_norm_weight
    out['teacher_norm.bias'] = encoder.teacher_norm_bias
    if encoder.merged:
        for key, value in encoder.backbone.state_dict().items():
            if not key.startswith('norm.'):
                out[f'encoder.{key}'] = value
    else:
        out.update({f'lora.{k}': v for k, v in encoder.lora_state_dict().items()})
    return out


def save_realm_checkpoint(path: PathLike, encoder: RealmEncoder, metadata: Optional[Mapping[str, Any]] = None,
                          teacher_sha256: Optional[str] = None) -> Path:
    """Save a REALM encoder (mode ``'lora'`` or ``'merged'`` per ``encoder.merged``) as safetensors + metadata.

    ``metadata`` entries (JSON-serialisable: ``voxel``, ``window``, ``training``, ``metrics``, ...) are stored as
    given; ``architecture``, ``mode``, ``format``, ``version`` are filled in. ``teacher_sha256`` defaults to
    ``metadata['teacher_sha256']`` and then to the SHA-256 the DUNE encoder was loaded with.
    """
    meta: Dict[str, Any] = dict(metadata or {})
    sha = teacher_sha256 or meta.get('teacher_sha256') or getattr(encoder.backbone, 'source_sha256', None)
    meta.update(format=REALM_FORMAT, version=1, mode='merged' if encoder.merged else 'lora',
                architecture=encoder.architecture(), teacher_sha256=sha)
    meta.setdefault('created', datetime.datetime.now(datetime.timezone.utc).isoformat())
    try:
        json.dumps(meta)
    except TypeError as error:
        raise ValueError(f'REALM checkpoint metadata must be JSON-serialisable: {error}') from error
    return write_safetensors(path, realm_checkpoint_tensors(encoder), meta)


def _teacher_identity(dune: Any) -> Optional[str]:
    return getattr(dune, 'source_sha256', None)


def _check_teacher(name: str, expected: Optional[str], actual: Optional[str], force: bool) -> None:
    if expected is None or expected == actual:
        return
    if actual is None:
        message = (f'{name}: was trained against the DUNE teacher with SHA-256 {expected}, but the supplied teacher '
                   f'has no known checkpoint hash (build it with load_dune(path) or pass teacher_sha256=); '
                   f'pass force=True to load anyway')
    else:
        message = (f'{name}: was trained against the DUNE teacher with SHA-256 {expected}, but the supplied teacher '
                   f'has SHA-256 {actual}; features would not match the heads/teacher. Pass force=True to load '
                   f'anyway')
    if force:
        log.warning('%s (forced)', message)
        return
    raise TeacherMismatchError(message)


def load_realm_checkpoint(path: PathLike, dune: Union[None, str, os.PathLike, DuneModel, DinoVisionTransformer] = None,
                          device: Union[str, torch.device] = 'cpu', force: bool = False,
                          teacher_sha256: Optional[str] = None) -> RealmEncoder:
    """Load a REALM checkpoint into a new :class:`RealmEncoder` (eval mode, on ``device``).

    Args:
        path: the ``.safetensors`` file written by :func:`save_realm_checkpoint`.
        dune: the DUNE teacher (path, :class:`DuneModel` or encoder). Required for mode ``'lora'``; optional for
            ``'merged'`` (then only used for the teacher check).
        force: load even when the teacher's SHA-256 differs from the one recorded in the checkpoint.
        teacher_sha256: the teacher identity to check against when ``dune`` carries none.
    The returned encoder has ``checkpoint_metadata`` (the parsed metadata).
    """
    p = Path(path)
    tensors, meta = read_safetensors(p)
    if meta.get('format') != REALM_FORMAT:
        raise CheckpointError(f'{p}: not a REALM checkpoint (metadata format {meta.get("format")!r}, expected '
                              f'{REALM_FORMAT!r})')
    if int(meta.get('version', 0)) != 1:
        raise CheckpointError(f'{p}: unsupported REALM checkpoint version {meta.get("version")!r}')
    mode = meta.get('mode')
    arch = meta.get('architecture') or {}
    if mode not in ('lora', 'merged') or not {'dune', 'embedder', 'lora'} <= set(arch):
        raise CheckpointError(f'{p}: REALM metadata lacks mode/architecture (mode={mode!r})')
    if isinstance(dune, (str, os.PathLike)):
        dune = load_dune(dune, device='cpu')
    if isinstance(dune, DuneModel):
        dune_sha, dune = dune.source_sha256, dune.encoder
    else:
        dune_sha = _teacher_identity(dune)
    expected_sha = meta.get('teacher_sha256')
    if dune is not None or teacher_sha256 is not None:
        _check_teacher(str(p), expected_sha, teacher_sha256 or dune_sha, force)

    dune_arch = dict(arch['dune'])
    if dune is not None:
        have = dune.architecture()
        diff = {k: (dune_arch.get(k), have.get(k)) for k in dune_arch
                if k not in ('img_size',) and dune_arch.get(k) != have.get(k)}
        if diff:
            raise CheckpointError(f'{p}: the supplied DUNE does not have the architecture the checkpoint was trained '
                                  f'with (checkpoint vs supplied): {diff}')
    elif mode == 'lora':
        raise CheckpointError(f'{p}: a LoRA-mode REALM checkpoint needs the DUNE teacher it was trained from '
                              f'(teacher SHA-256 {expected_sha}); pass dune=<path or model>')

    emb_cfg = dict(arch['embedder'])
    try:
        embedder = VoxelEmbedder(**emb_cfg)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f'{p}: invalid embedder configuration {emb_cfg}: {error}') from error
    lora = arch['lora']
    if mode == 'merged':
        with torch.device('meta'):  # every tensor comes from the file
            base = DinoVisionTransformer(**dune_arch)
        base.patch_embed = None  # type: ignore[assignment]  # the voxel embedder replaces it
        enc_state = _sub(tensors, 'encoder.')
        expected = {k: v for k, v in base.state_dict().items() if not k.startswith('norm.')}
        _check_state(str(p), expected, enc_state, 'merged encoder', 'encoder.')
        norm_state = _sub(tensors, 'norm.')
        _check_state(str(p), base.norm.state_dict(), norm_state, 'final norm', 'norm.')
        base.load_state_dict({**enc_state, **{f'norm.{k}': v for k, v in norm_state.items()}}, strict=True,
                             assign=True)
        encoder = RealmEncoder(base, embedder, lora_rank=0, lora_alpha=lora['alpha'], lora_dropout=lora['dropout'],
                               copy_dune=False, lora_targets=lora['targets'])
        encoder.lora_rank = int(lora['rank'])
        encoder.merged = True
    else:
        assert dune is not None  # checked above: mode 'lora' needs the teacher
        encoder = RealmEncoder(dune, embedder, lora_rank=int(lora['rank']), lora_alpha=lora['alpha'],
                               lora_dropout=lora['dropout'], copy_dune=True, lora_targets=lora['targets'])
        lora_state = _sub(tensors, 'lora.')
        _check_state(str(p), encoder.lora_state_dict(), lora_state, 'LoRA adapters', 'lora.')
        encoder.load_lora_state_dict(lora_state)

    known = ('embedder.', 'norm.', 'teacher_norm.', 'encoder.' if mode == 'merged' else 'lora.')
    stray = sorted(k for k in tensors if not k.startswith(known))
    if stray:
        raise CheckpointError(f'{p}: unexpected tensors for a {mode!r} REALM checkpoint: {stray[:8]}')
    _load_strict(encoder.embedder, _sub(tensors, 'embedder.'), str(p), 'embedder')
    _load_strict(encoder.backbone.norm, _sub(tensors, 'norm.'), str(p), 'final norm')
    tn = _sub(tensors, 'teacher_norm.')
    _check_state(str(p), {'weight': encoder.teacher_norm_weight, 'bias': encoder.teacher_norm_bias}, tn,
                 'teacher norm')
    with torch.no_grad():
        encoder.teacher_norm_weight.copy_(tn['weight'])
        encoder.teacher_norm_bias.copy_(tn['bias'])
    encoder.backbone.source_sha256 = expected_sha
    encoder.checkpoint_metadata = meta
    return encoder.to(device).eval()


# ---------------------------------------------------------------------------------------------------- heads
HEAD_KINDS = {'depth_bins': DepthBinsHead, 'segmentation': SegmentationHead, 'dinov2_projector': DinoV2Projector}


def _head_kind(head: nn.Module) -> str:
    for kind, cls in HEAD_KINDS.items():
        if type(head) is cls:
            return kind
    raise ValueError(f'cannot save a head of type {type(head).__name__}; supported: '
                     f'{[c.__name__ for c in HEAD_KINDS.values()]}')


def save_head_checkpoint(path: PathLike, head: nn.Module, metadata: Optional[Mapping[str, Any]] = None,
                         teacher_sha256: Optional[str] = None) -> Path:
    """Save a head (:class:`DepthBinsHead`, :class:`SegmentationHead`, :class:`DinoV2Projector`) as safetensors.

    Metadata: ``kind``, ``config`` (constructor arguments), ``teacher_sha256`` (the DUNE features it was trained on),
    plus caller entries (e.g. ``bridge``, ``training``, ``metrics``)."""
    meta: Dict[str, Any] = dict(metadata or {})
    meta.update(format=HEAD_FORMAT, version=1, kind=_head_kind(head), config=head.config(),
                teacher_sha256=teacher_sha256 or meta.get('teacher_sha256'))
    meta.setdefault('created', datetime.datetime.now(datetime.timezone.utc).isoformat())
    return write_safetensors(path, head.state_dict(), meta)


def load_head_checkpoint(path: PathLike, device: Union[str, torch.device] = 'cpu',
                         teacher_sha256: Optional[str] = None, force: bool = False,
                         kind: Optional[str] = None) -> nn.Module:
    """Load a head saved by :func:`save_head_checkpoint` (eval mode). With ``teacher_sha256`` given, a head trained
    on another teacher is refused unless ``force``; ``kind`` asserts the head type. The head carries
    ``checkpoint_metadata``."""
    p = Path(path)
    tensors, meta = read_safetensors(p)
    if meta.get('format') != HEAD_FORMAT:
        raise CheckpointError(f'{p}: not a head checkpoint (metadata format {meta.get("format")!r})')
    if meta.get('kind') not in HEAD_KINDS:
        raise CheckpointError(f'{p}: unknown head kind {meta.get("kind")!r}; known {sorted(HEAD_KINDS)}')
    if kind is not None and meta['kind'] != kind:
        raise CheckpointError(f'{p}: holds a {meta["kind"]!r} head, expected {kind!r}')
    if teacher_sha256 is not None:
        _check_teacher(str(p), meta.get('teacher_sha256'), teacher_sha256, force)
    try:
        head = HEAD_KINDS[meta['kind']](**dict(meta.get('config') or {}))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f'{p}: invalid {meta["kind"]} configuration {meta.get("config")}: {error}') from error
    _load_strict(head, tensors, str(p), f'{meta["kind"]} head')
    head.checkpoint_metadata = meta
    return head.to(device).eval()

