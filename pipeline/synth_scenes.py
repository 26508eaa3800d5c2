"""The synthetic scenes' plan: which shapes a video holds (size x colour x shape), what each does (moving
left/right/up/down, jumping, standing still, rotating), their paths and drawing order, and which frames are
annotated. Deterministic for a seed. `losh.pipeline.synth` puts a plan together with its language and pictures."""
from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np

# Saturated colours on a grey background, so that appearance is learnable from a few pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# Diameter of the shape's bounding circle as a fraction of the frame's short side.
SIZES: dict[str, tuple[float, float]] = {"big": (0.30, 0.38), "small": (0.15, 0.20)}
ACTIONS = ("left", "right", "up", "down", "jump", "still", "rotate")
ROTATABLE_SHAPES = ("circle", "triangle")  # a rotating square would pass for a diamond
# Texture: colour x (SHADE_BASE + SHADE_STRIPE * stripe + SHADE_NOISE * noise), stripe in [0, 1].
SHADE_BASE, SHADE_STRIPE, SHADE_NOISE = 0.7, 0.3, 0.06
MEAN_SHADE = SHADE_BASE + SHADE_STRIPE / 2

# A2D label = actor * 10 + action (actors 1..7: adult baby ball bird car cat dog; actions 1..9:
# climbing crawling eating flying jumping rolling running walking none).
A2D_ACTOR = {"circle": 3, "triangle": 4, "square": 5, "diamond": 6}
A2D_ACTION = {"left": 8, "right": 8, "up": 1, "down": 2, "jump": 5, "still": 9, "rotate": 6}


# Radius of the largest circle inside each shape, as a fraction of its bounding radius.
INSCRIBED = {"circle": 1.0, "square": 0.8, "diamond": math.sqrt(0.5), "triangle": 0.5}
ID_ALPHABET = string.ascii_letters + string.digits + "-_"


@dataclass(eq=False)  # compared by identity (it holds arrays)
class Instance:
    instance_id: int
    size: str
    colour: str
    shape: str
    action: str
    radius: float  # of the bounding circle, pixels
    xs: np.ndarray  # (T,) centre per frame
    ys: np.ndarray
    angles: np.ndarray  # (T,) radians
    stripe_period: float
    stripe_angle: float
    noise: np.ndarray  # (P, P) texture noise in the object's own coordinates

    @property
    def appearance(self) -> tuple[str, str, str]:
        return self.size, self.colour, self.shape


@dataclass
class Video:
    video_id: str
    subset: int
    instances: list[Instance]
    z_order: list[int]  # indices into instances, back to front
    background: np.ndarray  # (H, W, 3) float32 RGB
    annotated: list[int]  # 1-based frame numbers
    expressions: list[tuple[int, str, str]]  # (instance_id, query, short_query)

    @property
    def label(self) -> int:
        first = self.instances[0]
        return A2D_ACTOR[first.shape] * 10 + A2D_ACTION[first.action]


def video_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        vid = "".join(ID_ALPHABET[i] for i in rng.integers(0, len(ID_ALPHABET), 11))
        if vid.lower() not in seen:  # unique also on case-insensitive file systems
            seen.add(vid.lower())
            ids.append(vid)
    return ids


def _appearances(rng: np.random.Generator, count: int, twins: bool) -> list[tuple[str, str, str]]:
    """Distinct (size, colour, shape) triples; with `twins` the first two are equal."""
    sizes, colours = list(SIZES), list(COLOURS)
    unique = count - 1 if twins else count
    chosen: list[tuple[str, str, str]] = []
    while len(chosen) < unique:
        if chosen and rng.random() < 0.5:
            # a sibling differing in one attribute: the model must read every word
            base = list(chosen[rng.integers(len(chosen))])
            slot = int(rng.integers(3))
            base[slot] = str(rng.choice([sizes, colours, list(SHAPES)][slot]))
            candidate = (base[0], base[1], base[2])
        else:
            candidate = (str(rng.choice(sizes)), str(rng.choice(colours)), str(rng.choice(SHAPES)))
        if candidate not in chosen:
            chosen.append(candidate)
    if twins:
        chosen.insert(0, chosen[0])
    return chosen


def _actions(rng: np.random.Generator, appearances: list[tuple[str, str, str]], twins: bool,
             crossing: bool) -> list[str]:
    """One action per instance such that some action is shared by instances of different
    appearances, twins act differently and, for a crossing video, something moves sideways and
    something stays in place."""
    for _ in range(10_000):
        actions = [str(rng.choice([a for a in ACTIONS if a != "rotate" or shape in ROTATABLE_SHAPES]))
                   for _, _, shape in appearances]
        pairs = [(i, j) for i in range(len(actions)) for j in range(i + 1, len(actions))]
        shared_action = any(actions[i] == actions[j] and appearances[i] != appearances[j]
                            for i, j in pairs)
        twins_ok = not twins or actions[0] != actions[1]
        crossing_ok = not crossing or (any(a in ("left", "right") for a in actions)
                                       and any(a in ("still", "rotate") for a in actions))
        if shared_action and twins_ok and crossing_ok:
            return actions
    raise RuntimeError("could not sample actions")  # unreachable for >= 3 instances


