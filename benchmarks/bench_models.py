#!/usr/bin/env python3
"""Encoder latency benchmark: REALM encoder (unmerged / merged LoRA) against the DUNE RGB encoder baseline.

Measures, in one process and on the same synthetic inputs (random weights; preprocessing excluded, like the
paper's Table S5: warm-up iterations then timed ones):

* baseline   DUNE ViT-B/14 RGB encoder forward (``forward_features``, final norm) at SIZE x SIZE
* realm      REALM encoder (voxel embedder + LoRA blocks), LoRA unmerged (training form)
* merged     REALM encoder after ``merge_lora()`` (inference form)
* embedder   the voxel embedder alone
* heads      depth-bins head; DINOv2 projector + segmentation head (bridge 'teacher_norm_inverse')
On CUDA each encoder also runs in bf16 autocast and (``--compile``) ``torch.compile``d. Reported: mean / median /
p90 ms per window, ratio against the baseline of the same dtype, and peak memory (CUDA: max allocated per
case; CPU: process peak RSS, which only grows).

Usage::

    python benchmarks/bench_models.py                          # CPU fp32, 448, batch 1
    python benchmarks/bench_models.py --device cuda --compile  # fp32 + bf16 + compiled on a GPU
    python benchmarks/bench_models.py --tiny --size 224        # miniature configuration
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realm_ros.models import (TINY_EMBEDDER, DepthBinsHead, DinoV2Projector, RealmEncoder,
                              SegmentationHead, VoxelEmbedder, bridge_tokens, vit_base, vit_tiny)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> Dict[str, float]:
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times: List[float] = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else peak_rss_mb()
    return dict(mean_ms=statistics.fmean(times), median_ms=statistics.median(times),
                p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))], peak_mb=peak)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--size', type=int, default=448, help='input side (multiple of 14; 448 -> 32x32 tokens)')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--warmup', type=int, default=None, help='default 1 on CPU, 5 on CUDA (paper: 5)')
    ap.add_argument('--iters', type=int, default=None, help='default 5 on CPU, 50 on CUDA (paper: 50)')
    ap.add_argument('--threads', type=int, default=None, help='torch intra-op threads (CPU)')
    ap.add_argument('--tiny', action='store_true', help='miniature ViT-Ti/14 + tiny embedder')
    ap.add_argument('--lora-rank', type=int, default=None, help='default 32 (8 with --tiny)')
    ap.add_argument('--compile', action='store_true', help='also time torch.compile (CUDA)')
    ap.add_argument('--skip-heads', action='store_true')
    ap.add_argument('--json', type=Path, default=None, help='write the results as JSON')
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    iters = args.iters if args.iters is not None else (50 if cuda else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16 is timed separately
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    if args.size % 14:
        ap.error('--size must be a multiple of 14')
    grid = args.size // 14
    if args.tiny:
        teacher = vit_tiny(img_size=args.size)
        emb_cfg = dict(TINY_EMBEDDER, grid_size=grid)
        rank = args.lora_rank or 8
    else:
        teacher = vit_base(img_size=args.size)
        emb_cfg = dict(grid_size=grid)
        rank = args.lora_rank or 32
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = RealmEncoder(teacher, VoxelEmbedder(**emb_cfg), lora_rank=rank).to(device).eval()
    with torch.no_grad():  # non-zero adapters so the unmerged path does real work
        for p in student.lora_state_dict().values():
            p.normal_(0, 0.01)
    merged = RealmEncoder(teacher, VoxelEmbedder(**emb_cfg), lora_rank=rank).to(device).eval()
    merged.load_state_dict(student.state_dict())
    merged.merge_lora()

    rgb = torch.randn(args.batch, 3, args.size, args.size, device=device)
    voxel = torch.randn(args.batch, emb_cfg.get('in_channels', 5), args.size, args.size, device=device)
    dim = teacher.embed_dim
    depth_head = DepthBinsHead(dim).to(device).eval()
    projector = DinoV2Projector(dim, 1024, teacher.num_heads).to(device).eval()
    seg_head = SegmentationHead(1024).to(device).eval()

    def no_grad(fn, dtype=None):
        def run():
            with torch.no_grad(), (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
                return fn()
        return run

    cases: Dict[str, Callable[[], object]] = {
        'baseline_dune_rgb': no_grad(lambda: teacher(rgb)),
        'realm_unmerged': no_grad(lambda: student(voxel)),
        'realm_merged': no_grad(lambda: merged(voxel)),
        'embedder': no_grad(lambda: merged.embedder(voxel)),
    }
    if not args.skip_heads:
        out = no_grad(lambda: merged(voxel))()
        size = (args.size, args.size)
        cases['depth_head'] = no_grad(lambda: depth_head(out['x_norm_patchtokens'], out['x_norm_clstoken'],
                                                         (grid, grid), size))
        cases['projector_seg_head'] = no_grad(lambda: seg_head(projector(
            bridge_tokens(out, 'teacher_norm_inverse', merged.teacher_norm_weight, merged.teacher_norm_bias),
            (grid, grid))[1], size))
    if cuda:
        bf16 = torch.bfloat16
        cases['baseline_dune_rgb_bf16'] = no_grad(lambda: teacher(rgb), bf16)
        cases['realm_unmerged_bf16'] = no_grad(lambda: student(voxel), bf16)
        cases['realm_merged_bf16'] = no_grad(lambda: merged(voxel), bf16)
        if args.compile:
            teacher_c = torch.compile(teacher)
            merged_c = torch.compile(merged)
            cases['baseline_dune_rgb_bf16_compiled'] = no_grad(lambda: teacher_c(rgb), bf16)
            cases['realm_merged_bf16_compiled'] = no_grad(lambda: merged_c(voxel), bf16)
            cases['realm_merged_fp32_compiled'] = no_grad(lambda: merged_c(voxel))

    results: Dict[str, Dict[str, float]] = {}
    for name, fn in cases.items():
        results[name] = time_fn(fn, device, warmup if 'compiled' not in name else max(warmup, 3), iters)

    def ratio(name: str) -> Optional[float]:
        suffix = name[len('realm_merged'):] if name.startswith('realm_merged') else \
            name[len('realm_unmerged'):] if name.startswith('realm_unmerged') else None
        if suffix is None:
            return None
        base = 'baseline_dune_rgb' + suffix
        return results[name]['median_ms'] / results[base]['median_ms'] if base in results else None

    env = dict(device=str(torch.cuda.get_device_name(device) if cuda else platform.processor() or 'cpu'),
               torch=torch.__version__, threads=torch.get_num_threads(), size=args.size, batch=args.batch,
               warmup=warmup, iters=iters, tiny=args.tiny, lora_rank=rank)
    print('# bench_models', json.dumps(env))
    print(f'{"case":36s} {"mean ms":>9s} {"median":>9s} {"p90":>9s} {"peak MB":>9s} {"vs baseline":>12s}')
    for name, r in results.items():
        rr = ratio(name)
        print(f'{name:36s} {r["mean_ms"]:9.2f} {r["median_ms"]:9.2f} {r["p90_ms"]:9.2f} {r["peak_mb"]:9.0f} '
              f'{(f"{rr:.3f}x" if rr else ""):>12s}')
    un, me = results['realm_unmerged']['median_ms'], results['realm_merged']['median_ms']
    print(f'merged / unmerged LoRA: {me / un:.3f}x')
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, results=results), indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
