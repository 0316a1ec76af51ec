"""The pose step's decoder maps compiled by OpenVINO (``pose.decoder_runtime``): the same maps as the eager decoder
within float rounding, the same pose-step results, a fallback to the eager decoder for shapes it cannot compile,
outputs that survive the next call, and the pipeline's choice of runtime.

Run by ``test_models_compiled.py`` in a pytest process of its own (see there); ``python -m pytest
test/unit/openvino_cases.py`` runs it directly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.geometry.symmetric import decode_both_orders
from realm_ros.common.device import cpu_has_native_bf16
from realm_ros.models.mast3r.compiled import (OpenVinoPairMaps, OpenVinoRuntimeError, PairBlocks, PairHeads, PairMaps,
                                              openvino_version)
from realm_testing.models import decoder_tokens, tiny_decoder

pytestmark = pytest.mark.skipif(openvino_version() is None, reason='OpenVINO is not installed (requirements-ml.txt '
                                'installs it; pip install openvino)')

MODELS = Path(__file__).resolve().parents[2] / 'models'


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding in another summation order (relative to the map's scale)."""
    return a.shape == b.shape and bool(((a - b).abs().max() <= 2e-5 * b.abs().max() + 1e-6))


@pytest.mark.parametrize('grids', [((4, 4), (4, 4)), ((4, 5), (5, 3))])
def test_compiled_maps_equal_the_eager_maps(grids):
    dec = tiny_decoder()
    (g1, g2) = grids
    a, b = decoder_tokens(g1[0] * g1[1], 1, 2), decoder_tokens(g2[0] * g2[1], 2, 2)
    maps = OpenVinoPairMaps(dec, threads=1)
    with torch.no_grad():
        ref = PairMaps(dec, g1, g2)(a, b)
    got = maps(a, b, g1, g2)
    assert ref[0].shape == (2, 14 * g1[0], 14 * g1[1], 4)                  # view 1's points + confidence
    assert ref[2].shape == (2, 14 * g2[0], 14 * g2[1], dec.config.desc_dim + 1)
    for r, g in zip(ref, got):
        assert g.dtype == torch.float32 and _close(g, r)
    assert maps.compiled_shapes == [((2, g1[0] * g1[1], 192), (2, g2[0] * g2[1], 192), g1, g2, 'f32')]
    maps(a + 1.0, b, g1, g2)                                  # the same shape: no second compilation
    assert len(maps.compiled_shapes) == 1


def test_compiled_heads_in_bf16_are_a_second_model_close_to_eager_bf16():
    """heads_dtype bfloat16: the blocks compiled in fp32, the heads as a model of their own with the bf16 hint; the
    maps are within bf16 rounding of the eager blocks + autocast heads, and (on a CPU with bf16 arithmetic, where
    OpenVINO honours the hint) not the fp32 maps. Both precisions of a shape are kept compiled side by side."""
    dec = tiny_decoder()
    g = (4, 4)
    a, b = decoder_tokens(16, 1, 2), decoder_tokens(16, 2, 2)
    maps = OpenVinoPairMaps(dec, threads=1)
    with torch.no_grad():
        decoded = PairBlocks(dec, g, g)(a, b)
        ref32 = PairHeads(dec, g, g)(*decoded)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            ref16 = [m.float() for m in PairHeads(dec, g, g)(*decoded)]
    got16 = maps(a, b, g, g, heads_dtype=torch.bfloat16)
    got32 = maps(a, b, g, g)
    for r16, r32, g16, g32 in zip(ref16, ref32, got16, got32):
        assert g16.dtype == torch.float32 and g16.shape == r32.shape
        scale = r32.abs().max()
        assert (g16 - r16).abs().max() <= 0.03 * scale and (g16 - r32).abs().max() <= 0.03 * scale
        assert _close(g32, r32)
        if cpu_has_native_bf16():
            assert not _close(g16, r32)                       # it did run in bf16
    shape = (2, 16, 192)
    assert maps.compiled_shapes == [(shape, shape, g, g, 'bf16'), (shape, shape, g, g, 'f32')]
    with pytest.raises(OpenVinoRuntimeError, match='fp32 or bf16'):
        maps(a, b, g, g, heads_dtype=torch.float16)


def test_compiled_step_outputs_survive_the_next_call_and_match_eager():
    """decode_both_orders with the compiled maps (reused output buffers): every output close to the eager one,
    and unchanged by the next call, also where post-processing would return a view of the raw map (linear points,
    unnormalised descriptors)."""
    dec = tiny_decoder(depth_mode=('linear', -float('inf'), float('inf')), desc_mode='none')
    maps = OpenVinoPairMaps(dec, threads=1)
    a, b = decoder_tokens(16, 3), decoder_tokens(16, 4)
    with torch.no_grad():
        ref = decode_both_orders(dec, a, b, (56, 56), (56, 56), view2_points=False)
        got = decode_both_orders(dec, a, b, (56, 56), (56, 56), view2_points=False, maps=maps)
        kept = [{k: v.clone() for k, v in d.items()} for d in got]
        decode_both_orders(dec, b, a, (56, 56), (56, 56), view2_points=False, maps=maps)
    for r, g, k in zip(ref, got, kept):
        assert set(r) == set(g)
        for key in r:
            assert _close(g[key], r[key]), key
            assert torch.equal(g[key], k[key]), key                  # not overwritten by the second call
    with pytest.raises(ValueError, match='view2_points'):
        decode_both_orders(dec, a, b, (56, 56), (56, 56), maps=maps)


