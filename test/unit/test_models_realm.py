"""REALM student: voxel embedder size/locality, LoRA placement/counts/freezing, token drop, merge equality."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from realm_ros.models.dune import vit_base, vit_tiny
from realm_ros.models.embedder import PAPER_EMBEDDER_PARAMS, TINY_EMBEDDER, VoxelEmbedder
from realm_ros.models.realm import RealmEncoder, lora_param_count
from realm_testing.models import randomise


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------- embedder
def test_embedder_param_count_within_one_percent_of_paper():
    emb = VoxelEmbedder()
    count = n_params(emb)
    assert count == 5_232_240                                  # the chosen default widths
    assert abs(count - PAPER_EMBEDDER_PARAMS) / PAPER_EMBEDDER_PARAMS < 0.01


def test_embedder_shapes_default_and_tiny():
    tiny = VoxelEmbedder(**TINY_EMBEDDER)
    out = tiny(torch.randn(2, 5, 224, 224))
    assert out.shape == (2, 256, 192)
    assert VoxelEmbedder(grid_size=(4, 6), embed_dim=32)(torch.randn(1, 5, 64, 96)).shape == (1, 24, 32)
    with pytest.raises(ValueError, match='voxel input must be'):
        tiny(torch.randn(1, 3, 224, 224))
    with pytest.raises(ValueError, match='too small'):
        tiny(torch.randn(1, 5, 64, 64))


def test_embedder_tokens_are_local_and_row_major():
    torch.manual_seed(0)
    emb = VoxelEmbedder(**TINY_EMBEDDER).eval()
    with torch.no_grad():
        for p in emb.parameters():                        # non-trivial weights (zero-init gammas would hide blocks)
            p.add_(torch.randn_like(p) * 0.05)
        empty = torch.zeros(1, 5, 224, 224)
        active = empty.clone()
        active[..., 160:, 16:48] = torch.randn(5, 64, 32)     # events only in the bottom-left area
        changed = (emb(active) - emb(empty)).abs().amax(-1).reshape(16, 16) > 1e-6
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed[15, 2]                                  # row-major: bottom rows, left columns
    assert rows.min() >= 8 and cols.max() <= 6             # nothing leaks to far tokens (no global statistics)
    assert not changed[0, 15]


def test_embedder_inference_path_keeps_channels_last_and_the_same_tokens():
    """Without autograd the per-pixel norms hand their channels-last view straight to the next convolution (no
    NCHW copy); the tokens equal the training-path ones up to the convolutions' rounding."""
    from realm_ros.models.embedder import LayerNorm2d
    torch.manual_seed(1)
    emb = VoxelEmbedder(**TINY_EMBEDDER).eval()
    with torch.no_grad():
        for p in emb.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    occupied = torch.rand(2, 1, 224, 224) < 0.05
    voxel = torch.where(occupied, torch.randn(2, 5, 224, 224), torch.zeros(()))
    norm = LayerNorm2d(8)
    x = torch.randn(1, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y_inf = norm(x)
        fast = emb(voxel)
    y_train = norm(x)
    assert y_inf.is_contiguous(memory_format=torch.channels_last) and not y_inf.is_contiguous()
    assert y_train.is_contiguous() and torch.equal(y_inf, y_train.detach())
    reference = emb(voxel).detach()
    assert torch.allclose(fast, reference, atol=1e-5, rtol=1e-5)


def test_models_embedder_gradients_bounded_on_sparse_events():
    """Mostly-empty voxel grids (the normal case) must not blow up the embedder's gradients: with the usual
    LayerNorm eps (1e-6) the all-zero channel vectors of empty pixels amplify gradients ~1e6-fold (norm ~4e4 here)."""
    torch.manual_seed(0)
    occupied = torch.rand(2, 1, 224, 224) < 0.03
    voxel = torch.where(occupied, torch.randn(2, 5, 224, 224), torch.zeros(()))
    emb = VoxelEmbedder(**TINY_EMBEDDER)
    (emb(voxel) ** 2).mean().backward()
    grad_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in emb.parameters() if p.grad is not None))
    assert torch.isfinite(grad_norm) and float(grad_norm) < 10.0, float(grad_norm)


# ------------------------------------------------------------------------------------------------- LoRA / counts
def test_full_size_counts_match_paper():
    enc = RealmEncoder(vit_base(), VoxelEmbedder())
    lora = sum(p.numel() for n, p in enc.named_parameters() if 'lora_' in n)
    assert lora == lora_param_count(768, 12, 32) == 4_718_592
    assert n_params(enc) - lora == 5_232_240 + 85_863_168        # no patch_embed; DUNE rest = Table S6
    trainable = sum(p.numel() for p in enc.trainable_parameters())
    assert trainable == 5_232_240 + 4_718_592 + 2 * 768           # embedder + LoRA + final norm
    names = [n for n, _ in enc.named_trainable_parameters()]
    assert all(n.startswith('embedder.') or 'lora_' in n or n.startswith('backbone.norm.') for n in names)
    adapted = sorted({n.split('.lora_')[0].split('.', 4)[-1] for n in names if 'lora_' in n})
    assert adapted == ['attn.proj', 'attn.qkv', 'mlp.fc1', 'mlp.fc2']


@pytest.fixture()
def tiny_teacher():
    torch.manual_seed(0)
    return randomise(vit_tiny(num_register_tokens=4)).eval()


def make_student(teacher, **kw):
    kw.setdefault('lora_rank', 8)
    torch.manual_seed(1)
    return RealmEncoder(teacher, VoxelEmbedder(**TINY_EMBEDDER), **kw)


