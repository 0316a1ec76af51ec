"""Random-initialised miniature checkpoints in the real file formats (tests, benchmarks, smoke runs).

The files go through exactly the loaders the node uses (official DUNE ``.pth`` layout, REALM and head safetensors,
DUNE-MASt3R ``.pth`` layout), so a pipeline built from them exercises every code path at a fraction of the cost:
ViT-Ti/14 (dim 192, 6 blocks, 3 heads) at 224 x 224 -> 16 x 16 tokens, LoRA rank 4, a 2-block MASt3R decoder.
The weights are random: the outputs have the right types, shapes and ranges but no meaning. Trained miniature
checkpoints ship in ``models/`` (see models/README.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

import torch

if TYPE_CHECKING:
    from .core import PipelineConfig

TINY_INPUT_SIZE = 224


def write_random_tiny_checkpoints(directory: os.PathLike, seed: int = 0, lora_mode: bool = True,
                                  projector_dim: int = 256, with_mast3r: bool = True) -> Dict[str, Path]:
    """Write a complete set of miniature checkpoints into ``directory``.

    Returns ``{'dune', 'realm', 'depth_head', 'seg_head', 'mast3r'}`` -> path (``mast3r`` only with
    ``with_mast3r``). ``lora_mode`` writes the REALM encoder with separate LoRA adapters (needs the DUNE file, like
    the paper's release); otherwise merged (self-contained).
    """
    from realm_ros.models import (DepthBinsHead, DinoV2Projector, DuneModel, RealmEncoder, SegmentationHead,
                                  TeacherNorm, VoxelEmbedder, save_dune_checkpoint, save_head_checkpoint,
                                  save_realm_checkpoint, sha256_file, vit_tiny)
    from realm_ros.models.dune_model import DINOV2_TEACHER
    from realm_ros.models.embedder import TINY_EMBEDDER

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = vit_tiny(img_size=TINY_INPUT_SIZE)
        projector = DinoV2Projector(embed_dim=encoder.embed_dim, out_dim=projector_dim, num_heads=encoder.num_heads)
        norms = TeacherNorm(projector_dim, ('cls', 'patch'))
        dune = DuneModel(encoder, {DINOV2_TEACHER: projector}, {DINOV2_TEACHER: norms})
        paths: Dict[str, Path] = {'dune': save_dune_checkpoint(out / 'tiny_dune.pth', dune)}
        teacher_sha = sha256_file(paths['dune'])
        encoder.source_sha256 = teacher_sha
        student = RealmEncoder(encoder, VoxelEmbedder(**TINY_EMBEDDER), lora_rank=4, lora_alpha=4, lora_dropout=0.0)
        with torch.no_grad():                                   # non-zero adapters, so merging is not a no-op
            for _, layer in student.lora_layers():
                layer.lora_B['default'].weight.normal_(0, 0.02)
        if not lora_mode:
            student.merge_lora()
        voxel = dict(bins=int(TINY_EMBEDDER['in_channels']), normalization='dsec', size=TINY_INPUT_SIZE)
        paths['realm'] = save_realm_checkpoint(out / 'tiny_realm.safetensors', student,
                                               {'voxel': voxel, 'note': 'random weights (tests)'},
                                               teacher_sha256=teacher_sha)
        depth = DepthBinsHead(embed_dim=encoder.embed_dim, bins=64, min_depth=1.0, max_depth=81.0)
        paths['depth_head'] = save_head_checkpoint(out / 'tiny_depth_head.safetensors', depth,
                                                   teacher_sha256=teacher_sha)
        seg = SegmentationHead(in_dim=projector_dim, classes=11)
        paths['seg_head'] = save_head_checkpoint(out / 'tiny_seg_head.safetensors', seg,
                                                 {'bridge': 'teacher_norm_inverse'}, teacher_sha256=teacher_sha)
        if with_mast3r:
            from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder, save_dune_mast3r
            decoder = DuneMast3rDecoder(DuneMast3rConfig.tiny(enc_embed_dim=encoder.embed_dim),
                                        dune_backbone_name='tiny_dune')
            paths['mast3r'] = save_dune_mast3r(out / 'tiny_dunemast3r.pth', decoder)
    finally:
        torch.random.set_rng_state(gen_state)
    return paths


def tiny_pipeline_config(paths: Dict[str, Path], **overrides: Any) -> PipelineConfig:
    """A :class:`~realm_ros.pipeline.PipelineConfig` for :func:`write_random_tiny_checkpoints` output (CPU);
    ``overrides``: any other ``PipelineConfig`` fields."""
    from .core import PipelineConfig
    kwargs: Dict[str, Any] = dict(
        realm_checkpoint=str(paths['realm']), dune_checkpoint=str(paths['dune']),
        depth_head_checkpoint=str(paths['depth_head']), seg_head_checkpoint=str(paths['seg_head']),
        mast3r_checkpoint=str(paths.get('mast3r', '')), device='cpu')
    kwargs.update(overrides)
    return PipelineConfig(**kwargs)


def build_random_tiny_modules(seed: int = 0, projector_dim: int = 256, with_mast3r: bool = True) -> Any:
    """The modules of :func:`write_random_tiny_checkpoints`, built in memory (no files) as
    :class:`~realm_ros.pipeline.core.PipelineModules` for :meth:`RealmPipeline.from_modules`."""
    from realm_ros.models import (DepthBinsHead, DinoV2Projector, RealmEncoder, SegmentationHead, VoxelEmbedder,
                                  vit_tiny)
    from realm_ros.models.embedder import TINY_EMBEDDER
    from realm_ros.pipeline.core import PipelineModules

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = vit_tiny(img_size=TINY_INPUT_SIZE)
        student = RealmEncoder(encoder, VoxelEmbedder(**TINY_EMBEDDER), lora_rank=4, lora_alpha=4, lora_dropout=0.0)
        student.merge_lora()
        modules = PipelineModules(
            encoder=student,
            depth_head=DepthBinsHead(embed_dim=encoder.embed_dim, bins=64, min_depth=1.0, max_depth=81.0),
            seg_head=SegmentationHead(in_dim=projector_dim, classes=11),
            projector=DinoV2Projector(embed_dim=encoder.embed_dim, out_dim=projector_dim, num_heads=encoder.num_heads),
            sources={'encoder': 'in-memory tiny REALM', 'seg_head': 'in-memory segmentation head'})
        if with_mast3r:
            from realm_ros.models.mast3r import DuneMast3rConfig, DuneMast3rDecoder
            modules.mast3r = DuneMast3rDecoder(DuneMast3rConfig.tiny(enc_embed_dim=encoder.embed_dim),
                                               dune_backbone_name='tiny_dune')
    finally:
        torch.random.set_rng_state(gen_state)
    return modules
