"""Deterministic synthetic RVOS data set in the A2D-Sentences on-disk layout (`losh synth`).

Each video shows 2-4 textured shapes (size x colour x shape) on a textured background; each shape
performs one action (moving left/right/up/down, jumping, standing still, rotating). Every instance
gets a long expression (appearance + action, sometimes + location or relation) and a short one (its
subject phrase, written as `short_query`, the "manual" short expression). By design the action
alone never identifies an instance (another instance of a different appearance shares it), and in
about a third of the videos two instances look alike: they share the short expression (whose ground
truth is then the merged mask) while their long expressions differ by the action.

The layout is the one `SPEC.md` describes ("A2D-Sentences on disk") and MTTR's reader expects:
masks stored transposed in the h5 files, 1-based frame numbers, one malformed "1 (copy)" row and one
missed video without annotations, as in the real set.
"""

from __future__ import annotations

import csv
import io
import math
import os
import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

FPS = 24
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
MALFORMED_INSTANCE_ID = "1 (copy)"

# A2D label = actor * 10 + action (actors 1..7: adult baby ball bird car cat dog; actions 1..9:
# climbing crawling eating flying jumping rolling running walking none).
_A2D_ACTOR = {"circle": 3, "triangle": 4, "square": 5, "diamond": 6}
_A2D_ACTION = {"left": 8, "right": 8, "up": 1, "down": 2, "jump": 5, "still": 9, "rotate": 6}

# (progressive forms, third-person forms). No word may contain "left" or "right" as a substring
# except the direction itself ("bright", "upright"...): the flip augmentation swaps them textually.
_ACTION_TEXT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "left": (("moving to the left", "moving left", "going to the left", "sliding to the left"),
             ("moves to the left", "slides to the left", "goes left")),
    "right": (("moving to the right", "moving right", "going to the right", "sliding to the right"),
              ("moves to the right", "slides to the right", "goes right")),
    "up": (("moving up", "going up", "rising", "floating upwards"), ("moves up", "rises", "goes up")),
    "down": (("moving down", "going down", "sinking", "falling slowly"),
             ("moves down", "sinks", "goes down")),
    "jump": (("jumping", "jumping up and down", "bouncing", "hopping"),
             ("jumps", "bounces up and down", "hops")),
    # no negation: "is not moving to the right of the blue circle" would read as a direction
    "still": (("standing still", "staying still", "staying in place", "resting"),
              ("stands still", "stays still", "stays in place")),
    "rotate": (("rotating", "spinning", "turning around"), ("rotates", "spins", "turns around")),
}
_PLAIN_TEMPLATES = ("{s} is {ing}", "{s} {ing}", "{s} that is {ing}", "{s} {pres}")
_WHERE_TEMPLATES = ("{s} is {ing} {where}", "{s} that is {ing} {where}", "{s} {ing} {where}")
_RELATION_TEMPLATES = ("{s} {ing} {rel}", "{s} is {ing} {rel}", "{s} {pres} {rel}")
# Radius of the largest circle inside each shape, as a fraction of its bounding radius.
_INSCRIBED = {"circle": 1.0, "square": 0.8, "diamond": math.sqrt(0.5), "triangle": 0.5}
_ID_ALPHABET = string.ascii_letters + string.digits + "-_"


@dataclass(eq=False)  # compared by identity (it holds arrays)
class _Instance:
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
class _Video:
    video_id: str
    subset: int
    instances: list[_Instance]
    z_order: list[int]  # indices into instances, back to front
    background: np.ndarray  # (H, W, 3) float32 RGB
    annotated: list[int]  # 1-based frame numbers
    expressions: list[tuple[int, str, str]]  # (instance_id, query, short_query)

    @property
    def label(self) -> int:
        first = self.instances[0]
        return _A2D_ACTOR[first.shape] * 10 + _A2D_ACTION[first.action]


# ----------------------------------------------------------------------------------- sampling


