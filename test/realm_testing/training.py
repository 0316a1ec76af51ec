"""Small synthetic rosbags for the training tests (rosbags writer, real EventPacket/Image/CameraInfo/TF messages).

Scene: a smooth, multi-scale texture translating horizontally in front of an event camera (96 x 72) and an RGB camera
(same intrinsics, 2 cm baseline, published in /tf_static). Events come from an idealised ESIM model (log-intensity
change >= threshold since the pixel's last event) sampled at 1 kHz and are encoded as EVT3 EventPackets (5 ms each,
header stamp = ROS time of the first event); RGB frames at 30 Hz (rgb8 or bgr8), plus depth (32FC1, a tilted plane
with a NaN hole) and labels (mono8, vertical stripes) stamped like the frames.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Optional

import numpy as np

W, H = 96, 72
FX = 80.0
T0_NS = 1_700_000_000_000_000_000
FRAME_HZ = 30.0
FLAT_ROWS = 20
DEFAULT_TOPICS = dict(events='/event_camera/events', rgb='/rgb/image_raw', rgb_info='/rgb/camera_info',
                      event_info='/event_camera/camera_info', tf_static='/tf_static', depth='/rgb/depth',
                      labels='/rgb/labels')


def texture(t_s: float, shape=(H, W), speed_px_s: float = 60.0) -> np.ndarray:
    """Intensity in [0.05, 1] of the scene at time ``t_s`` (float64, (H, W))."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    u = xx + speed_px_s * t_s
    img = (0.5 + 0.25 * np.sin(u / 3.0) * np.cos(yy / 5.0) + 0.2 * np.sin(u / 11.0 + yy / 7.0)
           + 0.1 * np.sign(np.sin(u / 9.0)))
    img[:FLAT_ROWS] = 0.5  # a static, uniform band: no events there (exercises the spatial mask)
    return np.clip(img, 0.05, 1.0)


@functools.lru_cache(maxsize=4)
def simulate_events(seconds: float, threshold: float = 0.15, rate_hz: float = 500.0, speed: float = 60.0):
    """ESIM-style events (x, y, t_us, p) of the moving texture, time-sorted (cached: treat as read-only)."""
    ref = np.log(texture(0.0, speed_px_s=speed))
    xs, ys, ts, ps = [], [], [], []
    n = int(seconds * rate_hz)
    for k in range(1, n + 1):
        t_s = k / rate_hz
        cur = np.log(texture(t_s, speed_px_s=speed))
        diff = cur - ref
        fire = np.abs(diff) >= threshold
        if fire.any():
            yy, xx = np.nonzero(fire)
            xs.append(xx)
            ys.append(yy)
            ts.append(np.full(len(xx), int(round(t_s * 1e6))))
            ps.append((diff[fire] > 0).astype(np.uint8))
            ref[fire] = cur[fire]
    return (np.concatenate(xs).astype(np.uint16), np.concatenate(ys).astype(np.uint16),
            np.concatenate(ts).astype(np.int64), np.concatenate(ps).astype(np.uint8))


def _header(ts, t_ns: int, frame: str):
    Header = ts.types['std_msgs/msg/Header']
    Time = ts.types['builtin_interfaces/msg/Time']
    return Header(stamp=Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000)), frame_id=frame)


