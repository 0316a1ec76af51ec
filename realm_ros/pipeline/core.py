"""ROS-free REALM inference: one event window -> voxel grid -> tokens (once) -> every enabled head -> outputs.

(Over 500 lines because it holds the checkpoint loading and cross-checks of six model files, the runtime
configuration and both halves of a window; the heavy parts live in ``dense``, ``pose_tracker`` and ``render``.)

Used by the perception node, the demo and the benchmarks::

    pipe = RealmPipeline(PipelineConfig(realm_checkpoint='realm.safetensors', dune_checkpoint='dune.pth',
                                        depth_head_checkpoint='depth.safetensors', ...))
    out = pipe.process(events, height=480, width=640, K=K, stamp_ns=t)   # PipelineOutput (numpy arrays)

Checkpoints (all optional except the REALM encoder; a head whose weights are missing is unavailable):

=================  ===============================================================================================
realm              REALM encoder (:func:`realm_ros.models.load_realm_checkpoint`; 'lora' mode needs ``dune``)
dune               official DUNE ``.pth`` / converted ``.safetensors``: LoRA base, DINOv2 projector, RGB keyframes
depth_head         :class:`~realm_ros.models.DepthBinsHead` head checkpoint
seg_head           :class:`~realm_ros.models.SegmentationHead` head checkpoint (needs a projector)
projector          optional :class:`~realm_ros.models.DinoV2Projector` head checkpoint (else DUNE's projector)
mast3r             DUNE-MASt3R decoder (``dunemast3r_cvpr25_vit*.pth`` layout): matching and relative pose
=================  ===============================================================================================

Geometry: the sensor window is fitted to the model input (``crop`` = centre crop + resize, ``pad``, ``tile`` = four
corner tiles, ``auto`` = pad when the sensor fits, tiles when it needs at most four, else crop) by
:func:`realm_ros.events.spatial.prepare_input`; dense predictions are mapped back to sensor pixels (NaN where the
model saw nothing). Depth is metres (float32, NaN = invalid); segmentation is uint8 class ids (255 = no prediction).
Pose: MASt3R decoder on (keyframe tokens, current tokens), reciprocal nearest-neighbour matches of the descriptors,
PnP-RANSAC of the keyframe's 3D points against the current pixels with the model-space intrinsics.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
import torch

from realm_ros.common.device import DeviceError, cpu_has_native_bf16
from realm_ros.common.device import resolve_device as _resolve_device
from realm_ros.common.errors import RealmError

from . import dense
from .pose_tracker import PoseEstimate, PoseInput, PoseOutput, PoseTracker

_LOG = logging.getLogger(__name__)

HEADS: Tuple[str, ...] = ('depth', 'semantic', 'points', 'pose')
SPATIAL_MODES: Tuple[str, ...] = ('auto', 'crop', 'pad', 'tile')
NORMALIZATIONS: Tuple[str, ...] = ('dsec', 'e2vid', 'none')
PRECISIONS: Tuple[str, ...] = ('auto', 'fp32', 'fp16', 'bf16', 'bf16-embedder')


class WindowSkipped(RealmError, RuntimeError):
    """A window could not be processed for a transient reason (e.g. CUDA out of memory); ``reason`` is a short key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PipelineConfigError(RealmError, ValueError):
    """The pipeline configuration or one of its checkpoints is unusable (the message names the file / value)."""


@dataclass
class PipelineConfig:
    """Everything :class:`RealmPipeline` needs; the runtime-changeable fields can be updated with ``update()``."""

    realm_checkpoint: str = ''
    dune_checkpoint: str = ''
    depth_head_checkpoint: str = ''
    seg_head_checkpoint: str = ''
    projector_checkpoint: str = ''
    mast3r_checkpoint: str = ''
    device: str = 'auto'
    precision: str = 'auto'
    input_size: int = 0                 # 0: from the REALM checkpoint (token grid x patch size)
    keyframe_source: str = 'events'     # 'events' | 'image'
    bridge: str = ''                    # '' = the head checkpoint's / 'teacher_norm_inverse'
    force_teacher_mismatch: bool = False
    # runtime-changeable
    heads: Tuple[str, ...] = HEADS
    spatial_mode: str = 'auto'
    normalization: str = ''             # '' = from the REALM checkpoint metadata (else 'dsec')
    depth_color_range: Tuple[float, float] = (1.0, 81.0)
    points_stride: int = 2
    points_max_depth: float = 80.0
    keyframe_min_inliers: int = 30      # fewer PnP inliers -> the current view becomes a keyframe
    keyframe_max_translation: float = 0.5
    keyframe_max_rotation_deg: float = 15.0
    keyframe_max_failures: int = 3      # consecutive rejected estimates -> new keyframe (tracking lost)
    keyframe_min_interval_s: float = 0.0
    keyframe_capacity: int = 8
    keyframe_selection: str = 'newest'  # 'newest' | 'similar' (KeyframePolicy.selection)
    keyframe_max_bridged: int = 5       # pose.frame fixed: rejected steps bridged by the motion model in a row
    pose_motion_check: bool = False     # reject estimates that contradict the motion model (PoseTracker)
    # newest window unlike the keyframe: step on the newest earlier one that passes the appearance gate
    # (PoseTracker.choose_input; the runner's pose worker offers the windows posted since its last step)
    pose_similar_window_fallback: bool = True
    pose_frame: str = 'keyframe'        # 'keyframe' | 'fixed'
    max_matches_drawn: int = 200
    match_subsample: int = 8
    pnp_reprojection_px: float = 5.0
    pnp_iterations: int = 1000
    pnp_min_inliers: int = 12
    pose_symmetric: bool = True         # both decoder orders + calibrated gates (realm_ros.geometry.symmetric)
    # how the pose step computes: 'auto' = what the decoder's gates were calibrated with (its file records it)
    pose_decoder_precision: str = 'auto'    # 'auto' | 'fp32' | 'bf16' | 'bf16-heads' (the symmetric estimate's decoder)
    pose_solver: str = 'auto'               # 'auto' | 'essential' | 'pnp' (realm_ros.geometry.pose.PnpParams.solver)
    pose_length_source: str = 'auto'        # 'auto' | 'depth_head' | 'point_map' (the essential solver's length)
    pnp_ransac_kernel: str = 'auto'         # 'auto' | 'sqpnp' | 'ap3p'
    # what runs the symmetric pose step's decoder (read-only): 'auto' | 'openvino' | 'torch' (DECODER_RUNTIMES)
    pose_decoder_runtime: str = 'auto'


