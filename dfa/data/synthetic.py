"""The embedded benchmark: a generated WSSS dataset in the VOC layout (see benchmark.md).

Every object is a *body* made of one of three materials shared by all classes plus a
small class-specific *part* (colour and mark shape) on one end of the body, so a CAM
lights the part and affinity must spread it over the body (partial activation). Each
class prefers one textured background (co-occurrence); outlines are irregular polygons
with thin spikes, several instances overlap, and sizes vary widely (boundaries).

``object_scale`` [lo, hi] draws each object's size (equivalent diameter) uniformly as that
fraction of the image's short side: :data:`OBJECT_SCALE` (0.12–0.7) by default, and
:data:`SMALL_OBJECT_SCALE` for the benchmark of small objects (method.md §12 v3), where most
objects cover a few % of the image, as many VOC images do.

``generate(root)`` writes::

    JPEGImages/syn_000001.jpg ...          (quality 95, H, W each uniform in size_range)
    SegmentationClassAug/syn_000001.png    (VOC palette; 0 background, 1..8 classes)
    ImageSets/Segmentation/{train_aug,train,tune,val,pretrain}.txt
    cls_labels_onehot.npy                  (dict name -> float32 (8,), every listed image)
    classes.json                           (classes, synonyms, background prompts)
    annotations.json                       (name -> {"background": kind, "objects": [{"class",
                                            "bbox": [x0, y0, x1, y1] of visible pixels, x1/y1
                                            exclusive}]} in drawing order; captions/crops only)
    .complete                              (generation parameters; written last)

``train`` is the first ``num_train`` names of ``train_aug`` (as in VOC) and ``tune`` the next
``num_tune`` (method.md §12: a subset of ``train_aug`` disjoint from ``train``, where defaults
and calibrations are chosen); ``val`` and ``pretrain`` are disjoint from ``train_aug``. Image ``i`` is drawn from ``default_rng([seed, i])``,
so any image can be regenerated alone and the order of generation does not matter.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dfa.data.classes import ClassSpec, write_class_spec
from dfa.data.io import read_mask, write_mask
from dfa.io import atomic_path, save_image, write_json, write_text

GENERATOR_VERSION = 1  # bump when the images change, so old trees are regenerated
OBJECT_SCALE = (0.12, 0.7)        # object size / the image's short side: the default trees
SMALL_OBJECT_SCALE = (0.1, 0.3)   # the small-object benchmark (make ablation-table-small)

CLASSES = ["boat", "fish", "bird", "kite", "car", "cow", "lamp", "bottle"]
SYNONYMS = {"boat": ["ship"], "fish": ["trout"], "bird": ["gull"], "kite": ["glider"],
            "car": ["automobile"], "cow": ["cattle"], "lamp": ["lantern"], "bottle": ["flask"]}
BACKGROUNDS = ["water", "grass", "sky", "road", "brick wall"]
PREFERRED_BACKGROUND = {"boat": "water", "fish": "water", "bird": "sky", "kite": "sky", "car": "road",
                        "cow": "grass", "lamp": "brick wall", "bottle": "brick wall"}
P_PREFERRED = 0.75
MATERIALS = ["wood", "metal", "cloth"]  # shared by every class: the body alone says nothing

# Body outline family: (length/width aspect, superellipse exponent: 1 diamond, 2 ellipse, 4 box;
# base orientation of the long axis: 0 horizontal, pi/2 vertical).
SHAPES = {"boat": (2.4, 3.0, 0.0), "fish": (2.0, 2.0, 0.0), "bird": (1.5, 2.0, 0.0),
          "kite": (1.4, 1.0, math.pi / 2), "car": (1.9, 4.0, 0.0), "cow": (1.5, 3.0, 0.0),
          "lamp": (1.7, 2.5, math.pi / 2), "bottle": (2.6, 3.5, math.pi / 2)}
# Discriminative part: (mark shape, colour). Distinct in both, so either cue identifies the class.
PARTS = {"boat": ("disc", (215, 35, 35)), "fish": ("stripes", (245, 215, 30)),
         "bird": ("triangle", (40, 70, 225)), "kite": ("star", (250, 250, 250)),
         "car": ("square", (40, 190, 60)), "cow": ("cross", (205, 40, 205)),
         "lamp": ("ring", (255, 140, 0)), "bottle": ("checker", (40, 220, 230))}
CHECKER_DARK = (20, 30, 80)
# Area of each mark at nominal radius 1 (see _part_polys), for a first guess of its size.
PART_AREA = {"disc": 3.14, "ring": 2.43, "triangle": 2.37, "square": 2.88, "star": 2.87, "cross": 3.66,
             "stripes": 2.57, "checker": 4.0}
BG_PHRASE = {"water": "on water", "grass": "on grass", "sky": "in the sky", "road": "on a road",
             "brick wall": "in front of a brick wall"}




@dataclass(frozen=True)
class Family:
    """One generated benchmark's world: classes, their outlines, marks and preferred backgrounds.

    ``base`` is the embedded default; ``alt`` is the second benchmark of issue 11 (other
    classes, outlines, marks, colours and co-occurrences, larger images, another seed), to
    show that defaults chosen on one generator are not fitted to it. Both use the same five
    textured backgrounds and three body materials, so partial activation and
    co-occurrence work the same way.
    """
    classes: tuple[str, ...]
    synonyms: dict
    preferred: dict
    shapes: dict
    parts: dict
    p_preferred: float = P_PREFERRED
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)


FAMILIES = {
    "base": Family(tuple(CLASSES), SYNONYMS, PREFERRED_BACKGROUND, SHAPES, PARTS),
    "alt": Family(
        ("plane", "truck", "horse", "duck", "chair", "kettle", "sheep"),
        {"plane": ["aircraft"], "truck": ["lorry"], "horse": ["pony"], "duck": ["mallard"], "chair": ["seat"],
         "kettle": ["teapot"], "sheep": ["lamb"]},
        {"plane": "sky", "truck": "road", "horse": "grass", "duck": "water", "chair": "brick wall",
         "kettle": "brick wall", "sheep": "grass"},
        {"plane": (3.0, 1.5, 0.0), "truck": (2.2, 5.0, 0.0), "horse": (1.8, 2.5, 0.0), "duck": (1.3, 2.0, 0.0),
         "chair": (1.2, 4.0, math.pi / 2), "kettle": (1.1, 2.0, 0.0), "sheep": (1.6, 2.2, 0.0)},
        {"plane": ("star", (255, 150, 20)), "truck": ("checker", (60, 230, 200)), "horse": ("ring", (225, 30, 150)),
         "duck": ("square", (250, 235, 40)), "chair": ("cross", (30, 60, 235)), "kettle": ("triangle", (230, 25, 25)),
         "sheep": ("stripes", (50, 200, 50))},
        p_preferred=0.65),
}


# ----------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def object_caption(cls: str, bg: str) -> str:
    """'a photo of a boat on water.'"""
    return f"a photo of {_article(cls)} {BG_PHRASE.get(bg, 'on ' + bg)}."


def caption(entry: dict) -> str:
    """Caption of an ``annotations.json`` entry: 'a photo of a boat and a fish on water.'"""
    names = list(dict.fromkeys(o["class"] for o in entry["objects"]))  # unique, drawing order
    words = [_article(n) for n in names]
    things = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    bg = entry["background"]
    return f"a photo of {things} {BG_PHRASE.get(bg, 'on ' + bg)}."


def class_spec(variant: str = "base") -> ClassSpec:
    f = FAMILIES[variant]
    return ClassSpec(list(f.classes), {k: list(v) for k, v in f.synonyms.items()}, list(f.backgrounds))


# ----------------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], HxW: a coarse grid upsampled bilinearly."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Float HxWx3 in 0..255; every kind is textured (noise + structure), never flat."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "water":
        period = rng.uniform(5, 9)
        warp = 1.6 * np.sin(2 * np.pi * xx / rng.uniform(20, 40) + rng.uniform(0, 6.3))
        wave = np.sin(2 * np.pi * yy / period + warp + 0.8 * _smooth_noise(rng, h, w, 12))
        base = np.array([35, 90, 155], np.float32) * rng.uniform(0.85, 1.1)
        img = base + wave[..., None] * np.array([14, 22, 30], np.float32)
        img += (np.clip(wave, 0.85, 1) - 0.85)[..., None] * 300  # bright crests
        img += 5 * rng.standard_normal((h, w, 1), np.float32)
    elif kind == "grass":
        base = np.array([70, 135, 45], np.float32) * rng.uniform(0.85, 1.1)
        img = base + _smooth_noise(rng, h, w, 14)[..., None] * np.array([12, 25, 8], np.float32)
        img += 9 * rng.standard_normal((h, w, 1), np.float32) * np.array([0.6, 1.0, 0.4], np.float32)
        n = h * w // 24  # blade strokes, near vertical, rasterised as 6 dots each in one go
        x, y = rng.uniform(0, w, n), rng.uniform(0, h, n)
        length, ang = rng.uniform(3, 8, n), rng.normal(-np.pi / 2, 0.3, n)
        t = np.linspace(0, 1, 6)[:, None]
        xs = np.clip(np.round(x + t * length * np.cos(ang)), 0, w - 1).astype(int)
        ys = np.clip(np.round(y + t * length * np.sin(ang)), 0, h - 1).astype(int)
        light = np.broadcast_to(rng.random(n) < 0.5, xs.shape)
        img[ys, xs] = np.where(light[..., None], [125, 190, 70], [30, 85, 20])
    elif kind == "sky":
        t = (yy / max(h - 1, 1))[..., None]
        img = (1 - t) * np.array([105, 160, 225], np.float32) + t * np.array([190, 215, 240], np.float32)
        clouds = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(clouds)
        for _ in range(rng.integers(2, 6)):
            cx, cy, rx = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 22)
            draw.ellipse([cx - rx, cy - rx * 0.45, cx + rx, cy + rx * 0.45], fill=int(rng.uniform(150, 230)))
        alpha = np.asarray(clouds.filter(ImageFilter.GaussianBlur(3.5)), np.float32)[..., None] / 255
        img = img * (1 - alpha) + 248 * alpha
        img += 3 * rng.standard_normal((h, w, 1), np.float32)
    elif kind == "road":
        img = np.full((h, w, 3), 88, np.float32) * rng.uniform(0.8, 1.15) + np.array([0, 0, 4], np.float32)
        img += _smooth_noise(rng, h, w, 10)[..., None] * 10 + 13 * rng.standard_normal((h, w, 1), np.float32)
        layer = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(layer)
        col = (235, 235, 225) if rng.random() < 0.6 else (230, 195, 40)
        ang = rng.normal(0, 0.3) + (np.pi / 2 if rng.random() < 0.4 else 0)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        dash, gap, width = rng.uniform(7, 13), rng.uniform(5, 9), int(rng.integers(2, 4))
        for s in np.arange(-2 * max(h, w), 2 * max(h, w), dash + gap):  # dashed lane mark
            p0 = (cx + s * np.cos(ang), cy + s * np.sin(ang))
            p1 = (cx + (s + dash) * np.cos(ang), cy + (s + dash) * np.sin(ang))
            draw.line([p0, p1], fill=col, width=width)
        img = np.asarray(layer, np.float32)
    elif kind == "brick wall":
        bh = rng.uniform(6, 10)
        bw = bh * rng.uniform(2.0, 2.8)
        row = np.floor(yy / bh)
        shifted = xx + (row % 2) * bw / 2 + rng.uniform(0, bw)
        col_idx = np.floor(shifted / bw)
        tone = rng.uniform(-1, 1, (int(row.max()) + 2, int(col_idx.max()) + 2)).astype(np.float32)
        brick_tone = tone[row.astype(int), col_idx.astype(int)]
        base = np.array([165, 70, 48], np.float32) * rng.uniform(0.85, 1.1)
        img = base + brick_tone[..., None] * np.array([22, 12, 10], np.float32)
        mortar = ((yy - row * bh) < 1.2) | ((shifted - col_idx * bw) < 1.2)
        img[mortar] = np.array([185, 180, 170], np.float32)
        img += 7 * rng.standard_normal((h, w, 1), np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return img


def _frame(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in an object's frame: u along its long axis, v across."""
    c, s = math.cos(phi), math.sin(phi)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def _material(kind: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, phi: float, half_len: float,
              rng: np.random.Generator) -> np.ndarray:
    """Float hxwx3 texture of a body material over the pixel grid (xx, yy), in the object's frame."""
    u, v = _frame(xx, yy, cx, cy, phi)
    shape = xx.shape + (1,)
    if kind == "wood":  # brown grain along the axis
        period = rng.uniform(2.5, 4.5)
        grain = np.sin(2 * np.pi * v / period + 1.2 * np.sin(2 * np.pi * u / (period * 7) + rng.uniform(0, 6.3)))
        tex = np.array([140, 92, 52], np.float32) * (1 + 0.17 * grain[..., None])
        tex += 5 * rng.standard_normal(shape, np.float32)
    elif kind == "metal":  # grey speckle with a soft sheen
        sheen = 0.12 * np.cos(np.pi * u / max(half_len, 1) + rng.uniform(-0.5, 0.5))
        tex = np.array([168, 172, 182], np.float32) * (1 + sheen[..., None])
        tex += 14 * rng.standard_normal(shape, np.float32)
    elif kind == "cloth":  # beige 2-px weave
        weave = np.sign(np.sin(np.pi * u / 2 + 0.1)) * np.sign(np.sin(np.pi * v / 2 + 0.1))
        tex = np.array([206, 186, 148], np.float32) + 11 * weave[..., None]
        tex += 5 * rng.standard_normal(shape, np.float32)
    else:
        raise ValueError(f"unknown material {kind!r}")
    return tex


