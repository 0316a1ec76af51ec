"""ROS parameter descriptors from the one declaration of every setting (:mod:`realm_ros.pipeline.settings`)."""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from realm_ros.pipeline.settings import Setting

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
