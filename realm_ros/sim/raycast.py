"""Numba kernels of the renderer: analytic ray casting of boxes, vertical cylinders and ellipsoids, procedural
anti-aliased textures, Lambert shading, haze and a procedural sky.

Internal module: use :class:`realm_ros.sim.render.Renderer`. Everything here is compiled with ``numba.njit`` (cached on
disk) and works on plain arrays. Texture patterns are box-filtered analytically over the pixel footprint (pulse trains,
bands, discs) and noise octaves finer than ~4 pixels fade to their mean, so a moving camera sees stable edges instead of
aliasing sparkle (sparkle would be converted into spurious events).

Size: over 500 lines because numba kernels can only call kernels it compiles with them; splitting the intersection,
texture and shading kernels across modules would not make any of them usable alone.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# Primitive kinds
BOX = 0
CYLINDER = 1     # vertical axis (local z); half = (radius, radius, half height)
ELLIPSOID = 2    # half = radii

# Texture ids
TEX_ASPHALT = 0
TEX_PAVING = 1
TEX_FACADE = 2
TEX_BRICK = 3
TEX_CAR = 4
TEX_METAL = 5
TEX_SLATS = 6
TEX_FOLIAGE = 7
TEX_CLOTH = 8
TEX_SIGNAL = 9
TEX_GRASS = 10
TEX_SKIN = 11
TEX_BARK = 12
TEX_CONCRETE = 13

NEAR = 0.05          # near clipping distance (z, metres)
_MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------------------
# Noise and filtered patterns

@njit(cache=True, inline='always', error_model='numpy')
def _hash(ix, iy, iz, seed):
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761)
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _MASK32
    h = h ^ (h >> 16)
    return h * (1.0 / 4294967296.0)


@njit(cache=True, inline='always', error_model='numpy')
def _smooth(f):
    return f * f * (3.0 - 2.0 * f)


# lattice values: a fixed random table, indexed by wrapped lattice coordinates offset by the seed
_TABLE_BITS = 8
_TABLE_MASK = (1 << _TABLE_BITS) - 1
_TABLE = np.random.default_rng(0x7AB1E).random((1 << _TABLE_BITS, 1 << _TABLE_BITS)).astype(np.float32)


@njit(cache=True, inline='always', error_model='numpy')
def _lat(ix, iy, seed):
    return _TABLE[(ix + seed * 131) & _TABLE_MASK, (iy + seed * 71 + (ix >> _TABLE_BITS) * 37) & _TABLE_MASK]


@njit(cache=True, error_model='numpy')
def _vnoise2(x, y, seed):
    fx0 = math.floor(x)
    fy0 = math.floor(y)
    ix = np.int64(fx0)
    iy = np.int64(fy0)
    sx = _smooth(x - fx0)
    sy = _smooth(y - fy0)
    a = _lat(ix, iy, seed)
    b = _lat(ix + 1, iy, seed)
    c = _lat(ix, iy + 1, seed)
    d = _lat(ix + 1, iy + 1, seed)
    ab = a + (b - a) * sx
    cd = c + (d - c) * sx
    return ab + (cd - ab) * sy


@njit(cache=True, error_model='numpy')
def _vnoise3(x, y, z, seed):
    fz0 = math.floor(z)
    iz = np.int64(fz0)
    sz = _smooth(z - fz0)
    # two 2-D layers with decorrelated offsets, blended along z
    n0 = _vnoise2(x + iz * 57.31, y - iz * 31.17, seed + iz * 11)
    n1 = _vnoise2(x + (iz + 1) * 57.31, y - (iz + 1) * 31.17, seed + (iz + 1) * 11)
    return n0 + (n1 - n0) * sz


@njit(cache=True, inline='always', error_model='numpy')
def _octave_weight(wavelength, footprint):
    # 1 when a wavelength spans >= 4 footprints, 0 at <= 2: finer octaves fade to their mean (no aliasing)
    w = (wavelength / footprint - 2.0) * 0.5
    return min(1.0, max(0.0, w))


@njit(cache=True, error_model='numpy')
def _fbm2(x, y, seed, freq, octaves, gain, footprint):
    """Multi-octave value noise in [0, 1] (mean 0.5), octaves filtered by the footprint (same units as x, y).

    Octave o has wavelength 1 / (freq * 2^o); octaves too fine for the footprint contribute their mean, and the loop
    stops at the first fully faded octave (all finer ones are faded too).
    """
    total = 0.0
    norm = 0.0
    amp = 1.0
    f = freq
    for o in range(octaves):
        w = _octave_weight(1.0 / f, footprint)
        if w <= 0.0:
            rem = amp * (1.0 - gain ** (octaves - o)) / (1.0 - gain)
            total += 0.5 * rem
            norm += rem
            break
        n = _vnoise2(x * f + 17.31 * o, y * f - 11.73 * o, seed + 101 * o)
        total += amp * (0.5 + w * (n - 0.5))
        norm += amp
        amp *= gain
        f *= 2.0
    return total / norm


@njit(cache=True, error_model='numpy')
def _fbm3(x, y, z, seed, freq, octaves, gain, footprint):
    """3-D (solid) version of :func:`_fbm2`."""
    total = 0.0
    norm = 0.0
    amp = 1.0
    f = freq
    for o in range(octaves):
        w = _octave_weight(1.0 / f, footprint)
        if w <= 0.0:
            rem = amp * (1.0 - gain ** (octaves - o)) / (1.0 - gain)
            total += 0.5 * rem
            norm += rem
            break
        n = _vnoise3(x * f + 17.31 * o, y * f - 11.73 * o, z * f + 5.19 * o, seed + 101 * o)
        total += amp * (0.5 + w * (n - 0.5))
        norm += amp
        amp *= gain
        f *= 2.0
    return total / norm


@njit(cache=True, inline='always', error_model='numpy')
def _square_integral(x, period, duty):
    k = math.floor(x / period)
    r = x - k * period
    return k * duty * period + min(r, duty * period)


@njit(cache=True, error_model='numpy')
def _pulse(x, period, duty, width):
    """Box-filtered square wave: fraction of [x - width/2, x + width/2] where frac(x / period) < duty."""
    w = max(width, 1e-6)
    return (_square_integral(x + 0.5 * w, period, duty) - _square_integral(x - 0.5 * w, period, duty)) / w


@njit(cache=True, error_model='numpy')
def _band(x, lo, hi, width):
    """Box-filtered indicator of lo <= x <= hi."""
    w = max(width, 1e-6)
    a = min(max(x - 0.5 * w, lo), hi)
    b = min(max(x + 0.5 * w, lo), hi)
    return (b - a) / w


@njit(cache=True, error_model='numpy')
def _disc(dx, dy, radius, width):
    """Approximately box-filtered disc of ``radius`` centred at the origin."""
    d = math.sqrt(dx * dx + dy * dy)
    w = max(width, 1e-6)
    return min(1.0, max(0.0, (radius - d) / w + 0.5))


@njit(cache=True, inline='always', error_model='numpy')
def _mix(a, b, t):
    return a + (b - a) * t


@njit(cache=True, inline='always', error_model='numpy')
def _stretch(n, k):
    """Contrast-stretch a [0, 1] noise value about 0.5 by ``k``, clipped to [0, 1]."""
    return min(1.0, max(0.0, 0.5 + (n - 0.5) * k))


# ----------------------------------------------------------------------------------------------------------------
# Intersections (local frame of the primitive; rays need not be normalised)

@njit(cache=True, error_model='numpy')
def _intersect(kind, ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Ray parameter of the first hit in front of the origin, or inf."""
    inf = np.inf
    if kind == BOX:
        tn = -inf
        tf = inf
        # x slab
        if abs(dx) < 1e-12:
            if abs(ox) > hx:
                return inf
        else:
            t1 = (-hx - ox) / dx
            t2 = (hx - ox) / dx
            if t1 > t2:
                t1, t2 = t2, t1
            tn = max(tn, t1)
            tf = min(tf, t2)
        if abs(dy) < 1e-12:
            if abs(oy) > hy:
                return inf
        else:
            t1 = (-hy - oy) / dy
            t2 = (hy - oy) / dy
            if t1 > t2:
                t1, t2 = t2, t1
            tn = max(tn, t1)
            tf = min(tf, t2)
        if abs(dz) < 1e-12:
            if abs(oz) > hz:
                return inf
        else:
            t1 = (-hz - oz) / dz
            t2 = (hz - oz) / dz
            if t1 > t2:
                t1, t2 = t2, t1
            tn = max(tn, t1)
            tf = min(tf, t2)
        if tn <= tf and tn > 0.0:
            return tn
        return inf
    elif kind == CYLINDER:
        best = inf
        r2 = hx * hx
        a = dx * dx + dy * dy
        if a > 1e-18:
            b = ox * dx + oy * dy
            c = ox * ox + oy * oy - r2
            disc = b * b - a * c
            if disc >= 0.0:
                t = (-b - math.sqrt(disc)) / a
                if t > 0.0:
                    z = oz + t * dz
                    if -hz <= z <= hz:
                        best = t
        if abs(dz) > 1e-12:
            for s in (-1.0, 1.0):
                t = (s * hz - oz) / dz
                if 0.0 < t < best:
                    x = ox + t * dx
                    y = oy + t * dy
                    if x * x + y * y <= r2:
                        best = t
        return best
    else:
        px = ox / hx
        py = oy / hy
        pz = oz / hz
        qx = dx / hx
        qy = dy / hy
        qz = dz / hz
        a = qx * qx + qy * qy + qz * qz
        b = px * qx + py * qy + pz * qz
        c = px * px + py * py + pz * pz - 1.0
        disc = b * b - a * c
        if disc < 0.0:
            return inf
        t = (-b - math.sqrt(disc)) / a
        if t > 0.0:
            return t
        return inf


