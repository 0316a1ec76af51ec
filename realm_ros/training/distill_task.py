"""The REALM distillation task for :class:`~realm_ros.training.trainer.Trainer`.

Teacher: the frozen DUNE encoder on RGB frames warped into the event camera (ImageNet-normalised). Student:
:class:`~realm_ros.models.realm.RealmEncoder` = voxel embedder + LoRA on a copy of the teacher transformer; trainable
are exactly the embedder, the LoRA adapters and the final norm (checked at construction). Objective:
:class:`~realm_ros.training.distill.DistillLoss` on normalised CLS + patch tokens under the progressive spatial mask
(event occupancy, dilated per schedule, and-ed with the RGB coverage of the warped frame); token drop per schedule.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .distill import DistillLoss, event_occupancy_mask, token_drop_at, token_metrics
from .feature_cache import FeatureCache
from .trainer import TrainTask

__all__ = ['DistillTask', 'coverage_token_mask', 'check_trainable_set', 'TRAINABLE_PREFIXES']

#: Parameter-name rules of the trainable set (docs/models.md#realm-student: only embedder, LoRA and final norm).
TRAINABLE_PREFIXES = ('embedder.', 'backbone.norm.')


def check_trainable_set(student: nn.Module, train_final_norm: bool = True) -> List[str]:
    """Names of the trainable parameters; raises ``RuntimeError`` if anything outside embedder/LoRA/norm trains."""
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    bad = [n for n in names if not (n.startswith('embedder.') or 'lora_' in n
                                    or (train_final_norm and n.startswith('backbone.norm.')))]
    if bad:
        raise RuntimeError(f'parameters outside embedder/LoRA/final norm are trainable: {bad[:5]}')
    return names


def coverage_token_mask(valid: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, h, w) bool: tokens whose pixels are all covered by the warped RGB frame (``valid`` (B, 1, H, W) in 0..1)."""
    covered = -F.max_pool2d(-(valid.float()), kernel_size=patch_size, stride=patch_size)
    return covered[:, 0] > 0.5


