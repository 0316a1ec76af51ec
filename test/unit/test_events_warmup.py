"""warmup() prepares every numba kernel variant a node can meet (issue 14 item 9): after it, no first packet of any
encoding, payload type or byte order compiles anything (a compile on a live packet stalled the node 7 s)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from realm_ros.events._jit import HAVE_NUMBA

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: signatures compiled (or loaded from the cache) by other tests must not count.
_PROBE = r'''
import array, json
import numpy as np
from realm_ros.events import (encode_evt3, encode_libcaer, encode_libcaer_cmp, encode_mono, encode_trigger,
                              make_decoder, voxel_grid)
from realm_ros.events.warmup import kernels, warmup

def sigs():
    return {name: sorted(' | '.join(str(a) for a in s) for s in k.signatures) for name, k in kernels().items()}

warmup()
after_warmup = sigs()
x, y, t = [1, 5, 7, 7], [2, 3, 3, 4], [1000, 2000, 2000, 9000]
p = [1, 0, 1, 1]
payloads = {
    'evt3': (encode_evt3(x, y, [v // 1000 for v in t], p), 0),
    'libcaer_cmp': encode_libcaer_cmp(x, y, t, p),
    'libcaer': encode_libcaer(x, y, t, p),
    'mono': encode_mono(x, y, t, p),
    'trigger': encode_trigger(t, [1, 1, 1, 1], p),
}
encoders_done = sigs()

def forms(raw):
    ro = np.frombuffer(raw, np.uint8)
    doubled = np.zeros(2 * len(raw), np.uint8)
    doubled[::2] = ro
    return [raw, bytearray(raw), memoryview(raw), array.array('B', raw), ro, ro.copy(), doubled[::2]]

decoded = {}
for enc, (raw, tb) in payloads.items():
    swapped = np.frombuffer(raw, '<u2').astype('>u2').tobytes() if enc in ('evt3', 'libcaer_cmp') else raw
    for form in forms(raw):
        r = make_decoder(enc, 16, 16).decode(form, tb)
        decoded[enc] = len(r.events) + len(r.triggers)
    for form in forms(swapped):
        make_decoder(enc, 16, 16).decode(form, tb, is_bigendian=True)
    ev = make_decoder(enc, 16, 16).decode(bytearray(raw), tb).events
    if len(ev):
        for norm in ('dsec', 'e2vid', 'none'):
            voxel_grid(ev, 5, 16, 16, normalization=norm)
            voxel_grid(ev, 5, 16, 16, normalization=norm, backend='torch')
        voxel_grid(ev.slice(1, 3), 5, 16, 16)
print(json.dumps({'after_warmup': after_warmup, 'encoders_done': encoders_done, 'after_packets': sigs(),
                  'decoded': decoded}))
'''


@pytest.fixture(scope='module')
def probe():
    r = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAVE_NUMBA, reason='numba is not installed: nothing is compiled')
def test_warmup_covers_writable_and_read_only_payloads(probe):
    sigs = probe['after_warmup']
    for kernel in ('evt3', 'libcaer_cmp'):
        payload_types = {s.split(' | ')[0] for s in sigs[kernel]}
        # read-only (bytes) and writable (rclpy array.array, rosbags numpy, byte-swapped copies)
        assert payload_types == {'readonly array(uint8, 1d, C)', 'array(uint8, 1d, C)'}, sigs[kernel]
    for kernel in ('voxel_scatter', 'voxel_weights', 'nonzero_stats', 'normalize_nonzero'):
        assert sigs[kernel], kernel


@pytest.mark.skipif(not HAVE_NUMBA, reason='numba is not installed: nothing is compiled')
def test_no_packet_compiles_anything_after_warmup(probe):
    assert probe['decoded'] == {'evt3': 4, 'libcaer_cmp': 4, 'libcaer': 4, 'mono': 4, 'trigger': 4}
    # every encoding, payload type (bytes, bytearray, memoryview, array.array, numpy writable / read-only /
    # strided) and byte order, and the voxel grid of the decoded events, ran on the variants warmup() prepared
    assert probe['after_packets'] == probe['encoders_done'] == probe['after_warmup']


def test_warmup_runs_every_kernel():
    from realm_ros.events import warmup

    assert warmup(voxel=True) > 0