def test_teacher_untouched_and_gradients_only_on_trainable(tiny_teacher):
    before = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    student = make_student(tiny_teacher).train()
    assert student.backbone.patch_embed is None
    out = student(torch.randn(1, 5, 224, 224))
    (out['x_norm_patchtokens'].square().mean() + out['x_norm_clstoken'].square().mean()).backward()
    opt = torch.optim.SGD(student.trainable_parameters(), lr=1.0)
    opt.step()
    for name, p in student.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert all(torch.equal(before[k], v) for k, v in tiny_teacher.state_dict().items())
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert 'backbone.pos_embed' in frozen and 'backbone.blocks.0.0.attn.qkv.base_layer.weight' in frozen


def test_student_equals_teacher_when_embedder_is_patch_embed(tiny_teacher):
    """With zero-initialised LoRA and the RGB patch embedding as 'embedder', the student is exactly the teacher."""

    class PatchEmbedder(nn.Module):
        embed_dim, grid_size = 192, (16, 16)

        def __init__(self, pe):
            super().__init__()
            self.pe = pe

        def config(self):
            return {}

        def forward(self, x):
            return self.pe(x)

    import copy
    student = RealmEncoder(tiny_teacher, PatchEmbedder(copy.deepcopy(tiny_teacher.patch_embed)), lora_rank=4)
    student.eval()
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = student(img), tiny_teacher(img)
    for key in ('x_norm_clstoken', 'x_norm_patchtokens', 'x_prenorm', 'x_norm_regtokens'):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)


def test_merge_lora_equal_within_1e5(tiny_teacher):
    student = make_student(tiny_teacher, lora_alpha=16).eval()
    with torch.no_grad():
        for _, p in student.lora_state_dict().items():
            p.normal_(0, 0.03)
    voxel = torch.randn(2, 5, 224, 224)
    with torch.no_grad():
        unmerged = student(voxel)
        no_lora = RealmEncoder(tiny_teacher, student.embedder, lora_rank=0, copy_dune=True).eval()(voxel)
        student.merge_lora()
        merged = student(voxel)
    assert student.merged and not list(student.lora_layers())
    assert isinstance(student.backbone.blocks[0][0].attn.qkv, nn.Linear)
    assert not any('lora_' in k or 'base_layer' in k for k in student.state_dict())
    # the adapters matter ...
    assert (unmerged['x_norm_patchtokens'] - no_lora['x_norm_patchtokens']).abs().max() > 1e-2
    # ... and merging keeps the outputs
    for key in ('x_norm_clstoken', 'x_norm_patchtokens'):
        assert (unmerged[key] - merged[key]).abs().max() <= 1e-5
    pre = unmerged['x_prenorm']                                     # un-normed: |x| ~ 20 here, so relative
    assert (pre - merged['x_prenorm']).abs().max() <= 1e-5 * max(1.0, float(pre.abs().max()))
    assert student.merge_lora() is student                          # idempotent
    assert sum(p.numel() for p in student.trainable_parameters()) == n_params(student.embedder) + 2 * 192


def test_lora_scaling_follows_alpha(tiny_teacher):
    student = make_student(tiny_teacher, lora_rank=8, lora_alpha=4)
    _, layer = next(student.lora_layers())
    assert layer.scaling['default'] == pytest.approx(0.5)
    assert layer.lora_dropout['default'].p == pytest.approx(0.1)


def test_token_drop_training_only(tiny_teacher):
    student = make_student(tiny_teacher, token_drop=0.3)
    voxel = torch.randn(3, 5, 224, 224)
    student.train()
    with torch.no_grad():
        out = student(voxel)
    keep = out['keep_index']
    assert keep.shape == (3, round(256 * 0.7))
    assert out['x_norm_patchtokens'].shape == (3, keep.shape[1], 192)
    assert out['x_prenorm'].shape == (3, 1 + 4 + keep.shape[1], 192)
    for row in keep:
        assert torch.equal(row, row.unique())                     # sorted, no repeats
        assert row.min() >= 0 and row.max() < 256
    assert not torch.equal(keep[0], keep[1])
    student.eval()
    with torch.no_grad():
        out = student(voxel)
    assert out['keep_index'] is None and out['x_norm_patchtokens'].shape == (3, 256, 192)
    student.token_drop = 1.0
    student.train()
    with pytest.raises(ValueError, match='token_drop'):
        student(voxel)


def test_kept_tokens_carry_their_positions(tiny_teacher):
    """Token drop keeps each token's own positional embedding (MAE style: positions added before dropping)."""
    student = make_student(tiny_teacher, lora_rank=0, token_drop=0.5).train()
    tokens = torch.randn(1, 256, 192)
    keep = torch.tensor([[3, 17, 200]])
    x = student.backbone.tokens_from_patches(tokens, (16, 16), keep_index=keep)
    pos = student.backbone.pos_embed[0]
    expect = tokens[0, keep[0]] + pos[1 + keep[0]]
    torch.testing.assert_close(x[0, 1 + 4:], expect)
    torch.testing.assert_close(x[0, 0], student.backbone.cls_token[0, 0] + pos[0])


def test_embedder_dim_must_match(tiny_teacher):
    with pytest.raises(ValueError, match='embed_dim'):
        RealmEncoder(tiny_teacher, VoxelEmbedder(embed_dim=768, grid_size=16))


@pytest.mark.cuda
def test_cuda_bf16_autocast_student(tiny_teacher):
    student = make_student(tiny_teacher).cuda().eval()
    voxel = torch.randn(2, 5, 224, 224, device='cuda')
    with torch.no_grad():
        ref = student(voxel)['x_norm_patchtokens']
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = student(voxel)['x_norm_patchtokens']
        student.merge_lora()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            merged = student(voxel)['x_norm_patchtokens']
    assert torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1).min() > 0.98
    assert torch.nn.functional.cosine_similarity(merged.float(), ref, dim=-1).min() > 0.98
