#!/usr/bin/env python3
"""Reproduce the shipped miniature REALM (models/mini_*.safetensors + models/miniature_metrics.json) from scratch.

    . .venv/realm_env.sh
    python scripts/train_miniature.py                     # full recipe, about an hour on 2 CPU cores
    python scripts/train_miniature.py --preset toy --out /tmp/mini_toy      # seconds-long smoke run

Stages: teacher -> bags -> heads -> decoder -> distill -> evaluate -> ship (see realm_ros/miniature/recipe.py).
Generated data (bags, test sequences, intermediate checkpoints) goes to --work-dir (default
$REALM_MINIATURE_CACHE or ~/.cache/realm_ros/miniature, never into git); a stage whose inputs and settings are
unchanged is reused, so an interrupted run continues where it stopped (--force STAGE reruns one).

    python scripts/train_miniature.py --adopt models --work-dir /tmp/mini_work   # recalibrate + re-evaluate the
                                                                                # shipped files, no training
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from realm_ros.miniature.recipe import PRESETS, STAGES, default_work_dir, run_recipe

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default='full', help='recipe size (default: full)')
    p.add_argument('--work-dir', default=None, help=f'generated data and intermediate files (default: '
                                                   f'{default_work_dir()})')
    p.add_argument('--out', default=str(REPO / 'models'), help='where the shipped files go (default: models/)')
    p.add_argument('--stages', nargs='+', default=list(STAGES), choices=STAGES,
                   help='stages to run (earlier stages are reused from the work dir when up to date)')
    p.add_argument('--force', nargs='*', default=[], choices=STAGES, help='rerun these stages even if up to date')
    p.add_argument('--adopt', default=None, metavar='DIR',
                   help='take the training stages from the files shipped in DIR (e.g. models/, checked against its '
                        'miniature_metrics.json), then run the rest: recalibrate / re-evaluate without retraining')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: the preset, 2)')
    p.add_argument('--device', default=None, help="torch device (default 'cpu'; the shipped run used the CPU)")
    args = p.parse_args(argv)

    cfg = PRESETS[args.preset]()
    if args.threads:
        cfg.threads = args.threads
    if args.device:
        cfg.device = args.device
    t0 = time.time()

    def log(msg: str) -> None:
        print(f'[{time.time() - t0:7.1f} s] {msg}', flush=True)

    metrics = run_recipe(cfg, args.work_dir, args.out, stages=args.stages, force=args.force, log=log,
                         adopt=args.adopt)
    if metrics:
        test = metrics['test']
        short = {
            'timings_s': metrics['timings_s'],
            'depth_abs_err_m': {k: [v.get('abs_err_10m'), v.get('abs_err_20m'), v.get('abs_err_30m')]
                                for k, v in test['depth'].items()},
            'miou': {k: v['miou'] for k, v in test['segmentation'].items()},
            'pose_auc_rot@5/10/20': {k: [v.get('auc_rot@5'), v.get('auc_rot@10'), v.get('auc_rot@20')]
                                     for k, v in (test.get('pose') or {}).items()},
        }
        print(json.dumps(short, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
