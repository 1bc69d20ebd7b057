"""A procedurally drawn two-domain street-scene benchmark: GTA5 -> Cityscapes in miniature.

Every stage of the method (source-only provider, pseudo-labels, cross-domain distillation,
SpatialMix + hard patch self-distillation, evaluation) can run on it in minutes on a CPU, without
the real data sets. Files are written in the real on-disk layouts, so the real loaders and the
label conversion are exercised unchanged::

    <root>/gta5/images/00001.png                     source images (BGR PNG)
    <root>/gta5/labels/00001.png                     Cityscapes label ids (uint8), as GTA5 ships them
    <root>/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png
    <root>/cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelIds.png
    <root>/synthetic.json                            settings and class pixel shares

    python -m tools.synthetic --root ./data/synthetic --seed 0

``--num-test N`` adds a labelled ``test`` split, held out from model selection, in every layout
(Cityscapes: the cities of its real test split; the other layouts: laid out like val).

``--target acdc|darkzurich|folder`` writes the target in another layout that ``--target-dataset``
reads, with train-id labels (no conversion), instead of ``<root>/cityscapes``::

    <root>/acdc/rgb_anon/{fog,night}/{train,val}/<seq>/<seq>_frame_<n>_rgb_anon.png
    <root>/acdc/gt/{fog,night}/{train,val}/<seq>/<seq>_frame_<n>_gt_labelTrainIds.png
    <root>/darkzurich/rgb_anon/train/{day,twilight,night}/<seq>/<seq>_frame_<n>_rgb_anon.png
    <root>/darkzurich/rgb_anon/val/night/...   and   <root>/darkzurich/gt/val/night/..._gt_labelTrainIds.png
    <root>/folder/images/{train,val}/<folders>/frame_<n>.png|.jpg
    <root>/folder/labels/{train,val}/<folders>/frame_<n>.png

Fog, night and twilight are renderings of a drawn target frame (``CONDITION_RENDERINGS``);
:func:`target_args` gives the flags that read each target.

Both domains share one street layout (sky on top, a perspective road with sidewalks at the bottom,
facades and trees along the horizon, vehicles, people, riders, poles with lights and signs). They
differ in appearance (per-frame light and weather, palette, textures, lighting, sensor noise,
blur: ``domain_gap`` in [0, 1]) and somewhat in class frequencies; every image of both domains has
its hue turned by a random angle, so that no class is told by its hue alone; the target also
shows the ego vehicle and other void ids.
Output is a pure function of the settings: the same seed gives byte-identical files.
"""
import json
import os
import shutil
from multiprocessing import get_context

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label

from utils.cli import ArgumentParser, UserError, at_least, input_size, probability, run, seed
from utils.cli import progress as shown
from utils.io import atomic_write_bytes, atomic_write_text, read_label, write_png
from utils.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, cityscapes_label_id_lut
from utils.run_folder import folder_lock

DEFAULT_SIZE = (256, 128)
DEFAULT_NUM_SOURCE = 200
DEFAULT_NUM_TRAIN = 200
DEFAULT_NUM_VAL = 50
DEFAULT_DOMAIN_GAP = 0.6
GAP_SPREAD = (0.4, 1.4)  # a target frame's strength is domain_gap times a factor drawn from this range
PALETTE_SHIFT = 0.3  # how far class colours move towards TARGET_RGB, per unit of strength
# Light and weather of a target frame: contrast around the frame's mean, then exposure (factors).
TARGET_CONTRAST = (0.5, 1.1)
TARGET_EXPOSURE = (0.5, 1.2)
# Every image of both domains has its hue turned by a random angle (in turns of the colour circle),
# so that no class is told by its hue alone, as in real streets where a car or a facade can have any
# colour. It also keeps the world within the student's colour jitter of self-distillation (hue
# ±0.25 turns), under which a world that coded classes by hue would not be recognisable.
HUE_TURNS = 0.25
MIN_SIZE = (32, 16)
TRAIN_CITIES = ("aachen", "bochum")
VAL_CITIES = ("frankfurt", "lindau")
TEST_CITIES = ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich")  # Cityscapes' real test cities
SPLITS = ("train", "val", "test")  # the target's splits; split i is drawn from random stream i + 1
CITIES = dict(zip(SPLITS, (TRAIN_CITIES, VAL_CITIES, TEST_CITIES)))
FRAME = 19  # Cityscapes annotates the 20th frame of every snippet
# The target's layout (--target): the layouts --target-dataset reads, under <root>/<folder>. Cityscapes
# gets label ids (stage 1 converts them); the others get train ids, as ACDC and Dark Zurich ship them.
TARGETS = ("cityscapes", "acdc", "darkzurich", "folder")
DEFAULT_TARGET = "cityscapes"
TARGET_FOLDERS = {"cityscapes": ("cityscapes/leftImg8bit", "cityscapes/gtFine"), "acdc": ("acdc/rgb_anon", "acdc/gt"),
                  "darkzurich": ("darkzurich/rgb_anon", "darkzurich/gt"), "folder": ("folder/images", "folder/labels")}
# What each split of a target is rendered in, in order: a split's images are spread over these in
# equal runs (the first half of ACDC's fog, the second half night). "day" is the plain target domain.
# The test split (--num-test) is rendered as val.
SPLIT_CONDITIONS = {"cityscapes": {"train": ("day",), "val": ("day",), "test": ("day",)},
                    "acdc": {"train": ("fog", "night"), "val": ("fog", "night"), "test": ("fog", "night")},
                    "darkzurich": {"train": ("day", "twilight", "night"), "val": ("night",), "test": ("night",)},
                    "folder": {"train": ("day",), "val": ("day",), "test": ("day",)}}
SEQUENCES = 2  # ACDC and Dark Zurich: recording sequences per condition and split
FOLDER_DIRS = {"train": ("drive_01", "drive_02/part_a"), "val": ("drive_03", "drive_04/part_a"),
               "test": ("drive_05", "drive_06/part_a")}
FOLDER_JPEG_EVERY, JPEG_QUALITY = 3, 95  # every third image of the folder target is a JPEG
MANIFEST = "synthetic.json"
VERSION = 2  # bump when the drawing changes: a manifest of another version is not "complete"

# Train id -> label id through the official table (the first label id of each train id).
_LUT = cityscapes_label_id_lut()
TRAIN_TO_LABEL_ID = np.array([min(i for i in range(256) if _LUT[i] == t) for t in range(NUM_CLASSES)], np.uint8)
ID = {name: int(TRAIN_TO_LABEL_ID[t]) for t, name in enumerate(CLASS_NAMES)}
ID.update({name: name2label[name].id for name in
           ("unlabeled", "ego vehicle", "out of roi", "static", "dynamic", "ground", "rail track")})

# Classes that are not in every scene: image i is made to contain FORCED[i % len(FORCED)], so any
# set of at least len(FORCED) consecutive images holds all 19 classes.
FORCED = ("traffic light", "traffic sign", "rider", "train", "motorcycle", "bicycle",
          "wall", "fence", "terrain", "pole", "person", "truck", "bus")

# Expected instances per image. The target has more cars and people, as Cityscapes has over GTA5.
FREQUENCIES = {
    "source": dict(cars=2.0, parked=1.0, trucks=0.2, buses=0.12, persons=1.5, riders=0.12, bicycles=0.08,
                   motorcycles=0.04, poles=2.0, trees=2.0, train=0.03, wall=0.35, fence=0.35, verge=0.35,
                   light=0.25, sign=0.35, static=0.8, dynamic=0.2, unlabeled=0.5),
    "target": dict(cars=3.5, parked=2.0, trucks=0.15, buses=0.12, persons=3.0, riders=0.25, bicycles=0.15,
                   motorcycles=0.05, poles=2.5, trees=2.5, train=0.04, wall=0.3, fence=0.4, verge=0.3,
                   light=0.3, sign=0.4, static=1.0, dynamic=0.3, unlabeled=0.0),
}

