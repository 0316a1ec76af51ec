"""Miniature-world training throughput: one step of every stage at the shipped recipe's sizes, and the projected
duration of the full recipe (``scripts/train_miniature.py``) from those steps.

    python benchmarks/bench_miniature.py [--repeat 4] [--threads 2]

Each stage step is timed ``--repeat`` times (the first, warm-up, is dropped; the minimum is kept because the machine
may be shared). Besides wall time the process CPU time is recorded: on a busy machine ``cpu / threads`` estimates
the wall time on idle cores. Ratios are against the baseline measured first in the same run: one low-resolution
teacher step (112 px, batch 32), the cheapest unit of the recipe.

Stages: teacher step at 112 and 224 px, tiny decoder step at 112 and 224 px, REALM-mini student step (embedder +
LoRA, 224 px, batch 16, teacher targets given), the simulator (wall seconds per simulated second, one core).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def timed(fn: Callable[[], None], repeat: int) -> Tuple[float, float]:
    """(min wall s, min cpu s) over repeat runs after one warm-up."""
    walls, cpus = [], []
    fn()
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main() -> int:
    from realm_ros.miniature.decoder import DecoderConfig, DecoderTrainer
    from realm_ros.miniature.recipe import RecipeConfig
    from realm_ros.miniature.teacher import TeacherConfig, TeacherPretrainer
    from realm_ros.models.embedder import VoxelEmbedder
    from realm_ros.models.realm import RealmEncoder

    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rc = RecipeConfig()
    size = rc.image_size
    results: Dict[str, Tuple[float, float, int]] = {}     # name -> (wall, cpu, samples per step)

    tc = rc.teacher
    for res, bs in ((tc.low_res, tc.low_res_batch_size), (size, tc.batch_size)):
        tr = TeacherPretrainer(TeacherConfig(image_size=res, scenes=4, low_res_steps=0), log=lambda s: None)

        def teacher_step() -> None:
            data = tr._augment(tr.sampler.sample(bs, tr.rng))
            terms = tr.losses(data)
            tr.opt.zero_grad()
            terms['loss'].backward()
            tr.opt.step()
        results[f'teacher {res} px (batch {bs})'] = (*timed(teacher_step, args.repeat), bs)
    teacher = tr.model.eval()

    dc = rc.decoder
    for res, bs in ((dc.low_res, dc.low_res_batch_size), (size, dc.batch_size)):
        dt = DecoderTrainer(DecoderConfig(scenes=4, low_res_steps=0), teacher, res, log=lambda s: None)

        def decoder_step() -> None:
            terms = dt.losses(dt.sampler.sample(bs, dt.rng))
            dt.opt.zero_grad()
            terms['loss'].backward()
            dt.opt.step()
        results[f'decoder {res} px (batch {bs} pairs)'] = (*timed(decoder_step, args.repeat), bs)

    d = rc.distill
    emb = VoxelEmbedder(in_channels=5, embed_dim=192, grid_size=size // 14, widths=d.embedder_widths,
                        blocks=d.embedder_blocks)
    student = RealmEncoder(teacher.encoder, emb, lora_rank=d.lora_rank, lora_alpha=d.lora_alpha, token_drop=0.3)
    opt = torch.optim.AdamW(student.trainable_parameters(), d.lr)
    vox = torch.randn(d.batch_size, 5, size, size)
    target = torch.randn(d.batch_size, 1 + (size // 14) ** 2, 192)
    student.train()

    def student_step() -> None:
        out = student(vox)
        loss = (out['x_norm_clstoken'] - target[:, 0]).abs().mean() + out['x_norm_patchtokens'].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    results[f'REALM student {size} px (batch {d.batch_size})'] = (*timed(student_step, args.repeat), d.batch_size)

    from realm_ros.miniature.data import sim_config, split_seeds
    from realm_ros.sim.simulator import Simulator
    b = rc.bags
    seconds = 0.3
    sims = [Simulator(sim_config(s, size, seconds, max_flow_px=b.max_flow_px, max_render_dt_us=b.max_render_dt_us))
            for s in split_seeds('train', 2)]

    def simulate() -> None:
        for sim in sims:
            for _ in sim.stream():
                pass
    w, c = timed(simulate, 1)
    sim_wall = w / (seconds * len(sims))

    base_name = next(iter(results))
    base = results[base_name][0] / results[base_name][2]
    print(f'# machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, '
          f'{args.threads} threads')
    print(f'| stage step | wall s | cpu s / threads | samples/s (wall) | per-sample cost vs {base_name} |')
    print('|---|---|---|---|---|')
    for name, (wall, cpu, n) in results.items():
        print(f'| {name} | {wall:.2f} | {cpu / args.threads:.2f} | {n / wall:.1f} | x{wall / n / base:.1f} |')
    print(f'| simulator {size} px (one core) | {sim_wall:.1f} s per simulated s | | | |')

    # projection of the full recipe from the measured steps
    per = {k: v[0] for k, v in results.items()}
    names = list(per)
    pairs = b.train_sequences * (int(b.seconds * 30))
    proj = {
        'teacher': tc.low_res_steps * per[names[0]] + (tc.steps - tc.low_res_steps) * per[names[1]],
        'decoder': dc.low_res_steps * per[names[2]] + (dc.steps - dc.low_res_steps) * per[names[3]],
        'distill (training steps only)': d.epochs * pairs / d.batch_size * per[names[4]],
        'bags': (b.train_sequences + b.val_sequences) * b.seconds * sim_wall / max(1, b.workers),
    }
    print('\nprojected recipe stages (training steps only, without data preparation and evaluation):')
    for k, v in proj.items():
        print(f'  {k}: {v / 60:.1f} min')
    print(f'  sum: {sum(proj.values()) / 60:.1f} min')
    return 0


if __name__ == '__main__':
    sys.exit(main())
