"""EventStream (the node's ROS-free stream core): validation, stream identity with hysteresis, time jumps, windows.

Fed with the real evt3 recording (test/data) as duck-typed EventPacket messages, with garbage mixed in."""
import numpy as np
import pytest

from realm_testing.events import evt3_payloads, packet
from realm_ros.events.encoders import encode_mono
from realm_ros.events.packet import EventPacketDecoder
from realm_ros.pipeline.stream import BadPacket, EventStream, StreamSettings


def real_packets(shift_ns=0):
    return [packet(np.frombuffer(p, np.uint8), seq=seq, stamp_ns=stamp + shift_ns, frame_id='0293')
            for p, stamp, seq in evt3_payloads()]


def clean_total(msgs):
    dec = EventPacketDecoder()
    return sum(len(dec.decode_msg(m)) for m in msgs)


def push_all(stream, msgs):
    """Push every message; returns (events buffered, {kind: refused count})."""
    total, refused = 0, {}
    for m in msgs:
        try:
            total += stream.push(m)
        except BadPacket as exc:
            refused[exc.kind] = refused.get(exc.kind, 0) + 1
    return total, refused


def big_stream(**kw):
    return EventStream(StreamSettings(**kw), window_mode='count', window_count=30_000, capacity_events=4_000_000)


def test_clean_recording_gives_every_event_once_and_windows():
    msgs = real_packets()
    s = big_stream()
    total, refused = push_all(s, msgs)
    assert refused == {} and total == clean_total(real_packets()) > 300_000
    assert s.key == ('evt3', 640, 480) and s.frame_id == '0293' and s.generation == 0
    w = s.next_window()
    assert w is not None and len(w.events) == 30_000 and not w.empty
    d = s.diagnostics()
    assert d['packets'] == len(msgs) and d['events'] == total and d['bad_packets'] == 0
    assert (d['encoding'], d['width'], d['height']) == ('evt3', 640, 480)


def test_an_isolated_packet_of_another_encoding_is_a_bad_packet_not_a_stream_change():
    msgs = real_packets()
    x = np.arange(50) % 640
    payload, tb = encode_mono(x, x % 480, np.arange(50) * 1000, x % 2)
    odd = packet(np.frombuffer(payload, np.uint8), encoding='mono', time_base=tb,
                 stamp_ns=msgs[100].header.stamp.sec * 10**9 + msgs[100].header.stamp.nanosec)
    garbage = packet(np.random.default_rng(1).integers(0, 256, 999).astype(np.uint8), encoding='mono',
                     width=640, height=480, stamp_ns=odd.header.stamp.sec * 10**9)
    s = big_stream()
    total, refused = push_all(s, msgs[:100] + [odd] + msgs[100:200] + [garbage] + msgs[200:])
    assert refused == {'other_stream': 2}
    assert s.generation == 0 and s.key == ('evt3', 640, 480)
    assert total == clean_total(real_packets())           # not one event of the real stream lost
    d = s.diagnostics()
    assert d['bad_packets.other_stream'] == 2 and d['encoding_changes'] == 0 and d['stream_resets'] == 0


def test_twenty_percent_garbage_never_resets_the_stream():
    rng = np.random.default_rng(3)
    msgs = real_packets()
    mixed, n_garbage = [], 0
    for m in msgs:
        mixed.append(m)
        if rng.random() < 0.25:                                        # 20 % of all packets are garbage
            g = packet(rng.integers(0, 256, int(rng.integers(0, 6000))).astype(np.uint8), stamp_ns=0)
            g.header = m.header
            if rng.random() < 0.3:
                g.encoding = str(rng.choice(['mono', 'libcaer_cmp', 'evt9', 'trigger', 'EVT3']))
                if rng.random() < 0.3:
                    g.width, g.height = 320, 240
            mixed.append(g)
            n_garbage += 1
    assert 0.15 < n_garbage / len(mixed) < 0.25
    s = big_stream()
    total, refused = push_all(s, mixed)
    assert s.generation == 0 and s.key == ('evt3', 640, 480)
    assert s.diagnostics()['encoding_changes'] == 0 and s.diagnostics()['resolution_changes'] == 0
    assert total >= 0.8 * clean_total(real_packets())
    assert sum(refused.values()) >= 0.5 * n_garbage * 0.3                  # the odd kinds are refused by name
    assert set(refused) <= {'other_stream', 'unknown_encoding', 'implausible_times', 'decode_exception', 'rejected'}


