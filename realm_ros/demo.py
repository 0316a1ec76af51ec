"""``realm-demo``: the whole REALM pipeline end to end over real DDS, scored against ground truth.

Default (no arguments): starts the simulated event + RGB rig (``sim_event_camera``) and the ``perception_node`` with
the miniature checkpoints shipped in ``models/``, listens to every output for ``--duration`` seconds, and writes into
``--out`` (default ``demo_out/``):

* ``summary.json``: input/output rates, end-to-end latency percentiles (output receive time minus the stamp of the
  window's last event; the simulator stamps with this machine's clock), the node's own latency figures, depth error
  (mean absolute error at 10/20/30 m cut-offs) and mIoU against the simulator's ground truth for the same stamps,
  relative-pose errors of consecutive pose outputs against ground-truth motion, and the node's error counters.
* ``panel.png``: event frame, depth (prediction / ground truth), semantics (prediction / ground truth), matches, and
  the estimated vs ground-truth trajectory (top view).

With a recording instead of the simulator: ``realm-demo --bag BAG [--events-topic T --camera-info-topic T
--image-topic T]`` replays the bag in real time into the node (ground-truth scores appear when the bag carries the
simulator's ground-truth topics). Official checkpoints: ``--realm R.safetensors --dune dune.pth --depth-head ...
--seg-head ... --mast3r dunemast3r.pth`` (each overrides the shipped miniature file of that role).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional

import numpy as np

from .demo_panel import write_panel
from .demo_scores import (Received, latency_breakdown, latency_by_output, latency_summary, packet_loss,
                          pose_outcomes, score, simulator_publishing, simulator_status)
from .pipeline.settings import describe_unknown, unknown_setting_names
from .sim.params import DEMO_RIG, DEMO_SECONDS, demo_rig

NAMESPACE = '/realm_demo'
NODE = 'perception_node'

__all__ = ['main', 'build_parser', 'models_dir', 'resolve_checkpoints', 'Received', 'score', 'pose_outcomes',
           'write_panel']


# ----------------------------------------------------------------------------------------------------------------
# checkpoints

def models_dir() -> Path:
    """Where the shipped checkpoints are: the installed share/realm_ros/models, else the source tree's models/."""
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('realm_ros')) / 'models'
        if share.is_dir():
            return share
    except Exception:                                           # noqa: BLE001 - not installed with colcon
        pass
    return Path(__file__).resolve().parent.parent / 'models'


def _mini_files() -> Dict[str, str]:
    """Shipped miniature checkpoint names by perception-node role (one source of truth: the recipe that ships them)."""
    from realm_ros.miniature.recipe import SHIPPED_FILES
    return {'dune': SHIPPED_FILES['teacher'], 'realm': SHIPPED_FILES['realm'],
            'depth_head': SHIPPED_FILES['depth_head'], 'seg_head': SHIPPED_FILES['seg_head'],
            'mast3r': SHIPPED_FILES['mast3r']}


MINI_FILES = _mini_files()


def resolve_checkpoints(args: argparse.Namespace) -> Dict[str, str]:
    base = models_dir()
    out: Dict[str, str] = {}
    for role, name in MINI_FILES.items():
        given = getattr(args, role)
        path = Path(given) if given else base / name
        if not path.is_file():
            if role == 'mast3r' and not given:
                continue                                        # pose is optional
            raise SystemExit(f'realm-demo: checkpoint for {role!r} not found: {path}'
                             + ('' if given else ' (the shipped miniature models are missing: run '
                                'scripts/train_miniature.py or pass the checkpoint)'))
        out[role] = str(path)
    return out


# ----------------------------------------------------------------------------------------------------------------
# collection

def _pose_matrix(pose: Any) -> np.ndarray:
    from realm_ros.nodes.conversions import quaternion_to_rotation_matrix
    q = pose.orientation
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation_matrix([q.x, q.y, q.z, q.w])
    T[:3, 3] = [pose.position.x, pose.position.y, pose.position.z]
    return T