def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        vid = "".join(_ID_ALPHABET[i] for i in rng.integers(0, len(_ID_ALPHABET), 11))
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


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey, slightly tinted low-frequency noise plus fine static texture (for the optical flow)."""
    coarse = rng.random((4, 5, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grey = smooth.mean(axis=2, keepdims=True)
    tint = smooth - grey
    fine = rng.normal(0.0, 9.0, (height, width, 1)).astype(np.float32)
    fine = cv2.GaussianBlur(fine, (3, 3), 0.7)[..., None]
    return np.clip(75.0 + 90.0 * grey + 15.0 * tint + fine, 0, 255).astype(np.float32)


def _annotated_frames(rng: np.random.Generator, frames: int, count: int, edge: str | None) -> list[int]:
    """`count` 1-based frames spread over the video, away from its ends (so that the windows are
    mostly full), except the first (edge "start" -> frame 2) or last one (edge "end")."""
    lo, hi = _annotation_range(frames)
    # one frame per equal stretch of [lo, hi], near the stretch's middle
    stretch = (hi - lo + 1) / count
    chosen = [int(np.clip(math.floor(lo + stretch * (i + 0.5 + rng.uniform(-0.25, 0.25))), lo, hi))
              for i in range(count)]
    if edge == "start":
        chosen[0] = 2
    elif edge == "end":
        chosen[-1] = frames - 1
    return sorted(set(chosen))


def _annotation_range(frames: int) -> tuple[int, int]:
    lo = max(2, min(5, frames // 4))
    return lo, max(lo, frames - max(2, min(4, frames // 5)))


def _make_instances(rng: np.random.Generator, count: int, twins: bool, crossing: bool,
                    annotated: list[int], height: int, width: int,
                    frames: int) -> tuple[list[_Instance], list[int]]:
    """The instances (ids 0..count-1) and their drawing order, back to front."""
    appearances = _appearances(rng, count, twins)
    actions = _actions(rng, appearances, twins, crossing)
    short_side = min(height, width)
    placed: list[tuple[np.ndarray, np.ndarray, float]] = []
    instances: list[_Instance] = []
    for (size, colour, shape), action in zip(appearances, actions):
        radius = rng.uniform(*SIZES[size]) * short_side / 2
        # a few candidate paths; keep the one overlapping least the already placed objects
        candidates = [_trajectory(rng, action, radius, height, width, frames) for _ in range(6)]
        xs, ys, angles = min(candidates, key=lambda c: sum(_overlap((c[0], c[1], radius), p) for p in placed))
        placed.append((xs, ys, radius))
        side = int(math.ceil(2 * radius)) + 3
        instances.append(_Instance(
            instance_id=-1, size=size, colour=colour, shape=shape, action=action, radius=radius,
            xs=xs, ys=ys, angles=angles, stripe_period=float(rng.uniform(0.25, 0.45) * radius + 2.0),
            stripe_angle=float(rng.uniform(0, np.pi)), noise=rng.normal(0, 1, (side, side))))
    z_order = [int(i) for i in rng.permutation(count)]  # back to front
    if crossing:
        # put a static object on the path of a sideways mover at an annotated frame: occlusion
        movers = [i for i in instances if i.action in ("left", "right")]
        statics = [i for i in instances if i.action in ("still", "rotate")]
        # mostly a small object right behind a big one when there is such a pair: fully hidden then
        hideable = [(m, s) for m in movers for s in statics if s.radius <= _INSCRIBED[m.shape] * m.radius]
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


# ------------------------------------------------------------------------------------ language


def _where(instance: _Instance, height: int, width: int) -> list[str]:
    xs, ys = instance.xs, instance.ys
    options = []
    if np.all(xs < 0.4 * width):
        options += ["on the left", "on the left side"]
    if np.all(xs > 0.6 * width):
        options += ["on the right", "on the right side"]
    if np.all(ys < 0.4 * height):
        options += ["at the top"]
    if np.all(ys > 0.6 * height):
        options += ["at the bottom"]
    if np.all(np.abs(xs - width / 2) < 0.12 * width) and np.all(np.abs(ys - height / 2) < 0.15 * height):
        options += ["in the middle"]
    return options


def _relations(instance: _Instance, others: list[_Instance], names: dict[int, str], width: int) -> list[str]:
    options = []
    for other in others:
        name = names[other.instance_id]
        margin = 0.5 * (instance.radius + other.radius)
        dx, dy = instance.xs - other.xs, instance.ys - other.ys
        sideways = instance.action in ("left", "right")  # "moves to the left to the right of" reads badly
        if np.all(dx < -margin) and not sideways:
            options.append(f"to the left of {name}")
        if np.all(dx > margin) and not sideways:
            options.append(f"to the right of {name}")
        if np.all(dy < -margin):
            options.append(f"above {name}")
        if np.all(dy > margin):
            options.append(f"below {name}")
        if np.hypot(dx, dy).mean() < 0.35 * width:
            options += [f"next to {name}", f"near {name}"]
    return options


def _describe(rng: np.random.Generator, instances: list[_Instance], height: int,
              width: int) -> list[tuple[int, str, str]]:
    """(instance_id, long expression, short expression) per instance. The short expression is the
    subject phrase the long one starts with; look-alike instances get the very same one."""
    appearances = [i.appearance for i in instances]
    determiners = {a: str(rng.choice(["the ", "a ", ""], p=[0.5, 0.2, 0.3])) for a in sorted(set(appearances))}
    unique = [i for i in instances if appearances.count(i.appearance) == 1]
    # how a relation names another object: colour and shape when that is enough, else all three
    names = {}
    for other in unique:
        colour_shape = [(a[1], a[2]) for a in appearances].count((other.colour, other.shape)) == 1
        names[other.instance_id] = (f"the {other.colour} {other.shape}" if colour_shape
                                    else f"the {other.size} {other.colour} {other.shape}")
    expressions = []
    for instance in instances:
        short = f"{determiners[instance.appearance]}{instance.size} {instance.colour} {instance.shape}"
        progressive, present = _ACTION_TEXT[instance.action]
        fields = {"s": short, "ing": str(rng.choice(progressive)), "pres": str(rng.choice(present))}
        relations = _relations(instance, [o for o in unique if o is not instance], names, width)
        where = _where(instance, height, width)
        if relations and rng.random() < 0.4:
            template, fields["rel"] = str(rng.choice(_RELATION_TEMPLATES)), str(rng.choice(relations))
        elif where and rng.random() < 0.5:
            template, fields["where"] = str(rng.choice(_WHERE_TEMPLATES)), str(rng.choice(where))
        else:
            template = str(rng.choice(_PLAIN_TEMPLATES))
        expressions.append((instance.instance_id, template.format(**fields), short))
    return expressions


# ----------------------------------------------------------------------------------- rendering


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Inside test in the object's own coordinates (u right, v down), bounded by `radius`."""
    if shape == "circle":
        return u * u + v * v <= radius * radius
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= radius
    if shape == "triangle":  # equilateral, vertices on the bounding circle, pointing up
        half = radius / 2
        s3 = math.sqrt(3) / 2
        return (v <= half) & (s3 * u - v / 2 <= half) & (-s3 * u - v / 2 <= half)
    raise ValueError(f"unknown shape {shape!r}")


