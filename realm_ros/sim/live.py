"""What the live simulated camera replays, and how it keeps time (ROS-free; used by ``sim_event_camera``).

* :class:`ProgressiveSequence`: frames and their EVT3 packets, filled as the simulation produces them (from the
  cache at once, or chunk by chunk from a background :class:`SimWorker` process). :meth:`~ProgressiveSequence.plan`
  says what the next replay pass covers: the whole sequence once it is complete, else the simulated prefix (at least
  ``first_segment_s``) so that a first start (empty cache) publishes within seconds instead of after the whole
  precompute (tens of seconds of CPU at 224x224). The prefix is the *same* stream (same packets, same frames); a
  prefix pass ends with one extra packet holding the events after the last complete packet window, and the camera
  pose jumps back at the end of a prefix pass (a looped prefix is not periodic), until the whole loop is there.
* :class:`LatenessMonitor`: counts items published later than one packet period after their due wall time.

Packetisation is identical to :class:`~realm_ros.sim.packets.EventPacketizer` over the whole sequence (packets of
``packet_interval_us`` of sensor time, ~1 per ms by default like metavision_driver), encoded once; later passes
move only the payloads' TIME_HIGH words.
"""
from __future__ import annotations

import copy
import logging
import pickle
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..events.types import EventArray
from .camera import PinholeCamera
from .packets import DEFAULT_SENSOR_TIME_OFFSET_US, EVT3_TIME_HIGH_US, EventPacketizer, PacketData
from .sequence import SimSequence, cache_path
from .simulator import SimConfig, SimFrame
from .worker import read_message

log = logging.getLogger(__name__)


@dataclass
class PassPlan:
    """One replay pass: frames ``[0, num_frames)``, the packets due before each, the packets after the last frame,
    and the pass length ``period_us`` (a multiple of 4096 us, so payloads move by whole TIME_HIGH steps)."""

    num_frames: int
    end_packets: list[PacketData]
    period_us: int
    complete: bool