# ----------------------------------------------------------------------------- shapes
def _rot(points: np.ndarray, phi: float, cx: float, cy: float) -> list[float]:
    """Rotate local (k, 2) points by ``phi`` and move them to (cx, cy); a flat list for ImageDraw."""
    c, s = math.cos(phi), math.sin(phi)
    pts = np.asarray(points, np.float64) @ np.array([[c, s], [-s, c]]) + (cx, cy)
    return pts.ravel().tolist()


def _poly_mask(size: tuple[int, int], polys: list[list[float]]) -> np.ndarray:
    """Boolean mask (H, W) = size[::-1] of filled polygons given as flat [x0, y0, x1, y1, ...] lists."""
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    for p in polys:
        draw.polygon(p, fill=1)
    return np.asarray(img, bool)


def _body_polygon(rng: np.random.Generator, a: float, b: float, p: float) -> np.ndarray:
    """Local (x along the long axis) vertices of a superellipse with smoothed radial noise."""
    n = int(rng.integers(12, 41))
    theta = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    r = 1.0 / ((c / a) ** p + (s / b) ** p) ** (1 / p)
    freq = np.arange(2, 6)[:, None]  # a few low radial harmonics make the outline lumpy
    wobble = (rng.uniform(0, 0.13, (4, 1)) / (freq - 1) * np.cos(freq * theta + rng.uniform(0, 6.3, (4, 1)))).sum(0)
    jitter = rng.normal(0, 0.07, n)
    jitter = (np.roll(jitter, 1) + 2 * jitter + np.roll(jitter, -1)) / 4  # smooth vertex noise
    r = r * np.clip(1 + wobble + jitter, 0.55, 1.5)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)


