"""Checkpoint IO: official DUNE layout (strict, both variants), conversion, REALM and head formats, bad files."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.models import (CheckpointError, DinoV2Projector, DuneModel, RealmEncoder, SegmentationHead,
                              DepthBinsHead, TeacherMismatchError, TeacherNorm, VoxelEmbedder, TINY_EMBEDDER,
                              convert_checkpoint, dune_model_from_state_dict, load_dune, load_head_checkpoint,
                              load_realm_checkpoint, read_safetensors, save_dune_checkpoint, save_head_checkpoint,
                              save_realm_checkpoint, vit_tiny, write_safetensors)
from realm_ros.models import convert
from realm_testing.models import randomise, read_keys

TEACHERS = ('dino2reg_vitlarge_14', 'mast3r_vitlarge_16', 'multihmr_vitlarge_14_672')


def n_params(module):
    return sum(p.numel() for p in module.parameters())


class ForeignObject:
    """Something the safe unpickler does not know (pickled by reference)."""


# ------------------------------------------------------------------------------------------------- helpers
def tiny_dune(registers: int, qkv_bias: bool, seed: int = 0) -> DuneModel:
    torch.manual_seed(seed)
    encoder = randomise(vit_tiny(num_register_tokens=registers), seed)
    projectors = {t: randomise(DinoV2Projector(192, 1024, 3, qkv_bias=qkv_bias), seed + 1) for t in TEACHERS}
    norms = {t: TeacherNorm(1024, ('cls', 'patch') if t.startswith('dino2') else ('patch',)) for t in TEACHERS}
    for tn in norms.values():
        for buf in tn.buffers():
            buf.copy_(torch.rand(buf.shape) + 0.5)
    return DuneModel(encoder, projectors, norms).eval()


def write_official(path: Path, model: DuneModel, prefix: str = '', extra_args=None) -> Path:
    """The official file structure: {'model', 'args' (Namespace with numpy arrays), 'iter'}."""
    args = argparse.Namespace(image_size=224, enc_args={'num_register_tokens': model.encoder.num_register_tokens},
                              proj_args={'qkv_bias': model.projector.qkv_bias}, teachers=list(TEACHERS),
                              lr_schedule=np.linspace(0, 1e-3, 50), tnorm_ema_schedule=np.ones(50),
                              seed=np.int64(0), **(extra_args or {}))
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    torch.save({'model': state, 'args': args, 'iter': 1234}, path)
    return path


def assert_same_dune(a: DuneModel, b: DuneModel, size=224):
    img = torch.randn(1, 3, size, size)
    with torch.no_grad():
        oa, ob = a.encoder(img), b.encoder(img)
        for key in ('x_norm_clstoken', 'x_norm_patchtokens', 'x_prenorm'):
            torch.testing.assert_close(oa[key], ob[key], rtol=0, atol=0)
        ca, pa = a.get_projector_output(img)
        cb, pb = b.get_projector_output(img)
    torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    torch.testing.assert_close(ca, cb, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- official layout
def official_zero_state(drop=()):
    return {k: torch.zeros(shape) for k, shape in read_keys('keys_dune_full_checkpoint_model.txt').items()
            if not any(d(k) for d in drop)}


def test_full_size_official_layout_public_default_loads_strict():
    state = official_zero_state()
    model = dune_model_from_state_dict(state, {'image_size': 448})
    enc = model.encoder
    assert (enc.embed_dim, enc.depth, enc.num_heads, enc.img_size, enc.num_register_tokens) == (768, 12, 12, 448, 4)
    assert sorted(model.projectors) == list(TEACHERS)
    assert all(p.qkv_bias for p in model.projectors.values())
    assert sorted(model.teacher_norms['dino2reg_vitlarge_14'].normalizers) == ['cls', 'patch']
    assert sorted(model.teacher_norms['mast3r_vitlarge_16'].normalizers) == ['patch']
    assert set(model.state_dict()) == set(state) and len(state) == 232


def test_full_size_paper_variant_no_registers_no_qkv_bias():
    state = official_zero_state(drop=(lambda k: k == 'encoder.register_tokens',
                                      lambda k: k.startswith('projectors.') and k.endswith('attn.qkv.bias')))
    model = dune_model_from_state_dict(state)
    assert model.encoder.num_register_tokens == 0
    assert n_params(model.encoder) == 86_315_520
    assert n_params(model.projector) == 7_874_560 and not model.projector.qkv_bias


@pytest.mark.parametrize('registers,qkv_bias,prefix', [(0, False, ''), (4, True, 'module.'), (4, False, '_orig_mod.'),
                                                      (0, True, 'module._orig_mod.')])
def test_load_official_file_variants(tmp_path, registers, qkv_bias, prefix):
    source = tiny_dune(registers, qkv_bias)
    path = write_official(tmp_path / 'dune.pth', source, prefix)
    loaded = load_dune(path, device='cpu', allow_pickle=False)      # Namespace + numpy arrays need no full unpickle
    assert loaded.encoder.num_register_tokens == registers
    assert all(p.qkv_bias == qkv_bias for p in loaded.projectors.values())
    assert loaded.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == loaded.encoder.source_sha256
    assert loaded.args['image_size'] == 224 and loaded.args['lr_schedule']['shape'] == [50]
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key          # teacher-norm buffers kept too
    assert_same_dune(source, loaded)
    # pos-embed interpolation path gives the same numbers as the source model too
    with torch.no_grad():
        img = torch.randn(1, 3, 266, 196)
        torch.testing.assert_close(loaded.encoder(img)['x_prenorm'], source.encoder(img)['x_prenorm'], rtol=0, atol=0)


def test_foreign_pickle_objects_need_allow_pickle(tmp_path):
    path = write_official(tmp_path / 'dune.pth', tiny_dune(0, False), extra_args={'thing': ForeignObject()})
    with pytest.raises(CheckpointError, match='allow_pickle'):
        load_dune(path, allow_pickle=False)
    assert load_dune(path, allow_pickle=True).encoder.depth == 6


def test_save_dune_checkpoint_roundtrip(tmp_path):
    source = tiny_dune(4, True, seed=3)
    path = save_dune_checkpoint(tmp_path / 'teacher.pth', source)
    raw = torch.load(path, weights_only=False)
    assert set(raw) == {'model', 'args', 'iter'} and isinstance(raw['args'], argparse.Namespace)
    assert raw['args'].enc_args == {'num_register_tokens': 4}
    assert_same_dune(source, load_dune(path))


# ------------------------------------------------------------------------------------------------- bad files
def _mutate(tmp_path, fn, prefix=''):
    path = write_official(tmp_path / 'bad.pth', tiny_dune(0, False), prefix)
    ckpt = torch.load(path, weights_only=False)
    fn(ckpt)
    torch.save(ckpt, path)
    return path


BAD_CASES = {
    'missing key': (lambda c: c['model'].pop('encoder.blocks.0.3.mlp.fc2.weight'),
                    r"missing keys \(1\): \['encoder\.blocks\.0\.3\.mlp\.fc2\.weight'\]"),
    'missing cls': (lambda c: c['model'].pop('encoder.cls_token'), "missing key 'cls_token'"),
    'wrong shape': (lambda c: c['model'].__setitem__('encoder.blocks.0.1.attn.proj.weight', torch.zeros(192, 100)),
                    r'encoder\.blocks\.0\.1\.attn\.proj\.weight: file \(192, 100\) vs model \(192, 192\)'),
    'projector shape': (lambda c: c['model'].__setitem__('projectors.mast3r_vitlarge_16.blocks.0.mlp.fc1.bias',
                                                         torch.zeros(5)),
                        r'projectors\.mast3r_vitlarge_16\.blocks\.0\.mlp\.fc1\.bias: file \(5,\)'),
    'unexpected encoder key': (lambda c: c['model'].__setitem__('encoder.extra_thing', torch.zeros(3)),
                               r"unexpected keys \(1\): \['encoder\.extra_thing'\]"),
    'unexpected namespace': (lambda c: c['model'].__setitem__('decoder.weight', torch.zeros(3)),
                             'outside encoder/projectors/teacher_norms'),
    'two chunks': (lambda c: c['model'].__setitem__('encoder.blocks.1.0.norm1.weight', torch.zeros(192)),
                   'one block chunk'),
    'not a dict': (lambda c: c.clear() or c.update({'model': 'nothing'}), 'no "model" state dict'),
    'non-tensor entry': (lambda c: c['model'].__setitem__('encoder.note', 'hello'), 'not tensors'),
}


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_dune_checkpoints_name_the_problem(tmp_path, case):
    mutate, pattern = BAD_CASES[case]
    path = _mutate(tmp_path, mutate)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_dune(path)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path):
    good = write_official(tmp_path / 'good.pth', tiny_dune(0, False)).read_bytes()
    (tmp_path / 'trunc.pth').write_bytes(good[: len(good) // 2])
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    (tmp_path / 'empty.pth').write_bytes(b'')
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    torch.save({'model': {'mast3r.dec_norm.weight': torch.zeros(4), 'norm.weight': torch.zeros(4)}},
               tmp_path / 'mast3r.pth')
    for name, pattern in [('trunc.pth', 'truncated, corrupt'), ('text.pth', 'truncated, corrupt'),
                          ('empty.pth', 'truncated, corrupt'), ('list.pth', 'not a checkpoint dictionary'),
                          ('mast3r.pth', 'not a DUNE checkpoint.*DUNE-MASt3R'),
                          ('missing.pth', 'no such checkpoint file')]:
        with pytest.raises(CheckpointError, match=pattern):
            load_dune(tmp_path / name)


# ------------------------------------------------------------------------------------------------- conversion
def test_convert_and_prefer_safetensors(tmp_path, capsys):
    source = tiny_dune(4, False, seed=5)
    pth = write_official(tmp_path / 'dune.pth', source, 'module.')
    assert convert.main([str(pth)]) == 0
    st, js = tmp_path / 'dune.safetensors', tmp_path / 'dune.json'
    assert st.is_file() and js.is_file()
    meta = json.loads(js.read_text())
    assert meta['source_sha256'] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert meta['args']['enc_args'] == {'num_register_tokens': 4}
    tensors, header_meta = read_safetensors(st)
    assert header_meta['source_sha256'] == meta['source_sha256']
    assert not any(k.startswith('module.') for k in tensors)
    loaded = load_dune(pth)
    assert loaded.source_path == str(st)                             # run time prefers the converted file
    assert loaded.source_sha256 == meta['source_sha256']             # teacher identity = the original .pth
    assert_same_dune(source, loaded)
    assert load_dune(st).source_sha256 == meta['source_sha256']
    # a .pth replaced by other weights must not pick up the stale conversion
    other = tiny_dune(4, False, seed=6)
    write_official(pth, other, 'module.')
    reloaded = load_dune(pth)
    assert reloaded.source_path == str(pth)
    assert_same_dune(other, reloaded)
    capsys.readouterr()
    assert convert.main(['--info', str(st)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['dune_encoder']['num_register_tokens'] == 4 and info['projectors']['dino2reg_vitlarge_14']
    (tmp_path / 'junk.pth').write_text('junk')
    assert convert.main([str(tmp_path / 'junk.pth')]) == 2
    assert 'truncated, corrupt' in capsys.readouterr().err


def test_convert_generic_checkpoint_with_aliases_and_strings(tmp_path):
    """DUNE-MASt3R-like files: no encoder keys, aliased tensors, string entries kept as metadata."""
    w = torch.randn(4, 4)
    torch.save({'model': {'a.weight': w, 'alias.weight': w, 'b': torch.zeros(2)},
                'mast3r_model_str': 'AsymmetricMASt3R(dec_depth=12)', 'dune_backbone_name': 'x'},
               tmp_path / 'm.pth')
    out = convert_checkpoint(tmp_path / 'm.pth')
    tensors, meta = read_safetensors(out)
    assert torch.equal(tensors['a.weight'], w) and torch.equal(tensors['alias.weight'], w)
    assert meta['extra']['mast3r_model_str'] == 'AsymmetricMASt3R(dec_depth=12)'


# ------------------------------------------------------------------------------------------------- REALM format
@pytest.fixture()
def teacher_file(tmp_path):
    return write_official(tmp_path / 'teacher.pth', tiny_dune(4, False, seed=7))


def trained_student(dune: DuneModel) -> RealmEncoder:
    torch.manual_seed(8)
    student = RealmEncoder(dune.encoder, VoxelEmbedder(**TINY_EMBEDDER), lora_rank=4, lora_alpha=8)
    with torch.no_grad():
        for p in student.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return student.eval()


def student_outputs(student, seed=9):
    torch.manual_seed(seed)
    with torch.no_grad():
        return student(torch.randn(1, 5, 224, 224))


def test_realm_lora_checkpoint_roundtrip(tmp_path, teacher_file):
    dune = load_dune(teacher_file)
    student = trained_student(dune)
    meta = {'voxel': {'bins': 5, 'normalization': 'dsec'}, 'window': {'count': 150000}, 'training': {'epochs': 30}}
    path = save_realm_checkpoint(tmp_path / 'realm.safetensors', student, meta)
    tensors, saved = read_safetensors(path)
    assert saved['mode'] == 'lora' and saved['teacher_sha256'] == dune.source_sha256
    assert saved['voxel'] == meta['voxel'] and saved['architecture']['lora']['rank'] == 4
    assert 'lora.blocks.0.5.mlp.fc2.lora_B.weight' in tensors and 'norm.weight' in tensors
    assert not any(k.startswith('encoder.') for k in tensors)
    ref = student_outputs(student)
    for dune_arg in (teacher_file, dune, dune.encoder):
        loaded = load_realm_checkpoint(path, dune=dune_arg)
        out = student_outputs(loaded)
        for key in ('x_norm_clstoken', 'x_norm_patchtokens', 'x_prenorm'):
            torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
    assert loaded.checkpoint_metadata['window'] == {'count': 150000}
    torch.testing.assert_close(loaded.teacher_norm_weight, dune.encoder.norm.weight)


def test_realm_merged_checkpoint_is_self_contained(tmp_path, teacher_file):
    dune = load_dune(teacher_file)
    student = trained_student(dune)
    ref = student_outputs(student)
    student.merge_lora()
    path = save_realm_checkpoint(tmp_path / 'merged.safetensors', student)
    tensors, meta = read_safetensors(path)
    assert meta['mode'] == 'merged' and 'encoder.blocks.0.0.attn.qkv.weight' in tensors
    assert not any(k.startswith(('encoder.patch_embed', 'lora.')) for k in tensors)
    loaded = load_realm_checkpoint(path)                              # no teacher needed
    assert loaded.merged
    out = student_outputs(loaded)
    for key in ('x_norm_clstoken', 'x_norm_patchtokens'):
        assert (out[key] - ref[key]).abs().max() <= 1e-5
    load_realm_checkpoint(path, dune=dune)                            # teacher check passes with the right teacher


def test_realm_teacher_mismatch_refused_unless_forced(tmp_path, teacher_file):
    dune = load_dune(teacher_file)
    path = save_realm_checkpoint(tmp_path / 'realm.safetensors', trained_student(dune))
    other_file = write_official(tmp_path / 'other.pth', tiny_dune(4, False, seed=99))
    other = load_dune(other_file)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(TeacherMismatchError, match=f'SHA-256 {dune.source_sha256}.*{other.source_sha256}'):
        load_realm_checkpoint(path, dune=other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())   # nothing touched
    forced = load_realm_checkpoint(path, dune=other, force=True)
    assert isinstance(forced, RealmEncoder)
    with pytest.raises(TeacherMismatchError, match='no known checkpoint hash'):
        load_realm_checkpoint(path, dune=vit_tiny(num_register_tokens=4))
    load_realm_checkpoint(path, dune=vit_tiny(num_register_tokens=4), teacher_sha256=dune.source_sha256)
    with pytest.raises(CheckpointError, match='needs the DUNE teacher'):
        load_realm_checkpoint(path)
    with pytest.raises(CheckpointError, match='architecture'):
        load_realm_checkpoint(path, dune=vit_tiny(num_register_tokens=0), force=True)


def test_bad_realm_checkpoints(tmp_path, teacher_file):
    dune = load_dune(teacher_file)
    path = save_realm_checkpoint(tmp_path / 'realm.safetensors', trained_student(dune))
    tensors, meta = read_safetensors(path)

    def variant(name, change_tensors=None, change_meta=None):
        t, m = dict(tensors), json.loads(json.dumps(meta))
        if change_tensors:
            change_tensors(t)
        if change_meta:
            change_meta(m)
        return write_safetensors(tmp_path / name, t, m)

    cases = [
        (variant('a', lambda t: t.pop('lora.blocks.0.2.attn.proj.lora_A.weight')),
         r"missing keys \(1\): \['lora\.blocks\.0\.2\.attn\.proj\.lora_A\.weight'\]"),
        (variant('b', lambda t: t.__setitem__('embedder.proj.weight', torch.zeros(192, 7, 1, 1))),
         r'proj\.weight: file \(192, 7, 1, 1\)'),
        (variant('c', lambda t: t.__setitem__('stray.x', torch.zeros(1))), 'unexpected tensors'),
        (variant('d', change_meta=lambda m: m.__setitem__('format', 'something')), 'not a REALM checkpoint'),
        (variant('e', change_meta=lambda m: m.__setitem__('version', 7)), 'unsupported REALM checkpoint version'),
    ]
    for bad, pattern in cases:
        with pytest.raises(CheckpointError, match=pattern):
            load_realm_checkpoint(bad, dune=dune)
    raw = path.read_bytes()
    (tmp_path / 'trunc.safetensors').write_bytes(raw[: len(raw) - 500])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_realm_checkpoint(tmp_path / 'trunc.safetensors', dune=dune)
    convert_checkpoint(teacher_file, tmp_path / 'dune_conv.safetensors')
    with pytest.raises(CheckpointError, match='not a REALM checkpoint'):
        load_realm_checkpoint(tmp_path / 'dune_conv.safetensors', dune=dune)


# ------------------------------------------------------------------------------------------------- heads
def test_head_checkpoints_roundtrip_and_teacher_check(tmp_path):
    torch.manual_seed(10)
    heads = {'depth': DepthBinsHead(embed_dim=192, bins=64, min_depth=0.5, max_depth=20.0),
             'seg': SegmentationHead(in_dim=1024, classes=11), 'proj': DinoV2Projector(192, 1024, 3)}
    sha = 'a' * 64
    for name, head in heads.items():
        path = save_head_checkpoint(tmp_path / f'{name}.safetensors', head, {'bridge': 'teacher_norm_inverse'},
                                    teacher_sha256=sha)
        loaded = load_head_checkpoint(path, teacher_sha256=sha)
        assert type(loaded) is type(head) and loaded.config() == head.config()
        assert loaded.checkpoint_metadata['bridge'] == 'teacher_norm_inverse'
        for key, value in head.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)
        with pytest.raises(TeacherMismatchError):
            load_head_checkpoint(path, teacher_sha256='b' * 64)
        load_head_checkpoint(path, teacher_sha256='b' * 64, force=True)
    with pytest.raises(CheckpointError, match="holds a 'segmentation' head, expected 'depth_bins'"):
        load_head_checkpoint(tmp_path / 'seg.safetensors', kind='depth_bins')
    tensors, meta = read_safetensors(tmp_path / 'seg.safetensors')
    tensors['conv.weight'] = torch.zeros(12, 1024, 1, 1)
    write_safetensors(tmp_path / 'seg_bad.safetensors', tensors, meta)
    with pytest.raises(CheckpointError, match=r'conv\.weight: file \(12, 1024, 1, 1\)'):
        load_head_checkpoint(tmp_path / 'seg_bad.safetensors')
