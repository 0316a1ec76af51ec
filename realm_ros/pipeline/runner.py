"""Decoupled inference workers over an :class:`~realm_ros.pipeline.stream.EventStream` (ROS-free).

The perception node keeps up with the sensor by never letting one output wait for another:

* the **dense worker** takes the newest complete window (older ones are dropped and counted by the stream), runs
  voxel grid + encoder + depth / semantic / points (:meth:`RealmPipeline.process_dense`) and hands the outputs to
  the sink at once. The window's decoder tokens go into a one-slot mailbox as soon as the encoder has run, so the
  pose worker can start on them while the dense heads still compute;
* the **pose worker** takes the newest tokens from the mailbox (a newer window replaces an unread one: counted as
  ``pose_inputs_replaced``) and runs matching + PnP against the keyframes (:meth:`RealmPipeline.process_pose`).
  Keyframe work happens there too, so it never blocks the dense outputs. Each output keeps its window's stamp.
  The windows posted since its last step stay available (``RECENT_POSE_INPUTS``): when the newest view is too
  unlike the keyframe, :meth:`RealmPipeline.choose_pose_input` may pick an earlier one (``pose.similar_window_
  fallback``; counted as ``pose_inputs_intermediate``; that output then carries the earlier window's stamp).
* **memory hold**: when no window comes for ``memory_hold_timeout_s`` (or a window has too few events), the sink is
  asked to republish its last outputs with a new stamp.

Both workers run at a lower CPU priority (``nice``) and, on the CPU, with a bounded number of torch and OpenCV threads
(:func:`use_inference_threads`), so the thread that receives event packets (and the DDS threads of the process)
always get a core: on an overloaded machine
the node drops *windows*, never packets. The pose worker may run at a lower priority still (``pose_nice``; the
node's default is the same priority), so that when the cores are shared the dense outputs keep their rate and pose
takes what is left, and its rate may be capped
(``pose_max_rate_hz``, changeable while running) to leave CPU to the rest of the robot. The dense outputs may be
capped too (``dense_max_rate_hz``): on a machine where the dense worker would otherwise take every window it can,
the CPU it leaves goes to the pose worker (the windows it skips are counted as ``windows_dropped``). Per-output
rates and latencies (arrival of the packet that completed the window -> output handed to the sink) are kept
separately (:meth:`diagnostics`).

Stopping never waits for a long inference: :meth:`stop` signals the workers and joins them for at most its
``timeout``; outputs computed after the stop are discarded.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Deque, Dict, FrozenSet, Optional, Protocol, Tuple

import numpy as np

from .core import PipelineOutput, RealmPipeline, WindowSkipped
from .pose_tracker import PoseInput, PoseOutput
from .stats import Counters, LatencyTracker, LogThrottle, RateMeter, ValueTracker
from .stream import EventStream
from .windows import Window

_LOG = logging.getLogger(__name__)

#: windows the pose worker may choose from at a step (those posted since its last step, newest kept): ~0.55 MB each
#: on the CPU at 224 x 224 (tokens, depth-head tokens, picture); 12 cover ~0.4 s of 30 Hz windows
RECENT_POSE_INPUTS = 12

Intrinsics = Callable[[int, int], Tuple[np.ndarray, str]]


class OutputSink(Protocol):
    """Where the workers deliver (the perception node publishes; tests collect)."""

    def dense(self, out: PipelineOutput, frame_id: str) -> None: ...

    def pose(self, out: PoseOutput, frame_id: str) -> None: ...

    def hold(self, stamp_ns: int, reason: str) -> bool: ...

    def wanted_dense(self) -> Optional[FrozenSet[str]]:
        """The dense outputs someone receives now (:data:`realm_ros.pipeline.dense.DENSE_OUTPUTS`), asked before
        every window: the others are not computed. None: all."""
        ...


def name_os_thread(name: str) -> None:
    """Give the calling thread its name in the OS too (``top -H``, ``ps -L``, py-spy); Linux only, best effort."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').prctl(15, name.encode()[:15], 0, 0, 0)      # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def set_thread_niceness(nice: int) -> bool:
    """Lower the calling thread's CPU priority (Linux: per-thread nice value); False where not supported."""
    if nice <= 0 or not hasattr(os, 'setpriority'):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), min(int(nice), 19)))
        return True
    except (OSError, AttributeError):
        return False


