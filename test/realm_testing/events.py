"""Shared helpers for the events tests: expected values of the recordings, decoded payloads, synthetic packets."""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from .paths import EVT3_BAG, EVT3_RAW, MONO_BAG, TEST_DATA  # noqa: F401 - re-exported for the tests

DATA = TEST_DATA

# docs/formats.md#test-recordings (test_events_1, evt3 640x480)
TE1 = dict(events=343_474, on=125_183, off=218_291, sum_x=116_731_888, sum_y=80_879_209,
           t_first_us=7_139_845, t_last_us=9_218_023, triggers=4_157, edge0=2_078, edge1=2_079, trigger_id=6,
           first_trigger_us=7_139_840, sum_t_cd_us=2_851_601_611_994, sum_t_trig_us=33_999_437_880)


@lru_cache(maxsize=1)
def evt3_payloads() -> tuple:
    """(payload bytes, header stamp ns, seq) of every message in test_events_1."""
    from realm_ros.events.bagio import iter_bag_messages

    out = []
    for _topic, _type, _t, msg in iter_bag_messages(EVT3_BAG):
        out.append((msg.events.tobytes(), msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, int(msg.seq)))
    return tuple(out)


@lru_cache(maxsize=1)
def te1_decoded() -> Any:
    """(EventArray, TriggerArray) of the whole test_events_1 stream in sensor time."""
    from realm_ros.events import make_decoder
    from realm_ros.events.bagio import read_raw_evt3

    raw = read_raw_evt3(EVT3_RAW)
    res = make_decoder('evt3', 640, 480).decode(raw.payload)
    return res.events, res.triggers


def packet(payload: Any, encoding: str = 'evt3', width: int = 640, height: int = 480, seq: int = 0,
           time_base: int = 0, stamp_ns: int = 0, frame_id: str = 'cam', is_bigendian: bool = False) -> Any:
    """A duck-typed EventPacket message."""
    stamp = SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp, frame_id=frame_id), width=width, height=height,
                           seq=seq, time_base=time_base, encoding=encoding, is_bigendian=is_bigendian,
                           events=payload)


def random_events(n: int, width: int = 640, height: int = 480, t0_us: int = 0, span_us: int = 1_000_000,
                  seed: int = 0, clustered: bool = False, rng: Optional[np.random.Generator] = None):
    """Random sorted events (x, y, t_us, p); ``clustered`` makes runs of nearby columns in a row (vector words)."""
    rng = rng or np.random.default_rng(seed)
    if not clustered:
        t = np.sort(rng.integers(t0_us, t0_us + span_us, n))
        return rng.integers(0, width, n), rng.integers(0, height, n), t, rng.integers(0, 2, n)
    xs, ys, ts, ps = [], [], [], []
    total = 0
    k = 0
    while total < n:
        row = rng.integers(0, height)
        x0 = rng.integers(0, width - 40)
        run = x0 + np.nonzero(rng.random(rng.integers(2, 40)) < 0.7)[0]
        xs.append(run)
        ys.append(np.full(len(run), row))
        ts.append(np.full(len(run), t0_us + (k * span_us) // max(1, n // 8)))
        ps.append(np.full(len(run), rng.integers(0, 2)))
        total += len(run)
        k += 1
    return (np.concatenate(xs)[:n], np.concatenate(ys)[:n], np.concatenate(ts)[:n], np.concatenate(ps)[:n])


def sort_key_evt3(x, y, t, p) -> np.ndarray:
    """Order in which encode_evt3 writes events (t, y, p, x)."""
    return np.lexsort((x, p, y, t))
