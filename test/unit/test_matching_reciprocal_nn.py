"""Reciprocal nearest-neighbour matching: semantics on constructed descriptors, fast == reference."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from realm_ros.geometry.matching import fast_reciprocal_nn, reference_reciprocal_nn, seed_grid


REPO_ROOT = Path(__file__).resolve().parents[2]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _random_map(h: int, w: int, d: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _unit(torch.randn(h, w, d, generator=g))


def _smooth_pair(h: int, w: int, seed: int = 0, shift=(2, 3), mix=0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatially smooth descriptors plus noise: many seeds need several iterations, some never converge."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 24, h // 6 + 1, w // 6 + 1, generator=g)
    d1 = torch.nn.functional.interpolate(base, size=(h, w), mode='bilinear', align_corners=False)[0].permute(1, 2, 0)
    d1 = _unit(d1 + 0.3 * torch.randn(h, w, 24, generator=g))
    d2 = _unit(mix * torch.roll(d1, shift, (0, 1)) + (1 - mix) * _random_map(h, w, seed=seed + 1))
    return d1, d2


def _brute_nn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Index of the most similar row of b for each row of a (float64; lowest index on ties)."""
    return np.argmax(a.astype(np.float64) @ b.astype(np.float64).T, axis=1)


def test_seed_grid_positions():
    seeds = seed_grid(20, 30, 8)
    ys, xs = np.divmod(seeds, 30)
    assert sorted(set(ys.tolist())) == [4, 12] and sorted(set(xs.tolist())) == [4, 12, 20, 28]
    assert np.all(np.diff(seeds) > 0)


def test_known_permutation_all_seeds_match():
    """Image 2 is image 1 rolled by (dy, dx): every seed's mutual NN is its rolled pixel."""
    h, w = 40, 48
    d1 = _random_map(h, w, seed=3)
    d2 = torch.roll(d1, shifts=(5, -7), dims=(0, 1))
    m = fast_reciprocal_nn(d1, d2, subsample=8, border=0)
    seeds = seed_grid(h, w, 8)
    sy, sx = np.divmod(seeds, w)
    exp1 = np.stack([sx, sy], 1)
    exp2 = np.stack([(sx - 7) % w, (sy + 5) % h], 1)
    assert np.array_equal(m.xy1, exp1)
    assert np.array_equal(m.xy2, exp2)
    # border filter: points within 3 px of an edge in either image are removed
    mb = fast_reciprocal_nn(d1, d2, subsample=8, border=3)
    keep = ((exp1 >= 3).all(1) & (exp1[:, 0] < w - 3) & (exp1[:, 1] < h - 3)
            & (exp2 >= 3).all(1) & (exp2[:, 0] < w - 3) & (exp2[:, 1] < h - 3))
    assert np.array_equal(mb.xy1, exp1[keep]) and np.array_equal(mb.xy2, exp2[keep])
    assert 0 < len(mb.xy1) < len(exp1)


def test_every_match_is_mutual_and_single_step_semantics():
    h, w = 30, 36
    d1, d2 = _smooth_pair(h, w, seed=5)
    a, b = d1.reshape(-1, 24).numpy(), d2.reshape(-1, 24).numpy()
    nn12, nn21 = _brute_nn(a, b), _brute_nn(b, a)
    m = fast_reciprocal_nn(d1, d2, subsample=3, border=0)
    i1 = m.xy1[:, 1] * w + m.xy1[:, 0]
    i2 = m.xy2[:, 1] * w + m.xy2[:, 0]
    assert len(i1) > 20
    assert np.array_equal(nn12[i1], i2) and np.array_equal(nn21[i2], i1)      # mutual nearest neighbours
    keys = i1 * (h * w) + i2
    assert np.all(np.diff(keys) > 0)                                          # unique, sorted by (idx1, idx2)
    # max_iter=1: exactly the seeds whose round trip returns to themselves
    seeds = seed_grid(h, w, 3)
    back = nn21[nn12[seeds]]
    conv = seeds[back == seeds]
    expected = np.unique(conv * (h * w) + nn12[conv])
    m1 = fast_reciprocal_nn(d1, d2, subsample=3, border=0, max_iter=1)
    got = (m1.xy1[:, 1] * w + m1.xy1[:, 0]) * (h * w) + m1.xy2[:, 1] * w + m1.xy2[:, 0]
    assert np.array_equal(got, expected)
    # more iterations find strictly more matches on this data (chains that converge later)
    assert len(m.xy1) > len(m1.xy1)