# Appearance, RGB. The target palette is where a class's colour goes at domain_gap = 1; some moves
# are meant to collide with another class's *source* colour (vegetation towards terrain, bus
# towards train, building towards wall, sky towards overcast grey), so a source-only model makes
# errors that the street layout can correct.
SOURCE_RGB = {
    "road": (100, 100, 105), "sidewalk": (175, 160, 150), "building": (150, 125, 110), "wall": (165, 160, 140),
    "fence": (130, 115, 95), "pole": (95, 95, 100), "traffic light": (45, 45, 40), "traffic sign": (225, 190, 40),
    "vegetation": (70, 125, 55), "terrain": (135, 150, 80), "sky": (140, 185, 235), "person": (150, 60, 70),
    "rider": (185, 55, 50), "car": (55, 70, 150), "truck": (200, 200, 195), "bus": (230, 160, 40),
    "train": (170, 40, 40), "motorcycle": (60, 60, 80), "bicycle": (120, 40, 90),
    "unlabeled": (20, 20, 20), "ego vehicle": (30, 30, 35), "out of roi": (0, 0, 0), "static": (110, 100, 90),
    "dynamic": (100, 80, 60), "ground": (120, 110, 100), "rail track": (90, 80, 75),
}
TARGET_RGB = {
    "road": (75, 82, 100), "sidewalk": (165, 125, 130), "building": (150, 150, 145), "wall": (135, 150, 165),
    "fence": (160, 135, 85), "pole": (130, 125, 110), "traffic light": (65, 65, 60), "traffic sign": (40, 90, 205),
    "vegetation": (110, 140, 55), "terrain": (160, 140, 95), "sky": (190, 200, 210), "person": (90, 70, 115),
    "rider": (120, 60, 110), "car": (110, 110, 125), "truck": (175, 185, 205), "bus": (200, 55, 45),
    "train": (225, 205, 70), "motorcycle": (40, 40, 45), "bicycle": (70, 75, 95),
    "unlabeled": (20, 20, 20), "ego vehicle": (25, 28, 30), "out of roi": (0, 0, 0), "static": (100, 95, 95),
    "dynamic": (95, 85, 70), "ground": (130, 115, 95), "rail track": (80, 75, 75),
}
# Texture per class: (field, amplitude) with fields 0 flat, 1 pixel noise, 2 blotches,
# 3 horizontal, 4 vertical, 5 diagonal stripes. The target swaps most textures (noise vs stripes).
SOURCE_TEXTURE = {
    "road": (1, 12), "sidewalk": (2, 10), "building": (2, 15), "wall": (1, 8), "fence": (4, 20), "pole": (0, 0),
    "traffic light": (0, 0), "traffic sign": (0, 0), "vegetation": (1, 25), "terrain": (1, 18), "sky": (2, 8),
    "person": (2, 12), "rider": (2, 12), "car": (0, 0), "truck": (0, 0), "bus": (0, 0), "train": (3, 10),
    "motorcycle": (0, 0), "bicycle": (0, 0),
}
TARGET_TEXTURE = {
    "road": (3, 10), "sidewalk": (5, 14), "building": (4, 14), "wall": (2, 10), "fence": (1, 15), "pole": (1, 6),
    "traffic light": (1, 5), "traffic sign": (0, 0), "vegetation": (2, 25), "terrain": (3, 15), "sky": (0, 0),
    "person": (1, 12), "rider": (1, 12), "car": (2, 8), "truck": (2, 8), "bus": (4, 10), "train": (0, 0),
    "motorcycle": (1, 8), "bicycle": (1, 8),
}
DEFAULT_TEXTURE = (1, 8)
# Per-instance colour spread (standard deviation, per channel).
INSTANCE_SPREAD = {"car": 40, "truck": 25, "bus": 20, "person": 35, "rider": 30, "building": 18,
                   "vegetation": 10, "static": 20, "motorcycle": 15, "bicycle": 20}
DETAIL_GAIN = np.array([1.0, 0.5, 1.5, 0.8], np.float32)  # none, dark (windows, tyres), bright (markings, lamps), shade
DETAIL_OFFSET = np.array([0.0, 0.0, 35.0, 0.0], np.float32)
DARK, BRIGHT, SHADE = 1, 2, 3


# ----------------------------------------------------------------------------- appearance

def domain_style(domain, gap):
    """Per-label-id colour (RGB), textures and image-wide effects of ``domain`` at ``gap``."""
    palette = np.zeros((256, 3), np.float32)
    fields = np.zeros((2, 256), np.int64)
    amps = np.zeros((2, 256), np.float32)
    for name, label_id in ID.items():
        src = np.array(SOURCE_RGB[name], np.float32)
        field_s, amp_s = SOURCE_TEXTURE.get(name, DEFAULT_TEXTURE)
        if domain == "source":
            palette[label_id] = src
            fields[:, label_id], amps[:, label_id] = (field_s, 0), (amp_s, 0.0)
        else:
            palette[label_id] = src + min(1.0, PALETTE_SHIFT * gap) * (np.array(TARGET_RGB[name], np.float32) - src)
            field_t, amp_t = TARGET_TEXTURE.get(name, DEFAULT_TEXTURE)
            fields[:, label_id], amps[:, label_id] = (field_s, field_t), ((1 - gap) * amp_s, gap * amp_t)
    if domain == "source":
        effects = dict(brightness=1.0, gradient=0.0, vignette=0.0, cast=(1.0, 1.0, 1.0), blur=0.0, noise=2.0)
    else:
        effects = dict(brightness=1.0 - 0.12 * gap, gradient=0.35 * gap, vignette=0.3 * gap,
                       cast=(1.0 + 0.06 * gap, 1.0, 1.0 - 0.08 * gap), blur=0.9 * gap, noise=2.0 + 6.0 * gap)
    return dict(palette=palette, fields=fields, amps=amps, **effects)


