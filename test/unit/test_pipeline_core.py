"""RealmPipeline on CPU with random-initialised miniature checkpoints in the real file formats (ROS-free)."""
import numpy as np
import pytest
import torch

from realm_ros.events import EventArray, make_decoder
from realm_ros.events.bagio import iter_bag_messages
from realm_ros.pipeline import PipelineConfigError, RealmPipeline, WindowSkipped
from realm_ros.pipeline.tiny import write_random_tiny_checkpoints, tiny_pipeline_config

K_SENSOR = np.array([[320.0, 0, 319.5], [0, 320.0, 239.5], [0, 0, 1]])


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    return write_random_tiny_checkpoints(tmp_path_factory.mktemp('tiny_ckpts'))


@pytest.fixture(scope='module')
def pipe(ckpts):
    return RealmPipeline(tiny_pipeline_config(ckpts))


@pytest.fixture(scope='module')
def windows(evt3_bag):
    """Three consecutive 20k-event windows of the real recording (sensor time ns)."""
    dec = make_decoder('evt3', 640, 480)
    chunks = [dec.decode(np.frombuffer(m.events, np.uint8)).events for _, _, _, m in iter_bag_messages(evt3_bag)]
    ev = EventArray.concat(chunks)
    return [ev.slice(i * 20_000, (i + 1) * 20_000) for i in range(3)]


def test_one_window_gives_every_output_in_sensor_pixels(pipe, windows):
    runs = pipe.diagnostics()['encoder_runs']
    out = pipe.process(windows[0], height=480, width=640, K=K_SENSOR, stamp_ns=int(windows[0].t[-1]))
    assert pipe.diagnostics()['encoder_runs'] == runs + 1          # one encoder pass for all heads
    assert out.spatial_mode == 'crop' and out.num_events == 20_000 and out.stamp_ns == int(windows[0].t[-1])
    # depth: metres inside the head's bin range where the centre crop saw the sensor, NaN in the side strips
    assert out.depth.shape == (480, 640) and out.depth.dtype == np.float32
    inside = out.depth[:, 80:560]
    assert np.isfinite(inside).mean() > 0.99
    assert np.nanmin(inside) >= 1.0 and np.nanmax(inside) <= 81.0
    assert np.isnan(out.depth[:, :79]).all() and np.isnan(out.depth[:, 561:]).all()
    assert out.depth_color.shape == (480, 640, 3) and out.depth_color.dtype == np.uint8
    assert (out.depth_color[:, :79] == 0).all()
    # semantics: class ids < 11 where predicted, 255 elsewhere; colours follow the DSEC palette
    from realm_ros.models import DSEC_PALETTE
    assert out.semantic.shape == (480, 640) and out.semantic.dtype == np.uint8
    assert out.semantic[:, 100:540].max() < 11 and (out.semantic[:, :79] == 255).all()
    ids = out.semantic[240, 320]
    assert tuple(out.semantic_color[240, 320]) == tuple(DSEC_PALETTE[ids][::-1])
    # points: back-projected valid depth with the sensor K, coloured by the semantic colours (RGB)
    n_valid = np.isfinite(out.depth[::2, ::2]).sum()
    assert len(out.points_xyz) == len(out.points_rgb) == n_valid
    z = out.points_xyz[:, 2]
    u = K_SENSOR[0, 0] * out.points_xyz[:, 0] / z + K_SENSOR[0, 2]
    v = K_SENSOR[1, 1] * out.points_xyz[:, 1] / z + K_SENSOR[1, 2]
    ui, vi = np.round(u).astype(int), np.round(v).astype(int)
    assert np.allclose(z, out.depth[vi, ui], rtol=1e-5)
    assert np.array_equal(out.points_rgb, out.semantic_color[vi, ui, ::-1])
    # pose: the first window becomes the keyframe (identity pose); matches image = keyframe | current
    assert out.pose is not None and out.pose.new_keyframe and np.allclose(out.pose.R, np.eye(3))
    assert out.matches_image.shape == (224, 448, 3)