#: choices of PipelineConfig.pose_decoder_runtime
DECODER_RUNTIMES = ('auto', 'openvino', 'torch')

#: decoder precisions that publish the same poses through one calibration of the gates: the miniature decoder's heads
#: in bf16 against fp32, on the held-out test scenes (docs/ros.md, pose.decoder_precision)
HEADS_BF16_EQUIVALENT = {'fp32', 'bf16-heads'}

#: PipelineConfig field -> key of the decoder's pose-compute record (realm_ros.geometry.gates.POSE_COMPUTE_CHOICES)
_POSE_COMPUTE_FIELDS = (('pose_decoder_precision', 'decoder_precision'), ('pose_solver', 'solver'),
                        ('pose_length_source', 'length_source'), ('pnp_ransac_kernel', 'ransac_kernel'))

RUNTIME_FIELDS = ('heads', 'spatial_mode', 'normalization', 'depth_color_range', 'points_stride', 'points_max_depth',
                  'keyframe_min_inliers', 'keyframe_max_translation', 'keyframe_max_rotation_deg',
                  'keyframe_max_failures', 'keyframe_min_interval_s', 'keyframe_selection', 'keyframe_max_bridged',
                  'pose_motion_check', 'pose_similar_window_fallback', 'pose_frame', 'max_matches_drawn',
                  'match_subsample', 'pnp_reprojection_px', 'pnp_iterations', 'pose_symmetric',
                  'pose_decoder_precision', 'pose_solver', 'pose_length_source', 'pnp_ransac_kernel')


@dataclass
class PipelineOutput:
    """Outputs of one window in sensor pixels; fields of disabled heads are ``None``."""

    stamp_ns: int
    width: int
    height: int
    K: np.ndarray                                   # sensor intrinsics used (3x3)
    num_events: int
    depth: Optional[np.ndarray] = None              # (H, W) float32 metres, NaN invalid
    depth_color: Optional[np.ndarray] = None        # (H, W, 3) uint8 BGR
    semantic: Optional[np.ndarray] = None           # (H, W) uint8 class ids, 255 = none
    semantic_color: Optional[np.ndarray] = None     # (H, W, 3) uint8 BGR
    points_xyz: Optional[np.ndarray] = None         # (N, 3) float32 metres, camera optical frame
    points_rgb: Optional[np.ndarray] = None         # (N, 3) uint8 RGB
    pose: Optional[PoseEstimate] = None
    matches_image: Optional[np.ndarray] = None      # (S, 2S, 3) uint8 BGR
    spatial_mode: str = ''
    timings_ms: Dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# device / precision


def resolve_device(requested: str) -> Tuple[torch.device, Optional[str]]:
    """:func:`realm_ros.common.device.resolve_device` with CUDA fallback (CPU + warning); a device string torch does
    not know raises :class:`PipelineConfigError`."""
    try:
        return _resolve_device(requested, cuda_fallback=True)
    except DeviceError as exc:
        raise PipelineConfigError(str(exc)) from None


def resolve_precision(requested: str, device: torch.device) -> Tuple[Optional[torch.dtype], Optional[str]]:
    """Autocast dtype for ``requested`` (one of :data:`PRECISIONS`) on ``device`` (None = float32; also for
    ``bf16-embedder``, which converts the embedder's weights instead: :func:`embedder_dtype`).

    ``auto``: bf16 on CUDA devices that support it, else fp16; on the CPU bf16 where the processor computes bfloat16
    in hardware (:func:`realm_ros.common.device.cpu_has_native_bf16`: AVX512-BF16 or AMX, e.g. AMD Zen 4, Intel
    Sapphire Rapids), else fp32. ``bf16`` on a CPU without bfloat16 arithmetic runs with a warning (emulated, slower
    than fp32). Autocast covers the encoders (REALM, the DUNE teacher on RGB keyframes) and the dense heads; the
    MASt3R decoder, matching and the pose solvers always run in fp32 (``pose.decoder_precision``). ``fp32`` is the
    exact reference path.

    Why bf16 is the CPU default where the hardware has it: one core of a Zen 4 runs the miniature encoder 1.5x faster
    and the node's dense work per window 0.81x the CPU time, while the held-out test scenes score the same within
    their noise (event depth error +0.35 % at 10 m, mIoU 0.3737 -> 0.3741; symmetric event-event pose with the
    shipped gates: AUC_pose@20 0.440 -> 0.436, published 76.7 -> 77.4 %, forward sign 74.8 % either way, the same
    false-positive rates; docs/ros.md, "precision")."""
    req = (requested or 'auto').lower()
    if req not in PRECISIONS:
        raise PipelineConfigError(f'invalid precision {requested!r}; expected one of {", ".join(PRECISIONS)}')
    if req == 'fp32':
        return None, None
    if req == 'bf16-embedder':                     # see embedder_dtype: no autocast
        if device.type == 'cpu' and not cpu_has_native_bf16():
            return None, ('this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX): the bf16 embedder is emulated '
                          'and slower than fp32; use precision fp32 or auto')
        return None, None
    if device.type != 'cuda':
        if req == 'auto':
            return (torch.bfloat16 if device.type == 'cpu' and cpu_has_native_bf16() else None), None
        if req == 'fp16':
            return None, 'fp16 is not supported for CPU inference: running in fp32'
        if device.type == 'cpu' and not cpu_has_native_bf16():
            return torch.bfloat16, ('this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX): bf16 is emulated and '
                                    'slower than fp32; use precision fp32 or auto')
        return torch.bfloat16, None
    if req == 'auto':
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), None
    return (torch.float16 if req == 'fp16' else torch.bfloat16), None


