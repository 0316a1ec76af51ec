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


if HAVE_NUMBA:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _fma_intrinsic(typingctx, a, b, c):
        """float32 fused multiply-add ``a * b + c`` (``llvm.fma.f32``: one rounding, vectorises to vfmadd).
        Written out instead of left to ``fastmath={'contract'}``: LLVM may contract ``x0 * y0 + x1 * y1`` either
        way round, and the first two terms must be ``fma(x1, y1, round(x0 * y0))`` as in MKL's sgemm."""
        sig = _types.float32(_types.float32, _types.float32, _types.float32)

        def codegen(context, builder, signature, args):
            f32 = _ir.FloatType()
            fn = builder.module.declare_intrinsic('llvm.fma', [f32], _ir.FunctionType(f32, [f32, f32, f32]))
            return builder.call(fn, args)
        return sig, codegen
    fma32 = _fma_intrinsic
else:  # pragma: no cover
    fma32 = _fma_py
_fma = fma32

__all__ = ['TILE', 'TiledDatabase', 'tile_database', 'pruned_nn_search', 'prunable', 'MARGIN']

TILE = 8            # tile side in pixels
SLOTS = TILE * TILE  # pixels per tile (a multiple of 16)
MARGIN = 3e-5       # relative inflation of the bound (covers float32 rounding of the chain and the bound, ~3e-6)


class TiledDatabase(NamedTuple):
    """One image as the database of the pruned search (see :func:`tile_database`)."""

    values: np.ndarray      # (T, D, 64) float32: tile t, dimension d, slot s
    pixel: np.ndarray       # (T, 64) int64: linear pixel index x + W y of each slot
    centres_t: np.ndarray   # (D, T) float32: tile centres, transposed (the bounds vectorise over tiles)
    radius: np.ndarray      # (T,) float32: max |x - c| over the tile, inflated (inf where not finite)
    num_pixels: int         # P


def _tile_py(desc: np.ndarray, h: int, w: int, tile: int, margin: float, values: np.ndarray, index: np.ndarray,
             centres_t: np.ndarray, radius: np.ndarray) -> None:
    """Fill the tile layout from the row-major descriptors ``desc`` (H*W, D); see :class:`TiledDatabase`."""
    d = desc.shape[1]
    ntx = (w + tile - 1) // tile
    nty = (h + tile - 1) // tile
    ss = tile * tile
    err = np.empty(ss, np.float64)
    for ty in range(nty):
        for tx in range(ntx):
            t = ty * ntx + tx
            y0, x0 = ty * tile, tx * tile
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            blk = values[t]
            s = 0
            for y in range(y0, y1):
                for x in range(x0, x1):
                    p = x + w * y
                    index[t, s] = p
                    for k in range(d):
                        blk[k, s] = desc[p, k]
                    s += 1
            n = s
            first = index[t, 0]
            while s < ss:                       # padding: copies of the tile's first pixel
                index[t, s] = first
                for k in range(d):
                    blk[k, s] = desc[first, k]
                s += 1
            for j in range(ss):
                err[j] = 0.0
            cn = 0.0
            for k in range(d):
                vals = blk[k]
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


def _eval_tile_py(q: np.ndarray, i: int, blk: np.ndarray, idx: np.ndarray, acc: np.ndarray, best_v: np.ndarray,
                  best_i: np.ndarray) -> None:
    """Similarities of query ``q[i]`` with the pixels of one tile (``blk`` (D, SLOTS)), folded into its maximum."""
    d = q.shape[1]
    for k0 in range(0, d, 8):                    # the FMA chain of the full search, 8 dimensions per pass
        p0, p1, p2, p3, p4, p5, p6, p7 = q[i, k0], q[i, k0 + 1], q[i, k0 + 2], q[i, k0 + 3], \
            q[i, k0 + 4], q[i, k0 + 5], q[i, k0 + 6], q[i, k0 + 7]
        if k0 == 0:
            for s in range(SLOTS):
                v = p0 * blk[k0, s]
                v = _fma(p1, blk[k0 + 1, s], v)
                v = _fma(p2, blk[k0 + 2, s], v)
                v = _fma(p3, blk[k0 + 3, s], v)
                v = _fma(p4, blk[k0 + 4, s], v)
                v = _fma(p5, blk[k0 + 5, s], v)
                v = _fma(p6, blk[k0 + 6, s], v)
                acc[s] = _fma(p7, blk[k0 + 7, s], v)
        else:
            for s in range(SLOTS):
                v = _fma(p0, blk[k0, s], acc[s])
                v = _fma(p1, blk[k0 + 1, s], v)
                v = _fma(p2, blk[k0 + 2, s], v)
                v = _fma(p3, blk[k0 + 3, s], v)
                v = _fma(p4, blk[k0 + 4, s], v)
                v = _fma(p5, blk[k0 + 5, s], v)
                v = _fma(p6, blk[k0 + 6, s], v)
                acc[s] = _fma(p7, blk[k0 + 7, s], v)
    _fold(acc, idx, i, best_v, best_i)


