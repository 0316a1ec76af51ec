"""CPU backend of :func:`realm_ros.geometry.matching.fast_reciprocal_nn`: fused dot-product arg-max kernel (numba).

Arithmetic (why the matches are identical to MASt3R's ``fast_reciprocal_NNs(..., dist='dot', block_size=2**13)``):
the official matcher computes ``A @ B.T`` with float32 BLAS and takes the first maximum of each row. For the shapes
it produces (K = D = 24, four or more query rows per thread) MKL's sgemm kernel evaluates every similarity as the
sequential fused multiply-add chain ``fma(q[D-1], x[D-1], ... fma(q[1], x[1], q[0] * x[0]))``. The numba kernel
below computes exactly that chain with explicit ``llvm.fma`` calls (on 16-lane vectors, one query per lane:
:func:`_fold_columns`; with ``fastmath={'contract'}``, as before 2026-12-06, LLVM fused the first two products the
other way round, ``fma(q[0], x[0], q[1] * x[1])``, which differs from MKL by one ulp in ~6 % of the similarities)
and keeps the first maximum, so it returns the same neighbour, ties included. With very few query
rows MKL switches to another kernel whose roundings differ; half-steps with at most :func:`small_query_limit`
active seeds are therefore computed with the official call shapes through torch (:func:`official_nn`), which costs
little because there are few of them.

Speed: the queries are vectorised, not the columns. Blocks of 16 queries are transposed (D x 16) so that the block
is D vector registers (24 of the 32 AVX-512 registers at D = 24); for each database column one FMA per dimension,
with the database element broadcast straight from memory, gives the 16 similarities, and a compare and two
selects fold them into the running maximum and its column, all in registers (4 columns per step keep 4
independent chains in flight). No similarity is stored, no per-query chunk maximum or first-index scan is needed,
and the loop is bound by the FMA unit only: ~105 GFLOP/s on one AVX-512 core of this machine (an AMD EPYC, one
512-bit FMA per cycle; the previous design, blocks of 4 queries vectorised over the columns with per-query
accumulator buffers, reached ~55-65, MKL sgemm 89 at K = 1024 and 12 at this K = 24 shape). The database is
processed in chunks of 2048 columns, each copied once per call into a buffer whose rows are padded to avoid L1
set conflicts (rows of 224 * 224 floats are a multiple of 4 KiB apart) and resident in L2 while every query block
passes over it; the copy costs ~0.3 ms per call at P = 224 * 224, D = 24. The iteration computes each pixel's
neighbour once (de-duplicated, memoised queries) and splits the queries over ``threads`` workers in whole blocks
(the kernel releases the GIL).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import _matching_tiles as _tiles

try:  # numba is a declared dependency of the 'ml' extra; without it the PyTorch backend is used
    import numba as _numba
    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any import failure means "no numba"
    _numba = None
    HAVE_NUMBA = False

__all__ = ['HAVE_NUMBA', 'iterate_numba', 'nn_search', 'official_nn', 'small_query_limit']

ROWS = 16         # query rows per kernel block: one 16-lane float32 vector (a 512-bit AVX-512 register)
DIMS = 8          # descriptors are zero-padded to a multiple of this many dimensions (:func:`pad_dims`; the tile
#                   kernels of ._matching_tiles need it, the full kernel takes any D)
CHUNK = 2048      # database columns per chunk: D x 2048 floats (192 KiB at D = 24) stay in L2 for all queries
COLUMNS = 4       # database columns per step of the block loop: 4 independent FMA chains in flight


def _kernel_py(q: np.ndarray, db_t: np.ndarray, chunk: int, best_v: np.ndarray, best_i: np.ndarray) -> None:
    """Arg-max over columns of ``q @ db_t``: q (n, D) float32, db_t (D, P) float32 C-contiguous (P < 2**31);
    best_v (n,) float32 and best_i (n,) int64 hold the running maximum and its column (-inf and 0 to start) and
    receive the maximum and its first (lowest) column.

    The queries are transposed into blocks of ROWS (D x 16, zero rows pad the last block; their results are
    dropped); each chunk of ``chunk`` columns is copied once into a buffer with padded rows, stays in L2, and every
    query block runs over it in column order (:func:`_fold_columns`), so the first maximum is kept across chunks.
    """
    n, d = q.shape
    p = db_t.shape[1]
    if p >= 2 ** 31:
        raise ValueError('nn_search: more than 2**31 - 1 database columns')
    nb = (n + ROWS - 1) // ROWS
    qt = np.zeros((nb, d, ROWS), np.float32)
    bv = np.full((nb, ROWS), -np.inf, np.float32)
    bi = np.zeros((nb, ROWS), np.int32)
    for i in range(n):
        for k in range(d):
            qt[i // ROWS, k, i % ROWS] = q[i, k]
        bv[i // ROWS, i % ROWS] = best_v[i]
        bi[i // ROWS, i % ROWS] = best_i[i]
    chunk = max(1, min(chunk, p))
    # chunk buffer rows: whole 64-byte lines plus one, so that the D elements of a column fall into different L1
    # sets (a row length that is a multiple of 4 KiB, e.g. 224 * 224 floats, puts all of them into one)
    stride = -(-chunk // 16) * 16 + 16
    stride += 16 if stride % 1024 == 0 else 0
    xb = np.empty((d, stride), np.float32)
    for c0 in range(0, p, chunk):
        cn = min(chunk, p - c0)
        for k in range(d):
            xb[k, :cn] = db_t[k, c0:c0 + cn]
        for b in range(nb):
            _fold_columns(qt[b], xb, 0, cn, c0, bv[b], bi[b])
    for i in range(n):
        best_v[i] = bv[i // ROWS, i % ROWS]
        best_i[i] = bi[i // ROWS, i % ROWS]


if HAVE_NUMBA:
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    from ._vector_ir import counted_loop, splat, vector_fma

    @_intrinsic
    def _fold_columns(typingctx, qt, xb, start, stop, base, bv, bi):
        """Fold columns ``start .. stop-1`` of ``xb`` (D, stride) float32 (the chunk buffer; column c is database
        column ``base + c``) into the running first arg-max of a block of ROWS = 16 queries, ``qt`` (D, 16) float32
        (dimension-major), ``bv`` (16,) float32 / ``bi`` (16,) int32 (read and written back), in LLVM IR on
        ``<16 x float>`` vectors (one AVX-512 register; D is a run-time loop, the 16 x D block is re-read from L1).

        For each column the similarities of all 16 queries are one vector FMA chain over the dimensions, lane-wise
        ``fma(q[D-1], x[D-1], ... fma(q[1], x[1], q[0] * x[0]))`` (``llvm.fma.v16f32``, the database element
        broadcast from memory), exactly the chain of MKL's sgemm; a lane takes the column when its similarity is
        strictly larger than its running maximum (``fcmp ogt``), so columns are folded in increasing order and the
        first maximum is kept. COLUMNS columns per step give independent chains (FMA latency 4, throughput 1).
        """
        f32_2d = _types.Array(_types.float32, 2, 'C')
        if (qt != f32_2d or xb != f32_2d or not all(isinstance(t, _types.Integer) for t in (start, stop, base))
                or bv != _types.Array(_types.float32, 1, 'C') or bi != _types.Array(_types.int32, 1, 'C')):
            return None
        sig = _types.void(qt, xb, start, stop, base, bv, bi)

        def codegen(context, builder, signature, args):
            f32, i32, i64 = _ir.FloatType(), _ir.IntType(32), _ir.IntType(64)
            vf, vi = _ir.VectorType(f32, ROWS), _ir.VectorType(i32, ROWS)
            qa, xa, va, ia = (context.make_array(signature.args[j])(context, builder, args[j]) for j in (0, 1, 5, 6))
            c_start, c_stop, col0 = (context.cast(builder, args[j], signature.args[j], _types.int64) for j in (2, 3, 4))
            col0 = builder.trunc(col0, i32)
            dims = builder.extract_value(qa.shape, 0)
            stride = builder.extract_value(xa.shape, 1)
            fma = vector_fma(builder, vf)
            q_p = builder.bitcast(qa.data, vf.as_pointer())
            best_p, idx_p = builder.bitcast(va.data, vf.as_pointer()), builder.bitcast(ia.data, vi.as_pointer())
            best = _cgutils.alloca_once_value(builder, builder.load(best_p, align=4))
            bidx = _cgutils.alloca_once_value(builder, builder.load(idx_p, align=4))
            accs = [_cgutils.alloca_once(builder, vf) for _ in range(COLUMNS)]

            def x_at(offset):                               # xb.flat[offset], broadcast to all lanes
                return splat(builder, builder.load(builder.gep(xa.data, [offset]), align=4), vf)

            def columns(c, u):                              # u columns c .. c+u-1
                cols = [builder.add(c, _ir.Constant(i64, j)) for j in range(u)]
                q0 = builder.load(q_p, align=4)
                for acc, col in zip(accs, cols):
                    builder.store(builder.fmul(q0, x_at(col)), acc)

                def dim(k):
                    qk = builder.load(builder.gep(q_p, [k]), align=4)
                    row = builder.mul(k, stride)
                    for acc, col in zip(accs, cols):
                        builder.store(builder.call(fma, [qk, x_at(builder.add(row, col)), builder.load(acc)]), acc)
                counted_loop(builder, 'dim', _ir.Constant(i64, 1), lambda k: builder.icmp_signed('<', k, dims), 1,
                             dim)
                b, bx = builder.load(best), builder.load(bidx)
                for acc, col in zip(accs, cols):                # in column order: strict '>' keeps the first
                    s = builder.load(acc)
                    take = builder.fcmp_ordered('>', s, b)
                    b = builder.select(take, s, b)
                    bx = builder.select(take, splat(builder, builder.add(builder.trunc(col, i32), col0), vi), bx)
                builder.store(b, best)
                builder.store(bx, bidx)

            cvar = _cgutils.alloca_once_value(builder, c_start)

            def main(c):
                columns(c, COLUMNS)
                builder.store(builder.add(c, _ir.Constant(i64, COLUMNS)), cvar)
            counted_loop(builder, 'main', c_start,
                         lambda c: builder.icmp_signed('<=', builder.add(c, _ir.Constant(i64, COLUMNS)), c_stop),
                         COLUMNS, main)
            counted_loop(builder, 'tail', builder.load(cvar), lambda c: builder.icmp_signed('<', c, c_stop), 1,
                         lambda c: columns(c, 1))
            builder.store(builder.load(best), best_p, align=4)
            builder.store(builder.load(bidx), idx_p, align=4)
            return context.get_dummy_value()
        return sig, codegen

    _JIT = dict(nogil=True, boundscheck=False, error_model='numpy', cache=True)
    _kernel = _numba.njit(**_JIT)(_kernel_py)
else:  # pragma: no cover - the matcher selects the PyTorch backend when numba is missing
    _fold_columns, _kernel = None, None

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
    Returns int64 (n,). Splits the queries over ``threads`` workers in whole blocks of ROWS (the kernel releases the
    GIL).
    """
    n = queries.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_v = np.full(n, -np.inf, np.float32)
    best_i = np.zeros(n, np.int64)
    chunk = min(CHUNK, db_t.shape[1])
    blocks = -(-n // ROWS)
    workers = max(1, min(int(threads), blocks))
    if workers == 1:
        _kernel(queries, db_t, chunk, best_v, best_i)
    else:
        edges = [min(n, ROWS * (blocks * w // workers)) for w in range(workers + 1)]
        futures = [_pool(workers).submit(_kernel, queries[a:b], db_t, chunk, best_v[a:b], best_i[a:b])
                   for a, b in zip(edges[:-1], edges[1:]) if b > a]
        for f in futures:
            f.result()
    return best_i


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


#: the pruned search falls back to the full kernel when more than this fraction of the (tile, query) pairs survive
#: its first pass (it evaluates a similarity at ~1/3 of the speed of the full kernel before its 2026-12 query-vectorised
#: form, ~1/4 of the current one, so beyond this it does not pay; 0.3 is the value tuned against the former)
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
            full_t[which] = np.ascontiguousarray((q1 if which == 1 else q2).T)
        return full_t[which]

    def layouts(f: torch.Tensor, hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | _tiles.TiledDatabase]:
        """The rows the queries are gathered from and the database of one image: tiled for the pruned search when
        its tiles are tight enough, else the full kernel's transposed layout. A channel-first map (e.g. permuted
        from the decoder's (B, D, H, W)) is used as it lies: its transpose is the full kernel's layout, the tiling
        reads it along its rows, and queries are gathered from it row by row (no copy of the whole map)."""
        channel_first = f.shape[1] % DIMS == 0 and f.t().is_contiguous()
        rows = f.numpy() if channel_first else pad_dims(f.contiguous().numpy())
        if hw is not None and _tiles.prunable(rows, hw[0], hw[1]):
            return rows, _tiles.tile_database(rows, hw[0], hw[1])
        return rows, np.ascontiguousarray(rows.T)

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
