"""ShapesWorld: the course's own multimodal world, generated deterministically from a seed.

A *scene* is a few coloured shapes (two sizes, never overlapping) on a dark background, sometimes
with a short written word. Everything about a scene lives in normalised coordinates (0..1), so the
same scene can be rendered at any resolution from 32 to 448 pixels. From the scene we derive every
PaLI task target: captions, question/answer pairs, boxes for detection and referring expressions,
the word for OCR, and a longer description that serves as UL2 pretraining text.

    >>> scene = generate_scene(7)                   # a pure function of (seed, cfg, split)
    >>> image = render(scene, 64)                   # PIL RGB image, 64 x 64
    >>> record = scene_record(scene)                # the dict that becomes one dataset row
    >>> ds = load_shapesworld("train", 1000)        # a cached `datasets.Dataset`

Coordinates and boxes: a box is ``(y0, x0, y1, x1)`` with ``0 <= y0 <= y1 <= 1`` (PaLI order: rows
first). Pixel ``i`` of an ``S``-pixel image covers ``[i/S, (i+1)/S)``.

Splits: ``train``/``val``/``test`` use disjoint seed ranges (see ``SPLIT_SEEDS``) and never contain
the colour-shape pairs in ``HELDOUT_COMBOS``; every ``compositional`` scene contains at least one
of them. A model trained on ``train`` has seen every colour and every shape, but never those pairs.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Bump this whenever the generator's output changes: cached data sets are keyed by it.
GENERATOR_VERSION = "1.1"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 100, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 70, 210),
    "orange": (250, 140, 20),
}
BACKGROUND = (28, 28, 34)
WORD_COLOR = (245, 245, 245)
# Short words (no colour or shape names, no "yes"/"no") so OCR never collides with other answers.
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "moon", "tree", "fish", "bird", "car", "hat",
    "cup", "pen", "key", "map", "owl", "bee", "fox", "zoo", "pali",
)

# Colour-shape pairs that only the "compositional" split contains. Each colour and each shape is
# held out exactly once, so train still shows every colour and every shape five times over.
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"), ("green", "star"), ("blue", "hexagon"),
    ("yellow", "cross"), ("purple", "circle"), ("orange", "square"),
})

SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")
_SEEDS_PER_SPLIT = 100_000_000
# First seed of each split; split k uses seeds [k * 1e8, (k + 1) * 1e8): disjoint by construction.
SPLIT_SEEDS: dict[str, int] = {s: i * _SEEDS_PER_SPLIT for i, s in enumerate(SPLITS)}

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 448
MAX_OBJECTS = 8
PIXELS_PER_OBJECT = 8  # a scene of N objects needs an image side of at least 8·N pixels

# Geometry, in units of the image side. Half-extent ("radius") ranges per size: a large shape is
# about 1/3 of the image across, a small one about 1/5, so both stay recognisable at 64 px.
RADIUS = {"large": (0.155, 0.175), "small": (0.09, 0.105)}
GAP = 0.03  # minimum empty space between two boxes
MARGIN = 0.02  # minimum distance from a box to the image border
WORD_HEIGHT = 0.17  # font size of the written word
SAME_SHAPE_PROB = 0.3  # chance that an object repeats an earlier object's shape (makes counting interesting)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def max_objects_for(image_size: int) -> int:
    """How many objects fit in a scene rendered at ``image_size`` pixels (8 px of side per object)."""
    return min(MAX_OBJECTS, image_size // PIXELS_PER_OBJECT)


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int number of pixels, got {image_size!r}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size} is outside ShapesWorld's range "
            f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} px; pick a size in that range "
            "(resize the rendered image afterwards if you need something else)."
        )
    return int(image_size)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. ShapesWorld splits are: {', '.join(SPLITS)}.")
    return split


@dataclass
class ShapesWorldConfig:
    """Parameters of the generator. Every field is part of the cache key of a materialised data set.

    image_size: default render resolution in pixels (32..448); layouts do not depend on it.
    min_objects, max_objects: each scene has a uniform number of objects in this range.
    word_prob: probability that a scene carries a written word (dropped if it does not fit).
    same_shape_prob: probability that an object repeats the shape of an earlier one.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    word_prob: float = 0.3
    same_shape_prob: float = SAME_SHAPE_PROB

    def __post_init__(self) -> None:
        _check_image_size(self.image_size)
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"Need 1 <= min_objects <= max_objects, got min_objects={self.min_objects}, "
                f"max_objects={self.max_objects}."
            )
        cap = max_objects_for(self.image_size)
        if self.max_objects > cap:
            bigger = PIXELS_PER_OBJECT * self.max_objects
            hint = (f"use image_size >= {bigger} or " if self.max_objects <= MAX_OBJECTS else "")
            raise ValueError(
                f"image_size={self.image_size} px is too small for {self.max_objects} objects: it "
                f"holds at most {cap} (every object needs {PIXELS_PER_OBJECT} px of image side, "
                f"and no scene has more than {MAX_OBJECTS}); {hint}set max_objects <= {cap}."
            )
        if not 0.0 <= self.word_prob <= 1.0:
            raise ValueError(f"word_prob must be a probability in [0, 1], got {self.word_prob}")
        if not 0.0 <= self.same_shape_prob <= 1.0:
            raise ValueError(f"same_shape_prob must be in [0, 1], got {self.same_shape_prob}")

    def key(self) -> str:
        """A folder name that changes whenever the generator version or any parameter changes."""
        return (
            f"v{GENERATOR_VERSION}-px{self.image_size}-obj{self.min_objects}-{self.max_objects}"
            f"-word{self.word_prob:g}-same{self.same_shape_prob:g}"
        )