def tune_allocator() -> bool:
    """glibc: serve window-sized buffers (up to 32 MB) from the heap and keep freed memory, instead of mapping and
    unmapping them for every window (each fresh 10 MB tensor cost ~600 page faults, as much as the work on it).
    Returns False where not applicable (another libc / platform)."""
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 512 * 2**20))
    except (OSError, AttributeError):
        return False


def torch_threads_for(requested: int, device_type: str, workers: int) -> int:
    """Intra-op torch threads for ``workers`` concurrent inference workers: ``requested`` when > 0; on the CPU
    otherwise one core per worker, leaving the rest (at least the packet intake's share) to the process."""
    if requested > 0:
        return int(requested)
    if device_type != 'cpu':
        return 0                                            # keep torch's default
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers) - (1 if cores >= 8 else 0))


def prepare_workers(pipeline: RealmPipeline, threads: int, decoupled: bool = True) -> int:
    """Everything the workers need before the first window, so that no packet or pose step waits for a compile:
    the allocator tuned (:func:`tune_allocator`), every event-decoder and voxel kernel compiled, and with the pose
    head the matcher's kernels and the Sampson refinement; then ``threads`` (``inference.threads``; 0: one core per
    worker on the CPU) torch and OpenCV threads (:func:`torch_threads_for`, :func:`use_inference_threads`). Returns
    the thread count set (0: left as it was). The pose decoder's own compile is :meth:`RealmPipeline.warm_up_pose`."""
    from realm_ros.events import warmup
    tune_allocator()
    warmup(voxel=True)
    pose = 'pose' in pipeline.active_heads
    if pose:
        from realm_ros.geometry.matching import warm_up_matching
        from realm_ros.geometry.pose import warm_up_refinement
        warm_up_matching(pipeline.device)
        warm_up_refinement()
    count = torch_threads_for(int(threads), pipeline.device.type, 2 if decoupled and pose else 1)
    use_inference_threads(count)
    return count


def use_inference_threads(threads: int) -> None:
    """Give torch and OpenCV (the pose worker's essential-matrix / PnP solvers) ``threads`` threads each (0: leave
    both as they are). OpenCV otherwise keeps a pool of one thread per core: on a node whose two workers already
    use a core each, its parallel RANSAC (USAC) costs more CPU than it saves (development machine, 2 cores, 480
    correspondences: ``findEssentialMat`` + ``recoverPose`` 9.4 ms of CPU on 2 threads, 5.6 ms on 1)."""
    if threads <= 0:
        return
    import torch
    torch.set_num_threads(int(threads))
    try:
        import cv2
    except ImportError:  # pragma: no cover - OpenCV is a dependency of the pose path only
        return
    cv2.setNumThreads(int(threads))