def test_a_sustained_change_restarts_the_stream_and_replays_the_held_packets():
    msgs = real_packets()[:60]
    s = big_stream(change_window=10, change_fraction=0.8)
    push_all(s, msgs)
    t0 = msgs[-1].header.stamp.sec * 10**9 + msgs[-1].header.stamp.nanosec
    rng = np.random.default_rng(0)
    mono, expected = [], 0
    for i in range(20):
        n = 200
        payload, tb = encode_mono(rng.integers(0, 320, n), rng.integers(0, 240, n),
                                  np.sort(rng.integers(0, 4_000_000, n)), rng.integers(0, 2, n))
        mono.append(packet(np.frombuffer(payload, np.uint8), encoding='mono', width=320, height=240, seq=i,
                           time_base=tb + i * 4_000_000, stamp_ns=t0 + (i + 1) * 4_000_000))
        expected += n
    gen0 = s.generation
    total, refused = push_all(s, mono)
    assert refused == {'other_stream': 7}                   # held until 8 of the last 10 packets agree
    assert s.generation == gen0 + 1 and s.key == ('mono', 320, 240)
    assert total == expected                                # the 7 held packets were replayed: nothing lost
    d = s.diagnostics()
    assert d['encoding_changes'] == 1 and d['replayed_packets'] == 7 and 'encoding changed' in d['last_reset']
    assert s.scheduler.buffered_events == expected          # the old stream's events are gone


def test_time_jumps_need_confirmation():
    msgs = real_packets()
    s = big_stream(confirm_packets=3)
    push_all(s, msgs[:100])
    odd = real_packets(shift_ns=-10 * 10**9)[100]           # one packet 10 s in the past
    with pytest.raises(BadPacket) as err:
        s.push(odd)
    assert err.value.kind == 'implausible_stamp'
    total, refused = push_all(s, msgs[100:200])
    assert refused == {} and s.generation == 0 and s.diagnostics()['time_jumps'] == 0
    # a bag restart: every following packet is back in time -> reset after 3, the 2 held ones are replayed
    restart = real_packets(shift_ns=-60 * 10**9)[:50]
    total, refused = push_all(s, restart)
    assert refused == {'implausible_stamp': 2}
    assert s.generation == 1 and s.diagnostics()['time_jumps'] == 1
    assert total == clean_total(real_packets()[:50])
    assert s.diagnostics()['replayed_packets'] == 2


@pytest.mark.parametrize('change, kind', [
    (dict(encoding='evt9'), 'unknown_encoding'), (dict(encoding=''), 'unknown_encoding'),
    (dict(width=0), 'invalid_size'), (dict(width=1 << 20, height=1 << 20), 'too_large'),
    (dict(width=2**64 - 1), 'too_large')])
def test_refused_packets_name_their_problem_and_change_nothing(change, kind):
    msgs = real_packets()[:20]
    s = big_stream()
    push_all(s, msgs[:10])
    bad = real_packets()[10]
    for k, v in change.items():
        setattr(bad, k, v)
    with pytest.raises(BadPacket) as err:
        s.push(bad)
    assert err.value.kind == kind
    total, refused = push_all(s, msgs[10:])
    assert refused == {} and s.generation == 0
    assert s.diagnostics()[f'bad_packets.{kind}'] == 1