def _simulate(seeds: np.ndarray, nn12: np.ndarray, nn21: np.ndarray, max_iter: int) -> np.ndarray:
    """Per-seed simulation of the iteration rule from the spec, seed by seed (independent of the implementations)."""
    pairs = []
    for s in seeds:
        p1, p2 = int(s), -1
        for _ in range(max_iter):
            q2 = int(nn12[p1])
            if q2 == p2:
                pairs.append((p1, p2))
                break
            p2 = q2
            q1 = int(nn21[p2])
            if q1 == p1:
                pairs.append((p1, p2))
                break
            p1 = q1
    return np.array(sorted(set(pairs)), dtype=np.int64).reshape(-1, 2)


@pytest.mark.parametrize('max_iter', [2, 3, 10])
def test_matches_equal_per_seed_simulation(max_iter):
    h, w = 24, 32
    d1, d2 = _smooth_pair(h, w, seed=11, mix=0.35)
    a, b = d1.reshape(-1, 24).numpy(), d2.reshape(-1, 24).numpy()
    expected = _simulate(seed_grid(h, w, 2), _brute_nn(a, b), _brute_nn(b, a), max_iter)
    for fn in (fast_reciprocal_nn, reference_reciprocal_nn):
        m = fn(d1, d2, subsample=2, border=0, max_iter=max_iter)
        got = np.stack([m.xy1[:, 1] * w + m.xy1[:, 0], m.xy2[:, 1] * w + m.xy2[:, 0]], 1)
        assert np.array_equal(got, expected), fn.__name__


def test_ties_pick_lowest_index():
    h, w = 12, 12
    d1 = _random_map(h, w, seed=7)
    d2 = _random_map(h, w, seed=8)
    seed = 4 * w + 4                               # a seed of the S=8 grid
    target = d1.reshape(-1, 24)[seed]
    flat2 = d2.reshape(-1, 24).clone()
    flat2[50] = target                             # two identical copies in image 2: 50 and 100
    flat2[100] = target
    d2 = flat2.reshape(h, w, 24)
    for fn in (fast_reciprocal_nn, reference_reciprocal_nn):
        m = fn(d1, d2, subsample=8, border=0)
        row = np.where((m.xy1[:, 0] == 4) & (m.xy1[:, 1] == 4))[0]
        assert len(row) == 1 and m.xy2[row[0]].tolist() == [50 % w, 50 // w], fn.__name__


def test_fast_equals_reference_with_tiling_paths():
    d1, d2 = _smooth_pair(48, 64, seed=2)
    ref = reference_reciprocal_nn(d1, d2, subsample=4, block_size=500)
    for elems in (1 << 30, 5000, 70_000):        # one pass; row+column tiling; column tiling only
        fast = fast_reciprocal_nn(d1, d2, subsample=4, max_block_elems=elems, backend='torch')
        assert np.array_equal(fast.xy1, ref.xy1) and np.array_equal(fast.xy2, ref.xy2), elems
    assert ref.count > 10


def test_lazy_compaction_path_equals_reference():
    """The CUDA schedule of the PyTorch backend (compaction at iterations 1, 2, 4, 8 only), run on the CPU."""
    from realm_ros.geometry.matching import _finalize, _iterate_torch
    d1, d2 = _smooth_pair(40, 48, seed=6, mix=0.4)
    ref = reference_reciprocal_nn(d1, d2, subsample=2)
    seeds = torch.from_numpy(seed_grid(40, 48, 2))
    i1, i2 = _iterate_torch(d1.reshape(-1, 24), d2.reshape(-1, 24), seeds, 10, torch.float32, 1 << 16, eager=False)
    lazy = _finalize(i1, i2, (40, 48), (40, 48), 3)
    assert np.array_equal(lazy.xy1, ref.xy1) and np.array_equal(lazy.xy2, ref.xy2) and ref.count > 20


def test_different_image_sizes_and_numpy_input():
    d1 = _random_map(20, 28, seed=1)
    d2 = torch.roll(torch.nn.functional.pad(d1.permute(2, 0, 1), (0, 8, 0, 4)).permute(1, 2, 0), (2, 1), (0, 1))
    d2 = d2.clone()
    d2[d2.norm(dim=-1) == 0] = _random_map(24, 36, seed=9)[d2.norm(dim=-1) == 0]
    m = fast_reciprocal_nn(d1.numpy(), d2[None], subsample=4, border=0)
    assert m.count == len(seed_grid(20, 28, 4))
    assert np.array_equal(m.xy2, m.xy1 + np.array([1, 2]))


def test_bad_inputs_are_named():
    d = _random_map(8, 8)
    with pytest.raises(ValueError, match='descriptor dimensions differ'):
        fast_reciprocal_nn(d, d[..., :10])
    with pytest.raises(ValueError, match='desc2 must be'):
        fast_reciprocal_nn(d, d[0])
    with pytest.raises(ValueError, match='desc1 must be floating'):
        fast_reciprocal_nn(torch.ones(8, 8, 24, dtype=torch.int32), d)
    with pytest.raises(TypeError, match='desc1'):
        fast_reciprocal_nn([1, 2], d)
    with pytest.raises(ValueError, match='subsample'):
        fast_reciprocal_nn(d, d, subsample=0)
    bad = d.clone()
    bad[2:4] = float('nan')
    m = fast_reciprocal_nn(bad, d, subsample=2, border=0)     # no crash; clean pixels still match themselves
    assert m.count > 0 and np.all(m.xy1 == m.xy2)


@pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='triton is not installed')
def test_triton_kernel_in_interpreter_mode():
    """The fused Triton kernel (CUDA fast path) run by Triton's CPU interpreter equals the reference."""
    code = textwrap.dedent('''
        import os
        os.environ['TRITON_INTERPRET'] = '1'
        import numpy as np, torch
        from realm_ros.geometry.matching import fast_reciprocal_nn, reference_reciprocal_nn
        g = torch.Generator().manual_seed(0)
        base = torch.randn(1, 24, 8, 11, generator=g)
        d1 = torch.nn.functional.interpolate(base, size=(40, 56), mode='bilinear')[0].permute(1, 2, 0)
        d1 = d1 + 0.3 * torch.randn(40, 56, 24, generator=g); d1 = d1 / d1.norm(dim=-1, keepdim=True)
        d2 = 0.5 * torch.roll(d1, (2, 3), (0, 1)) + 0.5 * torch.randn(40, 56, 24, generator=g)
        d2 = d2 / d2.norm(dim=-1, keepdim=True)
        ref = reference_reciprocal_nn(d1, d2, subsample=4)
        fast = fast_reciprocal_nn(d1, d2, subsample=4, backend='triton', compute_dtype=torch.float32)
        assert ref.count > 10, ref.count
        assert np.array_equal(ref.xy1, fast.xy1) and np.array_equal(ref.xy2, fast.xy2)
        print('OK', ref.count)
    ''')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith('OK'), proc.stdout + proc.stderr


