"""The shared optimiser step (realm_ros.training.loop) against hand-written reference step sequences, bit for bit.

The shipped miniature models are reproduced by scripts/train_miniature.py only if every loop keeps the exact order of
floating-point operations: zero grads, backward, clip, AdamW step, learning rate = peak * schedule(step).
"""

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from realm_ros.common.schedule import warmup_cosine
from realm_ros.training.errors import DivergenceError
from realm_ros.training.loop import MetricWindow, OptimizerStep, run_steps

STEPS, WARMUP, LR, CLIP, MIN_RATIO = 8, 3, 0.05, 0.5, 0.1


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def make_model():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.05},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ],
        lr=LR,
    )
    return model, params, opt


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 4, generator=g)
    return x, torch.sin(3 * x[:, :2]) * 4  # large targets: the gradient norm exceeds CLIP, clipping is active


def terms_of(model, step):
    x, y = batch(step)
    err = model(x) - y
    loss = (err**2).mean()
    return {'loss': loss, 'abs': err.abs().mean().detach()}


def schedule(step):
    return warmup_cosine(step, STEPS, WARMUP, MIN_RATIO)


def reference_run(clip=CLIP, nan_steps=()):
    """The pre-refactoring miniature loop, written out by hand."""
    model, params, opt = make_model()
    lrs, norms = [], []
    for step in range(STEPS):
        for g in opt.param_groups:
            g['lr'] = LR * schedule(step)
        lrs.append(opt.param_groups[0]['lr'])
        terms = terms_of(model, step)
        if step in nan_steps:
            norms.append(float('nan'))
            continue
        opt.zero_grad(set_to_none=True)
        terms['loss'].backward()
        if clip > 0:
            norms.append(float(nn.utils.clip_grad_norm_(params, clip)))
        else:
            norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in params]))))
        opt.step()
    return model, lrs, norms


def loop_run(clip=CLIP, nan_steps=(), log_every=3, max_nonfinite=20):
    model, params, opt = make_model()
    stepper = OptimizerStep(opt, params, schedule, clip, max_nonfinite=max_nonfinite, name='toy')
    records = []

    def compute(step):
        terms = terms_of(model, step)
        if step in nan_steps:
            terms['loss'] = terms['loss'] * float('nan')
        return terms

    outcomes = run_steps(stepper, STEPS, compute, log_every, records.append)
    return model, stepper, outcomes, records


def assert_same_params(a, b):
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_loop_is_bit_identical_to_the_hand_written_adamw_clip_schedule_sequence():
    ref, ref_lrs, ref_norms = reference_run()
    got, stepper, outcomes, _ = loop_run()
    assert_same_params(got, ref)
    assert [o.lr for o in outcomes] == ref_lrs  # exact: peak * schedule(step), in that order
    assert [o.grad_norm for o in outcomes] == ref_norms
    assert max(ref_norms) > CLIP and not any(o.skipped for o in outcomes) and stepper.nonfinite == 0
    # the comparison has teeth: no clipping or a shifted schedule give other weights
    unclipped, _, _ = reference_run(clip=0.0)
    assert not all(torch.equal(a, b) for a, b in zip(unclipped.parameters(), got.parameters()))
    model, params, opt = make_model()
    shifted = OptimizerStep(opt, params, lambda s: schedule(s + 1), CLIP)
    run_steps(shifted, STEPS, lambda s: terms_of(model, s), 3, lambda r: None)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), got.parameters()))


def test_without_clipping_the_norm_is_only_measured():
    ref, _, ref_norms = reference_run(clip=0.0)
    got, _, outcomes, _ = loop_run(clip=0.0)
    assert_same_params(got, ref)
    assert [o.grad_norm for o in outcomes] == pytest.approx(ref_norms, rel=1e-6)


def test_records_average_the_terms_of_their_window():
    _, _, _, records = loop_run(log_every=3)
    assert [r['step'] for r in records] == [3, 6, 8]  # every 3 steps and at the last one
    # per-step losses of the same run, recomputed from a reference with the weights before each step
    model, params, opt = make_model()
    per_step = []
    for step in range(STEPS):
        for g in opt.param_groups:
            g['lr'] = LR * schedule(step)
        terms = terms_of(model, step)
        per_step.append({k: float(v.detach()) for k, v in terms.items()})
        opt.zero_grad(set_to_none=True)
        terms['loss'].backward()
        nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
    for rec, (lo, hi) in zip(records, [(0, 3), (3, 6), (6, 8)]):
        for key in ('loss', 'abs'):
            total = 0.0
            for s in range(lo, hi):
                total += per_step[s][key]
            assert rec[key] == total / (hi - lo)
        assert list(rec)[:2] == ['loss', 'abs'] and rec['seconds'] >= 0


