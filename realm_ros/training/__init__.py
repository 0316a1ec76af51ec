"""realm_ros.training: distil REALM and train its heads from ROS 2 bags (ROS-free; rclpy never imported).

Modules (import what you need; this package import itself stays light so that ``--help`` is instant):

* :mod:`~realm_ros.training.config` - typed configuration (one declaration per setting), YAML, ``--<field>`` options
  and ``--ros-args`` overrides; :mod:`~realm_ros.training.fields` - what is derived from the declarations.
* :mod:`~realm_ros.training.bag_dataset` - bag preparation (event windows ending at RGB stamps, RGB warped into the
  event camera), :class:`DistillDataset` / :class:`HeadsDataset`.
* :mod:`~realm_ros.training.camera_geometry` - camera_info models, static TF chains, the per-pixel warp.
* :mod:`~realm_ros.training.distill` - loss on normalised tokens, progressive spatial mask, token-drop schedule;
  :mod:`~realm_ros.training.distill_task` - the distillation task (teacher, student, trainable set, export).
* :mod:`~realm_ros.training.heads` - depth (SI log + gradient) and segmentation (focal + Dice) losses, head task.
* :mod:`~realm_ros.training.trainer` - resumable AdamW/cosine/AMP/accumulation/DDP loop, atomic checkpoints;
  :mod:`~realm_ros.training.loop` - the optimiser step it shares with the miniature pretrainers;
  :mod:`~realm_ros.training.distributed` - process group, devices, resumable sampler;
  :mod:`~realm_ros.training.storage` - atomic checkpoint files, RNG state, metrics.jsonl.
* :mod:`~realm_ros.training.feature_cache` - optional on-disk teacher-feature cache.
* :mod:`~realm_ros.training.cli` - ``train_from_bag`` / ``train_heads`` front ends (``distill_main``, ``heads_main``).
* :mod:`~realm_ros.training.errors` - error classes and the exit codes of the tools.
"""
from .config import ConfigError, DistillConfig, HeadsConfig
from .errors import DataError, DivergenceError, Interrupted, StorageError, TrainingError

__all__ = ['ConfigError', 'DistillConfig', 'HeadsConfig', 'DataError', 'DivergenceError', 'Interrupted',
           'StorageError', 'TrainingError']
