"""Reciprocal nearest-neighbour matching of dense descriptors (MASt3R ``fast_reciprocal_NNs`` semantics, fast).

Semantics (those of ``mast3r/fast_nn.py`` with ``dist='dot'``), shared by :func:`fast_reciprocal_nn` and the slow
:func:`reference_reciprocal_nn`:

1. Seeds on a grid of image 1: rows/cols ``S//2, S//2 + S, ...`` (linear index ``x + W1 * y``, sorted).
2. Per seed, alternate nearest-neighbour half-steps (similarity = dot product of the L2-normalised descriptors,
   neighbour = arg-max): ``xy2 = NN_2(desc1[xy1])`` then ``xy1 = NN_1(desc2[xy2])``, each only for seeds not yet
   converged. A seed converges as soon as a half-step leaves its current point unchanged, i.e. (xy1, xy2) is a
   mutual nearest-neighbour pair. At most ``max_iter`` (10) iterations; seeds not converged then are dropped.
3. Converged pairs are made unique and sorted by (idx1, idx2); returned as integer pixel coordinates (x, y).
4. Pairs with a point within ``border`` (3) pixels of an image edge, in either image, are dropped.

Ties: the neighbour is the lowest linear pixel index among the maximal similarities (the reference keeps the first
maximum too). With ``compute_dtype=torch.float16`` (the CUDA default) similarities are products of fp16-rounded
descriptors accumulated in fp32; descriptors closer than fp16 resolution (~1e-3 in similarity) may then resolve to a
different, equally good neighbour than an fp32 computation. Use ``compute_dtype=torch.float32`` for bit-level
agreement with an fp32 reference.

Speed (vs the reference, which runs the host loop in numpy, moves the active seeds to the device and back every
half-step, and tiles a brute-force search in Python):

* CPU (``backend='numba'``, the default there): a fused numba kernel computes each similarity as the same float32
  fused-multiply-add chain as the official BLAS call and keeps the first arg-max, 4 queries per pass over each
  cache-resident database chunk, without materialising similarities; queries are de-duplicated and
  memoised (a pixel's neighbour is computed once), the search runs on ``torch.get_num_threads()`` threads, and
  half-steps with only a few active seeds use the official call shapes (see :mod:`._matching_cpu`), so the matches
  are identical to MASt3R's ``fast_reciprocal_NNs(..., dist='dot', block_size=2**13)``. By default the search
  skips 8 x 8 pixel tiles whose Cauchy-Schwarz bound (tile centre and radius, inflated beyond the float32 rounding)
  is below the running maximum (:mod:`._matching_tiles`): the same neighbours from ~1/8 of the similarities on
  smooth descriptor maps (``prune=False``: the full search).
* each half-step is one fused "matmul + running arg-max" pass over the database without materialising the
  similarity matrix (Triton kernel on CUDA; blockwise ``mm`` + ``max`` in PyTorch elsewhere), computing only the
  needed direction (no reduction whose result is thrown away);
* on CUDA with Triton the whole loop is free of host synchronisation: active seeds are moved to the front with a
  stable sort on the device and kernel blocks past the (device-resident) active count return at once;
  without Triton the active set is compacted at iterations 1, 2, 4, 8 only (4 synchronisations instead of 2 per
  iteration); the PyTorch backend on CPU (``backend='torch'``, the previous CPU design) compacts the active set every
  half-step and de-duplicates and memoises the queries.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import _matching_cpu

__all__ = ['ReciprocalMatches', 'fast_reciprocal_nn', 'reference_reciprocal_nn', 'seed_grid', 'triton_available',
           'warm_up_matching']

_LOG = logging.getLogger(__name__)


class ReciprocalMatches(NamedTuple):
    """Matched pixels: ``xy1[i]`` in image 1 corresponds to ``xy2[i]`` in image 2; int64 (M, 2) as (x, y)."""

    xy1: np.ndarray
    xy2: np.ndarray

    @property
    def count(self) -> int:  # type: ignore[override]  # public name of M since the first release; tuple.count unused
        """Number of matches M."""
        return int(self.xy1.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# Input handling

def _as_descriptor_map(desc: Any, name: str) -> Tensor:
    if isinstance(desc, np.ndarray):
        desc = torch.from_numpy(np.ascontiguousarray(desc))
    if not isinstance(desc, Tensor):
        raise TypeError(f'{name} must be a torch.Tensor or numpy array, got {type(desc).__name__}')
    if desc.ndim == 4 and desc.shape[0] == 1:
        desc = desc[0]
    if desc.ndim != 3:
        raise ValueError(f'{name} must be (H, W, D) (or (1, H, W, D)), got shape {tuple(desc.shape)}')
    if min(desc.shape) < 1:
        raise ValueError(f'{name} is empty: shape {tuple(desc.shape)}')
    if not desc.is_floating_point():
        raise ValueError(f'{name} must be floating point, got {desc.dtype}')
    return desc


def seed_grid(height: int, width: int, subsample: int) -> np.ndarray:
    """Sorted linear indices ``x + W * y`` of the seed grid (rows/cols ``S//2, S//2 + S, ...``)."""
    if subsample < 1:
        raise ValueError(f'subsample must be >= 1, got {subsample}')
    ys = np.arange(subsample // 2, height, subsample)
    xs = np.arange(subsample // 2, width, subsample)
    return (xs[None, :] + width * ys[:, None]).reshape(-1).astype(np.int64)


def _finalize(idx1: Tensor, idx2: Tensor, hw1: tuple[int, int], hw2: tuple[int, int],
              border: int) -> ReciprocalMatches:
    """Unique (idx1, idx2) pairs sorted by idx1 then idx2, border filter, (x, y) coordinates (one host copy)."""
    w1, w2 = hw1[1], hw2[1]
    n2 = hw2[0] * hw2[1]
    keys = torch.unique(idx1.to(torch.int64) * n2 + idx2.to(torch.int64), sorted=True)
    keys = keys.cpu().numpy()
    i1, i2 = keys // n2, keys % n2
    xy1 = np.stack([i1 % w1, i1 // w1], axis=1)
    xy2 = np.stack([i2 % w2, i2 // w2], axis=1)
    if border > 0:
        keep = ((xy1[:, 0] >= border) & (xy1[:, 0] < w1 - border) & (xy1[:, 1] >= border)
                & (xy1[:, 1] < hw1[0] - border) & (xy2[:, 0] >= border) & (xy2[:, 0] < w2 - border)
                & (xy2[:, 1] >= border) & (xy2[:, 1] < hw2[0] - border))
        xy1, xy2 = xy1[keep], xy2[keep]
    return ReciprocalMatches(xy1.astype(np.int64), xy2.astype(np.int64))


# ---------------------------------------------------------------------------------------------------------------
# Nearest-neighbour search backends: queries (A, D) against a database (P, D) -> arg-max index (A,) int64

def _nn_blockwise_torch(queries: Tensor, db_t: Tensor, max_elems: int) -> Tensor:
    """Arg-max of ``queries @ db`` per row, blockwise over both operands; ``db_t`` is the (D, P) transposed database.

    Keeps a running maximum with a strict comparison so that the earliest block wins ties; within a block
    ``torch.max`` returns the first maximal index. Never materialises more than ``max_elems`` similarities.
    """
    a = queries.shape[0]
    p = db_t.shape[1]
    out = torch.empty(a, dtype=torch.int64, device=queries.device)
    if a == 0:
        return out
    rows = max(1, min(a, max_elems // max(1, p)))
    if rows >= 256 or rows == a:
        cols = p
    else:                                     # database too long for one pass at this row count: tile it too
        rows = min(a, 256)
        cols = max(1024, max_elems // rows)
    for r0 in range(0, a, rows):
        q = queries[r0:r0 + rows]
        if cols >= p:
            out[r0:r0 + rows] = torch.mm(q, db_t).max(dim=1).indices
            continue
        best_v = torch.full((q.shape[0],), -torch.inf, dtype=torch.float32, device=q.device)
        best_i = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
        for c0 in range(0, p, cols):
            v, i = torch.mm(q, db_t[:, c0:c0 + cols]).max(dim=1)
            v = v.float()
            upd = v > best_v
            best_v = torch.where(upd, v, best_v)
            best_i = torch.where(upd, i + c0, best_i)
        out[r0:r0 + rows] = best_i
    return out


_TRITON_STATE: dict[str, Any] = {}


def triton_available(device: torch.device | str) -> bool:
    """True when the fused Triton kernel can run on ``device`` (CUDA + importable triton, not disabled)."""
    device = torch.device(device)
    if device.type != 'cuda' and os.environ.get('TRITON_INTERPRET') != '1':
        return False
    if os.environ.get('REALM_DISABLE_TRITON') == '1':
        return False
    return _triton_kernel() is not None


def _triton_kernel() -> Any:
    if 'kernel' in _TRITON_STATE:
        return _TRITON_STATE['kernel']
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - any import failure means "no triton"
        _TRITON_STATE['kernel'] = None
        return None

    @triton.jit
    def _nn_argmax_kernel(q_ptr, db_ptr, val_ptr, idx_ptr, n_active_ptr, n_rows, n_db, tiles_per_split,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          IEEE: tl.constexpr):
        """Rows [pid_m*BM, +BM) of q against database tiles of split pid_s: running max/arg-max in registers."""
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        n_active = tl.load(n_active_ptr)
        if pid_m * BLOCK_M < n_active:
            rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            dims = tl.arange(0, BLOCK_D)
            q = tl.load(q_ptr + rows[:, None] * BLOCK_D + dims[None, :], mask=rows[:, None] < n_rows, other=0.0)
            best_v = tl.full((BLOCK_M,), float('-inf'), tl.float32)
            best_i = tl.zeros((BLOCK_M,), tl.int32)
            col_start = pid_s * tiles_per_split * BLOCK_N
            col_end = tl.minimum(col_start + tiles_per_split * BLOCK_N, n_db)
            for c0 in range(col_start, col_end, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N)
                db = tl.load(db_ptr + cols[None, :] * BLOCK_D + dims[:, None], mask=cols[None, :] < col_end,
                             other=0.0)
                if IEEE:
                    s = tl.dot(q, db, input_precision='ieee')     # float32 inputs: no TF32 rounding
                else:
                    s = tl.dot(q, db)
                s = tl.where(cols[None, :] < col_end, s, float('-inf'))
                v, i = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
                upd = v > best_v
                best_v = tl.where(upd, v, best_v)
                best_i = tl.where(upd, i + c0, best_i)
            out = pid_s * n_rows + rows
            tl.store(val_ptr + out, best_v, mask=rows < n_rows)
            tl.store(idx_ptr + out, best_i, mask=rows < n_rows)

    _TRITON_STATE['kernel'] = _nn_argmax_kernel
    return _nn_argmax_kernel


def _nn_triton(queries: Tensor, db: Tensor, n_active: Tensor, splits: int) -> Tensor:
    """Fused arg-max with the Triton kernel. ``queries`` (A, Dp) and ``db`` (P, Dp) fp16/fp32, Dp a power of 2 >= 16;
    rows at or past ``n_active`` (a device scalar) are not computed (their result is garbage and must be masked)."""
    kernel = _triton_kernel()
    a, dp = queries.shape
    p = db.shape[0]
    block_m, block_n = 64, 128
    tiles = -(-p // block_n)
    splits = max(1, min(splits, tiles))
    tiles_per_split = -(-tiles // splits)
    splits = -(-tiles // tiles_per_split)
    vals = torch.empty((splits, a), dtype=torch.float32, device=queries.device)
    idxs = torch.zeros((splits, a), dtype=torch.int32, device=queries.device)
    grid = (-(-a // block_m), splits)
    kernel[grid](queries, db, vals, idxs, n_active, a, p, tiles_per_split,
                 BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=dp, IEEE=queries.dtype == torch.float32)
    # max over splits returns the first (lowest-index) split among equal maxima -> lowest pixel index wins ties
    best_split = vals.max(dim=0).indices
    return idxs.gather(0, best_split[None]).squeeze(0).to(torch.int64)


# ---------------------------------------------------------------------------------------------------------------
# The fast matcher

def _pad_dim(desc: Tensor, dtype: torch.dtype) -> Tensor:
    d = desc.shape[-1]
    dp = max(16, 1 << (d - 1).bit_length())
    out = torch.zeros((desc.shape[0], dp), dtype=dtype, device=desc.device)
    out[:, :d] = desc
    return out


def fast_reciprocal_nn(desc1: Any, desc2: Any, subsample: int = 8, *, max_iter: int = 10, border: int = 3,
                       device: torch.device | str | None = None, compute_dtype: torch.dtype | None = None,
                       backend: str = 'auto', max_block_elems: int | None = None, block_size: int = 8192,
                       threads: int | None = None, prune: bool = True) -> ReciprocalMatches:
    """Mutual nearest-neighbour matches between two dense descriptor maps (MASt3R semantics, see module doc).

    Args:
        desc1, desc2: (H_i, W_i, D) L2-normalised descriptors (torch or numpy; a leading batch of 1 is accepted),
            e.g. ``pred1['desc'][0]`` and ``pred2['desc'][0]`` of :class:`realm_ros.models.mast3r.DuneMast3rDecoder`.
            Non-finite values are replaced by 0 (such pixels match nothing in particular).
        subsample: seed grid pitch S in image 1.
        max_iter: iteration limit (10 in MASt3R).
        border: drop pairs within this many pixels of an edge in either image (3 in the MASt3R README; 0 = off).
        device: where to compute (default: ``desc1``'s device).
        compute_dtype: similarity precision; default float16 on CUDA, float32 elsewhere.
        backend: 'auto' (CUDA: Triton when available, else PyTorch; CPU: numba when installed and
            ``compute_dtype`` is float32, else PyTorch), 'numba' (CPU only), 'triton' or 'torch'.
        max_block_elems: bound on similarities materialised at once by the PyTorch backend (default 2**26 on CUDA,
            2**20 on CPU, i.e. blocks that stay in cache).
        block_size: the official matcher's ``block_size`` (2**13 in the MASt3R README call); the numba backend
            reproduces its BLAS call shapes for half-steps with few active seeds, so that even their roundings agree.
        threads: worker threads of the numba backend (default ``torch.get_num_threads()``).
        prune: numba backend: skip 8 x 8 pixel tiles whose Cauchy-Schwarz bound shows they cannot hold the
            neighbour (:mod:`._matching_tiles`; identical matches, ~1/8 of the similarities on smooth maps). False:
            the full search (the previous design, kept for comparison).

    Returns:
        :class:`ReciprocalMatches` with int64 (M, 2) pixel coordinates (x, y) in each image.
    """
    d1 = _as_descriptor_map(desc1, 'desc1')
    d2 = _as_descriptor_map(desc2, 'desc2')
    if d1.shape[-1] != d2.shape[-1]:
        raise ValueError(f'descriptor dimensions differ: desc1 {d1.shape[-1]} vs desc2 {d2.shape[-1]}')
    if max_iter < 1:
        raise ValueError(f'max_iter must be >= 1, got {max_iter}')
    dev = torch.device(device) if device is not None else d1.device
    if dev.type == 'cuda' and dev.index is None:
        dev = torch.device('cuda', torch.cuda.current_device())
    if compute_dtype is None:
        compute_dtype = torch.float16 if dev.type == 'cuda' else torch.float32
    if max_block_elems is None:
        max_block_elems = 1 << 26 if dev.type == 'cuda' else 1 << 20
    hw1, hw2 = (int(d1.shape[0]), int(d1.shape[1])), (int(d2.shape[0]), int(d2.shape[1]))
    if backend not in ('auto', 'numba', 'triton', 'torch'):
        raise ValueError(f"backend must be 'auto', 'numba', 'triton' or 'torch', got {backend!r}")
    if block_size < 1:
        raise ValueError(f'block_size must be >= 1, got {block_size}')
    if threads is not None and threads < 1:
        raise ValueError(f'threads must be >= 1, got {threads}')
    use_triton = backend == 'triton' or (backend == 'auto' and dev.type == 'cuda' and triton_available(dev))
    if use_triton and not triton_available(dev):
        raise RuntimeError('backend="triton" requested but Triton is not available for device ' + str(dev))
    use_numba = backend == 'numba' or (backend == 'auto' and dev.type == 'cpu' and _matching_cpu.HAVE_NUMBA
                                       and compute_dtype == torch.float32)
    if use_numba and (dev.type != 'cpu' or compute_dtype != torch.float32 or not _matching_cpu.HAVE_NUMBA):
        raise RuntimeError(f'backend="numba" needs numba, device cpu and compute_dtype float32 '
                           f'(got device {dev}, {compute_dtype}, numba installed: {_matching_cpu.HAVE_NUMBA})')

    f1 = torch.nan_to_num(d1.reshape(-1, d1.shape[-1]).to(dev), nan=0.0, posinf=0.0, neginf=0.0)
    f2 = torch.nan_to_num(d2.reshape(-1, d2.shape[-1]).to(dev), nan=0.0, posinf=0.0, neginf=0.0)
    seeds = torch.from_numpy(seed_grid(hw1[0], hw1[1], subsample)).to(dev)

    if use_numba:
        with torch.no_grad():
            i1, i2 = _matching_cpu.iterate_numba(f1.detach().float(), f2.detach().float(), seeds.numpy(),
                                                 max_iter, block_size, threads, hw1=hw1 if prune else None,
                                                 hw2=hw2 if prune else None)
        return _finalize(torch.from_numpy(i1), torch.from_numpy(i2), hw1, hw2, border)
    with torch.no_grad():
        if use_triton:
            try:
                idx1, idx2 = _iterate_triton(f1, f2, seeds, max_iter, compute_dtype)
            except Exception as exc:  # a kernel that fails to build must not break matching
                if backend == 'triton':
                    raise
                _LOG.warning('Triton matcher failed (%s: %s); using the PyTorch backend', type(exc).__name__, exc)
                _TRITON_STATE['kernel'] = None
                idx1, idx2 = _iterate_torch(f1, f2, seeds, max_iter, compute_dtype, max_block_elems)
        else:
            idx1, idx2 = _iterate_torch(f1, f2, seeds, max_iter, compute_dtype, max_block_elems)
    return _finalize(idx1, idx2, hw1, hw2, border)


def warm_up_matching(device: torch.device | str = 'cpu', dim: int = 24) -> None:
    """Compile / load the matcher's kernels once (numba on CPU: a few seconds the first time on a machine, then read
    from numba's cache; Triton on CUDA), e.g. when a pose worker starts, so that the first real pair does not pay it."""
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(16, 16, dim, generator=g), dim=-1).to(device)
    fast_reciprocal_nn(d, torch.roll(d, 1, 0), subsample=4)
    if torch.device(device).type == 'cpu' and _matching_cpu.HAVE_NUMBA:       # the kernel path proper, not only the
        _matching_cpu.nn_search(_matching_cpu.pad_dims(d.reshape(-1, dim).numpy()),   # few-seed official-shape path
                                np.ascontiguousarray(_matching_cpu.pad_dims(d.reshape(-1, dim).numpy()).T), 1)
        # and the pruned search (tiling, the sample test, both tile kernels) on a smooth map it tiles
        from . import _matching_tiles
        smooth = torch.nn.functional.interpolate(torch.randn(1, dim, 3, 3, generator=g), size=(32, 32),
                                                 mode='bilinear', align_corners=False)[0].permute(1, 2, 0)
        flat = torch.nn.functional.normalize(smooth, dim=-1).reshape(-1, dim).contiguous().numpy()
        _matching_tiles.prunable(flat, 32, 32)
        _matching_tiles.pruned_nn_search(flat[::3], _matching_tiles.tile_database(flat, 32, 32))


def _iterate_triton(f1: Tensor, f2: Tensor, seeds: Tensor, max_iter: int, dtype: torch.dtype
                    ) -> tuple[Tensor, Tensor]:
    """Seed iterations without any host synchronisation (active rows sorted first; finished blocks exit)."""
    dev = f1.device
    p1, p2 = _pad_dim(f1, dtype), _pad_dim(f2, dtype)
    n_sm = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == 'cuda' else 4
    n = seeds.shape[0]
    splits = max(1, (4 * n_sm) // max(1, -(-n // 64)))
    xy1 = seeds.clone()
    xy2 = torch.full_like(seeds, -1)
    notyet = torch.ones(n, dtype=torch.bool, device=dev)
    order = torch.arange(n, device=dev)
    for _ in range(max_iter):
        for src, dst, cur, other in ((p1, p2, 'xy1', 'xy2'), (p2, p1, 'xy2', 'xy1')):
            # active seeds first (stable), count kept on the device
            order = order[torch.sort((~notyet[order]).to(torch.uint8), stable=True).indices]
            n_active = notyet.sum().to(torch.int32).reshape(1)
            q_idx = (xy1 if cur == 'xy1' else xy2)[order]
            nn = _nn_triton(src[q_idx.clamp_min(0)], dst, n_active, splits)
            target = xy2 if other == 'xy2' else xy1
            act = notyet[order]
            new = torch.where(act, nn, target[order])
            changed = new != target[order]
            target[order] = new
            notyet[order] = act & changed
    conv = ~notyet
    return xy1[conv], xy2[conv]


def _iterate_torch(f1: Tensor, f2: Tensor, seeds: Tensor, max_iter: int, dtype: torch.dtype,
                   max_block_elems: int, eager: bool | None = None) -> tuple[Tensor, Tensor]:
    """Seed iterations with the blockwise PyTorch search.

    ``eager`` (default on CPU): exact compaction every half-step, de-duplicated and memoised queries. Otherwise
    (default on CUDA): the active list is compacted at the end of iterations 1, 2, 4, 8 only (a superset of the
    active seeds is searched in between and the updates are masked), so the host waits on the device at most 4 times.
    """
    dev = f1.device
    on_cpu = dev.type == 'cpu' if eager is None else eager
    t1 = f1.to(dtype).t().contiguous()
    t2 = f2.to(dtype).t().contiguous()
    q1, q2 = f1.to(dtype), f2.to(dtype)
    n = seeds.shape[0]
    xy1 = seeds.clone()
    xy2 = torch.full_like(seeds, -1)
    notyet = torch.ones(n, dtype=torch.bool, device=dev)
    act = torch.arange(n, device=dev)
    memo12 = torch.full((f1.shape[0],), -1, dtype=torch.int64, device=dev) if on_cpu else None
    memo21 = torch.full((f2.shape[0],), -1, dtype=torch.int64, device=dev) if on_cpu else None

    def search(points: Tensor, queries_src: Tensor, db_t: Tensor, memo: Tensor | None) -> Tensor:
        if memo is None:
            return _nn_blockwise_torch(queries_src[points], db_t, max_block_elems)
        uniq, inverse = torch.unique(points, return_inverse=True)
        missing = uniq[memo[uniq] < 0]
        if missing.numel():
            memo[missing] = _nn_blockwise_torch(queries_src[missing], db_t, max_block_elems)
        return memo[uniq][inverse]

    for it in range(1, max_iter + 1):
        if on_cpu:
            act = act[notyet[act]]
        a = notyet[act]
        nn = search(xy1[act], q1, t2, memo12)
        old = xy2[act]
        new = torch.where(a, nn, old)
        xy2[act] = new
        a = a & (new != old)
        notyet[act] = a
        if on_cpu:
            keep = a
            act, a = act[keep], a[keep]
        nn = search(xy2[act], q2, t1, memo21)
        old = xy1[act]
        new = torch.where(a, nn, old)
        xy1[act] = new
        notyet[act] = a & (new != old)
        if not on_cpu and it in (1, 2, 4, 8) and it < max_iter:
            act = act[notyet[act]]          # host synchronisation point (nonzero)
            if act.numel() == 0:
                break
        elif on_cpu and not bool(notyet.any()):
            break
    conv = ~notyet
    return xy1[conv], xy2[conv]


# ---------------------------------------------------------------------------------------------------------------
# Straightforward reference (for tests and the benchmark)

def reference_reciprocal_nn(desc1: Any, desc2: Any, subsample: int = 8, *, max_iter: int = 10, border: int = 3,
                            device: torch.device | str | None = None, block_size: int = 8192) -> ReciprocalMatches:
    """Slow, literal implementation of the same semantics, structured like MASt3R's ``fast_reciprocal_NNs``.

    Host-side numpy state; every half-step sends the active queries to ``device``, runs a brute-force float32
    search (one product when ``len(queries) * len(database) <= block_size**2``, else tiled in ``block_size`` x
    ``block_size`` blocks with a strict running minimum of the negated similarity, as the official
    ``bruteforce_reciprocal_nns``), and copies the result back; the loop stops when no seed is active.
    """
    d1 = _as_descriptor_map(desc1, 'desc1')
    d2 = _as_descriptor_map(desc2, 'desc2')
    dev = torch.device(device) if device is not None else d1.device
    hw1, hw2 = (int(d1.shape[0]), int(d1.shape[1])), (int(d2.shape[0]), int(d2.shape[1]))
    pts1 = torch.nan_to_num(d1.reshape(-1, d1.shape[-1]).float()).to(dev)
    pts2 = torch.nan_to_num(d2.reshape(-1, d2.shape[-1]).float()).to(dev)

    def nn_search(queries: np.ndarray, src: Tensor, db: Tensor) -> np.ndarray:
        a = src[torch.from_numpy(queries).to(dev)]
        best = torch.full((len(a),), torch.inf, device=dev)
        arg = torch.zeros(len(a), dtype=torch.int64, device=dev)
        if len(a) * len(db) <= block_size ** 2:
            return (-(a @ db.T)).min(dim=1).indices.cpu().numpy()
        for i in range(0, len(a), block_size):
            for j in range(0, len(db), block_size):
                dist = -(a[i:i + block_size] @ db[j:j + block_size].T)
                v, k = dist.min(dim=1)
                upd = v < best[i:i + block_size]
                best[i:i + block_size] = torch.where(upd, v, best[i:i + block_size])
                arg[i:i + block_size] = torch.where(upd, k + j, arg[i:i + block_size])
        return arg.cpu().numpy()

    xy1 = seed_grid(hw1[0], hw1[1], subsample)
    xy2 = np.full_like(xy1, -1)
    old1, old2 = xy1.copy(), xy2.copy()
    notyet = np.ones(len(xy1), dtype=bool)
    niter = 0
    while notyet.any():
        xy2[notyet] = nn_search(xy1[notyet], pts1, pts2)
        notyet &= old2 != xy2
        xy1[notyet] = nn_search(xy2[notyet], pts2, pts1)
        notyet &= old1 != xy1
        niter += 1
        if niter >= max_iter:
            break
        old2[:] = xy2
        old1[:] = xy1
    conv = ~notyet
    return _finalize(torch.from_numpy(xy1[conv]), torch.from_numpy(xy2[conv]), hw1, hw2, border)
