"""Pipeline render helpers and diagnostics statistics (ROS-free)."""
import cv2
import numpy as np
import pytest

from realm_ros.pipeline import render
from realm_ros.pipeline.stats import Counters, LatencyTracker, RateMeter


def test_depth_colour_map_is_monotonic_and_marks_invalid_black():
    depth = np.array([[1.0, 3.0, 9.0, 27.0, 81.0, np.nan, -1.0, 500.0]], dtype=np.float32)
    bgr = render.colorize_depth(depth, 1.0, 81.0)
    assert bgr.shape == (1, 8, 3) and bgr.dtype == np.uint8
    assert np.all(bgr[0, 5] == 0) and np.all(bgr[0, 6] == 0)          # NaN and negative: black
    assert np.array_equal(bgr[0, 7], bgr[0, 4])                       # beyond the far end: clipped
    # turbo: near end is red (R >> B), far end blue (B >> R)
    assert bgr[0, 0, 2] > bgr[0, 0, 0] + 50 and bgr[0, 4, 0] > bgr[0, 4, 2]
    assert len({tuple(c) for c in bgr[0, :5]}) == 5                     # distinct colours per depth
    with pytest.raises(ValueError, match='0 < min < max'):
        render.colorize_depth(depth, 5.0, 1.0)


def test_backprojection_matches_the_pinhole_model():
    K = np.array([[100.0, 0, 20.0], [0, 120.0, 10.0], [0, 0, 1]])
    depth = np.full((21, 41), 2.0, np.float32)
    depth[0, 0] = np.nan
    depth[10, 20] = 50.0
    xyz, rows, cols = render.backproject_depth(depth, K, stride=1, max_depth=40.0)
    assert len(xyz) == 21 * 41 - 2                                      # NaN and the too-far pixel dropped
    i = np.nonzero((rows == 4) & (cols == 30))[0][0]
    assert np.allclose(xyz[i], [(30 - 20) / 100 * 2, (4 - 10) / 120 * 2, 2.0])
    # re-projection gives the pixel back
    uv = (K @ (xyz / xyz[:, 2:3]).T).T
    assert np.allclose(uv[:, 0], cols, atol=1e-4) and np.allclose(uv[:, 1], rows, atol=1e-4)
    xyz2, rows2, cols2 = render.backproject_depth(depth, K, stride=4)
    assert set(np.unique(rows2)) <= set(range(0, 21, 4)) and set(np.unique(cols2)) <= set(range(0, 41, 4))
    assert len(xyz2) == len(range(0, 21, 4)) * len(range(0, 41, 4)) - 1


def _previous_colorize_depth(depth, min_depth, max_depth):
    """The colour map as it was written before (reference for the faster implementation)."""
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    logd = np.log(np.clip(np.where(valid, depth, min_depth), min_depth, max_depth))
    u = (np.log(max_depth) - logd) / (np.log(max_depth) - np.log(min_depth))
    u8 = np.round(u * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)
    bgr[~valid] = render.INVALID_BGR
    return bgr


def _previous_backproject(depth, K, stride=1, max_depth=float('inf')):
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    d = np.asarray(depth, dtype=np.float32)[::stride, ::stride]
    rows = np.arange(0, depth.shape[0], stride)
    cols = np.arange(0, depth.shape[1], stride)
    valid = np.isfinite(d) & (d > 0) & (d <= max_depth)
    vi, ui = np.nonzero(valid)
    v, u, z = rows[vi], cols[ui], d[vi, ui].astype(np.float64)
    yn = (v - K[1, 2]) / K[1, 1]
    xn = (u - K[0, 2] - K[0, 1] * yn) / K[0, 0]
    x, y = xn * z, yn * z
    return np.stack([x, y, z], axis=1).astype(np.float32), v, u


def test_depth_colours_and_points_equal_the_previous_expressions():
    rng = np.random.default_rng(3)
    depth = np.exp(rng.uniform(-1, 5, (97, 131))).astype(np.float32)         # 0.37 .. 148 m
    depth.ravel()[rng.choice(depth.size, 900, replace=False)] = np.nan
    depth.ravel()[rng.choice(depth.size, 50, replace=False)] = np.inf
    depth.ravel()[rng.choice(depth.size, 50, replace=False)] = -np.inf
    depth.ravel()[rng.choice(depth.size, 50, replace=False)] = 0.0
    depth.ravel()[rng.choice(depth.size, 50, replace=False)] = -3.0
    # exact colour-map boundaries: depths whose u * 255 lands on .5
    edges = np.exp(np.log(81.0) - (np.arange(256) + 0.5) / 255 * np.log(81.0)).astype(np.float32)
    depth[0, :128] = edges[:128]
    depth[1, :128] = edges[128:]
    for lo, hi in ((1.0, 81.0), (0.5, 20.0), (2.0, 2.5)):
        ref = _previous_colorize_depth(depth, lo, hi)
        assert np.array_equal(render.colorize_depth(depth, lo, hi), ref)
        assert np.array_equal(render.colorize_depth(depth[5:50, 7:90], lo, hi), ref[5:50, 7:90])   # strided view
        assert np.array_equal(render.colorize_depth(depth[3], lo, hi), ref[3])                      # 1-D
    assert np.array_equal(render.colorize_depth(depth.astype(np.float64), 1.0, 81.0),
                          _previous_colorize_depth(depth.astype(np.float64), 1.0, 81.0))
    K = np.array([[100.0, 0.5, 60.0], [0, 120.0, 40.0], [0, 0, 1]])
    for stride in (1, 2, 3, 7):
        for maxd in (80.0, float('inf'), 0.1, float('nan'), -1.0):
            got = render.backproject_depth(depth, K, stride, maxd)
            ref = _previous_backproject(depth, K, stride, maxd)
            for a, b in zip(got, ref):
                assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(ValueError, match=r'\(H, W\) image'):
        render.backproject_depth(depth[0], K)


