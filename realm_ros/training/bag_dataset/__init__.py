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
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..camera_geometry import (TfTree, build_warp_maps, camera_from_info, identity_maps,
                               quaternion_to_matrix, valid_mask_from_maps, warp_image)
from ..config import BagSpec, bag_data_config
from ..errors import DataError, StorageError

__all__ = ['IMAGE_TYPES', 'CAMERA_INFO_TYPE', 'TF_TYPE', 'PREP_VERSION', 'stamp_ns', 'bag_topics',
           'check_topic', 'decode_rgb', 'decode_gt', 'PreparedBag', 'prepare_distill_bag', 'prepare_heads_bag',
           'compute_pairs', 'split_pairs', 'DistillDataset', 'HeadsDataset', 'collate_tiles', 'IMAGENET_MEAN',
           'IMAGENET_STD', 'prepare_bags']

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
TF_TYPE = 'tf2_msgs/msg/TFMessage'
PREP_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EVENT_FILES = (('x', np.uint16), ('y', np.uint16), ('t', np.int64), ('p', np.uint8))


def _event_types() -> Tuple[str, ...]:
    from realm_ros.events.bagio import EVENT_TYPES
    return tuple(EVENT_TYPES)


def stamp_ns(header: Any) -> int:
    """``header.stamp`` in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


# ====================================================================================================== bag access
def _bag_error(path: str, exc: BaseException) -> DataError:
    text = str(exc) or type(exc).__name__
    if str(path) not in text:
        text = f'{path}: {text}'
    return DataError(f'cannot read bag {text}')


def bag_topics(path: str) -> Dict[str, str]:
    """``{topic: msgtype}`` of a bag; :class:`DataError` for a missing, unreadable or truncated bag."""
    from realm_ros.events.bagio import list_bag_topics
    if not os.path.exists(path):
        raise DataError(f'bag {path!r} does not exist')
    try:
        return list_bag_topics(path)
    except Exception as exc:  # rosbags raises many types for corrupt files
        raise _bag_error(path, exc) from None


def iter_messages(path: str, topics: Sequence[str], errors: Dict[str, int]) -> Iterable[Tuple[str, str, int, Any]]:
    """:func:`realm_ros.events.bagio.iter_bag_messages` with every failure mapped to :class:`DataError`.

    Undecodable single messages are skipped and counted in ``errors['bad_messages']``; a truncated/corrupt storage
    file stops with a :class:`DataError` naming the bag.
    """
    from realm_ros.events.bagio import iter_bag_messages
    it = iter_bag_messages(path, topics, errors=errors)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as exc:
            raise _bag_error(path, exc) from None
        yield item


def check_topic(path: str, topics: Dict[str, str], topic: str, allowed: Sequence[str], role: str,
                required: bool = True) -> bool:
    """Check that ``topic`` exists with an allowed type; returns False for a missing optional topic."""
    if topic not in topics:
        if not required:
            return False
        listing = ', '.join(f'{t} ({m})' for t, m in sorted(topics.items())) or 'none'
        raise DataError(f'bag {path}: {role} topic {topic!r} not found; topics in the bag: {listing}')
    if topics[topic] not in allowed:
        raise DataError(f'bag {path}: {role} topic {topic!r} has type {topics[topic]}, expected '
                        f'{" or ".join(allowed)}')
    return True


# ====================================================================================================== images
def decode_rgb(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an Image/CompressedImage in any common encoding (rosbags-image)."""
    from rosbags.image import message_to_cvimage
    try:
        img = message_to_cvimage(msg, 'rgb8')
    except Exception:
        img = np.asarray(message_to_cvimage(msg))
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif img.dtype != np.uint8:
            img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        elif img.shape[2] == 4:
            img = img[:, :, :3]
    img = np.ascontiguousarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'decoded image has shape {img.shape}')
    return img


