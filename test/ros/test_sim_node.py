"""sim_event_camera as a separate process: EventPackets and images arrive over real DDS and decode correctly."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')


def test_sim_node_publishes_events_and_frames(child_env, tmp_path):
    from event_camera_msgs.msg import EventPacket
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from realm_ros.events.packet import EventPacketDecoder
    from realm_ros.nodes.qos import events_qos, qos_from_name
    from realm_ros.sim import topics as T

    ns = f'/simtest_{os.getpid()}_{int(time.time() * 1000) % 100000}'
    node_name = f'sim_event_camera_{os.getpid()}'
    cmd = [sys.executable, '-m', 'realm_ros.nodes.sim_camera_node', '--ros-args', '-r', f'__ns:={ns}',
           '-r', f'__node:={node_name}', '-p', 'width:=64', '-p', 'height:=48', '-p', 'duration_s:=0.25',
           '-p', 'max_runtime_s:=60.0', '-p', 'seed:=5', '-p', f'cache_dir:={tmp_path}']
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    packets, images, infos, depths, poses, diags = [], [], [], [], [], []
    try:
        node = rclpy.create_node(f'sim_node_test_{os.getpid()}', context=context)
        from diagnostic_msgs.msg import DiagnosticArray
        node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: diags.extend(
            {kv.key: kv.value for kv in st.values} for st in m.status if node_name in st.name), 10)
        node.create_subscription(EventPacket, ns + T.EVENTS_TOPIC, packets.append, events_qos())
        node.create_subscription(Image, ns + T.RGB_IMAGE_TOPIC, images.append, qos_profile_sensor_data)
        node.create_subscription(CameraInfo, ns + T.EVENT_CAMERA_INFO_TOPIC, infos.append, qos_from_name('reliable'))
        node.create_subscription(Image, ns + T.EVENT_DEPTH_TOPIC, depths.append, qos_from_name('reliable'))
        node.create_subscription(PoseStamped, ns + T.GT_POSE_TOPIC, poses.append, qos_from_name('reliable'))
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
            if len(packets) >= 450 and len(images) >= 14 and infos and depths and poses and \
                    any(float(d['sensor_s']) > 0.5 for d in diags):
                break
        # the packets come from a DDS participant of their own (named after the node), the images from the node's
        ev_pubs = node.get_publishers_info_by_topic(ns + T.EVENTS_TOPIC)
        img_pubs = node.get_publishers_info_by_topic(ns + T.RGB_IMAGE_TOPIC)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert len(packets) >= 450 and len(images) >= 14, f'packets {len(packets)}, images {len(images)}\n{out}'
    assert [(p.node_name, p.node_namespace) for p in ev_pubs] == [(f'{node_name}_events', ns)], ev_pubs
    assert [p.node_name for p in img_pubs] == [node_name], img_pubs
    # an endpoint GID starts with its participant's GUID prefix (12 bytes)
    assert bytes(ev_pubs[0].endpoint_gid[:12]) != bytes(img_pubs[0].endpoint_gid[:12])
    assert proc.returncode == 0, out
    assert infos and depths and poses, out
    # /diagnostics: publishing figures and the lateness bookkeeping (late = more than one packet period, 1 ms)
    d = diags[-1]
    assert float(d['late_tolerance_ms']) == 1.0 and int(d['packets']) >= 450 and float(d['packets_per_s']) > 0
    assert int(d['late_publishes']) <= int(d['packets']) and float(d['publisher_cpu_ms_per_sensor_s']) > 0
    assert d['sequence_complete'] == 'True' and float(d['simulated_s']) == pytest.approx(0.233, abs=0.02)
    assert list(tmp_path.glob('seq_*.npz')), 'the precomputed sequence was not cached'

    dec = EventPacketDecoder()
    sensor = EventPacketDecoder(time_mode='sensor')
    n = 0
    times, offsets = [], set()
    for m in packets:
        assert m.encoding == 'evt3' and (m.width, m.height) == (64, 48) and m.header.frame_id == T.EVENT_FRAME_ID
        ev = dec.decode_msg(m)
        n += len(ev)
        assert len(ev) and ev.x.max() < 64 and ev.y.max() < 48
        times.append(ev.t)
        # stamp - sensor time of the first event is one constant: sensor time continues exactly across loop passes
        offsets.add(m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec - int(sensor.decode_msg(m).t.min()))
        # stamps are the packet's first event in ROS time (the node's clock)
        stamp = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
        assert abs(int(ev.t.min()) - stamp) < 1_000_000
    assert n > 1000 and dec.num_errors == 0
    seqs = [m.seq for m in packets]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # the 0.25 s sequence is replayed in a loop: event time keeps increasing across the seam (sensor time continues)
    t_all = np.concatenate(times)
    assert np.all(np.diff(t_all) >= 0) and (t_all[-1] - t_all[0]) > 0.3e9
    assert len(offsets) == 1, sorted(offsets)[:5]
    img = images[-1]
    assert (img.encoding, img.width, img.height) == ('rgb8', 64, 48)
    rgb = np.frombuffer(img.data, np.uint8).reshape(48, 64, 3)
    assert rgb.std() > 5.0
    depth = np.frombuffer(depths[-1].data, np.float32).reshape(48, 64)
    assert depths[-1].encoding == '32FC1' and np.isfinite(depth).mean() > 0.3 and np.nanmin(depth) > 0
    assert infos[-1].k[0] > 0 and poses[-1].header.frame_id == T.WORLD_FRAME_ID
    # frames come at ~30 Hz of the node's clock
    stamps = [i.header.stamp.sec + i.header.stamp.nanosec * 1e-9 for i in images]
    assert np.median(np.diff(stamps)) == pytest.approx(1 / 30, abs=2e-3)


# ------------------------------------------------------------------------------------------------------------------
# Shutdown and first start (issue: SIGINT during the precompute, double SIGINT from a terminal, slow first start)

class _SimProcess:
    """The node as a child process in its own process group, stdout and stderr collected line by line."""

    def __init__(self, env, params: dict, ns: str) -> None:
        import threading
        cmd = [sys.executable, '-m', 'realm_ros.nodes.sim_camera_node', '--ros-args', '-r', f'__ns:={ns}']
        for k, v in params.items():
            cmd += ['-p', f'{k}:={v}']
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.out, self.err = [], []
        self._readers = [threading.Thread(target=self._read, args=(s, dst), daemon=True)
                         for s, dst in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, dst):
        for line in stream:
            dst.append(line.rstrip())

    @property
    def text(self) -> str:
        return '\n'.join(self.out + self.err)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if text in self.text:
                return True
            time.sleep(0.02)
        return text in self.text

    def children(self) -> list[int]:
        out = []
        for task in Path(f'/proc/{self.proc.pid}/task').glob('*'):
            try:
                out += [int(x) for x in (task / 'children').read_text().split()]
            except OSError:
                pass
        return out

    def interrupt(self, twice: bool) -> float:
        """SIGINT to the process (once), or twice to its whole process group as a terminal Ctrl-C does;
        returns the seconds until it exited."""
        t0 = time.monotonic()
        if twice:
            os.killpg(self.proc.pid, signal.SIGINT)
            time.sleep(0.05)
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return float('inf')
        elapsed = time.monotonic() - t0
        for t in self._readers:
            t.join(timeout=2)
        return elapsed

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _gone(pid: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f'/proc/{pid}/stat') as f:
                if f.read().split(') ')[-1].startswith('Z'):
                    return True        # a zombie waiting for init: it has ended
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize('twice', [False, True], ids=['sigint', 'double_sigint_to_group'])
def test_sigint_during_precompute_exits_cleanly_within_2s(child_env, tmp_path, twice):
    # loop:=false waits for the whole (long) sequence before publishing: the node is in its precompute for minutes
    params = {'width': 224, 'height': 224, 'duration_s': 60.0, 'loop': False, 'cache_dir': str(tmp_path)}
    node = _SimProcess(child_env(), params, f'/simsig_{os.getpid()}_{int(twice)}')
    try:
        assert node.wait_for('in a background process', 60), node.text
        deadline = time.monotonic() + 30
        while not node.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = node.children()
        assert workers, 'no background simulation process\n' + node.text
        time.sleep(1.0)                       # let it simulate for a while
        elapsed = node.interrupt(twice)
    finally:
        node.kill()
    assert elapsed < 2.0, f'exit took {elapsed:.2f} s\n{node.text}'
    assert node.proc.returncode == 0, node.text
    assert 'Traceback' not in node.text and 'KeyboardInterrupt' not in node.text, node.text
    assert all(_gone(pid) for pid in workers), 'the simulation worker outlived the node'
    assert not list(tmp_path.glob('seq_*.npz')), 'an interrupted precompute must not be cached'


@pytest.mark.parametrize('twice', [False, True], ids=['sigint', 'double_sigint_to_group'])
def test_sigint_while_publishing_exits_cleanly_within_2s(child_env, tmp_path, twice):
    params = {'width': 64, 'height': 48, 'duration_s': 0.3, 'cache_dir': str(tmp_path), 'first_segment_s': 0.1,
              'speed_mps': 6}                 # an integer for a double parameter: taken as 6.0
    node = _SimProcess(child_env(), params, f'/simpub_{os.getpid()}_{int(twice)}')
    try:
        assert node.wait_for('publishing the', 60), node.text
        assert 'parameter speed_mps: integer value taken as a double' in node.text
        time.sleep(1.5)                       # publishing (and, for a while, still simulating the rest)
        elapsed = node.interrupt(twice)
    finally:
        node.kill()
    assert elapsed < 2.0, f'exit took {elapsed:.2f} s\n{node.text}'
    assert node.proc.returncode == 0, node.text
    assert 'Traceback' not in node.text and 'KeyboardInterrupt' not in node.text, node.text


def test_no_packet_lost_when_a_subscriber_of_events_and_images_stalls(child_env, tmp_path):
    """A subscriber process that takes the ground-truth images besides the events is stopped (SIGSTOP) for 150 ms
    ten times: not one event packet may be lost. Before the events had a DDS participant (and Fast DDS shared-memory
    segment) of their own, ~400 of ~12,000 packets were lost with 40 ms stops: the images pushed them out."""
    ns = f'/simstall_{os.getpid()}'
    params = {'width': 224, 'height': 224, 'duration_s': 0.5, 'cache_dir': str(tmp_path), 'first_segment_s': 0.2,
              'publish_ground_truth': True}
    sim = _SimProcess(child_env(), params, ns)
    counter = None
    try:
        assert sim.wait_for('publishing the', 120), sim.text
        counter = subprocess.Popen([sys.executable, str(Path(__file__).with_name('packet_counter.py')), ns, '6'],
                                   env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert counter.stdout.readline().strip() == 'ready'
        assert counter.stdout.readline().strip() == 'receiving'
        time.sleep(1.0)
        for _ in range(10):
            os.kill(counter.pid, signal.SIGSTOP)
            time.sleep(0.15)
            os.kill(counter.pid, signal.SIGCONT)
            time.sleep(0.3)
        out, _ = counter.communicate(timeout=60)
    finally:
        if counter is not None and counter.poll() is None:
            counter.kill()
        sim.interrupt(False)
        sim.kill()
    st = json.loads(out.strip().splitlines()[-1])
    assert st['packets'] > 4000 and st['images'] > 300, st          # 6 s of 1 kHz packets and 5 x 30 Hz images
    assert st['lost'] == 0 and st['gaps'] == 0, f'{st}\n{sim.text}'
    assert 'shared-memory segment 16 MB' in sim.text or 'transports left as configured' in sim.text, sim.text


def test_first_start_publishes_within_seconds_with_an_empty_cache(child_env, tmp_path):
    """The launch's default sequence (224x224, 3 s: tens of seconds of CPU to simulate) must not delay the first
    packets: they come once the first segment is simulated, with progress in the log."""
    from event_camera_msgs.msg import EventPacket

    from realm_ros.events.packet import EventPacketDecoder
    from realm_ros.nodes.qos import events_qos
    from realm_ros.sim import topics as T

    ns = f'/simfirst_{os.getpid()}'
    params = {'cache_dir': str(tmp_path / 'empty_cache'), 'first_segment_s': 0.15, 'max_runtime_s': 60.0}
    context = rclpy.Context()
    rclpy.init(context=context)
    packets, t_first = [], None
    node = None
    try:
        probe = rclpy.create_node(f'sim_first_probe_{os.getpid()}', context=context)
        probe.create_subscription(EventPacket, ns + T.EVENTS_TOPIC, packets.append, events_qos())
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(probe)
        node = _SimProcess(child_env(), params, ns)
        while time.monotonic() - node.t_start < 60 and node.proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
            if packets and t_first is None:
                t_first = time.monotonic() - node.t_start
            if t_first is not None and len(packets) >= 300:
                break
        probe.destroy_node()
        assert node.proc.poll() is None, node.text
        elapsed = node.interrupt(twice=False)
    finally:
        rclpy.shutdown(context=context)
        if node is not None:
            node.kill()
    assert t_first is not None, node.text
    # a few seconds on an idle 2-core machine; generous for a loaded one, far below the whole precompute
    assert t_first < 15.0, f'first packet after {t_first:.1f} s\n{node.text}'
    assert 'publishing the first' in node.text and 'replayed while the rest is simulated' in node.text, node.text
    assert 'the whole 3.00 s loop is simulated' not in node.text.split('publishing the first')[0]
    assert node.proc.returncode == 0 and elapsed < 2.0 and 'Traceback' not in node.text, node.text
    dec = EventPacketDecoder()
    n = sum(len(dec.decode_msg(m)) for m in packets)
    assert n > 10_000 and dec.num_errors == 0
    seqs = [m.seq for m in packets]
    assert seqs == sorted(seqs)


def test_declared_parameters_match_the_table():
    """Every parameter is declared once, from realm_ros.sim.params, with its type, range, read-only flag and
    description (config/sim_camera.yaml is checked against the same table in test/unit/test_sim_params.py)."""
    from rcl_interfaces.msg import ParameterType

    from realm_ros.nodes.sim_camera_node import SimCameraNode
    from realm_ros.sim.params import SIM_PARAMETERS
    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = SimCameraNode(context=context)
        try:
            declared = set(node._parameters) - {'use_sim_time', 'start_type_description_service'}  # rclpy's own
            assert declared == {p.name for p in SIM_PARAMETERS}
            for spec, d in zip(SIM_PARAMETERS, node.describe_parameters([p.name for p in SIM_PARAMETERS])):
                assert node.get_parameter(spec.name).value == spec.default
                assert d.type == types[spec.type] and d.description == spec.description and d.read_only
                if spec.low is not None and spec.type is int:
                    assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (spec.low, spec.high)
                elif spec.low is not None and spec.type is float:
                    r = d.floating_point_range[0]
                    assert (r.from_value, r.to_value) == (spec.low, spec.high)
                else:
                    assert not d.integer_range and not d.floating_point_range
            # read-only: refused at run time
            result = node.set_parameters([rclpy.parameter.Parameter('rate', value=2.0)])[0]
            assert not result.successful
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_preserialised_packets_equal_the_messages_they_replace():
    """The node publishes patched CDR bytes; they must decode to exactly the EventPacket of the shifted payload
    (any stamp, seq and pass shift, including shifts that wrap the 12-bit TIME_HIGH field)."""
    from event_camera_msgs.msg import EventPacket
    from rclpy.serialization import deserialize_message, serialize_message

    from realm_ros.nodes.sim_messages import PacketSerializer, same_packet
    from realm_ros.sim.live import ProgressiveSequence
    from realm_ros.sim.packets import shift_evt3_payload
    from realm_ros.sim.params import sim_config_from_values
    from realm_ros.sim.sequence import SimSequence

    seq = SimSequence.simulate(sim_config_from_values({'width': 48, 'height': 40, 'duration_s': 0.1, 'seed': 7}))
    packets = [p for ps in ProgressiveSequence.from_sequence(seq).packets for p in ps]
    ser = PacketSerializer(48, 40, 'event_camera')
    assert ser.usable and len(packets) > 20
    rng = np.random.default_rng(0)
    for pkt in packets[::5]:
        blob = ser.serialize(pkt)
        for shift_us in (0, 4096, 4096 * 4095, 4096 * 4097, 4096 * int(rng.integers(1, 10**6))):
            stamp, seq_no = int(rng.integers(0, 2**31 * 10**9)), int(rng.integers(0, 2**63))   # sec is int32
            got = deserialize_message(ser.render(blob, stamp, seq_no, shift_us), EventPacket)
            want = ser.message(shift_evt3_payload(pkt.payload, shift_us), seq_no, stamp)
            assert same_packet(got, want)
            assert len(serialize_message(want)) == blob.num_bytes
            assert got.seq == seq_no and got.header.stamp.sec * 10**9 + got.header.stamp.nanosec == stamp
            assert (got.width, got.height, got.encoding) == (48, 40, 'evt3')
