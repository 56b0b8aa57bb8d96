"""Field analysis (localise -> crop -> classify) and the per-slide report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.classifier import load_classifier, predict_scored, prepare_batch
from pipeline.domain import OK, SHIFTED, UNAVAILABLE, DomainModel
from pipeline.fields import FieldSettings, analyze_fields, crop_around, looks_like_fields
from pipeline.localize import Detection
from pipeline.report import DifferentialReport
from pipeline.slides import build_fields_report, fields_report_csv, slide_of
from tests.conftest import bccd_fields, encode_jpeg, png_header_only, synthetic_field

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
    cells = [("s1/a.jpg", 0, "neutrophil", 0.9, None), ("s1/a.jpg", 1, "lymphocyte", 0.8, None), ("s2/c.jpg", 0, "neutrophil", 0.3, None),
             ("top.jpg", 0, "erythroblast", 0.9, None)]
    report = build_fields_report(fields, cells, {"s1/b.jpg": "truncated JPEG"}, CLASSES, WHITE, "m@1", 0.5)
    assert report["kind"] == "fields" and report["white_cell_total"] == 3 and report["n_fields"] == 4
    slides = {s["slide"]: s for s in report["slides"]}
    assert set(slides) == {"s1", "s2", slide_of("top.jpg")}
    assert slides["s1"]["white_cell_total"] == 2 and slides["s1"]["n_fields_failed"] == 1
    assert slides["s2"]["n_low_confidence"] == 1
    assert sum(s["white_cell_total"] for s in slides.values()) == report["white_cell_total"]
    rows = list(csv.reader(io.StringIO(fields_report_csv({"job_id": "x", **report}))))
    assert rows[0][0] == "slide" and {r[0] for r in rows[1:]} == {"ALL", "s1", "s2", "(job root)"}


def _toy_domain(image_threshold: float = 1.0) -> DomainModel:
    """Thresholds only (the job check reads nothing else): unusual above ``image_threshold``, alarm above 12 %."""
    return DomainModel(np.zeros(2), np.eye(2), np.zeros((1, 2)), np.eye(2), image_threshold, 0.12, 0.05)


def test_job_and_each_slide_get_the_domain_check_of_their_cells():
    """Same thresholds and check as a cell job: a slide from elsewhere alarms on its own, and in the CSV and table."""
    near = [(f"here/f{i}.jpg", 0, "neutrophil", 0.9, 0.5) for i in range(20)]
    far = [(f"elsewhere/f{i}.jpg", 0, "neutrophil", 0.9, 2.0) for i in range(12)]
    fields = sorted({path for path, *_ in near + far})
    report = build_fields_report(fields, near + far, {}, CLASSES, WHITE, "m@2", 0.5, domain=_toy_domain())
    slides = {s["slide"]: s for s in report["slides"]}
    assert (report["domain_check"]["status"], report["domain_check"]["score"]) == (SHIFTED, round(12 / 32, 4))
    assert slides["here"]["domain_check"] == {"status": OK, "score": 0.0, "reasons": []}
    assert slides["elsewhere"]["domain_check"]["status"] == SHIFTED and "100%" in slides["elsewhere"]["domain_check"]["reasons"][0]
    rows = {(r[0], r[1]): r[2] for r in csv.reader(io.StringIO(fields_report_csv(report)))}
    assert rows[("ALL", "domain_check")] == SHIFTED and rows[("here", "domain_check")] == OK and rows[("elsewhere", "domain_check")] == SHIFTED
    assert "domain check: ok (score 0.0)" in DifferentialReport.from_dict(slides["here"]).to_table()
    unscored = build_fields_report(fields, [(*c[:4], None) for c in near + far], {}, CLASSES, WHITE, "m@2", 0.5, domain=_toy_domain())
    assert unscored["domain_check"]["status"] == UNAVAILABLE and "0 scored cells" in unscored["domain_check"]["reasons"][0]


def _without_domain_model(model_dir: Path, into: Path) -> Path:
    """The same model with no ``ood.npz``, as a model exported before 2.0 ships (manifest still verified)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.pop("ood", None)
    manifest["files"].pop("ood.npz", None)
    into.mkdir()
    for name in manifest["files"]:
        (into / name).symlink_to(model_dir / name)
    (into / "manifest.json").write_text(json.dumps(manifest))
    return into


@pytest.mark.litert
def test_field_cells_are_scored_like_cell_images_or_not_at_all_without_a_domain_model(model_dir, tmp_path):
    """Each crop's score is the cell-image path's score of that crop; a model without ood.npz leaves the check unavailable."""
    fields = bccd_fields(12)
    items = list(enumerate(fields.values()))
    clf = load_classifier(model_dir, "litert")
    assert clf.domain is not None
    settings = FieldSettings()
    results = analyze_fields(clf, items, settings, batch_size=5)
    side = round(settings.crop_scale[0] * settings.localiser.cell_diameter_px)
    for result, (_, data) in zip(results, items, strict=True):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for cell in result.cells:
            crop = crop_around(bgr, Detection(*cell.box, cell.score), (side, side))
            _, expected = predict_scored(clf, prepare_batch([crop], clf.manifest))
            assert cell.ood_score == pytest.approx(expected[0], abs=2e-3)
    assert sum(len(r.cells) for r in results) >= 10

    bare = load_classifier(_without_domain_model(Path(model_dir), tmp_path / "bare"), "litert")
    unscored = analyze_fields(bare, items, settings, batch_size=5)
    cells = [(str(r.key), c.index, c.label, c.confidence, c.ood_score) for r in unscored for c in r.cells]
    assert len(cells) >= 10 and all(c[4] is None for c in cells)
    report = build_fields_report([str(k) for k, _ in items], cells, {}, CLASSES, WHITE, "m@2", 0.5, domain=bare.domain)
    assert report["domain_check"]["status"] == UNAVAILABLE and "no domain model" in report["domain_check"]["reasons"][0]


