"""realm_ros.events: ROS-free event-camera input.

Codecs for every EventPacket encoding (evt3, libcaer_cmp, libcaer, mono, trigger, legacy dvs/prophesee arrays),
sensor-to-ROS time mapping, slicing into windows, the voxel grid (torch, CPU/CUDA), spatial preparation for the
model input, and bag / RAW file IO. Nothing here imports rclpy.
"""
from .codecs import (SUPPORTED_ENCODINGS, Decoder, Evt3Decoder, LibcaerCmpDecoder, LibcaerDecoder, MonoDecoder,
                     TriggerDecoder, UnknownEncodingError, make_decoder, payload_bytes)
from .encoders import encode_evt3, encode_libcaer, encode_libcaer_cmp, encode_mono, encode_trigger
from .types import DecodeResult, EventArray, TriggerArray, as_event_array

__all__ = [
    'SUPPORTED_ENCODINGS', 'Decoder', 'Evt3Decoder', 'LibcaerCmpDecoder', 'LibcaerDecoder', 'MonoDecoder',
    'TriggerDecoder', 'UnknownEncodingError', 'make_decoder', 'payload_bytes',
    'encode_evt3', 'encode_libcaer', 'encode_libcaer_cmp', 'encode_mono', 'encode_trigger',
    'DecodeResult', 'EventArray', 'TriggerArray', 'as_event_array',
]
