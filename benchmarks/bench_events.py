"""Event input benchmark: decode rate and decode + voxel latency, against plain numpy baselines in the same run.

    python benchmarks/bench_events.py [--repeat 15] [--cuda]

Measures (single thread; torch.set_num_threads(1), numba kernels are single-threaded):

1. EVT3 decode, dense synthetic stream with vector words (Gen4.1-like ~3 bytes/event), Mev/s.
2. EVT3 decode of the real recording test/data/ecpy_test_events_1 (517 packets, Gen3 VGA, no vectors): whole
   stream and packet by packet (what a subscriber does), Mev/s.
3. Decode + 5-bin DSEC-normalised voxel grid of a 150,000-event window on the CPU (real and dense data), ms; and
   the perception node's event path at full speed (per-packet decode + window scheduler in one thread, window
   voxel grids in another, as the node runs them), sustained Mev/s against the same work in one thread; and the
   node's stream intake of the recorded packets: ``EventStream.push`` per packet against ``push_batch`` of 10
   (the packet intake's batches), us per packet.
4. With CUDA: voxel grid of 150k events on the GPU including the host-to-device copy, ms.

Baselines: a vectorised plain-numpy EVT3 decoder (forward-filled state, np.unpackbits for vector masks; checked to
give identical events) and a numpy voxel grid (np.bincount scatter, numpy normalisation). Times are the minimum
over ``--repeat`` runs (the median is printed too): the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from realm_ros.events import EventArray, encode_evt3, make_decoder, voxel_grid  # noqa: E402
from realm_ros.events.bagio import iter_bag_messages, read_raw_evt3  # noqa: E402
from realm_ros.pipeline.stream import EventStream  # noqa: E402

BAG = ROOT / 'test' / 'data' / 'ecpy_test_events_1_evt3'
RAW = ROOT / 'test' / 'data' / 'ecpy_test_events_1.raw'


# ------------------------------------------------------------------------------------------------ baselines
def _ffill(mask: np.ndarray) -> np.ndarray:
    """Index of the last position <= i where mask is set (0 if none)."""
    idx = np.where(mask, np.arange(len(mask)), 0)
    np.maximum.accumulate(idx, out=idx)
    return idx


def numpy_decode_evt3(payload: np.ndarray, width: int, height: int) -> EventArray:
    """Plain vectorised numpy EVT3 decoder for one whole stream (start-up, wraps, vectors; no error counting)."""
    w = payload[:len(payload) // 2 * 2].view('<u2').astype(np.int64)
    ty = w >> 12
    v = w & 0xFFF
    is_th, is_tl = ty == 8, ty == 6
    first_th = int(np.argmax(is_th))
    after = np.nonzero(is_tl[first_th:])[0]
    start = first_th + int(after[0]) + 1
    # time high with rollover: count decreases of more than 10 units between successive TIME_HIGH words
    th_pos = np.nonzero(is_th)[0]
    th_val = v[th_pos]
    drops = np.zeros(len(th_val), np.int64)
    d = th_val[:-1] - th_val[1:]
    drops[1:] = np.cumsum(d > 10)
    th_full = (th_val << 12) + (drops << 24)
    th_at = np.zeros(len(w), np.int64)
    th_at[th_pos] = th_full
    th_at = th_at[_ffill(is_th)]
    tl_at = v[_ffill(is_tl)]
    t_at = (th_at | tl_at) * 1000
    is_y = ty == 0
    y_at = (v & 0x7FF)[_ffill(is_y)]
    valid = np.arange(len(w)) >= start
    # plain CD events
    xm = (ty == 2) & valid
    xi = np.nonzero(xm)[0]
    x_ev, y_ev, t_ev, p_ev, key = v[xi] & 0x7FF, y_at[xi], t_at[xi], (v[xi] >> 11) & 1, xi * 16
    # vector words: base from the last VECT_BASE_X plus 12 / 8 per vector word since then
    is_b = ty == 3
    is_v = ((ty == 4) | (ty == 5)) & valid
    step = np.where(ty == 4, 12, np.where(ty == 5, 8, 0))
    cum = np.cumsum(step)
    bidx = _ffill(is_b)
    base = (v[bidx] & 0x7FF) + (cum - step) - cum[bidx]
    vi = np.nonzero(is_v)[0]
    masks = np.where(ty[vi] == 4, v[vi], v[vi] & 0xFF).astype('<u2')
    bits = np.unpackbits(masks.view(np.uint8).reshape(-1, 2), axis=1, bitorder='little')[:, :12]
    r, c = np.nonzero(bits)
    wv = vi[r]
    vx = base[wv] + c
    vpol = (v[bidx[wv]] >> 11) & 1
    allx = np.concatenate([x_ev, vx])
    ally = np.concatenate([y_ev, y_at[wv]])
    allt = np.concatenate([t_ev, t_at[wv]])
    allp = np.concatenate([p_ev, vpol])
    allk = np.concatenate([key, wv * 16 + c])
    ok = (allx < width) & (ally < height)
    order = np.argsort(allk[ok], kind='stable')
    return EventArray(allx[ok][order].astype(np.uint16), ally[ok][order].astype(np.uint16), allt[ok][order],
                      allp[ok][order].astype(np.uint8))


def numpy_voxel_dsec(ev: EventArray, bins: int, h: int, w: int, normalize: bool = True) -> np.ndarray:
    """Plain numpy voxel grid (bincount scatter) with DSEC normalisation."""
    t = ev.t
    dT = max(1, int(t[-1] - t[0]))
    ts = (t - t[0]).astype(np.float64) * (bins - 1) / dT
    b = ts.astype(np.int64)
    frac = ts - b
    val = ev.p.astype(np.float64) * 2 - 1
    pix = ev.y.astype(np.int64) * w + ev.x
    idx = np.concatenate([b * h * w + pix, np.minimum(b + 1, bins - 1) * h * w + pix])
    wts = np.concatenate([val * (1 - frac), np.where(b + 1 < bins, val * frac, 0.0)])
    grid = np.bincount(idx, wts, minlength=bins * h * w).astype(np.float32)
    if not normalize:
        return grid.reshape(bins, h, w)
    nz = grid != 0
    vals = grid[nz].astype(np.float64)
    if len(vals) > 1:
        std = vals.std(ddof=1)
        grid[nz] = ((vals - vals.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return grid.reshape(bins, h, w)


# ------------------------------------------------------------------------------------------------ data
def dense_vector_stream(kind: str = 'edges', n_target: int = 2_000_000, seed: int = 0) -> Tuple[bytes, int]:
    """Synthetic 1280x720 EVT3 with vector words.

    Each microsecond a number of rows fire; a row is either a 32-pixel group (VECT_BASE_X + VECT_12 + VECT_12 +
    VECT_8, like Prophesee Gen4.1 sensors emit) with about half of its pixels set, or a single pixel (ADDR_Y + ADDR_X).
    ``kind='gen41'``: 5 % groups, 6 rows/us: ~2.6 bytes/event with vector-word counts in the proportions of the
    Gen4.1 EVK3 sample in docs/formats.md#evt3 (2.8 bytes/event). ``kind='edges'``: 30 % groups, 12 rows/us: ~0.9
    bytes/event, a saturated sensor looking at strong edges.
    """
    pv, dens, rows = {'gen41': (0.05, 0.5, 6), 'edges': (0.3, 0.6, 12)}[kind]
    rng = np.random.default_rng(seed)
    xs, ys, ts, ps = [], [], [], []
    n = 0
    t = 1_000
    while n < n_target:
        for row in rng.integers(0, 720, rows):
            if rng.random() < pv:
                cols = int(rng.integers(0, 1280 - 32)) + np.nonzero(rng.random(32) < dens)[0]
                if len(cols) == 0:
                    continue
            else:
                cols = rng.integers(0, 1280, 1)
            xs.append(cols)
            ys.append(np.full(len(cols), row))
            ts.append(np.full(len(cols), t))
            ps.append(np.full(len(cols), int(rng.integers(0, 2))))
            n += len(cols)
        t += 1
    x, y, tt, p = (np.concatenate(a) for a in (xs, ys, ts, ps))
    return encode_evt3(x, y, tt, p, vectorize=True), len(x)


CLOCK = time.perf_counter


def timed(fn: Callable[[], object], repeat: int) -> Tuple[float, float]:
    """(min, median) seconds of ``fn`` on CLOCK (wall, or this thread's CPU time with --cpu-time)."""
    fn()  # warm-up (numba load / compile, allocator)
    ts: List[float] = []
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        ts.append(CLOCK() - t0)
    return min(ts), statistics.median(ts)


def payload_for_events(payload: np.ndarray, n_events: int, width: int, height: int) -> np.ndarray:
    """Prefix of a stream that decodes to at least ``n_events`` events (whole words)."""
    w = payload[:len(payload) // 2 * 2]
    lo, hi = 2, len(w) // 2
    while lo < hi:
        mid = (lo + hi) // 2
        if len(make_decoder('evt3', width, height).decode(w[:2 * mid]).events) >= n_events:
            hi = mid
        else:
            lo = mid + 1
    return np.ascontiguousarray(w[:2 * lo])


def node_data_path(packets: List[np.ndarray], width: int, height: int, replays: int, threaded: bool,
                   window: int = 150_000) -> Dict[str, float]:
    """The perception node's event path at full speed, without ROS: per-packet decode + ``WindowScheduler.push``
    (the subscription callback) and ``next_window`` + ``voxel_grid(out=)`` (the worker before the model).

    ``threaded``: producer and consumer in two threads, as in the node (the numba kernels release the GIL);
    otherwise both in this thread, one after the other (the baseline). The recording is replayed ``replays`` times
    with fresh decoders and times shifted past the previous replay, so the stream stays time-ordered.
    """
    import threading

    from realm_ros.pipeline.windows import WindowScheduler

    sched = WindowScheduler('count', count=window, capacity_events=4 * window)
    grid = torch.empty(5 * height * width)
    wake = threading.Event()
    done = threading.Event()
    stats = {'events': 0, 'windows': 0, 'skipped': 0, 'producer_cpu_s': 0.0, 'consumer_cpu_s': 0.0}

    def produce_one(dec: object, p: np.ndarray, shift: int) -> None:
        ev = dec.decode(p).events
        if shift and len(ev):
            ev = EventArray._trusted(ev.x, ev.y, ev.t + shift, ev.p)
        stats['events'] += len(ev)
        sched.push(ev)

    def consume_ready() -> bool:
        win = sched.next_window()
        if win is None:
            return False
        voxel_grid(win.events, 5, height, width, normalization='dsec', out=grid)
        stats['windows'] += 1
        stats['skipped'] += win.skipped
        return True

    first = make_decoder('evt3', width, height)
    ts = [first.decode(p).events.t for p in packets]
    ts = [t for t in ts if len(t)]
    span = int(ts[-1][-1] - ts[0][0]) + 1000

    def producer() -> None:
        c0 = time.thread_time()
        for r in range(replays):
            dec = make_decoder('evt3', width, height)
            for p in packets:
                produce_one(dec, p, r * span)
                if threaded:
                    wake.set()
                else:
                    consume_ready()
        stats['producer_cpu_s'] = time.thread_time() - c0
        done.set()
        wake.set()

    def consumer() -> None:
        c0 = time.thread_time()
        while True:
            wake.clear()                 # before looking, so that a push after the look still wakes us
            if consume_ready():
                continue
            if done.is_set():
                while consume_ready():
                    pass
                break
            wake.wait(0.01)
        stats['consumer_cpu_s'] = time.thread_time() - c0

    t0 = time.perf_counter()
    if threaded:
        th = threading.Thread(target=consumer)
        th.start()
        producer()
        th.join()
    else:
        producer()
    stats['wall_s'] = time.perf_counter() - t0
    return stats


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeat', type=int, default=15)
    ap.add_argument('--cuda', action='store_true', help='also run the CUDA voxel benchmark (if available)')
    ap.add_argument('--cpu-time', action='store_true',
                    help='time with this thread\'s CPU time instead of wall time (robust on a loaded shared machine)')
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.thread_time
    torch.set_num_threads(1)
    rep = args.repeat
    results: Dict[str, str] = {}
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, '
          f'load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, numpy {np.__version__}, '
          f'clock: {"thread CPU time" if args.cpu_time else "wall"}')

    # 1. dense synthetic evt3 with vectors
    streams = {}
    for kind in ('edges', 'gen41'):
        dense, n_dense = dense_vector_stream(kind)
        dense_arr = np.frombuffer(dense, np.uint8)
        streams[kind] = dense_arr
        types = np.bincount(np.frombuffer(dense, '<u2') >> 12, minlength=16)
        ev_ref = make_decoder('evt3', 1280, 720).decode(dense_arr).events
        ev_np = numpy_decode_evt3(dense_arr, 1280, 720)
        assert len(ev_ref) == n_dense and np.array_equal(ev_np.x, ev_ref.x) and np.array_equal(ev_np.t, ev_ref.t)
        t_nb, m_nb = timed(lambda: make_decoder('evt3', 1280, 720).decode(dense_arr), rep)
        t_np, m_np = timed(lambda: numpy_decode_evt3(dense_arr, 1280, 720), max(3, rep // 3))
        print(f'[dense evt3 "{kind}"] {n_dense} events, {len(dense) / n_dense:.2f} bytes/event, vector words '
              f'{types[3]} base / {types[4]} v12 / {types[5]} v8, {types[2]} ADDR_X')
        print(f'  numba decoder : {n_dense / t_nb / 1e6:8.1f} Mev/s (median {n_dense / m_nb / 1e6:.1f})')
        print(f'  numpy baseline: {n_dense / t_np / 1e6:8.1f} Mev/s   ratio x{t_np / t_nb:.1f}')
        results[f'dense_{kind}'] = f'{n_dense / t_nb / 1e6:.1f}'

    # 2. real recording
    raw = read_raw_evt3(RAW).payload
    payloads = [m.events for _, _, _, m in iter_bag_messages(BAG)]
    n_real = len(make_decoder('evt3', 640, 480).decode(raw).events)

    def per_packet() -> None:
        dec = make_decoder('evt3', 640, 480)
        for p in payloads:
            dec.decode(p)

    t_whole, m_whole = timed(lambda: make_decoder('evt3', 640, 480).decode(raw), rep)
    t_pkt, m_pkt = timed(per_packet, rep)
    t_npr, _ = timed(lambda: numpy_decode_evt3(raw, 640, 480), max(3, rep // 3))
    print(f'[real bag test_events_1] {n_real} events in {len(payloads)} packets, {len(raw) / n_real:.2f} bytes/event')
    print(f'  numba, whole stream : {n_real / t_whole / 1e6:8.1f} Mev/s (median {n_real / m_whole / 1e6:.1f})')
    print(f'  numba, per packet   : {n_real / t_pkt / 1e6:8.1f} Mev/s (median {n_real / m_pkt / 1e6:.1f}, '
          f'{t_pkt / len(payloads) * 1e6:.1f} us/packet)')
    print(f'  numpy baseline      : {n_real / t_npr / 1e6:8.1f} Mev/s   ratio x{t_npr / t_whole:.1f} (whole stream)')
    results['real'] = f'{n_real / t_pkt / 1e6:.1f}'

    # 3. decode + voxel of a 150k-event window on the CPU
    for name, stream, (w, h) in (('real', raw, (640, 480)), ('gen41', streams['gen41'], (1280, 720)),
                                 ('edges', streams['edges'], (1280, 720))):
        win = payload_for_events(stream, 150_000, w, h)

        grid_buffer = torch.empty(5 * h * w)      # the pipeline builds every window's grid in one buffer

        def ours() -> None:
            ev = make_decoder('evt3', w, h).decode(win).events
            voxel_grid(ev, 5, h, w, normalization='dsec', out=grid_buffer)

        def ours_fresh() -> None:
            ev = make_decoder('evt3', w, h).decode(win).events
            voxel_grid(ev, 5, h, w, normalization='dsec')

        def baseline() -> None:
            numpy_voxel_dsec(numpy_decode_evt3(win, w, h), 5, h, w)

        ev = make_decoder('evt3', w, h).decode(win).events
        ref = numpy_voxel_dsec(ev, 5, h, w, normalize=False)
        np.testing.assert_allclose(voxel_grid(ev, 5, h, w, normalization='none').numpy(), ref, atol=1e-5)
        t_v, _ = timed(lambda: voxel_grid(ev, 5, h, w), rep)
        t_vt, _ = timed(lambda: voxel_grid(ev, 5, h, w, backend='torch'), max(3, rep // 3))
        t_o, m_o = timed(ours, rep)
        t_f, _ = timed(ours_fresh, rep)
        t_d, _ = timed(lambda: make_decoder('evt3', w, h).decode(win), rep)
        t_b, _ = timed(baseline, max(3, rep // 3))
        print(f'[decode + voxel 150k, CPU, {name} {w}x{h}] {len(ev)} events: {t_o * 1e3:.2f} ms '
              f'(median {m_o * 1e3:.2f}; decode {t_d * 1e3:.2f} ms, voxel {t_v * 1e3:.2f} ms) = '
              f'{len(ev) / t_o / 1e6:.1f} Mev/s; numpy baseline {t_b * 1e3:.2f} ms, ratio x{t_b / t_o:.1f}; '
              f'torch-backend voxel on CPU {t_vt * 1e3:.2f} ms; with a fresh grid per window {t_f * 1e3:.2f} ms')
        results[f'voxel_{name}'] = f'{t_o * 1e3:.2f}'

    # 3b. the node's data path at full speed: decode thread + window/voxel thread (as in the perception node), for
    # the packets as recorded (a quiet scene: 664 events per packet) and for the same bytes cut into ~50k-event
    # packets (what a driver that sends 1 ms packets publishes at 50 Mev/s)
    n_raw = len(raw) // 2 * 2
    big = [raw[i:min(i + 330_000, n_raw)] for i in range(0, n_raw, 330_000)]
    for label, key, packets in (('recorded packets (664 ev)', 'node_path_small', payloads),
                                ('~50k-event packets', 'node_path', big)):
        node_data_path(packets, 640, 480, 1, True)   # warm-up
        seq = min((node_data_path(packets, 640, 480, 6, False) for _ in range(3)), key=lambda r: r['wall_s'])
        par = min((node_data_path(packets, 640, 480, 6, True) for _ in range(3)), key=lambda r: r['wall_s'])
        rate = par['events'] / par['wall_s'] / 1e6
        print(f'[node data path, real 640x480, {label}, x6, 150k windows] {rate:.1f} Mev/s sustained with decode '
              f'and voxel in two threads ({par["windows"]} windows, {par["skipped"]} skipped; CPU: producer '
              f'{par["producer_cpu_s"] * 1e3:.0f} ms, consumer {par["consumer_cpu_s"] * 1e3:.0f} ms, wall '
              f'{par["wall_s"] * 1e3:.0f} ms); one thread {seq["events"] / seq["wall_s"] / 1e6:.1f} Mev/s, '
              f'ratio x{seq["wall_s"] / par["wall_s"]:.2f}')
        results[key] = f'{rate:.1f}'

    # 3c. the perception node's stream intake (validation, decoding, time sync, window buffer) of the recorded
    # packets: one EventStream.push per packet (the node before batching) against push_batch of the intake's batches
    messages = [m for _, _, _, m in iter_bag_messages(BAG)]

    def stream_intake(batch: int) -> None:
        stream = EventStream(window_mode='time', window_duration_ns=34_000_000)
        for i in range(0, len(messages), batch):
            if batch == 1:
                stream.push(messages[i])
            else:
                stream.push_batch(messages[i:i + batch])
            stream.next_window()
    per_packet_s, per_packet_m = timed(lambda: stream_intake(1), rep)
    batched_s, batched_m = timed(lambda: stream_intake(10), rep)
    n_msgs = len(messages)
    print(f'[stream intake, real 640x480, {n_msgs} packets] push per packet {per_packet_s / n_msgs * 1e6:.1f} us '
          f'(median {per_packet_m / n_msgs * 1e6:.1f}); push_batch of 10 {batched_s / n_msgs * 1e6:.1f} us (median '
          f'{batched_m / n_msgs * 1e6:.1f}) per packet, ratio x{per_packet_s / batched_s:.2f}')
    results['stream_intake_us'] = f'{batched_s / n_msgs * 1e6:.1f}'

    # 4. CUDA voxel grid including the host->device copy
    if torch.cuda.is_available():
        ev = make_decoder('evt3', 640, 480).decode(payload_for_events(raw, 150_000, 640, 480)).events

        def gpu() -> None:
            voxel_grid(ev, 5, 480, 640, normalization='dsec', device='cuda')
            torch.cuda.synchronize()

        def gpu_numpy_baseline() -> None:
            # plain approach: four separate pageable copies, then the same device arithmetic
            for a in (ev.x, ev.y, ev.t, ev.p):
                torch.from_numpy(a.astype(np.int64)).to('cuda')
            torch.cuda.synchronize()

        clock, CLOCK = CLOCK, time.perf_counter  # GPU work is not thread CPU time
        t_g, m_g = timed(gpu, max(rep, 30))
        t_copy4, _ = timed(gpu_numpy_baseline, max(rep, 30))
        t_c, _ = timed(lambda: voxel_grid(ev, 5, 480, 640), rep)
        CLOCK = clock
        print(f'[voxel 150k, CUDA {torch.cuda.get_device_name(0)}] {t_g * 1e3:.3f} ms incl. H2D copy '
              f'(median {m_g * 1e3:.3f}); four plain copies alone {t_copy4 * 1e3:.3f} ms; CPU numba '
              f'{t_c * 1e3:.2f} ms, ratio x{t_c / t_g:.1f}')
        results['cuda'] = f'{t_g * 1e3:.3f}'
    elif args.cuda:
        print('[voxel 150k, CUDA] skipped: no CUDA device')
    print('summary ' + ' '.join(f'{k}={v}' for k, v in results.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
