"""WindowScheduler: newest-window policy, drop counting, memory bounds, time windows and empty windows."""
import numpy as np
import pytest

from realm_ros.events.types import EventArray
from realm_ros.pipeline.windows import WindowScheduler


def packet(t0_ns, n, dt_ns=1000, seed=0):
    rng = np.random.default_rng(seed)
    t = t0_ns + np.arange(n, dtype=np.int64) * dt_ns
    return EventArray.from_arrays(rng.integers(0, 64, n), rng.integers(0, 48, n), t, rng.integers(0, 2, n))


def feed(s, n_packets, per_packet, t0=10**9, dt=1000, recv0=0):
    t = t0
    for i in range(n_packets):
        s.push(packet(t, per_packet, dt, seed=i), recv_monotonic_ns=recv0 + i)
        t += per_packet * dt
    return t


def test_count_window_holds_the_newest_count_events():
    s = WindowScheduler('count', count=500, capacity_events=10_000)
    assert s.next_window() is None
    s.push(packet(0, 300))
    assert s.next_window() is None                       # not enough events yet
    s.push(packet(300_000, 300, seed=1), recv_monotonic_ns=42)
    w = s.next_window()
    assert w is not None and len(w.events) == 500 and w.skipped == 0 and not w.empty
    assert w.t_end_ns == 599_000 and int(w.events.t[0]) == 100_000          # the last 500 of 600 events
    assert w.recv_monotonic_ns == 42
    assert s.next_window() is None                       # consumed: needs 500 new events


def test_count_windows_that_completed_while_busy_are_dropped_and_counted():
    s = WindowScheduler('count', count=1000, capacity_events=100_000)
    end = feed(s, n_packets=35, per_packet=100)           # 3500 events = 3 complete windows
    w = s.next_window()
    assert w.skipped == 2 and len(w.events) == 1000
    assert w.t_end_ns == end - 1000                     # newest event
    assert np.all(np.diff(w.events.t) > 0)


def test_count_mode_buffer_is_bounded_under_any_input_rate():
    s = WindowScheduler('count', count=2000, capacity_events=50_000)
    feed(s, n_packets=2000, per_packet=500)              # 1M events, nobody consuming
    assert s.buffered_events == 2000                     # only what the next window can need
    w = s.next_window()
    assert len(w.events) == 2000 and w.skipped == 1_000_000 // 2000 - 1


def test_time_windows_tile_the_time_axis_and_drop_stale_ones():
    d = 10_000_000                                        # 10 ms
    s = WindowScheduler('time', duration_ns=d, min_events=1, capacity_events=1_000_000)
    t0 = 5 * 10**9
    s.push(packet(t0, 100, dt_ns=100_000))                # 100 events over 10 ms: [t0, t0 + 9.9 ms]
    assert s.next_window() is None                        # window [t0, t0 + 10 ms) not complete yet
    s.push(packet(t0 + 10_000_000, 100, dt_ns=100_000, seed=1))
    w = s.next_window()
    assert w is not None and w.skipped == 0
    assert int(w.events.t.min()) == t0 and int(w.events.t.max()) < t0 + d
    assert len(w.events) == 100 and w.t_end_ns == t0 + 9_900_000
    # jump ahead by 5 windows worth of events: only the newest complete window is returned
    s.push(packet(t0 + 20_000_000, 500, dt_ns=100_000, seed=2))
    w = s.next_window()
    assert w.skipped == 4
    assert int(w.events.t.min()) == t0 + 5 * d and int(w.events.t.max()) < t0 + 6 * d
    assert len(w.events) == 100


def test_time_window_without_events_is_empty_and_stamped_at_its_end():
    d = 10_000_000
    s = WindowScheduler('time', duration_ns=d, min_events=10, capacity_events=1_000_000)
    t0 = 10**9
    s.push(packet(t0, 50, dt_ns=100_000))                 # 5 ms of events
    # the sensor sees nothing for 25 ms: packets without events still advance the stream time
    s.push(EventArray.empty(), latest_time_ns=t0 + 25_000_000)
    w1 = s.next_window()
    assert w1.skipped == 1 and w1.empty and len(w1.events) == 0
    assert w1.t_end_ns == t0 + 2 * d - 1


