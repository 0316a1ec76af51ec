"""Parser of the ``mast3r_model_str`` stored in DUNE-MASt3R checkpoints (``AsymmetricMASt3R(...)``).

The string is parsed with :mod:`ast`; only literal keyword values are accepted, nothing is evaluated or imported.
Keywords and their defaults: docs/models.md#checkpoint-and-model-string.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from .config import _INF, PATCH_SIZE, DuneMast3rCheckpointError, DuneMast3rConfig, Mode


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
    depth_mode = mode('depth_mode')
    if depth_mode is None:
        raise DuneMast3rCheckpointError('model string: depth_mode=None, a DUNE-MASt3R head always has a depth mode')
    try:
        return DuneMast3rConfig(
            enc_embed_dim=int(args['enc_embed_dim']), dec_embed_dim=int(args['dec_embed_dim']),
            dec_depth=int(args['dec_depth']), dec_num_heads=int(args['dec_num_heads']),
            mlp_ratio=float(args['mlp_ratio']), rope_freq=float(m.group(1)),
            norm_im2_in_dec=bool(args['norm_im2_in_dec']), desc_dim=int(m_out.group(1)),
            two_confs=bool(args['two_confs']), depth_mode=depth_mode, conf_mode=mode('conf_mode'),
            desc_mode=str(desc_mode), desc_conf_mode=mode('desc_conf_mode'),
            dpt_feature_dim=int(kw.get('realm_dpt_feature_dim', 256)),
            dpt_layer_dims=tuple(int(v) for v in kw.get('realm_dpt_layer_dims', (96, 192, 384, 768))),
            local_mlp_ratio=float(kw.get('realm_local_mlp_ratio', 4.0)),
            extra=extra)
    except (TypeError, ValueError) as exc:
        raise DuneMast3rCheckpointError(f'model string: {exc}') from None
