"""PipelineRunner: dense outputs never wait for pose, pose works on the newest tokens, memory hold, stream restarts,
errors, and a stop that never waits for a long inference.

The scheduling is tested with a stand-in pipeline whose dense and pose steps take a set time (the real pipeline's
halves are tested in test_pipeline_core.py); one test runs the real miniature-size pipeline end to end."""
import threading
import time

import numpy as np
import pytest

from realm_ros.events.types import EventArray
from realm_ros.pipeline.core import PipelineOutput
from realm_ros.pipeline.pose_tracker import PoseInput, PoseOutput
from realm_ros.pipeline.runner import PipelineRunner, set_thread_niceness, torch_threads_for, use_inference_threads
from realm_ros.pipeline.stream import EventStream


class TimedPipeline:
    """process_dense takes ``dense_s``, process_pose ``pose_s``; records what it was given."""

    def __init__(self, dense_s=0.01, pose_s=0.01, fail_dense_at=()):
        self.dense_s, self.pose_s = dense_s, pose_s
        self.encoder_share = 1.0
        self.active_heads = ('depth', 'semantic', 'points', 'pose')
        self.fail_dense_at = set(fail_dense_at)
        self.dense_calls, self.pose_calls, self.resets = [], [], 0
        self.dense_outputs = []               # the outputs each dense call was asked for
        self.completed = []                   # (outputs, stamp) of each complete_dense that computed
        self.pose_started = threading.Event()
        self.pose_value = None                # what process_pose returns as the estimate (None: rejected)
        self.similarities = []                # appearance-gate measures of the steps, in turn (then none)
        self.choose = None                    # candidates -> the window to step on (None: the newest)
        self.choices = []                     # the candidate stamps offered at each step

    def process_dense(self, events, height, width, K, stamp_ns, on_pose_input=None, outputs=None):
        """The encoder takes ``encoder_share`` of ``dense_s``: the pose input is handed over then, the heads take
        the rest."""
        self.dense_calls.append(stamp_ns)
        self.dense_outputs.append(outputs)
        if len(self.dense_calls) in self.fail_dense_at:
            raise RuntimeError('boom')
        time.sleep(self.dense_s * self.encoder_share)
        inp = PoseInput(stamp_ns, None, None, K, np.zeros((2, 2, 3), np.uint8))
        if on_pose_input is not None:
            on_pose_input(inp)
        time.sleep(self.dense_s * (1.0 - self.encoder_share))
        out = PipelineOutput(stamp_ns=stamp_ns, width=width, height=height, K=K, num_events=len(events))
        return out, inp

    def complete_dense(self, outputs, stamp_ns):
        """The last window's outputs completed: an output once ``outputs`` is more than that window computed."""
        last = self.dense_outputs[-1] if self.dense_outputs else None
        if last is None or set(outputs) <= set(last):
            return None
        self.completed.append((frozenset(outputs), stamp_ns))
        self.dense_outputs.append(frozenset(outputs))
        return PipelineOutput(stamp_ns=stamp_ns, width=64, height=48, K=np.eye(3), num_events=0)

    def process(self, events, height, width, K, stamp_ns, outputs=None):
        out, inp = self.process_dense(events, height, width, K, stamp_ns, outputs=outputs)
        out.pose = self.process_pose(inp).pose
        return out

    def choose_pose_input(self, candidates):
        self.choices.append([c.stamp_ns for c in candidates])
        return self.choose(candidates) if self.choose is not None else candidates[-1]

    def process_pose(self, inp):
        self.pose_calls.append(inp.stamp_ns)
        self.pose_started.set()
        time.sleep(self.pose_s)
        out = PoseOutput(inp.stamp_ns, pose=self.pose_value, matches_image=np.zeros((2, 4, 3), np.uint8))
        out.timings_ms.update(pose_ms=self.pose_s * 1e3, pose_decoder_ms=self.pose_s * 600.0,
                              pose_matching_direct_ms=self.pose_s * 150.0)
        if self.similarities:
            out.view_similarity, out.min_view_similarity = self.similarities.pop(0), 0.96
        return out

    def reset(self):
        self.resets += 1