def _eval_tile4_py(q: np.ndarray, i0: int, i1: int, i2: int, i3: int, blk: np.ndarray, idx: np.ndarray,
                   a0: np.ndarray, a1: np.ndarray, a2: np.ndarray, a3: np.ndarray, best_v: np.ndarray,
                   best_i: np.ndarray) -> None:
    """:func:`_eval_tile` for four queries at once (each database value loaded once for the four chains; separate
    accumulators so that LLVM sees they do not alias)."""
    d = q.shape[1]
    for k0 in range(0, d, 4):                    # 4 dimensions x 4 queries per pass (16 products in registers)
        p00, p01, p02, p03 = q[i0, k0], q[i0, k0 + 1], q[i0, k0 + 2], q[i0, k0 + 3]
        p10, p11, p12, p13 = q[i1, k0], q[i1, k0 + 1], q[i1, k0 + 2], q[i1, k0 + 3]
        p20, p21, p22, p23 = q[i2, k0], q[i2, k0 + 1], q[i2, k0 + 2], q[i2, k0 + 3]
        p30, p31, p32, p33 = q[i3, k0], q[i3, k0 + 1], q[i3, k0 + 2], q[i3, k0 + 3]
        if k0 == 0:
            for s in range(SLOTS):
                y0, y1, y2, y3 = blk[k0, s], blk[k0 + 1, s], blk[k0 + 2, s], blk[k0 + 3, s]
                v = p00 * y0
                v = _fma(p01, y1, v)
                v = _fma(p02, y2, v)
                a0[s] = _fma(p03, y3, v)
                v = p10 * y0
                v = _fma(p11, y1, v)
                v = _fma(p12, y2, v)
                a1[s] = _fma(p13, y3, v)
                v = p20 * y0
                v = _fma(p21, y1, v)
                v = _fma(p22, y2, v)
                a2[s] = _fma(p23, y3, v)
                v = p30 * y0
                v = _fma(p31, y1, v)
                v = _fma(p32, y2, v)
                a3[s] = _fma(p33, y3, v)
        else:
            for s in range(SLOTS):
                y0, y1, y2, y3 = blk[k0, s], blk[k0 + 1, s], blk[k0 + 2, s], blk[k0 + 3, s]
                v = _fma(p00, y0, a0[s])
                v = _fma(p01, y1, v)
                v = _fma(p02, y2, v)
                a0[s] = _fma(p03, y3, v)
                v = _fma(p10, y0, a1[s])
                v = _fma(p11, y1, v)
                v = _fma(p12, y2, v)
                a1[s] = _fma(p13, y3, v)
                v = _fma(p20, y0, a2[s])
                v = _fma(p21, y1, v)
                v = _fma(p22, y2, v)
                a2[s] = _fma(p23, y3, v)
                v = _fma(p30, y0, a3[s])
                v = _fma(p31, y1, v)
                v = _fma(p32, y2, v)
                a3[s] = _fma(p33, y3, v)
    _fold(a0, idx, i0, best_v, best_i)
    _fold(a1, idx, i1, best_v, best_i)
    _fold(a2, idx, i2, best_v, best_i)
    _fold(a3, idx, i3, best_v, best_i)


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
    acc = np.empty(SLOTS, np.float32)
    best_v = np.full(n, -np.inf, np.float32)
    best_i = np.full(n, num_pixels, np.int64)
    for i in range(n):
        t = t0[i]
        _eval_tile(q, i, values[t], index[t], acc, best_v, best_i)
        bnd[t, i] = -np.inf                     # done
    todo = 0
    for t in range(nt):
        b = bnd[t]
        for i in range(n):
            todo += 0 if b[i] < best_v[i] else 1
    if todo > max_fraction * n * nt:
        return False
    a1, a2, a3 = np.empty(SLOTS, np.float32), np.empty(SLOTS, np.float32), np.empty(SLOTS, np.float32)
    sel = np.empty(4, np.int64)
    for t in range(nt):
        b = bnd[t]
        blk = values[t]
        idx = index[t]
        ns = 0
        for i in range(n):
            if not (b[i] < best_v[i]):          # NaN bounds are evaluated
                sel[ns] = i
                ns += 1
                if ns == 4:
                    _eval_tile4(q, sel[0], sel[1], sel[2], sel[3], blk, idx, acc, a1, a2, a3, best_v, best_i)
                    ns = 0
        for j in range(ns):
            _eval_tile(q, sel[j], blk, idx, acc, best_v, best_i)
    for i in range(n):
        out[i] = best_i[i] if best_i[i] < num_pixels else 0
    return True


