"""Tiny runs of every miniature-world training stage and their losses against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from realm_ros.miniature.data import split_seeds
from realm_ros.miniature.decoder import (DecoderConfig, DecoderTrainer, build_decoder, matching_loss, pts3d_loss)
from realm_ros.miniature.teacher import (TeacherConfig, TeacherPretrainer, patch_luminance_targets, round_to_half,
                                         warmup_cosine)


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_patch_luminance_targets_standardise_each_patch():
    img = torch.zeros(1, 3, 4, 4)
    img[:, :, :2, :2] = 0.7                                  # patch 0 constant -> all zeros
    img[:, :, 2:, 2:] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # patch 3: two columns
    t = patch_luminance_targets(img, 2)
    assert t.shape == (1, 4, 4)
    assert torch.allclose(t[0, 0], torch.zeros(4))
    std = torch.tensor([0.0, 1.0, 0.0, 1.0]).std()
    assert torch.allclose(t[0, 3], (torch.tensor([0.0, 1.0, 0.0, 1.0]) - 0.5) / (std + 0.02))


def test_round_to_half_is_idempotent_and_exact_in_half():
    lin = torch.nn.Linear(3, 2)
    round_to_half(lin)
    assert torch.equal(lin.weight, lin.weight.half().float())


def test_teacher_pretraining_fits_a_fixed_batch():
    cfg = TeacherConfig(image_size=56, proj_dim=16, depth_bins=16, scenes=2, steps=1, batch_size=2, lr=2e-3,
                        low_res_steps=0, warmup_steps=1, color_jitter=0.0, hflip=False, val_scenes=1, val_frames=2)
    tr = TeacherPretrainer(cfg)
    assert set(tr.model.projectors) == {'dino2reg_vitlarge_14'}
    data = tr._augment(tr.sampler.sample(2, np.random.default_rng(0)))
    first = tr.losses(data)
    assert all(math.isfinite(float(v.detach())) for v in first.values())
    for _ in range(12):
        terms = tr.losses(data)
        tr.opt.zero_grad()
        terms['loss'].backward()
        tr.opt.step()
    last = tr.losses(data)
    assert float(last['loss'].detach()) < 0.8 * float(first['loss'].detach())
    model = tr.train()                                        # one scheduled step; returns the frozen teacher
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_teacher_checkpoint_round_trip(tmp_path):
    from realm_ros.miniature.teacher import build_teacher
    from realm_ros.models.checkpoints import convert_checkpoint, load_dune, save_dune_checkpoint

    model = build_teacher(TeacherConfig(image_size=56, proj_dim=16)).eval()
    pth = save_dune_checkpoint(tmp_path / 't.pth', model, args={'enc_args': {'num_register_tokens': 0,
                                                                              'num_heads': 3}})
    st = convert_checkpoint(pth)
    loaded = load_dune(st)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        a = model.get_projector_output(x)[1]
        b = loaded.get_projector_output(x)[1]
    assert torch.allclose(a, b, atol=1e-6) and loaded.encoder.num_heads == 3


def test_pts3d_loss_hand_computed():
    gt = torch.tensor([[[[0.0, 0.0, 10.0], [0.0, 0.0, 0.5], [float('nan')] * 3]]])   # (1, 1, 3, 3)
    pred = torch.tensor([[[[0.0, 0.0, 11.0], [0.0, 0.0, 0.8], [5.0, 5.0, 5.0]]]])
    conf = torch.tensor([[[2.0, 1.0, 7.0]]])
    loss, err = pts3d_loss(pred, conf, gt, alpha=0.5)
    e = torch.tensor([1.0 / 10.0, 0.3 / 1.0])                 # relative far away, absolute (/1 m) up close
    expect = ((torch.tensor([2.0, 1.0]) * e - 0.5 * torch.log(torch.tensor([2.0, 1.0]))).sum() / 2)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert err.item() == pytest.approx(e.mean().item(), rel=1e-5)


def test_pts3d_loss_direction_term():
    gt = torch.tensor([[[[0.0, 0.0, 10.0]]]])
    pred = torch.tensor([[[[1.0, 0.0, 10.0]]]])          # 1 m sideways at 10 m
    conf = torch.ones(1, 1, 1)
    plain, rel = pts3d_loss(pred, conf, gt, alpha=0.5)
    with_dir, rel2 = pts3d_loss(pred, conf, gt, alpha=0.5, dir_weight=10.0)
    unit = pred[0, 0, 0] / pred[0, 0, 0].norm()
    d = (unit - torch.tensor([0.0, 0.0, 1.0])).norm()
    assert plain.item() == pytest.approx(0.1, rel=1e-5) and rel.item() == pytest.approx(0.1, rel=1e-5)
    assert with_dir.item() == pytest.approx(0.1 + 10.0 * d.item(), rel=1e-5) and rel2.item() == rel.item()


def test_patch_constant_init_of_local_features():
    dec = build_decoder(DecoderConfig(local_mlp_ratio=0.25, desc_dim=8))
    fc2 = dec.mast3r.downstream_head1.head_local_features.fc2
    w = fc2.weight.view(9, 196, -1)
    assert torch.equal(w, w[:, :1].expand_as(w)) and not torch.equal(w[0, 0], w[1, 0])
    tok = torch.randn(1, 4, 192)
    with torch.no_grad():
        p1, _ = dec(tok, tok, (28, 28), (28, 28))
    desc = p1['desc'][0]
    assert torch.allclose(desc[:14, :14], desc[0, 0].expand(14, 14, -1), atol=1e-6)   # constant inside a patch
    assert not torch.allclose(desc[0, 0], desc[0, 14])                              # differs between patches


def test_confidence_calibration_maps_quantiles_onto_the_pnp_thresholds():
    from realm_ros.geometry.pose import PnpParams
    from realm_ros.miniature.data import PairSampler, rgb_to_tensor
    from realm_ros.miniature.decoder import calibrate_confidences
    from realm_ros.miniature.teacher import build_teacher

    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(image_size=56, proj_dim=16)).eval()
    dec = build_decoder(DecoderConfig(local_mlp_ratio=0.25)).eval()
    seeds = split_seeds('val', 1)
    info = calibrate_confidences(dec, teacher, 56, seeds, pairs=3, keep_points=0.3, keep_matches=0.6, seed=3)
    assert info['keep_points'] == 0.3 and math.isfinite(info['point_conf_shift'])
    # same pairs as the calibration (same sampler settings and seed): 30 % of the valid pixels pass conf >= 1.5
    batch = PairSampler(seeds, 56, duration_s=6.0, min_dt=0.1, max_dt=0.4).sample(3, np.random.default_rng(3))
    with torch.no_grad():
        t1 = teacher.encoder.get_mast3r_tokens(rgb_to_tensor(batch.first.rgb))
        t2 = teacher.encoder.get_mast3r_tokens(rgb_to_tensor(batch.second.rgb))
        p1, _ = dec(t1, t2, (56, 56), (56, 56))
    valid = torch.from_numpy(np.isfinite(batch.first.depth))
    frac = (p1['conf'][valid] >= PnpParams().point_conf_threshold).float().mean().item()
    assert frac == pytest.approx(0.3, abs=0.03)


def test_matching_loss_rewards_consistent_descriptors():
    torch.manual_seed(0)
    h = w = 8
    m = 16
    desc = torch.nn.functional.normalize(torch.randn(1, h, w, 24), dim=-1)
    xy = torch.stack([torch.randperm(w * h)[:m] % w, torch.randperm(w * h)[:m] // w], -1)
    xy = torch.unique(xy, dim=0)[None]
    valid = torch.ones(1, xy.shape[1], dtype=torch.bool)
    conf = torch.ones(1, h, w)
    good, acc_good = matching_loss(desc, desc, conf, conf, xy, xy, valid, tau=0.05, beta=1.0)
    other = torch.nn.functional.normalize(torch.randn(1, h, w, 24), dim=-1)
    bad, acc_bad = matching_loss(desc, other, conf, conf, xy, xy, valid, tau=0.05, beta=1.0)
    assert acc_good.item() == 1.0 and acc_bad.item() < 0.5 and good.item() < bad.item()
    # padded (invalid) correspondences do not count
    valid2 = valid.clone()
    valid2[0, -1] = False
    part, _ = matching_loss(desc, desc, conf, conf, xy, xy, valid2, tau=0.05, beta=1.0)
    assert math.isfinite(part.item())


def test_decoder_training_steps_and_shipping_round_trip(tmp_path):
    from realm_ros.miniature.recipe import ship_checkpoint
    from realm_ros.miniature.teacher import build_teacher
    from realm_ros.models.checkpoints import convert_checkpoint
    from realm_ros.models.mast3r import load_dune_mast3r, save_dune_mast3r

    teacher = build_teacher(TeacherConfig(image_size=56, proj_dim=16)).eval()
    cfg = DecoderConfig(steps=2, batch_size=1, scenes=2, matches_per_pair=32, local_mlp_ratio=0.25, warmup_steps=1,
                        low_res_steps=0, log_every=1)
    tr = DecoderTrainer(cfg, teacher, 56, log=lambda s: None)
    dec = tr.train()
    assert len(tr.history) == 2 and all(math.isfinite(r['loss']) for r in tr.history)
    assert torch.equal(dec.mast3r.decoder_embed.weight, dec.mast3r.decoder_embed.weight.half().float())
    pth = save_dune_mast3r(tmp_path / 'dec.pth', dec, dune_backbone_name='mini_teacher')
    shipped = ship_checkpoint(convert_checkpoint(pth, validate_dune=False), tmp_path / 'dec_half.safetensors')
    loaded = load_dune_mast3r(shipped)
    tok = torch.randn(1, 16, 192)
    with torch.no_grad():
        a1, a2 = dec(tok, tok.flip(1), (56, 56), (56, 56))
        b1, b2 = loaded(tok, tok.flip(1), (56, 56), (56, 56))
    assert torch.allclose(a1['pts3d'], b1['pts3d'], atol=1e-5)     # float16 file, exact: weights were rounded
    assert torch.allclose(a2['desc'], b2['desc'], atol=1e-5)
    assert build_decoder(cfg).config == loaded.config


def test_decoder_refine_phase_starts_from_the_given_decoder_and_trains_on(tmp_path):
    from dataclasses import replace

    from realm_ros.miniature.decoder import refine_decoder
    from realm_ros.miniature.teacher import build_teacher

    teacher = build_teacher(TeacherConfig(image_size=56, proj_dim=16)).eval()
    cfg = DecoderConfig(steps=1, batch_size=1, scenes=2, matches_per_pair=32, local_mlp_ratio=0.25, warmup_steps=1,
                        low_res_steps=3, log_every=1, refine_steps=2, refine_lr=1e-3, calibration_pairs=2,
                        calibration_scenes=1)
    phase1 = DecoderTrainer(replace(cfg, refine_steps=0), teacher, 56, log=lambda s: None).train()
    start = {k: v.clone() for k, v in phase1.state_dict().items()}
    # the refine trainer copies the phase-1 weights, with its own settings: refine steps / lr, no low resolution
    tr = DecoderTrainer(cfg, teacher, 56, log=lambda s: None, init=phase1)
    assert (tr.cfg.steps, tr.cfg.lr, tr.cfg.low_res_steps, tr.cfg.seed) == (2, 1e-3, 0, cfg.seed + 1000)
    assert all(torch.equal(v, start[k]) for k, v in tr.decoder.state_dict().items())
    refined, record = refine_decoder(cfg, phase1, teacher, 56, log=lambda s: None)
    assert len(record['history']) == 2 and record['calibration']['pairs'] == 2
    assert all(torch.equal(v, start[k]) for k, v in phase1.state_dict().items())       # the input is left alone
    moved = [k for k, v in refined.state_dict().items() if not torch.equal(v, start[k])]
    assert 'mast3r.decoder_embed.weight' in moved
    w = refined.mast3r.decoder_embed.weight
    assert torch.equal(w, w.half().float()) and not w.requires_grad                  # frozen, float16-rounded
