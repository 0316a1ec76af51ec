#!/usr/bin/env python3
"""The whole pipeline without ROS: simulated event packets at sensor pace -> EventStream -> PipelineRunner (dense and
pose workers) -> outputs, on the CPU or a GPU. The rate of each output is what the perception node can reach on
that device before DDS and message building (``benchmarks/bench_node.py`` and ``realm-demo`` measure those too, and
need ROS 2; this one needs only the ROS-free core, so ``benchmarks/gpu_check.sh`` runs it on a GPU machine).

Set-up as the perception node does it (its default parameters, :mod:`realm_ros.pipeline.settings`): the event
kernels, the matcher and the compiled refinement warmed up, the workers' torch / OpenCV threads, the pose decoder
compiled where its runtime is ``auto`` and OpenVINO is installed, the stream's windows (``--window``). The packets
are the demo rig's simulated EVT3 packets (1 ms each, the simulator's cached sequence, simulated once otherwise;
``--sensor`` changes its size)
replayed in a loop by the simulator node's own replay schedule (``realm_ros.sim.replay.Replayer``) at ``--rate`` x
real time, handed to the stream in batches every ``events.gather_ms`` as the node's intake does
(``EventStream.push_batch``).

Models (``--models``):

* ``shipped``  the trained miniature checkpoints in ``models/`` (ViT-Ti/14 REALM at 224, the 2-block decoder with
               its calibrated gates): the models the CPU targets are set for
* ``full``     full-size architectures with random weights, built in memory: REALM ViT-B/14 at 448 (voxel embedder,
               LoRA merged), the depth-bins head, the DINOv2 projector (1024) + segmentation head, and the ViT-B
               DUNE-MASt3R decoder: the shapes the GPU targets are set for (random weights: the outputs mean
               nothing, and pose steps run the whole decode + matching + solver, the gates being uncalibrated)

Reported after ``--warmup`` seconds, over ``--seconds`` of replay: per output (dense = depth / semantic / points of
a window, computed together; pose steps) the count, rate, latency p50 / p95 (arrival of the packet that completed
the window -> output handed over) and the worker's processing / thread-CPU time per output; windows dropped, packets
the replay published late, and the stream's bad packets. ``--json`` writes all of it.

Usage::

    python benchmarks/bench_pipeline.py                                   # shipped models, CPU, 20 s
    python benchmarks/bench_pipeline.py --models full --device cuda --rate 4   # the GPU target's shapes, windows
                                                                          # offered faster than real time
    python benchmarks/bench_pipeline.py --window count:150000 --rate 2    # another window rule, 2x real time
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realm_ros.events.cdr import EventPacketView, Header, Stamp  # noqa: E402
from realm_ros.miniature.recipe import DistillRecipe  # noqa: E402
from realm_ros.pipeline import settings  # noqa: E402
from realm_ros.pipeline.core import PipelineConfig, PipelineModules, RealmPipeline  # noqa: E402
from realm_ros.pipeline.runner import PipelineRunner, prepare_workers  # noqa: E402
from realm_ros.pipeline.stream import EventStream, StreamSettings  # noqa: E402
from realm_ros.sim.live import ProgressiveSequence  # noqa: E402
from realm_ros.sim.packets import PacketData, shift_evt3_payload  # noqa: E402
from realm_ros.sim.params import SIM_PARAMETERS, demo_rig, sim_config_from_values  # noqa: E402
from realm_ros.sim.replay import Replayer  # noqa: E402
from realm_ros.sim.sequence import load_or_simulate  # noqa: E402

MINI = {'realm': 'mini_realm.safetensors', 'dune': 'mini_teacher.safetensors',
        'depth_head': 'mini_depth_head.safetensors', 'seg_head': 'mini_seg_head.safetensors',
        'mast3r': 'mini_mast3r.safetensors'}
FULL_INPUT_SIZE = 448


def build_random_full_modules(seed: int = 0) -> PipelineModules:
    """Full-size modules with random weights (the official architectures' shapes), in memory."""
    from realm_ros.models import (DepthBinsHead, DinoV2Projector, RealmEncoder, SegmentationHead, VoxelEmbedder,
                                  vit_base)
    from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder
    torch.manual_seed(seed)
    backbone = vit_base(img_size=FULL_INPUT_SIZE)
    encoder = RealmEncoder(backbone, VoxelEmbedder(grid_size=FULL_INPUT_SIZE // 14), lora_rank=32, lora_dropout=0.0)
    encoder.merge_lora()
    dim = backbone.embed_dim
    return PipelineModules(
        encoder=encoder, depth_head=DepthBinsHead(dim), projector=DinoV2Projector(dim, 1024, backbone.num_heads),
        seg_head=SegmentationHead(1024), mast3r=DuneMast3rDecoder(DuneMast3rConfig.vit_base()),
        sources={'encoder': 'random full-size REALM (bench_pipeline)'})


def node_values(**changes: Any) -> Dict[str, Any]:
    """The perception node's default parameters with ``changes`` (checked as the node checks them)."""
    values = settings.defaults()
    values.update(changes)
    return settings.validate(values)


def make_pipeline(args: argparse.Namespace, values: Dict[str, Any]) -> RealmPipeline:
    get = values.__getitem__
    config = dict(device=args.device, precision=args.precision, pose_decoder_runtime=args.pose_runtime,
                  **settings.pipeline_runtime_settings(get))
    if args.models == 'full':
        return RealmPipeline.from_modules(build_random_full_modules(), PipelineConfig(**config), log=print)
    m = Path(args.model_dir)
    return RealmPipeline(PipelineConfig(
        realm_checkpoint=str(m / MINI['realm']), dune_checkpoint=str(m / MINI['dune']),
        depth_head_checkpoint=str(m / MINI['depth_head']), seg_head_checkpoint=str(m / MINI['seg_head']),
        mast3r_checkpoint=str(m / MINI['mast3r']), **config), log=print)


class Collector:
    """The runner's output sink: wall time and stamp of every output (all dense outputs wanted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dense_at: List[float] = []
        self.pose_at: List[float] = []
        self.published_at: List[float] = []

    def wanted_dense(self) -> Optional[FrozenSet[str]]:
        return None

    def dense(self, out: Any, frame_id: str) -> None:
        with self.lock:
            self.dense_at.append(time.monotonic())

    def pose(self, out: Any, frame_id: str) -> None:
        with self.lock:
            now = time.monotonic()
            self.pose_at.append(now)
            if out.pose is not None:
                self.published_at.append(now)

    def hold(self, stamp_ns: int, reason: str) -> bool:
        return False


class StreamFeeder:
    """The replay's sink: each packet becomes the message the node's intake reads (``EventPacketView``); the
    packets published since the last hand-over go to the stream together once ``gather_s`` has passed, as the
    node's intake takes them (``EventStream.push_batch``); frames are not needed."""

    def __init__(self, stream: EventStream, runner: PipelineRunner, width: int, height: int,
                 gather_s: float) -> None:
        self.stream, self.runner, self.width, self.height = stream, runner, width, height
        self.gather_s = gather_s
        self.bad = 0
        self._pending: List[Any] = []
        self._last = time.monotonic()

    def prepare(self, seq: Any, plan: Any) -> None:
        pass

    def started(self, start_ros_ns: int) -> None:
        pass

    def frame(self, index: int, t_ros_ns: int) -> None:
        pass

    def packet(self, key: Any, pkt: PacketData, stamp_ns: int, seq_no: int, shift_us: int) -> int:
        payload = shift_evt3_payload(pkt.payload, shift_us) if shift_us else pkt.payload
        msg = EventPacketView(Header(Stamp(stamp_ns // 10**9, stamp_ns % 10**9), 'event_camera'), self.height,
                              self.width, seq_no, 0, 'evt3', False, np.frombuffer(payload, np.uint8))
        self._pending.append(msg)
        now = time.monotonic()
        if now - self._last >= self.gather_s:
            events, refused = self.stream.push_batch(self._pending)
            self.bad += len(refused)
            self._pending, self._last = [], now
            if events:
                self.runner.wake()
        return len(payload)


def summarize(times: List[float], t0: float, t1: float) -> Dict[str, float]:
    inside = [t for t in times if t0 <= t <= t1]
    return {'count': len(inside), 'rate_hz': len(inside) / (t1 - t0)}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    mode, _, amount = args.window.partition(':')
    window = ({'window.mode': 'time', 'window.duration_ms': float(amount or DistillRecipe().window_ms)}
              if mode == 'time' else
              {'window.mode': 'count', 'window.count': int(amount or 150_000)})
    values = node_values(**window)
    get = values.__getitem__
    pipe = make_pipeline(args, values)
    prepare_workers(pipe, args.threads)
    compile_s = pipe.warm_up_pose() if 'pose' in pipe.active_heads else 0.0
    print(f'pipeline: {pipe.describe()}, {torch.get_num_threads()} torch threads; pose decoder ready in '
          f'{compile_s or 0.0:.1f} s', flush=True)

    sim_values = {p.name: p.default for p in SIM_PARAMETERS}
    sim_values.update(demo_rig(duration_s=args.sim_seconds))
    if args.sensor or args.models == 'full':
        w, _, h = (args.sensor or '640x480').lower().partition('x')
        sim_values.update(width=int(w), height=int(h))
    cfg = sim_config_from_values(sim_values)
    t = time.monotonic()
    simulated, cached = load_or_simulate(cfg)
    sequence = ProgressiveSequence.from_sequence(simulated)
    print(f'sequence: {cfg.width}x{cfg.height}, {cfg.duration_s:g} s, {sequence.num_events} events '
          f'({"cached" if cached else "simulated"} in {time.monotonic() - t:.1f} s)', flush=True)
    K = np.asarray(sequence.cameras()[0].K, np.float64)

    stream = EventStream(StreamSettings(**settings.stream_settings(get)), capacity_events=int(get('buffer.max_events')),
                         **{f'window_{k}': v for k, v in settings.window_settings(get).items()})
    sink = Collector()
    runner = PipelineRunner(pipe, stream, sink, lambda w, h: (K, 'camera_info'), frame_id=lambda: 'event_camera',
                            nice=int(get('inference.nice')), pose_nice=int(get('inference.pose_nice')),
                            pose_wait_fresh=bool(get('pose.wait_for_fresh_tokens')),
                            memory_hold_timeout_s=float(get('memory_hold.timeout_s')))
    feeder = StreamFeeder(stream, runner, cfg.width, cfg.height, float(get('events.gather_ms')) / 1000.0)
    stop = threading.Event()

    class Log:
        @staticmethod
        def info(message: str) -> None:
            pass
    replayer = Replayer(sequence, feeder, rate=args.rate, loop=True, max_runtime_s=args.warmup + args.seconds + 1.0,
                        now_ros_ns=time.time_ns, log=Log(), stop=stop)
    replay = threading.Thread(target=replayer.run, name='replay', daemon=True)
    runner.start()
    t_start = time.monotonic()
    replay.start()
    time.sleep(args.warmup)
    t0, cpu0 = time.monotonic(), time.process_time()
    dropped0 = stream.counters.get('windows_dropped')
    time.sleep(args.seconds)
    t1, cpu1 = time.monotonic(), time.process_time()
    diag = runner.diagnostics()
    stop.set()
    runner.stop(timeout=5.0)
    replay.join(timeout=5.0)
    ev = stream.diagnostics()
    result = {
        'machine': f'{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch '
                   f'threads', 'torch': torch.__version__,
        'device': str(pipe.device) + (f' ({torch.cuda.get_device_name(0)})' if pipe.device.type == 'cuda' else ''),
        'models': args.models, 'pipeline': pipe.describe(), 'pose_decoder_runtime': pipe.pose_decoder_runtime,
        'window': args.window, 'rate': args.rate, 'seconds': round(t1 - t0, 2), 'warmup_s': round(t0 - t_start, 2),
        'process_cpu_cores': round((cpu1 - cpu0) / (t1 - t0), 2),
        'dense': dict(summarize(sink.dense_at, t0, t1), latency_ms_p50=diag['dense_latency_ms_p50'],
                      latency_ms_p95=diag['dense_latency_ms_p95'], processing_ms_p50=diag['dense_processing_ms_p50'],
                      cpu_ms_p50=diag['dense_cpu_ms_p50']),
        'pose': dict(summarize(sink.pose_at, t0, t1), latency_ms_p50=diag['pose_latency_ms_p50'],
                     latency_ms_p95=diag['pose_latency_ms_p95'], processing_ms_p50=diag['pose_processing_ms_p50'],
                     cpu_ms_p50=diag['pose_cpu_ms_p50'], decoder_ms_p50=diag.get('pose_decoder_ms_p50', float('nan')),
                     published=summarize(sink.published_at, t0, t1)['count']),
        'windows_dropped': stream.counters.get('windows_dropped') - dropped0,
        'windows_offered_hz': (summarize(sink.dense_at, t0, t1)['count'] + stream.counters.get('windows_dropped')
                               - dropped0) / (t1 - t0),
        'processing_errors': diag['processing_errors'], 'last_error': diag.get('last_error', ''),
        'packets': ev['packets'], 'bad_packets': ev['bad_packets'] + feeder.bad,
        'replay_late_publishes': replayer.stats['late_publishes'], 'replay_max_lag_ms': replayer.stats['max_lag_ms'],
    }
    pipe.close()
    return result


def report(r: Dict[str, Any]) -> str:
    d, p = r['dense'], r['pose']
    return '\n'.join([
        f"{r['models']} models on {r['device']}: {r['pipeline']}",
        f"window {r['window']}, replay at {r['rate']:g}x real time, {r['seconds']:.1f} s measured after "
        f"{r['warmup_s']:.1f} s, process CPU {r['process_cpu_cores']:.2f} cores",
        f"  dense outputs  {d['count']:5d}  {d['rate_hz']:7.2f} Hz   latency p50 / p95 {d['latency_ms_p50']:7.1f} / "
        f"{d['latency_ms_p95']:7.1f} ms   processing {d['processing_ms_p50']:7.1f} ms   thread CPU "
        f"{d['cpu_ms_p50']:7.1f} ms",
        f"  pose steps     {p['count']:5d}  {p['rate_hz']:7.2f} Hz   latency p50 / p95 {p['latency_ms_p50']:7.1f} / "
        f"{p['latency_ms_p95']:7.1f} ms   processing {p['processing_ms_p50']:7.1f} ms   thread CPU "
        f"{p['cpu_ms_p50']:7.1f} ms   decoder {p['decoder_ms_p50']:.1f} ms   estimates published {p['published']}",
        f"  windows offered {r['windows_offered_hz']:.1f} per s, dropped {r['windows_dropped']}, processing errors "
        f"{r['processing_errors']}, packets "
        f"{r['packets']} (bad {r['bad_packets']}), replay late {r['replay_late_publishes']} "
        f"(max lag {r['replay_max_lag_ms']} ms)"])


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument('--models', choices=('shipped', 'full'), default='shipped')
    ap.add_argument('--model-dir', default=str(ROOT / 'models'), help='where the shipped checkpoints are')
    ap.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N')
    ap.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'fp16', 'bf16', 'bf16-embedder'))
    ap.add_argument('--pose-runtime', default='auto', choices=('auto', 'torch', 'openvino'))
    ap.add_argument('--threads', type=int, default=0, help='inference.threads (0: as the node chooses)')
    ap.add_argument('--window', default='time', help='time[:MS] or count[:N] (default: the demo\'s time windows, the '
                    'length the miniature REALM was distilled with)')
    ap.add_argument('--rate', type=float, default=1.0, help='replay speed (x real time)')
    ap.add_argument('--seconds', type=float, default=20.0, help='measured time')
    ap.add_argument('--warmup', type=float, default=5.0, help='replay before measuring (s)')
    ap.add_argument('--sensor', default='', help='simulated sensor WxH (default: the demo rig\'s 224x224 for the '
                    'shipped models, 640x480 for the full-size ones)')
    ap.add_argument('--sim-seconds', type=float, default=8.0, help='length of the simulated loop (cached)')
    ap.add_argument('--json', type=Path, default=None)
    args = ap.parse_args(argv)
    result = run(args)
    print(report(result), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if result['processing_errors'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
