"""The live replay schedule without DDS: passes, continuing stamps / seq / sensor time, lateness, stop."""
import logging
import threading

import numpy as np
import pytest

from realm_ros.events.codecs import Evt3Decoder
from realm_ros.sim.live import ProgressiveSequence
from realm_ros.sim.packets import EVT3_TIME_HIGH_US, shift_evt3_payload
from realm_ros.sim.params import sim_config_from_values
from realm_ros.sim.replay import Replayer
from realm_ros.sim.sequence import SimSequence

CFG = sim_config_from_values({'width': 40, 'height': 32, 'duration_s': 0.2, 'seed': 4})
START_ROS = 1_800_000_000_000_000_000


class FakeClock:
    """Wall clock that only moves when the replayer sleeps, or when the sink takes time to publish."""

    def __init__(self):
        self.t = 100.0

    def wall(self):
        return self.t

    def sleep(self, dt):
        self.t += max(dt, 0.0)


class Sink:
    def __init__(self, clock, packet_cost_s=0.0, stop_after=None, stop=None):
        self.clock, self.cost, self.stop_after, self.stop = clock, packet_cost_s, stop_after, stop
        self.packets, self.frames, self.prepared, self.start = [], [], [], None

    def prepare(self, seq, plan):
        self.prepared.append(plan.num_frames)

    def started(self, t):
        self.start = t

    def packet(self, key, pkt, stamp_ns, seq_no, shift_us):
        self.packets.append((stamp_ns, seq_no, shift_us, shift_evt3_payload(pkt.payload, shift_us), self.clock.t))
        self.clock.t += self.cost
        if self.stop_after is not None and len(self.packets) >= self.stop_after:
            self.stop.set()
        return len(pkt.payload)

    def frame(self, index, t_ros_ns):
        self.frames.append((index, t_ros_ns, self.clock.t))


@pytest.fixture(scope='module')
def seq():
    return SimSequence.simulate(CFG)


def _replayer(prog, sink, clock, **kw):
    return Replayer(prog, sink, now_ros_ns=lambda: START_ROS, log=logging.getLogger('test'), wall=clock.wall,
                    sleep=clock.sleep, **kw)


def test_looped_passes_continue_stamps_seq_and_sensor_time(seq):
    prog = ProgressiveSequence.from_sequence(seq, 1000, seed=4)
    clock = FakeClock()
    r = _replayer(prog, Sink(clock), clock, max_runtime_s=0.55)
    r.run()
    sink = r.sink
    assert sink.start == START_ROS and r.stats['loops'] >= 2 and r.stats['prefix_passes'] == 0
    stamps = np.array([p[0] for p in sink.packets])
    assert [p[1] for p in sink.packets] == list(range(len(sink.packets)))      # seq 0, 1, 2, ...
    assert np.all(np.diff(stamps) > 0)
    shifts = sorted({p[2] for p in sink.packets})
    assert shifts[0] == 0 and all(s % EVT3_TIME_HIGH_US == 0 for s in shifts) and len(shifts) >= 3
    # decoded sensor time keeps increasing across pass seams, and stamp - sensor time is one constant
    dec = Evt3Decoder(CFG.width, CFG.height)
    offsets, last = set(), -1
    for stamp, _, _, payload, _ in sink.packets:
        t = dec.decode(payload).events.t
        assert t[0] >= last
        last = t[-1]
        offsets.add(stamp - int(t[0]))
    assert len(offsets) == 1 and dec.num_errors == 0
    # frames: all of the first pass, then frame 0 skipped (it is the previous pass's end)
    idx = [f[0] for f in sink.frames]
    n = len(seq.frames)
    assert idx[:n] == list(range(n)) and idx[n:2 * n - 1] == list(range(1, n))
    # everything published exactly at its due time: nothing late
    assert r.lateness.late == 0 and r.lateness.published == len(sink.packets) + len(sink.frames)
    for stamp_or_t, wall in [(f[1], f[2]) for f in sink.frames]:
        assert wall == pytest.approx(100.0 + (stamp_or_t - START_ROS) * 1e-9, abs=1e-6)


def test_slow_publishing_is_counted_late(seq):
    prog = ProgressiveSequence.from_sequence(seq, 1000, seed=4)
    clock = FakeClock()
    # 3 ms per packet at 1 packet per ms: the replay falls behind by more than one packet period
    r = _replayer(prog, Sink(clock, packet_cost_s=0.003), clock, loop=False)
    r.run()
    assert r.lateness.late > 0.5 * r.lateness.published and r.stats['late_publishes'] == r.lateness.late
    assert r.lateness.max_lag_s > 0.1
    figures = r.period_figures(0.01, 0.02)
    assert figures['late_in_period'] == r.lateness.late and figures['late_tolerance_ms'] == 1.0
    assert figures['packets'] == len(r.sink.packets) and figures['mean_packet_bytes'] > 0
    assert figures['process_cpu_ms_per_sensor_s'] == pytest.approx(20 / r.sensor_s, rel=1e-3)
    # at rate 2 the tolerance is half a millisecond of wall time
    assert _replayer(prog, Sink(clock), clock, rate=2.0).lateness.tolerance_s == pytest.approx(0.0005)


def test_prefix_passes_until_the_sequence_is_complete(seq):
    prog = ProgressiveSequence(CFG, 1000, seed=4)
    prog.set_meta(seq.event_camera, seq.rgb_camera, seq.T_event_rgb, len(seq.frames))
    for ev, f in zip(seq.events[:4], seq.frames[:4]):
        prog.add(ev, f)
    clock = FakeClock()
    stop = threading.Event()
    sink = Sink(clock)
    r = _replayer(prog, sink, clock, first_segment_s=0.09, stop=stop)
    original = sink.prepare

    def prepare(seq_, plan):             # the producer finishes while the second prefix pass is prepared
        original(seq_, plan)
        if len(sink.prepared) == 2:
            for ev, f in zip(seq.events[4:], seq.frames[4:]):
                prog.add(ev, f)
            prog.finish()
        if len(sink.prepared) == 4:
            stop.set()
    sink.prepare = prepare
    r.run()
    n = len(seq.frames)
    assert sink.prepared == [4, 4, n, n]          # two prefix passes, one whole pass, stopped in the next
    assert (r.stats['prefix_passes'], r.stats['loops']) == (2, 1)
    prefix_us = -(-seq.frames[3].t_ns // 1000 // EVT3_TIME_HIGH_US) * EVT3_TIME_HIGH_US
    assert sorted({p[2] for p in sink.packets}) == [0, prefix_us, 2 * prefix_us]
    # a prefix pass carries every event up to its last frame (the tail of the last, partial packet window)
    n_prefix_events = sum(len(e) for e in seq.events[:4])
    dec = Evt3Decoder(CFG.width, CFG.height)
    assert sum(len(dec.decode(p[3]).events) for p in sink.packets if p[2] == 0) == n_prefix_events
    stamps = [p[0] for p in sink.packets]
    assert stamps == sorted(stamps) and [p[1] for p in sink.packets] == list(range(len(sink.packets)))


def test_stop_ends_the_replay_within_one_packet(seq):
    prog = ProgressiveSequence.from_sequence(seq, 1000, seed=4)
    clock = FakeClock()
    stop = threading.Event()
    r = _replayer(prog, Sink(clock, stop_after=10, stop=stop), clock, stop=stop)
    r.run()
    assert len(r.sink.packets) == 10
    with pytest.raises(ValueError, match='rate'):
        _replayer(prog, Sink(clock), clock, rate=0.0)
