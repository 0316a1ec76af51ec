"""End-to-end: train_from_bag / train_heads on a small synthetic bag written here (real EventPacket, Image,
CameraInfo, TF messages), tiny configuration on CPU; exact resume; export loading; every bad input's exit code."""
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.nodes.train_from_bag import main as distill_main
from realm_ros.nodes.train_heads import main as heads_main
from realm_ros.training import trainer as trainer_mod
from realm_ros.training.bag_dataset import DistillDataset, prepare_distill_bag
from realm_ros.training.config import BagSpec, EventDataConfig

from realm_testing.training import FLAT_ROWS, H, W, write_tiny_teacher, write_training_bag

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / 'config' / 'train_tiny.yaml')
TINY_HEADS = str(REPO / 'config' / 'train_heads_tiny.yaml')


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('training')
    bag = root / 'bag'
    counts = write_training_bag(bag, seconds=1.0)
    teacher = write_tiny_teacher(root / 'teacher.pth')
    return {'root': root, 'bag': str(bag), 'teacher': str(teacher), 'cache': str(root / 'cache'), 'counts': counts}


def args(world, out, *extra, config=TINY):
    return ['--config', config, '--bags', world['bag'], '--teacher', world['teacher'], '--out', str(out),
            '--data.cache_dir', world['cache'], *extra]


def records(out):
    with open(os.path.join(out, 'metrics.jsonl')) as fh:
        return [json.loads(line) for line in fh]


def train_losses(out):
    return [r['loss'] for r in records(out) if r['kind'] == 'train']


# ------------------------------------------------------------------------------------------------ data
def test_pairs_windows_and_geometry(world):
    data = EventDataConfig(stride=2, window='count', window_count=3000, min_events=3000)
    bag = prepare_distill_bag(BagSpec(world['bag']), data, world['cache'])
    st = bag.stats
    assert st['rgb_frames'] == world['counts']['frames'] == 30 and st['frames_after_stride'] == 15
    assert st['events'] > 100_000 and st['event_packet_errors'] == 0
    assert st['pairs'] + st['too_few_events'] == 15 and st['pairs'] >= 12
    t = np.asarray(bag.array('events_t'))
    assert np.all(np.diff(t) >= 0)
    for k in range(bag.num_pairs):
        s, e, stamp = bag.pairs['start'][k], bag.pairs['end'][k], bag.pairs['stamp'][k]
        assert e - s == 3000                      # fixed count
        assert t[e - 1] <= stamp and (e == len(t) or t[e] > stamp)  # the window ends at the frame stamp
        assert t[s] > stamp - 34_000_000          # bounded by the previous frame (30 Hz)
    assert bag.meta['extrinsics']['source'].startswith('tf')
    assert np.allclose(bag.meta['extrinsics']['t'], [-0.02, 0, 0])  # rgb frame seen from the event frame
    # time windows of 10 ms with a per-bag override
    tb = prepare_distill_bag(BagSpec(world['bag']), EventDataConfig(stride=3, window='time', window_ms=10.0),
                             world['cache'])
    tt = np.asarray(tb.array('events_t'))
    for k in range(tb.num_pairs):
        s, e, stamp = tb.pairs['start'][k], tb.pairs['end'][k], tb.pairs['stamp'][k]
        assert tt[s] > stamp - 10_000_000 and tt[e - 1] <= stamp and (s == 0 or tt[s - 1] <= stamp - 10_000_000)
    # a sample: voxel grid + RGB warped into the event camera, same crop/resize, ImageNet-normalised
    ds = DistillDataset([(bag, data)], 'train', 84, 'crop', 5, 'dsec')
    item = ds[0]
    assert item['voxel'].shape == (1, 5, 84, 84) and item['rgb'].shape == (1, 3, 84, 84)
    assert item['valid'].min() == 1.0  # 2 cm baseline at 20 m plane depth: full coverage
    frame = np.asarray(bag.array('frames')[bag.pairs['frame'][0]]).astype(np.float32) / 255
    assert frame.shape == (H, W, 3)
    # the static band has no events; the textured part has
    occ = item['voxel'][0].abs().amax(0)
    band = int(FLAT_ROWS * 84 / H) - 2
    assert occ[:band].max() == 0 and occ[band + 4:].max() > 0
    # 'tile' (4 corner tiles, unique sample ids) and 'pad' (coverage 0 in the padding) as at inference
    tiles = DistillDataset([(bag, data)], 'train', 56, 'tile', 5, 'dsec')
    t0, t1 = tiles[0], tiles[1]
    assert t0['voxel'].shape == (4, 5, 56, 56) and t0['index'].tolist() == [0, 1, 2, 3]
    assert t1['index'].tolist() == [4, 5, 6, 7] and tiles.num_samples == 4 * len(tiles)
    padded = DistillDataset([(bag, data)], 'train', 112, 'pad', 5, 'dsec')[0]
    assert padded['valid'][0, 0, :, :8].max() == 0 and padded['valid'][0, 0, 30:80, 30:80].min() == 1
    assert padded['voxel'][0, :, :, :8].abs().max() == 0


