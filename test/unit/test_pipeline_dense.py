"""realm_ros.pipeline.dense gives the same depth, labels, colour images and points as the previous expressions of
``RealmPipeline._process`` (copied below as the reference), on the shipped miniature models fed simulated events
and on adversarial inputs (ties, NaN / inf logits, huge values, every spatial mode)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.events import voxel_grid
from realm_ros.events.spatial import prepare_input
from realm_ros.models import colorize_segmentation
from realm_ros.pipeline import dense, render

MODELS = Path(__file__).resolve().parents[2] / 'models'
IGNORE_LABEL = 255


# ------------------------------------------------------------------------------ reference: the previous code path
def ref_depth_to_sensor(d, prep):
    depth = prep.to_sensor(d.float()).squeeze(0)
    depth = depth.cpu().numpy().astype(np.float32, copy=False)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def ref_labels(logits, prep):
    logits = prep.to_sensor(logits.float())
    valid = torch.isfinite(logits).all(dim=0)
    labels = torch.where(valid, torch.nan_to_num(logits, nan=0.0).argmax(dim=0),
                         torch.full_like(valid, IGNORE_LABEL, dtype=torch.long))
    return labels.to(torch.uint8).cpu().numpy()


def ref_semantic_color(semantic):
    return colorize_segmentation(semantic)[..., ::-1].copy()


def ref_points(depth, K, stride, max_depth, semantic_color=None, depth_color=None, depth_range=(1.0, 81.0)):
    xyz, rows, cols = render.backproject_depth(depth, K, stride, max_depth)
    if semantic_color is not None:
        rgb = semantic_color[rows, cols, ::-1]
    else:
        rgb = (depth_color if depth_color is not None else render.colorize_depth(depth, *depth_range))[rows, cols, ::-1]
    return xyz, np.ascontiguousarray(rgb)


# ------------------------------------------------------------------------------ real miniature outputs
@pytest.fixture(scope='module')
def mini():
    from realm_ros.pipeline.core import PipelineConfig, RealmPipeline
    from realm_ros.sim.simulator import SimConfig, Simulator
    pipe = RealmPipeline(PipelineConfig(realm_checkpoint=str(MODELS / 'mini_realm.safetensors'),
                                        dune_checkpoint=str(MODELS / 'mini_teacher.safetensors'),
                                        depth_head_checkpoint=str(MODELS / 'mini_depth_head.safetensors'),
                                        seg_head_checkpoint=str(MODELS / 'mini_seg_head.safetensors'),
                                        heads=('depth', 'semantic', 'points'), device='cpu'))
    sim = Simulator(SimConfig(width=320, height=240, duration_s=0.07, seed=5))
    chunks = list(sim.stream())
    events = chunks[-1].events
    assert len(events) > 10000
    voxel = voxel_grid(events, bins=pipe.bins, height=240, width=320, normalization=pipe.default_normalization)
    return pipe, voxel, np.asarray(sim.event_camera.K, np.float64)


@pytest.mark.parametrize('mode,crop', [('crop', None), ('tile', None), ('pad', (30, 210, 40, 240)),
                                       ('crop', (0, 240, 0, 180))])
def test_dense_outputs_equal_the_previous_path_on_miniature_models(mini, mode, crop):
    pipe, voxel, K = mini
    if crop is not None:                      # a smaller sensor cut from the real window
        top, bottom, left, right = crop
        voxel = voxel[:, top:bottom, left:right].contiguous()
        K = K.copy()
        K[0, 2] -= left
        K[1, 2] -= top
    prep = prepare_input(voxel, size=pipe.input_size, mode=mode)
    n = prep.tensor.shape[0]
    size = (pipe.input_size, pipe.input_size)
    bridge = pipe._head_bridge.get('semantic') or 'teacher_norm_inverse'
    with torch.inference_mode():
        extra = prepare_input(voxel, size=pipe.input_size, mode='crop').tensor     # a pose view after the dense ones
        tokens = pipe.encoder(torch.cat([prep.tensor, extra], 0))
        # previous path
        d = pipe.depth_head(tokens['x_norm_patchtokens'][:n], tokens['x_norm_clstoken'][:n], pipe.grid, out_size=size)
        depth0 = ref_depth_to_sensor(d, prep)
        proj_in = pipe.encoder.head_tokens(tokens, bridge)[:n]
        _, feat = pipe.projector(proj_in, pipe.grid)
        labels0 = ref_labels(pipe.seg_head(feat, out_size=size), prep)
        # new path
        depth1 = dense.run_depth(pipe.depth_head, tokens, pipe.grid, prep, size)
        labels1 = dense.run_semantic(pipe.encoder, pipe.projector, pipe.seg_head, tokens, pipe.grid, prep, size,
                                     bridge)
    assert depth1.dtype == np.float32 and labels1.dtype == np.uint8
    assert np.array_equal(depth0, depth1, equal_nan=True)
    assert np.array_equal(labels0, labels1)
    seen = labels1 != IGNORE_LABEL
    assert seen.any() and len(np.unique(labels1[seen])) >= 2          # a real scene, not a constant map
    assert np.isfinite(depth1).any()
    if mode == 'crop' and voxel.shape[2] > voxel.shape[1]:
        assert not seen.all() and np.isnan(depth1[~seen]).all()       # outside the crop square: nothing
    colour0 = render.colorize_depth(depth0, 1.0, 81.0)
    assert np.array_equal(dense.colorize_depth_region(depth1, 1.0, 81.0, prep), colour0)
    sem0 = ref_semantic_color(labels0)
    assert np.array_equal(render.colorize_labels(labels1), sem0)
    for stride, maxd in ((2, 80.0), (1, 20.0), (3, float('inf'))):
        x0, c0 = ref_points(depth0, K, stride, maxd, semantic_color=sem0)
        x1, c1 = dense.point_cloud(depth1, K, stride, maxd, labels=labels1)
        assert np.array_equal(x0, x1) and np.array_equal(c0, c1) and len(x1) > 0
        x0, c0 = ref_points(depth0, K, stride, maxd, depth_color=colour0)
        x1, c1 = dense.point_cloud(depth1, K, stride, maxd, depth_color=colour0)
        assert np.array_equal(x0, x1) and np.array_equal(c0, c1)
        x0, c0 = ref_points(depth0, K, stride, maxd, depth_range=(2.0, 40.0))
        x1, c1 = dense.point_cloud(depth1, K, stride, maxd, depth_range=(2.0, 40.0))
        assert np.array_equal(x0, x1) and np.array_equal(c0, c1)


def ref_process_dense(pipe, heads, tokens, prep, K, n, size, bridge, cfg):
    """The dense block of RealmPipeline._process_dense as it was before pipeline.dense (outputs only)."""
    out = {}
    if 'depth' in heads or 'points' in heads:
        d = pipe.depth_head(tokens['x_norm_patchtokens'][:n], tokens['x_norm_clstoken'][:n], pipe.grid, out_size=size)
        depth = prep.to_sensor(d.float()).squeeze(0)
        depth = depth.cpu().numpy().astype(np.float32, copy=False)
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
        if 'depth' in heads:
            out['depth'] = depth
            out['depth_color'] = render.colorize_depth(depth, *cfg['depth_color_range'])
    if 'semantic' in heads:
        proj_in = pipe.encoder.head_tokens(tokens, bridge)[:n]
        _, feat = pipe.projector(proj_in, pipe.grid)
        out['semantic'] = ref_labels(pipe.seg_head(feat, out_size=size), prep)
        out['semantic_color'] = ref_semantic_color(out['semantic'])
    if 'points' in heads:
        xyz, rows, cols = render.backproject_depth(depth, K, cfg['points_stride'], cfg['points_max_depth'])
        if out.get('semantic_color') is not None:
            rgb = out['semantic_color'][rows, cols, ::-1]
        else:
            rgb = (out['depth_color'] if out.get('depth_color') is not None else
                   render.colorize_depth(depth, *cfg['depth_color_range']))[rows, cols, ::-1]
        out['points_xyz'], out['points_rgb'] = xyz, np.ascontiguousarray(rgb)
    return out


@pytest.mark.parametrize('heads', [('depth', 'semantic', 'points'), ('depth',), ('semantic',), ('points',),
                                   ('depth', 'points'), ('semantic', 'points')])
def test_compute_dense_equals_the_previous_pipeline_block(mini, heads):
    pipe, voxel, K = mini
    prep = prepare_input(voxel, size=pipe.input_size, mode='crop')
    size = (pipe.input_size, pipe.input_size)
    cfg = dict(depth_color_range=(1.5, 60.0), points_stride=3, points_max_depth=50.0)
    with torch.inference_mode():
        tokens = pipe.encoder(prep.tensor)
        ref = ref_process_dense(pipe, heads, tokens, prep, K, 1, size, 'student_prenorm', cfg)
        got = dense.compute_dense(heads, tokens, pipe.grid, prep, size, K, depth_head=pipe.depth_head,
                                  encoder=pipe.encoder, projector=pipe.projector, seg_head=pipe.seg_head,
                                  bridge='student_prenorm', **cfg)
    names = ('depth', 'depth_color', 'semantic', 'semantic_color', 'points_xyz', 'points_rgb')
    for name in names:
        a, b = ref.get(name), getattr(got, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == 'f'), name
    assert set(got.timings_ms) == {f'{h}_ms' for h in heads} | ({'depth_ms'} if 'points' in heads else set())


@pytest.mark.parametrize('outputs', [(), ('depth',), ('depth_color',), ('semantic',), ('semantic_color',),
                                     ('points',), ('depth', 'semantic_color'), ('depth_color', 'points')])
def test_only_the_wanted_outputs_are_computed_and_they_are_unchanged(mini, outputs):
    """``outputs`` (what has subscribers): a head none of whose outputs is wanted does not run, an unwanted colour
    image is not drawn, and what is computed is identical to the all-outputs run (the points keep their class
    colours when only they are wanted: the semantic head runs for them)."""
    pipe, voxel, K = mini
    prep = prepare_input(voxel, size=pipe.input_size, mode='crop')
    size = (pipe.input_size, pipe.input_size)
    heads = ('depth', 'semantic', 'points')
    kw = dict(depth_head=pipe.depth_head, encoder=pipe.encoder, projector=pipe.projector, seg_head=pipe.seg_head,
              bridge='student_prenorm', points_stride=3)
    with torch.inference_mode():
        tokens = pipe.encoder(prep.tensor)
        every = dense.compute_dense(heads, tokens, pipe.grid, prep, size, K, **kw)
        got = dense.compute_dense(heads, tokens, pipe.grid, prep, size, K, outputs=outputs, **kw)
    for name in ('depth', 'depth_color', 'semantic', 'semantic_color', 'points_xyz', 'points_rgb'):
        wanted = name.replace('_xyz', '').replace('_rgb', '') in outputs
        b = getattr(got, name)
        assert (b is not None) == wanted, name
        if wanted:
            a = getattr(every, name)
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == 'f'), name
    ran = {k[:-3] for k in got.timings_ms}
    assert ran == ({'depth'} if set(outputs) & {'depth', 'depth_color', 'points'} else set()) | (
        {'semantic'} if set(outputs) & {'semantic', 'semantic_color', 'points'} else set()) | (
        {'points'} if 'points' in outputs else set())
    with pytest.raises(ValueError, match="unknown dense outputs \\['colour'\\]"):
        dense.compute_dense(heads, tokens, pipe.grid, prep, size, K, outputs=('depth', 'colour'), **kw)


def test_semantic_under_autocast_and_with_other_heads_equals_reference(mini):
    from realm_ros.models import SegmentationHead
    pipe, voxel, _ = mini
    prep = prepare_input(voxel, size=pipe.input_size, mode='crop')
    size = (pipe.input_size, pipe.input_size)

    class Shifted(SegmentationHead):                     # another forward: must be called as it is
        def forward(self, features, out_size=None):
            return super().forward(features, out_size) * torch.linspace(1, 2, self.num_classes)[None, :, None, None]

    shifted = Shifted(pipe.seg_head.in_dim, pipe.seg_head.num_classes)
    shifted.load_state_dict(pipe.seg_head.state_dict())

    def bf16():
        return torch.autocast('cpu', dtype=torch.bfloat16)
    with torch.inference_mode():
        tokens = pipe.encoder(prep.tensor)
        for head, autocast in ((shifted, None), (pipe.seg_head, bf16)):
            with (autocast() if autocast else torch.autocast('cpu', enabled=False)):
                proj_in = pipe.encoder.head_tokens(tokens, 'student_prenorm')[:1]
                _, feat = pipe.projector(proj_in, pipe.grid)
                ref = ref_labels(head(feat, out_size=size), prep)
            got = dense.run_semantic(pipe.encoder, pipe.projector, head, tokens, pipe.grid, prep, size,
                                     'student_prenorm', autocast=autocast)
            assert np.array_equal(got, ref)
    assert not np.array_equal(got, dense.run_semantic(pipe.encoder, pipe.projector, shifted, tokens, pipe.grid, prep,
                                                      size, 'student_prenorm'))


def test_scratch_buffers_are_per_thread():
    import threading
    prep = _prep((480, 640), 'crop')
    inputs = [torch.randn(1, 11, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    refs = [ref_labels(x, prep) for x in inputs]
    results = {}

    def work(i):
        for _ in range(5):
            results[i] = dense.labels_to_sensor(inputs[i], prep)
            if not np.array_equal(results[i], refs[i]):
                results[i] = None
                return
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] is not None and np.array_equal(results[i], refs[i]) for i in range(4))
    dense.clear_scratch()
    assert np.array_equal(dense.labels_to_sensor(inputs[0], prep), refs[0])


# ------------------------------------------------------------------------------ adversarial inputs
PLANS = [((240, 320), 'crop'), ((240, 320), 'tile'), ((180, 200), 'pad'), ((260, 250), 'crop'),
         ((100, 130), 'crop'), ((500, 700), 'tile')]


def _prep(hw, mode, size=224):
    return prepare_input(torch.zeros(1, *hw), size=size, mode=mode)


def _adversarial_logits(kind, n, k, size, gen):
    x = torch.randn(n, k, size, size, generator=gen)
    if kind == 'ties':                                    # every class equal: argmax must be class 0 everywhere
        return torch.zeros(n, k, size, size)
    if kind == 'pairs':                                   # two classes tied, others lower
        x[:, 3] = x[:, 1] = x.max(dim=1).values + 1.0
        return x
    if kind == 'quantised':                               # many exact ties after resizing
        return torch.round(x * 2) / 2
    if kind == 'signed_zero':
        x = torch.zeros(n, k, size, size)
        x[:, 0] = -0.0
        x[:, 2] = 0.0
        return x
    if kind == 'nan_inf':
        x[:, 2, 10:30, 5:60] = float('nan')
        x[:, 4, 100:120, 100:140] = float('inf')
        x[:, 0, 150:170, :] = -float('inf')
        return x
    if kind == 'huge':                                    # beyond the bound that proves finiteness
        return x * 3e38
    if kind == 'tiny':
        return x * 1e-38
    if kind == 'smooth':                                  # the realistic case: low-resolution logits upsampled
        low = torch.randn(n, k, 16, 16, generator=gen) * 3
        return torch.nn.functional.interpolate(low, size=(size, size), mode='bilinear', align_corners=False)
    return x


@pytest.mark.parametrize('hw,mode', PLANS)
@pytest.mark.parametrize('kind', ['random', 'ties', 'pairs', 'quantised', 'signed_zero', 'nan_inf', 'huge', 'tiny',
                                  'smooth'])
def test_labels_equal_reference_on_adversarial_logits(hw, mode, kind):
    gen = torch.Generator().manual_seed(hash((hw, mode, kind)) % 2 ** 31)
    prep = _prep(hw, mode)
    k = 11
    logits = _adversarial_logits(kind, prep.plan.num_inputs, k, 224, gen)
    ref = ref_labels(logits, prep)
    got = dense.labels_to_sensor(logits, prep)
    assert np.array_equal(got, ref)
    if kind == 'ties':
        assert set(np.unique(got)) <= {0, IGNORE_LABEL}
    if kind == 'nan_inf' and mode != 'pad':
        assert (got == IGNORE_LABEL).sum() > (ref_labels(torch.zeros_like(logits), prep) == IGNORE_LABEL).sum()
    out = np.full(hw, 7, np.uint8)                        # the out buffer is fully written
    assert dense.labels_to_sensor(logits, prep, out=out) is out and np.array_equal(out, ref)


@pytest.mark.parametrize('k', [1, 2, 255])
def test_labels_any_class_count(k):
    prep = _prep((240, 320), 'crop')
    logits = torch.randn(1, k, 224, 224, generator=torch.Generator().manual_seed(k))
    assert np.array_equal(dense.labels_to_sensor(logits, prep), ref_labels(logits, prep))


def test_argmax_channels_matches_numpy_and_breaks_ties_low():
    rng = np.random.default_rng(0)
    v = np.round(rng.normal(size=(9, 37, 1000)) * 2).astype(np.float32)   # many ties
    old = dense.CHUNK_ELEMENTS
    try:
        for chunk in (1, 999, 1 << 18):                   # row chunks of 1, ..., all rows
            dense.CHUNK_ELEMENTS = chunk
            assert np.array_equal(dense.argmax_channels(v), np.argmax(v, axis=0))
            assert np.array_equal(dense.argmax_channels(v), torch.from_numpy(v).argmax(0).numpy())
    finally:
        dense.CHUNK_ELEMENTS = old
    full = np.zeros((12, 50), np.uint8)
    dense.argmax_channels(v[:, :12, :50], out=full)       # strided input, out view
    assert np.array_equal(full, np.argmax(v[:, :12, :50], axis=0))
    with pytest.raises(ValueError, match='1..255 classes'):
        dense.argmax_channels(np.zeros((256, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r'\(K, h, w\)'):
        dense.argmax_channels(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match='out must be'):
        dense.argmax_channels(v, out=np.zeros((3, 3), np.uint8))


@pytest.mark.parametrize('hw,mode', PLANS)
def test_depth_equals_reference_with_invalid_values(hw, mode):
    prep = _prep(hw, mode)
    gen = torch.Generator().manual_seed(1)
    d = torch.rand(prep.plan.num_inputs, 1, 224, 224, generator=gen) * 80 + 0.5
    d[:, 0, 5:9, 5:200] = float('nan')
    d[:, 0, 50:60, 3:40] = float('inf')
    d[:, 0, 70:80, 3:40] = -float('inf')
    d[:, 0, 90:100, 3:40] = 0.0
    d[:, 0, 110:120, 3:40] = -2.0
    d[:, 0, 130:131, :] = 1e-30
    ref = ref_depth_to_sensor(d, prep)
    got = dense.depth_to_sensor(d, prep)
    assert got.dtype == np.float32 and np.array_equal(got, ref, equal_nan=True)
    assert np.isnan(got).any() and np.isfinite(got).any()
    out = np.zeros(hw, np.float32)
    assert dense.depth_to_sensor(d, prep, out=out) is out and np.array_equal(out, ref, equal_nan=True)
    assert np.array_equal(dense.colorize_depth_region(got, 1.0, 81.0, prep), render.colorize_depth(ref, 1.0, 81.0))
    buf = np.full(hw + (3,), 9, np.uint8)
    assert np.array_equal(dense.colorize_depth_region(got, 2.0, 30.0, prep, out=buf),
                          render.colorize_depth(ref, 2.0, 30.0))


def test_bad_inputs_name_the_problem():
    prep = _prep((240, 320), 'tile')
    with pytest.raises(ValueError, match='n=1 dense views given, the spatial plan has 4'):
        dense.run_depth(None, {}, (16, 16), prep, (224, 224), n=1)
    with pytest.raises(ValueError, match='one channel'):
        dense.depth_to_sensor(torch.zeros(4, 2, 224, 224), prep)
    with pytest.raises(ValueError, match=r'expected \(4, K, 224, 224\) predictions'):
        dense.depth_to_sensor(torch.zeros(1, 1, 224, 224), prep)
    with pytest.raises(ValueError, match='out must be a \\(240, 320\\) float32'):
        dense.depth_to_sensor(torch.zeros(4, 1, 224, 224), prep, out=np.zeros((240, 320), np.float64))
    with pytest.raises(ValueError, match='K <= 255'):
        dense.labels_to_sensor(torch.zeros(4, 256, 224, 224), prep)
    with pytest.raises(ValueError, match='out must be a \\(240, 320\\) uint8'):
        dense.labels_to_sensor(torch.zeros(4, 3, 224, 224), prep, out=np.zeros((240, 321), np.uint8))
    with pytest.raises(ValueError, match='out must be a'):
        dense.colorize_depth_region(np.zeros((240, 320), np.float32), 1.0, 2.0, prep, out=np.zeros((2, 2, 3), np.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('hw,mode', PLANS[:3])
def test_cuda_labels_and_depth_equal_reference(hw, mode):
    prep = _prep(hw, mode)
    gen = torch.Generator().manual_seed(2)
    for kind in ('random', 'ties', 'nan_inf', 'smooth'):
        logits = _adversarial_logits(kind, prep.plan.num_inputs, 11, 224, gen).cuda()
        assert np.array_equal(dense.labels_to_sensor(logits, prep), ref_labels(logits, prep))
    d = (torch.rand(prep.plan.num_inputs, 1, 224, 224, generator=gen) * 80).cuda()
    assert np.array_equal(dense.depth_to_sensor(d, prep), ref_depth_to_sensor(d, prep), equal_nan=True)
