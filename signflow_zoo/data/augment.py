"""Training augmentations applied to batches of enriched features [B, T, 469] + mask [B, T].

The seed augmented raw landmarks; doing it on features keeps the precomputed data set and costs
almost nothing per batch. Every transform is exact for the blocks it touches: mirror (swap sides,
negate x), rotation about the depth axis and scaling are linear in the coordinate and velocity blocks
and keep missing points at exactly 0; distances and angles are rotation-invariant. Time shift, speed,
frame dropout and temporal cutout act on the time axis and the mask.
"""

from __future__ import annotations

import numpy as np
import torch

from signflow_zoo.data import features as fx

# Point permutation for a mirror: left hand <-> right hand, MediaPipe pose left <-> right landmarks.
_POSE_PAIRS = [(1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20),
               (21, 22), (23, 24), (25, 26), (27, 28), (29, 30), (31, 32)]


def _mirror_permutation() -> np.ndarray:
    pts = np.arange(fx.NUM_POINTS)
    pts[0:21], pts[21:42] = np.arange(21, 42), np.arange(0, 21)
    for a, b in _POSE_PAIRS:
        pts[42 + a], pts[42 + b] = 42 + b, 42 + a
    coords = (pts[:, None] * 3 + np.arange(3)[None, :]).reshape(-1)
    perm = np.arange(fx.FEATURE_DIM)
    perm[fx.COORDS] = coords
    perm[fx.VELOCITIES] = coords + fx.VELOCITIES.start
    a = fx.ANGLES.start
    perm[a:a + 4] = [a + 1, a, a + 3, a + 2]
    s = fx.SHAPE.start
    perm[s:s + 10] = list(range(s + 5, s + 10)) + list(range(s, s + 5))
    return perm


_MIRROR = torch.from_numpy(_mirror_permutation())
_X_SIGN = torch.ones(fx.FEATURE_DIM)
_X_SIGN[fx.COORDS.start:fx.VELOCITIES.stop:3] = -1.0  # x of every coordinate and velocity


def augment_batch(x: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator,
                  p_mirror: float = 0.5, rot_deg: float = 10.0, scale: tuple[float, float] = (0.85, 1.15),
                  noise: float = 0.01, max_shift: int = 4, speed: tuple[float, float] = (0.8, 1.2),
                  p_speed: float = 0.5, frame_drop: float = 0.05, p_cutout: float = 0.3, cutout_max: int = 8):
    """Return augmented copies of ``x`` [B,T,469] float and ``mask`` [B,T] bool."""
    x = x.clone()
    mask = mask.clone()
    b, t, _ = x.shape

    def g(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.random(shape).astype(np.float32))

    flip = g(b) < p_mirror
    if flip.any():
        x[flip] = x[flip][:, :, _MIRROR] * _X_SIGN

    # rotation about z and uniform scale of the coordinate and velocity blocks
    xy = x[:, :, : fx.VELOCITIES.stop].reshape(b, t, -1, 3)
    theta = (g(b) * 2 - 1) * np.deg2rad(rot_deg)
    s = scale[0] + g(b) * (scale[1] - scale[0])
    c, si = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    px, py = xy[..., 0].clone(), xy[..., 1].clone()
    xy[..., 0] = (c * px - si * py)
    xy[..., 1] = (si * px + c * py)
    xy.mul_(s[:, None, None, None])
    x[:, :, : fx.VELOCITIES.stop] = xy.reshape(b, t, -1)
    x[:, :, fx.DISTANCES] *= s[:, None, None]
    x[:, :, fx.SHAPE] *= s[:, None, None]

    # Gaussian jitter on present coordinates only (missing points stay exactly 0)
    coords = x[:, :, fx.COORDS]
    jitter = torch.from_numpy(rng.standard_normal(coords.shape).astype(np.float32)) * noise
    x[:, :, fx.COORDS] = coords + jitter * (coords != 0)

    # speed change: resample the time axis, then crop or pad back to T
    if speed is not None and p_speed > 0:
        for i in np.nonzero(rng.random(b) < p_speed)[0]:
            factor = float(rng.uniform(*speed))
            n = max(2, int(round(t * factor)))
            src = torch.linspace(0, t - 1, n)
            lo = src.floor().long().clamp(max=t - 1)
            hi = (lo + 1).clamp(max=t - 1)
            w = (src - lo.float())[:, None]
            xi = x[i, lo] * (1 - w) + x[i, hi] * w
            mi = mask[i, lo] & mask[i, hi]
            if n >= t:
                start = (n - t) // 2
                x[i], mask[i] = xi[start:start + t], mi[start:start + t]
            else:
                pad = t - n
                x[i] = torch.cat([xi, torch.zeros(pad, x.shape[2])])
                mask[i] = torch.cat([mi, torch.zeros(pad, dtype=torch.bool)])

    # time shift (roll, the wrapped frames become padding)
    if max_shift:
        shifts = rng.integers(-max_shift, max_shift + 1, size=b)
        for k, sh in enumerate(shifts):
            if sh:
                x[k] = torch.roll(x[k], int(sh), 0)
                mask[k] = torch.roll(mask[k], int(sh), 0)
                if sh > 0:
                    mask[k, :sh] = False
                else:
                    mask[k, sh:] = False

    # frame dropout and temporal cutout (masked frames)
    if frame_drop:
        mask &= g(b, t) >= frame_drop
    for i in np.nonzero(rng.random(b) < p_cutout)[0]:
        width = int(rng.integers(1, cutout_max + 1))
        start = int(rng.integers(0, max(1, t - width)))
        mask[i, start:start + width] = False
    # never leave a sequence with no valid frame
    empty = ~mask.any(1)
    if empty.any():
        mask[empty, t // 2] = True
    x = x * mask[:, :, None]
    return x, mask
