"""Encoders for every EventPacket encoding (docs/formats.md#encodings).

Used by the tests (round trips against the decoders) and by the simulator to publish realistic packets.

* ``encode_evt3`` writes a self-contained Prophesee EVT 3.0 word stream: it starts with TIME_HIGH + TIME_LOW (so a
  decoder becomes valid immediately), groups events by (time, row, polarity), uses VECT_BASE_X + VECT_12 / VECT_8
  words for runs of nearby columns (``vectorize=True``) and plain ADDR_X otherwise, and interleaves external
  triggers. Time is sensor microseconds; only 24 bits go on the wire, so the stream wraps every 2^24 us; the encoder
  writes TIME_HIGH keep-alive words across long gaps (as a sensor does) so that a decoder can follow every wrap.
  Payloads from consecutive calls (consecutive time ranges) concatenate into one valid stream.
* ``encode_libcaer_cmp`` builds one libcaer_driver message (time relative to the first event, vectors along y).
* ``encode_libcaer``, ``encode_mono`` and ``encode_trigger`` write the 8-byte record formats.

The 16/64-bit codecs return ``(payload_bytes, time_base_ns)``; ``encode_evt3`` returns bytes (evt3 has no time base).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from ._jit import njit

EVT3_MAX_COORD = 2047  # 11-bit addresses
EVT3_WRAP_US = 1 << 24
_KEEPALIVE_STEP = 2048  # TIME_HIGH units between keep-alive words during gaps (< 4086, see docs/formats.md#evt3)


def _trigger_arrays(triggers: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t_us, id, edge) from None, a TriggerArray (t in ns) or a (t_us, id, edge) tuple."""
    if triggers is None:
        z = np.empty(0, np.int64)
        return z, z.copy(), z.copy()
    if hasattr(triggers, 't') and hasattr(triggers, 'id'):
        t_us = np.asarray(triggers.t, np.int64) // 1000
        return t_us, np.asarray(triggers.id, np.int64), np.asarray(triggers.polarity, np.int64)
    t_us, tid, edge = triggers
    return (np.asarray(t_us, np.int64).reshape(-1), np.asarray(tid, np.int64).reshape(-1),
            np.asarray(edge, np.int64).reshape(-1))


@njit
def _encode_evt3_kernel(x, y, t, p, tt, tid, tedge, vectorize, out):  # pragma: no cover - compiled
    o = 0
    cur_high = -1
    cur_low = -1
    cur_y = -1
    n = x.shape[0]
    m = tt.shape[0]
    i = 0
    j = 0
    while i < n or j < m:
        is_trig = j < m and (i >= n or tt[j] <= t[i])
        tnow = tt[j] if is_trig else t[i]
        high = tnow >> 12
        low = tnow & 0xFFF
        if high != cur_high:
            if cur_high >= 0:
                h = cur_high + 2048
                while h < high:
                    out[o] = 0x8000 | (h & 0xFFF)
                    o += 1
                    h += 2048
            out[o] = 0x8000 | (high & 0xFFF)
            o += 1
            cur_high = high
            out[o] = 0x6000 | low
            o += 1
            cur_low = low
        elif low != cur_low:
            out[o] = 0x6000 | low
            o += 1
            cur_low = low
        if is_trig:
            out[o] = 0xA000 | ((tid[j] & 0xF) << 8) | (tedge[j] & 1)
            o += 1
            j += 1
            continue
        yy = y[i]
        pp = p[i]
        if yy != cur_y:
            out[o] = yy
            o += 1
            cur_y = yy
        e = i + 1
        while e < n and t[e] == tnow and y[e] == yy and p[e] == pp:
            e += 1
        k = i
        while k < e:
            if vectorize:
                jj = k + 1
                while jj < e and x[jj] < x[k] + 12 and x[jj] > x[jj - 1]:
                    jj += 1
                if jj - k >= 2:
                    out[o] = 0x3000 | (pp << 11) | x[k]
                    o += 1
                    base = x[k]
                    while True:
                        mask = 0
                        q = k
                        while q < e and x[q] < base + 12 and (q == k or x[q] > x[q - 1]):
                            mask |= 1 << (x[q] - base)
                            q += 1
                        if mask == 0:
                            break
                        if mask < 256:
                            out[o] = 0x5000 | mask
                            base += 8
                        else:
                            out[o] = 0x4000 | mask
                            base += 12
                        o += 1
                        k = q
                        if k >= e or x[k] <= x[k - 1]:
                            break
                    continue
            out[o] = 0x2000 | (pp << 11) | x[k]
            o += 1
            k += 1
        i = e
    return o


