"""realm_ros.models: DUNE encoder (official key layout), REALM student, heads and checkpoint IO (ROS-free)."""
from .dune import DinoVisionTransformer, vit_base, vit_small, vit_tiny, interpolate_pos_embed

__all__ = ['DinoVisionTransformer', 'vit_base', 'vit_small', 'vit_tiny', 'interpolate_pos_embed']
