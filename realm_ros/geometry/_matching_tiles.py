"""Exact pruned nearest-neighbour search for the CPU matcher: 8 x 8 pixel tiles with a Cauchy-Schwarz bound.

The search of :mod:`._matching_cpu` computes every similarity ``q . x`` of a query against all P pixels of the other
image. Dense descriptor maps are smooth, so the pixels of a small spatial tile lie close to their centre ``c`` in
descriptor space, and ``q . x <= q . c + |q| |x - c|`` bounds every similarity of the tile. A tile whose bound is
below the best similarity found so far cannot hold the arg-max, nor a tie with it, and is skipped. On the shipped
miniature decoder's maps (224 x 224, D = 24) about 11 % of the tiles survive, so a search computes ~1/8 of the
similarities.

Why the result is identical to the full search (and to MASt3R's ``fast_reciprocal_NNs``): the similarities that are
computed are the same float32 fused-multiply-add chain over the D dimensions as in :mod:`._matching_cpu` (the chain
of MKL's sgemm), so they are bit-identical; a skipped tile holds no value >= the final maximum, because its bound is
inflated by more than the rounding error of both the bound and the chain (``|fl(s) - s| <= gamma_D |q| |x|``,
gamma_24 ~ 1.5e-6; the margin is 3e-5 relative); and ties are resolved by the original linear pixel index (lowest
wins), whatever order the tiles are visited in. Tiles at the right / bottom edge that are not full are padded with
copies of their first pixel (same value, same index), which cannot change a maximum or a tie. Non-finite bounds are
never pruned.

Visiting order per query: the tile with the largest bound first (it usually holds the neighbour, so the running
maximum is high from the start), then every tile in index order whose bound reaches the running maximum.

Speed: the similarities of a (query, tile) pair are computed by a vector kernel written in LLVM IR
(:func:`_tile_kernel`: the 64 slots as four 16-lane vectors, QUERIES queries per call sharing the tile's loads),
the queries a tile must evaluate are gathered without branches first, and only a tile with a similarity reaching
the running maximum (~3 % of the evaluations) is scanned for its first maximum. On this development machine's
decoder maps (224 x 224, 784 queries) a search takes ~3.4 ms (the earlier numba loops, 4 queries per call with
scalar FMAs in part: ~6-7 ms), of which ~1 ms are the bounds.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

try:
    import numba as _numba
    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any import failure means "no numba"
    _numba = None
    HAVE_NUMBA = False


def _fma_py(a: float, b: float, c: float) -> float:
    """``a * b + c`` rounded once to float32 (Python fallback; the product of two float32 is exact in float64)."""
    return float(np.float32(np.float64(a) * np.float64(b) + np.float64(c)))


_HOST_AVX512 = False
if HAVE_NUMBA:
    from llvmlite import binding as _llvm
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cgutils
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    from ._vector_ir import counted_loop, splat, vector_fma
    try:
        _HOST_AVX512 = bool(_llvm.get_host_cpu_features().get('avx512f', False))
    except Exception:  # noqa: BLE001 - feature query unavailable: assume the narrower registers
        pass

__all__ = ['TILE', 'TiledDatabase', 'tile_database', 'pruned_nn_search', 'prunable', 'MARGIN']

TILE = 8            # tile side in pixels
SLOTS = TILE * TILE  # pixels per tile (a multiple of LANES)
LANES = 16          # float32 lanes of the tile kernel's vectors (one AVX-512 register)
QUERIES = 2 if _HOST_AVX512 else 1  # queries per tile kernel call: 8 accumulator vectors fit 32 AVX-512 registers;
#                                     on AVX2 a 16-lane vector takes two of its 16 registers, so one query
MARGIN = 3e-5       # relative inflation of the bound (covers float32 rounding of the chain and the bound, ~3e-6)


class TiledDatabase(NamedTuple):
    """One image as the database of the pruned search (see :func:`tile_database`)."""

    values: np.ndarray      # (T, D, 64) float32: tile t, dimension d, slot s
    pixel: np.ndarray       # (T, 64) int64: linear pixel index x + W y of each slot
    centres_t: np.ndarray   # (D, T) float32: tile centres, transposed (the bounds vectorise over tiles)
    radius: np.ndarray      # (T,) float32: max |x - c| over the tile, inflated (inf where not finite)
    num_pixels: int         # P


def _tile_py(src: np.ndarray, channel_first: bool, h: int, w: int, margin: float, values: np.ndarray,
             index: np.ndarray, centres_t: np.ndarray, radius: np.ndarray) -> None:
    """Fill the tile layout from the descriptors ``src``, C-contiguous (D, H, W) when ``channel_first`` else
    (H, W, D); see :class:`TiledDatabase`. Dimension by dimension: the copy, the centre (a float64 mean, summed in
    any order: the radius is measured from the float32 centre it gives, so the bound holds for whatever centre it
    is) and each slot's squared distance all run along the slots."""
    d = src.shape[0] if channel_first else src.shape[2]
    ntx = (w + TILE - 1) // TILE
    nty = (h + TILE - 1) // TILE
    err = np.empty(SLOTS, np.float64)
    for ty in range(nty):
        for tx in range(ntx):
            t = ty * ntx + tx
            y0, x0 = ty * TILE, tx * TILE
            y1, x1 = min(h, y0 + TILE), min(w, x0 + TILE)
            n = (y1 - y0) * (x1 - x0)
            s = 0
            for y in range(y0, y1):
                for x in range(x0, x1):
                    index[t, s] = x + w * y
                    s += 1
            first = index[t, 0]
            for j in range(n, SLOTS):              # padding: copies of the tile's first pixel
                index[t, j] = first
            blk = values[t]
            err[:] = 0.0
            cn = 0.0
            for k in range(d):
                vals = blk[k]
                s = 0
                if channel_first and n == SLOTS:        # a whole tile (constant bounds: the copy vectorises)
                    for sy in range(TILE):
                        for sx in range(TILE):
                            vals[sy * TILE + sx] = src[k, y0 + sy, x0 + sx]
                elif channel_first:
                    for y in range(y0, y1):
                        for x in range(x0, x1):
                            vals[s] = src[k, y, x]
                            s += 1
                else:
                    for y in range(y0, y1):
                        for x in range(x0, x1):
                            vals[s] = src[y, x, k]
                            s += 1
                for j in range(n, SLOTS):
                    vals[j] = vals[0]
                acc = 0.0
                for j in range(n):
                    acc += np.float64(vals[j])
                c = np.float32(acc / n)
                centres_t[k, t] = c
                cn += np.float64(c) * np.float64(c)
                for j in range(n):
                    e = np.float64(vals[j]) - np.float64(c)
                    err[j] += e * e
            r = 0.0
            for j in range(n):
                r = max(r, err[j])
            r = math.sqrt(r)
            cn = math.sqrt(cn)
            inflated = r + margin * (cn + r) + 1e-30
            radius[t] = np.float32(inflated) * np.float32(1.0 + 1e-6) if math.isfinite(inflated) else np.inf


