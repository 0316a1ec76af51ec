"""perception_node benchmark: message publish cost, packet-to-depth latency and sustained input rate (real DDS).

    python benchmarks/bench_node.py [--loops 3] [--rates 1 4 16 0] [--skip-node]

1. Publish cost of a 448 x 448 32FC1 depth image (build the message from numpy + ``publish`` to a subscriber in
   another context): the array.array + frombytes path of ``realm_ros.nodes.conversions`` against the naive
   "assign the numpy array to ``msg.data``" baseline in the same process (rclpy then checks every element).
2. Latency: the node runs as a subprocess on CPU with random-weight miniature checkpoints (ViT-Ti/14 at 224, all
   heads, window 30,000 events); the real recording (517 evt3 packets, 2.08 s, 165 kev/s) is published at real-time
   pace ``--loops`` times (stamps shifted so time never jumps back). Per received depth image: wall time of its
   arrival minus the wall time at which the packet holding the window's last event was published (that packet =
   the last one whose header stamp is <= the depth stamp; +-1 packet = +-4 ms). Also the node's own
   receive-to-publish latency from /diagnostics. Repeated with only the depth head (runtime parameter).
3. Design comparison (``--designs``): the node with the SHIPPED miniature models (not random weights), 34 ms time
   windows as the demo, the recording played at real-time pace ``--loops`` times, once with pose in its own worker
   (``pose.decoupled: true``, this design) and once with pose after the dense heads of each window (``false``: the
   previous single-worker design, same code otherwise). Per output (depth; pose steps = ~/matches, published every
   step; ~/pose, published only through the calibrated gates): messages per second, latency p50 / p95 (packet
   publish -> output receive, as in 2.), and event packets lost (sequence gaps the node counted).
4. Sustained input: the recording is played back to back (>= 2 s of wall time, 8 passes for 'max') at ``--rates``
   x real time (0 = as fast as this Python publisher can); per rate the events the node ingested (diagnostics)
   divided by the ingest interval (first publish until the node's packet counter stops rising), packets lost
   (best effort: the DDS reader queue overflows when the callback falls behind), windows processed and dropped.
   Ratio = ingested rate / the recording's real-time rate.
"""
from __future__ import annotations

import argparse
import bisect
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'test'))  # the realm_testing helper package

from realm_testing.perception import NodeProcess, Probe, load_packets, stamp_ns, write_params  # noqa: E402

BAG = ROOT / 'test' / 'data' / 'ecpy_test_events_1_evt3'


def _pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float('nan')


class PublishLog:
    """Wall time at which each event packet was published; output latency = receive wall time - publish wall time of
    the packet holding the window's last event (the last packet whose stamp is <= the output's stamp)."""

    def __init__(self) -> None:
        self.wall: List[float] = []
        self.stamp: List[int] = []

    def __call__(self, i: int, msg: object, wall: float) -> None:          # Probe.play(on_publish=...)
        self.wall.append(wall)
        self.stamp.append(stamp_ns(msg))

    def latencies_ms(self, received: List) -> List[float]:
        out = []
        for r in received:
            s = stamp_ns(r.msg)
            j = bisect.bisect_right(self.stamp, s) - 1
            if j >= 0 and s >= self.stamp[0]:
                out.append((r.wall - self.wall[j]) * 1e3)
        return out


def start_node(name: str, params: Path):
    """The node as a subprocess and a probe subscribed to its outputs (both ready)."""
    ns = f'/{name}'
    node = NodeProcess(name, [params], {'events': f'{ns}_in/events', 'camera_info': f'{ns}_in/camera_info'})
    if not node.wait_for_line('active: waiting for event packets', 180):
        node.stop()
        raise SystemExit('node did not start:\n' + node.output)
    probe = Probe(f'{name}_probe', ns, f'{ns}_in/events', f'{ns}_in/camera_info')
    probe.wait_for_subscriber(30)
    probe.wait_for(lambda: probe.latest_diagnostics(), 10)
    return node, probe


