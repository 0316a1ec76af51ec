"""Voxel grid: docs/formats.md#test-recordings values, docs/formats.md#invariants, backends and devices."""
import numpy as np
import pytest
import torch

from realm_testing.events import te1_decoded
from realm_ros.events import EventArray, voxel_grid

W1 = (7_139_845_000, 50_000_000)
W2 = (8_000_000_000, 100_000_000)


def window(start, dur):
    ev, _ = te1_decoded()
    return ev.time_range(start, start + dur)


def reference_e2vid(ev, bins, h, w):
    """Literal float64 E2VID events_to_voxel_grid (docs/formats.md#voxel-grid) with np.add.at, for comparison."""
    grid = np.zeros((bins, h, w), np.float64)
    if len(ev) == 0:
        return grid
    t = ev.t.astype(np.int64)
    dT = float(t[-1] - t[0]) or 1.0
    ts = (bins - 1) * (t - t[0]).astype(np.float64) / dT
    ti = ts.astype(np.int64)
    dt = ts - ti
    pol = np.where(ev.p > 0, 1.0, -1.0)
    x, y = ev.x.astype(np.int64), ev.y.astype(np.int64)
    left = ti < bins
    np.add.at(grid, (ti[left], y[left], x[left]), (pol * (1 - dt))[left])
    right = ti + 1 < bins
    np.add.at(grid, (ti[right] + 1, y[right], x[right]), (pol * dt)[right])
    return grid


@pytest.mark.parametrize('backend', ['numba', 'torch'])
def test_oracle_window_w1(backend):
    ev = window(*W1)
    assert (len(ev), ev.num_on, ev.num_off, int(ev.t[-1])) == (3787, 1163, 2624, 7_189_824_000)
    g = voxel_grid(ev, 5, 480, 640, normalization='none', backend=backend).double()
    assert g.shape == (5, 480, 640) and g.dtype == torch.float64
    assert float(g.sum()) == pytest.approx(-1461.0, abs=1e-3)
    np.testing.assert_allclose(g.sum((1, 2)).numpy(), [-294.0334, -355.5467, -383.9081, -294.9181, -132.5937],
                               atol=2e-4)
    assert float(g.abs().sum()) == pytest.approx(2339.5067, abs=2e-3)
    assert int((g != 0).sum()) == 5652
    assert (g != 0).sum((1, 2)).tolist() == [891, 1416, 1364, 1317, 664]
    assert float(g.max()) == pytest.approx(1.473619, abs=1e-5)
    assert np.unravel_index(int(g.argmax()), g.shape) == (2, 375, 2)
    assert float(g.min()) == pytest.approx(-1.0, abs=1e-6)
    assert float((g ** 2).sum()) == pytest.approx(1401.9292, abs=2e-3)
    nz = g[g != 0]
    assert float(nz.mean()) == pytest.approx(-0.258493, abs=1e-6)
    assert float(nz.std(correction=0)) == pytest.approx(0.425703, abs=1e-6)
    e = voxel_grid(ev, 5, 480, 640, normalization='e2vid', backend=backend)
    assert float(e.max()) == pytest.approx(4.068828, abs=5e-6) and float(e.min()) == pytest.approx(-1.741843, abs=5e-6)
    d = voxel_grid(ev, 5, 480, 640, backend=backend)  # dsec is the default
    assert float(d.max()) == pytest.approx(4.068468, abs=5e-6) and float(d.min()) == pytest.approx(-1.741689, abs=5e-6)
    assert float(nz.std()) == pytest.approx(0.425740, abs=1e-6)
    tonic = voxel_grid(ev, 5, 480, 640, normalization='none', temporal_scale='bins', backend=backend).double()
    assert float(tonic.sum()) == pytest.approx(-1366.372536, abs=1e-3)


@pytest.mark.parametrize('backend', ['numba', 'torch'])
def test_oracle_window_w2(backend):
    ev = window(*W2)
    assert (len(ev), ev.num_on, ev.num_off) == (29358, 15149, 14209)
    g = voxel_grid(ev, 5, 480, 640, normalization='none', backend=backend).double()
    assert float(g.sum()) == pytest.approx(940.0, abs=1e-2)
    np.testing.assert_allclose(g.sum((1, 2)).numpy(), [323.6802, 180.2487, 306.1045, 364.5176, -234.5509],
                               atol=3e-4)
    assert float(g.abs().sum()) == pytest.approx(24911.0337, abs=1e-2)
    assert int((g != 0).sum()) == 41932
    assert (g != 0).sum((1, 2)).tolist() == [5697, 9672, 10067, 10175, 6321]
    assert float(g.max()) == pytest.approx(4.160650, abs=1e-5)
    assert np.unravel_index(int(g.argmax()), g.shape) == (3, 19, 356)
    assert float(g.min()) == pytest.approx(-2.657879, abs=1e-5)
    assert float((g ** 2).sum()) == pytest.approx(22465.3502, abs=1e-2)
    e = voxel_grid(ev, 5, 480, 640, normalization='e2vid', backend=backend).double()
    assert float(e.max()) == pytest.approx(5.656331, abs=5e-6) and float(e.min()) == pytest.approx(-3.663556, abs=5e-6)
    nz = g[g != 0]
    assert float(nz.mean()) == pytest.approx(0.022417, abs=1e-6)
    assert float(nz.std(correction=0)) == pytest.approx(0.731611, abs=1e-6)
    assert float(nz.std()) == pytest.approx(0.731619, abs=1e-6)