def _fold_py(acc: np.ndarray, idx: np.ndarray, i: int, best_v: np.ndarray, best_i: np.ndarray) -> None:
    """Fold one tile's similarities ``acc`` (slot order, pixel indices ``idx``) into query i's running (maximum,
    lowest pixel index of the maximum). Most tiles hold nothing >= the running maximum: a vectorised test first,
    the maximum and its lowest index only for the others (NaN similarities are never taken, as in the full
    search)."""
    bv = best_v[i]
    hit = 0
    for s in range(SLOTS):
        hit |= acc[s] >= bv
    if hit == 0:
        return
    m = -np.inf
    for s in range(SLOTS):
        m = acc[s] if acc[s] > m else m
    if m > bv or m == bv:
        cand = _first_of(acc, idx, m)
        if cand < 0:
            return
        if m > bv:
            best_v[i] = m
            best_i[i] = cand
        elif cand < best_i[i]:
            best_i[i] = cand


def _tile_similarities_py(q: np.ndarray, sel: np.ndarray, j0: int, values: np.ndarray, t: int, acc: np.ndarray,
                          best_v: np.ndarray) -> int:
    """Similarities of the queries ``q[sel[j0 + m]]``, m < ``acc.shape[0]``, with the SLOTS pixels of tile ``t``
    (``values[t]`` (D, SLOTS)) into ``acc[m]`` (slot order), each the sequential FMA chain of the full search.
    Returns a bit mask: bit m is set when any similarity of query m is >= its running maximum ``best_v`` (NaN never
    is). Python form of the vector kernels compiled with numba (:func:`_tile_kernel`)."""
    d = q.shape[1]
    blk = values[t]
    hits = 0
    for m in range(acc.shape[0]):
        i = sel[j0 + m]
        for s in range(SLOTS):
            v = q[i, 0] * blk[0, s]
            for k in range(1, d):
                v = _fma_py(q[i, k], blk[k, s], v)
            acc[m, s] = v
            if v >= best_v[i]:
                hits |= 1 << m
    return hits