@pytest.mark.slow
def test_second_window_is_matched_against_the_keyframe(pipe, windows):
    pipe.reset()
    pipe.update(keyframe_min_inliers=4, keyframe_max_failures=100, keyframe_max_translation=1e3,
                keyframe_max_rotation_deg=180.0)
    first = pipe.process(windows[0], 480, 640, K_SENSOR, int(windows[0].t[-1]))
    second = pipe.process(windows[1], 480, 640, K_SENSOR, int(windows[1].t[-1]))
    assert first.pose.new_keyframe
    assert pipe.diagnostics()['pose_attempts'] >= 1
    if second.pose is not None:                       # random weights: PnP may legitimately fail
        R = second.pose.R
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.isfinite(second.pose.t).all()
        assert second.pose.keyframe_stamp_ns == first.stamp_ns and second.pose.covariance.shape == (6, 6)
        assert 0 <= second.pose.num_inliers <= second.pose.num_matches
    assert second.matches_image.shape == (224, 448, 3)
    assert pipe.diagnostics()['keyframes'] == 1 + int(second.pose is not None and second.pose.new_keyframe)
    pipe.update(keyframe_min_inliers=30, keyframe_max_failures=3, keyframe_max_translation=0.5,
                keyframe_max_rotation_deg=15.0)


def test_the_pose_input_is_handed_over_before_the_dense_heads_run(pipe, windows, monkeypatch):
    """process_dense(on_pose_input=...) calls back with the very input it returns, after the encoder and before any
    dense head (the pose worker starts on it while the heads compute)."""
    from realm_ros.pipeline import dense
    order = []
    compute_dense = dense.compute_dense
    monkeypatch.setattr(dense, 'compute_dense', lambda *a, **k: (order.append('heads'), compute_dense(*a, **k))[1])
    given = []
    out, inp = pipe.process_dense(windows[0], 480, 640, K_SENSOR, 7, on_pose_input=lambda i: (order.append('pose'),
                                                                                              given.append(i)))
    assert order == ['pose', 'heads'] and given == [inp] and inp.stamp_ns == 7 and out.depth is not None
    assert 0 < out.timings_ms['pose_input_ms'] < out.timings_ms['total_ms']
    # the match-drawing picture is not rendered by the dense half: only the bin sum is handed over, and the pose
    # worker draws it for the windows it steps on (the picture of the model input, as voxel_picture draws it)
    from realm_ros.events.spatial import prepare_input
    from realm_ros.events.voxel import voxel_grid
    from realm_ros.pipeline import render
    assert inp.picture is None and inp.event_sum.shape == (224, 224)
    voxel = voxel_grid(windows[0], bins=pipe.bins, height=480, width=640,
                       normalization=pipe.config.normalization or pipe.default_normalization)
    prep = prepare_input(voxel, size=pipe.input_size, mode='crop')
    expected = render.voxel_picture(prep.tensor[0].numpy())
    assert np.abs(inp.drawing().astype(int) - expected).max() <= 1 and inp.drawing() is inp.picture
    pipe.update(heads=('depth',))
    try:
        given.clear()
        assert pipe.process_dense(windows[0], 480, 640, K_SENSOR, 8, on_pose_input=given.append)[1] is None
        assert given == []                                  # no pose head: no pose input
    finally:
        pipe.update(heads=('depth', 'semantic', 'points', 'pose'))