def _part_polys(shape: str, r: float, spin: float) -> list[np.ndarray]:
    """Local polygons (centred at 0) of a mark of nominal radius ``r``."""
    def ngon(k: int, rad: float, off: float = 0.0) -> np.ndarray:
        t = off + np.arange(k) * 2 * np.pi / k
        return np.stack([rad * np.cos(t), rad * np.sin(t)], 1)

    def rect(x0, y0, x1, y1) -> np.ndarray:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)

    if shape in ("disc", "ring"):
        return [ngon(24, r * (1.1 if shape == "ring" else 1.0))]
    if shape == "triangle":
        return [ngon(3, r * 1.35, spin)]
    if shape == "square":
        return [ngon(4, r * 1.2, spin + np.pi / 4)]
    if shape == "star":
        t = spin + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r * 1.5, r * 0.65)
        return [np.stack([rad * np.cos(t), rad * np.sin(t)], 1)]
    if shape == "cross":
        lg, wd = r * 1.3, r * 0.42
        return [rect(-lg, -wd, lg, wd), rect(-wd, -lg, wd, lg)]
    if shape == "stripes":  # three bars across the long axis
        wd = r * 0.33
        return [rect(x - wd / 2, -r * 1.3, x + wd / 2, r * 1.3) for x in (-r * 0.75, 0.0, r * 0.75)]
    if shape == "checker":
        return [rect(-r, -r, r, r)]
    raise ValueError(shape)


