"""Label Studio and CVAT round trips, on files shaped like the ones those tools write."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from balseg.annotate.interop import (
    InteropError,
    export_cvat,
    export_label_studio,
    import_cvat,
    import_label_studio,
    label_studio_config,
    percent_of,
)
from balseg.annotate.rundata import RunImages
from balseg.cli import register

from .annotate_support import CLASS_NAMES, PALETTE, QUERIES, SIZES, Run

URL = "/data/local-files/?d=images/{}.png"


def url_for(image_id: str) -> str:
    return URL.format(image_id.replace("/", "_"))


def size_for(image_id: str) -> tuple[int, int]:
    return SIZES[image_id]


def name_for(image_id: str) -> str:
    return image_id.replace("/", "_") + ".png"


def answers(run: Run) -> list[tuple[int, int | None, str, str | None]]:
    with run.store() as s:
        return [(a.query_id, a.label, a.source, a.annotator) for a in s.answers()]


# -- Label Studio ------------------------------------------------------------------------------
def test_label_studio_export_places_a_keypoint_on_every_open_query(run: Run) -> None:
    with run.store() as s:
        s.add_answer(run.query_ids[1], 0, source="person", annotator="x")  # not open: left out
        tasks = export_label_studio(s, 0, url_for, CLASS_NAMES, size_for)
    assert [t["data"]["balseg_image_id"] for t in tasks] == ["city/a", "city/b"]
    a = tasks[0]
    assert a["data"]["image"] == url_for("city/a")
    assert a["data"]["balseg_query_ids"] == [run.query_ids[0], run.query_ids[2]]
    (pred,) = a["predictions"]
    first = pred["result"][0]
    assert first["type"] == "keypointlabels" and first["id"] == f"bq{run.query_ids[0]}"
    assert (first["from_name"], first["to_name"]) == ("kp", "image")
    assert (first["original_width"], first["original_height"]) == (64, 48)
    y, x = QUERIES[0][1:]
    assert first["value"]["x"] == pytest.approx(100 * (x + 0.5) / 64)
    assert first["value"]["y"] == pytest.approx(100 * (y + 0.5) / 48)
    assert first["value"]["keypointlabels"] == ["?"]
    config = ET.fromstring(label_studio_config(CLASS_NAMES, PALETTE))
    kp = config.find("KeyPointLabels")
    assert kp is not None and kp.get("toName") == "image"
    assert [lab.get("value") for lab in kp] == ["?", "unknown", *CLASS_NAMES]
    assert config.find("Image").get("value") == "$image"


def label_studio_output(tasks: list[dict], labels: dict[int, str], *, decimals: int = 2,
                        keep_ids: bool = True) -> list[dict]:
    """What Label Studio's JSON export holds after a person relabeled the predicted points.

    Label Studio rounds nothing itself, but coordinates pass through the browser and a
    person may nudge a point; rounding to ``decimals`` stands in for both.
    """
    out = []
    for n, task in enumerate(tasks, start=1):
        result = []
        for item in task["predictions"][0]["result"]:
            qid = int(item["id"][2:])
            if qid not in labels:
                continue
            r = copy.deepcopy(item)
            r["value"]["x"] = round(r["value"]["x"], decimals)
            r["value"]["y"] = round(r["value"]["y"], decimals)
            r["value"]["keypointlabels"] = [labels[qid]]
            r["origin"] = "prediction-changed"
            if not keep_ids:
                r["id"] = f"Xy{qid}zz"
            result.append(r)
        data = dict(task["data"])
        if not keep_ids:
            data = {"image": data["image"]}
        out.append({
            "id": 100 + n, "data": data, "meta": {}, "created_at": "2024-05-01T10:00:00Z",
            "annotations": [{
                "id": 500 + n, "completed_by": 1, "result": result, "was_cancelled": False,
                "ground_truth": False, "lead_time": 12.5, "prediction": {},
                "result_count": len(result), "task": 100 + n, "project": 3,
            }],
            "predictions": [], "drafts": [], "total_annotations": 1,
        })
    return out


def test_label_studio_round_trip(run: Run) -> None:
    ids = run.query_ids
    with run.store() as s:
        tasks = export_label_studio(s, 0, url_for, CLASS_NAMES, size_for)
        given = {ids[0]: "road", ids[1]: "sky", ids[2]: "unknown", ids[3]: "car",
                 ids[4]: "car"}
        exported = json.dumps(label_studio_output(tasks, given))  # a file, as LS writes it
        report = import_label_studio(s, exported, annotator="ls-team",
                                     class_names=CLASS_NAMES, image_size_for=size_for)
    assert report.ok and report.written == 5 and report.points == 5, report.summary()
    assert answers(run) == [(ids[0], 0, "import", "ls-team"), (ids[1], 2, "import", "ls-team"),
                            (ids[2], None, "import", "ls-team"),
                            (ids[3], 1, "import", "ls-team"), (ids[4], 1, "import", "ls-team")]
    with run.store() as s:  # importing the same file again writes nothing new
        again = import_label_studio(s, exported, annotator="ls-team",
                                    class_names=CLASS_NAMES, image_size_for=size_for)
    assert again.written == 0 and again.already_answered == 5 and again.ok
    assert len(answers(run)) == 5


@pytest.mark.parametrize("decimals", [0, 1, 4])
def test_label_studio_rounding_is_tolerated_without_ids(run: Run, decimals: int) -> None:
    """Matching by position alone: whole-percent rounding moves a point up to 0.64 px here."""
    ids = run.query_ids
    with run.store() as s:
        tasks = export_label_studio(s, 0, url_for, CLASS_NAMES, size_for)
        out = label_studio_output(tasks, dict.fromkeys(ids, "car"), decimals=decimals,
                                  keep_ids=False)
        report = import_label_studio(s, out, annotator="p", class_names=CLASS_NAMES,
                                     image_size_for=size_for, image_url_for=url_for)
    assert report.ok and report.written == 5, report.summary()
    assert sorted(q for q, *_ in answers(run)) == ids


def test_label_studio_mismatches_are_reported_and_the_rest_written(run: Run) -> None:
    ids = run.query_ids
    with run.store() as s:
        tasks = export_label_studio(s, 0, url_for, CLASS_NAMES, size_for)
    out = label_studio_output(tasks, {ids[0]: "road", ids[1]: "bicycle", ids[2]: "?",
                                      ids[3]: "car"})
    items = out[0]["annotations"][0]["result"]
    moved = copy.deepcopy(items[0])
    moved["id"] = "manual1"
    moved["value"]["x"] = percent_of(40, 64)  # a point the person added far from any query
    moved["value"]["y"] = percent_of(40, 48)
    dup = copy.deepcopy(items[0])
    dup["id"] = "manual2"
    dup["value"]["keypointlabels"] = ["sky"]
    items += [moved, dup, {"type": "rectanglelabels", "value": {"x": 1, "y": 1}}]
    out.append({"id": 999, "data": {"image": "/data/upload/other.png"},
                "annotations": [{"result": []}]})
    with run.store() as s:
        report = import_label_studio(s, json.dumps(out), annotator="p",
                                     class_names=CLASS_NAMES, image_size_for=size_for)
    assert not report.ok
    assert (report.written, report.unmatched, report.unknown_labels, report.unlabeled,
            report.duplicates, report.unknown_images, report.ignored) == (2, 1, 1, 1, 1, 1, 1)
    text = report.summary()
    assert "'bicycle' is not a class" in text and "still has the label '?'" in text
    assert "no query within 1 px of pixel (y=40, x=40)" in text
    assert f"second point for query {ids[0]}" in text and "other.png" in text
    assert answers(run) == [(ids[0], 0, "import", "p"), (ids[3], 1, "import", "p")]


@pytest.mark.parametrize("bad", [
    "{not json",
    '"a string"',
    '[1, 2]',
    '[{"data": {"balseg_image_id": "city/a"}, "annotations": [{"result": '
    '[{"type": "keypointlabels", "value": {"y": 5}}]}]}]',
    '[{"data": {"balseg_image_id": "city/a"}, "annotations": [{"result": '
    '[{"type": "keypointlabels", "value": {"x": "NaN", "y": 5, "keypointlabels": ["car"]}}]}]}]',
    '[{"data": {"balseg_image_id": "city/a"}, "annotations": {"result": []}}]',
])
def test_label_studio_files_that_do_not_parse_write_nothing(run: Run, bad: str) -> None:
    with run.store() as s:
        tasks = export_label_studio(s, 0, url_for, CLASS_NAMES, size_for)
        good = label_studio_output(tasks, {run.query_ids[0]: "car"})
        text = bad if not bad.startswith("[{") else json.dumps(good + json.loads(bad))
        with pytest.raises(InteropError):
            import_label_studio(s, text, annotator="p", class_names=CLASS_NAMES,
                                image_size_for=size_for)
    assert answers(run) == []


def test_reserved_label_names_are_refused(run: Run) -> None:
    with run.store() as s, pytest.raises(InteropError, match="reserves"):
        export_label_studio(s, 0, url_for, ["road", "unknown"], size_for)
    with run.store() as s, pytest.raises(InteropError, match="no open query"):
        export_label_studio(s, 7, url_for, CLASS_NAMES, size_for)


# -- CVAT -------------------------------------------------------------------------------------
def test_cvat_export_is_cvat_for_images_xml(run: Run) -> None:
    with run.store() as s:
        xml = export_cvat(s, 0, name_for, CLASS_NAMES, size_for, PALETTE)
    root = ET.fromstring(xml)
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    labels = [lab.findtext("name") for lab in root.iter("label")]
    assert labels == ["?", "unknown", *CLASS_NAMES]
    assert {lab.findtext("type") for lab in root.iter("label")} == {"points"}
    images = root.findall("image")
    assert [(i.get("name"), i.get("width"), i.get("height")) for i in images] == [
        ("city_a.png", "64", "48"), ("city_b.png", "40", "32")]
    pts = [p.get("points") for p in images[0].findall("points")]
    assert pts == ["10.50,5.50", "30.50,20.50", "63.50,47.50"]  # pixel centres, x then y
    assert {p.get("label") for p in root.iter("points")} == {"?"}


def cvat_output(xml: str, labels: dict[tuple[str, int, int], str]) -> str:
    """What CVAT's "CVAT for images 1.1" export holds after the points were relabeled."""
    root = ET.fromstring(xml)
    out = ET.Element("annotations")
    ET.SubElement(out, "version").text = "1.1"
    meta = ET.SubElement(out, "meta")
    task = ET.SubElement(meta, "task")
    for tag, text in (("id", "12"), ("name", "balseg cycle 0"), ("size", "2"),
                      ("mode", "annotation"), ("overlap", "0"), ("bugtracker", ""),
                      ("created", "2024-05-01 10:00:00.000000+00:00"),
                      ("subset", "default"), ("start_frame", "0"), ("stop_frame", "1")):
        ET.SubElement(task, tag).text = text
    task.append(root.find("meta/task/labels"))
    ET.SubElement(meta, "dumped").text = "2024-05-01 11:00:00.000000+00:00"
    for img in root.findall("image"):
        new = ET.SubElement(out, "image", dict(img.attrib))
        image_id = img.get("name")[:-4].replace("_", "/")
        for p in img.findall("points"):
            x, y = (float(v) for v in p.get("points").split(","))
            key = (image_id, int(y), int(x))
            if key in labels:
                ET.SubElement(new, "points", label=labels[key], source="manual", occluded="0",
                              points=f"{x + 0.3:.2f},{y - 0.2:.2f}", z_order="0").text = "\n"
        ET.SubElement(new, "box", label="car", source="manual", occluded="0", xtl="1.00",
                      ytl="1.00", xbr="5.00", ybr="5.00", z_order="0")
    ET.indent(out)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(out, encoding="unicode")


