"""The domain-shift alarm: fitted on in-domain features, quiet on in-domain jobs, loud on shifted ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.domain import OK, SHIFTED, UNAVAILABLE, DomainModel, check_job, fit_domain_model
from pipeline.report import CellPrediction, build_report
from tests.unit.test_report import CLASSES, WHITE

D, K = 96, 4


def features(n: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Class clusters in D dimensions; ``shift`` moves every point along a direction no class uses."""
    centres = np.eye(K, D) * 6.0
    labels = rng.integers(0, K, n)
    x = centres[labels] + rng.normal(0, 1, (n, D))
    x[:, -1] += shift
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def model() -> DomainModel:
    rng = np.random.default_rng(0)
    train_x, train_y = features(2000, rng)
    val_x, _ = features(600, rng)
    return fit_domain_model(train_x, train_y, val_x, components=32)


def test_thresholds_come_from_validation(model):
    rng = np.random.default_rng(1)
    val_scores = model.score(features(2000, rng)[0])
    assert np.mean(val_scores > model.image_threshold) == pytest.approx(0.05, abs=0.02)
    assert 0.05 < model.job_threshold < 0.3


def test_in_domain_jobs_rarely_alarm_and_shifted_jobs_always_do(model):
    rng = np.random.default_rng(2)
    in_domain = [check_job(list(model.score(features(50, rng)[0])), model).status for _ in range(200)]
    shifted = [check_job(list(model.score(features(50, rng, shift=6.0)[0])), model).status for _ in range(50)]
    assert in_domain.count(SHIFTED) <= 10  # at most 5 % false alarms
    assert shifted.count(SHIFTED) == 50
    report = check_job(list(model.score(features(50, rng, shift=6.0)[0])), model)
    assert report.score > model.job_threshold and "unlike the training laboratories" in report.reasons[0]


def test_save_and_load_round_trip(model, tmp_path):
    model.save(tmp_path / "ood.npz")
    again = DomainModel.load(tmp_path / "ood.npz")
    x = features(20, np.random.default_rng(3))[0]
    np.testing.assert_allclose(again.score(x), model.score(x), rtol=1e-5)
    assert again.job_threshold == pytest.approx(model.job_threshold)


def test_unavailable_without_a_model_or_with_too_few_images(model):
    assert check_job([1.0] * 50, None).status == UNAVAILABLE
    assert check_job([None] * 50, model).status == UNAVAILABLE
    assert check_job([0.0] * 9, model).status == UNAVAILABLE


def test_many_images_without_a_cell_are_a_reason(model):
    scores = list(model.score(features(50, np.random.default_rng(4))[0]))
    assert check_job(scores, model, n_no_cell=0, n_images=50).status == OK
    check = check_job(scores, model, n_no_cell=20, n_images=50)
    assert check.status == SHIFTED and "no white cell" in check.reasons[-1]


def test_report_leaves_no_cell_images_out_of_the_differential_and_carries_the_check(model):
    rng = np.random.default_rng(5)
    scores = model.score(features(30, rng, shift=6.0)[0])
    preds = [CellPrediction(f"n{i}.jpg", "neutrophil", 0.9, None, True, float(s)) for i, s in enumerate(scores)]
    preds += [CellPrediction("empty.jpg", "lymphocyte", 0.7, None, False, 1.0)]
    report = build_report(preds, CLASSES, WHITE, "m@2", 0.5, domain=model)
    assert report.white_cell_total == 30 and report.n_no_cell_found == 1 and report.no_cell_found == ["empty.jpg"]
    assert report.n_failed == 0 and report.n_classified == 30
    assert report.domain_check["status"] == SHIFTED
    assert "domain_check,shifted" in report.to_csv().replace("\r", "")
    assert "domain check: shifted" in report.to_table()


