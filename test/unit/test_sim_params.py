"""The one declaration table of sim_event_camera's parameters, and everything that must agree with it."""
from pathlib import Path

import pytest

from realm_ros.sim.esim import EsimConfig
from realm_ros.sim.params import (DEMO_RIG, PARAMS_BY_NAME, SIM_PARAMETERS, check_values, default_values, demo_rig,
                                  sim_config_from_values, yaml_text)
from realm_ros.sim.simulator import SimConfig

ROOT = Path(__file__).resolve().parents[2]


def test_table_is_well_formed():
    names = [p.name for p in SIM_PARAMETERS]
    assert len(names) == len(set(names))
    for p in SIM_PARAMETERS:
        assert p.type in (bool, int, float, str) and p.description
        if p.low is not None:
            assert p.type in (int, float) and p.low <= p.default <= p.high, p.name
        if p.choices:
            assert p.default in p.choices
        assert p.check(p.default) == p.default


def test_check_values_names_the_offending_parameter():
    with pytest.raises(ValueError, match="'width'.*got 4"):
        check_values({'width': 4})
    with pytest.raises(ValueError, match="'rate' must be float"):
        check_values({'rate': 'fast'})
    with pytest.raises(ValueError, match="'trajectory' must be one of"):
        check_values({'trajectory': 'spiral'})
    with pytest.raises(ValueError, match='unknown sim_event_camera parameter.*bogus'):
        check_values({'bogus': 1})
    with pytest.raises(ValueError, match="'loop' must be bool"):
        check_values({'loop': 1})
    assert check_values({'rate': 2})['rate'] == 2.0          # ints are accepted for doubles, as ROS does


def test_sim_config_from_defaults_and_overrides():
    cfg = sim_config_from_values({})
    assert (cfg.width, cfg.height, cfg.duration_s, cfg.trajectory, cfg.speed_mps) == (224, 224, 3.0, 'loop', 8.0)
    cfg = sim_config_from_values({'contrast_threshold': 0.3, 'seed': 4, 'baseline_m': 0.1})
    assert cfg.esim == EsimConfig(contrast_pos=0.3, contrast_neg=0.3) and cfg.seed == 4 and cfg.baseline_m == 0.1
    assert isinstance(cfg, SimConfig)


def test_yaml_config_holds_the_table_defaults():
    text = (ROOT / 'config' / 'sim_camera.yaml').read_text()
    assert text == yaml_text(), 'config/sim_camera.yaml is stale: regenerate it with realm_ros.sim.params.yaml_text()'
    yaml = pytest.importorskip('yaml')
    loaded = yaml.safe_load(text)['sim_event_camera']['ros__parameters']
    assert loaded == default_values()
    assert all(type(loaded[k]) is PARAMS_BY_NAME[k].type for k in loaded)


def test_node_docs_and_launch_name_only_declared_parameters():
    node_src = (ROOT / 'realm_ros' / 'nodes' / 'sim_camera_node.py').read_text()
    doc = node_src.split('"""')[1]
    for p in SIM_PARAMETERS:
        assert f'``{p.name}``' in doc, f'{p.name} is not documented in sim_camera_node'
    # the launch file and the demo hand the simulator the demo rig, whose names and values check_values checks
    assert 'demo_rig(' in (ROOT / 'launch' / 'perception.launch.py').read_text()
    assert 'sim_params = demo_rig(' in (ROOT / 'realm_ros' / 'demo.py').read_text()
    assert set(DEMO_RIG) <= set(PARAMS_BY_NAME)


def test_demo_rig_is_a_checked_drive_whose_length_follows_the_trajectory():
    rig = demo_rig()
    assert rig == dict(DEMO_RIG, duration_s=32.0) and rig['trajectory'] == 'drive'
    assert sim_config_from_values(rig).trajectory == 'drive'
    assert demo_rig('loop')['duration_s'] == 4.0 and demo_rig('loop', duration_s=9)['duration_s'] == 9.0
    assert demo_rig(seed=5, speed_mps=3)['seed'] == 5 and demo_rig(speed_mps=3)['speed_mps'] == 3.0
    with pytest.raises(ValueError, match="parameter 'trajectory' must be one of"):
        demo_rig('circle')
    with pytest.raises(ValueError, match="parameter 'seed' must be int"):
        demo_rig(seed=1.5)  # type: ignore[arg-type]