def test_cvat_round_trip(run: Run) -> None:
    ids = run.query_ids
    with run.store() as s:
        xml = export_cvat(s, 0, name_for, CLASS_NAMES, size_for, PALETTE)
        given = {QUERIES[0]: "sky", QUERIES[2]: "road", QUERIES[3]: "unknown",
                 QUERIES[4]: "car"}
        report = import_cvat(s, cvat_output(xml, given).encode(), annotator="cvat-team",
                             class_names=CLASS_NAMES, image_name_for=name_for)
    assert report.ok and report.written == 4 and report.ignored == 2, report.summary()
    assert answers(run) == [(ids[0], 2, "import", "cvat-team"),
                            (ids[2], 0, "import", "cvat-team"),
                            (ids[3], None, "import", "cvat-team"),
                            (ids[4], 1, "import", "cvat-team")]


def test_cvat_mismatches_are_reported(run: Run) -> None:
    xml = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
  <image id="0" name="city_a.png" width="64" height="48">
    <points label="car" source="manual" occluded="0" points="10.5,5.5;20.5,20.5" z_order="0"/>
    <points label="tree" source="manual" occluded="0" points="30.5,20.5" z_order="0"/>
    <points label="sky" source="manual" occluded="0" points="10.9,6.1" z_order="0"/>
  </image>
  <image id="1" name="somewhere/else.png" width="10" height="10"/>
