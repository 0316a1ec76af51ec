"""The full DUNE model as stored in an official checkpoint: encoder + per-teacher projectors + teacher-norm statistics.

State-dict keys equal ``ckpt['model']`` of the official files (docs/models.md#dune-checkpoint-files)::

    encoder.<DinoVisionTransformer keys>
    projectors.<teacher>.{blocks.0.*, linear.*[, scale]}             teachers e.g. dino2reg_vitlarge_14
    teacher_norms.<teacher>.normalizers.<cls|patch>.{mean,std}       per-channel EMA statistics of the teacher

Build one from a file with :func:`realm_ros.models.checkpoints.load_dune`.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

from .dune import DinoVisionTransformer
from .heads import DinoV2Projector

__all__ = ['DuneModel', 'TeacherNorm', 'StandardNormalizer', 'DINOV2_TEACHER']

#: Teacher key of the DINOv2 projector (the one REALM's segmentation uses).
DINOV2_TEACHER = 'dino2reg_vitlarge_14'


class StandardNormalizer(nn.Module):
    """Per-channel standardisation ``(x - mean) / clamp(std, min=eps)`` with ``mean``/``std`` buffers."""

    def __init__(self, dim: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer('mean', torch.zeros(dim))
        self.register_buffer('std', torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std.clamp(min=self.eps)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward`: standardised features back to the teacher's raw feature scale."""
        return z * self.std.clamp(min=self.eps) + self.mean


class TeacherNorm(nn.Module):
    """Normalisers of one teacher, keyed by token type (``cls`` and/or ``patch``)."""

    def __init__(self, dim: int, kinds: Iterable[str] = ('cls', 'patch')) -> None:
        super().__init__()
        self.normalizers = nn.ModuleDict({k: StandardNormalizer(dim) for k in kinds})


class DuneModel(nn.Module):
    """DUNE student: encoder, projectors and teacher norms (official module names).

    Attributes set by the loader: ``args`` (JSON-safe dict of ``ckpt['args']``), ``source_sha256`` (SHA-256 of the
    original ``.pth`` file: the teacher identity REALM checkpoints refer to), ``source_path``.
    """

    def __init__(self, encoder: DinoVisionTransformer, projectors: Optional[Mapping[str, DinoV2Projector]] = None,
                 teacher_norms: Optional[Mapping[str, TeacherNorm]] = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projectors = nn.ModuleDict(dict(projectors or {}))
        self.teacher_norms = nn.ModuleDict(dict(teacher_norms or {}))
        self.args: Dict[str, object] = {}
        self.source_sha256: Optional[str] = None
        self.source_path: Optional[str] = None

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def projector(self) -> DinoV2Projector:
        """The DINOv2 projector (``projectors['dino2reg_vitlarge_14']``)."""
        if DINOV2_TEACHER not in self.projectors:
            raise KeyError(f'this DUNE model has no {DINOV2_TEACHER!r} projector (has {list(self.projectors)})')
        return self.projectors[DINOV2_TEACHER]

    def get_encoder_output(self, image: torch.Tensor) -> torch.Tensor:
        """Un-normed ``concat(cls, patches)`` (B, 1+N, D): the projector input (registers dropped)."""
        return self.encoder.get_encoder_output(image)

    def get_projector_output(self, image: torch.Tensor,
                             teacher: str = DINOV2_TEACHER) -> Tuple[torch.Tensor, torch.Tensor]:
        """RGB image -> (cls (B, 1024), patches (B, 1024, H/14, W/14)) in the teacher-standardised space."""
        grid = self.encoder.grid_shape(image.shape[-2], image.shape[-1])
        return self.projectors[teacher](self.get_encoder_output(image), grid)
