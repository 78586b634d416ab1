"""What Label Studio is shown and what comes back: the labeling config, one task per
queried pixel, an annotation read as a class, and Label Studio's brush RLE.

One task per query (not per image): the annotator sees the image with the queried pixel
as a pre-annotated keypoint and answers with one key (a ``Choices`` control: one hotkey
per class, plus ``unknown``), then submits. Each task's ``data.score`` is the acquisition
score, and tasks are uploaded in balseg's order (highest score first, then query id), so
Label Studio's default order and the Data Manager sorted by ``score`` (descending) both
give balseg's order.

Coordinates: the keypoint sits at the pixel centre in percent of the original image
(``interop.percent_of``); the answer is taken for the queried pixel whatever happens to
the point (it is a marker, not the answer).

The brush RLE is Label Studio's own format (``label_studio_sdk.converter.brush``): a
header (value count in 32 bits, word size - 1 in 5 bits, four run-length sizes - 1 in 4
bits each), then runs: a flag bit (1: a repeated value), 2 bits choosing the run-length
size, the length - 1, and the 8-bit value(s), over the flattened RGBA image; the tests
decode it with the SDK.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from balseg.annotate.interop import UNKNOWN_LABEL, _check_names, percent_of
from balseg.labels.store import Query

IMAGE = "image"
POINT = "pixel"  # the keypoint control: the queried pixel, a marker
CLASS = "class"  # the choice: the answer
MASK = "mask"  # brush labels: the ML backend's predicted mask
POINT_LABEL = "queried pixel"
MODEL_VERSION = "balseg"  # the queries' pre-annotations (the backend's: balseg-cycle-N)
UNKNOWN_KEY = "0"
# Label Studio's own keys (u unselects a region, h hides it, tool letters ...) are left out
CLASS_KEYS = "123456789" + "acdfgijlnqstxy"
MIN_POINT_PERCENT = 0.8  # keypoint size (display only) in percent of the image width


def class_hotkeys(num_classes: int) -> list[str | None]:
    """One key per class (1-9, then letters Label Studio does not use); later ones none."""
    return [CLASS_KEYS[i] if i < len(CLASS_KEYS) else None for i in range(num_classes)]


def _colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def label_config(class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    """The project's labeling config: the image, the queried pixel, the class choice (one
    hotkey per class and ``unknown``), and brush labels for the ML backend's masks."""
    _check_names(class_names)
    keys = class_hotkeys(len(class_names))
    choices, brushes = [], []
    for name, key, rgb in zip(class_names, keys, palette, strict=False):
        hot = f" hotkey={quoteattr(key)}" if key else ""
        choices.append(f"    <Choice value={quoteattr(name)}{hot}"
                       f" style={quoteattr('border-left: 6px solid ' + _colour(rgb))}/>")
        brushes.append(f"    <Label value={quoteattr(name)} background={quoteattr(_colour(rgb))}"
                       f' hotkey="ctrl+alt+{len(brushes) + 1}"/>')
    choices.append(f"    <Choice value={quoteattr(UNKNOWN_LABEL)}"
                   f" hotkey={quoteattr(UNKNOWN_KEY)}/>")
    return (
        "<View>\n"
        '  <Header value="Which class is the pixel under the yellow point?'
        ' Press its key, then submit (Ctrl+Enter)."/>\n'
        f'  <Image name="{IMAGE}" value="$image" zoom="true" zoomControl="true"'
        ' rotateControl="false"/>\n'
        f'  <KeyPointLabels name="{POINT}" toName="{IMAGE}" strokeWidth="2"'
        ' opacity="0.45" smart="false">\n'
        f'    <Label value="{POINT_LABEL}" background="#ffd400" hotkey="ctrl+alt+p"/>\n'
        "  </KeyPointLabels>\n"
        f'  <Choices name="{CLASS}" toName="{IMAGE}" choice="single-radio" required="true"'
        ' showInline="true">\n'
        + "\n".join(choices)
        + "\n  </Choices>\n"
        f'  <BrushLabels name="{MASK}" toName="{IMAGE}">\n'
        + "\n".join(brushes)
        + "\n  </BrushLabels>\n</View>\n"
    )