def test_prepared_cache_is_reused_and_other_encodings(world, tmp_path):
    data = EventDataConfig(stride=5, window='count', window_count=2000)
    a = prepare_distill_bag(BagSpec(world['bag']), data, world['cache'])
    b = prepare_distill_bag(BagSpec(world['bag']), data, world['cache'])
    assert a.directory == b.directory
    f_ref = np.asarray(a.array('frames')[a.pairs['frame'][0]]).astype(int)
    t_ref = np.asarray(a.array('events_t')[:a.stats['events']])
    # mcap storage, libcaer_cmp events, bgr8 / PNG-compressed frames: same pairs, frames and event times
    for i, (storage, ev_enc, img_enc) in enumerate((('mcap', 'libcaer_cmp', 'bgr8'), ('sqlite3', 'evt3', 'png'))):
        bag = tmp_path / f'bag{i}'
        write_training_bag(bag, seconds=1.0, storage=storage, encoding=img_enc, event_encoding=ev_enc,
                           with_gt=False)
        m = prepare_distill_bag(BagSpec(str(bag)), data, str(tmp_path / 'cache'))
        assert m.num_pairs == a.num_pairs and m.stats['rgb_decode_errors'] == 0, (storage, ev_enc, img_enc)
        f = np.asarray(m.array('frames')[m.pairs['frame'][0]]).astype(int)
        assert np.abs(f - f_ref).max() <= 1
        t = np.asarray(m.array('events_t'))
        assert len(t) == len(t_ref) and np.abs(t - t_ref).max() < 2_000_000  # same events, ms-level clock sync


# ------------------------------------------------------------------------------------------------ training
def test_distill_trains_exports_and_loads(world):
    out = world['root'] / 'distill'
    assert distill_main(args(world, out, '--optim.epochs', '2', '--run.teacher_cache', 'true',
                             '--run.teacher_cache_dtype', 'float32')) == 0
    losses = train_losses(out)
    assert len(losses) == 6 and losses[-1] < losses[0]
    vals = [r for r in records(out) if r['kind'] == 'val']
    assert len(vals) == 2 and vals[-1]['loss'] < vals[0]['loss']
    assert {'cls_cosine', 'patch_cosine', 'masked_l1', 'masked_patch_cosine'} <= set(vals[0])
    assert 0.5 < vals[0]['masked_fraction'] < 1.0  # the static band is excluded by the event mask
    # the exported REALM checkpoint loads with the models' loader and the teacher
    from realm_ros.models.checkpoints import load_realm_checkpoint
    enc = load_realm_checkpoint(out / 'realm.safetensors', dune=world['teacher'])
    meta = enc.checkpoint_metadata
    assert meta['voxel'] == {'bins': 5, 'normalization': 'dsec'} and meta['input']['size'] == 84
    assert meta['window']['mode'] == 'count' and meta['window']['count'] == 2000
    assert meta['training']['optim']['epochs'] == 2 and 'val' in meta['metrics']
    with torch.no_grad():
        tokens = enc(torch.randn(1, 5, 84, 84))['x_norm_patchtokens']
    assert tokens.shape == (1, 36, 48) and torch.isfinite(tokens).all()
    # weights equal the last training checkpoint's
    ckpt = torch.load(out / 'checkpoints' / 'last.pt', weights_only=False)
    assert torch.equal(ckpt['model']['embedder.proj.weight'], enc.embedder.proj.weight)
    assert ckpt['epoch'] == 2 and ckpt['global_step'] == 6
    world['reference'] = losses


