"""Declared configuration fields: one declaration per training setting, and everything derived from it.

A training setting is a dataclass field declared with :func:`setting`: its name (the dotted path of the field), its
type (the annotation), its default, its description and its allowed values (:class:`Rule`: choices, a numeric range,
a list length, a pattern). From these declarations, and nothing else, this module derives

* the per-field validation (:func:`check_fields`: choices, ranges, lengths, patterns; messages name the field);
* the conversion of YAML, ``--<field> VALUE`` and ``--ros-args -p name:=value`` values to the declared type
  (:func:`set_dotted`; a ``-p`` value is read as YAML unless the field is a string, as ROS reads parameters);
* the ``--<dotted.name>`` command-line options with their help (:func:`add_config_arguments`);
* the documented YAML (:func:`render_yaml`), which ``config/train.yaml`` and ``config/train_heads.yaml`` must equal
  (``test/unit/test_training_config.py``).

Rules between fields (a unit quaternion, two lists of the same length, ``min < max``) stay in
:func:`realm_ros.training.config.validate_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from realm_ros.common.errors import RealmError

__all__ = [
    'ConfigError', 'Rule', 'setting', 'rule_of', 'check_fields', 'iter_leaf_fields', 'get_dotted', 'set_dotted',
    'flatten_mapping', 'config_to_dict', 'config_from_dict', 'load_yaml_file', 'parse_ros_args', 'RosText',
    'add_config_arguments', 'render_yaml', 'field_default',
]

T = TypeVar('T')


class ConfigError(RealmError, ValueError):
    """Invalid configuration: unknown field, wrong type or out-of-range value. The message names the field."""


# ====================================================================================================== declarations
def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Rule:
    """Allowed values of one setting (every part optional; a list's ``ge``..``lt`` apply to each of its items).

    ``choices``: the values allowed; ``ge``/``gt``/``le``/``lt``: bounds of a number; ``length``: items of a list;
    ``pattern``: a regular expression the whole string matches, with ``pattern_doc`` saying it in words;
    ``unbounded``: a number with no limits, declared as such.
    """

    choices: Tuple[Any, ...] = ()
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    length: Optional[int] = None
    pattern: str = ''
    pattern_doc: str = ''
    unbounded: bool = False

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def describe_range(self) -> str:
        """The numeric range in words: ``>= 1``, ``positive``, ``in [0, 1)``."""
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if lo is not None and hi is not None:
            return (f'in {"[" if self.ge is not None else "("}{_num(lo)}, {_num(hi)}'
                    f'{"]" if self.le is not None else ")"}')
        if self.gt is not None:
            return 'positive' if self.gt == 0 else f'> {_num(self.gt)}'
        if self.ge is not None:
            return f'>= {_num(self.ge)}'
        if self.lt is not None:
            return f'< {_num(self.lt)}'
        if self.le is not None:
            return f'<= {_num(self.le)}'
        return 'any number'

    def describe_choices(self) -> str:
        names = [repr(c) for c in self.choices]
        return names[0] if len(names) == 1 else f'{", ".join(names[:-1])} or {names[-1]}'

    def describe(self) -> str:
        """What is allowed, for the YAML comments and ``--help`` (empty: anything of the declared type)."""
        parts = []
        if self.choices:
            parts.append(f'one of {", ".join(repr(c) for c in self.choices)}')
        if self.pattern:
            parts.append(self.pattern_doc or f'matching {self.pattern}')
        if self.length is not None:
            parts.append(f'{self.length} values')
        if self.bounded:
            parts.append(('each ' if self.length is not None else '') + self.describe_range())
        return '; '.join(parts)

    def _number_ok(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def problem(self, value: Any, label: str, optional: bool = False) -> Optional[str]:
        """Why ``value`` breaks the rule (None when it does not); ``label`` names the field in the message."""
        if value is None:
            return None  # the declared type decides whether null is allowed
        null = ' or null' if optional else ''
        if self.choices and value not in self.choices:
            return f'{label} must be {self.describe_choices()}{null}, got {value!r}'
        if self.pattern and not (isinstance(value, str) and re.fullmatch(self.pattern, value)):
            return f'{label} must be {self.pattern_doc or "matching " + self.pattern}{null}, got {value!r}'
        if isinstance(value, (list, tuple)):
            if self.length is not None and len(value) != self.length:
                return f'{label} needs {self.length} values, got {len(value)}: {list(value)}'
            if self.bounded:
                bad = [v for v in value if not self._number_ok(v)]
                if bad:
                    return f'{label} values must be {self.describe_range()}, got {bad[0]!r} in {list(value)}'
            return None
        if self.bounded and not self._number_ok(value):
            return f'{label} must be {self.describe_range()}{null}, got {value!r}'
        return None


def setting(default: Any, help: str, factory: bool = False, **rule: Any) -> Any:  # noqa: A002 - argparse's word
    """Declare a setting: a dataclass field with its description (``metadata['help']``) and allowed values
    (``metadata['rule']``, keyword arguments of :class:`Rule`). ``factory``: ``default`` is a callable making it."""
    metadata: Dict[str, Any] = {'help': help}
    if rule:
        if 'choices' in rule:
            rule['choices'] = tuple(rule['choices'])
        metadata['rule'] = Rule(**rule)
    if factory:
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def rule_of(f: dataclasses.Field) -> Optional[Rule]:
    """The declared :class:`Rule` of a field (None: any value of its type)."""
    return f.metadata.get('rule')


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a declared field (factories called)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]


# ====================================================================================================== reflection
def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def iter_leaf_fields(cls: Any, prefix: str = '') -> Iterator[Tuple[str, Any, dataclasses.Field]]:
    """Yield ``(dotted_name, type, field)`` for every leaf (non-dataclass) field of a config class."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from iter_leaf_fields(tp, name + '.')
        else:
            yield name, tp, f


def _leaf_types(cls: type) -> Dict[str, Any]:
    return {name: tp for name, tp, _ in iter_leaf_fields(cls)}


def get_dotted(cfg: Any, name: str) -> Any:
    """Value of the dotted field ``name`` of ``cfg``."""
    obj = cfg
    for part in name.split('.'):
        obj = getattr(obj, part)
    return obj


def check_fields(obj: Any, prefix: str = '', where: str = '', skip: str = '') -> None:
    """Check every leaf field of the dataclass instance ``obj`` against its declared :class:`Rule`.

    Messages name the field as ``prefix + name`` (``optim.lr``) or, with ``where``, as ``where: name``
    (``bag a.mcap: window``); fields whose dotted name starts with ``skip`` (when given) are left out. Raises
    :class:`ConfigError` for the first field that breaks its rule.
    """
    for name, tp, f in iter_leaf_fields(type(obj)):
        rule = rule_of(f)
        if rule is None or (skip and name.startswith(skip)):
            continue
        label = f'{where}: {name}' if where else prefix + name
        msg = rule.problem(get_dotted(obj, name), label, optional=_strip_optional(tp)[1])
        if msg:
            raise ConfigError(msg)


def _unknown(name: str, known: Iterable[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f' (did you mean {", ".join(close)}?)' if close else ''
    return ConfigError(f'{source}: unknown configuration field {name!r}{hint}')


def _strip_optional(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


# ====================================================================================================== conversion
class RosText(str):
    """The text of a ``--ros-args -p name:=value``: read as YAML, except for string fields (kept verbatim, so that
    ``-p data.topics.rgb:=on`` stays ``'on'`` and ``-p out:=0755`` stays ``'0755'``)."""


def _yaml_text(text: str) -> Any:
    if not text.strip():
        return ''
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, name: str, source: str) -> Any:
    """Convert ``value`` (from YAML, a command-line string or :class:`RosText`) to the declared type ``tp``."""
    base, optional = _strip_optional(tp)
    if isinstance(value, RosText):
        text = str(value)
        quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in '"\''
        value = text if base is str and not quoted and text.strip().lower() not in ('null', '~') else _yaml_text(text)
    if value is None or (isinstance(value, str) and value.strip().lower() in ('null', 'none', '~') and optional):
        if optional:
            return None
        raise ConfigError(f'{source}: {name} must not be null')
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in ('true', 'yes', 'on', '1', 'false', 'no', 'off',
                                                                     '0'):
                return value.strip().lower() in ('true', 'yes', 'on', '1')
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            if isinstance(value, str):
                text = value.strip()
                try:
                    return int(text)
                except ValueError:
                    f = float(text)
                    if not f.is_integer():
                        raise
                    return int(f)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if base is Any:
            return value
        if typing.get_origin(base) in (list, List):
            (item_tp,) = typing.get_args(base) or (Any,)
            if isinstance(value, str):
                text = value.strip()
                if text.startswith('['):
                    value = yaml.safe_load(text)
                elif text == '':
                    value = []
                else:
                    value = [v.strip() for v in text.split(',')]
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise ValueError
            return [_coerce(v, item_tp, f'{name}[{i}]', source) for i, v in enumerate(value)]
    except (ValueError, TypeError, yaml.YAMLError):
        pass
    else:
        raise ConfigError(f'{source}: field {name} has unsupported type {tp!r}')  # pragma: no cover
    tname = getattr(base, '__name__', str(base))
    raise ConfigError(f'{source}: {name} expects {tname}{" or null" if optional else ""}, got {value!r}')


def set_dotted(cfg: Any, name: str, value: Any, source: str = 'override') -> None:
    """Set the dotted leaf field ``name`` of ``cfg`` to ``value`` converted to the declared type."""
    types = _leaf_types(type(cfg))
    if name not in types:
        raise _unknown(name, types, source)
    parts = name.split('.')
    obj = cfg
    for part in parts[:-1]:
        obj = getattr(obj, part)
    setattr(obj, parts[-1], _coerce(value, types[name], name, source))


def _flatten(d: Dict[str, Any], prefix: str, cls: type, out: Dict[str, Any], source: str) -> None:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in d.items():
        key = str(key)
        if '.' in key:  # dotted keys are allowed in files too
            head, _, rest = key.partition('.')
            if head in names and dataclasses.is_dataclass(hints[head]):
                _flatten({rest: value}, prefix + head + '.', hints[head], out, source)
                continue
        if key not in names:
            raise _unknown(prefix + key, [n for n, _, _ in iter_leaf_fields(cls, prefix)], source)
        if dataclasses.is_dataclass(hints[key]):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f'{source}: {prefix + key} must be a mapping, got {value!r}')
            _flatten(value, prefix + key + '.', hints[key], out, source)
        else:
            out[prefix + key] = value


def flatten_mapping(cls: type, d: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Nested (or dotted) mapping -> ``{dotted_leaf_name: value}``, validating names against ``cls``."""
    out: Dict[str, Any] = {}
    if d:
        if not isinstance(d, dict):
            raise ConfigError(f'{source}: expected a mapping at top level, got {type(d).__name__}')
        _flatten(d, '', cls, out, source)
    return out


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Nested plain-dict view of a config (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: Type[T], d: Dict[str, Any], source: str = 'config') -> T:
    """Build ``cls`` from defaults updated by the nested mapping ``d``."""
    cfg = cls()
    for name, value in flatten_mapping(cls, d, source).items():
        set_dotted(cfg, name, value, source)
    return cfg


def load_yaml_file(path: str) -> Dict[str, Any]:
    """Read a YAML mapping; a clear :class:`ConfigError` for a missing or malformed file."""
    try:
        with open(path, encoding='utf-8') as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f'config file {path!r} does not exist') from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f'config file {path!r} cannot be read: {exc}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path!r}: expected a mapping at top level')
    return data


# ====================================================================================================== ROS 2 args
def _ros_params_from_file(path: str) -> Dict[str, Any]:
    """Parameters of a ROS 2 params file: ``<node or /**>: {ros__parameters: {...}}`` (all nodes merged)."""
    data = load_yaml_file(path)
    params: Dict[str, Any] = {}
    for node, section in data.items():
        if isinstance(section, dict) and 'ros__parameters' in section:
            params.update(_flatten_plain(section['ros__parameters'] or {}))
        else:
            raise ConfigError(f'ROS params file {path!r}: node entry {node!r} has no ros__parameters')
    return params


def _flatten_plain(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten_plain(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def parse_ros_args(argv: Sequence[str]) -> Tuple[List[str], Dict[str, Any]]:
    """Split ``argv`` into ordinary arguments and ROS 2 parameter overrides (rclpy not needed).

    Recognised inside ``--ros-args ... [--]``: ``-p/--param name:=value`` (a :class:`RosText`, converted to the
    field's declared type by :func:`set_dotted`) and ``--params-file FILE``. Remappings (``-r``), ``--log-level``,
    ``--enclave`` and other ROS options are accepted and ignored. Returns ``(remaining_argv, {dotted_name: value})``.
    """
    rest: List[str] = []
    params: Dict[str, Any] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg != '--ros-args':
            rest.append(arg)
            i += 1
            continue
        i += 1
        while i < len(argv) and argv[i] != '--':
            opt = argv[i]
            if opt in ('-p', '--param'):
                if i + 1 >= len(argv):
                    raise ConfigError(f'--ros-args {opt} needs name:=value')
                item = argv[i + 1]
                if ':=' not in item:
                    raise ConfigError(f'--ros-args {opt} {item!r}: expected name:=value')
                name, _, text = item.partition(':=')
                params[name.strip()] = RosText(text)
                i += 2
            elif opt == '--params-file':
                if i + 1 >= len(argv):
                    raise ConfigError('--ros-args --params-file needs a file')
                params.update(_ros_params_from_file(argv[i + 1]))
                i += 2
            elif opt in ('-r', '--remap', '--log-level', '--enclave', '-e', '--log-config-file'):
                i += 2
            else:  # flags such as --disable-stdout-logs, --enable-rosout-logs
                i += 1
        if i < len(argv) and argv[i] == '--':
            i += 1
    return rest, params


# ====================================================================================================== argparse
def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--<dotted.name> VALUE`` for every leaf field of ``cls`` except the top-level I/O fields."""
    group = parser.add_argument_group('configuration overrides (any field; same names as in the YAML file)')
    for name, _tp, f in iter_leaf_fields(cls):
        if '.' not in name:
            continue
        rule = rule_of(f)
        allowed = rule.describe() if rule is not None else ''
        allowed = f'allowed: {allowed}; ' if allowed else ''
        group.add_argument(f'--{name}', dest=f'cfg:{name}', metavar='V', default=argparse.SUPPRESS,
                           help=(f"{f.metadata.get('help', '')} [{allowed}default: {field_default(f)!r}]"
                                 .replace('%', '%%')))


# ====================================================================================================== YAML doc
def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    if text.endswith('\n...'):
        text = text[:-4]
    return text.replace('\n...', '').strip()


def _plain(value: Any) -> Any:
    """Objects with an ``as_yaml()`` (per-bag specifications) in their YAML form."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.as_yaml() if hasattr(value, 'as_yaml') else value


def render_yaml(cfg: Any, title: str = '') -> str:
    """YAML text of ``cfg``, every field preceded by its description and its allowed values
    (``config/train*.yaml``)."""
    lines: List[str] = []
    if title:
        lines.extend(f'# {line}'.rstrip() for line in title.splitlines())
        lines.append('')

    def emit(obj: Any, indent: int) -> None:
        cls = type(obj)
        hints = _hints(cls)
        pad = ' ' * indent
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                doc = (hints[f.name].__doc__ or '').strip().splitlines()[0]
                lines.append(f'{pad}# {doc}')
                lines.append(f'{pad}{f.name}:')
                emit(value, indent + 2)
            else:
                rule = rule_of(f)
                allowed = rule.describe() if rule is not None else ''
                lines.append(f"{pad}# {f.metadata.get('help', '')}" + (f' [{allowed}]' if allowed else ''))
                lines.append(f'{pad}{f.name}: {_yaml_scalar(_plain(value))}')
        if indent:
            lines.append('')

    emit(cfg, 0)
    return '\n'.join(lines).rstrip() + '\n'
