"""Spatial preparation of a (C, H, W) sensor-sized tensor for the 448 x 448 model input, and the way back
(docs/models.md#input).

Modes:

* ``'crop'``: centre crop to a square of side ``min(H, W)`` and resize to ``size`` (aspect ratio kept, geometry as
  the RGB teacher sees it). Outputs map back by resizing to the square and placing it; pixels outside the crop are
  NaN.
* ``'pad'``: symmetric zero padding to ``size`` (MVSEC-like sensors, e.g. 346 x 260); the padding is removed from
  predictions. Sensors larger than ``size`` are rejected.
* ``'tile'``: overlapping ``size`` x ``size`` tiles anchored at the corners (DSEC 640 x 480 -> 4 tiles); raw
  predictions are accumulated and divided by the per-pixel tile count. Axes shorter than ``size`` are padded
  symmetrically; axes longer than twice ``size`` get evenly spaced extra tiles.

Pixel-centre convention for intrinsics (``align_corners=False`` resizing): ``u' = (u - offset + 0.5) * s - 0.5``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Sequence, Tuple

import numpy as np

MODES = ('crop', 'pad', 'tile')


def _axis_tiles(length: int, size: int) -> Tuple[List[int], int, int]:
    """Tile offsets along one axis (in padded coordinates) and the (before, after) padding."""
    if length <= size:
        before = (size - length) // 2
        return [0], before, size - length - before
    n = math.ceil(length / size)
    n = max(n, 2)
    return [int(round(i * (length - size) / (n - 1))) for i in range(n)], 0, 0


@dataclass
class SpatialPlan:
    """How a sensor of ``height`` x ``width`` maps to ``size`` x ``size`` model inputs (see module docstring)."""

    height: int
    width: int
    size: int = 448
    mode: str = 'crop'
    # crop
    crop_top: int = 0
    crop_left: int = 0
    crop_side: int = 0
    # pad / tile padding (top, bottom, left, right)
    pad: Tuple[int, int, int, int] = (0, 0, 0, 0)
    # tile offsets (top, left) in padded coordinates
    tiles: List[Tuple[int, int]] = field(default_factory=list)

    @classmethod
    def create(cls, height: int, width: int, size: int = 448, mode: str = 'crop') -> 'SpatialPlan':
        """Plan for a sensor size and mode.

        Raises:
            ValueError: unknown mode, non-positive sizes, or ``'pad'`` with a sensor larger than ``size``.
        """
        height, width, size = int(height), int(width), int(size)
        if height <= 0 or width <= 0 or size <= 0:
            raise ValueError(f'spatial plan needs positive sizes, got sensor {width}x{height}, model {size}')
        if mode not in MODES:
            raise ValueError(f'spatial mode must be one of {MODES}, got {mode!r}')
        plan = cls(height, width, size, mode)
        if mode == 'crop':
            side = min(height, width)
            plan.crop_side = side
            plan.crop_top = (height - side) // 2
            plan.crop_left = (width - side) // 2
        elif mode == 'pad':
            if height > size or width > size:
                raise ValueError(f"spatial mode 'pad' needs a sensor no larger than {size}x{size}, got "
                                 f"{width}x{height}: use 'crop' or 'tile'")
            top = (size - height) // 2
            left = (size - width) // 2
            plan.pad = (top, size - height - top, left, size - width - left)
        else:
            ys, pt, pb = _axis_tiles(height, size)
            xs, pl, pr = _axis_tiles(width, size)
            plan.pad = (pt, pb, pl, pr)
            plan.tiles = [(oy, ox) for oy in ys for ox in xs]
        return plan

    @property
    def num_inputs(self) -> int:
        return len(self.tiles) if self.mode == 'tile' else 1

    # ---------------------------------------------------------------------------------------------- forward
    def apply(self, grid: Any) -> Any:
        """(C, H, W) tensor -> (N, C, size, size) tensor on the same device/dtype."""
        import torch
        import torch.nn.functional as F

        if not isinstance(grid, torch.Tensor):
            grid = torch.as_tensor(grid)
        if grid.dim() != 3 or tuple(grid.shape[1:]) != (self.height, self.width):
            raise ValueError(f'expected a (C, {self.height}, {self.width}) tensor, got shape {tuple(grid.shape)}')
        if self.mode == 'crop':
            s = self.crop_side
            sq = grid[:, self.crop_top:self.crop_top + s, self.crop_left:self.crop_left + s].unsqueeze(0)
            if s == self.size:
                return sq.contiguous()
            return F.interpolate(sq.float(), size=(self.size, self.size), mode='bilinear', align_corners=False,
                                 antialias=s > self.size).to(grid.dtype)
        pt, pb, pl, pr = self.pad
        padded = F.pad(grid, (pl, pr, pt, pb)) if any(self.pad) else grid
        if self.mode == 'pad':
            return padded.unsqueeze(0).contiguous()
        s = self.size
        return torch.stack([padded[:, oy:oy + s, ox:ox + s] for oy, ox in self.tiles], 0).contiguous()

    # ---------------------------------------------------------------------------------------------- inverse
    def sensor_region(self) -> Tuple[slice, slice]:
        """(rows, cols) slices of the sensor pixels that the model inputs see (the crop square; else everything)."""
        if self.mode == 'crop':
            s = self.crop_side
            return slice(self.crop_top, self.crop_top + s), slice(self.crop_left, self.crop_left + s)
        return slice(0, self.height), slice(0, self.width)

    def check_predictions(self, pred: Any) -> Any:
        """``pred`` as a (num_inputs, K, size, size) tensor ((N, size, size) gets K = 1); ValueError otherwise."""
        import torch

        if not isinstance(pred, torch.Tensor):
            pred = torch.as_tensor(pred)
        if pred.dim() == 3:
            pred = pred.unsqueeze(1)
        if pred.dim() != 4 or pred.shape[0] != self.num_inputs or tuple(pred.shape[2:]) != (self.size, self.size):
            raise ValueError(f'expected ({self.num_inputs}, K, {self.size}, {self.size}) predictions, got '
                             f'{tuple(pred.shape)}')
        return pred

    def to_sensor_region(self, pred: Any, interp: str = 'bilinear', out: Any = None) -> Any:
        """(N, K, size, size) predictions -> (K, h, w) values of the sensor pixels in :meth:`sensor_region`.

        The same numbers as ``to_sensor(pred, interp)[:, rows, cols]`` without building (and NaN-filling) the
        full sensor-sized tensor: crop mode resizes to the crop square only; pad mode returns a view of ``pred``.
        ``out``: optional contiguous float32 (1, K, side, side) tensor that a bilinear crop resize writes into (a
        buffer reused window after window saves allocating - and page-faulting - a fresh one); other cases ignore it.
        """
        import torch
        import torch.nn.functional as F

        pred = self.check_predictions(pred)
        k = pred.shape[1]
        if self.mode == 'crop':
            s = self.crop_side
            src = pred.float()
            if s != self.size:
                if out is not None and interp == 'bilinear':
                    return resize_bilinear(src, (s, s), out)[0]
                kw = {'align_corners': False} if interp != 'nearest' else {}
                src = F.interpolate(src, size=(s, s), mode=interp, **kw)
            return src[0]
        pt, pb, pl, pr = self.pad
        if self.mode == 'pad':
            return pred[0, :, pt:pt + self.height, pl:pl + self.width]
        hp, wp = self.height + pt + pb, self.width + pl + pr
        acc = torch.zeros((k, hp, wp), dtype=torch.float32, device=pred.device)
        cnt = torch.zeros((1, hp, wp), dtype=torch.float32, device=pred.device)
        s = self.size
        for i, (oy, ox) in enumerate(self.tiles):
            acc[:, oy:oy + s, ox:ox + s] += pred[i].float()
            cnt[:, oy:oy + s, ox:ox + s] += 1.0
        out = acc / cnt
        return out[:, pt:pt + self.height, pl:pl + self.width]

    def to_sensor(self, pred: Any, interp: str = 'bilinear') -> Any:
        """(N, K, size, size) predictions -> (K, H, W) in sensor pixels.

        ``interp`` ('bilinear' | 'nearest') is used where the crop mode resizes (use 'nearest' for label maps, or
        better map logits). Crop: NaN outside the crop. Tile: overlaps averaged with the tile-count mask.
        """
        import torch

        region = self.to_sensor_region(pred, interp)
        if self.mode != 'crop':
            return region
        rows, cols = self.sensor_region()
        out = torch.full((region.shape[0], self.height, self.width), float('nan'), dtype=torch.float32,
                         device=region.device)
        out[:, rows, cols] = region
        return out

    def coverage(self) -> np.ndarray:
        """(H, W) bool: sensor pixels that the model inputs see."""
        m = np.zeros((self.height, self.width), bool)
        if self.mode == 'crop':
            m[self.crop_top:self.crop_top + self.crop_side, self.crop_left:self.crop_left + self.crop_side] = True
        else:
            m[:] = True
        return m

    def model_intrinsics(self, K_sensor: Any) -> List[np.ndarray]:
        """3x3 intrinsics of each model input (one per tile) from the sensor's 3x3 ``K``."""
        K = np.asarray(K_sensor, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f'intrinsics must be 3x3, got shape {K.shape}')
        if self.mode == 'crop':
            sc = self.size / self.crop_side
            Kc = K.copy()
            Kc[0, :] = K[0, :] - self.crop_left * K[2, :]
            Kc[1, :] = K[1, :] - self.crop_top * K[2, :]
            S = np.array([[sc, 0, 0.5 * sc - 0.5], [0, sc, 0.5 * sc - 0.5], [0, 0, 1.0]])
            return [S @ Kc]
        pt, _, pl, _ = self.pad
        offsets = [(0, 0)] if self.mode == 'pad' else self.tiles
        out = []
        for oy, ox in offsets:
            T = np.array([[1.0, 0, pl - ox], [0, 1.0, pt - oy], [0, 0, 1.0]])
            out.append(T @ K)
        return out

    def sensor_to_model(self, u: Any, v: Any, index: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """Continuous sensor pixel coordinates -> coordinates in model input ``index``."""
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        if self.mode == 'crop':
            sc = self.size / self.crop_side
            return (u - self.crop_left + 0.5) * sc - 0.5, (v - self.crop_top + 0.5) * sc - 0.5
        pt, _, pl, _ = self.pad
        oy, ox = (0, 0) if self.mode == 'pad' else self.tiles[index]
        return u + pl - ox, v + pt - oy

    def model_to_sensor(self, u: Any, v: Any, index: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """Inverse of ``sensor_to_model``."""
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        if self.mode == 'crop':
            sc = self.size / self.crop_side
            return (u + 0.5) / sc - 0.5 + self.crop_left, (v + 0.5) / sc - 0.5 + self.crop_top
        pt, _, pl, _ = self.pad
        oy, ox = (0, 0) if self.mode == 'pad' else self.tiles[index]
        return u - pl + ox, v - pt + oy


def resize_bilinear(src: Any, size: Tuple[int, int], out: Any = None) -> Any:
    """``F.interpolate(src, size, mode='bilinear', align_corners=False)`` (same kernel, same numbers), written into
    ``out`` (a contiguous tensor of the result's shape, dtype and device) when given."""
    import torch
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if out is None or (src.requires_grad and torch.is_grad_enabled()):
        return F.interpolate(src, size=size, mode='bilinear', align_corners=False)
    shape = tuple(src.shape[:2]) + size
    if tuple(out.shape) != shape or out.dtype != src.dtype or out.device != src.device or not out.is_contiguous():
        raise ValueError(f'out must be a contiguous {shape} {src.dtype} tensor on {src.device}, got '
                         f'{tuple(out.shape)} {out.dtype} on {out.device}')
    if not src.is_contiguous():         # (another memory format may pick another kernel: resize, then copy)
        return out.copy_(F.interpolate(src, size=size, mode='bilinear', align_corners=False))
    try:
        return torch._C._nn.upsample_bilinear2d(src, size, False, None, None, out=out)
    except (AttributeError, TypeError):    # no such out= variant in this torch build: same kernel, then a copy
        return out.copy_(F.interpolate(src, size=size, mode='bilinear', align_corners=False))


@dataclass
class PreparedInput:
    """Model input tensor(s) plus the plan that maps outputs back to the sensor."""

    tensor: Any
    plan: SpatialPlan

    @property
    def mode(self) -> str:
        return self.plan.mode

    def to_sensor(self, pred: Any, interp: str = 'bilinear') -> Any:
        """See ``SpatialPlan.to_sensor``."""
        return self.plan.to_sensor(pred, interp)

    def to_sensor_region(self, pred: Any, interp: str = 'bilinear', out: Any = None) -> Any:
        """See ``SpatialPlan.to_sensor_region``."""
        return self.plan.to_sensor_region(pred, interp, out)

    def sensor_region(self) -> Tuple[slice, slice]:
        """See ``SpatialPlan.sensor_region``."""
        return self.plan.sensor_region()

    def model_intrinsics(self, K_sensor: Any) -> List[np.ndarray]:
        """See ``SpatialPlan.model_intrinsics``."""
        return self.plan.model_intrinsics(K_sensor)


def prepare_input(grid: Any, size: int = 448, mode: str = 'crop') -> PreparedInput:
    """Prepare a (C, H, W) tensor (e.g. a voxel grid) as ``(N, C, size, size)`` model input.

    """
    shape: Sequence[int] = tuple(grid.shape)
    if len(shape) != 3:
        raise ValueError(f'prepare_input expects a (C, H, W) tensor, got shape {shape}')
    plan = SpatialPlan.create(shape[1], shape[2], size, mode)
    return PreparedInput(plan.apply(grid), plan)