def make_collector(rclpy: Any, rec: Received, gt_prefix: str, events_topic: str, recording: threading.Event):
    """An rclpy node subscribing to the perception outputs, the ground truth and the event stream."""
    from diagnostic_msgs.msg import DiagnosticArray
    from event_camera_msgs.msg import EventPacket
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, PointCloud2

    from realm_ros.nodes.conversions import diagnostic_values, image_to_array, stamp_to_ns

    node = rclpy.create_node('realm_demo_collector')
    out = f'{NAMESPACE}/{NODE}'
    decoder_state: Dict[str, Any] = {}

    def now() -> int:
        return time.time_ns()

    def delivered(name: str, stamp: int, info: Any, t: int) -> None:
        """Keep the DDS timestamps of a message (the demo's latency breakdown); the caller holds ``rec.lock``."""
        times = rec.delivery.setdefault(name, deque(maxlen=400))
        times.append((stamp, int(info.get('source_timestamp', 0)), int(info.get('received_timestamp', 0)), t))

    def image_cb(name: str, store: Optional[Deque] = None):
        def cb(msg: Image, info: Any) -> None:
            t = now()
            if not recording.is_set():
                return
            arr = image_to_array(msg)
            with rec.lock:
                rec.tick(name)
                stamp = stamp_to_ns(msg.header.stamp)
                delivered(name, stamp, info, t)
                if store is not None:
                    store.append((stamp, t, arr.copy()))
                rec.images[name] = (stamp, arr.copy())
        return cb

    def points_cb(raw: bytes, info: Any) -> None:
        """~/points taken serialized: its rate and latency need only the header stamp (the first field after the
        4-byte CDR encapsulation), not the conversion of a ~1 MB cloud into a Python message."""
        t = now()
        if not recording.is_set() or len(raw) < 12:
            return
        sec, nanosec = struct.unpack_from('<iI' if raw[1] & 1 else '>iI', raw, 4)
        stamp = sec * 10**9 + nanosec
        with rec.lock:
            rec.tick('points')
            delivered('points', stamp, info, t)
            rec.points.append((stamp, t))

    def gt_cb(store_name: str):
        def cb(msg: Image) -> None:
            arr = image_to_array(msg)
            with rec.lock:
                store = getattr(rec, store_name)
                store[stamp_to_ns(msg.header.stamp)] = arr.copy()
                if len(store) > 600:
                    del store[min(store)]
        return cb

    def pose_cb(msg: PoseWithCovarianceStamped, info: Any) -> None:
        t = now()
        if not recording.is_set():
            return
        with rec.lock:
            rec.tick('pose')
            delivered('pose', stamp_to_ns(msg.header.stamp), info, t)
            rec.pose.append((stamp_to_ns(msg.header.stamp), t, _pose_matrix(msg.pose.pose), msg.header.frame_id))

    def gt_pose_cb(msg: PoseStamped) -> None:
        with rec.lock:
            rec.gt_pose[stamp_to_ns(msg.header.stamp)] = _pose_matrix(msg.pose)

    def diag_cb(msg: DiagnosticArray) -> None:
        with rec.lock:
            for status in msg.status:
                if status.name.startswith(NODE) or NODE in status.name or 'sim_event_camera' in status.name:
                    rec.diagnostics[status.name] = diagnostic_values(status)

    def events_cb(msg: EventPacket) -> None:
        with rec.lock:
            rec.tick('events_sampled')
            if rec.counts['events_sampled'] % 5:
                return
        # a few packets are decoded here for the panel's event frame (the node decodes its own copy)
        try:
            from realm_ros.events import make_decoder
            key = (msg.encoding, msg.width, msg.height)
            if decoder_state.get('key') != key:
                decoder_state['key'] = key
                decoder_state['dec'] = make_decoder(msg.encoding, msg.width, msg.height)
            ev = decoder_state['dec'].decode(np.frombuffer(msg.events, np.uint8), msg.time_base).events
            with rec.lock:
                rec.events_xy.append(np.stack([ev.x, ev.y, ev.p.astype(np.uint16)], 1))
                rec.counts['frame_shape'] = 0
                decoder_state['shape'] = (int(msg.height), int(msg.width))
        except Exception:                                       # noqa: BLE001 - the panel is best effort
            pass

    reliable = 10
    node.create_subscription(Image, f'{out}/depth', image_cb('depth', rec.depth), reliable)
    node.create_subscription(Image, f'{out}/semantic', image_cb('semantic', rec.semantic), reliable)
    for name in ('depth/color', 'semantic/color', 'matches'):
        node.create_subscription(Image, f'{out}/{name}', image_cb(name), reliable)
    node.create_subscription(PointCloud2, f'{out}/points', points_cb, reliable, raw=True)
    node.create_subscription(PoseWithCovarianceStamped, f'{out}/pose', pose_cb, reliable)
    node.create_subscription(Image, f'{gt_prefix}/event_camera/depth', gt_cb('gt_depth'), reliable)
    node.create_subscription(Image, f'{gt_prefix}/event_camera/labels', gt_cb('gt_labels'), reliable)
    node.create_subscription(PoseStamped, f'{gt_prefix}/gt/pose', gt_pose_cb, reliable)
    node.create_subscription(DiagnosticArray, '/diagnostics', diag_cb, 50)
    # The event stream (~1000 packets/s) is sampled for the panel's event picture only after the recording: taking
    # every packet in this process would cost half a core that the node under test is measured without.
    node._realm_sample_events = lambda: node.create_subscription(EventPacket, events_topic, events_cb,
                                                                qos_profile_sensor_data)
    node._realm_decoder_state = decoder_state                    # for the panel's sensor size
    return node


