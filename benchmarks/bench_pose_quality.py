#!/usr/bin/env python3
"""Pose you can trust? Zero-motion contraction, unrelated-scene pairs, symmetric inference, calibrated gates.

    . .venv/realm_env.sh
    OMP_NUM_THREADS=1 python benchmarks/bench_pose_quality.py --out /tmp/pose_quality       # shipped models
    python benchmarks/bench_pose_quality.py --decoder other/mini_mast3r.safetensors --out /tmp/pq_other

Steps (realm_ros/miniature/pose_checks.py): simulate (and cache) validation scenes (``val`` split) and the held-out
test scenes of ``models/miniature_metrics.json``; collect per-pair records (motion, zero-motion and unrelated-scene
pairs, RGB-RGB, event-event, RGB keyframe-event, both decoder orders); calibrate the gates and the covariance scale
of the one-order (``direct``) and the symmetric estimate on the validation records (false-positive rate <= 5 %);
score both on the test records; time one decoder order against both (batched), A/B in one process.
Writes ``records_{val,test}.pkl`` and ``summary.json`` under ``--out``; ``--write-gates`` stores the calibrated
symmetric gates in the decoder file (the perception node reads them from there), ``--write-metrics FILE`` the summary
as ``pose_trust`` in a metrics file. The miniature recipe runs the same calibration (its ``calibrate`` stage).
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _timing(models, seq, toks, repeats: int) -> dict:
    from realm_ros.geometry.symmetric import decode_both_orders
    size = seq.rgb.shape[1]
    a, b = toks['event'][0], toks['event'][min(6, len(seq) - 1)]
    one, both = [], []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            models.decoder(a, b, (size, size), (size, size))
            t1 = time.perf_counter()
            decode_both_orders(models.decoder, a, b, (size, size), (size, size))
            t2 = time.perf_counter()
            one.append(t1 - t0)
            both.append(t2 - t1)
    return {'one_order_s': {'min': min(one), 'median': float(np.median(one))},
            'both_orders_batched_s': {'min': min(both), 'median': float(np.median(both))},
            'ratio_median': float(np.median(both) / np.median(one)), 'threads': torch.get_num_threads(),
            'device': 'cpu (shared machine: other jobs were running)'}


def main(argv=None) -> int:
    from realm_ros.miniature.data import split_seeds
    from realm_ros.miniature.evaluate import EvalConfig, MiniModels, TestSequence, load_or_simulate, \
        simulate_test_sequence
    from realm_ros.miniature.pose_checks import calibrated_gates, collect_trust_records, pose_trust_summary, \
        sequence_tokens, write_decoder_gates

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default=str(REPO / 'models'))
    p.add_argument('--decoder', default=None, help='decoder file (default: <models>/mini_mast3r.safetensors)')
    p.add_argument('--out', required=True)
    p.add_argument('--cache', default='/tmp/realm_pose_quality_cache', help='simulated sequences (.npz)')
    p.add_argument('--val-sequences', type=int, default=2)
    p.add_argument('--test-sequences', type=int, default=3)
    p.add_argument('--val-stride', type=int, default=6)
    p.add_argument('--test-stride', type=int, default=3, help='motion pairs every N frames (3: the shipped metrics)')
    p.add_argument('--extra-stride', type=int, default=6, help='zero-motion / unrelated pairs every N frames')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--records-only', action='store_true')
    p.add_argument('--write-gates', action='store_true',
                   help='store the calibrated symmetric gates in the decoder file (extra.pose_gates; the node uses '
                        'them for that decoder)')
    p.add_argument('--write-metrics', default=None,
                   help="also store the summary as 'pose_trust' in this metrics file (models/miniature_metrics.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = Path(args.models)
    models = MiniModels.load(m / 'mini_teacher.safetensors', m / 'mini_realm.safetensors',
                             m / 'mini_depth_head.safetensors', m / 'mini_seg_head.safetensors',
                             args.decoder or m / 'mini_mast3r.safetensors')
    t0 = time.time()

    def log(s: str) -> None:
        print(f'[{time.time() - t0:6.0f} s] {s}', flush=True)

    cfg = EvalConfig(sequences=args.test_sequences)
    test = load_or_simulate(cfg, args.cache, log)
    cache = Path(args.cache)
    val = []
    for seed in split_seeds('val', args.val_sequences):
        path = cache / f'val_{seed}_{cfg.image_size}px_{cfg.duration_s:g}s.npz'
        if path.is_file():
            val.append(TestSequence.load(path))
        else:
            log(f'simulating validation sequence {seed}')
            seq = simulate_test_sequence(seed, cfg.image_size, cfg.duration_s, cfg.bins, cfg.normalization)
            seq.save(path)
            val.append(seq)
    recs = {}
    for name in ('val', 'test'):
        path = out / f'records_{name}.pkl'
        if path.is_file():
            recs[name] = pickle.loads(path.read_bytes())
    if args.records_only:
        collect_trust_records(models, val, test, cfg.pair_gaps, args.val_stride, args.test_stride, args.extra_stride,
                              recs, log)
        for name in ('val', 'test'):
            (out / f'records_{name}.pkl').write_bytes(pickle.dumps(recs[name]))
        return 0
    summary = {'decoder': str(args.decoder or m / 'mini_mast3r.safetensors')}
    summary.update(pose_trust_summary(models, val, test, gaps=cfg.pair_gaps, val_stride=args.val_stride,
                                      test_stride=args.test_stride, extra_stride=args.extra_stride,
                                      records=recs, log=log))
    for name in ('val', 'test'):
        (out / f'records_{name}.pkl').write_bytes(pickle.dumps(recs[name]))
    summary['timing'] = _timing(models, test[0], sequence_tokens(models, test[0]), 7)
    summary['config'] = {'val_seeds': [int(s.seed) for s in val], 'test_seeds': [int(s.seed) for s in test],
                         'val_motion_stride': args.val_stride, 'test_motion_stride': args.test_stride,
                         'extra_stride': args.extra_stride, 'pair_gaps': list(cfg.pair_gaps),
                         'records': {k: len(v) for k, v in recs.items()},
                         'command': 'python benchmarks/bench_pose_quality.py --out DIR ' + ' '.join(
                             f'--{k.replace("_", "-")} {v}' for k, v in vars(args).items()
                             if k not in ('out', 'cache', 'write_metrics', 'write_gates', 'models', 'decoder',
                                          'records_only')
                             and v != p.get_default(k))}
    (out / 'summary.json').write_text(json.dumps(summary, indent=1, default=float) + '\n')
    if args.write_gates:
        write_decoder_gates(args.decoder or m / 'mini_mast3r.safetensors', calibrated_gates(summary))
        print(f'calibrated gates (symmetric and direct) written into {args.decoder or m / "mini_mast3r.safetensors"}')
    if args.write_metrics:
        from realm_ros.miniature.evaluate import write_metrics
        doc = json.loads(Path(args.write_metrics).read_text())
        doc['pose_trust'] = json.loads(json.dumps(summary, default=float))
        write_metrics(args.write_metrics, doc)
    for method in ('direct', 'symmetric'):
        for part in ('uncalibrated_test', 'test'):
            for mode, s in summary[method][part].items():
                print(f'{method:9s} {part:17s} {mode:11s} ' + ' '.join(
                    f'{k}={v:.3g}' for k, v in s.items() if isinstance(v, float)))
    print(json.dumps(summary['timing']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