def _texture_fields(rng, height, width):
    """Six zero-mean texture images (see SOURCE_TEXTURE), fresh for every image."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    period = max(3.0, height / 128 * rng.uniform(4, 8))
    phase = rng.uniform(0, 2 * np.pi, 3)
    fields = np.empty((6, height, width), np.float32)
    fields[0] = 0
    fields[1] = rng.standard_normal((height, width), dtype=np.float32)
    fields[2] = cv2.GaussianBlur(rng.standard_normal((height, width), dtype=np.float32), (0, 0), max(1.0, height / 40))
    fields[2] /= fields[2].std() + 1e-6
    fields[3] = np.sin(2 * np.pi * ys / period + phase[0])
    fields[4] = np.sin(2 * np.pi * xs / period + phase[1])
    fields[5] = np.sin(2 * np.pi * (xs + ys) / (1.4 * period) + phase[2])
    return fields


def paint(canvas, rng, style):
    """Turn a drawn scene (label ids, instances, details) into a BGR ``uint8`` image."""
    label, height, width = canvas.label, *canvas.label.shape
    colour = style["palette"][label] + np.asarray(canvas.jitter, np.float32)[canvas.inst]
    colour = colour * DETAIL_GAIN[canvas.detail][..., None] + DETAIL_OFFSET[canvas.detail][..., None]
    fields = _texture_fields(rng, height, width)
    for k in range(2):
        index = style["fields"][k][label][None]
        colour += (np.take_along_axis(fields, index, 0)[0] * style["amps"][k][label])[..., None]
    ys = (np.arange(height, dtype=np.float32) / height)[:, None, None]
    xs = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :, None]
    light = style["brightness"] * (1 + style["gradient"] * (0.5 - ys)) * (1 - style["vignette"] * xs ** 2 * 2)
    # Every image gets its own exposure and white balance, in both domains.
    light = light * rng.uniform(0.85, 1.15) * np.asarray(style["cast"], np.float32) * rng.uniform(0.94, 1.06, 3)
    image = colour * light.astype(np.float32)
    if style["blur"] > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), style["blur"] * height / 128)
    image += style["noise"] * rng.standard_normal(image.shape, dtype=np.float32)
    return np.ascontiguousarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)[:, :, ::-1])


# ----------------------------------------------------------------------------- drawing

class Canvas:
    """Label ids, instance ids (for per-object colour) and shading details of one scene."""

    def __init__(self, width, height, rng):
        self.label = np.full((height, width), ID["sky"], np.uint8)
        self.inst = np.zeros((height, width), np.uint16)
        self.detail = np.zeros((height, width), np.uint8)
        self.jitter = [np.zeros(3, np.float32)]
        self.rng = rng

    def instance(self, name):
        self.jitter.append(self.rng.normal(0, INSTANCE_SPREAD.get(name, 6), 3).astype(np.float32))
        return len(self.jitter) - 1

    def draw(self, name, inst, fn, detail=0):
        """Apply ``fn(image, value)`` (a cv2 drawing call) to all three maps."""
        fn(self.label, ID[name])
        fn(self.inst, inst)
        fn(self.detail, detail)

    def mark(self, fn, detail):
        """Shade pixels of an object already drawn (windows, tyres, lamps, markings)."""
        fn(self.detail, detail)

    # shapes; points are float (x, y) pairs
    def poly(self, name, inst, points, detail=0):
        pts = [np.round(np.asarray(points, np.float64)).astype(np.int32).reshape(-1, 1, 2)]
        self.draw(name, inst, lambda img, v: cv2.fillPoly(img, pts, int(v)), detail)

    def rect(self, name, inst, x0, y0, x1, y1, detail=0):
        self.poly(name, inst, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], detail)

    def ellipse(self, name, inst, cx, cy, ax, ay, detail=0, thickness=-1):
        centre, axes = (int(round(cx)), int(round(cy))), (max(1, int(round(ax))), max(1, int(round(ay))))
        self.draw(name, inst, lambda img, v: cv2.ellipse(img, centre, axes, 0, 0, 360, int(v), thickness), detail)

    def line(self, name, inst, p0, p1, thickness, detail=0):
        p0, p1, t = tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1), max(1, int(round(thickness)))
        self.draw(name, inst, lambda img, v: cv2.line(img, p0, p1, int(v), t), detail)

    def mark_rect(self, x0, y0, x1, y1, detail):
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
        self.mark(lambda img, v: cv2.rectangle(img, p0, p1, int(v), -1), detail)

    def mark_pattern(self, name, inst, pattern, detail):
        """Shade the pixels of instance ``inst`` where ``pattern(ys, xs)`` holds."""
        mask = (self.label == ID[name]) & (self.inst == inst)
        ys, xs = np.nonzero(mask)
        if ys.size:
            keep = pattern(ys, xs)
            self.detail[ys[keep], xs[keep]] = detail


class Street:
    """Perspective geometry: horizon, vanishing point and the road / sidewalk / verge edge lines.

    An edge is ``(x at the horizon, x at the bottom row)``; ``d`` in (0, 1] is a depth coordinate
    along the ground (0 at the horizon, 1 at the bottom row) and scales every object.
    """

    def __init__(self, rng, width, height, verge_side=None):
        self.width, self.height = width, height
        self.horizon = height * rng.uniform(0.36, 0.46)
        self.vx = width * rng.uniform(0.42, 0.58)
        top = width * 0.015
        road = width * rng.uniform(0.32, 0.46)
        walk = [width * rng.uniform(0.10, 0.22) for _ in range(2)]
        verge = [width * rng.uniform(0.05, 0.15) if rng.random() < 0.5 or i == verge_side else 0.0 for i in range(2)]
        self.road = [(self.vx - s * top, self.vx - s * road) for s in (1, -1)]  # left, right
        self.walk = [(self.vx - s * 1.6 * top, self.vx - s * (road + walk[i])) for i, s in enumerate((1, -1))]
        self.verge = [(self.vx - s * 2.0 * top, self.vx - s * (road + walk[i] + verge[i]))
                      for i, s in enumerate((1, -1))]

    def y(self, d):
        return self.horizon + d * (self.height - self.horizon)

    def depth(self, y):
        return (y - self.horizon) / (self.height - self.horizon)

    @staticmethod
    def x(edge, d):
        return edge[0] + d * (edge[1] - edge[0])

    def band(self, inner, outer):
        """Polygon between two edges, from the horizon to the bottom row."""
        return [(inner[0], self.horizon), (outer[0], self.horizon), (outer[1], self.height), (inner[1], self.height)]

    def scale(self, d):
        return self.height * d


def _depth(rng, near=0.85):
    """Ground depth of an object: more objects far away, as in a perspective view."""
    return 0.08 + (near - 0.08) * rng.random() ** 1.3


def _px(v):
    """At least two pixels, so small far objects stay visible at low resolution."""
    return max(2.0, v)


def draw_background(cv, st, rng, freq, forced):
    W, H, hz = st.width, st.height, st.horizon
    # Distant skyline at the vanishing point.
    inst = cv.instance("building")
    for _ in range(int(rng.integers(3, 7))):
        x0 = st.vx + rng.uniform(-0.25, 0.2) * W
        kind = "building" if rng.random() < 0.6 else "vegetation"
        cv.rect(kind, inst, x0, hz - H * rng.uniform(0.02, 0.09), x0 + W * rng.uniform(0.03, 0.1), hz + 1)
    for side in (0, 1):
        _draw_facades(cv, st, rng, side)
    # Ground: verge (terrain, or void ground), sidewalk, road.
    for side in (0, 1):
        if st.verge[side][1] != st.walk[side][1]:
            kind = "ground" if rng.random() < 0.3 and forced != "terrain" else "terrain"
            cv.poly(kind, cv.instance(kind), st.band(st.walk[side], st.verge[side]))
        kind = "terrain" if rng.random() < 0.08 else "sidewalk"
        cv.poly(kind, cv.instance(kind), st.band(st.road[side], st.walk[side]))
        cv.line("sidewalk", 0, (st.road[side][0], hz), (st.road[side][1], H), H / 128, SHADE)  # kerb
    road = cv.instance("road")
    cv.poly("road", road, st.band(st.road[0], st.road[1]))
    _lane_markings(cv, st, rng, road)
    # Walls and fences along the back of the sidewalk.
    for name in ("wall", "fence"):
        sides = [side for side in (0, 1) if rng.random() < freq[name] / 2]
        if forced == name and not sides:
            sides = [int(rng.integers(2))]
        for side in sides:
            _draw_barrier(cv, st, rng, name, side)


def _facade_line(st, side):
    """Facade foot: the verge's outer edge as y(x) clipped to the image, plus helpers."""
    top, bottom = st.verge[side]
    sign = -1 if side == 0 else 1  # direction of increasing distance from the vanishing point

    def x_of(u):
        return top + sign * u

    def foot(u):
        span = abs(bottom - top)
        return min(st.height, st.horizon + (u / span) * (st.height - st.horizon)) if span > 0 else st.height

    extent = top + 2 if side == 0 else st.width + 1 - top
    return x_of, foot, extent, abs(bottom - top)


def _draw_facades(cv, st, rng, side):
    W, H, hz = st.width, st.height, st.horizon
    x_of, foot, extent, kink = _facade_line(st, side)
    u = 0.0
    while u < extent:
        u1 = min(extent, u + W * rng.uniform(0.08, 0.3))
        far_height = H * rng.uniform(0.02, 0.06)
        top_end = H * rng.uniform(-0.35, 0.3)
        slope = (hz - far_height - top_end) / max(extent, 1)

        def top(v, f=far_height, k=slope):
            return hz - f - k * v

        us = [u] + ([kink] if u < kink < u1 else []) + [u1]
        bottom = [(x_of(v), foot(v)) for v in reversed(us)]
        kind = rng.choice(["building", "vegetation", "open"], p=[0.7, 0.18, 0.12])
        if kind == "building":
            inst = cv.instance("building")
            cv.poly("building", inst, [(x_of(u), top(u)), (x_of(u1), top(u1))] + bottom)
            period = max(3.0, H * rng.uniform(0.05, 0.09))
            y0, x0 = top(u), x_of(u)
            cv.mark_pattern("building", inst, lambda ys, xs, p=period, y0=y0, x0=x0:
                            ((ys - y0) % p < 0.5 * p) & ((xs - x0) % p < 0.55 * p) & ((ys - y0) > 0.4 * p), DARK)
        elif kind == "vegetation":
            inst = cv.instance("vegetation")
            lowered = [(x_of(v), top(v) + 0.3 * (foot(v) - top(v))) for v in (u, u1)]
            cv.poly("vegetation", inst, lowered + bottom)
            for _ in range(3):
                v = rng.uniform(u, u1)
                r = 0.2 * (foot(v) - top(v)) + 2
                cv.ellipse("vegetation", inst, x_of(v), top(v) + 0.3 * (foot(v) - top(v)), r * 1.3, r)
        else:
            cv.poly("terrain", cv.instance("terrain"), [(x_of(u), hz), (x_of(u1), hz)] + bottom)
        u = u1


