"""What balseg shows Label Studio and reads back, without a server: the labeling config,
tasks, answers, the brush RLE, the oracle's config and token, an unreachable server."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from balseg.config import RunConfig, check_resumable, parse_config
from balseg.errors import ConfigError
from balseg.labels.store import Query
from balseg.labelstudio.backend import brush_target
from balseg.labelstudio.client import LabelStudio, check_url, is_jwt
from balseg.labelstudio.sync import read_token
from balseg.labelstudio.tasks import (
    CLASS_KEYS,
    UNKNOWN_KEY,
    balseg_order,
    brush_results,
    encode_rle,
    label_config,
    mask_rle,
    read_choice,
    task_for,
)

from .ls_support import LS_PYTHON, balseg, free_port, run_config

NAMES = ["road", "car & bus", "sky"]
PALETTE = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]


def test_the_label_config_has_one_hotkey_per_class_and_unknown():
    root = ET.fromstring(label_config(NAMES, PALETTE))
    choices = root.find("Choices")
    assert choices.get("name") == "class" and choices.get("toName") == "image"
    keys = [(c.get("value"), c.get("hotkey")) for c in choices]
    assert keys == [("road", "1"), ("car & bus", "2"), ("sky", "3"), ("unknown", UNKNOWN_KEY)]
    assert root.find("KeyPointLabels").get("name") == "pixel"
    brush = root.find("BrushLabels")
    assert [lab.get("value") for lab in brush] == NAMES
    # no two controls share a key, and none is a key Label Studio itself uses
    every = [c.get("hotkey") for c in root.iter() if c.get("hotkey")]
    assert len(every) == len(set(every))
    assert not set(CLASS_KEYS) & set("uhokewmpbrvz") and UNKNOWN_KEY not in CLASS_KEYS
    assert brush_target(label_config(NAMES, PALETTE)) == ("mask", "image", NAMES)


def test_a_class_named_unknown_is_refused():
    from balseg.errors import InteropError

    with pytest.raises(InteropError, match="reserves"):
        label_config(["road", "unknown"], PALETTE)


def test_a_task_marks_the_pixel_centre_and_carries_the_score():
    q = Query(7, "img_3", y=10, x=20, cycle=2, strategy="entropy", score=0.75)
    t = task_for(q, "/data/upload/1/x.png", (40, 30), rank=1)
    (point,) = t["predictions"][0]["result"]
    assert point["value"]["x"] == pytest.approx(100 * 20.5 / 40)
    assert point["value"]["y"] == pytest.approx(100 * 10.5 / 30)
    assert t["data"] == {"image": "/data/upload/1/x.png", "score": 0.75, "balseg_rank": 1,
                         "balseg_query_id": 7, "balseg_image_id": "img_3", "balseg_cycle": 2,
                         "balseg_pixel": "y=10, x=20"}
    qs = [Query(i, "a", i, i, 1, "s", s) for i, s in enumerate([0.1, None, 0.9, 0.9, 0.5])]
    assert [q.id for q in balseg_order(qs)] == [2, 3, 4, 0, 1]


def _choice(*names, from_name="class"):
    return [{"type": "keypointlabels", "from_name": "pixel", "value": {}}] + [
        {"type": "choices", "from_name": from_name, "value": {"choices": [n]}} for n in names]


def test_reading_an_annotation():
    assert read_choice(_choice("sky"), NAMES).label == 2
    unknown = read_choice(_choice("unknown"), NAMES)
    assert unknown.label is None and unknown.problem is None
    for result, problem in [(_choice(), "no class"), (_choice("bus"), "not a class"),
                            (_choice("sky", "road"), "2 classes"), ("x", "not a list"),
                            (_choice("sky", from_name="other"), "no class")]:
        assert problem in read_choice(result, NAMES).problem


def test_rle_is_label_studios_own(tmp_path):
    """Decoded by label_studio_sdk.converter.brush (Label Studio's virtualenv) to the same
    mask; byte for byte what the SDK's own encoder writes."""
    if not LS_PYTHON.exists():
        pytest.skip(f"{LS_PYTHON} is missing")
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), dtype=bool)
    mask[5:30, 3:50] = True
    mask[rng.integers(0, 37, 40), rng.integers(0, 53, 40)] ^= True
    long = np.zeros(200_000, dtype=np.uint8)
    long[3:140_000] = 255  # a run over 2**16 values
    noise = rng.integers(0, 4, 5000).astype(np.uint8)
    data = {"mask": mask_rle(mask), "long": encode_rle(long), "noise": encode_rle(noise),
            "grey": np.where(mask, 255, 0).astype(np.uint8).tolist()}
    code = ("import json, sys, numpy as np;"
            " from label_studio_sdk.converter.brush import decode_rle, mask2rle;"
            " d = json.load(sys.stdin);"
            " print(json.dumps({k: decode_rle(d[k]).tolist() for k in ('mask', 'long', 'noise')}"
            " | {'sdk': mask2rle(np.array(d['grey'], dtype=np.uint8))}))")
    out = subprocess.run([str(LS_PYTHON), "-c", code], input=json.dumps(data), text=True,
                         capture_output=True, check=True, timeout=120)
    back = json.loads(out.stdout)
    rgba = np.asarray(back["mask"], dtype=np.uint8).reshape(37, 53, 4)
    assert np.array_equal(rgba[:, :, 3] > 0, mask)
    assert np.array_equal(back["long"], long) and np.array_equal(back["noise"], noise)
    assert back["sdk"] == data["mask"]