def _fold_hits_py(hits: int, sel: np.ndarray, j0: int, idx: np.ndarray, acc: np.ndarray, best_v: np.ndarray,
                  best_i: np.ndarray) -> None:
    """Fold the tile similarities ``acc[m]`` of the queries with a hit (bit m of ``hits``) into their running
    maxima."""
    for m in range(acc.shape[0]):
        if (hits >> m) & 1:
            _fold(acc[m], idx, sel[j0 + m], best_v, best_i)


def _first_of_py(acc: np.ndarray, idx: np.ndarray, m: float) -> int:
    """Lowest pixel index among the slots equal to ``m`` (-1 when none is)."""
    cand = -1
    for s in range(acc.shape[0]):
        if acc[s] == m and (cand < 0 or idx[s] < cand):
            cand = idx[s]
    return cand


def _search_py(q: np.ndarray, values: np.ndarray, index: np.ndarray, centres_t: np.ndarray, radius: np.ndarray,
               num_pixels: int, margin: float, max_fraction: float, out: np.ndarray) -> bool:
    """First arg-max over all pixels of ``q[i] . x`` for each query row, skipping tiles whose bound is too low.

    Two passes: each query first evaluates the tile with its largest bound (a high running maximum from the start);
    then the tiles are visited in index order, each for the queries whose bound reaches their running maximum, so
    that a tile is read from memory once per call, not once per query. The bounds are computed tile by tile,
    vectorised over the queries. Returns False (``out`` untouched) when more than ``max_fraction`` of the
    (tile, query) pairs would still have to be evaluated after the first pass: the pruning does not pay on such maps
    and the caller runs the full search."""
    n, d = q.shape
    nt = values.shape[0]
    qt = np.empty((d, n), np.float32)
    qn = np.empty(n, np.float32)
    for i in range(n):
        qn2 = 0.0
        for k in range(d):
            qt[k, i] = q[i, k]
            qn2 += np.float64(q[i, k]) * np.float64(q[i, k])
        qn[i] = np.float32(math.sqrt(qn2) * (1.0 + margin))
    bnd = np.empty((nt, n), np.float32)
    top = np.full(n, -np.inf, np.float32)
    t0 = np.zeros(n, np.int64)
    for t in range(nt):
        b = bnd[t]
        r = radius[t]
        for i in range(n):
            b[i] = r * qn[i]
        for k in range(d):
            c = centres_t[k, t]
            row = qt[k]
            for i in range(n):
                b[i] += c * row[i]
        for i in range(n):
            better = b[i] > top[i]
            top[i] = b[i] if better else top[i]
            t0[i] = t if better else t0[i]
    acc1 = np.empty((1, SLOTS), np.float32)
    acc = np.empty((QUERIES, SLOTS), np.float32)
    best_v = np.full(n, -np.inf, np.float32)
    best_i = np.full(n, num_pixels, np.int64)
    sel = np.arange(n)
    for i in range(n):
        t = t0[i]
        _fold_hits(_similarities_1(q, sel, i, values, t, acc1, best_v), sel, i, index[t], acc1, best_v, best_i)
        bnd[t, i] = -np.inf                     # done
    todo = 0
    for t in range(nt):
        b = bnd[t]
        for i in range(n):
            todo += 0 if b[i] < best_v[i] else 1
    if todo > max_fraction * n * nt:
        return False
    for t in range(nt):
        b = bnd[t]
        ns = 0
        for i in range(n):                      # the queries to evaluate, without a branch (10 % pass, unpredictably)
            sel[ns] = i
            ns += 0 if b[i] < best_v[i] else 1  # NaN bounds are evaluated
        idx = index[t]
        j = 0                                   # a query appears once per tile: the selection stays exact
        while j + QUERIES <= ns:
            hits = _similarities_n(q, sel, j, values, t, acc, best_v)
            if hits:
                _fold_hits(hits, sel, j, idx, acc, best_v, best_i)
            j += QUERIES
        while j < ns:
            _fold_hits(_similarities_1(q, sel, j, values, t, acc1, best_v), sel, j, idx, acc1, best_v, best_i)
            j += 1
    for i in range(n):
        out[i] = best_i[i] if best_i[i] < num_pixels else 0
    return True