</annotations>"""
    with run.store() as s:
        report = import_cvat(s, xml, annotator="c", class_names=CLASS_NAMES,
                             image_name_for=name_for)
    assert (report.written, report.unmatched, report.unknown_labels, report.duplicates,
            report.unknown_images) == (1, 1, 1, 1, 1), report.summary()
    assert answers(run) == [(run.query_ids[0], 1, "import", "c")]


@pytest.mark.parametrize("bad", [
    "<annotations><image name='city_a.png'>",
    "<notcvat/>",
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><annotations/>',
    "<annotations><image name='city_a.png'><points label='car' points='1.5'/></image>"
    "</annotations>",
    "<annotations><image name='city_a.png'><points label='car' points='10.5,5.5'/>"
    "<points points='20.5,30.5'/></image></annotations>",
    "<annotations><image name='city_a.png'><points label='car' points='inf,5'/></image>"
    "</annotations>",
])
def test_cvat_files_that_do_not_parse_write_nothing(run: Run, bad: str) -> None:
    with run.store() as s, pytest.raises(InteropError):
        import_cvat(s, bad, annotator="c", class_names=CLASS_NAMES, image_name_for=name_for)
    assert answers(run) == []


# -- CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app, "balseg.annotate.cli")
    return app


def test_cli_label_studio_round_trip(run: Run, cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ls" / "tasks.json"
    r = runner.invoke(cli, ["export", str(run.dir), "--format", "label-studio", "--out",
                            str(out), "--cycle", "0"])
    assert r.exit_code == 0, r.output
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/city_a.png"
    assert ET.fromstring((tmp_path / "ls" / "tasks.config.xml").read_text()).tag == "View"
    labeled = tmp_path / "ls-export.json"
    labeled.write_text(json.dumps(label_studio_output(tasks, {run.query_ids[0]: "car"})))
    r = runner.invoke(cli, ["import", str(run.dir), str(labeled), "--annotator", "ann"])
    assert r.exit_code == 0 and "written: 1" in r.output, r.output
    assert answers(run) == [(run.query_ids[0], 1, "import", "ann")]
    labeled.write_text(json.dumps(label_studio_output(tasks, {run.query_ids[1]: "boat"})))
    r = runner.invoke(cli, ["import", str(run.dir), str(labeled), "--annotator", "ann"])
    assert r.exit_code == 1 and "'boat' is not a class" in r.output
    labeled.write_text("[{")
    r = runner.invoke(cli, ["import", str(run.dir), str(labeled), "--annotator", "ann"])
    assert r.exit_code == 2 and "nothing was written" in r.output
    r = runner.invoke(cli, ["import", str(run.dir), str(labeled), "--annotator", ""])
    assert r.exit_code == 2 and "annotator" in r.output
    assert len(answers(run)) == 1


def test_cli_cvat_round_trip(run: Run, cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cvat.xml"
    r = runner.invoke(cli, ["export", str(run.dir), "-f", "cvat", "-o", str(out)])
    assert r.exit_code == 0, r.output
    done = tmp_path / "cvat-done.xml"
    done.write_text(cvat_output(out.read_text(), {QUERIES[3]: "road"}))
    r = runner.invoke(cli, ["import", str(run.dir), str(done), "-f", "cvat", "--annotator", "c"])
    assert r.exit_code == 0 and "written: 1" in r.output, r.output
    assert answers(run) == [(run.query_ids[3], 0, "import", "c")]
    with run.store() as s:
        s.add_answers([(q, 0) for q in run.query_ids[:3] + run.query_ids[4:]], source="oracle")
    r = runner.invoke(cli, ["export", str(run.dir), "-f", "cvat", "-o", str(out)])
    assert r.exit_code == 2 and "no open query" in r.output


def test_run_data_image_names(run: Run) -> None:
    data = RunImages.open(run.dir)
    assert data.image_relpath("city/b") == "images/city_b.png"
    assert data.image_size("city/b") == (40, 32)
    assert data.palette[1] == (0, 0, 142)


# -- malformed, empty and URL-only files from the CLI (issue 17) -----------------------------------
def _ls_task(value: dict, **data) -> list[dict]:
    return [{"id": 7, "data": {"balseg_image_id": "city/a", **data}, "annotations": [{
        "result": [{"id": "bq1", "type": "keypointlabels", "value": value}]}]}]


MALFORMED = {
    "x-1e308": json.dumps(_ls_task({"x": 1e308, "y": 5, "keypointlabels": ["car"]})),
    "y-minus-1e308": json.dumps(_ls_task({"x": 5, "y": -1e308, "keypointlabels": ["car"]})),
    "x-huge-int": json.dumps(_ls_task({"x": 10**400, "y": 5, "keypointlabels": ["car"]})),
    "x-nan": '[{"data": {"balseg_image_id": "city/a"}, "annotations": [{"result": [{"type":'
             ' "keypointlabels", "value": {"x": NaN, "y": 5, "keypointlabels": ["car"]}}]}]}]',
    "deep-list": "[" * 100_000 + "]" * 100_000,
    "deep-object": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "5000-digits": "[" + "7" * 5000 + "]",
    "not-utf8": b"\xff\xfe\x00[".decode("latin-1"),
    "task-not-object": "[1]",
    "result-not-list": json.dumps([{"data": {"balseg_image_id": "city/a"},
                                    "annotations": [{"result": {"x": 1}}]}]),
    "labels-not-list": json.dumps(_ls_task({"x": 5, "y": 5, "keypointlabels": "car"})),
    "value-not-object": json.dumps(_ls_task([1, 2])),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_cli_malformed_label_studio_file_is_one_line_exit_2_and_writes_nothing(
    run: Run, cli: typer.Typer, tmp_path: Path, name: str
) -> None:
    bad = tmp_path / f"{name}.json"
    bad.write_bytes(MALFORMED[name].encode("latin-1" if name == "not-utf8" else "utf-8",
                                           "surrogatepass"))
    r = CliRunner().invoke(cli, ["import", str(run.dir), str(bad), "--annotator", "p"])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), r.output
    assert "nothing was written" in lines[0] and "Traceback" not in r.output
    assert answers(run) == []


@pytest.mark.parametrize("xml", [
    "<annotations><image name='city_a.png'><points label='car' points='1e400,5'/></image>"
    "</annotations>",
    "<annotations><image name='city_a.png'><points label='car' points='nan,5'/></image>"
    "</annotations>",
    "\xff\xfe<annotations/>",
])
def test_cli_malformed_cvat_file_is_one_line_exit_2(run: Run, cli: typer.Typer,
                                                    tmp_path: Path, xml: str) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(xml, encoding="latin-1" if xml.startswith("\xff") else "utf-8")
    r = CliRunner().invoke(cli, ["import", str(run.dir), str(bad), "-f", "cvat",
                                 "--annotator", "p"])
    assert r.exit_code == 2 and r.output.startswith(f"error: {bad}: "), r.output
    assert len(r.output.strip().splitlines()) == 1 and answers(run) == []


def test_cli_empty_import_says_so_and_exits_1(run: Run, cli: typer.Typer,
                                             tmp_path: Path) -> None:
    for text in ("[]", json.dumps([{"id": 1, "data": {"balseg_image_id": "city/a"},
                                     "annotations": []}])):
        empty = tmp_path / "empty.json"
        empty.write_text(text)
        r = CliRunner().invoke(cli, ["import", str(run.dir), str(empty), "--annotator", "p"])
        assert r.exit_code == 1 and "holds no labeled point" in r.output, r.output
    empty = tmp_path / "empty.xml"
    for xml in ("<annotations><version>1.1</version></annotations>",
                "<annotations>" + "<a>" * 100_000 + "</a>" * 100_000 + "</annotations>"):
        empty.write_text(xml)
        r = CliRunner().invoke(cli, ["import", str(run.dir), str(empty), "-f", "cvat",
                                     "--annotator", "p"])
        assert r.exit_code == 1 and "holds no labeled point" in r.output, r.output
    assert answers(run) == []


def test_cli_matches_tasks_that_carry_only_the_image_url(run: Run, cli: typer.Typer,
                                                        tmp_path: Path) -> None:
    """Tasks re-created in Label Studio keep data.image but not balseg's ids."""
    out = tmp_path / "tasks.json"
    prefix = "/data/local-files/?d=pool/"
    r = CliRunner().invoke(cli, ["export", str(run.dir), "-o", str(out),
                                 "--image-url-prefix", prefix])
    assert r.exit_code == 0, r.output
    tasks = json.loads(out.read_text())
    done = label_studio_output(tasks, dict.fromkeys(run.query_ids, "sky"), keep_ids=False)
    assert all(set(t["data"]) == {"image"} for t in done)
    labeled = tmp_path / "labeled.json"
    labeled.write_text(json.dumps(done))
    r = CliRunner().invoke(cli, ["import", str(run.dir), str(labeled), "--annotator", "ls",
                                 "--image-url-prefix", prefix])
    assert r.exit_code == 0 and "written: 5" in r.output, r.output
    assert sorted(q for q, *_ in answers(run)) == run.query_ids


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_exported_files_get_the_users_file_mode(run: Run, cli: typer.Typer, tmp_path: Path,
                                                umask: int) -> None:
    import os
    import stat

    old = os.umask(umask)
    try:
        for fmt, name in (("label-studio", "t.json"), ("cvat", "t.xml")):
            r = CliRunner().invoke(cli, ["export", str(run.dir), "-f", fmt, "-o",
                                         str(tmp_path / name)])
            assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    for name in ("t.json", "t.config.xml", "t.xml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


# -- any file at all: an InteropError or a report, never another exception ----------------------
def _json_values():
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.integers(-(10**40), 10**40)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
               | st.sampled_from(["bq1", "bq99999999999999999999", "keypointlabels", "car",
                                  "?", "unknown", "city/a", "\ud800"]))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6) | st.sampled_from(
                            ["id", "data", "annotations", "result", "value", "x", "y", "type",
                             "keypointlabels", "balseg_image_id", "balseg_query_ids",
                             "original_width", "original_height", "was_cancelled", "image"]),
                            inner, max_size=5), max_leaves=25)