def test_pose_compute_follows_the_decoders_calibration(ckpts, windows, monkeypatch):
    """pose.decoder_precision / pose.solver / pose.ransac_kernel 'auto' take what the decoder's gates were
    calibrated with (fp32 / PnP / SQPnP for a file that records nothing); bf16 falls back to fp32 without bf16
    arithmetic; a choice other than the calibrated one runs with a warning; the pose step gets the resolved decoder
    dtype, solver and RANSAC kernel."""
    import realm_ros.geometry.symmetric as symmetric
    import realm_ros.pipeline.core as core
    messages = []
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: False)   # auto's fp32 heads: see the next test
    p = RealmPipeline(tiny_pipeline_config(ckpts), log=messages.append)
    assert p.pose_compute == {'decoder_precision': 'fp32', 'solver': 'pnp', 'length_source': 'point_map',
                              'ransac_kernel': 'sqpnp'}
    assert p.pose_decoder_dtype is None and p._pnp_params.solver == 'pnp' and not p.pose_uses_depth_head
    assert p._pnp_params.ransac_kernel == 'sqpnp' and not messages
    d = p.diagnostics()
    assert (d['pose_decoder_precision'], d['pose_solver'], d['pose_ransac_kernel']) == ('fp32', 'pnp', 'sqpnp')
    p.mast3r.pose_gates_compute = {'decoder_precision': 'bf16', 'solver': 'essential', 'length_source': 'depth_head',
                                   'ransac_kernel': 'ap3p'}                         # as a file would record
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: True)
    p.update(pose_decoder_precision='auto', pnp_ransac_kernel='auto')
    assert p.pose_decoder_dtype == torch.bfloat16 and p._pnp_params.ransac_kernel == 'ap3p' and not messages
    assert p._pnp_params.solver == 'essential' and p.diagnostics()['pose_solver'] == 'essential'
    assert p.pose_uses_depth_head and p.diagnostics()['pose_length_source'] == 'depth_head'
    seen, depth_shapes = [], []
    real = symmetric.symmetric_relative_pose

    def spy(*a, **k):
        seen.append((k['decoder_dtype'], k['pnp'].solver, k['pnp'].ransac_kernel))
        maps = [k[n]() if callable(k[n]) else k[n] for n in ('depth_keyframe', 'depth_current')]   # lazy: a function
        depth_shapes.append(tuple(None if m is None else m.shape for m in maps))
        return real(*a, **k)
    monkeypatch.setattr(symmetric, 'symmetric_relative_pose', spy)
    p.reset()
    p.update(keyframe_max_failures=100)
    for w in windows[:2]:
        p.process(w, 480, 640, K_SENSOR, int(w.t[-1]))
    assert seen == [(torch.bfloat16, 'essential', 'ap3p')]        # the second window was matched with them
    S = p.input_size                                                # both views' depth-head maps at the model size
    assert depth_shapes == [((S, S), (S, S))]
    assert p.pose_tracker.keyframes.latest.extras['depth'].shape == (S, S)
    p.update(pnp_ransac_kernel='sqpnp')
    assert p._pnp_params.ransac_kernel == 'sqpnp'
    assert len(messages) == 1 and 'calibrated with ap3p' in messages[0]
    p.update(pose_solver='pnp', pnp_ransac_kernel='auto')
    assert p._pnp_params.solver == 'pnp' and 'pose_solver pnp' in messages[-1] and 'essential' in messages[-1]
    with pytest.raises(PipelineConfigError, match='pose_solver'):
        p.update(pose_solver='five_point')
    p.update(pose_solver='auto', pose_length_source='point_map')
    assert not p.pose_uses_depth_head and 'pose_length_source point_map' in messages[-1]
    p.update(pose_length_source='auto')
    messages.clear()
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: False)
    p.update(pnp_ransac_kernel='auto', match_subsample=8)
    assert p.pose_decoder_dtype is None and 'no bfloat16 arithmetic: the decoder runs in fp32' in messages[-1]
    assert p._pnp_params.solver == 'essential'
    with pytest.raises(PipelineConfigError, match='pose_decoder_precision'):
        p.update(pose_decoder_precision='fp16')
    p.close()


