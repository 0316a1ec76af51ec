"""The shipped miniature checkpoints (models/mini_*) reproduce models/miniature_metrics.json.

The metrics file records a small fixed subset evaluation (``subset_check``: the first frames of one held-out test
scene). This test re-simulates that subset (the simulator is deterministic), reloads the shipped files with the node's
loaders, recomputes every metric and compares within tolerances that allow for float differences between machines
(thread counts change summation order) but not for a different model. It also checks that the perception pipeline
(the node's ROS-free core) produces the same depth and semantics from the shipped files as the evaluation.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.miniature.recipe import SHIPPED_FILES

MODELS = Path(__file__).resolve().parents[2] / 'models'
PATHS = {role: MODELS / name for role, name in SHIPPED_FILES.items()}
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in PATHS.values()),
                                reason='miniature checkpoints not shipped yet (scripts/train_miniature.py writes them)')


@pytest.fixture(scope='module')
def metrics():
    return json.loads(PATHS['metrics'].read_text())


@pytest.fixture(scope='module')
def models():
    from realm_ros.miniature.evaluate import MiniModels
    torch.set_num_threads(2)
    return MiniModels.load(PATHS['teacher'], PATHS['realm'], PATHS['depth_head'], PATHS['seg_head'], PATHS['mast3r'])


def test_metrics_file_describes_the_shipped_files(metrics):
    from realm_ros.models.checkpoints import sha256_file
    total = 0
    for _role, entry in metrics['files'].items():
        path = MODELS / entry['file']
        assert sha256_file(path) == entry['sha256'], f'{path.name} is not the file the metrics were computed with'
        total += path.stat().st_size
    assert total < 30 * 2 ** 20
    test = metrics['test']
    for key in ('teacher_rgb', 'realm_events'):
        assert test['depth'][key]['abs_err_30m'] is not None and test['segmentation'][key]['miou'] is not None
    for mode in ('event_event', 'rgb_event', 'rgb_rgb'):
        assert {'auc_rot@5', 'auc_rot@10', 'auc_rot@20', 'rot_err_deg_median'} <= set(test['pose'][mode])


def _close(a, b, abs_tol, what):
    if a is None or b is None:
        assert a is None and b is None, f'{what}: {a} vs {b}'
        return
    assert abs(a - b) <= abs_tol, f'{what}: recomputed {a}, shipped {b} (tolerance {abs_tol})'


@pytest.mark.slow
def test_subset_metrics_recomputed_from_shipped_checkpoints(metrics, models):
    from realm_ros.miniature.evaluate import EvalConfig, evaluate, load_or_simulate
    sub = metrics['subset_check']
    fields = dict(sub['config'])
    fields['pair_gaps'] = tuple(fields['pair_gaps'])
    cfg = EvalConfig(**fields)
    res = evaluate(models, load_or_simulate(cfg, None, log=lambda s: None), cfg, log=lambda s: None)
    ref = sub['metrics']
    assert res['frames'] == ref['frames']
    for key in ('teacher_rgb', 'realm_events'):
        for c in ('10m', '20m', '30m'):
            _close(res['depth'][key][f'abs_err_{c}'], ref['depth'][key][f'abs_err_{c}'], 0.02, f'{key} depth {c}')
        _close(res['segmentation'][key]['miou'], ref['segmentation'][key]['miou'], 0.005, f'{key} mIoU')
    for mode, r in ref['pose'].items():
        for k in ('auc_rot@5', 'auc_rot@10', 'auc_rot@20', 'success_rate'):
            _close(res['pose'][mode][k], r[k], 0.1, f'{mode} {k}')
            if 'symmetric' in r:
                _close(res['pose'][mode]['symmetric'][k], r['symmetric'][k], 0.1, f'{mode} symmetric {k}')
    _close(res['token_cosine']['patch'], ref['token_cosine']['patch'], 0.002, 'token cosine')


@pytest.mark.slow
def test_perception_pipeline_reproduces_the_evaluated_outputs(metrics, models):
    from realm_ros.events import voxel_grid
    from realm_ros.miniature.data import sim_config, split_seeds
    from realm_ros.pipeline.core import PipelineConfig, RealmPipeline
    from realm_ros.sim.simulator import Simulator

    size = metrics['eval_config']['image_size']
    sim = Simulator(sim_config(split_seeds('test', 1)[0], size, 0.2))
    chunk = [c for c in sim.stream()][3]
    pipe = RealmPipeline(PipelineConfig(realm_checkpoint=str(PATHS['realm']), dune_checkpoint=str(PATHS['teacher']),
                                        depth_head_checkpoint=str(PATHS['depth_head']),
                                        seg_head_checkpoint=str(PATHS['seg_head']), device='cpu', precision='fp32',
                                        heads=('depth', 'semantic')))
    out = pipe.process(chunk.events, size, size, sim.event_camera.K, chunk.t_end_ns)
    with torch.no_grad():
        vox = voxel_grid(chunk.events, bins=5, height=size, width=size, normalization='dsec')[None]
        tok = models.realm(vox)
        grid = (size // 14, size // 14)
        depth = models.depth_head(tok['x_norm_patchtokens'], tok['x_norm_clstoken'], grid, out_size=(size, size))
        _, feat = models.teacher.projector(models.realm.head_tokens(tok, models.seg_bridge), grid)
        seg = models.seg_head(feat, out_size=(size, size)).argmax(1)[0].numpy()
    np.testing.assert_allclose(out.depth, depth[0, 0].numpy(), rtol=2e-3, atol=2e-3)
    assert np.mean(out.semantic == seg) > 0.99


@pytest.mark.slow
def test_shipped_decoder_does_not_contract_zero_motion_matches(metrics, models):
    """The zero-motion test on held-out frames: the same tokens as both views must match every pixel to itself.

    A decoder trained on correspondences drawn from view-1 pixels only contracts its matches toward the image
    centre (the decoder shipped before both-view training: events -3.9 % mean log radius ratio), which PnP turns into
    backward motion. The shipped decoder must stay within 1 % for RGB and for event tokens."""
    from realm_ros.miniature.data import split_seeds
    from realm_ros.miniature.evaluate import simulate_test_sequence
    from realm_ros.miniature.pose_checks import sequence_tokens, zero_motion_contraction

    size = metrics['eval_config']['image_size']
    seq = simulate_test_sequence(split_seeds('test', 1)[0], size, 0.5)
    toks = sequence_tokens(models, seq, bridge=metrics['eval_config']['mast3r_bridge'])
    frames = range(3, len(seq), 3)
    for source in ('rgb', 'event'):
        K = seq.K_rgb if source == 'rgb' else seq.K_event
        res = zero_motion_contraction(models.decoder, [toks[source][k] for k in frames], K, size)
        assert abs(res['contraction']) < 0.01, (source, res)
        assert abs(res['log_ratio_mean']) < 0.01, (source, res)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_symmetric_essential_pose_on_cuda_matches_cpu(metrics, models):
    """The pose step as the node runs it with the shipped decoder (symmetric, essential solver, the decoder's gates
    open) on CUDA and on the CPU: the device gathers the matched points, OpenCV solves on the host. Matching runs in
    fp16 on CUDA, so the match sets may differ slightly; the poses must agree closely."""
    from realm_ros.geometry.keyframes import Keyframe
    from realm_ros.geometry.pose import PnpParams
    from realm_ros.geometry.symmetric import PoseGates, symmetric_relative_pose
    from realm_ros.miniature.data import split_seeds
    from realm_ros.miniature.evaluate import MiniModels, simulate_test_sequence
    from realm_ros.miniature.pose_checks import sequence_tokens

    size = metrics['eval_config']['image_size']
    seq = simulate_test_sequence(split_seeds('test', 1)[0], size, 0.5)
    toks = sequence_tokens(models, seq, bridge=metrics['eval_config']['mast3r_bridge'])['event']
    open_gates = PoseGates(min_inliers=0, min_inlier_ratio=0.0, max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    pnp = PnpParams(solver='essential')
    gpu = MiniModels.load(PATHS['teacher'], PATHS['realm'], PATHS['depth_head'], PATHS['seg_head'], PATHS['mast3r'],
                          device='cuda')
    T = {}
    for name, dec in (('cpu', models.decoder), ('cuda', gpu.decoder)):
        kf = Keyframe(id=1, source='events', tokens=toks[3], cls=torch.zeros(1), image_shape=(size, size),
                      K=seq.K_event, stamp_ns=0)
        est = symmetric_relative_pose(dec, kf, toks[9], (size, size), seq.K_event, pnp=pnp, gates=open_gates)
        assert est.pose.ok, (name, est.pose.reason)
        T[name] = est.pose.T_ref_cur
    R = T['cpu'][:3, :3].T @ T['cuda'][:3, :3]
    assert np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))) < 0.5
    a, b = T['cpu'][:3, 3], T['cuda'][:3, 3]
    assert np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))) < 5.0
