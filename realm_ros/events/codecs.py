"""Stateful decoders for every EventPacket encoding (docs/formats.md#encodings).

(Over 500 lines because the two numba state-machine kernels, evt3 and libcaer_cmp, share this file with the decoder
classes that own their state arrays and counter layouts, so that a kernel's slot indices and its decoder cannot
drift apart; the encoders that write the same formats live in ``encoders``.)

``make_decoder(encoding, width, height)`` returns one decoder per stream; keep one instance per
(topic, encoding, width, height) because ``evt3`` is one continuous word stream cut at arbitrary word boundaries.

Decoded time (ns) per codec:

* ``evt3``: sensor microseconds x 1000, with 24-bit wrap tracking that persists across calls (behaviour (A) of
  docs/formats.md#evt3: event_camera_codecs; identical to openeb on real data). ``time_base`` is ignored.
* ``libcaer_cmp``: ``time_base + (th | tl) * 1000``; time state resets every call, x/polarity state carries over.
* ``libcaer``: ``time_base + wraps * 2^31 us + ts * 1000`` (31-bit rollover inside a message).
* ``mono`` / ``trigger``: ``time_base + dt``.

``time_base`` is uint64 on the wire; sums are taken modulo 2^64 and returned as int64 with the same bits
(``time_base_i64``). Sensor sizes must be 1..``MAX_SENSOR_SIZE`` per side (``ValueError`` otherwise). EVT3 padding
words (``0x9999``) are counted in ``stats['padding_words']``, not as errors.

Bad input never raises from ``decode``: odd/truncated lengths, words before the first time base, out-of-range
x/y (dropped), time going backwards, reserved/EM words are counted in ``Decoder.stats['errors']`` (running totals)
and in ``DecodeResult.errors`` (this call). Hot loops are numba-compiled (``cache=True``) or vectorised numpy.
"""
from __future__ import annotations

import abc
from typing import Any, Dict, Tuple, Type

import numpy as np

from realm_ros.common.errors import RealmError

from ._jit import njit
from .types import DecodeResult, EventArray, TriggerArray

SUPPORTED_ENCODINGS = ('evt3', 'libcaer_cmp', 'libcaer', 'mono', 'trigger')

#: Largest accepted sensor width / height: decoded x and y are uint16 and no encoding addresses more than 2^16
#: columns or rows (evt3 and libcaer_cmp 11 bits, libcaer 15, mono 16).
MAX_SENSOR_SIZE = 1 << 16

_U64 = (1 << 64) - 1


def time_base_i64(time_base: Any) -> np.int64:
    """The uint64 ``EventPacket.time_base`` as int64 with the same bits (arithmetic is modulo 2^64).

    Decoded times are int64 ns; a time base >= 2^63 ns (after the year 2262: garbage in practice) wraps like the
    uint64 arithmetic of the C++ codecs instead of raising ``OverflowError`` (``t.view(np.uint64)`` gives the
    unsigned value).
    """
    v = int(time_base) & _U64
    return np.int64(v - (1 << 64) if v >> 63 else v)


class UnknownEncodingError(RealmError, ValueError):
    """The EventPacket ``encoding`` string names no supported codec."""

    def __init__(self, encoding: Any):
        self.encoding = encoding
        super().__init__(f'unknown event encoding {encoding!r}: supported encodings are '
                         f'{", ".join(SUPPORTED_ENCODINGS)}')


def payload_bytes(payload: Any) -> np.ndarray:
    """View any bytes-like payload (bytes, bytearray, memoryview, array.array('B'), numpy) as a uint8 array.

    Zero-copy where the input supports the buffer protocol.
    """
    if isinstance(payload, np.ndarray):
        if payload.dtype == np.uint8 and payload.ndim == 1:
            # strided input is copied: the kernels are compiled for contiguous arrays only (see warmup)
            return payload if payload.flags.c_contiguous else np.ascontiguousarray(payload)
        return np.ascontiguousarray(payload).reshape(-1).view(np.uint8)
    if payload is None:
        return np.empty(0, np.uint8)
    try:
        return np.frombuffer(memoryview(payload).cast('B'), dtype=np.uint8)
    except TypeError:
        return np.asarray(bytearray(payload), dtype=np.uint8)


def _words16(buf: np.ndarray, bigendian: bool) -> np.ndarray:
    n = len(buf) // 2
    w = buf[:2 * n].view('>u2' if bigendian else '<u2')
    if bigendian:
        w = w.astype('<u2')
    return w