def embedder_dtype(requested: str) -> Optional[torch.dtype]:
    """The dtype the voxel embedder's weights are converted to (None: left as loaded, float32).

    ``bf16-embedder`` runs the convolutional voxel embedder in bfloat16 and everything after it (ViT, heads, decoder)
    in float32: the miniature encoder 1.18x faster on one CPU core with bfloat16 arithmetic
    (``benchmarks/bench_dense.py``), tokens within cosine 0.9999 of float32. ``auto`` does not choose it (the
    precision section of docs/ros.md has the measured accuracy)."""
    return torch.bfloat16 if (requested or 'auto').lower() == 'bf16-embedder' else None


def _is_cuda_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, 'OutOfMemoryError', None)
    return (oom is not None and isinstance(exc, oom)) or 'CUDA out of memory' in str(exc)


# ---------------------------------------------------------------------------------------------------------------

@dataclass
class PipelineModules:
    """The models of a pipeline: the REALM encoder (LoRA merged) and the optional teacher, heads and decoder.

    ``sources`` names where each came from (file paths), for error messages.
    """

    encoder: Any
    dune: Any = None
    depth_head: Any = None
    seg_head: Any = None
    projector: Any = None
    mast3r: Any = None
    sources: Dict[str, str] = field(default_factory=dict)


@dataclass
class _KeptWindow:
    """A window's encoder output and geometry, kept after its dense heads (``RealmPipeline.complete_dense``)."""

    tokens: Dict[str, Any]
    prep: Any
    K: np.ndarray
    width: int
    height: int
    num_events: int
    mode: str
    computed: Optional[FrozenSet[str]]          # the dense outputs computed for it (None: all)


