"""Load (or compile) the numba kernels ahead of the first real packet.

With a warm on-disk cache this takes well under a second; on a fresh install numba compiles each kernel once
(a few seconds) and caches it. Nodes call ``warmup()`` at start-up so the first packets are not delayed.
"""
from __future__ import annotations

import time

import numpy as np

from .codecs import make_decoder
from .encoders import encode_evt3, encode_libcaer_cmp


def warmup(voxel: bool = True) -> float:
    """Run every compiled codec (and the CPU voxel grid) once on tiny inputs; returns the seconds it took."""
    t0 = time.perf_counter()
    payload = encode_evt3([1, 2, 3], [1, 1, 1], [5, 5, 9], [1, 1, 0], triggers=([6], [1], [1]))
    dec = make_decoder('evt3', 8, 8)
    ev = dec.decode(payload).events
    dec.decode(np.frombuffer(payload, np.uint8).copy())  # writable-array signature too
    cmp_payload, tb = encode_libcaer_cmp([1, 1, 2], [1, 2, 3], [1000, 1000, 3000], [1, 1, 0])
    make_decoder('libcaer_cmp', 8, 8).decode(cmp_payload, tb)
    if voxel:
        from .voxel import voxel_grid

        voxel_grid(ev, 2, 8, 8, normalization='dsec')
    return time.perf_counter() - t0