# ----------------------------------------------------------------------------------------------------------------
# processes

def simulate_once(sim_params: Dict[str, Any]) -> bool:
    """Simulate the demo's sequence before the nodes start when it is not cached yet (the simulator node then loads
    it): otherwise the node would stream a growing prefix while a simulation runs beside it on the same cores, and a
    sequence longer than the recording would never be complete, hence never cached. Returns whether it simulated."""
    from .sim.params import SIM_PARAMETERS, sim_config_from_values
    from .sim.sequence import cache_path, load_or_simulate
    values: Dict[str, Any] = {p.name: p.default for p in SIM_PARAMETERS}
    values.update(sim_params)
    cfg = sim_config_from_values(values)
    path = cache_path(cfg)
    if path.exists():
        return False
    print(f'[realm-demo] simulating the {cfg.duration_s:g} s sequence once (~{4 * cfg.duration_s:.0f} s on one core; '
          f'cached in {path.parent} for later runs)', flush=True)
    t0 = time.monotonic()
    load_or_simulate(cfg)
    print(f'[realm-demo] simulated in {time.monotonic() - t0:.0f} s', flush=True)
    return True


def _ros_args(params: Dict[str, Any], remaps: Dict[str, str]) -> List[str]:
    args = ['--ros-args', '-r', f'__ns:={NAMESPACE}']
    for k, v in params.items():
        if isinstance(v, bool):
            v = 'true' if v else 'false'
        args += ['-p', f'{k}:={v}']
    for k, v in remaps.items():
        args += ['-r', f'{k}:={v}']
    return args


def _start(cmd: List[str], log_path: Path, env: Dict[str, str]) -> subprocess.Popen:
    log = open(log_path, 'w')                                   # closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: Optional[subprocess.Popen], timeout: float = 10.0) -> Optional[int]:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def play_bag(bag: str, topics: Dict[str, str], stop: threading.Event, node: Any, rate: float = 1.0) -> None:
    """Replay ``bag`` into ROS topics in real time (header stamps rewritten to now + bag offset)."""
    from event_camera_msgs.msg import EventPacket
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from realm_ros.nodes.participant import OwnParticipantNode

    kinds = {topics['events']: (EventPacket, qos_profile_sensor_data)}
    if topics.get('camera_info'):
        kinds[topics['camera_info']] = (CameraInfo, 10)
    if topics.get('image'):
        kinds[topics['image']] = (Image, 10)
    # the event packets in a DDS participant of their own, so that images cannot push them out of the shared-memory
    # transport's buffers before the node reads them (see realm_ros.nodes.participant)
    events_node = OwnParticipantNode(f'{node.get_name()}_events', domain_id=node.context.get_domain_id())
    try:
        pubs = {t: (events_node.node if cls is EventPacket else node).create_publisher(
                    cls, f'{NAMESPACE}/play{t}' if not t.startswith('/') else f'{NAMESPACE}{t}', q)
                for t, (cls, q) in kinds.items()}
        _replay(bag, kinds, pubs, stop, rate)
    finally:
        events_node.close()


