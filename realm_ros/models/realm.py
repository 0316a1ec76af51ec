"""REALM student encoder: voxel embedder + frozen DUNE transformer with peft LoRA adapters.

``RealmEncoder(dune, embedder)`` takes a (teacher) :class:`~realm_ros.models.dune.DinoVisionTransformer`, copies it
(by default) so the teacher stays untouched, drops its RGB ``patch_embed`` and feeds the voxel-embedder tokens through
the DUNE token preparation (cls, positional embedding, registers) and blocks. peft LoRA adapters are injected into
``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and ``mlp.fc2`` of every block. Trainable: the embedder, the LoRA adapters and
the final ``norm``; everything else of DUNE is frozen.

Training extras: MAE-style token drop (``token_drop`` ratio, training mode only; positions are added before dropping
and the kept indices are returned as ``keep_index``). Inference: :meth:`RealmEncoder.merge_lora` folds the adapters
into the linear weights and removes the peft wrappers (plain ``nn.Linear`` again).

Module state-dict keys (``RealmEncoder.state_dict()``) - stable, but use the REALM checkpoint format of
:mod:`realm_ros.models.checkpoints` for files::

    embedder.*                                       voxel embedder
    backbone.{cls_token,pos_embed,mask_token[,register_tokens]}
    backbone.blocks.0.<i>.attn.qkv.base_layer.{weight,bias}           (unmerged; peft wrapper)
    backbone.blocks.0.<i>.attn.qkv.lora_A.default.weight  (r, in)      lora_B.default.weight (out, r)
    backbone.blocks.0.<i>.attn.qkv.{weight,bias}                      (after merge_lora())
    ... same for attn.proj, mlp.fc1, mlp.fc2; other block keys as in DUNE
    backbone.norm.{weight,bias}                      trained final norm
    teacher_norm_weight, teacher_norm_bias           the teacher's final-norm affine (for the bridges of heads.py)
"""
from __future__ import annotations

import copy
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .dune import DinoVisionTransformer
from .embedder import VoxelEmbedder
from .heads import bridge_tokens

__all__ = ['RealmEncoder', 'LORA_TARGETS', 'lora_param_count']

#: Linear layers of every block that receive LoRA adapters.
LORA_TARGETS: Tuple[str, ...] = ('qkv', 'proj', 'fc1', 'fc2')
_ADAPTER = 'default'


def lora_param_count(dim: int, depth: int, rank: int, mlp_ratio: float = 4.0) -> int:
    """LoRA parameters for qkv, proj, fc1, fc2 of ``depth`` blocks: r*(in+out) per linear (4,718,592 for ViT-B r=32)."""
    hidden = int(dim * mlp_ratio)
    per_block = rank * ((dim + 3 * dim) + (dim + dim) + (dim + hidden) + (hidden + dim))
    return depth * per_block