def test_interrupted_and_resumed_run_reproduces_the_loss_sequence(world, monkeypatch):
    if 'reference' not in world:
        pytest.skip('needs test_distill_trains_exports_and_loads (reference run)')
    out = world['root'] / 'resumed'
    original_init = trainer_mod.Trainer.__init__

    def init(self, *a, **k):
        original_init(self, *a, **k)
        self.step_callback = lambda t: os.kill(os.getpid(), signal.SIGINT) if t.global_step == 4 else None

    monkeypatch.setattr(trainer_mod.Trainer, '__init__', init)
    # the reference used a float32 teacher cache; this run computes teacher features every time
    assert distill_main(args(world, out, '--optim.epochs', '2')) == 130
    assert len(train_losses(out)) == 4
    monkeypatch.setattr(trainer_mod.Trainer, '__init__', original_init)
    assert distill_main(args(world, out, '--optim.epochs', '2', '--resume')) == 0
    assert train_losses(out) == world['reference']


def test_heads_depth_and_segmentation(world):
    from realm_ros.models.checkpoints import load_head_checkpoint
    for task, name, metric in (('depth', 'depth_head.safetensors', 'abs_error_m'),
                               ('segmentation', 'segmentation_head.safetensors', 'miou')):
        out = world['root'] / f'head_{task}'
        assert heads_main(args(world, out, '--task', task, config=TINY_HEADS)) == 0
        losses = train_losses(out)
        assert losses[-1] < losses[0], (task, losses)
        vals = [r for r in records(out) if r['kind'] == 'val']
        assert metric in vals[-1]
        head = load_head_checkpoint(out / name)
        assert head.checkpoint_metadata['teacher_sha256'] == hashlib.sha256(
            Path(world['teacher']).read_bytes()).hexdigest()
    seg = load_head_checkpoint(world['root'] / 'head_segmentation' / 'segmentation_head.safetensors')
    assert seg.num_classes == 11 and len(seg.checkpoint_metadata['class_weights']) == 11




def test_head_training_resumes_exactly(world, monkeypatch):
    ref_out, out = world['root'] / 'head_ref', world['root'] / 'head_resumed'
    common = ('--task', 'segmentation', '--optim.epochs', '2', '--optim.accumulation', '2')
    assert heads_main(args(world, ref_out, *common, config=TINY_HEADS)) == 0
    original_init = trainer_mod.Trainer.__init__

    def init(self, *a, **k):
        original_init(self, *a, **k)
        self.step_callback = lambda t: os.kill(os.getpid(), signal.SIGINT) if t.global_step == 2 else None

    monkeypatch.setattr(trainer_mod.Trainer, '__init__', init)
    assert heads_main(args(world, out, *common, config=TINY_HEADS)) == 130
    monkeypatch.setattr(trainer_mod.Trainer, '__init__', original_init)
    assert heads_main(args(world, out, *common, '--resume', config=TINY_HEADS)) == 0
    assert train_losses(out) == train_losses(ref_out) and len(train_losses(out)) == 6