def encode_evt3(x: Any, y: Any, t_us: Any, p: Any, triggers: Any = None, vectorize: bool = True) -> bytes:
    """Encode CD events (and optional external triggers) as an EVT 3.0 word stream.

    Args:
        x, y: pixel coordinates, each < 2048.
        t_us: sensor time in microseconds (int, >= 0). Events are sorted by (t, y, p, x) before encoding, which
            is also the order a decoder returns them in.
        p: polarity (nonzero = ON).
        triggers: ``None``, a ``TriggerArray`` (t in ns) or a tuple ``(t_us, channel_id, edge)``; at equal times
            triggers are written before CD events.
        vectorize: use VECT_BASE_X / VECT_12 / VECT_8 words for runs of nearby columns in one row.

    Returns:
        Little-endian payload bytes. The decoded time is ``t_us`` modulo the wraps seen since decoding began,
        i.e. exactly ``t_us`` when the first time stamp is below 2^24 us.
    """
    x = np.asarray(x, np.int64).reshape(-1)
    y = np.asarray(y, np.int64).reshape(-1)
    t = np.asarray(t_us, np.int64).reshape(-1)
    pol = (np.asarray(p).reshape(-1) > 0).astype(np.int64)
    if not (len(x) == len(y) == len(t) == len(pol)):
        raise ValueError(f'encode_evt3: x, y, t_us, p differ in length ({len(x)}, {len(y)}, {len(t)}, {len(pol)})')
    tt, tid, tedge = _trigger_arrays(triggers)
    if not (len(tt) == len(tid) == len(tedge)):
        raise ValueError('encode_evt3: trigger arrays differ in length')
    for name, arr in (('x', x), ('y', y)):
        if arr.size and (arr.min() < 0 or arr.max() > EVT3_MAX_COORD):
            raise ValueError(f'encode_evt3: {name} out of the 11-bit range 0..2047 '
                             f'(min {arr.min()}, max {arr.max()})')
    for name, arr in (('t_us', t), ('trigger t_us', tt)):
        if arr.size and arr.min() < 0:
            raise ValueError(f'encode_evt3: {name} must be >= 0 (min {arr.min()})')
    if tid.size and (tid.min() < 0 or tid.max() > 15):
        raise ValueError('encode_evt3: trigger channel id must be in 0..15')
    order = np.lexsort((x, pol, y, t))
    x, y, t, pol = x[order], y[order], t[order], pol[order]
    torder = np.argsort(tt, kind='stable')
    tt, tid, tedge = tt[torder], tid[torder], (tedge[torder] > 0).astype(np.int64)
    all_t = np.concatenate([t, tt])
    keepalive = 0
    if all_t.size:
        keepalive = int(((all_t.max() >> 12) - (all_t.min() >> 12)) // _KEEPALIVE_STEP) + 2
    out = np.empty(4 * len(x) + 3 * len(tt) + keepalive + 8, np.uint16)
    n = _encode_evt3_kernel(x, y, t, pol, tt, tid, tedge, bool(vectorize), out)
    return out[:n].astype('<u2').tobytes()


@njit
def _encode_libcaer_cmp_kernel(x, y, r, p, out):  # pragma: no cover - compiled
    n = x.shape[0]
    o = 0
    if n == 0:
        return 0
    out[o] = 0x2000 | x[0]
    o += 1
    cur_x = x[0]
    th = 0
    tl = 0
    i = 0
    while i < n:
        rel = r[i]
        h = (rel >> 12) & 0xFFF
        lo = rel & 0xFFF
        if h != th:
            out[o] = h
            o += 1
            th = h
        if lo != tl:
            out[o] = 0x1000 | lo
            o += 1
            tl = lo
        if x[i] != cur_x:
            out[o] = 0x2000 | x[i]
            o += 1
            cur_x = x[i]
        e = i + 1
        while (e < n and r[e] == rel and x[e] == x[i] and p[e] == p[i] and (y[e] >> 3) == (y[i] >> 3)
               and y[e] > y[e - 1]):
            e += 1
        if e - i == 1:
            out[o] = 0x3000 | (p[i] << 11) | y[i]
            o += 1
        else:
            out[o] = 0x4000 | (p[i] << 11) | (y[i] & ~7)
            o += 1
            mask = 0
            for k in range(i, e):
                mask |= 1 << (y[k] & 7)
            out[o] = 0x5000 | mask
            o += 1
        i = e
    return o


def encode_libcaer_cmp(x: Any, y: Any, t_ns: Any, p: Any) -> Tuple[bytes, int]:
    """Encode one ``libcaer_cmp`` message the way libcaer_driver does (docs/formats.md#libcaer_cmp).

    Events are sorted by (t, x, p, y). ``time_base`` is the time of the first event; times must be on a 1 us
    grid relative to it and span less than 2^24 us (the format has no rollover).

    Returns:
        ``(payload_bytes, time_base_ns)``.
    """
    x = np.asarray(x, np.int64).reshape(-1)
    y = np.asarray(y, np.int64).reshape(-1)
    t = np.asarray(t_ns, np.int64).reshape(-1)
    pol = (np.asarray(p).reshape(-1) > 0).astype(np.int64)
    if not (len(x) == len(y) == len(t) == len(pol)):
        raise ValueError('encode_libcaer_cmp: x, y, t_ns, p differ in length')
    if len(t) == 0:
        return b'', 0
    for name, arr in (('x', x), ('y', y)):
        if arr.min() < 0 or arr.max() > EVT3_MAX_COORD:
            raise ValueError(f'encode_libcaer_cmp: {name} out of the 11-bit range 0..2047')
    order = np.lexsort((y, pol, x, t))
    x, y, t, pol = x[order], y[order], t[order], pol[order]
    time_base = int(t[0])
    rel_ns = t - time_base
    if np.any(rel_ns % 1000):
        raise ValueError('encode_libcaer_cmp: times must lie on a 1 us grid relative to the first event')
    rel = rel_ns // 1000
    if rel.max() >= EVT3_WRAP_US:
        raise ValueError('encode_libcaer_cmp: a message may span at most 2^24 us (16.7 s)')
    out = np.empty(4 * len(x) + 2, np.uint16)
    n = _encode_libcaer_cmp_kernel(x, y, rel, pol, out)
    return out[:n].astype('<u2').tobytes(), time_base


def encode_libcaer(x: Any, y: Any, t_ns: Any, p: Any, time_base: Optional[int] = None) -> Tuple[bytes, int]:
    """Encode libcaer polarity events (8 bytes: uint32 data, int32 31-bit µs time stamp; docs/formats.md#libcaer).

    The on-wire time stamp is ``((t - time_base) / 1000) mod 2^31``; choose ``time_base`` so that the first stamp
    is close to 2^31 to exercise the rollover. Events keep their given order (a decoder adds 2^31 us whenever the
    stamp decreases). Default ``time_base`` is the first event time.

    Returns:
        ``(payload_bytes, time_base_ns)``.
    """
    x = np.asarray(x, np.int64).reshape(-1)
    y = np.asarray(y, np.int64).reshape(-1)
    t = np.asarray(t_ns, np.int64).reshape(-1)
    pol = (np.asarray(p).reshape(-1) > 0).astype(np.int64)
    if not (len(x) == len(y) == len(t) == len(pol)):
        raise ValueError('encode_libcaer: x, y, t_ns, p differ in length')
    if len(t) == 0:
        return b'', int(time_base or 0)
    if x.min() < 0 or x.max() > 0x7FFF or y.min() < 0 or y.max() > 0x7FFF:
        raise ValueError('encode_libcaer: x and y must fit in 15 bits')
    tb = int(t[0]) if time_base is None else int(time_base)
    rel_ns = t - tb
    if rel_ns.min() < 0 or np.any(rel_ns % 1000):
        raise ValueError('encode_libcaer: times must be >= time_base and on a 1 us grid relative to it')
    rel = rel_ns // 1000
    if len(rel) > 1 and np.any(np.diff(rel) < 0):
        raise ValueError('encode_libcaer: times must be non-decreasing')
    rec = np.empty(len(x), dtype=[('data', '<u4'), ('ts', '<i4')])
    rec['data'] = (1 | (pol << 1) | (y << 2) | (x << 17)).astype(np.uint32)
    rec['ts'] = (rel & 0x7FFFFFFF).astype(np.int32)
    return rec.tobytes(), tb


def encode_mono(x: Any, y: Any, t_ns: Any, p: Any, time_base: Optional[int] = None) -> Tuple[bytes, int]:
    """Encode the deprecated ``mono`` format (uint64: pol bit 63, y bits 62..48, x bits 47..32, dt ns bits 31..0).

    Returns:
        ``(payload_bytes, time_base_ns)``; ``time_base`` defaults to the first event time.
    """
    x = np.asarray(x, np.uint64).reshape(-1)
    y = np.asarray(y, np.uint64).reshape(-1)
    t = np.asarray(t_ns, np.int64).reshape(-1)
    pol = (np.asarray(p).reshape(-1) > 0).astype(np.uint64)
    if not (len(x) == len(y) == len(t) == len(pol)):
        raise ValueError('encode_mono: x, y, t_ns, p differ in length')
    if len(t) == 0:
        return b'', int(time_base or 0)
    if x.max() > 0xFFFF or y.max() > 0x7FFF:
        raise ValueError('encode_mono: x must fit 16 bits and y 15 bits')
    tb = int(t[0]) if time_base is None else int(time_base)
    dt = t - tb
    if dt.min() < 0 or dt.max() > 0xFFFFFFFF:
        raise ValueError('encode_mono: t - time_base must lie in [0, 2^32) ns')
    rec = (pol << np.uint64(63)) | (y << np.uint64(48)) | (x << np.uint64(32)) | dt.astype(np.uint64)
    return rec.astype('<u8').tobytes(), tb


def encode_trigger(t_ns: Any, trigger_id: Any, edge: Any, time_base: Optional[int] = None) -> Tuple[bytes, int]:
    """Encode the deprecated ``trigger`` format (edge bit 63, id bits 62..48, dt ns bits 31..0).

    Returns:
        ``(payload_bytes, time_base_ns)``.
    """
    t = np.asarray(t_ns, np.int64).reshape(-1)
    tid = np.asarray(trigger_id, np.uint64).reshape(-1)
    e = (np.asarray(edge).reshape(-1) > 0).astype(np.uint64)
    if not (len(t) == len(tid) == len(e)):
        raise ValueError('encode_trigger: t_ns, trigger_id, edge differ in length')
    if len(t) == 0:
        return b'', int(time_base or 0)
    if tid.max() > 0xFF:
        raise ValueError('encode_trigger: id must fit 8 bits')
    tb = int(t[0]) if time_base is None else int(time_base)
    dt = t - tb
    if dt.min() < 0 or dt.max() > 0xFFFFFFFF:
        raise ValueError('encode_trigger: t - time_base must lie in [0, 2^32) ns')
    rec = (e << np.uint64(63)) | (tid << np.uint64(48)) | dt.astype(np.uint64)
    return rec.astype('<u8').tobytes(), tb
