"""Procedural 3-D street scenes, deterministic from a seed.

A :class:`Scene` is a flat table of analytic primitives (boxes rotated about the vertical axis, vertical cylinders,
ellipsoids), each with a semantic class (:mod:`realm_ros.sim.classes`), a procedural texture and its parameters, plus
a sun direction and sky parameters. :func:`generate_street_scene` builds a street along the world x axis: a road with
lane markings and crossings, raised sidewalks with curbs, building rows with windows, gaps with brick walls, fences
and trees, parked cars, poles with traffic lights, pedestrians, bushes and a cloudy sky, closed at both ends by
buildings so that depth stays finite except for the sky.

World frame: z up, x along the street, y to the left; the ground (road surface) is z = 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import classes as C
from . import raycast as rc


@dataclass
class Scene:
    """Primitive table of a scene (all arrays have length N) plus lighting.

    Attributes:
        kind: (N,) int32, ``raycast.BOX`` / ``CYLINDER`` / ``ELLIPSOID``.
        center: (N, 3) world centre; half: (N, 3) half extents (box), (r, r, half height) (cylinder) or radii.
        yaw: (N,) rotation about world z (radians).
        cls: (N,) uint8 semantic class ids.
        tex: (N,) int32 texture ids; color: (N, 2, 3) colours; param: (N, 4) texture parameters; pseed: (N,) int64.
        sun: (3,) unit vector towards the sun; sky: (8,) zenith rgb, horizon rgb, cloud scale (m), cloud cover.
        ambient: ambient light fraction; haze_m: haze distance (m).
        seed: generator seed; road_half_width: m; lane_y: y of the default driving line; x_range: (x_start, x_end)
        of the drivable street; sidewalk_width: m.
    """

    kind: np.ndarray
    center: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    cls: np.ndarray
    tex: np.ndarray
    color: np.ndarray
    param: np.ndarray
    pseed: np.ndarray
    sun: np.ndarray
    sky: np.ndarray
    ambient: float = 0.45
    haze_m: float = 450.0
    seed: int = 0
    road_half_width: float = 5.0
    sidewalk_width: float = 3.0
    lane_y: float = -1.5
    x_range: tuple[float, float] = (0.0, 100.0)
    corners: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.kind)
        for name in ('center', 'half', 'yaw', 'cls', 'tex', 'color', 'param', 'pseed'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'scene array {name!r} has length {len(getattr(self, name))}, expected {n}')
        if np.any(self.half <= 0):
            raise ValueError('scene primitives need positive half extents')
        self.corners = _bounding_corners(self.center, self.half, self.yaw)

    def __len__(self) -> int:
        return len(self.kind)

    def class_histogram(self) -> np.ndarray:
        """Number of primitives per class id (length ``NUM_CLASSES``)."""
        return np.bincount(self.cls.astype(np.int64), minlength=C.NUM_CLASSES)


def _bounding_corners(center: np.ndarray, half: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None, :, :] * half[:, None, :]                     # (N, 8, 3)
    c = np.cos(yaw)[:, None]
    s = np.sin(yaw)[:, None]
    out = np.empty_like(local)
    out[..., 0] = c * local[..., 0] - s * local[..., 1] + center[:, None, 0]
    out[..., 1] = s * local[..., 0] + c * local[..., 1] + center[:, None, 1]
    out[..., 2] = local[..., 2] + center[:, None, 2]
    return np.ascontiguousarray(out)


class SceneBuilder:
    """Accumulates primitives; :meth:`build` returns the :class:`Scene`."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._rows: list[tuple] = []

    def _add(self, kind: int, center, half, yaw: float, cls: int, tex: int, c0, c1=(0.1, 0.1, 0.1),
             param=(0.0, 0.0, 0.0, 0.0)) -> None:
        pseed = (self.seed * 1000003 + len(self._rows) * 7919) % 2147483647
        self._rows.append((kind, tuple(map(float, center)), tuple(map(float, half)), float(yaw), int(cls), int(tex),
                           (tuple(map(float, c0)), tuple(map(float, c1))), tuple(map(float, param)), pseed))

    def box(self, center, half, cls: int, tex: int, c0, c1=(0.1, 0.1, 0.1), param=(0, 0, 0, 0), yaw: float = 0.0):
        """Add a box with half extents ``half`` rotated by ``yaw`` about z."""
        self._add(rc.BOX, center, half, yaw, cls, tex, c0, c1, param)

    def cylinder(self, base_xy, z0: float, z1: float, radius: float, cls: int, tex: int, c0, c1=(0.1, 0.1, 0.1),
                 param=(0, 0, 0, 0)):
        """Add a vertical cylinder standing from z0 to z1 at ``base_xy``."""
        self._add(rc.CYLINDER, (base_xy[0], base_xy[1], 0.5 * (z0 + z1)), (radius, radius, 0.5 * (z1 - z0)), 0.0,
                  cls, tex, c0, c1, param)

    def ellipsoid(self, center, radii, cls: int, tex: int, c0, c1=(0.1, 0.1, 0.1), param=(0, 0, 0, 0),
                  yaw: float = 0.0):
        """Add an ellipsoid."""
        self._add(rc.ELLIPSOID, center, radii, yaw, cls, tex, c0, c1, param)

    def build(self, **kwargs) -> Scene:
        rows = self._rows
        if not rows:
            raise ValueError('a scene needs at least one primitive')
        return Scene(
            kind=np.array([r[0] for r in rows], dtype=np.int32),
            center=np.array([r[1] for r in rows], dtype=np.float64),
            half=np.array([r[2] for r in rows], dtype=np.float64),
            yaw=np.array([r[3] for r in rows], dtype=np.float64),
            cls=np.array([r[4] for r in rows], dtype=np.uint8),
            tex=np.array([r[5] for r in rows], dtype=np.int32),
            color=np.array([r[6] for r in rows], dtype=np.float64),
            param=np.array([r[7] for r in rows], dtype=np.float64),
            pseed=np.array([r[8] for r in rows], dtype=np.int64),
            seed=self.seed, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Street generator

_FACADE_COLOURS = np.array([[0.78, 0.72, 0.62], [0.70, 0.55, 0.45], [0.85, 0.82, 0.75], [0.60, 0.62, 0.66],
                            [0.82, 0.70, 0.52], [0.55, 0.45, 0.40], [0.90, 0.88, 0.84], [0.66, 0.70, 0.62]])
_CAR_COLOURS = np.array([[0.75, 0.08, 0.06], [0.08, 0.18, 0.55], [0.85, 0.85, 0.85], [0.12, 0.12, 0.13],
                         [0.55, 0.57, 0.60], [0.10, 0.40, 0.20], [0.85, 0.65, 0.10], [0.35, 0.10, 0.30]])
_CLOTH_COLOURS = np.array([[0.8, 0.2, 0.2], [0.2, 0.3, 0.7], [0.9, 0.9, 0.85], [0.15, 0.15, 0.15],
                           [0.9, 0.7, 0.2], [0.3, 0.6, 0.3], [0.5, 0.35, 0.25]])


def _pick(rng: np.random.Generator, table: np.ndarray) -> np.ndarray:
    c = table[rng.integers(len(table))]
    return np.clip(c * rng.uniform(0.85, 1.1), 0.02, 1.0)


def generate_street_scene(seed: int, length_m: float = 120.0) -> Scene:
    """A street scene from ``seed`` whose drivable part spans x in [0, length_m] (m).

    Equal seeds give identical scenes. The camera is meant to drive along ``scene.lane_y`` at ~1.2-1.8 m height.
    """
    if not length_m > 0:
        raise ValueError(f'length_m must be positive, got {length_m}')
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CE4E]))
    b = SceneBuilder(seed)
    x0, x1 = -40.0, float(length_m) + 40.0
    xm, xh = 0.5 * (x0 + x1), 0.5 * (x1 - x0)
    road_hw = float(rng.uniform(4.0, 6.5))
    walk_w = float(rng.uniform(2.2, 4.0))
    lane_y = -0.45 * road_hw
    asphalt = np.array([0.27, 0.27, 0.28]) * rng.uniform(0.85, 1.15)
    crossings = rng.uniform(10.0, max(12.0, length_m - 10.0), size=2)

    # road surface (top at z = 0) with two zebra crossings (split so each piece carries one)
    split = float(np.clip(0.5 * (crossings[0] + crossings[1]), x0 + 1, x1 - 1))
    for xa, xb, xc in ((x0, split, crossings[0]), (split, x1, crossings[1])):
        b.box((0.5 * (xa + xb), 0.0, -0.15), (0.5 * (xb - xa), road_hw, 0.15), C.ROAD, rc.TEX_ASPHALT, asphalt,
              param=(road_hw, xc, rng.uniform(0, 6), 0))
    paving = np.array([0.62, 0.60, 0.57]) * rng.uniform(0.85, 1.1)
    tile = float(rng.uniform(0.4, 0.8))
    ground_far = road_hw + walk_w
    for side in (-1.0, 1.0):
        # sidewalk: top at 0.15 m, curb face towards the road
        b.box((xm, side * (road_hw + 0.5 * walk_w), -0.05), (xh, 0.5 * walk_w, 0.2), C.SIDEWALK, rc.TEX_PAVING,
              paving, param=(tile, 0, 0, 0))
        # grass behind the sidewalk
        b.box((xm, side * (ground_far + 20.0), -0.1), (xh, 20.0, 0.1), C.VEGETATION, rc.TEX_GRASS,
              (0.20, 0.45, 0.15), (0.10, 0.20, 0.07), param=(2.5, 0, 0, 0))
        _building_row(b, rng, side, x0, x1, ground_far)
        _street_furniture(b, rng, side, road_hw, walk_w, x0, x1)
    # end closures: buildings across the street at both ends
    for xe, _sgn in ((x0 - 6.0, -1.0), (x1 + 6.0, 1.0)):
        h = float(rng.uniform(12.0, 30.0))
        c0 = _pick(rng, _FACADE_COLOURS)
        b.box((xe, 0.0, 0.5 * h - 0.3), (6.0, ground_far + 30.0, 0.5 * h + 0.3), C.BUILDING, rc.TEX_FACADE, c0,
              c0 * 0.6, param=(rng.uniform(2.2, 3.5), rng.uniform(2.9, 3.6), rng.uniform(0.4, 0.6), rng.uniform(0, 3)))
    _cars(b, rng, road_hw, lane_y, x0, x1)

    elev = np.radians(rng.uniform(25.0, 60.0))
    azim = rng.uniform(0.0, 2.0 * np.pi)
    sun = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    zen = np.array([0.30, 0.50, 0.88]) * rng.uniform(0.85, 1.1)
    hor = np.array([0.80, 0.85, 0.93]) * rng.uniform(0.9, 1.05)
    sky = np.concatenate([np.clip(zen, 0, 1), np.clip(hor, 0, 1), [rng.uniform(150.0, 400.0), rng.uniform(0.3, 0.6)]])
    return b.build(sun=sun, sky=sky, ambient=float(rng.uniform(0.4, 0.55)), road_half_width=road_hw,
                   sidewalk_width=walk_w, lane_y=lane_y, x_range=(0.0, float(length_m)))