def round_period_us(t_ns: int) -> int:
    """``t_ns`` rounded up to whole EVT3 TIME_HIGH units (us, at least one unit)."""
    return -(-max(int(t_ns) // 1000, 1) // EVT3_TIME_HIGH_US) * EVT3_TIME_HIGH_US


class ProgressiveSequence:
    """Frames and EVT3 packets of a simulated sequence, appended in order by one producer (thread-safe reads)."""

    def __init__(self, config: SimConfig, packet_interval_us: int = 1000, seed: int = 0) -> None:
        self.config = config
        self.packetizer = EventPacketizer(int(packet_interval_us), 0, DEFAULT_SENSOR_TIME_OFFSET_US, seed=seed)
        self.frames: list[SimFrame] = []
        self.packets: list[list[PacketData]] = []       # packets completed when frame i is reached
        self._prefix_tails: list[list[PacketData]] = []  # events after the last complete window, for prefix passes
        self.tail: list[PacketData] = []
        self.event_camera: PinholeCamera | None = None     # set by set_meta() before the first frame
        self.rgb_camera: PinholeCamera | None = None
        self.T_event_rgb = np.eye(4)
        self.num_frames_total: int | None = None
        self.num_events = 0
        self.complete = False
        self.error: str | None = None
        self._cond = threading.Condition()

    # producer side ----------------------------------------------------------------------------------------------
    def set_meta(self, event_camera: PinholeCamera, rgb_camera: PinholeCamera, T_event_rgb: np.ndarray,
                 num_frames: int) -> None:
        with self._cond:
            self.event_camera, self.rgb_camera = event_camera, rgb_camera
            self.T_event_rgb = np.asarray(T_event_rgb)
            self.num_frames_total = int(num_frames)
            self._cond.notify_all()

    def cameras(self) -> tuple[PinholeCamera, PinholeCamera]:
        """``(event_camera, rgb_camera)``; RuntimeError before :meth:`set_meta`."""
        if self.event_camera is None or self.rgb_camera is None:
            raise RuntimeError('the simulated sequence has no camera models yet (set_meta() not called)')
        return self.event_camera, self.rgb_camera

    def add(self, events: EventArray, frame: SimFrame) -> None:
        """Append frame ``len(frames)`` and the events since the previous one (simulation ns)."""
        packets = self.packetizer.push(events, frame.t_ns)
        prefix_tail = copy.deepcopy(self.packetizer).flush()   # the pending (< 1 window) events only: cheap
        with self._cond:
            self.frames.append(frame)
            self.packets.append(packets)
            self._prefix_tails.append(prefix_tail)
            self.num_events += len(events)
            self._cond.notify_all()

    def finish(self) -> None:
        tail = self.packetizer.flush()
        with self._cond:
            self.tail = tail
            self.complete = True
            self._prefix_tails = []
            self._cond.notify_all()

    def fail(self, message: str) -> None:
        with self._cond:
            self.error = message
            self._cond.notify_all()

    @classmethod
    def from_sequence(cls, seq: SimSequence, packet_interval_us: int = 1000, seed: int = 0) -> 'ProgressiveSequence':
        out = cls(seq.config, packet_interval_us, seed)
        out.set_meta(seq.event_camera, seq.rgb_camera, seq.T_event_rgb, len(seq.frames))
        for ev, frame in zip(seq.events, seq.frames):
            out.add(ev, frame)
        out.finish()
        return out

    # consumer side ----------------------------------------------------------------------------------------------
    @property
    def simulated_s(self) -> float:
        with self._cond:
            return self.frames[-1].t_ns * 1e-9 if self.frames else 0.0

    def plan(self, min_prefix_s: float, whole: bool, should_stop: Callable[[], bool],
             poll_s: float = 0.05) -> PassPlan | None:
        """Wait until the next pass can start and describe it: the whole sequence when ``whole`` (or once it is
        complete), else the simulated prefix of at least ``min_prefix_s`` (and two frames). None when
        ``should_stop()`` turns true or the producer failed."""
        with self._cond:
            while True:
                if should_stop() or self.error is not None:
                    return None
                n = len(self.frames)
                if self.complete:
                    return PassPlan(n, self.tail, round_period_us(self.frames[-1].t_ns), True)
                if not whole and n >= 2 and self.frames[-1].t_ns >= min_prefix_s * 1e9:
                    return PassPlan(n, self._prefix_tails[n - 1], round_period_us(self.frames[n - 1].t_ns), False)
                self._cond.wait(poll_s)


class SimWorker:
    """Runs :mod:`realm_ros.sim.worker` in a child process and feeds a :class:`ProgressiveSequence`."""

    def __init__(self, seq: ProgressiveSequence, cache_file: str | Path | None,
                 on_progress: Callable[[ProgressiveSequence], None] | None = None, urgent_s: float = 0.0) -> None:
        self.seq = seq
        self.urgent_s = float(urgent_s)
        self.cache_file = str(cache_file) if cache_file else None
        self.on_progress = on_progress
        self.saved: str | None = None
        self.cache_error: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._read, name='sim_worker_reader', daemon=True)
        self.started = time.monotonic()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, '-m', 'realm_ros.sim.worker'], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.started = time.monotonic()
        assert self.proc.stdin is not None
        pickle.dump((self.seq.config, self.cache_file, self.urgent_s), self.proc.stdin,
                    protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.close()
        self._thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout
        try:
            while True:
                kind, *rest = read_message(stream)
                if kind == 'meta':
                    m = rest[0]
                    self.seq.set_meta(m['event_camera'], m['rgb_camera'], m['T_event_rgb'], m['num_frames'])
                elif kind == 'chunk':
                    self.seq.add(rest[0], rest[1])
                    if self.on_progress is not None:
                        self.on_progress(self.seq)
                elif kind == 'done':
                    self.saved, self.cache_error = rest
                    self.seq.finish()
                    return
                elif kind == 'error':
                    self.seq.fail(f'simulation failed: {rest[0]}')
                    return
        except (EOFError, OSError, ValueError) as exc:
            if not self.seq.complete:
                self.seq.fail(f'simulation worker ended early ({type(exc).__name__}: {exc}; exit code '
                              f'{self.proc.poll()})')

    def stop(self, timeout_s: float = 0.5) -> None:
        """End the child (SIGTERM, then SIGKILL after ``timeout_s``) and the reader thread."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout_s)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if p is not None and p.stdout is not None:
            try:
                p.stdout.close()
            except OSError:
                pass


def start_sequence(config: SimConfig, packet_interval_us: int, seed: int, cache_dir: str | None, use_cache: bool,
                   on_progress: Callable[[ProgressiveSequence], None] | None = None, urgent_s: float = 0.0
                   ) -> tuple[ProgressiveSequence, SimWorker | None]:
    """The sequence of ``config``: complete from the cache when there, else filled by a started :class:`SimWorker`
    (which saves it to the cache when done; its first ``urgent_s`` seconds are simulated at normal priority)."""
    where = cache_path(config, cache_dir)
    if use_cache and where.exists():
        try:
            return ProgressiveSequence.from_sequence(SimSequence.load(where, config), packet_interval_us, seed), None
        except (OSError, ValueError, KeyError) as exc:
            log.warning('ignoring the unreadable simulator cache %s (%s)', where, exc)
    seq = ProgressiveSequence(config, packet_interval_us, seed)
    worker = SimWorker(seq, where if use_cache else None, on_progress, urgent_s)
    worker.start()
    return seq, worker


@dataclass
class LatenessMonitor:
    """Counts publications later than ``tolerance_s`` (one packet period of wall time) after their due time.

    ``record(lag_s)`` per publication (lag = actual - due wall time); ``late`` / ``max_lag_s`` are totals,
    :meth:`take_period` returns and resets the figures since the previous call (for periodic diagnostics).
    """

    tolerance_s: float
    published: int = 0
    late: int = 0
    max_lag_s: float = 0.0
    _period: dict = field(default_factory=lambda: {'published': 0, 'late': 0, 'max_lag_s': 0.0})

    def __post_init__(self) -> None:
        if not self.tolerance_s > 0:
            raise ValueError(f'tolerance_s must be positive, got {self.tolerance_s}')

    def record(self, lag_s: float) -> bool:
        """Book one publication; True if it was late."""
        self.published += 1
        self._period['published'] += 1
        if lag_s > self.tolerance_s:
            self.late += 1
            self._period['late'] += 1
            if lag_s > self.max_lag_s:
                self.max_lag_s = lag_s
            if lag_s > self._period['max_lag_s']:
                self._period['max_lag_s'] = lag_s
            return True
        return False

    def take_period(self) -> dict:
        out = dict(self._period)
        self._period = {'published': 0, 'late': 0, 'max_lag_s': 0.0}
        return out
