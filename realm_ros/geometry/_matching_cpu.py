"""CPU backend of :func:`realm_ros.geometry.matching.fast_reciprocal_nn`: fused dot-product arg-max kernel (numba).

Arithmetic (why the matches are identical to MASt3R's ``fast_reciprocal_NNs(..., dist='dot', block_size=2**13)``):
the official matcher computes ``A @ B.T`` with float32 BLAS and takes the first maximum of each row. For the shapes
it produces (K = D = 24, four or more query rows per thread) MKL's sgemm kernel evaluates every similarity as the
sequential fused multiply-add chain ``fma(q[D-1], x[D-1], ... fma(q[1], x[1], q[0] * x[0]))``. The numba kernel
below computes exactly that chain with explicit ``llvm.fma.f32`` calls (:func:`._matching_tiles.fma32`; with
``fastmath={'contract'}``, as before 2026-12-06, LLVM fused the first two products the other way round,
``fma(q[0], x[0], q[1] * x[1])``, which differs from MKL by one ulp in ~6 % of the similarities) and keeps the first
maximum, so it returns the same neighbour, ties included. With very few query
rows MKL switches to another kernel whose roundings differ; half-steps with at most :func:`small_query_limit`
active seeds are therefore computed with the official call shapes through torch (:func:`official_nn`), which costs
little because there are few of them.

Speed: the outer loop runs over column chunks of the transposed database (D x 2048 floats, resident in L2 while
every query passes over them), the inner loop over blocks of 4 queries whose 8-dimension slices are kept in
registers: 8 dimensions per pass are accumulated into per-query chunk buffers (vectorised over the columns), then a
64-lane chunk maximum is compared with the query's running maximum; only a strictly larger one triggers the scan for
its first column (so ties keep the earliest column, and the scan runs a few times per query). The P-long similarity
rows are never materialised. ~55-65 GFLOP/s on one AVX-512 core (MKL sgemm: 89 at K = 1024, 12 at this K = 24
shape). The iteration computes each pixel's neighbour once (de-duplicated, memoised queries) and splits the queries
over ``threads`` workers (the kernel releases the GIL).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import _matching_tiles as _tiles
from ._matching_tiles import fma32 as _fma

try:  # numba is a declared dependency of the 'ml' extra; without it the PyTorch backend is used
    import numba as _numba
    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any import failure means "no numba"
    _numba = None
    HAVE_NUMBA = False

__all__ = ['HAVE_NUMBA', 'iterate_numba', 'nn_search', 'official_nn', 'small_query_limit']

ROWS = 4          # query rows per kernel pass (register block)
DIMS = 8          # descriptor dimensions accumulated per pass over a column chunk
CHUNK = 2048      # database columns per chunk: D x 2048 floats (192 KiB at D = 24) stay in L2 for all queries


def _chunk_max_py(acc: np.ndarray, cn: int, lanes: np.ndarray) -> float:
    """Maximum of ``acc[:cn]``: a 64-lane running maximum (a map LLVM vectorises, unlike a scalar max reduction),
    then the lanes and the tail."""
    full = cn - cn % 64
    m = -np.inf
    if full > 0:
        lanes[:] = acc[:64]
        for c0 in range(64, full, 64):
            blk = acc[c0:c0 + 64]
            for lane in range(64):
                v = blk[lane]
                lanes[lane] = v if v > lanes[lane] else lanes[lane]
        for lane in range(64):
            m = lanes[lane] if lanes[lane] > m else m
    for c in range(full, cn):
        m = acc[c] if acc[c] > m else m
    return m


def _first_index_py(acc: np.ndarray, value: float, cn: int) -> int:
    """Lowest c with ``acc[c] == value`` (``value`` is the maximum of ``acc[:cn]``)."""
    for c in range(cn):
        if acc[c] == value:
            return c
    return 0


def _take_py(acc: np.ndarray, cn: int, c0: int, row: int, best_v: np.ndarray, best_i: np.ndarray,
             lanes: np.ndarray) -> None:
    """Fold a chunk into the running first arg-max of one query: a strictly larger chunk maximum replaces it (ties
    keep the earlier chunk); the index scan runs only then, i.e. a few times per query."""
    m = _chunk_max(acc, cn, lanes)
    if m > best_v[row]:
        best_v[row] = m
        best_i[row] = c0 + _first_index(acc, m, cn)


def _kernel_py(q: np.ndarray, db_t: np.ndarray, chunk: int, best_v: np.ndarray, best_i: np.ndarray) -> None:
    """Arg-max over columns of ``q @ db_t``: q (n, D) float32 with n % 4 == 0 and D % 8 == 0, db_t (D, P) float32
    C-contiguous; best_v (n,) float32 = -inf and best_i (n,) int64 receive the maximum and its first (lowest) column.

    The database chunk (D x chunk floats) stays in L2 while every query passes over it. Separate accumulator arrays
    (not rows of one array) let LLVM prove that they do not alias, which it needs to vectorise the column loop.
    """
    n, d = q.shape
    p = db_t.shape[1]
    a0, a1, a2, a3 = (np.empty(chunk, np.float32), np.empty(chunk, np.float32), np.empty(chunk, np.float32),
                      np.empty(chunk, np.float32))
    lanes = np.empty(64, np.float32)
    for c0 in range(0, p, chunk):
        cn = min(chunk, p - c0)
        for i0 in range(0, n, 4):
            # dimensions 0-7 start the chains (a separate loop: no select between "start" and "continue")
            x0, x1, x2, x3 = db_t[0, c0:c0 + cn], db_t[1, c0:c0 + cn], db_t[2, c0:c0 + cn], \
                db_t[3, c0:c0 + cn]
            x4, x5, x6, x7 = db_t[4, c0:c0 + cn], db_t[5, c0:c0 + cn], db_t[6, c0:c0 + cn], \
                db_t[7, c0:c0 + cn]
            p00, p01, p02, p03 = q[i0, 0], q[i0, 1], q[i0, 2], q[i0, 3]
            p04, p05, p06, p07 = q[i0, 4], q[i0, 5], q[i0, 6], q[i0, 7]
            p10, p11, p12, p13 = q[i0 + 1, 0], q[i0 + 1, 1], q[i0 + 1, 2], q[i0 + 1, 3]
            p14, p15, p16, p17 = q[i0 + 1, 4], q[i0 + 1, 5], q[i0 + 1, 6], q[i0 + 1, 7]
            p20, p21, p22, p23 = q[i0 + 2, 0], q[i0 + 2, 1], q[i0 + 2, 2], q[i0 + 2, 3]
            p24, p25, p26, p27 = q[i0 + 2, 4], q[i0 + 2, 5], q[i0 + 2, 6], q[i0 + 2, 7]
            p30, p31, p32, p33 = q[i0 + 3, 0], q[i0 + 3, 1], q[i0 + 3, 2], q[i0 + 3, 3]
            p34, p35, p36, p37 = q[i0 + 3, 4], q[i0 + 3, 5], q[i0 + 3, 6], q[i0 + 3, 7]
            for c in range(cn):
                y0, y1, y2, y3, y4, y5, y6, y7 = x0[c], x1[c], x2[c], x3[c], x4[c], x5[c], x6[c], x7[c]
                s = p00 * y0
                s = _fma(p01, y1, s)
                s = _fma(p02, y2, s)
                s = _fma(p03, y3, s)
                s = _fma(p04, y4, s)
                s = _fma(p05, y5, s)
                s = _fma(p06, y6, s)
                a0[c] = _fma(p07, y7, s)
                s = p10 * y0
                s = _fma(p11, y1, s)
                s = _fma(p12, y2, s)
                s = _fma(p13, y3, s)
                s = _fma(p14, y4, s)
                s = _fma(p15, y5, s)
                s = _fma(p16, y6, s)
                a1[c] = _fma(p17, y7, s)
                s = p20 * y0
                s = _fma(p21, y1, s)
                s = _fma(p22, y2, s)
                s = _fma(p23, y3, s)
                s = _fma(p24, y4, s)
                s = _fma(p25, y5, s)
                s = _fma(p26, y6, s)
                a2[c] = _fma(p27, y7, s)
                s = p30 * y0
                s = _fma(p31, y1, s)
                s = _fma(p32, y2, s)
                s = _fma(p33, y3, s)
                s = _fma(p34, y4, s)
                s = _fma(p35, y5, s)
                s = _fma(p36, y6, s)
                a3[c] = _fma(p37, y7, s)
            for k0 in range(8, d, 8):                   # dimensions k0 .. k0+7 continue them
                x0, x1, x2, x3 = db_t[k0, c0:c0 + cn], db_t[k0 + 1, c0:c0 + cn], db_t[k0 + 2, c0:c0 + cn], \
                    db_t[k0 + 3, c0:c0 + cn]
                x4, x5, x6, x7 = db_t[k0 + 4, c0:c0 + cn], db_t[k0 + 5, c0:c0 + cn], db_t[k0 + 6, c0:c0 + cn], \
                    db_t[k0 + 7, c0:c0 + cn]
                p00, p01, p02, p03 = q[i0, k0], q[i0, k0 + 1], q[i0, k0 + 2], q[i0, k0 + 3]
                p04, p05, p06, p07 = q[i0, k0 + 4], q[i0, k0 + 5], q[i0, k0 + 6], q[i0, k0 + 7]
                p10, p11, p12, p13 = q[i0 + 1, k0], q[i0 + 1, k0 + 1], q[i0 + 1, k0 + 2], q[i0 + 1, k0 + 3]
                p14, p15, p16, p17 = q[i0 + 1, k0 + 4], q[i0 + 1, k0 + 5], q[i0 + 1, k0 + 6], q[i0 + 1, k0 + 7]
                p20, p21, p22, p23 = q[i0 + 2, k0], q[i0 + 2, k0 + 1], q[i0 + 2, k0 + 2], q[i0 + 2, k0 + 3]
                p24, p25, p26, p27 = q[i0 + 2, k0 + 4], q[i0 + 2, k0 + 5], q[i0 + 2, k0 + 6], q[i0 + 2, k0 + 7]
                p30, p31, p32, p33 = q[i0 + 3, k0], q[i0 + 3, k0 + 1], q[i0 + 3, k0 + 2], q[i0 + 3, k0 + 3]
                p34, p35, p36, p37 = q[i0 + 3, k0 + 4], q[i0 + 3, k0 + 5], q[i0 + 3, k0 + 6], q[i0 + 3, k0 + 7]
                for c in range(cn):
                    y0, y1, y2, y3, y4, y5, y6, y7 = x0[c], x1[c], x2[c], x3[c], x4[c], x5[c], x6[c], x7[c]
                    s = _fma(p00, y0, a0[c])
                    s = _fma(p01, y1, s)
                    s = _fma(p02, y2, s)
                    s = _fma(p03, y3, s)
                    s = _fma(p04, y4, s)
                    s = _fma(p05, y5, s)
                    s = _fma(p06, y6, s)
                    a0[c] = _fma(p07, y7, s)
                    s = _fma(p10, y0, a1[c])
                    s = _fma(p11, y1, s)
                    s = _fma(p12, y2, s)
                    s = _fma(p13, y3, s)
                    s = _fma(p14, y4, s)
                    s = _fma(p15, y5, s)
                    s = _fma(p16, y6, s)
                    a1[c] = _fma(p17, y7, s)
                    s = _fma(p20, y0, a2[c])
                    s = _fma(p21, y1, s)
                    s = _fma(p22, y2, s)
                    s = _fma(p23, y3, s)
                    s = _fma(p24, y4, s)
                    s = _fma(p25, y5, s)
                    s = _fma(p26, y6, s)
                    a2[c] = _fma(p27, y7, s)
                    s = _fma(p30, y0, a3[c])
                    s = _fma(p31, y1, s)
                    s = _fma(p32, y2, s)
                    s = _fma(p33, y3, s)
                    s = _fma(p34, y4, s)
                    s = _fma(p35, y5, s)
                    s = _fma(p36, y6, s)
                    a3[c] = _fma(p37, y7, s)
            _take(a0, cn, c0, i0, best_v, best_i, lanes)
            _take(a1, cn, c0, i0 + 1, best_v, best_i, lanes)
            _take(a2, cn, c0, i0 + 2, best_v, best_i, lanes)
            _take(a3, cn, c0, i0 + 3, best_v, best_i, lanes)


if HAVE_NUMBA:
    _JIT = dict(nogil=True, boundscheck=False, error_model='numpy', cache=True)
    _chunk_max = _numba.njit(**_JIT)(_chunk_max_py)
    _first_index = _numba.njit(**_JIT)(_first_index_py)
    _take = _numba.njit(**_JIT)(_take_py)
    _kernel = _numba.njit(**_JIT)(_kernel_py)
else:  # pragma: no cover - the matcher selects the PyTorch backend when numba is missing
    _chunk_max, _first_index, _take, _kernel = _chunk_max_py, _first_index_py, _take_py, None

_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if workers not in _POOL:
            _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix='realm-nn')
        return _POOL[workers]


def pad_dims(x: np.ndarray) -> np.ndarray:
    """(N, D) float32 -> (N, D') with D' the next multiple of 8, zero columns appended (a trailing ``+ 0 * 0`` term
    leaves a sum unchanged, so the chain of the first D terms is unaffected)."""
    d = x.shape[1]
    dp = -(-d // DIMS) * DIMS
    if dp == d:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], dp), np.float32)
    out[:, :d] = x
    return out


def nn_search(queries: np.ndarray, db_t: np.ndarray, threads: int = 1) -> np.ndarray:
    """Index of the most similar database column for each query row (first index among equal maxima).

    ``queries`` (n, D') float32 and ``db_t`` (D', P) float32 C-contiguous, D' a multiple of 8 (see :func:`pad_dims`).
    Returns int64 (n,). Splits the queries over ``threads`` workers (the kernel releases the GIL).
    """
    n = queries.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    n_pad = -(-n // ROWS) * ROWS
    if n_pad != n:
        queries = np.concatenate([queries, np.zeros((n_pad - n, queries.shape[1]), np.float32)])
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_v = np.full(n_pad, -np.inf, np.float32)
    best_i = np.zeros(n_pad, np.int64)
    chunk = min(CHUNK, db_t.shape[1])
    blocks = n_pad // ROWS
    workers = max(1, min(int(threads), blocks))
    if workers == 1:
        _kernel(queries, db_t, chunk, best_v, best_i)
    else:
        edges = [ROWS * (blocks * w // workers) for w in range(workers + 1)]
        futures = [_pool(workers).submit(_kernel, queries[a:b], db_t, chunk, best_v[a:b], best_i[a:b])
                   for a, b in zip(edges[:-1], edges[1:]) if b > a]
        for f in futures:
            f.result()
    return best_i[:n]


def small_query_limit(threads: int | None = None) -> int:
    """Half-steps with at most this many active seeds use :func:`official_nn` (BLAS may pick a kernel with other
    roundings when a thread gets fewer than 4 rows; 16 rows per thread and at least 32 keep clear of that)."""
    threads = torch.get_num_threads() if threads is None else threads
    return max(32, 16 * max(1, int(threads)))


_SCRATCH = threading.local()


def _product_buffer(rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) float32 view of this thread's scratch product buffer (grown as needed)."""
    buf = getattr(_SCRATCH, 'product', None)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
        buf = torch.empty((max(rows, 32), cols), dtype=torch.float32)
        _SCRATCH.product = buf
    return buf[:rows]


def official_nn(queries: torch.Tensor, db: torch.Tensor, block_size: int) -> np.ndarray:
    """Arg-max of ``queries @ db.T`` with MASt3R's call shapes: one product when ``len(A) * len(B) <= block_size**2``,
    else ``block_size``-row tiles of both with a strict running comparison (earlier tile wins ties)."""
    a = queries.shape[0]
    if a == 0:
        return np.empty(0, np.int64)
    if a * db.shape[0] <= block_size ** 2:
        if queries.dtype != torch.float32 or db.dtype != torch.float32:
            return torch.max(queries @ db.T, dim=1).indices.numpy().astype(np.int64)
        # the same single product, into a reused buffer (a fresh multi-megabyte result costs page faults), and the
        # first maximum of each row (np.argmax, like torch.max, returns the first of equal maxima)
        sims = torch.mm(queries, db.T, out=_product_buffer(a, db.shape[0]))
        return np.argmax(sims.numpy(), axis=1).astype(np.int64)
    best = torch.full((a,), -torch.inf, dtype=queries.dtype)
    arg = torch.full((a,), -1, dtype=torch.int64)
    for i in range(0, a, block_size):
        qi = queries[i:i + block_size]
        for j in range(0, db.shape[0], block_size):
            v, k = torch.max(qi @ db[j:j + block_size].T, dim=1)
            upd = v > best[i:i + block_size]
            best[i:i + block_size] = torch.where(upd, v, best[i:i + block_size])
            arg[i:i + block_size] = torch.where(upd, k + j, arg[i:i + block_size])
    return arg.numpy()


def _layouts(f: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Row-major queries (P, D') and transposed database (D', P) of one image, with one copy: descriptor maps that
    come channel-first in memory (e.g. permuted from (B, D, H, W)) already hold the transposed layout."""
    d = f.shape[1]
    if d % DIMS == 0 and f.t().is_contiguous():
        return f.contiguous().numpy(), f.t().numpy()
    q = pad_dims(f.contiguous().numpy())
    return q, torch.from_numpy(q).t().contiguous().numpy()


#: the pruned search falls back to the full kernel when more than this fraction of the (tile, query) pairs survive
#: its first pass (it evaluates a similarity at ~1/3 of the full kernel's speed, so beyond this it does not pay)
PRUNE_MAX_FRACTION = 0.3


def _pruned_search(queries: np.ndarray, db: _tiles.TiledDatabase, threads: int, full_db_t) -> np.ndarray:
    """:func:`._matching_tiles.pruned_nn_search` with the queries split over ``threads`` workers; a chunk whose
    bounds prune too little goes through the full kernel (``full_db_t()`` gives the transposed database)."""
    n = queries.shape[0]
    workers = max(1, min(int(threads), n // 64))
    out = np.empty(n, np.int64)
    edges = [n * w // workers for w in range(workers + 1)]
    chunks = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    if workers == 1:
        done = [_tiles.pruned_nn_search(queries, db, out, PRUNE_MAX_FRACTION)]
    else:
        futures = [_pool(workers).submit(_tiles.pruned_nn_search, queries[a:b], db, out[a:b], PRUNE_MAX_FRACTION)
                   for a, b in chunks]
        done = [f.result() for f in futures]
    rough = [(a, b) for (a, b), r in zip(chunks, done) if r is None]
    for a, b in rough:
        out[a:b] = nn_search(queries[a:b], full_db_t(), threads if len(rough) == 1 else 1)
    return out


def iterate_numba(f1: torch.Tensor, f2: torch.Tensor, seeds: np.ndarray, max_iter: int, block_size: int = 8192,
                  threads: int | None = None, stats: dict | None = None, small_queries: int | None = None,
                  hw1: tuple[int, int] | None = None, hw2: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Seed iterations of ``fast_reciprocal_NNs`` on the CPU; ``f1`` (N1, D), ``f2`` (N2, D) float32 CPU tensors
    (any strides).

    Returns the converged (idx1, idx2) int64 pairs (not yet unique). ``stats`` (optional dict) receives the number
    of kernel queries, official-shape queries and half-steps, for the benchmark. ``small_queries`` overrides
    :func:`small_query_limit` (0: every half-step through the kernel, for tests). With both image shapes ``hw1`` /
    ``hw2`` (H, W) given, the kernel searches are the exact pruned search of :mod:`._matching_tiles` (same
    neighbours, ~1/8 of the similarities on smooth descriptor maps); without them, the full search.
    """
    threads = torch.get_num_threads() if threads is None else max(1, int(threads))
    small = small_query_limit(threads) if small_queries is None else int(small_queries)
    full_t: dict[int, np.ndarray] = {}

    def transposed(which: int) -> np.ndarray:            # the full kernel's layout of a tiled image, on first need
        if which not in full_t:
            full_t[which] = torch.from_numpy(q1 if which == 1 else q2).t().contiguous().numpy()
        return full_t[which]

    def layouts(f: torch.Tensor, hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | _tiles.TiledDatabase]:
        """Queries and database of one image: tiled for the pruned search when its tiles are tight enough, else
        the full kernel's transposed layout (one copy either way)."""
        if hw is not None and _tiles.prunable(f.numpy(), hw[0], hw[1]):
            q = pad_dims(f.contiguous().numpy())
            return q, _tiles.tile_database(q, hw[0], hw[1])
        return _layouts(f)

    prune = hw1 is not None and hw2 is not None
    q1, db1 = layouts(f1, hw1 if prune else None)
    q2, db2 = layouts(f2, hw2 if prune else None)
    memo12 = np.full(len(q1), -1, np.int64)
    memo21 = np.full(len(q2), -1, np.int64)
    counts = {'kernel_queries': 0, 'official_queries': 0, 'half_steps': 0}

    def half_step(points: np.ndarray, src: np.ndarray, db_k: np.ndarray | _tiles.TiledDatabase, memo: np.ndarray,
                  src_t: torch.Tensor, db: torch.Tensor) -> np.ndarray:
        counts['half_steps'] += 1
        if len(points) <= small:                 # few rows: the official BLAS call shapes, bit for bit
            counts['official_queries'] += len(points)
            return official_nn(src_t[torch.from_numpy(points)], db, block_size)
        uniq = np.unique(points)
        missing = uniq[memo[uniq] < 0]
        if len(missing):
            counts['kernel_queries'] += len(missing)
            if isinstance(db_k, _tiles.TiledDatabase):
                which = 1 if db_k is db1 else 2
                memo[missing] = _pruned_search(src[missing], db_k, threads, lambda: transposed(which))
            else:
                memo[missing] = nn_search(src[missing], db_k, threads)
        return memo[points]

    xy1 = seeds.astype(np.int64).copy()
    xy2 = np.full_like(xy1, -1)
    old1, old2 = xy1.copy(), xy2.copy()
    notyet = np.ones(len(xy1), dtype=bool)
    niter = 0
    while notyet.any():
        xy2[notyet] = half_step(xy1[notyet], q1, db2, memo12, f1, f2)
        notyet &= old2 != xy2
        xy1[notyet] = half_step(xy2[notyet], q2, db1, memo21, f2, f1)
        notyet &= old1 != xy1
        niter += 1
        if niter >= max_iter:
            break
        old2[:] = xy2
        old1[:] = xy1
    if stats is not None:
        stats.update(counts)
    conv = ~notyet
    return xy1[conv], xy2[conv]