# --------------------------------------------------------------------------------------------
# Scene: objects in normalised coordinates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One shape. ``cy, cx`` is its centre, ``radius`` its half-extent (fractions of the image)."""

    shape: str
    color: str
    size: str
    cy: float
    cx: float
    radius: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Tight bounding box ``(y0, x0, y1, x1)`` of the drawn shape, normalised to [0, 1]."""
        return _shape_box(self.shape, self.cy, self.cx, self.radius)

    @property
    def name(self) -> str:
        """``"red circle"`` (colour + shape): the referring expression for this object."""
        return f"{self.color} {self.shape}"

    @property
    def phrase(self) -> str:
        """``"a large red circle"``."""
        return f"a {self.size} {self.color} {self.shape}"


@dataclass
class Scene:
    """A ShapesWorld scene: objects, an optional word, and the texts derived from them.

    ``captions[0]`` is the canonical caption; ``qa`` is a list of ``{question, answer, kind}``;
    ``description`` is several sentences of varied prose (UL2 pretraining text).
    """

    seed: int
    split: str
    image_size: int
    objects: list[ShapeObject]
    word: str = ""
    word_box: tuple[float, float, float, float] | None = None
    captions: list[str] = field(default_factory=list)
    qa: list[dict[str, str]] = field(default_factory=list)
    description: str = ""

    @property
    def caption(self) -> str:
        return self.captions[0]


def _polygon(shape: str, cy: float, cx: float, r: float) -> list[tuple[float, float]]:
    """Vertices ``(x, y)`` of a polygonal shape (PIL order) in normalised coordinates."""
    if shape == "square":
        s = 0.88 * r  # squares look bigger than circles of the same extent; shrink them a bit
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "hexagon":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (k * math.pi / 3 for k in range(6))]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        t = r / 3  # half-thickness of each arm
        return [
            (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
            (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
            (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t),
        ]
    raise ValueError(f"Unknown shape {shape!r}; ShapesWorld shapes are {SHAPES}")


@lru_cache(maxsize=None)
def _unit_extent(shape: str) -> tuple[float, float, float, float]:
    """Box of the shape centred at 0 with radius 1: ``(y0, x0, y1, x1)``."""
    if shape == "circle":
        return (-1.0, -1.0, 1.0, 1.0)
    pts = _polygon(shape, 0.0, 0.0, 1.0)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(ys), min(xs), max(ys), max(xs))


def _shape_box(shape: str, cy: float, cx: float, r: float) -> tuple[float, float, float, float]:
    y0, x0, y1, x1 = _unit_extent(shape)
    return (cy + r * y0, cx + r * x0, cy + r * y1, cx + r * x1)


_FONT_PATH: str | None = None


def font_path() -> str:
    """Path of the TrueType font used for words: DejaVu Sans Bold, shipped with matplotlib."""
    global _FONT_PATH
    if _FONT_PATH is None:
        import matplotlib

        _FONT_PATH = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans-Bold.ttf")
    return _FONT_PATH


@lru_cache(maxsize=64)
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(), pixels)


@lru_cache(maxsize=None)
def _word_extent(word: str) -> tuple[float, float]:
    """Normalised (height, width) of the word's ink, measured at a large reference size."""
    ref = 400
    left, top, right, bottom = _font(round(WORD_HEIGHT * ref)).getbbox(word)
    return (bottom - top) / ref, (right - left) / ref


