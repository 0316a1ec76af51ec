"""realm_ros.events: ROS-free event-camera input.

Codecs for every EventPacket encoding (evt3, libcaer_cmp, libcaer, mono, trigger, legacy dvs/prophesee arrays),
sensor-to-ROS time mapping, slicing into windows, the voxel grid (torch, CPU/CUDA), spatial preparation for the
model input, and bag / RAW file IO. Nothing here imports rclpy; torch is imported lazily by the voxel grid and the
spatial preparation.
"""
from .codecs import (SUPPORTED_ENCODINGS, Decoder, Evt3Decoder, LibcaerCmpDecoder, LibcaerDecoder, MonoDecoder,
                     TriggerDecoder, UnknownEncodingError, make_decoder, payload_bytes)
from .encoders import encode_evt3, encode_libcaer, encode_libcaer_cmp, encode_mono, encode_trigger
from .legacy import LegacyEventArray, parse_legacy_event_array_cdr, parse_legacy_event_array_ros1
from .packet import EventPacketDecoder, PacketResult, stamp_to_ns
from .slicing import EventRingBuffer, EventWindow, FixedCountSlicer, FixedTimeSlicer, window_ending_at
from .spatial import PreparedInput, SpatialPlan, prepare_input
from .timesync import OffsetEstimator
from .types import DecodeResult, EventArray, TriggerArray, as_event_array
from .voxel import NORMALIZATIONS, voxel_grid
from .warmup import warmup

__all__ = [
    'SUPPORTED_ENCODINGS', 'Decoder', 'Evt3Decoder', 'LibcaerCmpDecoder', 'LibcaerDecoder', 'MonoDecoder',
    'TriggerDecoder', 'UnknownEncodingError', 'make_decoder', 'payload_bytes',
    'encode_evt3', 'encode_libcaer', 'encode_libcaer_cmp', 'encode_mono', 'encode_trigger',
    'EventPacketDecoder', 'PacketResult', 'stamp_to_ns', 'OffsetEstimator',
    'EventRingBuffer', 'EventWindow', 'FixedCountSlicer', 'FixedTimeSlicer', 'window_ending_at',
    'PreparedInput', 'SpatialPlan', 'prepare_input',
    'DecodeResult', 'EventArray', 'TriggerArray', 'as_event_array',
    'NORMALIZATIONS', 'voxel_grid', 'warmup',
    'LegacyEventArray', 'parse_legacy_event_array_cdr', 'parse_legacy_event_array_ros1',
]
