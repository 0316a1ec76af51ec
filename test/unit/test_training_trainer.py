"""Trainer mechanics on a toy task: exact resume, SIGINT checkpoints, NaN/inf handling, disk full, schedule."""
import errno
import hashlib
import json
import math
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from realm_ros.training import trainer as trainer_mod
from realm_ros.training.config import OptimConfig, RunConfig
from realm_ros.training.errors import DivergenceError, Interrupted, StorageError
from realm_ros.training.trainer import (DistInfo, ResumableDistributedSampler, TrainTask, Trainer, WarmupCosine,
                                        atomic_write_bytes)



class ToyData(Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {'x': self.x[i], 'y': self.y[i], 'index': torch.tensor(i)}


class ToyTask(TrainTask):
    """Linear regression with dropout (consumes the global RNG, like LoRA dropout / token drop)."""
    name = 'toy'

    def __init__(self, nan_after=None):
        torch.manual_seed(123)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.2), nn.Linear(16, 2))
        self.wrapped = self.net
        self.nan_after = nan_after
        self.calls = 0

    def module(self):
        return self.net

    def set_module(self, m):
        self.wrapped = m

    def train_step(self, batch, epoch):
        self.calls += 1
        dev = next(self.net.parameters()).device
        loss = ((self.wrapped(batch['x'].to(dev)) - batch['y'].to(dev)) ** 2).float().mean()
        if self.nan_after is not None and self.calls > self.nan_after:
            loss = loss * float('nan')
        return {'loss': loss, 'n': torch.tensor(float(len(batch['x'])))}

    def val_step(self, batch, epoch):
        dev = next(self.net.parameters()).device
        err = ((self.wrapped(batch['x'].to(dev)) - batch['y'].to(dev)) ** 2).float().mean(1).cpu()
        return {'sq': err.sum().double(), 'n': torch.tensor(float(len(err)), dtype=torch.float64)}

    def val_summary(self, sums):
        return {'loss': float(sums['sq'] / sums['n'])}

    def state_dict(self):
        return {k: v.clone() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state)

    def fingerprint(self):
        return {'arch': 'toy'}

    def export(self, out_dir, metrics):
        path = os.path.join(out_dir, 'toy.pt')
        torch.save(self.net.state_dict(), path)
        return path


INFO = DistInfo(0, 1, 0, torch.device('cpu'))


def make(out, task=None, epochs=3, workers=0, **run):
    optim = OptimConfig(epochs=epochs, batch_size=5, accumulation=2, lr=0.05, warmup_steps=2)
    cfg = dict(device='cpu', precision='fp32', log_every=1, progress='off', tensorboard=False, seed=7)
    cfg.update(run)
    ds = ToyData()
    return Trainer(task or ToyTask(), ds, ToyData(8), optim, RunConfig(**cfg), str(out), INFO, {'toy': True},
                   num_workers=workers)