@pytest.mark.cuda
def test_cuda_backends_agree_with_reference():
    d1, d2 = _smooth_pair(224, 224, seed=4)
    ref = reference_reciprocal_nn(d1, d2, device='cuda')
    for backend in ('torch', 'auto'):
        fast = fast_reciprocal_nn(d1.cuda(), d2.cuda(), backend=backend, compute_dtype=torch.float32)
        assert np.array_equal(fast.xy1, ref.xy1) and np.array_equal(fast.xy2, ref.xy2), backend
    half = fast_reciprocal_nn(d1.cuda(), d2.cuda())
    common = len(set(map(tuple, np.hstack([half.xy1, half.xy2]))) & set(map(tuple, np.hstack([ref.xy1, ref.xy2]))))
    assert common >= 0.95 * ref.count


# ---------------------------------------------------------------------------------------------------------------
# CPU (numba) backend: fused dot-product arg-max kernel and the iteration around it

_cpu = pytest.importorskip('realm_ros.geometry._matching_cpu')
needs_numba = pytest.mark.skipif(not _cpu.HAVE_NUMBA, reason='numba is not installed')


@needs_numba
@pytest.mark.parametrize('n, p, d, threads', [(1, 300, 24, 1), (5, 5000, 24, 2), (13, 4097, 10, 1), (64, 2048, 8, 3)])
def test_kernel_argmax_matches_float64_search(monkeypatch, n, p, d, threads):
    """Unpadded shapes (rows not a multiple of 4, dims not a multiple of 8, columns not a multiple of the chunk)."""
    monkeypatch.setattr(_cpu, 'CHUNK', 1024)                  # several chunks per search
    g = np.random.default_rng(n + p)
    q = g.standard_normal((n, d)).astype(np.float32)
    db = g.standard_normal((p, d)).astype(np.float32)
    got = _cpu.nn_search(_cpu.pad_dims(q), np.ascontiguousarray(_cpu.pad_dims(db).T), threads)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert np.array_equal(got, _brute_nn(q, db))


@needs_numba
def test_kernel_ties_pick_lowest_index_across_lanes_and_chunks(monkeypatch):
    monkeypatch.setattr(_cpu, 'CHUNK', 256)
    g = np.random.default_rng(1)
    d = 24
    db = g.standard_normal((1500, d)).astype(np.float32) * 0.01       # all far below the planted copies
    q = g.standard_normal((6, d)).astype(np.float32)
    plant = {0: [900, 37, 1400], 1: [256, 512], 2: [5, 6, 7], 3: [1499, 1280], 4: [300, 44], 5: [0, 255]}
    for row, cols in plant.items():
        db[cols] = q[row]                                           # identical columns: identical similarities
    got = _cpu.nn_search(q, np.ascontiguousarray(db.T), 2)
    assert got.tolist() == [min(plant[r]) for r in range(6)]