class DistillTask(TrainTask):
    """REALM distillation (see the module docstring).

    Args:
        teacher: the DUNE encoder (:class:`~realm_ros.models.dune.DinoVisionTransformer`), frozen here.
        student: the :class:`~realm_ros.models.realm.RealmEncoder` to train.
        loss: the objective.
        token_drop, token_drop_start_epoch: token-drop schedule.
        device: compute device.
        caches: optional ``{'train': FeatureCache, 'val': FeatureCache}`` of teacher features.
        export_info: metadata for the exported REALM checkpoint (voxel/window/input settings, training config,
            teacher SHA-256) and ``export_merged`` (also write a merged, teacher-free checkpoint).
        fingerprint: what ``--resume`` must find unchanged.
    """

    name = 'realm_distill'

    def __init__(self, teacher: nn.Module, student: nn.Module, loss: DistillLoss, token_drop: float,
                 token_drop_start_epoch: int, device: torch.device, caches: Optional[Mapping[str, FeatureCache]],
                 export_info: Mapping[str, Any], fingerprint: Mapping[str, Any], train_final_norm: bool = True) -> None:
        self.device = device
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.student = student
        if not train_final_norm:
            for p in student.backbone.norm.parameters():
                p.requires_grad_(False)
        self.trainable_names = check_trainable_set(student, train_final_norm)
        self.loss = loss
        self.patch_size = loss.patch_size
        self.token_drop = float(token_drop)
        self.token_drop_start_epoch = int(token_drop_start_epoch)
        self.caches = dict(caches or {})
        self.export_info = dict(export_info)
        self._fingerprint = dict(fingerprint)
        self.wrapped: nn.Module = student
        self.epoch = 0

    # ------------------------------------------------------------------------------------------ TrainTask API
    def module(self) -> nn.Module:
        return self.student

    def set_module(self, module: nn.Module) -> None:
        self.wrapped = module

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.student.token_drop = token_drop_at(epoch, self.token_drop, self.token_drop_start_epoch)

    def _teacher(self, batch: Mapping[str, torch.Tensor], split: str) -> Dict[str, torch.Tensor]:
        rgb = batch['rgb'].to(self.device, non_blocking=True)

        def compute(sel: torch.Tensor) -> Dict[str, torch.Tensor]:
            with torch.no_grad():
                out = self.teacher.forward_features(rgb[sel])
            return {'cls': out['x_norm_clstoken'].float(), 'patch': out['x_norm_patchtokens'].float()}

        cache = self.caches.get(split)
        if cache is None:
            feats = compute(torch.ones(rgb.shape[0], dtype=torch.bool, device=self.device))
        else:
            feats = cache.get_or_compute(batch['index'], compute, self.device)
        return {'x_norm_clstoken': feats['cls'], 'x_norm_patchtokens': feats['patch']}

    def _mask(self, voxel: torch.Tensor, valid: torch.Tensor, epoch: Optional[int]) -> torch.Tensor:
        if epoch is None:  # validation: base mask, comparable across epochs
            mask = (event_occupancy_mask(voxel, self.patch_size) if self.loss.spatial_mask
                    else torch.ones_like(event_occupancy_mask(voxel, self.patch_size)))
        else:
            mask = self.loss.mask(voxel, epoch)
        return mask & coverage_token_mask(valid, self.patch_size)

    def train_step(self, batch: Mapping[str, torch.Tensor], epoch: int) -> Dict[str, torch.Tensor]:
        voxel = batch['voxel'].to(self.device, non_blocking=True)
        valid = batch['valid'].to(self.device, non_blocking=True)
        teacher = self._teacher(batch, 'train')
        student = self.wrapped(voxel)
        terms = self.loss(student, teacher, self._mask(voxel, valid, epoch))
        terms['n'] = torch.tensor(float(voxel.shape[0]))
        return terms

    def val_step(self, batch: Mapping[str, torch.Tensor], epoch: int) -> Dict[str, torch.Tensor]:
        voxel = batch['voxel'].to(self.device, non_blocking=True)
        valid = batch['valid'].to(self.device, non_blocking=True)
        teacher = self._teacher(batch, 'val')
        student = self.wrapped(voxel)
        mask = self._mask(voxel, valid, None)
        terms = self.loss(student, teacher, mask)
        sums = token_metrics(student, teacher, mask)
        sums['loss'] = terms['loss'].detach().double().cpu() * voxel.shape[0]
        return {k: v.detach().cpu() for k, v in sums.items()}

    def val_summary(self, sums: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        n = max(1.0, float(sums['n']))
        nm = max(1.0, float(sums['n_masked']))
        return {'loss': float(sums['loss']) / n,
                'cls_cosine': float(sums['cls_cos']) / n,
                'patch_cosine': float(sums['patch_cos']) / max(1.0, float(sums['n_patch'])),
                'masked_patch_cosine': float(sums['masked_patch_cos']) / nm,
                'masked_l1': float(sums['masked_l1']) / nm,
                'masked_fraction': float(sums['n_masked']) / max(1.0, float(sums['n_patch']))}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        params = dict(self.student.named_parameters())
        return {n: params[n].detach().cpu().clone() for n in self.trainable_names}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.student.named_parameters())
        missing = sorted(set(self.trainable_names) - set(state))
        unexpected = sorted(set(state) - set(self.trainable_names))
        if missing or unexpected:
            raise RuntimeError(f'checkpoint does not match the student: missing {missing[:4]}, '
                               f'unexpected {unexpected[:4]}')
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def fingerprint(self) -> Dict[str, Any]:
        return dict(self._fingerprint)

    def export(self, out_dir: str, metrics: Mapping[str, Any]) -> str:
        """Write ``<out>/realm.safetensors`` (LoRA mode, needs the teacher) and optionally the merged file."""
        from realm_ros.models.checkpoints import save_realm_checkpoint

        meta = {k: v for k, v in self.export_info.items() if k not in ('export_merged',)}
        meta['metrics'] = dict(metrics)
        path = os.path.join(out_dir, 'realm.safetensors')
        student = self.student
        was_training = student.training
        student.eval()
        try:
            _save_guarded(save_realm_checkpoint, path, student, meta)
            if self.export_info.get('export_merged'):
                merged = copy.deepcopy(student).cpu().merge_lora()
                _save_guarded(save_realm_checkpoint, os.path.join(out_dir, 'realm_merged.safetensors'), merged, meta)
        finally:
            student.train(was_training)
        return path


def _save_guarded(fn: Any, path: str, *args: Any) -> None:
    """Call a save function and turn OS errors (disk full, ...) into :class:`StorageError` messages."""
    from .errors import StorageError
    try:
        fn(path, *args)
    except OSError as exc:
        raise StorageError(f'cannot write {path!r}: {exc.strerror or exc}') from None
    except Exception as exc:  # safetensors reports I/O failures as its own error type
        text = str(exc)
        if 'space' in text.lower() or 'errno' in text.lower() or 'i/o' in text.lower():
            raise StorageError(f'cannot write {path!r}: {text}') from None
        raise