def _replay(bag: str, kinds: Dict[str, Any], pubs: Dict[str, Any], stop: threading.Event, rate: float) -> None:
    from event_camera_msgs.msg import EventPacket
    from sensor_msgs.msg import Image

    from realm_ros.events.bagio import iter_bag_messages
    from realm_ros.nodes.conversions import bytes_to_uint8_array, ns_to_stamp, stamp_to_ns

    t0_wall = time.time_ns()
    t0_bag = None
    for topic, _msgtype, _t, m in iter_bag_messages(bag, topics=list(kinds)):
        if stop.is_set():
            return
        stamp = stamp_to_ns(m.header.stamp)
        t0_bag = stamp if t0_bag is None else t0_bag
        due = t0_wall + int((stamp - t0_bag) / rate)
        delay = (due - time.time_ns()) * 1e-9
        if delay > 0:
            time.sleep(delay)
        cls = kinds[topic][0]
        msg = cls()
        msg.header.stamp = ns_to_stamp(due)
        msg.header.frame_id = m.header.frame_id
        if cls is EventPacket:
            msg.height, msg.width, msg.seq, msg.time_base = int(m.height), int(m.width), int(m.seq), int(m.time_base)
            msg.encoding, msg.is_bigendian = m.encoding, bool(m.is_bigendian)
            msg.events = bytes_to_uint8_array(np.asarray(m.events, np.uint8))
        elif cls is Image:
            msg.height, msg.width, msg.step, msg.encoding = int(m.height), int(m.width), int(m.step), m.encoding
            msg.is_bigendian = int(m.is_bigendian)
            msg.data = bytes_to_uint8_array(np.asarray(m.data, np.uint8))
        else:
            msg.height, msg.width, msg.distortion_model = int(m.height), int(m.width), m.distortion_model
            msg.d = [float(v) for v in m.d]
            msg.k, msg.r, msg.p = (np.asarray(m.k, np.float64), np.asarray(m.r, np.float64),
                                   np.asarray(m.p, np.float64))
        pubs[topic].publish(msg)