def _draw_object(rng: np.random.Generator, cls: str, cx: float, cy: float, size: float,
                 fam: Family = FAMILIES["base"]) -> dict:
    """One instance centred at (cx, cy) in image coordinates, ``size`` = equivalent diameter
    (2 sqrt(a b) of its base ellipse), so all classes get the same area at the same size.

    Returns masks on a local canvas whose top-left is (``x0``, ``y0``) in image coordinates
    (possibly outside the image, so the object's full area is known): ``obj`` = body +
    spikes, ``part`` = the class mark, a subset of the body.
    """
    aspect, p, base_phi = fam.shapes[cls]
    aspect *= math.exp(rng.normal(0, 0.25))
    phi = base_phi + rng.normal(0, 0.35)
    aspect = max(aspect, 1.05)
    a = size / 2 * math.sqrt(aspect)
    b = a / aspect
    rad = int(math.ceil(1.6 * a)) + 3  # covers radial noise (<= 1.5 a) and spikes (<= 1.45 a)
    x0, y0 = int(math.floor(cx)) - rad, int(math.floor(cy)) - rad
    lx, ly = cx - x0, cy - y0           # centre on the local canvas
    n = 2 * rad + 1
    body = _poly_mask((n, n), [_rot(_body_polygon(rng, a, b, p), phi, lx, ly)])

    img = Image.fromarray(body.astype(np.uint8))
    if rng.random() < 0.4:  # thin limb / mast / string: 1-3 px wide, for boundary precision
        draw = ImageDraw.Draw(img)
        for _ in range(1 if rng.random() < 0.7 else 2):
            t = rng.uniform(0, 2 * np.pi)
            start = (0.45 * a * math.cos(t), 0.45 * b * math.sin(t))  # inside even a noisy diamond
            ang = math.atan2(start[1] / b, start[0] / a) + rng.normal(0, 0.35)  # outward-ish
            length = rng.uniform(0.6, 1.0) * a
            end = (start[0] + length * math.cos(ang), start[1] + length * math.sin(ang))
            draw.line(_rot(np.array([start, end]), phi, lx, ly), fill=1, width=int(rng.integers(1, 4)))
    obj = np.asarray(img, bool)

    shape, _ = fam.parts[cls]
    side = 1 if rng.random() < 0.5 else -1
    pc = (side * rng.uniform(0.42, 0.58) * a, rng.normal(0, 0.08) * b)  # one end, not centred
    px, py = _rot(np.array([pc]), phi, lx, ly)
    target = rng.uniform(0.12, 0.25)
    spin = rng.uniform(0, 2 * np.pi)
    body_area = max(int(body.sum()), 1)
    r = math.sqrt(target * body_area / PART_AREA[shape])  # first guess; clipping to the body shrinks it
    for _ in range(3):  # rescale the mark until it covers ~target of the body
        part = _poly_mask((n, n), [_rot(q, phi, px, py) for q in _part_polys(shape, r, spin)]) & body
        if shape == "ring":
            part &= ~_poly_mask((n, n), [_rot(_part_polys("disc", r * 0.6, 0)[0], phi, px, py)])
        frac = part.sum() / body_area
        if frac == 0 or abs(frac / target - 1) < 0.2:
            break
        r *= math.sqrt(target / frac)
    rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))  # crop to the tight box
    t, l = rows[0], cols[0]
    obj, part = obj[t:rows[-1] + 1, l:cols[-1] + 1], part[t:rows[-1] + 1, l:cols[-1] + 1]
    return {"obj": obj, "part": part, "x0": x0 + int(l), "y0": y0 + int(t), "cx": cx, "cy": cy, "phi": phi,
            "a": a, "px": px + x0, "py": py + y0, "r": r, "n_obj": int(obj.sum()), "n_part": int(part.sum())}