def test_brush_results_name_the_projects_labels():
    classes = np.array([[0, 0, 2], [2, 2, 0]], dtype=np.uint8)
    regions = brush_results(classes, NAMES, from_name="seg", to_name="img",
                            names=["Road", "Car", "Sky"])
    assert [(r["from_name"], r["to_name"], r["value"]["brushlabels"]) for r in regions] == [
        ("seg", "img", ["Road"]), ("seg", "img", ["Sky"])]
    assert regions[0]["original_width"] == 3 and regions[0]["original_height"] == 2


def test_the_oracle_config():
    cfg = parse_config({"oracle": {"kind": "labelstudio", "url": "http://ls:8080",
                                   "project": 3}}, source="t")
    assert cfg.oracle.project == 3
    assert parse_config({"oracle": {"kind": "labelstudio", "url": "http://ls:8080",
                                    "project": "my run"}}, source="t").oracle.project == "my run"
    for bad, why in [({"kind": "labelstudio"}, "needs oracle.url"),
                     ({"kind": "labelstudio", "url": "ls:8080"}, "http://"),
                     ({"kind": "labelstudio", "url": "http://x", "project": 0}, "positive"),
                     ({"kind": "labelstudio", "url": "http://x", "project": " "}, "empty")]:
        with pytest.raises(ConfigError, match=why):
            parse_config({"oracle": bad}, source="t")
    # the server may move: url and token_file change at any stage of a run, nothing else
    old = RunConfig.model_validate({"oracle": {"kind": "labelstudio", "url": "http://a:1"}})
    moved = RunConfig.model_validate({"oracle": {"kind": "labelstudio", "url": "http://b:2",
                                                 "token_file": "t"}})
    for trained in (False, True):
        assert check_resumable(old, moved, "RUN", trained=trained) == {
            "oracle.url", "oracle.token_file"}
    other = RunConfig.model_validate({"oracle": {"kind": "labelstudio", "url": "http://a:1",
                                                 "project": "other"}})
    with pytest.raises(ConfigError, match=r"oracle\.project"):
        check_resumable(old, other, "RUN", trained=False)


def test_the_token_comes_from_the_environment_or_a_file(tmp_path):
    assert read_token(None, {"LABEL_STUDIO_API_KEY": " abc \n"}) == "abc"
    f = tmp_path / "token"
    f.write_text("from-file\nsecond line\n")
    assert read_token(str(f), {}) == "from-file"
    assert read_token(str(f), {"LABEL_STUDIO_API_KEY": "env"}) == "env"
    with pytest.raises(ConfigError, match="no Label Studio API token"):
        read_token(None, {})
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(str(tmp_path / "missing"), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(str(tmp_path / "empty"), {})


def test_urls_and_token_kinds():
    assert check_url("http://h:8080/ ") == "http://h:8080"
    with pytest.raises(ConfigError):
        check_url("h:8080")
    assert is_jwt("eyJh.eyJz.sig") and not is_jwt("0123abcd" * 5)


def test_an_unreachable_server_is_one_line_naming_it(synthetic_root, tmp_path):
    from balseg.errors import LabelStudioError

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(LabelStudioError, match=f"cannot reach Label Studio at {url}"):
        LabelStudio(url, "token-0123456789").whoami()
    cfg = run_config(tmp_path, synthetic_root, url, "nowhere")
    r = balseg("run", cfg, "--run-dir", tmp_path / "run", "--quiet")
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach Label Studio at {url}")
    assert "Traceback" not in r.output
