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