class Sink:
    def __init__(self):
        self.dense_out, self.pose_out, self.holds = [], [], []
        self.lock = threading.Lock()
        self.wanted = None                    # what wanted_dense answers (None: all)

    def wanted_dense(self):
        return self.wanted

    def dense(self, out, frame_id):
        with self.lock:
            self.dense_out.append((time.monotonic(), out.stamp_ns, frame_id))

    def pose(self, out, frame_id):
        with self.lock:
            self.pose_out.append((time.monotonic(), out.stamp_ns))

    def hold(self, stamp_ns, reason):
        self.holds.append((stamp_ns, reason))
        return bool(self.dense_out)


def events(t0_ns, n=2000, dt=1000):
    rng = np.random.default_rng(t0_ns % 1000)
    return EventArray.from_arrays(rng.integers(0, 64, n), rng.integers(0, 48, n),
                                  t0_ns + np.arange(n, dtype=np.int64) * dt, rng.integers(0, 2, n))


def make(pipe, decoupled=True, hold_s=10.0):
    stream = EventStream(window_mode='count', window_count=2000, capacity_events=100_000)
    stream.key = ('evt3', 64, 48)                    # as if a packet had been decoded
    sink = Sink()
    runner = PipelineRunner(pipe, stream, sink, lambda w, h: (np.eye(3), 'fallback'), frame_id=lambda: 'cam',
                            decoupled=decoupled, nice=0, memory_hold_timeout_s=hold_s)
    return stream, sink, runner


def feed(stream, runner, n_windows, period_s, t0=10**9):
    for i in range(n_windows):
        stream.scheduler.push(events(t0 + i * 2_000_000), recv_monotonic_ns=time.monotonic_ns())
        runner.wake()
        time.sleep(period_s)


def wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def run_until(stream, runner, n_windows, period_s, cond, timeout=10.0):
    """Start the runner, feed ``n_windows`` windows, wait for ``cond``, stop; True if ``cond`` held and the workers
    ended within 2 s."""
    runner.start()
    try:
        feed(stream, runner, n_windows, period_s)
        held = wait(cond, timeout)
    finally:
        stopped = runner.stop(timeout=2.0)
    return held and stopped


def test_pose_worker_offers_the_windows_since_its_last_step():
    """Each pose step is offered the windows posted since the previous step (oldest first, the newest last, none
    offered twice); a step on an earlier window is counted and keeps that window's stamp."""
    pipe = TimedPipeline(dense_s=0.01, pose_s=0.25)
    pipe.choose = lambda c: c[0]                          # always the oldest offered window
    stream, sink, runner = make(pipe)
    assert run_until(stream, runner, 20, 0.05, lambda: len(pipe.pose_calls) >= 3)
    offered = pipe.choices                               # asked only when earlier windows came with the newest
    assert offered and all(len(c) > 1 for c in offered)  # windows arrived during a 0.25 s step
    for c in offered:
        assert c == sorted(c) and len(set(c)) == len(c)
    flat = [s for c in offered for s in c]
    assert len(flat) == len(set(flat))                   # a window is offered to one step only
    assert [c[0] for c in offered] == [s for s in pipe.pose_calls if s in flat]   # the chosen one ran
    assert pipe.pose_calls == sorted(pipe.pose_calls) and set(pipe.pose_calls) <= set(pipe.dense_calls)
    assert runner.diagnostics()['pose_inputs_intermediate'] == len(offered)
    assert [s for _, s in sink.pose_out] == pipe.pose_calls[:len(sink.pose_out)]


