#!/usr/bin/env python3
"""Cost of one symmetric pose step (``RealmPipeline.process_pose``) at 224 x 224 with the shipped miniature models.

    . .venv/realm_env.sh
    python benchmarks/bench_pose_step.py --repeats 5 --threads 1
    python benchmarks/bench_pose_step.py --json /tmp/pose_step.json
    python benchmarks/bench_pose_step.py --only-compute --compute-variants fp32:sqpnp fp32:ap3p bf16:sqpnp bf16:ap3p
    python benchmarks/bench_pose_step.py --decoder-paths --repeats 5 --threads 1
    python benchmarks/bench_pose_step.py --refine-paths
    python benchmarks/bench_pose_step.py --local-feature-paths --repeats 5 --threads 1
    python benchmarks/bench_pose_step.py --runtime-paths --repeats 3 --threads 1

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
from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))      # realm_testing: the numpy refinement loop (baselines of --refine-paths)

from realm_testing.refinement import gauss_newton, perturbed  # noqa: E402

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
        mast3r_checkpoint=str(m / 'mini_mast3r.safetensors'), device=args.device, precision='fp32', heads=('pose',),
        pnp_iterations=args.pnp_iterations, pose_decoder_runtime=args.runtime))
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


def compute_breakdown(pipe: Any, inputs: List[Any], pairs: List[int], repeats: int, variants: List[str]
                      ) -> Dict[str, Any]:
    """CPU time of the symmetric pose step per stage for each pose-compute variant (``PRECISION:KERNEL``, e.g.
    ``fp32:sqpnp``, ``bf16:ap3p``: ``pose.decoder_precision`` / ``pose.ransac_kernel`` of the PnP solver, or
    ``PRECISION:essential``: the essential-matrix solver), interleaved pair by pair in the same process. Every order
    is solved (open gates), so the solver cost is that of a published pose (``pnp_*`` stages: either solver)."""
    import dataclasses as dc

    from realm_ros.geometry.relative_pose import MatchingParams
    from realm_ros.geometry.symmetric import DECODER_DTYPES, PoseGates, symmetric_relative_pose
    open_gates = PoseGates(min_inliers=0, min_inlier_ratio=0.0, max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    settings = {}
    for v in variants:
        precision, _, kernel = v.partition(':')
        solver = 'essential' if kernel == 'essential' else 'pnp'
        settings[v] = (DECODER_DTYPES[precision],
                       dc.replace(pipe._pnp_params, solver=solver,
                                  ransac_kernel='sqpnp' if solver == 'essential' else (kernel or 'sqpnp')))
    store = pipe.pose_tracker.keyframes
    store.clear()
    k0 = inputs[0]
    kf = store.add(k0.tokens, k0.cls, (224, 224), k0.K_model, k0.stamp_ns, source='events')
    rows: Dict[str, Dict[str, List[float]]] = {v: defaultdict(list) for v in settings}
    inl: Dict[str, List[int]] = {v: [] for v in settings}
    try:
        with torch.inference_mode():
            for rep in range(repeats + 1):
                for k in pairs:
                    cur = inputs[k]
                    order = list(settings) if (rep + k) % 2 == 0 else list(settings)[::-1]
                    for name in order:
                        dtype, pnp = settings[name]
                        c0 = time.thread_time()
                        est = symmetric_relative_pose(pipe.mast3r, kf, cur.tokens, (224, 224), cur.K_model, pnp=pnp,
                                                      matching=MatchingParams(subsample=pipe.config.match_subsample,
                                                                              border=3),
                                                      gates=open_gates, decoder_dtype=dtype)
                        cpu = time.thread_time() - c0
                        if rep == 0:
                            continue
                        rows[name]['total_cpu'].append(cpu)
                        for st in STAGES:
                            rows[name][st].append(est.timings_s.get(st, 0.0))
                        inl[name].append(est.direct.num_inliers)
    finally:
        store.clear()
    return {'variants': {n: {k: _stats(v) for k, v in r.items()} for n, r in rows.items()},
            'inliers_direct_median': {n: float(np.median(v)) if v else 0.0 for n, v in inl.items()}}


def _previous_lean_pair(decoder: Any, t1: Any, t2: Any, grid: Any) -> Any:
    """The decoder outputs of the pose step as computed before the lean head path (copied here for the comparison):
    view 1 through the full head (DPT and local features concatenated, pixel shuffle), view 2's local features
    concatenated with zero point channels, both post-processed from the concatenation."""
    from realm_ros.models.mast3r.config import PATCH_SIZE
    from realm_ros.models.mast3r.postprocess import postprocess_head_output
    dec1, dec2 = decoder.decode(t1, t2, grid, grid)
    head1, head2 = decoder.mast3r.downstream_head1, decoder.mast3r.downstream_head2
    raw1 = head1(list(dec1), grid)
    local = head2.head_local_features(torch.cat([dec2[0], dec2[-1]], dim=-1))
    b = local.shape[0]
    local = torch.nn.functional.pixel_shuffle(local.transpose(-1, -2).reshape(b, -1, *grid), PATCH_SIZE)
    fmt = torch.channels_last if raw1.is_contiguous(memory_format=torch.channels_last) and not raw1.is_contiguous() \
        else torch.contiguous_format
    zeros = torch.zeros((b, head2.dpt.head[-1].out_channels, *local.shape[2:]), dtype=local.dtype)
    raw2 = torch.cat([zeros.contiguous(memory_format=fmt), local], dim=1)
    pred1, pred2 = postprocess_head_output(raw1, decoder.config), postprocess_head_output(raw2, decoder.config)
    pred2.pop('pts3d')
    pred2.pop('conf', None)
    return pred1, pred2


def _interleaved(rows: Dict[str, List[float]], rep: int, k: int, calls: Dict[str, Callable[[], Any]]
                 ) -> Dict[str, Any]:
    """Run each of ``calls`` (name -> function) once, in an order that alternates with ``rep + k``; the thread CPU
    time of each is added to ``rows[name]`` except in the warm-up repeat (``rep`` 0). Returns name -> result."""
    names = list(calls) if (rep + k) % 2 == 0 else list(calls)[::-1]
    out: Dict[str, Any] = {}
    for name in names:
        c0 = time.thread_time()
        out[name] = calls[name]()
        if rep:
            rows[name].append(time.thread_time() - c0)
    return out


def _rounds(inputs: List[Any], pairs: List[int], repeats: int) -> Iterator[Tuple[int, int, Any, Any]]:
    """``(rep, k, keyframe tokens, current tokens)`` for every pair of every repeat (repeat 0: the warm-up that
    :func:`_interleaved` does not record), under ``torch.inference_mode``."""
    with torch.inference_mode():
        for rep in range(repeats + 1):
            for k in pairs:
                yield rep, k, inputs[0].tokens, inputs[k].tokens


def decoder_paths(pipe: Any, inputs: List[Any], pairs: List[int], repeats: int) -> Dict[str, Any]:
    """CPU time of the pose step's decoder outputs (both orders batched, view 2 without points) through the lean
    head path (``geometry.symmetric``: each part post-processed from its own map) against the previous path
    (:func:`_previous_lean_pair`), interleaved pair by pair; every output is checked to be bit-identical."""
    from realm_ros.geometry.symmetric import _decode_pair
    dec = pipe.mast3r
    size = (224, 224)
    grid = (224 // 14, 224 // 14)
    rows: Dict[str, List[float]] = {'previous': [], 'lean': []}
    identical = True
    for rep, k, a, b in _rounds(inputs, pairs, repeats):
        t1, t2 = torch.cat([a, b]), torch.cat([b, a])
        out = _interleaved(rows, rep, k, {
            'previous': lambda: _previous_lean_pair(dec, t1, t2, grid),
            'lean': lambda: _decode_pair(dec, t1, t2, size, size, False)})
        identical &= all(set(p) == set(n) and all(torch.equal(p[key], n[key]) for key in p)
                         for p, n in zip(out['previous'], out['lean']))
    return {'paths': {n: _stats(v) for n, v in rows.items()}, 'identical': bool(identical)}


def _channel_major_local_map(head: Any, tokens: Any, grid: Any) -> Any:
    """The local-feature map as computed before the pixel-major last layer (copied here for the comparison):
    ``head_local_features`` as stored (features channel-major) and a permute copy that gathers with a stride of
    14 x 14."""
    from realm_ros.models.mast3r.config import PATCH_SIZE
    nh, nw = grid
    local = head.head_local_features(torch.cat([tokens[0], tokens[-1]], dim=-1))
    b, c = local.shape[0], local.shape[-1] // PATCH_SIZE ** 2
    local = local.view(b, nh, nw, c, PATCH_SIZE, PATCH_SIZE).permute(0, 1, 4, 2, 5, 3)
    return local.reshape(b, nh * PATCH_SIZE, nw * PATCH_SIZE, c)


def local_feature_paths(pipe: Any, inputs: List[Any], pairs: List[int], repeats: int) -> Dict[str, Any]:
    """CPU time of the local-feature map of one view (both orders batched, the shipped head, real decoder tokens):
    channel-major last layer + strided layout copy (:func:`_channel_major_local_map`) against the pixel-major
    ``CatMlpDptHead.local_feature_map``, interleaved; every map is checked to be bit-identical."""
    dec = pipe.mast3r
    grid = (224 // 14, 224 // 14)
    rows: Dict[str, List[float]] = {'channel_major': [], 'pixel_major': []}
    identical = True
    for rep, k, a, b in _rounds(inputs, pairs, repeats):
        dec1, dec2 = dec.decode(torch.cat([a, b]), torch.cat([b, a]), grid, grid)
        for head, toks in ((dec.mast3r.downstream_head1, list(dec1)), (dec.mast3r.downstream_head2, list(dec2))):
            out = _interleaved(rows, rep, k, {
                'channel_major': lambda: _channel_major_local_map(head, toks, grid),
                'pixel_major': lambda: head.local_feature_map(toks, grid)})
            identical &= torch.equal(out['channel_major'], out['pixel_major'])
    return {'paths': {n: _stats(v) for n, v in rows.items()}, 'identical': bool(identical)}


def _central_refine(R: Any, t: Any, x_ref: Any, x_cur: Any, huber: float) -> Any:
    """``refine_two_view`` as it was before the analytic Jacobian (central differences; copied for the comparison)."""
    from realm_ros.geometry.pose import sampson_residuals

    def jacobian(R: Any, t: Any, basis: Any) -> Any:
        r0 = sampson_residuals(R, t, x_ref, x_cur)
        J = np.empty((r0.size, 5))
        for k in range(5):
            d = np.zeros(5)
            d[k] = 1e-7
            J[:, k] = (sampson_residuals(*perturbed(R, t, basis, d), x_ref, x_cur)
                       - sampson_residuals(*perturbed(R, t, basis, -d), x_ref, x_cur)) / 2e-7
        return r0, J
    return gauss_newton(R, t, huber, jacobian)


def _numpy_refine(R: Any, t: Any, x_ref: Any, x_cur: Any, huber: float) -> Any:
    """``refine_two_view`` with the analytic Jacobian as numpy array operations (before it was compiled; copied)."""
    def skew(v: Any) -> Any:
        return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    h1 = np.c_[x_ref, np.ones(len(x_ref))]
    h2 = np.c_[x_cur, np.ones(len(x_cur))]

    def jacobian(R: Any, t: Any, basis: Any) -> Any:
        tx = skew(t)
        Ex1, Etx2 = h1 @ (tx @ R).T, h2 @ (tx @ R)
        num = np.sum(h2 * Ex1, axis=1)
        root = np.sqrt(np.maximum(Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2, 1e-24))
        gens = np.stack([tx @ skew(e) @ R for e in np.eye(3)] + [skew(b) @ R for b in basis])
        dEx1, dEtx2 = np.matmul(h1, gens.transpose(0, 2, 1)), np.matmul(h2, gens)
        dnum = np.sum(dEx1 * h2, axis=2)
        dden = 2.0 * (Ex1[:, 0] * dEx1[:, :, 0] + Ex1[:, 1] * dEx1[:, :, 1]
                      + Etx2[:, 0] * dEtx2[:, :, 0] + Etx2[:, 1] * dEtx2[:, :, 1])
        return num / root, (dnum / root - num * dden / (2.0 * root ** 3)).T
    return gauss_newton(R, t, huber, jacobian)


REFINE_PATHS = {'central': _central_refine, 'numpy': _numpy_refine}


def refine_paths(problems: int = 30, points: int = 400, seed: int = 1) -> Dict[str, Any]:
    """The essential solver's refinement (``refine_two_view``: analytic Jacobian, compiled) against its earlier
    forms, central differences and the analytic Jacobian as numpy array operations, on synthetic two-view problems
    (noise, 10 % outliers, Huber weights as the node's 2 px at f = 150), interleaved (rotating order); the largest
    rotation / direction difference of each against the compiled result."""
    from realm_ros.geometry.pose import _so3_exp, refine_two_view, rotation_angle_deg
    rng = np.random.default_rng(seed)
    names = ['central', 'numpy', 'compiled']
    rows: Dict[str, List[float]] = {n: [] for n in names}
    worst = {n: 0.0 for n in names[:2]}
    refine_two_view(np.eye(3), np.array([0.0, 0.0, 1.0]), np.zeros((8, 2)), np.zeros((8, 2)) + 0.01)   # compile
    for i in range(problems):
        R_true, t_true = _so3_exp(rng.normal(size=3) * 0.05), rng.normal(size=3)
        X = np.c_[rng.uniform(-3, 3, (points, 2)), rng.uniform(4, 20, points)]
        Y = X @ R_true.T + t_true / np.linalg.norm(t_true)
        x1, x2 = X[:, :2] / X[:, 2:], Y[:, :2] / Y[:, 2:] + rng.normal(size=(points, 2)) * 0.002
        x2[:points // 10] += rng.normal(size=(points // 10, 2)) * 0.05
        R0, t0 = _so3_exp(rng.normal(size=3) * 0.01) @ R_true, t_true + rng.normal(size=3) * 0.05
        res = {}
        for name in names[i % 3:] + names[:i % 3]:
            c0 = time.thread_time()
            res[name] = (REFINE_PATHS[name](R0, t0, x1, x2, 2 / 150) if name in REFINE_PATHS
                         else refine_two_view(R0, t0, x1, x2, huber=2 / 150))
            rows[name].append(time.thread_time() - c0)
        Rb, tb = res['compiled']
        for name in worst:
            Ra, ta = res[name]
            worst[name] = max(worst[name], rotation_angle_deg(Ra.T @ Rb),
                              float(np.degrees(np.arccos(np.clip(ta @ tb, -1, 1)))))
    return {'paths': {n: _stats(v) for n, v in rows.items()}, 'max_difference_deg': worst}


def _print_compute(result: Dict[str, Any]) -> None:
    names = list(result['variants'])
    base = names[0]
    print(f'\npose-compute variants (ms, median; n = {result["variants"][base]["total_cpu"]["n"]}; '
          f'ratio against {base})')
    print(f'{"stage":<18}' + ''.join(f'{n:>22}' for n in names))
    for key in ('total_cpu', *STAGES):
        b = result['variants'][base][key]['median_ms']
        print(f'{key:<18}' + ''.join(
            f'{result["variants"][n][key]["median_ms"]:12.1f} ({result["variants"][n][key]["median_ms"] / b:4.2f}x)'
            if b > 1e-6 else f'{result["variants"][n][key]["median_ms"]:22.1f}' for n in names))
    print('direct-order inliers (median): ' + ', '.join(f'{n} {v:.0f}'
                                                       for n, v in result['inliers_direct_median'].items()))


def pnp_kernel_accuracy(args: argparse.Namespace) -> Dict[str, Any]:
    """Pose accuracy of solver variants on the same matches: PnP-RANSAC kernels (``KERNEL[:ITERATIONS]``,
    ``PnpParams.ransac_kernel`` / ``iterations``) and the essential-matrix solver (``essential[:THRESHOLD_PX]``).

    The held-out test scenes of the shipped metrics (``realm_ros.miniature``), all three modes, the pair sets of
    :func:`realm_ros.miniature.pose_checks.collect_pose_records` (motion pairs at gaps 3 / 6 / 12, zero-motion and
    unrelated-scene pairs); every pair is decoded and matched once and solved with each variant, then scored with
    :func:`~realm_ros.miniature.pose_checks.summarize_records`: the one-order estimate with the solver's own checks
    only, the symmetric estimate with every pair that both orders solve (ungated) and with the uncalibrated default
    gates."""
    import dataclasses as dc

    from realm_ros.geometry.pose import PnpParams
    from realm_ros.geometry.relative_pose import MatchingParams
    from realm_ros.geometry.symmetric import (PoseGates, _match_and_solve, combine_orders, decode_both_orders,
                                              refine_combined)
    from realm_ros.miniature.evaluate import EvalConfig, MiniModels, load_or_simulate
    from realm_ros.miniature.metrics import relative_pose
    from realm_ros.miniature.pose_checks import MODES, _pose_fields, radius_ratio, sequence_tokens, \
        summarize_records
    m = Path(args.models)
    models = MiniModels.load(m / 'mini_teacher.safetensors', m / 'mini_realm.safetensors',
                             m / 'mini_depth_head.safetensors', m / 'mini_seg_head.safetensors',
                             m / 'mini_mast3r.safetensors')
    cfg = EvalConfig(sequences=args.pnp_accuracy)
    seqs = load_or_simulate(cfg, args.cache, print)
    kernels = {}
    for v in args.pnp_variants:
        kernel, _, arg = v.partition(':')
        if kernel == 'essential':
            base = PnpParams(iterations=args.pnp_iterations, solver='essential',
                             essential_iterations=args.pnp_iterations)
            kernels[v] = dc.replace(base, essential_threshold_px=float(arg)) if arg else base
        else:
            kernels[v] = PnpParams(iterations=int(arg or args.pnp_iterations), ransac_kernel=kernel)
    matching = MatchingParams()
    size = seqs[0].rgb.shape[1]
    shape = (size, size)
    toks = [sequence_tokens(models, s) for s in seqs]
    pairs = []
    for si, seq in enumerate(seqs):
        for gap in cfg.pair_gaps:
            pairs += [('motion', gap, si, i, si, i + gap) for i in range(0, len(seq) - gap, cfg.pair_stride)]
        pairs += [('zero', 0, si, i, si, i) for i in range(0, len(seq), 6)]
        if len(seqs) > 1:
            sj = (si + 1) % len(seqs)
            pairs += [('unrelated', -1, si, i, sj, i) for i in range(0, min(len(seq), len(seqs[sj])), 6)]
    records: Dict[str, List[Dict[str, Any]]] = {k: [] for k in kernels}
    pnp_s: Dict[str, List[float]] = {k: [] for k in kernels}
    t_start = time.time()
    with torch.inference_mode():
        for n, (kind, gap, sa, i, sb, j) in enumerate(pairs):
            A, B = seqs[sa], seqs[sb]
            for mode, (s1, s2) in MODES.items():
                K1 = A.K_rgb if s1 == 'rgb' else A.K_event
                K2 = B.K_rgb if s2 == 'rgb' else B.K_event
                T1 = A.T_world_rgb[i] if s1 == 'rgb' else A.T_world_event[i]
                T2 = B.T_world_rgb[j] if s2 == 'rgb' else B.T_world_event[j]
                kf_d, cur_d, cur_s, kf_s = decode_both_orders(models.decoder, toks[sa][s1][i], toks[sb][s2][j],
                                                              shape, shape, view2_points=False)
                for name, pnp in kernels.items():
                    t0 = time.process_time()
                    direct, md = _match_and_solve(kf_d, cur_d, K2, pnp, matching, K1=K1)
                    swapped, ms = _match_and_solve(cur_s, kf_s, K1, pnp, matching, K1=K2)
                    combined = None
                    if pnp.solver == 'essential' and direct.ok and swapped.ok:
                        mid, _ = combine_orders(direct.T_ref_cur, swapped.T_cur_ref)
                        combined = np.linalg.inv(refine_combined(mid, direct, md, swapped, ms, K1, K2, pnp))
                    pnp_s[name].append(time.process_time() - t0)
                    records[name].append(dict(
                        mode=mode, kind=kind, gap=gap, seeds=(int(A.seed), int(B.seed)), frames=(i, j),
                        T_gt=relative_pose(T1, T2) if kind != 'unrelated' else None, direct=_pose_fields(direct),
                        swapped=_pose_fields(swapped), combined_T_cur_ref=combined,
                        radius_ratio=radius_ratio(md.xy1, md.xy2, K1, K2),
                        radius_ratio_swapped=radius_ratio(ms.xy1, ms.xy2, K2, K1)))
            if n % 40 == 0:
                print(f'  pnp accuracy: pair {n} of {len(pairs)} ({time.time() - t_start:.0f} s)', flush=True)
    all_pass = PoseGates(min_inliers=0, min_inlier_ratio=0.0, max_order_rot_deg=1e9, max_order_trans_ratio=1e9)
    out: Dict[str, Any] = {'pairs': len(pairs), 'seeds': [int(s.seed) for s in seqs], 'variants': list(kernels)}
    for name in kernels:
        out[name] = {'direct_pnp_checks_only': summarize_records(records[name], 'direct', all_pass),
                     'symmetric_ungated': summarize_records(records[name], 'symmetric', all_pass),
                     'symmetric_default_gates': summarize_records(records[name], 'symmetric', PoseGates()),
                     'matching_plus_pnp_cpu_ms': _stats(pnp_s[name])}
    return out


def _print_accuracy(acc: Dict[str, Any]) -> None:
    keys = ('published_rate', 'rot_err_deg_median', 'trans_err_deg_median', 'auc_pose@5', 'auc_pose@10',
            'auc_pose@20', 'forward_sign_correct', 'false_positive_rate_zero', 'false_positive_rate_unrelated')
    variants = acc['variants']
    print(f'\npose solver variant accuracy ({acc["pairs"]} pairs x 3 modes, test seeds {acc["seeds"]}); '
          f'matching + both PnPs CPU ms (min / median): ' + ', '.join(
              f'{k} {acc[k]["matching_plus_pnp_cpu_ms"]["min_ms"]:.1f} / '
              f'{acc[k]["matching_plus_pnp_cpu_ms"]["median_ms"]:.1f}' for k in variants))
    for method in ('direct_pnp_checks_only', 'symmetric_ungated', 'symmetric_default_gates'):
        for mode in acc[variants[0]][method]:
            for kernel in variants:
                r = acc[kernel][method][mode]
                print(f'{method:24s} {mode:11s} {kernel:10s} ' + ' '.join(f'{k}={r[k]:.3g}' for k in keys))


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


def runtime_paths(pipe: Any, inputs: List[Any], pairs: List[int], repeats: int) -> Dict[str, Any]:
    """CPU time of the pose step on the eager torch decoder against the OpenVINO-compiled decoder maps
    (``pose.decoder_runtime``), in fp32 and with the heads in bf16 (``pose.decoder_precision bf16-heads``),
    interleaved pair by pair: the decoder outputs alone (both orders batched, view 2 without points) and the whole
    :func:`symmetric_relative_pose` with the decoder's calibrated gates. Reports, for each compiled variant, the
    largest difference of its decoder outputs from torch's (relative to each output's largest value) and of the
    poses, and whether both published the same pairs."""
    from realm_ros.geometry.gates import gates_for_decoder
    from realm_ros.geometry.relative_pose import MatchingParams
    from realm_ros.geometry.symmetric import (DECODER_DTYPES, decode_both_orders, split_decoder_dtype,
                                              symmetric_relative_pose)
    from realm_ros.models.mast3r.compiled import OpenVinoPairMaps
    dec = pipe.mast3r
    maps = OpenVinoPairMaps(dec)
    size = (224, 224)
    store = pipe.pose_tracker.keyframes
    store.clear()
    kf_in = inputs[0]
    kf = store.add(kf_in.tokens, kf_in.cls, size, kf_in.K_model, kf_in.stamp_ns, source='events')
    gates = gates_for_decoder(dec, kf.source)
    kw = dict(pnp=pipe._pnp_params, matching=MatchingParams(subsample=8, border=3), gates=gates)
    heads16 = DECODER_DTYPES['bf16-heads']
    compile_s = {}
    for name, dtype in (('openvino', None), ('openvino_bf16_heads', heads16)):
        c0 = time.perf_counter()
        maps(torch.cat([kf.tokens, kf.tokens]), torch.cat([kf.tokens, kf.tokens]), (16, 16), (16, 16),
             heads_dtype=split_decoder_dtype(dtype)[1])
        compile_s[name] = time.perf_counter() - c0
    rows: Dict[str, List[float]] = defaultdict(list)
    diffs = {name: {'output_rel': 0.0, 'translation_m': 0.0, 'rotation_deg': 0.0, 'same_published': True}
             for name in compile_s}
    runtimes = {'torch': (None, None), 'openvino': (maps, None), 'openvino_bf16_heads': (maps, heads16)}
    for rep, k, _, tokens in _rounds(inputs, pairs, repeats):
        K_cur = inputs[k].K_model
        outs = _interleaved(rows, rep, k, {
            f'decoder_{name}': lambda m=m, d=d: decode_both_orders(dec, kf.tokens, tokens, size, size,
                                                                   view2_points=False, maps=m, compute_dtype=d)
            for name, (m, d) in runtimes.items()})
        ests = _interleaved(rows, rep, k, {
            f'step_{name}': lambda m=m, d=d: symmetric_relative_pose(dec, kf, tokens, size, K_cur, decoder_maps=m,
                                                                     decoder_dtype=d, **kw)
            for name, (m, d) in runtimes.items()})
        for name, diff in diffs.items():
            for a, b in zip(outs['decoder_torch'], outs[f'decoder_{name}']):
                for key in a:
                    scale = float(a[key].abs().max()) or 1.0
                    diff['output_rel'] = max(diff['output_rel'], float((a[key] - b[key]).abs().max()) / scale)
            pa, pb = ests['step_torch'].pose, ests[f'step_{name}'].pose
            diff['same_published'] &= pa.ok == pb.ok
            if pa.ok and pb.ok:
                diff['translation_m'] = max(diff['translation_m'], float(np.abs(pa.t - pb.t).max()))
                cos = (np.trace(pa.R.T @ pb.R) - 1) / 2
                diff['rotation_deg'] = max(diff['rotation_deg'], float(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
    return {'paths': {n: _stats(v) for n, v in rows.items()}, 'compile_s': compile_s, 'openvino': maps.version,
            'differences_from_torch': diffs}


def _write_json(path: Any, out: Dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(out, indent=1, default=float))


def _print_paths(title: str, res: Dict[str, Any], before: str, after: str, digits: int = 1) -> None:
    """One line comparing two interleaved code paths (min / median CPU ms and the median ratio) and whether their
    outputs were bit-identical."""
    a, b = res['paths'][before], res['paths'][after]
    print(f"{title} (CPU ms, min / median of {a['n']}): {before.replace('_', '-')} {a['min_ms']:.{digits}f} / "
          f"{a['median_ms']:.{digits}f}, {after.replace('_', '-')} {b['min_ms']:.{digits}f} / "
          f"{b['median_ms']:.{digits}f} ({b['median_ms'] / a['median_ms']:.2f}x median); bit-identical: "
          f"{res['identical']}")


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default=str(REPO / 'models'))
    p.add_argument('--seconds', type=float, default=0.5, help='simulated sequence length (windows at ~30 Hz)')
    p.add_argument('--pairs', type=int, nargs='*', default=None,
                   help='current windows for the stage breakdown (default: 1, 3, 6, 9, 12)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu', help="the pipeline's device (cuda: stage times are wall times)")
    p.add_argument('--pnp-iterations', type=int, default=1000, help='pose.ransac_iterations (node default 1000)')
    p.add_argument('--skip-whole', action='store_true', help='only the stage breakdown')
    p.add_argument('--pnp-accuracy', type=int, default=0, metavar='N',
                   help='also score the RANSAC variants (--pnp-variants) on N held-out test scenes (slow)')
    p.add_argument('--pnp-variants', nargs='+', default=['sqpnp', 'ap3p'], metavar='VARIANT',
                   help="solver variants scored by --pnp-accuracy: PnP kernels KERNEL[:ITERATIONS] and the "
                        "essential solver essential[:THRESHOLD_PX] (default: sqpnp ap3p at --pnp-iterations)")
    p.add_argument('--only-pnp-accuracy', action='store_true', help='skip the timing sections')
    p.add_argument('--compute-variants', nargs='*', default=[], metavar='PRECISION:KERNEL',
                   help='also time these pose-compute variants (pose.decoder_precision:pose.ransac_kernel of the '
                        'PnP solver, or PRECISION:essential for the essential-matrix solver, e.g. fp32:sqpnp '
                        'fp32:essential bf16:ap3p; the first is the baseline of the ratios)')
    p.add_argument('--only-compute', action='store_true', help='only the --compute-variants timing')
    p.add_argument('--refine-paths', action='store_true',
                   help="only the essential solver's refinement: compiled vs numpy analytic vs central differences")
    p.add_argument('--decoder-paths', action='store_true',
                   help='only the decoder outputs: lean head path vs the previous one (bit-identical, CPU time)')
    p.add_argument('--local-feature-paths', action='store_true',
                   help='only the local-feature map: pixel-major last layer vs channel-major (bit-identical, CPU)')
    p.add_argument('--runtime-paths', action='store_true',
                   help='only the pose step on the eager torch decoder vs the OpenVINO-compiled one (CPU time, '
                        'differences of outputs and poses)')
    p.add_argument('--runtime', default='torch', choices=('torch', 'openvino', 'auto'),
                   help="pose.decoder_runtime of the other sections (torch: the bit-identity checks hold)")
    p.add_argument('--cache', default='/tmp/realm_pose_step_cache', help='simulated test scenes (.npz)')
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Dict[str, Any] = {'threads': args.threads, 'pnp_iterations': args.pnp_iterations, 'torch': torch.__version__}
    if args.only_pnp_accuracy:
        out['pnp_accuracy'] = pnp_kernel_accuracy(args)
        _print_accuracy(out['pnp_accuracy'])
        _write_json(args.json, out)
        return 0
    if args.refine_paths:
        out['refine_paths'] = ref = refine_paths()
        paths = ref['paths']
        comp = paths['compiled']['median_ms']
        print(f"refine_two_view (CPU ms, min / median of {paths['compiled']['n']}): " + ', '.join(
            f"{n} {v['min_ms']:.2f} / {v['median_ms']:.2f}" for n, v in paths.items()))
        print('compiled against ' + ', '.join(
            f"{n}: {comp / paths[n]['median_ms']:.3f}x median, largest difference {d:.1e} deg"
            for n, d in ref['max_difference_deg'].items()))
        _write_json(args.json, out)
        return 0
    t0 = time.perf_counter()
    pipe, inputs = _load(args)
    pairs = [k for k in (args.pairs or [1, 3, 6, 9, 12]) if 0 < k < len(inputs)]
    print(f'{len(inputs)} windows, set-up {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}; '
          f'pairs (keyframe 0, current k): {pairs}')
    if args.runtime_paths:
        out['runtime_paths'] = res = runtime_paths(pipe, inputs, pairs, args.repeats)
        for part, title in (('decoder', 'decoder outputs of the pose step (both orders)'),
                            ('step', 'symmetric pose step (decoder, matching, solver, gates)')):
            a = res['paths'][f'{part}_torch']
            print(f"{title} (CPU ms, min / median of {a['n']}): torch {a['min_ms']:.1f} / {a['median_ms']:.1f}"
                  + ''.join(f", {name.replace('_', '-')} {b['min_ms']:.1f} / {b['median_ms']:.1f} "
                            f"({b['median_ms'] / a['median_ms']:.2f}x median)"
                            for name in ('openvino', 'openvino_bf16_heads')
                            for b in [res['paths'][f'{part}_{name}']]))
        for name, diff in res['differences_from_torch'].items():
            print(f"{name.replace('_', '-')} (OpenVINO {res['openvino']}, compile {res['compile_s'][name]:.1f} s) "
                  f"against torch fp32: largest output difference {diff['output_rel']:.1e} (relative); poses: "
                  f"translation {diff['translation_m']:.1e} m, rotation {diff['rotation_deg']:.1e} deg; same pairs "
                  f"published: {diff['same_published']}")
        _write_json(args.json, out)
        return 0
    if args.decoder_paths or args.local_feature_paths:
        if args.decoder_paths:
            out['decoder_paths'] = res = decoder_paths(pipe, inputs, pairs, args.repeats)
            _print_paths('decoder outputs of the pose step (both orders)', res, 'previous', 'lean')
        else:
            out['local_feature_paths'] = res = local_feature_paths(pipe, inputs, pairs, args.repeats)
            _print_paths('local-feature map of one view (both orders)', res, 'channel_major', 'pixel_major', 2)
        _write_json(args.json, out)
        return 0 if res['identical'] else 1
    if args.compute_variants:
        out['compute'] = compute_breakdown(pipe, inputs, pairs, args.repeats, args.compute_variants)
        _print_compute(out['compute'])
        if args.only_compute:
            _write_json(args.json, out)
            return 0
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
    if args.pnp_accuracy:
        out['pnp_accuracy'] = pnp_kernel_accuracy(args)
        _print_accuracy(out['pnp_accuracy'])
    _write_json(args.json, out)
    ok = out['breakdown']['identical'] and out.get('whole', {}).get('identical', True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
