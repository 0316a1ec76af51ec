"""Configuration: documented defaults, YAML/CLI/--ros-args precedence, per-bag options, validation messages."""
import argparse
from pathlib import Path

import pytest
import yaml

from realm_ros.training import config as config_mod
from realm_ros.training.config import (BagSpec, ConfigError, DistillConfig, EventDataConfig, HeadsConfig,
                                       add_config_arguments, bag_data_config, build_config, config_from_dict,
                                       config_to_dict, iter_leaf_fields, parse_bag_arg, parse_ros_args,
                                       render_yaml, set_dotted)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('name,cls,title', [('train.yaml', DistillConfig, config_mod.DISTILL_TITLE),
                                            ('train_heads.yaml', HeadsConfig, config_mod.HEADS_TITLE)])
def test_shipped_yaml_documents_every_field_with_its_default(name, cls, title):
    text = (REPO / 'config' / name).read_text()
    assert text == render_yaml(cls(), title), 'regenerate with: python -m realm_ros.training.config config'
    loaded = yaml.safe_load(text)
    assert config_to_dict(config_from_dict(cls, loaded, name)) == config_to_dict(cls())
    lines = text.splitlines()
    for dotted, _, f in iter_leaf_fields(cls):
        leaf = dotted.split('.')[-1]
        idx = [i for i, ln in enumerate(lines) if ln.strip().startswith(f'{leaf}:')]
        assert idx, f'{dotted} missing from {name}'
        assert any(lines[i - 1].strip().startswith('#') and len(lines[i - 1].strip()) > 3 for i in idx), dotted
        assert f.metadata.get('help'), f'{dotted} has no help text'


@pytest.mark.parametrize('name,cls', [('train_tiny.yaml', DistillConfig), ('train_heads_tiny.yaml', HeadsConfig)])
def test_tiny_configs_are_valid(name, cls):
    cfg = config_from_dict(cls, yaml.safe_load((REPO / 'config' / name).read_text()), name)
    assert cfg.run.device == 'cpu' and cfg.data.image_size % 14 == 0 and cfg.optim.epochs <= 5


def _parse(cls, argv):
    rest, params = parse_ros_args(argv)
    p = argparse.ArgumentParser()
    for opt in ('--config', '--teacher', '--out'):
        p.add_argument(opt)
    p.add_argument('--bags', nargs='+')
    p.add_argument('--resume', action='store_true')
    add_config_arguments(p, cls)
    return build_config(cls, p.parse_args(rest), params)


def test_precedence_file_ros_params_cli(tmp_path):
    f = tmp_path / 'c.yaml'
    f.write_text('optim: {lr: 0.5, epochs: 4}\ndata:\n  window: time\n  topics: {rgb: /cam/rgb}\n')
    pf = tmp_path / 'p.yaml'
    pf.write_text('train_from_bag:\n  ros__parameters:\n    optim: {epochs: 5, batch_size: 3}\n')
    cfg = _parse(DistillConfig, ['--config', str(f), '--teacher', 't.pth', '--out', 'o', '--bags', 'a', 'b::stride=5',
                                 '--optim.batch_size', '7', '--ros-args', '--params-file', str(pf), '-p',
                                 'optim.lr:=0.25', '-p', 'loss.mask_dilation_epochs:=[1, 2, 3]', '-r', 'x:=y',
                                 '--log-level', 'debug', '--', '--resume'])
    assert cfg.optim.lr == 0.25           # -p beats the file
    assert cfg.optim.epochs == 5          # params file beats the config file
    assert cfg.optim.batch_size == 7      # explicit option beats everything
    assert cfg.data.window == 'time' and cfg.data.topics.rgb == '/cam/rgb'
    assert cfg.loss.mask_dilation_epochs == [1, 2, 3] and cfg.resume
    assert cfg.bags == [BagSpec('a'), BagSpec('b', {'stride': 5})]