def _mutated_export(run: Run):
    """A real export after labeling, with one value somewhere replaced by anything."""
    from hypothesis import strategies as st

    with run.store() as s:
        tasks = export_label_studio(s, 0, url_for, CLASS_NAMES, size_for)
    base = label_studio_output(tasks, dict.fromkeys(run.query_ids, "car"))

    def paths(node, here=()):
        yield here
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, (*here, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from paths(v, (*here, i))

    every = list(paths(base))
    anything = _json_values()

    @st.composite
    def one(draw):
        doc = copy.deepcopy(base)
        for _ in range(draw(st.integers(1, 3))):
            where = draw(st.sampled_from(every))
            if not where:
                return draw(anything)
            node = doc
            try:
                for k in where[:-1]:
                    node = node[k]
                node[where[-1]] = draw(anything)
            except (KeyError, IndexError, TypeError):
                pass
        return doc

    return one()


def test_any_label_studio_file_gives_a_report_or_an_interop_error(run: Run) -> None:
    from hypothesis import HealthCheck, given, settings

    store = run.store()

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(doc=_mutated_export(run))
    def check(doc) -> None:
        text = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
        try:
            report = import_label_studio(store, text, annotator="fz", class_names=CLASS_NAMES,
                                         image_size_for=size_for, image_url_for=url_for)
        except InteropError as err:
            str(err).encode("utf-8")  # printable as it is
            assert store.answers() == []
        else:
            report.summary().encode("utf-8")
            written = store.answers()
            assert len(written) == report.written
            for a in written:  # the next example starts from no answers again
                store.retract_answer(a.id)

    try:
        check()
    finally:
        store.close()