def _sample_tiles_py(desc: np.ndarray, h: int, w: int, tile: int, samples: int, out: np.ndarray) -> None:
    """Radius (``out[0]``) and mean descriptor norm (``out[1]``) of ``samples`` x ``samples`` tiles spread over the
    image (``desc`` (H*W, D), any strides; read dimension by dimension, along the rows of a channel-first map)."""
    d = desc.shape[1]
    ss = tile * tile
    sq = np.empty(ss, np.float64)
    err = np.empty(ss, np.float64)
    j = 0
    for sy in range(samples):
        y0 = (max(0, h - tile) * sy) // max(1, samples - 1)
        for sx in range(samples):
            x0 = (max(0, w - tile) * sx) // max(1, samples - 1)
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            n = (y1 - y0) * (x1 - x0)
            sq[:] = 0.0
            err[:] = 0.0
            for k in range(d):
                c = 0.0
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        c += np.float64(desc[x + w * y, k])
                c /= n
                s = 0
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        v = np.float64(desc[x + w * y, k])
                        sq[s] += v * v
                        err[s] += (v - c) * (v - c)
                        s += 1
            r = 0.0
            nsum = 0.0
            for s in range(n):
                r = max(r, err[s])
                nsum += math.sqrt(sq[s])
            out[0, j] = math.sqrt(r)
            out[1, j] = nsum / n
            j += 1


