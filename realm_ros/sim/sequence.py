"""A whole simulated sequence in memory, with an on-disk cache (used by the live node and the demo).

Simulating costs several seconds of CPU per simulated second, so a live publisher precomputes the sequence once.
:func:`load_or_simulate` keeps it in ``cache_dir`` (default ``$XDG_CACHE_HOME/realm_ros/sim`` or
``~/.cache/realm_ros/sim``) as an uncompressed ``.npz`` keyed by the :class:`SimConfig` *and* a hash of the simulator's
source files, so a changed renderer or event model never serves a stale sequence.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..events.types import EventArray
from .camera import PinholeCamera
from .simulator import SimConfig, SimFrame, Simulator

_SOURCES = ('camera.py', 'esim.py', 'raycast.py', 'render.py', 'scene.py', 'simulator.py', 'trajectory.py',
            'sequence.py')
_FRAME_ARRAYS = ('rgb', 'rgb_depth', 'rgb_labels', 'event_depth', 'event_labels', 'event_gray', 'T_world_event',
                 'T_world_rgb')


@dataclass
class SimSequence:
    """Events per frame interval (``events[i]`` covers ``(t_{i-1}, t_i]``, ``events[0]`` is empty) and frames."""

    config: SimConfig
    events: list[EventArray]
    frames: list[SimFrame]
    event_camera: PinholeCamera
    rgb_camera: PinholeCamera
    T_event_rgb: np.ndarray

    @property
    def period_ns(self) -> int:
        """Time of the last frame (the loop period of a looping replay)."""
        return int(self.frames[-1].t_ns)

    @property
    def num_events(self) -> int:
        return sum(len(e) for e in self.events)

    @classmethod
    def simulate(cls, config: SimConfig, should_stop: Callable[[], bool] | None = None) -> 'SimSequence':
        """Run the simulator over the whole sequence (``should_stop()`` true aborts with InterruptedError)."""
        sim = Simulator(config)
        events, frames = [], []
        for chunk in sim.stream():
            if should_stop is not None and should_stop():
                raise InterruptedError('simulation aborted')
            events.append(chunk.events)
            frames.append(chunk.frame)
        return cls(config, events, frames, sim.event_camera, sim.rgb_camera, sim.T_event_rgb)

    def save(self, path: str | Path) -> None:
        """Write an uncompressed ``.npz`` (atomically: temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ev = EventArray.concat(self.events)
        counts = np.array([len(e) for e in self.events], np.int64)
        arrays = {f'frame_{name}': np.stack([getattr(f, name) for f in self.frames]) for name in _FRAME_ARRAYS}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp.npz')
        os.close(fd)
        try:
            # numpy's stub also matches **arrays against savez's `allow_pickle: bool` (numpy >= 2.1 only, so it is
            # not passed: numpy 1.26, the ROS installs' version, would store it as an array)
            np.savez(tmp, ev_x=ev.x, ev_y=ev.y, ev_t=ev.t, ev_p=ev.p, ev_counts=counts,
                     frame_t_ns=np.array([f.t_ns for f in self.frames], np.int64),
                     config=np.frombuffer(_config_json(self.config).encode(), np.uint8),
                     **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path, config: SimConfig) -> 'SimSequence':
        """Read a sequence saved for ``config`` (ValueError naming the file if it was saved for another config)."""
        with np.load(path) as z:
            stored = bytes(z['config']).decode()
            if stored != _config_json(config):
                raise ValueError(f'{path} holds a sequence for another simulator configuration')
            ends = np.cumsum(z['ev_counts'])
            starts = ends - z['ev_counts']
            ev = EventArray(z['ev_x'], z['ev_y'], z['ev_t'], z['ev_p'])
            events = [ev.slice(int(a), int(b)) for a, b in zip(starts, ends)]
            fa = {name: z[f'frame_{name}'] for name in _FRAME_ARRAYS}
            frames = [SimFrame(index=i, t_ns=int(t), **{name: fa[name][i] for name in _FRAME_ARRAYS})
                      for i, t in enumerate(z['frame_t_ns'])]
        sim = Simulator(config)        # cheap: builds the scene and cameras only
        return cls(config, events, frames, sim.event_camera, sim.rgb_camera, sim.T_event_rgb)


def _config_json(config: SimConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True, default=str)


def source_hash() -> str:
    """SHA-256 (16 hex digits) of the simulator sources that determine a sequence."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'realm_ros' / 'sim'


def cache_path(config: SimConfig, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`load_or_simulate` keeps the sequence of ``config``."""
    key = hashlib.sha256((_config_json(config) + source_hash()).encode()).hexdigest()[:24]
    return Path(cache_dir or default_cache_dir()) / f'seq_{key}.npz'


def load_or_simulate(config: SimConfig, cache_dir: str | Path | None = None, use_cache: bool = True,
                     should_stop: Callable[[], bool] | None = None) -> tuple[SimSequence, bool]:
    """The sequence for ``config``, from the cache when present; returns ``(sequence, loaded_from_cache)``.

    A cache that cannot be read or written is ignored (the sequence is simulated / not stored).
    """
    path = cache_path(config, cache_dir)
    if use_cache and path.exists():
        try:
            return SimSequence.load(path, config), True
        except (OSError, ValueError, KeyError):
            pass
    seq = SimSequence.simulate(config, should_stop)
    if use_cache:
        try:
            seq.save(path)
        except OSError:
            pass
    return seq, False
