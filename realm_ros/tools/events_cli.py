"""``realm-events``: inspect and voxelize event recordings without ROS.

Sub-commands::

    realm-events summarize <bag-or-raw> [--topic T] [--time sensor|ros]
    realm-events voxelize  <bag-or-raw> --start-ns S --duration-ms D [--bins 5] [--norm dsec|e2vid|none]
                           --out grid.npy [--topic T] [--time sensor|ros] [--device cpu]
    realm-events topics    <bag>

Inputs: ROS 2 bags (directory, .db3 or .mcap), ROS 1 .bag files, and Metavision RAW EVT3 files. Times are decoded
sensor time by default (docs/formats.md#encodings: evt3 = sensor µs x 1000; libcaer / mono = time_base based), or
ROS time with ``--time ros`` (smoothed header-stamp offset, docs/formats.md#time-stamps-and-clocks).

``summarize`` prints one JSON object with the keys: events, on, off, sum_x, sum_y, t_first_ns, t_last_ns, triggers,
duration (s), rate (events/s), dropped (messages missing by seq), errors ({kind: count}, non-zero only).
Exit codes: 0 ok, 1 unreadable input, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from realm_ros.common.errors import RealmError
from realm_ros.events.bagio import (EVENT_TYPES, BagReadError, is_raw_file, iter_bag_messages,
                                    iter_raw_evt3_chunks, list_bag_topics, raw_evt3_geometry)
from realm_ros.events.codecs import UnknownEncodingError, make_decoder
from realm_ros.events.legacy import LEGACY_EVENT_ARRAY_TYPES
from realm_ros.events.packet import EventPacketDecoder
from realm_ros.events.types import EventArray, TriggerArray, merge_counts

#: Default RAW geometry when the header has none (11-bit EVT3 addresses).
RAW_DEFAULT_SIZE = 2048


class CliError(RealmError):
    """A user-facing error (message printed, exit code 1)."""


class _Source:
    """Decoded (events, triggers) chunks from a bag topic or a RAW file, plus counters."""

    def __init__(self, path: str, topic: Optional[str], time_mode: str):
        self.path = Path(path)
        self.topic = topic
        self.time_mode = time_mode
        self.width: Optional[int] = None
        self.height: Optional[int] = None
        self.dropped = 0
        self.errors: Dict[str, int] = {}
        if not self.path.exists():
            raise CliError(f'input not found: {self.path}')
        self.is_raw = is_raw_file(self.path)

    def chunks(self) -> Iterator[Tuple[EventArray, TriggerArray]]:
        if self.is_raw:
            yield from self._raw_chunks()
        else:
            yield from self._bag_chunks()

    def _raw_chunks(self) -> Iterator[Tuple[EventArray, TriggerArray]]:
        if self.time_mode == 'ros':
            raise CliError(f'{self.path}: a RAW file has no ROS time stamps; use --time sensor')
        w, h = raw_evt3_geometry(self.path)
        if w is None or h is None:
            self.errors['raw_without_geometry'] = 1
            w = h = RAW_DEFAULT_SIZE
        self.width, self.height = w, h
        try:
            dec = make_decoder('evt3', w, h)
        except ValueError as exc:
            raise CliError(f'{self.path}: {exc}') from None
        for chunk in iter_raw_evt3_chunks(self.path):
            res = dec.decode(chunk)
            yield res.events, res.triggers
        merge_counts(self.errors, {k: v for k, v in dec.stats['errors'].items() if v})

    def _pick_topic(self) -> str:
        topics = list_bag_topics(self.path)
        if self.topic is not None:
            if self.topic not in topics:
                raise CliError(f'topic {self.topic!r} not in {self.path}; topics: '
                               + ', '.join(f'{t} ({m})' for t, m in sorted(topics.items())))
            return self.topic
        events = sorted(t for t, m in topics.items() if m in EVENT_TYPES or m in LEGACY_EVENT_ARRAY_TYPES)
        if not events:
            raise CliError(f'no event topic in {self.path}; topics: '
                           + (', '.join(f'{t} ({m})' for t, m in sorted(topics.items())) or 'none'))
        if len(events) > 1:
            raise CliError(f'{self.path} has several event topics ({", ".join(events)}): choose one with --topic')
        return events[0]

    def _bag_chunks(self) -> Iterator[Tuple[EventArray, TriggerArray]]:
        topic = self._pick_topic()
        self.topic = topic
        dec = EventPacketDecoder(time_mode='smoothed' if self.time_mode == 'ros' else 'sensor')
        bag_errors: Dict[str, int] = {}
        for _topic, _type, _t, msg in iter_bag_messages(self.path, [topic], errors=bag_errors):
            res = dec.decode_msg_full(msg)
            if self.width is None and dec.width:
                self.width, self.height = dec.width, dec.height
            yield res.events, res.triggers
        st = dec.stats
        self.dropped = int(st['dropped_packets'])
        merge_counts(self.errors, {k: v for k, v in st['decoder_errors'].items() if v})
        for k in ('unknown_encoding', 'bad_geometry', 'decode_exceptions', 'seq_resets'):
            if st[k]:
                self.errors[k] = self.errors.get(k, 0) + int(st[k])
        merge_counts(self.errors, bag_errors)
        if dec.last_error:
            print(f'realm-events: warning: {self.path}: {dec.last_error}', file=sys.stderr)


def summarize(path: str, topic: Optional[str] = None, time_mode: str = 'sensor') -> Dict[str, Any]:
    """Counts and time range of the CD events (and triggers) of a bag topic or RAW file."""
    src = _Source(path, topic, time_mode)
    n = on = sx = sy = n_trig = 0
    t_first: Optional[int] = None
    t_last: Optional[int] = None
    for ev, tr in src.chunks():
        n_trig += len(tr)
        if not len(ev):
            continue
        n += len(ev)
        on += int(np.count_nonzero(ev.p))
        sx += int(ev.x.sum(dtype=np.int64))
        sy += int(ev.y.sum(dtype=np.int64))
        if t_first is None:
            t_first = int(ev.t[0])
        t_last = int(ev.t[-1])
    duration = (t_last - t_first) / 1e9 if t_first is not None and t_last is not None else 0.0
    return {
        'events': n, 'on': on, 'off': n - on, 'sum_x': sx, 'sum_y': sy,
        't_first_ns': t_first, 't_last_ns': t_last, 'triggers': n_trig,
        'duration': duration, 'rate': (n / duration) if duration > 0 else 0.0,
        'dropped': src.dropped, 'errors': dict(sorted(src.errors.items())),
    }


def voxelize(path: str, start_ns: int, duration_ms: float, out: str, bins: int = 5, norm: str = 'dsec',
             topic: Optional[str] = None, time_mode: str = 'sensor', device: str = 'cpu') -> Dict[str, Any]:
    """Voxel grid of the CD events with ``start_ns <= t < start_ns + duration`` saved as (bins, H, W) float32."""
    from realm_ros.events.voxel import voxel_grid

    if duration_ms <= 0:
        raise CliError(f'--duration-ms must be positive, got {duration_ms}')
    start = int(start_ns)
    end = start + int(round(duration_ms * 1e6))
    src = _Source(path, topic, time_mode)
    parts: List[EventArray] = []
    for ev, _tr in src.chunks():
        if not len(ev) or ev.t[-1] < start or ev.t[0] >= end:
            continue
        parts.append(ev.select((ev.t >= start) & (ev.t < end)))
    window = EventArray.concat(parts)
    if src.width is None or src.height is None:
        raise CliError(f'{path}: no event packets, sensor size unknown')
    grid = voxel_grid(window, bins=bins, height=src.height, width=src.width, normalization=norm, device=device)
    arr = grid.detach().cpu().numpy().astype(np.float32)
    out_path = Path(out)
    if out_path.parent and not out_path.parent.exists():
        raise CliError(f'output directory does not exist: {out_path.parent}')
    np.save(out_path, arr)
    return {'out': str(out_path), 'shape': list(arr.shape), 'events': len(window), 'on': window.num_on,
            'off': window.num_off, 't_start_ns': start, 't_end_ns': end, 'normalization': norm,
            'sum': float(arr.astype(np.float64).sum()), 'nnz': int(np.count_nonzero(arr)),
            'errors': dict(sorted(src.errors.items()))}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='realm-events', description='Inspect and voxelize event-camera recordings '
                                '(ROS 2/ROS 1 bags, Metavision RAW EVT3) without ROS.')
    sub = p.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('summarize', help='print JSON counts, sums and time range of the events')
    s.add_argument('input', help='bag directory, .db3, .mcap, .bag or .raw file')
    s.add_argument('--topic', default=None, help='event topic (default: the only event topic)')
    s.add_argument('--time', choices=('sensor', 'ros'), default='sensor', help='time base of the reported times')
    v = sub.add_parser('voxelize', help='save the voxel grid of a time window as .npy (bins, H, W)')
    v.add_argument('input')
    v.add_argument('--start-ns', type=int, required=True, help='window start (ns, same time base as summarize)')
    v.add_argument('--duration-ms', type=float, required=True)
    v.add_argument('--bins', type=int, default=5)
    v.add_argument('--norm', choices=('dsec', 'e2vid', 'none'), default='dsec')
    v.add_argument('--out', required=True, help='output .npy path')
    v.add_argument('--topic', default=None)
    v.add_argument('--time', choices=('sensor', 'ros'), default='sensor')
    v.add_argument('--device', default='cpu', help='torch device for the grid (cpu, cuda, cuda:1, ...)')
    t = sub.add_parser('topics', help='list the topics and types of a bag')
    t.add_argument('input')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point (``realm-events``)."""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == 'summarize':
            result: Any = summarize(args.input, args.topic, args.time)
        elif args.cmd == 'voxelize':
            if args.bins < 1:
                raise CliError(f'--bins must be >= 1, got {args.bins}')
            result = voxelize(args.input, args.start_ns, args.duration_ms, args.out, args.bins, args.norm,
                              args.topic, args.time, args.device)
        else:
            if not Path(args.input).exists():
                raise CliError(f'input not found: {args.input}')
            result = list_bag_topics(args.input)
    except (CliError, BagReadError, UnknownEncodingError) as exc:
        print(f'realm-events: error: {exc}', file=sys.stderr)
        return 1
    except OSError as exc:  # missing / unreadable input or output (permissions, a directory, disk full)
        print(f'realm-events: error: {exc}', file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