if HAVE_NUMBA:
    def _tile_kernel(nq: int):
        """:func:`_tile_similarities_py` for ``nq`` queries, in LLVM IR on ``<16 x float>`` vectors. The SLOTS = 64
        slots of the tile are four vectors; each (query, vector) is the lane-wise chain
        ``fma(q[D-1], x[D-1], ... fma(q[1], x[1], q[0] * x[0]))`` (``llvm.fma.v16f32``, the query element
        broadcast, the tile's row of each dimension loaded once for the ``nq`` queries as it lies in ``values``
        (T, D, 64)), 4 ``nq`` independent chains in flight; the hit test is a vector ``fcmp oge`` (false for NaN)
        or-ed over the four vectors. Written out because numba's loop over the slots with the chain inside compiled
        partly to scalar FMAs (~3x the FMA bound). D is a run-time loop; ``acc`` must be (nq, SLOTS)."""
        @_intrinsic
        def kernel(typingctx, q, sel, j0, values, t, acc, best_v):
            f32_1d, f32_2d = _types.Array(_types.float32, 1, 'C'), _types.Array(_types.float32, 2, 'C')
            if (q != f32_2d or values != _types.Array(_types.float32, 3, 'C') or acc != f32_2d
                    or best_v != f32_1d or not isinstance(sel, _types.Array) or sel.ndim != 1
                    or sel.dtype != _types.int64 or sel.layout not in 'CA'
                    or not isinstance(j0, _types.Integer) or not isinstance(t, _types.Integer)):
                return None
            sig = _types.int64(q, sel, j0, values, t, acc, best_v)

            def codegen(context, builder, signature, args):
                f32, i64 = _ir.FloatType(), _ir.IntType(64)
                vf = _ir.VectorType(f32, LANES)
                qa, sa, va, aa, ba = (context.make_array(signature.args[j])(context, builder, args[j])
                                      for j in (0, 1, 3, 5, 6))
                first, tile = (context.cast(builder, args[j], signature.args[j], _types.int64) for j in (2, 4))
                sel_stride = builder.extract_value(sa.strides, 0)
                sel_base = builder.ptrtoint(sa.data, i64)
                rows = [builder.load(builder.inttoptr(builder.add(sel_base, builder.mul(
                    builder.add(first, _ir.Constant(i64, m)), sel_stride)), i64.as_pointer())) for m in range(nq)]
                bounds = [builder.load(builder.gep(ba.data, [r])) for r in rows]
                dims = builder.extract_value(qa.shape, 1)
                q_rows = [builder.gep(qa.data, [builder.mul(r, dims)]) for r in rows]
                nvec = SLOTS // LANES
                tile_start = builder.mul(tile, builder.mul(dims, _ir.Constant(i64, SLOTS)))
                blk = builder.bitcast(builder.gep(va.data, [tile_start]), vf.as_pointer())
                fma = vector_fma(builder, vf)

                def tile_row(k, j):                         # values[t, k, 16 j : 16 j + 16]
                    return builder.load(builder.gep(blk, [builder.add(builder.mul(k, _ir.Constant(i64, nvec)),
                                                                      _ir.Constant(i64, j))]), align=4)
                accs = [[_cgutils.alloca_once(builder, vf) for _ in range(nvec)] for _ in range(nq)]
                q0 = [splat(builder, builder.load(r, align=4), vf) for r in q_rows]
                for j in range(nvec):
                    y = tile_row(_ir.Constant(i64, 0), j)
                    for m in range(nq):
                        builder.store(builder.fmul(q0[m], y), accs[m][j])

                def dim(k):                                 # dimensions 1 .. D-1: one FMA per (query, vector)
                    qk = [splat(builder, builder.load(builder.gep(r, [k]), align=4), vf) for r in q_rows]
                    for j in range(nvec):
                        y = tile_row(k, j)
                        for m in range(nq):
                            builder.store(builder.call(fma, [qk[m], y, builder.load(accs[m][j])]), accs[m][j])
                counted_loop(builder, 'dims', _ir.Constant(i64, 1), lambda k: builder.icmp_signed('<', k, dims), 1,
                             dim)
                out = builder.bitcast(aa.data, vf.as_pointer())
                mask_t = _ir.IntType(LANES)
                hits = _ir.Constant(i64, 0)
                for m in range(nq):
                    bound = splat(builder, bounds[m], vf)
                    hit = None
                    for j in range(nvec):
                        s = builder.load(accs[m][j])
                        builder.store(s, builder.gep(out, [_ir.Constant(i64, m * nvec + j)]), align=4)
                        ge = builder.fcmp_ordered('>=', s, bound)
                        hit = ge if hit is None else builder.or_(hit, ge)
                    any_hit = builder.icmp_unsigned('!=', builder.bitcast(hit, mask_t), _ir.Constant(mask_t, 0))
                    hits = builder.or_(hits, builder.shl(builder.zext(any_hit, i64), _ir.Constant(i64, m)))
                return hits
            return sig, codegen
        return kernel

    _JIT = dict(nogil=True, boundscheck=False, error_model='numpy', cache=True)
    _similarities_1 = _tile_kernel(1)
    _similarities_n = _tile_kernel(QUERIES)
    _tile = _numba.njit(fastmath={'reassoc'}, **_JIT)(_tile_py)   # the centre's sum in any order
    _sample_tiles = _numba.njit(fastmath={'reassoc'}, **_JIT)(_sample_tiles_py)   # a statistic
    _first_of = _numba.njit(**_JIT)(_first_of_py)
    _fold = _numba.njit(inline='always', **_JIT)(_fold_py)
    _fold_hits = _numba.njit(inline='always', **_JIT)(_fold_hits_py)
    _search = _numba.njit(**_JIT)(_search_py)
