"""Conversions between ROS 2 messages and numpy arrays, without per-element Python work.

Array fields (``uint8[]`` image / point-cloud data, ``float64[]`` distortion) are filled from numpy buffers through
``array.array(...).frombytes(...)``: rclpy accepts an ``array.array`` of the right type code without checking each
element, so building a 448x448 32FC1 image costs one memory copy. Fixed-size float64 fields (``CameraInfo.k``,
``covariance``) take float64 numpy arrays directly. Received ``uint8[]`` fields are ``array.array('B')`` objects and are
read back with ``np.frombuffer`` (zero copy).

Supported image encodings: ``32FC1`` (depth in metres, NaN = invalid), ``bgr8``, ``rgb8``, ``bgra8``, ``rgba8``,
``mono8``, ``8UC1``, ``8UC3``, ``mono16``, ``16UC1``. Point clouds are ``x, y, z`` float32 plus the PCL/RViz packed
colour field ``rgb`` (float32 whose bits are ``0x00RRGGBB``), 16 bytes per point.

Official converters: on a ROS install, images go through ``cv_bridge`` (``CvBridge.cv2_to_imgmsg`` /
``imgmsg_to_cv2``) and point clouds through ``sensor_msgs_py.point_cloud2.create_cloud`` (rosdep keys
``cv_bridge``, ``sensor_msgs_py``). Where they do not import (PyPI-only set-ups, or a ``cv2`` / numpy ABI mismatch),
or for inputs they do not handle (foreign byte order, odd row padding, empty images), the package's own conversions
below are used. Both produce identical messages (tested); the inputs are validated here first either way, so
errors name the problem the same way. ``official_converters()`` tells which path is active.
"""

from __future__ import annotations

import array
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

_NATIVE_BIG_ENDIAN = sys.byteorder == 'big'
_log = logging.getLogger(__name__)

#: encoding -> (numpy dtype, channels)
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    '32FC1': (np.dtype(np.float32), 1),
    'bgr8': (np.dtype(np.uint8), 3),
    'rgb8': (np.dtype(np.uint8), 3),
    'bgra8': (np.dtype(np.uint8), 4),
    'rgba8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1),
    '8UC1': (np.dtype(np.uint8), 1),
    '8UC3': (np.dtype(np.uint8), 3),
    'mono16': (np.dtype(np.uint16), 1),
    '16UC1': (np.dtype(np.uint16), 1),
}

# sensor_msgs/PointField datatype constants -> numpy dtypes
_POINTFIELD_DTYPES: dict[int, np.dtype] = {
    PointField.INT8: np.dtype(np.int8), PointField.UINT8: np.dtype(np.uint8),
    PointField.INT16: np.dtype(np.int16), PointField.UINT16: np.dtype(np.uint16),
    PointField.INT32: np.dtype(np.int32), PointField.UINT32: np.dtype(np.uint32),
    PointField.FLOAT32: np.dtype(np.float32), PointField.FLOAT64: np.dtype(np.float64),
}

#: Packed point layout of :func:`pointcloud2_xyzrgb`.
XYZRGB_DTYPE = np.dtype({'names': ['x', 'y', 'z', 'rgb'],
                         'formats': [np.float32, np.float32, np.float32, np.uint32],
                         'offsets': [0, 4, 8, 12], 'itemsize': 16})


# --------------------------------------------------------------------------------------------------------------
# time and headers

def ns_to_stamp(t_ns: int) -> Time:
    """``builtin_interfaces/Time`` for an integer time in nanoseconds (must be >= 0)."""
    t_ns = int(t_ns)
    if t_ns < 0:
        raise ValueError(f'cannot express negative time {t_ns} ns as a ROS stamp')
    return Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time``-like object (``sec``, ``nanosec``)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def make_header(t_ns: int, frame_id: str) -> Header:
    """``std_msgs/Header`` with the given stamp (ns) and frame id."""
    return Header(stamp=ns_to_stamp(t_ns), frame_id=str(frame_id))


