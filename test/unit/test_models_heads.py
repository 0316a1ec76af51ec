"""Heads: parameter counts, depth-bin expectation, projector layout/outputs, segmentation, bridges, palette."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realm_ros.models.dune import vit_tiny
from realm_ros.models.heads import (DSEC_CLASSES, DSEC_PALETTE, DepthBinsHead, DinoV2Projector, SegmentationHead,
                                    bridge_tokens, colorize_segmentation, tokens_to_grid)
from realm_testing.models import randomise, read_keys


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_param_counts_match_paper():
    assert n_params(DepthBinsHead()) == 393_728
    assert n_params(DinoV2Projector(qkv_bias=False)) == 7_874_560
    assert n_params(DinoV2Projector(qkv_bias=True)) == 7_876_864
    assert n_params(SegmentationHead()) == 11_275


def test_projector_keys_equal_official():
    official = read_keys('keys_projector_dinov2.txt')
    got = {k: tuple(v.shape) for k, v in DinoV2Projector(qkv_bias=True).state_dict().items()}
    assert got == official
    no_bias = {k: tuple(v.shape) for k, v in DinoV2Projector(qkv_bias=False).state_dict().items()}
    assert no_bias == {k: v for k, v in official.items() if k != 'blocks.0.attn.qkv.bias'}


def test_projector_outputs_and_maths():
    torch.manual_seed(0)
    proj = DinoV2Projector(embed_dim=192, out_dim=64, num_heads=3).eval()
    tokens = torch.randn(2, 1 + 6 * 5, 192)
    with torch.no_grad():
        cls, patches = proj(tokens, (6, 5))
        full = proj.linear(proj.blocks[0](tokens))
    assert cls.shape == (2, 64) and patches.shape == (2, 64, 6, 5)
    torch.testing.assert_close(cls, full[:, 0])
    # row-major grid: token 1 + r*5 + c sits at (r, c)
    torch.testing.assert_close(patches[:, :, 2, 3], full[:, 1 + 2 * 5 + 3])
    learn = DinoV2Projector(embed_dim=192, out_dim=64, num_heads=3, scale=0.0)
    assert 'scale' in learn.state_dict()


def test_depth_head_expectation_and_range():
    head = DepthBinsHead(embed_dim=16, bins=256)
    centers = torch.linspace(1, 81, 256)
    assert torch.allclose(head.bin_centers, centers)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.zero_()
        head.linear.weight.zero_()
        head.linear.bias.fill_(-1e4)
        head.linear.bias[100] = 0.0                  # all mass on bin 100
    tokens = torch.randn(1, 4 * 4, 16)
    cls = torch.randn(1, 16)
    depth = head(tokens, cls, (4, 4), out_size=(56, 56))
    assert depth.shape == (1, 1, 56, 56)
    torch.testing.assert_close(depth, torch.full_like(depth, float(centers[100])))
    with torch.no_grad():
        head.linear.bias.zero_()                     # uniform softmax -> mean of the bins (41 m)
    torch.testing.assert_close(head(tokens, cls, (4, 4)), torch.full((1, 1, 4, 4), 41.0))


def test_depth_head_spatial_path_and_upsampling_modes():
    torch.manual_seed(1)
    head = DepthBinsHead(embed_dim=16).eval()
    tokens, cls = torch.randn(2, 8 * 8, 16), torch.randn(2, 16)
    with torch.no_grad():
        logits = head.bin_logits(tokens, cls, (8, 8))
        ref = (F.conv2d(tokens_to_grid(tokens, (8, 8)), head.conv.weight, head.conv.bias)
               + (cls @ head.linear.weight.T + head.linear.bias)[:, :, None, None])
        torch.testing.assert_close(logits, ref)
        coarse = head(tokens, cls, (8, 8))
        fine = head(tokens, cls, (8, 8), out_size=(32, 32))
        head.upsample_logits = True
        fine_logits = head(tokens, cls, (8, 8), out_size=(32, 32))
    assert ((coarse >= 1) & (coarse <= 81)).all()
    torch.testing.assert_close(fine, F.interpolate(coarse, size=(32, 32), mode='bilinear', align_corners=False))
    assert fine_logits.shape == fine.shape and ((fine_logits >= 1) & (fine_logits <= 81)).all()
    assert not torch.allclose(fine_logits, fine)


def test_segmentation_head():
    head = SegmentationHead()
    feats = torch.randn(1, 1024, 32, 32)
    out = head(feats, out_size=(448, 448))
    assert out.shape == (1, 11, 448, 448)
    assert head.class_names == DSEC_CLASSES
    torch.testing.assert_close(head(feats)[:, :, 5, 7], feats[:, :, 5, 7] @ head.conv.weight[:, :, 0, 0].T
                               + head.conv.bias)


def test_dsec_classes_and_palette():
    assert DSEC_CLASSES == ('sky', 'building', 'fence', 'person', 'pole', 'road', 'sidewalk', 'vegetation', 'car',
                            'wall', 'traffic light')
    assert DSEC_PALETTE.shape == (11, 3) and DSEC_PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in DSEC_PALETTE}) == 11
    ids = np.array([[0, 5], [10, 255]])
    rgb = colorize_segmentation(ids)
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 1]) == tuple(DSEC_PALETTE[5]) and tuple(rgb[1, 1]) == (0, 0, 0)
    assert tuple(colorize_segmentation(np.array([-1]))[0]) == (0, 0, 0)


def test_bridges_on_teacher_outputs():
    torch.manual_seed(2)
    model = randomise(vit_tiny(num_register_tokens=4)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
        pre = bridge_tokens(out, 'student_prenorm')
        z = bridge_tokens(out, 'teacher_norm_inverse', model.norm.weight, model.norm.bias)
    # prenorm bridge on the teacher is the official projector input
    torch.testing.assert_close(pre, torch.cat([out['x_prenorm'][:, :1], out['x_prenorm'][:, 5:]], 1))
    # the inverse bridge recovers the per-token standardised pre-norm tokens
    x = pre
    standard = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(z, standard, rtol=1e-4, atol=1e-4)
    # hence a LayerNorm-first consumer (DUNE-MASt3R wrapper norm) sees the same input either way
    torch.testing.assert_close(F.layer_norm(z, (192,), eps=1e-5), F.layer_norm(pre, (192,), eps=1e-5),
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match='unknown bridge'):
        bridge_tokens(out, 'nonsense')
    with pytest.raises(ValueError, match='needs the teacher'):
        bridge_tokens(out, 'teacher_norm_inverse')