def test_a_moderate_shift_of_every_image_is_caught_by_the_mean_when_the_share_of_unusual_images_misses_it(model):
    """Every image a little further away (e.g. mild blur): few cross the image threshold, the job's mean does."""
    rng = np.random.default_rng(6)
    base = model.score(features(50, rng)[0]).astype(np.float64)
    moderate = list(np.minimum(base * 1.25, model.image_threshold * 0.98))  # none above the image threshold
    check = check_job(moderate, model)
    assert check.score == 0.0 and check.status == SHIFTED
    assert "on average further" in check.reasons[0] and check.mean_distance > model.mean_threshold(50)
    assert check.to_dict()["mean_distance"] == check.mean_distance


def test_mean_threshold_is_fitted_per_laboratory_and_widens_for_small_jobs():
    rng = np.random.default_rng(7)
    train_x, train_y = features(2000, rng)

    def far_lab(n: int) -> np.ndarray:
        """A second laboratory whose images scatter more widely around the same class centres."""
        x, y = features(n, rng)
        return (np.eye(K, D)[y] * 6.0 + (x - np.eye(K, D)[y] * 6.0) * 1.15).astype(np.float32)

    near, _ = features(1500, rng)
    model = fit_domain_model(train_x, train_y, np.concatenate([near, far_lab(1500)]), np.array([0] * 1500 + [1] * 1500),
                             components=32)
    assert model.mean_centres.shape == (2,) and model.mean_centres[1] > model.mean_centres[0] + 0.3
    # the farther laboratory's ordinary jobs stay quiet (a threshold from jobs mixing both would flag most of them)
    mixed_threshold = np.quantile([model.score(np.concatenate([features(25, rng)[0], far_lab(25)])).mean() for _ in range(300)], 0.975)
    far_means = [model.score(far_lab(50)).mean() for _ in range(100)]
    assert np.mean(np.array(far_means) > mixed_threshold) > 0.3
    far_jobs = [check_job(list(model.score(far_lab(50))), model).status for _ in range(100)]
    assert far_jobs.count(SHIFTED) <= 10
    assert model.mean_threshold(10) > model.mean_threshold(50) == model.mean_threshold(5000)


def test_a_domain_model_saved_before_the_mean_statistic_still_loads_and_checks(model, tmp_path):
    np.savez(tmp_path / "ood.npz", mean=model.mean, components=model.components, class_means=model.class_means,
             precision=model.precision, thresholds=np.array([model.image_threshold, model.job_threshold, model.expected_fraction]))
    old = DomainModel.load(tmp_path / "ood.npz")
    assert old.mean_threshold(50) is None
    check = check_job(list(model.score(features(50, np.random.default_rng(8), shift=6.0)[0])), old)
    assert check.status == SHIFTED and check.mean_distance is None and "mean_distance" not in check.to_dict()


def test_thresholds_allow_for_validation_images_that_are_copies_of_few_source_photographs():
    """Kaggle-like validation: 800 images that are copies of 40 cells say less about the laboratory than 800
    cells would, so the thresholds are wider when told the sources; one source per image changes nothing."""
    rng = np.random.default_rng(9)
    train_x, train_y = features(2000, rng)
    x, _ = features(40, rng)
    val = np.repeat(x, 20, axis=0) + rng.normal(0, 0.3, (800, D)).astype(np.float32)
    labs = np.zeros(len(val), int)
    naive = fit_domain_model(train_x, train_y, val, labs, components=32)
    aware = fit_domain_model(train_x, train_y, val, labs, components=32, val_sources=np.repeat(np.arange(40), 20))
    own = fit_domain_model(train_x, train_y, val, labs, components=32, val_sources=np.arange(800))
    assert aware.mean_threshold(50) > naive.mean_threshold(50) == pytest.approx(own.mean_threshold(50))
    assert aware.job_threshold >= naive.job_threshold == own.job_threshold


