"""Property-based fuzzing: no decoder lets an exception escape on random bytes, and outputs stay well-formed."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realm_testing.events import packet
from realm_ros.events import EventPacketDecoder, make_decoder
from realm_ros.events.legacy import LegacyParseError, parse_legacy_event_array_cdr, parse_legacy_event_array_ros1

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = ['evt3', 'libcaer_cmp', 'libcaer', 'mono', 'trigger']


def _check_well_formed(res, width, height):
    ev = res.events
    assert len(ev.x) == len(ev.y) == len(ev.t) == len(ev.p)
    if len(ev):
        assert int(ev.x.max()) < width and int(ev.y.max()) < height
        assert set(np.unique(ev.p).tolist()) <= {0, 1}
    assert len(res.triggers.t) == len(res.triggers.id) == len(res.triggers.polarity)
    assert all(v > 0 for v in res.errors.values())


@FUZZ
@given(encoding=st.sampled_from(ENCODINGS), chunks=st.lists(st.binary(max_size=600), min_size=1, max_size=4),
       width=st.integers(1, 2048), height=st.integers(1, 2048), time_base=st.integers(0, 2 ** 62),
       bigendian=st.booleans())
def test_decoders_survive_random_bytes(encoding, chunks, width, height, time_base, bigendian):
    dec = make_decoder(encoding, width, height)
    total_events = 0
    for chunk in chunks:
        res = dec.decode(chunk, time_base, is_bigendian=bigendian)
        _check_well_formed(res, width, height)
        total_events += len(res.events)
    stats = dec.stats
    assert stats['packets'] == len(chunks)
    assert stats['events'] == total_events
    assert stats['bytes'] == sum(len(c) for c in chunks)


@FUZZ
@given(words=st.lists(st.integers(0, 0xFFFF), max_size=400))
def test_evt3_random_word_streams_split_anywhere_decode_identically(words):
    """The evt3 state machine gives the same output whether a stream arrives whole or word by word in pieces."""
    payload = np.asarray(words, '<u2').tobytes()
    whole = make_decoder('evt3', 1024, 1024).decode(payload)
    dec = make_decoder('evt3', 1024, 1024)
    parts = [dec.decode(payload[i:i + 14]) for i in range(0, len(payload), 14)]
    for field in ('x', 'y', 't', 'p'):
        got = np.concatenate([getattr(p.events, field) for p in parts]) if parts else getattr(whole.events, field)
        np.testing.assert_array_equal(got, getattr(whole.events, field))
    assert sum(len(p.triggers) for p in parts) == len(whole.triggers)


@FUZZ
@given(fields=st.fixed_dictionaries({
    'encoding': st.sampled_from(ENCODINGS + ['evt2', '', 'EVT3', 'bogus\x00']),
    'width': st.integers(-5, 3000), 'height': st.integers(-5, 3000), 'seq': st.integers(0, 2 ** 64 - 1),
    'time_base': st.integers(0, 2 ** 64 - 1), 'stamp_ns': st.integers(0, 2 ** 62),
    'payload': st.binary(max_size=300), 'is_bigendian': st.booleans()}), n=st.integers(1, 3))
def test_packet_decoder_never_raises(fields, n):
    dec = EventPacketDecoder()
    for i in range(n):
        f = dict(fields)
        f['seq'] = (f['seq'] + i * 7) % 2 ** 64
        ev = dec.decode_msg(packet(**f))
        assert len(ev.x) == len(ev.t)
        if len(ev) > 1:
            assert np.all(np.diff(ev.t) >= 0)
    assert dec.stats['packets'] == n


@FUZZ
@given(raw=st.binary(max_size=200))
def test_legacy_parsers_raise_only_parse_errors(raw):
    for parse in (parse_legacy_event_array_cdr, parse_legacy_event_array_ros1):
        try:
            msg = parse(raw)
        except LegacyParseError:
            continue
        assert len(msg.events.x) == len(msg.events.t)


def reference_evt3(words, width, height):
    """Literal per-word EVT3 state machine from docs/formats.md#evt3, for checking the fast kernel."""
    out, trig = [], []
    phase, th, tl, y, have_y, em, bx, vp = 0, 0, 0, 0, False, False, 0, 0
    for w in words:
        ty, v = w >> 12, w & 0xFFF
        if ty == 8:
            last = (th >> 12) & 0xFFF
            if v < last and last - v > 10:
                th += 1 << 24
            th = (th & ~0xFFF000) | (v << 12)
            phase = max(phase, 1)
            continue
        if ty == 6:
            tl = v
            if phase == 1:
                phase = 2
            continue
        if phase < 2:
            continue
        t = (th | tl) * 1000
        if ty == 0:
            y, have_y, em = v & 0x7FF, True, False
        elif ty == 1:
            y, have_y, em = v & 0x7FF, True, True
        elif ty == 2:
            x = v & 0x7FF
            if have_y and not em and x < width and y < height:
                out.append((x, y, t, v >> 11))
        elif ty == 3:
            bx, vp = v & 0x7FF, v >> 11
        elif ty in (4, 5):
            span = 12 if ty == 4 else 8
            for i in range(span):
                if v >> i & 1 and have_y and not em and bx + i < width and y < height:
                    out.append((bx + i, y, t, vp))
            bx += span
        elif ty == 10:
            trig.append((t, (v >> 8) & 0xF, v & 1))
    return out, trig


