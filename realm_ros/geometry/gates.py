"""When a relative pose may be published: :class:`PoseGates`, and where calibrated gates are kept.

Gates are a property of a decoder: they are calibrated for one decoder on pairs with ground truth
(:func:`realm_ros.miniature.pose_checks.calibrate_gates`, run by the miniature recipe and by
``benchmarks/bench_pose_quality.py --write-gates``) and stored in that decoder's safetensors metadata
(``extra.pose_gates``: ``{method: {mode: {field: value}}}`` for the methods ``symmetric`` / ``direct`` and the modes
``rgb_rgb``, ``event_event``, ``rgb_event``), so the gates travel with the file they were calibrated for.
:func:`realm_ros.models.mast3r.load_dune_mast3r` parses them (:func:`parse_pose_gates`) into ``decoder.pose_gates``;
a decoder without calibration (e.g. the official DUNE-MASt3R) gets the defaults of :class:`PoseGates` (PnP's own
checks plus order agreement).

The appearance measure of the gate (:func:`view_similarity`, :func:`token_grid`) lives here too.

ROS-free, numpy only.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ['PoseGates', 'METHODS', 'MODES', 'mode_for', 'parse_pose_gates', 'pose_gates_metadata', 'gates_for_decoder',
           'view_similarity', 'token_grid', 'SIMILARITY_CELLS', 'POSE_COMPUTE_CHOICES', 'POSE_COMPUTE_DEFAULTS',
           'parse_pose_compute', 'pose_compute_for_decoder']

#: how the pose step computes (decoder precision, pose solver, PnP-RANSAC hypotheses): gates hold only for the
#: setting they were calibrated with, so a decoder file records it next to its gates (``extra.pose_gates_compute``)
POSE_COMPUTE_CHOICES: dict[str, tuple[str, ...]] = {'decoder_precision': ('fp32', 'bf16', 'bf16-heads'),
                                                    'solver': ('pnp', 'essential'),
                                                    'length_source': ('point_map', 'depth_head'),
                                                    'ransac_kernel': ('sqpnp', 'ap3p')}
#: what a decoder file without that record was calibrated with (files written before it existed) / the official
#: semantics (MASt3R's visloc: fp32 decoder, PnP-RANSAC with SQPnP)
POSE_COMPUTE_DEFAULTS: dict[str, str] = {'decoder_precision': 'fp32', 'solver': 'pnp', 'length_source': 'point_map',
                                         'ransac_kernel': 'sqpnp'}

#: the estimate methods gates are calibrated for: both decoder orders combined, or the keyframe-first order alone
METHODS = ('symmetric', 'direct')
#: the pose modes: keyframe source x current source
MODES: dict[tuple[str, str], str] = {('rgb', 'rgb'): 'rgb_rgb', ('events', 'events'): 'event_event',
                                     ('rgb', 'events'): 'rgb_event'}


@dataclass(frozen=True)
class PoseGates:
    """When a pose may be published, and how its covariance is scaled (calibrated on the miniature world).

    A pose is published only when every test passes; the first failing one is the rejection ``reason``:

    * ``min_view_similarity`` (``dissimilar_views``): :func:`view_similarity` of the keyframe's and the current
      view's decoder input tokens. An appearance check, calibrated on its own (on unrelated-scene validation pairs)
      before the geometric gates: geometry alone let pairs of two look-alike streets through (for a better-distilled
      miniature student, gates that passed 1 of 160 unrelated validation pairs passed 12 of 60 unrelated test
      pairs; models/README.md). -1 disables it; the
      symmetric estimate checks it before decoding, so a rejected pair costs no decoder pass. ``similarity_cells``:
      the cells per side the measure pools the token grid into (the threshold belongs to it; 2 in files calibrated
      before the field existed).
    * ``min_inliers`` / ``min_inlier_ratio`` (``too_few_inliers`` / ``low_inlier_ratio``): PnP inliers of *each*
      order (PnP's own thresholds in :class:`PnpParams` still apply first).
    * ``max_order_rot_deg`` (``order_disagreement_rotation``): angle between the rotation of the direct estimate and
      the inverted swapped-order estimate.
    * ``max_order_trans_ratio`` (``order_disagreement_translation``): distance between the two estimates of the
      camera centre divided by ``max(mean translation norm, min_translation_m)``; a real motion keeps this small, a
      pair of unrelated views or a decoder bias does not.
    * ``max_translation_m`` (``implausible_motion``): a larger relative translation is not believed (0 disables).
    * ``publish`` False (``not_better_than_chance``): no setting of the gates made this modality's poses better than
      chance at the allowed false-positive rate during calibration, so none is published.

    The published covariance is ``covariance_scale * (0.5 (C_direct + C_swapped) + d d^T / 4) +
    diag(covariance_floor)`` where ``d`` is the 6-vector difference of the two estimates (the disagreement is a
    sample of the error), ``covariance_floor`` = (translation m^2, rotation rad^2) for all three axes each, or six
    per-axis values (x, y, z m^2, rx, ry, rz rad^2).
    """

    min_inliers: int = 12
    min_inlier_ratio: float = 0.1
    min_view_similarity: float = -1.0
    max_order_rot_deg: float = 2.0
    max_order_trans_ratio: float = 0.6
    min_translation_m: float = 0.2
    max_translation_m: float = 0.0
    covariance_scale: float = 1.0
    covariance_floor: tuple[float, ...] = (0.0, 0.0)
    publish: bool = True
    similarity_cells: int = 2

    def __post_init__(self) -> None:
        for name in ('min_inlier_ratio', 'max_order_rot_deg', 'max_order_trans_ratio', 'min_translation_m',
                     'max_translation_m', 'covariance_scale'):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f'PoseGates.{name} must be a finite number >= 0, got {v!r}')
        if not (np.isfinite(self.min_view_similarity) and -1.0 <= self.min_view_similarity <= 1.0):
            raise ValueError(f'PoseGates.min_view_similarity must be a cosine in [-1, 1], got '
                             f'{self.min_view_similarity!r}')
        if self.min_inliers < 0:
            raise ValueError(f'PoseGates.min_inliers must be >= 0, got {self.min_inliers}')
        if isinstance(self.similarity_cells, bool) or not isinstance(self.similarity_cells, int) \
                or self.similarity_cells < 1:
            raise ValueError(f'PoseGates.similarity_cells must be an integer >= 1, got {self.similarity_cells!r}')
        if len(self.covariance_floor) not in (2, 6) or not all(np.isfinite(v) and v >= 0
                                                                for v in self.covariance_floor):
            raise ValueError(f'PoseGates.covariance_floor must be (translation, rotation) or six per-axis values, '
                             f'finite and >= 0, got {self.covariance_floor!r}')

    def views_differ(self, similarity: float) -> bool:
        """True when ``similarity`` (:func:`view_similarity`) fails the appearance gate (NaN fails; never when the
        gate is off, ``min_view_similarity`` -1)."""
        return self.min_view_similarity > -1.0 and not similarity >= self.min_view_similarity

    @property
    def floor_diagonal(self) -> np.ndarray:
        """The covariance floor as a 6-vector (x, y, z, rx, ry, rz)."""
        f = tuple(float(v) for v in self.covariance_floor)
        return np.asarray(f if len(f) == 6 else [f[0]] * 3 + [f[1]] * 3)


def token_grid(image_shape: Any, tokens: Any) -> tuple[int, int]:
    """Patch grid (rows, cols) of ``tokens`` ((1, N, C) or (N, C)) for a model input of ``image_shape`` (H, W)
    pixels: the 14-pixel patches of DUNE, else the grid of N tokens with the image's aspect ratio (other encoders,
    test doubles). Raises ``ValueError`` when N fits neither."""
    from realm_ros.models.mast3r.config import PATCH_SIZE
    h, w = (int(v) for v in tuple(image_shape)[:2])
    n = int(tokens.shape[-2])
    if (h // PATCH_SIZE) * (w // PATCH_SIZE) == n:
        return h // PATCH_SIZE, w // PATCH_SIZE
    rows = max(1, int(round(math.sqrt(n * h / max(w, 1)))))
    if n % rows == 0:
        return rows, n // rows
    raise ValueError(f'{n} tokens do not form a patch grid of a {h} x {w} input')


#: cells per side of the token grid pooled by :func:`view_similarity`
SIMILARITY_CELLS = 2


def view_similarity(tokens_a: Any, grid_a: tuple[int, int], tokens_b: Any, grid_b: tuple[int, int],
                    cells: int = SIMILARITY_CELLS) -> float:
    """How alike two views look: cosine between coarse layout descriptors of their patch tokens.

    Each token (``(N, C)`` or ``(1, N, C)``, numpy or torch, on a ``grid = (rows, cols)`` patch grid with
    ``rows * cols == N``) is scaled to unit length, the tokens are averaged over ``cells x cells`` regions of the
    grid (``numpy.array_split`` bands of rows and columns), and the regions' means are concatenated. The plain mean
    of all tokens is nearly the same for any two views of the miniature world (cosine ~0.98: one direction dominates
    every token); keeping where things are (2 x 2 regions) separates views of the same place from look-alike places
    of other scenes much better (a threshold that passes 5 % of the unrelated validation pairs kept 97 % of the
    event-event motion pairs, against 78 % for the plain mean). Both views need the same channel count; the grids
    may differ (each is pooled to ``cells x cells``)."""
    if cells < 1:
        raise ValueError(f'cells must be >= 1, got {cells}')
    descs = []
    for name, tok, grid in (('tokens_a', tokens_a, grid_a), ('tokens_b', tokens_b, grid_b)):
        if hasattr(tok, 'detach'):
            tok = tok.detach().float().cpu().numpy()
        t = np.asarray(tok, dtype=np.float64)
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        rows, cols = (int(v) for v in grid)
        if t.ndim != 2 or t.shape[0] != rows * cols or rows < cells or cols < cells:
            raise ValueError(f'{name}: expected ({rows * cols}, C) tokens on a {rows} x {cols} grid of at least '
                             f'{cells} x {cells}, got shape {t.shape}')
        if not np.all(np.isfinite(t)):
            raise ValueError(f'{name} contains non-finite values')
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        g = t.reshape(rows, cols, -1)
        descs.append(np.concatenate([blk.mean(axis=(0, 1)) for band in np.array_split(g, cells, axis=0)
                                     for blk in np.array_split(band, cells, axis=1)]))
    a, b = descs
    if a.shape != b.shape:
        raise ValueError(f'the two views have different channel counts: {a.size // cells ** 2} vs '
                         f'{b.size // cells ** 2}')
    cos = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-300))
    return min(1.0, max(-1.0, cos))          # rounding put two identical views at 1 + 2e-16


def mode_for(keyframe_source: str, current_source: str = 'events') -> str:
    """``'rgb_rgb'`` / ``'event_event'`` / ``'rgb_event'`` for a keyframe source against the current view's source."""
    key = (keyframe_source, current_source)
    if key not in MODES:
        raise ValueError(f'unknown keyframe source {keyframe_source!r} / current source {current_source!r}; known: '
                         f'{sorted(MODES)}')
    return MODES[key]