def _clip(o: dict, h: int, w: int) -> tuple[slice, slice, slice, slice]:
    """Image slices and local slices of the part of an object's canvas inside the image."""
    nh, nw = o["obj"].shape
    ys, ye = max(o["y0"], 0), min(o["y0"] + nh, h)
    xs, xe = max(o["x0"], 0), min(o["x0"] + nw, w)
    ye, xe = max(ye, ys), max(xe, xs)
    return (slice(ys, ye), slice(xs, xe), slice(ys - o["y0"], ye - o["y0"]), slice(xs - o["x0"], xe - o["x0"]))


# ----------------------------------------------------------------------------- one sample
def _choose_content(rng: np.random.Generator, fam: Family = FAMILIES["base"]) -> tuple[str, list[str]]:
    """Background and the class of each instance (1-3 instances of 1-3 distinct classes)."""
    n_inst = int(rng.choice([1, 2, 3], p=[0.5, 0.33, 0.17]))
    n_cls = min(n_inst, int(rng.choice([1, 2, 3], p=[0.45, 0.45, 0.1])))
    chosen = list(rng.choice(list(fam.classes), n_cls, replace=False))
    inst = chosen + list(rng.choice(chosen, n_inst - n_cls))
    rng.shuffle(inst)
    pref = fam.preferred[chosen[0]]
    bg = pref if rng.random() < fam.p_preferred else str(rng.choice([b for b in fam.backgrounds if b != pref]))
    return bg, [str(c) for c in inst]


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [0.2, 0.6, 0.2] blur of an HxWx3 float image (about a Gaussian of sigma 0.55)."""
    for axis in (0, 1):
        x = np.moveaxis(img, axis, 0)
        y = 0.6 * x
        y[1:] += 0.2 * x[:-1]
        y[:-1] += 0.2 * x[1:]
        y[0] += 0.2 * x[0]      # replicate the border
        y[-1] += 0.2 * x[-1]
        img = np.moveaxis(y, 0, axis)
    return img


def _ignore_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Mark pixels within ``width`` of a label change as 255 (a VOC-style boundary band)."""
    edge = np.zeros(mask.shape, bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    band = edge.copy()
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            band |= np.roll(np.roll(edge, dy, 0), dx, 1)
    out = mask.copy()
    out[band] = 255
    return out


def make_sample(seed: int, index: int, size_range: tuple[int, int] = (64, 112),
                ignore_border: int = 0, variant: str = "base",
                object_scale: tuple[float, float] = OBJECT_SCALE) -> tuple[np.ndarray, np.ndarray, dict]:
    """Image ``index`` of the benchmark: (uint8 HxWx3, uint8 HxW mask, annotation entry).

    ``object_scale`` (lo, hi): each object's equivalent diameter is drawn uniformly in
    [lo, hi] × the image's short side (shrunk if it does not fit, see below)."""
    fam = FAMILIES[variant]
    rng = np.random.default_rng([seed, index])
    h = int(rng.integers(size_range[0], size_range[1] + 1))
    w = int(rng.integers(size_range[0], size_range[1] + 1))
    bg, inst = _choose_content(rng, fam)
    img = _background(bg, h, w, rng)
    owner = np.zeros((h, w), np.int16)       # visible object id (1-based) per pixel
    part_owner = np.zeros((h, w), np.int16)  # visible part owner per pixel
    placed: list[dict] = []
    n_vis: list[int] = []   # visible pixels of each placed object's body / part so far
    n_vis_part: list[int] = []
    short = min(h, w)
    for cls in inst:
        size = short * rng.uniform(*object_scale)
        for _ in range(8):  # rejection: keep every object's body and part mostly visible
            margin = min(size * 0.4, short / 2)
            o = _draw_object(rng, cls, rng.uniform(margin, w - margin), rng.uniform(margin, h - margin), size, fam)
            iy, ix, ly, lx = _clip(o, h, w)
            obj, part = o["obj"][ly, lx], o["part"][ly, lx]
            region, part_region = owner[iy, ix], part_owner[iy, ix]  # views into the maps
            ok = part.sum() >= max(0.6 * o["n_part"], 1) and obj.sum() >= 0.6 * o["n_obj"]
            if ok and placed:  # pixels of earlier objects this one would cover (it goes on top)
                lost = np.bincount(region[obj], minlength=len(placed) + 1)[1:]
                lost_part = np.bincount(part_region[obj], minlength=len(placed) + 1)[1:]
                ok = all(n_vis[j] - lost[j] >= 0.5 * q["n_obj"] and n_vis_part[j] - lost_part[j] >= 0.5 * q["n_part"]
                         for j, q in enumerate(placed))
            if ok:
                break
            size *= 0.85
        if not ok:
            continue
        if placed:
            n_vis = [n - int(c) for n, c in zip(n_vis, lost)]
            n_vis_part = [n - int(c) for n, c in zip(n_vis_part, lost_part)]
        k = len(placed) + 1
        region[obj] = k
        part_region[obj] = 0
        part_region[part] = k
        n_vis.append(int(obj.sum()))
        n_vis_part.append(int(part.sum()))
        o["cls"], o["material"] = cls, str(rng.choice(MATERIALS))
        placed.append(o)
    if not placed:  # practically never; a different stream keeps the sample deterministic
        return make_sample(seed + 1_000_003, index, size_range, ignore_border, variant, object_scale)

    objects = []
    for k, o in enumerate(placed, 1):
        iy, ix, _, _ = _clip(o, h, w)
        yy, xx = np.mgrid[iy, ix].astype(np.float32)
        region = img[iy, ix]                       # a view: writes go into img
        vis = owner[iy, ix] == k
        tex = _material(o["material"], xx, yy, o["cx"], o["cy"], o["phi"], o["a"], rng)
        region[vis] = tex[vis]
        pv = part_owner[iy, ix] == k
        shape, colour = fam.parts[o["cls"]]
        col = np.empty(region.shape, np.float32)
        col[:] = colour
        if shape == "checker":  # 3x3 cells alternating with a dark navy
            u, v = _frame(xx, yy, o["px"], o["py"], o["phi"])
            cell = 2 * o["r"] / 3
            col[(np.floor(u / cell + 1.5) + np.floor(v / cell + 1.5)) % 2 == 1] = CHECKER_DARK
        region[pv] = col[pv] + 6 * rng.standard_normal((int(pv.sum()), 1), np.float32)
        ys, xs = np.nonzero(vis)
        objects.append({"class": o["cls"], "bbox": [int(xs.min()) + ix.start, int(ys.min()) + iy.start,
                                                    int(xs.max()) + ix.start + 1, int(ys.max()) + iy.start + 1]})

    img += 3 * rng.standard_normal((h, w, 1), np.float32)
    image = np.clip(_blur(img), 0, 255).astype(np.uint8)  # slight blur: camera-like edges for JPEG
    cls_index = np.array([0] + [fam.classes.index(o["cls"]) + 1 for o in placed], np.uint8)
    mask = cls_index[owner]
    if ignore_border > 0:
        mask = _ignore_band(mask, ignore_border)
    return image, mask, {"background": bg, "objects": objects}


def check_object_scale(scale) -> tuple[float, float]:
    """``object_scale`` as a (lo, hi) tuple of floats; ValueError unless 0 < lo < hi <= 1."""
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"object_scale must be [lo, hi], got {scale!r}") from None
    if not 0 < lo < hi <= 1:
        raise ValueError(f"object_scale must have 0 < lo < hi <= 1 (fractions of the short side), got {list(scale)}")
    return lo, hi