def _boxes_clear(box: tuple[float, ...], others: list[tuple[float, ...]]) -> bool:
    """True if ``box`` keeps at least ``GAP`` from every box in ``others`` (on some axis)."""
    y0, x0, y1, x1 = box
    for oy0, ox0, oy1, ox1 in others:
        if not (y1 + GAP <= oy0 or oy1 + GAP <= y0 or x1 + GAP <= ox0 or ox1 + GAP <= x0):
            return False
    return True


def _place(rng: random.Random, extent: tuple[float, float, float, float], taken: list, tries: int = 100):
    """Sample a centre so that a box of unit ``extent`` (already scaled) fits free space, or None."""
    ey0, ex0, ey1, ex1 = extent
    lo_y, hi_y = MARGIN - ey0, 1 - MARGIN - ey1
    lo_x, hi_x = MARGIN - ex0, 1 - MARGIN - ex1
    for _ in range(tries):
        cy, cx = rng.uniform(lo_y, hi_y), rng.uniform(lo_x, hi_x)
        box = (cy + ey0, cx + ex0, cy + ey1, cx + ex1)
        if _boxes_clear(box, taken):
            return cy, cx, box
    return None


def _sample_attributes(rng: random.Random, n: int, cfg: ShapesWorldConfig, split: str):
    """Colour, shape and size for ``n`` objects, respecting the split's held-out pairs."""
    forced = rng.randrange(n) if split == "compositional" else -1
    heldout = sorted(HELDOUT_COMBOS)
    attrs: list[tuple[str, str, str]] = []
    for i in range(n):
        size = rng.choice(SIZES)
        if i == forced:
            color, shape = rng.choice(heldout)
        else:
            if attrs and rng.random() < cfg.same_shape_prob:
                shape = rng.choice(attrs)[0]
            else:
                shape = rng.choice(SHAPES)
            color = rng.choice(COLORS)
            while split != "compositional" and (color, shape) in HELDOUT_COMBOS:
                color = rng.choice(COLORS)
        attrs.append((shape, color, size))
    return attrs


