"""DUNE ViT: official key layout and parameter counts, block maths, pos-embed interpolation, output modes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realm_ros.models.dune import DinoVisionTransformer, interpolate_pos_embed, vit_base, vit_small, vit_tiny

from realm_testing.models import randomise, read_keys


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope='module')
def base_r4() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return vit_base(num_register_tokens=4).eval()


def test_param_counts_match_paper_and_spec(base_r4):
    r0 = vit_base()
    assert n_params(r0) == 86_315_520                      # REALM Table S6, docs/models.md#dune-encoder (0 registers)
    assert n_params(r0.patch_embed) == 452_352
    assert n_params(r0) - n_params(r0.patch_embed) == 85_863_168
    assert n_params(base_r4) == 86_318_592
    assert n_params(vit_small(num_register_tokens=4)) == 21_925_632
    tiny = vit_tiny()
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads, tiny.img_size) == (192, 6, 3, 224)
    assert tiny.pos_embed.shape == (1, 257, 192)


def test_state_dict_keys_and_shapes_equal_official(base_r4):
    official = read_keys('keys_dune_encoder.txt')
    got = {k: tuple(v.shape) for k, v in base_r4.state_dict().items()}
    assert got == official                                  # 176 entries incl. register_tokens and mask_token
    r0 = {k: tuple(v.shape) for k, v in vit_base().state_dict().items()}
    assert r0 == {k: v for k, v in official.items() if k != 'register_tokens'}
    assert len(r0) == 175


def test_layer_norm_eps_gelu_and_layerscale(base_r4):
    block = base_r4.blocks[0][0]
    assert block.norm1.eps == 1e-6 and base_r4.norm.eps == 1e-6
    assert block.mlp.act.approximate == 'none'
    assert torch.allclose(block.ls1.gamma, torch.full((768,), 1e-4))


def reference_block(block, x):
    """The block maths of docs/models.md#positional-embedding written out with explicit softmax attention."""
    b, t, d = x.shape
    h = block.attn.num_heads
    y = F.layer_norm(x, (d,), block.norm1.weight, block.norm1.bias, 1e-6)
    qkv = y @ block.attn.qkv.weight.T + block.attn.qkv.bias
    qkv = qkv.reshape(b, t, 3, h, d // h)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))           # (B, heads, T, hd)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
    o = (att @ v).transpose(1, 2).reshape(b, t, d)
    x = x + block.ls1.gamma * (o @ block.attn.proj.weight.T + block.attn.proj.bias)
    y = F.layer_norm(x, (d,), block.norm2.weight, block.norm2.bias, 1e-6)
    y = y @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
    y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))                    # exact GELU
    y = y @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return x + block.ls2.gamma * y


