"""The one declaration of the ``sim_event_camera`` parameters (ROS-free).

:data:`SIM_PARAMETERS` lists every parameter once: name, type (from the default), default, inclusive range or choices,
whether it can change at run time, and a description. The node declares its ROS parameters (with
``ParameterDescriptor`` type, range, read-only flag and description) from this table, ``config/sim_camera.yaml``
holds the same defaults, and ``test/unit/test_sim_params.py`` / ``test/ros/test_sim_node.py`` check that the three
agree. All parameters are read-only: they define the simulated sequence or its schedule, which is fixed once the
node runs (restart the node to change them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from .esim import EsimConfig
from .simulator import SimConfig
from .trajectory import TRAJECTORY_KINDS

ParamValue = bool | int | float | str
_V = TypeVar('_V', bool, int, float, str)


@dataclass(frozen=True)
class SimParam:
    """One parameter: ``default`` fixes the type (bool, int, float or str); ``low``/``high`` an inclusive range
    (numbers), ``choices`` the allowed strings; ``read_only`` false would make it changeable at run time."""

    name: str
    default: ParamValue
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True

    @property
    def type(self) -> type[ParamValue]:
        return type(self.default)

    def check(self, value: Any) -> ParamValue:
        """``value`` converted to this parameter's type (ints accepted for floats), or ValueError naming it."""
        t = self.type
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not t:
            raise ValueError(f"parameter '{self.name}' must be {t.__name__}, got {value!r} ({type(value).__name__})")
        if not isinstance(value, str) and (self.low is not None and value < self.low
                                           or self.high is not None and value > self.high):
            raise ValueError(f"parameter '{self.name}' must be in [{self.low}, {self.high}], got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter '{self.name}' must be one of {', '.join(self.choices)}; got {value!r}")
        return value


SIM_PARAMETERS: tuple[SimParam, ...] = (
    SimParam('seed', 0, 'scene, trajectory and event-noise seed', 0, 2**31 - 1),
    SimParam('width', 224, 'event (and RGB) camera width in pixels', 8, 2048),
    SimParam('height', 224, 'event (and RGB) camera height in pixels', 8, 2048),
    SimParam('hfov_deg', 80.0, 'horizontal field of view of both cameras (degrees)', 10.0, 170.0),
    SimParam('rgb_rate_hz', 30.0, 'RGB / ground-truth frame rate (Hz)', 1.0, 240.0),
    SimParam('duration_s', 3.0, 'length of the simulated sequence, the loop period (s)', 0.1, 600.0),
    SimParam('loop', True, 'replay the sequence forever with continuing time (false: one pass, then exit)'),
    SimParam('trajectory', 'loop', "camera motion: 'loop' (periodic, joins without a jump), 'drive' or 'static'",
             choices=TRAJECTORY_KINDS),
    SimParam('speed_mps', 8.0, 'camera speed along the street (m/s)', 0.0, 100.0),
    SimParam('motion_scale', 1.0, 'scale of the lateral / rotational wobble of the trajectory', 0.0, 10.0),
    SimParam('baseline_m', 0.0, 'RGB camera offset to the right of the event camera (m)', -10.0, 10.0),
    SimParam('contrast_threshold', 0.2, 'event contrast threshold (log intensity), both polarities', 0.01, 2.0),
    SimParam('background_rate_hz', 0.0, 'background-activity noise events per pixel per second', 0.0, 1000.0),
    SimParam('packet_interval_us', 1000, 'sensor time covered by one EventPacket (us); 1000 = metavision_driver',
             1, 1_000_000),
    SimParam('rate', 1.0, 'playback speed relative to real time', 0.01, 100.0),
    SimParam('publish_ground_truth', True, 'also publish GT depth, labels (both cameras) and /gt/pose'),
    SimParam('max_runtime_s', 0.0, 'stop after this many seconds of publishing (0 = run until shut down)',
             0.0, 1e9),
    SimParam('use_cache', True, 'keep the simulated sequence on disk so the next start is immediate'),
    SimParam('cache_dir', '', 'cache folder (empty: $XDG_CACHE_HOME/realm_ros/sim or ~/.cache/realm_ros/sim)'),
    SimParam('first_segment_s', 0.3, 'on a first start (no cache), publish once this much of the sequence is '
             'simulated, replaying the simulated prefix while the rest is computed in a background process',
             0.05, 600.0),
    SimParam('diagnostics_period_s', 1.0, 'period of /diagnostics and of the lateness bookkeeping (s)', 0.1, 60.0),
)