def test_a_shape_that_does_not_compile_falls_back_or_raises(monkeypatch):
    dec = tiny_decoder()
    a, b = decoder_tokens(16, 5, 2), decoder_tokens(16, 6, 2)

    def broken(*_args):
        raise OpenVinoRuntimeError('cannot compile this one')
    messages = []
    lenient = OpenVinoPairMaps(dec, threads=1, fallback=True, log=messages.append)
    monkeypatch.setattr(lenient, '_compile', broken)
    with torch.no_grad():
        ref = PairMaps(dec, (4, 4), (4, 4))(a, b)
    for _ in range(2):
        got = lenient(a, b, (4, 4), (4, 4))
        assert all(torch.equal(r, g) for r, g in zip(ref, got))           # the eager maps, bit for bit
    assert len(messages) == 1 and 'cannot compile this one' in messages[0] and 'eager' in messages[0]
    assert list(lenient.failed) == [((2, 16, 192), (2, 16, 192), (4, 4), (4, 4), 'f32')]
    with torch.no_grad():                                  # heads in bf16: the eager blocks + autocast heads
        decoded = PairBlocks(dec, (4, 4), (4, 4))(a, b)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            ref16 = PairHeads(dec, (4, 4), (4, 4))(*decoded)
    got = lenient(a, b, (4, 4), (4, 4), heads_dtype=torch.bfloat16)
    assert all(g.dtype == torch.float32 and torch.equal(r.float(), g) for r, g in zip(ref16, got))
    strict = OpenVinoPairMaps(dec, threads=1)
    monkeypatch.setattr(strict, '_compile', broken)
    with pytest.raises(OpenVinoRuntimeError, match='cannot compile this one'):
        strict(a, b, (4, 4), (4, 4))


def test_missing_openvino_and_bad_arguments_are_named(monkeypatch):
    import realm_ros.models.mast3r.compiled as compiled
    dec = tiny_decoder()
    with pytest.raises(OpenVinoRuntimeError, match='threads'):
        OpenVinoPairMaps(dec, threads=0)
    monkeypatch.setattr(compiled, 'openvino_version', lambda: None)
    with pytest.raises(OpenVinoRuntimeError, match='pip install openvino'):
        OpenVinoPairMaps(dec)


FILES = {k: MODELS / f'mini_{k}.safetensors' for k in ('realm', 'teacher', 'mast3r')}


def _pipe(runtime, **kw):
    from realm_ros.pipeline.core import PipelineConfig, RealmPipeline
    return RealmPipeline(PipelineConfig(realm_checkpoint=str(FILES['realm']), dune_checkpoint=str(FILES['teacher']),
                                        mast3r_checkpoint=str(FILES['mast3r']), device='cpu', heads=('pose',),
                                        pose_decoder_runtime=runtime, **kw))


@pytest.mark.skipif(not all(p.is_file() for p in FILES.values()), reason='miniature models not shipped')
@pytest.mark.parametrize('native_bf16', [False, True])
def test_pipeline_chooses_the_decoder_runtime(monkeypatch, native_bf16):
    import realm_ros.models.mast3r.compiled as compiled
    import realm_ros.pipeline.core as core
    from realm_ros.pipeline.core import PipelineConfigError
    monkeypatch.setattr(core, 'cpu_has_native_bf16', lambda: native_bf16)
    auto = _pipe('auto')
    assert auto.pose_decoder_maps is not None and auto.pose_decoder_runtime == f'openvino {openvino_version()}'
    assert 'pose decoder openvino' in auto.describe()
    assert auto.describe().endswith('bf16-heads' if native_bf16 else 'fp32')   # the pose decoder's precision
    assert auto.diagnostics()['pose_decoder_runtime'].startswith('openvino')
    heads = 'bf16' if native_bf16 else 'f32'                   # pose.decoder_precision auto: bf16-heads / fp32
    assert auto.warm_up_pose() > 0 and auto.pose_decoder_maps.compiled_shapes == [
        ((2, 256, 192), (2, 256, 192), (16, 16), (16, 16), heads)]         # both orders of the node's input size
    auto.update(pose_decoder_precision='bf16')                 # a bf16 decoder runs eager, back to openvino after
    assert auto.pose_decoder_maps is None and auto.pose_decoder_runtime == 'torch'
    auto.update(pose_decoder_precision='fp32')
    assert auto.pose_decoder_maps is not None
    auto.close()                                               # the compiled decoder goes with the models
    assert auto.pose_decoder_maps is None and auto.pose_decoder_runtime == 'torch'
    eager = _pipe('torch')
    assert eager.pose_decoder_maps is None and eager.warm_up_pose() == 0.0
    with pytest.raises(PipelineConfigError, match='pose_decoder_runtime'):
        _pipe('tensorrt')
    monkeypatch.setattr(compiled, 'openvino_version', lambda: None)
    assert _pipe('auto').pose_decoder_runtime == 'torch'      # auto without OpenVINO: the eager decoder
    with pytest.raises(PipelineConfigError, match='OpenVINO is not installed'):
        _pipe('openvino')


