"""ESIM event model: crossing counts, interpolated timestamps, polarity, refractory period, noise."""
import numpy as np
import pytest

from realm_ros.sim.esim import EsimConfig, EsimEventGenerator

EPS = 1e-3
CLEAN = EsimConfig(sigma_threshold=0.0)


def _img(values, shape=(2, 3)):
    return np.full(shape, values, dtype=np.float32) if np.isscalar(values) else np.asarray(values, np.float32)


def _intensity_for_log(L):
    return np.exp(L) - EPS


def test_linear_log_ramp_gives_floor_count_and_equally_spaced_times():
    gen = EsimEventGenerator(1, 1, CLEAN)
    L0, L1 = np.log(0.1 + EPS), np.log(0.1 + EPS) + 1.05      # 5 levels of 0.2 crossed
    gen.reset(_img(_intensity_for_log(L0), (1, 1)), 1000)
    ev = gen.step(_img(_intensity_for_log(L1), (1, 1)), 2000)
    assert len(ev) == 5 and np.all(ev.p == 1)
    # level k at L0 + 0.2 k -> t = 1000 + 1000 * 0.2 k / 1.05 us, rounded up to whole us, in ns
    expected_us = 1000 + np.ceil(1000 * 0.2 * np.arange(1, 6) / 1.05 - 1e-9)
    np.testing.assert_array_equal(ev.t, (expected_us * 1000).astype(np.int64))
    # the reference moved to the last crossed level: a further +0.16 crosses one more level (L0 + 1.2)
    ev2 = gen.step(_img(_intensity_for_log(L1 + 0.16), (1, 1)), 3000)
    assert len(ev2) == 1 and ev2.p[0] == 1
    assert ev2.t[0] == 1000 * (2000 + int(np.ceil(1000 * (1.2 - 1.05) / 0.16 - 1e-9)))


def test_polarity_follows_brightness_change_sign():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.05, 0.9, (8, 9)).astype(np.float32)
    b = a.copy()
    b[:4] *= 3.0                                            # brighter half
    b[4:] /= 3.0                                            # darker half
    gen = EsimEventGenerator(9, 8, EsimConfig(sigma_threshold=0.03))
    gen.reset(a, 0)
    ev = gen.step(np.clip(b, 0, 1), 1000)
    brighter = (np.clip(b, 0, 1) > a)[ev.y, ev.x]
    darker = (np.clip(b, 0, 1) < a)[ev.y, ev.x]
    assert len(ev) > 100
    assert np.all(ev.p[brighter] == 1) and np.all(ev.p[darker] == 0)
    assert np.all(np.diff(ev.t) >= 0) and ev.t.min() > 0 and ev.t.max() <= 1_000_000


def test_multiple_events_per_interval_and_return_to_reference():
    gen = EsimEventGenerator(2, 1, CLEAN)
    base = np.array([[0.2, 0.2]], np.float32)
    gen.reset(base, 0)
    up = gen.step(base * np.float32(np.exp(0.65)), 500)        # 3 ON per pixel
    assert len(up) == 6 and np.all(up.p == 1)
    down = gen.step(base, 1000)                                # back: 3 OFF per pixel (levels R-0.2k down to L0)
    assert len(down) == 6 and np.all(down.p == 0)
    assert np.array_equal(np.sort(down.x), [0, 0, 0, 1, 1, 1])
    assert np.all((down.t > 500_000) & (down.t <= 1_000_000))


def test_refractory_period_suppresses_but_moves_reference():
    cfg = EsimConfig(sigma_threshold=0.0, refractory_ns=400_000)
    gen = EsimEventGenerator(1, 1, cfg)
    L0 = np.log(0.1 + EPS)
    gen.reset(_img(_intensity_for_log(L0), (1, 1)), 0)
    ev = gen.step(_img(_intensity_for_log(L0 + 1.05), (1, 1)), 1000)   # crossings at 191, 381, 572, 762, 953 us
    np.testing.assert_array_equal(ev.t, [191_000, 762_000])           # first, then the next >= 400 us later
    assert gen.stats['suppressed_refractory'] == 3
    # reference is at L0 + 1.0 despite the suppressed crossings: +0.16 more crosses L0 + 1.2 once
    ev2 = gen.step(_img(_intensity_for_log(L0 + 1.21), (1, 1)), 2000)
    assert len(ev2) == 1


def test_static_input_gives_no_events_without_noise_and_poisson_noise_with_it():
    img = np.random.default_rng(1).uniform(0, 1, (40, 50)).astype(np.float32)
    quiet = EsimEventGenerator(50, 40, EsimConfig())
    quiet.reset(img, 0)
    assert sum(len(quiet.step(img, 1000 * k)) for k in range(1, 30)) == 0
    rate = 50.0
    noisy = EsimEventGenerator(50, 40, EsimConfig(background_rate_hz=rate), seed=3)
    noisy.reset(img, 0)
    batches = [noisy.step(img, 10_000 * k) for k in range(1, 21)]     # 0.2 s
    n = sum(len(b) for b in batches)
    expected = rate * 50 * 40 * 0.2
    assert abs(n - expected) < 5 * np.sqrt(expected)
    for k, b in enumerate(batches):
        assert np.all((b.t > 10_000_000 * k) & (b.t <= 10_000_000 * (k + 1)))
    p = np.concatenate([b.p for b in batches])
    assert 0.4 < p.mean() < 0.6
    hot = EsimEventGenerator(50, 40, EsimConfig(hot_pixels=3, hot_pixel_rate_hz=1000.0), seed=3)
    hot.reset(img, 0)
    hb = hot.step(img, 100_000)
    assert len(np.unique(hb.y.astype(int) * 50 + hb.x)) == 3 and 200 < len(hb) < 400


def test_deterministic_from_seed():
    rng = np.random.default_rng(5)
    frames = [rng.uniform(0.05, 1, (6, 7)).astype(np.float32) for _ in range(4)]
    cfg = EsimConfig(background_rate_hz=100.0, sigma_threshold_interval=0.02)

    def run(seed):
        g = EsimEventGenerator(7, 6, cfg, seed=seed)
        g.reset(frames[0], 0)
        return [g.step(f, 1000 * (i + 1)) for i, f in enumerate(frames[1:])]

    a, b, c = run(1), run(1), run(2)
    for x, y in zip(a, b):
        assert np.array_equal(x.t, y.t) and np.array_equal(x.x, y.x) and np.array_equal(x.p, y.p)
    assert any(len(x) != len(y) or not np.array_equal(x.t, y.t) for x, y in zip(a, c))


def test_bad_input_is_rejected_with_clear_errors():
    gen = EsimEventGenerator(4, 3)
    with pytest.raises(RuntimeError, match='reset'):
        gen.step(np.zeros((3, 4)), 10)
    with pytest.raises(ValueError, match='shape'):
        gen.reset(np.zeros((4, 3)), 0)
    gen.reset(np.zeros((3, 4)), 100)
    with pytest.raises(ValueError, match='not after'):
        gen.step(np.zeros((3, 4)), 100)
    with pytest.raises(ValueError, match='contrast'):
        EsimConfig(contrast_pos=0.0)
    with pytest.raises(ValueError, match='refractory'):
        EsimConfig(refractory_ns=-1)