class RealmPipeline:
    """Loads the configured checkpoints once and turns event windows into outputs (thread-safe ``process``).

    Raises :class:`PipelineConfigError` / :class:`FileNotFoundError` / ``CheckpointError`` (all naming the file) if a
    configured checkpoint is missing or incompatible. ``warnings`` lists non-fatal set-up problems (CPU fallback ...).
    """

    def __init__(self, config: PipelineConfig, log: Optional[Callable[[str], None]] = None, *,
                 modules: Optional['PipelineModules'] = None) -> None:
        self.config = replace(config)
        self._log = log or _LOG.warning
        self._lock = threading.RLock()
        self._config_lock = threading.Lock()
        self.warnings: List[str] = []
        self.device, warn = resolve_device(config.device)
        self._warn(warn)
        self.autocast_dtype, warn = resolve_precision(config.precision, self.device)
        self._warn(warn)
        self._counters: Dict[str, int] = {}
        self.pose_tracker: Optional[PoseTracker] = None
        # CPU voxel grid built in place window after window (it is dead once the input tensor is prepared)
        self._voxel_buffer: Optional[torch.Tensor] = None
        self._validate_runtime(self.config)
        self._setup(modules if modules is not None else self._load_modules())

    @classmethod
    def from_checkpoints(cls, config: PipelineConfig, log: Optional[Callable[[str], None]] = None) -> 'RealmPipeline':
        """Load the checkpoint files named in ``config`` (the same as the constructor without ``modules``)."""
        return cls(config, log)

    @classmethod
    def from_modules(cls, modules: 'PipelineModules', config: Optional[PipelineConfig] = None,
                     log: Optional[Callable[[str], None]] = None) -> 'RealmPipeline':
        """A pipeline over already built modules (tests, notebooks, custom loading); the checkpoint paths of
        ``config`` are ignored. The same cross-checks as for files apply."""
        return cls(config or PipelineConfig(), log, modules=modules)

    # ------------------------------------------------------------------------------------------------ set-up
    def _warn(self, message: Optional[str]) -> None:
        if message:
            self.warnings.append(message)
            self._log(message)

    @staticmethod
    def _existing(path: str, what: str) -> Path:
        p = Path(os.path.expanduser(path))
        if not p.is_file():
            raise FileNotFoundError(f'{what} checkpoint not found: {p}')
        return p

    def _load_modules(self) -> 'PipelineModules':
        """Read the configured checkpoint files (names in every error)."""
        from realm_ros.models import load_dune, load_head_checkpoint, load_realm_checkpoint
        cfg = self.config
        if not cfg.realm_checkpoint:
            raise PipelineConfigError('no REALM encoder checkpoint configured (parameter checkpoints.realm)')
        m = PipelineModules(encoder=None, sources={'encoder': cfg.realm_checkpoint})
        realm_path = self._existing(cfg.realm_checkpoint, 'REALM encoder')
        if cfg.dune_checkpoint:
            m.dune = load_dune(self._existing(cfg.dune_checkpoint, 'DUNE'), device='cpu')
            m.sources['dune'] = m.sources['projector'] = cfg.dune_checkpoint
        m.encoder = load_realm_checkpoint(realm_path, dune=m.dune, device='cpu', force=cfg.force_teacher_mismatch)
        m.encoder.merge_lora()
        teacher_sha = (getattr(m.encoder, 'checkpoint_metadata', None) or {}).get('teacher_sha256')

        def head(path: str, what: str, kind: str) -> Any:
            return load_head_checkpoint(self._existing(path, what), device=self.device, kind=kind,
                                        teacher_sha256=teacher_sha, force=cfg.force_teacher_mismatch)
        if cfg.depth_head_checkpoint:
            m.depth_head = head(cfg.depth_head_checkpoint, 'depth head', 'depth_bins')
            m.sources['depth_head'] = cfg.depth_head_checkpoint
        if cfg.seg_head_checkpoint:
            m.seg_head = head(cfg.seg_head_checkpoint, 'segmentation head', 'segmentation')
            m.sources['seg_head'] = cfg.seg_head_checkpoint
            if cfg.projector_checkpoint:
                m.projector = head(cfg.projector_checkpoint, 'DINOv2 projector', 'dinov2_projector')
                m.sources['projector'] = cfg.projector_checkpoint
        if cfg.mast3r_checkpoint:
            from realm_ros.models.mast3r import load_dune_mast3r
            m.mast3r = load_dune_mast3r(self._existing(cfg.mast3r_checkpoint, 'DUNE-MASt3R'), device=self.device)
            m.sources['mast3r'] = cfg.mast3r_checkpoint
        return m

    def _setup(self, m: 'PipelineModules') -> None:
        """Check the modules against each other, move them to the device, build the pose tracker."""
        cfg = self.config
        src = m.sources
        self.dune = m.dune
        self.encoder = m.encoder
        self.encoder.to(self.device).eval().requires_grad_(False)
        self.embedder_dtype = embedder_dtype(cfg.precision)
        if self.embedder_dtype is not None:
            self.encoder.embedder.to(self.embedder_dtype)       # in place: the module is the pipeline's from now on
        self.metadata: Dict[str, Any] = dict(getattr(self.encoder, 'checkpoint_metadata', {}) or {})
        self.patch_size = int(self.encoder.patch_size)
        grid = tuple(int(g) for g in self.encoder.grid_size)
        if grid[0] != grid[1]:
            raise PipelineConfigError(f'{src.get("encoder")}: non-square token grid {grid} is not supported')
        self.grid: Tuple[int, int] = (grid[0], grid[1])
        native = grid[0] * self.patch_size
        self.input_size = int(cfg.input_size) or native
        if self.input_size != native:
            self._warn(f'input.size {self.input_size} differs from the checkpoint\'s native {native} '
                       f'({grid[0]}x{grid[1]} tokens x {self.patch_size} px): predictions are rescaled')
        self.bins = int(self.encoder.embedder.in_channels)
        voxel_meta = self.metadata.get('voxel') or {}
        self.default_normalization = str(voxel_meta.get('normalization') or 'dsec')
        if self.default_normalization not in NORMALIZATIONS:
            raise PipelineConfigError(f'{src.get("encoder")}: unknown voxel normalization '
                                      f'{self.default_normalization!r}')
        self.depth_head, self.seg_head, self.projector, self.mast3r = m.depth_head, m.seg_head, m.projector, m.mast3r
        self._head_bridge = {}
        if self.depth_head is not None:
            self.depth_head.to(self.device).eval()
            self._check_width(self.depth_head.embed_dim, src.get('depth_head', 'depth head'))
        if self.seg_head is not None:
            self.seg_head.to(self.device).eval()
            self._head_bridge['semantic'] = (getattr(self.seg_head, 'checkpoint_metadata', None) or {}).get('bridge')
            if self.projector is None and self.dune is not None:
                try:
                    self.projector = self.dune.projector
                except KeyError as exc:
                    raise PipelineConfigError(f'{src.get("dune")}: {exc.args[0]}; the segmentation head needs '
                                              'the DINOv2 projector') from None
            if self.projector is None:
                raise PipelineConfigError(f'segmentation head {src.get("seg_head", "")} needs the DINOv2 projector: '
                                          'set checkpoints.dune (official DUNE file) or checkpoints.projector')
            self.projector.to(self.device).eval()
            self._check_width(self.projector.embed_dim, src.get('projector', 'DINOv2 projector'))
            if self.projector.out_dim != self.seg_head.in_dim:
                raise PipelineConfigError(f'{src.get("seg_head", "segmentation head")}: segmentation head expects '
                                          f'{self.seg_head.in_dim}-d features but the projector outputs '
                                          f'{self.projector.out_dim}')
        if self.mast3r is not None:
            self.mast3r.to(self.device).eval()
            if self.mast3r.config.enc_embed_dim != self.encoder.embed_dim:
                raise PipelineConfigError(f'{src.get("mast3r", "DUNE-MASt3R")}: DUNE-MASt3R decoder expects '
                                          f'{self.mast3r.config.enc_embed_dim}-d tokens, the REALM encoder produces '
                                          f'{self.encoder.embed_dim}-d')
        if cfg.keyframe_source == 'image':
            if self.dune is None:
                raise PipelineConfigError('keyframe.source image needs the DUNE RGB encoder: set checkpoints.dune')
            self.dune.encoder.to(self.device)
        elif cfg.keyframe_source != 'events':
            raise PipelineConfigError(f"keyframe source must be 'events' or 'image', got {cfg.keyframe_source!r}")
        self._compiled_decoder_maps = self._make_decoder_runtime(self.config)
        compute = self._resolve_pose_compute(self.config)
        self._pnp_params = self._make_pnp_params(self.config, compute['ransac_kernel'], compute['solver'])
        self._set_pose_compute(compute if self.mast3r is not None else dict(compute, warnings=[]))
        self.pose_tracker = PoseTracker(self, self._count)
        for head in self.config.heads:
            missing = self.missing_for_head(head)
            if missing:
                self._warn(f'head {head!r} disabled: {missing}')
        self._encoder_runs = 0
        # the last window's encoder output and geometry (complete_dense: outputs subscribed during a memory hold)
        self._last_dense: Optional[_KeptWindow] = None

    def _check_width(self, width: int, path: Any) -> None:
        if int(width) != int(self.encoder.embed_dim):
            raise PipelineConfigError(f'{path}: expects {width}-d encoder tokens, the REALM encoder produces '
                                      f'{self.encoder.embed_dim}-d')

    def missing_for_head(self, head: str) -> str:
        """Why ``head`` cannot run ('' when it can)."""
        if head not in HEADS:
            return f'unknown head {head!r} (known: {", ".join(HEADS)})'
        if head in ('depth', 'points') and self.depth_head is None:
            return 'no depth head checkpoint (checkpoints.depth_head)'
        if head == 'semantic' and self.seg_head is None:
            return 'no segmentation head checkpoint (checkpoints.seg_head)'
        if head == 'pose' and self.mast3r is None:
            return 'no DUNE-MASt3R checkpoint (checkpoints.mast3r)'
        return ''

    @property
    def active_heads(self) -> Tuple[str, ...]:
        """Configured heads that have their weights."""
        return tuple(h for h in self.config.heads if not self.missing_for_head(h))

    @staticmethod
    def _validate_runtime(cfg: PipelineConfig) -> None:
        if cfg.spatial_mode not in SPATIAL_MODES:
            raise PipelineConfigError(f'invalid input mode {cfg.spatial_mode!r}; expected one of {SPATIAL_MODES}')
        if cfg.normalization not in ('',) + NORMALIZATIONS:
            raise PipelineConfigError(f'invalid voxel normalization {cfg.normalization!r}')
        if cfg.pose_frame not in ('keyframe', 'fixed'):
            raise PipelineConfigError(f"pose frame must be 'keyframe' or 'fixed', got {cfg.pose_frame!r}")
        unknown = [h for h in cfg.heads if h not in HEADS]
        if unknown:
            raise PipelineConfigError(f'unknown heads {unknown}; known: {HEADS}')
        lo, hi = cfg.depth_color_range
        if not 0 < lo < hi:
            raise PipelineConfigError(f'depth colour range must satisfy 0 < min < max, got {lo}, {hi}')
        if cfg.points_stride < 1:
            raise PipelineConfigError(f'points stride must be >= 1, got {cfg.points_stride}')
        from realm_ros.geometry.gates import POSE_COMPUTE_CHOICES
        for name, key in _POSE_COMPUTE_FIELDS:
            choices = ('auto',) + POSE_COMPUTE_CHOICES[key]
            if getattr(cfg, name) not in choices:
                raise PipelineConfigError(f'{name} must be one of {choices}, got {getattr(cfg, name)!r}')

    def update(self, **changes: Any) -> None:
        """Change runtime settings (see :data:`RUNTIME_FIELDS`); validated first, applied atomically."""
        bad = sorted(set(changes) - set(RUNTIME_FIELDS))
        if bad:
            raise PipelineConfigError(f'not changeable at run time: {bad}')
        with self._config_lock:         # never waits for a window in progress: it reads the config once
            new = replace(self.config, **changes)
            self.validate_runtime_changes(new)
            policy = self._keyframe_policy(new)
            compute = self._resolve_pose_compute(new)
            pnp = self._make_pnp_params(new, compute['ransac_kernel'], compute['solver'])
            self.config = new
            if self.pose_tracker is not None:
                self.pose_tracker.keyframes.policy = policy
            self._pnp_params = pnp
            self._set_pose_compute(compute)

    @classmethod
    def validate_runtime_changes(cls, config: PipelineConfig) -> None:
        """Raise :class:`PipelineConfigError` if ``config``'s runtime fields are invalid (nothing is applied)."""
        cls._validate_runtime(config)
        cls._keyframe_policy(config)

    @staticmethod
    def _keyframe_policy(cfg: PipelineConfig) -> Any:
        from realm_ros.geometry.keyframes import KeyframePolicy
        try:
            return KeyframePolicy(capacity=cfg.keyframe_capacity, min_inliers=cfg.keyframe_min_inliers,
                                  max_translation=cfg.keyframe_max_translation,
                                  max_rotation_deg=cfg.keyframe_max_rotation_deg,
                                  max_failures=cfg.keyframe_max_failures,
                                  min_interval_ns=int(cfg.keyframe_min_interval_s * 1e9),
                                  selection=cfg.keyframe_selection, max_bridged=cfg.keyframe_max_bridged,
                                  sources=('rgb',) if cfg.keyframe_source == 'image' else ('events',))
        except ValueError as exc:
            raise PipelineConfigError(f'invalid keyframe policy: {exc}') from None

    @staticmethod
    def _make_pnp_params(cfg: PipelineConfig, ransac_kernel: str = 'sqpnp', solver: str = 'pnp') -> Any:
        from realm_ros.geometry.pose import PnpParams
        return PnpParams(reprojection_error_px=cfg.pnp_reprojection_px, iterations=cfg.pnp_iterations,
                         min_inliers=cfg.pnp_min_inliers, min_correspondences=cfg.pnp_min_inliers,
                         ransac_kernel=ransac_kernel, solver=solver, essential_iterations=cfg.pnp_iterations)

    def _resolve_pose_compute(self, cfg: PipelineConfig) -> Dict[str, Any]:
        """The decoder precision, pose solver and RANSAC kernel the pose step runs with: ``auto`` takes what the
        loaded decoder's gates were calibrated with (:func:`realm_ros.geometry.gates.pose_compute_for_decoder`),
        except that a decoder calibrated in fp32 runs its heads in bf16 (``bf16-heads``) on a CPU with bfloat16
        arithmetic (:data:`HEADS_BF16_EQUIVALENT`); bf16 falls back to fp32 where the device has no bf16 arithmetic.
        ``warnings``: choices that differ from the calibration (the published poses may then not keep the calibrated
        false-positive rate) or that run emulated."""
        from realm_ros.geometry.gates import POSE_COMPUTE_DEFAULTS, pose_compute_for_decoder
        calibrated = pose_compute_for_decoder(self.mast3r) if self.mast3r is not None else dict(POSE_COMPUTE_DEFAULTS)
        out: Dict[str, Any] = {'warnings': []}
        for name, key in _POSE_COMPUTE_FIELDS:
            requested = getattr(cfg, name)
            out[key] = calibrated[key] if requested == 'auto' else requested
            if out[key] != calibrated[key] and {out[key], calibrated[key]} != HEADS_BF16_EQUIVALENT:
                out['warnings'].append(f'{name} {out[key]}: the decoder\'s pose gates were calibrated with '
                                       f'{calibrated[key]}; published poses may not keep their calibrated '
                                       f'false-positive rate')
        native = (torch.cuda.is_bf16_supported() if self.device.type == 'cuda'
                  else self.device.type == 'cpu' and cpu_has_native_bf16())
        if cfg.pose_decoder_precision == 'auto' and out['decoder_precision'] == 'fp32' and native \
                and self.device.type == 'cpu':
            # measured on the held-out scenes with the fp32-calibrated gates: the same published poses and errors
            # (docs/ros.md, pose.decoder_precision), ~0.75x the decoder's CPU time
            out['decoder_precision'] = 'bf16-heads'
        precision = out['decoder_precision']
        if precision in ('bf16', 'bf16-heads') and not native:
            if cfg.pose_decoder_precision == 'auto':
                out['decoder_precision'] = 'fp32'
                out['warnings'].append(f'the pose gates were calibrated with a {precision} decoder but this device '
                                       'has no bfloat16 arithmetic: the decoder runs in fp32')
            else:
                out['warnings'].append(f'pose_decoder_precision {precision} on a device without bfloat16 '
                                       'arithmetic: emulated, slower than fp32')
        return out

    def _make_decoder_runtime(self, cfg: PipelineConfig) -> Any:
        """``pose.decoder_runtime``: the OpenVINO-compiled decoder maps of the pose step
        (:class:`realm_ros.models.mast3r.compiled.OpenVinoPairMaps`), or None for the eager torch decoder. ``auto``
        takes OpenVINO where it can run (installed, decoder on the CPU with the ``catmlp+dpt`` head and two
        confidences); an explicit ``openvino`` that cannot run is a :class:`PipelineConfigError`."""
        requested = cfg.pose_decoder_runtime
        if requested not in DECODER_RUNTIMES:
            raise PipelineConfigError(f'pose_decoder_runtime must be one of {DECODER_RUNTIMES}, got {requested!r}')
        if requested == 'torch' or self.mast3r is None:
            return None
        from realm_ros.models.mast3r.compiled import OpenVinoPairMaps, openvino_version
        from realm_ros.models.mast3r.heads import CatMlpDptHead
        reason = ''
        if self.device.type != 'cpu':
            reason = f'the device is {self.device} (OpenVINO runs the decoder on the CPU)'
        elif not (self.mast3r.config.two_confs and isinstance(self.mast3r.mast3r.downstream_head2, CatMlpDptHead)):
            reason = 'the decoder has no catmlp+dpt head with a separate descriptor confidence'
        elif openvino_version() is None:
            reason = 'OpenVINO is not installed (pip install openvino)'
        if reason:
            if requested == 'openvino':
                raise PipelineConfigError(f'pose_decoder_runtime openvino: {reason}')
            return None
        return OpenVinoPairMaps(self.mast3r, fallback=requested == 'auto', log=self._warn)

    @property
    def pose_decoder_maps(self) -> Any:
        """The compiled decoder maps the pose step runs with (None: the eager torch decoder; a decoder whose blocks
        run in bf16 runs eager)."""
        from realm_ros.geometry.symmetric import split_decoder_dtype
        blocks, _heads = split_decoder_dtype(self.pose_decoder_dtype)
        return self._compiled_decoder_maps if blocks is None else None

    @property
    def pose_decoder_runtime(self) -> str:
        """What runs the pose step's decoder now: ``openvino <version>`` or ``torch``."""
        maps = self.pose_decoder_maps
        return f'openvino {maps.version}' if maps is not None else 'torch'

    def warm_up_pose(self) -> float:
        """Compile the pose step's decoder maps for the pipeline's own input size (OpenVINO; nothing to do for
        torch), so the first pose step does not wait for it. Returns the seconds it took. With ``pose.decoder_runtime
        auto`` a size OpenVINO cannot compile runs on the eager decoder (warned); with ``openvino`` it raises
        :class:`realm_ros.models.mast3r.compiled.OpenVinoRuntimeError`."""
        maps = self.pose_decoder_maps
        if maps is None or self.mast3r is None:
            return 0.0
        t0 = time.perf_counter()
        n = self.grid[0] * self.grid[1]
        from realm_ros.geometry.symmetric import split_decoder_dtype
        tokens = torch.zeros(2, n, int(self.mast3r.config.enc_embed_dim))
        maps(tokens, tokens, self.grid, self.grid, heads_dtype=split_decoder_dtype(self.pose_decoder_dtype)[1])
        return time.perf_counter() - t0

    def _set_pose_compute(self, compute: Dict[str, Any]) -> None:
        from realm_ros.geometry.symmetric import DECODER_DTYPES
        resolved = {k: v for k, v in compute.items() if k != 'warnings'}
        changed = resolved != getattr(self, 'pose_compute', None)
        self.pose_compute = resolved
        #: the pose step takes the essential solver's translation length from the depth head (it needs the head)
        self.pose_uses_depth_head = (resolved['solver'] == 'essential' and resolved['length_source'] == 'depth_head'
                                     and getattr(self, 'depth_head', None) is not None)
        self.pose_decoder_dtype = DECODER_DTYPES[compute['decoder_precision']]
        for message in compute['warnings'] if changed else ():
            self._warn(message)

    def precision_name(self) -> str:
        """What runs in which precision: ``fp32``, ``bf16`` / ``float16`` (autocast) or ``bf16-embedder``."""
        if self.autocast_dtype is not None:
            return str(self.autocast_dtype).replace('torch.', '')
        return 'fp32' if self.embedder_dtype is None else 'bf16-embedder'

    def describe(self) -> str:
        """One line for logs: device, precision, input size, heads."""
        dtype = self.precision_name()
        if self.device.type == 'cpu' and self.autocast_dtype is not None \
                and (self.config.precision or 'auto').lower() == 'auto':
            dtype += ' (precision auto: this CPU computes bfloat16 in hardware; fp32 is the exact path)'
        pose = (f', pose decoder {self.pose_decoder_runtime} {self.pose_compute["decoder_precision"]}'
                if self.mast3r is not None else '')
        return (f'device {self.device}, {dtype}, input {self.input_size}x{self.input_size} '
                f'({self.grid[0]}x{self.grid[1]} tokens), {self.bins} bins, heads {list(self.active_heads)}{pose}')

    def diagnostics(self) -> Dict[str, Any]:
        """Key/values for /diagnostics."""
        out: Dict[str, Any] = {
            'device': str(self.device),
            'precision': self.precision_name(),
            'input_size': self.input_size, 'heads': ','.join(self.active_heads),
            'encoder_runs': self._encoder_runs,
        }
        if self.pose_tracker is not None:
            store = self.pose_tracker.keyframes
            latest = store.latest
            out['keyframes'] = len(store)
            out['pose_decoder_precision'] = self.pose_compute['decoder_precision']
            out['pose_decoder_runtime'] = self.pose_decoder_runtime
            out['pose_solver'] = self.pose_compute['solver']
            out['pose_length_source'] = self.pose_compute['length_source']
            out['pose_ransac_kernel'] = self.pose_compute['ransac_kernel']
            out['keyframe_stamp_ns'] = latest.stamp_ns if latest is not None else 0
            out.update({f'keyframes_{k}': v for k, v in dict(store.counters).items()})
        out.update(dict(self._counters))
        if self.device.type == 'cuda':
            out['gpu_memory_allocated_mb'] = torch.cuda.memory_allocated(self.device) / 2**20
            out['gpu_memory_peak_mb'] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out

    @property
    def keyframes(self) -> Any:
        """The pose tracker's :class:`~realm_ros.geometry.keyframes.KeyframeStore` (None before set-up)."""
        return self.pose_tracker.keyframes if self.pose_tracker is not None else None

    def reset(self) -> None:
        """Forget keyframes and the pose chain (stream restart, time jump). Never blocks: applied before the next
        pose step."""
        self._last_dense = None
        if self.pose_tracker is not None:
            self.pose_tracker.reset()

    def close(self) -> None:
        """Drop the models and release accelerator memory."""
        with self._lock:
            if self.pose_tracker is not None:
                self.pose_tracker.clear()
            if self._compiled_decoder_maps is not None:
                self._compiled_decoder_maps.close()       # on this thread, its signal stack kept (compiled.py)
            for name in ('encoder', 'dune', 'depth_head', 'projector', 'seg_head', 'mast3r', '_compiled_decoder_maps'):
                setattr(self, name, None)
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def request_keyframe(self) -> None:
        """Make the next window (or the next RGB image, source 'image') a keyframe."""
        if self.pose_tracker is not None:
            self.pose_tracker.request_keyframe()

    def offer_image_keyframe(self, rgb: np.ndarray, K: np.ndarray, stamp_ns: int) -> None:
        """Latest RGB image (H, W, 3 uint8) + its intrinsics; used at the next keyframe change (source 'image')."""
        if self.pose_tracker is None:
            raise ValueError('pipeline closed')
        self.pose_tracker.offer_image(rgb, K, stamp_ns)

    def _count(self, key: str, n: int = 1) -> None:
        self._counters[key] = self._counters.get(key, 0) + n

    # ------------------------------------------------------------------------------------------------ inference
    def spatial_mode_for(self, height: int, width: int) -> str:
        """The concrete fitting mode for a sensor size ('auto' resolved)."""
        mode = self.config.spatial_mode
        if mode != 'auto':
            return mode
        s = self.input_size
        if height <= s and width <= s:
            return 'pad'
        if s <= height <= 2 * s and s <= width <= 2 * s:
            return 'tile'
        return 'crop'

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def process(self, events: Any, height: int, width: int, K: np.ndarray, stamp_ns: int,
                outputs: Optional[Collection[str]] = None) -> PipelineOutput:
        """Run every active head on one window of events (x, y within the sensor; t in ns): the dense heads, then
        pose on the same window (the perception node runs the two halves in separate workers instead). ``outputs``:
        the dense outputs wanted (:meth:`process_dense`).

        Raises :class:`WindowSkipped` ('cuda_oom') when the accelerator runs out of memory (cache emptied first).
        """
        out, pose_input = self.process_dense(events, height, width, K, stamp_ns, outputs=outputs)
        if pose_input is not None:
            pose = self.process_pose(pose_input)
            out.pose, out.matches_image = pose.pose, pose.matches_image
            out.timings_ms.update(pose.timings_ms)
            out.timings_ms['total_ms'] += pose.timings_ms.get('pose_ms', 0.0)
        return out

    def process_dense(self, events: Any, height: int, width: int, K: np.ndarray, stamp_ns: int,
                      want_pose: Optional[bool] = None,
                      on_pose_input: Optional[Callable[[PoseInput], None]] = None,
                      outputs: Optional[Collection[str]] = None
                      ) -> Tuple[PipelineOutput, Optional[PoseInput]]:
        """Voxel grid, encoder and the dense heads (depth, semantic, points) of one window.

        Returns the outputs and, when the pose head is active (or ``want_pose``), the :class:`PoseInput` for
        :meth:`process_pose`. ``on_pose_input`` is called with that input as soon as the encoder has run, before the
        dense heads: a pose worker can start on it while they compute (the perception node does that). ``outputs``:
        the dense outputs wanted (:data:`realm_ros.pipeline.dense.DENSE_OUTPUTS`; None: all): heads and colour
        images nobody wants are not computed (the node passes the outputs whose topics have subscribers). Raises
        :class:`WindowSkipped` ('cuda_oom') on accelerator out-of-memory.
        """
        try:
            with self._lock, torch.inference_mode():
                return self._process_dense(events, int(height), int(width),
                                           np.asarray(K, np.float64).reshape(3, 3), int(stamp_ns), want_pose,
                                           on_pose_input, outputs)
        except Exception as exc:
            self._raise_if_oom(exc)
            raise

    def choose_pose_input(self, candidates: Sequence[PoseInput]) -> PoseInput:
        """The window the next pose step should use among ``candidates`` (oldest first, the newest last):
        :meth:`PoseTracker.choose_input` (the newest unless it fails the appearance gate and an earlier one passes)."""
        if not candidates:
            raise ValueError('choose_pose_input: no candidate windows')
        if self.pose_tracker is None or self.mast3r is None:
            return candidates[-1]
        return self.pose_tracker.choose_input(candidates)

    def process_pose(self, pose_input: PoseInput) -> PoseOutput:
        """Match a window against the keyframes and estimate its pose (thread-safe; independent of the dense half)."""
        if self.pose_tracker is None or self.mast3r is None:
            raise PipelineConfigError('pose is not available: ' + (self.missing_for_head('pose') or 'pipeline closed'))
        try:
            return self.pose_tracker.step(pose_input)
        except Exception as exc:
            self._raise_if_oom(exc)
            raise

    def _raise_if_oom(self, exc: BaseException) -> None:
        if _is_cuda_oom(exc):
            self._count('cuda_oom')
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise WindowSkipped('cuda_oom', f'CUDA out of memory, window skipped: {exc}') from exc

    def _process_dense(self, events: Any, height: int, width: int, K: np.ndarray, stamp_ns: int,
                       want_pose: Optional[bool], on_pose_input: Optional[Callable[[PoseInput], None]] = None,
                       outputs: Optional[Collection[str]] = None) -> Tuple[PipelineOutput, Optional[PoseInput]]:
        from realm_ros.events import voxel_grid
        from realm_ros.events.spatial import prepare_input
        cfg = self.config
        heads = self.active_heads
        pose_wanted = ('pose' in heads) if want_pose is None else (want_pose and not self.missing_for_head('pose'))
        timings: Dict[str, float] = {}
        t0 = time.perf_counter()
        normalization = cfg.normalization or self.default_normalization
        buffer = None
        if self.device.type == 'cpu':
            numel = self.bins * height * width
            if self._voxel_buffer is None or self._voxel_buffer.numel() != numel:
                self._voxel_buffer = torch.empty(numel, dtype=torch.float32)
            buffer = self._voxel_buffer
        voxel = voxel_grid(events, bins=self.bins, height=height, width=width, normalization=normalization,
                           device=self.device, out=buffer)
        mode = self.spatial_mode_for(height, width)
        prep = prepare_input(voxel, size=self.input_size, mode=mode)
        batch = prep.tensor
        n_dense = batch.shape[0]
        pose_prep = prep
        if pose_wanted and n_dense > 1:           # tiles: match on one centre-cropped view (same encoder call)
            pose_prep = prepare_input(voxel, size=self.input_size, mode='crop')
            batch = torch.cat([batch, pose_prep.tensor], dim=0)
        timings['voxel_ms'] = (time.perf_counter() - t0) * 1e3

        t1 = time.perf_counter()
        with self._autocast():
            tokens = self.encoder(batch.to(self.device, torch.float32))
        self._encoder_runs += 1
        timings['encoder_ms'] = (time.perf_counter() - t1) * 1e3
        out = PipelineOutput(stamp_ns=stamp_ns, width=width, height=height, K=K, num_events=len(events),
                             spatial_mode=mode, timings_ms=timings)
        pose_input = None
        if pose_wanted:
            idx = n_dense if pose_prep is not prep else 0
            bridge = cfg.bridge or 'teacher_norm_inverse'
            pose_input = PoseInput(
                stamp_ns=stamp_ns,
                tokens=self.encoder.head_tokens(tokens, bridge)[idx:idx + 1, 1:].float().clone(),
                cls=tokens['x_norm_clstoken'][idx].float().clone(),
                K_model=np.asarray(pose_prep.model_intrinsics(K)[0], dtype=np.float64),
                event_sum=pose_prep.tensor[idx].float().sum(dim=0).cpu().numpy(),
                depth_tokens=((tokens['x_norm_patchtokens'][idx:idx + 1].float().clone(),
                               tokens['x_norm_clstoken'][idx:idx + 1].float().clone())
                              if self.pose_uses_depth_head else None))
            timings['pose_input_ms'] = (time.perf_counter() - t0) * 1e3
            if on_pose_input is not None:
                on_pose_input(pose_input)
        window = _KeptWindow(tokens, prep, K, width, height, len(events), mode,
                             None if outputs is None else frozenset(outputs))
        self._dense_heads(window, out, outputs)
        timings['total_ms'] = (time.perf_counter() - t0) * 1e3
        self._last_dense = window
        return out, pose_input

    def _dense_heads(self, window: _KeptWindow, out: PipelineOutput, outputs: Optional[Collection[str]]) -> None:
        """The dense heads on a window's encoder output into ``out`` (its fields and ``timings_ms``)."""
        cfg = self.config
        r = dense.compute_dense(self.active_heads, window.tokens, self.grid, window.prep,
                                (self.input_size, self.input_size), window.K, depth_head=self.depth_head,
                                encoder=self.encoder, projector=self.projector, seg_head=self.seg_head,
                                bridge=cfg.bridge or self._head_bridge.get('semantic') or 'teacher_norm_inverse',
                                depth_color_range=cfg.depth_color_range, points_stride=cfg.points_stride,
                                points_max_depth=cfg.points_max_depth, autocast=self._autocast, outputs=outputs)
        out.depth, out.depth_color, out.semantic, out.semantic_color = (r.depth, r.depth_color, r.semantic,
                                                                        r.semantic_color)
        out.points_xyz, out.points_rgb = r.points_xyz, r.points_rgb
        out.timings_ms.update(r.timings_ms)

    def complete_dense(self, outputs: Collection[str], stamp_ns: int) -> Optional[PipelineOutput]:
        """The dense outputs ``outputs`` of the last window, computed from its kept encoder output when some of them
        were not computed with it (subscribed since: the node's memory hold, when no window comes, then has them
        too), stamped ``stamp_ns``; None when the last window computed them all or there is none (or the stream
        restarted since: :meth:`reset`)."""
        last = self._last_dense
        wanted = frozenset(outputs)
        if last is None or last.computed is None or wanted <= last.computed:
            return None
        out = PipelineOutput(stamp_ns=int(stamp_ns), width=last.width, height=last.height, K=last.K,
                             num_events=last.num_events, spatial_mode=last.mode)
        with self._lock, torch.inference_mode():
            self._dense_heads(last, out, wanted)
        last.computed = wanted
        return out