def _building_row(b: SceneBuilder, rng: np.random.Generator, side: float, x0: float, x1: float,
                  front: float) -> None:
    x = x0
    while x < x1:
        if rng.random() < 0.28:
            # a gap: wall or fence at the property line, trees and bushes behind
            gap = float(rng.uniform(5.0, 14.0))
            gx = min(x + gap, x1)
            xc, hx = 0.5 * (x + gx), 0.5 * (gx - x)
            yline = side * (front + 0.3)
            if rng.random() < 0.5:
                h = float(rng.uniform(0.9, 2.4))
                brick = np.array([0.62, 0.30, 0.22]) * rng.uniform(0.8, 1.15)
                b.box((xc, yline, 0.5 * h), (hx, 0.15, 0.5 * h), C.WALL, rc.TEX_BRICK, brick, (0.75, 0.72, 0.68))
            else:
                h = float(rng.uniform(1.0, 2.0))
                wood = np.array([0.55, 0.42, 0.28]) * rng.uniform(0.8, 1.3)
                b.box((xc, yline, 0.5 * h), (hx, 0.03, 0.5 * h), C.FENCE, rc.TEX_SLATS, wood, (0.06, 0.07, 0.05),
                      param=(rng.uniform(0.12, 0.22), 0, 0, 0))
            for _ in range(int(rng.integers(1, 4))):
                tx = float(rng.uniform(x + 1.0, max(x + 1.5, gx - 1.0)))
                ty = side * (front + rng.uniform(2.5, 8.0))
                _tree(b, rng, tx, ty, 0.0)
            x = gx
            continue
        width = float(rng.uniform(8.0, 24.0))
        bx1 = min(x + width, x1)
        depth = float(rng.uniform(8.0, 18.0))
        setback = float(rng.uniform(0.0, 2.0))
        h = float(rng.uniform(6.0, 28.0))
        yc = side * (front + setback + 0.5 * depth)
        c0 = _pick(rng, _FACADE_COLOURS)
        b.box((0.5 * (x + bx1), yc, 0.5 * h - 0.3), (0.5 * (bx1 - x), 0.5 * depth, 0.5 * h + 0.3), C.BUILDING,
              rc.TEX_FACADE, c0, c0 * rng.uniform(0.45, 0.7),
              param=(rng.uniform(2.2, 3.6), rng.uniform(2.9, 3.6), rng.uniform(0.35, 0.6), rng.uniform(0.0, 3.0)))
        x = bx1


