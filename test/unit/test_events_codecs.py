"""Codec decoders: docs/formats.md#test-recordings on the real recordings, encoder round trips, and error handling."""
import array

import numpy as np
import pytest

from realm_testing.events import (EVT3_RAW, MONO_BAG, TE1, evt3_payloads, random_events, sort_key_evt3,
                            te1_decoded)
from realm_ros.events import (EventArray, UnknownEncodingError, encode_evt3, encode_libcaer, encode_libcaer_cmp,
                              encode_mono, encode_trigger, make_decoder)
from realm_ros.events.bagio import iter_bag_messages, read_raw_evt3


def words(*ws):
    return np.asarray(ws, '<u2').tobytes()


def TH(v):  # EVT_TIME_HIGH
    return 0x8000 | v


def TL(v):  # EVT_TIME_LOW
    return 0x6000 | v


def AY(y):  # EVT_ADDR_Y
    return y


def AX(x, p=1):  # EVT_ADDR_X
    return 0x2000 | (p << 11) | x


# ------------------------------------------------------------------------------------------------ real data
def test_test_events_1_matches_section6():
    ev, tr = te1_decoded()
    assert len(ev) == TE1['events']
    assert ev.num_on == TE1['on'] and ev.num_off == TE1['off']
    assert int(ev.x.sum(dtype=np.int64)) == TE1['sum_x']
    assert int(ev.y.sum(dtype=np.int64)) == TE1['sum_y']
    assert ev.t[0] == TE1['t_first_us'] * 1000 and ev.t[-1] == TE1['t_last_us'] * 1000
    assert int((ev.t // 1000).sum()) == TE1['sum_t_cd_us']
    assert len(tr) == TE1['triggers']
    assert np.bincount(tr.polarity).tolist() == [TE1['edge0'], TE1['edge1']]
    assert set(tr.id.tolist()) == {TE1['trigger_id']}
    assert tr.t[0] == TE1['first_trigger_us'] * 1000
    assert int((tr.t // 1000).sum()) == TE1['sum_t_trig_us']
    assert ev.is_time_sorted()
    assert ev.x.dtype == np.uint16 and ev.y.dtype == np.uint16 and ev.t.dtype == np.int64 and ev.p.dtype == np.uint8


def test_bag_messages_decode_like_the_continuous_stream():
    ev, tr = te1_decoded()
    dec = make_decoder('evt3', 640, 480)
    parts = [dec.decode(p) for p, _, _ in evt3_payloads()]
    got = EventArray.concat([r.events for r in parts])
    for a in ('x', 'y', 't', 'p'):
        np.testing.assert_array_equal(getattr(got, a), getattr(ev, a))
    assert sum(len(r.triggers) for r in parts) == len(tr)
    st = dec.stats
    assert st['packets'] == 517 and st['events'] == TE1['events'] and st['triggers'] == TE1['triggers']
    assert dec.num_errors == 0
    assert st['housekeeping_words'] > 0  # real Gen3 data contains OTHERS / CONTINUED words


def test_state_survives_arbitrary_word_cuts():
    ev, _ = te1_decoded()
    stream = read_raw_evt3(EVT3_RAW).payload
    rng = np.random.default_rng(3)
    cuts = np.sort(rng.choice(len(stream) // 2, 300, replace=False)) * 2
    dec = make_decoder('evt3', 640, 480)
    got = EventArray.concat([dec.decode(c).events for c in np.split(stream, cuts)])
    np.testing.assert_array_equal(got.t, ev.t)
    np.testing.assert_array_equal(got.x, ev.x)


def test_worked_example_first_words():
    payload = evt3_payloads()[0][0]
    w = np.frombuffer(payload, '<u2')[:6]
    assert w.tolist() == [0x86cf, 0x6200, 0xa601, 0x6205, 0x01b9, 0x21df]
    dec = make_decoder('evt3', 640, 480)
    r = dec.decode(payload[:4])  # TIME_HIGH + TIME_LOW: valid, nothing emitted
    assert dec.valid and len(r.events) == 0 and dec.current_time_ns == 7_139_840_000
    r = dec.decode(payload[4:12])
    assert (r.triggers.t[0], r.triggers.id[0], r.triggers.polarity[0]) == (7_139_840_000, 6, 1)
    assert (r.events.t[0], r.events.x[0], r.events.y[0], r.events.p[0]) == (7_139_845_000, 479, 441, 0)


def test_mono_cd_matches_section6():
    dec = None
    parts = []
    for _topic, msgtype, _t, msg in iter_bag_messages(MONO_BAG):
        assert msgtype == 'event_array_msgs/msg/EventArray'
        dec = dec or make_decoder(msg.encoding, msg.width, msg.height)
        parts.append(dec.decode(msg.events, msg.time_base).events)
    ev = EventArray.concat(parts)
    assert len(ev) == 100 and ev.num_on == 50
    assert int(ev.x.sum()) == 34_450 and int(ev.y.sum()) == 26_450
    assert int(ev.t.sum()) == 4_950_000 and ev.t[0] == 0 and ev.t[-1] == 99_000


# ------------------------------------------------------------------------------------------------ evt3 round trips
def _check_same(res_events, x, y, t_ns, p, order):
    np.testing.assert_array_equal(res_events.x, x[order])
    np.testing.assert_array_equal(res_events.y, y[order])
    np.testing.assert_array_equal(res_events.t, t_ns[order])
    np.testing.assert_array_equal(res_events.p, p[order])


@pytest.mark.parametrize('clustered', [False, True])
def test_evt3_round_trip_with_and_without_vectors(clustered):
    x, y, t, p = random_events(5000, 1280, 720, clustered=clustered, seed=1)
    order = sort_key_evt3(x, y, t, p)
    for vectorize in (True, False):
        payload = encode_evt3(x, y, t, p, vectorize=vectorize)
        types = np.bincount(np.frombuffer(payload, '<u2') >> 12, minlength=16)
        if vectorize and clustered:
            assert types[3] > 0 and types[4] > 0 and types[5] > 0
            assert len(payload) < 2 * len(x)  # vector words: fewer than one word per event
        if not vectorize:
            assert types[3] == types[4] == types[5] == 0
        dec = make_decoder('evt3', 1280, 720)
        res = dec.decode(payload)
        _check_same(res.events, x, y, t * 1000, p, order)
        assert dec.num_errors == 0


def test_evt3_vector_words_decode_by_hand():
    # VECT_BASE_X(100, ON) + VECT_12(bits 0, 11) + VECT_8(bit 7): x = 100, 111, 119
    payload = words(TH(1), TL(5), AY(7), 0x3000 | (1 << 11) | 100, 0x4000 | 0x801, 0x5000 | 0x80, AX(3, 0))
    res = make_decoder('evt3', 640, 480).decode(payload)
    assert res.events.x.tolist() == [100, 111, 119, 3]
    assert res.events.y.tolist() == [7] * 4 and res.events.p.tolist() == [1, 1, 1, 0]
    assert set(res.events.t.tolist()) == {(4096 + 5) * 1000}


def test_evt3_wraps_and_long_gaps():
    rng = np.random.default_rng(2)
    # times across four 2^24 us wraps, including one gap longer than a full wrap (keep-alives make it trackable)
    t = np.sort(np.concatenate([rng.integers(0, 2 ** 24, 500), rng.integers(2 ** 24 + 10, 2 ** 24 + 9000, 500),
                                rng.integers(3 * 2 ** 24 + 5, 4 * 2 ** 24 + 77, 500)]))
    x, y, p = rng.integers(0, 640, len(t)), rng.integers(0, 480, len(t)), rng.integers(0, 2, len(t))
    trig = (np.sort(rng.integers(0, 4 * 2 ** 24, 30)), rng.integers(0, 16, 30), rng.integers(0, 2, 30))
    payload = encode_evt3(x, y, t, p, triggers=trig)
    dec = make_decoder('evt3', 640, 480)
    # deliver as ~100 packets cut at word boundaries: the wrap tracking persists
    w = np.frombuffer(payload, np.uint8)
    cuts = np.sort(rng.choice(len(w) // 2, 100, replace=False)) * 2
    parts = [dec.decode(c) for c in np.split(w, cuts)]
    ev = EventArray.concat([r.events for r in parts])
    _check_same(ev, x, y, t * 1000, p, sort_key_evt3(x, y, t, p))
    tt = np.concatenate([r.triggers.t for r in parts])
    order = np.argsort(trig[0], kind='stable')
    np.testing.assert_array_equal(tt, trig[0][order] * 1000)
    np.testing.assert_array_equal(np.concatenate([r.triggers.id for r in parts]), trig[1][order])
    np.testing.assert_array_equal(np.concatenate([r.triggers.polarity for r in parts]), trig[2][order])
    assert dec.stats['rollovers'] == max(t.max(), trig[0].max()) >> 24 >= 3 and dec.num_errors == 0


def test_evt3_time_high_noise_is_not_a_rollover():
    dec = make_decoder('evt3', 640, 480)
    r = dec.decode(words(TH(100), TL(0), AY(1), AX(1), TH(95), TL(1), AX(2), TH(50), TL(2), AX(3)))
    assert r.events.t.tolist() == [100 * 4096 * 1000, (95 * 4096 + 1) * 1000, (2 ** 24 + 50 * 4096 + 2) * 1000]
    assert dec.stats['rollovers'] == 1
    assert r.errors['time_high_noise'] == 1 and r.errors['time_backwards'] == 1


def test_evt3_start_up_skips_until_time_high_then_time_low():
    dec = make_decoder('evt3', 640, 480)
    # TIME_LOW before the first TIME_HIGH does not count; X/Y/trigger before validity are skipped
    r = dec.decode(words(TL(9), AY(5), AX(5), 0xA001, TH(2), AY(6), AX(6), TL(3), AX(7), AY(8), AX(8)))
    assert r.errors['before_time_base'] == 6
    # the X right after validity has no row address from the valid period: counted, not guessed
    assert r.errors['no_row_address'] == 1
    assert r.events.x.tolist() == [8] and r.events.t.tolist() == [(2 * 4096 + 3) * 1000]
    assert len(r.triggers) == 0


def test_evt3_housekeeping_padding_and_reserved_words_are_ignored():
    x, y, t, p = random_events(300, seed=4)
    w = np.frombuffer(encode_evt3(x, y, t, p), '<u2')
    junk = np.array([0xE01A, 0xF123, 0x7005, 0x9999, 0xB000, 0xC000, 0xD000], np.uint16)
    mixed = np.insert(w, np.arange(10, len(w), 25), np.resize(junk, len(range(10, len(w), 25))))
    dec = make_decoder('evt3', 640, 480)
    r = dec.decode(mixed.astype('<u2').tobytes())
    _check_same(r.events, x, y, t * 1000, p, sort_key_evt3(x, y, t, p))
    n_junk = len(range(10, len(w), 25))
    kinds = np.resize(junk, n_junk)
    assert dec.stats['errors']['reserved_words'] == int(np.isin(kinds, [0xB000, 0xC000, 0xD000]).sum())
    assert dec.stats['housekeeping_words'] == int(np.isin(kinds, [0xE01A, 0xF123, 0x7005]).sum())
    # 0x9999 is the padding word some cameras emit: counted as padding, not as an error
    assert dec.stats['padding_words'] == int((kinds == 0x9999).sum()) > 0


def test_evt3_out_of_range_addresses_are_dropped_and_counted():
    payload = words(TH(0), TL(1), AY(10), AX(639), AX(640), AX(2000), AY(480), AX(5),
                    AY(11), 0x3000 | 630, 0x4000 | 0xFFF)  # vector covers 630..641: 2 outside
    dec = make_decoder('evt3', 640, 480)
    r = dec.decode(payload)
    assert r.events.x.tolist() == [639] + list(range(630, 640))
    assert r.errors['out_of_range'] == 2 + 1 + 2
    assert dec.stats['errors']['out_of_range'] == 5


def test_evt3_em_words_are_not_cd_events():
    payload = words(TH(0), TL(1), 0x1000 | 20, AX(1), 0x3000 | 4, 0x5000 | 0x3, AY(21), AX(2))
    r = make_decoder('evt3', 640, 480).decode(payload)
    assert r.events.x.tolist() == [2] and r.events.y.tolist() == [21]
    assert r.errors['em_events'] == 3


def test_evt3_odd_length_is_counted_and_state_kept():
    dec = make_decoder('evt3', 640, 480)
    r1 = dec.decode(words(TH(0), TL(1), AY(3)) + b'\x07')
    assert r1.errors == {'odd_length': 1}
    r2 = dec.decode(words(AX(9)))
    assert r2.events.y.tolist() == [3] and r2.events.t.tolist() == [1000]


# ------------------------------------------------------------------------------------------------ other codecs
def test_libcaer_cmp_round_trip_and_vectors():
    rng = np.random.default_rng(5)
    n = 3000
    x = rng.integers(0, 346, n)
    y = rng.integers(0, 260, n)
    t = 1_700_000_000_000_000_000 + np.sort(rng.integers(0, 9_000_000, n)) * 1000
    x[:600] = 17  # many events in one column and time -> VECT_BASE_Y + VECT_8 groups
    t[:600] = t[0]
    p = rng.integers(0, 2, n)
    payload, tb = encode_libcaer_cmp(x, y, t, p)
    types = np.bincount(np.frombuffer(payload, '<u2') >> 12, minlength=16)
    assert types[4] > 0 and types[5] > 0 and types[3] > 0
    dec = make_decoder('libcaer_cmp', 346, 260)
    ev = dec.decode(payload, tb).events
    order = np.lexsort((y, p, x, t))
    for got, want in ((ev.x, x), (ev.y, y), (ev.t, t), (ev.p, p)):
        np.testing.assert_array_equal(got, want[order])
    assert dec.num_errors == 0 and ev.t[0] == tb


def test_libcaer_cmp_time_resets_per_message_and_x_carries_over():
    dec = make_decoder('libcaer_cmp', 346, 260)
    r1 = dec.decode(words(0x2000 | 5, 0x0001, 0x1002, 0x3000 | (1 << 11) | 7), time_base=1_000_000)
    assert r1.events.t.tolist() == [1_000_000 + (4096 + 2) * 1000] and r1.events.x.tolist() == [5]
    r2 = dec.decode(words(0x3000 | 8), time_base=9_000_000)  # no ADDR_X, no time words
    assert r2.events.x.tolist() == [5] and r2.events.t.tolist() == [9_000_000] and r2.events.p.tolist() == [0]
    r3 = make_decoder('libcaer_cmp', 346, 260).decode(words(0x3000 | 8, 0x2000 | 400, 0x3000 | 8, 0x5000 | 1))
    assert len(r3.events) == 0
    assert r3.errors == {'no_column_address': 1, 'out_of_range': 1, 'no_vector_base': 1}


def test_libcaer_spec_example_and_rollover():
    rec = np.array([(0x01d20577, 2146490012)], dtype=[('d', '<u4'), ('t', '<i4')]).tobytes()
    ev = make_decoder('libcaer', 346, 480).decode(rec, 1702306974272224018).events
    assert (ev.x[0], ev.y[0], ev.p[0], ev.t[0]) == (233, 349, 1, 1702309120762236018)
    rng = np.random.default_rng(6)
    n = 500
    base = 1_700_000_000_000_000_000
    t = base + np.sort(rng.integers(0, 4_000_000, n)) * 1000
    x, y, p = rng.integers(0, 346, n), rng.integers(0, 260, n), rng.integers(0, 2, n)
    tb = base - (2 ** 31 - 2_000_000) * 1000  # first stamp 2 s before the 31-bit rollover
    payload, tb2 = encode_libcaer(x, y, t, p, time_base=tb)
    assert tb2 == tb
    stamps = np.frombuffer(payload, dtype=[('d', '<u4'), ('t', '<i4')])['t']
    assert np.any(np.diff(stamps.astype(np.int64)) < 0)  # the stream really wraps
    ev = make_decoder('libcaer', 346, 260).decode(payload, tb).events
    np.testing.assert_array_equal(ev.t, t)
    np.testing.assert_array_equal(ev.x, x)
    np.testing.assert_array_equal(ev.y, y)
    np.testing.assert_array_equal(ev.p, p)


def test_libcaer_invalid_and_out_of_range_records():
    rec = np.zeros(3, dtype=[('d', '<u4'), ('t', '<i4')])
    rec['d'] = [1 | (5 << 2) | (6 << 17), 0 | (5 << 2), 1 | (300 << 2) | (6 << 17)]
    rec['t'] = [10, 11, 12]
    r = make_decoder('libcaer', 346, 260).decode(rec.tobytes() + b'\x01\x02\x03')
    assert r.events.x.tolist() == [6]
    assert r.errors == {'invalid_events': 1, 'out_of_range': 1, 'truncated_records': 1}


def test_mono_and_trigger_round_trip():
    rng = np.random.default_rng(7)
    n = 400
    t = 5_000_000_000 + np.sort(rng.integers(0, 3_000_000_000, n))
    x, y, p = rng.integers(0, 640, n), rng.integers(0, 480, n), rng.integers(0, 2, n)
    payload, tb = encode_mono(x, y, t, p)
    ev = make_decoder('mono', 640, 480).decode(payload, tb).events
    for got, want in ((ev.x, x), (ev.y, y), (ev.t, t), (ev.p, p)):
        np.testing.assert_array_equal(got, want)
    tid = rng.integers(0, 256, 50)
    tt = 7_000 + np.sort(rng.integers(0, 10 ** 9, 50))
    edge = rng.integers(0, 2, 50)
    payload, tb = encode_trigger(tt, tid, edge)
    r = make_decoder('trigger', 640, 480).decode(payload, tb)
    assert len(r.events) == 0
    np.testing.assert_array_equal(r.triggers.t, tt)
    np.testing.assert_array_equal(r.triggers.id, tid)
    np.testing.assert_array_equal(r.triggers.polarity, edge)


def test_mono_out_of_range_and_time_backwards_counted():
    payload, tb = encode_mono([1, 700, 2, 3], [1, 1, 500, 2], [10, 20, 30, 5], [1, 0, 1, 1], time_base=0)
    dec = make_decoder('mono', 640, 480)
    r = dec.decode(payload, tb)
    assert r.events.x.tolist() == [1, 3]
    assert r.errors == {'out_of_range': 2, 'time_backwards': 1}
    assert dec.stats['errors']['out_of_range'] == 2


# ------------------------------------------------------------------------------------------------ API behaviour
def test_unknown_encoding_names_the_encoding():
    with pytest.raises(UnknownEncodingError, match="'evt2'") as info:
        make_decoder('evt2', 640, 480)
    assert isinstance(info.value, ValueError) and info.value.encoding == 'evt2'
    assert isinstance(make_decoder(' EVT3 ', 640, 480), type(make_decoder('evt3', 1, 1)))
    with pytest.raises(ValueError, match='positive'):
        make_decoder('evt3', 0, 480)


@pytest.mark.parametrize('encoding', ['evt3', 'libcaer_cmp', 'mono', 'libcaer'])
def test_big_endian_payloads(encoding):
    x, y, t_us, p = random_events(200, 346, 260, seed=8)
    if encoding == 'evt3':
        payload, tb, wb = encode_evt3(x, y, t_us, p), 0, '<u2'
    elif encoding == 'libcaer_cmp':
        (payload, tb), wb = encode_libcaer_cmp(x, y, t_us * 1000, p), '<u2'
    elif encoding == 'mono':
        (payload, tb), wb = encode_mono(x, y, t_us * 1000, p), '<u8'
    else:
        (payload, tb), wb = encode_libcaer(x, y, t_us * 1000, p), None
    little = make_decoder(encoding, 346, 260).decode(payload, tb).events
    if wb is None:
        rec = np.frombuffer(payload, dtype=[('d', '<u4'), ('t', '<i4')])
        big = rec.astype([('d', '>u4'), ('t', '>i4')]).tobytes()
    else:
        big = np.frombuffer(payload, wb).astype(wb.replace('<', '>')).tobytes()
    got = make_decoder(encoding, 346, 260).decode(big, tb, is_bigendian=True).events
    np.testing.assert_array_equal(got.t, little.t)
    np.testing.assert_array_equal(got.x, little.x)
    assert len(got) == 200


def test_payload_container_types_decode_identically():
    payload = evt3_payloads()[5][0]
    want = None
    variants = [payload, bytearray(payload), memoryview(payload), array.array('B', payload),
                np.frombuffer(payload, np.uint8), np.frombuffer(payload, np.uint8)[1:][:-1].copy()]
    for i, v in enumerate(variants[:-1]):
        dec = make_decoder('evt3', 640, 480)
        dec.decode(evt3_payloads()[4][0])
        ev = dec.decode(v).events
        if want is None:
            want = ev
        np.testing.assert_array_equal(ev.t, want.t, err_msg=f'variant {i}')
    assert len(want) > 0


def test_encoders_reject_bad_input():
    with pytest.raises(ValueError, match='x out of'):
        encode_evt3([2048], [0], [0], [1])
    with pytest.raises(ValueError, match='differ in length'):
        encode_evt3([1, 2], [0], [0], [1])
    with pytest.raises(ValueError, match='2\\^24'):
        encode_libcaer_cmp([1, 2], [0, 0], [0, 2 ** 24 * 1000], [1, 1])
    with pytest.raises(ValueError, match='2\\^32'):
        encode_mono([1, 2], [0, 0], [0, 2 ** 33], [1, 1])


def test_warmup_runs_every_kernel():
    from realm_ros.events import warmup

    assert warmup(voxel=True) > 0