def _lane_markings(cv, st, rng, road):
    centre = (st.vx, st.vx + rng.uniform(-0.05, 0.05) * st.width)
    dashes = 6
    for k in range(dashes):
        d0, d1 = (k + 0.2) / dashes, (k + 0.6) / dashes
        d0, d1 = d0 ** 1.6, d1 ** 1.6
        w0, w1 = st.width * 0.006 * d0, st.width * 0.006 * d1 + 0.5
        x0, x1 = st.x(centre, d0), st.x(centre, d1)
        cv.mark(lambda img, v, pts=[np.round(np.array([(x0 - w0, st.y(d0)), (x0 + w0, st.y(d0)),
                                                       (x1 + w1, st.y(d1)), (x1 - w1, st.y(d1))])).astype(np.int32)]:
                cv2.fillPoly(img, pts, int(v)), BRIGHT)


def _draw_barrier(cv, st, rng, name, side):
    d0 = rng.uniform(0.05, 0.5)
    d1 = min(1.3, d0 + rng.uniform(0.25, 0.8))
    height = rng.uniform(0.08, 0.2) if name == "wall" else rng.uniform(0.08, 0.16)
    edge = st.walk[side]
    pts = [(st.x(edge, d0), st.y(d0)), (st.x(edge, d1), st.y(d1)),
           (st.x(edge, d1), st.y(d1) - height * st.scale(d1)), (st.x(edge, d0), st.y(d0) - height * st.scale(d0))]
    inst = cv.instance(name)
    cv.poly(name, inst, pts)
    if name == "fence":
        period = max(3, int(st.height / 40))
        cv.mark_pattern("fence", inst, lambda ys, xs, p=period: xs % p == 0, DARK)


# Objects: each returns nothing and draws at ground depth d, horizontal position x.

def draw_tree(cv, st, rng, d, x):
    s, y = st.scale(d), st.y(d)
    inst = cv.instance("vegetation")
    if rng.random() < 0.3:
        cv.ellipse("terrain", cv.instance("terrain"), x, y, _px(0.08 * s), max(1.0, 0.02 * s))
    trunk = 0.35 * s
    cv.rect("vegetation", inst, x - max(0.5, 0.012 * s), y - trunk, x + max(0.5, 0.012 * s), y)
    cv.ellipse("vegetation", inst, x, y - trunk - 0.18 * s, _px(0.22 * s), _px(0.2 * s))


def draw_pole(cv, st, rng, d, x, light=False, sign=False):
    s, y = st.scale(d), st.y(d)
    height = s * rng.uniform(0.9, 1.3)
    half = max(0.5, 0.012 * s)
    inst = cv.instance("pole")
    cv.rect("pole", inst, x - half, y - height, x + half, y)
    top = y - height
    if light:
        towards_road = 1 if x < st.vx else -1
        arm = 0.25 * s * rng.random()
        lx = x + towards_road * arm
        if arm > 1:
            cv.line("pole", inst, (x, top), (lx, top), max(1, 0.015 * s))
        w, h = _px(0.05 * s), _px(0.13 * s)
        box = cv.instance("traffic light")
        cv.rect("traffic light", box, lx - w / 2, top, lx + w / 2, top + h)
        lamp = int(rng.integers(3))
        cv.mark_rect(lx - w / 4, top + h * (0.1 + 0.3 * lamp), lx + w / 4, top + h * (0.3 + 0.3 * lamp), BRIGHT)
    if sign:
        r = _px(0.045 * s)
        cy = top + height * (0.1 if light else 0.0) + r
        inst = cv.instance("traffic sign")
        shape = rng.integers(3)
        if shape == 0:
            cv.ellipse("traffic sign", inst, x, cy, r, r)
        elif shape == 1:
            cv.rect("traffic sign", inst, x - r, cy - r, x + r, cy + r)
        else:
            cv.poly("traffic sign", inst, [(x - r, cy - r), (x + r, cy - r), (x, cy + r)])


def draw_person(cv, st, rng, d, x, name="person"):
    s, y = st.scale(d), st.y(d)
    h = _px(0.5 * s * rng.uniform(0.85, 1.1))
    w = max(1.0, 0.14 * h)
    inst = cv.instance(name)
    hip, shoulder = y - 0.48 * h, y - 0.83 * h
    step = rng.uniform(0, 0.6) * w
    cv.poly(name, inst, [(x - w * 0.5, hip), (x - w * 0.1, hip), (x - step * 0.5, y), (x - step * 0.5 - w * 0.35, y)])
    cv.poly(name, inst, [(x + w * 0.1, hip), (x + w * 0.5, hip), (x + step * 0.5 + w * 0.35, y), (x + step * 0.5, y)])
    cv.ellipse(name, inst, x, (hip + shoulder) / 2, w * 0.6, (hip - shoulder) / 2 + 0.5)
    cv.ellipse(name, inst, x, shoulder - 0.08 * h, max(1.0, 0.075 * h), max(1.0, 0.085 * h))


def draw_rider(cv, st, rng, d, x, vehicle="bicycle", with_rider=True):
    s, y = st.scale(d), st.y(d)
    facing = 1 if rng.random() < 0.5 else -1
    length = _px((0.45 if vehicle == "bicycle" else 0.5) * s)
    r = max(1.0, (0.1 if vehicle == "bicycle" else 0.11) * s)
    back, front = x - facing * length / 2, x + facing * length / 2
    wy = y - r
    inst = cv.instance(vehicle)
    seat = (x - facing * 0.1 * length, y - 2.3 * r)
    bar = (front - facing * 0.15 * length, y - 2.6 * r)
    if vehicle == "bicycle":
        ring = max(1, int(round(0.25 * r)))
        for cx in (back, front):
            cv.ellipse("bicycle", inst, cx, wy, r, r, thickness=ring)
        t = max(1, 0.12 * r)
        for a, b in (((back, wy), seat), (seat, (x, wy)), ((x, wy), bar), (bar, (front, wy)), ((back, wy), (x, wy))):
            cv.line("bicycle", inst, a, b, t)
    else:
        for cx in (back, front):
            cv.ellipse("motorcycle", inst, cx, wy, r, r, detail=DARK)
        cv.ellipse("motorcycle", inst, x, y - 1.6 * r, 0.45 * length, 0.7 * r)
        cv.line("motorcycle", inst, (front, wy), bar, max(1, 0.2 * r))
    if not with_rider:
        return
    h = _px(0.5 * s)
    rid = cv.instance("rider")
    shoulder = (seat[0] + facing * 0.08 * h, seat[1] - 0.33 * h)
    cv.line("rider", rid, seat, shoulder, max(1, 0.13 * h))
    cv.line("rider", rid, seat, (x, wy), max(1, 0.07 * h))  # leg to the pedal / footrest
    cv.line("rider", rid, shoulder, bar, max(1, 0.05 * h))  # arm to the handlebar
    cv.ellipse("rider", rid, shoulder[0], shoulder[1] - 0.08 * h, max(1.0, 0.075 * h), max(1.0, 0.085 * h))


