"""Training data path and step throughput, with baselines measured in the same run.

    python benchmarks/bench_training.py [--seconds 1.0] [--size 224] [--samples 20] [--steps 6]

1. Bag preparation (decode every EventPacket, warp every RGB frame into the event camera): events/s, frames/s.
2. Sample building (voxel grid of the window + crop/resize of voxel grid, warped RGB and coverage):
   prepared memory-mapped dataset vs two baselines - the same windows from events held in RAM (the memmap overhead)
   and a naive loader that re-reads the bag up to each frame (what training without preparation would cost).
3. Training steps of the tiny configuration (teacher ViT 48-d, 2 blocks, at ``--size``): samples/s with data
   loading in the main process vs 2 worker processes, and with the teacher-feature cache filled vs off.

The simulator (realm_ros.sim.write_sim_bag) provides the bag. Times are medians; the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'test'))  # the realm_testing helper package

import torch  # noqa: E402

from realm_ros.training.bag_dataset import (DistillDataset, _normalize_rgb, decode_rgb,  # noqa: E402
                                            prepare_distill_bag, stamp_ns)
from realm_ros.training.config import BagSpec, EventDataConfig  # noqa: E402


def median_ms(fn, n):
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def naive_sample(bag_path, data, stamp, size):
    """Baseline: re-read the bag up to ``stamp``, decode events, take the window, voxelise, crop/resize."""
    from realm_ros.events import EventArray, EventPacketDecoder, voxel_grid
    from realm_ros.events.bagio import iter_bag_messages
    from realm_ros.events.spatial import prepare_input
    dec = EventPacketDecoder()
    chunks, frame = [], None
    for topic, _, _, msg in iter_bag_messages(bag_path, [data.topics.events, data.topics.rgb]):
        if topic == data.topics.events:
            chunks.append(dec.decode_msg(msg))
            h, w = int(msg.height), int(msg.width)
        elif stamp_ns(msg.header) == stamp:
            frame = decode_rgb(msg)
            break
    ev = EventArray.concat(chunks)
    end = int(np.searchsorted(ev.t, stamp, side='right'))
    ev = ev.slice(max(0, end - data.window_count), end)
    grid = voxel_grid(ev, bins=5, height=h, width=w, normalization='dsec')
    prepare_input(grid, size=size, mode='crop')
    rgb = torch.from_numpy(np.array(frame)).permute(2, 0, 1).float() / 255
    _normalize_rgb(prepare_input(rgb, size=size, mode='crop').tensor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seconds', type=float, default=1.0)
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--samples', type=int, default=20)
    ap.add_argument('--steps', type=int, default=6)
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from realm_ros.sim import write_sim_bag
    from realm_testing.training import write_tiny_teacher

    tmp = Path(tempfile.mkdtemp(prefix='bench_training_'))
    try:
        print(f'# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch '
              f'{torch.__version__}, threads {args.threads}, load {os.getloadavg()[0]:.1f}')
        t = time.perf_counter()
        summary = write_sim_bag(tmp / 'bag', seconds=args.seconds, seed=0)
        print(f'simulated bag: {summary.num_events} events, {summary.num_frames} frames '
              f'({time.perf_counter() - t:.1f} s)')
        bag = str(tmp / 'bag')
        data = EventDataConfig(stride=1, window='count', window_count=20_000, min_events=20_000)

        # 1. preparation
        t = time.perf_counter()
        prepared = prepare_distill_bag(BagSpec(bag), data, str(tmp / 'cache'))
        dt = time.perf_counter() - t
        st = prepared.stats
        print(f'1. prepare: {dt:.2f} s = {st["events"] / dt / 1e6:.2f} Mev/s decoded+stored, '
              f'{st["rgb_frames"] / dt:.1f} frames/s warped ({st["pairs"]} pairs)')

        # 2. sample building
        ds = DistillDataset([(prepared, data)], 'train', args.size, 'crop', 5, 'dsec')
        ds[0]  # numba compile
        n = min(args.samples, len(ds))
        mm = median_ms(lambda i: ds[i % len(ds)], n)
        ram = {k: np.array(prepared.array(f'events_{k}')) for k in 'xytp'}
        frames = np.array(prepared.array('frames'))
        valid = torch.from_numpy(np.load(os.path.join(prepared.directory, 'valid.npy'))).float()[None]
        from realm_ros.events import voxel_grid
        from realm_ros.events.spatial import prepare_input

        def in_ram(i):
            k = i % prepared.num_pairs
            s, e = prepared.pairs['start'][k], prepared.pairs['end'][k]
            grid = voxel_grid((ram['x'][s:e], ram['y'][s:e], ram['t'][s:e], ram['p'][s:e]), bins=5,
                              height=prepared.meta['height'], width=prepared.meta['width'])
            prepare_input(grid, size=args.size, mode='crop')
            rgb = torch.from_numpy(frames[prepared.pairs['frame'][k]]).permute(2, 0, 1).float() / 255
            img = prepare_input(torch.cat([rgb, valid], 0), size=args.size, mode='crop').tensor
            _normalize_rgb(img[:, :3])

        ram_ms = median_ms(in_ram, n)
        stamps = prepared.pairs['stamp']
        k_naive = max(1, min(5, n // 4))
        naive_ms = median_ms(lambda i: naive_sample(bag, data, int(stamps[(i * 7) % len(stamps)]), args.size),
                             k_naive)
        print(f'2. sample ({prepared.meta["width"]}x{prepared.meta["height"]} -> {args.size}): prepared memmap '
              f'{mm:.1f} ms | events in RAM {ram_ms:.1f} ms (ratio {mm / ram_ms:.2f}) | naive bag re-read '
              f'{naive_ms:.0f} ms (x{naive_ms / mm:.0f} slower)')

        # 3. training steps
        from realm_ros.training.cli import train_distill
        from realm_ros.training.config import DistillConfig, config_from_dict
        import yaml
        teacher = write_tiny_teacher(tmp / 'teacher.pth', size=args.size)
        base = yaml.safe_load((ROOT / 'config' / 'train_tiny.yaml').read_text())

        def run(name, **over):
            cfg = config_from_dict(DistillConfig, base)
            cfg.bags = [BagSpec(bag)]
            cfg.teacher, cfg.out = str(teacher), str(tmp / name)
            cfg.data.cache_dir = str(tmp / 'cache2')
            cfg.data.image_size = args.size
            cfg.data.window_count = cfg.data.min_events = 20_000
            cfg.optim.epochs, cfg.optim.accumulation, cfg.optim.batch_size = 2, 1, 4
            cfg.run.max_steps = 2 * args.steps
            cfg.run.val_every = 0
            for k, v in over.items():
                sec, _, field = k.partition('__')
                setattr(getattr(cfg, sec), field, v)
            train_distill(cfg)
            import json
            recs = [json.loads(x) for x in open(tmp / name / 'metrics.jsonl')]
            sps = [r['samples_per_s'] for r in recs if r['kind'] == 'train' and r['epoch'] == 1]
            return statistics.median(sps)

        w0 = run('w0', data__num_workers=0)
        w2 = run('w2', data__num_workers=2)
        c_on = run('cache', data__num_workers=0, run__teacher_cache=True)
        print(f'3. tiny training at {args.size}: {w0:.1f} samples/s (loading in the main process) | 2 workers '
              f'{w2:.1f} samples/s (x{w2 / w0:.2f}) | teacher cache {c_on:.1f} samples/s (x{c_on / w0:.2f}; '
              f'second epoch reads the cache)')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
