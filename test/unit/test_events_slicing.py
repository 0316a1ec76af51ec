"""Ring buffer, fixed-count / fixed-time slicers and window_ending_at across packet boundaries."""
import numpy as np
import pytest

from realm_testing.events import te1_decoded
from realm_ros.events import (EventArray, EventRingBuffer, FixedCountSlicer, FixedTimeSlicer, window_ending_at)


def chunks_of(ev, sizes):
    out, i = [], 0
    for s in sizes:
        out.append(ev.slice(i, i + s))
        i += s
    out.append(ev.slice(i, len(ev)))
    return out


def synthetic(n, seed=0, step=1000):
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(0, 2 * step, n)).astype(np.int64)
    return EventArray.from_arrays(rng.integers(0, 640, n), rng.integers(0, 480, n), t, rng.integers(0, 2, n))


def test_ring_buffer_wraps_and_overwrites_oldest():
    ev = synthetic(2500)
    rb = EventRingBuffer(1000)
    for c in chunks_of(ev, [300] * 8):
        rb.append(c)
    assert len(rb) == 1000 and rb.overwritten == 1500 and rb.total_appended == 2500
    held = rb.all()
    np.testing.assert_array_equal(held.t, ev.t[-1000:])
    np.testing.assert_array_equal(held.x, ev.x[-1000:])
    np.testing.assert_array_equal(rb.latest(10).t, ev.t[-10:])
    assert rb.t_first == ev.t[-1000] and rb.t_last == ev.t[-1]
    # one append larger than the capacity keeps its newest events
    rb.append(synthetic(1500, seed=1).shifted(int(ev.t[-1]) + 1))
    assert len(rb) == 1000 and rb.overwritten == 1500 + 1000 + 500


def test_ring_buffer_search_window_and_drop():
    ev = synthetic(3000, seed=2)
    rb = EventRingBuffer(1200)
    for c in chunks_of(ev, [700] * 4):
        rb.append(c)
    held = ev.slice(len(ev) - 1200, len(ev))
    for t_end in (held.t[0], held.t[100], held.t[-1], held.t[-1] + 1, held.t[600] + 1):
        for kw in ({'count': 500}, {'duration_ns': 200_000}, {'count': 50, 'duration_ns': 10 ** 9},
                   {'t_start_min_ns': int(held.t[300])}, {}):
            got = rb.window_ending_at(int(t_end), **kw)
            want = window_ending_at(held, int(t_end), **kw)
            np.testing.assert_array_equal(got.t, want.t)
            np.testing.assert_array_equal(got.y, want.y)
    k = rb.drop_before(int(held.t[500]))
    assert k == int(np.searchsorted(held.t, held.t[500])) and rb.t_first == held.t[500]
    before = rb.all()
    assert rb.drop_oldest(100) == 100 and len(rb) == len(before) - 100
    np.testing.assert_array_equal(rb.all().t, before.t[100:])
    np.testing.assert_array_equal(rb.all().x, before.x[100:])
    assert rb.drop_oldest(-5) == 0 and rb.drop_oldest(10 ** 6) == len(before) - 100 and len(rb) == 0
    rb.append(ev.slice(0, 10))                    # still usable after being emptied (wrapped start)
    np.testing.assert_array_equal(rb.all().t, ev.t[:10])


def test_window_ending_at_limits():
    ev = EventArray.from_arrays(np.arange(10), np.zeros(10), np.arange(10) * 100, np.ones(10))
    assert window_ending_at(ev, 500).t.tolist() == [0, 100, 200, 300, 400]  # strictly before t_end
    assert window_ending_at(ev, 500, count=2).t.tolist() == [300, 400]
    assert window_ending_at(ev, 500, duration_ns=150).t.tolist() == [400]
    assert window_ending_at(ev, 500, count=4, t_start_min_ns=250).t.tolist() == [300, 400]
    assert window_ending_at(ev, 500, count=3, duration_ns=1000).t.tolist() == [200, 300, 400]
    assert len(window_ending_at(ev, -1, count=3)) == 0
    with pytest.raises(ValueError, match='count'):
        window_ending_at(ev, 500, count=-1)


def test_fixed_count_slicer_across_packets_on_real_data():
    ev, _ = te1_decoded()
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 5000, 200).tolist()
    sl = FixedCountSlicer(50_000)
    wins = [w for c in chunks_of(ev, sizes) for w in sl.push(c)]
    assert len(wins) == len(ev) // 50_000
    for k, w in enumerate(wins):
        assert len(w) == 50_000 and w.index == k
        np.testing.assert_array_equal(w.events.t, ev.t[k * 50_000:(k + 1) * 50_000])
        assert w.t_start_ns == w.events.t[0] and w.t_end_ns == w.events.t[-1] + 1
    assert sl.pending == len(ev) % 50_000
    assert FixedCountSlicer().n == 150_000


def test_fixed_count_slicer_stride_and_latest_only():
    ev = synthetic(1000)
    sl = FixedCountSlicer(300, stride=100)
    wins = sl.push(ev)
    assert [int(w.events.t[0]) for w in wins] == [int(ev.t[i]) for i in range(0, 701, 100)]
    latest = FixedCountSlicer(100, latest_only=True)
    wins = latest.push(ev.slice(0, 450))
    assert len(wins) == 1 and wins[0].events.t[0] == ev.t[300] and latest.skipped == 3
    assert latest.push(ev.slice(450, 500))[0].events.t[0] == ev.t[400]


def test_fixed_time_slicer_windows_are_complete_and_exact():
    ev, _ = te1_decoded()
    sl = FixedTimeSlicer()  # 33 ms
    assert sl.duration == 33_000_000
    rng = np.random.default_rng(1)
    wins = [w for c in chunks_of(ev, rng.integers(1, 3000, 300).tolist()) for w in sl.push(c)]
    t0 = int(ev.t[0])
    assert len(wins) == (int(ev.t[-1]) - t0) // 33_000_000
    for k, w in enumerate(wins):
        s = t0 + k * 33_000_000
        assert (w.t_start_ns, w.t_end_ns) == (s, s + 33_000_000)
        np.testing.assert_array_equal(w.events.t, ev.time_range(s, s + 33_000_000).t)
    tail = sl.flush()
    assert len(tail) == 1 and tail[0].events.t[-1] == ev.t[-1]


def test_fixed_time_slicer_empty_windows_and_long_gaps():
    t = np.array([0, 10, 25, 95, 10_000_000], np.int64)
    ev = EventArray.from_arrays(np.zeros(5), np.zeros(5), t, np.ones(5))
    sl = FixedTimeSlicer(duration_ns=20, max_empty=2)
    wins = sl.push(ev)
    counts = [len(w) for w in wins]
    assert counts[:5] == [2, 1, 0, 0, 1]  # [0,20) [20,40) two empty windows, then [80,100)
    assert sl.skipped > 400_000  # the 10 ms gap is jumped over, not emitted as 500k empty windows
    assert all(w.t_end_ns - w.t_start_ns == 20 for w in wins)
    overl = FixedTimeSlicer(duration_ns=40, stride_ns=20).push(ev.slice(0, 4))
    assert [len(w) for w in overl] == [3, 1, 0]  # [0,40) [20,60) [40,80); [60,100) not complete yet
