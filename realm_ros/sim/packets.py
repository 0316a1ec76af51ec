"""Cut simulated events into EVT3 EventPacket payloads the way a metavision_driver does (ROS-free).

Clocks (docs/formats.md#time-stamps-and-clocks):

* *simulation time* ``t_sim`` (ns from the start of the sequence) is what :class:`~realm_ros.sim.Simulator` produces;
* *sensor time* is the camera's microsecond counter: ``t_sensor_us = sensor_time_offset_us + t_sim // 1000``; only
  its low 24 bits go on the wire (EVT3 wraps every 16.78 s; the encoder writes keep-alive TIME_HIGH words so
  decoders track wraps);
* *ROS time* ``t_ros = start_time_ns + t_sim``.

Packets cover consecutive windows of ``packet_interval_us`` of sensor time (1 ms, metavision_driver's
``event_message_time_threshold`` default); windows without events produce no packet. Each packet carries:
``header.stamp`` = ROS time of its first event (+ optional constant ``latency_ns`` and uniform ``jitter_ns``, as host
arrival times of a real driver would add), ``seq`` +1 per packet from 0, ``time_base`` 0 (unused by evt3),
``encoding`` ``'evt3'``. ``publish_ns`` (ROS time at the end of the window) is when a driver would publish it; bags
use it as the record time. With the default zero latency, ``stamp - t_sensor(first event)`` is constant, so a
decoder's sensor-to-ROS mapping recovers ``t_ros`` of every event exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..events.encoders import encode_evt3
from ..events.types import EventArray

#: Default ROS start time of simulated bags (2023-11-14T22:13:20Z), fixed so bags are reproducible.
DEFAULT_START_TIME_NS = 1_700_000_000_000_000_000
#: Default sensor clock value at the start of a sequence (us); arbitrary like a real camera's counter.
DEFAULT_SENSOR_TIME_OFFSET_US = 5_000_000
#: EVT3 TIME_HIGH unit (us): payloads can be moved in time by multiples of it without re-encoding.
EVT3_TIME_HIGH_US = 4096


def shift_evt3_payload(payload: bytes, delta_us: int) -> bytes:
    """The EVT3 payload of the same events ``delta_us`` later (a multiple of 4096 us), without re-encoding.

    Only TIME_HIGH words (type 8) change: their 12-bit value grows by ``delta_us / 4096`` modulo 4096, exactly what
    :func:`~realm_ros.events.encoders.encode_evt3` writes for the shifted times (TIME_LOW words are unchanged). Used
    to replay a precomputed sequence in a loop with continuing sensor time at negligible cost.
    """
    delta_us = int(delta_us)
    if delta_us % EVT3_TIME_HIGH_US:
        raise ValueError(f'delta_us must be a multiple of {EVT3_TIME_HIGH_US} us, got {delta_us}')
    k = (delta_us // EVT3_TIME_HIGH_US) & 0xFFF
    if k == 0:
        return bytes(payload)
    words = np.frombuffer(payload, dtype='<u2').copy()
    high = (words >> 12) == 8
    words[high] = 0x8000 | ((words[high] & 0xFFF) + k) & 0xFFF
    return words.tobytes()


@dataclass
class PacketData:
    """Content of one EventPacket (evt3)."""

    seq: int
    stamp_ns: int          # header.stamp (ROS ns)
    publish_ns: int        # ROS time at which a driver publishes it (end of its window)
    payload: bytes
    num_events: int
    first_event_ros_ns: int


class EventPacketizer:
    """Accumulates simulated events and emits EVT3 packets for every completed time window.

    Args:
        packet_interval_us: window length (sensor us).
        start_time_ns: ROS time of simulation time 0.
        sensor_time_offset_us: sensor clock (us) at simulation time 0.
        latency_ns, jitter_ns: added to header stamps (constant, and uniform in [0, jitter_ns)).
        seed: for the jitter.
    """

    def __init__(self, packet_interval_us: int = 1000, start_time_ns: int = DEFAULT_START_TIME_NS,
                 sensor_time_offset_us: int = DEFAULT_SENSOR_TIME_OFFSET_US, latency_ns: int = 0,
                 jitter_ns: int = 0, seed: int = 0) -> None:
        if packet_interval_us < 1:
            raise ValueError(f'packet_interval_us must be >= 1, got {packet_interval_us}')
        if sensor_time_offset_us < 0:
            raise ValueError(f'sensor_time_offset_us must be >= 0, got {sensor_time_offset_us}')
        if latency_ns < 0 or jitter_ns < 0:
            raise ValueError('latency_ns and jitter_ns must be >= 0')
        self.packet_interval_us = int(packet_interval_us)
        self.start_time_ns = int(start_time_ns)
        self.sensor_time_offset_us = int(sensor_time_offset_us)
        self.latency_ns = int(latency_ns)
        self.jitter_ns = int(jitter_ns)
        self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xAC4]))
        self.seq = 0
        self.num_events = 0
        self._pending: list[EventArray] = []
        self._last_t_sim_ns: int | None = None

    def sensor_us(self, t_sim_ns: np.ndarray) -> np.ndarray:
        """Sensor time (us) of simulation times (ns)."""
        return self.sensor_time_offset_us + np.asarray(t_sim_ns, np.int64) // 1000

    def ros_ns(self, t_sim_ns):
        """ROS time (ns) of simulation times (ns)."""
        return self.start_time_ns + np.asarray(t_sim_ns, np.int64)

    def push(self, events: EventArray, t_until_ns: int) -> list[PacketData]:
        """Add time-sorted events (simulation ns) known complete up to ``t_until_ns``; return finished packets.

        A window is finished when its (exclusive) end is <= ``t_until_ns``, so its ``publish_ns`` never exceeds the
        ROS time of ``t_until_ns`` (bags stay in record-time order when frames at ``t_until_ns`` follow).
        """
        if len(events):
            t0 = int(events.t[0])
            if self._last_t_sim_ns is not None and t0 < self._last_t_sim_ns:
                raise ValueError(f'events go back in time: {t0} ns after {self._last_t_sim_ns} ns')
            self._last_t_sim_ns = int(events.t[-1])
            self._pending.append(events)
        return self._emit(limit_us=int(self.sensor_us(np.int64(t_until_ns))))

    def flush(self) -> list[PacketData]:
        """Emit every pending event (end of the sequence)."""
        return self._emit(limit_us=None)

    def _emit(self, limit_us: int | None) -> list[PacketData]:
        if not self._pending:
            return []
        ev = EventArray.concat(self._pending)
        self._pending = []
        if not len(ev):
            return []
        t_us = self.sensor_us(ev.t)
        P = self.packet_interval_us
        win = t_us // P
        if limit_us is None:
            n_done = len(ev)
        else:
            # windows whose end (exclusive) is <= limit are complete
            n_done = int(np.searchsorted(win, limit_us // P, side='left'))
        if n_done < len(ev):
            self._pending = [ev.slice(n_done, len(ev))]
        if n_done == 0:
            return []
        win = win[:n_done]
        bounds = np.flatnonzero(np.diff(win)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [n_done]])
        out = []
        for a, b in zip(starts.tolist(), ends.tolist()):
            payload = encode_evt3(ev.x[a:b], ev.y[a:b], t_us[a:b], ev.p[a:b])
            first_ros = int(self.ros_ns(ev.t[a]))
            jitter = int(self._rng.integers(0, self.jitter_ns)) if self.jitter_ns else 0
            window_end_us = (int(win[a]) + 1) * P
            publish = self.start_time_ns + (window_end_us - self.sensor_time_offset_us) * 1000
            out.append(PacketData(seq=self.seq, stamp_ns=first_ros + self.latency_ns + jitter,
                                  publish_ns=max(publish, first_ros), payload=payload, num_events=b - a,
                                  first_event_ros_ns=first_ros))
            self.seq += 1
            self.num_events += b - a
        return out