def _bytes_array(buffer: Any) -> array.array:
    """``array.array('B')`` holding a copy of a C-contiguous buffer (numpy array, bytes, memoryview)."""
    out = array.array('B')
    if isinstance(buffer, np.ndarray):
        buffer = np.ascontiguousarray(buffer)
        if buffer.nbytes:  # (a view with a zero in its shape cannot be cast)
            out.frombytes(memoryview(buffer).cast('B'))
    else:
        out.frombytes(buffer)
    return out


def bytes_to_uint8_array(buffer: Any) -> array.array:
    """Public form of the ``uint8[]`` filler: ``array.array('B')`` with the bytes of ``buffer`` (one copy)."""
    return _bytes_array(buffer)


# --------------------------------------------------------------------------------------------------------------
# official converters (ROS install) with the package's own as the fallback

_OFFICIAL: Dict[str, Any] = {}     # name -> CvBridge instance / point_cloud2 module / None (not importable)
_OFFICIAL_WHY: Dict[str, str] = {}


def _official(name: str) -> Any:
    """``CvBridge()`` for ``'cv_bridge'``, the module for ``'sensor_msgs_py'``; None where it does not import."""
    if name not in _OFFICIAL:
        try:
            # only the ROS 2 packages (registered in the ament index): the PyPI 'cv-bridge' is a ROS 1 port that
            # ignores row padding and fails on numpy 2
            from ament_index_python.packages import get_package_prefix
            get_package_prefix(name)
            if name == 'cv_bridge':
                from cv_bridge import CvBridge
                _OFFICIAL[name] = CvBridge()
            else:
                from sensor_msgs_py import point_cloud2
                _OFFICIAL[name] = point_cloud2
            _OFFICIAL_WHY[name] = 'in use'
        except Exception as exc:  # noqa: BLE001 - not installed, or cv2 / numpy ABI mismatch: own conversions
            _OFFICIAL[name] = None
            _OFFICIAL_WHY[name] = f'{type(exc).__name__}: {exc}'
            _log.debug('%s not usable (%s): using the package conversions', name, _OFFICIAL_WHY[name])
    return _OFFICIAL[name]


def official_converters() -> Dict[str, str]:
    """``{'cv_bridge': why, 'sensor_msgs_py': why}``: ``'in use'`` or the import error that selected the fallback."""
    for name in ('cv_bridge', 'sensor_msgs_py'):
        _official(name)
    return dict(_OFFICIAL_WHY)


# --------------------------------------------------------------------------------------------------------------
# sensor_msgs/Image

def image_from_array(image: np.ndarray, encoding: str, header: Header) -> Image:
    """Build a ``sensor_msgs/Image`` from an (H, W) or (H, W, C) array.

    The array's dtype and channel count must match ``encoding`` (see :data:`IMAGE_ENCODINGS`); a mismatch raises
    ``ValueError`` naming both. Data are written in native byte order (``is_bigendian`` set accordingly), rows
    unpadded (``step = width * channels * itemsize``).
    """
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f'unsupported image encoding {encoding!r}; supported: {", ".join(IMAGE_ENCODINGS)}')
    dtype, channels = IMAGE_ENCODINGS[encoding]
    arr = np.asarray(image)
    if arr.ndim == 2:
        got_channels = 1
    elif arr.ndim == 3:
        got_channels = arr.shape[2]
    else:
        raise ValueError(f'image for encoding {encoding!r} must be 2-D or 3-D, got shape {arr.shape}')
    if got_channels != channels or arr.dtype.base != dtype:
        raise ValueError(f'array of dtype {arr.dtype} with {got_channels} channel(s) does not fit encoding '
                         f'{encoding!r} ({dtype} x {channels})')
    if not arr.dtype.isnative:
        arr = arr.astype(dtype)
    bridge = _official('cv_bridge')
    if bridge is not None and arr.shape[0] > 0:
        try:
            msg = bridge.cv2_to_imgmsg(arr, encoding=encoding, header=header)
        except Exception as exc:  # noqa: BLE001 - cv_bridge refused a valid input: the own conversion below
            _log.debug('cv_bridge.cv2_to_imgmsg failed (%s): using the package conversion', exc)
        else:
            msg.is_bigendian = _NATIVE_BIG_ENDIAN and dtype.itemsize > 1   # native order (cv_bridge: only '>')
            return msg
    return _image_from_array_own(arr, encoding, dtype, channels, header)