# ------------------------------------------------------------------------------------------------ bit tables
def _bit_tables() -> Tuple[np.ndarray, np.ndarray]:
    pos = np.zeros((4096, 12), np.uint8)
    cnt = np.zeros(4096, np.int64)
    for m in range(4096):
        k = 0
        for b in range(12):
            if m >> b & 1:
                pos[m, k] = b
                k += 1
        cnt[m] = k
    return pos, cnt


_POS_TABLE, _CNT_TABLE = _bit_tables()

# ------------------------------------------------------------------------------------------------ evt3 kernel
# Counter slots shared by the evt3 state array layout below. Cumulative totals live in ``counters``; ``delta``
# receives this call's increments (zeroed by the kernel).
_EVT3_COUNTERS = ('packets', 'bytes', 'words', 'events', 'triggers', 'rollovers', 'housekeeping_words',
                  'padding_words', 'odd_length', 'before_time_base', 'out_of_range', 'time_backwards',
                  'reserved_words', 'em_events', 'no_row_address', 'time_high_noise')
_EVT3_FIRST_ERROR = 8
# state slots: phase, time_high (with rollover bits), time_low, y, have_y, base_x, vector polarity, em mode,
# last TIME_LOW time (ns), width, height
_E_PHASE, _E_THIGH, _E_TLOW, _E_Y, _E_HAVE_Y, _E_BASEX, _E_VPOL, _E_EM, _E_LAST_T, _E_W, _E_H = range(11)