def generate_scene(seed: int, cfg: ShapesWorldConfig | None = None, split: str = "train") -> Scene:
    """Generate one scene: a pure function of ``(seed, cfg, split)``.

    ``split`` decides which colour-shape pairs may appear (``HELDOUT_COMBOS`` only in
    "compositional", where every scene has at least one). Any integer seed works; the data sets
    built by ``load_shapesworld`` use the split's own seed range ``SPLIT_SEEDS[split] + i``.
    The layout is resolution independent: ``cfg.image_size`` is only the default render size.
    """
    cfg = cfg or ShapesWorldConfig()
    _check_split(split)
    rng = random.Random(seed)
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    want_word = rng.random() < cfg.word_prob
    attrs = _sample_attributes(rng, n, cfg, split)

    for _attempt in range(100):  # restarts are rare (crowded scenes only); still deterministic
        objects: list[ShapeObject] = []
        taken: list[tuple[float, ...]] = []
        for shape, color, size in attrs:
            placed = None
            for try_size in (size, "small"):  # a large shape that does not fit becomes small
                radius = rng.uniform(*RADIUS[try_size])
                y0, x0, y1, x1 = _unit_extent(shape)
                placed = _place(rng, (radius * y0, radius * x0, radius * y1, radius * x1), taken)
                if placed is not None:
                    size = try_size
                    break
            if placed is None:
                break
            cy, cx, box = placed
            objects.append(ShapeObject(shape, color, size, cy, cx, radius))
            taken.append(box)
        if len(objects) == n:
            break
    else:  # pragma: no cover - would need an impossible configuration
        raise RuntimeError(f"Could not place {n} objects for seed {seed}; lower max_objects.")

    word, word_box = "", None
    if want_word:
        candidate = rng.choice(WORDS)
        h, w = _word_extent(candidate)
        placed = _place(rng, (-h / 2, -w / 2, h / 2, w / 2), taken)
        if placed is not None:  # no room left: the scene simply has no word
            word, word_box = candidate, placed[2]

    scene = Scene(seed=seed, split=split, image_size=cfg.image_size, objects=objects,
                  word=word, word_box=word_box)
    scene.captions = make_captions(scene)
    scene.qa = make_qa(scene, rng)
    scene.description = make_description(scene, rng)
    return scene


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _to_px(v: float, size: int) -> float:
    # Normalised coordinate -> PIL coordinate. PIL fills the pixels from floor(start) to
    # floor(end) inclusive, so a shape covers exactly the pixels its box touches (within 1 px).
    return v * size


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, size: int, fill) -> None:
    if obj.shape == "circle":
        y0, x0, y1, x1 = obj.box
        draw.ellipse([_to_px(x0, size), _to_px(y0, size), _to_px(x1, size), _to_px(y1, size)], fill=fill)
    else:
        pts = [(_to_px(x, size), _to_px(y, size)) for x, y in _polygon(obj.shape, obj.cy, obj.cx, obj.radius)]
        draw.polygon(pts, fill=fill)


def render(scene: Scene, image_size: int | None = None) -> Image.Image:
    """Draw ``scene`` as an RGB ``PIL.Image`` of ``image_size`` x ``image_size`` pixels.

    ``image_size`` defaults to the size the scene was generated with and must be in 32..448.
    """
    size = _check_image_size(scene.image_size if image_size is None else image_size)
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw_object(draw, obj, size, RGB[obj.color])
    if scene.word and scene.word_box is not None:
        font = _font(max(4, round(WORD_HEIGHT * size)))
        left, top, right, bottom = font.getbbox(scene.word)
        y0, x0, y1, x1 = scene.word_box
        cx, cy = (x0 + x1) / 2 * size, (y0 + y1) / 2 * size
        draw.text((cx - (left + right) / 2, cy - (top + bottom) / 2), scene.word, font=font, fill=WORD_COLOR)
    return img


def render_masks(scene: Scene, image_size: int | None = None) -> np.ndarray:
    """Boolean masks, one per object: ``(num_objects, H, W)``, drawn exactly like ``render``."""
    size = _check_image_size(scene.image_size if image_size is None else image_size)
    masks = np.zeros((len(scene.objects), size, size), dtype=bool)
    for i, obj in enumerate(scene.objects):
        m = Image.new("L", (size, size), 0)
        _draw_object(ImageDraw.Draw(m), obj, size, 255)
        masks[i] = np.asarray(m) > 0
    return masks


# --------------------------------------------------------------------------------------------
# Language: relations, captions, questions, descriptions
# --------------------------------------------------------------------------------------------

RELATIONS = ("left of", "right of", "above", "below")
RELATION_MARGIN = 0.1  # relation questions are asked only when centres differ by this much


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """The dominant spatial relation of ``a`` to ``b``: "left of", "right of", "above" or "below".

    Compares centres; the axis with the larger difference wins (y grows downwards).
    """
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def relation_holds(a: ShapeObject, b: ShapeObject, rel: str) -> bool:
    """Is ``a`` {rel} ``b`` by centre position (e.g. a.cx < b.cx for "left of")?"""
    if rel == "left of":
        return a.cx < b.cx
    if rel == "right of":
        return a.cx > b.cx
    if rel == "above":
        return a.cy < b.cy
    if rel == "below":
        return a.cy > b.cy
    raise ValueError(f"Unknown relation {rel!r}; use one of {RELATIONS}")


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def _count_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def _chain(a: ShapeObject, rest: list[ShapeObject], first: ShapeObject | None) -> str:
    text = a.phrase
    if first is not None:
        text += f" {relation(a, first)} {first.phrase}"
    for o in rest:
        text += f" and {o.phrase}"
    return text


