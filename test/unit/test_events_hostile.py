"""Hostile input for the codecs (issue 14 item 5): uint64 time bases, absurd sensor sizes, EVT3 padding words."""
import numpy as np
import pytest

from realm_testing.events import random_events, sort_key_evt3
from realm_ros.events import (encode_evt3, encode_libcaer, encode_libcaer_cmp, encode_mono, encode_trigger,
                              make_decoder)
from realm_ros.events.codecs import MAX_SENSOR_SIZE, SUPPORTED_ENCODINGS, time_base_i64

U64 = 2 ** 64


def _payloads(x, y, t_ns, p):
    """(encoding, payload, offsets of the decoded times relative to time_base) for every time_base codec."""
    out = []
    payload, tb = encode_libcaer_cmp(x, y, t_ns, p)
    out.append(('libcaer_cmp', payload, tb))
    payload, tb = encode_libcaer(x, y, t_ns, p)
    out.append(('libcaer', payload, tb))
    payload, tb = encode_mono(x, y, t_ns, p)
    out.append(('mono', payload, tb))
    return out


@pytest.mark.parametrize('big', [2 ** 63, 2 ** 63 + 12_345, U64 - 10 ** 9])
def test_time_base_at_or_above_2_63_decodes_modulo_2_64(big):
    x, y, t_us, p = random_events(200, seed=3, span_us=50_000)
    t_ns = np.sort(t_us) * 1000
    for encoding, payload, tb in _payloads(x, y, t_ns, p):
        dec = make_decoder(encoding, 640, 480)
        ref = dec.decode(payload, tb).events
        dec2 = make_decoder(encoding, 640, 480)
        got = dec2.decode(payload, big).events  # raised OverflowError before
        assert len(got) == len(ref) == 200, encoding
        np.testing.assert_array_equal(got.x, ref.x)
        np.testing.assert_array_equal(got.p, ref.p)
        # same bits as the uint64 sum the C++ codecs compute
        expect = [(big + int(v) - tb) % U64 for v in ref.t]
        assert got.t.view(np.uint64).tolist() == expect, encoding
    tp, tb = encode_trigger([5, 9], [1, 1], [0, 1])
    tr = make_decoder('trigger', 640, 480).decode(tp, big).triggers
    assert tr.t.view(np.uint64).tolist() == [(big + 5 - tb) % U64, (big + 9 - tb) % U64]


def test_time_base_i64_keeps_the_bits():
    for v in (0, 1, 2 ** 63 - 1, 2 ** 63, U64 - 1):
        assert int(np.array([time_base_i64(v)]).view(np.uint64)[0]) == v
    assert time_base_i64(2 ** 62) == 2 ** 62


@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
@pytest.mark.parametrize('size', [(2 ** 63, 480), (640, 2 ** 63), (2 ** 64 + 5, 2 ** 70), (MAX_SENSOR_SIZE + 1, 10),
                                  (2 ** 32 - 1, 2 ** 32 - 1), (0, 480), (640, -1), ('xyz', 480), (None, 480)])
def test_absurd_sensor_sizes_raise_the_documented_value_error(encoding, size):
    with pytest.raises(ValueError, match='sensor size') as info:
        make_decoder(encoding, *size)
    assert not isinstance(info.value, OverflowError)
    assert encoding in str(info.value)


@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
def test_largest_sensor_size_is_accepted(encoding):
    dec = make_decoder(encoding, MAX_SENSOR_SIZE, MAX_SENSOR_SIZE)
    assert (dec.width, dec.height) == (MAX_SENSOR_SIZE, MAX_SENSOR_SIZE)


def test_evt3_padding_words_are_padding_not_errors():
    x, y, t, p = random_events(500, seed=11)
    w = np.frombuffer(encode_evt3(x, y, t, p), '<u2')
    at = np.arange(0, len(w), 17)
    padded = np.insert(w, at, 0x9999)
    padded = np.concatenate([[0x9999, 0x9999], padded, [0x9999] * 3]).astype('<u2')  # also before the time base
    dec = make_decoder('evt3', 640, 480)
    r = dec.decode(padded.tobytes())
    order = sort_key_evt3(x, y, t, p)
    np.testing.assert_array_equal(r.events.x, x[order])
    np.testing.assert_array_equal(r.events.t, t[order] * 1000)
    assert r.errors == {}
    assert dec.num_errors == 0
    assert dec.stats['padding_words'] == len(at) + 5
    assert dec.stats['errors']['reserved_words'] == 0
    assert 'padding_words' not in dec.stats['errors']
    # another type-9 word is still a reserved word
    r2 = dec.decode(np.array([0x9123], '<u2').tobytes())
    assert r2.errors == {'reserved_words': 1}


@pytest.mark.parametrize('mode', ['smoothed', 'header'])
def test_packet_decoder_maps_a_huge_time_base_back_to_ros_time(mode):
    from realm_testing.events import packet
    from realm_ros.events.packet import EventPacketDecoder
    payload, _ = encode_mono([1, 2], [1, 1], [0, 4], [1, 0])
    dec = EventPacketDecoder(time_mode=mode)
    stamp = 1_700_000_000_000_000_000
    ev = dec.decode_msg(packet(payload, encoding='mono', time_base=2 ** 63 + 5, stamp_ns=stamp))
    assert dec.stats['decode_exceptions'] == 0, dec.last_error
    assert ev.t.tolist() == [stamp, stamp + 4]       # offset taken modulo 2^64 like the decoded times


def test_packet_decoder_reports_padding_apart_from_errors():
    from realm_testing.events import packet
    from realm_ros.events.packet import EventPacketDecoder
    x, y, t, p = random_events(50, seed=5)
    w = np.frombuffer(encode_evt3(x, y, t, p), '<u2')
    padded = np.concatenate([w, [0x9999] * 4]).astype('<u2').tobytes()
    dec = EventPacketDecoder(time_mode='sensor')
    assert len(dec.decode_msg(packet(padded, seq=0))) == 50
    assert dec.stats['padding_words'] == 4 and dec.num_errors == 0
    assert 'padding_words' not in dec.stats['decoder_errors']
    dec.decode_msg(packet(padded, width=320, height=240, seq=1))    # new decoder: the count carries over
    assert dec.stats['padding_words'] == 8
