"""Load (or compile) every numba kernel variant a node can hit, ahead of the first real packet.

numba compiles one machine-code variant per argument *type*, and a read-only array is another type than a writable
one: payloads arrive read-only (``bytes``, ``np.frombuffer(bytes)``) or writable (rclpy's ``array.array('B')``,
rosbags' numpy arrays, byte-swapped big-endian copies). A variant first met on a live packet costs seconds on a
fresh install (7 s were measured for libcaer_cmp on a writable payload). ``warmup()`` runs every codec kernel on
both kinds of payload and the voxel-grid kernels (CPU scatter, normalisation and the torch backend's host pass) on
writable and read-only events; with the on-disk numba cache warm this takes well under a second.

Nodes call ``warmup()`` at start-up (configure). ``KERNELS`` lists the dispatchers (tests check their signatures).
The payloads are literal word lists, so warming up does not compile the encoders (which a node never uses).
"""
from __future__ import annotations

import time
from typing import Dict

import numpy as np

from . import codecs
from .codecs import make_decoder

# EVT3: TIME_HIGH 0, TIME_LOW 1, ADDR_Y 1, ADDR_X 1 (ON), VECT_BASE_X 2, VECT_12 0b101, VECT_8 0b1, trigger,
# TIME_LOW 2, ADDR_X 3 (OFF), padding
_EVT3_WORDS = (0x8000, 0x6001, 0x0001, 0x2801, 0x3802, 0x4005, 0x5001, 0xA101, 0x6002, 0x2003, 0x9999)
# libcaer_cmp: TIME_HIGH 0, TIME_LOW 1, ADDR_X 1, ADDR_Y 1 (ON), VECT_BASE_Y 2 (ON), VECT_8 0b11, TIME_LOW 3, ADDR_Y 5
_LIBCAER_CMP_WORDS = (0x0000, 0x1001, 0x2001, 0x3801, 0x4802, 0x5003, 0x1003, 0x3005)


def _payload_variants(words: tuple) -> tuple:
    """The same payload read-only (bytes) and writable (bytearray), the two array types the kernels see."""
    raw = np.asarray(words, '<u2').tobytes()
    return raw, bytearray(raw)


def kernels() -> Dict[str, object]:
    """Name -> numba dispatcher (or plain function without numba) of every kernel ``warmup`` prepares."""
    from . import voxel
    return {'evt3': codecs._evt3_kernel, 'libcaer_cmp': codecs._libcaer_cmp_kernel,
            'voxel_scatter': voxel._voxel_scatter, 'voxel_weights': voxel._voxel_weights,
            'nonzero_stats': voxel._nonzero_stats, 'normalize_nonzero': voxel._normalize_nonzero}


def warmup(voxel: bool = True) -> float:
    """Run every compiled kernel variant once on tiny inputs; returns the seconds it took.

    Codecs: ``evt3`` and ``libcaer_cmp`` on read-only and writable payloads (little and big endian); the record
    codecs (``libcaer``, ``mono``, ``trigger``) are numpy only. With ``voxel``: the CPU (numba) voxel grid with every
    normalisation and the torch backend's host kernel, on writable and read-only event arrays.
    """
    t0 = time.perf_counter()
    events = []
    for encoding, words in (('evt3', _EVT3_WORDS), ('libcaer_cmp', _LIBCAER_CMP_WORDS)):
        for payload in _payload_variants(words):
            for bigendian in (False, True):
                res = make_decoder(encoding, 8, 8).decode(payload, 1000, is_bigendian=bigendian)
                if not bigendian:
                    events.append(res.events)
    for encoding in ('libcaer', 'mono', 'trigger'):
        make_decoder(encoding, 8, 8).decode(bytes(16), 1000)
    if voxel:
        from .types import EventArray
        from .voxel import voxel_grid

        ev = EventArray.concat(events)
        frozen = ev.copy()
        for a in (frozen.x, frozen.y, frozen.t, frozen.p):
            a.setflags(write=False)
        for e in (ev, frozen):
            for norm in ('dsec', 'none'):
                voxel_grid(e, 2, 8, 8, normalization=norm, backend='numba')
            voxel_grid(e, 2, 8, 8, normalization='dsec', backend='torch')
    return time.perf_counter() - t0