def test_dense_outputs_do_not_wait_for_pose_and_pose_takes_the_newest_window():
    pipe = TimedPipeline(dense_s=0.01, pose_s=0.6)
    stream, sink, runner = make(pipe)
    runner.start()
    try:
        feed(stream, runner, 20, 0.05)                    # 1 s of windows at 20 Hz
        assert wait(lambda: len(sink.pose_out) >= 2)
    finally:
        assert runner.stop(timeout=2.0)
    assert len(sink.dense_out) >= 12                      # most windows got dense outputs during the slow pose
    assert len(pipe.pose_calls) <= 3                      # ~1 s of 0.6 s pose steps
    assert set(pipe.pose_calls) <= set(pipe.dense_calls)  # each pose keeps the stamp of its window
    assert pipe.pose_calls[-1] > pipe.pose_calls[0] and pipe.pose_calls[1] >= pipe.dense_calls[5]   # newest
    d = runner.diagnostics()
    assert d['pose_inputs_replaced'] >= 5 and d['windows_processed'] == len(sink.dense_out)
    assert d['dense_rate_hz'] > d['pose_rate_hz'] > 0 and d['dense_latency_ms_p50'] < d['pose_latency_ms_p50']
    assert d['pose_published_rate_hz'] == 0 and np.isnan(d['pose_published_latency_ms_p50'])   # every step rejected
    assert d['pose_decoder_ms_p50'] == pytest.approx(360.0) and d['pose_matching_direct_ms_p50'] == pytest.approx(90.0)
    assert 'pose_ms_p50' not in d                          # the whole step is pose_processing_ms_*
    # the steps sleep: processing time is wall time, the CPU time of the worker thread stays near zero
    assert d['pose_processing_ms_p50'] >= 590 and 0 <= d['pose_cpu_ms_p50'] < 50
    assert 0 <= d['dense_cpu_ms_p50'] < d['dense_processing_ms_p50']


def test_without_decoupling_pose_runs_after_the_dense_heads_of_the_same_window():
    pipe = TimedPipeline(dense_s=0.01, pose_s=0.2)
    stream, sink, runner = make(pipe, decoupled=False)
    runner.start()
    try:
        feed(stream, runner, 10, 0.05)
        assert wait(lambda: len(sink.dense_out) >= 2)
    finally:
        runner.stop(timeout=2.0)
    assert pipe.pose_calls == pipe.dense_calls[:len(pipe.pose_calls)] and len(sink.dense_out) <= 4


def test_pose_starts_on_the_tokens_before_the_dense_heads_of_their_window_finish():
    """The encoder hands the pose input over mid-window: the pose step of a window begins before its dense output
    is published (the heads still running), and it is not handed over a second time."""
    pipe = TimedPipeline(dense_s=0.3, pose_s=0.05)
    pipe.encoder_share = 0.2                               # encoder 60 ms, heads 240 ms
    starts = {}
    process_pose = pipe.process_pose

    def record(inp):
        starts[inp.stamp_ns] = time.monotonic()
        return process_pose(inp)
    pipe.process_pose = record
    stream, sink, runner = make(pipe)
    runner.start()
    try:
        feed(stream, runner, 1, 0.0)
        assert wait(lambda: len(sink.pose_out) >= 1 and len(sink.dense_out) >= 1)
    finally:
        assert runner.stop(timeout=2.0)
    dense_at, stamp, _ = sink.dense_out[0]
    assert stamp in starts and starts[stamp] < dense_at - 0.15     # ~240 ms of heads still to come
    assert sink.pose_out[0][0] < dense_at                          # the pose output even came first
    assert pipe.pose_calls == [stamp] and runner.diagnostics()['pose_inputs_replaced'] == 0


def test_stop_never_waits_for_a_long_inference_and_discards_its_output():
    pipe = TimedPipeline(dense_s=0.01, pose_s=3.0)
    stream, sink, runner = make(pipe)
    runner.start()
    feed(stream, runner, 2, 0.05)
    assert pipe.pose_started.wait(5)
    t0 = time.monotonic()
    finished = runner.stop(timeout=0.5)
    assert time.monotonic() - t0 < 1.0 and not finished      # returned while the pose step still runs
    time.sleep(3.2)
    assert sink.pose_out == []                                # computed after the stop: not delivered


def test_memory_hold_after_the_timeout_and_for_empty_windows():
    pipe = TimedPipeline()
    stream, sink, runner = make(pipe, hold_s=0.2)
    runner.start()
    try:
        feed(stream, runner, 1, 0.0)
        assert wait(lambda: sink.dense_out)
        assert wait(lambda: sink.holds, 3.0)
        stamp, reason = sink.holds[0]
        assert reason == 'no events' and stamp > sink.dense_out[0][1]
        assert runner.diagnostics()['memory_hold'] == 'true' and runner.diagnostics()['memory_holds'] >= 1
    finally:
        runner.stop()


