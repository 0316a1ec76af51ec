"""sim_event_camera benchmark: per-packet publish cost, packet rate and size, lateness and CPU per sensor second.

    python benchmarks/bench_sim_camera.py [--width 224 --height 224 --seconds 20] [--skip-node]

1. Publish cost per EventPacket, in one process, same packets (1 ms EVT3 packets of the simulated 224x224 loop),
   same publisher (with a best-effort subscriber in another context so DDS really sends): the node's path (CDR
   serialised once, stamp / seq / TIME_HIGH words patched in a copy, ``publish(bytes)``) against building the message
   object per packet (``shift_evt3_payload`` + ``make_event_packet`` + ``publish(msg)``, the previous node's path).
   CPU time (thread_time) per packet, min and median over ``--repeat`` rounds.
2. The node as a subprocess (cache warmed first) for ``--seconds``: packets/s and bytes per packet received over DDS,
   sequence gaps (lost packets), and its own /diagnostics: late publications (later than one packet period),
   max lag, publisher-thread and whole-process CPU ms per second of sensor time.
3. With ``--previous REV``: whole-process CPU (/proc utime + stime) per second of sensor time of this node and of the
   node at git revision REV, same cached sequence, alternating runs (``--ab-rounds``).

The machine may be shared: compare ratios measured in the same run, not absolute times across runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _packets(width: int, height: int, seconds: float):
    from realm_ros.sim.live import ProgressiveSequence
    from realm_ros.sim.params import sim_config_from_values
    from realm_ros.sim.sequence import load_or_simulate
    cfg = sim_config_from_values({'width': width, 'height': height, 'duration_s': seconds})
    seq, _ = load_or_simulate(cfg)
    prog = ProgressiveSequence.from_sequence(seq)
    return [p for ps in prog.packets for p in ps]


def bench_publish(width: int, height: int, repeat: int) -> None:
    import rclpy
    from event_camera_msgs.msg import EventPacket

    from realm_ros.nodes.qos import events_qos
    from realm_ros.nodes.sim_messages import PacketSerializer
    from realm_ros.sim.packets import shift_evt3_payload
    packets = _packets(width, height, 1.0)
    sizes = [len(p.payload) for p in packets]
    print(f'{len(packets)} packets in 1 s of sensor time, payload {np.mean(sizes):.0f} B mean '
          f'({np.median([p.num_events for p in packets]):.0f} events median)')
    ctx_pub, ctx_sub = rclpy.Context(), rclpy.Context()
    rclpy.init(context=ctx_pub)
    rclpy.init(context=ctx_sub)
    pub_node = rclpy.create_node('bench_sim_pub', context=ctx_pub)
    sub_node = rclpy.create_node('bench_sim_sub', context=ctx_sub)
    topic = f'/bench_sim_{os.getpid()}'
    pub = pub_node.create_publisher(EventPacket, topic, events_qos())
    got = []
    sub_node.create_subscription(EventPacket, topic, lambda m: got.append(1), events_qos())
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx_sub)
    ex.add_node(sub_node)
    deadline = time.monotonic() + 5
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    ser = PacketSerializer(width, height, 'event_camera')
    assert ser.usable
    blobs = [ser.serialize(p) for p in packets]
    shift = 4096 * 7
    res = {'serialised once (node)': [], 'message per packet (before)': []}
    for _ in range(repeat):
        t0 = time.thread_time()
        for i, b in enumerate(blobs):
            pub.publish(ser.render(b, 1_700_000_000_000_000_000 + i, i, shift))
        res['serialised once (node)'].append((time.thread_time() - t0) / len(blobs))
        t0 = time.thread_time()
        for i, p in enumerate(packets):
            pub.publish(ser.message(shift_evt3_payload(p.payload, shift), i, 1_700_000_000_000_000_000 + i))
        res['message per packet (before)'].append((time.thread_time() - t0) / len(packets))
        for _ in range(20):
            ex.spin_once(timeout_sec=0.0)
    base = statistics.median(res['message per packet (before)'])
    for name, v in res.items():
        print(f'  {name:30s} CPU per packet min {min(v) * 1e6:6.1f} us, median {statistics.median(v) * 1e6:6.1f} us '
              f'(x{base / statistics.median(v):.2f} vs before); at {len(packets)} packets/s: '
              f'{statistics.median(v) * len(packets) * 1e3:.0f} ms CPU per sensor second')
    pub_node.destroy_node()
    sub_node.destroy_node()
    rclpy.shutdown(context=ctx_pub)
    rclpy.shutdown(context=ctx_sub)


def bench_node(width: int, height: int, seconds: float) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from event_camera_msgs.msg import EventPacket

    from realm_ros.nodes.qos import events_qos
    cache = tempfile.mkdtemp(prefix='bench_sim_cache_')
    ns = f'/bench_sim_{os.getpid()}'
    args = [sys.executable, '-m', 'realm_ros.nodes.sim_camera_node', '--ros-args', '-r', f'__ns:={ns}',
            '-p', f'width:={width}', '-p', f'height:={height}', '-p', f'cache_dir:={cache}']
    # warm the cache (one whole precompute), then measure a start from the cache
    warm = subprocess.run(args + ['-p', 'loop:=false', '-p', 'publish_ground_truth:=false'], capture_output=True,
                          text=True, timeout=900)
    if warm.returncode != 0:
        print(warm.stdout, warm.stderr)
        return
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('bench_sim_node_probe', context=ctx)
    pkts, diags = [], []
    node.create_subscription(EventPacket, ns + '/event_camera/events',
                             lambda m: pkts.append((time.monotonic(), m.seq, len(m.events))), events_qos())
    node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: diags.extend(
        {kv.key: kv.value for kv in st.values} for st in m.status if 'simulated event camera' in st.name), 10)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    t_end = None
    while proc.poll() is None:
        ex.spin_once(timeout_sec=0.05)
        if pkts and t_end is None:
            t_end = time.monotonic() + seconds
        if t_end is not None and time.monotonic() > t_end:
            break
    proc.send_signal(2)
    out, _ = proc.communicate(timeout=10)
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    if len(pkts) < 2:
        print('no packets received\n' + out)
        return
    t = np.array([p[0] for p in pkts])
    seqs = np.array([p[1] for p in pkts])
    print(f'node {width}x{height}: received {len(pkts)} packets in {t[-1] - t[0]:.1f} s = '
          f'{(len(pkts) - 1) / (t[-1] - t[0]):.0f} packets/s, payload {np.mean([p[2] for p in pkts]):.0f} B mean; '
          f'seq gaps (lost) {int(seqs[-1] - seqs[0] + 1 - len(seqs))}; exit code {proc.returncode}')
    steady = diags[2:] or diags
    for key in ('packets_per_s', 'mean_packet_bytes', 'late_in_period', 'max_lag_in_period_ms',
                'publisher_cpu_ms_per_sensor_s', 'process_cpu_ms_per_sensor_s'):
        vals = [float(d[key]) for d in steady if key in d]
        if vals:
            print(f'  diagnostics {key:32s} min {min(vals):8.1f}  median {statistics.median(vals):8.1f}  '
                  f'max {max(vals):8.1f}  (n={len(vals)})')
    if diags:
        print(f"  totals: late {diags[-1].get('late_publishes')} of {diags[-1].get('packets')} packets, "
              f"max lag {diags[-1].get('max_lag_ms')} ms")


_PREV_RUNNER = """
import importlib.util, subprocess, sys
src = subprocess.run(['git', '-C', sys.argv[1], 'show', sys.argv[2] + ':realm_ros/nodes/sim_camera_node.py'],
                     capture_output=True, text=True, check=True).stdout