def test_per_bag_options():
    spec = parse_bag_arg('x.mcap::window=time,window_ms=33,topics.events=/ev,extrinsics=identity')
    d = bag_data_config(EventDataConfig(), spec)
    assert (d.window, d.window_ms, d.topics.events, d.extrinsics) == ('time', 33.0, '/ev', 'identity')
    assert EventDataConfig().window == 'count'  # the shared section is untouched
    spec = parse_bag_arg({'path': 'y.db3', 'stride': 5, 'split': 'val'})
    assert bag_data_config(EventDataConfig(), spec).split == 'val'
    with pytest.raises(ConfigError, match=r"bag z: unknown configuration field 'windw'.*window"):
        bag_data_config(EventDataConfig(), parse_bag_arg('z::windw=time'))
    with pytest.raises(ConfigError, match="window must be 'count' or 'time'"):
        bag_data_config(EventDataConfig(), parse_bag_arg('z::window=sometimes'))


def test_validation_messages_name_the_field():
    cfg = DistillConfig()
    with pytest.raises(ConfigError, match='optim.lrr.*did you mean optim.lr'):
        set_dotted(cfg, 'optim.lrr', 1)
    with pytest.raises(ConfigError, match='optim.epochs expects int'):
        set_dotted(cfg, 'optim.epochs', '2.5')
    with pytest.raises(ConfigError, match='run.tensorboard expects bool'):
        set_dotted(cfg, 'run.tensorboard', 'maybe')
    set_dotted(cfg, 'data.min_events', 'null')
    assert cfg.data.min_events is None
    set_dotted(cfg, 'optim.lr', '1e-4')  # YAML 1.1 would read this as a string
    assert cfg.optim.lr == 1e-4
    for argv, msg in ((['--optim.accumulation', '0'], 'accumulation must be >= 1'),
                      (['--loss.mask_dilation_epochs', '1,2'], 'same length'),
                      (['--data.rgb_to_event_rotation', '[0, 0, 0, 2]'], 'not a unit quaternion'),
                      (['--run.precision', 'fp8'], 'run.precision')):
        with pytest.raises(ConfigError, match=msg):
            _parse(DistillConfig, ['--teacher', 't', '--out', 'o', '--bags', 'a', *argv])
    with pytest.raises(ConfigError, match='class_weights has 2 values'):
        _parse(HeadsConfig, ['--teacher', 't', '--out', 'o', '--bags', 'a', '--seg_loss.class_weights', '1,2',
                             '--ros-args', '-p', 'task:=segmentation'])
    with pytest.raises(ConfigError, match='no bags given'):
        _parse(DistillConfig, ['--teacher', 't', '--out', 'o'])


@pytest.mark.parametrize('prog, cls', [('train_from_bag', DistillConfig), ('train_heads', HeadsConfig)])
def test_help_gives_a_torchrun_command_that_works_in_a_colcon_install(prog, cls):
    from realm_ros.training.cli import build_parser
    text = build_parser(prog, cls, 'description').format_help()
    # `$(which train_from_bag)` is empty in a colcon install (scripts live in lib/realm_ros, not on PATH)
    assert '$(which' not in text
    assert f'torchrun --nproc_per_node N -m realm_ros.nodes.{prog} ...' in text
    import importlib
    assert callable(importlib.import_module(f'realm_ros.nodes.{prog}').main)  # the module the command names


# ------------------------------------------------------------------------------------------------ declarations
def _leaves(cls):
    import typing

    from realm_ros.training.fields import _strip_optional
    for dotted, tp, f in iter_leaf_fields(cls):
        base, optional = _strip_optional(tp)
        item = typing.get_args(base)[0] if typing.get_origin(base) is list and typing.get_args(base) else None
        yield dotted, base, item, optional, f


@pytest.mark.parametrize('cls', [DistillConfig, HeadsConfig])
def test_every_setting_is_declared_with_description_and_allowed_values(cls):
    from realm_ros.training.fields import rule_of
    for dotted, base, item, _, f in _leaves(cls):
        assert len(f.metadata.get('help', '')) > 10, f'{dotted}: no description'
        number = base in (int, float) or item in (int, float)
        rule = rule_of(f)
        if number:   # every number says what range it allows (or that it has none)
            assert rule is not None and (rule.bounded or rule.unbounded or rule.choices), f'{dotted}: no range'
        if rule is not None and rule.choices:
            assert all(isinstance(c, base) for c in rule.choices), dotted


def _outside(rule, tp):
    """A value just outside the declared range (None when the range is open on that side)."""
    step = 1 if tp is int else 0.5
    if rule.ge is not None:
        return tp(rule.ge - step)
    if rule.gt is not None:
        return tp(rule.gt)
    if rule.le is not None:
        return tp(rule.le + step)
    return tp(rule.lt)