def test_malformed_message_objects_become_bad_packets():
    s = big_stream()
    broken = packet(np.zeros(8, np.uint8))
    broken.header = None                                        # no header at all
    with pytest.raises(BadPacket) as err:
        s.push(broken)
    assert err.value.kind == 'decode_exception' and 'AttributeError' in str(err.value)
    broken = packet(np.zeros(8, np.uint8), width='wide')       # not an integer
    with pytest.raises(BadPacket):
        s.push(broken)
    assert s.counters.get('bad_packets') == 2 and s.key is None


def test_packets_read_from_their_serialized_form_give_the_same_windows():
    """The node's intake reads packets from their serialized form (realm_ros.events.cdr): the stream buffers the
    same events into the same windows as from the recording's message objects; a packet nothing could read is
    counted as unreadable."""
    from realm_ros.events.bagio import EVENT_PACKET_TYPE, make_typestore
    from realm_ros.events.cdr import event_packet_from_cdr
    store = make_typestore()
    T = store.types
    views = []
    for m in real_packets():
        header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=m.header.stamp.sec,
                                                                                nanosec=m.header.stamp.nanosec),
                                          frame_id=m.header.frame_id)
        msg = T[EVENT_PACKET_TYPE](header=header, height=m.height, width=m.width, seq=m.seq, time_base=m.time_base,
                                   encoding=m.encoding, is_bigendian=m.is_bigendian, events=np.asarray(m.events))
        views.append(event_packet_from_cdr(bytes(store.serialize_cdr(msg, EVENT_PACKET_TYPE))))
    a, b = big_stream(), big_stream()
    assert push_all(a, real_packets()) == push_all(b, views)
    while (wa := a.next_window()) is not None:
        wb = b.next_window()
        assert wb is not None and wa.t_end_ns == wb.t_end_ns
        for name in 'xytp':
            assert np.array_equal(getattr(wa.events, name), getattr(wb.events, name))
    assert b.next_window() is None and b.frame_id == '0293'
    b.count_unreadable()
    d = b.diagnostics()
    assert d['bad_packets.unreadable'] == 1 and d['bad_packets'] == 1 and d['packets'] == len(views) + 1


def test_settings_are_validated_and_changeable():
    with pytest.raises(ValueError, match='change_fraction'):
        StreamSettings(change_fraction=0.3)
    s = big_stream()
    s.update_settings(change_window=4, change_fraction=0.5)
    assert s.settings.change_votes == 2
    s.configure(count=1000)
    assert s.scheduler.count == 1000 and s.scheduler.mode == 'count'


def _hostile_sequence():
    """The recording with everything a stream meets mixed in: garbage (20 %), an isolated packet of another
    encoding, one stamp 10 s in the past, payloads with times far from their stamp, a bag restart (time jump), and
    a sustained change of encoding and resolution."""
    rng = np.random.default_rng(7)
    msgs = real_packets()
    out = []
    for i, m in enumerate(msgs[:300]):
        out.append(m)
        if rng.random() < 0.25:
            g = packet(rng.integers(0, 256, int(rng.integers(0, 4000))).astype(np.uint8), stamp_ns=0)
            g.header = m.header
            if rng.random() < 0.3:
                g.encoding = str(rng.choice(['mono', 'evt9', 'EVT3']))
            out.append(g)
        if i == 120:
            out.append(real_packets(shift_ns=-10 * 10**9)[121])
    out += real_packets(shift_ns=-60 * 10**9)[:120]                        # a bag restart
    t0 = msgs[119].header.stamp.sec * 10**9 + msgs[119].header.stamp.nanosec - 60 * 10**9
    for i in range(20):                                                     # then another camera
        n = 300
        payload, tb = encode_mono(rng.integers(0, 320, n), rng.integers(0, 240, n),
                                  np.sort(rng.integers(0, 4_000_000, n)), rng.integers(0, 2, n))
        out.append(packet(np.frombuffer(payload, np.uint8), encoding='mono', width=320, height=240, seq=i,
                          time_base=tb + i * 4_000_000, stamp_ns=t0 + (i + 1) * 4_000_000))
    return out


