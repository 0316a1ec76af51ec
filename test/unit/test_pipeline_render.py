"""Pipeline render helpers and diagnostics statistics (ROS-free)."""
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