@pytest.mark.skipif(not all(p.is_file() for p in FILES.values()), reason='miniature models not shipped')
def test_pipeline_poses_agree_with_the_eager_decoder():
    """The node's case: shipped models, simulated events at 224 x 224, both orders batched. The compiled decoder
    publishes the same steps with the same inlier counts and poses (within 1 cm / 0.05 deg: float rounding can move
    a match in a rare tie, and RANSAC then draws other samples)."""
    from realm_ros.miniature.data import sim_config, split_seeds
    from realm_ros.sim.simulator import Simulator
    torch.set_num_threads(1)
    sim = Simulator(sim_config(split_seeds('test', 1)[0], 224, 0.3))
    chunks = list(sim.stream())[1:8]
    runs = {}
    for runtime in ('torch', 'openvino'):
        pipe = _pipe(runtime, pnp_iterations=300, pose_decoder_precision='fp32')
        runs[runtime] = [pipe.process(c.events, 224, 224, sim.event_camera.K, c.t_end_ns).pose for c in chunks]
        assert pipe.pose_decoder_runtime.split()[0] == runtime
    published = 0
    for e, c in zip(runs['torch'], runs['openvino']):
        assert (e is None) == (c is None)
        if e is None:
            continue
        published += 1
        assert abs(e.num_inliers - c.num_inliers) <= max(2, 0.02 * e.num_inliers)
        np.testing.assert_allclose(c.t, e.t, atol=0.01)
        angle = np.degrees(np.arccos(np.clip((np.trace(c.R.T @ e.R) - 1) / 2, -1, 1)))
        assert angle < 0.05
    assert published >= 3


_RELEASE_OUT_OF_ORDER = r'''
import gc, os, signal, sys
import torch
sys.path.insert(0, sys.argv[1])
from realm_ros.common import signal_stack as stack
from realm_ros.models.mast3r import compiled
from realm_testing.models import decoder_tokens, tiny_decoder
if sys.argv[2] == 'unguarded':                  # what happens without the guard (the test checks it still does)
    import contextlib
    compiled.preserved_signal_stack = contextlib.nullcontext
before = stack.signal_stack()
dec = tiny_decoder()
first, second = compiled.OpenVinoPairMaps(dec, threads=1), compiled.OpenVinoPairMaps(dec, threads=1)
a, b = decoder_tokens(16, 1), decoder_tokens(16, 2)
first(a, b, (4, 4), (4, 4))
second(a, b, (4, 4), (4, 4))
print('after compiling', stack.signal_stack() == before, flush=True)
first.close()                                   # released in the order they were compiled
second.close()
del first, second
gc.collect()
print('after releasing', stack.signal_stack() == before, flush=True)
got = []
signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
os.kill(os.getpid(), signal.SIGINT)             # handled on the alternate stack (CPython uses SA_ONSTACK)
print('handled', got, flush=True)
'''


@pytest.mark.skipif(not Path('/proc/self/maps').exists(), reason='sigaltstack checks need Linux')
def test_released_models_leave_the_threads_signal_stack_alone(tmp_path):
    """OpenVINO swaps a compiling thread's alternate signal stack and puts back the previous one on release; two
    models released in compile order left a freed stack behind and the next Python signal handler (Ctrl-C, torch's
    SIGCHLD of data-loading workers) killed the process with SIGSEGV (the suite's old crash). Guarded: nothing
    changes and the signal is handled."""
    import subprocess
    import sys
    script = tmp_path / 'release.py'
    script.write_text(_RELEASE_OUT_OF_ORDER)
    test_dir = str(Path(__file__).resolve().parents[1])
    env = dict(__import__('os').environ, PYTHONFAULTHANDLER='1', OMP_NUM_THREADS='1')
    guarded = subprocess.run([sys.executable, str(script), test_dir, 'guarded'], capture_output=True, text=True,
                             timeout=300, env=env, cwd=str(tmp_path))
    assert guarded.returncode == 0, guarded.stdout + guarded.stderr[-3000:]
    assert 'after compiling True' in guarded.stdout and 'after releasing True' in guarded.stdout
    assert 'handled [2]' in guarded.stdout
    import resource

    def no_core_file() -> None:                   # the unguarded run is expected to crash: no core dump left behind
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    bare = subprocess.run([sys.executable, str(script), test_dir, 'unguarded'], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(tmp_path), preexec_fn=no_core_file)
    # the hazard the guard removes is still there in this OpenVINO (if a release fixes it, this says so)
    assert bare.returncode != 0 or 'after releasing False' in bare.stdout, bare.stdout + bare.stderr[-2000:]
