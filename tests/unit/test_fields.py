"""Field analysis (localise -> crop -> classify) and the per-slide report."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from pipeline.classifier import load_classifier
from pipeline.fields import FieldSettings, analyze_fields, crop_around, looks_like_fields
from pipeline.localize import Detection
from pipeline.slides import build_fields_report, fields_report_csv, slide_of
from tests.conftest import encode_jpeg, png_header_only, synthetic_field

CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
WHITE = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")


def test_crop_is_centred_and_padded_at_edges():
    img = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    crop = crop_around(img, Detection(0, 0, 20, 20, 1.0), (60, 40))
    assert crop.shape == (40, 60, 3)
    inner = crop_around(img, Detection(40, 30, 80, 70, 1.0), (20, 20))
    np.testing.assert_array_equal(inner, img[40:60, 50:70])


def test_kind_auto_detection_by_size():
    assert looks_like_fields([(640, 480), (640, 480), (320, 240)])
    assert not looks_like_fields([(320, 240), (360, 363)])
    assert not looks_like_fields([])


@pytest.mark.litert
def test_fields_are_localised_classified_and_bad_fields_reported(model_dir):
    clf = load_classifier(model_dir, "litert")
    big = synthetic_field(2600, 1900, [(400, 400), (1100, 1000), (2300, 1600)], seed=3, rbc=300)
    items = [
        (1, encode_jpeg(synthetic_field(640, 480, [(200, 200), (450, 300)], seed=1))),
        (2, encode_jpeg(synthetic_field(640, 480, [], seed=2))),  # no white cell
        (3, encode_jpeg(np.zeros((480, 640, 3), np.uint8))),  # all black
        (4, encode_jpeg(np.full((40, 40, 3), 200, np.uint8))),  # too small for a field
        (5, png_header_only(20_000, 20_000)),  # over the field pixel limit
        (6, encode_jpeg(big)),  # larger than one tile: tiled
    ]
    results = analyze_fields(clf, items, FieldSettings(tile=1024, max_pixels=50_000_000), batch_size=4)
    by = {r.key: r for r in results}
    assert [len(by[k].cells) for k in (1, 2, 3, 6)] == [2, 0, 0, 3]
    assert all(by[k].error is None for k in (1, 2, 3, 6))
    assert "too small" in by[4].error and "over the limit" in by[5].error
    cell = by[1].cells[0]
    assert cell.label in CLASSES and abs(sum(cell.probabilities.values()) - 1) < 1e-4
    assert cell.thumbnail_jpeg[:2] == b"\xff\xd8" and [c.index for c in by[6].cells] == [0, 1, 2]


def test_per_slide_report_adds_up():
    fields = ["s1/a.jpg", "s1/b.jpg", "s2/c.jpg", "top.jpg"]
    cells = [("s1/a.jpg", 0, "neutrophil", 0.9), ("s1/a.jpg", 1, "lymphocyte", 0.8), ("s2/c.jpg", 0, "neutrophil", 0.3),
             ("top.jpg", 0, "erythroblast", 0.9)]
    report = build_fields_report(fields, cells, {"s1/b.jpg": "truncated JPEG"}, CLASSES, WHITE, "m@1", 0.5)
    assert report["kind"] == "fields" and report["white_cell_total"] == 3 and report["n_fields"] == 4
    slides = {s["slide"]: s for s in report["slides"]}
    assert set(slides) == {"s1", "s2", slide_of("top.jpg")}
    assert slides["s1"]["white_cell_total"] == 2 and slides["s1"]["n_fields_failed"] == 1
    assert slides["s2"]["n_low_confidence"] == 1
    assert sum(s["white_cell_total"] for s in slides.values()) == report["white_cell_total"]
    rows = list(csv.reader(io.StringIO(fields_report_csv({"job_id": "x", **report}))))
    assert rows[0][0] == "slide" and {r[0] for r in rows[1:]} == {"ALL", "s1", "s2", "(job root)"}


@pytest.mark.litert
def test_fields_prepared_on_a_pool_give_the_same_results(model_dir):
    clf = load_classifier(model_dir, "litert")
    items = [(k, encode_jpeg(synthetic_field(640, 480, centres, seed=k))) for k, centres in
             enumerate([[(200, 200), (450, 300)], [], [(320, 240)], [(100, 100), (500, 380), (320, 200)], [(300, 250)]])]
    items.insert(2, (99, b"junk"))
    settings = FieldSettings(tile=1024, max_pixels=50_000_000)
    one = analyze_fields(clf, items, settings, batch_size=3)
    pooled = analyze_fields(clf, items, settings, batch_size=3, threads=3)
    assert pooled == one
    assert [r.key for r in pooled] == [k for k, _ in items] and sum(len(r.cells) for r in pooled) >= 5
