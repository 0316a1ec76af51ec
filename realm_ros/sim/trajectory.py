"""Smooth 6-DoF camera trajectories with analytic poses, deterministic from a seed.

A trajectory maps time ``t`` (seconds from the start of the sequence) to the event camera's pose ``T_world_cam``
(camera-to-world, optical frame; see :mod:`realm_ros.sim.camera`). Poses are C-infinity in ``t`` (sums of sinusoids
plus a constant-velocity drive), so the renderer can be sampled at any rate and linear interpolation of log intensity
between close samples is valid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import R_BODY_OPTICAL, make_transform, rot_x, rot_y, rot_z

#: Trajectory kinds accepted by :func:`make_trajectory`.
TRAJECTORY_KINDS = ('drive', 'loop', 'static')


@dataclass(frozen=True)
class SmoothTrajectory:
    """Forward drive along world x with sinusoidal sway, bob and yaw/pitch/roll oscillations.

    ``x(t) = x0 + speed * t`` (``periodic=False``) or ``x0 + speed * period / (2 pi) * sin(2 pi t / period)``
    (``periodic=True``: a back-and-forth motion that repeats exactly every ``period`` seconds, so a looped sequence
    has no pose jump). Lateral/vertical offsets and the angles are sums of sinusoids with amplitudes ``amps`` (m or
    rad), frequencies ``freqs`` (Hz; integer multiples of 1/period when periodic) and phases ``phases``.
    """

    x0: float
    y0: float
    z0: float
    speed: float
    period: float
    periodic: bool
    amps: np.ndarray      # (5, K): y, z, yaw, pitch, roll
    freqs: np.ndarray     # (5, K)
    phases: np.ndarray    # (5, K)

    def _osc(self, t: np.ndarray) -> np.ndarray:
        """(5, N) sinusoid sums at times t."""
        arg = 2.0 * np.pi * self.freqs[:, :, None] * t[None, None, :] + self.phases[:, :, None]
        # sin(arg) - sin(phase): every oscillation starts at zero, so the pose at t = 0 is the base pose
        return (self.amps[:, :, None] * (np.sin(arg) - np.sin(self.phases)[:, :, None])).sum(axis=1)

    def poses(self, t_s: np.ndarray) -> np.ndarray:
        """(N, 4, 4) camera-to-world poses at times ``t_s`` (seconds)."""
        t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        if self.periodic:
            x = self.x0 + self.speed * self.period / (2 * np.pi) * np.sin(2 * np.pi * t / self.period)
        else:
            x = self.x0 + self.speed * t
        o = self._osc(t)
        out = np.empty((len(t), 4, 4))
        for i in range(len(t)):
            # body frame: x forward, y left, z up; yaw about z, pitch about y (nose down positive), roll about x
            R_wb = rot_z(o[2, i]) @ rot_y(o[3, i]) @ rot_x(o[4, i])
            out[i] = make_transform(R_wb @ R_BODY_OPTICAL, (x[i], self.y0 + o[0, i], self.z0 + o[1, i]))
        return out

    def pose(self, t_s: float) -> np.ndarray:
        """4x4 camera-to-world pose at time ``t_s``."""
        return self.poses(np.array([t_s]))[0]


def make_trajectory(kind: str, seed: int, duration_s: float, *, lane_y: float = -1.5, x_start: float = 5.0,
                    speed_mps: float = 6.0, height_m: float = 1.5, motion_scale: float = 1.0) -> SmoothTrajectory:
    """Build a trajectory.

    ``kind``: ``'drive'`` (forward at ``speed_mps`` along the street), ``'loop'`` (periodic back-and-forth with
    period ``duration_s``, for looping live sequences) or ``'static'`` (the camera does not move).
    ``motion_scale`` scales the sway/bob amplitudes and angles (0 = straight and level).
    """
    if kind not in TRAJECTORY_KINDS:
        raise ValueError(f'unknown trajectory kind {kind!r}; expected one of {TRAJECTORY_KINDS}')
    if not duration_s > 0:
        raise ValueError(f'duration_s must be positive, got {duration_s}')
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7AA1]))
    K = 3
    base_amp = np.array([0.35, 0.06, np.radians(6.0), np.radians(2.5), np.radians(2.0)])
    amps = base_amp[:, None] * rng.uniform(0.3, 1.0, size=(5, K)) / np.arange(1, K + 1)[None, :]
    phases = rng.uniform(0, 2 * np.pi, size=(5, K))
    periodic = kind == 'loop'
    if periodic:
        # integer harmonics of the loop frequency (at least ~0.3 Hz so the motion is lively)
        base = 1.0 / duration_s
        m = max(1, int(np.ceil(0.3 / base)))
        freqs = base * (m * np.arange(1, K + 1)[None, :] + rng.integers(0, 3, size=(5, K)))
    else:
        freqs = rng.uniform(0.15, 0.6, size=(5, 1)) * np.arange(1, K + 1)[None, :]
    # vertical bob faster (walking/vehicle vibration)
    freqs[1] *= 3.0
    if kind == 'static':
        amps = np.zeros_like(amps)
        speed = 0.0
    else:
        amps = amps * float(motion_scale)
        speed = float(speed_mps)
    return SmoothTrajectory(x0=float(x_start), y0=float(lane_y), z0=float(height_m), speed=speed,
                            period=float(duration_s), periodic=periodic, amps=amps, freqs=freqs, phases=phases)