def random_window(n, seed, h=120, w=160, t0=1_700_000_000_123_456_789):
    rng = np.random.default_rng(seed)
    t = t0 + np.sort(rng.integers(0, 33_000_000, n))
    return EventArray.from_arrays(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n))


@pytest.mark.parametrize('backend', ['numba', 'torch'])
def test_invariants_and_reference(backend):
    ev = random_window(20_000, 1)
    g = voxel_grid(ev, 5, 120, 160, normalization='none', backend=backend).double()
    assert float(g.sum()) == pytest.approx(ev.num_on - ev.num_off, abs=1e-3)
    np.testing.assert_allclose(g.numpy(), reference_e2vid(ev, 5, 120, 160), atol=2e-6)
    nnz = int((g != 0).sum())
    e = voxel_grid(ev, 5, 120, 160, normalization='e2vid', backend=backend).double()
    assert abs(float(e.sum())) < 1e-2 and float((e ** 2).sum()) == pytest.approx(nnz, rel=1e-5)
    d = voxel_grid(ev, 5, 120, 160, normalization='dsec', backend=backend).double()
    assert abs(float(d.sum())) < 1e-2 and float((d ** 2).sum()) == pytest.approx(nnz - 1, rel=1e-5)
    assert torch.equal(e != 0, g != 0) and torch.equal(d != 0, g != 0)  # zeros stay zero


def sequential_float32_grid(ev, bins, h, w, t_range=None, scale=None):
    """The scatter as one plain loop in event order: float64 weights rounded to float32, float32 sums."""
    scale = bins - 1 if scale is None else scale
    grid = np.zeros(bins * h * w, np.float32)
    t = ev.t.astype(np.int64)
    t0, t1 = (int(t[0]), int(t[-1])) if t_range is None else t_range
    dT = max(1, t1 - t0)
    for xi, yi, ti, pi in zip(ev.x.tolist(), ev.y.tolist(), t.tolist(), ev.p.tolist()):
        if xi >= w or yi >= h or ti < t0 or ti > t0 + dT:
            continue
        ts = float((ti - t0) * scale) / float(dT)
        b = int(ts)
        if b >= bins:
            continue
        frac = ts - b
        v = 1.0 if pi else -1.0
        cell = b * h * w + yi * w + xi
        grid[cell] += np.float32(v * (1.0 - frac))
        if b + 1 < bins and frac > 0.0:
            grid[cell + h * w] += np.float32(v * frac)
    return grid.reshape(bins, h, w)


@pytest.mark.parametrize('backend', ['numba', 'torch'])
@pytest.mark.parametrize('bins,scale,t_range', [(5, None, None), (5, 'bins', None), (2, None, None), (1, None, None),
                                                 (1, 'bins', None), (3, None, 'inner'), (4, 'bins', 'inner')])
def test_scatter_is_bit_identical_to_a_sequential_loop(bins, scale, t_range, backend):
    """The two-pass chunked scatter (index/weight pass, then adds; last-bin and dropped events add 0) must give
    exactly the grid of the plain loop, across chunk boundaries and with dropped events of every kind; so must the
    torch backend on the CPU (upper weights added first: the sequential order for a time-sorted window)."""
    ev = random_window(9_000, 7, h=20, w=30)      # > 2 chunks of 4096; many events per cell
    x, y = ev.x.copy(), ev.y.copy()
    x[::97] = 30 + np.arange(len(x[::97])) % 7    # x >= W
    y[::89] = 20                                  # y >= H
    ev = EventArray.from_arrays(x, y, ev.t, ev.p)
    tr = None
    if t_range == 'inner':                        # events before and after the window are dropped
        tr = (int(ev.t[1000]), int(ev.t[8000]))
    kw = {} if scale is None else {'temporal_scale': 'bins'}
    got = voxel_grid(ev, bins, 20, 30, normalization='none', t_range=tr, backend=backend, **kw).numpy()
    want = sequential_float32_grid(ev, bins, 20, 30, t_range=tr, scale=bins if scale else None)
    assert np.array_equal(got, want)
    assert float(np.abs(want).sum()) > 0


def test_backends_agree_and_inputs_accepted():
    ev = random_window(5000, 2, h=60, w=80)
    for norm in ('none', 'e2vid', 'dsec'):
        a = voxel_grid(ev, 5, 60, 80, normalization=norm, backend='numba')
        b = voxel_grid(ev, 5, 60, 80, normalization=norm, backend='torch')
        assert torch.equal(a, b), norm   # same weights, same order, same float32 normalisation constants
    as_tuple = voxel_grid((ev.x, ev.y, ev.t, ev.p), bins=5, height=60, width=80)
    as_tensors = voxel_grid(tuple(torch.from_numpy(a.astype(np.int64)) for a in (ev.x, ev.y, ev.t, ev.p)),
                            bins=5, height=60, width=80)
    torch.testing.assert_close(as_tuple, voxel_grid(ev, 5, 60, 80))
    torch.testing.assert_close(as_tensors, as_tuple)


