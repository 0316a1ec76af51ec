"""pose.symmetric in the perception pipeline with the shipped miniature models: the calibrated gates reject
event-event poses (not better than chance with this decoder) and count the reason; the one-order path publishes."""
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


def test_symmetric_gates_reject_event_poses_of_the_miniature_decoder(chunks):
    import torch
    torch.set_num_threads(1)
    sim, cs = chunks
    results = {}
    for symmetric in (False, True):
        pipe = _pipe(symmetric)
        outs = [pipe.process(c.events, 224, 224, sim.event_camera.K, c.t_end_ns) for c in cs]
        assert outs[0].pose is not None and outs[0].pose.new_keyframe          # first window: the keyframe
        results[symmetric] = (outs, pipe.diagnostics())
    outs, diag = results[False]
    assert any(o.pose is not None and not o.pose.new_keyframe for o in outs[1:])   # one order: published
    outs, diag = results[True]
    assert all(o.pose is None or o.pose.new_keyframe for o in outs[1:])           # symmetric: gated out
    assert diag.get('pose_rejected.not_better_than_chance', 0) >= 1
    pose_outs = [o for o in outs if o.matches_image is not None]
    assert pose_outs and all(np.isfinite(o.matches_image).all() for o in pose_outs)