def test_field_jobs_use_the_field_thresholds_where_fitted(model, tmp_path):
    from pipeline.domain import field_thresholds

    rng = np.random.default_rng(10)
    cells = model.score(features(200, rng)[0]).astype(np.float64) * 1.2  # field crops: a little further out
    fitted = dataclasses.replace(model, field_thresholds=field_thresholds(cells, model.image_threshold))
    job = list(cells[:50])
    assert check_job(job, fitted, unit="images").status == SHIFTED  # cell-image thresholds: looks shifted
    assert check_job(job, fitted, unit="cells").status == OK  # field thresholds: an ordinary field job
    fitted.save(tmp_path / "ood.npz")
    again = DomainModel.load(tmp_path / "ood.npz")
    np.testing.assert_allclose(again.field_thresholds, fitted.field_thresholds)
    assert model.for_fields() is model  # none fitted: field jobs use the cell-image thresholds


def test_the_share_threshold_follows_the_job_size(model):
    """Two unusual images in ten are ordinary at a 5 % in-domain rate; eight in fifty are not."""
    assert model.share_counts is not None
    assert model.share_threshold(10) > model.share_threshold(50) >= model.share_threshold(500)
    assert model.share_threshold(50) == pytest.approx(model.job_threshold)
    far, near = model.image_threshold * 1.5, model.image_threshold * 0.5
    assert check_job([far] * 2 + [near] * 8, model).status == OK
    legacy = dataclasses.replace(model, share_counts=None)  # models before 2.1.1: one threshold for every size
    assert legacy.share_threshold(10) == legacy.job_threshold


def test_report_table_and_csv_carry_the_mean_distance(model):
    scores = model.score(features(30, np.random.default_rng(11))[0])
    preds = [CellPrediction(f"n{i}.jpg", "neutrophil", 0.9, None, True, float(s)) for i, s in enumerate(scores)]
    report = build_report(preds, CLASSES, WHITE, "m@2", 0.5, domain=model)
    mean = report.domain_check["mean_distance"]
    assert mean == pytest.approx(float(np.mean(scores)), abs=1e-3)
    assert f"mean distance {mean}" in report.to_table()
    assert f"domain_mean_distance,{mean}" in report.to_csv()


def test_share_threshold_matches_the_beta_binomial_written_out_and_stays_cheap_for_large_jobs():
    """The vectorised pmf (P(0) and successive ratios) gives the thresholds of the lgamma formula term by term."""
    import math

    from pipeline.domain import FALSE_ALARM, share_threshold_from_counts

    def direct(k: float, total: float, n: int) -> float:
        a, b = k + 0.5, total - k + 0.5
        pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1) + math.lgamma(x + a)
                        + math.lgamma(n - x + b) - math.lgamma(n + a + b) - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b))
               for x in range(n + 1)]
        survival = np.cumsum(pmf[::-1])[::-1]
        first = int(np.argmax(survival <= FALSE_ALARM)) if np.any(survival <= FALSE_ALARM) else n + 1
        return (first - 1) / n

    for k, total in ((0.0, 41.0), (35.0, 800.0), (14.0, 272.0), (272.0, 272.0)):
        for n in (1, 10, 50, 333):
            assert share_threshold_from_counts(k, total, n) == direct(k, total, n)
    assert 35 / 800 < share_threshold_from_counts(35.0, 800.0, 100_000) < 0.07  # the posterior rate's 98 % bound


def test_evaluation_reports_the_alarm_on_jobs_with_a_real_class_mix(model):
    """``training.evaluate`` also draws jobs with a normal differential's mix (60 % neutrophils): when one class lies
    further from the training data, those jobs alarm more often than balanced ones, and the report shows both."""
    from training.evaluate import domain_summary

    rng = np.random.default_rng(5)
    x, y = features(800, rng)
    classes = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
    x[y == 3, -1] += 5.0  # neutrophils only: balanced jobs alarm about 20 %, 60 %-neutrophil jobs about 80 %
    scores = model.score(x)
    found = np.ones(len(scores), bool)
    summary = domain_summary(model, scores, found, y_true=y, classes=classes)
    assert summary["alarm_rate_normal_differential"] >= summary["alarm_rate"] + 0.3
    plain = domain_summary(model, model.score(features(800, rng)[0]), found, y_true=y, classes=classes)
    assert plain["alarm_rate_normal_differential"] <= 0.1 and plain["alarm_rate"] <= 0.1
    assert "alarm_rate_normal_differential" not in domain_summary(model, scores, found)


