"""Label Studio and CVAT round trips: open queries out as points, labeled points back in.

Why points: both tools can show a pre-placed keypoint and let a person change its label,
which is exactly "say the class of this pixel". A query is exported with the placeholder
label ``?``; the person relabels each point with a class (or ``unknown``) and the tool's
own export is imported back.

Coordinates: the store keeps ``(y, x)`` pixel indices in the original image resolution.
Label Studio wants percent of the image size, CVAT pixel coordinates with the origin at the
pixel corner; both get the pixel centre (``x + 0.5``). Back in, a point maps to the pixel it
lies in (``floor``), and is matched to the nearest query of the same image within
``tolerance`` pixels, so rounding of percentages does not lose answers.

Import is all-or-nothing on parse errors (nothing is written unless the whole file parses)
and writes every matched answer in one store transaction; what did not match is reported.
A file that cannot be used at all (not JSON or XML, nested too deeply, coordinates that are
not finite numbers once scaled to pixels, ...) is one ``InteropError`` saying where and what;
no other exception escapes an import, whatever the file holds.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import quoteattr

from balseg.errors import InteropError
from balseg.labels.store import LabelStore, Query

QUERY_LABEL = "?"
UNKNOWN_LABEL = "unknown"
LS_FROM_NAME = "kp"
LS_TO_NAME = "image"
LS_POINT_WIDTH = 0.6  # keypoint size in percent of the image width (display only)
MAX_MESSAGES = 200
_REGION_ID = re.compile(r"^bq(\d{1,18})$")
_MAX_NAME = 80


def shown(value: object) -> str:
    """A value from a file as it may appear in a message: quoted, printable, bounded."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        text = "a number with more than 30 digits"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = repr(value[: 4 * _MAX_NAME])
    elif isinstance(value, (list, dict)):  # never repr: it may be nested very deeply
        text = f"a JSON {'list' if isinstance(value, list) else 'object'}"
    else:
        text = repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_NAME else text[: _MAX_NAME - 3] + "..."


@dataclass
class ImportReport:
    """What an import did: counts and one message per point that was not written."""

    points: int = 0  # labeled points found in the file
    written: int = 0  # answers written to the store
    unmatched: int = 0  # no query of that image within the tolerance
    unknown_labels: int = 0  # label names that are not a class, 'unknown' or '?'
    unlabeled: int = 0  # points still carrying the placeholder label '?'
    duplicates: int = 0  # a second point for a query already matched in this file
    already_answered: int = 0  # the query already has an answer by this annotator
    unknown_images: int = 0  # images (tasks) that are not part of this run
    ignored: int = 0  # shapes/results that are not points (boxes, polygons, ...)
    messages: list[str] = field(default_factory=list)
    _dropped: int = 0

    def note(self, msg: str) -> None:
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(msg)
        else:
            self._dropped += 1

    @property
    def empty(self) -> bool:
        """The file holds no labeled point at all (nothing could be imported)."""
        return self.points == 0

    @property
    def ok(self) -> bool:
        """True when the file held points and every one became (or already was) an answer."""
        return not self.empty and (self.unmatched + self.unknown_labels + self.duplicates
                                   + self.unknown_images + self.unlabeled) == 0

    def summary(self) -> str:
        lines = [
            f"points in file: {self.points}, written: {self.written},"
            f" already answered by this annotator: {self.already_answered}",
            f"unmatched: {self.unmatched}, unknown labels: {self.unknown_labels},"
            f" still '{QUERY_LABEL}': {self.unlabeled}, duplicates: {self.duplicates},"
            f" unknown images: {self.unknown_images}, ignored non-points: {self.ignored}",
        ]
        if self.empty:
            lines.append("the file holds no labeled point: nothing was imported (export it"
                         " from the tool after labeling the points)")
        lines += [f"  - {m}" for m in self.messages]
        if self._dropped:
            lines.append(f"  ... and {self._dropped} more")
        return "\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8")


def percent_of(pixel: int, size: int) -> float:
    """Percent coordinate of a pixel centre (Label Studio's unit)."""
    return 100.0 * (pixel + 0.5) / size


def _check_names(class_names: Sequence[str]) -> None:
    for reserved in (QUERY_LABEL, UNKNOWN_LABEL):
        if reserved in class_names:
            raise InteropError(f"a class is named {reserved!r}, which interop reserves")


def _open_by_image(store: LabelStore, cycle: int) -> dict[str, list[Query]]:
    out: dict[str, list[Query]] = {}
    for q in store.open_queries(cycle=cycle):
        out.setdefault(q.image_id, []).append(q)
    if not out:
        raise InteropError(f"cycle {cycle} has no open query to export")
    return out