@njit
def _evt3_kernel(buf, state, counters, delta):  # pragma: no cover - compiled
    # Array indices are cast to uint64: numba then skips its negative-index wrap-around code on every access
    # (all indices here are non-negative counters and offsets): 8-20 % faster decoding (benchmarks/RESULTS.md).
    nb = buf.shape[0]
    n = nb // 2
    words = buf[:2 * n].view(np.uint16)
    for c in range(delta.shape[0]):
        delta[c] = 0
    delta[0] = 1
    delta[1] = nb
    delta[2] = n
    delta[8] = nb & 1
    nv = 0
    ntr = 0
    for i in range(n):
        ty = words[np.uint64(i)] >> 12
        nv += (ty == 4) | (ty == 5)
        ntr += ty == 10
    cap = n + 11 * nv + 1
    xs = np.empty(cap, np.uint16)
    ys = np.empty(cap, np.uint16)
    ts = np.empty(cap, np.int64)
    ps = np.empty(cap, np.uint8)
    trt = np.empty(ntr, np.int64)
    trid = np.empty(ntr, np.uint8)
    trp = np.empty(ntr, np.uint8)

    phase = state[0]
    th = state[1]
    tl = state[2]
    y = state[3]
    have_y = state[4]
    bx = state[5]
    vp = state[6]
    em = state[7]
    last_t = state[8]
    width = state[9]
    height = state[10]
    mask24 = np.int64(0xFFF000)
    rolls = 0
    noise = 0
    before = 0
    tback = 0

    i = 0
    # start-up (findValidTime): skip everything until a TIME_HIGH followed later by a TIME_LOW
    while phase < 2 and i < n:
        w = np.int64(words[np.uint64(i)])
        ty = w >> 12
        v = w & 0xFFF
        if ty == 8:
            last_hi = (th >> 12) & 0xFFF
            if v < last_hi and last_hi - v > 10:
                th += 1 << 24
                rolls += 1
            th = (th & ~mask24) | (v << 12)
            phase = 1
        elif ty == 6 and phase == 1:
            tl = v
            phase = 2
            last_t = (th | tl) * 1000
        elif w == 0x9999:
            delta[7] += 1
        else:
            before += 1
        i += 1

    t_ns = (th | tl) * 1000
    row_ok = (have_y == 1) and (em == 0) and (y < height)
    yv = np.uint16(y & 0xFFFF)
    xlim = width if row_ok else 0  # ADDR_X accepted iff x < xlim (0 when there is no valid CD row)
    o = 0
    ot = 0
    k = i - 1
    while k + 1 < n:
        k += 1
        w = np.int64(words[np.uint64(k)])
        ty = w >> 12
        if ty == 0:
            y = w & 0x7FF
            yv = np.uint16(y)
            have_y = 1
            em = 0
            row_ok = y < height
            xlim = width if row_ok else 0
            # ADDR_Y is almost always followed by ADDR_X: emit it here (one dispatch less per event)
            if k + 1 < n:
                w1 = np.int64(words[np.uint64(k + 1)])
                if (w1 >> 12) == 2:
                    x1 = w1 & 0x7FF
                    if x1 < xlim:
                        xs[np.uint64(o)] = x1
                        ys[np.uint64(o)] = yv
                        ts[np.uint64(o)] = t_ns
                        ps[np.uint64(o)] = (w1 >> 11) & 1
                        o += 1
                        k += 1
        elif ty == 6:
            tl = w & 0xFFF
            t_ns = (th | tl) * 1000
            if t_ns < last_t:
                tback += 1
            last_t = t_ns
            # TIME_LOW is usually followed by ADDR_Y, ADDR_X (one event per microsecond): handle all three here
            if k + 2 < n:
                wa = np.int64(words[np.uint64(k + 1)])
                wb = np.int64(words[np.uint64(k + 2)])
                if (wa >> 12) == 0 and (wb >> 12) == 2:
                    y = wa & 0x7FF
                    yv = np.uint16(y)
                    have_y = 1
                    em = 0
                    row_ok = y < height
                    xlim = width if row_ok else 0
                    x1 = wb & 0x7FF
                    if x1 < xlim:
                        xs[np.uint64(o)] = x1
                        ys[np.uint64(o)] = yv
                        ts[np.uint64(o)] = t_ns
                        ps[np.uint64(o)] = (wb >> 11) & 1
                        o += 1
                        k += 2
                    else:
                        k += 1
        elif ty == 2:
            x = w & 0x7FF
            if x < xlim:
                xs[np.uint64(o)] = x
                ys[np.uint64(o)] = yv
                ts[np.uint64(o)] = t_ns
                ps[np.uint64(o)] = (w >> 11) & 1
                o += 1
            elif em == 1:
                delta[13] += 1
            elif have_y == 0:
                delta[14] += 1
            else:
                delta[10] += 1
        elif ty == 8:
            v = w & 0xFFF
            last_hi = (th >> 12) & 0xFFF
            if v < last_hi:
                if last_hi - v > 10:
                    th += 1 << 24
                    rolls += 1
                else:
                    noise += 1
            th = (th & ~mask24) | (v << 12)
            t_ns = (th | tl) * 1000
        elif ty == 4 or ty == 5:
            if ty == 4:
                m = w & 0xFFF
                span = 12
            else:
                m = w & 0xFF
                span = 8
            c = _CNT_TABLE[np.uint64(m)]
            if row_ok and bx + span <= width:
                for j in range(c):
                    xs[np.uint64(o + j)] = bx + _POS_TABLE[np.uint64(m), np.uint64(j)]
                    ys[np.uint64(o + j)] = yv
                    ts[np.uint64(o + j)] = t_ns
                    ps[np.uint64(o + j)] = vp
                o += c
            elif not row_ok:
                if em == 1:
                    delta[13] += c
                elif have_y == 0:
                    delta[14] += c
                else:
                    delta[10] += c
            else:
                for j in range(c):
                    xx = bx + _POS_TABLE[np.uint64(m), np.uint64(j)]
                    if xx < width:
                        xs[np.uint64(o)] = xx
                        ys[np.uint64(o)] = yv
                        ts[np.uint64(o)] = t_ns
                        ps[np.uint64(o)] = vp
                        o += 1
                    else:
                        delta[10] += 1
            bx += span
        elif ty == 3:
            bx = w & 0x7FF
            vp = (w >> 11) & 1
        elif ty == 10:
            trt[np.uint64(ot)] = t_ns
            trid[np.uint64(ot)] = (w >> 8) & 0xF
            trp[np.uint64(ot)] = w & 1
            ot += 1
        elif ty == 14 or ty == 15 or ty == 7:
            delta[6] += 1
        elif ty == 1:
            # EM_ADDR_Y (ATIS exposure measurement): following X / vector words are not CD events
            y = w & 0x7FF
            yv = np.uint16(y)
            have_y = 1
            em = 1
            row_ok = False
            xlim = 0
        elif w == 0x9999:
            delta[7] += 1  # padding word (type 9; some cameras pad packets with it): not an error
        else:
            delta[12] += 1

    state[0] = phase
    state[1] = th
    state[2] = tl
    state[3] = y
    state[4] = have_y
    state[5] = bx
    state[6] = vp
    state[7] = em
    state[8] = last_t
    delta[3] = o
    delta[4] = ot
    delta[5] = rolls
    delta[9] = before
    delta[11] = tback
    delta[15] = noise
    nerr = 0
    for c in range(delta.shape[0]):
        counters[c] += delta[c]
        if c >= 8:
            nerr += delta[c]
    return nerr, xs[:o], ys[:o], ts[:o], ps[:o], trt[:ot], trid[:ot], trp[:ot]