# ----------------------------------------------------------------------------------------------------------------
# Textures: albedo of a primitive at a local hit point


@njit(cache=True, error_model='numpy')
def _albedo(tex, px, py, pz, nx, ny, nz, face, hx, hy, hz, cxw, cyw, czw, colors, params, pi, fw, seed):
    """Albedo (r, g, b) at local point p with local normal n on face ``face`` (0/1/2 = x/y/z axis, BOX only).

    ``(cxw, cyw, czw)``: world centre of the primitive (for world-anchored patterns); ``colors[pi]``: (2, 3) colours;
    ``params[pi]``: (4,) texture parameters; ``fw``: pixel footprint on the surface (metres); ``seed``: per-primitive
    seed. (Whole tables plus an index are passed: slicing per pixel would cost reference counting.)
    """
    c0r = colors[pi, 0, 0]
    c0g = colors[pi, 0, 1]
    c0b = colors[pi, 0, 2]
    c1r = colors[pi, 1, 0]
    c1g = colors[pi, 1, 1]
    c1b = colors[pi, 1, 2]
    par0 = params[pi, 0]
    par1 = params[pi, 1]
    par2 = params[pi, 2]
    par3 = params[pi, 3]
    # surface coordinates: a (horizontal along the face), b (second axis), zr (height above the bottom)
    zr = pz + hz
    if face == 2:
        a = px
        b = py
    elif face == 0:
        a = py
        b = zr
    else:
        a = px
        b = zr
    if tex == TEX_ASPHALT:
        wx = px + cxw
        wy = py + cyw
        g = 0.45 + 1.1 * _stretch(_fbm2(wx, wy, seed, 1.7, 6, 0.65, fw), 3.0)
        g *= 0.80 + 0.4 * _fbm2(wx, wy, seed + 7, 0.09, 2, 0.5, fw)
        r = c0r * g
        gg = c0g * g
        bb = c0b * g
        if face == 2 and nz > 0.0:
            # markings (evaluated only near them): dashed centre line, edge lines, a zebra crossing
            half_w = par0
            m = 0.0
            if abs(wy) < 0.075 + fw:
                m = _band(wy, -0.075, 0.075, fw) * _pulse(wx + par2, 6.0, 0.5, fw)
            ay = abs(wy)
            if half_w - 0.40 - fw < ay < half_w - 0.25 + fw:
                m = max(m, _band(ay, half_w - 0.40, half_w - 0.25, fw))
            xc = par1
            if xc - fw < wx < xc + 3.0 + fw:
                zebra = _band(wx, xc, xc + 3.0, fw) * _pulse(wy + 0.25, 1.0, 0.5, fw) * _band(ay, 0.0, half_w - 0.6,
                                                                                             fw)
                m = max(m, zebra)
            if m > 0.0:
                r = _mix(r, 0.85, m)
                gg = _mix(gg, 0.85, m)
                bb = _mix(bb, 0.82, m)
        return r, gg, bb
    elif tex == TEX_PAVING:
        wx = px + cxw
        wy = py + cyw
        if face == 2:
            s = par0
            ti = np.int64(math.floor(wx / s))
            tj = np.int64(math.floor(wy / s))
            jit_w = _octave_weight(s, fw)
            j = 1.0 + jit_w * 0.25 * (_hash(ti, tj, 3, seed) - 0.5)
            grout = 1.0 - (1.0 - _pulse(wx + 0.012, s, 0.024 / s, fw)) * (1.0 - _pulse(wy + 0.012, s, 0.024 / s, fw))
            n = 0.65 + 0.7 * _stretch(_fbm2(wx, wy, seed, 4.0, 5, 0.6, fw), 2.5)
            g = j * n * (1.0 - 0.45 * grout)
        else:
            g = 0.85 + 0.3 * _fbm2(a + cxw, b, seed, 5.0, 4, 0.5, fw)
        return c0r * g, c0g * g, c0b * g
    elif tex == TEX_FACADE:
        if face == 2:
            g = 0.7 + 0.6 * _fbm2(px + cxw, py + cyw, seed, 1.0, 5, 0.55, fw)
            return 0.45 * g, 0.44 * g, 0.42 * g
        sx = par0
        sz = par1
        fx = par2
        aa = a + par3
        g = 0.65 + 0.7 * _stretch(_fbm2(aa, b, seed, 0.8, 6, 0.65, fw), 2.2)
        r = c0r * g
        gg = c0g * g
        bb = c0b * g
        # floor bands (cornices)
        band = _pulse(b - 0.15, sz, 0.07, fw) * _band(b, 1.0, 1e9, fw)
        r = _mix(r, c1r, 0.8 * band)
        gg = _mix(gg, c1g, 0.8 * band)
        bb = _mix(bb, c1b, 0.8 * band)
        # windows with frames on upper floors; larger shop windows on the ground floor
        upper = _band(b, sz, 2.0 * hz - 0.8, fw)
        win = 0.0
        if upper > 0.0:
            win = _pulse(aa - 0.5 * sx * (1.0 - fx), sx, fx, fw) * _pulse(b - 0.25 * sz, sz, 0.5, fw) * upper
            frame = _pulse(aa - 0.5 * sx * (1.0 - fx) + 0.08, sx, fx + 0.16 / sx, fw) * \
                _pulse(b - 0.25 * sz + 0.08, sz, 0.5 + 0.16 / sz, fw) * upper
            frame_only = max(frame - win, 0.0)
            if frame_only > 0.0:
                r = _mix(r, 0.92, frame_only)
                gg = _mix(gg, 0.92, frame_only)
                bb = _mix(bb, 0.90, frame_only)
        shop = 0.0
        if b < sz:
            shop = _pulse(aa - 0.3, 4.0, 0.75, fw) * _band(b, 0.4, sz - 0.6, fw)
        glass_w = max(win, shop)
        if glass_w > 0.0:
            wi = np.int64(math.floor(aa / sx))
            wj = np.int64(math.floor(b / sz))
            lit = _octave_weight(sx, fw) * (_hash(wi, wj, 5, seed) - 0.5)
            glass = 0.10 + 0.12 * lit + 0.06 * _fbm2(aa, b, seed + 3, 3.0, 2, 0.5, fw)
            r = _mix(r, glass * 0.9, glass_w)
            gg = _mix(gg, glass, glass_w)
            bb = _mix(bb, glass * 1.25, glass_w)
        return r, gg, bb
    elif tex == TEX_BRICK:
        bw = 0.24
        bh = 0.075
        if face == 2:
            g = 0.8 + 0.4 * _fbm2(px + cxw, py + cyw, seed, 3.0, 4, 0.5, fw)
            return c1r * g, c1g * g, c1b * g
        row = math.floor(b / bh)
        aa = a + cxw + 0.5 * bw * (row - 2.0 * math.floor(row * 0.5))
        bi = np.int64(math.floor(aa / bw))
        jw = _octave_weight(bh, fw)
        j = 1.0 + jw * 0.35 * (_hash(bi, np.int64(row), 9, seed) - 0.5)
        mortar = 1.0 - (1.0 - _pulse(aa + 0.006, bw, 0.012 / bw, fw)) * (1.0 - _pulse(b + 0.006, bh, 0.012 / bh, fw))
        n = 0.85 + 0.3 * _fbm2(aa, b, seed, 6.0, 4, 0.5, fw)
        r = _mix(c0r * j * n, c1r, mortar)
        gg = _mix(c0g * j * n, c1g, mortar)
        bb = _mix(c0b * j * n, c1b, mortar)
        return r, gg, bb
    elif tex == TEX_CAR:
        n = 0.92 + 0.16 * _fbm2(a + cxw, b + cyw, seed, 2.0, 3, 0.5, fw)
        r = c0r * n
        gg = c0g * n
        bb = c0b * n
        cabin = par0 > 0.5
        if face == 2:
            if cabin:
                return r * 0.85, gg * 0.85, bb * 0.85
            return r, gg, bb
        H = 2.0 * hz
        if cabin:
            # window glass with pillars
            L = 2.0 * (hy if face == 0 else hx)
            along = a + 0.5 * L
            win = _band(b, 0.08 * H, 0.85 * H, fw) * _band(along, 0.12, L - 0.12, fw)
            if face == 1:
                win *= 1.0 - _band(along, 0.5 * L - 0.06, 0.5 * L + 0.06, fw)
            return _mix(r, 0.08, win), _mix(gg, 0.09, win), _mix(bb, 0.11, win)
        if face == 1:
            # side: two wheels, a dark sill and a door seam
            wheel = max(_disc(a - (hx - 0.75), b - 0.05, 0.34, fw), _disc(a + (hx - 0.75), b - 0.05, 0.34, fw))
            hub = max(_disc(a - (hx - 0.75), b - 0.05, 0.14, fw), _disc(a + (hx - 0.75), b - 0.05, 0.14, fw))
            seam = _band(a, -0.02, 0.02, fw) * _band(b, 0.2 * H, 0.95 * H, fw)
            sill = _band(b, 0.0, 0.12 * H, fw)
            d = max(max(wheel, seam), sill)
            r = _mix(r, 0.05, d)
            gg = _mix(gg, 0.05, d)
            bb = _mix(bb, 0.05, d)
            return _mix(r, 0.6, hub), _mix(gg, 0.6, hub), _mix(bb, 0.6, hub)
        # front/back: lights and bumper/grille
        light = max(_disc(a - (hy - 0.3), b - 0.65 * H, 0.12, fw), _disc(a + (hy - 0.3), b - 0.65 * H, 0.12, fw))
        grille = _band(b, 0.05 * H, 0.3 * H, fw) * _band(abs(a), 0.0, hy - 0.15, fw)
        r = _mix(r, 0.06, grille)
        gg = _mix(gg, 0.06, grille)
        bb = _mix(bb, 0.06, grille)
        lc = 0.95 if par1 > 0.5 else 0.85
        return _mix(r, lc, light), _mix(gg, 0.9 * lc if par1 > 0.5 else 0.1, light), \
            _mix(bb, 0.8 * lc if par1 > 0.5 else 0.1, light)
    elif tex == TEX_METAL:
        ang = math.atan2(py, px) * hx
        g = 0.85 + 0.3 * _fbm2(ang, zr, seed, 3.0, 3, 0.5, fw)
        band = _pulse(zr, par0, 0.12, fw)
        g *= 1.0 - 0.55 * band
        return c0r * g, c0g * g, c0b * g
    elif tex == TEX_SLATS:
        if face == 2:
            return c0r * 0.9, c0g * 0.9, c0b * 0.9
        period = par0
        slat = _pulse(a + cxw + cyw, period, 0.65, fw)
        rail = max(_band(b, 0.25, 0.33, fw), _band(b, 2.0 * hz - 0.3, 2.0 * hz - 0.22, fw))
        wood = 0.75 + 0.5 * _fbm2((a + cxw + cyw) * 4.0, b * 0.5, seed, 2.0, 4, 0.55, fw)
        s = max(slat, rail)
        return _mix(c1r, c0r * wood, s), _mix(c1g, c0g * wood, s), _mix(c1b, c0b * wood, s)
    elif tex == TEX_FOLIAGE or tex == TEX_GRASS:
        wx = px + cxw
        wy = py + cyw
        wz = pz + czw
        if tex == TEX_FOLIAGE:
            n = _fbm3(wx, wy, wz, seed, par0, 6, 0.62, fw)
        else:
            n = _fbm2(wx, wy, seed, par0, 6, 0.6, fw)
        g = 0.25 + 1.5 * n * n
        hole = min(1.0, max(0.0, (0.38 - n) * 6.0))
        return _mix(c0r * g, c1r, hole), _mix(c0g * g, c1g, hole), _mix(c0b * g, c1b, hole)
    elif tex == TEX_BARK:
        ang = math.atan2(py, px) * hx
        n = _fbm2(ang * 6.0, zr * 0.7, seed, 2.0, 4, 0.55, fw)
        g = 0.6 + 0.8 * n
        return c0r * g, c0g * g, c0b * g
    elif tex == TEX_CLOTH:
        ang = math.atan2(py, px) * hx
        upper = _band(zr, 0.47 * 2.0 * hz, 1e9, fw)
        stripes = _pulse(zr, 0.12, 0.5, fw) * par0
        n = 0.85 + 0.3 * _fbm2(ang, zr, seed, 4.0, 3, 0.5, fw)
        r = _mix(c1r, c0r * (1.0 - 0.5 * stripes), upper) * n
        gg = _mix(c1g, c0g * (1.0 - 0.5 * stripes), upper) * n
        bb = _mix(c1b, c0b * (1.0 - 0.5 * stripes), upper) * n
        return r, gg, bb
    elif tex == TEX_SKIN:
        hair = _band(pz, 0.25 * hz, 1e9, fw)
        return _mix(c0r, c1r, hair), _mix(c0g, c1g, hair), _mix(c0b, c1b, hair)
    elif tex == TEX_SIGNAL:
        base = 0.07
        if face == 0 and nx < 0.0:
            H = 2.0 * hz
            on = np.int64(par0)
            r = base
            gg = base
            bb = base
            for k in range(3):
                lamp = _disc(a, b - H * (0.78 - 0.28 * k), 0.1, fw)
                rim = _disc(a, b - H * (0.78 - 0.28 * k), 0.13, fw) - lamp
                lr = 0.9 if k < 2 else 0.1
                lg = 0.1 if k == 0 else 0.8
                lb = 0.1 if k < 2 else 0.4
                s = 1.0 if k == on else 0.25
                r = _mix(_mix(r, 0.3, rim), lr * s, lamp)
                gg = _mix(_mix(gg, 0.3, rim), lg * s, lamp)
                bb = _mix(_mix(bb, 0.3, rim), lb * s, lamp)
            return r, gg, bb
        return base, base, base
    else:  # TEX_CONCRETE and fallback
        g = 0.8 + 0.4 * _fbm2(a + cxw + cyw, b, seed, 2.0, 5, 0.55, fw)
        return c0r * g, c0g * g, c0b * g