def foreground_fractions(root: str | Path, split: str) -> np.ndarray:
    """Per image of ``split`` in a generated tree: the share of its pixels that are foreground
    (label 1..254; the ignore band 255 counts as neither). For the small-object benchmark."""
    root = Path(root)
    names = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    out = []
    for name in names:
        m = read_mask(root / "SegmentationClassAug" / f"{name}.png")
        out.append(float(((m > 0) & (m < 255)).sum()) / m.size)
    return np.array(out)


def label_vector(mask: np.ndarray, num_fg: int = len(CLASSES)) -> np.ndarray:
    """float32 (num_fg,) multi-hot of the classes visible in a generated mask."""
    vec = np.zeros(num_fg, np.float32)
    present = [v for v in np.unique(mask) if 0 < v <= num_fg]
    vec[np.array(present, int) - 1] = 1
    return vec


# ----------------------------------------------------------------------------- the tree
def generate(root: str | Path, *, seed: int = 0, num_train_aug: int = 3000, num_train: int = 300,
             num_tune: int | None = None, num_val: int = 300, num_pretrain: int = 4000,
             size_range: tuple[int, int] = (64, 112), ignore_border: int = 0, variant: str = "base",
             object_scale: tuple[float, float] = OBJECT_SCALE,
             progress: Callable[[int], None] | None = None) -> None:
    """Write the benchmark into ``root`` (idempotent: skipped if ``.complete`` matches).

    ``num_tune`` None: as many as ``train`` (§12), as far as ``train_aug`` has room.
    ``object_scale``: see :func:`make_sample`; 0 < lo < hi <= 1."""
    if num_tune is None:
        num_tune = max(0, min(num_train, num_train_aug - num_train))
    if not 1 <= num_train <= num_train_aug or num_val < 1 or num_pretrain < 0:
        raise ValueError("need 1 <= num_train <= num_train_aug, num_val >= 1, num_pretrain >= 0")
    if num_tune < 0 or num_train + num_tune > num_train_aug:
        raise ValueError(f"need 0 <= num_tune and num_train + num_tune <= num_train_aug, got "
                         f"{num_train} + {num_tune} > {num_train_aug}")
    if not 16 <= size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be 16 <= lo <= hi, got {size_range}")
    object_scale = check_object_scale(object_scale)
    root = Path(root)
    params = {"version": GENERATOR_VERSION, "seed": seed, "num_train_aug": num_train_aug,
              "num_train": num_train, "num_tune": num_tune, "num_val": num_val, "num_pretrain": num_pretrain,
              "size_range": [int(size_range[0]), int(size_range[1])], "ignore_border": ignore_border}
    if variant != "base":  # the base tree's marker stays as it was (no regeneration)
        params["variant"] = variant
    if object_scale != OBJECT_SCALE:  # likewise: the default trees' markers are unchanged
        params["object_scale"] = list(object_scale)
    if variant not in FAMILIES:
        raise ValueError(f"unknown synthetic variant {variant!r}; expected one of {sorted(FAMILIES)}")
    marker = root / ".complete"
    try:
        if json.loads(marker.read_text()) == params:
            return
    except (OSError, ValueError):
        pass
    marker.unlink(missing_ok=True)  # an interrupted regeneration must not look complete
    for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClassAug", "png")):
        for stale in (root / folder).glob(f"syn_*.{ext}"):  # only files this generator names
            stale.unlink()

    counts = {"train_aug": num_train_aug, "val": num_val, "pretrain": num_pretrain}
    lists: dict[str, list[str]] = {}
    labels: dict[str, np.ndarray] = {}
    annotations: dict[str, dict] = {}

    def write(name: str, image: np.ndarray, mask: np.ndarray) -> None:
        save_image(root / "JPEGImages" / f"{name}.jpg", Image.fromarray(image), quality=95)
        write_mask(root / "SegmentationClassAug" / f"{name}.png", mask)

    # Atomic writes spend most of their time waiting on fsync, not on the CPU: a few writer
    # threads overlap that wait with drawing the next images (about halves the wall time).
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=8) as pool:
        index = 0
        for split, n in counts.items():
            lists[split] = []
            for _ in range(n):
                index += 1
                name = f"syn_{index:06d}"
                image, mask, entry = make_sample(seed, index, size_range, ignore_border, variant, object_scale)
                pending.append(pool.submit(write, name, image, mask))
                while len(pending) > 64:  # bound memory; surfaces write errors early
                    pending.popleft().result()
                lists[split].append(name)
                labels[name] = label_vector(mask, len(FAMILIES[variant].classes))
                annotations[name] = entry
                if progress is not None:
                    progress(1)
        while pending:
            pending.popleft().result()
    lists["train"] = lists["train_aug"][:num_train]
    lists["tune"] = lists["train_aug"][num_train:num_train + num_tune]

    seg = root / "ImageSets" / "Segmentation"
    for split in ("train_aug", "train", "tune", "val", "pretrain"):
        if lists[split]:
            write_text(seg / f"{split}.txt", "\n".join(lists[split]) + "\n")
        else:
            (seg / f"{split}.txt").unlink(missing_ok=True)
    with atomic_path(root / "cls_labels_onehot.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, labels, allow_pickle=True)
    write_class_spec(root, class_spec(variant))
    write_json(root / "annotations.json", annotations)
    write_json(marker, params)
