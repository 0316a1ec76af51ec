"""ROS parameter descriptors from the one declaration of every setting (:mod:`realm_ros.pipeline.settings`)."""
from __future__ import annotations

from typing import Any, Iterable, List, MutableMapping, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from realm_ros.common.errors import RealmError
from realm_ros.pipeline.settings import Setting


class ParameterError(RealmError, ValueError):
    """A parameter given to a node at start-up has a value of the wrong type (names the parameter and its type)."""

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def descriptor(s: Setting) -> ParameterDescriptor:
    """The ROS parameter descriptor of a setting (type, description, read-only, choices, range)."""
    d = ParameterDescriptor(name=s.name, type=_TYPES[s.type], description=s.description, read_only=not s.runtime)
    if s.choices:
        d.additional_constraints = 'one of: ' + ', '.join(repr(c) for c in s.choices)
    if s.int_range is not None:
        d.integer_range = [IntegerRange(from_value=s.int_range[0], to_value=s.int_range[1], step=0)]
    if s.float_range is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(s.float_range[0]),
                                                     to_value=float(s.float_range[1]), step=0.0)]
    return d


def coerce_integer_overrides(overrides: Optional[MutableMapping[str, Any]],
                             declared: Iterable[Tuple[str, type]]) -> List[str]:
    """Start-up overrides (``-p name:=3``, params files, launch arguments) that give an integer for a double
    parameter become that double (ROS 2 would refuse ``3`` for a parameter declared as a double and end the node);
    ``declared``: ``(name, python type)`` of each parameter (float for doubles). Returns the names changed. Other
    type mismatches are left for the declaration to refuse."""
    from rclpy.parameter import Parameter
    changed: List[str] = []
    if not overrides:
        return changed
    for name, kind in declared:
        given = overrides.get(name)
        if kind is float and given is not None and given.type_ == Parameter.Type.INTEGER:
            overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(given.value))
            changed.append(name)
    return changed