def test_label_colours_are_the_palette_in_bgr():
    from realm_ros.models import DSEC_PALETTE, colorize_segmentation
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 256, (61, 77)).astype(np.uint8)
    labels[:5] = rng.integers(0, 11, (5, 77))
    ref = colorize_segmentation(labels)[..., ::-1]
    bgr = render.colorize_labels(labels)
    assert bgr.shape == (61, 77, 3) and bgr.dtype == np.uint8 and np.array_equal(bgr, ref)
    assert tuple(render.colorize_labels(np.array([[5]], np.uint8))[0, 0]) == tuple(DSEC_PALETTE[5][::-1])
    assert tuple(render.colorize_labels(np.array([[255]], np.uint8))[0, 0]) == (0, 0, 0)
    out = np.full((61, 77, 3), 3, np.uint8)
    assert render.colorize_labels(labels, out=out) is out and np.array_equal(out, ref)
    big = np.zeros((61, 100, 3), np.uint8)
    render.colorize_labels(labels, out=big[:, :77])                           # non-contiguous destination
    assert np.array_equal(big[:, :77], ref) and not big[:, 77:].any()
    assert np.array_equal(render.colorize_labels(labels[::2, 1::3]), ref[::2, 1::3])
    assert np.array_equal(render.label_rgb(labels[3]), colorize_segmentation(labels[3]))
    pal = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    assert np.array_equal(render.colorize_labels(labels, pal), colorize_segmentation(labels, pal)[..., ::-1])
    with pytest.raises(ValueError, match='uint8'):
        render.colorize_labels(labels.astype(np.int64))
    with pytest.raises(ValueError, match='out must be'):
        render.colorize_labels(labels, out=np.zeros((61, 77), np.uint8))
    with pytest.raises(ValueError, match='at most 255 classes'):
        render.colorize_labels(labels, np.zeros((256, 3), np.uint8))


def test_event_frame_shows_polarity_balance():
    x = np.array([1, 1, 1, 2, 3], np.uint16)
    y = np.array([0, 0, 0, 0, 1], np.uint16)
    p = np.array([1, 1, 0, 0, 1], np.uint8)
    img = render.event_frame(x, y, p, 2, 4)
    assert img.shape == (2, 4, 3)
    assert img[0, 1, 0] > 0 and img[0, 1, 2] == 0                       # net ON: blue
    assert img[0, 2, 2] > 0 and img[0, 2, 0] == 0                       # net OFF: red
    assert np.all(img[0, 0] == 0) and np.all(img[1, 0] == 0)            # no events: black


def test_draw_matches_places_both_views_side_by_side():
    a = np.full((20, 30, 3), 10, np.uint8)
    b = np.full((20, 30, 3), 200, np.uint8)
    xy1 = np.array([[5, 5], [10, 15]])
    xy2 = np.array([[6, 5], [12, 14]])
    img = render.draw_matches(a, b, xy1, xy2, inliers=np.array([True, False]))
    assert img.shape == (20, 60, 3)
    assert np.all(img[0, 0] == 10) and np.all(img[0, 59] == 200)
    assert np.any(np.all(img == (0, 255, 0), axis=-1)) and np.any(np.all(img == (0, 0, 255), axis=-1))
    empty = render.draw_matches(a, b, np.zeros((0, 2)), np.zeros((0, 2)))
    assert np.array_equal(empty[:, :30], a)


def test_voxel_picture_sign_colours():
    vox = np.zeros((5, 4, 4), np.float32)
    vox[:, 0, 0] = 1.0
    vox[:, 3, 3] = -2.0
    img = render.voxel_picture(vox)
    assert img[0, 0, 0] > 0 and img[0, 0, 2] == 0 and img[3, 3, 2] > 0 and np.all(img[1, 1] == 0)


def test_stats_helpers():
    c = Counters()
    c.add('a')
    c.add('a', 4)
    assert c.get('a') == 5 and c.snapshot() == {'a': 5} and c.get('b') == 0
    lat = LatencyTracker(maxlen=3)
    assert lat.percentiles_ms() is None
    for s in (0.010, 0.020, 0.030, 0.040):
        lat.add(s)
    p = lat.percentiles_ms()
    assert p == pytest.approx({'p50': 30.0, 'p95': 39.0, 'max': 40.0})
    r = RateMeter(window_s=2.0)
    r.add(10, now=100.0)
    r.add(30, now=101.0)
    assert r.rate(now=101.5) == pytest.approx(20.0)
    assert r.rate(now=102.5) == pytest.approx(15.0)                      # the first mark left the window
