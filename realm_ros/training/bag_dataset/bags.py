"""Reading training bags: topic listing and type checks, message iteration with errors mapped to
:class:`~realm_ros.training.errors.DataError`, RGB and ground-truth image decoding."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Sequence, Tuple

import numpy as np

from realm_ros.common.stamps import stamp_to_ns

from ..errors import DataError

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
TF_TYPE = 'tf2_msgs/msg/TFMessage'


def _event_types() -> Tuple[str, ...]:
    from realm_ros.events.bagio import EVENT_TYPES
    return tuple(EVENT_TYPES)


def stamp_ns(header: Any) -> int:
    """``header.stamp`` in integer nanoseconds."""
    return stamp_to_ns(header.stamp)


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
    except Exception as exc:  # noqa: BLE001 - rosbags raises many types for corrupt files
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
        except Exception as exc:  # noqa: BLE001 - any storage failure names the bag
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
    except Exception:  # noqa: BLE001 - no direct rgb8 conversion: decode as stored
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