# -- Label Studio -------------------------------------------------------------------------------
def label_studio_config(class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    """The labeling config (XML) for the exported tasks: one KeyPointLabels control."""
    _check_names(class_names)
    labels = [f'    <Label value={quoteattr(QUERY_LABEL)} background="#ffd400"/>',
              f'    <Label value={quoteattr(UNKNOWN_LABEL)} background="#808080"/>']
    for name, rgb in zip(class_names, palette, strict=False):
        colour = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))
        labels.append(f"    <Label value={quoteattr(name)} background={quoteattr(colour)}/>")
    return (
        "<View>\n"
        f'  <Image name="{LS_TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <KeyPointLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}" strokeWidth="2">\n'
        + "\n".join(labels)
        + "\n  </KeyPointLabels>\n</View>\n"
    )


def export_label_studio(
    store: LabelStore,
    cycle: int,
    image_url_for: Callable[[str], str],
    class_names: Sequence[str],
    image_size_for: Callable[[str], tuple[int, int]],
) -> list[dict[str, Any]]:
    """One task per image with open queries of ``cycle``, each query a pre-placed keypoint.

    ``image_size_for(image_id) -> (width, height)`` of the original image. The query ids go
    into ``data.balseg_query_ids`` and the region ids (``bq<id>``), so the import can match
    by id and fall back to position.
    """
    _check_names(class_names)
    tasks = []
    for image_id, qs in _open_by_image(store, cycle).items():
        w, h = image_size_for(image_id)
        result = [{
            "id": f"bq{q.id}",
            "type": "keypointlabels",
            "from_name": LS_FROM_NAME,
            "to_name": LS_TO_NAME,
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {"x": percent_of(q.x, w), "y": percent_of(q.y, h),
                      "width": LS_POINT_WIDTH, "keypointlabels": [QUERY_LABEL]},
        } for q in qs]
        tasks.append({
            "data": {"image": image_url_for(image_id), "balseg_image_id": image_id,
                     "balseg_cycle": cycle, "balseg_query_ids": [q.id for q in qs]},
            "predictions": [{"model_version": f"balseg-cycle-{cycle}", "result": result}],
        })
    return tasks


@dataclass
class _Point:
    image_id: str
    cy: float  # continuous pixel coordinates: pixel i covers [i, i + 1)
    cx: float
    label: str
    where: str
    hint: int | None = None  # query id the file claims, if any


def _size(image_id: str, item: dict[str, Any],
          image_size_for: Callable[[str], tuple[int, int]], where: str) -> tuple[int, int]:
    """Our image's size; Label Studio's ``original_width/height`` if the file is unreadable."""
    try:
        return image_size_for(image_id)
    except (LookupError, OSError) as err:
        w, h = item.get("original_width"), item.get("original_height")
        if (isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool)
                and not isinstance(h, bool) and 0 < w < 2**31 and 0 < h < 2**31):
            return w, h
        raise InteropError(f"{where}: size of image {shown(image_id)} unknown ({err})") from err


def _url_key(url: str) -> str:
    return posixpath.basename(unquote(urlsplit(url).path or url).rstrip("/"))