class PipelineRunner:
    """The dense and pose workers of one perception node (see the module docstring)."""

    def __init__(self, pipeline: RealmPipeline, stream: EventStream, sink: OutputSink, intrinsics: Intrinsics, *,
                 frame_id: Callable[[], str] = lambda: '', decoupled: bool = True, nice: int = 10,
                 pose_nice: Optional[int] = None, pose_max_rate_hz: float = 0.0,
                 memory_hold_timeout_s: float = 0.5, pose_wait_fresh: bool = True,
                 dense_max_rate_hz: float = 0.0) -> None:
        self.pipeline = pipeline
        self.stream = stream
        self.sink = sink
        self.intrinsics = intrinsics
        self.frame_id = frame_id
        self.decoupled = bool(decoupled)
        self.nice = int(nice)
        self.pose_nice = self.nice if pose_nice is None else int(pose_nice)
        self.pose_max_rate_hz = float(pose_max_rate_hz)      # 0: no cap; read before every pose step
        self.dense_max_rate_hz = float(dense_max_rate_hz)    # 0: no cap; read before every dense step
        self.pose_wait_fresh = bool(pose_wait_fresh)          # read before every pose step
        self.memory_hold_timeout_s = float(memory_hold_timeout_s)
        self.counters = Counters()
        self.rates = {'dense': RateMeter(window_s=5.0), 'pose': RateMeter(window_s=5.0),
                      'pose_published': RateMeter(window_s=5.0)}
        # pose: every step (rejected ones too, many of them before any decoding); pose_published: steps with a pose
        self.latency = {'dense': LatencyTracker(), 'pose': LatencyTracker(), 'pose_published': LatencyTracker()}
        self.processing = {'dense': LatencyTracker(), 'pose': LatencyTracker()}
        # CPU time of the worker thread per output (torch's own pool threads not included): far below the processing
        # time = the worker waited for a core (other processes, the other worker) rather than computed
        self.cpu = {'dense': LatencyTracker(), 'pose': LatencyTracker()}
        self.pose_stages: Dict[str, LatencyTracker] = {}              # per-stage times of the pose steps
        self.pose_similarity = ValueTracker(maxlen=200)               # the appearance gate's measure per step
        self.pose_similarity_min = float('nan')                       # and its threshold (last seen)
        self.last_error = ''
        self.dense_outputs = 'all'        # the dense outputs the last window computed (the sink's wanted_dense)
        self.hold_active = False
        self.hold_reason = ''
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pose_wake = threading.Event()
        self._mailbox_lock = threading.Lock()
        self._mailbox: Optional[Tuple[PoseInput, str, float]] = None      # (input, frame_id, posted monotonic s)
        # the windows posted since the pose worker's last take, oldest first (the mailbox's input is the last): the
        # candidates of RealmPipeline.choose_pose_input
        self._recent: Deque[PoseInput] = deque(maxlen=RECENT_POSE_INPUTS)
        self._post_interval_s = 0.0                                          # smoothed time between two posts
        self._last_post_s = 0.0
        self._threads: Dict[str, threading.Thread] = {}
        self._generation = stream.generation
        self._last_output_wall = 0.0
        self._last_output_stamp = 0
        self._throttled = LogThrottle()

    # ------------------------------------------------------------------------------------------------ control
    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads.values())

    def start(self) -> None:
        """Start the workers (the pose worker only when decoupled)."""
        if self.running:
            return
        self._stop.clear()
        self._threads = {'dense': threading.Thread(target=self._dense_loop, name='realm_dense', daemon=True)}
        if self.decoupled:
            self._threads['pose'] = threading.Thread(target=self._pose_loop, name='realm_pose', daemon=True)
        for t in self._threads.values():
            t.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Signal the workers and wait at most ``timeout`` s in all; True when both ended (daemon threads that are
        still inside a long inference finish it and then exit without delivering)."""
        self._stop.set()
        self._wake.set()
        self._pose_wake.set()
        deadline = time.monotonic() + max(0.0, timeout)
        ok = True
        for t in self._threads.values():
            t.join(timeout=max(0.0, deadline - time.monotonic()))
            ok = ok and not t.is_alive()
        with self._mailbox_lock:
            self._mailbox = None
        return ok

    def signal_stop(self) -> None:
        """Ask the workers to stop without waiting (e.g. from a shutdown callback)."""
        self._stop.set()
        self._wake.set()
        self._pose_wake.set()

    def wake(self) -> None:
        """New events were buffered (called by the packet intake)."""
        self._wake.set()

    def _error(self, where: str, exc: BaseException) -> None:
        if self._stop.is_set():             # shutting down: the sink may already be gone
            return
        self.counters.add('processing_errors')
        self.counters.add(f'processing_errors.{where}')
        self.last_error = f'{where}: {type(exc).__name__}: {exc}'
        if self._throttled(f'error:{where}'):
            _LOG.error('%s failed: %s\n%s', where, exc, traceback.format_exc(limit=4))

    # ------------------------------------------------------------------------------------------------ dense
    def _dense_loop(self) -> None:
        name_os_thread('realm_dense')
        set_thread_niceness(self.nice)
        next_start = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            rate = self.dense_max_rate_hz
            self._wait_for_rate_cap(rate, next_start)          # meanwhile the stream keeps only the newest window
            if self._stop.is_set():
                break
            try:
                window = self.stream.next_window()
                if window is None:
                    self._maybe_hold()
                    continue
                if window.empty:
                    self.counters.add('empty_windows')
                    self._hold(window.t_end_ns, 'window without enough events')
                    continue
                next_start = time.monotonic() + (1.0 / rate if rate > 0 else 0.0)
                self._dense_step(window)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive whatever happens
                self._error('dense', exc)

    def _dense_step(self, window: Window) -> None:
        key = self.stream.key
        if key is None:
            return
        generation = self.stream.generation
        if generation != self._generation:           # the stream restarted: keyframes belong to the old one
            self._generation = generation
            self.pipeline.reset()
        _, width, height = key
        K, _source = self.intrinsics(width, height)
        frame_id = self.frame_id()
        t0, c0 = time.monotonic(), time.thread_time()

        def post(pose_input: PoseInput) -> None:
            """Hand the tokens to the pose worker as soon as the encoder has run (the dense heads still to come)."""
            pose_input.recv_monotonic_ns = window.recv_monotonic_ns
            pose_input.generation = generation
            self._post_pose_input(pose_input, frame_id)

        outputs = self.sink.wanted_dense()
        self.dense_outputs = 'all' if outputs is None else ','.join(sorted(outputs)) or 'none'
        if outputs is not None and not outputs and 'pose' not in self.pipeline.active_heads:
            # nobody receives a dense output and no pose is tracked: the encoder would run for nothing
            self.counters.add('windows_skipped.no_subscribers')
            self._last_output_wall = time.monotonic()           # not a memory hold: there is nobody to hold for
            self.hold_active = False
            return
        try:
            if self.decoupled:
                out, _ = self.pipeline.process_dense(window.events, height, width, K, window.t_end_ns,
                                                     on_pose_input=post, outputs=outputs)
            else:
                out = self.pipeline.process(window.events, height, width, K, window.t_end_ns, outputs=outputs)
        except WindowSkipped as exc:
            self.counters.add(f'windows_skipped.{exc.reason}')
            self.last_error = str(exc)
            if self._throttled(f'skip:{exc.reason}'):
                _LOG.warning('window skipped: %s', exc)
            return
        if self._stop.is_set():
            return
        self.processing['dense'].add(time.monotonic() - t0)
        self.sink.dense(out, frame_id)
        self.cpu['dense'].add(time.thread_time() - c0)
        self._delivered('dense', window.recv_monotonic_ns)
        self.counters.add('windows_processed')
        self._last_output_wall = time.monotonic()
        self._last_output_stamp = out.stamp_ns
        self.hold_active = False
        if not self.decoupled and (out.pose is not None or out.matches_image is not None):
            self._delivered('pose', window.recv_monotonic_ns)
            if out.pose is not None:
                self._delivered('pose_published', window.recv_monotonic_ns)

    def _post_pose_input(self, pose_input: PoseInput, frame_id: str) -> None:
        """Put the newest tokens in the pose worker's mailbox (an older, not yet taken input is replaced)."""
        now = time.monotonic()
        with self._mailbox_lock:
            if self._mailbox is not None:
                self.counters.add('pose_inputs_replaced')
            self._mailbox = (pose_input, frame_id, now)
            self._recent.append(pose_input)
            if self._last_post_s > 0:
                dt = min(now - self._last_post_s, 1.0)
                self._post_interval_s = dt if self._post_interval_s <= 0 else 0.8 * self._post_interval_s + 0.2 * dt
            self._last_post_s = now
        self._pose_wake.set()

    def _take_fresh(self, item: Tuple[PoseInput, str, float]) -> Tuple[PoseInput, str, float]:
        """``pose_wait_fresh``: tokens that have waited in the mailbox for more than half the usual interval between
        two windows are exchanged for the next window's when it is due within that interval (a step then starts on
        tokens ~0 ms old instead of up to one interval old: lower pose latency for a few ms of idle worker; counted as
        ``pose_inputs_waited``). Returns the item to process."""
        interval = self._post_interval_s
        age = time.monotonic() - item[2]
        if not self.pose_wait_fresh or interval <= 0 or age <= 0.5 * interval:
            return item
        deadline = item[2] + 1.25 * interval
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return item
            self._pose_wake.wait(timeout=left)
            self._pose_wake.clear()
            with self._mailbox_lock:
                newer, self._mailbox = self._mailbox, None
            if newer is not None:
                self.counters.add('pose_inputs_waited')
                return newer
        return item

    def _wait_for_rate_cap(self, rate: float, next_start: float) -> None:
        """A capped worker (``rate`` > 0 steps per second) waits until ``next_start`` (monotonic s); a stop ends the
        wait at once."""
        if rate > 0 and time.monotonic() < next_start:
            self._stop.wait(next_start - time.monotonic())

    def _delivered(self, output: str, recv_monotonic_ns: int) -> None:
        self.rates[output].add(1.0)
        if recv_monotonic_ns:
            self.latency[output].add((time.monotonic_ns() - recv_monotonic_ns) / 1e9)

    # ------------------------------------------------------------------------------------------------ pose
    def _pose_loop(self) -> None:
        name_os_thread('realm_pose')
        set_thread_niceness(self.pose_nice)
        next_start = 0.0
        while not self._stop.is_set():
            self._pose_wake.wait(timeout=0.05)
            self._pose_wake.clear()
            rate = self.pose_max_rate_hz
            self._wait_for_rate_cap(rate, next_start)          # meanwhile the mailbox keeps only the newest tokens
            if self._stop.is_set():
                break
            with self._mailbox_lock:
                item, self._mailbox = self._mailbox, None
            if item is None or self._stop.is_set():
                continue
            pose_input, frame_id, _posted = self._take_fresh(item)
            if self._stop.is_set():                          # stopped while waiting for fresher tokens
                break
            if pose_input.generation != self.stream.generation:
                self.counters.add('pose_inputs_stale')        # from before a stream restart
                continue
            with self._mailbox_lock:
                earlier = [p for p in self._recent if p.stamp_ns < pose_input.stamp_ns]
                later = [p for p in self._recent if p.stamp_ns > pose_input.stamp_ns]   # posted meanwhile
                self._recent.clear()
                self._recent.extend(later)
            try:
                t0, c0 = time.monotonic(), time.thread_time()
                next_start = t0 + (1.0 / rate if rate > 0 else 0.0)
                if earlier:
                    chosen = self.pipeline.choose_pose_input(earlier + [pose_input])
                    if chosen is not pose_input:
                        self.counters.add('pose_inputs_intermediate')
                        pose_input = chosen
                out = self.pipeline.process_pose(pose_input)
                if self._stop.is_set():
                    break
                self.processing['pose'].add(time.monotonic() - t0)
                self._pose_stage_times(getattr(out, 'timings_ms', None) or {})
                self._pose_similarity(out)
                self.sink.pose(out, frame_id)
                self.cpu['pose'].add(time.thread_time() - c0)
                self.counters.add('pose_steps')
                self._delivered('pose', pose_input.recv_monotonic_ns)
                if getattr(out, 'pose', None) is not None:
                    self._delivered('pose_published', pose_input.recv_monotonic_ns)
            except WindowSkipped as exc:
                self.counters.add(f'windows_skipped.{exc.reason}')
                self.last_error = str(exc)
            except Exception as exc:  # noqa: BLE001
                self._error('pose', exc)

    def _pose_similarity(self, out: Any) -> None:
        """Keep the appearance gate's view similarity of a pose step and its threshold (for /diagnostics)."""
        sim = getattr(out, 'view_similarity', None)
        if sim is None:
            return
        self.pose_similarity.add(sim)
        threshold = getattr(out, 'min_view_similarity', None)
        if threshold is not None:
            self.pose_similarity_min = float(threshold)

    def _pose_stage_times(self, timings_ms: Dict[str, float]) -> None:
        """Keep the per-stage times of a pose step (``pose_decoder_ms``, ``pose_matching_direct_ms``, ...)."""
        for key, ms in timings_ms.items():
            if key == 'pose_ms' or not key.startswith('pose_') or not key.endswith('_ms'):
                continue
            tracker = self.pose_stages.get(key)
            if tracker is None:
                tracker = self.pose_stages.setdefault(key, LatencyTracker(maxlen=200))
            tracker.add(float(ms) * 1e-3)

    # ------------------------------------------------------------------------------------------------ hold
    def _maybe_hold(self) -> None:
        if not self._last_output_wall:
            return
        idle = time.monotonic() - self._last_output_wall
        if idle < self.memory_hold_timeout_s:
            return
        stamp = self._last_output_stamp + int(idle * 1e9)
        latest = self.stream.latest_time_ns
        if latest is not None and latest > self._last_output_stamp:
            stamp = max(stamp, latest)
        self._hold(stamp, 'no events')

    def _hold(self, stamp_ns: int, reason: str) -> None:
        if not self._complete_held_outputs(stamp_ns) and not self.sink.hold(stamp_ns, reason):
            return
        self.counters.add('memory_holds')
        self.hold_active = True
        self.hold_reason = reason
        self._last_output_wall = time.monotonic()
        self._last_output_stamp = stamp_ns

    def _complete_held_outputs(self, stamp_ns: int) -> bool:
        """A dense topic subscribed since the last window (``dense.lazy`` computed it without) gets its output from
        that window's kept encoder output, published with the hold's stamp together with the other dense outputs;
        True when that happened (this hold's dense outputs are then out)."""
        wanted = self.sink.wanted_dense()
        if not wanted:                          # None (all were computed) or nothing subscribed
            return False
        try:
            out = self.pipeline.complete_dense(wanted, stamp_ns)
        except Exception as exc:  # noqa: BLE001 - the plain hold goes on
            self._error('dense', exc)
            return False
        if out is None or self._stop.is_set():
            return False
        self.sink.dense(out, self.frame_id())
        self.dense_outputs = ','.join(sorted(wanted))
        self.counters.add('held_outputs_completed')
        return True

    # ------------------------------------------------------------------------------------------------ reporting
    def diagnostics(self) -> Dict[str, Any]:
        """Per-output rate, latency and processing-time percentiles, counters (plain data)."""
        c = self.counters.snapshot()
        values: Dict[str, Any] = {
            'state': 'active' if self.running else 'inactive', 'decoupled_pose': str(self.decoupled).lower(),
            'pose_max_rate_hz': self.pose_max_rate_hz, 'pose_wait_fresh': str(self.pose_wait_fresh).lower(),
            'dense_max_rate_hz': self.dense_max_rate_hz, 'dense_outputs': self.dense_outputs,
            'windows_processed': c.get('windows_processed', 0), 'empty_windows': c.get('empty_windows', 0),
            'memory_holds': c.get('memory_holds', 0), 'memory_hold': str(self.hold_active).lower(),
            'held_outputs_completed': c.get('held_outputs_completed', 0),
            'processing_errors': c.get('processing_errors', 0), 'pose_steps': c.get('pose_steps', 0),
            'pose_inputs_replaced': c.get('pose_inputs_replaced', 0),
            'pose_inputs_stale': c.get('pose_inputs_stale', 0),
            'pose_inputs_intermediate': c.get('pose_inputs_intermediate', 0), 'last_error': self.last_error,
        }
        nan = float('nan')
        for output in ('dense', 'pose'):
            lat = self.latency[output].percentiles_ms() or {}
            proc = self.processing[output].percentiles_ms() or {}
            values[f'{output}_rate_hz'] = self.rates[output].rate()
            values[f'{output}_latency_ms_p50'] = lat.get('p50', nan)
            values[f'{output}_latency_ms_p95'] = lat.get('p95', nan)
            values[f'{output}_latency_ms_max'] = lat.get('max', nan)
            values[f'{output}_processing_ms_p50'] = proc.get('p50', nan)
            values[f'{output}_processing_ms_p95'] = proc.get('p95', nan)
            values[f'{output}_cpu_ms_p50'] = (self.cpu[output].percentiles_ms() or {}).get('p50', nan)
        lat = self.latency['pose_published'].percentiles_ms() or {}
        values['pose_published_rate_hz'] = self.rates['pose_published'].rate()
        values['pose_published_latency_ms_p50'] = lat.get('p50', nan)
        values['pose_published_latency_ms_p95'] = lat.get('p95', nan)
        sim = self.pose_similarity.percentiles() or {}               # why steps end as dissimilar_views
        values['pose_view_similarity_p10'] = sim.get('p10', nan)
        values['pose_view_similarity_p50'] = sim.get('p50', nan)
        values['pose_view_similarity_min'] = self.pose_similarity_min
        for key, tracker in sorted(self.pose_stages.items()):          # where a pose step's time goes
            stage = tracker.percentiles_ms() or {}
            values[f'{key}_p50'] = stage.get('p50', nan)
        values.update(sorted((k, v) for k, v in c.items() if k.startswith(('windows_skipped.', 'processing_errors.'))))
        return values
