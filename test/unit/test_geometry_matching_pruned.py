"""The pruned CPU nearest-neighbour search (8 x 8 tiles, Cauchy-Schwarz bound) returns exactly what the full search
returns: same neighbours, ties to the lowest pixel index, any image size / descriptor width."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from realm_ros.geometry import _matching_cpu, _matching_tiles
from realm_ros.geometry.matching import fast_reciprocal_nn, reference_reciprocal_nn

pytestmark = pytest.mark.skipif(not _matching_cpu.HAVE_NUMBA, reason='numba not installed')


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _smooth(h: int, w: int, d: int, seed: int, noise: float = 0.2) -> np.ndarray:
    """Smooth random field + noise, L2-normalised (like decoder descriptor maps: most tiles prunable)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, d, h // 7 + 2, w // 7 + 2, generator=g)
    m = torch.nn.functional.interpolate(base, size=(h, w), mode='bilinear', align_corners=False)[0].permute(1, 2, 0)
    return _unit((m + noise * torch.randn(h, w, d, generator=g)).numpy())


def _full(queries: np.ndarray, db: np.ndarray) -> np.ndarray:
    """The unpruned kernel (the previous CPU search) on the same rows."""
    q = _matching_cpu.pad_dims(np.ascontiguousarray(queries, dtype=np.float32))
    t = np.ascontiguousarray(_matching_cpu.pad_dims(np.ascontiguousarray(db, dtype=np.float32)).T)
    return _matching_cpu.nn_search(q, t, 1)


@pytest.mark.parametrize('h, w, d, noise', [(224, 224, 24, 0.2), (37, 53, 24, 0.05), (16, 70, 10, 0.3),
                                            (5, 9, 30, 0.2), (64, 64, 24, 3.0)])
