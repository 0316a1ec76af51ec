"""Simulator benchmark: renderer, ESIM event model, whole-rig throughput and bag writing, against baselines in the
same run.

    python benchmarks/bench_sim.py [--width 224 --height 224] [--seconds 0.5] [--repeat 5]

Measures (single thread; numba kernels are serial):

1. Renderer: ms per frame (luminance only, and with RGB), over 10 poses of a 224 x 224 street sequence, CPU time.
2. ESIM step: numba kernel vs a vectorised plain-numpy implementation of the same crossing rule (np.repeat over
   crossings; checked to give identical events), ms per frame interval, on consecutive renders of the sequence.
3. Whole rig: simulated seconds per wall second (baseline: real time), renders per second, event rate.
4. Bag writing (write_sim_bag, sqlite3): x real time and bytes per event.

Times are the minimum over ``--repeat`` runs (the machine may be shared); CPU time (process_time) is reported next to
wall time because other processes may compete for the cores.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realm_ros.sim import SimConfig, Simulator, write_sim_bag  # noqa: E402
from realm_ros.sim.esim import EsimConfig, EsimEventGenerator  # noqa: E402


def numpy_esim_step(L_prev, L_new, ref, c_pos, c_neg, t_prev_us, dt_us):
    """Baseline: the same crossing rule as EsimEventGenerator (no refractory), vectorised with numpy."""
    d = L_new - L_prev
    up = d > 1e-6
    down = d < -1e-6
    c = np.where(up, c_pos, c_neg)
    k_lo = np.where(up, np.maximum(1, np.floor((L_prev - ref) / c).astype(np.int64) + 1),
                    np.maximum(1, np.floor((ref - L_prev) / c).astype(np.int64) + 1))
    k_hi = np.where(up, np.floor((L_new - ref) / c), np.floor((ref - L_new) / c)).astype(np.int64)
    n = np.where(up | down, np.maximum(k_hi - k_lo + 1, 0), 0)
    idx = np.repeat(np.arange(len(d)), n)
    first = np.cumsum(n) - n
    k = np.arange(len(idx)) - np.repeat(first, n) + np.repeat(k_lo, n)
    pol = np.where(up[idx], 1.0, -1.0)
    level = ref[idx] + pol * k * c[idx]
    frac = np.clip((level - L_prev[idx]) / d[idx], 0.0, 1.0)
    t = t_prev_us + np.maximum(np.ceil(frac * dt_us).astype(np.int64), 1)
    has = n > 0
    last_k = k_lo + n - 1
    ref = ref.copy()
    ref[has] = ref[has] + np.where(up[has], 1.0, -1.0) * last_k[has] * c[has]
    order = np.argsort(t, kind='stable')
    return idx[order], t[order], (pol[order] > 0).astype(np.uint8), ref


def best(fn, repeat):
    walls, cpus = [], []
    out = None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--width', type=int, default=224)
    ap.add_argument('--height', type=int, default=224)
    ap.add_argument('--seconds', type=float, default=0.5)
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    print(f'machine: {platform.platform()}, python {platform.python_version()}, {args.width}x{args.height}')
    cfg = SimConfig(seed=args.seed, width=args.width, height=args.height, duration_s=max(args.seconds, 1.0))
    sim = Simulator(cfg)
    r = sim.event_renderer
    poses = [sim.pose_event(t) for t in np.linspace(0, 0.9e9, 10)]
    r.render(poses[0])                                           # JIT / cache load
    w, c, _ = best(lambda: [r.render(T, want_rgb=False) for T in poses], args.repeat)
    print(f'render luminance: {w / 10 * 1e3:.2f} ms/frame wall, {c / 10 * 1e3:.2f} ms/frame CPU')
    w, c, _ = best(lambda: [r.render(T, want_rgb=True) for T in poses], args.repeat)
    print(f'render RGB+luminance: {w / 10 * 1e3:.2f} ms/frame wall, {c / 10 * 1e3:.2f} ms/frame CPU')

    # ESIM: 20 consecutive 1 ms renders
    grays = [sim.render_event_camera(int(k * 1e6)).gray for k in range(21)]
    esim_cfg = EsimConfig()

    def run_numba():
        g = EsimEventGenerator(cfg.width, cfg.height, esim_cfg, seed=1)
        g.reset(grays[0], 0)
        return [g.step(grays[k], 1000 * k) for k in range(1, 21)]

    def run_numpy():
        g = EsimEventGenerator(cfg.width, cfg.height, esim_cfg, seed=1)
        ref = g.log_image(grays[0])
        L_prev = ref.copy()
        outs = []
        for k in range(1, 21):
            L = g.log_image(grays[k])
            idx, t, p, ref = numpy_esim_step(L_prev, L, ref, g.c_pos, g.c_neg, 1000 * (k - 1), 1000.0)
            outs.append((idx, t, p))
            L_prev = L
        return outs

    run_numba()
    wn, cn, ev_numba = best(run_numba, args.repeat)
    wp, cp, ev_numpy = best(run_numpy, args.repeat)
    n_ev = sum(len(e) for e in ev_numba)
    same = all(np.array_equal(e.t, t * 1000) and np.array_equal(e.y.astype(np.int64) * cfg.width + e.x, i)
               and np.array_equal(e.p, p) for e, (i, t, p) in zip(ev_numba, ev_numpy))
    print(f'ESIM step ({n_ev / 20:.0f} events per 1 ms interval): numba {wn / 20 * 1e3:.3f} ms, numpy baseline '
          f'{wp / 20 * 1e3:.3f} ms, speed-up x{wp / wn:.1f} (identical events: {same})')

    # whole rig
    rig_cfg = cfg.with_(duration_s=args.seconds)

    def run_rig():
        s = Simulator(rig_cfg)
        n = renders = 0
        for ch in s.stream():
            n += len(ch.events)
            renders += ch.renders
        return n, renders

    w, c, (n, renders) = best(run_rig, max(1, args.repeat // 2))
    print(f'rig: {args.seconds} s simulated in {w:.2f} s wall / {c:.2f} s CPU -> x{args.seconds / w:.3f} real time '
          f'(CPU x{args.seconds / c:.3f}); {renders} renders ({renders / args.seconds:.0f} per simulated s, '
          f'{c / renders * 1e3:.2f} ms CPU each incl. ESIM); {n / args.seconds / 1e6:.2f} Mev/s')

    with tempfile.TemporaryDirectory() as tmp:
        w0, c0 = time.perf_counter(), time.process_time()
        summary = write_sim_bag(Path(tmp) / 'bag', args.seconds, seed=args.seed,
                                config=SimConfig(width=args.width, height=args.height))
        w, c = time.perf_counter() - w0, time.process_time() - c0
        size = sum(p.stat().st_size for p in (Path(tmp) / 'bag').iterdir())
    print(f'bag: {summary.num_events} events, {summary.num_packets} packets, {size / 1e6:.1f} MB in {w:.2f} s wall / '
          f'{c:.2f} s CPU -> x{args.seconds / w:.3f} real time; {size / max(summary.num_events, 1):.2f} bytes/event '
          f'incl. images and ground truth')


if __name__ == '__main__':
    main()
