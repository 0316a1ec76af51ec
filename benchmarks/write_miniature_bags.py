#!/usr/bin/env python3
"""Write more training bags of the miniature world into the recipe's bag dir, with the recipe's bag settings
(seeds ``split_seeds('train', N)``; bags already there are kept), for data-scaling runs of
``bench_distill_curve.py --train-sequences N``.

    . .venv/realm_env.sh
    python benchmarks/write_miniature_bags.py --train-sequences 40          # ~10-15 s per 2 s bag and worker
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from realm_ros.miniature.data import split_seeds
    from realm_ros.miniature.recipe import PRESETS, _write_bag_job, default_work_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--work-dir', type=Path, default=default_work_dir(), help='the recipe work dir')
    ap.add_argument('--train-sequences', type=int, required=True, help='training bags wanted in all')
    ap.add_argument('--workers', type=int, default=2)
    args = ap.parse_args()
    cfg = PRESETS['full']()
    b, bag_dir = cfg.bags, args.work_dir / 'bags'
    if not bag_dir.is_dir():
        raise SystemExit(f'{bag_dir}: no recipe bag dir; run scripts/train_miniature.py first')
    jobs = [(str(bag_dir / f'train_{seed}'), b.seconds, seed, cfg.image_size, b.max_flow_px, b.max_render_dt_us)
            for seed in split_seeds('train', args.train_sequences) if not (bag_dir / f'train_{seed}').is_dir()]
    print(f'{len(jobs)} bag(s) to write into {bag_dir}', flush=True)
    t0 = time.time()
    with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context('fork')) as pool:
        for res in pool.map(_write_bag_job, *zip(*jobs)) if jobs else ():
            print(f'{Path(res["path"]).name}: {res["events"]} events, {res["frames"]} frames, {res["wall_s"]:.0f} s '
                  f'({time.time() - t0:.0f} s)', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
