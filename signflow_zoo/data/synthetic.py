"""A deterministic generator of MediaPipe-Holistic-shaped sign clips, for training and benchmarking
without a real data set (none can be downloaded here).

Classes differ the way signs do -- one or two hands (mirrored or alternating), a movement of the wrist
relative to the body (circle, vertical line, sideways sweep, arc, taps, wave, twist) at a place (chin,
forehead, chest, opposite shoulder, neutral space), a handshape (finger-curl pattern of the 21 hand
points) and a repetition count. Signers differ in body size and position, speed, amplitude, dominant
hand (left-handed signers are mirrored), tremor; clips have jitter, frames where a hand is lost, and
lengths of 15..180 frames. ``difficulty`` scales the noise and signer variation and pulls classes
towards each other.

Every clip is drawn from its own random stream keyed by (seed, signer, class, index), so a clip does
not change when the number of classes or signers does, and generation order does not matter.
The class catalogue does not depend on the seed: "sign-03-..." means the same sign in every data set.

Why one module of ~480 lines: the catalogue, the signer model and the clip renderer share their constants
and random streams; about a third of it is the tables of handshapes, places and movements.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass

import numpy as np

from signflow_zoo.common.errors import DataError
from signflow_zoo.data.clip import Clip
from signflow_zoo.data.features import NUM_HAND_POINTS, NUM_POSE_POINTS, RAW_DIM
from signflow_zoo.common.limits import SEED, SYNTHETIC_CLIPS

GENERATOR_VERSION = "signflow-synthetic-v1"  # bump when the output for a given spec changes


@dataclass
class SyntheticSpec:
    """Everything that determines a synthetic data set."""

    num_classes: int = 20
    num_signers: int = 24
    clips_per_signer_per_class: int = 4
    seed: int = 0
    difficulty: float = 1.0  # 0: noiseless, identical signers; 1: default; >1: harder

    def __post_init__(self):
        for name in ("num_classes", "num_signers", "clips_per_signer_per_class", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise DataError(f"synthetic spec: {name} must be an integer, got {value!r}")
        if not 1 <= self.num_classes <= len(_catalogue()):
            raise DataError(
                f"synthetic spec: num_classes must be 1..{len(_catalogue())}, got {self.num_classes}"
            )
        if self.num_signers < 1 or self.clips_per_signer_per_class < 1:
            raise DataError("synthetic spec: num_signers and clips_per_signer_per_class must be >= 1")
        if self.seed not in SEED:
            raise DataError(f"synthetic spec: seed must be {SEED.what}, got {self.seed}")
        total = self.num_classes * self.num_signers * self.clips_per_signer_per_class
        if total > SYNTHETIC_CLIPS.hi:
            raise DataError(f"synthetic spec: classes x signers x clips = {total} clips, more than "
                            f"{SYNTHETIC_CLIPS.hi} (memory); use fewer signers or clips")
        if isinstance(self.difficulty, bool) or not isinstance(self.difficulty, (int, float, np.number)):
            raise DataError(f"synthetic spec: difficulty must be a number, got {self.difficulty!r}")
        if not (np.isfinite(self.difficulty) and 0 <= self.difficulty <= 10):
            raise DataError(f"synthetic spec: difficulty must be in 0..10, got {self.difficulty!r}")

    def to_dict(self) -> dict:
        d = {k: int(v) for k, v in asdict(self).items() if k != "difficulty"}
        return {**d, "difficulty": float(self.difficulty)}

    def fingerprint(self) -> str:
        """Stable id of the data this spec generates (changes with the generator version)."""
        blob = json.dumps({"generator": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return "synthetic-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


# The class catalogue --------------------------------------------------------------------------------
# Body units: origin at the shoulder midpoint, 1 = shoulder width, y down, z towards the camera is
# negative (MediaPipe's convention). Built for a right-handed signer, whose dominant (right) hand is on
# the image's left (-x); "towards the midline" is +x for that hand.
HANDS = ("one-handed", "two-handed", "alternating")
MOVEMENTS = ("circle", "vertical", "sweep", "arc", "tap", "wave", "twist")
LOCATIONS = {
    "chin": (-0.05, -0.62, -0.30),
    "forehead": (-0.05, -1.12, -0.25),
    "chest": (-0.15, 0.45, -0.30),
    "shoulder": (0.40, 0.08, -0.25),  # the opposite shoulder
    "neutral": (-0.30, 0.75, -0.60),
}
# Handshapes: curl of thumb, index, middle, ring, pinky (0 straight .. 1 folded), thumb abduction, spread.
HANDSHAPES = {
    "flat": ((0.10, 0.0, 0.0, 0.0, 0.0), 0.15, 0.10),
    "fist": ((0.60, 1.0, 1.0, 1.0, 1.0), 0.20, 0.00),
    "point": ((0.70, 0.0, 1.0, 1.0, 1.0), 0.20, 0.10),
    "v": ((0.70, 0.0, 0.0, 1.0, 1.0), 0.20, 0.90),
    "y": ((0.00, 1.0, 1.0, 1.0, 0.0), 1.00, 0.50),
    "claw": ((0.40, 0.55, 0.55, 0.55, 0.55), 0.60, 0.70),
    "o": ((0.50, 0.65, 0.65, 0.65, 0.65), 0.50, 0.10),
    "l": ((0.00, 0.0, 1.0, 1.0, 1.0), 1.00, 0.10),
}
REPETITIONS = (1, 2, 3)
_CATALOGUE_SEED = 20240611  # fixed: the catalogue is the same for every data-set seed


@dataclass(frozen=True)
class SignClass:
    """One sign of the catalogue; the continuous parameters give each class its own manner."""

    hands: str
    movement: str
    location: str
    handshape: str
    reps: int
    amplitude: float  # size of the movement
    roll: float  # in-plane hand rotation, radians (0: fingers up)
    yaw: float  # palm turned away from the camera, radians
    place: tuple[float, float, float]  # small class-specific shift of the location, body units

    def slug(self, index: int, width: int = 2) -> str:
        return f"sign-{index:0{width}d}-{self.hands}-{self.movement}-{self.location}-{self.handshape}-x{self.reps}"


_CATALOGUE: list[SignClass] = []


def _catalogue() -> list[SignClass]:
    """All distinct signs, ordered so that any prefix is as varied as possible (greedy: each next class
    differs from every earlier one in as many of the five factors as still possible)."""
    if _CATALOGUE:
        return _CATALOGUE
    rng = np.random.default_rng(_CATALOGUE_SEED)
    factors = (HANDS, MOVEMENTS, tuple(LOCATIONS), tuple(HANDSHAPES), REPETITIONS)
    combos = np.array(list(itertools.product(*(range(len(f)) for f in factors))))
    combos = combos[rng.permutation(len(combos))]
    # Greedy in permutation order; min_dist[i] = how many factors combo i differs in from its closest
    # chosen class. Skipped combos only get closer to the chosen set, so one forward search per pick
    # gives the same result as scanning the list round after round.
    min_dist = np.full(len(combos), len(factors) + 1)
    taken = np.zeros(len(combos), bool)
    order: list[int] = []
    for need in (4, 3, 2):
        while True:
            free = np.flatnonzero(~taken & (min_dist >= need))
            if not len(free):
                break
            i = free[0]
            taken[i] = True
            order.append(i)
            min_dist = np.minimum(min_dist, (combos != combos[i]).sum(axis=1))
    order += list(np.flatnonzero(~taken))  # every other combo differs in at least one factor
    chosen = [tuple(f[j] for f, j in zip(factors, combos[i])) for i in order]
    for hands, movement, location, shape, reps in chosen:
        _CATALOGUE.append(
            SignClass(
                hands, movement, location, shape, reps,
                amplitude=float(rng.uniform(0.8, 1.25)),
                roll=float(rng.choice([0.0, 0.5, -0.35, 1.2])),
                yaw=float(rng.uniform(0.0, 1.0)),
                place=tuple(float(v) for v in rng.normal(0.0, 0.06, 3)),  # type: ignore[arg-type]  # 3 values
            )
        )
    return _CATALOGUE


def class_catalogue(num_classes: int) -> list[SignClass]:
    """The first ``num_classes`` signs of the catalogue."""
    return _catalogue()[:num_classes]


# Body and hand templates ----------------------------------------------------------------------------
def _pose_template() -> np.ndarray:
    """33 MediaPipe pose points in body units (subject's left = +x)."""
    p = np.zeros((NUM_POSE_POINTS, 3))
    p[0] = (0.0, -0.90, -0.35)  # nose
    for side, s in ((1, 1.0), (4, -1.0)):  # eyes inner/centre/outer: left 1-3, right 4-6
        p[side : side + 3] = [(s * 0.07, -1.02, -0.30), (s * 0.13, -1.03, -0.30), (s * 0.19, -1.02, -0.28)]
    p[7], p[8] = (0.30, -0.98, -0.10), (-0.30, -0.98, -0.10)  # ears
    p[9], p[10] = (0.07, -0.76, -0.30), (-0.07, -0.76, -0.30)  # mouth
    p[11], p[12] = (0.50, 0.0, 0.0), (-0.50, 0.0, 0.0)  # shoulders
    p[23], p[24] = (0.30, 1.55, 0.0), (-0.30, 1.55, 0.0)  # hips
    p[25], p[26] = (0.30, 2.45, -0.05), (-0.30, 2.45, -0.05)  # knees
    p[27], p[28] = (0.30, 3.30, 0.05), (-0.30, 3.30, 0.05)  # ankles
    p[29], p[30] = (0.30, 3.40, 0.12), (-0.30, 3.40, 0.12)  # heels
    p[31], p[32] = (0.32, 3.45, -0.15), (-0.32, 3.45, -0.15)  # toes
    return p  # arms (13-22) are filled per frame


_POSE = _pose_template()
_MIRROR_POSE = np.array([0, 4, 5, 6, 1, 2, 3, 8, 7, 10, 9] + [j for i in range(11, 33, 2) for j in (i + 1, i)])
_ARM = 0.72  # upper arm and forearm length, body units
_HAND_LENGTH = 0.48  # wrist to middle fingertip, body units
_REST = np.array([-0.38, 1.38, -0.12])  # dominant hand hanging by the hip

# Hand geometry in hand units (wrist -> middle tip ~ 1): x towards the thumb, y along the fingers,
# z towards the palm side (fingers curl into +z).
_FINGER_BASE = np.array([[0.12, 0.12, 0.02], [0.10, 0.45, 0], [0.0, 0.47, 0], [-0.09, 0.44, 0], [-0.17, 0.38, 0]])
_FINGER_SEGMENTS = np.array(
    [[0.20, 0.14, 0.11], [0.22, 0.13, 0.10], [0.24, 0.15, 0.11], [0.22, 0.14, 0.10], [0.17, 0.10, 0.09]]
)
_JOINT_GAIN = np.array([[0.5, 0.7, 0.8], [1.4, 1.7, 1.2], [1.4, 1.7, 1.2], [1.4, 1.7, 1.2], [1.4, 1.7, 1.2]])
_SPLAY = np.array([0.0, 0.12, 0.0, -0.10, -0.22])  # per finger, radians towards the thumb, times (0.5 + spread)
_RELAXED = (np.array([0.3, 0.35, 0.4, 0.45, 0.5]), 0.3, 0.2)


def _hand_points(curl: np.ndarray, abduction: float, spread: float) -> np.ndarray:
    """Hand-local 21 points [T, 21, 3] from per-frame finger curls [T, 5] (thumb first)."""
    ang = _SPLAY * (0.5 + spread)
    base_dir = np.stack([np.sin(ang), np.cos(ang), np.zeros(5)], axis=-1)
    bend_dir = np.tile([0.0, 0.0, 1.0], (5, 1))
    # The thumb swings out from the palm with abduction and curls across it.
    beta = 0.45 + 0.9 * abduction
    base_dir[0] = (np.sin(beta), np.cos(beta), 0.35 * (1.0 - abduction))
    base_dir[0] /= np.linalg.norm(base_dir[0])
    bend_dir[0] = np.array([-np.cos(beta), np.sin(beta), 1.0]) / np.sqrt(2.0)
    phi = np.cumsum(curl[:, :, None] * _JOINT_GAIN[None], axis=-1)  # [T, 5, 3] cumulative joint angles
    seg = _FINGER_SEGMENTS[None, :, :, None] * (
        np.cos(phi)[..., None] * base_dir[None, :, None, :] + np.sin(phi)[..., None] * bend_dir[None, :, None, :]
    )  # [T, 5, 3 segments, 3]
    joints = _FINGER_BASE[None, :, None, :] + np.cumsum(seg, axis=2)
    fingers = np.concatenate([np.broadcast_to(_FINGER_BASE[None, :, None, :], (len(curl), 5, 1, 3)), joints], axis=2)
    out = np.zeros((len(curl), NUM_HAND_POINTS, 3))
    out[:, 1:] = fingers.reshape(len(curl), 20, 3)
    return out


def _rotation(roll: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Hand-local -> body axes [T, 3, 3]: fingers up, palm to the camera, then yaw about y, roll in-plane."""
    base = np.diag([1.0, -1.0, -1.0])  # local y (fingers) -> up (-y), palm side (+z) -> camera (-z)
    yaw = np.broadcast_to(yaw, roll.shape)
    cy, sy = np.cos(yaw), np.sin(yaw)
    ry = np.zeros((len(roll), 3, 3))
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 1, 1], ry[:, 2, 0], ry[:, 2, 2] = cy, sy, 1.0, -sy, cy
    c, s = np.cos(roll), np.sin(roll)
    rz = np.zeros((len(roll), 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c, s, -s, c, 1.0
    return rz @ ry @ base


_REST_ROLL = np.pi - 0.3  # fingers hanging down


@functools.cache
def _resting_hand() -> np.ndarray:
    """A relaxed right hand hanging down, body axes, hand units [21, 3]."""
    pts = _hand_points(_RELAXED[0][None], _RELAXED[1], _RELAXED[2])
    rot = _rotation(np.array([_REST_ROLL]), np.zeros(1))[0]
    return pts[0] @ rot.T


def _movement(kind: str, phase: np.ndarray, amp: float) -> tuple[np.ndarray, np.ndarray]:
    """Wrist offset [T, 3] (body units) and extra roll [T] along ``phase`` (cycles, 0..reps)."""
    c = 2.0 * np.pi * phase
    zero = np.zeros_like(phase)
    roll = zero
    if kind == "circle":
        off = np.stack([0.22 * amp * np.sin(c), -0.22 * amp * (1.0 - np.cos(c)) + 0.11 * amp, zero], -1)
    elif kind == "vertical":
        off = np.stack([zero, 0.40 * amp * (0.5 - 0.5 * np.cos(c)), zero], -1)
    elif kind == "sweep":
        off = np.stack([0.50 * amp * (0.5 - 0.5 * np.cos(c)), zero, zero], -1)
    elif kind == "arc":
        theta = np.pi * (0.5 - 0.5 * np.cos(c))
        off = np.stack([0.25 * amp * (1.0 - np.cos(theta)), -0.25 * amp * np.sin(theta), zero], -1)
    elif kind == "tap":
        lift = amp * np.abs(np.sin(np.pi * phase))
        off = lift[:, None] * np.array([0.05, -0.22, -0.30])
    elif kind == "wave":
        off = np.stack([0.16 * amp * np.sin(2.0 * c), zero, zero], -1)
        roll = 0.45 * np.sin(2.0 * c)
    elif kind == "twist":
        off = np.stack([zero, zero, -0.05 * amp * np.sin(c)], -1)
        roll = 1.1 * amp * np.sin(c)
    else:  # pragma: no cover - the catalogue only holds the kinds above
        raise ValueError(kind)
    return off, roll


def _smooth(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _elbow(shoulder: np.ndarray, wrist: np.ndarray, outward: float) -> np.ndarray:
    """Two-bone IK in the image plane: the elbow sits outward and down of the shoulder-wrist line."""
    d = wrist - shoulder
    dist = np.maximum(np.linalg.norm(d[:, :2], axis=-1), 1e-6)
    reach = np.minimum(dist, 1.96 * _ARM)
    h = np.sqrt(np.maximum(_ARM**2 - (reach / 2.0) ** 2, 0.0))
    perp = np.stack([d[:, 1], -d[:, 0]], axis=-1) / dist[:, None]
    sign = np.where(perp @ np.array([outward, 1.0]) >= 0, 1.0, -1.0)
    elbow = shoulder.copy()
    elbow[:, :2] = shoulder[:, :2] + d[:, :2] * (reach / dist / 2.0)[:, None] + sign[:, None] * perp * h[:, None]
    elbow[:, 2] = 0.5 * (shoulder[:, 2] + wrist[:, 2])
    return elbow


# One clip -------------------------------------------------------------------------------------------
@dataclass
class _Signer:
    name: str
    left_handed: bool
    width: float  # shoulder width in image units
    centre: np.ndarray  # shoulder midpoint in image units
    speed: float
    amplitude: float
    place: np.ndarray  # personal shift of every location, body units
    curl_bias: np.ndarray  # personal handshape tendency [5]
    hand_size: float
    tremor: float


def _make_signer(seed: int, index: int, difficulty: float) -> _Signer:
    rng = np.random.default_rng([seed, 1, index])
    d = difficulty
    return _Signer(
        name=f"signer-{index:02d}",
        left_handed=bool(rng.random() < 0.15),
        width=float(0.24 * np.exp(rng.normal(0.0, 0.12 * d))),
        centre=np.array([0.5 + rng.normal(0.0, 0.04 * d), 0.42 + rng.normal(0.0, 0.04 * d), 0.0]),
        speed=float(np.exp(rng.normal(0.0, 0.2 * d))),
        amplitude=float(np.exp(rng.normal(0.0, 0.15 * d))),
        place=rng.normal(0.0, 0.12 * d, 3),
        curl_bias=rng.normal(0.0, 0.12 * d, 5),
        hand_size=float(np.exp(rng.normal(0.0, 0.07 * d))),
        tremor=float(0.5 + rng.random()),
    )


def _make_clip(sign: SignClass, signer: _Signer, rng: np.random.Generator, difficulty: float,
               contrast: float) -> np.ndarray:
    """Render one clip as raw [F, 225] float32."""
    d = difficulty
    speed = signer.speed * float(np.exp(rng.normal(0.0, 0.1 * d)))
    cycle = 12.0 if sign.movement == "tap" else 18.0
    n_in, n_out = 9.0 / speed, 9.0 / speed
    n_move = sign.reps * cycle / speed
    pre, post = rng.integers(0, 10), rng.integers(0, 10)
    frames = int(np.clip(round(pre + n_in + n_move + n_out + post), 15, 180))
    a1 = pre + n_in
    a2 = a1 + n_move
    # Frames -> timeline; stretched or squeezed where the 15..180 frame limits applied.
    t = np.arange(frames, dtype=np.float64) * (a2 + n_out + post) / frames

    # Where the sign happens: class place pulled towards the average place by (1 - contrast).
    loc_mean = np.mean(list(LOCATIONS.values()), axis=0)
    loc = loc_mean + contrast * (np.asarray(LOCATIONS[sign.location]) - loc_mean)
    loc = loc + np.asarray(sign.place) + signer.place + rng.normal(0.0, 0.03 * d, 3)
    amp = sign.amplitude * signer.amplitude * float(np.exp(rng.normal(0.0, 0.08 * d)))
    amp = 1.0 + contrast * (amp - 1.0)

    phase = np.clip((t - a1) / max(n_move, 1e-6), 0.0, 1.0) * sign.reps
    two = sign.hands != "one-handed"
    if two:
        loc = loc + np.array([-0.22, 0.0, 0.0])  # leave room for the other hand
    off, roll_move = _movement(sign.movement, phase, amp)
    enter = _smooth((t - pre) / n_in)[:, None]
    leave = _smooth((t - a2) / n_out)[:, None]
    active = loc + off
    dominant = _REST + (active - _REST) * enter
    dominant = dominant + (_REST - active) * leave  # back towards rest at the end
    weight = (enter * (1.0 - leave))[:, 0]  # 0 at rest, 1 while signing

    # The non-dominant hand: mirrored (two-handed), half a cycle behind (alternating), or resting.
    rest_nd = _REST * np.array([-1.0, 1.0, 1.0])
    if two:
        nd_phase = phase if sign.hands == "two-handed" else np.clip(phase + 0.5 * (phase > 0), 0, sign.reps)
        nd_off, _ = _movement(sign.movement, nd_phase, amp)
        nd_active = (loc + nd_off) * np.array([-1.0, 1.0, 1.0])
        nondominant = rest_nd + (nd_active - rest_nd) * weight[:, None]
    else:
        nondominant = np.broadcast_to(rest_nd, (frames, 3)).copy()

    # Handshape: relaxed at rest, the class shape while signing.
    shape_curls, abduction, spread = HANDSHAPES[sign.handshape]
    curls = 0.5 + contrast * (np.asarray(shape_curls) - 0.5)
    curls = np.clip(curls + signer.curl_bias + rng.normal(0.0, 0.04 * d, 5), 0.0, 1.0)
    relaxed = _RELAXED[0]
    curl_t = relaxed + (curls - relaxed) * weight[:, None]
    hand_local = _hand_points(curl_t, abduction, spread) * (_HAND_LENGTH * signer.hand_size)
    rest_roll = _REST_ROLL
    roll = rest_roll + (sign.roll + roll_move - rest_roll) * weight
    rot = _rotation(roll, sign.yaw * weight)
    right_hand = np.einsum("tij,tpj->tpi", rot, hand_local)  # dominant, offsets from the wrist
    left_hand = right_hand * np.array([-1.0, 1.0, 1.0])  # mirror image for the other hand
    if not two:  # the other hand hangs relaxed
        left_hand = _resting_hand() * (_HAND_LENGTH * signer.hand_size * np.array([-1.0, 1.0, 1.0]))

    # Natural drift: a slow sway of the body and tremor of the hands.
    sway = rng.normal(0.0, 0.02 * d, 3) * np.sin(2 * np.pi * t / max(frames, 1) + rng.uniform(0, 6.3))[:, None]
    tremor = 0.01 * d * signer.tremor * np.sin(t[:, None] * rng.uniform(0.8, 1.6, 3) + rng.uniform(0, 6.3, 3))
    dominant = dominant + tremor
    nondominant = nondominant + 0.7 * tremor[:, ::-1]  # the other hand: weaker, out of step

    pose = np.broadcast_to(_POSE, (frames, NUM_POSE_POINTS, 3)).copy()
    pose[:, 15], pose[:, 16] = nondominant, dominant  # subject's left / right wrist
    pose[:, 13] = _elbow(pose[:, 11], nondominant, 1.0)
    pose[:, 14] = _elbow(pose[:, 12], dominant, -1.0)
    wl, wr = nondominant[:, None, :] + left_hand, dominant[:, None, :] + right_hand
    pose[:, [17, 19, 21]] = wl[:, [17, 5, 4]]  # pinky, index, thumb as pose sees them
    pose[:, [18, 20, 22]] = wr[:, [17, 5, 4]]
    pose = pose + sway[:, None, :]
    wl, wr = wl + sway[:, None, :], wr + sway[:, None, :]

    # Body units -> normalized image coordinates; MediaPipe hand z is relative to the wrist.
    def to_image(p: np.ndarray, wrist_z: np.ndarray | None = None) -> np.ndarray:
        img = p * signer.width + signer.centre
        if wrist_z is not None:
            img[..., 2] = (p[..., 2] - wrist_z[:, None]) * signer.width
        return img

    out_pose = to_image(pose)
    out_left = to_image(wl, wl[:, 0, 2])
    out_right = to_image(wr, wr[:, 0, 2])
    jitter = 0.004 * d
    if jitter > 0:
        out_pose += rng.normal(0.0, jitter, out_pose.shape)
        out_left += rng.normal(0.0, 0.6 * jitter, out_left.shape)
        out_right += rng.normal(0.0, 0.6 * jitter, out_right.shape)

    # Lost detections: the resting hand is often not found; hands drop out for single frames and runs.
    lost_left = np.zeros(frames, bool)
    lost_right = np.zeros(frames, bool)
    if not two and rng.random() < 0.5:
        lost_left[:] = True
    if d > 0:
        lost_left |= rng.random(frames) < 0.02 * d
        lost_right |= rng.random(frames) < 0.02 * d
        if rng.random() < min(0.3 * d, 0.9):
            length = int(rng.integers(1, max(2, frames // 6)))
            start = int(rng.integers(0, frames - length + 1))
            (lost_right if rng.random() < 0.5 else lost_left)[start : start + length] = True
        at_rest = weight < 0.05  # a hand down by the hip is often not tracked
        lost_right |= at_rest & (rng.random(frames) < 0.5 * min(d, 1.0))
    lost_all = (rng.random(frames) < 0.01 * d) if d > 0 else np.zeros(frames, bool)

    if signer.left_handed:  # mirror the picture about the body: left and right swap roles (hand z is
        # relative to the wrist, so only x changes)
        out_pose = out_pose[:, _MIRROR_POSE]
        out_pose[..., 0] = 2 * signer.centre[0] - out_pose[..., 0]
        out_left, out_right = out_right.copy(), out_left.copy()
        out_left[..., 0] = 2 * signer.centre[0] - out_left[..., 0]
        out_right[..., 0] = 2 * signer.centre[0] - out_right[..., 0]
        lost_left, lost_right = lost_right, lost_left

    raw = np.concatenate(
        [out_left.reshape(frames, -1), out_right.reshape(frames, -1), out_pose.reshape(frames, -1)], axis=1
    )
    raw[lost_left | lost_all, 0:63] = 0.0
    raw[lost_right | lost_all, 63:126] = 0.0
    raw[lost_all, 126:] = 0.0
    assert raw.shape[1] == RAW_DIM
    return raw.astype(np.float32)


def generate(spec: SyntheticSpec | None = None) -> tuple[list[Clip], list[str]]:
    """All clips of ``spec`` (ordered by signer, class, index) and the class names."""
    spec = spec or SyntheticSpec()
    signs = class_catalogue(spec.num_classes)
    width = max(2, len(str(spec.num_classes - 1)))
    names = [s.slug(i, width) for i, s in enumerate(signs)]
    contrast = 1.0 / (1.0 + 0.5 * spec.difficulty)
    clips = []
    for s in range(spec.num_signers):
        signer = _make_signer(spec.seed, s, spec.difficulty)
        for c, sign in enumerate(signs):
            for k in range(spec.clips_per_signer_per_class):
                rng = np.random.default_rng([spec.seed, 2, s, c, k])
                raw = _make_clip(sign, signer, rng, spec.difficulty, contrast)
                clips.append(Clip(raw=raw, label=c, signer=signer.name, name=f"{signer.name}-c{c:0{width}d}-{k}"))
    return clips, names
