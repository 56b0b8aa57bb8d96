"""Reviews, sign-off and the reviewed report: the API routes, the database rows, the pure recount, chart and PDF."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from db.models import Prediction, Review
from pipeline.chart import chart_shapes, to_svg
from pipeline.reference import DEFAULT_INTERVALS, parse_intervals, reference_block
from pipeline.settings import Settings
from tests.unit import test_api
from tests.unit.test_api import run_queued, upload

env = test_api.env  # the API tests' fixture: an app, its settings and an in-process worker context


def finished_job(env, sample_folder, n: int = 10) -> str:
    client, _, ctx = env
    files = {p.relative_to(sample_folder).as_posix(): p.read_bytes() for p in sorted(sample_folder.rglob("*.jp*g"))[:n]}
    files["broken/notes.txt"] = b"not an image"
    job_id = upload(client, files, name="review me").get_json()["id"]
    run_queued(ctx, job_id)
    return job_id


def pdf_pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page[^s]", pdf))


def test_reviews_change_the_report_never_the_prediction_and_signoff_locks(env, sample_folder):
    client, _, ctx = env
    job_id = finished_job(env, sample_folder)
    base = f"/api/v1/jobs/{job_id}"
    before = client.get(f"{base}/report").get_json()
    assert before["review"] == {"n_reviewed": 0, "n_changed": 0} and before["signoff"] is None
    assert before["reference_intervals"]["by_type"]["neutrophil"]["low"] == 40.0
    assert before["warnings"] and "fewer than 100" in before["warnings"][0]

    first = client.get(f"{base}/results?limit=1").get_json()["items"][0]
    new = "basophil" if first["label"] != "basophil" else "lymphocyte"
    r = client.post(f"{base}/reviews", json={"seq": 1, "label": new, "reviewer": "A. Tech"})
    assert r.status_code == 201, r.get_json()
    assert (r.get_json()["old_label"], r.get_json()["new_label"], r.get_json()["reviewer"]) == (first["label"], new, "A. Tech")
    r = client.post(f"{base}/reviews", json={"seq": 1, "label": first["label"], "reviewer": "B. Haem"})  # and back again
    assert r.get_json()["old_label"] == new
    r = client.post(f"{base}/reviews", json={"seq": 2, "label": new, "reviewer": "A. Tech"})
    assert r.status_code == 201

    after = client.get(f"{base}/report").get_json()
    assert after["review"]["n_reviewed"] == 2
    second = client.get(f"{base}/results?limit=1&offset=1").get_json()["items"][0]
    assert after["review"]["n_changed"] == (second["label"] != new)
    assert [i["reviewer"] for i in client.get(f"{base}/reviews").get_json()["items"]] == ["A. Tech", "B. Haem", "A. Tech"]
    assert client.get(f"{base}/results?limit=1").get_json()["items"][0]["label"] == first["label"]  # the model's, untouched
    with ctx.db.session() as s:
        assert len(s.scalars(select(Review).where(Review.job_id == job_id)).all()) == 3
        assert len(s.scalars(select(Prediction).where(Prediction.job_id == job_id)).all()) == 10

    for body, status in [({"seq": 1, "label": "alien", "reviewer": "x"}, 400), ({"seq": 1, "label": new, "reviewer": " "}, 400),
                         ({"seq": 99, "label": new, "reviewer": "x"}, 404), ({"seq": 11, "label": new, "reviewer": "x"}, 404),
                         ({"seq": "1", "label": new, "reviewer": "x"}, 400), ({"label": new}, 400)]:
        assert client.post(f"{base}/reviews", json=body).status_code == status, body
    assert client.post(f"{base}/signoff", json={"reviewer": ""}).status_code == 400
    r = client.post(f"{base}/signoff", json={"reviewer": "Dr C. Signer"})
    assert r.status_code == 201 and r.get_json()["reviewer"] == "Dr C. Signer"
    assert client.post(f"{base}/signoff", json={"reviewer": "Dr C. Signer"}).status_code == 409
    r = client.post(f"{base}/reviews", json={"seq": 3, "label": new, "reviewer": "late"})
    assert r.status_code == 409 and "signed off" in r.get_json()["error"]["message"]
    assert client.get(f"{base}/reviews").get_json()["signoff"]["reviewer"] == "Dr C. Signer"

    pdf = client.get(f"{base}/report?format=pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf" and pdf.data.startswith(b"%PDF")
    assert pdf_pages(pdf.data) == 1
    assert client.get(f"{base}/report?format=xml").status_code == 400


def test_review_and_signoff_need_a_finished_job(env):
    client, _, _ = env
    job_id = upload(client, {"a.jpg": __import__("tests.conftest").conftest.jpeg_bytes()}).get_json()["id"]
    assert client.post(f"/api/v1/jobs/{job_id}/reviews", json={"seq": 1, "label": "neutrophil", "reviewer": "x"}).status_code == 409
    assert client.post(f"/api/v1/jobs/{job_id}/signoff", json={"reviewer": "x"}).status_code == 409
    assert client.post("/api/v1/jobs/nope/signoff", json={"reviewer": "x"}).status_code == 404
    assert client.get(f"/api/v1/jobs/{job_id}/report?format=pdf").status_code == 409


def test_reference_intervals_parse_flag_and_refuse_nonsense():
    intervals = parse_intervals(DEFAULT_INTERVALS)
    block = reference_block([{"cell_type": "neutrophil", "percent": 75.0}, {"cell_type": "basophil", "percent": 0.0},
                             {"cell_type": "ig", "percent": 3.0}, {"cell_type": "monocyte", "percent": 8.04}], intervals, "src")
    assert [block["by_type"][k]["flag"] for k in ("neutrophil", "basophil", "ig", "monocyte")] == ["high", "low", None, None]
    assert parse_intervals("neutrophil=50-70, lymphocyte=18-42")["lymphocyte"].high == 42
    for bad in ("neutrophil=70-50", "neutrophil:40-60", "neutrophil=x-60", "neutrophil=40-160"):
        with pytest.raises(ValueError):
            parse_intervals(bad)
    with pytest.raises(ValueError, match="neutrophil=70-50"):  # a bad setting stops the app at start-up
        Settings.from_env({"HEMATOVISION_REFERENCE_INTERVALS": "neutrophil=70-50"})


def test_chart_bars_and_whiskers_carry_the_report_numbers():
    rows = [{"cell_type": "neutrophil", "count": 6, "percent": 60.0, "ci95_low": 26.2, "ci95_high": 87.8},
            {"cell_type": "lymphocyte", "count": 4, "percent": 40.0, "ci95_low": 12.2, "ci95_high": 73.8}]
    chart = chart_shapes(rows, {"neutrophil": {"low": 40, "high": 60, "flag": None}, "lymphocyte": {"low": 20, "high": 40, "flag": "high"}})
    bars = [s for s in chart.shapes if s.kind == "rect" and s.css.startswith("bar")]
    assert [b.data["percent"] for b in bars] == ["60.0", "40.0"] and bars[1].css == "bar flag"
    assert bars[0].x2 == pytest.approx(1.5 * bars[1].x2)  # widths proportional to the percentages
    whiskers = [s for s in chart.shapes if s.css == "whisker" and s.y == s.y2]
    assert whiskers[0].x2 - whiskers[0].x == pytest.approx((87.8 - 26.2) / 60.0 * bars[0].x2)
    svg = to_svg(chart)
    assert svg.startswith("<svg") and 'data-ci-high="87.8"' in svg and "neutrophil 60.0 %" in svg


def test_recount_keeps_images_without_a_white_cell_out_and_keeps_the_domain_check():
    from pipeline.report import CellPrediction, build_report
    from pipeline.review import recount

    classes = ("basophil", "lymphocyte", "neutrophil", "erythroblast", "platelet")
    white = ("basophil", "lymphocyte", "neutrophil")
    preds = [CellPrediction("a.jpg", "neutrophil", 0.9), CellPrediction("b.jpg", "lymphocyte", 0.5),
             CellPrediction("c.jpg", "neutrophil", 0.4, cell_found=False), CellPrediction("d.jpg", None, None, "truncated")]
    stored = {"job_id": "x", "kind": "cells", **build_report(preds, classes, white, "m@1", 0.6).to_dict()}
    stored["domain_check"] = {"status": "shifted", "score": 3.2, "reasons": ["far from training data"]}
    rows = [("a.jpg", None, "neutrophil", 0.9, True), ("b.jpg", None, "basophil", 0.5, True), ("c.jpg", None, "neutrophil", 0.4, False)]
    out = recount(stored, rows, {"d.jpg": "truncated"}, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    counts = {r["cell_type"]: r["count"] for r in out["differential"]}
    assert counts == {"basophil": 1, "lymphocyte": 0, "neutrophil": 1} and out["white_cell_total"] == 2
    assert out["n_no_cell_found"] == 1 and out["n_failed"] == 1 and out["domain_check"]["status"] == "shifted"
    assert out["job_id"] == "x" and out["erythroblasts"]["count"] == 0


def test_recount_of_a_fields_job_keeps_the_job_and_slide_domain_checks():
    """Reviews change labels, not crops: each slide's stored check survives the recount (the rows carry no scores)."""
    import numpy as np

    from pipeline.domain import DomainModel
    from pipeline.review import recount
    from pipeline.slides import build_fields_report

    classes = ("lymphocyte", "neutrophil")
    domain = DomainModel(np.zeros(2), np.eye(2), np.zeros((1, 2)), np.eye(2), 1.0, 0.12, 0.05)
    cells = [(f"a/{i}.jpg", 0, "neutrophil", 0.9, 0.5) for i in range(10)] + [(f"b/{i}.jpg", 0, "neutrophil", 0.9, 2.0) for i in range(10)]
    paths = [c[0] for c in cells]
    stored = {"job_id": "x", **build_fields_report(paths, cells, {}, classes, classes, "m@2", 0.6, domain=domain)}
    rows = [(p, 0, "lymphocyte" if p == "b/0.jpg" else label, conf, True) for p, _, label, conf, _ in cells]
    out = recount(stored, rows, {}, paths)
    slides = {s["slide"]: s for s in out["slides"]}
    assert {r["cell_type"]: r["count"] for r in slides["b"]["differential"]} == {"lymphocyte": 1, "neutrophil": 9}
    assert out["domain_check"] == stored["domain_check"] and out["domain_check"]["status"] == "shifted"
    assert [slides[s]["domain_check"]["status"] for s in ("a", "b")] == ["ok", "shifted"]