def make_captions(scene: Scene) -> list[str]:
    """Several phrasings of the scene; ``[0]`` is canonical.

    Canonical: objects from left to right, the first two joined by their relation, the rest by
    "and", then the word: ``"a large red circle left of a small blue square and the word cat"``.
    """
    objs = sorted(scene.objects, key=lambda o: o.cx)
    word = f" and the word {scene.word}" if scene.word else ""
    n = len(objs)
    canonical = _chain(objs[0], objs[2:], objs[1] if n > 1 else None) + word
    rev = objs[::-1]
    reverse = _chain(rev[0], rev[2:], rev[1] if n > 1 else None) + word
    phrases = [o.phrase for o in objs]
    listing = phrases[0] if n == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    noun = "shape" if n == 1 else "shapes"
    counted = f"{_count_word(n)} {noun}: {listing}"
    picture = f"a picture of {listing}" + (f' with the word "{scene.word}"' if scene.word else "")
    captions = [canonical, counted, picture]
    if n > 1:
        captions.insert(1, reverse)
    return captions


def _unique(objects: list[ShapeObject], key) -> dict[Any, ShapeObject]:
    """Objects whose ``key`` value occurs exactly once in the scene, keyed by that value."""
    counts: dict[Any, int] = {}
    for o in objects:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return {key(o): o for o in objects if counts[key(o)] == 1}


def _allowed(split: str, color: str, shape: str) -> bool:
    return split == "compositional" or (color, shape) not in HELDOUT_COMBOS


def make_qa(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """Question/answer pairs about the scene, each ``{"question", "answer", "kind"}``.

    Kinds: color, shape, size, count, exists (yes/no), relation (yes/no: left/right/above/below),
    text (is there a word / which word). Only unambiguous questions are asked: "the circle" only if
    there is exactly one circle, relations only between uniquely named objects whose centres differ
    by at least ``RELATION_MARGIN`` along the asked axis.
    """
    objs, qa = scene.objects, []

    def add(q: str, a: str, kind: str) -> None:
        qa.append({"question": q, "answer": a, "kind": kind})

    for shape, o in _unique(objs, lambda o: o.shape).items():
        add(f"what color is the {shape}?", o.color, "color")
    for color, o in _unique(objs, lambda o: o.color).items():
        add(f"what shape is the {color} object?", o.shape, "shape")
    named = _unique(objs, lambda o: o.name)
    for name, o in named.items():
        add(f"what size is the {name}?", o.size, "size")

    add("how many shapes are there?", str(len(objs)), "count")
    present = sorted({o.shape for o in objs})
    absent = [s for s in SHAPES if s not in present]
    shape = rng.choice(present)
    add(f"how many {plural(shape)} are there?", str(sum(o.shape == shape for o in objs)), "count")
    if absent:
        shape = rng.choice(absent)
        add(f"how many {plural(shape)} are there?", "0", "count")

    o = rng.choice(objs)
    add(f"is there a {o.name}?", "yes", "exists")
    missing = [(c, s) for c in COLORS for s in SHAPES
               if _allowed(scene.split, c, s) and all(o.name != f"{c} {s}" for o in objs)]
    c, s = rng.choice(missing)
    add(f"is there a {c} {s}?", "no", "exists")

    pairs = [(a, b) for a in named.values() for b in named.values() if a is not b]
    rng.shuffle(pairs)
    asked = 0
    for a, b in pairs:
        if asked == 2:
            break
        axis_rels = []
        if abs(a.cx - b.cx) >= RELATION_MARGIN:
            axis_rels += ["left of", "right of"]
        if abs(a.cy - b.cy) >= RELATION_MARGIN:
            axis_rels += ["above", "below"]
        if not axis_rels:
            continue
        rel = rng.choice(axis_rels)
        add(f"is the {a.name} {rel} the {b.name}?", "yes" if relation_holds(a, b, rel) else "no", "relation")
        asked += 1

    if scene.word:
        add("what word is written?", scene.word, "text")
        add("is there a word in the image?", "yes", "text")
    else:
        add("is there a word in the image?", "no", "text")
    return qa


def _where(cy: float, cx: float) -> str:
    """Coarse position in a 3x3 grid: "in the top left", "in the centre", "at the bottom"..."""
    row = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "")
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    if not row and not col:
        return "in the centre"
    if row and col:
        return f"in the {row} {col}"
    return f"at the {row or col}" if row else f"on the {col}"


