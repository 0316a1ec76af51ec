"""Background simulation process of the live node (ROS-free): ``python -m realm_ros.sim.worker``.

The live node (``sim_event_camera``) starts this module as a child process in its own session (so a terminal Ctrl-C,
which reaches the whole foreground process group, does not interrupt it half-way; the node stops it). It reads
``(SimConfig, cache_path or None, urgent_s)`` pickled from stdin (the first ``urgent_s`` simulated seconds, which the
node waits for, run at normal priority; the rest at nice +10), then writes length-prefixed pickled
messages to stdout while it simulates:

* ``('meta', {'event_camera', 'rgb_camera', 'T_event_rgb', 'num_frames'})`` once, first;
* ``('chunk', EventArray, SimFrame)`` per RGB frame, in order (the events of ``(t_{i-1}, t_i]``);
* ``('done', saved_path or None, error text or None)`` at the end (the sequence is saved to the cache before);
* ``('error', text)`` if the simulation failed.

A separate process, not a thread, because the numba render kernels hold the GIL for milliseconds: in a thread they
would delay the node's 1 kHz packet publishing. The worker exits when its parent goes away (broken pipe, or the
parent-death signal on Linux).
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
from pathlib import Path
from typing import IO, Any, BinaryIO

_HEADER = struct.Struct('<Q')


def write_message(stream: BinaryIO, message: Any) -> None:
    """One length-prefixed pickle frame."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_message(stream: IO[bytes]) -> Any:
    """The next frame written by :func:`write_message`; EOFError at the end of the stream."""
    head = _read_exact(stream, _HEADER.size)
    (n,) = _HEADER.unpack(head)
    return pickle.loads(_read_exact(stream, n))


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    parts, left = [], n
    while left:
        b = stream.read(left)
        if not b:
            raise EOFError('simulation worker stream ended')
        parts.append(b)
        left -= len(b)
    return b''.join(parts)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no-op elsewhere)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                  # the parent died before prctl took effect
        os._exit(0)


def _lower_priority() -> None:
    try:
        os.nice(10)
    except OSError:
        pass


def run(config: Any, cache_file: str | None, out: BinaryIO, urgent_s: float = 0.0) -> None:
    """Simulate ``config`` and stream it to ``out`` (see module docstring). The first ``urgent_s`` seconds (what the
    node waits for before it publishes) run at normal priority, the rest at nice +10."""
    from .sequence import SimSequence
    from .simulator import Simulator
    niced = urgent_s <= 0
    if niced:
        _lower_priority()
    sim = Simulator(config)
    write_message(out, ('meta', {'event_camera': sim.event_camera, 'rgb_camera': sim.rgb_camera,
                                 'T_event_rgb': sim.T_event_rgb, 'num_frames': len(sim.frame_times_ns())}))
    events, frames = [], []
    for chunk in sim.stream():
        write_message(out, ('chunk', chunk.events, chunk.frame))
        if not niced and chunk.frame.t_ns >= urgent_s * 1e9:
            niced = True
            _lower_priority()                    # the publisher and the perception node come first
        events.append(chunk.events)
        frames.append(chunk.frame)
    saved, error = None, None
    if cache_file:
        try:
            SimSequence(config, events, frames, sim.event_camera, sim.rgb_camera, sim.T_event_rgb).save(cache_file)
            saved = cache_file
        except OSError as exc:
            error = f'could not write the cache {cache_file}: {exc}'
    write_message(out, ('done', saved, error))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent decides when this process ends
    _die_with_parent()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr                          # nothing else may write into the message stream
    config, cache_file, urgent_s = pickle.load(sys.stdin.buffer)
    try:
        run(config, str(Path(cache_file)) if cache_file else None, out, float(urgent_s))
    except (BrokenPipeError, OSError) as exc:
        if isinstance(exc, BrokenPipeError) or exc.errno == 32:
            return 0                                 # the node went away: nothing to report to
        write_message(out, ('error', f'{type(exc).__name__}: {exc}'))
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the node, which logs it
        write_message(out, ('error', f'{type(exc).__name__}: {exc}'))
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
