"""Launch the REALM perception node (optionally with the simulated event camera and RViz).

Examples::

    ros2 launch realm_ros perception.launch.py events_topic:=/event_camera/events \
        realm_checkpoint:=/path/realm.safetensors dune_checkpoint:=/path/dune_vitbase14_448_paper.pth rviz:=true
    ros2 launch realm_ros perception.launch.py sim:=true rviz:=true      # no camera needed
    ros2 launch realm_ros perception.launch.py sim:=true image_topic:=/rgb/image_raw \
        image_camera_info_topic:=/rgb/camera_info                          # cross-modal RGB keyframes

``sim:=true`` runs the simulated rig of ``realm-demo`` (a held-out street scene driven forward at 2 m/s, 32 s in a
loop; ``sim_trajectory``, ``sim_speed``, ``sim_seed``, ``sim_seconds`` change it). Arguments left empty keep the
value of ``params_file`` (config/perception.yaml by default). With ``sim:=true`` the
shipped miniature checkpoints and its time window are used for whatever the arguments and a user's ``params_file``
leave unset (a file that sets any ``window.*`` keeps its window; see realm_ros/nodes/launch_params.py). The node
configures and activates itself (parameter ``autostart``); with a lifecycle manager set ``autostart:=false``.
"""

import os
import tempfile

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'realm_ros'
#: launch argument of each shipped miniature checkpoint role (sim:=true)
SIM_ROLES = {'realm_checkpoint': 'realm', 'dune_checkpoint': 'teacher', 'depth_head_checkpoint': 'depth_head',
             'seg_head_checkpoint': 'seg_head', 'mast3r_checkpoint': 'mast3r'}


def _share() -> str:
    """Installed share folder of realm_ros, or the source tree when running from a checkout."""
    try:
        return get_package_share_directory(PACKAGE)
    except PackageNotFoundError:
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_true(value: str) -> bool:
    return value.strip().lower() in ('1', 'true', 'yes', 'on')


def _rviz_config_for(path: str, namespace: str, node_name: str, frame_id: str) -> str:
    """Copy of the RViz file with topics under ``/<namespace>/<node_name>/`` and the fixed frame = ``frame_id``."""
    text = open(path, encoding='utf-8').read()
    prefix = '/' + '/'.join(p for p in (namespace.strip('/'), node_name) if p) + '/'
    text = text.replace('/perception_node/', prefix)
    if frame_id:
        text = text.replace('Fixed Frame: event_camera', f'Fixed Frame: {frame_id}')
    fd, out = tempfile.mkstemp(prefix='realm_', suffix='.rviz')
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.write(text)
    return out


def _sim_defaults() -> dict:
    """The simulated rig comes with the miniature REALM trained on it (models/README.md): its checkpoints and the
    window it was distilled with. Applied only where the arguments and a user's params_file leave them unset."""
    from realm_ros.miniature.recipe import SHIPPED_FILES, DistillRecipe
    from realm_ros.nodes.launch_params import PARAMETER_ARGUMENTS
    defaults = {PARAMETER_ARGUMENTS[arg]: f'package://{PACKAGE}/models/{SHIPPED_FILES[role]}'
                for arg, role in SIM_ROLES.items()}
    defaults.update({'window.mode': 'time', 'window.duration_ms': float(DistillRecipe().window_ms)})
    return defaults


def _sim_rig(get) -> dict:
    """The simulator's parameters for sim:=true: the rig of ``realm-demo`` (a held-out scene driven forward at 2 m/s,
    32 s in a loop; realm_ros/sim/params.py) with the ``sim_*`` arguments that are set."""
    from realm_ros.sim.params import demo_rig

    def number(name: str, kind):
        text = get(name).strip()
        if not text:
            return None
        try:
            return kind(text)
        except ValueError:
            raise RuntimeError(f'{name}:={text!r} is not a{"n integer" if kind is int else " number"}') from None
    try:
        return demo_rig(get('sim_trajectory') or None, number('sim_seed', int), number('sim_speed', float),
                        number('sim_seconds', float))
    except ValueError as exc:
        raise RuntimeError(f'sim_* launch arguments: {exc}') from None


def _require_rviz2() -> None:
    """rviz:=true needs the rviz2 package. Checked before any node is started: launch would otherwise start the
    perception node and the simulator, fail on rviz2, exit and leave both running without a parent."""
    try:
        get_package_share_directory('rviz2')
    except PackageNotFoundError:
        raise RuntimeError("rviz:=true, but the ROS package 'rviz2' is not installed (e.g. "
                           "sudo apt install ros-$ROS_DISTRO-rviz2) or its install is not sourced; "
                           'launch without rviz:=true, or run RViz elsewhere with config/realm.rviz') from None