def losses(out):
    with open(os.path.join(out, 'metrics.jsonl')) as fh:
        recs = [json.loads(line) for line in fh]
    return [r['loss'] for r in recs if r['kind'] == 'train'], recs


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_schedule_and_sampler():
    s = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert s(0) == pytest.approx(0.2) and s(3) == pytest.approx(0.8) and s(4) == pytest.approx(1.0)
    assert s(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(20) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    ds = ToyData(10)
    full = ResumableDistributedSampler(ds, 1, 0, shuffle=True, seed=3)
    full.set_position(2)
    order = list(full)
    part = ResumableDistributedSampler(ds, 1, 0, shuffle=True, seed=3)
    part.set_position(2, start=4)
    assert list(part) == order[4:] and len(part) == 6
    ranks = [ResumableDistributedSampler(ds, 2, r, shuffle=True, seed=3) for r in (0, 1)]
    for r in ranks:
        r.set_position(2)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(order)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    a = make(tmp_path / 'a')
    res = a.fit()
    ref, recs = losses(tmp_path / 'a')
    assert len(ref) == a.total_steps == 3 * 3  # ceil(24/5)=5 micro-batches -> 3 steps per epoch
    assert os.path.exists(res['export']) and any(r['kind'] == 'val' for r in recs)
    assert ref[-1] < ref[0]

    b = make(tmp_path / 'b')
    b.step_callback = lambda t: t.stop.__setattr__('requested', t.global_step == 4)  # mid-epoch 1
    with pytest.raises(Interrupted, match='--resume'):
        b.fit()
    assert b.global_step == 4 and os.path.exists(tmp_path / 'b' / 'checkpoints' / 'last.pt')
    c = make(tmp_path / 'b')
    c.fit(resume=True)
    got, recs_b = losses(tmp_path / 'b')
    assert got == ref  # bit-identical loss sequence (same data order, RNG, optimiser and schedule state)
    val_a = [r['loss'] for r in recs if r['kind'] == 'val']
    assert [r['loss'] for r in recs_b if r['kind'] == 'val'] == val_a


def test_resume_with_worker_processes_and_real_sigint(tmp_path):
    ref_tr = make(tmp_path / 'a', epochs=2, workers=2)
    ref_tr.fit()
    ref, _ = losses(tmp_path / 'a')
    b = make(tmp_path / 'b', epochs=2, workers=2)

    def interrupt(t):
        if t.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled: finish the step, checkpoint, stop

    b.step_callback = interrupt
    before = signal.getsignal(signal.SIGINT)      # default_int_handler, or SIG_IGN under a shell's background job
    with pytest.raises(Interrupted, match='SIGINT'):
        b.fit()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    make(tmp_path / 'b', epochs=2, workers=2).fit(resume=True)
    assert losses(tmp_path / 'b')[0] == ref


def test_nonfinite_steps_skipped_then_stop_keeps_last_checkpoint(tmp_path):
    # first epoch (3 steps, 5 micro-batches) is clean and checkpointed; then every loss is NaN
    task = ToyTask(nan_after=5)
    tr = make(tmp_path, task=task, max_nonfinite=3)
    ckpt = tmp_path / 'checkpoints' / 'last.pt'
    before = {}

    def snapshot(t):
        if t.global_step == 3:
            before['params'] = {k: v.clone() for k, v in task.net.state_dict().items()}

    tr.step_callback = snapshot
    with pytest.raises(DivergenceError, match='NaN/inf loss.*last good checkpoint'):
        tr.fit()
    assert tr.nonfinite == 3
    state = torch.load(ckpt, weights_only=False)
    assert state['global_step'] == 3 and state['nonfinite'] == 0
    # skipped steps did not touch the weights
    assert all(torch.equal(v, before['params'][k]) for k, v in task.net.state_dict().items())
    _, recs = losses(tmp_path)
    assert [r['nonfinite'] for r in recs if r['kind'] == 'train'][-3:] == [1, 2, 3]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    tr = make(tmp_path, epochs=2)
    ckpt = tmp_path / 'checkpoints' / 'last.pt'
    seen = {}
    real_open = open

    def full_disk_open(path, mode='r', *a, **k):
        if 'wb' in mode and '.tmp.' in str(path) and seen.get('armed'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_open(path, mode, *a, **k)

    def arm(t):
        if t.global_step == 4:  # after the first epoch checkpoint (step 3) has been written
            seen['hash'] = sha(ckpt)
            seen['armed'] = True

    tr.step_callback = arm
    monkeypatch.setattr('builtins.open', full_disk_open)
    with pytest.raises(StorageError, match='disk full'):
        tr.fit()
    monkeypatch.undo()
    assert sha(ckpt) == seen['hash']
    assert not [f for f in os.listdir(ckpt.parent) if '.tmp.' in f]
    assert torch.load(ckpt, weights_only=False)['global_step'] == 3


def test_free_space_check_refuses_before_writing(tmp_path, monkeypatch):
    target = tmp_path / 'x.bin'
    target.write_bytes(b'old')
    usage = trainer_mod.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(trainer_mod.shutil, 'disk_usage', lambda p: usage._replace(free=1000))
    with pytest.raises(StorageError, match='disk full'):
        atomic_write_bytes(str(target), b'y' * 5000, what='checkpoint')
    assert target.read_bytes() == b'old'


def test_resume_refuses_a_different_setup(tmp_path):
    make(tmp_path, epochs=1).fit()

    class Other(ToyTask):
        def fingerprint(self):
            return {'arch': 'other'}

    with pytest.raises(Exception, match='different setup.*arch'):
        make(tmp_path, task=Other(), epochs=2).fit(resume=True)


def test_bf16_autocast_on_cpu(tmp_path):
    tr = make(tmp_path, epochs=1, precision='bf16')
    assert tr.amp_dtype == torch.bfloat16 and not tr.scaler.is_enabled()
    tr.fit()
    got, _ = losses(tmp_path)
    assert len(got) == 3 and all(math.isfinite(v) for v in got)


@pytest.mark.cuda
@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_cuda_autocast_and_grad_scaler(tmp_path, precision):
    info = DistInfo(0, 1, 0, torch.device('cuda', 0))
    optim = OptimConfig(epochs=2, batch_size=5, accumulation=2, lr=0.05, warmup_steps=2)
    run = RunConfig(device='cuda', precision=precision, log_every=1, progress='off', tensorboard=False)
    tr = Trainer(ToyTask(), ToyData(), ToyData(8), optim, run, str(tmp_path), info, {}, num_workers=0)
    assert tr.scaler.is_enabled() == (precision == 'fp16')
    tr.fit()
    got, _ = losses(tmp_path)
    assert got[-1] < got[0]
    make_resumed = Trainer(ToyTask(), ToyData(), ToyData(8), optim, run, str(tmp_path), info, {}, num_workers=0)
    make_resumed.fit(resume=True)  # nothing left to do, but the scaler/optimizer states load on CUDA


def test_progress_goes_through_logging_and_the_cli_prints_it_on_stderr(tmp_path, capsys, caplog):
    import logging

    from realm_ros.training.cli import _stderr_logging
    with caplog.at_level(logging.INFO, logger='realm_ros.training'):
        make(tmp_path / 'a', epochs=1, tensorboard=False).fit()
    msgs = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ('realm_ros.training.trainer', logging.INFO, '[toy] done: 3 steps, exported '
            f'{tmp_path / "a" / "toy.pt"}') in msgs
    assert capsys.readouterr().err == ''                 # a library call prints nothing itself
    log = logging.getLogger('realm_ros.training')
    before = (list(log.handlers), log.propagate, log.level)
    with _stderr_logging():
        make(tmp_path / 'b', task=ToyTask(nan_after=2), epochs=1, tensorboard=False, max_nonfinite=9).fit()
    err = capsys.readouterr().err
    assert '[toy] non-finite loss at step 1 (epoch 0): step skipped (1/9)' in err
    assert f'[toy] done: 3 steps, exported {tmp_path / "b" / "toy.pt"}' in err
    assert (list(log.handlers), log.propagate, log.level) == before     # the CLI's handler is gone again