def test_forward_equals_reference_maths():
    torch.manual_seed(1)
    model = randomise(vit_tiny(num_register_tokens=2)).eval()
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model.forward_features(img)
        # reference: conv patches, cls, pos, registers after cls, blocks, norm
        patches = F.conv2d(img, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=14)
        patches = patches.flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token.expand(2, -1, -1), patches], 1) + model.pos_embed
        x = torch.cat([x[:, :1], model.register_tokens.expand(2, -1, -1), x[:, 1:]], 1)
        for block in model.blocks[0]:
            x = reference_block(block, x)
        xn = F.layer_norm(x, (192,), model.norm.weight, model.norm.bias, 1e-6)
    assert out['x_prenorm'].shape == (2, 1 + 2 + 256, 192)
    torch.testing.assert_close(out['x_prenorm'], x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out['x_norm_clstoken'], xn[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out['x_norm_regtokens'], xn[:, 1:3], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out['x_norm_patchtokens'], xn[:, 3:], rtol=1e-4, atol=1e-4)


def test_three_usage_modes():
    torch.manual_seed(2)
    model = randomise(vit_tiny(num_register_tokens=4)).eval()
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        hub = model(img)
        enc = model.get_encoder_output(img)
        mast3r = model.get_mast3r_tokens(img)
        raw = model.forward_features(img, apply_norm=False)
    assert enc.shape == (1, 257, 192)                       # cls + patches, registers dropped
    torch.testing.assert_close(enc[:, 0], hub['x_prenorm'][:, 0])
    torch.testing.assert_close(enc[:, 1:], hub['x_prenorm'][:, 5:])
    torch.testing.assert_close(mast3r, hub['x_prenorm'][:, 5:])
    torch.testing.assert_close(raw['x_norm_patchtokens'], mast3r)   # apply_norm=False leaves tokens un-normed
    torch.testing.assert_close(hub['x_norm_patchtokens'], model.norm(mast3r))
    assert not torch.allclose(hub['x_norm_patchtokens'], mast3r)


def test_mask_token_replaces_masked_patches():
    torch.manual_seed(3)
    model = randomise(vit_tiny()).eval()
    img = torch.randn(1, 3, 224, 224)
    masks = torch.zeros(1, 256, dtype=torch.bool)
    masks[0, :10] = True
    with torch.no_grad():
        a = model(img, masks=masks)
        # same as feeding an image whose first 10 patch embeddings equal the mask token
        tokens = model.patch_embed(img)
        tokens[0, :10] = model.mask_token
        b = model.split_outputs(model.blocks[0](model.tokens_from_patches(tokens, (16, 16))))
        c = model(img)
    torch.testing.assert_close(a['x_norm_patchtokens'], b['x_norm_patchtokens'])
    assert not torch.allclose(a['x_norm_patchtokens'], c['x_norm_patchtokens'])


def bicubic_weights(t: float, a: float = -0.75) -> np.ndarray:
    def k(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        if x < 2:
            return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
        return 0.0
    return np.array([k(t + 1), k(t), k(1 - t), k(2 - t)])


def reference_resize_1d(src: np.ndarray, out_len: int, scale: float) -> np.ndarray:
    """Bicubic (A=-0.75, border-clamped taps, half-pixel centres) along axis 0 with source step 1/scale."""
    n = src.shape[0]
    out = np.zeros((out_len,) + src.shape[1:])
    for i in range(out_len):
        x = (i + 0.5) / scale - 0.5
        x0 = math.floor(x)
        w = bicubic_weights(x - x0)
        for j, wj in enumerate(w):
            out[i] += wj * src[min(max(x0 - 1 + j, 0), n - 1)]
    return out


def test_pos_embed_interpolation_non_square_518x392():
    torch.manual_seed(4)
    pe = torch.randn(1, 1 + 32 * 32, 8)
    out = interpolate_pos_embed(pe, 37, 28)                # 518 x 392 at patch 14
    assert out.shape == (1, 1 + 37 * 28, 8)
    torch.testing.assert_close(out[:, 0], pe[:, 0])
    grid = pe[0, 1:].reshape(32, 32, 8).double().numpy()
    sh, sw = (37 + 0.1) / 32, (28 + 0.1) / 32              # "+0.1" rule: docs/models.md#positional-embedding
    ref = reference_resize_1d(grid, 37, sh)
    ref = reference_resize_1d(ref.transpose(1, 0, 2), 28, sw).transpose(1, 0, 2)
    np.testing.assert_allclose(out[0, 1:].reshape(37, 28, 8).numpy(), ref, rtol=1e-4, atol=1e-5)
    # interpolating to an output size instead of scale factors gives different numbers
    by_size = F.interpolate(pe[:, 1:].reshape(1, 32, 32, 8).permute(0, 3, 1, 2), size=(37, 28), mode='bicubic')
    assert not torch.allclose(by_size.permute(0, 2, 3, 1).reshape(1, -1, 8), out[:, 1:], atol=1e-4)


def test_pos_embed_kept_for_native_square_grid_only():
    pe = torch.randn(1, 1 + 16 * 16, 4)
    assert interpolate_pos_embed(pe, 16, 16) is pe
    assert interpolate_pos_embed(pe, 20, 20).shape == (1, 401, 4)
    model = vit_tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 518, 392))
    assert out['x_norm_patchtokens'].shape == (1, 37 * 28, 192)


def test_rejects_sizes_not_multiple_of_patch():
    model = vit_tiny()
    with pytest.raises(ValueError, match='multiple of the patch size'):
        model(torch.randn(1, 3, 225, 224))
    with pytest.raises(ValueError, match='expected an image batch'):
        model(torch.randn(1, 5, 224, 224))


def test_full_size_vit_base_forward_smoke(base_r4):
    with torch.no_grad():
        out = base_r4(torch.randn(1, 3, 224, 224))
    assert out['x_norm_patchtokens'].shape == (1, 256, 768)
    assert out['x_norm_clstoken'].shape == (1, 768)
    assert out['x_prenorm'].shape == (1, 1 + 4 + 256, 768)
    assert torch.isfinite(out['x_prenorm']).all()


@pytest.mark.cuda
def test_cuda_bf16_autocast_matches_fp32():
    torch.manual_seed(5)
    model = randomise(vit_tiny(num_register_tokens=4)).cuda().eval()
    img = torch.randn(2, 3, 224, 224, device='cuda')
    with torch.no_grad():
        ref = model(img)['x_norm_patchtokens']
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = model(img)['x_norm_patchtokens']
    assert out.dtype == torch.bfloat16
    cos = F.cosine_similarity(out.float(), ref, dim=-1)
    assert cos.min() > 0.98