def test_nonfinite_loss_skips_the_step_but_not_the_schedule(caplog):
    ref, ref_lrs, _ = reference_run(nan_steps=(2, 5))
    with caplog.at_level(logging.WARNING, logger='realm_ros.training.loop'):
        got, stepper, outcomes, records = loop_run(nan_steps=(2, 5))
    assert_same_params(got, ref)  # skipped steps left the weights alone
    assert [o.skipped for o in outcomes] == [s in (2, 5) for s in range(STEPS)]
    assert [o.lr for o in outcomes] == ref_lrs and stepper.nonfinite == 2
    assert math.isnan(records[0]['loss'])  # the window of step 2 shows the NaN
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        '[toy] non-finite loss at step 2: step skipped (1/20)',
        '[toy] non-finite loss at step 5: step skipped (2/20)',
    ]


def test_too_many_nonfinite_losses_stop_the_loop():
    with pytest.raises(DivergenceError, match=r'\[toy\] 2 steps had a NaN/inf loss .*limit 2.*step 6/8'):
        loop_run(nan_steps=(1, 5), max_nonfinite=2)


def test_nonfinite_gradient_with_a_finite_loss_is_skipped():
    model, params, opt = make_model()
    before = [p.detach().clone() for p in params]
    stepper = OptimizerStep(opt, params, schedule, CLIP, name='toy')
    loss = torch.sqrt((params[0] - params[0].detach()).sum())  # finite loss (0), infinite gradient
    assert torch.isfinite(loss) and stepper.backward(loss)
    out = stepper.step()
    assert out.skipped and math.isinf(out.grad_norm) and stepper.nonfinite == 1
    assert all(torch.equal(a, b) for a, b in zip(before, params)) and all(p.grad is None for p in params)
    assert stepper.step_index == 1  # the schedule moved on


def test_backward_divides_by_the_accumulation_group_and_honours_a_shared_verdict():
    model, params, opt = make_model()
    stepper = OptimizerStep(opt, params, schedule, 0.0)
    a, b = terms_of(model, 0)['loss'], terms_of(model, 1)['loss']
    assert stepper.backward(a, 2) and stepper.backward(b, 2)
    got = [p.grad.clone() for p in params]
    opt.zero_grad(set_to_none=True)
    ((a.detach() * 0 + terms_of(model, 0)['loss'] + terms_of(model, 1)['loss']) / 2).backward()
    assert all(torch.allclose(g, p.grad, rtol=1e-6, atol=1e-7) for g, p in zip(got, params))
    # another process saw a NaN: nobody accumulates this micro-batch
    opt.zero_grad(set_to_none=True)
    assert not stepper.backward(terms_of(model, 2)['loss'], 1, finite=torch.tensor(0.0))
    assert all(p.grad is None for p in params)


def test_metric_window():
    w = MetricWindow(every=4, total=10)
    assert [s for s in range(1, 11) if w.due(s)] == [4, 8, 10]
    w.add({'loss': 1.0, 'x': 2.0}, samples=3)
    w.add({'loss': 3.0}, samples=5)
    assert w.samples == 8 and w.samples_per_s > 0
    assert w.pop() == {'loss': 2.0, 'x': 1.0} and w.steps == 0 and w.samples == 0
    with pytest.raises(ValueError, match='log interval'):
        MetricWindow(0, 10)


def test_teacher_pretrainer_equals_its_former_hand_written_loop():
    """TeacherPretrainer.train (now run_steps) against the loop it replaced, on a 3-step tiny config."""
    from realm_ros.miniature.teacher import TeacherConfig, TeacherPretrainer

    cfg = TeacherConfig(
        image_size=28,
        proj_dim=8,
        depth_bins=8,
        scenes=1,
        steps=3,
        batch_size=1,
        low_res_steps=1,
        low_res=14,
        low_res_batch_size=1,
        warmup_steps=2,
        log_every=2,
        val_every=0,
        lr=3e-3,
        grad_clip=0.05,
    )
    new = TeacherPretrainer(cfg, log=lambda s: None)
    new.train()
    old = TeacherPretrainer(cfg, log=lambda s: None)
    old.model.train()
    old.heads.train()
    for step in range(cfg.steps):
        for g in old.opt.param_groups:
            g['lr'] = cfg.lr * warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
        sampler = old.low_sampler if step < cfg.low_res_steps else old.sampler
        size = cfg.low_res_batch_size if step < cfg.low_res_steps else cfg.batch_size
        terms = old.losses(old._augment(sampler.sample(size, old.rng)))
        old.opt.zero_grad(set_to_none=True)
        terms['loss'].backward()
        nn.utils.clip_grad_norm_(list(old.model.parameters()) + list(old.heads.parameters()), cfg.grad_clip)
        old.opt.step()
    for (name, a), b in zip(new.model.state_dict().items(), old.model.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(new.heads.state_dict().items(), old.heads.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r['step'] for r in new.history] == [2, 3]
    assert np.isfinite([r['loss'] for r in new.history]).all()