def _parse_modes(obj: Any, where: str) -> dict[str, PoseGates]:
    if not isinstance(obj, Mapping):
        raise ValueError(f'{where}: expected a mapping of pose mode -> gate settings, got {type(obj).__name__}')
    known = {f.name for f in fields(PoseGates)}
    out: dict[str, PoseGates] = {}
    for mode, values in obj.items():
        if mode not in MODES.values():
            raise ValueError(f'{where}: unknown pose mode {mode!r}; known: {sorted(MODES.values())}')
        if not isinstance(values, Mapping):
            raise ValueError(f'{where}.{mode}: expected a mapping of gate settings, got {type(values).__name__}')
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'{where}.{mode}: unknown gate setting(s) {unknown}; known: {sorted(known)}')
        kw = dict(values)
        if 'covariance_floor' in kw:
            kw['covariance_floor'] = tuple(kw['covariance_floor'])
        try:
            out[mode] = PoseGates(**kw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{where}.{mode}: {exc}') from None
    return out


def parse_pose_gates(obj: Any, where: str = 'pose_gates') -> dict[str, dict[str, PoseGates]]:
    """``{method: {mode: PoseGates}}`` from checkpoint metadata (``{method: {mode: {field: value}}}``, methods
    ``symmetric`` / ``direct``); ``None`` -> ``{}``.

    Raises ``ValueError`` naming ``where`` and the offending entry for an unknown method, mode or field or an invalid
    value.
    """
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise ValueError(f'{where}: expected a mapping of estimate method -> pose modes, got {type(obj).__name__}')
    out: dict[str, dict[str, PoseGates]] = {}
    for method, modes in obj.items():
        if method not in METHODS:
            raise ValueError(f'{where}: unknown estimate method {method!r}; known: {list(METHODS)}')
        out[method] = _parse_modes(modes, f'{where}.{method}')
    return out


def parse_pose_compute(obj: Any, where: str = 'pose_gates_compute') -> dict[str, str]:
    """The pose-compute record of a decoder file (``{'decoder_precision': 'fp32' | 'bf16' | 'bf16-heads',
    'solver': 'pnp' | 'essential', 'ransac_kernel': 'sqpnp' | 'ap3p'}``), missing entries from
    :data:`POSE_COMPUTE_DEFAULTS`;
    ``None`` -> the defaults. Raises ``ValueError`` naming ``where`` and the entry for an unknown key or value."""
    if obj is None:
        return dict(POSE_COMPUTE_DEFAULTS)
    if not isinstance(obj, Mapping):
        raise ValueError(f'{where}: expected a mapping, got {type(obj).__name__}')
    unknown = sorted(set(obj) - set(POSE_COMPUTE_CHOICES))
    if unknown:
        raise ValueError(f'{where}: unknown entr{"y" if len(unknown) == 1 else "ies"} {unknown}; known: '
                         f'{sorted(POSE_COMPUTE_CHOICES)}')
    out = dict(POSE_COMPUTE_DEFAULTS)
    for key, value in obj.items():
        if value not in POSE_COMPUTE_CHOICES[key]:
            raise ValueError(f'{where}.{key}: {value!r} is not one of {list(POSE_COMPUTE_CHOICES[key])}')
        out[key] = str(value)
    return out


def pose_compute_for_decoder(decoder: Any) -> dict[str, str]:
    """The decoder precision, pose solver and RANSAC kernel a loaded decoder's gates were calibrated with
    (``decoder.pose_gates_compute`` from its file; :data:`POSE_COMPUTE_DEFAULTS` when it records none)."""
    recorded = getattr(decoder, 'pose_gates_compute', None) or {}
    return {**POSE_COMPUTE_DEFAULTS, **recorded}


def pose_gates_metadata(gates: Mapping[str, Mapping[str, PoseGates]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The JSON form of ``{method: {mode: PoseGates}}`` stored in a decoder checkpoint (inverse of
    :func:`parse_pose_gates`)."""
    return {method: {mode: {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(g).items()}
                     for mode, g in modes.items()}
            for method, modes in gates.items()}


def gates_for_decoder(decoder: Any, keyframe_source: str, current_source: str = 'events',
                      method: str = 'symmetric') -> PoseGates:
    """The gates a loaded decoder was calibrated with (``decoder.pose_gates``, from its checkpoint) for this pair
    of sources and estimate method (``'symmetric'``: both decoder orders; ``'direct'``: one order), or the
    uncalibrated defaults of :class:`PoseGates` when its file carries none for them."""
    if method not in METHODS:
        raise ValueError(f'unknown estimate method {method!r}; known: {list(METHODS)}')
    mode = mode_for(keyframe_source, current_source)
    calibrated = getattr(decoder, 'pose_gates', None) or {}
    return calibrated.get(method, {}).get(mode, PoseGates())