@pytest.mark.parametrize('backend', ['numba', 'torch'])
def test_absolute_epoch_times_give_the_same_grid_as_relative(backend):
    ev = random_window(3000, 3, h=40, w=50)
    rel = ev.shifted(-int(ev.t[0]))
    a = voxel_grid(ev, 5, 40, 50, normalization='none', backend=backend)
    b = voxel_grid(rel, 5, 40, 50, normalization='none', backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize('backend', ['numba', 'torch'])
def test_edge_cases(backend):
    empty = voxel_grid(EventArray.empty(), 5, 4, 6, backend=backend)
    assert empty.shape == (5, 4, 6) and float(empty.abs().sum()) == 0
    same_t = EventArray.from_arrays([1, 2, 2], [0, 3, 3], [7, 7, 7], [1, 1, 0])
    g = voxel_grid(same_t, 3, 4, 6, normalization='none', backend=backend)
    assert float(g[0, 0, 1]) == 1.0 and float(g[0, 3, 2]) == 0.0 and float(g[1:].abs().sum()) == 0
    outside = EventArray.from_arrays([1, 60, 2], [1, 1, 40], [0, 5, 10], [1, 1, 1])
    g = voxel_grid(outside, 2, 4, 6, normalization='none', backend=backend)
    assert float(g.sum()) == 1.0  # x >= W and y >= H ignored (the last event still sets the time scale)
    one = voxel_grid(EventArray.from_arrays([3], [2], [5], [0]), 5, 4, 6, normalization='dsec', backend=backend)
    assert torch.isfinite(one).all() and float(one.abs().sum()) == 0.0  # single nonzero: v - mean = 0
    with pytest.raises(ValueError, match='height and width'):
        voxel_grid(same_t, 5)
    with pytest.raises(ValueError, match='normalization'):
        voxel_grid(same_t, 5, 4, 6, normalization='zscore')


@pytest.mark.parametrize('backend', ['numba', 'torch'])
def test_fixed_time_range(backend):
    ev = EventArray.from_arrays([0, 1, 2, 3], [0, 0, 0, 0], [50, 100, 150, 400], [1, 1, 1, 1])
    g = voxel_grid(ev, 5, 1, 4, normalization='none', t_range=(100, 300), backend=backend)
    # t* = 4 * (t - 100) / 200: event 1 -> bin 0; event 2 -> t* 1 -> bin 1; events 0 and 3 outside
    assert g[:, 0, 0].tolist() == [0.0] * 5 and g[:, 0, 3].tolist() == [0.0] * 5
    assert g[:, 0, 1].tolist() == [1.0, 0, 0, 0, 0] and g[:, 0, 2].tolist() == [0, 1.0, 0, 0, 0]


@pytest.mark.cuda
def test_cuda_matches_cpu():
    ev = window(*W2)
    for norm, atol in (('none', 1e-5), ('e2vid', 1e-4), ('dsec', 1e-4)):
        cpu = voxel_grid(ev, 5, 480, 640, normalization=norm)
        gpu = voxel_grid(ev, 5, 480, 640, normalization=norm, device='cuda')
        assert gpu.device.type == 'cuda'
        torch.testing.assert_close(gpu.cpu(), cpu, atol=atol, rtol=1e-4)
        assert abs(int((gpu != 0).sum()) - int((cpu != 0).sum())) <= 5


def test_out_buffer_is_reused_and_reset():
    a = random_window(4000, 5, h=30, w=40)
    b = random_window(3000, 6, h=30, w=40)
    buf = torch.full((5 * 30 * 40,), 7.0)                 # garbage: must be cleared, not accumulated into
    ga = voxel_grid(a, 5, 30, 40, out=buf)
    assert ga.shape == (5, 30, 40) and ga.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(ga, voxel_grid(a, 5, 30, 40), rtol=0, atol=0)
    gb = voxel_grid(b, 5, 30, 40, normalization='none', out=buf)   # the next window overwrites the buffer
    torch.testing.assert_close(gb, voxel_grid(b, 5, 30, 40, normalization='none'), rtol=0, atol=0)
    for bad, what in ((torch.zeros(5 * 30 * 40 - 1), 'elements'), (torch.zeros(5 * 30 * 40, dtype=torch.float64),
                                                                    'float64'),
                      (torch.zeros(40, 5 * 30).t(), 'not contiguous'), (np.zeros(6000, np.float32), 'ndarray')):
        with pytest.raises(ValueError, match=what):
            voxel_grid(a, 5, 30, 40, out=bad)
    with pytest.raises(ValueError, match='numba'):
        voxel_grid(a, 5, 30, 40, backend='torch', out=buf)