_OPENINGS = (
    "This picture shows {n} {noun} on a dark background.",
    "In this image there {be} {n} {noun}.",
    "We see {n} {noun} here.",
    "The scene contains {n} {noun}.",
)
_OBJECT_SENTENCES = (
    "{A} sits {where}.",
    "{Where} there is {a}.",
    "There is {a} {where}.",
    "{A} can be seen {where}.",
    "The {shape} {where} is {size} and {color}.",
)
_RELATION_SENTENCES = (
    "The {a} is {rel} the {b}.",
    "You can find the {a} {rel} the {b}.",
    "Look {rel} the {b} to find the {a}.",
)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_description(scene: Scene, rng: random.Random) -> str:
    """Three or more sentences of varied prose about the scene (the UL2 pretraining text)."""
    objs = list(scene.objects)
    n = len(objs)
    sents = [rng.choice(_OPENINGS).format(n=_count_word(n), noun="shape" if n == 1 else "shapes",
                                          be="is" if n == 1 else "are")]
    for o in sorted(objs, key=lambda o: o.cx):
        where = _where(o.cy, o.cx)
        t = rng.choice(_OBJECT_SENTENCES)
        sents.append(t.format(A=_cap(o.phrase), a=o.phrase, where=where, Where=_cap(where),
                              shape=o.shape, size=o.size, color=o.color))
    named = list(_unique(objs, lambda o: o.name).values())
    if len(named) >= 2:
        a, b = rng.sample(named, 2)
        rel = relation(a, b)
        sents.append(rng.choice(_RELATION_SENTENCES).format(a=a.name, b=b.name, rel=rel))
    shape_counts = {s: sum(o.shape == s for o in objs) for s in SHAPES}
    repeated = [s for s, c in shape_counts.items() if c > 1]
    if repeated:
        s = rng.choice(repeated)
        sents.append(f"There are {_count_word(shape_counts[s])} {plural(s)} in total.")
    sizes = [o.size for o in objs]
    if n > 1 and len(set(sizes)) == 1:
        sents.append(rng.choice(("All shapes are {s}.", "Every shape is {s}.")).format(s=sizes[0]))
    if scene.word and scene.word_box is not None:
        y0, x0, y1, x1 = scene.word_box
        where = _where((y0 + y1) / 2, (x0 + x1) / 2)
        sents.append(rng.choice((
            'The word "{w}" is written {where}.',
            "Someone wrote the word {w} {where}.",
            "{Where} you can read the word {w}.",
        )).format(w=scene.word, where=where, Where=_cap(where)))
    else:
        sents.append(rng.choice(("There is no text in the picture.", "Nothing is written in it.",
                                 "No word is written anywhere.")))
    if n == 1:
        sents.append(rng.choice(("It is the only shape.", "Nothing else is there.",
                                 "The rest of the picture is empty.")))
    return " ".join(sents)


# --------------------------------------------------------------------------------------------
# Records, data sets, text corpus
# --------------------------------------------------------------------------------------------


def _round_box(box) -> list[float]:
    return [round(min(1.0, max(0.0, float(v))), 6) for v in box]