def draw_vehicle(cv, st, rng, d, x, name="car", side_view=False):
    s, y = st.scale(d), st.y(d)
    inst = cv.instance(name)
    if not side_view:
        w = _px({"car": 0.55, "truck": 0.7, "bus": 0.75, "train": 0.8}[name] * s)
        h = {"car": 0.75, "truck": 1.2, "bus": 1.15, "train": 1.25}[name] * w
        x0, x1 = x - w / 2, x + w / 2
        if name == "car":
            cv.rect(name, inst, x0, y - 0.55 * h, x1, y - 0.1 * h)
            cv.poly(name, inst, [(x0 + 0.05 * w, y - 0.55 * h), (x1 - 0.05 * w, y - 0.55 * h),
                                 (x1 - 0.15 * w, y - h), (x0 + 0.15 * w, y - h)])
            cv.mark_rect(x0 + 0.2 * w, y - 0.92 * h, x1 - 0.2 * w, y - 0.62 * h, DARK)
            cv.mark_rect(x0 + 0.03 * w, y - 0.45 * h, x0 + 0.15 * w, y - 0.38 * h, BRIGHT)
            cv.mark_rect(x1 - 0.15 * w, y - 0.45 * h, x1 - 0.03 * w, y - 0.38 * h, BRIGHT)
        else:
            cv.rect(name, inst, x0, y - h, x1, y - 0.08 * h)
            top = 0.9 if name == "truck" else 0.88
            cv.mark_rect(x0 + 0.08 * w, y - top * h, x1 - 0.08 * w, y - (0.55 if name != "truck" else 0.85) * h, DARK)
        for wx in (x0 + 0.05 * w, x1 - 0.22 * w):
            cv.rect(name, inst, wx, y - 0.12 * h, wx + 0.17 * w, y, detail=DARK)
        return
    length = _px({"car": 1.1, "truck": 1.7, "bus": 2.0, "train": 2.2}[name] * s)
    h = {"car": 0.38, "truck": 0.8, "bus": 0.85, "train": 0.8}[name] * s
    x0, x1 = x - length / 2, x + length / 2
    r = max(1.0, (0.09 if name == "car" else 0.11) * s)
    if name == "car":
        cv.rect(name, inst, x0, y - 0.6 * h, x1, y - 0.5 * r)
        cv.poly(name, inst, [(x0 + 0.2 * length, y - 0.6 * h), (x1 - 0.12 * length, y - 0.6 * h),
                             (x1 - 0.3 * length, y - h), (x0 + 0.3 * length, y - h)])
        cv.mark_rect(x0 + 0.3 * length, y - 0.92 * h, x1 - 0.32 * length, y - 0.65 * h, DARK)
    else:
        cv.rect(name, inst, x0, y - h, x1, y - 0.5 * r)
        period = max(3.0, 0.14 * h)
        y_top, y_bottom = y - 0.85 * h, y - 0.55 * h
        cv.mark_pattern(name, inst, lambda ys, xs: (ys > y_top) & (ys < y_bottom) & ((xs - x0) % period < 0.65 * period),
                        DARK)
        if name == "train":
            cv.line("train", inst, (x, y - h), (x - 0.1 * length, y - 1.2 * h), max(1, 0.02 * s))
    for wx in (x0 + 0.15 * length, x1 - 0.15 * length):
        cv.ellipse(name, inst, wx, y - r, r, r, detail=DARK)


def draw_small(cv, st, rng, d, x, name):
    """Void objects: static street furniture, dynamic clutter, unlabelled things."""
    s, y = st.scale(d), st.y(d)
    inst = cv.instance(name)
    if name == "static":
        w, h = _px(0.06 * s), _px(0.1 * s)
        cv.rect(name, inst, x - w / 2, y - h, x + w / 2, y)
    else:
        cv.ellipse(name, inst, x, y - 0.05 * s, _px(0.05 * s), _px(0.05 * s))


def _on_walk(st, rng, side, d, where=(0.1, 0.9)):
    a, b = st.x(st.road[side], d), st.x(st.walk[side], d)
    return a + rng.uniform(*where) * (b - a)


def _on_road(st, rng, d, margin=0.15):
    a, b = st.x(st.road[0], d), st.x(st.road[1], d)
    return a + rng.uniform(margin, 1 - margin) * (b - a)


def plan_objects(st, rng, freq, forced, target):
    """(depth, draw) pairs for the street's objects, and the forced object drawn on top."""
    objects = []

    def add(d, fn, *args, **kwargs):
        objects.append((d, lambda cv: fn(cv, st, rng, d, *args, **kwargs)))

    for _ in range(rng.poisson(freq["trees"])):
        side = int(rng.integers(2))
        d = _depth(rng)
        add(d, draw_tree, _on_walk(st, rng, side, d, (0.75, 1.0)))
    for _ in range(rng.poisson(freq["poles"])):
        side = int(rng.integers(2))
        d = _depth(rng)
        add(d, draw_pole, _on_walk(st, rng, side, d, (0.05, 0.3)),
            light=rng.random() < freq["light"], sign=rng.random() < freq["sign"])
    for _ in range(rng.poisson(freq["persons"])):
        side, d = int(rng.integers(2)), _depth(rng)
        add(d, draw_person, _on_walk(st, rng, side, d))
    for _ in range(rng.poisson(freq["cars"])):
        d = _depth(rng, 0.8)
        add(d, draw_vehicle, _on_road(st, rng, d), "car")
    for _ in range(rng.poisson(freq["parked"])):
        side, d = int(rng.integers(2)), _depth(rng, 0.7)
        add(d, draw_vehicle, st.x(st.road[side], d) + (1 if side == 0 else -1) * 0.6 * st.scale(d), "car", True)
    for name in ("trucks", "buses"):
        for _ in range(rng.poisson(freq[name])):
            d = _depth(rng, 0.7)
            add(d, draw_vehicle, _on_road(st, rng, d), name[:-2] if name == "buses" else name[:-1],
                bool(rng.random() < 0.4))
    for _ in range(rng.poisson(freq["riders"])):
        d = _depth(rng, 0.8)
        add(d, draw_rider, _on_road(st, rng, d, 0.05) if rng.random() < 0.6 else _on_walk(st, rng, 0, d),
            "bicycle" if rng.random() < 0.7 else "motorcycle")
    for name in ("bicycles", "motorcycles"):
        for _ in range(rng.poisson(freq[name])):
            side, d = int(rng.integers(2)), _depth(rng, 0.8)
            add(d, draw_rider, _on_walk(st, rng, side, d), name[:-1], with_rider=False)
    for name in ("static", "dynamic", "unlabeled"):
        for _ in range(rng.poisson(freq[name])):
            side, d = int(rng.integers(2)), _depth(rng)
            add(d, draw_small, _on_walk(st, rng, side, d), name)
    if rng.random() < freq["train"] or forced == "train":
        add(rng.uniform(0.15, 0.45), draw_train)
    objects.sort(key=lambda item: item[0])

    # The forced object is drawn after the others so that nothing hides it, above the ego vehicle.
    on_top = []
    d = _depth(rng, 0.7 if target else 0.8)
    side = int(rng.integers(2))
    if forced in ("traffic light", "traffic sign", "pole"):
        on_top.append(lambda cv: draw_pole(cv, st, rng, d, _on_walk(st, rng, side, d, (0.05, 0.3)),
                                           light=forced == "traffic light", sign=forced == "traffic sign"))
    elif forced == "person":
        on_top.append(lambda cv: draw_person(cv, st, rng, d, _on_walk(st, rng, side, d)))
    elif forced in ("rider", "bicycle", "motorcycle"):
        vehicle = forced if forced != "rider" else ("bicycle" if rng.random() < 0.7 else "motorcycle")
        with_rider = forced == "rider" or rng.random() < 0.5
        on_top.append(lambda cv: draw_rider(cv, st, rng, d, _on_road(st, rng, d, 0.05), vehicle, with_rider))
    elif forced in ("truck", "bus"):
        on_top.append(lambda cv: draw_vehicle(cv, st, rng, d, _on_road(st, rng, d), forced, bool(rng.random() < 0.4)))
    return objects, on_top


def draw_train(cv, st, rng, d):
    """A tram on its track (rail track is a void id) in the middle of the road."""
    centre = (st.vx, st.vx + rng.uniform(-0.1, 0.1) * st.width)
    half = (st.width * 0.004, st.width * 0.1)
    cv.poly("rail track", cv.instance("rail track"),
            st.band((centre[0] - half[0], centre[1] - half[1]), (centre[0] + half[0], centre[1] + half[1])))
    draw_vehicle(cv, st, rng, d, st.x(centre, d), "train", bool(rng.random() < 0.5))


def draw_ego_vehicle(cv, rng):
    """Cityscapes frames show the car's bonnet at the bottom edge, labelled ego vehicle, and a
    strip outside the region of interest."""
    W, H = cv.label.shape[1], cv.label.shape[0]
    inst = cv.instance("ego vehicle")
    cx = W * (0.5 + rng.uniform(-0.03, 0.03))
    cv.ellipse("ego vehicle", inst, cx, H * 1.02, W * 0.62, H * rng.uniform(0.11, 0.14))
    cv.ellipse("ego vehicle", inst, cx, H * 1.02 - H * 0.08, W * 0.25, max(1.0, H * 0.01), detail=BRIGHT)
    band = max(1, int(round(H * 0.01)))
    cv.rect("out of roi", 0, -1, H - band, W, H)