@pytest.mark.parametrize('mode', ['count', 'time'])
def test_a_batch_push_leaves_the_stream_as_pushing_each_packet_does(mode):
    """``push_batch`` (the node's intake: the packets of one wake-up) against ``push`` packet by packet over the same
    hostile sequence, in batches of 1 to 25: the same events buffered, refusals, counters, stream state, buffer and
    windows (taken at the same points of the sequence)."""
    msgs = _hostile_sequence()
    window = dict(window_count=20_000) if mode == 'count' else dict(window_duration_ns=33_000_000)
    one = EventStream(StreamSettings(), window_mode=mode, capacity_events=300_000, **window)
    many = EventStream(StreamSettings(), window_mode=mode, capacity_events=300_000, **window)
    rng = np.random.default_rng(11)
    i, windows_one, windows_many = 0, [], []
    totals = [0, 0]
    refused_one, refused_many = [], []
    while i < len(msgs):
        batch = msgs[i:i + int(rng.integers(1, 26))]
        i += len(batch)
        for m in batch:
            try:
                totals[0] += one.push(m)
            except BadPacket as exc:
                refused_one.append((id(m), exc.kind))
        n, refused = many.push_batch(batch)
        totals[1] += n
        refused_many += [(id(m), exc.kind) for m, exc in refused]
        windows_one.append(one.next_window())
        windows_many.append(many.next_window())
    assert totals[0] == totals[1] > 0 and refused_one == refused_many
    assert {k for _, k in refused_one} >= {'other_stream', 'implausible_stamp', 'unknown_encoding'}
    assert many.generation == one.generation == 2 and many.key == one.key == ('mono', 320, 240)
    timing = ('packets_per_s', 'events_per_s')
    d_one, d_many = one.diagnostics(), many.diagnostics()
    assert {k: v for k, v in d_one.items() if k not in timing} == {k: v for k, v in d_many.items() if k not in timing}
    assert one.scheduler.latest_time_ns == many.scheduler.latest_time_ns
    assert one.scheduler.out_of_order_events == many.scheduler.out_of_order_events
    held_one, held_many = one.scheduler._buffer.all(), many.scheduler._buffer.all()
    for name in 'xytp':
        assert np.array_equal(getattr(held_one, name), getattr(held_many, name))
    assert sum(w is not None for w in windows_one) >= 5
    for a, b in zip(windows_one, windows_many):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a.t_end_ns, a.skipped, a.empty) == (b.t_end_ns, b.skipped, b.empty)
            assert all(np.array_equal(getattr(a.events, k), getattr(b.events, k)) for k in 'xytp')


def test_batch_push_after_a_reset_from_another_thread_drops_what_was_decoded_before_it():
    """A reset during a batch (the node's clock-jump callback runs on another thread) clears the events decoded
    before it, as it clears those a packet-by-packet push had already buffered; the packets after it are kept."""
    msgs = real_packets()[:40]

    def with_reset_after(stream, k):
        original = stream._decode_into_windows
        calls = []

        def decode_then_reset(decoder, msg, stamp, recv):
            n = original(decoder, msg, stamp, recv)
            calls.append(n)
            if len(calls) == k:
                stream.reset('ROS clock jumped')        # as from another thread, between two packets
            return n
        stream._decode_into_windows = decode_then_reset
        return calls
    one, many = big_stream(), big_stream()
    with_reset_after(one, 20)
    calls = with_reset_after(many, 20)
    push_all(one, msgs)
    total, refused = many.push_batch(msgs)
    assert refused == [] and total == sum(calls) > 0 and many.generation == one.generation == 1
    after = many.scheduler._buffer.all()
    assert 0 < len(after) == one.scheduler.buffered_events < total              # the first 20 packets' are gone
    assert np.array_equal(after.t, one.scheduler._buffer.all().t)
