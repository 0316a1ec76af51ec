"""One declaration of every perception-node setting: the table, its validation and config/perception.yaml agree."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from realm_ros.pipeline import settings
from realm_ros.pipeline.settings import PERCEPTION_SETTINGS, SETTING_BY_NAME, validate

REPO = Path(__file__).resolve().parents[2]


def test_every_setting_is_described_typed_and_in_range():
    assert len(SETTING_BY_NAME) == len(PERCEPTION_SETTINGS)               # no name declared twice
    for s in PERCEPTION_SETTINGS:
        assert s.type in (bool, int, float, str) and len(s.description) > 10, s.name
        assert s.check(s.default) is None, s.name
        if s.int_range:
            assert s.type is int
        if s.float_range:
            assert s.type is float


def test_config_file_holds_every_setting_with_its_default():
    params = yaml.safe_load((REPO / 'config' / 'perception.yaml').read_text())['/**']['ros__parameters']
    assert sorted(set(params) ^ set(SETTING_BY_NAME)) == []
    for name, value in params.items():
        default = SETTING_BY_NAME[name].default
        assert type(value) is type(default) and value == default, (name, value, default)


def test_validation_names_the_setting():
    assert validate({})['window.count'] == 150_000
    with pytest.raises(ValueError, match='window.mode'):
        validate({'window.mode': 'frames'})
    with pytest.raises(ValueError, match=r'window.count: .* outside'):
        validate({'window.count': 5})
    with pytest.raises(ValueError, match='expected int'):
        validate({'window.count': 'many'})
    with pytest.raises(ValueError, match='unknown setting'):
        validate({'window.size': 3})
    with pytest.raises(ValueError, match='exceeds buffer.max_events'):
        validate({'window.count': 3_000_000})
    assert validate({'window.duration_ms': 50})['window.duration_ms'] == 50.0         # ints accepted for floats


def test_settings_map_onto_the_core_configuration():
    from realm_ros.pipeline.core import PipelineConfig, RUNTIME_FIELDS
    from realm_ros.pipeline.stream import StreamSettings
    values = validate({'heads.semantic': False, 'window.duration_ms': 12.5, 'stream.change_window': 7})
    get = values.__getitem__
    runtime = settings.pipeline_runtime_settings(get)
    assert set(runtime) <= set(RUNTIME_FIELDS) and runtime['heads'] == ('depth', 'points', 'pose')
    PipelineConfig(**runtime)
    assert StreamSettings(**settings.stream_settings(get)).change_window == 7
    assert settings.window_settings(get)['duration_ns'] == 12_500_000
    assert settings.stream_settings(get, {'stream.change_window': 9})['change_window'] == 9      # pending wins
    K = settings.fallback_intrinsics(get, 640, 480)
    assert np.isclose(K[0, 0], 320 / np.tan(np.radians(35))) and K[0, 2] == 319.5 and K[1, 2] == 239.5


def test_parameter_changes_are_checked_like_the_node_does():
    values = validate({})
    get = values.__getitem__
    assert settings.check_changes({'window.count': 1000}, get) is None
    assert 'is not one of' in settings.check_changes({'window.mode': 'frames'}, get)
    assert 'exceeds buffer.max_events' in settings.check_changes({'window.count': 3_000_000}, get)
    assert settings.check_changes({'window.count': 3_000_000, 'buffer.max_events': 4_000_000}, get) is None
    assert 'outside' in settings.check_changes({'stream.change_fraction': 0.2}, get)

    class NoPose:
        config = None

        def missing_for_head(self, head):
            return 'no DUNE-MASt3R checkpoint' if head == 'pose' else ''

        def validate_runtime_changes(self, config):
            raise ValueError('depth colour range must satisfy 0 < min < max')
    import dataclasses
    from realm_ros.pipeline.core import PipelineConfig
    NoPose.config = PipelineConfig()
    assert 'cannot be enabled: no DUNE-MASt3R' in settings.check_changes({'heads.pose': True}, get, NoPose())
    assert '0 < min < max' in settings.check_changes({'depth.color_min_m': 100.0}, get, NoPose())
    assert dataclasses.is_dataclass(NoPose.config)


def test_unknown_setting_names_with_suggestions():
    from realm_ros.pipeline.settings import describe_unknown, unknown_setting_names
    unknown = unknown_setting_names(['window.count', 'windw.count', 'use_sim_time', 'qos_overrides./x.depth',
                                     'no_such_thing'])
    assert list(unknown) == ['no_such_thing', 'windw.count'] and unknown['windw.count'][0] == 'window.count'
    assert unknown['no_such_thing'] == []
    assert describe_unknown(unknown) == ('no_such_thing, windw.count (did you mean '
                                         + ' or '.join(unknown['windw.count']) + '?)')

