"""One test per REALM recipe element: mask dilation schedule, token-drop onset, loss weights, trainable set."""
import math

import pytest
import torch

from realm_ros.models.dune import DinoVisionTransformer
from realm_ros.models.embedder import VoxelEmbedder
from realm_ros.models.realm import RealmEncoder
from realm_ros.training.config import DistillConfig, DistillLossConfig
from realm_ros.training.distill import (DistillLoss, LossWeights, dilate_token_mask, event_occupancy_mask,
                                        mask_dilation_at, token_drop_at, token_loss)
from realm_ros.training.distill_task import DistillTask, check_trainable_set, coverage_token_mask

P = 14


def _student(rank=4, size=56, seed=0):
    torch.manual_seed(seed)
    teacher = DinoVisionTransformer(img_size=size, patch_size=P, embed_dim=192, depth=2, num_heads=3)
    emb = VoxelEmbedder(in_channels=5, embed_dim=192, grid_size=size // P, widths=(16, 16, 32, 32), blocks=(1, 1, 1))
    return teacher, RealmEncoder(teacher, emb, lora_rank=rank, lora_alpha=rank, lora_dropout=0.0)


# --------------------------------------------------------------------------------------------- mask dilation
def test_mask_dilation_schedule_paper_defaults():
    c = DistillLossConfig()
    assert (c.mask_dilation_epochs, c.mask_dilation_patches) == ([10, 15, 20], [2, 4, 6])
    got = [mask_dilation_at(e, c.mask_dilation_epochs, c.mask_dilation_patches) for e in range(30)]
    assert got == [0] * 10 + [2] * 5 + [4] * 5 + [6] * 10


def test_event_mask_and_dilation_geometry():
    # one event pixel in token (row 3, col 5) of an 8x8 token grid at 112 px
    voxel = torch.zeros(1, 5, 8 * P, 8 * P)
    voxel[0, 2, 3 * P + 7, 5 * P + 1] = -0.5  # negative values count as events too
    base = event_occupancy_mask(voxel, P)
    assert base.shape == (1, 8, 8) and base.sum() == 1 and base[0, 3, 5]
    for r in (1, 2, 3):
        d = dilate_token_mask(base, r)
        rows, cols = torch.nonzero(d[0], as_tuple=True)
        # 3x3 max-pool applied r times == Chebyshev ball of radius r, clipped to the grid
        assert rows.min() == max(0, 3 - r) and rows.max() == min(7, 3 + r)
        assert cols.min() == max(0, 5 - r) and cols.max() == min(7, 5 + r)
        assert d.sum() == (min(7, 3 + r) - max(0, 3 - r) + 1) * (min(7, 5 + r) - max(0, 5 - r) + 1)
    loss = DistillLoss(LossWeights(), P)  # paper schedule
    assert torch.equal(loss.mask(voxel, 9), base)
    assert loss.mask(voxel, 10).sum() == 25 and loss.mask(voxel, 15).sum() == 8 * 7 and loss.mask(voxel, 29).all()


def test_coverage_mask_requires_full_token_coverage():
    valid = torch.ones(1, 1, 2 * P, 2 * P)
    valid[0, 0, 0, 0] = 0  # one uncovered pixel makes token (0, 0) invalid
    m = coverage_token_mask(valid, P)
    assert m.tolist() == [[[False, True], [True, True]]]


# --------------------------------------------------------------------------------------------- token drop
def test_token_drop_onset_and_effect():
    assert [token_drop_at(e, 0.3, 8) for e in (0, 7, 8, 29)] == [0.0, 0.0, 0.3, 0.3]
    teacher, student = _student()
    task = DistillTask(teacher, student, DistillLoss(LossWeights(), P), 0.3, 8, torch.device('cpu'), None, {}, {})
    student.train()
    voxel = torch.randn(2, 5, 56, 56)
    task.on_epoch_start(7)
    assert student.token_drop == 0.0 and student(voxel)['keep_index'] is None
    task.on_epoch_start(8)
    assert student.token_drop == pytest.approx(0.3)
    out = student(voxel)
    k = round(16 * 0.7)
    assert out['keep_index'].shape == (2, k) and out['x_norm_patchtokens'].shape == (2, k, 192)
    # the loss compares kept student tokens with the teacher tokens at the same positions
    teacher_out = {'x_norm_clstoken': out['x_norm_clstoken'].detach(),
                   'x_norm_patchtokens': torch.randn(2, 16, 192)}
    teacher_out['x_norm_patchtokens'].scatter_(
        1, out['keep_index'].unsqueeze(-1).expand(-1, -1, 192), out['x_norm_patchtokens'].detach())
    terms = task.loss(out, teacher_out, torch.ones(2, 4, 4, dtype=torch.bool))
    assert float(terms['loss'].detach()) == pytest.approx(0.0, abs=1e-5)
    student.eval()  # no drop at inference / validation
    assert student(voxel)['keep_index'] is None


# --------------------------------------------------------------------------------------------- loss weights
def test_token_loss_terms_match_definitions():
    torch.manual_seed(1)
    s, t = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    terms = token_loss(s, t, LossWeights(l1=0.5, cosine=2.0, mse=3.0))
    l1 = (s - t).abs().mean(-1)
    cos = 1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)
    mse = ((s - t) ** 2).mean(-1)
    assert torch.allclose(terms['l1'], l1) and torch.allclose(terms['cosine'], cos, atol=1e-6)
    assert torch.allclose(terms['mse'], mse)
    assert torch.allclose(terms['total'], 0.5 * l1 + 2.0 * cos + 3.0 * mse, atol=1e-5)
    smooth = token_loss(s, t, LossWeights(l1_beta=1.0))['l1']
    assert torch.allclose(smooth, torch.nn.functional.smooth_l1_loss(s, t, reduction='none').mean(-1))