def scene_record(scene: Scene, image_size: int | None = None, with_image: bool = True) -> dict[str, Any]:
    """The dataset row for a scene (see ``load_shapesworld`` for the columns)."""
    record: dict[str, Any] = {}
    if with_image:
        record["image"] = render(scene, image_size)
    record.update(
        seed=scene.seed,
        objects=[{"shape": o.shape, "color": o.color, "size": o.size, "box": _round_box(o.box)}
                 for o in scene.objects],
        word=scene.word,
        word_box=_round_box(scene.word_box) if scene.word_box is not None else [-1.0, -1.0, -1.0, -1.0],
        caption=scene.caption,
        captions=list(scene.captions),
        qa=[dict(q) for q in scene.qa],
        description=scene.description,
    )
    return record


def features():
    """The ``datasets.Features`` of a ShapesWorld data set."""
    from datasets import Features, Image as ImageFeature, List, Value

    string = Value("string")
    return Features({
        "image": ImageFeature(),
        "seed": Value("int64"),
        "objects": List({"shape": string, "color": string, "size": string,
                         "box": List(Value("float32"), length=4)}),
        "word": string,
        "word_box": List(Value("float32"), length=4),
        "caption": string,
        "captions": List(string),
        "qa": List({"question": string, "answer": string, "kind": string}),
        "description": string,
    })


def split_seeds(split: str, num_scenes: int, seed_offset: int = 0) -> range:
    """The seeds of the first ``num_scenes`` scenes of ``split`` (after skipping ``seed_offset``)."""
    _check_split(split)
    if num_scenes < 0 or seed_offset < 0 or seed_offset + num_scenes > _SEEDS_PER_SPLIT:
        raise ValueError(
            f"num_scenes={num_scenes}, seed_offset={seed_offset}: need both >= 0 and their sum "
            f"<= {_SEEDS_PER_SPLIT} (the size of a split's seed range)."
        )
    start = SPLIT_SEEDS[split] + seed_offset
    return range(start, start + num_scenes)


def build_dataset(split: str, num_scenes: int, cfg: ShapesWorldConfig):
    """Generate and render ``num_scenes`` scenes into an in-memory ``datasets.Dataset``."""
    from datasets import Dataset

    rows = []
    for seed in split_seeds(split, num_scenes):
        row = scene_record(generate_scene(seed, cfg, split))
        row["image"] = {"bytes": _png_bytes(row["image"]), "path": None}
        rows.append(row)
    return Dataset.from_list(rows, features=features())


def _png_bytes(img: Image.Image) -> bytes:
    """Lossless PNG, fast setting (compression level 1 is ~2x faster than the default 6)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _save_quietly(ds, folder: Path) -> None:
    """``ds.save_to_disk(folder)`` without a progress bar (keeps notebook outputs clean)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(folder))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


@lru_cache(maxsize=1)
def _renderer_fingerprint() -> str:
    """Pillow and FreeType versions plus a hash of the font: what turns a scene into pixels."""
    import hashlib

    import PIL
    from PIL import features

    try:
        with open(font_path(), "rb") as f:
            font = hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        font = "missing"
    freetype = features.version("freetype2") or "none"
    return f"pillow{PIL.__version__}-freetype{freetype}-font{font}"


def shapesworld_fingerprint(cfg: ShapesWorldConfig | None = None, *, rendering: bool = True) -> str:
    """A string that changes whenever ShapesWorld's output could change; fold it into your own keys.

    It holds ``GENERATOR_VERSION`` (scenes and texts), the parameters of ``cfg`` if given, and with
    ``rendering=True`` the renderer (Pillow and FreeType versions, a hash of the font file), since
    those decide the exact pixels. A recipe that only uses the *texts* (e.g. tokenizer training)
    passes ``rendering=False``; one trained on images keeps the default.

        >>> shapesworld_fingerprint(rendering=False)
        'shapesworld-v1.1'
    """
    parts = [f"shapesworld-v{GENERATOR_VERSION}"]
    if cfg is not None:
        parts.append(cfg.key().split("-", 1)[1])  # the key without its version prefix
    if rendering:
        parts.append(_renderer_fingerprint())
    return "-".join(parts)


