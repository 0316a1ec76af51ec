"""The live simulator's replay source and clock bookkeeping (ROS-free): progressive sequence, worker, lateness."""
import threading
import time

import numpy as np
import pytest

from realm_ros.events.codecs import Evt3Decoder
from realm_ros.sim.live import (LatenessMonitor, ProgressiveSequence, SimWorker, round_period_us,
                                start_sequence)
from realm_ros.sim.packets import EVT3_TIME_HIGH_US, EventPacketizer
from realm_ros.sim.params import sim_config_from_values
from realm_ros.sim.sequence import SimSequence, cache_path

CFG = sim_config_from_values({'width': 48, 'height': 32, 'duration_s': 0.2, 'seed': 2})


@pytest.fixture(scope='module')
def seq():
    return SimSequence.simulate(CFG)


def test_lateness_counts_only_lags_beyond_one_packet_period():
    m = LatenessMonitor(tolerance_s=0.001)
    for lag in (0.0, 0.0009, 0.001, 0.0011, 0.05, 0.0002):
        m.record(lag)
    assert (m.published, m.late) == (6, 2) and m.max_lag_s == pytest.approx(0.05)
    period = m.take_period()
    assert period == {'published': 6, 'late': 2, 'max_lag_s': pytest.approx(0.05)}
    assert m.record(0.003) is True and m.take_period() == {'published': 1, 'late': 1, 'max_lag_s': 0.003}
    assert (m.late, m.max_lag_s) == (3, pytest.approx(0.05))
    with pytest.raises(ValueError, match='tolerance_s'):
        LatenessMonitor(0.0)


def test_round_period_is_whole_time_high_units():
    assert round_period_us(1) == EVT3_TIME_HIGH_US
    assert round_period_us(4096_000) == 4096
    assert round_period_us(4097_000) == 8192


def test_whole_pass_is_the_packetizer_stream(seq):
    prog = ProgressiveSequence.from_sequence(seq, 1000, seed=2)
    ref = EventPacketizer(1000, 0, seed=2)
    want = [p for ev, f in zip(seq.events, seq.frames) for p in ref.push(ev, f.t_ns)] + ref.flush()
    got = [p for ps in prog.packets for p in ps] + prog.tail
    assert [p.payload for p in got] == [p.payload for p in want]
    assert sum(p.num_events for p in got) == seq.num_events > 1000
    plan = prog.plan(0.05, whole=True, should_stop=lambda: False)
    assert plan.complete and plan.num_frames == len(seq.frames) and plan.end_packets is prog.tail
    assert plan.period_us % EVT3_TIME_HIGH_US == 0 and plan.period_us * 1000 >= seq.period_ns


def test_prefix_pass_carries_every_event_up_to_its_last_frame(seq):
    prog = ProgressiveSequence(CFG, 1000, seed=2)
    prog.set_meta(seq.event_camera, seq.rgb_camera, seq.T_event_rgb, len(seq.frames))
    n = 4
    for ev, f in zip(seq.events[:n], seq.frames[:n]):
        prog.add(ev, f)
    plan = prog.plan(0.05, whole=False, should_stop=lambda: False)
    assert not plan.complete and plan.num_frames == n
    pkts = [p for ps in prog.packets[:n] for p in ps] + plan.end_packets
    dec = Evt3Decoder(CFG.width, CFG.height)
    t = np.concatenate([dec.decode(p.payload).events.t for p in pkts]) // 1000
    assert dec.num_errors == 0
    want = np.concatenate([e.t for e in seq.events[:n]]) // 1000 + 5_000_000
    np.testing.assert_array_equal(np.sort(t % (1 << 24)), np.sort(want % (1 << 24)))
    assert plan.period_us * 1000 >= seq.frames[n - 1].t_ns
    # the whole-sequence plan is not ready: asking for it waits until told to stop
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    assert prog.plan(0.05, whole=True, should_stop=stop.is_set) is None
    assert 0.15 < time.monotonic() - t0 < 2.0


def test_worker_streams_the_same_sequence_and_caches_it(seq, tmp_path):
    prog, worker = start_sequence(CFG, 1000, 2, str(tmp_path), use_cache=True)
    assert worker is not None
    try:
        plan = prog.plan(0.05, whole=True, should_stop=lambda: False)
    finally:
        worker.stop()
    assert plan is not None and prog.error is None and worker.saved == str(cache_path(CFG, tmp_path))
    assert len(prog.frames) == len(seq.frames) == prog.num_frames_total
    np.testing.assert_array_equal(prog.frames[-1].rgb, seq.frames[-1].rgb)
    assert prog.num_events == seq.num_events
    # second start: from the cache, complete at once, no worker
    prog2, worker2 = start_sequence(CFG, 1000, 2, str(tmp_path), use_cache=True)
    assert worker2 is None and prog2.complete
    assert [p.payload for p in prog2.tail] == [p.payload for p in prog.tail]


def test_worker_stops_promptly_mid_simulation(tmp_path):
    big = sim_config_from_values({'width': 160, 'height': 120, 'duration_s': 5.0})
    prog = ProgressiveSequence(big, 1000)
    worker = SimWorker(prog, tmp_path / 'x.npz')
    worker.start()
    deadline = time.monotonic() + 60
    while not prog.frames and time.monotonic() < deadline:
        time.sleep(0.05)
    assert prog.frames, 'the worker produced nothing'
    t0 = time.monotonic()
    worker.stop(0.5)
    assert time.monotonic() - t0 < 1.5 and worker.proc.poll() is not None
    assert not (tmp_path / 'x.npz').exists() and not prog.complete