def render_scene(rng, size=DEFAULT_SIZE, domain="source", domain_gap=DEFAULT_DOMAIN_GAP, forced=None):
    """Draw one street scene of ``domain`` (``source`` or ``target``).

    Returns ``(image_bgr uint8 H×W×3, label_ids uint8 H×W)``; ``forced`` (a train class name) is
    guaranteed to be present in the labels.
    """
    width, height = size
    target = domain == "target"
    freq = FREQUENCIES[domain]
    for _ in range(20):
        cv = Canvas(width, height, rng)
        st = Street(rng, width, height, int(rng.integers(2)) if forced == "terrain" else None)
        draw_background(cv, st, rng, freq, forced)
        objects, on_top = plan_objects(st, rng, freq, forced, target)
        for _, draw in objects:
            draw(cv)
        for draw in on_top:
            draw(cv)
        if target:
            draw_ego_vehicle(cv, rng)
        if forced is None or (cv.label == ID[forced]).any():
            break
    # Each target frame has its own strength, around domain_gap: a continuum from source-like to
    # strongly shifted frames (as weather and light vary in real data), along which self-training
    # can move from confident to hard images.
    gap = min(1.0, domain_gap * rng.uniform(*GAP_SPREAD)) if target else 0.0
    image = paint(cv, rng, domain_style(domain, gap))
    if target and domain_gap > 0:
        image = light_and_weather(image, rng)
    return turn_hue(image, rng.uniform(-HUE_TURNS, HUE_TURNS)), cv.label


def light_and_weather(image, rng):
    """A target frame's own contrast (haze) and exposure (dusk, overcast, sun): the part of the gap
    that spans whole frames, from source-like to far darker and flatter."""
    pixels = image.astype(np.float32)
    mean = pixels.mean()
    pixels = mean + rng.uniform(*TARGET_CONTRAST) * (pixels - mean)
    pixels *= rng.uniform(*TARGET_EXPOSURE)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def turn_hue(image, turns):
    """Rotate the hue of a BGR ``uint8`` image by ``turns`` of the colour circle."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)  # OpenCV keeps hue in 0..179 for uint8
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(turns * 180))) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


# ----------------------------------------------------------------------------- conditions (ACDC, Dark Zurich)
# Each rendering is a pure function of (a target frame, BGR uint8; the frame's random stream) applied
# after the frame is drawn, so a fog or night frame is the daytime frame of the same seed, split and
# index seen in other light. Ranges are drawn per frame; colours are BGR.

NIGHT_GAMMA = (1.4, 1.8)         # crushes the shadows before the exposure
NIGHT_EXPOSURE = (0.3, 0.45)
NIGHT_CAST = (1.2, 0.95, 0.7)    # blue-ish: the eye's and the camera's night
NIGHT_LIGHTS = (2, 6)            # street lamps and headlights per frame
LIGHT_COLOURS = ((60, 160, 255), (235, 235, 255), (140, 200, 255))  # sodium, white LED, warm
NIGHT_NOISE = (5.0, 9.0)         # sensor noise σ, grey levels: a high gain
FOG_GREY = (165.0, 215.0)        # the airlight's grey level
FOG_DEPTH = (1.0, 2.4)           # optical depth at the top row (at the bottom row: 0.15 of it)
FOG_PATCHES = 0.15               # relative variation of the depth in soft patches
TWILIGHT_GAMMA = (1.1, 1.3)
TWILIGHT_EXPOSURE = (0.55, 0.8)
TWILIGHT_CAST = (0.78, 0.93, 1.12)  # warm
TWILIGHT_GLOW = 0.3              # the sky brighter towards the top, as after sunset
TWILIGHT_NOISE = (3.0, 5.0)


def _to_uint8(pixels):
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _dimmed(image, rng, gamma, exposure, cast):
    """The frame through a gamma, an exposure and a colour cast (float, 0..255)."""
    pixels = (image.astype(np.float32) / 255) ** np.float32(rng.uniform(*gamma)) * np.float32(rng.uniform(*exposure))
    return pixels * (255 * np.asarray(cast, np.float32))


def render_night(image, rng):
    """Night: dark and blue-ish (a gamma that crushes the shadows, a low exposure, a blue cast), a
    few light sources (street lamps, headlights, mostly around and above the horizon: a bright core
    in a halo of sodium, white or warm light that also lights the scene around it) and strong
    sensor noise."""
    height, width = image.shape[:2]
    dimmed = _dimmed(image, rng, NIGHT_GAMMA, NIGHT_EXPOSURE, NIGHT_CAST)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    glare = np.zeros_like(dimmed)
    lit = np.zeros((height, width, 1), np.float32)
    for _ in range(int(rng.integers(NIGHT_LIGHTS[0], NIGHT_LIGHTS[1] + 1))):
        cy, cx = height * rng.uniform(0.1, 0.65), width * rng.uniform(0.0, 1.0)
        radius = max(0.7, height * rng.uniform(0.012, 0.035))
        distance = (ys - np.float32(cy)) ** 2 + (xs - np.float32(cx)) ** 2
        halo = np.exp(-distance / np.float32(2 * (4 * radius) ** 2))
        light = 1.2 * np.exp(-distance / np.float32(2 * radius ** 2)) + 0.3 * halo
        colour = np.asarray(LIGHT_COLOURS[int(rng.integers(len(LIGHT_COLOURS)))], np.float32)
        glare += light[..., None] * (np.float32(rng.uniform(0.5, 1.0)) * colour)
        lit += 0.8 * np.exp(-distance / np.float32(2 * (6 * radius) ** 2))[..., None]
    pixels = dimmed * (1 + np.minimum(lit, 1.0)) + glare
    pixels += np.float32(rng.uniform(*NIGHT_NOISE)) * rng.standard_normal(pixels.shape, dtype=np.float32)
    return _to_uint8(pixels)


def render_fog(image, rng):
    """Fog: every pixel blended towards a cool grey (the airlight) by the transmission exp(-depth),
    the optical depth growing from the bottom row (the nearest ground) to the top (the far street
    and the sky) and varying in soft patches; slightly blurred by the scattered light, a little
    noise. Contrast falls most at the horizon and above it, as in real fog."""
    height, width = image.shape[:2]
    rows = 1 - np.arange(height, dtype=np.float32) / max(1, height - 1)  # 1 at the top, 0 at the bottom
    depth = np.float32(rng.uniform(*FOG_DEPTH)) * (0.15 + 0.85 * rows[:, None] ** 0.8)
    patches = cv2.GaussianBlur(rng.standard_normal((height, width), dtype=np.float32), (0, 0), height / 6)
    depth = depth * (1 + FOG_PATCHES * patches / (patches.std() + 1e-6))
    transmission = np.exp(-np.maximum(depth, 0))[..., None]
    grey = np.float32(rng.uniform(*FOG_GREY)) * np.array([1.02, 1.0, 0.97], np.float32)
    pixels = image.astype(np.float32) * transmission + grey * (1 - transmission)
    if height >= 64:
        pixels = cv2.GaussianBlur(pixels, (0, 0), 0.6 * height / 128)
    pixels += 2.0 * rng.standard_normal(pixels.shape, dtype=np.float32)
    return _to_uint8(pixels)


def render_twilight(image, rng):
    """Twilight (Dark Zurich): dimmer and warmer than day, the sky glowing towards the top, more
    sensor noise than by day and less than at night."""
    height = image.shape[0]
    pixels = _dimmed(image, rng, TWILIGHT_GAMMA, TWILIGHT_EXPOSURE, TWILIGHT_CAST)
    rows = 1 - np.arange(height, dtype=np.float32) / max(1, height - 1)
    pixels *= (1 + TWILIGHT_GLOW * rows ** 2)[:, None, None]
    pixels += np.float32(rng.uniform(*TWILIGHT_NOISE)) * rng.standard_normal(pixels.shape, dtype=np.float32)
    return _to_uint8(pixels)


CONDITION_RENDERINGS = {"fog": render_fog, "night": render_night, "twilight": render_twilight}


# ----------------------------------------------------------------------------- files

def source_names(count):
    return [f"{k:05d}.png" for k in range(1, count + 1)]


def _spread(count, groups):
    """``(group, running number inside it)`` for ``count`` images spread in order over ``groups``
    in equal runs."""
    placed, seen = [], {}
    for k in range(count):
        group = groups[k * len(groups) // count]
        seen[group] = seen.get(group, -1) + 1
        placed.append((group, seen[group]))
    return placed


def target_stems(count, cities):
    """``city/city_seq_frame`` for ``count`` images spread in order over ``cities``."""
    return [f"{city}/{city}_{seq:06d}_{FRAME:06d}" for city, seq in _spread(count, cities)]


def _sequence(condition, split, k):
    """A GoPro recording's name, as ACDC and Dark Zurich name their sequences: distinct per
    condition, split and ``k``."""
    rank = ("day", "twilight", "fog", "night").index(condition)
    return f"GOPR{100 * (rank + 1) + 10 * SPLITS.index(split) + k:04d}"


def target_files(root, target, split, count):
    """``(condition, image path, label path or None, label holds train ids)`` of a split's images."""
    files = []
    if target == "cityscapes":
        for stem in target_stems(count, CITIES[split]):
            files.append(("day", os.path.join(root, "cityscapes", "leftImg8bit", split, stem + "_leftImg8bit.png"),
                          os.path.join(root, "cityscapes", "gtFine", split, stem + "_gtFine_labelIds.png"), False))
    elif target == "folder":
        for k, (folder, n) in enumerate(_spread(count, FOLDER_DIRS[split])):
            stem = f"{folder}/frame_{n:05d}"
            extension = ".jpg" if k % FOLDER_JPEG_EVERY == FOLDER_JPEG_EVERY - 1 else ".png"
            files.append(("day", os.path.join(root, "folder", "images", split, stem + extension),
                          os.path.join(root, "folder", "labels", split, stem + ".png"), True))
    else:
        groups = [(condition, k) for condition in SPLIT_CONDITIONS[target][split] for k in range(SEQUENCES)]
        for (condition, k), n in _spread(count, groups):
            sequence = _sequence(condition, split, k)
            stem = f"{sequence}/{sequence}_frame_{n:06d}"
            # ACDC: <condition>/<split>/...; Dark Zurich: <split>/<time of day>/..., labels for val and test only.
            inner = os.path.join(condition, split) if target == "acdc" else os.path.join(split, condition)
            label = os.path.join(root, target, "gt", inner, stem + "_gt_labelTrainIds.png")
            files.append((condition, os.path.join(root, target, "rgb_anon", inner, stem + "_rgb_anon.png"),
                          label if target == "acdc" or split != "train" else None, True))
    return files


