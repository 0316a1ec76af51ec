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
    assert trust['fp_confidence'] == doc['recipe']['calibrate']['fp_confidence'] == 0.95     # the stricter rule
    shipped = load_dune_mast3r(out / SHIPPED_FILES['mast3r'])
    assert shipped.pose_gates == calibrated_gates(trust)
    # the decoder records the pose compute the gates were calibrated (and the test figures evaluated) with
    cal = doc['recipe']['calibrate']
    assert shipped.pose_gates_compute == {'decoder_precision': cal['decoder_precision'], 'solver': cal['solver'],
                                          'length_source': cal['length_source'],
                                          'ransac_kernel': cal['ransac_kernel']} == {'decoder_precision': 'bf16',
                                                                                     'solver': 'essential',
                                                                                     'length_source': 'depth_head',
                                                                                     'ransac_kernel': 'ap3p'}
    assert (doc['eval_config']['pose_decoder_precision'], doc['eval_config']['pose_solver'],
            doc['eval_config']['pose_length_source'], doc['eval_config']['ransac_kernel']) == (
        'bf16', 'essential', 'depth_head', 'ap3p')
    import pickle
    for part in ('val', 'test'):                                 # the per-pair records are kept for later studies
        recs = pickle.loads((tmp_path / 'work' / 'calibrate' / f'records_{part}.pkl').read_bytes())
        assert len(recs) == trust['records'][part]
        assert {'mode', 'kind', 'desc_conf', 'matches', 'view_similarity'} <= set(recs[0])
    for mode, r in doc['test']['pose'].items():
        assert r['symmetric']['pairs'] == r['pairs'], mode
        assert 0.0 <= r['forward_sign_ok'] <= 1.0
    # the decoder stage ran its refine phase after phase 1 and recorded both
    dec = doc['training']['decoder']
    assert len(dec['history']) == 3 and len(dec['refine']['history']) == 1 and dec['refine']['calibration']


def test_more_training_bags_keep_the_written_ones_and_the_heads_keep_their_count(tmp_path):
    from dataclasses import replace

    from realm_ros.miniature.recipe import PRESETS, Recipe

    toy = PRESETS['toy']()
    toy = replace(toy, bags=replace(toy.bags, seconds=0.1), heads=replace(toy.heads, train_sequences=1))
    first = Recipe(toy, tmp_path / 'work', tmp_path / 'out', log=lambda s: None)
    one = first.bags()
    assert len(one['train']) == 1
    written = {p: (tmp_path / 'work' / 'bags' / p).stat().st_ino for p in ('train_10000', 'val_20000')}
    grown = replace(toy, bags=replace(toy.bags, train_sequences=2))
    second = Recipe(grown, tmp_path / 'work', tmp_path / 'out', log=lambda s: None)
    two = second.bags()
    assert [p.rsplit('/', 1)[1] for p in two['train']] == ['train_10000', 'train_10001']
    assert [r['seed'] for r in two['written']] == [10001]                     # only the new bag was simulated
    assert {p: (tmp_path / 'work' / 'bags' / p).stat().st_ino for p in written} == written
    # the heads depend on their own bags only: the same stage key before and after the data grew
    assert first._heads_bags_key() == second._heads_bags_key()
    more_heads = replace(grown, heads=replace(grown.heads, train_sequences=2))
    assert Recipe(more_heads, tmp_path / 'work', tmp_path / 'out')._heads_bags_key() != second._heads_bags_key()
    # other bag settings: everything is simulated again
    other = replace(toy, bags=replace(toy.bags, max_flow_px=0.5))
    assert len(Recipe(other, tmp_path / 'work', tmp_path / 'out', log=lambda s: None).bags()['written']) == 2


def _shipped_copy(tmp_path):
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / 'models'
    dst = tmp_path / 'shipped'
    shutil.copytree(src, dst)
    return dst


def _with_decoder_settings(shipped, **settings):
    """Rewrite the ship's recorded decoder settings (the files stay those the SHA-256 sums describe)."""
    from realm_ros.miniature.recipe import SHIPPED_FILES

    metrics = shipped / SHIPPED_FILES['metrics']
    doc = json.loads(metrics.read_text())
    for k, v in settings.items():
        if v is None:
            doc['recipe']['decoder'].pop(k, None)
        else:
            doc['recipe']['decoder'][k] = v
    metrics.write_text(json.dumps(doc))
    return doc


