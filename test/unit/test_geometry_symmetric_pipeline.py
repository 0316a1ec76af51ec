"""pose.symmetric in the perception pipeline with the shipped miniature models: every event-event estimate goes
through the gates calibrated for the loaded decoder (stored in its file), each rejection is counted with its reason;
the one-order path has gates of its own (for the shipped decoder: nothing qualifies, nothing is published)."""
from pathlib import Path

import numpy as np
import pytest

MODELS = Path(__file__).resolve().parents[2] / 'models'
FILES = {k: MODELS / f'mini_{k}.safetensors' for k in ('realm', 'teacher', 'mast3r')}
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in FILES.values()), reason='miniature models not shipped')


@pytest.fixture(scope='module')
def chunks():
    from realm_ros.miniature.data import sim_config, split_seeds
    from realm_ros.sim.simulator import Simulator
    sim = Simulator(sim_config(split_seeds('test', 1)[0], 224, 0.25))
    return sim, [c for c in sim.stream()][1:7]


def _pipe(symmetric):
    from realm_ros.pipeline.core import PipelineConfig, RealmPipeline
    return RealmPipeline(PipelineConfig(realm_checkpoint=str(FILES['realm']), dune_checkpoint=str(FILES['teacher']),
                                        mast3r_checkpoint=str(FILES['mast3r']), device='cpu', precision='fp32',
                                        heads=('pose',), pose_symmetric=symmetric, pnp_iterations=300))


GATE_REASONS = {'not_better_than_chance', 'dissimilar_views', 'too_few_inliers', 'low_inlier_ratio',
                'order_disagreement_rotation', 'order_disagreement_translation', 'implausible_motion'}
PNP_REASONS = {'non_finite_input', 'too_few_matches', 'degenerate_points', 'degenerate_pixels', 'pnp_failed',
               'non_finite_pose', 'cheirality'}


def test_event_poses_go_through_the_decoders_calibrated_gates(chunks):
    import torch
    torch.set_num_threads(1)
    sim, cs = chunks
    for symmetric in (False, True):
        pipe = _pipe(symmetric)
        gates = pipe.mast3r.pose_gates['symmetric' if symmetric else 'direct']['event_event']
        outs = [pipe.process(c.events, 224, 224, sim.event_camera.K, c.t_end_ns) for c in cs]
        assert outs[0].pose is not None and outs[0].pose.new_keyframe          # first window: the keyframe
        diag = pipe.diagnostics()
        published = [o for o in outs[1:] if o.pose is not None]    # (a published pose may also start a keyframe)
        rejected = {k.split('.', 1)[1]: v for k, v in diag.items() if k.startswith('pose_rejected.')}
        assert diag['pose_attempts'] == len(published) + sum(rejected.values()), (symmetric, diag)
        assert set(rejected) <= GATE_REASONS | PNP_REASONS, rejected
        if not gates.publish:                          # this mode was not better than chance in calibration
            assert not published and set(rejected) == {'not_better_than_chance'}, (symmetric, rejected)
        else:
            assert 'not_better_than_chance' not in rejected
            for o in published:                        # what passed has the inliers the gates ask for
                assert o.pose.num_inliers >= gates.min_inliers
        pose_outs = [o for o in outs if o.matches_image is not None]
        assert pose_outs and all(np.isfinite(o.matches_image).all() for o in pose_outs)