def decode_gt(msg: Any, kind: str, depth_scale_16u: float) -> np.ndarray:
    """Ground truth from an Image: depth (H, W) float32 metres (32FC1, or 16UC1/mono16 x scale) or labels uint8."""
    from rosbags.image import message_to_cvimage
    enc = str(msg.encoding).lower()
    img = np.asarray(message_to_cvimage(msg))
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2:
        raise ValueError(f'{kind} image must have one channel, got encoding {msg.encoding!r} shape {img.shape}')
    if kind == 'depth':
        if enc in ('32fc1', '64fc1'):
            return img.astype(np.float32)
        if enc in ('16uc1', 'mono16'):
            out = img.astype(np.float32) * np.float32(depth_scale_16u)
            out[img == 0] = np.nan
            return out
        raise ValueError(f'depth image encoding {msg.encoding!r} is not 32FC1/16UC1')
    if enc not in ('mono8', '8uc1'):
        raise ValueError(f'label image encoding {msg.encoding!r} is not mono8/8UC1')
    return img.astype(np.uint8)


# ====================================================================================================== prepared bag
@dataclass
class PreparedBag:
    """A prepared bag directory: memory-mapped events/frames/targets, pair table, geometry and statistics."""
    directory: str
    meta: Dict[str, Any]
    pairs: Dict[str, np.ndarray]
    _maps: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.meta['bag']

    @property
    def num_pairs(self) -> int:
        return int(len(self.pairs['frame']))

    @property
    def stats(self) -> Dict[str, int]:
        return self.meta['stats']

    def array(self, name: str) -> np.ndarray:
        """Memory-mapped array ``name`` (opened lazily, per process)."""
        if name not in self._maps:
            spec = self.meta['arrays'][name]
            path = os.path.join(self.directory, spec['file'])
            shape = tuple(spec['shape'])
            if int(np.prod(shape)) == 0:
                self._maps[name] = np.zeros(shape, dtype=spec['dtype'])
            else:
                self._maps[name] = np.memmap(path, dtype=spec['dtype'], mode='r', shape=shape)
        return self._maps[name]

    def __getstate__(self) -> Dict[str, Any]:  # memmaps are reopened in worker processes
        return {'directory': self.directory, 'meta': self.meta, 'pairs': self.pairs, '_maps': {}}

    @staticmethod
    def load(directory: str) -> 'PreparedBag':
        with open(os.path.join(directory, 'meta.json'), encoding='utf-8') as fh:
            meta = json.load(fh)
        with np.load(os.path.join(directory, 'pairs.npz')) as z:
            pairs = {k: z[k] for k in z.files}
        return PreparedBag(directory, meta, pairs)


