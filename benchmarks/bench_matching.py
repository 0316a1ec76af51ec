#!/usr/bin/env python3
"""Benchmark: fast reciprocal NN matching vs the literal reference, and the DUNE-MASt3R decoder forward.

Both matchers run in the same process on the same descriptors; the script prints times and the speed-up ratio and
checks that the matches agree (identical in float32; overlap reported for the float16 CUDA default).

Descriptors: spatially smooth random fields plus noise (24-d, L2-normalised), the second image a shifted mix of the
first and fresh noise, so that seeds need several iterations and some never converge, as on real image pairs.

Usage:
    python benchmarks/bench_matching.py                      # CPU 224 and 448 (+ CUDA 448 when available)
    python benchmarks/bench_matching.py --sizes 224 --repeats 3
    python benchmarks/bench_matching.py --decoder            # also time the decoder (tiny and ViT-B configs)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realm_ros.geometry.matching import fast_reciprocal_nn, reference_reciprocal_nn, triton_available


def descriptor_pair(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 24, size // 16 + 1, size // 16 + 1, generator=g)
    d1 = torch.nn.functional.interpolate(base, size=(size, size), mode='bilinear', align_corners=False)[0]
    d1 = d1.permute(1, 2, 0) + 0.3 * torch.randn(size, size, 24, generator=g)
    d1 = d1 / d1.norm(dim=-1, keepdim=True)
    d2 = 0.6 * torch.roll(d1, (5, 9), (0, 1)) + 0.4 * torch.randn(size, size, 24, generator=g)
    return d1, d2 / d2.norm(dim=-1, keepdim=True)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def pairs(m) -> set:
    return set(map(tuple, np.hstack([m.xy1, m.xy2]).tolist()))


def bench_matching(size: int, device: torch.device, repeats: int) -> None:
    d1, d2 = descriptor_pair(size)
    d1, d2 = d1.to(device), d2.to(device)
    ref_reps = max(1, repeats if size <= 224 or device.type == 'cuda' else 1)
    if device.type == 'cuda':                                   # warm-up (allocator, cuBLAS, Triton compile)
        reference_reciprocal_nn(d1, d2)
        fast_reciprocal_nn(d1, d2)
        fast_reciprocal_nn(d1, d2, compute_dtype=torch.float32)
        fast_reciprocal_nn(d1, d2, backend='torch')
    t_ref, ref = timed(lambda: reference_reciprocal_nn(d1, d2), ref_reps, device)
    print(f'[{device.type} {size}x{size}] reference (float32, host loop, 8192-blocks): {t_ref * 1e3:9.2f} ms  '
          f'{ref.count} matches')
    variants = [('fast torch float32', dict(backend='torch', compute_dtype=torch.float32))]
    if device.type == 'cuda':
        variants.append(('fast torch float16', dict(backend='torch')))
        if triton_available(device):
            variants.append(('fast triton float32', dict(backend='triton', compute_dtype=torch.float32)))
            variants.append(('fast triton float16 (default)', dict(backend='triton')))
    for name, kw in variants:
        t, m = timed(lambda: fast_reciprocal_nn(d1, d2, **kw), repeats, device)
        same = np.array_equal(m.xy1, ref.xy1) and np.array_equal(m.xy2, ref.xy2)
        overlap = len(pairs(m) & pairs(ref)) / max(1, ref.count)
        print(f'[{device.type} {size}x{size}] {name:32s}: {t * 1e3:9.2f} ms  {m.count} matches  '
              f'identical={same} overlap={overlap:.3f}  speed-up x{t_ref / t:.1f}')


def bench_decoder(device: torch.device, repeats: int) -> None:
    from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder
    for name, cfg, size in (('tiny', DuneMast3rConfig.tiny(), 224), ('vit_base', DuneMast3rConfig.vit_base(), 448)):
        if device.type == 'cpu' and name == 'vit_base':
            size = 224
        torch.manual_seed(0)
        model = DuneMast3rDecoder(cfg).to(device).eval()
        n = (size // 14) ** 2
        t1 = torch.randn(1, n, cfg.enc_embed_dim, device=device)
        t2 = torch.randn(1, n, cfg.enc_embed_dim, device=device)
        for impl in ('explicit', 'sdpa'):
            model.set_attention_impl(impl)
            with torch.no_grad():
                model(t1, t2, (size, size), (size, size))
                t, _ = timed(lambda: model(t1, t2, (size, size), (size, size)), repeats, device)  # noqa: F821
            print(f'[{device.type}] decoder {name:8s} {size}x{size} attention={impl:8s}: {t * 1e3:9.1f} ms per pair')
        if device.type == 'cuda':
            model.cast_decoder(torch.bfloat16)
            with torch.no_grad():
                model(t1, t2, (size, size), (size, size))
                t, _ = timed(lambda: model(t1, t2, (size, size), (size, size)), repeats, device)  # noqa: F821
            print(f'[{device.type}] decoder {name:8s} {size}x{size} sdpa bf16 decoder : {t * 1e3:9.1f} ms per pair')
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 448])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--cpu-only', action='store_true')
    parser.add_argument('--decoder', action='store_true', help='also time the decoder forward')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, {args.threads} CPU threads, CUDA: '
          f'{torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}')
    devices = [torch.device('cpu')]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device('cuda'))
    for device in devices:
        for size in args.sizes:
            bench_matching(size, device, args.repeats)
        if args.decoder:
            bench_decoder(device, args.repeats)


if __name__ == '__main__':
    main()
