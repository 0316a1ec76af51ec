"""Property-based fuzzing: no decoder lets an exception escape on random bytes, and outputs stay well-formed."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events_testlib import packet
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