class _Appender:
    """Append raw arrays to a file; :class:`StorageError` on a full disk."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        try:
            self.fh = open(path, 'wb')
        except OSError as exc:
            raise StorageError(f'cannot write {path!r}: {exc.strerror or exc}') from None

    def write(self, arr: np.ndarray) -> None:
        try:
            self.fh.write(np.ascontiguousarray(arr).tobytes())
        except OSError as exc:
            raise StorageError(f'cannot write {self.path!r} while preparing the bag: '
                               f'{exc.strerror or exc} (disk full?)') from None
        self.count += len(arr)

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError as exc:
            raise StorageError(f'cannot write {self.path!r}: {exc.strerror or exc}') from None


def _bag_identity(path: str) -> List[Any]:
    p = Path(path)
    files = sorted(p.rglob('*')) if p.is_dir() else [p]
    return [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files if f.is_file()]


def _prep_dir(cache_root: str, path: str, kind: str, cfg_dict: Dict[str, Any]) -> str:
    ident = {'version': PREP_VERSION, 'kind': kind, 'path': os.path.abspath(path), 'files': _bag_identity(path),
             'cfg': cfg_dict}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stem = Path(path).name.replace('.', '_') or 'bag'
    return os.path.join(cache_root, f'{stem}-{kind}-{key}')


def _make_tmp_dir(final: str) -> str:
    """A fresh ``<final>.tmp-<host>-<pid>`` directory; leftovers of dead processes on this host are removed."""
    host = socket.gethostname()
    parent = os.path.dirname(final) or '.'
    prefix = f'{os.path.basename(final)}.tmp-{host}-'
    with_prefix = [d for d in os.listdir(parent) if d.startswith(prefix)] if os.path.isdir(parent) else []
    for name in with_prefix:
        try:
            os.kill(int(name[len(prefix):]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except (ValueError, PermissionError):
            pass
    tmp = os.path.join(parent, f'{prefix}{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
    except OSError as exc:
        raise StorageError(f'cannot create {tmp!r}: {exc.strerror or exc}') from None
    return tmp


def _write_meta_and_finish(tmp: str, final: str, meta: Dict[str, Any]) -> None:
    """Write ``meta.json`` into the temporary preparation directory, then move it into place atomically."""
    try:
        with open(os.path.join(tmp, 'meta.json'), 'w', encoding='utf-8') as fh:
            json.dump(meta, fh, indent=1)
    except OSError as exc:
        raise StorageError(f'cannot write {tmp}/meta.json: {exc.strerror or exc}') from None
    _finish_dir(tmp, final)


def _finish_dir(tmp: str, final: str) -> None:
    try:
        os.replace(tmp, final)
    except OSError:
        if os.path.exists(os.path.join(final, 'meta.json')):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def _data_fields(data: Any, names: Sequence[str]) -> Dict[str, Any]:
    d = {n: getattr(data, n) for n in names}
    d['topics'] = vars(data.topics).copy()
    return d


# ====================================================================================================== pairs
def compute_pairs(t: np.ndarray, frame_stamps: np.ndarray, prev_stamps: np.ndarray, window: str, count: int,
                  duration_ns: int, min_events: int, bound: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event windows ending at each frame stamp (vectorised binary searches over the sorted times ``t``).

    Returns ``(start, end, ok)``: events ``start:end`` (``t <= stamp``) for each frame, and whether the window has at
    least ``min_events`` events. ``prev_stamps`` (previous frame stamp or ``-inf`` as int64 min) bounds the window
    from below when ``bound``.
    """
    end = np.searchsorted(t, frame_stamps, side='right').astype(np.int64)
    if window == 'count':
        start = np.maximum(end - int(count), 0)
    else:
        start = np.searchsorted(t, frame_stamps - int(duration_ns), side='right').astype(np.int64)
    if bound:
        lower = np.searchsorted(t, prev_stamps, side='right').astype(np.int64)
        start = np.maximum(start, lower)
    start = np.minimum(start, end)
    ok = (end - start) >= int(min_events)
    return start, end, ok


def split_pairs(n: int, split: str, val_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) of a bag's ``n`` pairs: all train / all val / last ``val_fraction`` held out."""
    idx = np.arange(n)
    if split == 'train':
        return idx, idx[:0]
    if split == 'val':
        return idx[:0], idx
    n_val = int(math.ceil(n * val_fraction)) if val_fraction > 0 and n >= 2 else 0
    n_val = min(n_val, n - 1) if n > 1 else 0
    return idx[:n - n_val], idx[n - n_val:]


def _evenly(n: int, k: int) -> np.ndarray:
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


