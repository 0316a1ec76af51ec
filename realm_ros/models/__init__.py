"""realm_ros.models: DUNE encoder (official key layout), REALM student, heads and checkpoint IO (ROS-free).

Main entry points::

    from realm_ros.models import load_dune, load_realm_checkpoint, RealmEncoder, VoxelEmbedder
    dune = load_dune('dune_vitbase14_448_paper.pth', device='cuda')   # DuneModel: .encoder, .projector, .teacher_norms
    student = RealmEncoder(dune.encoder, VoxelEmbedder())             # LoRA r=32 on qkv/proj/fc1/fc2
    out = student(voxel)                                              # x_norm_clstoken, x_norm_patchtokens, ...

``realm_ros.models.mast3r`` (DUNE-MASt3R decoder) is imported separately. The names below are what a user builds,
loads and saves; internal helpers (position-embedding interpolation, token-grid reshaping, key-prefix stripping,
LoRA parameter counting) are reached through their modules.
"""
from .checkpoints import (CheckpointError, TeacherMismatchError, convert_checkpoint, dune_model_from_state_dict,
                          load_dune, load_head_checkpoint, load_realm_checkpoint, read_checkpoint,
                          read_safetensors, save_dune_checkpoint, save_head_checkpoint, save_realm_checkpoint,
                          sha256_file, write_safetensors)
from .dune import DinoVisionTransformer, vit_base, vit_small, vit_tiny
from .dune_model import DINOV2_TEACHER, DuneModel, TeacherNorm
from .embedder import TINY_EMBEDDER, VoxelEmbedder
from .heads import (BRIDGES, DSEC_CLASSES, DSEC_PALETTE, DepthBinsHead, DinoV2Projector, SegmentationHead,
                    bridge_tokens, colorize_segmentation)
from .realm import LORA_TARGETS, RealmEncoder

__all__ = [
    'DinoVisionTransformer', 'vit_base', 'vit_small', 'vit_tiny',
    'DuneModel', 'TeacherNorm', 'DINOV2_TEACHER',
    'VoxelEmbedder', 'TINY_EMBEDDER',
    'RealmEncoder', 'LORA_TARGETS',
    'DepthBinsHead', 'DinoV2Projector', 'SegmentationHead', 'DSEC_CLASSES', 'DSEC_PALETTE', 'BRIDGES',
    'bridge_tokens', 'colorize_segmentation',
    'CheckpointError', 'TeacherMismatchError', 'load_dune', 'save_dune_checkpoint', 'dune_model_from_state_dict',
    'convert_checkpoint', 'read_checkpoint', 'read_safetensors', 'write_safetensors', 'sha256_file',
    'save_realm_checkpoint', 'load_realm_checkpoint', 'save_head_checkpoint',
    'load_head_checkpoint',
]