# ------------------------------------------------------------------------------------------------ libcaer_cmp kernel
_LC_COUNTERS = ('packets', 'bytes', 'words', 'events', 'triggers', 'odd_length', 'out_of_range', 'time_backwards',
                'reserved_words', 'no_column_address', 'no_vector_base')
_LC_FIRST_ERROR = 5
# state slots: x, have_x, base_y, vector polarity, have vector base, width, height, last event time (ns),
# have last time
_LC_NSTATE = 9


@njit
def _libcaer_cmp_kernel(buf, time_base, state, counters, delta):  # pragma: no cover - compiled
    nb = buf.shape[0]
    n = nb // 2
    words = buf[:2 * n].view(np.uint16)
    for c in range(delta.shape[0]):
        delta[c] = 0
    delta[0] = 1
    delta[1] = nb
    delta[2] = n
    delta[5] = nb & 1
    nv = 0
    for i in range(n):
        nv += (words[i] >> 12) == 5
    cap = n + 7 * nv
    xs = np.empty(cap, np.uint16)
    ys = np.empty(cap, np.uint16)
    ts = np.empty(cap, np.int64)
    ps = np.empty(cap, np.uint8)
    x = state[0]
    have_x = state[1]
    by = state[2]
    vp = state[3]
    have_vb = state[4]
    width = state[5]
    height = state[6]
    last_t = state[7]
    have_last = state[8]
    col_ok = (have_x == 1) and (x < width)
    xv = np.uint16(x & 0xFFFF)
    th = np.int64(0)
    tl = np.int64(0)
    t_ns = time_base
    if have_last == 0:
        last_t = t_ns
    o = 0
    for k in range(n):
        w = np.int64(words[k])
        ty = w >> 12
        if ty == 3:
            yy = w & 0x7FF
            if col_ok and yy < height:
                if t_ns != last_t:
                    if t_ns < last_t:
                        delta[7] += 1
                    last_t = t_ns
                xs[o] = xv
                ys[o] = yy
                ts[o] = t_ns
                ps[o] = (w >> 11) & 1
                o += 1
            elif have_x == 0:
                delta[9] += 1
            else:
                delta[6] += 1
        elif ty == 1:
            tl = w & 0xFFF
            t_ns = time_base + (th | tl) * 1000
        elif ty == 2:
            x = w & 0x7FF
            xv = np.uint16(x)
            have_x = 1
            col_ok = x < width
        elif ty == 0:
            th = (w & 0xFFF) << 12
            t_ns = time_base + (th | tl) * 1000
        elif ty == 4:
            by = w & 0x7FF
            vp = (w >> 11) & 1
            have_vb = 1
        elif ty == 5:
            m = w & 0xFF
            c = _CNT_TABLE[m]
            if have_vb == 0:
                delta[10] += c
            elif have_x == 0:
                delta[9] += c
            else:
                if t_ns != last_t:
                    if t_ns < last_t:
                        delta[7] += 1
                    last_t = t_ns
                for j in range(c):
                    yy = by + _POS_TABLE[m, j]
                    if col_ok and yy < height:
                        xs[o] = xv
                        ys[o] = yy
                        ts[o] = t_ns
                        ps[o] = vp
                        o += 1
                    else:
                        delta[6] += 1
            by += 8
        else:
            delta[8] += 1
    state[0] = x
    state[1] = have_x
    state[2] = by
    state[3] = vp
    state[4] = have_vb
    state[7] = last_t
    state[8] = 1 if (have_last == 1 or o > 0) else 0
    delta[3] = o
    nerr = 0
    for c in range(delta.shape[0]):
        counters[c] += delta[c]
        if c >= 5:
            nerr += delta[c]
    return nerr, xs[:o], ys[:o], ts[:o], ps[:o]


