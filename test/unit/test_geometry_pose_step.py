"""The cheaper symmetric pose step gives the same results as the previous one: view 2's pointmap skipped in the
decoder (outputs that are returned are bit-identical), pruned matching, and the stage timings it reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.geometry.keyframes import Keyframe
from realm_ros.geometry.pose import PnpParams
from realm_ros.geometry.relative_pose import MatchingParams
from realm_ros.geometry.symmetric import PoseGates, decode_both_orders, symmetric_relative_pose
from realm_testing.models import decoder_tokens, tiny_decoder

MINI = Path(__file__).resolve().parents[2] / 'models' / 'mini_mast3r.safetensors'
K = np.array([[150.0, 0.0, 111.5], [0.0, 150.0, 111.5], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize('shapes', [((56, 56), (56, 56)), ((56, 70), (70, 42))])
@pytest.mark.parametrize('overrides', [{}, {'two_confs': False}])
def test_view2_without_points_is_bit_identical(shapes, overrides):
    dec = tiny_decoder(**overrides)
    (h1, w1), (h2, w2) = shapes
    a, b = decoder_tokens(h1 * w1 // 196, 1), decoder_tokens(h2 * w2 // 196, 2)
    with torch.inference_mode():
        full = decode_both_orders(dec, a, b, (h1, w1), (h2, w2))
        lean = decode_both_orders(dec, a, b, (h1, w1), (h2, w2), view2_points=False)
    for i, (f, g) in enumerate(zip(full, lean)):
        view2 = i in (1, 3) and dec.config.two_confs    # cur_direct, kf_swapped (without two_confs, desc_conf
        assert set(g) == ({'desc', 'desc_conf'} if view2 else set(f))     # comes from the DPT: nothing skipped)
        for key in g:
            assert torch.equal(f[key], g[key]), (i, key)


def test_local_feature_map_follows_parameter_changes_and_trains():
    """The pixel-major copy of the last local-feature layer is cached: after a weight update (in place, as an
    optimiser does) or a new state dict the map still equals the head's forward bit for bit; with gradients on, the
    map is differentiable into that layer's weights."""
    from realm_ros.models.mast3r.config import PATCH_SIZE

    def channels(head, toks, grid):
        raw = head(toks, grid)
        return raw[:, raw.shape[1] - head.head_local_features.fc2.out_features // PATCH_SIZE ** 2:].permute(0, 2, 3, 1)
    dec = tiny_decoder(3)
    head = dec.mast3r.downstream_head1
    grid = (4, 5)
    toks = [torch.randn(2, 20, dim) for dim in (dec.config.enc_embed_dim,) + (dec.config.dec_embed_dim,) * 3]
    with torch.inference_mode():
        assert torch.equal(head.local_feature_map(toks, grid), channels(head, toks, grid))
    with torch.no_grad():
        head.head_local_features.fc2.weight.mul_(1.5)
        head.head_local_features.fc2.bias.add_(0.25)
    with torch.inference_mode():
        assert torch.equal(head.local_feature_map(toks, grid), channels(head, toks, grid))
    other = tiny_decoder(4).mast3r.downstream_head1.state_dict()
    head.load_state_dict(other)
    with torch.inference_mode():
        assert torch.equal(head.local_feature_map(toks, grid), channels(head, toks, grid))
    fc2 = head.head_local_features.fc2
    fc2.weight.requires_grad_(True)
    head.local_feature_map(toks, grid).square().sum().backward()
    assert fc2.weight.grad is not None and float(fc2.weight.grad.abs().sum()) > 0


@pytest.mark.skipif(not MINI.is_file(), reason='miniature decoder not shipped')
def test_lean_outputs_bit_identical_on_the_shipped_decoder():
    """The node's case: the shipped decoder at 224 x 224, both orders batched. Its CPU DPT output is channels-last
    (the tiny decoder's above is channel-first, as is a batch of one here), so the other layout branch of the lean
    head path is checked."""
    from realm_ros.geometry.symmetric import _lean_head_outputs
    from realm_ros.models.mast3r.io import load_dune_mast3r
    dec = load_dune_mast3r(MINI)
    a, b = decoder_tokens(256, 3), decoder_tokens(256, 4)
    with torch.inference_mode():
        full = decode_both_orders(dec, a, b, (224, 224), (224, 224))
        lean = decode_both_orders(dec, a, b, (224, 224), (224, 224), view2_points=False)
        dec1, _ = dec.decode(torch.cat([a, b]), torch.cat([b, a]), (16, 16), (16, 16))     # batched, as above
        _, channels_last = _lean_head_outputs(dec.mast3r.downstream_head1, list(dec1), (16, 16), dec.config, None)
    assert channels_last == (a.device.type == 'cpu')
    for f, g in zip(full, lean):
        for key in g:
            assert torch.equal(f[key], g[key]), key


@pytest.mark.skipif(not MINI.is_file(), reason='miniature decoder not shipped')
def test_symmetric_pose_identical_with_the_cheaper_step():
    """The shipped miniature decoder on two related token sets: the new defaults (view-2 pointmap skipped, pruned
    matching) and the previous step give the same matches, inliers, poses and covariances; stage timings reported."""
    from realm_ros.models.mast3r.io import load_dune_mast3r
    dec = load_dune_mast3r(MINI)
    g = torch.Generator().manual_seed(1)            # tokens on which both orders solve with the shipped decoder
    base = torch.randn(1, 256, 192, generator=g)
    kf_tokens = base + 0.3 * torch.randn(1, 256, 192, generator=g)
    cur = base + 0.3 * torch.randn(1, 256, 192, generator=g)
    kf = Keyframe(id=0, tokens=kf_tokens, cls=torch.zeros(192), image_shape=(224, 224), K=K, stamp_ns=0,
                  source='events')
    pnp = PnpParams(iterations=200, min_inliers=4, min_inlier_ratio=0.0)   # both orders solved and compared
    gates = PoseGates(min_inliers=0, min_inlier_ratio=0.0, max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    with torch.inference_mode():
        old = symmetric_relative_pose(dec, kf, cur, (224, 224), K, pnp=pnp, gates=gates,
                                      matching=MatchingParams(prune=False), view2_points=True)
        new = symmetric_relative_pose(dec, kf, cur, (224, 224), K, pnp=pnp, gates=gates)
    assert new.matches.count > 50 and new.direct.ok and new.swapped.ok
    np.testing.assert_array_equal(new.matches.xy1, old.matches.xy1)
    np.testing.assert_array_equal(new.matches.xy2, old.matches.xy2)
    for a, b in ((new.direct, old.direct), (new.swapped, old.swapped), (new.pose, old.pose)):
        assert (a.ok, a.reason, a.num_correspondences) == (b.ok, b.reason, b.num_correspondences)
        np.testing.assert_array_equal(a.inliers, b.inliers)
        for x, y in ((a.R, b.R), (a.t, b.t), (a.covariance, b.covariance)):
            assert (x is None and y is None) or np.array_equal(x, y)
    assert new.desc_conf_median == old.desc_conf_median
    assert {'decoder', 'matching_direct', 'matching_swapped', 'pnp_direct', 'pnp_swapped',
            'combine'} <= set(new.timings_s)
    assert all(v >= 0 for v in new.timings_s.values())


@pytest.mark.parametrize('shapes', [((56, 56), (56, 56)), ((56, 70), (70, 42))])
def test_bf16_decoder_is_close_to_fp32_and_returns_fp32(shapes):
    """compute_dtype=bfloat16: every block and head under bf16 autocast, outputs cast back to fp32 and
    post-processed there: same keys and shapes, descriptors unit-norm and within bf16 rounding of fp32."""
    dec = tiny_decoder()
    (h1, w1), (h2, w2) = shapes
    a, b = decoder_tokens(h1 * w1 // 196, 1), decoder_tokens(h2 * w2 // 196, 2)
    with torch.inference_mode():
        ref = decode_both_orders(dec, a, b, (h1, w1), (h2, w2), view2_points=False)
        low = decode_both_orders(dec, a, b, (h1, w1), (h2, w2), view2_points=False, compute_dtype=torch.bfloat16)
    for f, g in zip(ref, low):
        assert set(f) == set(g)
        for key in f:
            assert g[key].dtype == torch.float32 and g[key].shape == f[key].shape
            assert not torch.equal(f[key], g[key])                       # it did run in reduced precision
        cos = (f['desc'] * g['desc']).sum(-1)
        assert torch.allclose(g['desc'].norm(dim=-1), torch.ones(()), atol=1e-5) and cos.min() > 0.98
        assert torch.allclose(g['desc_conf'], f['desc_conf'], rtol=0.05)
        if 'pts3d' in f:
            assert torch.allclose(g['pts3d'], f['pts3d'], rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match='view2_points'):
        decode_both_orders(dec, a, b, (h1, w1), (h2, w2), compute_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match='two_confs'):
        decode_both_orders(tiny_decoder(two_confs=False), a, b, (h1, w1), (h2, w2), view2_points=False,
                           compute_dtype=torch.bfloat16)


def test_heads_only_bf16_decoder_keeps_the_blocks_in_fp32(monkeypatch):
    """compute_dtype (None, bfloat16) (``pose.decoder_precision bf16-heads``): the decoder blocks run in fp32 (their
    outputs are the fp32 ones, bit for bit), the DPT and local-feature heads under bf16 autocast; outputs fp32,
    within bf16 rounding of the fp32 ones and different from them; (None, None) is the exact fp32 path."""
    from realm_ros.geometry.symmetric import DECODER_DTYPES, split_decoder_dtype
    assert DECODER_DTYPES['bf16-heads'] == (None, torch.bfloat16) and DECODER_DTYPES['fp32'] is None
    assert split_decoder_dtype(torch.bfloat16) == (torch.bfloat16, torch.bfloat16)
    assert split_decoder_dtype((None, torch.bfloat16)) == (None, torch.bfloat16)
    with pytest.raises(ValueError, match='blocks, heads'):
        split_decoder_dtype((None, None, None))
    dec = tiny_decoder()
    a, b = decoder_tokens(16, 1), decoder_tokens(16, 2)
    decoded = []
    real_decode = dec.decode

    def spy(*args):
        out = real_decode(*args)
        decoded.append([t.clone() for t in out[0]] + [t.clone() for t in out[1]])
        assert all(t.dtype == torch.float32 for t in decoded[-1])
        return out
    monkeypatch.setattr(dec, 'decode', spy)
    with torch.inference_mode():
        ref = decode_both_orders(dec, a, b, (56, 56), (56, 56), view2_points=False)
        heads = decode_both_orders(dec, a, b, (56, 56), (56, 56), view2_points=False,
                                   compute_dtype=(None, torch.bfloat16))
        exact = decode_both_orders(dec, a, b, (56, 56), (56, 56), view2_points=False, compute_dtype=(None, None))
    assert all(torch.equal(x, y) for x, y in zip(decoded[0], decoded[1]))      # the blocks: fp32, bit for bit
    for f, g, e in zip(ref, heads, exact):
        assert set(f) == set(g) == set(e)
        for key in f:
            assert g[key].dtype == torch.float32 and g[key].shape == f[key].shape
            assert not torch.equal(f[key], g[key]) and torch.equal(f[key], e[key])
        assert (f['desc'] * g['desc']).sum(-1).min() > 0.98
        assert torch.allclose(g['desc_conf'], f['desc_conf'], rtol=0.05)
        if 'pts3d' in f:
            assert torch.allclose(g['pts3d'], f['pts3d'], rtol=0.05, atol=0.05)


def test_keep_predictions_still_returns_view2_points():
    dec = tiny_decoder()
    kf = Keyframe(id=0, tokens=decoder_tokens(16, 1), cls=torch.zeros(192), image_shape=(56, 56), K=K, stamp_ns=0,
                  source='events')
    with torch.inference_mode():
        est = symmetric_relative_pose(dec, kf, decoder_tokens(16, 2), (56, 56), K, keep_predictions=True,
                                      matching=MatchingParams(subsample=4))
    assert 'pts3d_in_other_view' in est.pred_current and 'pts3d' in est.pred_keyframe


@pytest.mark.parametrize('kernel', ['sqpnp', 'ap3p'])
def test_ransac_kernels_recover_a_known_pose_with_outliers(kernel):
    from realm_ros.geometry.pose import solve_pnp
    rng = np.random.default_rng(4)
    pts = rng.uniform([-3, -2, 4], [3, 2, 12], size=(300, 3))
    R = np.array([[0.995, -0.0998, 0.0], [0.0998, 0.995, 0.0], [0.0, 0.0, 1.0]])
    R = np.linalg.svd(R)[0] @ np.linalg.svd(R)[2]
    t = np.array([0.2, -0.1, 0.5])
    cam = pts @ R.T + t
    uv = (cam @ K.T)[:, :2] / cam[:, 2:]
    uv += rng.normal(scale=0.5, size=uv.shape)
    bad = rng.random(300) < 0.6                           # 60 % outliers
    uv[bad] = rng.uniform(0, 224, size=(int(bad.sum()), 2))
    res = solve_pnp(pts, uv, K, PnpParams(iterations=1000, ransac_kernel=kernel))
    assert res.ok
    assert np.abs(res.R - R).max() < 5e-3 and np.abs(res.t - t).max() < 0.05
    assert set(np.flatnonzero(~bad)) - set(res.inliers.tolist()) == set() or res.num_inliers >= 0.95 * (~bad).sum()


def test_unknown_ransac_kernel_is_named():
    with pytest.raises(ValueError, match='ransac_kernel'):
        PnpParams(ransac_kernel='p5p')