def _trajectory(rng: np.random.Generator, action: str, radius: float, height: int, width: int,
                frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres and angles per frame; the bounding circle stays inside the frame."""
    t = np.arange(frames, dtype=np.float64)
    x_lo, x_hi = radius + 1.0, width - radius - 1.0
    y_lo, y_hi = radius + 1.0, height - radius - 1.0

    def uniform(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi)) if hi > lo else (lo + hi) / 2

    x, y = uniform(x_lo, x_hi), uniform(y_lo, y_hi)
    xs, ys, angles = np.full(frames, x), np.full(frames, y), np.zeros(frames)
    speed = rng.uniform(0.015, 0.025) * min(height, width)  # pixels per frame
    if action in ("left", "right", "up", "down"):
        lo, hi = (x_lo, x_hi) if action in ("left", "right") else (y_lo, y_hi)
        step = min(speed, 0.9 * (hi - lo) / max(frames - 1, 1))
        travel = step * (frames - 1)
        start = uniform(lo, hi - travel)
        path = start + step * t if action in ("right", "down") else start + travel - step * t
        if action in ("left", "right"):
            xs = path
        else:
            ys = path
    elif action == "jump":
        amplitude = min(rng.uniform(0.15, 0.25) * height, 0.9 * (y_hi - y_lo))
        base = uniform(y_lo + amplitude, y_hi)
        period = float(rng.integers(8, 13))
        phase = rng.uniform(0, period)
        ys = base - amplitude * np.abs(np.sin(np.pi * (t + phase) / period))
    elif action == "rotate":
        omega = math.radians(rng.uniform(6, 12)) * rng.choice([-1, 1])
        angles = rng.uniform(0, 2 * np.pi) + omega * t
    return xs, ys, angles


def _overlap(a: tuple[np.ndarray, np.ndarray, float], b: tuple[np.ndarray, np.ndarray, float]) -> float:
    xs_a, ys_a, r_a = a
    xs_b, ys_b, r_b = b
    distance = np.hypot(xs_a - xs_b, ys_a - ys_b)
    return float(np.maximum(0.0, r_a + r_b - distance).sum())


def annotated_frames(rng: np.random.Generator, frames: int, count: int, edge: str | None) -> list[int]:
    """`count` 1-based frames spread over the video, away from its ends (so that the windows are
    mostly full), except the first (edge "start" -> frame 2) or last one (edge "end")."""
    lo, hi = annotation_range(frames)
    # one frame per equal stretch of [lo, hi], near the stretch's middle
    stretch = (hi - lo + 1) / count
    chosen = [int(np.clip(math.floor(lo + stretch * (i + 0.5 + rng.uniform(-0.25, 0.25))), lo, hi))
              for i in range(count)]
    if edge == "start":
        chosen[0] = 2
    elif edge == "end":
        chosen[-1] = frames - 1
    return sorted(set(chosen))


def annotation_range(frames: int) -> tuple[int, int]:
    lo = max(2, min(5, frames // 4))
    return lo, max(lo, frames - max(2, min(4, frames // 5)))


def make_instances(rng: np.random.Generator, count: int, twins: bool, crossing: bool,
                    annotated: list[int], height: int, width: int,
                    frames: int) -> tuple[list[Instance], list[int]]:
    """The instances (ids 0..count-1) and their drawing order, back to front."""
    appearances = _appearances(rng, count, twins)
    actions = _actions(rng, appearances, twins, crossing)
    short_side = min(height, width)
    placed: list[tuple[np.ndarray, np.ndarray, float]] = []
    instances: list[Instance] = []
    for (size, colour, shape), action in zip(appearances, actions):
        radius = rng.uniform(*SIZES[size]) * short_side / 2
        # a few candidate paths; keep the one overlapping least the already placed objects
        candidates = [_trajectory(rng, action, radius, height, width, frames) for _ in range(6)]
        xs, ys, angles = min(candidates, key=lambda c: sum(_overlap((c[0], c[1], radius), p) for p in placed))
        placed.append((xs, ys, radius))
        side = int(math.ceil(2 * radius)) + 3
        instances.append(Instance(
            instance_id=-1, size=size, colour=colour, shape=shape, action=action, radius=radius,
            xs=xs, ys=ys, angles=angles, stripe_period=float(rng.uniform(0.25, 0.45) * radius + 2.0),
            stripe_angle=float(rng.uniform(0, np.pi)), noise=rng.normal(0, 1, (side, side))))
    z_order = [int(i) for i in rng.permutation(count)]  # back to front
    if crossing:
        # put a static object on the path of a sideways mover at an annotated frame: occlusion
        movers = [i for i in instances if i.action in ("left", "right")]
        statics = [i for i in instances if i.action in ("still", "rotate")]
        # mostly a small object right behind a big one when there is such a pair: fully hidden then
        hideable = [(m, s) for m in movers for s in statics if s.radius <= INSCRIBED[m.shape] * m.radius]
        hide = bool(hideable) and rng.random() < 0.6
        if hide:
            mover, static = hideable[rng.integers(len(hideable))]
        else:
            mover, static = movers[rng.integers(len(movers))], statics[rng.integers(len(statics))]
        t = int(rng.choice(annotated)) - 1
        reach = 0.35 * (mover.radius + static.radius)
        if hide:
            reach = 0.0
            z_order.remove(instances.index(mover))
            z_order.append(instances.index(mover))
        r = static.radius + 1.0
        static.xs = np.full(frames, np.clip(mover.xs[t] + rng.uniform(-reach, reach), r, width - r))
        static.ys = np.full(frames, np.clip(mover.ys[t] + rng.uniform(-reach, reach), r, height - r))
    order = [int(i) for i in rng.permutation(count)]  # instance ids do not reveal which are twins
    instances = [instances[i] for i in order]
    for instance_id, instance in enumerate(instances):
        instance.instance_id = instance_id
    return instances, [order.index(i) for i in z_order]