def plan_files(root, num_source, num_train, num_val, target=DEFAULT_TARGET, num_test=0):
    """One job per image: (domain, stream, index, image path, label path or None, condition, whether
    the label holds train ids); stream 0 is the source, 1 to 3 the target's train, val and test."""
    jobs = []
    for k, name in enumerate(source_names(num_source)):
        jobs.append(("source", 0, k, os.path.join(root, "gta5", "images", name), os.path.join(root, "gta5", "labels", name),
                     "day", False))
    for stream, (split, count) in enumerate(zip(SPLITS, (num_train, num_val, num_test)), 1):
        for k, (condition, image_path, label_path, train_ids) in enumerate(target_files(root, target, split, count)):
            jobs.append(("target", stream, k, image_path, label_path, condition, train_ids))
    return jobs


def _job_done(job):
    return os.path.isfile(job[3]) and (job[4] is None or os.path.isfile(job[4]))


def _write_image(path, image):
    if path.endswith(".jpg"):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        atomic_write_bytes(path, data.tobytes())
    else:
        write_png(path, image)


def _make_image(job):
    """Render and write one image and its label unless both exist; return the train-id histogram."""
    (domain, stream, index, image_path, label_path, condition, train_ids), settings, overwrite = job
    done = not overwrite and _job_done(job[0])
    if done and label_path is not None:
        label = read_label(label_path)
    else:  # an image without a label file is drawn again for its histogram, and not rewritten
        # One independent stream per image: output does not depend on the worker count or order.
        rng = np.random.default_rng([settings["seed"], stream, index])
        image, label = render_scene(rng, tuple(settings["size"]), domain, settings["domain_gap"],
                                    FORCED[index % len(FORCED)])
        if condition in CONDITION_RENDERINGS:
            image = CONDITION_RENDERINGS[condition](image, rng)
        if train_ids:
            label = _LUT[label]
        if not done:
            _write_image(image_path, image)
            if label_path is not None:
                write_png(label_path, label)
    return np.bincount((label if train_ids else _LUT[label]).ravel(), minlength=256)


def pixel_shares(histogram):
    """Percent of pixels per train class, and of void (ignored) pixels, from a train-id histogram."""
    total = max(1, int(histogram.sum()))
    shares = {name: 100.0 * int(histogram[t]) / total for t, name in enumerate(CLASS_NAMES)}
    shares["void"] = 100.0 * int(histogram[IGNORE_INDEX]) / total
    return shares


def format_summary(shares):
    columns = list(shares)
    lines = [f"{'class':<14}" + "".join(f"{c:>14}" for c in columns)]
    for name in list(CLASS_NAMES) + ["void"]:
        lines.append(f"{name:<14}" + "".join(f"{shares[c][name]:>13.2f}%" for c in columns))
    return "\n".join(lines)