def _sample_tiles_py(desc: np.ndarray, h: int, w: int, tile: int, samples: int, out: np.ndarray) -> None:
    """Radius (``out[0]``) and mean descriptor norm (``out[1]``) of ``samples`` x ``samples`` tiles spread over the
    image (row-major ``desc`` (H*W, D))."""
    d = desc.shape[1]
    c = np.empty(d, np.float64)
    j = 0
    for sy in range(samples):
        y0 = (max(0, h - tile) * sy) // max(1, samples - 1)
        for sx in range(samples):
            x0 = (max(0, w - tile) * sx) // max(1, samples - 1)
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            n = (y1 - y0) * (x1 - x0)
            for k in range(d):
                c[k] = 0.0
            nsum = 0.0
            for y in range(y0, y1):
                for x in range(x0, x1):
                    p = x + w * y
                    e = 0.0
                    for k in range(d):
                        v = np.float64(desc[p, k])
                        c[k] += v
                        e += v * v
                    nsum += math.sqrt(e)
            for k in range(d):
                c[k] /= n
            r = 0.0
            for y in range(y0, y1):
                for x in range(x0, x1):
                    p = x + w * y
                    e = 0.0
                    for k in range(d):
                        v = np.float64(desc[p, k]) - c[k]
                        e += v * v
                    r = max(r, e)
            out[0, j] = math.sqrt(r)
            out[1, j] = nsum / n
            j += 1


if HAVE_NUMBA:
    _JIT = dict(nogil=True, boundscheck=False, error_model='numpy', cache=True)
    _tile = _numba.njit(**_JIT)(_tile_py)
    _sample_tiles = _numba.njit(**_JIT)(_sample_tiles_py)
    _first_of = _numba.njit(**_JIT)(_first_of_py)
    _fold = _numba.njit(inline='always', **_JIT)(_fold_py)
    _eval_tile = _numba.njit(inline='always', **_JIT)(_eval_tile_py)
    _eval_tile4 = _numba.njit(inline='always', **_JIT)(_eval_tile4_py)
    _search = _numba.njit(**_JIT)(_search_py)
else:  # pragma: no cover - the matcher uses the PyTorch backend without numba
    _tile, _first_of, _fold, _eval_tile, _eval_tile4, _search = (_tile_py, _first_of_py, _fold_py, _eval_tile_py,
                                                                 _eval_tile4_py, _search_py)
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
    """Tile layout, centres and inflated radii of one image's descriptors ``desc`` (H*W, D) row-major (D is padded
    to a multiple of 8 with zeros)."""
    desc = _pad8(desc)
    p, d = desc.shape
    if p != height * width:
        raise ValueError(f'descriptor rows ({p}) differ from height x width ({height} x {width})')
    nt = -(-height // TILE) * -(-width // TILE)
    values = np.empty((nt, d, TILE * TILE), np.float32)
    index = np.empty((nt, TILE * TILE), np.int64)
    centres_t = np.empty((d, nt), np.float32)
    radius = np.empty(nt, np.float32)
    _tile(desc, height, width, TILE, MARGIN, values, index, centres_t, radius)
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
