#!/usr/bin/env python3
"""Dense outputs of one window (depth, semantic, points, colour images): the previous code path against
:mod:`realm_ros.pipeline.dense`, in one process, on the shipped miniature models and simulated events.

For each sensor size and thread count it times (min and median of ``--iters`` runs, after a warm-up):

* ``voxel`` / ``encoder``     shared by both paths (voxel grid + spatial fit; REALM encoder), for context
* ``depth``     previous: head + ``prep.to_sensor`` over the sensor + NaN mask + ``colorize_depth``;
                new: ``dense.run_depth`` + ``dense.colorize_depth_region``
* ``semantic``  previous: bridge + projector + head + ``prep.to_sensor`` + ``isfinite``/``nan_to_num``/``argmax``
                + palette lookup + BGR copy; new: ``dense.run_semantic`` + ``render.colorize_labels``
* ``sem_heads`` bridge + projector + segmentation head alone (the arithmetic both paths share)
* ``points``    previous: ``backproject_depth`` + colour lookup in the BGR image; new: ``dense.point_cloud``
* ``dense``     voxel + encoder + depth + semantic + points (the whole dense path of a window)
* ``encoder_bf16`` / ``dense_bf16``  on a CPU with bfloat16 arithmetic, what ``precision: auto`` runs there: the
                encoder and the whole new dense path under bf16 autocast (compared with the fp32 ``encoder`` and
                ``dense`` new; close, not identical: patch-token cosine printed)

Every run checks that both paths give identical depth (NaN at the same pixels), labels, colour images and points.
The previous path is copied here from ``RealmPipeline._process`` as it was before the dense module.

Usage::

    python benchmarks/bench_dense.py                         # 640x480 and 1280x720, 1 and 2 threads
    python benchmarks/bench_dense.py --sizes 640x480 --threads 1 --iters 30
    python benchmarks/bench_dense.py --events cached.npz     # x, y, t, p (+ K) arrays instead of simulating
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realm_ros.common.device import cpu_has_native_bf16  # noqa: E402
from realm_ros.events import voxel_grid  # noqa: E402
from realm_ros.events.spatial import prepare_input  # noqa: E402
from realm_ros.events.types import EventArray  # noqa: E402
from realm_ros.models import colorize_segmentation  # noqa: E402
from realm_ros.pipeline import dense, render  # noqa: E402
from realm_ros.pipeline.core import PipelineConfig, RealmPipeline  # noqa: E402

IGNORE_LABEL = 255


def load_events(size: Tuple[int, int], path: Optional[Path], seconds: float) -> Tuple[EventArray, np.ndarray]:
    w, h = size
    if path is not None:
        z = np.load(path)
        return EventArray.from_arrays(z['x'], z['y'], z['t'], z['p']), np.asarray(z['K'], np.float64)
    from realm_ros.sim.simulator import SimConfig, Simulator
    sim = Simulator(SimConfig(width=w, height=h, duration_s=seconds, seed=3))
    chunks = list(sim.stream())
    return chunks[-1].events, np.asarray(sim.event_camera.K, np.float64)


def previous_depth(p: RealmPipeline, tokens, prep, n: int, size) -> Tuple[np.ndarray, np.ndarray]:
    d = p.depth_head(tokens['x_norm_patchtokens'][:n], tokens['x_norm_clstoken'][:n], p.grid, out_size=size)
    depth = prep.to_sensor(d.float()).squeeze(0)
    depth = depth.cpu().numpy().astype(np.float32, copy=False)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth, render.colorize_depth(depth, *p.config.depth_color_range)


def previous_semantic(p: RealmPipeline, tokens, prep, n: int, size, bridge: str) -> Tuple[np.ndarray, np.ndarray]:
    proj_in = p.encoder.head_tokens(tokens, bridge)[:n]
    _, feat = p.projector(proj_in, p.grid)
    logits = p.seg_head(feat, out_size=size)
    logits = prep.to_sensor(logits.float())
    valid = torch.isfinite(logits).all(dim=0)
    labels = torch.where(valid, torch.nan_to_num(logits, nan=0.0).argmax(dim=0),
                         torch.full_like(valid, IGNORE_LABEL, dtype=torch.long))
    semantic = labels.to(torch.uint8).cpu().numpy()
    return semantic, colorize_segmentation(semantic)[..., ::-1].copy()


def previous_points(depth, K, stride, max_depth, semantic_color) -> Tuple[np.ndarray, np.ndarray]:
    xyz, rows, cols = render.backproject_depth(depth, K, stride, max_depth)
    return xyz, np.ascontiguousarray(semantic_color[rows, cols, ::-1])


def timed(fn: Callable[[], object], warmup: int, iters: int) -> Tuple[Dict[str, float], object]:
    result = None
    for _ in range(warmup):
        result = fn()
    times: List[float] = []
    cpu: List[float] = []
    for _ in range(iters):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {'min': min(times), 'median': statistics.median(times), 'cpu': min(cpu)}, result


def same_depth(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


#: subscriptions compared for dense.lazy (None: every output, as with dense.lazy false or RViz showing all)
LAZY_SUBSETS = {'all': None, 'depth': ('depth',), 'depth+semantic': ('depth', 'semantic')}


def bench_case(p: RealmPipeline, events: EventArray, K: np.ndarray, size: Tuple[int, int], threads: int,
               warmup: int, iters: int) -> Dict[str, Dict[str, float]]:
    torch.set_num_threads(threads)
    w, h = size
    cfg = p.config
    mode = p.spatial_mode_for(h, w)
    msize = (p.input_size, p.input_size)
    bridge = cfg.bridge or p._head_bridge.get('semantic') or 'teacher_norm_inverse'
    res: Dict[str, Dict[str, float]] = {}
    with torch.inference_mode():
        def make_prep():
            vox = voxel_grid(events, bins=p.bins, height=h, width=w, normalization=p.default_normalization)
            return prepare_input(vox, size=p.input_size, mode=mode)
        res['voxel'], prep = timed(make_prep, warmup, iters)
        n = prep.tensor.shape[0]
        res['encoder'], tokens = timed(lambda: p.encoder(prep.tensor), warmup, iters)
        # precision bf16-embedder (the voxel embedder in bf16, the rest fp32) against the fp32 encoder above
        mixed = copy.deepcopy(p.encoder)
        mixed.embedder.to(torch.bfloat16)
        res['encoder_bf16_embedder'], mixed_tokens = timed(lambda: mixed(prep.tensor), warmup, iters)
        res['_bf16_embedder_patch_cosine_min'] = {'min': float(torch.nn.functional.cosine_similarity(
            tokens['x_norm_patchtokens'], mixed_tokens['x_norm_patchtokens'], dim=-1).min())}

        res['depth_prev'], (d0, dc0) = timed(lambda: previous_depth(p, tokens, prep, n, msize), warmup, iters)

        def new_depth(tok=tokens, pr=prep, autocast=None):
            d = dense.run_depth(p.depth_head, tok, p.grid, pr, msize, autocast=autocast)
            return d, dense.colorize_depth_region(d, *cfg.depth_color_range, prep=pr)
        res['depth_new'], (d1, dc1) = timed(new_depth, warmup, iters)

        def heads_only():
            proj_in = p.encoder.head_tokens(tokens, bridge)[:n]
            _, feat = p.projector(proj_in, p.grid)
            return p.seg_head(feat, out_size=msize)
        res['sem_heads'], _ = timed(heads_only, warmup, iters)
        res['semantic_prev'], (s0, sc0) = timed(lambda: previous_semantic(p, tokens, prep, n, msize, bridge),
                                                max(1, warmup // 2), max(3, iters // 3))

        def new_semantic(tok=tokens, pr=prep, autocast=None):
            labels = dense.run_semantic(p.encoder, p.projector, p.seg_head, tok, p.grid, pr, msize, bridge,
                                        autocast=autocast)
            return labels, render.colorize_labels(labels)
        res['semantic_new'], (s1, sc1) = timed(new_semantic, warmup, iters)

        if cpu_has_native_bf16():
            # precision auto on a CPU with bfloat16 arithmetic: the encoder and the dense heads under bf16 autocast
            def bf16():
                return torch.autocast('cpu', dtype=torch.bfloat16)

            def encoder_bf16(pr=prep):
                with bf16():
                    return p.encoder(pr.tensor)
            res['encoder_bf16'], bf16_tokens = timed(encoder_bf16, warmup, iters)
            res['_bf16_patch_cosine_min'] = {'min': float(torch.nn.functional.cosine_similarity(
                tokens['x_norm_patchtokens'], bf16_tokens['x_norm_patchtokens'].float(), dim=-1).min())}

            def dense_bf16():                          # the whole new path, as dense_new below sums it
                pr = make_prep()
                tok = encoder_bf16(pr)
                d, _ = new_depth(tok, pr, bf16)
                labels, _ = new_semantic(tok, pr, bf16)
                return dense.point_cloud(d, K, cfg.points_stride, cfg.points_max_depth, labels=labels)
            res['dense_bf16'], _ = timed(dense_bf16, warmup, iters)

        # dense.lazy: the heads for what has subscribers (the node's outputs), against every output, same tokens
        for name, outputs in LAZY_SUBSETS.items():
            res[f'heads_for_{name}'], _ = timed(lambda o=outputs: dense.compute_dense(
                ('depth', 'semantic', 'points'), tokens, p.grid, prep, msize, K, depth_head=p.depth_head,
                encoder=p.encoder, projector=p.projector, seg_head=p.seg_head, bridge=bridge,
                depth_color_range=cfg.depth_color_range, points_stride=cfg.points_stride,
                points_max_depth=cfg.points_max_depth, outputs=o), warmup, iters)

        stride, maxd = cfg.points_stride, cfg.points_max_depth
        res['points_prev'], (x0, r0) = timed(lambda: previous_points(d0, K, stride, maxd, sc0), warmup, iters)
        res['points_new'], (x1, r1) = timed(lambda: dense.point_cloud(d1, K, stride, maxd, labels=s1),
                                            warmup, iters)
    checks = {'depth': same_depth(d0, d1), 'depth_color': np.array_equal(dc0, dc1),
              'labels': np.array_equal(s0, s1), 'label_color': np.array_equal(sc0, sc1),
              'points_xyz': np.array_equal(x0, x1), 'points_rgb': np.array_equal(r0, r1)}
    if not all(checks.values()):
        raise SystemExit(f'outputs differ at {w}x{h}, {threads} thread(s): {checks}')
    for kind in ('prev', 'new'):
        res[f'dense_{kind}'] = {q: sum(res[k][q] for k in ('voxel', 'encoder', f'depth_{kind}', f'semantic_{kind}',
                                                            f'points_{kind}')) for q in ('min', 'median', 'cpu')}
    res['_info'] = {'mode': mode, 'events': len(events), 'labels_seen': int((s1 != IGNORE_LABEL).sum()),
                    'classes': int(len(np.unique(s1[s1 != IGNORE_LABEL]))), 'points': len(x1)}
    return res


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', default='640x480,1280x720', help='sensor sizes WxH, comma separated')
    ap.add_argument('--threads', default='1,2', help='torch thread counts, comma separated')
    ap.add_argument('--iters', type=int, default=15)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--seconds', type=float, default=0.1, help='simulated seconds (events of the last frame)')
    ap.add_argument('--events', type=Path, action='append', default=None,
                    help='npz with x, y, t, p, K per size (in --sizes order) instead of simulating')
    ap.add_argument('--models', type=Path, default=ROOT / 'models')
    ap.add_argument('--json', type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split('x')) for s in args.sizes.split(',') if s]
    threads = [int(t) for t in args.threads.split(',') if t]
    m = args.models
    p = RealmPipeline(PipelineConfig(realm_checkpoint=str(m / 'mini_realm.safetensors'),
                                     dune_checkpoint=str(m / 'mini_teacher.safetensors'),
                                     depth_head_checkpoint=str(m / 'mini_depth_head.safetensors'),
                                     seg_head_checkpoint=str(m / 'mini_seg_head.safetensors'),
                                     heads=('depth', 'semantic', 'points'), device='cpu', precision='fp32'))
    results = {}
    for i, size in enumerate(sizes):
        path = args.events[i] if args.events and i < len(args.events) else None
        events, K = load_events(size, path, args.seconds)
        for t in threads:
            r = bench_case(p, events, K, size, t, args.warmup, args.iters)
            key = f'{size[0]}x{size[1]}_t{t}'
            results[key] = r
            info = r['_info']
            print(f'\n{size[0]}x{size[1]}, {t} thread(s), mode {info["mode"]}, {info["events"]} events, '
                  f'{info["points"]} points, {info["classes"]} classes; outputs identical; ms wall min / median '
                  f'| process CPU min; speed-up of the wall min (CPU min)')
            print(f'  {"stage":<10} {"previous":>26} {"new":>26} {"speed-up":>16}')
            for stage in ('voxel', 'encoder', 'sem_heads'):
                a = r[stage]
                print(f'  {stage:<10} {a["min"]:8.2f} /{a["median"]:7.2f} |{a["cpu"]:7.2f}')
            a, b = r['encoder'], r['encoder_bf16_embedder']
            print(f'  encoder fp32 vs precision bf16-embedder: {a["min"]:.2f} -> {b["min"]:.2f} ms wall min '
                  f'({a["min"] / b["min"]:.2f}x; CPU {a["cpu"]:.2f} -> {b["cpu"]:.2f}), patch-token cosine min '
                  f'{r["_bf16_embedder_patch_cosine_min"]["min"]:.5f}')
            for stage in ('depth', 'semantic', 'points', 'dense'):
                a, b = r[f'{stage}_prev'], r[f'{stage}_new']
                print(f'  {stage:<10} {a["min"]:8.2f} /{a["median"]:7.2f} |{a["cpu"]:7.2f} '
                      f'{b["min"]:8.2f} /{b["median"]:7.2f} |{b["cpu"]:7.2f} '
                      f'{a["min"] / b["min"]:7.1f}x ({a["cpu"] / max(b["cpu"], 1e-3):5.1f}x)')
            full = r['heads_for_all']
            lazy = [(name, r[f'heads_for_{name}']) for name in LAZY_SUBSETS]
            print('  dense heads for the subscribed outputs (dense.lazy; ms wall min / median | CPU min, ratio to all '
                  'outputs): ' + ', '.join(f'{name} {v["min"]:.2f} / {v["median"]:.2f} | {v["cpu"]:.2f} '
                                           f'({v["min"] / full["min"]:.2f}x)' for name, v in lazy))
            if 'encoder_bf16' in r:
                a, b, c, e = r['encoder'], r['encoder_bf16'], r['dense_new'], r['dense_bf16']
                print(f'  precision auto on this CPU (bf16 autocast; bfloat16 arithmetic): encoder {a["min"]:.2f} -> '
                      f'{b["min"]:.2f} ms wall min ({a["min"] / b["min"]:.2f}x; CPU {a["cpu"]:.2f} -> {b["cpu"]:.2f}), '
                      f'patch-token cosine min {r["_bf16_patch_cosine_min"]["min"]:.5f}; whole dense path fp32 '
                      f'{c["min"]:.2f} -> bf16 {e["min"]:.2f} ms ({c["min"] / e["min"]:.2f}x; CPU {c["cpu"]:.2f} -> '
                      f'{e["cpu"]:.2f})')
            else:
                print('  precision auto on this CPU: fp32 (no bfloat16 arithmetic), no bf16 case')
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