def test_pruned_search_equals_full_search(h, w, d, noise):
    db = _smooth(h, w, d, seed=h + w, noise=noise).reshape(-1, d)
    q = _smooth(h, w, d, seed=h * w, noise=noise).reshape(-1, d)
    q = q[::max(1, len(q) // 400)]
    tiled = _matching_tiles.tile_database(db, h, w)
    got = _matching_tiles.pruned_nn_search(q, tiled)
    np.testing.assert_array_equal(got, _full(q, db))
    # and the true (float64) neighbour wherever it is unambiguous in float32
    s = q.astype(np.float64) @ db.astype(np.float64).T
    srt = np.sort(s, axis=1)
    clear = srt[:, -1] - srt[:, -2] > 1e-5
    np.testing.assert_array_equal(got[clear], s.argmax(1)[clear])


def test_search_is_the_same_with_any_number_of_queries_per_kernel_call():
    """The search batches QUERIES (2 with AVX-512, 1 on narrower vector units) selected queries per tile kernel call
    and takes the remainder one by one: compiled with 1 and with 3 per call it returns the same as the full search
    (exercises the setting of the machines this one is not)."""
    import types

    import numba
    h, w, d = 48, 56, 24
    db = _smooth(h, w, d, seed=5, noise=0.1).reshape(-1, d)
    q = _smooth(h, w, d, seed=6, noise=0.1).reshape(-1, d)[::3]
    tiled = _matching_tiles.tile_database(db, h, w)
    want = _full(q, db)
    qp = _matching_tiles._pad8(q)
    for nq in (1, 3):
        scope = dict(vars(_matching_tiles), QUERIES=nq, _similarities_n=_matching_tiles._tile_kernel(nq))
        search = numba.njit(types.FunctionType(_matching_tiles._search_py.__code__, scope))
        out = np.empty(len(q), np.int64)
        assert search(qp, tiled.values, tiled.pixel, tiled.centres_t, tiled.radius, tiled.num_pixels,
                      _matching_tiles.MARGIN, 1.0, out)
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize('h, w, d', [(224, 224, 24), (37, 53, 24), (16, 70, 10)])
def test_channel_first_maps_tile_as_their_row_major_copy(h, w, d):
    """A channel-first map (the decoder's layout) is tiled as it lies, without a copy: the same layout, pixel
    indices, centres and radii as from its row-major copy (edge tiles and padded widths included)."""
    m = _smooth(h, w, d, seed=3)
    channel_first = np.ascontiguousarray(m.transpose(2, 0, 1)).transpose(1, 2, 0).reshape(-1, d)
    assert not channel_first.flags.c_contiguous
    a = _matching_tiles.tile_database(channel_first, h, w)
    b = _matching_tiles.tile_database(np.ascontiguousarray(channel_first), h, w)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_pruning_skips_most_tiles_on_smooth_maps_but_not_the_answer():
    """Smooth maps: the bound prunes (the search is much cheaper than the full one), answers still identical."""
    h = w = 96
    db = _smooth(h, w, 24, seed=1, noise=0.05).reshape(-1, 24)
    tiled = _matching_tiles.tile_database(db, h, w)
    q = db[::7]
    qq = q.astype(np.float64)
    best = (qq @ db.astype(np.float64).T).max(1)
    bound = qq @ tiled.centres_t.astype(np.float64) + np.linalg.norm(qq, axis=1)[:, None] * tiled.radius[None]
    assert np.mean(bound >= best[:, None]) < 0.5                           # most tiles are pruned
    assert np.all(bound.max(1) >= best)                                    # never the one holding the maximum
    np.testing.assert_array_equal(_matching_tiles.pruned_nn_search(q, tiled), _full(q, db))


@pytest.mark.parametrize('low_first', [True, False])
def test_exact_ties_across_tiles_pick_the_lowest_pixel_index(low_first):
    """Two pixels in different tiles hold the very descriptor of the query (bit-identical similarities): the lower
    linear index wins whichever tile is visited first (the best-bound tile is visited first)."""
    h, w, d = 32, 32, 24
    db = _smooth(h, w, d, seed=5, noise=0.3).reshape(-1, d).copy()
    q = _unit(np.random.default_rng(0).normal(size=(1, d)))
    lo, hi = 3 + w * 2, 20 + w * 25                        # tiles 0 and 11
    db[lo] = db[hi] = q[0]
    target_tile = hi if low_first else lo                   # make the *other* tile's bound the largest
    ty, tx = divmod(target_tile, w)
    ty, tx = ty // 8 * 8, tx // 8 * 8
    db.reshape(h, w, d)[ty:ty + 8, tx:tx + 8] = q[0]
    db.reshape(h, w, d)[ty, tx] = _unit(-q)[0]              # keep the tile from being a single point
    tiled = _matching_tiles.tile_database(db, h, w)
    got = _matching_tiles.pruned_nn_search(q, tiled)
    want = np.flatnonzero((db == q[0]).all(1)).min()
    assert got[0] == want == _full(q, db)[0]


def test_padding_of_edge_tiles_never_wins():
    """Edge tiles are padded with a copy of their first pixel (same index): no index outside the image appears."""
    h, w, d = 9, 10, 24
    db = _smooth(h, w, d, seed=3).reshape(-1, d)
    tiled = _matching_tiles.tile_database(db, h, w)
    assert tiled.values.shape == (4, 24, 64) and tiled.pixel.max() < h * w
    got = _matching_tiles.pruned_nn_search(db, tiled)
    np.testing.assert_array_equal(got, _full(db, db))


def test_large_and_small_magnitudes_keep_the_bound_valid():
    h, w, d = 40, 40, 24
    base = _smooth(h, w, d, seed=9, noise=0.1).reshape(-1, d)
    for scale in (1e-15, 1e15):
        db = (base * scale).astype(np.float32)
        q = (base[::5] * np.float32(scale)).astype(np.float32)
        tiled = _matching_tiles.tile_database(db, h, w)
        np.testing.assert_array_equal(_matching_tiles.pruned_nn_search(q, tiled), _full(q, db))


def test_bad_inputs_are_named():
    db = _smooth(16, 16, 24, seed=0).reshape(-1, 24)
    with pytest.raises(ValueError, match='height x width'):
        _matching_tiles.tile_database(db, 15, 16)
    tiled = _matching_tiles.tile_database(db, 16, 16)
    with pytest.raises(ValueError, match='queries'):
        _matching_tiles.pruned_nn_search(np.zeros((3, 32), np.float32), tiled)
    with pytest.raises(ValueError, match=r'\(N, D\)'):
        _matching_tiles.tile_database(db.reshape(16, 16, 24), 16, 16)


@pytest.mark.parametrize('threads', [1, 2])
@pytest.mark.parametrize('h1, w1, h2, w2', [(64, 64, 64, 64), (40, 56, 48, 40)])
def test_reciprocal_matches_identical_with_and_without_pruning(h1, w1, h2, w2, threads):
    d1 = torch.from_numpy(_smooth(h1, w1, 24, seed=h1))
    d2 = torch.from_numpy(_smooth(h2, w2, 24, seed=w2 + 1))
    d2[: min(h1, h2), : min(w1, w2)] = torch.from_numpy(_unit(
        0.7 * d1[: min(h1, h2), : min(w1, w2)].numpy() + 0.3 * _smooth(min(h1, h2), min(w1, w2), 24, seed=4)))
    a = fast_reciprocal_nn(d1, d2, subsample=4, threads=threads)
    b = fast_reciprocal_nn(d1, d2, subsample=4, threads=threads, prune=False)
    c = reference_reciprocal_nn(d1, d2, subsample=4)
    assert a.count > 20
    for m in (b, c):
        np.testing.assert_array_equal(a.xy1, m.xy1)
        np.testing.assert_array_equal(a.xy2, m.xy2)
    # every half-step through the pruned kernel (no few-seed official-shape path)
    i1, i2 = _matching_cpu.iterate_numba(d1.reshape(-1, 24), d2.reshape(-1, 24),
                                         np.arange(0, h1 * w1, 5), 10, threads=threads, small_queries=0,
                                         hw1=(h1, w1), hw2=(h2, w2))
    j1, j2 = _matching_cpu.iterate_numba(d1.reshape(-1, 24), d2.reshape(-1, 24),
                                         np.arange(0, h1 * w1, 5), 10, threads=threads, small_queries=0)
    np.testing.assert_array_equal(i1, j1)
    np.testing.assert_array_equal(i2, j2)


def test_rough_maps_and_unprofitable_chunks_fall_back_to_the_full_search(monkeypatch):
    """A noise map is not tiled at all (``prunable`` False); a chunk whose bounds prune too little is searched by
    the full kernel: identical results either way."""
    h = w = 48
    base = torch.randn(1, 24, 3, 3, generator=torch.Generator().manual_seed(2))
    smooth = torch.nn.functional.interpolate(base, size=(h, w), mode='bilinear', align_corners=False)[0]
    smooth = _unit(smooth.permute(1, 2, 0).reshape(-1, 24).numpy())
    noise = _unit(np.random.default_rng(1).normal(size=(h * w, 24)))
    assert _matching_tiles.prunable(smooth, h, w) and not _matching_tiles.prunable(noise, h, w)
    tiled = _matching_tiles.tile_database(smooth, h, w)
    q = noise[::5]
    assert _matching_tiles.pruned_nn_search(q, tiled, max_fraction=0.0) is None
    monkeypatch.setattr(_matching_cpu, 'PRUNE_MAX_FRACTION', 0.0)
    t = np.ascontiguousarray(_matching_cpu.pad_dims(smooth).T)
    for threads in (1, 2):
        got = _matching_cpu._pruned_search(_matching_cpu.pad_dims(q), tiled, threads, lambda: t)
        np.testing.assert_array_equal(got, _full(q, smooth))
    d1, d2 = torch.from_numpy(smooth.reshape(h, w, 24)), torch.from_numpy(noise.reshape(h, w, 24))
    for a, b in ((d1, d2), (d2, d1)):
        m, r = fast_reciprocal_nn(a, b, subsample=4), fast_reciprocal_nn(a, b, subsample=4, prune=False)
        np.testing.assert_array_equal(m.xy1, r.xy1)
        np.testing.assert_array_equal(m.xy2, r.xy2)


def _sequential_fma_chain(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``fma(q[D-1], x[D-1], ... fma(q[1], x[1], q[0] * x[0]))`` in float32, emulated exactly (a float32 product is
    exact in float64, so each step rounds once): the chain of MKL's sgemm for these shapes."""
    s = (q[:, 0].astype(np.float64) * x[:, 0]).astype(np.float32)
    for k in range(1, q.shape[1]):
        s = (q[:, k].astype(np.float64) * x[:, k] + s).astype(np.float32)
    return s


def _tile_kernel(nq: int):
    """The vector tile kernel for ``nq`` queries (a numba intrinsic, callable only from compiled code) behind a
    compiled call."""
    import numba
    kernel = _matching_tiles._tile_kernel(nq)
    return numba.njit(lambda q, sel, j0, values, t, acc, best_v: kernel(q, sel, j0, values, t, acc, best_v))


def test_kernels_compute_the_sequential_fma_chain_bit_for_bit():
    """Every similarity is the sequential FMA chain (not any other contraction LLVM could pick: fusing the first two
    products the other way differs by one ulp in ~6 % of random chains), in the full kernel and in the vector tile
    kernels (every slot of a tile, one to three queries per call, at odd D too), which also agree with their Python
    form."""
    rng = np.random.default_rng(0)
    n, d = 600, 24
    q = rng.normal(size=(n, d)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    want = _sequential_fma_chain(q, x)
    full = np.empty(n, np.float32)
    for i in range(n):
        qq = np.zeros((4, d), np.float32)
        qq[0] = q[i]
        bv, bi = np.full(4, -np.inf, np.float32), np.zeros(4, np.int64)
        _matching_cpu._kernel(qq, np.ascontiguousarray(x[i][:, None]), 1, bv, bi)
        full[i] = bv[0]
    np.testing.assert_array_equal(full, want)
    slots = _matching_tiles.SLOTS
    for nq in (1, 2, 3):
        tile_kernel = _tile_kernel(nq)
        for dims in (24, 8, 13):
            qs = rng.normal(size=(40, dims)).astype(np.float32)
            values = rng.normal(size=(5, dims, slots)).astype(np.float32)
            sel = rng.permutation(40).astype(np.int64)
            best = np.full(40, np.inf, np.float32)
            acc, acc_py = np.empty((nq, slots), np.float32), np.empty((nq, slots), np.float32)
            for j0 in range(0, 40 - nq, 7):
                t = j0 % len(values)
                assert tile_kernel(qs, sel, j0, values, t, acc, best) == 0
                assert _matching_tiles._tile_similarities_py(qs, sel, j0, values, t, acc_py, best) == 0
                for m in range(nq):
                    want = _sequential_fma_chain(np.repeat(qs[sel[j0 + m]][None], slots, 0), values[t].T)
                    np.testing.assert_array_equal(acc[m], want)
                    np.testing.assert_array_equal(acc_py[m], want)


def test_tile_kernel_reports_which_queries_reach_their_running_maximum():
    """Bit m of the kernel's result: a similarity of query m is >= its running maximum (a tie is a hit: it may hold
    a lower pixel index); NaN similarities never hit; a hit folds the tile's first maximum into the query's best."""
    rng = np.random.default_rng(1)
    slots = _matching_tiles.SLOTS
    q = rng.normal(size=(3, 24)).astype(np.float32)
    values = rng.normal(size=(1, 24, slots)).astype(np.float32)
    sel = np.array([2, 0, 1], np.int64)
    acc = np.empty((3, slots), np.float32)
    tile_kernel = _tile_kernel(3)
    tile_kernel(q, sel, 0, values, 0, acc, np.full(3, -np.inf, np.float32))
    top = acc.max(axis=1)                               # per query of sel, in sel order
    for kernel in (tile_kernel, _matching_tiles._tile_similarities_py):
        best = np.empty(3, np.float32)
        best[sel] = top
        assert kernel(q, sel, 0, values, 0, acc, best) == 0b111
        best[sel[1]] = np.nextafter(top[1], np.float32(np.inf))
        assert kernel(q, sel, 0, values, 0, acc, best) == 0b101
        best[sel] = np.nextafter(top, np.float32(np.inf))
        assert kernel(q, sel, 0, values, 0, acc, best) == 0
    nan_values = values.copy()
    nan_values[0, 3, :] = np.nan
    assert tile_kernel(q, sel, 0, nan_values, 0, acc, np.full(3, -np.inf, np.float32)) == 0
    idx = np.arange(slots, dtype=np.int64) + 100
    best, best_i = np.full(3, -np.inf, np.float32), np.full(3, 1 << 40, np.int64)
    hits = tile_kernel(q, sel, 0, values, 0, acc, best)
    _matching_tiles._fold_hits(hits, sel, 0, idx, acc, best, best_i)
    for m in range(3):
        assert best[sel[m]] == top[m] and best_i[sel[m]] == 100 + int(np.argmax(acc[m]))


def test_warm_up_compiles_the_pruned_search():
    """The perception node warms the matcher before the first pose: the tile kernels must be among what it loads."""
    from realm_ros.geometry.matching import warm_up_matching
    warm_up_matching('cpu')
    for fn in (_matching_tiles._search, _matching_tiles._tile, _matching_tiles._sample_tiles):
        assert len(fn.signatures) >= 1
