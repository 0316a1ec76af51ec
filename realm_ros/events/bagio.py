"""ROS-free bag and RAW file input (docs/formats.md#raw-files, docs/formats.md#bags).

* ``make_typestore()``: a ROS 2 rosbags typestore with ``event_camera_msgs/msg/EventPacket``, its pre-2023 name
  ``event_array_msgs/msg/EventArray`` and the legacy ``dvs_msgs`` / ``prophesee_event_msgs`` EventArray types.
* ``iter_bag_messages(path, topics)``: (topic, msgtype, record_time_ns, msg) from ROS 2 bags (sqlite3 or mcap;
  a bag directory or a bare .db3/.mcap file) and ROS 1 ``.bag`` files. Uses the low-level rosbags readers with our own
  typestore, which never parses embedded schemas (real rosbag2 MCAP files embed ros2idl that AnyReader rejects).
  Legacy per-event EventArray messages are parsed with a vectorised fast path into ``LegacyEventArray``.
* ``read_raw_evt3(path)`` / ``iter_raw_evt3_chunks(path)``: Metavision RAW files (ASCII ``%`` header + EVT3 words).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from realm_ros.common.errors import RealmError

from .legacy import (LEGACY_EVENT_ARRAY_MSG, LEGACY_EVENT_ARRAY_TYPES, LEGACY_EVENT_MSG,
                     parse_legacy_event_array_cdr, parse_legacy_event_array_ros1)

EVENT_PACKET_TYPE = 'event_camera_msgs/msg/EventPacket'
EVENT_PACKET_OLD_TYPE = 'event_array_msgs/msg/EventArray'
EVENT_PACKET_TYPES = (EVENT_PACKET_TYPE, EVENT_PACKET_OLD_TYPE)
EVENT_TYPES = EVENT_PACKET_TYPES + tuple(t for t in LEGACY_EVENT_ARRAY_TYPES if '/msg/' in t)

#: The ROS 2 .msg text of event_camera_msgs/msg/EventPacket (field order matters for CDR;
#: docs/formats.md#eventpacket-message).
EVENT_PACKET_MSG = """# A packet of events encoded in a camera-specific format (see the `encoding` field).
# event ros time = time_base + decoded event_time (for encodings that use time_base)
std_msgs/Header header
uint32 height         # sensor height in pixels (rows)
uint32 width          # sensor width in pixels (columns)
uint64 seq            # per-publisher packet counter; a gap means packets were dropped
uint64 time_base      # encoding-dependent time base (unused by evt3)
string encoding       # evt3, libcaer_cmp, libcaer, mono, trigger
bool is_bigendian     # byte order of the payload
uint8[] events        # encoded event payload
"""


class BagReadError(RealmError, ValueError):
    """A bag or RAW file cannot be opened or read (missing, unsupported, truncated or corrupt)."""


@lru_cache(maxsize=2)
def _cached_typestore(ros1: bool) -> Any:
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    header = 'Header' if ros1 else 'std_msgs/Header'
    ts_type = 'time' if ros1 else 'builtin_interfaces/Time'
    text = EVENT_PACKET_MSG.replace('std_msgs/Header', header)
    types: Dict[str, Any] = {}
    for name in EVENT_PACKET_TYPES:
        types.update(get_types_from_msg(text, name))
    for pkg in ('dvs_msgs', 'prophesee_event_msgs'):
        types.update(get_types_from_msg(LEGACY_EVENT_MSG.replace('builtin_interfaces/Time', ts_type),
                                        f'{pkg}/msg/Event'))
        types.update(get_types_from_msg(LEGACY_EVENT_ARRAY_MSG.format(pkg=pkg).replace('std_msgs/Header', header),
                                        f'{pkg}/msg/EventArray'))
    store.register(types)
    return store


def make_typestore(ros1: bool = False) -> Any:
    """A rosbags typestore (ROS 2 Humble base, or ROS 1 Noetic with ``ros1=True``) with the event message types.

    Registered: ``event_camera_msgs/msg/EventPacket``, ``event_array_msgs/msg/EventArray`` (old name, same layout),
    ``dvs_msgs/msg/Event[Array]`` and ``prophesee_event_msgs/msg/Event[Array]``. The returned object is shared
    (cached); do not register conflicting types on it.
    """
    return _cached_typestore(bool(ros1))


def _bag_candidates(path: Path) -> List[Path]:
    """Bare storage files inside a bag directory (fallback when its metadata is unusable)."""
    files = sorted(list(path.glob('*.mcap')) + list(path.glob('*.db3')))
    return files


def _open_ros2_readers(path: Path) -> List[Any]:
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(path)
        reader.open()
        return [reader]
    except Exception as exc:  # noqa: BLE001 - fall back to the bare storage files
        first_error = exc
    if path.is_dir():
        readers = []
        for f in _bag_candidates(path):
            try:
                r = Reader(f)
                r.open()
                readers.append(r)
            except Exception as exc:
                for r in readers:
                    r.close()
                raise BagReadError(f'cannot open bag file {f}: {exc}') from exc
        if readers:
            return readers
    raise BagReadError(f'cannot open bag {path}: {first_error}') from first_error


def list_bag_topics(path: str | os.PathLike[str]) -> Dict[str, str]:
    """{topic: msgtype} of a bag (ROS 2 directory / .db3 / .mcap, or ROS 1 .bag)."""
    out: Dict[str, str] = {}
    for reader in _open_readers(Path(path)):
        try:
            for c in reader.connections:
                out[c.topic] = c.msgtype
        finally:
            reader.close()
    return out


def _open_readers(path: Path) -> List[Any]:
    if not path.exists():
        raise FileNotFoundError(f'bag not found: {path}')
    if path.is_file() and path.suffix == '.bag':
        from rosbags.rosbag1 import Reader as Reader1

        try:
            r = Reader1(path)
            r.open()
            return [r]
        except Exception as exc:
            raise BagReadError(f'cannot open ROS 1 bag {path}: {exc}') from exc
    return _open_ros2_readers(path)


def _deserialize(store: Any, raw: Any, msgtype: str, ros1: bool) -> Any:
    if msgtype in LEGACY_EVENT_ARRAY_TYPES or msgtype.replace('/msg/', '/') in LEGACY_EVENT_ARRAY_TYPES:
        if ros1:
            return parse_legacy_event_array_ros1(raw, msgtype)
        return parse_legacy_event_array_cdr(raw, msgtype)
    if ros1:
        return store.deserialize_ros1(raw, msgtype)
    return store.deserialize_cdr(raw, msgtype)


def iter_bag_messages(path: str | os.PathLike[str], topics: Optional[Sequence[str]] = None,
                      errors: Optional[Dict[str, int]] = None) -> Iterator[Tuple[str, str, int, Any]]:
    """Yield ``(topic, msgtype, record_time_ns, msg)`` for every message of the selected topics, in file order.

    Args:
        path: ROS 2 bag directory, bare ``.db3`` / ``.mcap`` file, or ROS 1 ``.bag`` file.
        topics: topics to read (default all). Types the typestore does not know are skipped unless selected.
        errors: when given, messages that fail to deserialize are skipped and counted here under
            ``'bad_messages'``; otherwise they raise ``BagReadError``.

    ``msg`` is a rosbags message object (field access like rclpy; ``uint8[]`` as numpy), or for the legacy
    dvs/prophesee EventArray types a ``LegacyEventArray`` with numpy events in ROS time.
    Record times are the recorder's receive times: never use them for event timing
    (docs/formats.md#time-stamps-and-clocks).

    Raises:
        FileNotFoundError: the path does not exist.
        BagReadError: the bag cannot be opened, or it is truncated/corrupt (the message names the file and how many
            messages were read before the failure).
    """
    p = Path(path)
    readers = _open_readers(p)
    ros1 = p.suffix == '.bag'
    store = make_typestore(ros1)
    wanted = set(topics) if topics else None
    count = 0
    try:
        for reader in readers:
            conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
            if wanted is None:
                conns = [c for c in conns if c.msgtype in store.types or c.msgtype in LEGACY_EVENT_ARRAY_TYPES]
            if not conns:
                continue
            it = reader.messages(connections=conns)
            while True:
                try:
                    item = next(it)
                except StopIteration:
                    break
                except Exception as exc:  # storage layer error: truncated or corrupt file
                    raise BagReadError(f'bag {path} is truncated or corrupt after {count} messages: '
                                       f'{type(exc).__name__}: {exc}') from exc
                conn, t_ns, raw = item
                try:
                    msg = _deserialize(store, raw, conn.msgtype, ros1)
                except Exception as exc:  # includes LegacyParseError
                    if errors is None:
                        raise BagReadError(f'bag {path}: message {count} on {conn.topic} ({conn.msgtype}) cannot be '
                                           f'deserialized: {type(exc).__name__}: {exc}') from exc
                    errors['bad_messages'] = errors.get('bad_messages', 0) + 1
                    count += 1
                    continue
                count += 1
                yield conn.topic, conn.msgtype, int(t_ns), msg
    finally:
        for r in readers:
            try:
                r.close()
            except Exception:  # noqa: BLE001
                pass


# ------------------------------------------------------------------------------------------------ Metavision RAW
@dataclass
class RawEvt3:
    """A Metavision RAW EVT 3.0 file: header lines, sensor size and the word stream as bytes (uint8 array)."""

    path: str
    header: List[str]
    width: Optional[int]
    height: Optional[int]
    payload: np.ndarray
    format: Dict[str, str] = field(default_factory=dict)


def _parse_raw_header(f: Any) -> Tuple[List[str], int]:
    """Read '%' lines; returns (lines, payload offset). Stops after a '% end' line (docs/formats.md#evt3)."""
    lines: List[str] = []
    offset = 0
    while True:
        first = f.read(1)
        if first != b'%':
            break
        line = b'%' + f.readline()
        offset += len(line)
        text = line.decode('latin-1').rstrip('\r\n')
        lines.append(text)
        if not line.endswith(b'\n'):
            break
        if text.strip() == '% end':
            break
    return lines, offset


def _raw_size(path: Any, what: str, text: str) -> int:
    """One sensor dimension from a RAW header, checked: an integer in 1..MAX_SENSOR_SIZE (else BagReadError)."""
    from .codecs import MAX_SENSOR_SIZE

    try:
        v = int(text.strip())
    except ValueError:
        raise BagReadError(f'RAW file {path}: header {what} {text.strip()!r} is not an integer') from None
    if not 0 < v <= MAX_SENSOR_SIZE:
        raise BagReadError(f'RAW file {path}: header {what} {v} is not a sensor size (1..{MAX_SENSOR_SIZE})')
    return v


def _raw_geometry(lines: List[str], path: Any = '<header>'
                  ) -> Tuple[Optional[int], Optional[int], Dict[str, str], Optional[str]]:
    """(width, height, format fields, evt format name) of RAW header lines; BagReadError for an invalid size."""
    width = height = None
    fmt: Dict[str, str] = {}
    evt = None
    for ln in lines:
        body = ln[1:].strip()
        if body.startswith('format'):
            parts = body[len('format'):].strip().split(';')
            evt = parts[0].strip() or evt
            for kv in parts[1:]:
                if '=' in kv:
                    k, v = kv.split('=', 1)
                    fmt[k.strip()] = v.strip()
        elif body.startswith('evt'):
            evt = evt or ('EVT' + body[3:].strip().replace('.0', ''))
        m = re.match(r'geometry\s+(\S+?)\s*x\s*(\S+)', body)
        if m:
            width = _raw_size(path, 'geometry width', m.group(1))
            height = _raw_size(path, 'geometry height', m.group(2))
    if 'width' in fmt and 'height' in fmt:
        width = _raw_size(path, 'width', fmt['width'])
        height = _raw_size(path, 'height', fmt['height'])
    return width, height, fmt, evt


def _check_evt3(path: Path, evt: Optional[str]) -> None:
    if evt is not None and evt.upper().replace(' ', '') not in ('EVT3', 'EVT3.0'):
        raise BagReadError(f'RAW file {path} holds {evt}, not EVT 3.0: only EVT3 is supported '
                           '(EVT2/EVT2.1 are not used by ROS drivers)')


def read_raw_evt3(path: os.PathLike) -> RawEvt3:
    """Read a whole Metavision RAW EVT3 file.

    Raises:
        FileNotFoundError: missing file. BagReadError: the header announces another format or an invalid size.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'RAW file not found: {p}')
    with open(p, 'rb') as f:
        lines, offset = _parse_raw_header(f)
    width, height, fmt, evt = _raw_geometry(lines, p)
    _check_evt3(p, evt)
    payload = np.fromfile(p, dtype=np.uint8, offset=offset)
    return RawEvt3(str(p), lines, width, height, payload, fmt)


def iter_raw_evt3_chunks(path: os.PathLike, chunk_bytes: int = 1 << 22) -> Iterator[np.ndarray]:
    """Stream the EVT3 payload of a RAW file in chunks of ``chunk_bytes`` (rounded to whole words)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'RAW file not found: {p}')
    chunk_bytes = max(2, int(chunk_bytes) & ~1)
    with open(p, 'rb') as f:
        lines, offset = _parse_raw_header(f)
        _check_evt3(p, _raw_geometry(lines, p)[3])
        f.seek(offset)
        while True:
            buf = f.read(chunk_bytes)
            if not buf:
                break
            yield np.frombuffer(buf, dtype=np.uint8)


def raw_evt3_geometry(path: os.PathLike) -> Tuple[Optional[int], Optional[int]]:
    """(width, height) from a RAW header, None where absent.

    Raises:
        BagReadError: the header gives a size that is not an integer in 1..MAX_SENSOR_SIZE.
    """
    with open(path, 'rb') as f:
        lines, _ = _parse_raw_header(f)
    w, h, _, _ = _raw_geometry(lines, path)
    return w, h


def write_raw_evt3(path: os.PathLike, payload: Any, width: int, height: int) -> None:
    """Write a RAW EVT3 file (header as in docs/formats.md#evt3, then the payload bytes)."""
    head = (f'% evt 3.0\n% format EVT3;height={int(height)};width={int(width)}\n'
            f'% geometry {int(width)}x{int(height)}\n% end\n').encode()
    with open(path, 'wb') as f:
        f.write(head)
        f.write(np.ascontiguousarray(np.frombuffer(memoryview(payload).cast('B'), np.uint8)).data)


def is_raw_file(path: os.PathLike) -> bool:
    """True for a Metavision RAW file (by extension or a leading '%' header)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() == '.raw':
        return True
    if p.suffix.lower() in ('.db3', '.mcap', '.bag'):
        return False
    with open(p, 'rb') as f:
        return f.read(1) == b'%'
