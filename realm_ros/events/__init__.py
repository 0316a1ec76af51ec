"""realm_ros.events: ROS-free event-camera input.

Codecs for every EventPacket encoding (evt3, libcaer_cmp, libcaer, mono, trigger, legacy dvs/prophesee arrays),
sensor-to-ROS time mapping, slicing into windows, the voxel grid (torch, CPU/CUDA), spatial preparation for the
model input, and bag / RAW file IO. Nothing here imports rclpy; torch is imported lazily by the voxel grid and the
spatial preparation.

The names below are the package's API (decode packets, map time, cut windows, build the model input, write test
streams); the codec classes, payload helpers and legacy-message parsers are reached through their modules
(``realm_ros.events.codecs``, ``realm_ros.events.legacy``).
"""
from .codecs import SUPPORTED_ENCODINGS, Decoder, UnknownEncodingError, make_decoder
from .encoders import encode_evt3, encode_libcaer, encode_libcaer_cmp, encode_mono, encode_trigger
from .packet import EventPacketDecoder, PacketResult, stamp_to_ns
from .slicing import EventRingBuffer, EventWindow, FixedCountSlicer, FixedTimeSlicer, window_ending_at
from .spatial import PreparedInput, SpatialPlan, prepare_input
from .timesync import OffsetEstimator
from .types import DecodeResult, EventArray, TriggerArray, as_event_array
from .voxel import NORMALIZATIONS, voxel_grid
from .warmup import warmup

__all__ = [
    'SUPPORTED_ENCODINGS', 'Decoder', 'UnknownEncodingError', 'make_decoder',
    'encode_evt3', 'encode_libcaer', 'encode_libcaer_cmp', 'encode_mono', 'encode_trigger',
    'EventPacketDecoder', 'PacketResult', 'stamp_to_ns', 'OffsetEstimator',
    'EventRingBuffer', 'EventWindow', 'FixedCountSlicer', 'FixedTimeSlicer', 'window_ending_at',
    'PreparedInput', 'SpatialPlan', 'prepare_input',
    'DecodeResult', 'EventArray', 'TriggerArray', 'as_event_array',
    'NORMALIZATIONS', 'voxel_grid', 'warmup',
]