def _tree(b: SceneBuilder, rng: np.random.Generator, x: float, y: float, z0: float) -> None:
    trunk_h = float(rng.uniform(1.8, 3.5))
    r = float(rng.uniform(0.1, 0.22))
    b.cylinder((x, y), z0 - 0.05, z0 + trunk_h + 0.6, r, C.VEGETATION, rc.TEX_BARK, (0.35, 0.25, 0.17))
    leaf = np.array([0.18, 0.42, 0.12]) * rng.uniform(0.7, 1.3)
    for _ in range(int(rng.integers(1, 4))):
        rad = rng.uniform(1.2, 2.6, size=3) * np.array([1.0, 1.0, rng.uniform(0.8, 1.2)])
        off = rng.uniform(-0.8, 0.8, size=3) * np.array([1.0, 1.0, 0.5])
        b.ellipsoid((x + off[0], y + off[1], z0 + trunk_h + rad[2] * 0.8 + off[2]), rad, C.VEGETATION,
                    rc.TEX_FOLIAGE, leaf, (0.04, 0.07, 0.03), param=(rng.uniform(1.5, 3.5), 0, 0, 0),
                    yaw=rng.uniform(0, np.pi))


def _street_furniture(b: SceneBuilder, rng: np.random.Generator, side: float, road_hw: float, walk_w: float,
                      x0: float, x1: float) -> None:
    z_walk = 0.15
    # poles (street lights / signs), some carrying a traffic light facing oncoming traffic (-x)
    x = x0 + rng.uniform(2.0, 15.0)
    while x < x1:
        y = side * (road_hw + 0.45)
        h = float(rng.uniform(3.5, 7.5))
        b.cylinder((x, y), z_walk - 0.05, z_walk + h, float(rng.uniform(0.06, 0.13)), C.POLE, rc.TEX_METAL,
                   (0.55, 0.56, 0.58), param=(rng.uniform(0.8, 1.6), 0, 0, 0))
        if rng.random() < 0.45:
            th = 0.95
            b.box((x - 0.2, y, z_walk + h - 0.5 * th), (0.14, 0.17, 0.5 * th), C.TRAFFIC_LIGHT, rc.TEX_SIGNAL,
                  (0.07, 0.07, 0.07), param=(float(rng.integers(0, 3)), 0, 0, 0))
        x += float(rng.uniform(12.0, 30.0))
    # sidewalk trees
    x = x0 + rng.uniform(0.0, 10.0)
    while x < x1:
        if rng.random() < 0.6:
            _tree(b, rng, x, side * (road_hw + walk_w - 0.8), z_walk)
        x += float(rng.uniform(8.0, 20.0))
    # pedestrians: body cylinder + head ellipsoid
    for _ in range(int(rng.integers(2, 7) * (x1 - x0) / 100.0)):
        px = float(rng.uniform(x0 + 5, x1 - 5))
        py = side * (road_hw + rng.uniform(0.9, walk_w - 0.4))
        height = float(rng.uniform(1.55, 1.9))
        body = height - 0.25
        shirt = _pick(rng, _CLOTH_COLOURS)
        pants = _pick(rng, _CLOTH_COLOURS) * 0.6
        b.cylinder((px, py), z_walk, z_walk + body, float(rng.uniform(0.17, 0.24)), C.PERSON, rc.TEX_CLOTH, shirt,
                   pants, param=(float(rng.random() < 0.4), 0, 0, 0))
        skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.5, 1.1)
        b.ellipsoid((px, py, z_walk + body + 0.13), (0.1, 0.1, 0.13), C.PERSON, rc.TEX_SKIN, skin,
                    (0.12, 0.08, 0.05))


