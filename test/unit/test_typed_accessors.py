"""Typed accessors added when the sim, heads and node modules were made type-clean: they return what the old
untyped code returned and name what is missing instead of failing on ``None``."""
import numpy as np
import pytest

from realm_ros.sim.camera import PinholeCamera, make_transform
from realm_ros.sim.live import ProgressiveSequence
from realm_ros.sim.params import SIM_PARAMETERS, check_values, checked_value, sim_config_from_values


def test_progressive_sequence_cameras_after_meta_only():
    cfg = sim_config_from_values({'width': 48, 'height': 32, 'duration_s': 0.2})
    prog = ProgressiveSequence(cfg, 1000)
    with pytest.raises(RuntimeError, match='set_meta'):
        prog.cameras()
    ev = PinholeCamera(width=48, height=32, fx=40.0, fy=40.0, cx=24.0, cy=16.0)
    rgb = PinholeCamera(width=48, height=32, fx=50.0, fy=50.0, cx=24.0, cy=16.0)
    prog.set_meta(ev, rgb, np.eye(4), 6)
    assert prog.cameras() == (ev, rgb)


def test_checked_value_types_and_sim_config():
    values = check_values({'width': 64, 'hfov_deg': 90, 'trajectory': 'drive'})
    assert checked_value(values, 'width', int) == 64
    assert checked_value(values, 'hfov_deg', float) == 90.0       # an int given for a float parameter
    with pytest.raises(TypeError, match="'width' is int, expected float"):
        checked_value(values, 'width', float)
    with pytest.raises(TypeError, match="'loop' is bool, expected int"):
        checked_value(values, 'loop', int)
    cfg = sim_config_from_values({'width': 64, 'hfov_deg': 90, 'trajectory': 'drive', 'contrast_threshold': 0.3})
    assert (cfg.width, cfg.hfov_deg, cfg.trajectory) == (64, 90.0, 'drive')
    assert cfg.esim.contrast_pos == cfg.esim.contrast_neg == 0.3
    assert all(type(checked_value(check_values({}), p.name, p.type)) is p.type for p in SIM_PARAMETERS)


def test_param_range_and_choices_checks():
    by_name = {p.name: p for p in SIM_PARAMETERS}
    with pytest.raises(ValueError, match=r"'width' must be in \[8, 2048\]"):
        by_name['width'].check(4)
    with pytest.raises(ValueError, match="'trajectory' must be one of"):
        by_name['trajectory'].check('sideways')
    assert by_name['cache_dir'].check('/tmp/x') == '/tmp/x'          # strings have no range


def test_make_transform_takes_a_tuple():
    T = make_transform(np.eye(3), (1.0, 2.0, 3.0))
    assert T.shape == (4, 4) and T[:3, 3].tolist() == [1.0, 2.0, 3.0] and T[3].tolist() == [0, 0, 0, 1]


def test_bridge_tokens_names_a_missing_output():
    torch = pytest.importorskip('torch')
    from realm_ros.models.heads import bridge_tokens
    out = {'x_prenorm_clstoken': torch.zeros(2, 4), 'x_prenorm_patchtokens': torch.ones(2, 3, 4), 'masks': None}
    tokens = bridge_tokens(out, 'prenorm')
    assert tokens.shape == (2, 4, 4) and tokens[:, 0].eq(0).all() and tokens[:, 1:].eq(1).all()
    with pytest.raises(ValueError, match="no tensor 'x_norm_patchtokens'"):
        bridge_tokens(out, 'teacher_norm_inverse', torch.ones(4), torch.zeros(4))