# ====================================================================================================== distillation
class _EventSink:
    """Decodes event messages of one topic into ROS-time events appended to x/y/t/p files (time made monotonic)."""

    def __init__(self, directory: str, topic: str, bag: str) -> None:
        self.files = {name: _Appender(os.path.join(directory, f'events_{name}.bin')) for name, _ in _EVENT_FILES}
        self.topic = topic
        self.bag = bag
        self.decoder: Any = None
        self.width = 0
        self.height = 0
        self.frame_id = ''
        self.last_t = np.iinfo(np.int64).min
        self.first_t: Optional[int] = None
        self.reordered = 0
        self.out_of_bounds = 0

    def add(self, msgtype: str, msg: Any) -> None:
        if self.decoder is None:
            from realm_ros.events import EventPacketDecoder
            self.decoder = EventPacketDecoder()  # smoothed header-stamp offset: sensor time -> ROS time
            self.width, self.height = int(msg.width), int(msg.height)
            self.frame_id = str(msg.header.frame_id)
        ev = self.decoder.decode_msg(msg)  # never raises; failures are counted in decoder.stats
        n = len(ev)
        if n == 0:
            return
        x, y, t, p = ev.x, ev.y, np.asarray(ev.t, dtype=np.int64), ev.p
        inside = (x < self.width) & (y < self.height)
        if not inside.all():
            self.out_of_bounds += int((~inside).sum())
            x, y, t, p = x[inside], y[inside], t[inside], p[inside]
            if len(t) == 0:
                return
        mono = np.maximum.accumulate(np.concatenate([[self.last_t], t]))[1:]
        self.reordered += int(np.count_nonzero(mono != t))
        self.last_t = int(mono[-1])
        if self.first_t is None:
            self.first_t = int(mono[0])
        self.files['x'].write(x.astype(np.uint16, copy=False))
        self.files['y'].write(y.astype(np.uint16, copy=False))
        self.files['t'].write(mono)
        self.files['p'].write(p.astype(np.uint8, copy=False))

    @property
    def count(self) -> int:
        return self.files['t'].count

    @property
    def decoder_stats(self) -> Dict[str, Any]:
        return self.decoder.stats if self.decoder is not None else {}

    @property
    def packet_errors(self) -> int:
        return int(self.decoder.num_errors) if self.decoder is not None else 0

    @property
    def last_error(self) -> str:
        return (self.decoder.last_error or '') if self.decoder is not None else ''

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _resolve_extrinsics(data: Any, tf: TfTree, rgb_frame: str, event_frame: str,
                        path: str) -> Tuple[np.ndarray, np.ndarray, str]:
    """(R, t, source) with ``p_event = R p_rgb + t``."""
    mode = data.extrinsics
    if mode == 'identity':
        return np.eye(3), np.zeros(3), 'identity'
    if mode in ('tf', 'auto') and rgb_frame and event_frame:
        T = tf.lookup(event_frame, rgb_frame)
        if T is not None:
            return T[:3, :3], T[:3, 3], f'tf ({rgb_frame} -> {event_frame})'
        if mode == 'tf':
            raise DataError(f'bag {path}: no /tf_static chain between the RGB frame {rgb_frame!r} and the event '
                            f'frame {event_frame!r} ({len(tf)} static transforms); set data.extrinsics=config with '
                            f'data.rgb_to_event_rotation/translation')
    if mode == 'tf':
        raise DataError(f'bag {path}: extrinsics=tf needs frame_ids on both camera_info topics')
    R = quaternion_to_matrix(data.rgb_to_event_rotation)
    source = 'config'
    if mode == 'auto':
        source = (f'config (no /tf_static chain between {rgb_frame!r} and {event_frame!r}: using '
                  f'data.rgb_to_event_rotation/translation)')
    return R, np.asarray(data.rgb_to_event_translation, dtype=np.float64), source


