"""Head-training losses (depth: SI log + multi-scale gradient, masking, clamping; segmentation: focal + Dice with
class weights) and the teacher-feature cache."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realm_ros.training.feature_cache import FeatureCache
from realm_ros.training.heads import (depth_loss, dice_loss, focal_loss, median_frequency_weights,
                                      multiscale_gradient_loss, scale_invariant_log_loss)

torch.manual_seed(0)


def _depth(b=2, h=16, w=20):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    return (2.0 + 0.3 * xx + 0.2 * yy).float().expand(b, 1, h, w).clone()


def test_scale_invariant_log_loss_values():
    gt = _depth()
    valid = torch.ones_like(gt, dtype=torch.bool)
    d = torch.log(gt * 1.5) - torch.log(gt)  # constant log(1.5)
    assert float(scale_invariant_log_loss(d, valid, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(scale_invariant_log_loss(d, valid, 0.85)) == pytest.approx(0.15 * math.log(1.5) ** 2, rel=1e-5)
    noise = torch.randn_like(gt) * 0.1
    si = float(scale_invariant_log_loss(noise, valid, 0.85))
    per = [float((n ** 2).mean() - 0.85 * n.mean() ** 2) for n in noise]
    assert si == pytest.approx(np.mean(per), rel=1e-5)


def test_gradient_loss_ignores_offsets_and_sees_structure():
    gt = _depth()
    valid = torch.ones_like(gt, dtype=torch.bool)
    const = torch.full_like(gt, 0.3)
    assert float(multiscale_gradient_loss(const, valid, 4)) == 0.0
    step = torch.zeros_like(gt)
    step[..., 10:] = 1.0
    g1 = float(multiscale_gradient_loss(step, valid, 1))
    assert g1 == pytest.approx(16 / (16 * 19 + 15 * 20), rel=1e-5)  # one unit jump per row, per image
    assert float(multiscale_gradient_loss(step, valid, 3)) > g1


def test_depth_loss_masks_invalid_and_clamps_targets():
    gt = _depth()
    pred = gt * torch.exp(0.05 * torch.randn_like(gt))
    base = depth_loss(pred, gt, 1.0, 81.0, 1.0, 0.85, 0.5, 4)
    holes = gt.clone()
    holes[:, :, 3:6, 4:9] = float('nan')
    holes[:, :, 0, :] = 0.0          # missing
    holes[:, :, 1, :] = float('inf')
    out = depth_loss(pred, holes, 1.0, 81.0, 1.0, 0.85, 0.5, 4)
    assert torch.isfinite(out['loss']) and out['valid_fraction'] < 1.0
    assert float(out['loss']) != pytest.approx(float(base['loss']))
    # invalid pixels do not matter whatever the prediction there
    pred2 = pred.clone()
    pred2[:, :, 3:6, 4:9] = 1000.0
    assert float(depth_loss(pred2, holes, 1.0, 81.0, 1.0, 0.85, 0.5, 4)['loss']) == pytest.approx(float(out['loss']))
    # targets beyond max_depth count as max_depth
    far = torch.full_like(gt, 200.0)
    a = depth_loss(torch.full_like(gt, 81.0), far, 1.0, 81.0, 1.0, 0.85, 0.5, 4)
    assert float(a['loss']) == pytest.approx(0.0, abs=1e-6)
    # loss weights
    w = depth_loss(pred, gt, 1.0, 81.0, 2.0, 0.85, 3.0, 4)
    assert float(w['loss']) == pytest.approx(2 * float(base['si']) + 3 * float(base['grad']), rel=1e-5)


def test_focal_loss_generalises_weighted_cross_entropy():
    logits = torch.randn(2, 4, 6, 5)
    labels = torch.randint(0, 4, (2, 6, 5))
    labels[0, 0] = 255
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    fl0 = focal_loss(logits, labels, torch.ones(4), 0.0, 255)
    ce = F.cross_entropy(logits, labels, ignore_index=255)
    assert float(fl0) == pytest.approx(float(ce), rel=1e-5)
    valid = labels != 255
    wce = (F.cross_entropy(logits, labels, weight=w, ignore_index=255, reduction='none')[valid]).sum() / valid.sum()
    assert float(focal_loss(logits, labels, w, 0.0, 255)) == pytest.approx(float(wce), rel=1e-5)
    assert float(focal_loss(logits, labels, torch.ones(4), 2.0, 255)) < float(fl0)  # easy pixels down-weighted


def test_dice_loss_perfect_prediction_and_weights():
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, 0] = 255
    perfect = F.one_hot(torch.where(labels == 255, 0, labels), 3).permute(0, 3, 1, 2).float() * 50
    assert float(dice_loss(perfect, labels, torch.ones(3), 255)) == pytest.approx(0.0, abs=1e-3)
    wrong = perfect.roll(1, dims=1)
    assert float(dice_loss(wrong, labels, torch.ones(3), 255)) > 0.9
    # only class 2 wrong: its weight scales the loss
    part = perfect.clone()
    m = labels == 2
    part[:, 2][m] = -50
    part[:, 0][m] = 50
    l1 = float(dice_loss(part, labels, torch.tensor([1.0, 1.0, 1.0]), 255))
    l3 = float(dice_loss(part, labels, torch.tensor([1.0, 1.0, 4.0]), 255))
    assert l3 > l1 > 0


def test_median_frequency_weights():
    w = median_frequency_weights(np.array([100, 10, 0, 1000]))
    assert w[0] == pytest.approx(1.0) and w[1] == pytest.approx(10.0) and w[2] == 1.0
    assert w[3] == pytest.approx(0.1)
    assert median_frequency_weights(np.zeros(3)) == [1.0, 1.0, 1.0]


def test_feature_cache_round_trip_and_rounding(tmp_path):
    calls = []

    def compute(sel):
        calls.append(int(sel.sum()))
        n = int(sel.sum())
        return {'cls': torch.full((n, 4), 1 / 3), 'patch': torch.full((n, 2, 4), 2 / 3)}

    meta = {'teacher': 'abc'}
    c = FeatureCache(str(tmp_path / 'c'), 6, {'cls': (4,), 'patch': (2, 4)}, 'float16', meta)
    a = c.get_or_compute(torch.tensor([0, 3]), compute, torch.device('cpu'))
    b = c.get_or_compute(torch.tensor([3, 5]), compute, torch.device('cpu'))
    assert calls == [2, 1]  # sample 3 came from the cache
    assert torch.equal(a['cls'][1], b['cls'][0]) and a['cls'].dtype == torch.float32
    assert float(a['cls'][0, 0]) == float(torch.tensor(1 / 3).half())  # rounded even when freshly computed
    c.flush()
    again = FeatureCache(str(tmp_path / 'c'), 6, {'cls': (4,), 'patch': (2, 4)}, 'float16', meta)
    again.get_or_compute(torch.tensor([0, 3, 5]), compute, torch.device('cpu'))
    assert calls == [2, 1] and again.fill_fraction == pytest.approx(0.5)
    other = FeatureCache(str(tmp_path / 'c'), 6, {'cls': (4,), 'patch': (2, 4)}, 'float16', {'teacher': 'xyz'})
    assert other.fill_fraction == 0.0  # another teacher invalidates the cache