def _inside(rule, tp):
    step = 1 if tp is int else 0.25
    for value in (rule.ge, None if rule.gt is None else rule.gt + step,
                  rule.le, None if rule.lt is None else rule.lt - step):
        if value is not None:
            return tp(value)


@pytest.mark.parametrize('cls', [DistillConfig, HeadsConfig])
def test_validation_is_derived_from_the_declarations(cls):
    """For every declared rule: a value outside is refused with a message naming the field and the rule, a value
    at the edge passes the field checks."""
    from realm_ros.training.fields import check_fields, rule_of
    checked = 0
    for dotted, base, item, _, f in _leaves(cls):
        rule = rule_of(f)
        if rule is None or not (rule.choices or rule.pattern or rule.bounded or rule.length is not None):
            continue
        label = dotted if not dotted.startswith('data.') else 'data: ' + dotted[5:]
        bad_values = []
        if rule.choices:
            bad_values.append((f'not-{rule.choices[0]}', rule.describe_choices()))
        if rule.pattern:
            bad_values.append(('gpu0', rule.pattern_doc))
        if rule.bounded and base in (int, float):
            bad_values.append((_outside(rule, base), rule.describe_range()))
        if rule.bounded and item in (int, float):
            bad_values.append(([_outside(rule, item)] * (rule.length or 1), rule.describe_range()))
        if rule.length is not None:
            bad_values.append(([0.5] * (rule.length + 1), f'needs {rule.length} values'))
        assert bad_values, dotted
        for bad, words in bad_values:
            cfg = cls()
            obj = cfg
            for part in dotted.split('.')[:-1]:
                obj = getattr(obj, part)
            setattr(obj, dotted.split('.')[-1], bad)
            with pytest.raises(ConfigError) as exc:
                config_mod.validate_config(cfg, require_io=False)
            assert label in str(exc.value) and words in str(exc.value), (dotted, str(exc.value))
            checked += 1
        if rule.bounded and base in (int, float):
            cfg = cls()
            set_dotted(cfg, dotted, _inside(rule, base))
            check_fields(cfg, skip='data.')
            check_fields(cfg.data, where='data')
    assert checked > 40


def test_ros_param_values_follow_the_declared_type():
    rest, params = parse_ros_args(['--print-config', '--ros-args', '-p', 'data.topics.rgb:=on', '-p', 'out:=0755',
                                   '-p', 'optim.lr:=1e-4', '-p', 'data.min_events:=null', '-p',
                                   'optim.betas:=[0.8, 0.9]', '-p', 'run.tensorboard:=false', '-p',
                                   "teacher:='dune.pth'", '-p', 'bags:=[a.mcap, b.mcap::stride=3]', '--'])
    assert rest == ['--print-config']
    cfg = DistillConfig()
    for name, value in params.items():
        set_dotted(cfg, name, value, '--ros-args')
    assert cfg.data.topics.rgb == 'on' and cfg.out == '0755'        # strings stay text (YAML: True, 493)
    assert cfg.optim.lr == 1e-4 and cfg.data.min_events is None and cfg.optim.betas == [0.8, 0.9]
    assert cfg.run.tensorboard is False and cfg.teacher == 'dune.pth'
    assert cfg.bags == ['a.mcap', 'b.mcap::stride=3']
    with pytest.raises(ConfigError, match='--ros-args: optim.epochs expects int'):
        set_dotted(cfg, 'optim.epochs', parse_ros_args(['--ros-args', '-p', 'optim.epochs:=many'])[1]['optim.epochs'],
                   '--ros-args')


def test_help_and_yaml_show_the_allowed_values():
    from realm_ros.training.cli import build_parser
    text = ' '.join(build_parser('train_from_bag', DistillConfig, 'd').format_help().split())
    assert 'micro-batches per optimiser step' in text and 'allowed: >= 1; default: 4' in text
    assert "allowed: one of 'auto', 'fp32', 'bf16', 'fp16'; default: 'auto'" in text
    yaml_text = (REPO / 'config' / 'train.yaml').read_text()
    assert "in [0, 1)]\n  val_fraction: 0.05" in yaml_text
    assert "[2 values; each in [0, 1)]\n  betas: [0.9, 0.999]" in yaml_text
    assert "[one of 'depth', 'segmentation']\ntask: depth" in (REPO / 'config' / 'train_heads.yaml').read_text()