def test_fp32_calibrated_decoder_runs_its_heads_in_bf16_on_bf16_cpus(ckpts, windows, monkeypatch):
    """pose.decoder_precision auto with a decoder calibrated in fp32: 'bf16-heads' (fp32 blocks, bf16 heads) on a
    CPU with bfloat16 arithmetic, fp32 without; no calibration warning for either (the pair publishes the same
    poses through one calibration); 'fp32' stays selectable; bf16-heads asked for on a CPU without bf16 warns; the
    pose step gets the (blocks, heads) pair."""
    import realm_ros.geometry.symmetric as symmetric
    import realm_ros.pipeline.core as core
    messages = []
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: True)
    p = RealmPipeline(tiny_pipeline_config(ckpts), log=messages.append)
    assert p.pose_compute['decoder_precision'] == 'bf16-heads' and p.pose_decoder_dtype == (None, torch.bfloat16)
    assert p.diagnostics()['pose_decoder_precision'] == 'bf16-heads' and not messages
    seen = []
    real = symmetric.symmetric_relative_pose

    def spy(*a, **k):
        seen.append(k['decoder_dtype'])
        return real(*a, **k)
    monkeypatch.setattr(symmetric, 'symmetric_relative_pose', spy)
    p.update(keyframe_max_failures=100)
    for w in windows[:2]:
        p.process(w, 480, 640, K_SENSOR, int(w.t[-1]))
    assert seen == [(None, torch.bfloat16)]
    p.update(pose_decoder_precision='fp32')
    assert p.pose_decoder_dtype is None and not messages
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: False)
    p.update(pose_decoder_precision='auto')
    assert p.pose_compute['decoder_precision'] == 'fp32' and not messages
    p.update(pose_decoder_precision='bf16-heads')
    assert p.pose_decoder_dtype == (None, torch.bfloat16)
    assert len(messages) == 1 and 'bf16-heads on a device without bfloat16 arithmetic' in messages[0]
    p.close()


def test_heads_can_be_switched_off(pipe, windows):
    pipe.update(heads=('depth',))
    try:
        out = pipe.process(windows[2], 480, 640, K_SENSOR, 1)
        assert out.depth is not None and out.semantic is None and out.points_xyz is None and out.pose is None
        assert set(out.timings_ms) >= {'encoder_ms', 'depth_ms'} and 'semantic_ms' not in out.timings_ms
    finally:
        pipe.update(heads=('depth', 'semantic', 'points', 'pose'))
    with pytest.raises(PipelineConfigError, match='unknown heads'):
        pipe.update(heads=('depth', 'optical_flow'))
    with pytest.raises(PipelineConfigError, match='not changeable'):
        pipe.update(device='cuda')


def test_spatial_modes(pipe, windows):
    assert pipe.spatial_mode_for(480, 640) == 'crop'
    assert pipe.spatial_mode_for(200, 180) == 'pad'
    assert pipe.spatial_mode_for(300, 400) == 'tile'
    ev = windows[0]
    small = ev.slice(0, len(ev))
    keep = (small.x < 400) & (small.y < 300)
    small = EventArray(small.x[keep], small.y[keep], small.t[keep], small.p[keep])
    pipe.update(heads=('depth', 'semantic'), spatial_mode='auto')
    try:
        tiled = pipe.process(small, 300, 400, K_SENSOR, 1)
        assert tiled.spatial_mode == 'tile' and np.isfinite(tiled.depth).all()      # 4 tiles cover the sensor
        assert tiled.semantic.max() < 11
        keep = (small.x < 180) & (small.y < 200)
        padded = pipe.process(EventArray(small.x[keep], small.y[keep], small.t[keep], small.p[keep]),
                              200, 180, K_SENSOR, 1)
        assert padded.spatial_mode == 'pad' and padded.depth.shape == (200, 180) and np.isfinite(padded.depth).all()
    finally:
        pipe.update(heads=('depth', 'semantic', 'points', 'pose'), spatial_mode='auto')