@pytest.mark.litert
def test_each_field_cell_carries_the_red_cell_stain_signature_of_its_model_crop(model_dir):
    """Real BCCD fields: every found cell's stain signature is that of its own model crop (as cut by the crop window),
    measured (a field shows plenty of red cells around each white cell), and kept per cell through the batches."""
    from pipeline.preprocess import model_crop
    from pipeline.stain_check import stain_signature

    clf = load_classifier(model_dir, "litert")
    items = list(enumerate(bccd_fields(6).values()))
    items.append((50, encode_jpeg(synthetic_field(640, 480, [(200, 200), (450, 300)], seed=1, rbc=0))))  # no red cells
    settings = FieldSettings()
    results = analyze_fields(clf, items, settings, batch_size=3, threads=2)
    side = round(settings.crop_scale[0] * settings.localiser.cell_diameter_px)
    measured = []
    for result, (_, data) in zip(results, items, strict=True):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for cell in result.cells:
            crop = crop_around(bgr, Detection(*cell.box, cell.score), (side, side))
            assert cell.stain_od == stain_signature(model_crop(crop, clf.manifest.input_size, clf.manifest.preprocessing).pixels)
            if result.key != 50:
                measured.append(cell.stain_od)
    assert len(measured) >= 6 and all(sig is not None and all(v > 0 for v in sig) for sig in measured)
    assert len(set(measured)) > 1


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


def test_magnification_reason_needs_enough_ruled_fields_and_a_clear_departure():
    from pipeline.fields import MIN_RULED_FIELDS, RED_CELL_PER_CELL_DIAMETER, magnification_reason

    expected = RED_CELL_PER_CELL_DIAMETER * 190
    assert magnification_reason([expected * 2] * (MIN_RULED_FIELDS - 1) + [None] * 10, 190) is None  # too few measured
    assert magnification_reason([expected * f for f in (0.9, 1.0, 1.1, 1.05, 0.95)], 190) is None  # in-domain spread
    reason = magnification_reason([expected * 1.7] * 6 + [None], 190)
    assert reason and "1.70 times" in reason and "HEMATOVISION_CELL_DIAMETER_PX to about 323" in reason
    assert "0.70 times" in magnification_reason([expected * 0.7] * 6, 190)


def test_field_report_adds_the_magnification_reason_per_slide_even_without_a_domain_model():
    fields = [f"s{s}/f{i}.jpg" for s in (1, 2) for i in range(6)]
    cells = [(f, 0, "neutrophil", 0.9, None) for f in fields]
    from pipeline.fields import RED_CELL_PER_CELL_DIAMETER

    expected = RED_CELL_PER_CELL_DIAMETER * 190
    red = {f: expected * (2.0 if f.startswith("s2/") else 1.0) for f in fields}
    report = build_fields_report(fields, cells, {}, CLASSES, WHITE, "m@2", 0.5, red_cells=red, cell_diameter_px=190)
    by_slide = {s["slide"]: s["domain_check"] for s in report["slides"]}
    assert by_slide["s1"]["status"] == "unavailable" and not any("red cells" in r for r in by_slide["s1"]["reasons"])
    assert by_slide["s2"]["status"] == "shifted" and "2.00 times" in by_slide["s2"]["reasons"][-1]
    assert report["domain_check"]["status"] == "shifted"  # the job's median: 1.5 times


def test_prepare_field_measures_the_red_cells_of_real_fields_and_of_magnified_ones(model_dir):
    """Held-out BCCD fields: their red cells measure about the expected size (job median); magnified 2x, beyond the
    range a job may show (single fields are noisy, hence the median of several)."""
    from pipeline.fields import MAGNIFICATION_RANGE, RED_CELL_PER_CELL_DIAMETER, FieldSettings, prepare_field
    from pipeline.localize import LocaliserConfig
    from pipeline.manifest import ModelManifest
    from tests.conftest import SHARED

    manifest = ModelManifest.load(model_dir, verify=False)
    settings = FieldSettings(LocaliserConfig())
    native, zoomed = [], []
    for i, path in enumerate(sorted((SHARED / "bccd" / "JPEGImages").glob("*.jpg"))[1::2][:8]):
        bgr = cv2.imread(str(path))
        h, w = bgr.shape[:2]
        magnified = cv2.resize(bgr, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)[h // 2 : h // 2 + h, w // 2 : w // 2 + w]
        native.append(prepare_field((i, path.read_bytes()), settings, manifest).red_cell_px)
        zoomed.append(prepare_field((i, encode_jpeg(magnified)), settings, manifest).red_cell_px)
    native, zoomed = [r for r in native if r is not None], [r for r in zoomed if r is not None]
    assert len(native) >= 7 and len(zoomed) >= 6  # an occasional field shows too few whole red cells
    expected = RED_CELL_PER_CELL_DIAMETER * settings.localiser.cell_diameter_px
    assert MAGNIFICATION_RANGE[0] < np.median(native) / expected < MAGNIFICATION_RANGE[1]
    assert np.median(zoomed) / expected > MAGNIFICATION_RANGE[1]