PARAMS_BY_NAME: dict[str, SimParam] = {p.name: p for p in SIM_PARAMETERS}


def default_values() -> dict[str, ParamValue]:
    """Every parameter's default."""
    return {p.name: p.default for p in SIM_PARAMETERS}


def check_values(values: Mapping[str, Any]) -> dict[str, ParamValue]:
    """All parameters, defaults filled in, each checked (ValueError naming the first bad or unknown one)."""
    unknown = sorted(set(values) - set(PARAMS_BY_NAME))
    if unknown:
        raise ValueError(f'unknown sim_event_camera parameter(s): {", ".join(unknown)}')
    out = default_values()
    for name, value in values.items():
        out[name] = PARAMS_BY_NAME[name].check(value)
    return out


#: The simulated rig of ``realm-demo`` and of ``perception.launch.py sim:=true``: a held-out test scene (seed 11,
#: never used in training) driven forward along the street at 2 m/s like the training drives, 32 s replayed in a loop
#: (the pose jumps back at each loop). The node's own defaults (a 3 s back-and-forth loop at 8 m/s) are for tests and
#: quick checks: the miniature models never saw a reversing camera.
DEMO_RIG: Mapping[str, ParamValue] = {'seed': 11, 'trajectory': 'drive', 'speed_mps': 2.0, 'loop': True}
#: Sequence length of the demo rig per trajectory (s): a drive long enough for a warm-up and 20 s of recording before
#: it loops; one period of the back-and-forth path.
DEMO_SECONDS: Mapping[str, float] = {'drive': 32.0, 'loop': 4.0, 'static': 4.0}


def demo_rig(trajectory: str | None = None, seed: int | None = None, speed_mps: float | None = None,
             duration_s: float | None = None) -> dict[str, ParamValue]:
    """The demo rig's parameters with the given changes (None keeps the rig's value; the length follows the
    trajectory, :data:`DEMO_SECONDS`), each checked (ValueError naming a bad one)."""
    values: dict[str, Any] = dict(DEMO_RIG)
    for name, value in (('trajectory', trajectory), ('seed', seed), ('speed_mps', speed_mps)):
        if value is not None:
            values[name] = value
    kind = str(values['trajectory'])
    values['duration_s'] = float(DEMO_SECONDS.get(kind, DEMO_SECONDS['loop']) if duration_s is None else duration_s)
    checked = check_values(values)
    return {name: checked[name] for name in values}


def checked_value(values: Mapping[str, ParamValue], name: str, kind: type[_V]) -> _V:
    """``values[name]`` typed as ``kind`` (the type its :class:`SimParam` declares; TypeError if it is not)."""
    value = values[name]
    if type(value) is not kind:
        raise TypeError(f"parameter '{name}' is {type(value).__name__}, expected {kind.__name__}")
    return value


def sim_config_from_values(values: Mapping[str, Any]) -> SimConfig:
    """The :class:`SimConfig` the parameters describe (values as returned by :func:`check_values`)."""
    v = check_values(values)

    def num(name: str) -> float:
        return checked_value(v, name, float)

    def whole(name: str) -> int:
        return checked_value(v, name, int)

    return SimConfig(seed=whole('seed'), duration_s=num('duration_s'), width=whole('width'), height=whole('height'),
                     hfov_deg=num('hfov_deg'), rgb_rate_hz=num('rgb_rate_hz'),
                     trajectory=checked_value(v, 'trajectory', str), speed_mps=num('speed_mps'),
                     motion_scale=num('motion_scale'), baseline_m=num('baseline_m'),
                     esim=EsimConfig(contrast_pos=num('contrast_threshold'), contrast_neg=num('contrast_threshold'),
                                     background_rate_hz=num('background_rate_hz')))


def yaml_text(node_name: str = 'sim_event_camera') -> str:
    """``config/sim_camera.yaml`` as generated from the table (a ROS 2 params file with every default)."""
    lines = [f'# Parameters of {node_name} (generated from realm_ros/sim/params.py; a test keeps them equal).',
             '# Use: ros2 run realm_ros sim_event_camera --ros-args --params-file config/sim_camera.yaml',
             f'{node_name}:', '  ros__parameters:']
    for p in SIM_PARAMETERS:
        v = p.default
        text = ('true' if v else 'false') if isinstance(v, bool) else (f"'{v}'" if isinstance(v, str) else repr(v))
        lines.append(f'    {p.name}: {text}')
    return '\n'.join(lines) + '\n'
