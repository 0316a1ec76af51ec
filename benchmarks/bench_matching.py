#!/usr/bin/env python3
"""Benchmark: reciprocal NN matching (new CPU kernel vs the previous design vs the official MASt3R matcher), decoder.

Matchers, run back to back in the same process on the same descriptors, interleaved (one run of each per round, so
that load changes on a shared machine hit all of them alike):

* official: MASt3R ``mast3r.fast_nn.fast_reciprocal_NNs(desc1, desc2, subsample_or_initxy1=8, device=...,
  dist='dot', block_size=2**13)`` + the README border filter (3 px), imported from a checkout of
  https://github.com/naver/mast3r (with its dust3r submodule) given by ``--mast3r-root`` or ``$MAST3R_ROOT``. Without
  a checkout the baseline is ``reference_reciprocal_nn`` (a literal same-semantics re-implementation) and the
  output says so. scipy is imported by ``mast3r.fast_nn`` but only used by its KD-tree path; when scipy is missing
  a stub that raises on use is installed and the output says so.
* previous: the previous CPU design, ``fast_reciprocal_nn(..., backend='torch')`` (blockwise ``mm`` + ``max``,
  still selectable; CPU only).
* numba full search: the CPU kernel without the tile-bound pruning (``prune=False``, the design before it).
* new: ``fast_reciprocal_nn`` defaults (CPU: numba kernel with exact tile-bound pruning; CUDA: Triton fp16, plus
  the fp32 variants).

Per pair: min and median wall time over the rounds, min process CPU time (robust to time slicing by other
processes; it sums all threads), ratios vs the new code, and whether the match sets are identical to the baseline.

Descriptors (``--descriptors``): ``synthetic`` (default): spatially smooth random fields plus noise (24-d,
L2-normalised), the second image a shifted mix of the first and 40 % fresh noise, so that seeds need several
iterations and some never converge; ``decoder``: the shipped miniature decoder's descriptor maps of two simulated
event windows 6 frames apart (keyframe-first order, 224 x 224 only: what the pose step matches).

Usage:
    MAST3R_ROOT=/path/to/mast3r python benchmarks/bench_matching.py          # CPU 224 and 448 (+ CUDA)
    python benchmarks/bench_matching.py --sizes 224 --repeats 5 --threads 1
    python benchmarks/bench_matching.py --sizes 224 --descriptors decoder     # the miniature decoder's maps
    python benchmarks/bench_matching.py --decoder            # also time the decoder (tiny and ViT-B configs)
    python benchmarks/bench_matching.py --sizes 448 --cuda-only   # GPU check (benchmarks/gpu_check.sh)
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realm_ros.geometry.matching import fast_reciprocal_nn, reference_reciprocal_nn, seed_grid, triton_available


def descriptor_pair(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 24, size // 16 + 1, size // 16 + 1, generator=g)
    d1 = torch.nn.functional.interpolate(base, size=(size, size), mode='bilinear', align_corners=False)[0]
    d1 = d1.permute(1, 2, 0) + 0.3 * torch.randn(size, size, 24, generator=g)
    d1 = d1 / d1.norm(dim=-1, keepdim=True)
    d2 = 0.6 * torch.roll(d1, (5, 9), (0, 1)) + 0.4 * torch.randn(size, size, 24, generator=g)
    return d1, d2 / d2.norm(dim=-1, keepdim=True)


def decoder_pair(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptor maps of the shipped miniature decoder: simulated event windows 1 and 7 of the first held-out test
    scene through the miniature REALM encoder, decoded as (window 1, window 7)."""
    from realm_ros.miniature.data import sim_config, split_seeds
    from realm_ros.pipeline.core import PipelineConfig, RealmPipeline
    from realm_ros.sim.simulator import Simulator
    if size != 224:
        raise SystemExit('--descriptors decoder: the miniature models run at 224 x 224 only')
    m = Path(__file__).resolve().parents[1] / 'models'
    sim = Simulator(sim_config(split_seeds('test', 1)[0], 224, 0.3))
    chunks = list(sim.stream())[1:8]
    pipe = RealmPipeline(PipelineConfig(realm_checkpoint=str(m / 'mini_realm.safetensors'),
                                        dune_checkpoint=str(m / 'mini_teacher.safetensors'),
                                        mast3r_checkpoint=str(m / 'mini_mast3r.safetensors'), device='cpu',
                                        precision='fp32', heads=('pose',)))
    inputs = [pipe.process_dense(c.events, 224, 224, sim.event_camera.K, c.t_end_ns)[1] for c in (chunks[0],
                                                                                                  chunks[6])]
    with torch.inference_mode():
        p1, p2 = pipe.mast3r(inputs[0].tokens, inputs[1].tokens, (224, 224), (224, 224))
    return p1['desc'][0].clone(), p2['desc'][0].clone()


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls and the last output."""
    times, out = [], None
    for _ in range(repeats):
        t, _, out = run_timed(fn, device)
        times.append(t)
    return statistics.median(times), out


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


def load_official(root: str | None):
    """``mast3r.fast_nn.fast_reciprocal_NNs`` from a checkout, or (None, reason)."""
    if not root:
        return None, 'no MASt3R checkout given (--mast3r-root / $MAST3R_ROOT)'
    root_path = Path(root).expanduser().resolve()
    if not (root_path / 'mast3r' / 'fast_nn.py').is_file():
        return None, f'{root_path} is not a MASt3R checkout (mast3r/fast_nn.py missing)'
    sys.path.insert(0, str(root_path))
    note = ''
    try:
        importlib.import_module('scipy.spatial')
    except ImportError:
        stub = types.ModuleType('scipy.spatial')

        class KDTree:  # stand-in: only the KD-tree path of fast_nn would use it
            def __init__(self, *args, **kwargs):
                raise RuntimeError('scipy is not installed (stub from bench_matching.py)')

        stub.KDTree = KDTree
        sys.modules.setdefault('scipy', types.ModuleType('scipy'))
        sys.modules['scipy.spatial'] = stub
        note = ' (scipy missing: KDTree stubbed, unused with dist="dot")'
    try:
        fast_nn = importlib.import_module('mast3r.fast_nn')
    except Exception as exc:  # noqa: BLE001 - report any import problem and fall back
        return None, f'importing mast3r.fast_nn from {root_path} failed: {type(exc).__name__}: {exc}'
    return fast_nn.fast_reciprocal_NNs, f'official MASt3R fast_reciprocal_NNs from {root_path}{note}'


def official_matches(fn, d1: torch.Tensor, d2: torch.Tensor, device: torch.device, border: int = 3):
    """The README call and its border filter; returns (xy1, xy2) int64 (M, 2)."""
    xy1, xy2 = fn(d1, d2, subsample_or_initxy1=8, device=device, dist='dot', block_size=2 ** 13)
    xy1, xy2 = np.asarray(xy1, dtype=np.int64), np.asarray(xy2, dtype=np.int64)
    h1, w1 = d1.shape[:2]
    h2, w2 = d2.shape[:2]
    keep = ((xy1[:, 0] >= border) & (xy1[:, 0] < w1 - border) & (xy1[:, 1] >= border) & (xy1[:, 1] < h1 - border)
            & (xy2[:, 0] >= border) & (xy2[:, 0] < w2 - border) & (xy2[:, 1] >= border) & (xy2[:, 1] < h2 - border))
    return xy1[keep], xy2[keep]


def run_timed(fn, device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, out


def as_pairs(out) -> tuple[np.ndarray, np.ndarray]:
    return (out.xy1, out.xy2) if hasattr(out, 'xy1') else out


def bench_matching(size: int, device: torch.device, repeats: int, official, official_label: str,
                   previous: bool, descriptors: str = 'synthetic',
                   pair: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    d1, d2 = pair if pair is not None else descriptor_pair(size)
    d1, d2 = d1.to(device), d2.to(device)
    tag = f'[{device.type} {size}x{size} {descriptors} {len(seed_grid(size, size, 8))} seeds]'
    if official is not None:
        base = ('official', lambda: official_matches(official, d1, d2, device))
    else:
        base = ('same-semantics reference', lambda: reference_reciprocal_nn(d1, d2))
    runs = [base]
    if previous and device.type == 'cpu':
        runs.append(('previous (torch backend)', lambda: fast_reciprocal_nn(d1, d2, backend='torch')))
    if device.type == 'cpu':
        runs.append(('numba full search', lambda: fast_reciprocal_nn(d1, d2, prune=False)))
    if device.type == 'cuda':
        runs.append(('new torch fp32', lambda: fast_reciprocal_nn(d1, d2, backend='torch',
                                                                  compute_dtype=torch.float32)))
        if triton_available(device):
            runs.append(('new triton fp32', lambda: fast_reciprocal_nn(d1, d2, backend='triton',
                                                                       compute_dtype=torch.float32)))
    runs.append(('new (default)', lambda: fast_reciprocal_nn(d1, d2)))
    for _, fn in runs[1:]:                                      # warm-up (numba cache load, cuBLAS, Triton build)
        fn()
    if device.type == 'cuda':
        runs[0][1]()
    wall: dict[str, list[float]] = {name: [] for name, _ in runs}
    cpu: dict[str, list[float]] = {name: [] for name, _ in runs}
    outs: dict[str, tuple] = {}
    for _ in range(repeats):
        for name, fn in runs:
            t, c, out = run_timed(fn, device)
            wall[name].append(t)
            cpu[name].append(c)
            outs[name] = as_pairs(out)
    print(f'{tag} baseline: {official_label}')
    ref = outs[base[0]]
    new_name = runs[-1][0]
    for name, _ in runs:
        xy1, xy2 = outs[name]
        same = np.array_equal(xy1, ref[0]) and np.array_equal(xy2, ref[1])
        common = set(map(tuple, np.hstack([xy1, xy2]).tolist())) & set(map(tuple, np.hstack(ref).tolist()))
        tmin, tmed, cmin = min(wall[name]), statistics.median(wall[name]), min(cpu[name])
        line = (f'{tag} {name:26s}: wall min {tmin * 1e3:9.1f} ms  median {tmed * 1e3:9.1f} ms  '
                f'cpu min {cmin * 1e3:9.1f} ms  {len(xy1)} matches  identical={same}'
                + ('' if same else f' (overlap {len(common) / max(1, len(ref[0])):.3f})'))
        if name != new_name:
            n_min, n_med, n_cpu = min(wall[new_name]), statistics.median(wall[new_name]), min(cpu[new_name])
            line += (f'  new is x{tmin / n_min:.1f} (wall min) x{tmed / n_med:.1f} (wall median) '
                     f'x{cmin / n_cpu:.1f} (cpu min) faster')
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 448])
    parser.add_argument('--repeats', type=int, default=3, help='interleaved rounds (report min and median)')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads (= numba workers)')
    parser.add_argument('--mast3r-root', default=os.environ.get('MAST3R_ROOT'),
                        help='MASt3R checkout (default $MAST3R_ROOT); without it: same-semantics reference')
    parser.add_argument('--no-previous', action='store_true', help='skip the previous design (torch backend)')
    parser.add_argument('--cpu-only', action='store_true')
    parser.add_argument('--cuda-only', action='store_true', help='skip the CPU runs (GPU checks)')
    parser.add_argument('--decoder', action='store_true', help='also time the decoder forward')
    parser.add_argument('--descriptors', choices=('synthetic', 'decoder'), default='synthetic',
                        help="'decoder': the shipped miniature decoder's maps of simulated events (224 only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = {}
    if args.descriptors == 'decoder':       # before load_official: its scipy stub would break the model imports
        pairs = {size: decoder_pair(size) for size in args.sizes}
    official, label = load_official(args.mast3r_root)
    print(f'torch {torch.__version__}, {args.threads} CPU threads, CUDA: '
          f'{torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}; baseline: {label}')
    if args.cuda_only and not torch.cuda.is_available():
        parser.error('--cuda-only: CUDA is not available')
    devices = [] if args.cuda_only else [torch.device('cpu')]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device('cuda'))
    for device in devices:
        for size in args.sizes:
            bench_matching(size, device, args.repeats, official, label, not args.no_previous, args.descriptors,
                           pairs.get(size))
        if args.decoder:
            bench_decoder(device, args.repeats)


if __name__ == '__main__':
    main()