def test_without_receivers_and_pose_the_encoder_does_not_run():
    """No dense topic has a subscriber and the pose head is off: windows are skipped before the encoder (counted as
    windows_skipped.no_subscribers, no memory hold: nobody to hold for); the first subscriber brings them back."""
    pipe = TimedPipeline()
    pipe.active_heads = ('depth', 'semantic', 'points')
    stream, sink, runner = make(pipe, hold_s=0.2)
    sink.wanted = frozenset()
    runner.start()
    try:
        feed(stream, runner, 4, 0.1)
        assert wait(lambda: runner.diagnostics().get('windows_skipped.no_subscribers', 0) >= 3)
        assert pipe.dense_calls == [] and sink.holds == [] and runner.diagnostics()['memory_hold'] == 'false'
        sink.wanted = frozenset({'depth'})
        feed(stream, runner, 2, 0.1, t0=2 * 10**9)
        assert wait(lambda: len(pipe.dense_calls) >= 1)
    finally:
        runner.stop()
    pipe.active_heads = ('depth', 'pose')                     # with pose tracked the encoder always runs
    stream, sink, runner = make(pipe)
    sink.wanted = frozenset()
    n = len(pipe.dense_calls)
    assert run_until(stream, runner, 3, 0.05, lambda: len(pipe.dense_calls) >= n + 2)


def test_a_topic_subscribed_during_a_hold_gets_the_last_window_s_output():
    """dense.lazy and the memory hold: the last window computed only depth; when semantic gets a subscriber while
    no window comes, the next hold publishes the completed outputs (the pipeline's complete_dense, the hold's stamp)
    instead of republishing, once; later holds republish as before."""
    pipe = TimedPipeline()
    stream, sink, runner = make(pipe, hold_s=0.2)
    sink.wanted = frozenset({'depth'})
    runner.start()
    try:
        feed(stream, runner, 1, 0.0)
        assert wait(lambda: sink.dense_out) and wait(lambda: sink.holds, 3.0)
        sink.wanted = frozenset({'depth', 'semantic'})
        assert wait(lambda: pipe.completed, 3.0)
        n = len(sink.holds)
        assert wait(lambda: len(sink.holds) > n, 3.0)              # plain holds again afterwards
    finally:
        runner.stop()
    assert len(pipe.completed) == 1 and pipe.completed[0][0] == {'depth', 'semantic'}
    stamp = pipe.completed[0][1]
    assert [s for _, s, _ in sink.dense_out] == [sink.dense_out[0][1], stamp] and stamp > sink.holds[0][0]
    d = runner.diagnostics()
    assert d['held_outputs_completed'] == 1 and d['dense_outputs'] == 'depth,semantic'
    assert d['memory_holds'] == len(sink.holds) + 1


def test_a_stream_restart_resets_the_keyframes_and_drops_stale_pose_inputs():
    pipe = TimedPipeline(pose_s=0.3)
    stream, sink, runner = make(pipe)
    runner.start()
    try:
        feed(stream, runner, 3, 0.05)
        stream.reset('test')
        stream.key = ('evt3', 64, 48)
        feed(stream, runner, 1, 0.05, t0=5 * 10**9)
        assert wait(lambda: pipe.resets == 1 and len(sink.dense_out) >= 2)
        assert wait(lambda: runner.diagnostics()['pose_inputs_stale'] + len(pipe.pose_calls) >= 2)
    finally:
        runner.stop()


def test_an_error_in_one_window_is_counted_and_the_worker_goes_on():
    pipe = TimedPipeline(fail_dense_at={1})
    stream, sink, runner = make(pipe)
    runner.start()
    try:
        feed(stream, runner, 4, 0.05)
        assert wait(lambda: len(sink.dense_out) >= 2)
    finally:
        runner.stop()
    d = runner.diagnostics()
    assert d['processing_errors'] == 1 and d['processing_errors.dense'] == 1 and 'boom' in d['last_error']


def test_thread_niceness_and_thread_count():
    done = {}

    def body():
        import os
        done['ok'] = set_thread_niceness(5)
        done['nice'] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert done['ok'] and done['nice'] >= 5
    assert torch_threads_for(3, 'cpu', 2) == 3 and torch_threads_for(0, 'cuda', 2) == 0
    assert torch_threads_for(0, 'cpu', 2) >= 1