def test_exports_run_in_the_perception_pipeline(world):
    """The exported encoder and heads load in :class:`RealmPipeline` and produce depth and segmentation."""
    root = world['root']
    files = [root / 'distill' / 'realm.safetensors', root / 'head_depth' / 'depth_head.safetensors',
             root / 'head_segmentation' / 'segmentation_head.safetensors']
    if not all(f.exists() for f in files):
        pytest.skip('needs the training tests above')
    pipeline = pytest.importorskip('realm_ros.pipeline')
    from realm_ros.events import EventArray
    from realm_testing.training import FX, simulate_events
    pipe = pipeline.RealmPipeline(pipeline.PipelineConfig(
        realm_checkpoint=str(files[0]), dune_checkpoint=world['teacher'], depth_head_checkpoint=str(files[1]),
        seg_head_checkpoint=str(files[2]), device='cpu', precision='fp32', heads=('depth', 'semantic'),
        spatial_mode='crop'))
    x, y, t_us, p = simulate_events(1.0)
    i, j = np.searchsorted(t_us, [300_000, 333_333])
    ev = EventArray(x[i:j], y[i:j], t_us[i:j] * 1000, p[i:j])
    K = np.array([[FX, 0, (W - 1) / 2], [0, FX, (H - 1) / 2], [0, 0, 1]])
    out = pipe.process(ev, H, W, K, int(t_us[j - 1]) * 1000)
    depth = np.asarray(out.depth)
    assert depth.shape == (H, W) and np.isfinite(depth[:, 12:84]).all()
    assert np.nanmin(depth) >= 1.0 and np.nanmax(depth) <= 20.0  # the tiny head's bin range
    labels = np.asarray(out.semantic)
    assert labels.shape == (H, W) and set(np.unique(labels[:, 12:84])) <= set(range(11))