def _camera_info(ts, t_ns: int, frame: str, distortion: str = 'plumb_bob'):
    Info = ts.types['sensor_msgs/msg/CameraInfo']
    RoI = ts.types['sensor_msgs/msg/RegionOfInterest']
    k = np.array([FX, 0, (W - 1) / 2, 0, FX, (H - 1) / 2, 0, 0, 1], dtype=np.float64)
    p = np.array([FX, 0, (W - 1) / 2, 0, 0, FX, (H - 1) / 2, 0, 0, 0, 1, 0], dtype=np.float64)
    return Info(header=_header(ts, t_ns, frame), height=H, width=W, distortion_model=distortion,
                d=np.zeros(5), k=k, r=np.eye(3).ravel(), p=p, binning_x=0, binning_y=0,
                roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _image(ts, t_ns: int, frame: str, arr: np.ndarray, encoding: str):
    Image = ts.types['sensor_msgs/msg/Image']
    arr = np.ascontiguousarray(arr)
    step = arr.shape[1] * arr.itemsize * (arr.shape[2] if arr.ndim == 3 else 1)
    return Image(header=_header(ts, t_ns, frame), height=arr.shape[0], width=arr.shape[1], encoding=encoding,
                 is_bigendian=0, step=step, data=np.frombuffer(arr.tobytes(), np.uint8))


def _tf_static(ts, t_ns: int, parent: str, child: str, xyz):
    TFMessage = ts.types['tf2_msgs/msg/TFMessage']
    TS = ts.types['geometry_msgs/msg/TransformStamped']
    Tr = ts.types['geometry_msgs/msg/Transform']
    V = ts.types['geometry_msgs/msg/Vector3']
    Q = ts.types['geometry_msgs/msg/Quaternion']
    tr = TS(header=_header(ts, t_ns, parent), child_frame_id=child,
            transform=Tr(translation=V(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
                         rotation=Q(x=0.0, y=0.0, z=0.0, w=1.0)))
    return TFMessage(transforms=[tr])


def write_training_bag(path: Path, seconds: float = 1.0, storage: str = 'sqlite3', encoding: str = 'rgb8',
                       topics: Optional[Dict[str, str]] = None, with_gt: bool = True, with_tf: bool = True,
                       with_event_info: bool = True, packet_us: int = 5000,
                       event_encoding: str = 'evt3') -> Dict[str, int]:
    """Write the synthetic bag; returns counts (events, frames).

    ``encoding``: rgb8 / bgr8 / mono8 Images, or 'png' / 'jpeg' for CompressedImage frames.
    ``event_encoding``: 'evt3' (sensor microseconds from 0) or 'libcaer_cmp' (ns since epoch, time_base).
    """
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from realm_ros.events import encode_evt3, encode_libcaer_cmp
    from realm_ros.events.bagio import make_typestore

    tp = dict(DEFAULT_TOPICS, **(topics or {}))
    ts = make_typestore()
    x, y, t_us, p = simulate_events(seconds)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    Packet = ts.types['event_camera_msgs/msg/EventPacket']
    n_frames = int(seconds * FRAME_HZ)
    with Writer(path, version=9, storage_plugin=plugin) as w:
        c_ev = w.add_connection(tp['events'], 'event_camera_msgs/msg/EventPacket', typestore=ts)
        compressed = encoding in ('png', 'jpeg')
        rgb_type = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
        c_rgb = w.add_connection(tp['rgb'], rgb_type, typestore=ts)
        c_ri = w.add_connection(tp['rgb_info'], 'sensor_msgs/msg/CameraInfo', typestore=ts)
        c_ei = (w.add_connection(tp['event_info'], 'sensor_msgs/msg/CameraInfo', typestore=ts)
                if with_event_info else None)
        c_tf = w.add_connection(tp['tf_static'], 'tf2_msgs/msg/TFMessage', typestore=ts) if with_tf else None
        c_d = w.add_connection(tp['depth'], 'sensor_msgs/msg/Image', typestore=ts) if with_gt else None
        c_l = w.add_connection(tp['labels'], 'sensor_msgs/msg/Image', typestore=ts) if with_gt else None
        msgs = []
        if c_tf is not None:
            msgs.append((T0_NS, c_tf, _tf_static(ts, T0_NS, 'rig', 'rgb_optical', (0.0, 0.0, 0.0)),
                         'tf2_msgs/msg/TFMessage'))
            msgs.append((T0_NS, c_tf, _tf_static(ts, T0_NS, 'rig', 'event_optical', (0.02, 0.0, 0.0)),
                         'tf2_msgs/msg/TFMessage'))
        msgs.append((T0_NS, c_ri, _camera_info(ts, T0_NS, 'rgb_optical'), 'sensor_msgs/msg/CameraInfo'))
        if c_ei is not None:
            msgs.append((T0_NS, c_ei, _camera_info(ts, T0_NS, 'event_optical'), 'sensor_msgs/msg/CameraInfo'))
        edges = np.arange(0, int(seconds * 1e6) + packet_us, packet_us)
        idx = np.searchsorted(t_us, edges)
        for seq, (i, j) in enumerate(zip(idx[:-1], idx[1:])):
            if j <= i:
                continue
            stamp = T0_NS + int(t_us[i]) * 1000
            if event_encoding == 'evt3':
                payload, time_base = encode_evt3(x[i:j], y[i:j], t_us[i:j], p[i:j]), 0
            else:
                payload, time_base = encode_libcaer_cmp(x[i:j], y[i:j], T0_NS + t_us[i:j] * 1000, p[i:j])
            msg = Packet(header=_header(ts, stamp, 'event_optical'), height=H, width=W, seq=seq,
                         time_base=time_base, encoding=event_encoding, is_bigendian=False,
                         events=np.frombuffer(payload, np.uint8))
            msgs.append((stamp + 1000, c_ev, msg, 'event_camera_msgs/msg/EventPacket'))
        yy, xx = np.mgrid[0:H, 0:W]
        for f in range(1, n_frames + 1):
            t_s = f / FRAME_HZ
            stamp = T0_NS + int(round(t_s * 1e9))
            g = texture(t_s)
            rgb = np.stack([g, 0.6 * g + 0.2, 1.0 - 0.5 * g], -1)
            rgb8 = (rgb * 255).astype(np.uint8)
            if compressed:
                ok, buf = cv2.imencode('.png' if encoding == 'png' else '.jpg', rgb8[:, :, ::-1])
                Compressed = ts.types['sensor_msgs/msg/CompressedImage']
                img_msg = Compressed(header=_header(ts, stamp, 'rgb_optical'), format=encoding,
                                     data=np.frombuffer(buf.tobytes(), np.uint8))
            elif encoding == 'mono8':
                img_msg = _image(ts, stamp, 'rgb_optical', rgb8.mean(-1).astype(np.uint8), 'mono8')
            else:
                img = rgb8 if encoding == 'rgb8' else rgb8[:, :, ::-1]
                img_msg = _image(ts, stamp, 'rgb_optical', img, encoding)
            msgs.append((stamp + 2000, c_rgb, img_msg, rgb_type))
            if with_gt:
                depth = (2.0 + 0.1 * xx + 0.05 * yy + 0.5 * np.sin(t_s)).astype(np.float32)
                depth[30:40, 40:50] = np.nan
                labels = ((xx + int(60 * t_s)) // 12 % 3).astype(np.uint8)
                labels[:4] = 255
                msgs.append((stamp + 3000, c_d, _image(ts, stamp, 'rgb_optical', depth, '32FC1'),
                             'sensor_msgs/msg/Image'))
                msgs.append((stamp + 3000, c_l, _image(ts, stamp, 'rgb_optical', labels, 'mono8'),
                             'sensor_msgs/msg/Image'))
        msgs.sort(key=lambda m: m[0])
        for t_rec, conn, msg, mt in msgs:
            w.write(conn, t_rec, bytes(ts.serialize_cdr(msg, mt)))
    return {'events': int(len(x)), 'frames': n_frames}


def write_tiny_teacher(path: Path, size: int = 84, depth: int = 2, seed: int = 0, poison: bool = False) -> Path:
    """A miniature DUNE checkpoint in the official layout (encoder + DINOv2 projector), optionally NaN-poisoned."""
    import torch
    from realm_ros.models.checkpoints import save_dune_checkpoint
    from realm_ros.models.dune import DinoVisionTransformer
    from realm_ros.models.dune_model import DuneModel
    from realm_ros.models.heads import DinoV2Projector

    torch.manual_seed(seed)
    enc = DinoVisionTransformer(img_size=size, patch_size=14, embed_dim=48, depth=depth, num_heads=3,
                                layerscale_init=1.0)
    proj = DinoV2Projector(48, out_dim=32, num_heads=3)
    if poison:
        with torch.no_grad():
            enc.norm.weight.fill_(float('nan'))
    return save_dune_checkpoint(path, DuneModel(enc, {'dino2reg_vitlarge_14': proj}))