def test_cuda_out_of_memory_skips_the_window(pipe, windows, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
    monkeypatch.setattr(pipe, 'encoder', boom)
    with pytest.raises(WindowSkipped) as info:
        pipe.process(windows[0], 480, 640, K_SENSOR, 1)
    assert info.value.reason == 'cuda_oom' and pipe.diagnostics()['cuda_oom'] >= 1


def test_other_errors_are_not_disguised_as_skips(pipe, windows, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('shape mismatch')
    monkeypatch.setattr(pipe, 'encoder', broken)
    with pytest.raises(RuntimeError, match='shape mismatch'):
        pipe.process(windows[0], 480, 640, K_SENSOR, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the fallback on machines without CUDA')
def test_cuda_request_without_cuda_falls_back_to_cpu(ckpts):
    logged = []
    p = RealmPipeline(tiny_pipeline_config(ckpts, device='cuda:0', mast3r_checkpoint=''), log=logged.append)
    assert p.device.type == 'cpu'
    assert any('CUDA is not available' in w for w in p.warnings) and logged
    assert 'pose' not in p.active_heads and 'DUNE-MASt3R' in p.missing_for_head('pose')


def test_missing_checkpoint_is_named(ckpts, tmp_path):
    missing = tmp_path / 'nope' / 'realm.safetensors'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        RealmPipeline(tiny_pipeline_config(ckpts, realm_checkpoint=str(missing)))
    with pytest.raises(PipelineConfigError, match='checkpoints.realm'):
        RealmPipeline(tiny_pipeline_config(ckpts, realm_checkpoint=''))


def test_incompatible_checkpoints_are_named(ckpts, tmp_path):
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'\x00' * 100)
    with pytest.raises(ValueError, match='garbage.safetensors'):
        RealmPipeline(tiny_pipeline_config(ckpts, realm_checkpoint=str(garbage)))
    # a depth head for 64-d tokens does not fit the 192-d tiny encoder
    from realm_ros.models import DepthBinsHead, save_head_checkpoint, sha256_file
    wrong = save_head_checkpoint(tmp_path / 'wrong_depth.safetensors', DepthBinsHead(embed_dim=64, bins=8),
                                 teacher_sha256=sha256_file(ckpts['dune']))
    with pytest.raises(PipelineConfigError, match='wrong_depth.safetensors'):
        RealmPipeline(tiny_pipeline_config(ckpts, depth_head_checkpoint=str(wrong)))
    # a LoRA-mode REALM checkpoint without its DUNE teacher
    with pytest.raises(ValueError, match='needs the DUNE teacher'):
        RealmPipeline(tiny_pipeline_config(ckpts, dune_checkpoint='', seg_head_checkpoint=''))


def test_segmentation_without_projector_is_refused(ckpts, tmp_path):
    merged = write_random_tiny_checkpoints(tmp_path / 'merged', lora_mode=False, with_mast3r=False)
    with pytest.raises(PipelineConfigError, match='projector'):
        RealmPipeline(tiny_pipeline_config(merged, dune_checkpoint=''))
    p = RealmPipeline(tiny_pipeline_config(merged, dune_checkpoint='', seg_head_checkpoint=''))
    assert p.active_heads == ('depth', 'points')


@pytest.mark.slow
def test_rgb_keyframes_for_cross_modal_pose(ckpts, windows):
    p = RealmPipeline(tiny_pipeline_config(ckpts, keyframe_source='image', heads=('pose',)))
    out = p.process(windows[0], 480, 640, K_SENSOR, 1)
    assert out.pose is None                                    # no RGB keyframe yet: nothing to match
    rgb = np.zeros((360, 480, 3), np.uint8)
    rgb[:, :240] = (255, 0, 0)
    p.offer_image_keyframe(rgb, np.array([[400.0, 0, 240], [0, 400, 180], [0, 0, 1]]), stamp_ns=5)
    out = p.process(windows[1], 480, 640, K_SENSOR, 10)
    assert p.diagnostics()['image_keyframes'] == 1 and p.diagnostics()['keyframe_stamp_ns'] == 5
    assert out.matches_image.shape == (224, 448, 3)
    # the left half of the match picture is the (centre-cropped) RGB keyframe: red left part, black right part
    left = out.matches_image[:, :224]                         # (match lines are drawn on top: use medians)
    assert np.median(left[:, :100, 2]) > 200 and np.median(left[:, :100, 0]) < 50
    assert np.median(left[:, 130:220].max(axis=-1)) < 50
    with pytest.raises(PipelineConfigError, match='checkpoints.dune'):
        RealmPipeline(tiny_pipeline_config(ckpts, keyframe_source='image', dune_checkpoint='',
                                           seg_head_checkpoint='', realm_checkpoint=str(
                                               write_random_tiny_checkpoints(ckpts['dune'].parent / 'm2',
                                                                             lora_mode=False,
                                                                             with_mast3r=False)['realm'])))


@pytest.mark.cuda
def test_cuda_matches_cpu(ckpts, windows):
    cpu = RealmPipeline(tiny_pipeline_config(ckpts, heads=('depth', 'semantic')))
    gpu = RealmPipeline(tiny_pipeline_config(ckpts, heads=('depth', 'semantic'), device='cuda', precision='fp32'))
    a = cpu.process(windows[0], 480, 640, K_SENSOR, 1)
    b = gpu.process(windows[0], 480, 640, K_SENSOR, 1)
    assert np.allclose(a.depth, b.depth, atol=1e-2, equal_nan=True)
    assert (a.semantic == b.semantic).mean() > 0.99


@pytest.mark.cuda
def test_cuda_lazy_outputs_completion_and_pose_picture(ckpts, windows):
    """On the GPU: a window computed for depth only, completed later from its kept encoder output, gives the labels
    and points of the full window; the pose input's bin sum comes back to the host and draws the picture."""
    gpu = RealmPipeline(tiny_pipeline_config(ckpts, device='cuda', precision='fp32'))
    full, inp = gpu.process_dense(windows[0], 480, 640, K_SENSOR, 1)
    part, _ = gpu.process_dense(windows[0], 480, 640, K_SENSOR, 2, outputs=('depth',))
    assert part.semantic is None and part.points_xyz is None
    np.testing.assert_array_equal(part.depth, full.depth)
    done = gpu.complete_dense(('depth', 'semantic', 'points'), 3)
    np.testing.assert_array_equal(done.semantic, full.semantic)
    np.testing.assert_array_equal(done.points_xyz, full.points_xyz)
    assert isinstance(inp.event_sum, np.ndarray) and inp.drawing().shape == (224, 224, 3)


def test_pipeline_over_modules_built_in_memory(windows):
    """RealmPipeline.from_modules: no checkpoint files, the same outputs and the same cross-checks."""
    from realm_ros.pipeline.core import PipelineConfig, PipelineConfigError, RealmPipeline
    from realm_ros.pipeline.tiny import build_random_tiny_modules
    modules = build_random_tiny_modules()
    pipe = RealmPipeline.from_modules(modules, PipelineConfig(match_subsample=16, pnp_iterations=100))
    out = pipe.process(windows[0], height=480, width=640, K=K_SENSOR, stamp_ns=int(windows[0].t[-1]))
    assert out.depth.shape == (480, 640) and out.semantic.shape == (480, 640) and out.matches_image is not None
    assert np.isfinite(out.depth[:, 100:540]).all() and out.semantic[:, 100:540].max() < 11
    assert pipe.diagnostics()['keyframes'] == 1
    bad = build_random_tiny_modules(projector_dim=128)
    bad.seg_head = build_random_tiny_modules().seg_head                    # expects 256-d features
    with pytest.raises(PipelineConfigError, match='in-memory segmentation head.*256-d features.*128'):
        RealmPipeline.from_modules(bad)


# ------------------------------------------------------------------------------------------------------------------
# precision on the CPU: auto is bf16 where the processor computes bfloat16 in hardware, else fp32; bf16 warns
# where the processor does not have it

def test_cpu_precision_choices(monkeypatch):
    import realm_ros.pipeline.core as core
    cpu = torch.device('cpu')
    for native in (True, False):
        monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda native=native: native)
        assert core.resolve_precision('auto', cpu) == ((torch.bfloat16 if native else None), None)
        assert core.resolve_precision('fp32', cpu) == (None, None)
        dtype, warning = core.resolve_precision('bf16', cpu)
        assert dtype is torch.bfloat16
        assert (warning is None) is native and (native or 'emulated and slower than fp32' in warning)
        dtype, warning = core.resolve_precision('fp16', cpu)
        assert dtype is None and 'fp16 is not supported for CPU' in warning
    with pytest.raises(core.PipelineConfigError, match="invalid precision 'int8'"):
        core.resolve_precision('int8', cpu)


def test_cpu_auto_precision_follows_the_processor(ckpts, windows, monkeypatch):
    """precision auto on the CPU: the encoder and dense heads under bf16 autocast where the processor has bfloat16
    arithmetic (outputs close to fp32, not equal), the exact fp32 path where it does not."""
    import realm_ros.pipeline.core as core
    ref = RealmPipeline(tiny_pipeline_config(ckpts, precision='fp32'))
    w = windows[0]
    args = dict(height=480, width=640, K=K_SENSOR, stamp_ns=int(w.t[-1]))
    want = ref.process(w, **args)
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: False)
    plain = RealmPipeline(tiny_pipeline_config(ckpts))
    assert plain.precision_name() == 'fp32' and plain.autocast_dtype is None
    np.testing.assert_array_equal(plain.process(w, **args).depth, want.depth)
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: True)
    fast = RealmPipeline(tiny_pipeline_config(ckpts))
    assert fast.autocast_dtype is torch.bfloat16 and fast.diagnostics()['precision'] == 'bfloat16'
    assert 'precision auto: this CPU computes bfloat16 in hardware' in fast.describe()
    assert 'precision auto' not in plain.describe()
    got = fast.process(w, **args)
    ok = np.isfinite(want.depth) & np.isfinite(got.depth)
    assert ok.mean() > 0.5 and not np.array_equal(got.depth[ok], want.depth[ok])       # it did run in bf16
    assert np.median(np.abs(got.depth[ok] / want.depth[ok] - 1)) < 0.02
    assert (got.semantic == want.semantic).mean() > 0.9