def prepare_distill_bag(spec: BagSpec, data: Any, cache_root: str,
                        log: Callable[[str], None] = lambda s: None) -> PreparedBag:
    """Prepare one bag for distillation (see the module docstring); cached by bag identity and data settings."""
    path = spec.path
    topics = bag_topics(path)
    tp = data.topics
    check_topic(path, topics, tp.events, _event_types(), 'events')
    check_topic(path, topics, tp.rgb, IMAGE_TYPES, 'RGB')
    has_rgb_info = check_topic(path, topics, tp.rgb_info, (CAMERA_INFO_TYPE,), 'RGB camera_info',
                               required=data.extrinsics != 'identity')
    has_ev_info = check_topic(path, topics, tp.event_info, (CAMERA_INFO_TYPE,), 'event camera_info',
                              required=False)
    has_tf = check_topic(path, topics, tp.tf_static, (TF_TYPE,), 'tf_static', required=data.extrinsics == 'tf')
    if data.extrinsics != 'identity' and not has_ev_info:
        raise DataError(f'bag {path}: event camera_info topic {tp.event_info!r} not found; it is needed to warp RGB '
                        f'into the event camera (set data.extrinsics=identity if RGB and events share one sensor)')
    cfg_fields = _data_fields(data, ('stride', 'rgb_time_offset_ms', 'window', 'window_count', 'window_ms',
                                     'min_events', 'bound_by_previous_frame', 'extrinsics', 'rgb_to_event_rotation',
                                     'rgb_to_event_translation', 'plane_depth_m', 'max_pairs'))
    final = _prep_dir(cache_root, path, 'distill', cfg_fields)
    if os.path.exists(os.path.join(final, 'meta.json')):
        bag = PreparedBag.load(final)
        log(f'{path}: using prepared data {final}')
        return bag
    log(f'{path}: preparing (decoding events, warping RGB) -> {final}')
    errors: Dict[str, int] = {}
    # ------------------------------------------------------------------ pass 1: calibration
    rgb_cam = ev_cam = None
    tf = TfTree()
    small = [t for t, ok in ((tp.rgb_info, has_rgb_info), (tp.event_info, has_ev_info), (tp.tf_static, has_tf)) if ok]
    if small:
        for topic, _, _, msg in iter_messages(path, small, errors):
            if topic == tp.tf_static:
                tf.add_message(msg)
            elif topic == tp.rgb_info and rgb_cam is None:
                rgb_cam = camera_from_info(msg, f'{path}:{topic}')
            elif topic == tp.event_info and ev_cam is None:
                ev_cam = camera_from_info(msg, f'{path}:{topic}')
    if has_rgb_info and rgb_cam is None:
        raise DataError(f'bag {path}: RGB camera_info topic {tp.rgb_info!r} has no readable message')
    if has_ev_info and ev_cam is None and data.extrinsics != 'identity':
        raise DataError(f'bag {path}: event camera_info topic {tp.event_info!r} has no readable message')
    R, t_vec, ext_source = _resolve_extrinsics(data, tf, rgb_cam.frame_id if rgb_cam else '',
                                               ev_cam.frame_id if ev_cam else '', path)
    # ------------------------------------------------------------------ pass 2: events + frames
    try:
        os.makedirs(cache_root, exist_ok=True)
    except OSError as exc:
        raise StorageError(f'cannot create the cache directory {cache_root!r}: {exc.strerror or exc}') from None
    tmp = _make_tmp_dir(final)
    try:
        sink = _EventSink(tmp, tp.events, path)
        frames = _Appender(os.path.join(tmp, 'frames.u8'))
        maps: Optional[Tuple[np.ndarray, np.ndarray]] = None
        valid: Optional[np.ndarray] = None
        out_size: Optional[Tuple[int, int]] = None  # (W, H) of the event camera
        all_stamps: List[int] = []
        kept_stamps: List[int] = []
        rgb_decode_errors = 0
        rgb_error_examples: List[str] = []
        rgb_index = 0
        frames_shape: Optional[Tuple[int, ...]] = None
        offset_ns = int(round(data.rgb_time_offset_ms * 1e6))
        for topic, msgtype, _, msg in iter_messages(path, [tp.events, tp.rgb], errors):
            if topic == tp.events:
                sink.add(msgtype, msg)
                continue
            stamp = stamp_ns(msg.header) + offset_ns
            all_stamps.append(stamp)
            k = rgb_index
            rgb_index += 1
            if k % data.stride:
                continue
            try:
                img = decode_rgb(msg)
            except Exception as exc:
                rgb_decode_errors += 1
                if len(rgb_error_examples) < 3:
                    rgb_error_examples.append(f'{type(exc).__name__}: {exc}')
                continue
            if maps is None:
                h, w = img.shape[:2]
                if rgb_cam is not None and (rgb_cam.width, rgb_cam.height) != (w, h):
                    raise DataError(f'bag {path}: RGB frames are {w}x{h} but {tp.rgb_info} says '
                                    f'{rgb_cam.width}x{rgb_cam.height}')
                if ext_source == 'identity' and ev_cam is None:
                    out_size = (w, h)
                    maps = identity_maps(w, h)
                else:
                    cam_rgb = rgb_cam if rgb_cam is not None else ev_cam
                    out_size = (ev_cam.width, ev_cam.height)
                    if ext_source == 'identity' and rgb_cam is None and (w, h) != out_size:
                        raise DataError(f'bag {path}: RGB frames are {w}x{h}, the event camera '
                                        f'{out_size[0]}x{out_size[1]}; an RGB camera_info is needed to warp')
                    maps = build_warp_maps(ev_cam, cam_rgb, R, t_vec, data.plane_depth_m)
                valid = valid_mask_from_maps(maps, (w, h))
            elif img.shape[:2] != frames_shape:
                rgb_decode_errors += 1
                continue
            frames_shape = img.shape[:2]
            frames.write(warp_image(img, maps)[None])
            kept_stamps.append(stamp)
        sink.close()
        frames.close()
        # ------------------------------------------------------------------ checks
        if sink.count == 0:
            detail = (f' ({sink.packet_errors} decode errors; last: {sink.last_error})'
                      if sink.packet_errors or sink.last_error else '')
            raise DataError(f'bag {path}: no events could be decoded from topic {tp.events!r}{detail}')
        if not all_stamps:
            raise DataError(f'bag {path}: topic {tp.rgb!r} has no messages')
        if frames.count == 0:
            raise DataError(f'bag {path}: none of the RGB frames on {tp.rgb!r} could be decoded '
                            f'({"; ".join(rgb_error_examples)})')
        assert out_size is not None and valid is not None
        if (sink.width, sink.height) != out_size:
            raise DataError(f'bag {path}: the event sensor is {sink.width}x{sink.height} but the event camera '
                            f'{"camera_info" if ev_cam is not None else "(= RGB frame)"} is '
                            f'{out_size[0]}x{out_size[1]}')
        # ------------------------------------------------------------------ pairs
        t_events = np.memmap(os.path.join(tmp, 'events_t.bin'), dtype=np.int64, mode='r', shape=(sink.count,))
        order = np.argsort(np.asarray(all_stamps, dtype=np.int64), kind='stable')
        sorted_all = np.asarray(all_stamps, dtype=np.int64)[order]
        kept = np.asarray(kept_stamps, dtype=np.int64)
        pos = np.searchsorted(sorted_all, kept, side='left')
        prev = np.where(pos > 0, sorted_all[np.maximum(pos - 1, 0)], np.iinfo(np.int64).min)
        min_events = data.min_events if data.min_events is not None else (
            data.window_count if data.window == 'count' else 1000)
        start, end, ok = compute_pairs(t_events, kept, prev, data.window, data.window_count,
                                       int(round(data.window_ms * 1e6)), min_events, data.bound_by_previous_frame)
        del t_events
        frame_idx = np.arange(len(kept), dtype=np.int64)
        sel = np.nonzero(ok)[0]
        sel = sel[np.argsort(kept[sel], kind='stable')]
        sel = sel[_evenly(len(sel), data.max_pairs)]
        pairs = {'frame': frame_idx[sel], 'start': start[sel], 'end': end[sel], 'stamp': kept[sel]}
        stats = {'rgb_frames': len(all_stamps), 'frames_after_stride': len(kept_stamps) + rgb_decode_errors,
                 'rgb_decode_errors': rgb_decode_errors, 'too_few_events': int((~ok).sum()),
                 'pairs': int(len(sel)), 'events': int(sink.count), 'event_packet_errors': sink.packet_errors,
                 'events_reordered': sink.reordered, 'events_out_of_bounds': sink.out_of_bounds,
                 'bad_messages': int(errors.get('bad_messages', 0))}
        np.savez(os.path.join(tmp, 'pairs.npz'), **pairs)
        np.save(os.path.join(tmp, 'valid.npy'), valid)
        w, h = out_size
        meta = {
            'version': PREP_VERSION, 'kind': 'distill', 'bag': os.path.abspath(path), 'width': w, 'height': h,
            'event_frame_id': ev_cam.frame_id if ev_cam is not None else sink.frame_id,
            'K_event': ev_cam.K.tolist() if ev_cam is not None else (rgb_cam.K.tolist() if rgb_cam else None),
            'extrinsics': {'source': ext_source, 'R': np.asarray(R).tolist(), 't': np.asarray(t_vec).tolist(),
                           'plane_depth_m': data.plane_depth_m},
            'window': {'mode': data.window, 'count': data.window_count, 'duration_ms': data.window_ms,
                       'min_events': min_events, 'bound_by_previous_frame': data.bound_by_previous_frame},
            'stats': stats, 'rgb_error_examples': rgb_error_examples,
            'event_last_error': sink.last_error,
            'event_decoder_stats': {k: v for k, v in sink.decoder_stats.items() if isinstance(v, (int, dict))},
            'arrays': {
                **{f'events_{n}': {'file': f'events_{n}.bin', 'dtype': np.dtype(d).str, 'shape': [sink.count]}
                   for n, d in _EVENT_FILES},
                'frames': {'file': 'frames.u8', 'dtype': '|u1', 'shape': [frames.count, h, w, 3]},
            },
        }
        _write_meta_and_finish(tmp, final, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bag = PreparedBag.load(final)
    log(f'{path}: {stats["pairs"]} pairs from {stats["rgb_frames"]} RGB frames (stride {data.stride}); '
        f'skipped {stats["too_few_events"]} with < {min_events} events, {rgb_decode_errors} undecodable; '
        f'{stats["events"]} events; extrinsics {ext_source}')
    return bag


# ====================================================================================================== heads
def prepare_heads_bag(spec: BagSpec, data: Any, task: str, cache_root: str,
                      log: Callable[[str], None] = lambda s: None) -> PreparedBag:
    """Prepare one bag for head training: every ``stride``-th RGB frame with the depth/label image of the nearest
    stamp within ``match_tolerance_ms`` (frames without ground truth are skipped and counted)."""
    path = spec.path
    topics = bag_topics(path)
    tp = data.topics
    gt_topic = tp.depth if task == 'depth' else tp.labels
    check_topic(path, topics, tp.rgb, IMAGE_TYPES, 'RGB')
    check_topic(path, topics, gt_topic, ('sensor_msgs/msg/Image',), 'depth' if task == 'depth' else 'labels')
    cfg_fields = _data_fields(data, ('stride', 'rgb_time_offset_ms', 'match_tolerance_ms', 'depth_scale_16u',
                                     'max_pairs'))
    final = _prep_dir(cache_root, path, f'heads_{task}', cfg_fields)
    if os.path.exists(os.path.join(final, 'meta.json')):
        log(f'{path}: using prepared data {final}')
        return PreparedBag.load(final)
    log(f'{path}: preparing RGB + {task} ground truth -> {final}')
    try:
        os.makedirs(cache_root, exist_ok=True)
    except OSError as exc:
        raise StorageError(f'cannot create the cache directory {cache_root!r}: {exc.strerror or exc}') from None
    tmp = _make_tmp_dir(final)
    errors: Dict[str, int] = {}
    try:
        frames = _Appender(os.path.join(tmp, 'frames.u8'))
        targets = _Appender(os.path.join(tmp, 'targets.bin'))
        offset_ns = int(round(data.rgb_time_offset_ms * 1e6))
        rgb_stamps: List[int] = []
        gt_stamps: List[int] = []
        shape: Optional[Tuple[int, int]] = None
        gt_shape: Optional[Tuple[int, int]] = None
        rgb_index = 0
        decode_errors = {'rgb': 0, 'gt': 0}
        examples: List[str] = []
        for topic, _, _, msg in iter_messages(path, [tp.rgb, gt_topic], errors):
            try:
                if topic == tp.rgb:
                    k = rgb_index
                    rgb_index += 1
                    if k % data.stride:
                        continue
                    img = decode_rgb(msg)
                    if shape is None:
                        shape = img.shape[:2]
                    if img.shape[:2] != shape:
                        raise ValueError(f'frame size changed to {img.shape[1]}x{img.shape[0]}')
                    frames.write(img[None])
                    rgb_stamps.append(stamp_ns(msg.header) + offset_ns)
                else:
                    g = decode_gt(msg, task, data.depth_scale_16u)
                    if gt_shape is None:
                        gt_shape = g.shape
                    if g.shape != gt_shape:
                        raise ValueError(f'ground-truth size changed to {g.shape[1]}x{g.shape[0]}')
                    targets.write(g[None])
                    gt_stamps.append(stamp_ns(msg.header) + offset_ns)
            except (ValueError, TypeError, KeyError) as exc:
                decode_errors['rgb' if topic == tp.rgb else 'gt'] += 1
                if len(examples) < 3:
                    examples.append(f'{topic}: {exc}')
        frames.close()
        targets.close()
        if not rgb_stamps:
            raise DataError(f'bag {path}: no decodable RGB frames on {tp.rgb!r} ({"; ".join(examples)})')
        if not gt_stamps:
            raise DataError(f'bag {path}: no decodable {task} images on {gt_topic!r} ({"; ".join(examples)})')
        if gt_shape != shape:
            raise DataError(f'bag {path}: {task} images are {gt_shape[1]}x{gt_shape[0]} but RGB frames '
                            f'{shape[1]}x{shape[0]}; ground truth must be registered to the RGB camera')
        gts = np.asarray(gt_stamps, dtype=np.int64)
        order = np.argsort(gts, kind='stable')
        sorted_gt = gts[order]
        rs = np.asarray(rgb_stamps, dtype=np.int64)
        pos = np.clip(np.searchsorted(sorted_gt, rs), 0, len(sorted_gt) - 1)
        cand = np.stack([np.clip(pos - 1, 0, None), pos], 1)
        diff = np.abs(sorted_gt[cand] - rs[:, None])
        best = cand[np.arange(len(rs)), diff.argmin(1)]
        ok = diff.min(1) <= int(round(data.match_tolerance_ms * 1e6))
        sel = np.nonzero(ok)[0]
        sel = sel[np.argsort(rs[sel], kind='stable')]
        sel = sel[_evenly(len(sel), data.max_pairs)]
        pairs = {'frame': sel.astype(np.int64), 'target': order[best[sel]].astype(np.int64), 'stamp': rs[sel]}
        h, w = shape
        tdtype = '<f4' if task == 'depth' else '|u1'
        label_counts: List[int] = []
        if task == 'segmentation':
            tmap = np.memmap(os.path.join(tmp, 'targets.bin'), dtype=np.uint8, mode='r', shape=(len(gts), h, w))
            counts = np.zeros(256, dtype=np.int64)
            for i in pairs['target'][:: max(1, len(pairs['target']) // 500)]:
                counts += np.bincount(np.asarray(tmap[i]).ravel(), minlength=256)
            label_counts = counts.tolist()
            del tmap
        stats = {'rgb_frames': rgb_index, 'frames_after_stride': len(rgb_stamps) + decode_errors['rgb'],
                 'rgb_decode_errors': decode_errors['rgb'], 'gt_decode_errors': decode_errors['gt'],
                 'no_ground_truth': int((~ok).sum()), 'pairs': int(len(sel)),
                 'bad_messages': int(errors.get('bad_messages', 0))}
        np.savez(os.path.join(tmp, 'pairs.npz'), **pairs)
        meta = {'version': PREP_VERSION, 'kind': f'heads_{task}', 'bag': os.path.abspath(path), 'width': w,
                'height': h, 'stats': stats, 'error_examples': examples, 'label_counts': label_counts,
                'arrays': {'frames': {'file': 'frames.u8', 'dtype': '|u1', 'shape': [frames.count, h, w, 3]},
                           'targets': {'file': 'targets.bin', 'dtype': tdtype, 'shape': [targets.count, h, w]}}}
        _write_meta_and_finish(tmp, final, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f'{path}: {stats["pairs"]} RGB/{task} pairs from {rgb_index} frames (stride {data.stride}); '
        f'{stats["no_ground_truth"]} without ground truth within {data.match_tolerance_ms} ms')
    return PreparedBag.load(final)


def prepare_bags(specs: Sequence[BagSpec], data: Any, cache_root: str, prepare: Callable[..., PreparedBag],
                 log: Callable[[str], None], **kwargs: Any) -> List[Tuple[PreparedBag, Any]]:
    """Prepare every bag with its per-bag data configuration; raises :class:`DataError` if no bag has pairs."""
    out = []
    for spec in specs:
        bag_cfg = bag_data_config(data, spec)
        out.append((prepare(spec, bag_cfg, cache_root=cache_root, log=log, **kwargs), bag_cfg))
    total = sum(b.num_pairs for b, _ in out)
    if total == 0:
        detail = '; '.join(f'{b.name}: ' + ', '.join(f'{k} {v}' for k, v in b.stats.items()) for b, _ in out)
        raise DataError(f'no training pairs in {len(out)} bag(s): {detail}')
    return out


# ====================================================================================================== datasets
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
