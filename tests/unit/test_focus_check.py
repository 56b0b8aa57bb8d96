"""The focus check (``pipeline.focus_check``, rule F): the blur effect on known images, the reference's job
statistic, its storage with the domain model, and its reason in a job's domain check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.domain import JOB_SIZE, OK, SHIFTED, DomainModel, check_job
from pipeline.focus_check import REBLUR, FocusReference, blur_effect, fit_focus_reference
from pipeline.stain_check import MIN_MEASURED

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cells"


def _step(width: int = 64, height: int = 48, contrast: float = 200.0) -> np.ndarray:
    grey = np.zeros((height, width), np.uint8)
    grey[:, width // 2 :] = int(contrast)
    return grey


def test_a_sharp_step_edge_keeps_one_reblur_length_of_its_variation():
    """Crete-Roffet on a step: the box blur spreads the step over REBLUR pixels, keeping 1/REBLUR of the
    neighbour variation unremoved; the direction along the edge varies nowhere and is ignored (not "flat")."""
    assert blur_effect(_step()) == pytest.approx(1.0 / REBLUR, abs=1e-4)


def test_contrast_cancels_and_an_image_without_variation_is_not_measured():
    """A blank or saturated crop has no focus to measure: None, so that empty crops cannot raise the reason."""
    assert blur_effect(_step(contrast=200)) == pytest.approx(blur_effect(_step(contrast=40)), abs=1e-4)
    assert blur_effect(np.full((32, 32, 3), 128, np.uint8)) is None and blur_effect(np.zeros((1, 1, 3), np.uint8)) is None


def test_grey_single_channel_four_channel_and_float_inputs_agree():
    rgb = np.repeat(_step()[:, :, None], 3, axis=2)
    expected = blur_effect(rgb)
    assert blur_effect(_step()) == expected and blur_effect(_step()[:, :, None]) == expected
    assert blur_effect(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])) == expected
    assert blur_effect(rgb.astype(np.float64)) == pytest.approx(expected, abs=1e-4)


def test_blur_raises_the_effect_monotonically_on_a_real_cell_image():
    path = sorted(SAMPLES.rglob("*.jp*g"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    effects = [blur_effect(rgb if s == 0 else cv2.GaussianBlur(rgb, (0, 0), s)) for s in (0, 1, 2, 4)]
    assert effects == sorted(effects) and effects[-1] - effects[0] > 0.2, effects
    # a contrast change (a paler or darker stain) leaves it nearly where it was
    pale = cv2.addWeighted(rgb, 0.5, np.full_like(rgb, 255), 0.5, 0)
    assert abs(blur_effect(pale) - effects[0]) < 0.03


def _reference(seed: int = 0) -> FocusReference:
    rng = np.random.default_rng(seed)
    values = {"kaggle": list(rng.normal(0.50, 0.06, 400)), "pbc": list(rng.normal(0.40, 0.06, 400))}
    return fit_focus_reference(values, seed=seed)


def test_in_domain_jobs_pass_blurred_ones_are_flagged_and_sharper_ones_never():
    ref = _reference()
    rng = np.random.default_rng(1)
    in_domain = [ref.reason(list(rng.normal(0.50, 0.06, JOB_SIZE))) for _ in range(200)]
    assert sum(r is not None for r in in_domain) <= 10  # about 2 % by construction; 5 % allows for the draw
    blurred = ref.reason(list(rng.normal(0.75, 0.06, JOB_SIZE)))
    assert blurred is not None and "blurrier" in blurred and "kaggle" in blurred
    assert ref.reason(list(rng.normal(0.10, 0.06, JOB_SIZE))) is None  # much sharper than both: never an alarm
    # like the sharper laboratory's images: fine (a job is one laboratory's slides, either will do)
    assert ref.reason(list(rng.normal(0.40, 0.06, JOB_SIZE))) is None


def test_too_few_measured_images_say_nothing_and_unmeasured_ones_are_skipped():
    ref = _reference()
    assert ref.measure([0.9] * (MIN_MEASURED - 1) + [None, float("nan")]) is None
    measured = ref.measure([0.9] * MIN_MEASURED + [None])
    assert measured is not None and measured["measured"] == MIN_MEASURED and measured["unlike_all"]


def test_small_jobs_get_wider_thresholds():
    ref = _reference()
    assert ref.measure([0.5] * 10)["threshold"] > ref.measure([0.5] * 50)["threshold"]


def test_the_reference_is_stored_with_the_domain_model_and_read_back(tmp_path):
    ref = _reference()
    rng = np.random.default_rng(0)
    domain = DomainModel(np.zeros(4), np.eye(4, 2), np.zeros((2, 2)), np.eye(2), 3.0, 0.2, 0.05, focus=ref)
    domain.save(tmp_path / "ood.npz")
    loaded = DomainModel.load(tmp_path / "ood.npz")
    assert loaded.focus is not None and loaded.focus.labs == ref.labs
    np.testing.assert_allclose(loaded.focus.thresholds, ref.thresholds)
    job = list(rng.normal(0.8, 0.05, JOB_SIZE))
    assert loaded.focus.measure(job) == ref.measure(job)
    # a domain model saved without it (models before 2.4.2) loads without a focus check
    dataclasses.replace(domain, focus=None).save(tmp_path / "old.npz")
    assert DomainModel.load(tmp_path / "old.npz").focus is None


def test_the_job_check_reports_the_focus_reason_and_its_measure():
    ref = _reference()
    domain = DomainModel(np.zeros(4), np.eye(4, 2), np.zeros((2, 2)), np.eye(2), 3.0, 0.2, 0.05, focus=ref)
    scores = [1.0] * JOB_SIZE  # familiar features: the distances alone find nothing
    rng = np.random.default_rng(2)
    sharp = check_job(scores, domain, n_images=JOB_SIZE, focus=list(rng.normal(0.45, 0.06, JOB_SIZE)))
    assert sharp.status == OK and sharp.focus is not None and not sharp.focus["unlike_all"]
    blurred = check_job(scores, domain, n_images=JOB_SIZE, focus=list(rng.normal(0.8, 0.05, JOB_SIZE)))
    assert blurred.status == SHIFTED and any("blurrier" in r for r in blurred.reasons)
    assert blurred.to_dict()["focus"]["unlike_all"] is True
    # a model without a focus reference ignores the values
    assert check_job(scores, dataclasses.replace(domain, focus=None), n_images=JOB_SIZE,
                     focus=list(rng.normal(0.8, 0.05, JOB_SIZE))).status == OK


def test_the_fit_needs_enough_images_per_laboratory():
    with pytest.raises(ValueError, match="needs"):
        fit_focus_reference({"kaggle": [0.5] * (2 * JOB_SIZE - 1)})


def test_the_report_carries_the_focus_measure_in_json_csv_and_table():
    """``domain_check.focus`` (measured or not alarming, it is reported), its CSV row and table detail; a field job's
    cells are checked the same way against the same reference (rule F2), in cells."""
    from pipeline.report import CellPrediction, build_report
    from tests.unit.test_report import CLASSES, WHITE

    ref = _reference()
    domain = DomainModel(np.zeros(8), np.eye(8, 4), np.zeros((2, 4)), np.eye(4), 3.0, 0.2, 0.05, focus=ref)
    rng = np.random.default_rng(3)
    blurred = [CellPrediction(f"img{i}.jpg", CLASSES[0], 0.9, ood_score=1.0, focus=float(v))
               for i, v in enumerate(rng.normal(0.8, 0.04, 40))]
    report = build_report(blurred, CLASSES, WHITE, "m@1", 0.5, domain=domain)
    focus = report.domain_check["focus"]
    assert focus["unlike_all"] and focus["measured"] == 40 and report.domain_check["status"] == SHIFTED
    assert (f"domain_blur_deficit,{focus['deficit']},{focus['laboratory']},{focus['threshold']},40,{focus['blur_effect']}"
            in report.to_csv())
    assert f"blur deficit {focus['deficit']} to {focus['laboratory']}" in report.to_table()
    assert any("blurrier" in line for line in report.to_table().splitlines() if line.startswith("  ! "))
    fields = build_report(blurred, CLASSES, WHITE, "m@1", 0.5, domain=domain, scored_unit="cells").domain_check
    assert fields["focus"]["unlike_all"] and any("the cells are blurrier" in r for r in fields["reasons"])
    unmeasured = [CellPrediction(f"img{i}.jpg", CLASSES[0], 0.9, ood_score=1.0) for i in range(40)]
    assert "focus" not in build_report(unmeasured, CLASSES, WHITE, "m@1", 0.5, domain=domain).domain_check


def test_the_report_lists_the_blurriest_images_even_when_the_job_passes():
    """Which images to retake: those blurrier than about 1 in 20 of the job's laboratory's, blurriest first, at most
    ten listed (all counted), in report.json, the CSV (formula-safe names) and the table; none in a sharp job."""
    from pipeline.focus_check import MAX_LISTED
    from pipeline.report import CellPrediction, DifferentialReport, build_report
    from tests.unit.test_report import CLASSES, WHITE

    ref = _reference()
    domain = DomainModel(np.zeros(8), np.eye(8, 4), np.zeros((2, 4)), np.eye(4), 3.0, 0.2, 0.05, focus=ref)
    rng = np.random.default_rng(5)
    sharp = [CellPrediction(f"img{i}.jpg", CLASSES[0], 0.9, ood_score=1.0, focus=float(v))
             for i, v in enumerate(np.clip(rng.normal(0.40, 0.03, 48), 0.3, 0.5))]
    two = sharp + [CellPrediction("=bad.jpg", CLASSES[0], 0.9, ood_score=1.0, focus=0.85),
                   CellPrediction("soft.jpg", CLASSES[0], 0.9, ood_score=1.0, focus=0.70)]
    report = build_report(two, CLASSES, WHITE, "m@1", 0.5, domain=domain)
    focus = report.domain_check["focus"]
    assert report.domain_check["status"] == OK and not focus["unlike_all"]
    assert focus["n_blurry"] == 2 and [b["path"] for b in focus["blurriest"]] == ["=bad.jpg", "soft.jpg"]
    assert "domain_blurry_image,'=bad.jpg,0.85" in report.to_csv()  # a spreadsheet must not run it as a formula
    assert "blurry images (2, blurriest first): =bad.jpg (0.850), soft.jpg (0.700)" in report.to_table()
    again = DifferentialReport.from_dict(report.to_dict())  # as stored and read back for the API and the CLI
    assert again.domain_check["focus"]["blurriest"] == focus["blurriest"]
    blurred = [CellPrediction(f"b{i}.jpg", CLASSES[0], 0.9, ood_score=1.0, focus=0.6 + i / 1000) for i in range(30)]
    many = build_report(blurred, CLASSES, WHITE, "m@1", 0.5, domain=domain).domain_check["focus"]
    assert many["n_blurry"] == 30 and len(many["blurriest"]) == MAX_LISTED and many["blurriest"][0]["path"] == "b29.jpg"
    clean = build_report(sharp, CLASSES, WHITE, "m@1", 0.5, domain=domain)
    assert clean.domain_check["focus"]["n_blurry"] == 0 and "blurry images" not in clean.to_table()
