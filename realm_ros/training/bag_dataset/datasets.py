"""PyTorch datasets over prepared bags: distillation samples (voxel grid, RGB, coverage) and head-training samples
(RGB, depth or labels), with the same spatial preparation as inference."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import PreparedBag
from .pairing import split_pairs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _spatial() -> Any:
    from realm_ros.events import spatial
    return spatial


def _apply_nearest(plan: Any, grid: torch.Tensor) -> torch.Tensor:
    """``plan.apply`` with nearest-neighbour resampling (label / depth maps must not be blended)."""
    if plan.mode == 'crop' and plan.crop_side != plan.size:
        import torch.nn.functional as F
        s = plan.crop_side
        sq = grid[:, plan.crop_top:plan.crop_top + s, plan.crop_left:plan.crop_left + s].unsqueeze(0)
        return F.interpolate(sq.float(), size=(plan.size, plan.size), mode='nearest-exact')
    return plan.apply(grid)


def _normalize_rgb(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb - mean) / std


class _PairIndex:
    def __init__(self, bags: Sequence[Tuple[PreparedBag, Any]], split: str) -> None:
        self.items: List[Tuple[int, int]] = []
        for b, (bag, cfg) in enumerate(bags):
            train, val = split_pairs(bag.num_pairs, cfg.split, cfg.val_fraction)
            for i in (train if split == 'train' else val):
                self.items.append((b, int(i)))


class DistillDataset(Dataset):
    """Distillation samples of a split (``'train'`` / ``'val'``) over prepared bags.

    Item ``i``: dict of ``voxel`` (T, bins, S, S), ``rgb`` (T, 3, S, S) ImageNet-normalised, ``valid`` (T, 1, S, S)
    RGB coverage, ``index`` (T,) unique sample ids ``i * T + tile`` (T = 4 for ``spatial_mode: tile``, else 1).
    """

    def __init__(self, bags: Sequence[Tuple[PreparedBag, Any]], split: str, image_size: int, spatial_mode: str,
                 bins: int, normalization: str) -> None:
        self.bags = [b for b, _ in bags]
        self.index = _PairIndex(bags, split).items
        self.image_size = int(image_size)
        self.spatial_mode = spatial_mode
        self.bins = int(bins)
        self.normalization = normalization
        self.tiles = 4 if spatial_mode == 'tile' else 1
        self._valid: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_samples(self) -> int:
        return len(self.index) * self.tiles

    def _valid_mask(self, b: int) -> torch.Tensor:
        if b not in self._valid:
            bag = self.bags[b]
            self._valid[b] = torch.from_numpy(np.load(os.path.join(bag.directory, 'valid.npy'))).float()[None]
        return self._valid[b]

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        from realm_ros.events import voxel_grid
        b, k = self.index[i]
        bag = self.bags[b]
        s, e = int(bag.pairs['start'][k]), int(bag.pairs['end'][k])
        h, w = bag.meta['height'], bag.meta['width']
        xs = np.asarray(bag.array('events_x')[s:e])
        ys = np.asarray(bag.array('events_y')[s:e])
        ts = np.asarray(bag.array('events_t')[s:e])
        ps = np.asarray(bag.array('events_p')[s:e])
        grid = voxel_grid((xs, ys, ts, ps), bins=self.bins, height=h, width=w, normalization=self.normalization)
        frame = np.array(bag.array('frames')[int(bag.pairs['frame'][k])])
        rgb = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255.0)
        spatial = _spatial()
        vox = spatial.prepare_input(grid, size=self.image_size, mode=self.spatial_mode).tensor
        img = spatial.prepare_input(torch.cat([rgb, self._valid_mask(b)], 0), size=self.image_size,
                                    mode=self.spatial_mode).tensor
        t = vox.shape[0]
        return {'voxel': vox.float().contiguous(), 'rgb': _normalize_rgb(img[:, :3]).contiguous(),
                'valid': img[:, 3:4].contiguous(), 'index': torch.arange(t, dtype=torch.int64) + i * t}


class HeadsDataset(Dataset):
    """Head-training samples: ``rgb`` (T, 3, S, S) ImageNet-normalised, ``target`` (T, S, S) depth metres (NaN =
    invalid) or labels (int64, ``ignore_index`` outside the image), ``index`` (T,)."""

    def __init__(self, bags: Sequence[Tuple[PreparedBag, Any]], split: str, image_size: int, spatial_mode: str,
                 task: str, classes: int = 11, ignore_index: int = 255) -> None:
        self.bags = [b for b, _ in bags]
        self.classes = int(classes)
        self.index = _PairIndex(bags, split).items
        self.image_size = int(image_size)
        self.spatial_mode = spatial_mode
        self.task = task
        self.ignore_index = ignore_index
        self.tiles = 4 if spatial_mode == 'tile' else 1

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_samples(self) -> int:
        return len(self.index) * self.tiles

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        b, k = self.index[i]
        bag = self.bags[b]
        frame = np.array(bag.array('frames')[int(bag.pairs['frame'][k])])
        target = np.array(bag.array('targets')[int(bag.pairs['target'][k])])
        rgb = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255.0)
        spatial = _spatial()
        img = spatial.prepare_input(rgb, size=self.image_size, mode=self.spatial_mode).tensor
        if self.task == 'depth':
            tgt = torch.from_numpy(target.astype(np.float32))
            tgt = torch.where(torch.isfinite(tgt) & (tgt > 0), tgt, torch.zeros_like(tgt))
        else:  # ids outside [0, classes) other than ignore_index are ignored too
            lab = target.astype(np.float32)
            lab[(target >= self.classes)] = float(self.ignore_index)
            tgt = torch.from_numpy(lab)
        # a coverage channel marks pixels outside the image (padding) so they become invalid / ignored
        stack = torch.stack([tgt, torch.ones_like(tgt)], 0)
        prep = _apply_nearest(spatial.SpatialPlan.create(stack.shape[1], stack.shape[2], self.image_size,
                                                         self.spatial_mode), stack)
        covered = prep[:, 1] > 0.5
        t = img.shape[0]
        if self.task == 'depth':
            out_t = torch.where(covered & (prep[:, 0] > 0), prep[:, 0], torch.full_like(prep[:, 0], float('nan')))
        else:
            out_t = torch.where(covered, prep[:, 0].round(), torch.full_like(prep[:, 0], float(self.ignore_index)))
            out_t = out_t.long()
        return {'rgb': _normalize_rgb(img).contiguous(), 'target': out_t.contiguous(),
                'index': torch.arange(t, dtype=torch.int64) + i * t}


def collate_tiles(samples: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Concatenate per-pair tile stacks along the batch dimension."""
    return {k: torch.cat([s[k] for s in samples], 0) for k in samples[0]}
