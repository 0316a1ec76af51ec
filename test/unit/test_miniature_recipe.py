"""The miniature recipe end to end at toy size: every stage runs from an empty work dir, the calibrate stage stores
the pose gates in the shipped decoder, and the metrics file describes the shipped files."""
import json

import pytest


@pytest.mark.slow
def test_toy_recipe_ships_a_decoder_with_its_calibrated_gates(tmp_path):
    import torch

    from realm_ros.miniature.pose_checks import calibrated_gates
    from realm_ros.miniature.recipe import PRESETS, SHIPPED_FILES, run_recipe
    from realm_ros.models.checkpoints import sha256_file
    from realm_ros.models.mast3r import load_dune_mast3r

    threads = torch.get_num_threads()
    try:
        metrics = run_recipe(PRESETS['toy'](), tmp_path / 'work', tmp_path / 'out', log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / 'out'
    assert sorted(p.name for p in out.glob('*.safetensors')) == sorted(
        n for n in SHIPPED_FILES.values() if n.endswith('.safetensors'))
    doc = json.loads((out / SHIPPED_FILES['metrics']).read_text())
    assert doc['files'] == metrics['files'] and doc['pose_trust']['records'] == metrics['pose_trust']['records']
    for entry in doc['files'].values():                          # hashes taken after the gates were written
        assert sha256_file(out / entry['file']) == entry['sha256']
    trust = doc['pose_trust']
    assert set(trust['symmetric']['gates']) == {'rgb_rgb', 'event_event', 'rgb_event'}
    assert trust['records']['val'] > 0 and trust['records']['test'] > 0
    assert trust['view_similarity_gate'] is True and doc['recipe']['calibrate']['view_similarity_gate'] is True
    assert load_dune_mast3r(out / SHIPPED_FILES['mast3r']).pose_gates == calibrated_gates(trust)
    import pickle
    for part in ('val', 'test'):                                 # the per-pair records are kept for later studies
        recs = pickle.loads((tmp_path / 'work' / 'calibrate' / f'records_{part}.pkl').read_bytes())
        assert len(recs) == trust['records'][part]
        assert {'mode', 'kind', 'desc_conf', 'matches', 'view_similarity'} <= set(recs[0])
    for mode, r in doc['test']['pose'].items():
        assert r['symmetric']['pairs'] == r['pairs'], mode
        assert 0.0 <= r['forward_sign_ok'] <= 1.0