_Y = st.integers(0, 210)  # a few rows out of range (height 200)
_X = st.integers(0, 270)  # a few columns out of range (width 256)
_P = st.integers(0, 1)
_TL = st.builds(lambda v: [0x6000 | v], st.integers(0, 0xFFF))
_TH = st.builds(lambda v: [0x8000 | v], st.sampled_from([0, 1, 5, 9, 2000, 4090, 4095]))
_AY = st.builds(lambda y: [y], _Y)
_AX = st.builds(lambda x, p: [0x2000 | p << 11 | x], _X, _P)
# word groups as sensors emit them, plus arbitrary words
_EVT3_GROUP = st.one_of(
    st.builds(lambda a, b, c: a + b + c, _TL, _AY, _AX), st.builds(lambda a, b: a + b, _AY, _AX), _AX, _TL, _TH,
    _AY, st.builds(lambda bx, p, m12, m8: [0x3000 | p << 11 | bx, 0x4000 | m12, 0x5000 | m8], _X, _P,
                   st.integers(0, 0xFFF), st.integers(0, 0xFF)),
    st.builds(lambda w: [w], st.integers(0, 0xFFFF)), st.builds(lambda v: [0x1000 | v], _Y),
    st.builds(lambda i, e: [0xA000 | i << 8 | e], st.integers(0, 15), _P))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.lists(_EVT3_GROUP, max_size=120), start=st.booleans(), cut=st.integers(0, 300))
def test_evt3_kernel_matches_the_literal_state_machine(groups, start, cut):
    words = ([0x8000 | 7, 0x6000 | 3] if start else []) + [w for g in groups for w in g]
    ref_ev, ref_tr = reference_evt3(words, 256, 200)
    payload = np.asarray(words, '<u2').tobytes()
    dec = make_decoder('evt3', 256, 200)
    parts = [dec.decode(payload[:2 * cut]), dec.decode(payload[2 * cut:])]
    got = [(int(x), int(y), int(t), int(p)) for r in parts
           for x, y, t, p in zip(r.events.x, r.events.y, r.events.t, r.events.p)]
    assert got == ref_ev
    got_tr = [(int(t), int(i), int(e)) for r in parts
              for t, i, e in zip(r.triggers.t, r.triggers.id, r.triggers.polarity)]
    assert got_tr == ref_tr


def reference_libcaer_cmp(messages, width, height):
    """Literal libcaer_cmp decoder (docs/formats.md#libcaer_cmp) over (words, time_base) messages."""
    out = []
    x, have_x, by, vp, have_vb = 0, False, 0, 0, False
    for words, tb in messages:
        th = tl = 0
        for w in words:
            ty, v = w >> 12, w & 0xFFF
            t = tb + ((th | tl) * 1000)
            if ty == 0:
                th = v << 12
            elif ty == 1:
                tl = v
            elif ty == 2:
                x, have_x = v & 0x7FF, True
            elif ty == 3:
                if have_x and x < width and (v & 0x7FF) < height:
                    out.append((x, v & 0x7FF, t, v >> 11))
            elif ty == 4:
                by, vp, have_vb = v & 0x7FF, v >> 11, True
            elif ty == 5:
                for i in range(8):
                    if v >> i & 1 and have_vb and have_x and x < width and by + i < height:
                        out.append((x, by + i, t, vp))
                by += 8
    return out


_LC_WORD = st.one_of(st.integers(0, 0xFFFF), st.builds(lambda v: v, st.integers(0, 0xFFF)),
                     st.builds(lambda v: 0x1000 | v, st.integers(0, 0xFFF)),
                     st.builds(lambda x: 0x2000 | x, st.integers(0, 140)),
                     st.builds(lambda y, p: 0x3000 | p << 11 | y, st.integers(0, 110), st.integers(0, 1)),
                     st.builds(lambda y, p: 0x4000 | p << 11 | y, st.integers(0, 110), st.integers(0, 1)),
                     st.builds(lambda m: 0x5000 | m, st.integers(0, 0xFF)))


@FUZZ
@given(messages=st.lists(st.tuples(st.lists(_LC_WORD, max_size=80), st.integers(0, 2 ** 60)), min_size=1,
                         max_size=4))
def test_libcaer_cmp_kernel_matches_the_literal_decoder(messages):
    dec = make_decoder('libcaer_cmp', 128, 100)
    got = []
    for words, tb in messages:
        r = dec.decode(np.asarray(words, '<u2').tobytes(), tb)
        got += [(int(x), int(y), int(t), int(p)) for x, y, t, p in zip(r.events.x, r.events.y, r.events.t, r.events.p)]
    assert got == reference_libcaer_cmp(messages, 128, 100)