def test_time_mode_memory_is_bounded():
    s = WindowScheduler('time', duration_ns=1_000_000, capacity_events=10**7)
    feed(s, n_packets=3000, per_packet=200, dt=1000)      # 600 ms of events, nobody consuming
    # only the newest complete window (1 ms = 1000 events) and the incomplete one after it stay
    assert s.buffered_events <= 2 * 1000 + 200
    assert s.evicted_events == 0                          # released, not overwritten


def test_hard_capacity_overwrites_the_oldest_events():
    s = WindowScheduler('time', duration_ns=10**12, capacity_events=5000)      # windows longer than the buffer
    feed(s, n_packets=100, per_packet=200)
    assert s.buffered_events == 5000 and s.evicted_events == 20_000 - 5000


def test_reset_and_reconfigure():
    s = WindowScheduler('count', count=100, capacity_events=10_000)
    feed(s, 5, 100)
    s.reset()
    assert s.buffered_events == 0 and s.next_window() is None and s.latest_time_ns is None
    feed(s, 2, 100)
    s.configure('count', count=150)
    assert s.next_window() is None                        # the rule change restarts the count
    feed(s, 2, 100, t0=2 * 10**9)
    assert len(s.next_window().events) == 150
    with pytest.raises(ValueError, match='window mode'):
        s.configure('frames')
    with pytest.raises(ValueError, match='capacity'):
        s.configure('count', count=20_000)


def test_out_of_order_events_are_dropped_to_keep_the_buffer_sorted():
    s = WindowScheduler('count', count=150, capacity_events=10_000)
    s.push(packet(1_000_000, 100))                        # t = 1.000 .. 1.099 ms
    s.push(packet(1_050_000, 100, seed=1))                # half of it is older than the newest buffered event
    assert s.out_of_order_events == 49 and s.buffered_events == 150
    w = s.next_window()
    assert len(w.events) == 150 and (w.events.t[1:] >= w.events.t[:-1]).all()


def _state(s):
    held = s._buffer.all()
    return (held.t.tolist(), held.x.tolist(), s._buffer.overwritten, s._buffer.total_appended, s.out_of_order_events,
            s.latest_time_ns, s._first_t, s._latest_recv)


@pytest.mark.parametrize('mode, capacity', [('count', 50_000), ('time', 50_000), ('count', 1_200), ('time', 900)])
def test_push_many_equals_one_push_per_packet(mode, capacity):
    """Whether the packets are joined (each continues the last) or not (an empty one, one reaching back in time, a
    batch larger than the buffer's room), the buffer, counters and times end as with one push per packet."""
    rng = np.random.default_rng(5)
    batches, t = [], 10**9
    for b in range(40):
        batch = []
        for _ in range(int(rng.integers(1, 8))):
            n = int(rng.choice([0, 50, 300, 700]))
            back = int(rng.integers(0, 3000)) if rng.random() < 0.1 else 0         # reaching back in time
            ev = packet(t - back, n, seed=int(rng.integers(0, 1000)))
            t += n * 1000 + 500
            batch.append((ev, t, b * 10 + len(batch)))
        batches.append(batch)
    kw = dict(mode=mode, count=1_000, duration_ns=400_000, capacity_events=capacity)
    one, many = WindowScheduler(**kw), WindowScheduler(**kw)
    for batch in batches:
        for ev, stamp, recv in batch:
            one.push(ev, latest_time_ns=stamp, recv_monotonic_ns=recv)
        many.push_many(batch)
        assert _state(one) == _state(many)
        a, b = one.next_window(), many.next_window()
        assert (a is None) == (b is None)
        if a is not None:
            assert (a.t_end_ns, a.skipped, a.empty, a.events.t.tolist()) == (b.t_end_ns, b.skipped, b.empty,
                                                                             b.events.t.tolist())
    assert one.out_of_order_events > 0
    assert (one._buffer.overwritten > 0) == (capacity < 10_000)       # the small buffers overflowed, as they should