@njit(cache=True, error_model='numpy')
def _sky(dwx, dwy, dwz, sky, fx_px, seed):
    """Sky colour for a world ray direction (need not be normalised). ``sky`` = [zenith rgb, horizon rgb, cloud
    scale, cloud cover]."""
    n = math.sqrt(dwx * dwx + dwy * dwy + dwz * dwz)
    ux = dwx / n
    uy = dwy / n
    uz = dwz / n
    e = max(uz, 0.0)
    t = math.sqrt(e)
    r = _mix(sky[3], sky[0], t)
    g = _mix(sky[4], sky[1], t)
    b = _mix(sky[5], sky[2], t)
    if uz > 0.02:
        h = 1000.0 / uz
        cx = ux * h / sky[6]
        cy = uy * h / sky[6]
        # footprint on the cloud plane, in cloud-texture units
        fw = h / (fx_px * max(uz, 0.05)) / sky[6]
        c = _fbm2(cx, cy, seed + 999, 1.0, 6, 0.55, fw)
        cover = min(1.0, max(0.0, (c - (1.0 - sky[7])) * 4.0)) * min(1.0, uz * 8.0)
        r = _mix(r, 0.95, cover)
        g = _mix(g, 0.95, cover)
        b = _mix(b, 0.97, cover)
    return r, g, b