def task_for(q: Query, image_url: str, size: tuple[int, int], rank: int) -> dict[str, Any]:
    """One query as a Label Studio task with its keypoint pre-annotation.

    ``size`` is the original image's (width, height); ``rank`` its place in balseg's order
    within the upload (1 first)."""
    w, h = size
    point = {
        "id": f"bq{q.id}",
        "type": "keypointlabels",
        "from_name": POINT,
        "to_name": IMAGE,
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "readonly": True,
        "value": {"x": percent_of(q.x, w), "y": percent_of(q.y, h),
                  "width": max(MIN_POINT_PERCENT, 100.0 * 0.6 / w),
                  "keypointlabels": [POINT_LABEL]},
    }
    score = None if q.score is None or not math.isfinite(q.score) else float(q.score)
    return {
        "data": {"image": image_url, "score": score, "balseg_rank": rank,
                 "balseg_query_id": q.id, "balseg_image_id": q.image_id,
                 "balseg_cycle": q.cycle, "balseg_pixel": f"y={q.y}, x={q.x}"},
        "predictions": [{"model_version": MODEL_VERSION, "score": score,
                         "result": [point]}],
    }


def balseg_order(queries: Sequence[Query]) -> list[Query]:
    """Highest acquisition score first (queries without one after), then query id."""
    return sorted(queries, key=lambda q: (q.score is None or not math.isfinite(q.score),
                                          -(q.score or 0.0), q.id))


@dataclass(frozen=True)
class Choice:
    """What one annotation says: ``label`` a class id or None for unknown; ``problem``
    when it says nothing usable (then ``label`` is meaningless)."""

    label: int | None
    problem: str | None = None


def read_choice(result: Any, class_names: Sequence[str]) -> Choice:
    """The class an annotation's ``result`` chose (the ``class`` control)."""
    if not isinstance(result, list):
        return Choice(None, "its result is not a list")
    picked: list[str] = []
    for item in result:
        if (isinstance(item, dict) and item.get("from_name") == CLASS
                and item.get("type") == "choices"):
            value = item.get("value") or {}
            got = value.get("choices") if isinstance(value, dict) else None
            if isinstance(got, list):
                picked.extend(str(c) for c in got)
    if not picked:
        return Choice(None, "no class was chosen")
    if len(picked) > 1:
        return Choice(None, f"{len(picked)} classes were chosen")
    name = picked[0]
    if name == UNKNOWN_LABEL:
        return Choice(None)
    if name not in class_names:
        return Choice(None, f"{name[:64]!r} is not a class of this run")
    return Choice(list(class_names).index(name))


# -- Label Studio's brush RLE -------------------------------------------------------------------
_RLE_SIZES = (3, 4, 8, 16)  # bits of a run's length - 1, chosen by 2 bits


class _Bits:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def put(self, value: int, bits: int) -> None:
        self.parts.append(format(value, f"0{bits}b"))

    def to_bytes(self) -> list[int]:
        text = "".join(self.parts)
        text += "0" * (8 - len(text) % 8)  # as the SDK pads (a whole zero byte when even)
        return [int(text[i:i + 8], 2) for i in range(0, len(text), 8)]


def encode_rle(values: np.ndarray) -> list[int]:
    """Label Studio's RLE of a flat uint8 array (word size 8, run sizes 3/4/8/16 bits)."""
    flat = np.asarray(values, dtype=np.uint8).ravel()
    out = _Bits()
    out.put(len(flat), 32)
    out.put(8 - 1, 5)
    for size in _RLE_SIZES:
        out.put(size - 1, 4)
    if len(flat):
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [len(flat)]]))
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            value = int(flat[start])
            if length == 1:
                out.put(0, 1)
                out.put(0, 2)
                out.put(0, _RLE_SIZES[0])
                out.put(value, 8)
                continue
            while length > 0:
                run = min(length, 1 << _RLE_SIZES[-1])
                which = next(i for i, s in enumerate(_RLE_SIZES) if run <= 1 << s)
                out.put(1, 1)
                out.put(which, 2)
                out.put(run - 1, _RLE_SIZES[which])
                out.put(value, 8)
                length -= run
    return out.to_bytes()


def mask_rle(mask: np.ndarray) -> list[int]:
    """A boolean [H, W] mask as Label Studio's brush RLE (RGBA, 255 where set)."""
    grey = np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)
    return encode_rle(np.repeat(grey.ravel(), 4))


def brush_results(classes: np.ndarray, class_names: Sequence[str], *, from_name: str = MASK,
                  to_name: str = IMAGE, names: Sequence[str] | None = None
                  ) -> list[dict[str, Any]]:
    """One ``brushlabels`` region per class present in a class map [H, W]; ``names`` are
    the labels to use (the project's), default the run's class names."""
    h, w = classes.shape
    labels = list(names or class_names)
    out = []
    for c in np.unique(classes).tolist():
        if c >= len(labels):
            continue
        out.append({
            "id": f"balseg-{c}",
            "type": "brushlabels",
            "from_name": from_name,
            "to_name": to_name,
            "original_width": int(w),
            "original_height": int(h),
            "image_rotation": 0,
            "readonly": False,
            "value": {"format": "rle", "rle": mask_rle(classes == c),
                      "brushlabels": [labels[c]]},
        })
    return out