def test_official_nn_shapes_and_ties():
    """Small-integer descriptors: every dot product is exact in float32 whatever the BLAS kernel, so ties are real."""
    g = torch.Generator().manual_seed(3)
    db = torch.randint(-3, 4, (50, 24), generator=g).float()
    q = db[[7, 40, 3]].clone()
    db[45] = db[7]                                                   # tie in a later block: the first one wins
    db[2] = db[40]                                                   # tie in an earlier block: the earlier one wins
    expected = torch.max(q @ db.T, dim=1).indices.tolist()
    assert expected[:2] == [7, 2]
    for bs in (8192, 7, 1):                                          # one product; tiled; one column per tile
        assert _cpu.official_nn(q, db, bs).tolist() == expected, bs
    assert _cpu.official_nn(q[:0], db, 8).shape == (0,)


@needs_numba
@pytest.mark.parametrize('small', [0, None])
def test_numba_iteration_equals_reference(small):
    """Every half-step through the kernel (small=0) and the default split (few active seeds -> official shapes)."""
    from realm_ros.geometry.matching import _finalize
    h, w = 40, 52
    d1, d2 = _smooth_pair(h, w, seed=9, mix=0.4)
    ref = reference_reciprocal_nn(d1, d2, subsample=2)
    stats = {}
    i1, i2 = _cpu.iterate_numba(d1.reshape(-1, 24), d2.reshape(-1, 24), seed_grid(h, w, 2), 10, 8192, 2, stats,
                                small_queries=small)
    m = _finalize(torch.from_numpy(i1), torch.from_numpy(i2), (h, w), (h, w), 3)
    assert ref.count > 50 and np.array_equal(m.xy1, ref.xy1) and np.array_equal(m.xy2, ref.xy2)
    assert stats['kernel_queries'] > 0 and stats['half_steps'] >= 4
    if small == 0:
        assert stats['official_queries'] == 0


@needs_numba
def test_numba_is_the_cpu_default_and_backends_agree():
    d1, d2 = _smooth_pair(48, 64, seed=12, mix=0.45)
    out = {b: fast_reciprocal_nn(d1, d2, subsample=2, backend=b) for b in ('auto', 'numba', 'torch')}
    out['threads'] = fast_reciprocal_nn(d1, d2, subsample=2, backend='numba', threads=2)
    for name, m in out.items():
        assert np.array_equal(m.xy1, out['torch'].xy1) and np.array_equal(m.xy2, out['torch'].xy2), name
    assert out['torch'].count > 50
    with pytest.raises(RuntimeError, match='backend="numba" needs'):
        fast_reciprocal_nn(d1, d2, backend='numba', compute_dtype=torch.float16)
    with pytest.raises(ValueError, match='threads'):
        fast_reciprocal_nn(d1, d2, threads=0)
    with pytest.raises(ValueError, match='block_size'):
        fast_reciprocal_nn(d1, d2, block_size=0)
    with pytest.raises(ValueError, match="backend must be"):
        fast_reciprocal_nn(d1, d2, backend='cuda')


@needs_numba
def test_warm_up_compiles_the_kernel():
    from realm_ros.geometry.matching import warm_up_matching
    warm_up_matching('cpu', dim=10)
    assert len(_cpu._kernel.signatures) >= 1


@needs_numba
def test_channel_first_and_row_major_maps_give_the_same_matches():
    """(H, W, D) views of (D, H, W) storage (as a permuted head output) take the no-copy database layout."""
    d1, d2 = _smooth_pair(36, 44, seed=21, mix=0.45)
    cf1 = d1.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    cf2 = d2.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    assert not cf1.is_contiguous() and cf1.reshape(-1, 24).t().is_contiguous()
    ref = reference_reciprocal_nn(d1.contiguous(), d2.contiguous(), subsample=2)
    grad1 = d1.clone().requires_grad_(True)                          # e.g. a head output outside no_grad
    for a, b in ((d1.contiguous(), d2.contiguous()), (cf1, cf2), (cf1, d2.contiguous()), (grad1, d2)):
        m = fast_reciprocal_nn(a, b, subsample=2)
        assert np.array_equal(m.xy1, ref.xy1) and np.array_equal(m.xy2, ref.xy2)
    assert ref.count > 50
