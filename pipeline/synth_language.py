"""The synthetic scenes' language: each shape's long expression (appearance + action, sometimes + where it is or
a relation to another shape) and its short one (the subject phrase the long one starts with; look-alike shapes
share it)."""
from __future__ import annotations

import numpy as np

from losh.pipeline.synth_scenes import Instance

# (progressive forms, third-person forms). No word may contain "left" or "right" as a substring
# except the direction itself ("bright", "upright"...): the flip augmentation swaps them textually.
ACTION_TEXT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
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
PLAIN_TEMPLATES = ("{s} is {ing}", "{s} {ing}", "{s} that is {ing}", "{s} {pres}")
WHERE_TEMPLATES = ("{s} is {ing} {where}", "{s} that is {ing} {where}", "{s} {ing} {where}")
RELATION_TEMPLATES = ("{s} {ing} {rel}", "{s} is {ing} {rel}", "{s} {pres} {rel}")


def where_options(instance: Instance, height: int, width: int) -> list[str]:
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


def relation_options(instance: Instance, others: list[Instance], names: dict[int, str], width: int) -> list[str]:
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


def describe(rng: np.random.Generator, instances: list[Instance], height: int,
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
        progressive, present = ACTION_TEXT[instance.action]
        fields = {"s": short, "ing": str(rng.choice(progressive)), "pres": str(rng.choice(present))}
        relations = relation_options(instance, [o for o in unique if o is not instance], names, width)
        where = where_options(instance, height, width)
        if relations and rng.random() < 0.4:
            template, fields["rel"] = str(rng.choice(RELATION_TEMPLATES)), str(rng.choice(relations))
        elif where and rng.random() < 0.5:
            template, fields["where"] = str(rng.choice(WHERE_TEMPLATES)), str(rng.choice(where))
        else:
            template = str(rng.choice(PLAIN_TEMPLATES))
        expressions.append((instance.instance_id, template.format(**fields), short))
    return expressions