import realm_ros.nodes
spec = importlib.util.spec_from_loader('realm_ros.nodes._sim_camera_node_prev', loader=None)
mod = importlib.util.module_from_spec(spec)
mod.__package__ = 'realm_ros.nodes'
exec(compile(src, 'sim_camera_node@' + sys.argv[2], 'exec'), mod.__dict__)
sys.exit(mod.main(['sim_event_camera_prev'] + sys.argv[3:]))
"""


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (s), from /proc."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def bench_ab(width: int, height: int, seconds: float, previous: str, rounds: int) -> None:
    """Whole-process CPU per second of sensor time, this node vs ``previous`` (a git revision of the node), same
    cached sequence, alternating runs; CPU over the steady window (after 4 s of publishing)."""
    import rclpy
    from event_camera_msgs.msg import EventPacket

    from realm_ros.nodes.qos import events_qos
    cache = tempfile.mkdtemp(prefix='bench_sim_ab_')
    base = ['--ros-args', '-p', f'width:={width}', '-p', f'height:={height}', '-p', f'cache_dir:={cache}']
    subprocess.run([sys.executable, '-m', 'realm_ros.nodes.sim_camera_node'] + base
                   + ['-p', 'loop:=false', '-p', 'publish_ground_truth:=false'], capture_output=True, timeout=900)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    probe = rclpy.create_node('bench_sim_ab_probe', context=ctx)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(probe)
    results: dict = {'current': [], f'previous ({previous})': []}
    for r in range(rounds):
        for name in results:
            ns = f'/simab_{os.getpid()}_{r}_{len(name)}'
            cmd = ([sys.executable, '-m', 'realm_ros.nodes.sim_camera_node'] if name == 'current' else
                   [sys.executable, '-c', _PREV_RUNNER, str(ROOT), previous])
            proc = subprocess.Popen(cmd + base + ['-r', f'__ns:={ns}'], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            got = []
            sub = probe.create_subscription(EventPacket, ns + '/event_camera/events',
                                            lambda m: got.append(time.monotonic()), events_qos())
            deadline = time.monotonic() + 120
            while not got and time.monotonic() < deadline:
                ex.spin_once(timeout_sec=0.05)
            t_warm = time.monotonic() + 4.0
            while time.monotonic() < t_warm:
                ex.spin_once(timeout_sec=0.05)
            c0, n0, w0 = _proc_cpu_s(proc.pid), len(got), time.monotonic()
            while time.monotonic() - w0 < seconds:
                ex.spin_once(timeout_sec=0.05)
            c1, n1, w1 = _proc_cpu_s(proc.pid), len(got), time.monotonic()
            proc.send_signal(2)
            proc.wait(timeout=20)
            probe.destroy_subscription(sub)
            results[name].append(((c1 - c0) * 1e3 / (w1 - w0), (n1 - n0) / (w1 - w0)))
    for name, v in results.items():
        cpu = [x[0] for x in v]
        print(f'  {name:28s} process CPU ms per sensor second: min {min(cpu):6.1f} median {statistics.median(cpu):6.1f}'
              f'  (packets received/s {statistics.median([x[1] for x in v]):.0f})')
    probe.destroy_node()
    rclpy.shutdown(context=ctx)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--width', type=int, default=224)
    ap.add_argument('--height', type=int, default=224)
    ap.add_argument('--seconds', type=float, default=20.0)
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--skip-node', action='store_true')
    ap.add_argument('--previous', default='', help='git revision of the previous node for a whole-process CPU A/B '
                    '(e.g. 3d6b999, the last commit before the pre-serialised replay)')
    ap.add_argument('--ab-rounds', type=int, default=2)
    args = ap.parse_args()
    print(f'(shared machine possible; {os.cpu_count()} CPUs)')
    bench_publish(args.width, args.height, args.repeat)
    if not args.skip_node:
        bench_node(args.width, args.height, args.seconds)
    if args.previous:
        bench_ab(args.width, args.height, args.seconds, args.previous, args.ab_rounds)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
