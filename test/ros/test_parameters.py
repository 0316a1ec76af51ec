"""Start-up parameter overrides: an integer given for a double parameter becomes that double (ROS 2 would refuse it
at declaration and end the node); nothing else is touched."""
import pytest

pytest.importorskip('rclpy')

from rclpy.parameter import Parameter

from realm_ros.nodes.parameters import coerce_integer_overrides


def test_integer_overrides_of_double_parameters_become_doubles():
    overrides = {'rate': Parameter('rate', Parameter.Type.INTEGER, 11),
                 'count': Parameter('count', Parameter.Type.INTEGER, 5),
                 'scale': Parameter('scale', Parameter.Type.DOUBLE, 0.5),
                 'name': Parameter('name', Parameter.Type.STRING, '3'),
                 'other': Parameter('other', Parameter.Type.INTEGER, 2)}
    declared = [('rate', float), ('count', int), ('scale', float), ('name', float), ('missing', float)]
    assert coerce_integer_overrides(overrides, declared) == ['rate']
    assert overrides['rate'].type_ == Parameter.Type.DOUBLE and overrides['rate'].value == 11.0
    assert overrides['count'].type_ == Parameter.Type.INTEGER and overrides['count'].value == 5
    assert overrides['scale'].value == 0.5
    assert overrides['name'].type_ == Parameter.Type.STRING          # a string stays a string: refused at declaration
    assert overrides['other'].type_ == Parameter.Type.INTEGER        # not declared here: untouched
    assert coerce_integer_overrides(None, declared) == [] and coerce_integer_overrides({}, declared) == []
