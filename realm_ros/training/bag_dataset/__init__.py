"""Training data from ROS 2 bags: event windows paired with RGB frames (distillation) and RGB + ground truth (heads).

Preparation (once per bag and data configuration, cached under ``<cache_dir>/<bag>-<hash>/``):

1. Index the bag's topics and check the message types (:class:`~realm_ros.training.errors.DataError` naming the bag,
   the topic, its type and the expected types otherwise).
2. Read the camera_info topics and ``/tf_static``; resolve the RGB -> event camera transform (config, TF chain
   between the two camera_info frame_ids, or identity) and build the per-pixel warp of
   :mod:`~realm_ros.training.camera_geometry`.
3. Stream the bag once: EventPackets (any supported encoding; legacy event arrays too) are decoded into ROS-time
   events appended to ``x/y/t/p`` files (memory-mapped later, so bags larger than RAM work); every ``stride``-th RGB
   frame (any common encoding via rosbags-image, also CompressedImage) is warped into the event camera and appended
   to ``frames.u8``.
4. Pairs: for each kept frame with stamp ``T`` (header stamp + ``rgb_time_offset_ms``), the event window ending at
   ``T`` - the last ``window_count`` events (``window: count``) or the events in ``(T - window_ms, T]``
   (``window: time``), never reaching back past the previous RGB frame when ``bound_by_previous_frame``. Frames with
   fewer than ``min_events`` events are skipped and counted (``stats.json``).

The datasets then build, per pair in a worker process, the voxel grid of the window
(:func:`realm_ros.events.voxel_grid`) and apply the same spatial preparation as inference
(:func:`realm_ros.events.spatial.prepare_input`: centre crop + resize, padding or 4 corner tiles) to the voxel grid,
the warped RGB frame and its coverage mask. RGB is ImageNet-normalised for the DUNE teacher.

Modules: :mod:`.bags` (bag access, image decoding), :mod:`.pairing` (windows ending at frame stamps, splits),
:mod:`.cache` (prepared-bag directories), :mod:`.prepare` (the two preparations), :mod:`.datasets` (PyTorch
datasets). Everything is re-exported here.
"""
from __future__ import annotations

from .bags import (CAMERA_INFO_TYPE, IMAGE_TYPES, TF_TYPE, bag_topics, check_topic, decode_gt, decode_rgb,
                   iter_messages, stamp_ns)
from .cache import PREP_VERSION, PreparedBag
from .datasets import IMAGENET_MEAN, IMAGENET_STD, DistillDataset, HeadsDataset, collate_tiles
from .datasets import _normalize_rgb as _normalize_rgb  # used by benchmarks/bench_training.py
from .pairing import compute_pairs, split_pairs
from .prepare import prepare_bags, prepare_distill_bag, prepare_heads_bag

__all__ = ['IMAGE_TYPES', 'CAMERA_INFO_TYPE', 'TF_TYPE', 'PREP_VERSION', 'stamp_ns', 'bag_topics',
           'check_topic', 'decode_rgb', 'decode_gt', 'PreparedBag', 'prepare_distill_bag', 'prepare_heads_bag',
           'compute_pairs', 'split_pairs', 'DistillDataset', 'HeadsDataset', 'collate_tiles', 'IMAGENET_MEAN',
           'IMAGENET_STD', 'prepare_bags', 'iter_messages']
