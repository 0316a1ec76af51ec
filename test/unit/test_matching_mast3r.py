"""DUNE-MASt3R decoder: official key layout, strict loading, RoPE, decoder loop, heads and post-processing."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.models.checkpoints import CheckpointError
from realm_ros.models.mast3r import (
    PATCH_SIZE, DuneMast3rCheckpointError, DuneMast3rConfig, DuneMast3rDecoder, RoPE2D, load_dune_mast3r,
    load_dune_mast3r_backbone, parse_mast3r_model_string, patch_positions, postprocess_head_output,
    save_dune_mast3r)


KEYS_FILE = Path(__file__).resolve().parents[1] / 'data' / 'model_keys' / 'keys_mast3r_decoder.txt'
OFFICIAL_BASE_STRING = (
    "AsymmetricMASt3R(enc_depth=0, dec_depth=12, enc_embed_dim=768, dec_embed_dim=768, enc_num_heads=12, "
    "dec_num_heads=12, pos_embed='RoPE100', patch_embed_cls='PatchEmbedDust3R', img_size=(518, 518), "
    "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "two_confs=True, desc_conf_mode=('exp', 0, inf))")



def _spec_keys() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if not line or line.startswith('#'):
            continue
        key, shape, _dtype = line.split('\t')[:3]
        rows.append((key, tuple(int(v) for v in shape.strip('()').split(',') if v.strip())))
    return rows


def _tiny_model(seed: int = 0, **overrides) -> DuneMast3rDecoder:
    torch.manual_seed(seed)
    model = DuneMast3rDecoder(DuneMast3rConfig.tiny(**overrides), dune_backbone_name='dune_vittiny_14_test_encoder')
    with torch.no_grad():      # non-trivial LayerNorm affine params so that every tensor matters
        for name, p in model.named_parameters():
            if name.endswith('norm.weight') or '.norm' in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _tokens(model: DuneMast3rDecoder, hw: tuple[int, int], batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = (hw[0] // PATCH_SIZE) * (hw[1] // PATCH_SIZE)
    return torch.randn(batch, n, model.config.enc_embed_dim, generator=g) * 2 + 0.5


# ---------------------------------------------------------------------------------------------------------------
# Official layout

def test_vit_base_state_dict_equals_official_key_list():
    with torch.device('meta'):
        model = DuneMast3rDecoder(DuneMast3rConfig.vit_base())
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    spec = [(k, s) for k, s in _spec_keys() if not k.startswith('imagenet_')]
    assert ours == spec                      # same names, same shapes, same order (733 entries minus 2 buffers)
    assert len(spec) == 731
    unique = sum(p.numel() for p in model.parameters())
    assert unique == 347_389_648             # docs/models.md#parameter-counts: unique in the file
    aliases = model.alias_keys()
    assert sorted(aliases) == sorted(f'mast3r.downstream_head{h}.dpt.scratch.layer_rn.{i}.weight'
                                     for h in (1, 2) for i in range(4))
    assert aliases['mast3r.downstream_head1.dpt.scratch.layer_rn.2.weight'] == \
        'mast3r.downstream_head1.dpt.scratch.layer3_rn.weight'


def test_vit_small_variant_sizes():
    with torch.device('meta'):
        model = DuneMast3rDecoder(DuneMast3rConfig.vit_small())
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 323_479_888
    assert tuple(sd['norm.weight'].shape) == (384,)
    assert tuple(sd['mast3r.decoder_embed.weight'].shape) == (768, 384)
    assert tuple(sd['mast3r.downstream_head1.dpt.act_postprocess.0.0.weight'].shape) == (96, 384, 1, 1)
    assert tuple(sd['mast3r.downstream_head2.dpt.act_postprocess.1.0.weight'].shape) == (192, 768, 1, 1)
    assert tuple(sd['mast3r.downstream_head1.head_local_features.fc1.weight'].shape) == (4608, 1152)
    assert tuple(sd['mast3r.downstream_head1.head_local_features.fc2.weight'].shape) == (4900, 4608)


# ---------------------------------------------------------------------------------------------------------------
# Model string

def test_parse_official_string_and_defaults():
    cfg = parse_mast3r_model_string(OFFICIAL_BASE_STRING)
    assert cfg == DuneMast3rConfig.vit_base()
    assert cfg.hooks == (0, 6, 9, 12)
    assert cfg.depth_mode == ('exp', -math.inf, math.inf)
    assert cfg.conf_mode == ('exp', 1.0, math.inf) and cfg.desc_conf_mode == ('exp', 0.0, math.inf)
    # without desc_conf_mode the descriptor confidence falls back to conf_mode (vmin 1)
    no_dc = parse_mast3r_model_string(OFFICIAL_BASE_STRING.replace(", desc_conf_mode=('exp', 0, inf)", ''))
    assert no_dc.desc_conf_mode is None and no_dc.effective_desc_conf_mode == ('exp', 1.0, math.inf)
    # without two_confs the reference default is False: desc_conf = conf and no extra MLP channel
    one = parse_mast3r_model_string(OFFICIAL_BASE_STRING.replace('two_confs=True, ', ''))
    assert one.two_confs is False and one.local_feature_channels == 24
    # alternative spellings of infinity and a bare class name
    alt = parse_mast3r_model_string(OFFICIAL_BASE_STRING.replace("-inf, inf)", "float('-inf'), np.inf)")
                                    .replace("'PatchEmbedDust3R'", 'ManyAR_PatchEmbed'))
    assert alt.depth_mode == cfg.depth_mode
    for c in (DuneMast3rConfig.tiny(), DuneMast3rConfig.vit_small(), DuneMast3rConfig.tiny(two_confs=False)):
        assert parse_mast3r_model_string(c.to_model_string()) == c


@pytest.mark.parametrize('bad, fragment', [
    ("__import__('os').system('touch {marker}')", 'call such as AsymmetricMASt3R'),
    ("AsymmetricMASt3R(dec_depth=__import__('os').system('touch {marker}'))", 'unsupported expression'),
    ("AsymmetricMASt3R(dec_depth=12 + 1)", 'unsupported expression'),
    ("AsymmetricCroCo3DStereo(dec_depth=12)", 'expected AsymmetricMASt3R'),
    ("AsymmetricMASt3R(enc_depth=0, head_type='dpt', pos_embed='RoPE100', output_mode='pts3d+desc24')", 'head_type'),
    ("AsymmetricMASt3R(enc_depth=0, head_type='catmlp+dpt', output_mode='pts3d+desc24')", 'pos_embed'),
    ("AsymmetricMASt3R(enc_depth=2, head_type='catmlp+dpt', pos_embed='RoPE100', output_mode='pts3d+desc24')",
     'enc_depth'),
    ("AsymmetricMASt3R(enc_depth=0, head_type='catmlp+dpt', pos_embed='RoPE100', output_mode='pts3d+desc24', "
     "foo=1)", 'unsupported keyword'),
    ("AsymmetricMASt3R(enc_depth=0, head_type='catmlp+dpt', pos_embed='RoPE100', output_mode='pts3d+desc24', "
     "patch_size=16)", 'patch_size'),
    ("AsymmetricMASt3R(enc_depth=0, head_type='catmlp+dpt', pos_embed='RoPE100', output_mode='pts3d+desc24', "
     "depth_mode=('exp', 0, 10))", 'unbounded'),
    ("AsymmetricMASt3R(", 'not a valid call'),
])
def test_model_string_rejected_without_evaluation(tmp_path, bad, fragment):
    marker = tmp_path / 'was_evaluated'
    with pytest.raises(DuneMast3rCheckpointError, match=fragment):
        parse_mast3r_model_string(bad.format(marker=marker))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# RoPE

def _rope_direct(tokens: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """Textbook 2D RoPE in float64, element by element: pair (i, i + d/2) of each half rotated by p / base^(2i/d)."""
    b, h, n, dim = tokens.shape
    half = dim // 2
    quarter = half // 2
    out = np.empty_like(tokens, dtype=np.float64)
    for bi in range(b):
        for ni in range(n):
            for axis, offset in ((0, 0), (1, half)):       # rows rotate the first half, columns the second
                p = float(pos[bi, ni, axis])
                for i in range(quarter):
                    angle = p / base ** (2 * i / half)
                    c, s = math.cos(angle), math.sin(angle)
                    a = tokens[bi, :, ni, offset + i].astype(np.float64)
                    bb = tokens[bi, :, ni, offset + quarter + i].astype(np.float64)
                    out[bi, :, ni, offset + i] = a * c - bb * s
                    out[bi, :, ni, offset + quarter + i] = bb * c + a * s
    return out


def test_rope_matches_direct_formula():
    torch.manual_seed(0)
    tokens = torch.randn(2, 3, 12, 16)
    pos = torch.randint(0, 40, (2, 12, 2))
    got = RoPE2D(100.0)(tokens, pos).double().numpy()
    ref = _rope_direct(tokens.numpy(), pos.numpy(), 100.0)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    # a different base gives different numbers (the base is really used)
    assert not np.allclose(RoPE2D(10000.0)(tokens, pos).numpy(), got, atol=1e-3)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(1)
    rope = RoPE2D(100.0)
    q = torch.randn(1, 2, 20, 32)
    k = torch.randn(1, 2, 20, 32)
    pos = patch_positions(1, 4, 5)
    shifted = pos + torch.tensor([7, 3])
    s0 = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    s1 = rope(q, shifted) @ rope(k, shifted).transpose(-1, -2)
    torch.testing.assert_close(s0, s1, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(s0, q @ k.transpose(-1, -2), atol=1e-2)


def test_patch_positions_row_major():
    pos = patch_positions(2, 3, 4)
    assert pos.shape == (2, 12, 2) and pos.dtype == torch.int64
    assert pos[0, 5].tolist() == [1, 1] and pos[1, 11].tolist() == [2, 3] and pos[0, 3].tolist() == [0, 3]


# ---------------------------------------------------------------------------------------------------------------
# Forward semantics

def test_forward_shapes_and_names_for_odd_grid():
    model = _tiny_model()
    hw = (5 * 14, 7 * 14)          # odd grid: refinenet4 crop path
    t1, t2 = _tokens(model, hw, batch=2), _tokens(model, hw, batch=2, seed=2)
    with torch.no_grad():
        p1, p2 = model(t1, t2, hw, torch.tensor([hw, hw]))
    assert set(p1) == {'pts3d', 'conf', 'desc', 'desc_conf'}
    assert set(p2) == {'pts3d_in_other_view', 'conf', 'desc', 'desc_conf'}
    assert p1['pts3d'].shape == (2, 70, 98, 3) and p2['pts3d_in_other_view'].shape == (2, 70, 98, 3)
    assert p1['desc'].shape == (2, 70, 98, 24) and p1['conf'].shape == (2, 70, 98)
    torch.testing.assert_close(p1['desc'].norm(dim=-1), torch.ones(2, 70, 98))
    assert bool((p1['conf'] >= 1).all()) and bool((p1['desc_conf'] > 0).all())
    for p in (p1, p2):
        assert all(bool(torch.isfinite(v).all()) for v in p.values())


def test_views_of_different_sizes_and_batch_independence():
    model = _tiny_model()
    t1 = _tokens(model, (56, 84), batch=2)
    t2 = _tokens(model, (42, 42), batch=2, seed=3)
    with torch.no_grad():
        p1, p2 = model(t1, t2, (56, 84), (42, 42))
        q1, q2 = model(t1[1:], t2[1:], (56, 84), (42, 42))
    assert p1['pts3d'].shape == (2, 56, 84, 3) and p2['desc'].shape == (2, 42, 42, 24)
    torch.testing.assert_close(p1['desc'][1:], q1['desc'], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p2['conf'][1:], q2['conf'], atol=1e-5, rtol=1e-4)


def test_decoder_reads_previous_pair_symmetry():
    """With identical weights for both stacks, swapping the views swaps the decoder outputs.

    This holds only if both views' block i read the outputs of block i-1 (not view 1's fresh output).
    """
    model = _tiny_model(dec_depth=3)
    model.mast3r.dec_blocks2.load_state_dict(model.mast3r.dec_blocks.state_dict())
    hw = (42, 56)
    t1, t2 = _tokens(model, hw), _tokens(model, hw, seed=5)
    grid = (3, 4)
    with torch.no_grad():
        a1, a2 = model.decode(t1, t2, grid, grid)
        b1, b2 = model.decode(t2, t1, grid, grid)
    assert len(a1) == 4       # normed encoder tokens, block 1, block 2, dec_norm(block 3)
    for x, y in zip(a1, b2):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    # hook 0 is the wrapper-normed encoder tokens (LayerNorm eps 1e-5), the last one is dec_norm'ed
    ln = torch.nn.functional.layer_norm(t1, (t1.shape[-1],), model.norm.weight, model.norm.bias, 1e-5)
    torch.testing.assert_close(a1[0], ln)
    assert model.norm.eps == 1e-5 and model.mast3r.dec_norm.eps == 1e-6


def test_sdpa_matches_explicit_attention():
    model = _tiny_model()
    hw = (42, 56)
    t1, t2 = _tokens(model, hw), _tokens(model, hw, seed=7)
    with torch.no_grad():
        e1, _ = model(t1, t2, hw, hw)
        model.set_attention_impl('sdpa')
        s1, _ = model(t1, t2, hw, hw)
    torch.testing.assert_close(e1['pts3d'], s1['pts3d'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(e1['desc'], s1['desc'], atol=1e-4, rtol=1e-4)


def test_local_feature_pixel_shuffle_layout():
    """MLP output index c*196 + i*14 + j of token (y, x) lands in channel c at pixel (14y + i, 14x + j)."""
    cfg = DuneMast3rConfig.tiny(desc_mode='none')
    head = DuneMast3rDecoder(cfg).mast3r.downstream_head1
    mlp = head.head_local_features
    nh, nw, n = 2, 3, 6
    with torch.no_grad():
        mlp.fc1.weight.zero_()
        mlp.fc1.bias.fill_(100.0)                 # GELU(x) == x for x >= 100 in float32
        mlp.fc1.weight[0, 0] = 1.0                # hidden 0 = token id + 100
        mlp.fc2.weight.zero_()
        mlp.fc2.weight[:, 0] = 1.0
        rows = torch.arange(mlp.fc2.out_features, dtype=torch.float32)
        mlp.fc2.bias.copy_(rows * 1000.0 - 100.0)  # output r of token n = 1000 r + n
    tokens = [torch.zeros(1, n, cfg.enc_embed_dim) for _ in range(cfg.dec_depth + 1)]
    tokens[0][0, :, 0] = torch.arange(n, dtype=torch.float32)
    with torch.no_grad():
        raw = head(tokens, (nh, nw))
    desc = postprocess_head_output(raw, cfg)['desc'][0]       # (28, 42, 24)
    for (c, y, x, i, j) in [(0, 0, 0, 0, 0), (3, 1, 2, 5, 13), (23, 0, 1, 13, 0), (10, 1, 0, 7, 9)]:
        expected = 1000.0 * (c * 196 + i * 14 + j) + (y * nw + x)
        assert float(desc[14 * y + i, 14 * x + j, c]) == expected


def test_postprocess_modes():
    raw = torch.randn(1, 29, 2, 3) * 2
    cfg = DuneMast3rConfig.tiny()
    out = postprocess_head_output(raw, cfg)
    f = raw.permute(0, 2, 3, 1)
    xyz = f[..., :3]
    d = xyz.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out['pts3d'], xyz / d * torch.expm1(d))
    torch.testing.assert_close(out['conf'], 1 + f[..., 3].exp())
    torch.testing.assert_close(out['desc'], f[..., 4:28] / f[..., 4:28].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out['desc_conf'], f[..., 28].exp())
    fallback = postprocess_head_output(raw, DuneMast3rConfig.tiny(desc_conf_mode=None))
    torch.testing.assert_close(fallback['desc_conf'], 1 + f[..., 28].exp())
    lin = postprocess_head_output(raw, DuneMast3rConfig.tiny(depth_mode=('linear', -math.inf, math.inf)))
    torch.testing.assert_close(lin['pts3d'], xyz)


def test_forward_rejects_bad_inputs():
    model = _tiny_model()
    t = _tokens(model, (42, 42))
    with pytest.raises(ValueError, match='shape1'):
        model(t, t, (40, 42), (42, 42))
    with pytest.raises(ValueError, match='tokens2 has 9 tokens, a 42x56'):
        model(_tokens(model, (42, 56)), t, (42, 56), (42, 56))
    with pytest.raises(ValueError, match='width'):
        model(t[..., :100], t[..., :100], (42, 42), (42, 42))
    with pytest.raises(ValueError, match='batch sizes differ'):
        model(torch.cat([t, t]), t, (42, 42), (42, 42))


# ---------------------------------------------------------------------------------------------------------------
# Strict loading

def _official_dict(model: DuneMast3rDecoder, imagenet: bool = True, **extra) -> dict:
    """Checkpoint dict in the layout of dunemast3r_cvpr25_*.pth, built here with the official key names."""
    state = {}
    if imagenet:
        state['imagenet_mean'] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        state['imagenet_std'] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    state.update(model.state_dict())
    return {'model': state, 'dune_backbone_name': 'dune_vittiny_14_test_encoder',
            'mast3r_model_str': model.config.to_model_string(), **extra}


def test_roundtrip_outputs_identical(tmp_path):
    writer = _tiny_model(seed=3)
    path = save_dune_mast3r(tmp_path / 'dunemast3r_tiny.pth', writer)
    loaded = load_dune_mast3r(path, device='cpu')
    assert loaded.dune_backbone_name == 'dune_vittiny_14_test_encoder'
    assert loaded.config == writer.config
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    hw = (56, 70)
    t1, t2 = _tokens(writer, hw), _tokens(writer, hw, seed=9)
    with torch.no_grad():
        a1, a2 = writer(t1, t2, hw, hw)
        b1, b2 = loaded(t1, t2, hw, hw)
    for a, b in ((a1, b1), (a2, b2)):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    # the alias keys share storage after loading, as in the official module
    s = loaded.mast3r.downstream_head2.dpt.scratch
    assert s.layer_rn[3].weight is s.layer4_rn.weight


def test_official_layout_variants_load(tmp_path):
    """Official top-level layout with training args, an object needing full unpickling, no buffers, prefixes."""
    import argparse
    import datetime
    writer = _tiny_model(seed=4)
    ref = writer.state_dict()
    variants = {
        'namespace.pth': _official_dict(writer, args=argparse.Namespace(lr=1e-4, schedule=np.arange(3))),
        'pickled.pth': _official_dict(writer, created=datetime.date(2025, 6, 26)),
        'noimagenet.pth': _official_dict(writer, imagenet=False),
        'ddp.pth': {**_official_dict(writer), 'model': {'module.' + k: v for k, v in
                                                        _official_dict(writer)['model'].items()}},
        'no_alias.pth': {**_official_dict(writer), 'model': {k: v for k, v in _official_dict(writer)['model'].items()
                                                             if '.layer_rn.' not in k}},
    }
    for name, ckpt in variants.items():
        torch.save(ckpt, tmp_path / name)
        model = load_dune_mast3r(tmp_path / name)
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref[k]), (name, k)
    with pytest.raises(CheckpointError, match='allow_pickle is False'):
        load_dune_mast3r(tmp_path / 'pickled.pth', allow_pickle=False)


def test_converted_safetensors_loads(tmp_path):
    """realm-convert-checkpoint output (safetensors + extra strings) loads directly, preferred next to the .pth."""
    from realm_ros.models.checkpoints import convert_checkpoint
    writer = _tiny_model(seed=5)
    pth = save_dune_mast3r(tmp_path / 'dm.pth', writer)
    st = convert_checkpoint(pth)
    assert st.suffix == '.safetensors'
    hw = (42, 56)
    t1, t2 = _tokens(writer, hw), _tokens(writer, hw, seed=3)
    with torch.no_grad():
        ref, _ = writer(t1, t2, hw, hw)
        for path in (st, pth):
            model = load_dune_mast3r(path)
            assert model.dune_backbone_name == 'dune_vittiny_14_test_encoder'
            out, _ = model(t1, t2, hw, hw)
            assert torch.equal(out['desc'], ref['desc']) and torch.equal(out['pts3d'], ref['pts3d'])


def _mutated(writer, fn):
    ckpt = _official_dict(writer)
    fn(ckpt)
    return ckpt


@pytest.mark.parametrize('mutate, fragment', [
    (lambda c: c['model'].pop('mast3r.dec_blocks2.1.norm_y.bias'), 'missing key.*dec_blocks2.1.norm_y.bias'),
    (lambda c: c['model'].pop('mast3r.enc_norm.weight'), 'missing key.*enc_norm.weight'),
    (lambda c: c['model'].update({'mast3r.dec_blocks.9.attn.qkv.weight': torch.zeros(3)}),
     'unexpected key.*dec_blocks.9'),
    (lambda c: c['model'].update({'mast3r.decoder_embed.weight': torch.zeros(192, 96)}),
     r'decoder_embed.weight: shape \(192, 96\)'),
    (lambda c: c['model']['mast3r.dec_norm.bias'].__setitem__(0, float('nan')), 'dec_norm.bias: contains NaN'),
    (lambda c: c['model'].update({'mast3r.downstream_head1.dpt.scratch.layer_rn.1.weight':
                                  torch.randn_like(c['model']['mast3r.downstream_head1.dpt.scratch.layer2_rn.weight'])}),
     'layer_rn.1.weight is an alias'),
    (lambda c: c['model'].update({'imagenet_mean': torch.zeros(3)}), 'imagenet_mean: shape'),
    (lambda c: c['model'].update({'norm.weight': torch.ones(192, dtype=torch.int64)}), 'norm.weight: dtype'),
    (lambda c: c.update({'mast3r_model_str': c['mast3r_model_str'].replace('dec_depth=2', 'dec_depth=3')}),
     'missing key.*dec_blocks.2'),
    (lambda c: c.pop('mast3r_model_str'), 'missing top-level key mast3r_model_str'),
    (lambda c: c.update({'model': [1, 2]}), 'no "model" state dict'),
    (lambda c: c.update({'mast3r_model_str': "os.system('x')"}), 'call such as'),
])
def test_strict_loading_rejects(tmp_path, mutate, fragment):
    writer = _tiny_model(seed=6)
    path = tmp_path / 'bad.pth'
    torch.save(_mutated(writer, mutate), path)
    with pytest.raises(CheckpointError, match=fragment) as info:
        load_dune_mast3r(path)
    assert str(path) in str(info.value)


def test_unreadable_files_rejected(tmp_path):
    writer = _tiny_model(seed=7)
    good = save_dune_mast3r(tmp_path / 'good.pth', writer)
    data = good.read_bytes()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(os.urandom(4096))
    not_dict = tmp_path / 'list.pth'
    torch.save([1, 2, 3], not_dict)
    for path, fragment in ((truncated, 'cannot read the file'), (garbage, 'cannot read the file'),
                           (not_dict, 'not a checkpoint dictionary')):
        with pytest.raises(CheckpointError, match=fragment):
            load_dune_mast3r(path)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_dune_mast3r(tmp_path / 'nope.pth')


def test_full_wrapper_with_dune_backbone_and_cross_modal_pair(tmp_path):
    """A file that also holds ``dune_backbone.*``: decoder loads, the encoder comes from the DUNE loader; RGB tokens
    from that encoder and event-like tokens from elsewhere form a (cross-modal) pair."""
    from realm_ros.models.dune import vit_tiny
    torch.manual_seed(0)
    encoder = vit_tiny(img_size=56).eval()
    writer = _tiny_model(seed=10)
    ckpt = _official_dict(writer)
    ckpt['model'].update({'dune_backbone.' + k: v for k, v in encoder.state_dict().items()})
    torch.save(ckpt, tmp_path / 'full.pth')
    decoder = load_dune_mast3r(tmp_path / 'full.pth')
    backbone = load_dune_mast3r_backbone(tmp_path / 'full.pth')
    assert backbone is not None
    for k, v in encoder.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    save_dune_mast3r(tmp_path / 'plain.pth', writer)
    assert load_dune_mast3r_backbone(tmp_path / 'plain.pth') is None
    img = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        rgb_tokens = backbone.get_mast3r_tokens(img)                  # (1, 16, 192), no final norm
        event_tokens = torch.randn_like(rgb_tokens)
        p1, p2 = decoder(rgb_tokens, event_tokens, (56, 56), (56, 56))
        q1, _ = writer(rgb_tokens, event_tokens, (56, 56), (56, 56))
    assert rgb_tokens.shape == (1, 16, 192)
    assert torch.equal(p1['pts3d'], q1['pts3d']) and p2['desc'].shape == (1, 56, 56, 24)


def test_cast_decoder_keeps_heads_float32():
    model = _tiny_model()
    model.cast_decoder(torch.bfloat16)
    hw = (42, 42)
    t = _tokens(model, hw)
    with torch.no_grad():
        p1, p2 = model(t, t, hw, hw)
    assert model.mast3r.dec_blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.mast3r.downstream_head1.dpt.head[0].weight.dtype == torch.float32
    assert p1['pts3d'].dtype == torch.float32 and bool(torch.isfinite(p1['desc']).all())


@pytest.mark.cuda
def test_cuda_matches_cpu(tmp_path):
    writer = _tiny_model(seed=8)
    path = save_dune_mast3r(tmp_path / 'm.pth', writer)
    gpu = load_dune_mast3r(path, device='cuda')
    hw = (56, 56)
    t1, t2 = _tokens(writer, hw), _tokens(writer, hw, seed=2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        a1, _ = writer(t1, t2, hw, hw)
        b1, _ = gpu(t1.cuda(), t2.cuda(), hw, hw)
    torch.testing.assert_close(a1['pts3d'], b1['pts3d'].cpu(), atol=1e-3, rtol=1e-3)