def _nodes(context, *args, **kwargs):
    """Build the nodes once the launch arguments are known (empty arguments do not override the params file)."""
    from realm_ros.nodes.launch_params import PARAMETER_ARGUMENTS, perception_parameters
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    if _is_true(get('rviz')):
        _require_rviz2()
    names = set(PARAMETER_ARGUMENTS) | {'params_file', 'node_name', 'namespace', 'use_sim_time', 'image_topic'}
    parameters = perception_parameters({name: get(name) for name in names},
                                       os.path.join(_share(), 'config', 'perception.yaml'),
                                       _sim_defaults() if _is_true(get('sim')) else None)
    use_sim_time = _is_true(get('use_sim_time'))
    namespace = get('namespace')
    events_topic = get('events_topic')
    camera_info_topic = get('camera_info_topic')
    remappings = [('events', events_topic), ('camera_info', camera_info_topic)]
    if get('image_topic'):
        remappings += [('image', get('image_topic')), ('image/camera_info', get('image_camera_info_topic'))]
    actions = [
        Node(package=PACKAGE, executable='perception_node', name=get('node_name'), namespace=namespace,
             parameters=parameters, remappings=remappings, output='screen', emulate_tty=True,
             arguments=['--ros-args', '--log-level', get('log_level')]),
    ]
    if _is_true(get('sim')):
        actions.append(Node(package=PACKAGE, executable='sim_event_camera', name='sim_event_camera',
                            namespace=namespace, output='screen',
                            parameters=[dict(_sim_rig(get), use_sim_time=use_sim_time)],
                            remappings=[('event_camera/events', events_topic),
                                        ('event_camera/camera_info', camera_info_topic)]))
    rviz_config = _rviz_config_for(get('rviz_config'), namespace, get('node_name'), get('frame_id')) \
        if _is_true(get('rviz')) else get('rviz_config')
    actions.append(Node(package='rviz2', executable='rviz2', name='rviz2', namespace=namespace,
                        arguments=['-d', rviz_config], parameters=[{'use_sim_time': use_sim_time}],
                        condition=IfCondition(get('rviz'))))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = _share()
    args = [
        DeclareLaunchArgument('params_file', default_value=os.path.join(share, 'config', 'perception.yaml'),
                              description='YAML file with the perception_node parameters'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the nodes (one per camera)'),
        DeclareLaunchArgument('node_name', default_value='perception_node', description='name of the node'),
        DeclareLaunchArgument('events_topic', default_value='/event_camera/events',
                              description='event_camera_msgs/EventPacket input topic'),
        DeclareLaunchArgument('camera_info_topic', default_value='/event_camera/camera_info',
                              description='CameraInfo of the event camera (fallback intrinsics from parameters)'),
        DeclareLaunchArgument('image_topic', default_value='',
                              description='optional RGB image topic for cross-modal keyframes (empty = off)'),
        DeclareLaunchArgument('image_camera_info_topic', default_value='/camera/camera_info',
                              description='CameraInfo of the RGB camera (used with image_topic)'),
        DeclareLaunchArgument('realm_checkpoint', default_value='', description='REALM encoder checkpoint'),
        DeclareLaunchArgument('dune_checkpoint', default_value='',
                              description='official DUNE checkpoint (.pth; projector for segmentation)'),
        DeclareLaunchArgument('depth_head_checkpoint', default_value='', description='depth head checkpoint'),
        DeclareLaunchArgument('seg_head_checkpoint', default_value='', description='segmentation head checkpoint'),
        DeclareLaunchArgument('mast3r_checkpoint', default_value='',
                              description='DUNE-MASt3R decoder checkpoint (.pth; matching and pose)'),
        DeclareLaunchArgument('device', default_value='', description="torch device: auto, cpu, cuda, cuda:1, ..."),
        DeclareLaunchArgument('frame_id', default_value='',
                              description='frame of the outputs (empty = frame_id of the event packets)'),
        DeclareLaunchArgument('use_sim_time', default_value='false', choices=['true', 'false'],
                              description='use /clock (bag playback with --clock, simulator)'),
        DeclareLaunchArgument('sim', default_value='false', choices=['true', 'false'],
                              description='start the simulated event camera instead of a real one'),
        DeclareLaunchArgument('sim_trajectory', default_value='drive', choices=['drive', 'loop', 'static'],
                              description="sim:=true camera path: 'drive' (forward along the street, like the "
                              "training data and realm-demo), 'loop' (back and forth: the miniature models never saw "
                              "a reversing camera), 'static'"),
        DeclareLaunchArgument('sim_speed', default_value='', description='sim:=true camera speed in m/s (empty = 2)'),
        DeclareLaunchArgument('sim_seed', default_value='',
                              description='sim:=true scene seed (empty = 11, a scene never used in training)'),
        DeclareLaunchArgument('sim_seconds', default_value='',
                              description='sim:=true sequence length, replayed in a loop (s; empty = 32 for a drive, '
                              '4 otherwise); a first start simulates it once (~4 s per simulated second, cached)'),
        DeclareLaunchArgument('rviz', default_value='false', choices=['true', 'false'],
                              description='start RViz with config/realm.rviz'),
        DeclareLaunchArgument('rviz_config', default_value=os.path.join(share, 'config', 'realm.rviz'),
                              description='RViz configuration file'),
        DeclareLaunchArgument('log_level', default_value='info', choices=['debug', 'info', 'warn', 'error'],
                              description='log level of the perception node'),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
