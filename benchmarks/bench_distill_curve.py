#!/usr/bin/env python3
"""Held-out metrics against distillation compute: the shipped distillation re-run with every epoch's checkpoint kept,
each checkpoint scored on the test scenes with the shipped teacher, heads and decoder.

    . .venv/realm_env.sh
    python scripts/train_miniature.py                       # once: the recipe's work dir (bags, prepared windows)
    OMP_NUM_THREADS=1 python benchmarks/bench_distill_curve.py --out /tmp/curve              # ~75 min + ~4 min/epoch
    OMP_NUM_THREADS=1 python benchmarks/bench_distill_curve.py --out /tmp/curve_half --train-sequences 10 --epochs 6,12
    python benchmarks/write_miniature_bags.py --train-sequences 40    # 20 more training bags, the recipe's settings
    OMP_NUM_THREADS=1 python benchmarks/bench_distill_curve.py --out /tmp/curve_40 --train-sequences 40 --epochs 6,9,12
    python benchmarks/write_miniature_bags.py --train-sequences 80
    python benchmarks/bench_distill_curve.py --out /tmp/curve_80 --train-sequences 80 --schedule-epochs 6 \
        --epochs 3,6 --threads 2                       # the shipped compute (1800 steps) on twice the data

It reads the recipe's distillation settings from ``<work-dir>/distill/train_from_bag.yaml`` (written by the recipe's
distill stage), trains into ``<out>/run`` with ``train_from_bag`` (``--train-sequences N``: the first N training
bags; more than the recipe's count once ``write_miniature_bags.py`` has written them), and writes ``<out>/curve.json``
(per scored epoch: the training step, the validation figures of the run and the whole evaluation) and a table (printed):
patch-token cosine, depth error and mIoU relative to the teacher, and the symmetric pose figures of the event-event and
RGB keyframe-event pairs (rotation error as a multiple of the no-motion error, AUC_pose@20 as a multiple of RGB-RGB's).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def table_row(label: str, epoch: int, step: int, val_patch: float, test: dict) -> str:
    """One markdown row of the curve table."""
    p, dep, seg = test['pose'], test['depth'], test['segmentation']
    depth = ' / '.join(f"{dep['realm_events'][f'abs_err_{m}m'] / dep['teacher_rgb'][f'abs_err_{m}m']:.2f}"
                       for m in (10, 20, 30))
    miou = seg['realm_events']['miou'] / seg['teacher_rgb']['miou']
    rr = p['rgb_rgb']['symmetric']['auc_pose@20']

    def pose(mode: str) -> str:
        s = p[mode]['symmetric']
        nm = p[mode]['no_motion_baseline']['rot_err_deg_median']
        return (f"{s['rot_err_deg_median']:.2f} deg ({s['rot_err_deg_median'] / nm:.2f}x) / "
                f"{s['trans_err_deg_median']:.1f} deg / {100 * s['forward_sign_ok']:.0f} % / "
                f"{s['auc_pose@20'] / rr:.2f}x")

    return (f"| {label} | {epoch} | {step} | {val_patch:.3f} | {test['token_cosine']['patch']:.3f} | {depth} | "
            f"{miou:.2f} | {pose('event_event')} | {pose('rgb_event')} |")


def main() -> int:
    import torch
    import yaml

    from realm_ros.miniature.data import split_seeds
    from realm_ros.miniature.evaluate import EvalConfig, MiniModels, evaluate, load_or_simulate
    from realm_ros.miniature.recipe import SHIPPED_FILES, default_work_dir
    from realm_ros.models.checkpoints import load_dune, load_realm_checkpoint, save_realm_checkpoint
    from realm_ros.training.cli import distill_main

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--work-dir', type=Path, default=default_work_dir(), help='the recipe work dir')
    ap.add_argument('--models', type=Path, default=REPO / 'models', help='shipped files (teacher, heads, decoder)')
    ap.add_argument('--out', type=Path, required=True)
    ap.add_argument('--epochs', default='1,2,4,6,8,10,12', help='epochs to score (comma-separated)')
    ap.add_argument('--train-sequences', type=int, default=0, help='the first N training bags (0: the recipe\'s)')
    ap.add_argument('--skip-training', action='store_true', help='score the checkpoints already in <out>/run')
    ap.add_argument('--resume', action='store_true', help='continue an interrupted training run in <out>/run')
    ap.add_argument('--schedule-epochs', type=int, default=0,
                    help='train a schedule of N epochs instead of the recipe\'s (0), the epoch-keyed curriculum '
                         '(mask dilation, token drop) scaled by the same factor: same compute on more data')
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    W, S, O = args.work_dir, args.models, args.out
    O.mkdir(parents=True, exist_ok=True)
    conf = yaml.safe_load((W / 'distill' / 'train_from_bag.yaml').read_text())
    if args.schedule_epochs:
        scale = args.schedule_epochs / int(conf['optim']['epochs'])
        conf['optim']['epochs'] = args.schedule_epochs
        conf['loss']['mask_dilation_epochs'] = [int(round(e * scale)) for e in conf['loss']['mask_dilation_epochs']]
        conf['loss']['token_drop_start_epoch'] = int(round(conf['loss']['token_drop_start_epoch'] * scale))
    conf['run']['keep_checkpoints'] = int(conf['optim']['epochs'])
    (O / 'train.yaml').write_text(yaml.safe_dump(conf, sort_keys=False))
    done = json.loads((W / 'distill' / 'done.json').read_text())
    bags = done['argv'][done['argv'].index('--bags') + 1:]
    if args.train_sequences:
        # the first N training seeds; beyond the recipe's count, bags written with the recipe's settings into its
        # bag dir (see the module docstring)
        bag_dir = Path(bags[0].split('::')[0]).parent
        train = [f'{bag_dir / f"train_{seed}"}::split=train' for seed in split_seeds('train', args.train_sequences)]
        missing = [b for b in train if not Path(b.split('::')[0]).is_dir()]
        if missing:
            raise SystemExit(f'{len(missing)} training bag(s) missing, first {missing[0]}: write them first')
        bags = train + [b for b in bags if not b.endswith('split=train')]
    teacher = S / SHIPPED_FILES['teacher']
    if not args.skip_training:
        argv = ['--config', str(O / 'train.yaml'), '--teacher', str(teacher), '--out', str(O / 'run'), '--bags', *bags]
        argv += ['--resume'] if args.resume else []
        code = distill_main(argv)
        if code != 0:
            print(f'train_from_bag exited with {code}', file=sys.stderr)
            return code
    metrics = json.loads((S / 'miniature_metrics.json').read_text())
    ev = dict(metrics['eval_config'], pair_gaps=tuple(metrics['eval_config']['pair_gaps']), compare_bridges=False)
    cfg = EvalConfig(**ev)
    seqs = load_or_simulate(cfg, W / 'test_data')
    dune = load_dune(teacher)
    rows, result = [], {}
    label = f'{args.train_sequences or "all"} training sequences'
    for epoch in (int(e) for e in args.epochs.split(',')):
        ck = torch.load(O / 'run' / 'checkpoints' / f'epoch_{epoch:04d}.pt', map_location='cpu', weights_only=False)
        enc = load_realm_checkpoint(S / SHIPPED_FILES['realm'], dune=dune)      # the architecture; weights below
        params = dict(enc.named_parameters())
        unknown = sorted(set(ck['model']) - set(params))
        if unknown:
            raise SystemExit(f'epoch {epoch}: the checkpoint does not match the shipped REALM: {unknown[:4]}')
        with torch.no_grad():
            for name, value in ck['model'].items():
                params[name].copy_(value)
        path = O / f'realm_epoch{epoch:02d}.safetensors'
        save_realm_checkpoint(path, enc.eval(), {'epoch': epoch, 'global_step': ck['global_step']})
        models = MiniModels.load(teacher, path, S / SHIPPED_FILES['depth_head'], S / SHIPPED_FILES['seg_head'],
                                 S / SHIPPED_FILES['mast3r'])
        test = evaluate(models, seqs, replace(cfg, seg_bridge=models.seg_bridge), 'cpu', lambda s: None)
        result[epoch] = dict(epoch=epoch, global_step=ck['global_step'], val=ck['last_val'], test=test)
        (O / 'curve.json').write_text(json.dumps(result, default=str))
        rows.append(table_row(label, epoch, ck['global_step'], ck['last_val']['patch_cosine'], test))
        print(rows[-1], flush=True)
    print('| data | epoch | step | val. patch cosine | test patch cosine | depth / teacher 10/20/30 m | '
          'mIoU / teacher | event-event rot. / dir. / fwd / AUC@20 | RGB kf-event rot. / dir. / fwd / AUC@20 |')
    print('\n'.join(rows))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