def _image_from_array_own(arr: np.ndarray, encoding: str, dtype: np.dtype, channels: int, header: Header) -> Image:
    msg = Image()
    msg.header = header
    msg.height = int(arr.shape[0])
    msg.width = int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = _NATIVE_BIG_ENDIAN and dtype.itemsize > 1
    msg.step = int(arr.shape[1]) * channels * dtype.itemsize
    msg.data = _bytes_array(arr)
    return msg


def image_to_array(msg: Any) -> np.ndarray:
    """Numpy view/copy of a ``sensor_msgs/Image``: (H, W) for one channel, (H, W, C) otherwise.

    Honours ``step`` (row padding) and ``is_bigendian``. Raises ``ValueError`` for unknown encodings or a ``data``
    field shorter than ``height * step``.
    """
    encoding = msg.encoding
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f'unsupported image encoding {encoding!r}; supported: {", ".join(IMAGE_ENCODINGS)}')
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f'image step {step} is smaller than width*channels*itemsize = {row_bytes}')
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size < height * step:
        raise ValueError(f'image data has {raw.size} bytes, expected {height * step} ({height} rows x step {step})')
    bridge = _official('cv_bridge')
    pixel = channels * dtype.itemsize
    if bridge is not None and height > 0 and step % pixel == 0 and bool(msg.is_bigendian) == _NATIVE_BIG_ENDIAN:
        try:
            out = bridge.imgmsg_to_cv2(msg, desired_encoding='passthrough')
        except Exception as exc:  # noqa: BLE001
            _log.debug('cv_bridge.imgmsg_to_cv2 failed (%s): using the package conversion', exc)
        else:
            return out if out.dtype.isnative else out.astype(dtype)
    rows = raw[:height * step].reshape(height, step)[:, :row_bytes]
    typed_dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<') if dtype.itemsize > 1 else dtype
    out = np.ascontiguousarray(rows).view(typed_dtype)
    if typed_dtype.byteorder not in ('=', '|') and not typed_dtype.isnative:
        out = out.astype(dtype)
    return out.reshape(height, width) if channels == 1 else out.reshape(height, width, channels)


# --------------------------------------------------------------------------------------------------------------
# sensor_msgs/CameraInfo

@dataclass
class CameraIntrinsics:
    """Pinhole intrinsics of one camera (ROS-free view of a ``CameraInfo``)."""

    K: np.ndarray                       # (3, 3) float64
    width: int
    height: int
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = ''


def camera_info_from_intrinsics(K: np.ndarray, width: int, height: int, header: Header,
                                D: Sequence[float] | np.ndarray = (), distortion_model: str = '') -> CameraInfo:
    """``sensor_msgs/CameraInfo`` for a pinhole camera with matrix ``K``; R = identity, P = [K | 0]."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    msg.header = header
    msg.width = int(width)
    msg.height = int(height)
    d = np.asarray(D, dtype=np.float64).reshape(-1)
    msg.distortion_model = distortion_model or ('plumb_bob' if d.size else '')
    darr = array.array('d')
    darr.frombytes(d.tobytes())
    msg.d = darr
    msg.k = K.reshape(9).copy()
    msg.r = np.eye(3, dtype=np.float64).reshape(9)
    P = np.zeros((3, 4), dtype=np.float64)
    P[:, :3] = K
    msg.p = P.reshape(12)
    return msg


def intrinsics_from_camera_info(msg: Any) -> CameraIntrinsics:
    """Read K, size and distortion from a ``CameraInfo``; raises ``ValueError`` if it is uncalibrated or malformed."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ValueError(f'camera_info has invalid size {width}x{height}')
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] == 0:
        raise ValueError(f'camera_info K is not a calibrated pinhole matrix (fx={K[0, 0]}, fy={K[1, 1]}, '
                         f'k22={K[2, 2]})')
    K = K / K[2, 2]
    return CameraIntrinsics(K=K, width=width, height=height,
                            D=np.asarray(msg.d, dtype=np.float64).copy(), distortion_model=str(msg.distortion_model))