def load_shapesworld(
    split: str = "train",
    num_scenes: int = 1000,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 3,
    word_prob: float = 0.3,
    cache: bool = True,
):
    """ShapesWorld as a ``datasets.Dataset``, cached under ``data/shapesworld/<key>``.

    Columns: ``image`` (Image), ``seed`` (int), ``objects`` (list of ``{shape, color, size, box}``
    with ``box = [y0, x0, y1, x1]`` in [0, 1]), ``word`` ("" if none), ``word_box`` (all -1 if no
    word), ``caption`` (canonical), ``captions`` (several phrasings), ``qa`` (list of
    ``{question, answer, kind}``), ``description`` (a few sentences).

    Scene ``i`` of a split has seed ``SPLIT_SEEDS[split] + i``, so a longer data set extends a
    shorter one. The cache key holds the generator version and every parameter; with
    ``cache=False`` nothing is read or written.

    The cache is safe to share: it is checked against its SHA-256 manifest before it is read (a
    damaged copy is rebuilt with a printed message), and when several processes ask for the same
    data set at once one builds it while the others wait (see ``pali3_edu.cache``).
    """
    _check_split(split)
    if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes < 1:
        raise ValueError(f"num_scenes must be a positive int, got {num_scenes!r}")
    cfg = ShapesWorldConfig(image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                            word_prob=word_prob)
    if not cache:
        return build_dataset(split, num_scenes, cfg)

    from datasets import load_from_disk

    from pali3_edu.cache import build_or_load_dir
    from pali3_edu.utils import data_dir

    key = f"{cfg.key()}-{split}-n{num_scenes}"
    path = data_dir("shapesworld") / key
    name = f"ShapesWorld data set {split!r} with {num_scenes} scenes"
    meta = {"fingerprint": shapesworld_fingerprint(cfg), "split": split, "num_scenes": num_scenes}

    def build(tmp: Path) -> None:
        _save_quietly(build_dataset(split, num_scenes, cfg), tmp)

    build_or_load_dir(path, build, name=name, meta=meta)
    try:
        return load_from_disk(str(path))
    except Exception as e:  # intact bytes that this `datasets` cannot read: build them again
        print(f"The cached {name} in {path} could not be read ({type(e).__name__}: {e}); "
              "rebuilding it.", file=sys.stderr, flush=True)
        build_or_load_dir(path, build, name=name, meta=meta, rebuild=True)
        return load_from_disk(str(path))


def clear_cache() -> int:
    """Delete every cached ShapesWorld data set; returns how many were removed.

    Also removes the ``<key>.lock`` files and any temporary folders left by interrupted builds.
    Each data set is removed while holding its lock, and renamed away before it is deleted, so a
    process that is reading or building at the same time never sees a half-deleted folder.
    """
    from pali3_edu.cache import LOCK_SUFFIX, discard_dir, file_lock, lock_path
    from pali3_edu.utils import data_dir

    root = Path(data_dir("shapesworld"))
    removed = 0
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        with file_lock(lock_path(p)):
            discard_dir(p)
            removed += 1
    for p in root.iterdir():  # lock files and leftovers of interrupted builds
        if p.is_dir() and p.name.startswith("."):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith(LOCK_SUFFIX) or p.name.startswith("."):
            p.unlink(missing_ok=True)
    return removed


def scene_texts(scene: Scene) -> list[str]:
    """Every text of a scene as plain sentences: description, captions, "question answer."."""
    texts = [scene.description]
    texts += [_cap(c) + "." for c in scene.captions]
    texts += [f"{_cap(q['question'])} {q['answer']}." for q in scene.qa]
    return texts


def text_corpus(num_scenes: int = 2000, split: str = "train", seed_offset: int = 0,
                cfg: ShapesWorldConfig | None = None) -> list[str]:
    """Text for tokenizer training and UL2 pretraining: descriptions, captions and QA sentences.

    Scenes are generated (not rendered) from the split's seeds ``seed_offset .. + num_scenes``;
    returns a flat list, ``len(scene_texts(scene))`` strings per scene, in seed order.
    """
    cfg = cfg or ShapesWorldConfig()
    texts: list[str] = []
    for s in split_seeds(split, num_scenes, seed_offset):
        texts += scene_texts(generate_scene(s, cfg, split))
    return texts