def test_adopting_the_shipped_files_marks_the_training_stages_done(tmp_path):
    from realm_ros.miniature.recipe import PRESETS, SHIPPED_FILES, Recipe
    from realm_ros.models.checkpoints import sha256_file

    shipped = _shipped_copy(tmp_path)
    full = PRESETS['full']()
    doc = _with_decoder_settings(shipped, refine_steps=full.decoder.refine_steps, refine_lr=full.decoder.refine_lr)
    recipe = Recipe(full, tmp_path / 'work', tmp_path / 'out', log=lambda s: None)
    keys = recipe.adopt(shipped)
    assert set(keys) == {'teacher', 'bags', 'heads', 'decoder', 'distill'}
    for role, entry in doc['files'].items():
        assert sha256_file(recipe.shipped(role)) == entry['sha256']
    # the stages find their markers: nothing is trained or simulated again (each would take minutes to hours)
    teacher = recipe.teacher()
    assert teacher['sha256_file'] == doc['files']['teacher']['sha256'] and teacher['files_adopted_from']
    assert keys['decoder'] == recipe._decoder_key(teacher)
    bags = recipe.bags()
    assert recipe.heads(bags, teacher)['files_adopted_from'] == str(shipped.resolve())
    assert recipe.decoder(teacher)['history'] == doc['training']['decoder']['history']
    assert recipe.distill(bags, teacher)['config'] == doc['training']['distill']['config']
    # the metrics document of a later evaluate keeps the training records of the ship
    assert recipe._marker_record('decoder')['history'] == doc['training']['decoder']['history']
    assert SHIPPED_FILES['metrics'] not in [p.name for p in (tmp_path / 'work').glob('*')]


def test_a_ship_whose_decoder_is_phase_one_is_adopted_for_the_refine_phase(tmp_path):
    from dataclasses import replace

    from realm_ros.miniature.recipe import PRESETS, Recipe

    shipped = _shipped_copy(tmp_path)
    _with_decoder_settings(shipped, refine_steps=None, refine_lr=None)     # recorded before the refine phase
    full = PRESETS['full']()
    assert full.decoder.refine_steps > 0
    messages = []
    recipe = Recipe(full, tmp_path / 'work', tmp_path / 'out', log=messages.append)
    keys = recipe.adopt(shipped)
    teacher = recipe.teacher()
    # the decoder marker is phase 1's: the decoder stage is not done, it will run the refine phase only
    assert keys['decoder'] != recipe._decoder_key(teacher)
    assert keys['decoder'] == recipe._key('decoder', recipe._decoder_phase1(), teacher['sha256_file'])
    assert recipe._stage('decoder', full.decoder, teacher['sha256_file']).done() is None
    assert 'runs the refine phase' in messages[-1]
    # without a refine phase in the recipe the same ship is simply done
    plain = replace(full, decoder=replace(full.decoder, refine_steps=0))
    other = Recipe(plain, tmp_path / 'work2', tmp_path / 'out', log=lambda s: None)
    assert other.adopt(shipped)['decoder'] == other._decoder_key(other.teacher())


def test_adopting_files_of_other_settings_or_changed_files_is_refused_by_name(tmp_path):
    from realm_ros.miniature.recipe import PRESETS, SHIPPED_FILES, Recipe, RecipeAdoptError

    shipped = _shipped_copy(tmp_path)
    recipe = Recipe(PRESETS['full'](), tmp_path / 'work', tmp_path / 'out', log=lambda s: None)
    metrics = shipped / SHIPPED_FILES['metrics']
    doc = json.loads(metrics.read_text())
    # the toy recipe trains other files
    toy = Recipe(PRESETS['toy'](), tmp_path / 'work_toy', tmp_path / 'out', log=lambda s: None)
    with pytest.raises(RecipeAdoptError, match="'image_size'|'teacher'"):
        toy.adopt(shipped)
    # one training setting changed
    changed = json.loads(json.dumps(doc))
    changed['recipe']['decoder']['steps'] += 1
    metrics.write_text(json.dumps(changed))
    with pytest.raises(RecipeAdoptError, match=r"'decoder' settings .*'steps'\]"):
        recipe.adopt(shipped)
    # a file that is not the one the metrics describe
    metrics.write_text(json.dumps(doc))
    with open(shipped / SHIPPED_FILES['realm'], 'ab') as fh:
        fh.write(b'\0')
    with pytest.raises(RecipeAdoptError, match='mini_realm.safetensors: SHA-256'):
        recipe.adopt(shipped)
    metrics.unlink()
    with pytest.raises(RecipeAdoptError, match='no metrics file'):
        recipe.adopt(shipped)
    assert not (tmp_path / 'work' / 'teacher' / 'done.json').exists()      # nothing was marked done on the way


def test_a_setting_the_ship_did_not_record_must_be_at_its_default(tmp_path):
    from dataclasses import replace

    from realm_ros.miniature.recipe import PRESETS, SHIPPED_FILES, Recipe, RecipeAdoptError

    shipped = _shipped_copy(tmp_path)
    metrics = shipped / SHIPPED_FILES['metrics']
    doc = json.loads(metrics.read_text())
    epochs = doc['recipe']['distill'].pop('epochs')
    metrics.write_text(json.dumps(doc))
    full = PRESETS['full']()
    assert full.distill.epochs == epochs                     # the default: taken as what the ship did
    Recipe(full, tmp_path / 'work', tmp_path / 'out', log=lambda s: None).adopt(shipped)
    other = replace(full, distill=replace(full.distill, epochs=epochs + 1))
    with pytest.raises(RecipeAdoptError, match=r"'distill' settings .*\['epochs'\]"):
        Recipe(other, tmp_path / 'work2', tmp_path / 'out', log=lambda s: None).adopt(shipped)