def test_loss_weights_cls_patch_and_mask():
    torch.manual_seed(2)
    st = {'x_norm_clstoken': torch.randn(2, 8), 'x_norm_patchtokens': torch.randn(2, 4, 8)}
    te = {'x_norm_clstoken': torch.randn(2, 8), 'x_norm_patchtokens': torch.randn(2, 4, 8)}
    mask = torch.tensor([[True, False, False, False], [True, True, False, False]])
    w = LossWeights(l1=1.0, cosine=0.0, mse=0.0, cls=0.25, patch=4.0)
    out = DistillLoss(w, P)(st, te, mask)
    per = (st['x_norm_patchtokens'] - te['x_norm_patchtokens']).abs().mean(-1)
    patch = (per * mask).sum() / 3
    cls = (st['x_norm_clstoken'] - te['x_norm_clstoken']).abs().mean(-1).mean()
    assert float(out['patch_total']) == pytest.approx(float(patch), rel=1e-6)
    assert float(out['loss']) == pytest.approx(0.25 * float(cls) + 4.0 * float(patch), rel=1e-6)
    # unmasked patches do not matter; the CLS token is always supervised even with an empty mask
    te2 = {k: v.clone() for k, v in te.items()}
    te2['x_norm_patchtokens'][0, 1:] += 100
    assert float(DistillLoss(w, P)(st, te2, mask)['loss']) == pytest.approx(float(out['loss']), rel=1e-6)
    empty = DistillLoss(w, P)(st, te, torch.zeros_like(mask))
    assert float(empty['loss']) == pytest.approx(0.25 * float(cls), rel=1e-6)
    # the configuration maps onto the weights
    cfg = DistillLossConfig(l1_weight=0.1, cosine_weight=0.2, mse_weight=0.3, cls_weight=0.4, patch_weight=0.5)
    built = DistillLoss.from_config(cfg, P).weights
    assert (built.l1, built.cosine, built.mse, built.cls, built.patch) == (0.1, 0.2, 0.3, 0.4, 0.5)


# --------------------------------------------------------------------------------------------- trainable set
def test_trainable_set_is_embedder_lora_and_final_norm():
    teacher, student = _student(rank=4)
    names = check_trainable_set(student)
    assert any(n.startswith('embedder.') for n in names)
    assert any('lora_A' in n for n in names) and any('lora_B' in n for n in names)
    assert {'backbone.norm.weight', 'backbone.norm.bias'} <= set(names)
    assert all(n.startswith(('embedder.', 'backbone.norm.')) or 'lora_' in n for n in names)
    n_emb = sum(p.numel() for p in student.embedder.parameters())
    n_lora = sum(p.numel() for n, p in student.named_parameters() if 'lora_' in n)
    assert n_lora == 2 * 4 * ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192))  # 2 blocks, r=4
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) == n_emb + n_lora + 2 * 192
    # one optimisation step changes exactly the trainable set and leaves the teacher untouched
    task = DistillTask(teacher, student, DistillLoss(LossWeights(), P, spatial_mask=False), 0.0, 0,
                       torch.device('cpu'), None, {}, {})
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    batch = {'voxel': torch.randn(2, 5, 56, 56), 'rgb': torch.randn(2, 3, 56, 56),
             'valid': torch.ones(2, 1, 56, 56), 'index': torch.arange(2)}
    task.on_epoch_start(0)
    task.train_step(batch, 0)['loss'].backward()
    opt.step()
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(names)
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())
    assert all(not p.requires_grad for p in teacher.parameters())


def test_final_norm_can_be_frozen_and_leaks_are_detected():
    teacher, student = _student()
    DistillTask(teacher, student, DistillLoss(LossWeights(), P), 0.0, 0, torch.device('cpu'), None, {}, {},
                train_final_norm=False)
    assert not student.backbone.norm.weight.requires_grad
    student.backbone.blocks[0][0].attn.qkv.base_layer.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match='outside embedder/LoRA'):
        check_trainable_set(student)


def test_recipe_defaults_follow_the_paper():
    cfg = DistillConfig()
    assert cfg.loss.token_drop == 0.3 and cfg.loss.token_drop_start_epoch == 8
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.grad_clip == 1.0
    assert cfg.optim.batch_size * cfg.optim.accumulation == 512 and cfg.optim.epochs == 30
    assert cfg.model.lora_rank == 32 and cfg.model.lora_alpha == 32 and cfg.model.lora_dropout == 0.1
    assert cfg.data.window_count == 150_000 and math.isclose(cfg.data.window_ms, 33.0) and cfg.data.bins == 5
    assert cfg.data.image_size == 448