def _load_json(tasks_json: str | bytes | list[Any]) -> list[Any]:
    if isinstance(tasks_json, list):
        return tasks_json
    try:
        data = json.loads(tasks_json)
    except RecursionError:
        raise InteropError("not a Label Studio JSON export: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, a 5000-digit number
        raise InteropError(f"not a Label Studio JSON export: {err}") from err
    if isinstance(data, dict):  # a single task
        data = [data]
    if not isinstance(data, list):
        raise InteropError("a Label Studio export is a JSON list of tasks")
    return data


def import_label_studio(
    store: LabelStore,
    tasks_json: str | bytes | list[Any],
    *,
    annotator: str,
    class_names: Sequence[str],
    image_size_for: Callable[[str], tuple[int, int]],
    image_url_for: Callable[[str], str] | None = None,
    tolerance: int = 1,
) -> ImportReport:
    """Read Label Studio's JSON export (tasks with ``annotations[].result[]`` keypoints)."""
    tasks = _load_json(tasks_json)
    report = ImportReport()
    known = {q.image_id for q in store.queries()}
    by_url: dict[str, str] = {}
    if image_url_for is not None:
        for image_id in known:
            url = image_url_for(image_id)
            by_url[url] = image_id
            by_url.setdefault(_url_key(url), image_id)
    points: list[_Point] = []
    hinted_ids: dict[int, set[int] | None] = {}
    for ti, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data", {}), dict):
            raise InteropError(f"task #{ti} is not a Label Studio task object")
        data = task.get("data") or {}
        tname = f"task {shown(task['id'])}" if "id" in task else f"task #{ti}"
        image_id = data.get("balseg_image_id")
        if not isinstance(image_id, str) or image_id not in known:
            url = data.get("image")
            image_id = None
            if isinstance(url, str):
                image_id = by_url.get(url) or by_url.get(_url_key(url))
        annotations = task.get("annotations") or task.get("completions") or []
        if not isinstance(annotations, list):
            raise InteropError(f"{tname}: 'annotations' must be a list")
        if image_id is None:
            report.unknown_images += 1
            report.note(f"{tname}: image {shown(data.get('image'))} is not part of this run")
            continue
        ids = data.get("balseg_query_ids")
        allowed = {int(i) for i in ids if isinstance(i, int)} if isinstance(ids, list) else None
        tname = f"{tname} ({shown(image_id)})"
        if not annotations:
            report.note(f"{tname}: no annotation")
        for ai, ann in enumerate(annotations):
            if not isinstance(ann, dict) or not isinstance(ann.get("result", []), list):
                raise InteropError(f"{tname}: annotation #{ai} has no result list")
            if ann.get("was_cancelled"):
                report.note(f"{tname}: annotation #{ai} was skipped in Label Studio")
                continue
            for ri, item in enumerate(ann.get("result") or []):
                where = f"{tname} annotation #{ai} result #{ri}"
                if not isinstance(item, dict):
                    raise InteropError(f"{where} is not an object")
                if item.get("type") != "keypointlabels":
                    report.ignored += 1
                    continue
                value = item.get("value")
                try:
                    xp, yp = float(value["x"]), float(value["y"])
                    labels = value["keypointlabels"]
                except (TypeError, KeyError, ValueError, OverflowError) as err:
                    raise InteropError(f"{where}: bad keypoint value"
                                       f" ({type(err).__name__}: {shown(str(err))})") from None
                if not isinstance(labels, list) or len(labels) != 1 or not isinstance(
                    labels[0], str
                ):
                    raise InteropError(f"{where}: keypointlabels must hold one label name")
                w, h = _size(image_id, item, image_size_for, where)
                cy, cx = yp * h / 100.0, xp * w / 100.0
                if not (math.isfinite(cx) and math.isfinite(cy)):
                    raise InteropError(f"{where}: keypoint coordinates (x={shown(xp)},"
                                       f" y={shown(yp)} percent) are not finite in pixels")
                region = item.get("id")
                m = _REGION_ID.match(region) if isinstance(region, str) else None
                points.append(_Point(image_id, cy, cx, labels[0], where,
                                     int(m.group(1)) if m else None))
                hinted_ids[len(points) - 1] = allowed
    _match_and_write(store, points, hinted_ids, annotator, class_names, tolerance, report)
    return report


# -- CVAT -------------------------------------------------------------------------------------
def export_cvat(
    store: LabelStore,
    cycle: int,
    image_name_for: Callable[[str], str],
    class_names: Sequence[str],
    image_size_for: Callable[[str], tuple[int, int]],
    palette: Sequence[Sequence[int]] | None = None,
) -> str:
    """CVAT for images 1.1 XML: every open query of ``cycle`` as a point labeled ``?``.

    Upload it as annotations ("CVAT for images 1.1") to a CVAT task holding the same images
    (``image_name_for`` gives the names the task knows them by).
    """
    _check_names(class_names)
    groups = _open_by_image(store, cycle)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = f"balseg cycle {cycle}"
    ET.SubElement(task, "size").text = str(len(groups))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    colours = ["#ffd400", "#808080"] + [
        "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3])) for rgb in (palette or [])
    ]
    for i, name in enumerate([QUERY_LABEL, UNKNOWN_LABEL, *class_names]):
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = name
        ET.SubElement(lab, "color").text = colours[i] if i < len(colours) else "#33ddff"
        ET.SubElement(lab, "type").text = "points"
        ET.SubElement(lab, "attributes")
    for idx, (image_id, qs) in enumerate(groups.items()):
        w, h = image_size_for(image_id)
        img = ET.SubElement(root, "image", id=str(idx), name=image_name_for(image_id),
                            width=str(w), height=str(h))
        for q in qs:
            ET.SubElement(img, "points", label=QUERY_LABEL, source="auto", occluded="0",
                          points=f"{q.x + 0.5:.2f},{q.y + 0.5:.2f}", z_order="0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def import_cvat(
    store: LabelStore,
    xml_text: str | bytes,
    *,
    annotator: str,
    class_names: Sequence[str],
    image_name_for: Callable[[str], str],
    tolerance: int = 1,
) -> ImportReport:
    """Read a CVAT for images 1.1 XML export; ``<points>`` become answers."""
    text = xml_text.decode("utf-8", "replace") if isinstance(xml_text, bytes) else xml_text
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise InteropError("XML with DOCTYPE/ENTITY declarations is refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise InteropError(f"not a CVAT XML file: {err}") from err
    except RecursionError:
        raise InteropError("not a CVAT XML file: nested too deeply") from None
    if root.tag != "annotations":
        raise InteropError(f"not a CVAT for images XML file (root <{root.tag}>)")
    report = ImportReport()
    by_name: dict[str, str] = {}
    for image_id in {q.image_id for q in store.queries()}:
        name = image_name_for(image_id)
        by_name[name] = image_id
        by_name.setdefault(posixpath.basename(name), image_id)
    points: list[_Point] = []
    for img in root.iter("image"):
        name = img.get("name", "")
        image_id = by_name.get(name) or by_name.get(posixpath.basename(name))
        shapes = list(img)
        if image_id is None:
            report.unknown_images += 1
            report.note(f"image {shown(name)} is not part of this run ({len(shapes)} shapes)")
            continue
        for si, shape in enumerate(shapes):
            where = f"image {shown(name)} shape #{si}"
            if shape.tag != "points":
                report.ignored += 1
                continue
            label = shape.get("label")
            if label is None:
                raise InteropError(f"{where}: <points> without a label")
            for pi, pair in enumerate((shape.get("points") or "").split(";")):
                try:
                    xs, ys = pair.split(",")
                    cx, cy = float(xs), float(ys)
                except ValueError:
                    raise InteropError(f"{where}: bad points {shown(pair)}") from None
                if not (math.isfinite(cx) and math.isfinite(cy)):
                    raise InteropError(f"{where}: point coordinates must be finite")
                points.append(_Point(image_id, cy, cx, label, f"{where} point #{pi}"))
    _match_and_write(store, points, {}, annotator, class_names, tolerance, report)
    return report


# -- matching -----------------------------------------------------------------------------------
def _match_and_write(
    store: LabelStore,
    points: list[_Point],
    allowed_ids: dict[int, set[int] | None],
    annotator: str,
    class_names: Sequence[str],
    tolerance: int,
    report: ImportReport,
) -> None:
    """Match each point to a query, then write every match in one transaction."""
    class_ids = {n: i for i, n in enumerate(class_names)}
    at: dict[tuple[str, int, int], Query] = {(q.image_id, q.y, q.x): q for q in store.queries()}
    chosen: dict[int, tuple[int | None, str]] = {}
    for i, p in enumerate(points):
        report.points += 1
        py, px = math.floor(p.cy), math.floor(p.cx)
        if p.label == QUERY_LABEL:
            report.unlabeled += 1
            report.note(f"{p.where}: pixel (y={py}, x={px}) still has the label "
                        f"'{QUERY_LABEL}' (not answered)")
            continue
        if p.label == UNKNOWN_LABEL:
            label: int | None = None
        elif p.label in class_ids:
            label = class_ids[p.label]
        else:
            report.unknown_labels += 1
            report.note(f"{p.where}: label {shown(p.label)} is not a class of this run")
            continue
        allowed = allowed_ids.get(i)
        near = (at.get((p.image_id, py + dy, px + dx))
                for dy in range(-tolerance, tolerance + 1)
                for dx in range(-tolerance, tolerance + 1))
        cands = [q for q in near if q is not None and (allowed is None or q.id in allowed)]
        hit = next((q for q in cands if q.id == p.hint), None)
        if hit is None and cands:
            hit = min(cands, key=lambda q: ((q.y + 0.5 - p.cy) ** 2 + (q.x + 0.5 - p.cx) ** 2,
                                             q.id))
        if hit is None:
            report.unmatched += 1
            report.note(f"{p.where}: no query within {tolerance} px of pixel (y={py}, x={px})")
            continue
        if hit.id in chosen:
            report.duplicates += 1
            report.note(f"{p.where}: second point for query {hit.id} (pixel y={hit.y},"
                        f" x={hit.x}); kept the first ({chosen[hit.id][1]})")
            continue
        chosen[hit.id] = (label, p.where)
    with store.transaction() as tx:  # the "already answered" check and the write: one step
        items = []
        for qid, (lab, _) in chosen.items():
            if tx.answer_by(qid, annotator) is not None:
                report.already_answered += 1
            else:
                items.append((qid, lab))
        if items:
            tx.add_answers(items, source="import", annotator=annotator)
    report.written = len(items)
