"""Preparing a bag once per data configuration: distillation (events + RGB warped into the event camera) and head
training (RGB + depth / labels). See :mod:`realm_ros.training.bag_dataset` for the steps."""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..camera_geometry import (TfTree, build_warp_maps, camera_from_info, identity_maps,
                               quaternion_to_matrix, valid_mask_from_maps, warp_image)
from ..config import BagSpec, bag_data_config
from ..errors import DataError, StorageError
from .bags import (CAMERA_INFO_TYPE, IMAGE_TYPES, TF_TYPE, _event_types, bag_topics, check_topic, decode_gt,
                   decode_rgb, iter_messages, stamp_ns)
from .cache import (_EVENT_FILES, PREP_VERSION, PreparedBag, _Appender, _data_fields, _make_tmp_dir, _prep_dir,
                    _write_meta_and_finish)
from .pairing import _evenly, compute_pairs


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
            except Exception as exc:  # noqa: BLE001 - counted, with examples in stats
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
                    assert ev_cam is not None  # checked above: only identity extrinsics go without it
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
        assert shape is not None and gt_shape is not None  # set with the first decoded frame / image
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
