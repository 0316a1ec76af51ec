#!/usr/bin/env python3
"""Cost of one symmetric pose step (``RealmPipeline.process_pose``) at 224 x 224 with the shipped miniature models.

    . .venv/realm_env.sh
    python benchmarks/bench_pose_step.py --repeats 5 --threads 1
    python benchmarks/bench_pose_step.py --json /tmp/pose_step.json

What it does:

1. Simulates a short miniature-world sequence (``realm_ros.sim``, the first held-out test scene, 224 x 224 event
   camera as in the demo) and runs the dense half of the pipeline on every window to get the pose inputs (REALM
   tokens, CLS token, intrinsics) exactly as the perception node's pose worker receives them.
2. **Stage breakdown** of :func:`realm_ros.geometry.symmetric.symmetric_relative_pose` on (keyframe = first window,
   current = a later window) pairs: decoder (both orders, batched), reciprocal matching of each order, PnP of each
   order (split into the solvePnPRansac call, the Levenberg-Marquardt refinement + re-scoring, the covariance, and
   the rest: gathering, confidence filter, checks), and the combination / gates. ``previous`` is the design before
   this benchmark (view 2's pointmap decoded although pose never reads it, full matcher search:
   ``view2_points=True``, ``MatchingParams(prune=False)``), ``new`` the defaults; both run in the same process,
   interleaved pair by pair, and every pair is checked to give identical matches and poses.
3. **Whole step**: ``process_pose`` over the sequence (keyframe selection, the step above, keyframe update / new
   keyframes, the match drawing), both variants, interleaved, with the tracker reset before each pass; per-step
   wall and CPU time, the stages from the tracker's ``timings_ms``, and the outputs compared window by window.

Min and median over pairs x repeats. Numbers from a shared machine are noisy: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STAGES = ('decoder', 'matching_direct', 'matching_swapped', 'pnp_direct', 'pnp_swapped', 'combine')
PNP_PARTS = ('ransac', 'refine_rescore', 'covariance')


class _Timers:
    """Wraps module attributes with accumulating wall-clock timers (restored by :meth:`restore`)."""

    def __init__(self) -> None:
        self.acc: Dict[str, float] = defaultdict(float)
        self._undo: List[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, key: str) -> None:
        orig = getattr(owner, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                self.acc[key] += time.perf_counter() - t0
        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, orig))

    def take(self) -> Dict[str, float]:
        out = dict(self.acc)
        self.acc.clear()
        return out

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _stats(values: List[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=np.float64) * 1e3
    return {'min_ms': float(v.min()), 'median_ms': float(np.median(v)), 'n': int(v.size)}


def _load(args: argparse.Namespace):
    from realm_ros.miniature.data import sim_config, split_seeds
    from realm_ros.pipeline.core import PipelineConfig, RealmPipeline
    from realm_ros.sim.simulator import Simulator
    m = Path(args.models)
    sim = Simulator(sim_config(split_seeds('test', 1)[0], 224, args.seconds))
    chunks = list(sim.stream())[1:]
    pipe = RealmPipeline(PipelineConfig(
        realm_checkpoint=str(m / 'mini_realm.safetensors'), dune_checkpoint=str(m / 'mini_teacher.safetensors'),
        mast3r_checkpoint=str(m / 'mini_mast3r.safetensors'), device='cpu', precision='fp32', heads=('pose',),
        pnp_iterations=args.pnp_iterations))
    inputs = []
    for c in chunks:
        _out, pose_input = pipe.process_dense(c.events, 224, 224, sim.event_camera.K, c.t_end_ns)
        inputs.append(pose_input)
    return pipe, inputs


def _variants():
    from realm_ros.geometry.relative_pose import MatchingParams
    return {'previous': dict(view2_points=True, prune=False), 'new': dict(view2_points=False, prune=True)}, \
        MatchingParams


def _same_estimate(a: Any, b: Any) -> bool:
    def eq(x: Any, y: Any) -> bool:
        if x is None or y is None:
            return x is y
        return np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
    if not (np.array_equal(a.matches.xy1, b.matches.xy1) and np.array_equal(a.matches.xy2, b.matches.xy2)):
        return False
    return all(r1.ok == r2.ok and r1.reason == r2.reason and eq(r1.R, r2.R) and eq(r1.t, r2.t)
               and eq(r1.inliers, r2.inliers) and eq(r1.covariance, r2.covariance)
               for r1, r2 in ((a.pose, b.pose), (a.direct, b.direct), (a.swapped, b.swapped)))


def stage_breakdown(pipe: Any, inputs: List[Any], pairs: List[int], repeats: int) -> Dict[str, Any]:
    import cv2

    from realm_ros.geometry import pose as pose_mod
    from realm_ros.geometry.gates import gates_for_decoder
    from realm_ros.geometry.symmetric import symmetric_relative_pose
    variants, MatchingParams = _variants()
    kf_input = inputs[0]
    store = pipe.pose_tracker.keyframes
    store.clear()
    kf = store.add(kf_input.tokens, kf_input.cls, (224, 224), kf_input.K_model, kf_input.stamp_ns, source='events')
    gates = gates_for_decoder(pipe.mast3r, kf.source)
    timers = _Timers()
    timers.wrap(cv2, 'solvePnPRansac', 'ransac')
    timers.wrap(cv2, 'solvePnPRefineLM', 'refine_rescore')
    timers.wrap(pose_mod, '_camera_pose_covariance', 'covariance')
    rows: Dict[str, Dict[str, List[float]]] = {v: defaultdict(list) for v in variants}
    identical = True
    info: Dict[str, Any] = {}
    try:
        with torch.inference_mode():
            for rep in range(repeats + 1):                  # round 0: warm-up (numba, allocator), not counted
                for k in pairs:
                    cur = inputs[k]
                    ests = {}
                    order = list(variants) if (rep + k) % 2 == 0 else list(variants)[::-1]
                    for name in order:
                        v = variants[name]
                        timers.take()
                        t0 = time.perf_counter()
                        c0 = time.process_time()
                        est = symmetric_relative_pose(
                            pipe.mast3r, kf, cur.tokens, (224, 224), cur.K_model, pnp=pipe._pnp_params,
                            matching=MatchingParams(subsample=pipe.config.match_subsample, border=3,
                                                    prune=v['prune']),
                            gates=gates, view2_points=v['view2_points'])
                        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                        parts = timers.take()
                        ests[name] = est
                        if rep == 0:
                            continue
                        r = rows[name]
                        r['total'].append(wall)
                        r['total_cpu'].append(cpu)
                        for s in STAGES:
                            r[s].append(est.timings_s.get(s, 0.0))
                        for p in PNP_PARTS:
                            r[f'pnp.{p}'].append(parts.get(p, 0.0))
                        r['pnp.other'].append(est.timings_s.get('pnp_direct', 0.0) + est.timings_s.get(
                            'pnp_swapped', 0.0) - sum(parts.get(p, 0.0) for p in PNP_PARTS))
                    identical &= _same_estimate(ests['previous'], ests['new'])
                    if rep == 1:
                        e = ests['new']
                        info[str(k)] = {'matches_direct': e.matches.count,
                                        'correspondences': [e.direct.num_correspondences,
                                                            e.swapped.num_correspondences],
                                        'inliers': [e.direct.num_inliers, e.swapped.num_inliers],
                                        'reason': e.pose.reason}
    finally:
        timers.restore()
        store.clear()
    return {'variants': {n: {k: _stats(v) for k, v in r.items()} for n, r in rows.items()},
            'identical': bool(identical), 'pairs': info}


def whole_step(pipe: Any, inputs: List[Any], repeats: int) -> Dict[str, Any]:
    from realm_ros.geometry import symmetric as sym
    from realm_ros.pipeline import pose_tracker as pt
    variants, _ = _variants()
    original = sym.symmetric_relative_pose
    tracker = pipe.pose_tracker
    rows: Dict[str, Dict[str, List[float]]] = {v: defaultdict(list) for v in variants}
    outputs: Dict[str, List[Any]] = {}
    identical = True
    for rep in range(repeats + 1):
        order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
        for name in order:
            v = variants[name]

            def patched(*a: Any, _v: Dict[str, Any] = v, **kw: Any) -> Any:
                kw['matching'] = dataclasses.replace(kw['matching'], prune=_v['prune'])
                return original(*a, view2_points=_v['view2_points'], **kw)
            timers = _Timers()
            sym.symmetric_relative_pose = patched
            timers.wrap(tracker.keyframes, 'select', 'keyframe_select')
            timers.wrap(tracker.keyframes, 'update', 'keyframe_update')
            timers.wrap(tracker.keyframes, 'add', 'keyframe_add')
            timers.wrap(pt.render, 'draw_matches', 'draw_matches')
            try:
                tracker.clear()
                tracker.reset()
                outs = []
                for i, inp in enumerate(inputs):
                    timers.take()
                    c0 = time.process_time()
                    out = pipe.process_pose(inp)
                    cpu = time.process_time() - c0
                    parts = timers.take()
                    outs.append(out)
                    if rep == 0 or i == 0:
                        continue                            # warm-up pass / the first window (keyframe only)
                    r = rows[name]
                    t = out.timings_ms
                    r['step'].append(t['pose_ms'] / 1e3)
                    r['step_cpu'].append(cpu)
                    staged = 0.0
                    for s in STAGES:
                        val = t.get(f'pose_{s}_ms', 0.0) / 1e3
                        r[s].append(val)
                        staged += val
                    for key in ('keyframe_select', 'keyframe_update', 'keyframe_add', 'draw_matches'):
                        r[key].append(parts.get(key, 0.0))
                        staged += parts.get(key, 0.0)
                    r['other'].append(t['pose_ms'] / 1e3 - staged)
            finally:
                sym.symmetric_relative_pose = original
                timers.restore()
            if name in outputs:
                continue
            outputs[name] = outs
    for a, b in zip(outputs['previous'], outputs['new']):
        same_img = (a.matches_image is None and b.matches_image is None) or np.array_equal(a.matches_image,
                                                                                            b.matches_image)
        same_pose = (a.pose is None and b.pose is None) or (
            a.pose is not None and b.pose is not None and np.array_equal(a.pose.R, b.pose.R)
            and np.array_equal(a.pose.t, b.pose.t) and a.pose.num_inliers == b.pose.num_inliers)
        identical &= bool(same_img and same_pose)
    diag = {k: v for k, v in pipe.diagnostics().items() if k.startswith(('pose', 'event_keyframes', 'keyframe'))}
    return {'variants': {n: {k: _stats(v) for k, v in r.items()} for n, r in rows.items()},
            'identical': bool(identical), 'windows': len(inputs), 'diagnostics': diag}


def _print_table(title: str, result: Dict[str, Any], keys: List[str]) -> None:
    prev, new = result['variants']['previous'], result['variants']['new']
    print(f'\n{title} (ms; min / median; n = {new[keys[0]]["n"]}; identical results: {result["identical"]})')
    print(f'{"stage":<20} {"previous":>17} {"new":>17} {"new/previous (median)":>22}')
    for k in keys:
        if k not in new:
            continue
        p, n = prev[k], new[k]
        ratio = n['median_ms'] / p['median_ms'] if p['median_ms'] > 1e-6 else float('nan')
        print(f'{k:<20} {p["min_ms"]:7.1f} / {p["median_ms"]:7.1f} {n["min_ms"]:7.1f} / {n["median_ms"]:7.1f} '
              f'{ratio:>22.2f}')


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default=str(REPO / 'models'))
    p.add_argument('--seconds', type=float, default=0.5, help='simulated sequence length (windows at ~30 Hz)')
    p.add_argument('--pairs', type=int, nargs='*', default=None,
                   help='current windows for the stage breakdown (default: 1, 3, 6, 9, 12)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--pnp-iterations', type=int, default=1000, help='pose.ransac_iterations (node default 1000)')
    p.add_argument('--skip-whole', action='store_true', help='only the stage breakdown')
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe, inputs = _load(args)
    pairs = [k for k in (args.pairs or [1, 3, 6, 9, 12]) if 0 < k < len(inputs)]
    print(f'{len(inputs)} windows, set-up {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}; '
          f'pairs (keyframe 0, current k): {pairs}')
    out: Dict[str, Any] = {'threads': args.threads, 'pnp_iterations': args.pnp_iterations, 'torch': torch.__version__}
    out['breakdown'] = stage_breakdown(pipe, inputs, pairs, args.repeats)
    _print_table('symmetric_relative_pose', out['breakdown'],
                 ['total', 'total_cpu', *STAGES, *[f'pnp.{k}' for k in (*PNP_PARTS, 'other')]])
    print('pairs:', json.dumps(out['breakdown']['pairs']))
    if not args.skip_whole:
        out['whole'] = whole_step(pipe, inputs, args.repeats)
        _print_table('process_pose (whole step, windows 1..N against the tracker\'s keyframes)', out['whole'],
                     ['step', 'step_cpu', *STAGES, 'keyframe_select', 'keyframe_update', 'keyframe_add',
                      'draw_matches', 'other'])
        print('diagnostics (last pass):', json.dumps(out['whole']['diagnostics']))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    ok = out['breakdown']['identical'] and out.get('whole', {}).get('identical', True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