def test_bf16_embedder_runs_only_the_embedder_in_bf16(ckpts, windows, monkeypatch):
    import realm_ros.pipeline.core as core
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: False)
    assert 'bf16 embedder is emulated' in core.resolve_precision('bf16-embedder', torch.device('cpu'))[1]
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: True)
    assert core.resolve_precision('bf16-embedder', torch.device('cpu')) == (None, None)
    ref = RealmPipeline(tiny_pipeline_config(ckpts, precision='fp32'))
    mixed = RealmPipeline(tiny_pipeline_config(ckpts, precision='bf16-embedder'))
    assert mixed.precision_name() == 'bf16-embedder' and mixed.diagnostics()['precision'] == 'bf16-embedder'
    assert ref.precision_name() == 'fp32' and mixed.autocast_dtype is None
    assert {p.dtype for p in mixed.encoder.embedder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in mixed.encoder.backbone.parameters()} == {torch.float32}
    voxel = torch.zeros(1, 5, 224, 224)
    voxel[:, :, 40:180:3, 30:200:2] = torch.randn(1, 5, 47, 85, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        emb_ref, emb_mixed = ref.encoder.embedder(voxel), mixed.encoder.embedder(voxel)
        tok_ref, tok_mixed = ref.encoder(voxel), mixed.encoder(voxel)
    assert emb_mixed.dtype == torch.float32 and not torch.equal(emb_ref, emb_mixed)      # it did run in bf16
    assert torch.nn.functional.cosine_similarity(emb_ref, emb_mixed, dim=-1).min() > 0.999
    patch_ref, patch_mixed = tok_ref['x_norm_patchtokens'], tok_mixed['x_norm_patchtokens']
    assert patch_mixed.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(patch_ref, patch_mixed, dim=-1).min() > 0.99
    out = mixed.process(windows[0], height=480, width=640, K=K_SENSOR, stamp_ns=int(windows[0].t[-1]))
    assert out.depth.dtype == np.float32 and np.isfinite(out.depth[:, 80:560]).mean() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (benchmarks/gpu_check.sh runs it)')
def test_cuda_bf16_embedder_matches_fp32(ckpts, windows):
    ref = RealmPipeline(tiny_pipeline_config(ckpts, device='cuda', precision='fp32'))
    mixed = RealmPipeline(tiny_pipeline_config(ckpts, device='cuda', precision='bf16-embedder'))
    assert {p.dtype for p in mixed.encoder.embedder.parameters()} == {torch.bfloat16}
    voxel = torch.zeros(1, 5, 224, 224, device='cuda')
    voxel[:, :, 40:180:3, 30:200:2] = torch.randn(1, 5, 47, 85, device='cuda')
    with torch.no_grad():
        a, b = ref.encoder(voxel)['x_norm_patchtokens'], mixed.encoder(voxel)['x_norm_patchtokens']
    assert b.dtype == torch.float32 and torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99
    out = mixed.process(windows[0], height=480, width=640, K=K_SENSOR, stamp_ns=int(windows[0].t[-1]))
    assert np.isfinite(out.depth[:, 80:560]).mean() > 0.99


@pytest.mark.parametrize('flags, native', [('fpu avx512f avx512_bf16 avx512_vnni', True),
                                           ('fpu avx512f amx_bf16 amx_tile', True),
                                           ('fpu avx2 avx512f avx512bw', False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    from realm_ros.common.device import cpu_has_native_bf16
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this torch build's oneDNN has no bf16 support")
    info = tmp_path / 'cpuinfo'
    info.write_text(f'processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n')
    assert cpu_has_native_bf16(str(info)) is native
    assert cpu_has_native_bf16(str(tmp_path / 'missing')) is False


def test_outputs_subscribed_during_a_hold_are_completed_from_the_last_window(pipe, windows):
    """complete_dense: a window computed for ``depth`` only keeps its encoder output; asked later for semantic and
    points too (a subscriber came while no window did), the pipeline computes them from it, identical to what the
    window would have given with every output, stamped as asked. Nothing to do when the window had them all, or
    after a stream restart (reset)."""
    names = ('depth', 'depth_color', 'semantic', 'semantic_color', 'points_xyz', 'points_rgb')
    full, _ = pipe.process_dense(windows[1], 480, 640, K_SENSOR, 11)
    out, _ = pipe.process_dense(windows[1], 480, 640, K_SENSOR, 12, outputs=('depth',))
    assert out.semantic is None and out.points_xyz is None and out.depth is not None
    done = pipe.complete_dense(('depth', 'semantic', 'points'), 99)
    assert done.stamp_ns == 99 and (done.width, done.height, done.num_events) == (640, 480, 20_000)
    for name in ('depth', 'semantic', 'points_xyz', 'points_rgb'):
        a, b = getattr(full, name), getattr(done, name)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == 'f'), name
    assert done.depth_color is None and done.semantic_color is None
    assert pipe.complete_dense(('semantic',), 100) is None              # computed with it by now
    assert pipe.complete_dense(('depth', 'semantic', 'points'), 100) is None
    assert pipe.complete_dense(names[:2], 101).depth_color is not None  # another subscriber later
    pipe.reset()
    assert pipe.complete_dense(('semantic_color',), 102) is None        # a restarted stream keeps nothing
    pipe.process_dense(windows[1], 480, 640, K_SENSOR, 13)
    assert pipe.complete_dense(('semantic_color',), 103) is None        # every output computed: nothing missing