class RealmEncoder(nn.Module):
    """Event encoder aligned to the DUNE latent space.

    Args:
        dune: the DUNE encoder (teacher). Copied unless ``copy_dune=False`` (then it is modified in place).
        embedder: the voxel embedder; its ``embed_dim`` must equal DUNE's.
        lora_rank, lora_alpha, lora_dropout: peft LoRA settings (scaling alpha / rank). ``lora_rank=0`` builds the
            encoder without adapters (equivalent to an already merged encoder).
        token_drop: fraction of embedder tokens dropped uniformly at random per sample in training mode.
        copy_dune: deep-copy ``dune`` (default) so the teacher keeps its weights and its final norm.

    ``forward(voxel (B, C, H, W))`` returns the DUNE ``forward_features`` dictionary (``x_norm_clstoken``,
    ``x_norm_regtokens``, ``x_norm_patchtokens``, ``x_prenorm``, ``x_prenorm_clstoken``, ``x_prenorm_patchtokens``,
    ``masks``) plus ``keep_index`` (B, K) of the kept patch tokens when token drop is active (else ``None``); with
    token drop the patch outputs hold only those K tokens.
    """

    def __init__(self, dune: DinoVisionTransformer, embedder: VoxelEmbedder, lora_rank: int = 32,
                 lora_alpha: float = 32, lora_dropout: float = 0.1, token_drop: float = 0.0,
                 copy_dune: bool = True, lora_targets: Sequence[str] = LORA_TARGETS) -> None:
        super().__init__()
        if embedder.embed_dim != dune.embed_dim:
            raise ValueError(f'embedder embed_dim {embedder.embed_dim} does not match DUNE embed_dim {dune.embed_dim}')
        if lora_rank < 0:
            raise ValueError(f'lora_rank must be >= 0, got {lora_rank}')
        backbone = copy.deepcopy(dune) if copy_dune else dune
        backbone.patch_embed = None  # type: ignore[assignment]  # replaced by the voxel embedder
        self.embedder = embedder
        self.backbone = backbone
        self.register_buffer('teacher_norm_weight', dune.norm.weight.detach().clone())
        self.register_buffer('teacher_norm_bias', dune.norm.bias.detach().clone())
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha)
        self.lora_dropout = float(lora_dropout)
        self.lora_targets = tuple(lora_targets)
        self.token_drop = float(token_drop)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.merged = self.lora_rank == 0
        if self.lora_rank > 0:
            self._inject_lora()
        for p in self.backbone.norm.parameters():
            p.requires_grad_(True)
        for p in self.embedder.parameters():
            p.requires_grad_(True)

    # ------------------------------------------------------------------------------------------------ LoRA
    def _inject_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model  # local import: peft pulls transformers (slow import)

        config = LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                            target_modules=list(self.lora_targets), bias='none')
        inject_adapter_in_model(config, self.backbone.blocks, adapter_name=_ADAPTER)
        for name, p in self.backbone.blocks.named_parameters():
            p.requires_grad_('lora_' in name)

    def lora_layers(self) -> Iterator[Tuple[str, nn.Module]]:
        """(name relative to ``backbone``, peft LoRA layer) for every adapted linear, e.g. ``blocks.0.3.attn.qkv``."""
        from peft.tuners.lora import LoraLayer

        for name, module in self.backbone.named_modules():
            if isinstance(module, LoraLayer):
                yield name, module

    def lora_state_dict(self) -> Dict[str, torch.Tensor]:
        """Adapters under canonical names ``blocks.0.<i>.<attn.qkv|...>.lora_A.weight`` (r, in) / ``lora_B.weight``."""
        out = {}
        for name, layer in self.lora_layers():
            out[f'{name}.lora_A.weight'] = layer.lora_A[_ADAPTER].weight
            out[f'{name}.lora_B.weight'] = layer.lora_B[_ADAPTER].weight
        return out

    def load_lora_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Load adapters saved by :meth:`lora_state_dict`; every adapter must be present with the right shape."""
        own = self.lora_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f'LoRA weights do not match this encoder: missing {missing[:6]}'
                             f'{"..." if len(missing) > 6 else ""}, unexpected {unexpected[:6]}'
                             f'{"..." if len(unexpected) > 6 else ""}')
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f'LoRA weight {key}: shape {tuple(value.shape)}, expected {tuple(own[key].shape)}')
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    @torch.no_grad()
    def merge_lora(self) -> 'RealmEncoder':
        """Fold every adapter into its base linear (W += B A * alpha/r) and replace the peft wrappers with the
        plain ``nn.Linear``. Outputs are unchanged (up to float rounding); LoRA parameters disappear. Idempotent."""
        if self.merged:
            return self
        layers = list(self.lora_layers())
        for name, layer in layers:
            layer.merge(safe_merge=True, adapter_names=[_ADAPTER])
            base = layer.get_base_layer()
            parent_name, _, child = name.rpartition('.')
            setattr(self.backbone.get_submodule(parent_name), child, base)
        for p in self.backbone.blocks.parameters():
            p.requires_grad_(False)
        self.merged = True
        return self

    # ------------------------------------------------------------------------------------------------ params
    def trainable_parameters(self) -> List[nn.Parameter]:
        """Parameters to optimise: embedder, LoRA adapters (until merged) and the final norm."""
        return [p for p in self.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of :meth:`trainable_parameters`."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def architecture(self) -> Dict[str, object]:
        """JSON-serialisable description (DUNE architecture, embedder config, LoRA settings)."""
        return dict(dune=self.backbone.architecture(), embedder=self.embedder.config(),
                    lora=dict(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                              targets=list(self.lora_targets)))

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def num_register_tokens(self) -> int:
        return self.backbone.num_register_tokens

    @property
    def grid_size(self) -> Tuple[int, int]:
        return self.embedder.grid_size

    @property
    def patch_size(self) -> int:
        """The DUNE patch size the token grid imitates (14): input pixels per token for geometry."""
        return self.backbone.patch_size

    # ------------------------------------------------------------------------------------------------ forward
    def _keep_index(self, batch: int, num_tokens: int, device: torch.device) -> Optional[torch.Tensor]:
        if not (self.training and self.token_drop > 0.0):
            return None
        if not 0.0 <= self.token_drop < 1.0:
            raise ValueError(f'token_drop must be in [0, 1), got {self.token_drop}')
        keep = max(1, int(round(num_tokens * (1.0 - self.token_drop))))
        noise = torch.rand(batch, num_tokens, device=device)
        return noise.argsort(dim=1)[:, :keep].sort(dim=1).values

    def forward(self, voxel: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        tokens = self.embedder(voxel)
        grid = self.embedder.grid_size
        keep_index = self._keep_index(tokens.shape[0], tokens.shape[1], tokens.device)
        x = self.backbone.tokens_from_patches(tokens, grid, keep_index=keep_index)
        out = self.backbone.split_outputs(self.backbone.blocks[0](x), apply_norm=True)
        out['keep_index'] = keep_index
        return out

    def head_tokens(self, out: Dict[str, Optional[torch.Tensor]], bridge: str = 'teacher_norm_inverse') -> torch.Tensor:
        """Teacher-pre-norm-equivalent ``concat(cls, patches)`` (B, 1+N, D) for the DINOv2 projector / MASt3R
        (see :func:`realm_ros.models.heads.bridge_tokens`)."""
        return bridge_tokens(out, bridge, self.teacher_norm_weight, self.teacher_norm_bias)