def bench_publish_cost(iterations: int = 200) -> Dict[str, float]:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from realm_ros.nodes.conversions import image_from_array, make_header
    ctx_pub, ctx_sub = rclpy.Context(), rclpy.Context()
    rclpy.init(context=ctx_pub)
    rclpy.init(context=ctx_sub)
    topic = f'/bench_publish_cost_{os.getpid()}'
    pub_node = rclpy.create_node('bench_pub', context=ctx_pub)
    sub_node = rclpy.create_node('bench_sub', context=ctx_sub)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = pub_node.create_publisher(Image, topic, qos)
    got = []
    sub_node.create_subscription(Image, topic, lambda m: got.append(1), qos)
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor(context=ctx_sub)
    ex.add_node(sub_node)
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    depth = np.random.default_rng(0).uniform(1, 80, (448, 448)).astype(np.float32)
    header = make_header(1, 'cam')

    def fast() -> None:
        pub.publish(image_from_array(depth, '32FC1', header))

    def naive() -> None:
        msg = Image(header=header, height=448, width=448, encoding='32FC1', step=448 * 4)
        msg.data = depth.view(np.uint8).reshape(-1)      # element-checked by rclpy
        pub.publish(msg)

    out: Dict[str, float] = {}
    for name, fn, n in (('array.array + frombytes', fast, iterations), ('numpy assignment (baseline)', naive,
                                                                        max(10, iterations // 10))):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            ex.spin_once(timeout_sec=0)
        out[name] = statistics.median(times) * 1e3
        out[name + ' p95'] = _pct(times, 95) * 1e3
    t_end = time.monotonic() + 2
    while len(got) < iterations and time.monotonic() < t_end:
        ex.spin_once(timeout_sec=0.05)
    out['received'] = len(got)
    ex.shutdown()
    pub_node.destroy_node()
    sub_node.destroy_node()
    rclpy.shutdown(context=ctx_pub)
    rclpy.shutdown(context=ctx_sub)
    return out


EMPTY_SUBSCRIBER = """
import sys, time, rclpy
from event_camera_msgs.msg import EventPacket
from rclpy.qos import QoSProfile, ReliabilityPolicy
rclpy.init()
node = rclpy.create_node('bench_empty_subscriber')
seen = [0, None, None]
def cb(msg):
    seen[0] += 1
    seen[2] = time.monotonic()
    if seen[1] is None:
        seen[1] = seen[2]
qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT)
node.create_subscription(EventPacket, sys.argv[1], cb, qos)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
print(seen[0], (seen[2] or 0) - (seen[1] or 0))
"""


def bench_empty_subscriber(packets: List, repeat: int = 8) -> Dict[str, float]:
    """Baseline: a subscriber process whose callback does nothing, flooded like the node at 'max'."""
    import subprocess
    import rclpy
    from event_camera_msgs.msg import EventPacket
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from realm_testing.perception import to_rclpy_packet
    topic = f'/bench_flood_{os.getpid()}/events'
    child = subprocess.Popen([sys.executable, '-c', EMPTY_SUBSCRIBER, topic, '25'], stdout=subprocess.PIPE,
                             text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('bench_flooder', context=ctx)
    pub = node.create_publisher(EventPacket, topic, QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    msgs = [to_rclpy_packet(m) for m in packets]
    for _ in range(repeat):
        for m in msgs:
            pub.publish(m)
    out, _ = child.communicate(timeout=60)
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    got, dur = out.split()
    return dict(received=int(got), sent=repeat * len(packets), seconds=float(dur))


def bench_node(loops: int, rates: List[float]) -> None:
    from realm_ros.pipeline.tiny import write_random_tiny_checkpoints
    packets = load_packets(BAG)
    span = stamp_ns(packets[-1]) - stamp_ns(packets[0])
    n_events_rec = 343_474
    rec_rate = n_events_rec / (span / 1e9)
    work = Path(tempfile.mkdtemp(prefix='bench_node_'))
    ckpts = write_random_tiny_checkpoints(work)
    params = write_params(work / 'params.yaml', ckpts, **{'window.count': 30000, 'diagnostics.period_s': 0.25,
                                                          'memory_hold.timeout_s': 60.0})
    name = f'bench_node_{os.getpid()}'
    ns = f'/{name}'
    node, probe = start_node(name, params)
    try:
        shift = [0]

        def play(rate: float, repeat: int = 1) -> Dict[str, float]:
            """``repeat`` back-to-back passes of the recording; returns latency samples and throughput numbers."""
            published = PublishLog()
            probe.clear()
            probe.wait_for(lambda: probe.latest_diagnostics(), 5)
            d0 = probe.latest_diagnostics()
            ev0, pk0 = int(d0['events']['events']), int(d0['events']['packets'])
            w0, dr0 = int(d0['pipeline']['windows_processed']), int(d0['pipeline']['windows_dropped'])
            wall = 0.0
            t_start = time.monotonic()
            for _ in range(repeat):
                wall += probe.play(packets, rate=rate, stamp_shift_ns=shift[0], on_publish=published)
                shift[0] += span + 5_000_000
            # the node may still be draining its queue: the ingest interval ends when its packet count stops rising
            last_count, last_change = -1, time.monotonic()
            while time.monotonic() - last_change < 1.5:
                time.sleep(0.1)
                diags = probe.messages('diagnostics')
                if diags:
                    count = int({kv.key: kv.value for st in diags[-1].msg for kv in st.values}['packets'])
                    if count != last_count:
                        last_count, last_change = count, diags[-1].wall
            ingest_s = max(last_change - t_start, wall)
            time.sleep(1.5)                  # let the last window finish
            d1 = probe.latest_diagnostics()
            return dict(wall_s=wall, ingest_s=ingest_s, latency=published.latencies_ms(probe.messages('depth')),
                        depth_msgs=len(probe.messages('depth')),
                        events_in=int(d1['events']['events']) - ev0,
                        packets_in=int(d1['events']['packets']) - pk0,
                        windows=int(d1['pipeline']['windows_processed']) - w0,
                        dropped=int(d1['pipeline']['windows_dropped']) - dr0,
                        node_lat_p50=float(d1['pipeline']['latency_ms_p50']),
                        proc_p50=float(d1['pipeline']['processing_ms_p50']))

        print(f'\n[2] packet publish -> depth receive latency, real-time pace, {loops} loops, all heads')
        lat_all: List[float] = []
        last = {}
        for _ in range(loops):
            last = play(1.0)
            lat_all += last['latency']
        print(f'    depth messages: {len(lat_all)}; latency p50 {_pct(lat_all, 50):.0f} ms, '
              f'p95 {_pct(lat_all, 95):.0f} '
              f'ms, max {max(lat_all, default=float("nan")):.0f} ms; node-internal p50 {last["node_lat_p50"]:.0f} ms, '
              f'processing p50 {last["proc_p50"]:.0f} ms; output rate {len(lat_all) / (loops * span / 1e9):.2f} Hz')

        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters
        client = probe.node.create_client(SetParameters, f'{ns}/set_parameters')
        client.wait_for_service(10)
        off = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=False)
        fut = client.call_async(SetParameters.Request(parameters=[
            Parameter(name=f'heads.{h}', value=off) for h in ('semantic', 'points', 'pose')]))
        probe.wait_for(fut.done, 10)
        lat_depth: List[float] = []
        for _ in range(loops):
            last = play(1.0)
            lat_depth += last['latency']
        print(f'    depth head only: {len(lat_depth)} messages; latency p50 {_pct(lat_depth, 50):.0f} ms, p95 '
              f'{_pct(lat_depth, 95):.0f} ms; processing p50 {last["proc_p50"]:.0f} ms; output rate '
              f'{len(lat_depth) / (loops * span / 1e9):.2f} Hz')

        print(f'\n[4] sustained input (depth head only), recording = {rec_rate / 1e3:.0f} kev/s, '
              f'{len(packets)} packets in {span / 1e9:.2f} s')
        print('    rate x | publish s | ingest s | packets in/sent | kev/s ingested | ratio vs real time | windows '
              '(dropped)')
        for rate in rates:
            repeat = max(1, int(round(rate))) if rate else 8          # >= 2 s of input per rate
            r = play(rate, repeat)
            ingest = r['events_in'] / r['ingest_s']
            print(f'    {("max" if rate == 0 else f"{rate:g}"):>6} | {r["wall_s"]:9.2f} | {r["ingest_s"]:8.2f} | '
                  f'{r["packets_in"]:4d}/'
                  f'{len(packets) * repeat} | {ingest / 1e3:14.0f} | {ingest / rec_rate:18.2f} | {r["windows"]} '
                  f'({r["dropped"]})')
        print(f'    node RSS after the run: {node.rss_mb():.0f} MB')
        base = bench_empty_subscriber(packets)
        rate_base = base['received'] / max(base['seconds'], 1e-3)
        print(f'    baseline, rclpy subscriber with an empty callback flooded the same way: {base["received"]}/'
              f'{base["sent"]} packets, {rate_base:.0f} packets/s while receiving')
    finally:
        probe.close()
        node.stop()


def bench_designs(loops: int) -> None:
    from realm_ros.demo import MINI_FILES, models_dir
    packets = load_packets(BAG)
    span = stamp_ns(packets[-1]) - stamp_ns(packets[0]) + 4_000_000
    mdir = models_dir()
    ckpts = {role: mdir / name for role, name in MINI_FILES.items()}
    work = Path(tempfile.mkdtemp(prefix='bench_design_'))
    print(f'\n[3] design comparison: shipped miniature models, 34 ms windows, {loops} x {span / 1e9:.2f} s of '
          'the recording at real-time pace')
    print('    design                  | depth Hz | depth p50/p95 ms | pose steps Hz (~/matches) | step p50/p95 ms | '
          '~/pose Hz | ~/pose p50/p95 ms | packets lost')
    for decoupled in (False, True):
        params = write_params(work / f'p{int(decoupled)}.yaml', ckpts, **{
            'window.mode': 'time', 'window.duration_ms': 34.0, 'diagnostics.period_s': 0.25,
            'memory_hold.timeout_s': 60.0, 'pose.decoupled': decoupled})
        node, probe = start_node(f'bench_design_{os.getpid()}_{int(decoupled)}', params)
        try:
            probe.play(packets[:50], rate=1.0)                                  # warm-up: first windows
            time.sleep(3.0)
            probe.clear()
            published = PublishLog()
            wall = 0.0
            for k in range(loops):
                wall += probe.play(packets, rate=1.0, stamp_shift_ns=(k + 1) * span, on_publish=published)
            time.sleep(2.0)
            d = probe.latest_diagnostics()
            # every pose step publishes ~/matches; ~/pose only what the calibrated gates let through
            ld, lm, lp = (published.latencies_ms(probe.messages(t)) for t in ('depth', 'matches', 'pose'))
            label = 'pose in its own worker' if decoupled else 'pose after dense (prev.)'
            print(f'    {label:23s} | {len(ld) / wall:8.2f} | {_pct(ld, 50):7.0f} / {_pct(ld, 95):6.0f} | '
                  f'{len(lm) / wall:25.2f} | {_pct(lm, 50):6.0f} / {_pct(lm, 95):6.0f} | '
                  f'{len(lp) / wall:9.2f} | {_pct(lp, 50):6.0f} / {_pct(lp, 95):6.0f} | '
                  f'{d["events"]["dropped_packets"]} of {loops * len(packets) + 50}')
        finally:
            probe.close()
            node.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--loops', type=int, default=3)
    ap.add_argument('--rates', type=float, nargs='+', default=[1, 4, 16, 0])
    ap.add_argument('--skip-node', action='store_true', help='only the publish-cost part')
    ap.add_argument('--designs', action='store_true', help='only the design comparison (section 3)')
    args = ap.parse_args()
    import torch
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
          f'load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, Python {platform.python_version()}')
    cost = bench_publish_cost()
    fast, naive = cost['array.array + frombytes'], cost['numpy assignment (baseline)']
    print('\n[1] 448x448 32FC1 depth image: build + publish (median / p95 ms)')
    print(f'    array.array + frombytes : {fast:.2f} / {cost["array.array + frombytes p95"]:.2f} ms')
    print(f'    numpy assignment (base) : {naive:.2f} / {cost["numpy assignment (baseline) p95"]:.2f} ms '
          f'-> x{naive / fast:.0f} faster; target < 2 ms: {"met" if fast < 2.0 else "NOT met"}')
    if args.designs:
        bench_designs(args.loops)
    elif not args.skip_node:
        bench_designs(args.loops)
        bench_node(args.loops, args.rates)


if __name__ == '__main__':
    main()