def _car(b: SceneBuilder, rng: np.random.Generator, x: float, y: float, yaw: float) -> None:
    L = float(rng.uniform(3.8, 4.8))
    Wd = float(rng.uniform(1.65, 1.9))
    Hb = float(rng.uniform(0.55, 0.8))
    colour = _pick(rng, _CAR_COLOURS)
    z_body = 0.28
    front_lights = float(abs(yaw) > 1.0)   # facing the camera (-x): white lights, else red tail lights
    b.box((x, y, z_body + 0.5 * Hb), (0.5 * L, 0.5 * Wd, 0.5 * Hb), C.CAR, rc.TEX_CAR, colour,
          param=(0.0, front_lights, 0, 0), yaw=yaw)
    cab_l = L * float(rng.uniform(0.45, 0.6))
    cab_h = float(rng.uniform(0.45, 0.6))
    off = float(rng.uniform(-0.25, 0.1)) * L
    b.box((x + np.cos(yaw) * off, y + np.sin(yaw) * off, z_body + Hb + 0.5 * cab_h),
          (0.5 * cab_l, 0.5 * Wd - 0.06, 0.5 * cab_h), C.CAR, rc.TEX_CAR, colour, param=(1.0, 0, 0, 0), yaw=yaw)


def _cars(b: SceneBuilder, rng: np.random.Generator, road_hw: float, lane_y: float, x0: float, x1: float) -> None:
    # parked cars along both curbs (the driving line stays clear)
    for side in (-1.0, 1.0):
        x = x0 + float(rng.uniform(0, 8))
        y = side * (road_hw - 1.1)
        if abs(y - lane_y) < 1.8:
            continue
        while x < x1:
            if rng.random() < 0.55:
                _car(b, rng, x, y + rng.uniform(-0.1, 0.1), float(rng.uniform(-0.05, 0.05)))
            x += float(rng.uniform(5.5, 12.0))
    # oncoming lane traffic (static), far enough from the driving line
    y = 0.45 * road_hw
    if abs(y - lane_y) >= 2.6:
        x = x0 + float(rng.uniform(5, 25))
        while x < x1:
            _car(b, rng, x, y, float(np.pi + rng.uniform(-0.03, 0.03)))
            x += float(rng.uniform(15.0, 40.0))