# ----------------------------------------------------------------------------------------------------------------
# The frame kernel

@njit(cache=True, error_model='numpy')
def render_kernel(R_wc, t_wc, fx, fy, cx, cy, width, height,
                  kind, center, half, cyaw, syaw, corners, cls, tex, col, par, pseed,
                  sun, sky, ambient, haze_m, scene_seed,
                  out_rgb, out_gray, out_depth, out_label, want_rgb):
    """Render one frame into the output buffers.

    ``R_wc``, ``t_wc``: camera-to-world rotation and camera position. ``corners``: (N, 8, 3) world corners of each
    primitive's bounding box. ``out_depth`` receives z-depth (inf for sky), ``out_label`` class ids (0 for sky),
    ``out_gray`` luminance in [0, 1] and, when ``want_rgb``, ``out_rgb`` colour in [0, 1].
    """
    n_prim = kind.shape[0]
    H = height
    W = width
    # world ray directions with camera-z == 1 (so the ray parameter is z-depth)
    rays = np.empty((H, W, 3))
    for v in range(H):
        yc = (v - cy) / fy
        for u in range(W):
            xc = (u - cx) / fx
            rays[v, u, 0] = R_wc[0, 0] * xc + R_wc[0, 1] * yc + R_wc[0, 2]
            rays[v, u, 1] = R_wc[1, 0] * xc + R_wc[1, 1] * yc + R_wc[1, 2]
            rays[v, u, 2] = R_wc[2, 0] * xc + R_wc[2, 1] * yc + R_wc[2, 2]
    zbuf = np.full((H, W), np.inf)
    pid = np.full((H, W), -1, dtype=np.int32)

    # screen-space bounds of every primitive (conservative), nearest first
    zmin = np.empty(n_prim)
    u0 = np.zeros(n_prim, dtype=np.int64)
    u1 = np.zeros(n_prim, dtype=np.int64)
    v0 = np.zeros(n_prim, dtype=np.int64)
    v1 = np.zeros(n_prim, dtype=np.int64)
    cc = np.empty((8, 3))
    for p in range(n_prim):
        zlo = np.inf
        zhi = -np.inf
        ulo = np.inf
        uhi = -np.inf
        vlo = np.inf
        vhi = -np.inf
        for k in range(8):
            dxw = corners[p, k, 0] - t_wc[0]
            dyw = corners[p, k, 1] - t_wc[1]
            dzw = corners[p, k, 2] - t_wc[2]
            cc[k, 0] = R_wc[0, 0] * dxw + R_wc[1, 0] * dyw + R_wc[2, 0] * dzw
            cc[k, 1] = R_wc[0, 1] * dxw + R_wc[1, 1] * dyw + R_wc[2, 1] * dzw
            cc[k, 2] = R_wc[0, 2] * dxw + R_wc[1, 2] * dyw + R_wc[2, 2] * dzw
            zlo = min(zlo, cc[k, 2])
            zhi = max(zhi, cc[k, 2])
        zmin[p] = max(zlo, 0.0)
        if zhi <= NEAR:
            u0[p] = 1
            u1[p] = 0
            continue
        # project the corners in front of the near plane and the box edges' crossings of it (tight bounds)
        for k in range(8):
            if cc[k, 2] > NEAR:
                uu = fx * cc[k, 0] / cc[k, 2] + cx
                vv = fy * cc[k, 1] / cc[k, 2] + cy
                ulo = min(ulo, uu)
                uhi = max(uhi, uu)
                vlo = min(vlo, vv)
                vhi = max(vhi, vv)
            for bit in (1, 2, 4):
                j = k ^ bit
                if j < k:
                    continue
                za = cc[k, 2]
                zb = cc[j, 2]
                if (za > NEAR) != (zb > NEAR):
                    f = (NEAR - za) / (zb - za)
                    xx = cc[k, 0] + f * (cc[j, 0] - cc[k, 0])
                    yy = cc[k, 1] + f * (cc[j, 1] - cc[k, 1])
                    uu = fx * xx / NEAR + cx
                    vv = fy * yy / NEAR + cy
                    ulo = min(ulo, uu)
                    uhi = max(uhi, uu)
                    vlo = min(vlo, vv)
                    vhi = max(vhi, vv)
        ulo = max(ulo, -1.0e6)
        uhi = min(uhi, 1.0e6)
        vlo = max(vlo, -1.0e6)
        vhi = min(vhi, 1.0e6)
        u0[p] = max(0, np.int64(math.floor(ulo)) - 1)
        u1[p] = min(W - 1, np.int64(math.ceil(uhi)) + 1)
        v0[p] = max(0, np.int64(math.floor(vlo)) - 1)
        v1[p] = min(H - 1, np.int64(math.ceil(vhi)) + 1)
    order = np.argsort(zmin)

    # camera position in each primitive's local frame (rotation about z by -yaw)
    lo = np.empty((n_prim, 3))
    for p in range(n_prim):
        ex = t_wc[0] - center[p, 0]
        ey = t_wc[1] - center[p, 1]
        lo[p, 0] = cyaw[p] * ex + syaw[p] * ey
        lo[p, 1] = -syaw[p] * ex + cyaw[p] * ey
        lo[p, 2] = t_wc[2] - center[p, 2]
    # nearest primitives first, row by row
    for v in range(H):
        for oi in range(n_prim):
            p = order[oi]
            if u0[p] > u1[p] or v < v0[p] or v > v1[p]:
                continue
            k = kind[p]
            c = cyaw[p]
            s = syaw[p]
            hx = half[p, 0]
            hy = half[p, 1]
            hz = half[p, 2]
            ox = lo[p, 0]
            oy = lo[p, 1]
            oz = lo[p, 2]
            zp = zmin[p]
            for u in range(u0[p], u1[p] + 1):
                if zbuf[v, u] <= zp:
                    continue
                dwx = rays[v, u, 0]
                dwy = rays[v, u, 1]
                dlx = c * dwx + s * dwy
                dly = -s * dwx + c * dwy
                t = _intersect(k, ox, oy, oz, dlx, dly, rays[v, u, 2], hx, hy, hz)
                if t < zbuf[v, u]:
                    zbuf[v, u] = t
                    pid[v, u] = p

    # shading
    for v in range(H):
        for u in range(W):
            p = pid[v, u]
            dwx = rays[v, u, 0]
            dwy = rays[v, u, 1]
            dwz = rays[v, u, 2]
            if p < 0:
                r, g, b = _sky(dwx, dwy, dwz, sky, fx, scene_seed)
                out_depth[v, u] = np.inf
                out_label[v, u] = 0
            else:
                t = zbuf[v, u]
                c = cyaw[p]
                s = syaw[p]
                hx = half[p, 0]
                hy = half[p, 1]
                hz = half[p, 2]
                ex = t_wc[0] - center[p, 0]
                ey = t_wc[1] - center[p, 1]
                ox = c * ex + s * ey
                oy = -s * ex + c * ey
                oz = t_wc[2] - center[p, 2]
                dlx = c * dwx + s * dwy
                dly = -s * dwx + c * dwy
                dlz = dwz
                px = ox + t * dlx
                py = oy + t * dly
                pz = oz + t * dlz
                k = kind[p]
                face = -1
                if k == BOX:
                    ax = abs(px) / hx
                    ay = abs(py) / hy
                    az = abs(pz) / hz
                    if ax >= ay and ax >= az:
                        face = 0
                        nlx = 1.0 if px > 0 else -1.0
                        nly = 0.0
                        nlz = 0.0
                    elif ay >= az:
                        face = 1
                        nlx = 0.0
                        nly = 1.0 if py > 0 else -1.0
                        nlz = 0.0
                    else:
                        face = 2
                        nlx = 0.0
                        nly = 0.0
                        nlz = 1.0 if pz > 0 else -1.0
                elif k == CYLINDER:
                    if abs(pz) >= hz * (1.0 - 1e-9) and px * px + py * py < hx * hx * (1.0 - 1e-6):
                        face = 2
                        nlx = 0.0
                        nly = 0.0
                        nlz = 1.0 if pz > 0 else -1.0
                    else:
                        face = 1
                        rr = math.sqrt(px * px + py * py) + 1e-12
                        nlx = px / rr
                        nly = py / rr
                        nlz = 0.0
                else:
                    face = 1
                    nlx = px / (hx * hx)
                    nly = py / (hy * hy)
                    nlz = pz / (hz * hz)
                    nn = math.sqrt(nlx * nlx + nly * nly + nlz * nlz)
                    nlx /= nn
                    nly /= nn
                    nlz /= nn
                # world normal
                nwx = c * nlx - s * nly
                nwy = s * nlx + c * nly
                nwz = nlz
                dn = math.sqrt(dwx * dwx + dwy * dwy + dwz * dwz)
                dist = t * dn
                cos_i = abs(nwx * dwx + nwy * dwy + nwz * dwz) / dn
                fw = dist / (fx * max(cos_i, 0.2))
                r, g, b = _albedo(tex[p], px, py, pz, nlx, nly, nlz, face, hx, hy, hz,
                                  center[p, 0], center[p, 1], center[p, 2], col, par, p, fw, pseed[p])
                lam = max(0.0, nwx * sun[0] + nwy * sun[1] + nwz * sun[2])
                shade = ambient + (1.0 - ambient) * lam
                r *= shade
                g *= shade
                b *= shade
                fog = 1.0 - math.exp(-dist / haze_m)
                r = _mix(r, sky[3], fog)
                g = _mix(g, sky[4], fog)
                b = _mix(b, sky[5], fog)
                out_depth[v, u] = t
                out_label[v, u] = cls[p]
            r = min(1.0, max(0.0, r))
            g = min(1.0, max(0.0, g))
            b = min(1.0, max(0.0, b))
            out_gray[v, u] = 0.299 * r + 0.587 * g + 0.114 * b
            if want_rgb:
                out_rgb[v, u, 0] = r
                out_rgb[v, u, 1] = g
                out_rgb[v, u, 2] = b