# ------------------------------------------------------------------------------------------------ decoders
_NO_TRIGGERS = TriggerArray.empty()
for _a in (_NO_TRIGGERS.t, _NO_TRIGGERS.id, _NO_TRIGGERS.polarity):
    _a.setflags(write=False)


def _errors_of(names: Tuple[str, ...], first_error: int, delta: np.ndarray) -> Dict[str, int]:
    return {names[i]: int(delta[i]) for i in range(first_error, len(names)) if delta[i]}


class Decoder(abc.ABC):
    """Base class: one stateful decoder per event stream (not thread-safe: decode one stream from one thread).

    Attributes:
        encoding: codec name. width, height: sensor size used to reject out-of-range addresses.
        stats: running counters (a fresh dict on every access): ``packets``, ``bytes``, ``words``, ``events``,
            ``triggers``, codec-specific info counters, and ``errors``: {kind: count}.
    """

    encoding = ''
    counter_names: Tuple[str, ...] = ('packets', 'bytes', 'words', 'events', 'triggers')
    first_error = 5

    def __init__(self, width: int, height: int):
        try:
            ok = 0 < int(width) <= MAX_SENSOR_SIZE and 0 < int(height) <= MAX_SENSOR_SIZE
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f'{self.encoding} decoder: sensor size must be positive integers <= {MAX_SENSOR_SIZE}, '
                             f'got {width!r}x{height!r}')
        self.width = int(width)
        self.height = int(height)
        self._counters = np.zeros(len(self.counter_names), np.int64)
        self._delta = np.zeros(len(self.counter_names), np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget stream state and zero the counters."""
        self._counters[:] = 0

    @property
    def stats(self) -> Dict[str, Any]:
        c = self._counters
        out: Dict[str, Any] = {self.counter_names[i]: int(c[i]) for i in range(self.first_error)}
        out['errors'] = {self.counter_names[i]: int(c[i]) for i in range(self.first_error, len(c))}
        return out

    @property
    def num_errors(self) -> int:
        return int(self._counters[self.first_error:].sum())

    @abc.abstractmethod
    def decode(self, payload: Any, time_base: int = 0, is_bigendian: bool = False) -> DecodeResult:
        """Decode one payload (bytes-like); never raises on malformed data (errors are counted)."""


def _swap16(buf: np.ndarray) -> np.ndarray:
    n = len(buf) // 2
    out = np.empty(len(buf), np.uint8)
    out[:2 * n] = buf[:2 * n].view('>u2').astype('<u2').view(np.uint8)
    out[2 * n:] = buf[2 * n:]
    return out


class Evt3Decoder(Decoder):
    """Prophesee EVT 3.0 (docs/formats.md#evt3): numba state machine incl. vector words, wraps, triggers.

    Info counters: ``rollovers`` (24-bit time wraps followed), ``housekeeping_words`` (OTHERS / CONTINUED).
    Error kinds: odd_length, before_time_base (words skipped before the first TIME_HIGH..TIME_LOW pair),
    out_of_range, time_backwards, reserved_words (types 9, 11-13), em_events (X/vector words after EM_ADDR_Y),
    no_row_address (X/vector words before any ADDR_Y), time_high_noise (TIME_HIGH back by <= 10 units).
    """

    encoding = 'evt3'
    counter_names = _EVT3_COUNTERS
    first_error = _EVT3_FIRST_ERROR

    def reset(self) -> None:
        super().reset()
        self._state = np.zeros(11, np.int64)
        self._state[_E_W] = self.width
        self._state[_E_H] = self.height

    @property
    def valid(self) -> bool:
        """True once the decoder has seen its first TIME_HIGH ... TIME_LOW pair."""
        return bool(self._state[_E_PHASE] >= 2)

    @property
    def current_time_ns(self) -> int:
        """Decoded sensor time (ns) of the most recent time words."""
        return int((self._state[_E_THIGH] | self._state[_E_TLOW]) * 1000)

    def decode(self, payload: Any, time_base: int = 0, is_bigendian: bool = False) -> DecodeResult:
        buf = payload_bytes(payload)
        if is_bigendian:
            buf = _swap16(buf)
        nerr, xs, ys, ts, ps, trt, trid, trp = _evt3_kernel(buf, self._state, self._counters, self._delta)
        errors = _errors_of(_EVT3_COUNTERS, _EVT3_FIRST_ERROR, self._delta) if nerr else {}
        ev = EventArray._trusted(xs, ys, ts, ps)
        tr = TriggerArray._trusted(trt, trid, trp) if trt.shape[0] else _NO_TRIGGERS
        return DecodeResult(ev, tr, errors)


class LibcaerCmpDecoder(Decoder):
    """Compressed libcaer (docs/formats.md#libcaer_cmp): x is the sticky address, vectors run along y.

    Error kinds: odd_length, out_of_range, time_backwards, reserved_words, no_column_address (ADDR_Y / VECT_8 before
    any ADDR_X), no_vector_base (VECT_8 before any VECT_BASE_Y).
    """

    encoding = 'libcaer_cmp'
    counter_names = _LC_COUNTERS
    first_error = _LC_FIRST_ERROR

    def reset(self) -> None:
        super().reset()
        self._state = np.zeros(_LC_NSTATE, np.int64)
        self._state[5] = self.width
        self._state[6] = self.height

    def decode(self, payload: Any, time_base: int = 0, is_bigendian: bool = False) -> DecodeResult:
        buf = payload_bytes(payload)
        if is_bigendian:
            buf = _swap16(buf)
        nerr, xs, ys, ts, ps = _libcaer_cmp_kernel(buf, time_base_i64(time_base), self._state, self._counters,
                                                   self._delta)
        errors = _errors_of(_LC_COUNTERS, _LC_FIRST_ERROR, self._delta) if nerr else {}
        return DecodeResult(EventArray._trusted(xs, ys, ts, ps), TriggerArray.empty(), errors)


class _Records64Decoder(Decoder):
    """Shared parts of the stateless 8-byte record codecs (vectorised numpy)."""

    def reset(self) -> None:
        super().reset()
        self._last_t: Any = None

    def _records(self, payload: Any, bigendian: bool, dtype: Any) -> Tuple[np.ndarray, int]:
        buf = payload_bytes(payload)
        n = len(buf) // 8
        rec = buf[:8 * n].view(np.dtype(dtype).newbyteorder('>' if bigendian else '<'))
        return rec, len(buf)

    def _backwards(self, t: np.ndarray) -> int:
        n = int(np.count_nonzero(t[1:] < t[:-1])) if len(t) > 1 else 0
        if len(t) and self._last_t is not None and t[0] < self._last_t:
            n += 1
        if len(t):
            self._last_t = int(t[-1])
        return n

    def _clip(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, int]:
        ok = (x < self.width) & (y < self.height)
        bad = int(len(x) - np.count_nonzero(ok))
        return ok, bad

    def _finish(self, nbytes: int, nrec: int, errors: Dict[str, int], events: EventArray,
                triggers: TriggerArray) -> DecodeResult:
        c = self._counters
        c[0] += 1
        c[1] += nbytes
        c[2] += nrec
        c[3] += len(events)
        c[4] += len(triggers)
        idx = {n: i for i, n in enumerate(self.counter_names)}
        for k, v in errors.items():
            c[idx[k]] += v
        return DecodeResult(events, triggers, {k: int(v) for k, v in errors.items() if v})


class LibcaerDecoder(_Records64Decoder):
    """Uncompressed libcaer polarity events (docs/formats.md#libcaer) with the 31-bit microsecond rollover.

    Error kinds: truncated_records, invalid_events (valid mark 0), bad_timestamp (negative), out_of_range,
    time_backwards.
    """

    encoding = 'libcaer'
    counter_names = ('packets', 'bytes', 'words', 'events', 'triggers', 'truncated_records', 'invalid_events',
                     'bad_timestamp', 'out_of_range', 'time_backwards')

    def decode(self, payload: Any, time_base: int = 0, is_bigendian: bool = False) -> DecodeResult:
        rec, nbytes = self._records(payload, is_bigendian, [('data', 'u4'), ('ts', 'i4')])
        data = rec['data'].astype(np.uint32)
        stamp = rec['ts'].astype(np.int64)
        errors = {'truncated_records': int(nbytes % 8 != 0)}
        good = ((data & 1) == 1)
        errors['invalid_events'] = int(len(data) - np.count_nonzero(good))
        ts_ok = stamp >= 0
        errors['bad_timestamp'] = int(np.count_nonzero(good & ~ts_ok))
        good &= ts_ok
        if not good.all():
            data, stamp = data[good], stamp[good]
        wraps = np.zeros(len(stamp), np.int64)
        if len(stamp) > 1:
            np.cumsum(stamp[1:] < stamp[:-1], out=wraps[1:])
        t = time_base_i64(time_base) + (wraps << 31) * 1000 + stamp * 1000
        x = ((data >> 17) & 0x7FFF).astype(np.uint16)
        y = ((data >> 2) & 0x7FFF).astype(np.uint16)
        p = ((data >> 1) & 1).astype(np.uint8)
        ok, errors['out_of_range'] = self._clip(x, y)
        if errors['out_of_range']:
            x, y, t, p = x[ok], y[ok], t[ok], p[ok]
        errors['time_backwards'] = self._backwards(t)
        return self._finish(nbytes, len(rec), errors, EventArray(x, y, t, p), TriggerArray.empty())


class MonoDecoder(_Records64Decoder):
    """Deprecated ``mono`` (docs/formats.md#mono): t = time_base + dt. Errors: truncated_records, out_of_range,
    time_backwards."""

    encoding = 'mono'
    counter_names = ('packets', 'bytes', 'words', 'events', 'triggers', 'truncated_records', 'out_of_range',
                     'time_backwards')

    def decode(self, payload: Any, time_base: int = 0, is_bigendian: bool = False) -> DecodeResult:
        rec, nbytes = self._records(payload, is_bigendian, 'u8')
        rec = rec.astype(np.uint64)
        errors = {'truncated_records': int(nbytes % 8 != 0)}
        p = (rec >> np.uint64(63)).astype(np.uint8)
        y = ((rec >> np.uint64(48)) & np.uint64(0x7FFF)).astype(np.uint16)
        x = ((rec >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16)
        t = (rec & np.uint64(0xFFFFFFFF)).astype(np.int64) + time_base_i64(time_base)
        ok, errors['out_of_range'] = self._clip(x, y)
        if errors['out_of_range']:
            x, y, t, p = x[ok], y[ok], t[ok], p[ok]
        errors['time_backwards'] = self._backwards(t)
        return self._finish(nbytes, len(rec), errors, EventArray(x, y, t, p), TriggerArray.empty())


class TriggerDecoder(_Records64Decoder):
    """Deprecated ``trigger`` (docs/formats.md#trigger): edge bit 63, id bits 62..48 (as uint8), t = time_base + dt."""

    encoding = 'trigger'
    counter_names = ('packets', 'bytes', 'words', 'events', 'triggers', 'truncated_records', 'time_backwards')

    def decode(self, payload: Any, time_base: int = 0, is_bigendian: bool = False) -> DecodeResult:
        rec, nbytes = self._records(payload, is_bigendian, 'u8')
        rec = rec.astype(np.uint64)
        errors = {'truncated_records': int(nbytes % 8 != 0)}
        edge = (rec >> np.uint64(63)).astype(np.uint8)
        tid = ((rec >> np.uint64(48)) & np.uint64(0x7FFF)).astype(np.uint8)
        t = (rec & np.uint64(0xFFFFFFFF)).astype(np.int64) + time_base_i64(time_base)
        errors['time_backwards'] = self._backwards(t)
        return self._finish(nbytes, len(rec), errors, EventArray.empty(), TriggerArray(t, tid, edge))


_DECODERS: Dict[str, Type[Decoder]] = {
    'evt3': Evt3Decoder,
    'libcaer_cmp': LibcaerCmpDecoder,
    'libcaer': LibcaerDecoder,
    'mono': MonoDecoder,
    'trigger': TriggerDecoder,
}


def normalize_encoding(encoding: Any) -> str:
    """Lower-case, stripped encoding name (producers write lower case; be lenient about case/whitespace)."""
    if isinstance(encoding, bytes):
        encoding = encoding.decode('utf-8', 'replace')
    return str(encoding).strip().lower()


def make_decoder(encoding: str, width: int, height: int) -> Decoder:
    """A new stateful decoder for one stream.

    Raises:
        UnknownEncodingError: ``encoding`` is not one of ``evt3, libcaer_cmp, libcaer, mono, trigger``.
        ValueError: sensor size outside 1..``MAX_SENSOR_SIZE`` (65536) per side, or not an integer.
    """
    cls = _DECODERS.get(normalize_encoding(encoding))
    if cls is None:
        raise UnknownEncodingError(encoding)
    return cls(width, height)
