"""Command line for the simulator: write simulated ROS 2 bags.

    python -m realm_ros.sim bag OUT --seconds 2 --seed 0 [--width 224 --height 224 --storage mcap ...]
    python -m realm_ros.sim bags OUT_DIR --seeds 0 1 2 3 --seconds 2 --workers 2     # one bag per seed, in parallel

``bags`` writes ``OUT_DIR/sim_seed<seed>`` for every seed with a process pool (the renderer is single-threaded, so
workers scale with cores); existing bags are skipped, so an interrupted run can be resumed.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .bag import STORAGE_PLUGINS, write_sim_bag
from .esim import EsimConfig
from .simulator import SimConfig
from .trajectory import TRAJECTORY_KINDS


def _config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(width=args.width, height=args.height, hfov_deg=args.hfov, rgb_rate_hz=args.rgb_rate,
                     trajectory=args.trajectory, speed_mps=args.speed, motion_scale=args.motion_scale,
                     baseline_m=args.baseline,
                     esim=EsimConfig(contrast_pos=args.contrast, contrast_neg=args.contrast,
                                     background_rate_hz=args.noise_hz, refractory_ns=int(args.refractory_us * 1000)))


def _write(job: tuple) -> str:
    out, seconds, seed, cfg, storage, gt = job
    s = write_sim_bag(out, seconds, seed, config=cfg, storage=storage, ground_truth=gt)
    return (f'{out}: {s.num_events} events ({s.event_rate_mev_s:.2f} Mev/s), {s.num_packets} packets, '
            f'{s.num_frames} frames in {s.wall_time_s:.1f} s')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m realm_ros.sim', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    one = sub.add_parser('bag', help='write one bag')
    one.add_argument('out', type=Path)
    one.add_argument('--seed', type=int, default=0)
    many = sub.add_parser('bags', help='write one bag per seed (parallel)')
    many.add_argument('out_dir', type=Path)
    many.add_argument('--seeds', type=int, nargs='+', required=True)
    many.add_argument('--workers', type=int, default=1)
    for p in (one, many):
        p.add_argument('--seconds', type=float, default=2.0)
        p.add_argument('--width', type=int, default=224)
        p.add_argument('--height', type=int, default=224)
        p.add_argument('--hfov', type=float, default=80.0)
        p.add_argument('--rgb-rate', type=float, default=30.0)
        p.add_argument('--trajectory', choices=TRAJECTORY_KINDS, default='drive')
        p.add_argument('--speed', type=float, default=10.0, help='m/s')
        p.add_argument('--motion-scale', type=float, default=1.0)
        p.add_argument('--baseline', type=float, default=0.0, help='RGB camera offset to the right (m)')
        p.add_argument('--contrast', type=float, default=0.2)
        p.add_argument('--noise-hz', type=float, default=0.0, help='background activity per pixel')
        p.add_argument('--refractory-us', type=float, default=0.0)
        p.add_argument('--storage', choices=STORAGE_PLUGINS, default='sqlite3')
        p.add_argument('--no-ground-truth', action='store_true')
    args = ap.parse_args(argv)
    try:
        cfg = _config(args)
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    gt = not args.no_ground_truth
    if args.cmd == 'bag':
        try:
            print(_write((args.out, args.seconds, args.seed, cfg, args.storage, gt)))
        except (ValueError, FileExistsError) as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 2
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in args.seeds:
        out = args.out_dir / f'sim_seed{seed}'
        if out.exists():
            print(f'{out}: exists, skipped')
            continue
        jobs.append((out, args.seconds, seed, cfg, args.storage, gt))
    if args.workers <= 1:
        for job in jobs:
            print(_write(job), flush=True)
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for line in pool.map(_write, jobs):
                print(line, flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