# --------------------------------------------------------------------------------------------------------------
# sensor_msgs/PointCloud2

def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N,) uint32 ``0x00RRGGBB`` (the bits of the PCL ``rgb`` float field)."""
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3).astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: (N,) uint32 (or float32 bits) -> (N, 3) uint8 RGB."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint32:
        packed = np.ascontiguousarray(packed).view(np.uint32)
    return np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=1).astype(np.uint8)


def pointcloud2_xyzrgb(xyz: np.ndarray, rgb: np.ndarray, header: Header) -> PointCloud2:
    """Unorganised ``PointCloud2`` (height 1) with float32 x, y, z and packed ``rgb``.

    ``xyz``: (N, 3) metres in the camera frame; ``rgb``: (N, 3) uint8 in R, G, B order. Non-finite points are
    dropped, so the cloud is dense.
    """
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    if len(xyz) != len(rgb):
        raise ValueError(f'point cloud has {len(xyz)} points but {len(rgb)} colours')
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        xyz, rgb = xyz[finite], rgb[finite]
    points = np.empty(len(xyz), dtype=XYZRGB_DTYPE)
    points['x'] = xyz[:, 0]
    points['y'] = xyz[:, 1]
    points['z'] = xyz[:, 2]
    points['rgb'] = pack_rgb(rgb)
    fields = [PointField(name='x', offset=0, datatype=PointField.FLOAT32, count=1),
              PointField(name='y', offset=4, datatype=PointField.FLOAT32, count=1),
              PointField(name='z', offset=8, datatype=PointField.FLOAT32, count=1),
              PointField(name='rgb', offset=12, datatype=PointField.FLOAT32, count=1)]
    pc2 = _official('sensor_msgs_py')
    if pc2 is not None:
        try:  # the rgb bits travel as the float32 field the message declares (a view: no conversion)
            msg = pc2.create_cloud(header, fields, points.view(pc2.dtype_from_fields(fields)))
        except Exception as exc:  # noqa: BLE001
            _log.debug('sensor_msgs_py create_cloud failed (%s): using the package conversion', exc)
        else:
            msg.is_dense = True   # non-finite points were dropped above
            return msg
    msg = PointCloud2()
    msg.header = header
    msg.height = 1
    msg.width = len(points)
    msg.fields = fields
    msg.is_bigendian = _NATIVE_BIG_ENDIAN
    msg.point_step = XYZRGB_DTYPE.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.data = _bytes_array(points.view(np.uint8))
    msg.is_dense = True
    return msg


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """Structured numpy array (one record per point) of a ``PointCloud2``, built from its ``fields``.

    Fields with ``count > 1`` become sub-arrays. Raises ``ValueError`` for unknown datatypes or short data.
    """
    names: list[str] = []
    formats: list[np.dtype | tuple[np.dtype, tuple[int]]] = []
    offsets: list[int] = []
    for f in msg.fields:
        if f.datatype not in _POINTFIELD_DTYPES:
            raise ValueError(f'PointField {f.name!r} has unknown datatype {f.datatype}')
        dt = _POINTFIELD_DTYPES[f.datatype].newbyteorder('>' if msg.is_bigendian else '<')
        names.append(f.name)
        formats.append((dt, (int(f.count),)) if f.count > 1 else dt)
        offsets.append(int(f.offset))
    dtype = np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': int(msg.point_step)})
    n = int(msg.width) * int(msg.height)
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    row_step = int(msg.row_step)
    needed = row_step * int(msg.height)
    if raw.size < needed or row_step < int(msg.width) * int(msg.point_step):
        raise ValueError(f'PointCloud2 data has {raw.size} bytes, expected {needed}')
    rows = raw[:needed].reshape(int(msg.height), row_step)[:, :int(msg.width) * int(msg.point_step)]
    return np.ascontiguousarray(rows).view(dtype).reshape(n)


# --------------------------------------------------------------------------------------------------------------
# geometry_msgs/PoseWithCovarianceStamped

def rotation_matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a 3x3 rotation matrix (numerically robust branch choice)."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    # Candidate 4*q_i^2 for each component; pick the largest to divide by (Shepperd's method).
    diag = np.array([1 + R[0, 0] - R[1, 1] - R[2, 2], 1 - R[0, 0] + R[1, 1] - R[2, 2],
                     1 - R[0, 0] - R[1, 1] + R[2, 2], 1 + R[0, 0] + R[1, 1] + R[2, 2]])
    i = int(np.argmax(diag))
    s = 2.0 * np.sqrt(max(diag[i], 1e-300))
    if i == 0:
        q_list = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif i == 1:
        q_list = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    elif i == 2:
        q_list = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    else:
        q_list = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    q = np.asarray(q_list)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_rotation_matrix(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation matrix of a quaternion ``(x, y, z, w)`` (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose_with_covariance(R: np.ndarray, t: np.ndarray, covariance: np.ndarray | None,
                         header: Header) -> PoseWithCovarianceStamped:
    """``PoseWithCovarianceStamped`` from a rotation matrix, translation (m) and 6x6 covariance (x y z rx ry rz)."""
    t = np.asarray(t, dtype=np.float64).reshape(3)
    q = rotation_matrix_to_quaternion(R)
    msg = PoseWithCovarianceStamped()
    msg.header = header
    p = msg.pose.pose.position
    p.x, p.y, p.z = float(t[0]), float(t[1]), float(t[2])
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)
    cov = np.zeros(36) if covariance is None else np.asarray(covariance, dtype=np.float64).reshape(36)
    msg.pose.covariance = cov.copy()
    return msg


# --------------------------------------------------------------------------------------------------------------
# diagnostic_msgs/DiagnosticArray

#: level names accepted by :func:`diagnostic_status` -> DiagnosticStatus level byte
DIAGNOSTIC_LEVELS = {'OK': DiagnosticStatus.OK, 'WARN': DiagnosticStatus.WARN,
                     'ERROR': DiagnosticStatus.ERROR, 'STALE': DiagnosticStatus.STALE}


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def diagnostic_status(name: str, level: str, message: str, values: Mapping[str, Any],
                      hardware_id: str = '') -> DiagnosticStatus:
    """One ``DiagnosticStatus``; ``level`` is 'OK', 'WARN', 'ERROR' or 'STALE'; values are stringified."""
    if level not in DIAGNOSTIC_LEVELS:
        raise ValueError(f'unknown diagnostic level {level!r}; expected one of {", ".join(DIAGNOSTIC_LEVELS)}')
    status = DiagnosticStatus()
    status.level = DIAGNOSTIC_LEVELS[level]
    status.name = name
    status.message = message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=str(k), value=_format_value(v)) for k, v in values.items()]
    return status


def diagnostic_array(statuses: Sequence[DiagnosticStatus], t_ns: int) -> DiagnosticArray:
    """``DiagnosticArray`` stamped ``t_ns`` holding ``statuses``."""
    msg = DiagnosticArray()
    msg.header = Header(stamp=ns_to_stamp(t_ns), frame_id='')
    msg.status = list(statuses)
    return msg


def diagnostic_values(status: Any) -> dict[str, str]:
    """``{key: value}`` of a received ``DiagnosticStatus``."""
    return {kv.key: kv.value for kv in status.values}


# --------------------------------------------------------------------------------------------------------------
# event_camera_msgs/EventPacket (publishing side: simulator, tests, benchmarks)

def make_event_packet(payload: Any, encoding: str, width: int, height: int, seq: int, stamp_ns: int,
                      frame_id: str, time_base: int = 0, is_bigendian: bool = False) -> Any:
    """Build an ``event_camera_msgs/EventPacket`` whose ``events`` field is filled with one buffer copy."""
    from event_camera_msgs.msg import EventPacket  # built from interfaces/ where the ROS install lacks it
    msg = EventPacket()
    msg.header = make_header(stamp_ns, frame_id)
    msg.height = int(height)
    msg.width = int(width)
    msg.seq = int(seq)
    msg.time_base = int(time_base)
    msg.encoding = str(encoding)
    msg.is_bigendian = bool(is_bigendian)
    msg.events = _bytes_array(payload)
    return msg
