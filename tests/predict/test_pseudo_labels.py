"""``balseg predict RUN --split pool --with-answers``: dense pseudo-labels for the pool."""

from __future__ import annotations

import numpy as np

from balseg.labels import LabelStore
from balseg.rundir import RunDir

from .conftest import invoke, read_manifest, read_png


def test_every_answered_pixel_keeps_its_answer(cli, run_copy, tmp_path):
    plain, pseudo = tmp_path / "plain", tmp_path / "pseudo"
    assert invoke(cli, "predict", run_copy, "--split", "pool", "--out", plain,
                  "--quiet").exit_code == 0
    image = "train_0002"
    predicted = read_png(plain / "masks" / f"{image}.png")
    h, w = predicted.shape
    # a person contradicts the model at two pixels, two people disagree at a third, and a
    # fourth is answered 'unknown': only the first two are resolved
    free = [(y, x) for y in range(h) for x in range(w)][::97]
    with LabelStore(RunDir(run_copy).labels) as store:
        taken = {(q.y, q.x) for q in store.queries(image_id=image)}
        spots = [p for p in free if p not in taken][:4]
        ids = store.add_queries([(image, y, x, None) for y, x in spots], cycle=9,
                                strategy="margin")
        other = [(int(predicted[y, x]) + 1) % 6 for y, x in spots[:2]]
        store.add_answers(zip(ids[:2], other, strict=True), source="person", annotator="ann")
        store.add_answers([(ids[2], 0)], source="person", annotator="a")
        store.add_answers([(ids[2], 1)], source="person", annotator="b")
        store.add_answers([(ids[3], None)], source="person", annotator="a")
        resolved = store.resolved_labels()
    result = invoke(cli, "predict", run_copy, "--split", "pool", "--with-answers", "--out",
                    pseudo, "--quiet", "--overlay")
    assert result.exit_code == 0, result.output
    assert "wrote 8 of 8 images" in result.output
    masks = {p.stem: read_png(p) for p in (pseudo / "masks").iterdir()}
    assert len(masks) == 8
    for image_id, y, x, c in resolved:  # the person's and the oracle's answers alike
        assert masks[image_id][y, x] == c
    assert {(image_id, y, x) for image_id, y, x, _ in resolved} >= {
        (image, y, x) for y, x in spots[:2]}
    for y, x in spots[2:]:  # conflicting and unknown answers leave the prediction
        assert masks[image][y, x] == predicted[y, x]
    # nothing else changed
    for image_id, mask in masks.items():
        answered = {(y, x) for i, y, x, _ in resolved if i == image_id}
        base = read_png(plain / "masks" / f"{image_id}.png")
        differ = {tuple(p) for p in np.argwhere(mask != base)}
        assert differ <= answered
    rows = {r["image"]: r for r in read_manifest(pseudo)}
    counts = {i: sum(1 for j, *_ in resolved if j == i) for i in masks}
    assert {i: int(r["answered_pixels"]) for i, r in rows.items()} == counts


def test_with_answers_needs_the_pool_split(cli, tiny_run, tmp_path):
    out = tmp_path / "out"
    for args in (["--split", "val"], [tmp_path]):
        result = invoke(cli, "predict", tiny_run, *args, "--with-answers", "--out", out)
        assert result.exit_code == 2
        assert "--with-answers needs --split pool" in result.output
    assert not out.exists()
    # the pool split by its own name works as well as 'pool'
    named = invoke(cli, "predict", tiny_run, "--split", "train", "--with-answers", "--out", out,
                   "--quiet")
    assert named.exit_code == 0, named.output
