"""Command-line front ends and orchestration of ``train_from_bag`` and ``train_heads`` (rclpy not needed).

``train_distill(cfg)`` / ``train_heads(cfg)`` run a whole training from a validated configuration; ``distill_main`` /
``heads_main`` parse ``argv`` (including ``--ros-args -p name:=value`` and ``--params-file``), map every failure to a
clear one-line message on stderr and an exit code (see :mod:`realm_ros.training.errors`), and return that code.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import textwrap
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .config import (ConfigError, DistillConfig, HeadsConfig, add_config_arguments, build_config,
                     config_to_dict, parse_ros_args, render_yaml)
from .errors import EXIT_CONFIG, DataError, Interrupted, StorageError, TrainingError

__all__ = ['distill_main', 'heads_main', 'train_distill', 'train_heads', 'build_parser', 'load_teacher']

_NETWORK_FIELDS = ('image_size', 'spatial_mode', 'bins', 'normalization', 'num_workers', 'cache_dir')


def _logger(prog: str, enabled: bool = True) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if enabled:
            print(f'[{prog}] {msg}', file=sys.stderr, flush=True)
    return log


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the *current* ``sys.stderr`` (which tests and embedding tools may replace)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; sys.stderr is always used
        pass


@contextlib.contextmanager
def _stderr_logging() -> Iterator[None]:
    """While a tool runs, the records of :mod:`realm_ros.training` (trainer progress, skipped steps, signals) go to
    stderr as plain lines, once (not also to handlers of the root logger)."""
    log = logging.getLogger('realm_ros.training')
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter('%(message)s'))
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate


def load_teacher(path: str, device: Any) -> Any:
    """Load the DUNE teacher (:func:`realm_ros.models.checkpoints.load_dune`); failures -> :class:`DataError`."""
    from realm_ros.models.checkpoints import load_dune
    if not os.path.exists(path):
        raise DataError(f'teacher checkpoint {path!r} does not exist')
    try:
        return load_dune(path, device='cpu').to(device)
    except Exception as exc:  # noqa: BLE001 - CheckpointError, unpickling errors, ...
        raise DataError(f'teacher checkpoint {path!r} cannot be loaded: {exc}') from None


def _check_network_fields(specs: Sequence[Any]) -> None:
    for spec in specs:
        bad = [k for k in spec.options if k.split('.')[0] in _NETWORK_FIELDS]
        if bad:
            raise ConfigError(f'bag {spec.path}: {", ".join(bad)} cannot differ per bag (network input settings)')


def _prepare_all(cfg: Any, info: Any, prepare: Callable[..., Any], log: Callable[[str], None],
                 **kwargs: Any) -> List[Tuple[Any, Any]]:
    """Prepare bags on local rank 0 first (others wait), then everyone loads the cache."""
    from .bag_dataset import prepare_bags
    cache_root = cfg.data.cache_dir or os.path.join(cfg.out, 'cache')
    if info.distributed:
        import torch.distributed as dist
        if info.local_rank == 0:
            bags = prepare_bags(cfg.bags, cfg.data, cache_root, prepare, log, **kwargs)
            dist.barrier()
        else:
            dist.barrier()
            bags = prepare_bags(cfg.bags, cfg.data, cache_root, prepare, lambda s: None, **kwargs)
        return bags
    return prepare_bags(cfg.bags, cfg.data, cache_root, prepare, log, **kwargs)


def _first_sample(dataset: Any) -> None:
    """Build one sample in this process before training: surfaces data problems early and compiles the numba
    kernels once in the parent, so forked data-loading workers inherit them."""
    try:
        dataset[0]
    except (ValueError, OSError, IndexError) as exc:
        raise DataError(f'cannot build a training sample: {type(exc).__name__}: {exc}') from None


def _dataset_hash(bags: Sequence[Tuple[Any, Any]]) -> str:
    return hashlib.sha256(json.dumps([os.path.basename(b.directory) for b, _ in bags]).encode()).hexdigest()[:16]


def _make_caches(cfg: Any, info: Any, datasets: Dict[str, Any], shapes: Dict[str, tuple], key: Dict[str, Any],
                 ) -> Optional[Dict[str, Any]]:
    if not cfg.run.teacher_cache:
        return None
    from .feature_cache import FeatureCache, cache_key
    cache_root = cfg.data.cache_dir or os.path.join(cfg.out, 'cache')
    caches = {}
    for split, ds in datasets.items():
        if ds is None or len(ds) == 0:
            continue
        directory = os.path.join(cache_root, f'teacher-{split}-{cache_key(**key, split=split)}')
        def make(directory=directory, ds=ds, split=split):  # loop values bound now (called in this iteration)
            return FeatureCache(directory, ds.num_samples, shapes, cfg.run.teacher_cache_dtype, dict(key, split=split))
        if info.distributed:
            import torch.distributed as dist
            if info.rank == 0:
                caches[split] = make()
            dist.barrier()
            if info.rank != 0:
                caches[split] = make()
        else:
            caches[split] = make()
    return caches


#: Written into ``--out`` when a run starts (before bag preparation): lets ``--resume`` tell "stopped before the
#: first checkpoint" (continue: finished bag preparations are cached) from "wrong directory" (error).
RUN_MARKER = 'run.json'


def _writable_dir(path: str, what: str) -> None:
    """Create ``path`` and prove that a file can be written there; :class:`StorageError` (exit 5) otherwise."""
    import tempfile
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            reason += ' (a path component is a regular file)'
        raise StorageError(f'{what} {path!r} is not a writable directory: {reason}') from None


def _resume_mode(cfg: Any, log: Callable[[str], None]) -> bool:
    """Whether the trainer should load ``<out>/checkpoints/last.pt``.

    ``--resume`` after a run that stopped before its first checkpoint (Ctrl-C during bag preparation or teacher
    loading) continues that run: bags whose preparation finished are reused from the cache, the others are
    prepared, and training starts at step 0. ``--resume`` on a directory no run ever used is a configuration error.
    """
    if not cfg.resume:
        return False
    last = os.path.join(cfg.out, 'checkpoints', 'last.pt')
    if os.path.exists(last):
        return True
    if os.path.exists(os.path.join(cfg.out, RUN_MARKER)):
        log(f'--resume: no checkpoint in {cfg.out!r} yet (the earlier run stopped before its first checkpoint): '
            'continuing the bag preparation (finished bags are reused) and training from the start')
        return False
    raise ConfigError(f'--resume: {cfg.out!r} holds no checkpoint ({last!r}) and no earlier run: check --out, '
                      'or start a new run without --resume')


def _write_run_marker(cfg: Any, prog: str) -> None:
    import time
    from .trainer import atomic_write_bytes
    marker = {'tool': prog, 'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'config': config_to_dict(cfg)}
    atomic_write_bytes(os.path.join(cfg.out, RUN_MARKER), json.dumps(marker, indent=1, default=str).encode(),
                       what='run marker')


def _interrupted_before_training(cfg: Any) -> Interrupted:
    cache_root = cfg.data.cache_dir or os.path.join(cfg.out, 'cache')
    return Interrupted(f'interrupted before the first training checkpoint (bag preparation / teacher loading); '
                       f'finished bag preparations are kept in {cache_root!r}: rerun the same command with --resume '
                       f'to continue')


def _load_teacher_for_run(cfg: Any, info: Any, prog: str, log: Callable[[str], None]) -> Tuple[Any, int, int, bool]:
    """Common start of a training run: check the bag fields, check ``--resume``, create ``cfg.out`` and the bag cache
    (main rank; exit 5 when not writable), mark the run as started, load the teacher on the CPU and check that
    ``data.image_size`` is a multiple of its patch size. Returns (dune, patch, size, resume)."""
    _check_network_fields(cfg.bags)
    resume = _resume_mode(cfg, log)
    if info.is_main:
        _writable_dir(cfg.out, 'output directory (--out)')
        _writable_dir(cfg.data.cache_dir or os.path.join(cfg.out, 'cache'), 'bag cache directory (data.cache_dir)')
        _write_run_marker(cfg, prog)
    dune = load_teacher(cfg.teacher, 'cpu')
    patch = dune.encoder.patch_size
    size = cfg.data.image_size
    if size % patch:
        raise ConfigError(f'data.image_size {size} is not a multiple of the teacher patch size {patch}')
    return dune, patch, size, resume


def _until_training(cfg: Any, build: Callable[[], Tuple[Any, bool, Any]]) -> Tuple[Any, bool, Any]:
    """Run everything before ``Trainer.fit``: Ctrl-C in there (bag preparation) -> :class:`Interrupted` (exit 130)
    with the way to continue (the trainer's own SIGINT handling takes over inside ``fit``)."""
    try:
        return build()
    except KeyboardInterrupt:
        raise _interrupted_before_training(cfg) from None


def _fit(trainer: Any, resume: bool, caches: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    result = trainer.fit(resume=resume)
    if caches:
        for c in caches.values():
            c.flush()
    return result


def train_distill(cfg: DistillConfig) -> Dict[str, Any]:
    """Distil REALM from the configured bags and teacher; returns the trainer result (incl. ``export`` path)."""
    from .trainer import init_distributed

    info = init_distributed(cfg.run.device)
    log = _logger('train_from_bag', info.is_main)
    try:
        return _fit(*_until_training(cfg, lambda: _build_distill(cfg, info, log)))
    finally:
        _shutdown(info)


def _build_distill(cfg: DistillConfig, info: Any, log: Callable[[str], None]) -> Tuple[Any, bool, Any]:
    """Teacher, prepared bags, datasets, student and trainer of a distillation run: (trainer, resume, caches)."""
    import torch
    from realm_ros.models.embedder import DEFAULT_BLOCKS, DEFAULT_WIDTHS, VoxelEmbedder
    from realm_ros.models.realm import RealmEncoder
    from .bag_dataset import DistillDataset, collate_tiles, prepare_distill_bag
    from .distill import DistillLoss
    from .distill_task import DistillTask
    from .trainer import Trainer

    dune, patch, size, resume = _load_teacher_for_run(cfg, info, 'train_from_bag', log)
    teacher = dune.encoder
    grid = size // patch
    bags = _prepare_all(cfg, info, prepare_distill_bag, log)
    d = cfg.data
    train_set = DistillDataset(bags, 'train', size, d.spatial_mode, d.bins, d.normalization)
    val_set = DistillDataset(bags, 'val', size, d.spatial_mode, d.bins, d.normalization)
    if len(train_set) == 0:
        raise DataError(f'no training pairs: all {len(val_set)} pairs are held out for validation '
                        f'(check data.split / data.val_fraction)')
    log(f'{len(train_set)} training pairs, {len(val_set)} validation pairs from {len(bags)} bag(s)')
    _first_sample(train_set)
    torch.manual_seed(cfg.run.seed)
    m = cfg.model
    widths = list(m.embedder_widths) or list(DEFAULT_WIDTHS)
    blocks = list(m.embedder_blocks) or list(DEFAULT_BLOCKS)
    try:
        embedder = VoxelEmbedder(in_channels=d.bins, embed_dim=teacher.embed_dim, grid_size=grid, widths=widths,
                                 blocks=blocks)
    except ValueError as exc:
        raise ConfigError(f'model.embedder_widths/blocks: {exc}') from None
    student = RealmEncoder(teacher, embedder, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha,
                           lora_dropout=m.lora_dropout)
    student.backbone.source_sha256 = dune.source_sha256
    loss = DistillLoss.from_config(cfg.loss, patch)
    key = {'teacher': dune.source_sha256, 'data': _dataset_hash(bags), 'size': size, 'mode': d.spatial_mode}
    caches = _make_caches(cfg, info, {'train': train_set, 'val': val_set},
                          {'cls': (teacher.embed_dim,), 'patch': (grid * grid, teacher.embed_dim)}, key)
    cfg_dict = config_to_dict(cfg)
    windows = {os.path.basename(b.name): b.meta['window'] for b, _ in bags}
    export_info = {
        'teacher_sha256': dune.source_sha256,
        'voxel': {'bins': d.bins, 'normalization': d.normalization},
        'input': {'size': size, 'mode': d.spatial_mode, 'patch_size': patch},
        'window': next(iter(windows.values())),
        'windows_per_bag': windows,
        'training': cfg_dict,
        'datasets': {b.name: b.stats for b, _ in bags},
        'export_merged': m.export_merged,
    }
    fingerprint = {'teacher_sha256': dune.source_sha256, 'architecture': json.dumps(student.architecture(),
                                                                                      sort_keys=True),
                   'input': [size, d.spatial_mode, d.bins, d.normalization], 'data': key['data']}
    task = DistillTask(teacher, student, loss, cfg.loss.token_drop, cfg.loss.token_drop_start_epoch,
                       info.device, caches, export_info, fingerprint, train_final_norm=m.train_final_norm)
    trainer = Trainer(task, train_set, val_set, cfg.optim, cfg.run, cfg.out, info, cfg_dict,
                      num_workers=d.num_workers, collate_fn=collate_tiles)
    return trainer, resume, caches


def train_heads(cfg: HeadsConfig) -> Dict[str, Any]:
    """Train the configured head on frozen DUNE features; returns the trainer result (incl. ``export`` path)."""
    from .trainer import init_distributed

    info = init_distributed(cfg.run.device)
    log = _logger('train_heads', info.is_main)
    try:
        return _fit(*_until_training(cfg, lambda: _build_heads(cfg, info, log)))
    finally:
        _shutdown(info)


def _build_heads(cfg: HeadsConfig, info: Any, log: Callable[[str], None]) -> Tuple[Any, bool, Any]:
    """Teacher, prepared bags, datasets, head and trainer of a head training run: (trainer, resume, caches)."""
    import numpy as np
    import torch
    from realm_ros.models.heads import DSEC_CLASSES, DepthBinsHead, SegmentationHead
    from .bag_dataset import HeadsDataset, collate_tiles, prepare_heads_bag
    from .heads import HeadTask, median_frequency_weights
    from .trainer import Trainer

    dune, patch, size, resume = _load_teacher_for_run(cfg, info, 'train_heads', log)
    enc = dune.encoder
    h = cfg.head
    if cfg.task == 'segmentation':
        try:
            projector = dune.projectors[h.projector]
        except KeyError:
            raise DataError(f'teacher checkpoint {cfg.teacher!r} has no {h.projector!r} projector (has '
                            f'{sorted(dune.projectors)}); the segmentation head reads its output') from None
        if h.projector != 'dino2reg_vitlarge_14':
            dune.projectors['dino2reg_vitlarge_14'] = projector
    bags = _prepare_all(cfg, info, prepare_heads_bag, log, task=cfg.task)
    d = cfg.data
    ign = cfg.seg_loss.ignore_index
    train_set = HeadsDataset(bags, 'train', size, d.spatial_mode, cfg.task, h.classes, ign)
    val_set = HeadsDataset(bags, 'val', size, d.spatial_mode, cfg.task, h.classes, ign)
    if len(train_set) == 0:
        raise DataError('no training pairs: all pairs are held out for validation (check data.split)')
    log(f'{len(train_set)} training pairs, {len(val_set)} validation pairs from {len(bags)} bag(s)')
    _first_sample(train_set)
    weights: Optional[List[float]] = None
    if cfg.task == 'segmentation':
        counts = np.zeros(256, dtype=np.int64)
        for b, _ in bags:
            counts += np.asarray(b.meta.get('label_counts') or [0] * 256, dtype=np.int64)
        stray = [i for i in range(h.classes, 256) if i != ign and counts[i] > 0]
        if stray:
            log(f'warning: label ids {stray[:8]} are >= head.classes ({h.classes}); they are ignored')
        if counts[:h.classes].sum() == 0:
            raise DataError(f'no pixel in the label images has a class id below head.classes ({h.classes})')
        weights = (list(cfg.seg_loss.class_weights) if cfg.seg_loss.class_weights
                   else median_frequency_weights(counts[:h.classes]))
        log('class weights: ' + ', '.join(f'{w:.2f}' for w in weights))
    torch.manual_seed(cfg.run.seed)
    if cfg.task == 'depth':
        head = DepthBinsHead(enc.embed_dim, h.depth_bins, h.min_depth, h.max_depth)
        shapes = {'cls': (enc.embed_dim,), 'patch': ((size // patch) ** 2, enc.embed_dim)}
    else:
        names = DSEC_CLASSES if h.classes == len(DSEC_CLASSES) else ()
        head = SegmentationHead(dune.projector.out_dim, h.classes, names)
        shapes = {'proj': (dune.projector.out_dim, size // patch, size // patch)}
    key = {'teacher': dune.source_sha256, 'data': _dataset_hash(bags), 'size': size, 'mode': d.spatial_mode,
           'task': cfg.task, 'projector': h.projector}
    caches = _make_caches(cfg, info, {'train': train_set, 'val': val_set}, shapes, key)
    cfg_dict = config_to_dict(cfg)
    export_info = {'teacher_sha256': dune.source_sha256, 'input': {'size': size, 'mode': d.spatial_mode},
                   'training': cfg_dict, 'datasets': {b.name: b.stats for b, _ in bags}}
    if cfg.task == 'segmentation':
        export_info.update(class_weights=weights, projector=h.projector)
    fingerprint = {'teacher_sha256': dune.source_sha256, 'head': json.dumps(head.config(), sort_keys=True),
                   'input': [size, d.spatial_mode], 'data': key['data']}
    task = HeadTask(cfg.task, dune, head, cfg, info.device, weights, caches, export_info, fingerprint)
    trainer = Trainer(task, train_set, val_set, cfg.optim, cfg.run, cfg.out, info, cfg_dict,
                      num_workers=d.num_workers, collate_fn=collate_tiles)
    return trainer, resume, caches


def _shutdown(info: Any) -> None:
    import torch.distributed as dist
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ====================================================================================================== argv
_EPILOG = """\
exit codes: 0 done, 2 configuration error, 3 bad input (bag, topic, message type, no pairs, teacher),
4 diverged (too many NaN/inf losses; last good checkpoint kept), 5 disk full / output not writable (last good
checkpoint intact), 130 interrupted (rerun the same command with --resume to continue, also after a Ctrl-C during
bag preparation).
ROS 2: runs under `ros2 run realm_ros {prog}`; `--ros-args -p <field>:=<value>` and `--ros-args --params-file FILE`
override configuration fields (same dotted names as below, e.g. -p optim.lr:=2e-4 -p bags:="[a.mcap, b.mcap]").
Multi-GPU (DistributedDataParallel, rank-0 logging), the same in a pip/venv and in a colcon install (after
`source install/setup.bash`):
  torchrun --nproc_per_node N -m realm_ros.nodes.{prog} ...
  python3 -m torch.distributed.run --nproc_per_node N -m realm_ros.nodes.{prog} ...   (same, without the launcher)
Multi-node: add torchrun's --nnodes, --node_rank and --rdzv_endpoint.
"""


def build_parser(prog: str, cls: type, description: str) -> argparse.ArgumentParser:
    """Argument parser with the I/O options and one ``--<dotted.field>`` option per configuration field."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     epilog=_EPILOG.format(prog=prog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--bags', nargs='+', metavar='BAG',
                        help='ROS 2 bags (directory, .db3 or .mcap); per-bag options as BAG::key=value,key=value '
                             '(any data.* field, e.g. BAG::window=time,window_ms=33,stride=5)')
    parser.add_argument('--teacher', metavar='CKPT', help='DUNE checkpoint (.pth or converted .safetensors)')
    parser.add_argument('--config', metavar='FILE', help='YAML configuration (see config/train*.yaml)')
    parser.add_argument('--out', metavar='DIR', help='output directory')
    parser.add_argument('--resume', action='store_true', help='continue exactly from <out>/checkpoints/last.pt')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved configuration as YAML and exit')
    if cls is HeadsConfig:
        parser.add_argument('--task', dest='cfg:task', choices=('depth', 'segmentation'), default=argparse.SUPPRESS,
                            help='head to train [default: depth]')
    add_config_arguments(parser, cls)
    return parser


def _main(prog: str, cls: type, description: str, run: Callable[[Any], Dict[str, Any]],
          argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, ros_params = parse_ros_args(argv)
        parser = build_parser(prog, cls, description)
        try:
            args = parser.parse_args(rest)
        except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
            return int(exc.code or 0)
        cfg: Any = build_config(cls, args, ros_params, require_io=not args.print_config)
        if args.print_config:
            sys.stdout.write(render_yaml(cfg))
            return 0
        with _stderr_logging():
            result = run(cfg)
        if result.get('export'):  # rank 0 only
            print(f'{prog}: finished: {result.get("steps")} steps, exported {result["export"]}', file=sys.stderr)
        return 0
    except ConfigError as exc:
        print(f'{prog}: configuration error: {exc}', file=sys.stderr)
        return EXIT_CONFIG
    except TrainingError as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f'{prog}: aborted', file=sys.stderr)
        return 130


def distill_main(argv: Optional[Sequence[str]] = None) -> int:
    """``train_from_bag``: distil REALM from synchronised event + RGB bags (returns the exit code)."""
    return _main('train_from_bag', DistillConfig, textwrap.dedent("""\
        Distil REALM (event voxel embedder + LoRA on DUNE) from ROS 2 bags with an event camera and an RGB camera:
        for each RGB frame the event window ending at its stamp is paired with the frame warped into the event
        camera; the frozen DUNE teacher's normalised tokens on the frame are the targets. Writes checkpoints,
        metrics.jsonl and <out>/realm.safetensors (load it in the perception node)."""), train_distill, argv)


def heads_main(argv: Optional[Sequence[str]] = None) -> int:
    """``train_heads``: train the depth or segmentation head on frozen DUNE (returns the exit code)."""
    return _main('train_heads', HeadsConfig, textwrap.dedent("""\
        Train REALM's depth head (ground-truth depth 32FC1) or segmentation head (labels mono8) on frozen DUNE
        features of RGB frames from ROS 2 bags. Writes checkpoints, metrics.jsonl and <out>/depth_head.safetensors
        or <out>/segmentation_head.safetensors."""), train_heads, argv)