else:  # pragma: no cover - the matcher uses the PyTorch backend without numba
    _similarities_1 = _similarities_n = _tile_similarities_py
    _tile, _first_of, _fold, _fold_hits, _search = _tile_py, _first_of_py, _fold_py, _fold_hits_py, _search_py
    _sample_tiles = _sample_tiles_py


def _pad8(x: np.ndarray) -> np.ndarray:
    """(N, D) -> float32 C-contiguous (N, D') with D' the next multiple of 8 (zero columns: a trailing ``+ 0 * 0``
    leaves every chain's value unchanged)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f'descriptors must be (N, D), got shape {x.shape}')
    dp = -(-x.shape[1] // 8) * 8
    if dp == x.shape[1]:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], dp), np.float32)
    out[:, :x.shape[1]] = x
    return out


def prunable(desc: np.ndarray, height: int, width: int, max_radius: float = 0.5, samples: int = 8) -> bool:
    """Whether the tile bound can prune on this map: the median radius of ``samples`` x ``samples`` tiles spread
    over the image, relative to their median descriptor norm, is below ``max_radius``. Rough maps (e.g. mostly
    noise) fail and are searched in full (same result, without the tiling and bound costs)."""
    stats = np.empty((2, samples * samples), np.float64)
    _sample_tiles(np.asarray(desc, dtype=np.float32).reshape(height * width, -1), height, width, TILE, samples,
                  stats)                                # any strides (e.g. a channel-first map): no copy
    r = float(np.median(stats[0]))
    scale = float(np.median(stats[1]))
    return bool(np.isfinite(r) and scale > 0 and r < max_radius * scale)


def tile_database(desc: np.ndarray, height: int, width: int) -> TiledDatabase:
    """Tile layout, centres and inflated radii of one image's descriptors ``desc`` (H*W, D) float32, row-major or
    any strides (e.g. a channel-first map: read as it lies, not copied first); D is padded to a multiple of 8 with
    zeros."""
    desc = np.asarray(desc)
    if desc.ndim != 2:
        raise ValueError(f'descriptors must be (N, D), got shape {desc.shape}')
    channel_first = desc.dtype == np.float32 and desc.shape[1] % 8 == 0 and desc.T.flags.c_contiguous
    if not channel_first:
        desc = _pad8(desc)
    p, d = desc.shape
    if p != height * width:
        raise ValueError(f'descriptor rows ({p}) differ from height x width ({height} x {width})')
    src = desc.T.reshape(d, height, width) if channel_first else desc.reshape(height, width, d)
    nt = -(-height // TILE) * -(-width // TILE)
    values = np.empty((nt, d, TILE * TILE), np.float32)
    index = np.empty((nt, TILE * TILE), np.int64)
    centres_t = np.empty((d, nt), np.float32)
    radius = np.empty(nt, np.float32)
    _tile(src, channel_first, height, width, MARGIN, values, index, centres_t, radius)
    return TiledDatabase(values, index, centres_t, radius, p)


def pruned_nn_search(queries: np.ndarray, db: TiledDatabase, out: np.ndarray | None = None,
                     max_fraction: float = 1.0) -> np.ndarray | None:
    """Index of the most similar database pixel for each query row (first index among equal maxima), exact.

    ``queries`` (n, D) with the database's D (before padding). Returns int64 (n,), or None when more than
    ``max_fraction`` of the (tile, query) pairs survive the first pass (rough maps: use the full search instead).
    """
    queries = _pad8(queries)
    if queries.ndim != 2 or queries.shape[1] != db.values.shape[1]:
        raise ValueError(f'queries must be (n, D) with the database\'s D (padded: {db.values.shape[1]}), '
                         f'got {queries.shape}')
    if out is None:
        out = np.empty(queries.shape[0], np.int64)
    if queries.shape[0] and not _search(queries, db.values, db.pixel, db.centres_t, db.radius, db.num_pixels,
                                        MARGIN, float(max_fraction), out):
        return None
    return out