# ----------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='realm-demo', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--out', default='demo_out', help='output folder for summary.json and panel.png (demo_out/)')
    p.add_argument('--duration', type=float, default=20.0, help='seconds of outputs to record after warm-up (20)')
    p.add_argument('--warmup-timeout', type=float, default=240.0,
                   help='give up when no depth output arrives within this many seconds (240)')
    p.add_argument('--device', default='auto', help='torch device of the perception node (auto, cpu, cuda)')
    p.add_argument('--seed', type=int, default=DEMO_RIG['seed'],
                   help='simulated scene seed (a held-out test scene by default)')
    p.add_argument('--sim-seconds', type=float, default=None,
                   help='length of the simulated sequence, replayed in a loop (s; default: 32 for a drive, enough for '
                        'the warm-up and 20 s of recording without the jump back; 4 for the back-and-forth loop)')
    p.add_argument('--sim-trajectory', choices=('loop', 'drive'), default=DEMO_RIG['trajectory'],
                   help="simulated camera path: 'drive' (default: forward along the street like the training data; "
                        "the pose jumps back when the sequence loops) or 'loop' (back and forth, repeats without a "
                        "jump; half of the time the camera reverses, which the miniature models never saw in "
                        "training, and the pose chain's constant-velocity bridge overshoots every reversal)")
    p.add_argument('--sim-speed', type=float, default=DEMO_RIG['speed_mps'],
                   help='simulated camera speed in m/s (2; the miniature decoder carries baselines up to ~0.5-1 m '
                        'per pose step, and a 2-core CPU runs ~3-4 pose steps/s: faster drives come out short)')
    p.add_argument('--bag', help='replay this ROS 2 bag instead of running the simulator')
    p.add_argument('--events-topic', default='/event_camera/events', help='events topic in --bag')
    p.add_argument('--camera-info-topic', default='/event_camera/camera_info', help='camera_info topic in --bag')
    p.add_argument('--image-topic', default='', help='RGB topic in --bag (cross-modal keyframes)')
    for role in MINI_FILES:
        p.add_argument(f'--{role.replace("_", "-")}', dest=role, default='',
                       help=f'{role} checkpoint (default: models/{MINI_FILES[role]})')
    p.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                   help='extra perception_node parameter (repeatable), e.g. window.count:=20000')
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line with the defaults that depend on other options filled in (``--sim-seconds``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for item in args.node_param:
        if ':=' not in item:
            parser.error(f'--node-param {item!r}: expected NAME:=VALUE')
    unknown = unknown_setting_names(item.partition(':=')[0] for item in args.node_param)
    if unknown:
        parser.error(f'--node-param: unknown perception_node parameters: {describe_unknown(unknown)}')
    if args.sim_seconds is None:
        args.sim_seconds = DEMO_SECONDS[args.sim_trajectory]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpts = resolve_checkpoints(args)
    from realm_ros.miniature.recipe import DistillRecipe

    try:
        import rclpy
    except ImportError as exc:
        raise SystemExit(f'realm-demo needs rclpy ({exc}); run it through ./run.sh demo or source ROS 2') from exc

    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    if 'ROS_DOMAIN_ID' not in env:
        env['ROS_DOMAIN_ID'] = str(random.randint(120, 200))
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID')})

    params: Dict[str, Any] = {
        'checkpoints.realm': ckpts['realm'], 'checkpoints.dune': ckpts['dune'],
        'checkpoints.depth_head': ckpts['depth_head'], 'checkpoints.seg_head': ckpts['seg_head'],
        'checkpoints.mast3r': ckpts.get('mast3r', ''), 'heads.pose': 'mast3r' in ckpts,
        'device': args.device, 'pose.frame': 'fixed',
        # the window the miniature REALM was distilled with (override with --node-param for other checkpoints)
        'window.mode': 'time', 'window.duration_ms': float(DistillRecipe().window_ms),
    }
    for item in args.node_param:
        name, _, value = item.partition(':=')
        params[name] = value
    if args.bag:
        events_topic = f'{NAMESPACE}{args.events_topic}'
        remaps = {'events': events_topic}
        if args.camera_info_topic:
            remaps['camera_info'] = f'{NAMESPACE}{args.camera_info_topic}'
        if args.image_topic:
            remaps['image'] = f'{NAMESPACE}{args.image_topic}'
        gt_prefix = NAMESPACE
    else:
        events_topic = f'{NAMESPACE}/event_camera/events'
        remaps = {'events': 'event_camera/events', 'camera_info': 'event_camera/camera_info',
                  'image': 'rgb/image_raw', 'image/camera_info': 'rgb/camera_info'}
        gt_prefix = NAMESPACE

    py = sys.executable
    procs: Dict[str, subprocess.Popen] = {}
    rec = Received()
    recording = threading.Event()
    stop = threading.Event()
    t_start = time.monotonic()
    rclpy.init()
    collector = make_collector(rclpy, rec, gt_prefix, events_topic, recording)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(collector)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    player = None
    summary: Dict[str, Any] = {}
    try:
        print(f'[realm-demo] ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}; logs and results in {out_dir}/', flush=True)
        if args.bag:
            player_node = rclpy.create_node('realm_demo_player')
            executor.add_node(player_node)
            player = threading.Thread(target=play_bag, daemon=True, args=(
                args.bag, {'events': args.events_topic, 'camera_info': args.camera_info_topic,
                           'image': args.image_topic}, stop, player_node))
        else:
            sim_params = demo_rig(args.sim_trajectory, args.seed, float(args.sim_speed), args.sim_seconds)
            if simulate_once(sim_params):
                t_start = time.monotonic()                   # the warm-up figure without the one-off simulation
            procs['sim'] = _start([py, '-m', 'realm_ros.nodes.sim_camera_node'] + _ros_args(sim_params, {}),
                                  out_dir / 'sim_event_camera.log', env)
        procs['node'] = _start([py, '-m', 'realm_ros.nodes.perception_node'] + _ros_args(params, remaps),
                               out_dir / 'perception_node.log', env)
        if player is not None:
            player.start()
        print('[realm-demo] started the source and the perception node; waiting for the first depth output',
              flush=True)
        recording.set()
        deadline = time.monotonic() + args.warmup_timeout
        while rec.counts.get('depth', 0) == 0:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f'realm-demo: {name} exited with {proc.returncode}; see '
                                     f'{out_dir}/{"sim_event_camera" if name == "sim" else "perception_node"}.log')
            if time.monotonic() > deadline:
                raise SystemExit(f'realm-demo: no depth output within {args.warmup_timeout:.0f} s; see '
                                 f'{out_dir}/perception_node.log')
            time.sleep(0.2)
        warm = time.monotonic() - t_start
        print(f'[realm-demo] first depth output after {warm:.1f} s; recording {args.duration:.0f} s', flush=True)
        with rec.lock:                                          # restart the rate counters after warm-up
            for k in list(rec.counts):
                rec.counts[k] = 0
            rec.depth.clear()
            rec.semantic.clear()
            rec.pose.clear()
            rec.delivery.clear()
        t_rec = time.monotonic()
        packets0 = packet_loss(rec.diagnostics)['received']
        sim0 = simulator_status(rec.diagnostics)
        while time.monotonic() - t_rec < args.duration:
            time.sleep(1.0)
            elapsed = time.monotonic() - t_rec
            rec.counts['events_in'] = packet_loss(rec.diagnostics)['received'] - packets0   # the node's count
            print(f'[realm-demo] {elapsed:4.0f} s: depth {rec.rate_hz("depth", elapsed):.1f} Hz, '
                  f'pose {rec.rate_hz("pose", elapsed):.1f} Hz, packets in {rec.rate_hz("events_in", elapsed):.0f} Hz',
                  flush=True)
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f'realm-demo: {name} exited early with {proc.returncode}')
        recording.clear()
        recorded_s = time.monotonic() - t_rec
        rec.counts['events_in'] = packet_loss(rec.diagnostics)['received'] - packets0
        sampler = collector._realm_sample_events()                 # a few packets for the panel's event picture
        deadline = time.monotonic() + 3.0
        while not rec.events_xy and time.monotonic() < deadline:
            time.sleep(0.1)
        del sampler                                                 # left to the collector's teardown

        sensor_shape = collector._realm_decoder_state.get('shape')
        scores = score(rec)
        summary = {
            'source': args.bag or f'simulator seed {args.seed}',
            'checkpoints': ckpts,
            'device': args.device,
            'warmup_s': round(warm, 2),
            'recorded_s': round(recorded_s, 2),
            'rates_hz': {k: round(rec.rate_hz(k, recorded_s), 3) for k in
                         ('events_in', 'depth', 'semantic', 'depth/color', 'semantic/color', 'points', 'matches',
                          'pose')},
            'latency_ms_end_to_end': latency_summary(rec),
            'latency_ms_by_output': latency_by_output(rec),
            'latency_ms_breakdown': latency_breakdown(rec),
            'event_packets': packet_loss(rec.diagnostics),
            'simulator_publishing': simulator_publishing(sim0, simulator_status(rec.diagnostics)),
            'pose_outcomes': pose_outcomes(rec.diagnostics),
            'node_diagnostics': rec.diagnostics,
            **scores,
        }
        with open(out_dir / 'summary.json', 'w') as f:
            json.dump(summary, f, indent=2, default=float)
        write_panel(rec, out_dir / 'panel.png', sensor_shape)
        _print_summary(summary, out_dir)
        return 0
    finally:
        stop.set()
        for name in ('node', 'sim'):
            _stop(procs.get(name))
        if player is not None:
            player.join(timeout=5.0)
        executor.shutdown()
        spin.join(timeout=5.0)         # destroying the node while the spin thread still waits on it raises
        collector.destroy_node()
        rclpy.try_shutdown()