def _check_settings(seed, num_source, num_train, num_val, size, domain_gap, workers, target=DEFAULT_TARGET,
                    num_test=0):
    if target not in TARGETS:
        raise UserError(f"--target: unknown target {target!r} (choose from {', '.join(TARGETS)})")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    for flag, value in (("--num-source", num_source), ("--num-train", num_train), ("--num-val", num_val)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if num_test < 0:
        raise UserError(f"--num-test must be >= 0, got {num_test}")
    for flag, split, value in (("--num-train", "train", num_train), ("--num-val", "val", num_val),
                               ("--num-test", "test", num_test)):
        conditions = SPLIT_CONDITIONS[target][split]
        if 0 < value < len(conditions):  # the readers refuse a condition folder that is missing
            raise UserError(f"{flag} must be at least {len(conditions)} with --target {target}: one image for each "
                            f"of {', '.join(conditions)}, got {value}")
    if size[0] < MIN_SIZE[0] or size[1] < MIN_SIZE[1]:
        raise UserError(f"--size {size[0]}x{size[1]} is too small: at least {MIN_SIZE[0]}x{MIN_SIZE[1]}")
    if not 0.0 <= domain_gap <= 1.0:
        raise UserError(f"--domain-gap must be in [0, 1], got {domain_gap}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")


class OtherSettings(UserError):
    """The root holds a benchmark generated with other settings."""


def generated_folders(root, target=DEFAULT_TARGET):
    """The folders the generator writes for ``target`` (and removes with ``overwrite``)."""
    return [os.path.join(root, "gta5", "images"), os.path.join(root, "gta5", "labels")] + \
        [os.path.join(root, *folder.split("/")) for folder in TARGET_FOLDERS[target]]


def _prepare_root(root, settings, overwrite):
    """Refuse to mix settings in one folder; with ``overwrite`` remove what an earlier run wrote."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"--root {root} is a file, not a folder")
    manifest_path = os.path.join(root, MANIFEST)
    target = settings.get("target", DEFAULT_TARGET)
    ours = generated_folders(root, target)
    if not os.path.isfile(manifest_path):
        if any(os.path.isdir(p) and os.listdir(p) for p in ours):
            raise UserError(f"--root {root} already holds gta5/ or {target}/ data that this generator did not "
                            f"write (no {MANIFEST}); choose another --root")
        return None
    try:
        with open(manifest_path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or not isinstance(previous.get("settings", {}), dict):
        raise UserError(f"unreadable {manifest_path}; delete it or choose another --root")
    earlier = previous.get("settings", {}).get("target", DEFAULT_TARGET)
    if earlier != target and any(os.path.isdir(p) and os.listdir(p) for p in ours[2:]):
        raise UserError(f"--root {root} already holds {target}/ data that this generator did not write (its "
                        f"{MANIFEST} is of another --target); choose another --root")
    if overwrite:
        for path in ours + (generated_folders(root, earlier)[2:] if earlier in TARGET_FOLDERS else []):
            shutil.rmtree(path, ignore_errors=True)
        if earlier in TARGET_FOLDERS and earlier != target:
            try:  # the earlier target's folder, when nothing else (such as a derived gtFine2) is in it
                os.rmdir(os.path.join(root, TARGET_FOLDERS[earlier][0].split("/")[0]))
            except OSError:
                pass
        return None
    if previous.get("settings") != settings:
        raise OtherSettings(f"--root {root} holds a benchmark made with other settings ({previous.get('settings')}); "
                            f"pass --overwrite to replace it or choose another --root")
    return previous


def generate_benchmark(root, seed=0, num_source=DEFAULT_NUM_SOURCE, num_train=DEFAULT_NUM_TRAIN,
                       num_val=DEFAULT_NUM_VAL, size=DEFAULT_SIZE, domain_gap=DEFAULT_DOMAIN_GAP, workers=None,
                       overwrite=False, progress=True, target=DEFAULT_TARGET, num_test=0):
    """Write the benchmark under ``root`` (see the module docstring), its target in the layout of
    ``target`` (``cityscapes``, ``acdc``, ``darkzurich`` or ``folder``), with a labelled ``test``
    split of ``num_test`` images when that is above 0, and return its manifest.

    Images that already exist are kept (a rerun resumes or, when complete, only re-reads the
    labels for the summary) unless ``overwrite``; a ``root`` made with other settings (another
    ``target`` too) is an error. :func:`target_args` gives the flags that read the target.
    """
    _check_settings(seed, num_source, num_train, num_val, size, domain_gap, workers, target, num_test)
    settings = dict(version=VERSION, seed=int(seed), num_source=int(num_source), num_train=int(num_train),
                    num_val=int(num_val), size=[int(size[0]), int(size[1])], domain_gap=float(domain_gap))
    if target != DEFAULT_TARGET:  # absent for Cityscapes: a benchmark made before --target existed stays complete
        settings["target"] = target
    if num_test:  # absent without a test split, likewise
        settings["num_test"] = int(num_test)
    previous = _prepare_root(root, settings, overwrite)
    jobs = plan_files(root, num_source, num_train, num_val, target, num_test)
    if previous is not None and previous.get("complete") and all(_job_done(j) for j in jobs):
        return previous
    manifest = dict(generator="tools.synthetic", settings=settings, complete=False)
    atomic_write_text(os.path.join(root, MANIFEST), json.dumps(manifest, indent=2) + "\n")

    tasks = [(job, settings, overwrite) for job in jobs]
    workers = min(min(8, os.cpu_count() or 1) if workers is None else workers, len(tasks))  # no idle process
    keys = ["source"] + ["target_" + split for split in SPLITS]  # by stream
    histograms = {key: 0 for key, count in zip(keys, (num_source, num_train, num_val, num_test)) if count}
    display = dict(total=len(tasks), desc="drawing scenes", unit="image", disable=not progress)
    if workers > 1:
        with get_context().Pool(workers) as pool:
            results = list(shown(pool.imap(_make_image, tasks, chunksize=8), **display))
    else:
        results = list(shown(map(_make_image, tasks), **display))
    for (domain, stream, *_), histogram in zip(jobs, results):
        histograms[keys[stream]] += histogram
    manifest["pixel_shares"] = {key: {k: round(v, 3) for k, v in pixel_shares(h).items()}
                                for key, h in histograms.items()}
    manifest["complete"] = True
    atomic_write_text(os.path.join(root, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    return manifest


def target_args(root, target=DEFAULT_TARGET, labels=True):
    """The flags that point ``main.py``, ``generate_pseudo_labels.py`` and ``construct_hard_patch.py``
    at the target :func:`generate_benchmark` wrote under ``root``; ``labels``: with the ground truth's
    flag where the target needs one (the folder target's ``--label-dir``; construct_hard_patch.py
    takes none). Cityscapes' labels hold label ids: convert ``<root>/cityscapes/gtFine`` into
    ``gtFine2`` with ``utils/transfer_trainid.py`` first; the other targets hold train ids."""
    if target not in TARGETS:
        raise UserError(f"--target: unknown target {target!r} (choose from {', '.join(TARGETS)})")
    if target == "folder":
        args = ["--target-dataset", "folder", "--data-dir", os.path.join(root, "folder", "images")]
        return args + (["--label-dir", os.path.join(root, "folder", "labels")] if labels else [])
    args = ["--target-dataset", target, "--data-dir", os.path.join(root, target)]
    if target == "acdc":  # the reader's default is all four conditions; the benchmark draws two
        args += ["--conditions", ",".join(SPLIT_CONDITIONS["acdc"]["train"])]
    return args


# ----------------------------------------------------------------------------- command line

def build_parser():
    parser = ArgumentParser(
        prog="python -m tools.synthetic",
        description="Draw a small two-domain street-scene benchmark: a source domain in the GTA5 layout "
                    "(<root>/gta5) and a target domain in the layout of --target (default: Cityscapes, "
                    "<root>/cityscapes), so the whole adaptation pipeline runs in minutes on a CPU. The same "
                    "settings always give the same files.",
        epilog="Then point the stages at <root>/gta5 (--source-root) and at the target (the flags are printed at the "
               "end); see docs/synthetic.md.")
    parser.add_argument("--root", default="./data/synthetic", metavar="DIR",
                        help="output folder; gets gta5/, the target's folder (cityscapes/, acdc/, darkzurich/ or "
                             "folder/) and synthetic.json (default: %(default)s)")
    parser.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET,
                        help="the target's layout, one that --target-dataset reads: cityscapes (label ids in gtFine/, "
                             "converted by utils/transfer_trainid.py), acdc (rgb_anon/ and gt/ train ids, half the "
                             "images of each split rendered in fog, half at night), darkzurich (train: day, twilight "
                             "and night without labels; val: night with train ids), folder (folder/images/<split>/... "
                             ".png and .jpg, folder/labels/<split>/... train-id .png) (default: %(default)s)")
    parser.add_argument("--seed", type=seed, default=0, metavar="N",
                        help="random seed; the same seed gives byte-identical files (default: %(default)s)")
    parser.add_argument("--num-source", type=at_least(1), default=DEFAULT_NUM_SOURCE, metavar="N",
                        help="labelled source (GTA5-layout) images (default: %(default)s)")
    parser.add_argument("--num-train", type=at_least(1), default=DEFAULT_NUM_TRAIN, metavar="N",
                        help=f"target training images, spread over the cities {', '.join(TRAIN_CITIES)} "
                             f"(acdc: the conditions, darkzurich: the times of day, folder: sub-folders) "
                             f"(default: %(default)s)")
    parser.add_argument("--num-val", type=at_least(1), default=DEFAULT_NUM_VAL, metavar="N",
                        help=f"target validation images with ground truth, cities {', '.join(VAL_CITIES)} "
                             f"(acdc: fog and night, darkzurich: night) (default: %(default)s)")
    parser.add_argument("--num-test", type=at_least(0), default=0, metavar="N",
                        help=f"target test images with ground truth, held out from model selection (read them with "
                             f"--val-split test), cities {', '.join(TEST_CITIES)} (other targets: the conditions of "
                             f"val); 0: no test split (default: %(default)s)")
    parser.add_argument("--size", type=input_size, default=DEFAULT_SIZE, metavar="WxH",
                        help="image size WIDTHxHEIGHT of both domains (default: %dx%d)" % DEFAULT_SIZE)
    parser.add_argument("--domain-gap", type=probability, default=DEFAULT_DOMAIN_GAP, metavar="G",
                        help="strength of the target's appearance shift in [0, 1]: 0 gives the source palette and "
                             "textures (class frequencies and void ids still differ), 1 the full shift of palette, "
                             "textures, lighting, noise and blur (default: %(default)s)")
    parser.add_argument("--workers", type=at_least(0), default=None, metavar="N",
                        help="parallel processes; 0 or 1 draws in this process (default: the number of CPU cores, "
                             "at most 8)")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate everything; without it, existing files are kept, a finished benchmark with "
                             "the same settings is left as it is, and one with other settings is an error")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if os.path.isfile(args.root):
        raise UserError(f"--root {args.root} is a file, not a folder")
    with folder_lock(args.root, "--root"):  # one generator per folder (utils/run_folder.py)
        manifest = generate_benchmark(args.root, seed=args.seed, num_source=args.num_source, num_train=args.num_train,
                                      num_val=args.num_val, size=args.size, domain_gap=args.domain_gap,
                                      workers=args.workers, overwrite=args.overwrite, target=args.target,
                                      num_test=args.num_test)
    s = manifest["settings"]
    print(f"synthetic benchmark in {args.root} (seed {s['seed']}, {s['size'][0]}x{s['size'][1]}, "
          f"domain gap {s['domain_gap']}):")
    print(f"  source  {os.path.join(args.root, 'gta5')}: {s['num_source']} images")
    test = f", {s['num_test']} test" if s.get("num_test") else ""
    print(f"  target  {os.path.join(args.root, args.target)}: {s['num_train']} train, {s['num_val']} val{test} images")
    print("class pixel shares:")
    print(format_summary(manifest["pixel_shares"]))
    if args.target != DEFAULT_TARGET:
        print("read the target with: " + " ".join(target_args(args.root, args.target)))
    return 0


if __name__ == "__main__":
    run(main)