def _render(video: _Video, t: int, height: int, width: int,
            with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray, dict[int, int]]:
    """Frame t (0-based): RGB image, label map of the visible instance ids (-1 background) and the
    unoccluded area of each instance."""
    image = video.background.copy() if with_image else None
    labels = np.full((height, width), -1, dtype=np.int16)
    full_area = {}
    for index in video.z_order:
        obj = video.instances[index]
        cx, cy, angle, r = obj.xs[t], obj.ys[t], obj.angles[t], obj.radius
        x0, x1 = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
        y0, y1 = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = xx - cx, yy - cy
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        inside = _shape_mask(obj.shape, u, v, r)
        full_area[obj.instance_id] = int(inside.sum())
        labels[y0:y1, x0:x1][inside] = obj.instance_id
        if image is not None:
            # the texture moves (and turns) with the object, so that the optical flow follows it
            phase = (u * math.cos(obj.stripe_angle) + v * math.sin(obj.stripe_angle)) / obj.stripe_period
            stripe = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
            p = obj.noise.shape[0]
            noise = obj.noise[np.clip(np.rint(v).astype(int) + p // 2, 0, p - 1),
                              np.clip(np.rint(u).astype(int) + p // 2, 0, p - 1)]
            shade = SHADE_BASE + SHADE_STRIPE * stripe + SHADE_NOISE * noise
            colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
            patch = image[y0:y1, x0:x1]
            patch[inside] = (shade[inside, None] * colour).astype(np.float32)
    if image is not None:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, labels, full_area


def _plan_video(seed_sequence: np.random.SeedSequence, video_id: str, subset: int, twins: bool,
                crossing: bool, edge: str | None, height: int, width: int, frames: int,
                annotated_per_video: int) -> _Video:
    """Sample a video until every instance is visible in some annotated frame (and twins together
    in one), so that every expression has training samples."""
    rng = np.random.default_rng(seed_sequence)
    annotated = _annotated_frames(rng, frames, annotated_per_video, edge)
    for _ in range(100):
        count = int(rng.integers(2, 5))
        if twins or crossing:
            count = max(count, 3)
        instances, z_order = _make_instances(rng, count, twins, crossing, annotated, height, width, frames)
        video = _Video(video_id=video_id, subset=subset, instances=instances, z_order=z_order,
                       background=_background(rng, height, width), annotated=annotated, expressions=[])
        visible = [set(np.unique(_render(video, f - 1, height, width, with_image=False)[1]).tolist()) - {-1}
                   for f in annotated]
        every_instance = set().union(*visible) == set(range(count))
        twin_ids = {i.instance_id for i in instances if [o.appearance for o in instances].count(i.appearance) > 1}
        twins_together = not twins or any(twin_ids <= ids for ids in visible)
        if every_instance and twins_together:
            video.expressions = _describe(rng, instances, height, width)
            return video
    raise RuntimeError(f"could not lay out video {video_id}: frames too small for its objects?")


# ------------------------------------------------------------------------------------- writing


def _temporary(path: Path) -> Path:
    # keep the suffix: cv2.VideoWriter picks the container from it
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _write_text(path: Path, text: str) -> None:
    tmp = _temporary(path)
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_mp4(path: Path, images: list[np.ndarray]) -> None:
    height, width = images[0].shape[:2]
    tmp = _temporary(path)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write mp4v to {tmp}")
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    try:
        decoded = _count_frames(tmp, height, width)
        if decoded != len(images):
            raise RuntimeError(f"{path.name}: wrote {len(images)} frames, read back {decoded}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _count_frames(path: Path, height: int, width: int) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return count
            if frame.shape[:2] != (height, width):
                raise RuntimeError(f"{path.name}: decoded frame of size {frame.shape[:2]}, wrote {(height, width)}")
            count += 1
    finally:
        capture.release()


def _write_h5(path: Path, labels: np.ndarray, instance_ids: list[int]) -> tuple[int, list[int]]:
    """One annotated frame as A2D stores it: masks transposed, (W, H) for a single instance.
    Returns (instances listed, their ids)."""
    listed = [i for i in instance_ids if np.any(labels == i)]
    masks = np.stack([(labels == i).astype(np.uint8) for i in listed])  # (N, H, W)
    boxes = np.zeros((4, len(listed)), dtype=np.float64)
    for n, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        boxes[:, n] = (cols.min(), rows.min(), cols.max(), rows.max())  # x1, y1, x2, y2 (inclusive)
    stored = masks.transpose(0, 2, 1)
    if len(listed) == 1:
        stored = stored[0]
    tmp = _temporary(path)
    with h5py.File(tmp, "w") as f:
        f.create_dataset("instance", data=np.asarray(listed, dtype=np.int64))
        f.create_dataset("reMask", data=np.ascontiguousarray(stored))
        f.create_dataset("reBBox", data=boxes)
    os.replace(tmp, path)
    return len(listed), listed


def _remove_stale_files(directory: Path, keep: set[str], pattern: str) -> None:
    """Files of a previous run (or its leftover temporaries) that this run does not write: a
    re-run into the same OUT must read as a fresh set."""
    for path in sorted(directory.glob(pattern)):
        if path.is_file() and path.stem not in keep:
            path.unlink()


def _remove_stale_mask_folders(masks_root: Path, keep: set[str]) -> None:
    for folder in sorted(p for p in masks_root.iterdir() if p.is_dir() and p.name not in keep):
        _remove_stale_files(folder, set(), "*.h5")
        if not any(folder.iterdir()):
            folder.rmdir()


def write_synthetic_a2d(out: Path, videos: int = 12, seed: int = 0, *, height: int = 128, width: int = 176,
                        frames: int = 24, annotated_per_video: int = 3, progress: bool = True) -> dict:
    """Write a synthetic A2D-Sentences data set under `out` and return a summary.

    Deterministic for a seed: same annotation files byte for byte, same decoded frames and masks.
    """
    lo, hi = _annotation_range(frames)
    if videos < 3:
        raise ValueError(f"videos must be >= 3 (train, test and one missed video), got {videos}")
    if height < 32 or width < 32 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even and >= 32 (mp4v), got {height}x{width}")
    if annotated_per_video < 1 or annotated_per_video > hi - lo + 1:
        raise ValueError(f"annotated_per_video must be in 1..{hi - lo + 1} for {frames} frames, "
                         f"got {annotated_per_video}")
    out = Path(out)
    clips = out / "Release" / "clips320H"
    texts = out / "text_annotations"
    masks_root = texts / "a2d_annotation_with_instances"
    for directory in (clips, masks_root):
        directory.mkdir(parents=True, exist_ok=True)

    # set-level choices from the first child seed; each video from its own child, so that video i
    # does not depend on how many tries the others took
    set_seed, *video_seeds = np.random.SeedSequence(seed).spawn(videos + 1)
    rng = np.random.default_rng(set_seed)
    ids = _video_ids(rng, videos)
    n_test = max(1, round(videos / 3))
    test = set(rng.permutation(videos)[:n_test].tolist())
    train = [i for i in range(videos) if i not in test]
    missed = int(rng.choice(train))  # a train video, so that the test split keeps all its videos
    kept = [int(i) for i in rng.permutation([i for i in range(videos) if i != missed])]
    twins = set(kept[:max(1, round(videos / 3))])
    # occlusion on purpose in about half of the videos (and always in one)
    crossing = {kept[0]} | {i for i in kept if rng.random() < 0.5}
    edges = {kept[0]: "start", kept[-1]: "end"} if len(kept) > 1 else {kept[0]: "start"}
    malformed_video = int(rng.choice([i for i in kept if i not in test] or kept))

    rows: list[list[str]] = []
    summary = {"videos": videos, "train_videos": videos - n_test, "test_videos": n_test,
               "missed_video": ids[missed], "expressions": 0, "annotated_frames": 0, "instances": 0,
               "instance_masks": 0, "occluded_masks": 0, "hidden_instances": 0, "shared_short_groups": 0}
    videoset_lines = []
    for index in tqdm(range(videos), desc="synth videos", disable=not progress):
        video = _plan_video(video_seeds[index], ids[index], int(index in test), index in twins,
                            index in crossing, edges.get(index), height, width, frames, annotated_per_video)
        images = []
        annotated_labels = {}
        full_areas = {}
        for t in range(frames):
            image, labels, full_area = _render(video, t, height, width)
            images.append(image)
            if t + 1 in video.annotated:
                annotated_labels[t + 1], full_areas[t + 1] = labels, full_area
        _write_mp4(clips / f"{video.video_id}.mp4", images)
        videoset_lines.append(",".join(str(v) for v in (
            video.video_id, video.label, 0, f"{frames / FPS:g}", height, width, frames,
            len(video.annotated), video.subset)))
        if index == missed:  # a missed video: listed, clip on disk, no annotations at all
            continue
        video_masks = masks_root / video.video_id
        video_masks.mkdir(exist_ok=True)
        _remove_stale_files(video_masks, {f"{f:05d}" for f in video.annotated}, "*.h5")
        all_ids = [i.instance_id for i in video.instances]
        for frame, labels in annotated_labels.items():
            listed, listed_ids = _write_h5(video_masks / f"{frame:05d}.h5", labels, all_ids)
            summary["annotated_frames"] += 1
            summary["instance_masks"] += listed
            summary["hidden_instances"] += len(all_ids) - listed
            summary["occluded_masks"] += sum(int((labels == i).sum()) < full_areas[frame][i] for i in listed_ids)
        for instance_id, query, short in video.expressions:
            rows.append([video.video_id, str(instance_id), query, short])
        if index == malformed_video:
            _, query, short = video.expressions[[e[0] for e in video.expressions].index(1)]
            rows.append([video.video_id, MALFORMED_INSTANCE_ID, query, short])
            summary["malformed_row"] = {"video_id": video.video_id, "instance_id": MALFORMED_INSTANCE_ID,
                                        "query": query}
        shorts = [e[2] for e in video.expressions]
        summary["shared_short_groups"] += sum(shorts.count(s) > 1 for s in set(shorts))
        summary["instances"] += len(video.instances)
        summary["expressions"] += len(video.expressions)

    _remove_stale_files(clips, set(ids), "*.mp4")
    _remove_stale_mask_folders(masks_root, set(ids) - {ids[missed]})  # the missed video's too
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "instance_id", "query", "short_query"])
    writer.writerows(rows)
    _write_text(texts / "a2d_annotation.txt", buffer.getvalue())
    _write_text(texts / "a2d_missed_videos.txt", ids[missed] + "\n")
    _write_text(out / "Release" / "videoset.csv", "\n".join(videoset_lines) + "\n")
    return summary