def test_inference_threads_bound_torch_and_opencv_alike():
    """The workers' thread count applies to OpenCV's pool too (its RANSAC would otherwise take every core); 0 leaves
    both libraries as they are."""
    import cv2
    import torch
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        use_inference_threads(1)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        cv2.setNumThreads(3)
        use_inference_threads(0)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 3
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_pose_worker_runs_at_its_own_lower_priority():
    import os
    seen = {}
    pipe = TimedPipeline(dense_s=0.01, pose_s=0.05)
    dense, pose = pipe.process_dense, pipe.process_pose

    def nice_of_caller(key, fn):
        def wrapped(*a, **kw):
            seen.setdefault(key, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return fn(*a, **kw)
        return wrapped
    pipe.process_dense, pipe.process_pose = nice_of_caller('dense', dense), nice_of_caller('pose', pose)
    stream = EventStream(window_mode='count', window_count=2000, capacity_events=100_000)
    stream.key = ('evt3', 64, 48)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    runner = PipelineRunner(pipe, stream, Sink(), lambda w, h: (np.eye(3), 'fallback'), nice=base + 2,
                            pose_nice=base + 6)
    runner.start()
    try:
        feed(stream, runner, 5, 0.05)
        assert wait(lambda: 'pose' in seen)
    finally:
        runner.stop(timeout=2.0)
    assert seen['dense'] == min(base + 2, 19) and seen['pose'] == min(base + 6, 19)


def _capped_then_lifted(stream, runner, cap, rate, calls, at_lift=lambda: None):
    """Run with the runner's ``cap`` attribute at ``rate`` over 1.5 s of windows at 20 Hz, lift it while running and
    feed 1 s more; returns (steps while capped, steps after, ``at_lift()`` taken when the cap is lifted). ``calls``
    is the stand-in pipeline's list of the capped worker's steps."""
    setattr(runner, cap, rate)
    assert runner.diagnostics()[cap] == rate
    runner.start()
    try:
        feed(stream, runner, 30, 0.05)
        capped, seen = len(calls), at_lift()
        setattr(runner, cap, 0.0)                          # lifted while running
        feed(stream, runner, 20, 0.05, t0=10**10)
        uncapped = len(calls) - capped
    finally:
        runner.stop(timeout=2.0)
    return capped, uncapped, seen


def test_pose_rate_cap_takes_the_newest_tokens_and_can_change_while_running():
    pipe = TimedPipeline(dense_s=0.005, pose_s=0.01)
    stream, sink, runner = make(pipe)
    capped, uncapped, _ = _capped_then_lifted(stream, runner, 'pose_max_rate_hz', 4.0, pipe.pose_calls)
    assert 4 <= capped <= 8                                # ~4 Hz over 1.5 s (the first step starts at once)
    starts = np.diff(pipe.pose_calls[:capped])
    assert uncapped >= 12                                  # without the cap about one step per window
    assert runner.diagnostics()['pose_inputs_replaced'] >= 15
    assert np.all(starts > 0)                              # always a newer window, never a stale one


def test_dense_rate_cap_takes_the_newest_window_counts_the_rest_and_can_change_while_running():
    """dense.max_rate_hz: at most that many dense steps per second, each on the newest window (the skipped ones
    counted as windows_dropped); the pose worker still gets the tokens of every dense step; lifted while running."""
    pipe = TimedPipeline(dense_s=0.005, pose_s=0.005)
    stream, sink, runner = make(pipe)
    capped, uncapped, at_lift = _capped_then_lifted(
        stream, runner, 'dense_max_rate_hz', 5.0, pipe.dense_calls,
        lambda: (stream.counters.snapshot().get('windows_dropped', 0), len(pipe.pose_calls)))
    dropped, pose_capped = at_lift
    assert 6 <= capped <= 10                               # ~5 Hz over 1.5 s (the first step starts at once)
    assert dropped >= 30 - capped - 3                      # what it skipped is counted, not hidden
    assert np.all(np.diff(pipe.dense_calls[:capped]) > 0)  # the newest window each time
    assert capped - 1 <= pose_capped <= capped             # pose steps on the tokens the dense steps handed over
    assert uncapped >= 15                                  # without the cap about one step per window


@pytest.mark.slow
@pytest.mark.parametrize('decoupled', [True, False])
def test_each_window_computes_what_the_sink_wants_now(decoupled):
    """The dense worker asks the sink before every window which dense outputs have a receiver and passes that to
    the pipeline (both designs); a change while running applies from the next window; diagnostics name it."""
    pipe = TimedPipeline(dense_s=0.01, pose_s=0.01)
    stream, sink, runner = make(pipe, decoupled=decoupled)
    sink.wanted = frozenset({'semantic', 'depth'})
    runner.start()
    try:
        feed(stream, runner, 3, 0.05)
        assert wait(lambda: len(pipe.dense_calls) >= 2)
        assert runner.diagnostics()['dense_outputs'] == 'depth,semantic'
        sink.wanted = frozenset()
        n = len(pipe.dense_calls)
        feed(stream, runner, 3, 0.05, t0=2 * 10**9)
        assert wait(lambda: len(pipe.dense_calls) >= n + 2)
        assert runner.diagnostics()['dense_outputs'] == 'none'
        sink.wanted = None
        n = len(pipe.dense_calls)
        feed(stream, runner, 3, 0.05, t0=3 * 10**9)
        assert wait(lambda: len(pipe.dense_calls) >= n + 2)
    finally:
        assert runner.stop(timeout=2.0)
    asked = pipe.dense_outputs
    assert asked[0] == frozenset({'semantic', 'depth'}) and frozenset() in asked and asked[-1] is None
    assert asked.index(frozenset()) < len(asked) - 1 and runner.diagnostics()['dense_outputs'] == 'all'


def test_real_pipeline_in_the_runner(tmp_path):
    from realm_ros.pipeline import PipelineConfig, RealmPipeline
    from realm_ros.pipeline.tiny import write_random_tiny_checkpoints
    ck = write_random_tiny_checkpoints(tmp_path)
    pipe = RealmPipeline(PipelineConfig(realm_checkpoint=ck['realm'], dune_checkpoint=ck['dune'],
                                        depth_head_checkpoint=ck['depth_head'], seg_head_checkpoint=ck['seg_head'],
                                        mast3r_checkpoint=ck['mast3r'], match_subsample=16, pnp_iterations=100))
    stream, sink, runner = make(pipe)
    runner.start()
    try:
        feed(stream, runner, 6, 0.2)
        assert wait(lambda: len(sink.pose_out) >= 2 and len(sink.dense_out) >= 3, 60)
    finally:
        runner.stop(timeout=5)
    assert pipe.diagnostics()['keyframes'] >= 1
    d = runner.diagnostics()                 # steps after the first had a keyframe: the gate measured them
    assert -1.0 <= d['pose_view_similarity_p10'] <= d['pose_view_similarity_p50'] <= 1.0
    assert d['pose_view_similarity_min'] == -1.0            # random decoder, no calibrated gates: nothing rejected


def test_diagnostics_report_the_appearance_gate_measure_and_threshold():
    pipe = TimedPipeline(dense_s=0.01, pose_s=0.01)
    pipe.similarities = [0.90, 0.99, 0.95, 0.97, 0.98]
    stream, sink, runner = make(pipe)
    assert np.isnan(runner.diagnostics()['pose_view_similarity_p50'])      # nothing measured yet
    assert run_until(stream, runner, 12, 0.03, lambda: len(pipe.pose_calls) >= 6)
    d = runner.diagnostics()
    assert d['pose_view_similarity_p50'] == pytest.approx(0.97)
    assert d['pose_view_similarity_p10'] == pytest.approx(np.percentile([0.90, 0.99, 0.95, 0.97, 0.98], 10))
    assert d['pose_view_similarity_min'] == 0.96


@pytest.mark.skipif(not __import__('torch').cuda.is_available(), reason='needs a CUDA device')
def test_dense_and_pose_workers_share_one_cuda_device(tmp_path):
    """Both workers on one GPU at once (two host threads issuing kernels): outputs of both kinds arrive."""
    from realm_ros.pipeline import PipelineConfig, RealmPipeline
    from realm_ros.pipeline.tiny import build_random_tiny_modules
    pipe = RealmPipeline.from_modules(build_random_tiny_modules(), PipelineConfig(device='cuda', match_subsample=8))
    assert pipe.device.type == 'cuda'
    stream, sink, runner = make(pipe)
    runner.start()
    try:
        feed(stream, runner, 30, 0.03)
        assert wait(lambda: len(sink.pose_out) >= 3 and len(sink.dense_out) >= 10, 60)
    finally:
        runner.stop(timeout=5)
    assert runner.diagnostics()['processing_errors'] == 0


def test_pose_worker_swaps_stale_tokens_for_the_next_window():
    """Tokens that waited more than half the interval between windows are exchanged for the next window's when it
    arrives within that interval; fresh tokens are taken at once; with the option off nothing is exchanged."""
    def inp(i):
        return PoseInput(stamp_ns=i, tokens=None, cls=None, K_model=np.eye(3), picture=np.zeros((1, 1, 3), np.uint8))
    stream, sink, runner = make(TimedPipeline())
    for i in range(3):                                     # the interval between posts is measured
        runner._post_pose_input(inp(i), 'cam')
        time.sleep(0.02)
    assert 0.015 < runner._post_interval_s < 0.5
    runner._post_interval_s = 0.2                          # windows every 200 ms from here on
    with runner._mailbox_lock:
        runner._mailbox = None
    stale = (inp(2), 'cam', time.monotonic() - 0.15)       # waited 150 ms: more than half the interval
    threading.Timer(0.005, runner._post_pose_input, args=(inp(3), 'cam')).start()
    assert runner._take_fresh(stale)[0].stamp_ns == 3 and runner.counters.get('pose_inputs_waited') == 1
    runner._post_interval_s = 0.2
    fresh = (inp(4), 'cam', time.monotonic() - 0.05)       # taken as it is, no wait
    t0 = time.monotonic()
    assert runner._take_fresh(fresh)[0].stamp_ns == 4 and time.monotonic() - t0 < 0.05
    with runner._mailbox_lock:
        runner._mailbox = None
    t0 = time.monotonic()                                  # stale, no newer window: kept after the wait (100 ms)
    assert runner._take_fresh(stale)[0].stamp_ns == 2 and 0.05 < time.monotonic() - t0 < 1.0
    runner.pose_wait_fresh = False
    assert runner._take_fresh(stale)[0].stamp_ns == 2
    assert runner.counters.get('pose_inputs_waited') == 1


def test_published_poses_have_their_own_rate_and_latency():
    pipe = TimedPipeline(dense_s=0.01, pose_s=0.05)
    pipe.pose_value = 'estimate'
    stream, sink, runner = make(pipe)
    assert run_until(stream, runner, 10, 0.05, lambda: len(sink.pose_out) >= 3)
    d = runner.diagnostics()
    assert d['pose_published_rate_hz'] > 0 and d['pose_published_rate_hz'] == pytest.approx(d['pose_rate_hz'], rel=0.05)
    assert d['pose_published_latency_ms_p50'] == pytest.approx(d['pose_latency_ms_p50'], rel=0.02)


def test_stop_ends_the_wait_for_fresh_tokens_at_once():
    stream, sink, runner = make(TimedPipeline())
    runner._post_interval_s = 1.0                          # the next window would be due in up to 1.25 s
    stale = (PoseInput(stamp_ns=1, tokens=None, cls=None, K_model=np.eye(3), picture=np.zeros((1, 1, 3), np.uint8)),
             'cam', time.monotonic() - 0.6)
    threading.Timer(0.05, runner.signal_stop).start()
    t0 = time.monotonic()
    assert runner._take_fresh(stale)[0].stamp_ns == 1
    assert time.monotonic() - t0 < 0.5


def test_prepare_workers_compiles_the_pose_kernels_and_sets_the_threads():
    """What the node (and bench_pipeline) run at configure: with the pose head the Sampson refinement is compiled
    before the first step, and each worker gets the thread count ``torch_threads_for`` gives (restored after)."""
    import torch

    from realm_ros.geometry import _sampson_jit
    from realm_ros.pipeline import PipelineConfig, RealmPipeline
    from realm_ros.pipeline.runner import prepare_workers
    from realm_ros.pipeline.tiny import build_random_tiny_modules
    pipe = RealmPipeline.from_modules(build_random_tiny_modules(), PipelineConfig(device='cpu'))
    before = torch.get_num_threads()
    try:
        assert prepare_workers(pipe, 3) == 3 and torch.get_num_threads() == 3
        assert prepare_workers(pipe, 0, decoupled=True) == torch_threads_for(0, 'cpu', 2)
        if _sampson_jit.HAVE_NUMBA:
            assert len(_sampson_jit.refine_sampson.signatures) >= 1
    finally:
        use_inference_threads(before)