def _print_summary(s: Dict[str, Any], out_dir: Path) -> None:
    lat = s['latency_ms_end_to_end']
    print('\n[realm-demo] results')
    print(f"  rates: depth {s['rates_hz']['depth']:.2f} Hz, semantic {s['rates_hz']['semantic']:.2f} Hz, "
          f"points {s['rates_hz']['points']:.2f} Hz, pose {s['rates_hz']['pose']:.2f} Hz, "
          f"event packets in {s['rates_hz']['events_in']:.0f} Hz")
    if lat.get('samples'):
        print(f"  end-to-end latency: p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms, "
              f"max {lat['max_ms']:.0f} ms ({lat['samples']} outputs)")
    for name, v in s.get('latency_ms_by_output', {}).items():
        if v.get('samples'):
            print(f"    {name:8s} latency p50 {v['p50_ms']:.0f} ms, p95 {v['p95_ms']:.0f} ms ({v['samples']} outputs)")
    parts = s.get('latency_ms_breakdown', {}).get('depth', {})
    if parts.get('node', {}).get('samples'):
        print('    depth latency by part, p50 / p95: ' + ', '.join(
            f"{name} {v['p50_ms']:.0f} / {v['p95_ms']:.0f} ms" for name, v in parts.items() if v.get('samples'))
            + ' (node: last event -> published; transport: -> at the collector; collector: -> its callback)')
    pk = s.get('event_packets', {})
    if pk.get('sent'):
        print(f"  event packets: {pk['received']} received, {pk['lost']} lost "
              f"({100.0 * pk['lost'] / pk['sent']:.2f} %, sequence gaps seen by the node)")
    sp = s.get('simulator_publishing', {})
    if sp.get('packets'):
        print(f"  simulator: {sp['packets']} packets published, {sp['late_publishes']} later than one packet period "
              f"({100.0 * sp['late_fraction']:.2f} %; largest lag since its start "
              f"{sp['max_lag_ms_since_start']:.0f} ms)")
    d = s.get('depth', {})
    if d.get('frames_scored'):
        print('  depth abs error: ' + ', '.join(f'{k} {v:.2f} m' for k, v in d.items()
                                                 if k.startswith('abs_err') and isinstance(v, float)))
    m = s.get('semantic', {})
    if m.get('frames_scored'):
        print(f"  semantics: mIoU {m.get('miou', float('nan')):.3f} over {m['frames_scored']} frames")
    pz = s.get('pose', {})
    if pz.get('pairs_scored'):
        print(f"  pose ({pz['pairs_scored']} consecutive published pairs): rotation error median "
              f"{pz['rot_err_deg_median']:.2f} deg (no-motion baseline {pz['no_motion_rot_err_deg_median']:.2f}), "
              f"translation direction error median {pz['trans_err_deg_median']:.1f} deg, forward sign right "
              f"{100 * pz['forward_sign_ok']:.0f} %, AUC_pose@20 {pz.get('auc_pose@20', float('nan')):.2f}")
    tr = pz.get('trajectory', {})
    if tr.get('poses_beyond_min_distance'):
        print(f"  trajectory ({tr['poses_scored']} published poses, true path up to {tr['true_distance_m_max']:.1f} m "
              f"from the first): direction of the displacement error median {tr['direction_from_start_deg_median']:.1f}"
              f" deg, length ratio median {tr['length_ratio_median']:.2f}, position error median "
              f"{tr['position_error_m_median']:.2f} m")
    po = s.get('pose_outcomes', {})
    if po:
        print('  pose estimates (node diagnostics): ' + ', '.join(f'{k} {v}' for k, v in sorted(po.items())))
    print(f'  wrote {out_dir / "summary.json"} and {out_dir / "panel.png"}')


if __name__ == '__main__':
    sys.exit(main())