def _stain_reference():
    from pipeline.stain_check import StainReference

    return StainReference(labs=("a",), means=np.log(np.array([[0.2, 0.3, 0.2]]) + 0.05), precisions=np.eye(3)[None] * 100,
                          centres=np.array([1.5]), thresholds=np.array([2.0]))


def test_report_checks_the_images_stain_signatures_when_the_model_has_a_stain_reference(model):
    """build_report hands each processed image's stain signature to the job check: a doubled stain makes an otherwise
    in-domain job shifted with the stain reason; the reference's own stain, unmeasured images or no reference do not."""
    stained = dataclasses.replace(model, stain=_stain_reference())
    scores = model.score(features(30, np.random.default_rng(8))[0])
    reference, doubled = (0.2, 0.3, 0.2), [0.4, 0.6, 0.4]  # a list, as JSON gives it back

    def preds(signature) -> list[CellPrediction]:
        out = [CellPrediction(f"n{i}.jpg", "neutrophil", 0.9, None, True, float(s), signature) for i, s in enumerate(scores)]
        return out + [CellPrediction("broken.jpg", None, None, "truncated JPEG", stain_od=reference)]

    ok = build_report(preds(reference), CLASSES, WHITE, "m@2", 0.5, domain=stained).domain_check
    assert ok["status"] == OK and not any("stain" in r for r in ok["reasons"])
    shifted = build_report(preds(doubled), CLASSES, WHITE, "m@2", 0.5, domain=stained).domain_check
    assert shifted["status"] == SHIFTED and len(shifted["reasons"]) == 1
    assert "red cells' stain is unlike the training laboratories'" in shifted["reasons"][0] and "30 images measured" in shifted["reasons"][0]
    assert build_report(preds(None), CLASSES, WHITE, "m@2", 0.5, domain=stained).domain_check["status"] == OK
    assert build_report(preds(doubled), CLASSES, WHITE, "m@2", 0.5, domain=model).domain_check["status"] == OK


def test_field_reports_check_each_cells_stain_per_slide_and_per_job(model):
    """build_fields_report passes each cell's signature (the sixth element of field_outcomes' rows) to each section's check."""
    from pipeline.slides import build_fields_report

    stained = dataclasses.replace(model, stain=_stain_reference())
    scores = model.score(features(40, np.random.default_rng(9))[0])
    fields = [f"s{s}/f{i}.jpg" for s in (1, 2) for i in range(4)]
    cells = [(f, i, "neutrophil", 0.9, float(scores[4 * k + i]), (0.4, 0.6, 0.4) if f.startswith("s2/") else (0.2, 0.3, 0.2))
             for k, f in enumerate(fields) for i in range(4)]
    report = build_fields_report(fields, cells, {}, CLASSES, WHITE, "m@2", 0.5, domain=stained)
    by_slide = {s["slide"]: s["domain_check"] for s in report["slides"]}
    assert not any("stain" in r for r in by_slide["s1"]["reasons"])
    assert by_slide["s2"]["status"] == SHIFTED and "16 cells measured" in by_slide["s2"]["reasons"][-1]
    assert report["domain_check"]["status"] == SHIFTED and "stain" in report["domain_check"]["reasons"][-1]  # the job's mean
    unmeasured = build_fields_report(fields, [c[:5] for c in cells], {}, CLASSES, WHITE, "m@2", 0.5, domain=stained)
    assert not any("stain" in r for r in unmeasured["domain_check"]["reasons"])
