"""The live replay schedule of ``sim_event_camera`` (ROS-free, unit-tested without DDS).

:class:`Replayer` plays a :class:`~realm_ros.sim.live.ProgressiveSequence` against the wall clock through a
:class:`ReplaySink` (the node's publishers): pass after pass (:meth:`ProgressiveSequence.plan`), each starting a whole
number of 4096 us after the previous one so that the precomputed EVT3 payloads only move their TIME_HIGH words;
packet stamps, ``seq`` and sensor time continue across passes; frame 0 is published only in the first pass (later it
coincides with the previous pass's end). Every packet and frame is published at its due wall time
``start_wall + (t_ros - start_ros) / rate``; one published more than one packet period late is counted by a
:class:`~realm_ros.sim.live.LatenessMonitor`. :meth:`Replayer.period_figures` gives the diagnostics of the last
period (rates, packet size, lateness, CPU per second of sensor time).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol

from .live import LatenessMonitor, PassPlan, ProgressiveSequence
from .packets import PacketData


class ReplaySink(Protocol):
    """What the replayer publishes through (the node implements it with ROS publishers)."""

    def prepare(self, seq: ProgressiveSequence, plan: PassPlan) -> None:
        """Called before a pass starts (build / serialise what it needs, off the clock)."""

    def started(self, start_ros_ns: int) -> None:
        """Publishing starts (e.g. latch the static transform)."""

    def packet(self, key: tuple[int, int] | None, pkt: PacketData, stamp_ns: int, seq_no: int,
               shift_us: int) -> int:
        """Publish one packet; ``key`` (frame index or -1 for the final tail, packet index) identifies it for caching
        (None: a prefix pass's tail, not reused). Returns the bytes published."""

    def frame(self, index: int, t_ros_ns: int) -> None:
        """Publish frame ``index`` with stamp ``t_ros_ns``."""


class Replayer:
    """See module docstring. ``log`` needs ``info(str)``; ``now_ros_ns()`` is the node's clock."""

    def __init__(self, seq: ProgressiveSequence, sink: ReplaySink, *, rate: float = 1.0, loop: bool = True,
                 first_segment_s: float = 0.3, max_runtime_s: float = 0.0, packet_interval_us: int = 1000,
                 now_ros_ns: Callable[[], int], log: Any, stop: threading.Event | None = None,
                 wall: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f'rate must be positive, got {rate}')
        self.seq, self.sink, self.rate, self.loop = seq, sink, float(rate), bool(loop)
        self.first_segment_s, self.max_runtime_s = float(first_segment_s), float(max_runtime_s)
        self.now_ros_ns, self.log, self.wall, self.sleep = now_ros_ns, log, wall, sleep
        self.stop = stop or threading.Event()
        self.lateness = LatenessMonitor(packet_interval_us * 1e-6 / self.rate)
        self.stats = {'packets': 0, 'events': 0, 'bytes': 0, 'frames': 0, 'loops': 0, 'prefix_passes': 0,
                      'late_publishes': 0, 'max_lag_ms': 0.0}
        self.sensor_s = 0.0            # sensor time published so far (s)
        self.start: tuple[int, float] | None = None
        self._seq_no = 0
        self._last: tuple[float, float, float, float, int, int] = (wall(), 0.0, 0.0, 0.0, 0, 0)

    def summary(self) -> dict:
        return dict(self.stats, sensor_s=round(self.sensor_s, 2))

    # ------------------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Publish until stopped, ``max_runtime_s`` is reached, the producer failed, or (``loop`` false) one pass."""
        offset_us, n_pass, announced_complete = 0, 0, False
        last_log = self.wall()
        while not self.stop.is_set():
            plan = self.seq.plan(self.first_segment_s, whole=not self.loop, should_stop=self.stop.is_set)
            if plan is None:
                return
            self.sink.prepare(self.seq, plan)
            if self.start is None:
                self.start = (self.now_ros_ns(), self.wall())
                last_log = self.start[1]
                self.sink.started(self.start[0])
                if plan.complete:
                    self.log.info(f'publishing the {plan.period_us * 1e-6:.2f} s sequence at {self.rate:g}x real '
                                  f'time' + (' in a loop' if self.loop else ' once'))
                else:
                    self.log.info(f'publishing the first {plan.period_us * 1e-6:.2f} s of the loop at {self.rate:g}x '
                                  f'real time, replayed while the rest is simulated (the pose jumps back at the end '
                                  f'of each such pass)')
                announced_complete = plan.complete
            elif plan.complete and not announced_complete:
                announced_complete = True
                self.log.info(f'the whole {plan.period_us * 1e-6:.2f} s loop is simulated; replaying it from now on')
            if not self._pass(plan, n_pass, offset_us):
                return
            offset_us += plan.period_us
            n_pass += 1
            self.stats['loops' if plan.complete else 'prefix_passes'] += 1
            if not self.loop:
                self.log.info(f'sequence finished (loop=false); published {self.summary()}')
                return
            if self.wall() - last_log >= 5.0:
                last_log = self.wall()
                self.log.info(f'published {self.summary()}')

    def _pass(self, plan: PassPlan, n_pass: int, offset_us: int) -> bool:
        assert self.start is not None
        base_ros = self.start[0] + offset_us * 1000
        seq = self.seq
        for i in range(0 if n_pass == 0 else 1, plan.num_frames):
            if not self._packets(seq.packets[i], i, base_ros, offset_us):
                return False
            t_ros = base_ros + seq.frames[i].t_ns
            if not self._wait_until(t_ros):
                return False
            self.sink.frame(i, t_ros)
            self.stats['frames'] += 1
            if self.max_runtime_s > 0 and self.wall() - self.start[1] >= self.max_runtime_s:
                self.log.info(f'max_runtime_s reached; published {self.summary()}')
                return False
        return self._packets(plan.end_packets, -1 if plan.complete else None, base_ros, offset_us)

    def _packets(self, packets: list[PacketData], frame_key: int | None, base_ros: int, shift_us: int) -> bool:
        for j, pkt in enumerate(packets):
            if not self._wait_until(base_ros + pkt.publish_ns):
                return False
            key = (frame_key, j) if frame_key is not None else None
            self.stats['bytes'] += self.sink.packet(key, pkt, base_ros + pkt.stamp_ns, self._seq_no, shift_us)
            self._seq_no += 1
            self.stats['packets'] += 1
            self.stats['events'] += pkt.num_events
        return True

    def _wait_until(self, t_ros_ns: int) -> bool:
        """Sleep until the wall time of ROS time ``t_ros_ns`` and book the lateness; False if stopping."""
        assert self.start is not None
        due = self.start[1] + (t_ros_ns - self.start[0]) * 1e-9 / self.rate
        while True:
            lag = self.wall() - due
            if lag >= 0:
                if self.lateness.record(lag):
                    self.stats['late_publishes'] = self.lateness.late
                    self.stats['max_lag_ms'] = round(self.lateness.max_lag_s * 1e3, 2)
                self.sensor_s = (t_ros_ns - self.start[0]) * 1e-9
                return not self.stop.is_set()
            if self.stop.is_set():
                return False
            # short waits: a plain sleep is cheaper than Event.wait (~1000 waits per second); long ones stay
            # interruptible in 50 ms steps
            self.sleep(min(-lag, 0.05))

    # ------------------------------------------------------------------------------------------------------------
    def period_figures(self, thread_cpu_s: float, process_cpu_s: float) -> dict:
        """Diagnostics since the previous call: totals, late publications in the period, packets/s, mean packet
        size, and CPU ms per second of sensor time of the publisher thread and of the whole process."""
        now = self.wall()
        t0, s0, c0, p0, n0, b0 = self._last
        self._last = (now, self.sensor_s, float(thread_cpu_s), float(process_cpu_s), int(self.stats['packets']),
                      int(self.stats['bytes']))
        period = self.lateness.take_period()
        d_sensor, d_n = self.sensor_s - s0, self.stats['packets'] - n0
        out: dict[str, Any] = self.summary()
        out.update({
            'late_in_period': period['late'], 'max_lag_in_period_ms': round(period['max_lag_s'] * 1e3, 2),
            'late_tolerance_ms': round(self.lateness.tolerance_s * 1e3, 3),
            'packets_per_s': round(d_n / (now - t0), 1) if now > t0 else 0.0,
            'mean_packet_bytes': round((self.stats['bytes'] - b0) / d_n) if d_n else 0,
            'publisher_cpu_ms_per_sensor_s': round((thread_cpu_s - c0) * 1e3 / d_sensor, 1) if d_sensor > 0 else 0.0,
            'process_cpu_ms_per_sensor_s': round((process_cpu_s - p0) * 1e3 / d_sensor, 1) if d_sensor > 0 else 0.0,
            'simulated_s': round(self.seq.simulated_s, 3),
            'sequence_complete': self.seq.complete,
        })
        return out