# ------------------------------------------------------------------------------------------------ bad input
def run_main(main, argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_bad_bags_give_clear_errors(world, tmp_path, capsys):
    out = tmp_path / 'o'
    base = ['--config', TINY, '--teacher', world['teacher'], '--out', str(out)]
    code, err = run_main(distill_main, base + ['--bags', str(tmp_path / 'nope')], capsys)
    assert code == 3 and 'nope' in err and 'does not exist' in err
    garbage = tmp_path / 'garbage.db3'
    garbage.write_bytes(os.urandom(4096))
    code, err = run_main(distill_main, base + ['--bags', str(garbage)], capsys)
    assert code == 3 and 'cannot read bag' in err and 'garbage.db3' in err
    trunc = tmp_path / 'trunc'
    write_training_bag(trunc, seconds=0.5, storage='mcap', with_gt=False)
    f = next(trunc.glob('*.mcap'))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, err = run_main(distill_main, base + ['--bags', str(trunc)], capsys)
    assert code == 3 and 'trunc' in err and ('truncated' in err or 'corrupt' in err or 'cannot read' in err), err


def test_bad_topics_and_no_pairs(world, capsys):
    out = world['root'] / 'bad'
    code, err = run_main(distill_main, args(world, out, '--data.topics.rgb', '/nope'), capsys)
    assert code == 3 and "'/nope' not found" in err and '/rgb/image_raw' in err
    code, err = run_main(distill_main, args(world, out, '--data.topics.rgb', '/event_camera/events'), capsys)
    assert code == 3 and 'has type event_camera_msgs/msg/EventPacket' in err and 'sensor_msgs/msg/Image' in err
    code, err = run_main(distill_main, args(world, out, '--data.topics.events', '/rgb/image_raw'), capsys)
    assert code == 3 and 'expected event_camera_msgs/msg/EventPacket' in err
    code, err = run_main(distill_main, args(world, out, '--data.window_count', '5000000', '--data.min_events',
                                            '5000000'), capsys)
    assert code == 3 and 'no training pairs' in err and 'too_few_events 30' in err
    code, err = run_main(heads_main, args(world, out, '--task', 'depth', '--data.topics.depth', '/rgb/camera_info',
                                          config=TINY_HEADS), capsys)
    assert code == 3 and "'/rgb/camera_info' has type sensor_msgs/msg/CameraInfo" in err


def test_bad_teacher_and_config(world, tmp_path, capsys):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    code, err = run_main(distill_main, ['--config', TINY, '--bags', world['bag'], '--teacher', str(bad),
                                        '--out', str(tmp_path / 'o')], capsys)
    assert code == 3 and 'teacher checkpoint' in err and 'bad.pth' in err
    code, err = run_main(distill_main, args(world, tmp_path / 'o', '--optim.lr', 'fast'), capsys)
    assert code == 2 and 'optim.lr' in err
    code, err = run_main(distill_main, ['--config', TINY, '--bags', world['bag']], capsys)
    assert code == 2 and 'teacher' in err


def test_nan_loss_stops_with_message(world, tmp_path, capsys):
    poisoned = write_tiny_teacher(tmp_path / 'nan_teacher.pth', poison=True)
    code, err = run_main(distill_main, ['--config', TINY, '--bags', world['bag'], '--teacher', str(poisoned),
                                        '--out', str(tmp_path / 'o'), '--data.cache_dir', world['cache'],
                                        '--run.max_nonfinite', '2'], capsys)
    assert code == 4 and 'NaN/inf loss' in err and 'step skipped' in err
    recs = records(tmp_path / 'o')
    assert recs[-1]['kind'] == 'diverged' and not (tmp_path / 'o' / 'realm.safetensors').exists()


def test_disk_full_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'full'
    real = trainer_mod.shutil.disk_usage
    calls = {'n': 0}

    def usage(path):
        u = real(path)
        if str(path).startswith(str(out / 'checkpoints')):
            calls['n'] += 1
            if calls['n'] > 1:  # the first checkpoint fits, then the disk is full
                return u._replace(free=10_000)
        return u

    monkeypatch.setattr(trainer_mod.shutil, 'disk_usage', usage)
    code, err = run_main(distill_main, args(world, out, '--optim.epochs', '2'), capsys)
    assert code == 5 and 'disk full' in err and 'last.pt' in err
    state = torch.load(out / 'checkpoints' / 'last.pt', weights_only=False)
    assert state['epoch'] == 1 and state['global_step'] == 3  # the epoch-0 checkpoint is intact


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_help_and_ros_args_without_rclpy(world, tmp_path):
    fake = tmp_path / 'no_ros' / 'rclpy'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise ImportError("rclpy hidden by the test")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO), os.environ.get('PYTHONPATH', '')]))
    r = subprocess.run([sys.executable, '-m', 'realm_ros.nodes.train_from_bag', '--help'], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and '--optim.lr' in r.stdout and '--ros-args' in r.stdout
    assert 'exit codes' in r.stdout
    params = tmp_path / 'params.yaml'
    params.write_text('/**:\n  ros__parameters:\n    optim:\n      epochs: 7\n    data.window: time\n')
    r = subprocess.run([sys.executable, '-m', 'realm_ros.nodes.train_from_bag', '--print-config', '--config', TINY,
                        '--ros-args', '-r', '__node:=trainer', '--params-file', str(params), '-p',
                        'optim.lr:=0.02', '-p', f'bags:=[{world["bag"]}]', '--'],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'epochs: 7' in r.stdout and 'lr: 0.02' in r.stdout and 'window: time' in r.stdout
    assert world['bag'] in r.stdout
    r = subprocess.run([sys.executable, '-m', 'realm_ros.nodes.train_heads', '--ros-args', '-p', 'task:=dept'],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "task must be 'depth' or 'segmentation'" in r.stderr


@pytest.mark.slow
def test_torchrun_ddp_two_processes(world, tmp_path):
    """DistributedDataParallel on CPU (gloo): distributed sampler, rank-0 logging/checkpoints/export."""
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'realm_ros.nodes.train_from_bag', *args(world, out, '--optim.epochs', '1', '--optim.batch_size', '2',
                                                          '--optim.accumulation', '1', '--data.max_pairs', '10',
                                                          '--data.num_workers', '1')]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(out)
    start = [x for x in recs if x['kind'] == 'start']
    assert len(start) == 1 and start[0]['world_size'] == 2 and start[0]['effective_batch'] == 4
    # 8 training pairs / (2 ranks x 2 per batch) = 2 steps, logged once (rank 0)
    assert [x['step'] for x in recs if x['kind'] == 'train'] == [1, 2]
    assert r.stderr.count('finished:') == 1 and (out / 'realm.safetensors').exists()
    state = torch.load(out / 'checkpoints' / 'last.pt', weights_only=False)
    assert state['world_size'] == 2 and len(state['rng']) == 2


# ------------------------------------------------------------------------------------------------ output / Ctrl-C
def test_out_that_is_not_a_writable_directory_exits_5(world, tmp_path, capsys):
    blocker = tmp_path / 'plain_file'
    blocker.write_text('not a directory')
    for out in (blocker / 'run', blocker):
        code, err = run_main(distill_main, args(world, out), capsys)
        assert code == 5, err
        assert 'output directory (--out)' in err and str(out) in err and 'not a writable directory' in err
        assert 'Traceback' not in err
    code, err = run_main(heads_main, args(world, blocker / 'h', config=TINY_HEADS), capsys)
    assert code == 5 and 'regular file' in err
    # an unwritable bag cache is refused the same way, before any work
    code, err = run_main(distill_main, args(world, tmp_path / 'o', '--data.cache_dir', str(blocker / 'c')), capsys)
    assert code == 5 and 'data.cache_dir' in err


@pytest.mark.skipif(os.geteuid() == 0, reason='root may write into a read-only (0500) directory')
def test_out_in_a_read_only_directory_exits_5(world, tmp_path, capsys):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = run_main(distill_main, args(world, ro), capsys)
    finally:
        ro.chmod(0o700)
    assert code == 5 and 'not a writable directory' in err


def test_ctrl_c_during_bag_preparation_then_resume_continues(world, tmp_path, monkeypatch, capsys):
    import realm_ros.training.bag_dataset as bd
    out = tmp_path / 'prep_interrupted'
    cache = tmp_path / 'cache'   # a cache of its own: the preparation really runs
    real_prepare = bd.prepare_distill_bag
    calls = []

    def interrupted(*a, **k):
        calls.append('interrupted')
        raise KeyboardInterrupt

    monkeypatch.setattr(bd, 'prepare_distill_bag', interrupted)
    argv = args(world, out, '--optim.epochs', '1', '--data.cache_dir', str(cache))
    code, err = run_main(distill_main, argv, capsys)
    assert calls == ['interrupted']
    assert code == 130, err
    assert '--resume' in err and 'before the first training checkpoint' in err and str(cache) in err
    assert not (out / 'checkpoints' / 'last.pt').exists()

    def counting(*a, **k):
        calls.append('prepared')
        return real_prepare(*a, **k)

    monkeypatch.setattr(bd, 'prepare_distill_bag', counting)
    code, err = run_main(distill_main, argv + ['--resume'], capsys)
    assert code == 0, err
    assert calls == ['interrupted', 'prepared']
    assert 'continuing the bag preparation' in err
    assert (out / 'realm.safetensors').exists() and (out / 'checkpoints' / 'last.pt').exists()
    assert [r['kind'] for r in records(out)][0] == 'start' and train_losses(out)


def test_resume_in_a_directory_without_any_run_is_a_clear_error(world, tmp_path, capsys):
    out = tmp_path / 'typo'
    code, err = run_main(distill_main, args(world, out, '--resume'), capsys)
    assert code == 2 and 'no checkpoint' in err and 'no earlier run' in err and str(out) in err
    assert not out.exists()
