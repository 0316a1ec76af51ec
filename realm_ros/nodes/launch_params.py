"""Parameter merging of ``launch/perception.launch.py`` (pure Python: no launch, launch_ros or rclpy needed).

Precedence, lowest first:

1. the package's ``config/perception.yaml`` (the ``params_file`` default),
2. with ``sim:=true``: the simulated rig's defaults (the miniature checkpoints and the window they were distilled
   with) - but only for what a *user's* ``params_file`` leaves unset: ``window.*`` as a group (a file that sets any
   ``window.*`` parameter keeps its whole window configuration) and each ``checkpoints.*`` on its own,
3. the user's ``params_file``,
4. launch arguments that are not empty (``realm_checkpoint:=...``, ``device:=...``, ...).

``perception_parameters`` returns the ``parameters=`` list for the perception node: ``[params_file, overrides]``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Set

import yaml

from realm_ros.common.errors import RealmError

#: launch argument -> node parameter it overrides when non-empty
PARAMETER_ARGUMENTS = {
    'realm_checkpoint': 'checkpoints.realm',
    'dune_checkpoint': 'checkpoints.dune',
    'depth_head_checkpoint': 'checkpoints.depth_head',
    'seg_head_checkpoint': 'checkpoints.seg_head',
    'mast3r_checkpoint': 'checkpoints.mast3r',
    'device': 'device',
    'frame_id': 'frame_id',
}

#: parameters that are kept or replaced together (a window needs its mode and its size)
PARAMETER_GROUPS = ('window.',)


class ParamsFileError(RealmError, ValueError):
    """The ``params_file`` cannot be read as a ROS 2 parameter file; the message names the file."""


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def _node_pattern(key: str) -> 're.Pattern[str]':
    """ROS 2 parameter-file node key (``/**``, ``/ns/name``, ``/**/name``, ``name``, ``*``) as a regex."""
    parts = []
    for token in key.strip().strip('/').split('/'):
        if token == '**':            # any number of namespace tokens, none included
            parts.append('(?:/[^/]+)*')
        else:                        # '*' inside a token: any characters but '/'
            parts.append('/' + re.escape(token).replace('\\*', '[^/]*'))
    return re.compile(''.join(parts) + '$')


def _fully_qualified(node_name: str, namespace: str) -> str:
    ns = namespace.strip('/')
    return '/' + '/'.join(p for p in (ns, node_name.strip('/')) if p)


def params_file_values(path: str, node_name: str = 'perception_node', namespace: str = '') -> Dict[str, Any]:
    """The parameters ``path`` gives the node ``/<namespace>/<node_name>`` (dotted names; nested YAML flattened).

    Raises:
        ParamsFileError: unreadable file, invalid YAML, or not a ``<node>: {ros__parameters: {...}}`` mapping.
    """
    try:
        with open(os.path.expanduser(path), encoding='utf-8') as fh:
            doc = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsFileError(f'params_file {path!r} cannot be read: {exc}') from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ParamsFileError(f'params_file {path!r} is not a mapping of node names to ros__parameters')
    fq = _fully_qualified(node_name, namespace)
    values: Dict[str, Any] = {}
    for key, body in doc.items():
        if not isinstance(body, Mapping) or not isinstance(body.get('ros__parameters'), Mapping):
            raise ParamsFileError(f'params_file {path!r}: entry {key!r} has no ros__parameters mapping')
        pattern = _node_pattern(str(key))
        if pattern.match(fq) or pattern.match('/' + node_name.strip('/')):
            values.update(_flatten(body['ros__parameters']))
    return values


def _is_set(value: Any) -> bool:
    return not (value is None or value == '')


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def user_parameter_names(params_file: str, default_params_file: str, node_name: str = 'perception_node',
                         namespace: str = '') -> Set[str]:
    """Names of the parameters a user's ``params_file`` sets to a non-empty value (none for the package default)."""
    if not params_file or (default_params_file and _same_file(params_file, default_params_file)):
        return set()
    return {k for k, v in params_file_values(params_file, node_name, namespace).items() if _is_set(v)}


def perception_parameters(arguments: Mapping[str, str], default_params_file: str,
                          sim_defaults: Optional[Mapping[str, Any]] = None) -> List[Any]:
    """The ``parameters=`` list of the perception node for the given launch arguments (see module docstring).

    Args:
        arguments: launch argument values (strings, as performed): ``params_file``, ``node_name``, ``namespace``,
            ``use_sim_time``, ``image_topic`` and the keys of :data:`PARAMETER_ARGUMENTS`; missing = empty.
        default_params_file: the shipped ``config/perception.yaml`` (its values never block the sim defaults).
        sim_defaults: parameter -> value applied with ``sim:=true`` where the user's file leaves it unset
            (``None`` when not in sim mode).
    """
    get = lambda name: str(arguments.get(name, '') or '')  # noqa: E731
    overrides: Dict[str, Any] = {param: get(arg) for arg, param in PARAMETER_ARGUMENTS.items() if get(arg)}
    overrides['use_sim_time'] = get('use_sim_time').strip().lower() in ('1', 'true', 'yes', 'on')
    if get('image_topic'):
        overrides['keyframe.source'] = 'image'
    params_file = get('params_file')
    if sim_defaults:
        user = user_parameter_names(params_file, default_params_file, get('node_name') or 'perception_node',
                                    get('namespace'))
        for name, value in sim_defaults.items():
            group = next((g for g in PARAMETER_GROUPS if name.startswith(g)), None)
            taken = any(u.startswith(group) for u in user) if group else name in user
            if name not in overrides and not taken:
                overrides[name] = value
    return [params_file, overrides] if params_file else [overrides]
