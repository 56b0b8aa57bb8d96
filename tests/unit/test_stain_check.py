"""The domain check's stain reason: red-cell signatures on synthetic smears, the per-laboratory fit, the job rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.cellcrop import BACKGROUND_LEVEL, cell_crop
from pipeline.domain import OK, SHIFTED, DomainModel, check_job
from pipeline.stain_check import MIN_MEASURED, StainReference, fit_stain_reference, red_cell_signature, stain_signature
from tests.unit.test_stainnorm import smear
from training.shifts import hue_rotation, stain_intensity
from training.stain_check import _halves, job_rate

LAB_A = np.array([0.21, 0.31, 0.19])  # a PBC-like red-cell OD (R, G, B)
LAB_B = np.array([0.13, 0.25, 0.17])  # a Kaggle-like one


def signatures(centre: np.ndarray, n: int, rng: np.random.Generator, spread: float = 0.08) -> list[tuple]:
    """Signatures scattered around ``centre`` by a log-normal spread, as real images scatter."""
    return [tuple(centre * np.exp(rng.normal(0, spread, 3))) for _ in range(n)]


@pytest.fixture(scope="module")
def reference() -> StainReference:
    rng = np.random.default_rng(0)
    return fit_stain_reference({"a": signatures(LAB_A, 400, rng), "b": signatures(LAB_B, 400, rng)})


def test_the_signature_is_the_red_cells_optical_density_and_follows_the_stain_strength():
    image = smear(seed=3, red_od=(0.22, 0.33, 0.19))
    normal = np.array(stain_signature(cell_crop(image, 160).pixels))
    assert np.abs(normal - (0.22, 0.33, 0.19)).max() < 0.06  # white balance and resizing move it a little
    # x1.5 and x0.5: on this synthetic smear a doubled stain turns the (bluish) red cells violet enough to count as
    # nucleus, and the signature is then measured on their pale rims; real red cells are redder (on validation images
    # a doubled stain raised the signature: training.stain_check --study)
    stronger = np.array(stain_signature(cell_crop(stain_intensity(image, np.random.default_rng(0), 1.5), 160).pixels))
    weaker = np.array(stain_signature(cell_crop(stain_intensity(image, np.random.default_rng(0), 0.5), 160).pixels))
    assert np.all(stronger > 1.3 * normal) and np.all(weaker < 0.7 * normal)
    rotated = np.array(stain_signature(cell_crop(hue_rotation(image, np.random.default_rng(0), -30.0), 160).pixels))
    assert not np.allclose(rotated / rotated.sum(), normal / normal.sum(), atol=0.02)  # the channels' balance moved


def test_a_crop_without_red_cells_has_no_signature():
    glass = np.full((160, 160, 3), int(BACKGROUND_LEVEL), np.uint8)
    glass[60:100, 60:100] = (150, 60, 140)  # a violet cell alone on glass
    assert stain_signature(glass) is None


def test_jobs_from_either_laboratory_pass_and_shifted_stains_do_not(reference):
    rng = np.random.default_rng(1)
    assert reference.reason(signatures(LAB_A, 50, rng)) is None
    assert reference.reason(signatures(LAB_B, 50, rng)) is None
    doubled = reference.reason(signatures(LAB_A * 2.0, 50, rng))
    assert doubled is not None and "stain" in doubled and "50 images measured" in doubled
    # a hue shift moves the channels' balance, not the strength
    assert reference.reason(signatures(LAB_B * np.array([1.4, 0.8, 0.7]), 50, rng)) is not None


def test_too_few_measured_images_say_nothing_and_unmeasured_ones_are_skipped(reference):
    rng = np.random.default_rng(2)
    few = signatures(LAB_A * 2.0, MIN_MEASURED - 1, rng)
    assert reference.reason([*few, *[None] * 40]) is None
    assert reference.reason([*signatures(LAB_A * 2.0, MIN_MEASURED, rng), None, None]) is not None


def test_false_alarm_on_in_domain_jobs_is_near_the_design_rate(reference):
    rng = np.random.default_rng(3)
    held_out = signatures(LAB_A, 600, rng)
    assert job_rate(reference, held_out, rng, jobs=500) <= 0.06
    assert job_rate(reference, signatures(LAB_A * 1.5, 600, rng), rng, jobs=200) == 1.0


def test_small_jobs_get_wider_thresholds(reference):
    assert np.all(reference.job_thresholds(10) > reference.job_thresholds(50))
    assert np.allclose(reference.job_thresholds(50), reference.job_thresholds(5000))


def test_copies_of_few_sources_widen_the_threshold():
    rng = np.random.default_rng(4)
    sigs = signatures(LAB_A, 400, rng)
    plain = fit_stain_reference({"a": sigs}, image_quantile=None)
    clustered = fit_stain_reference({"a": sigs}, {"a": [f"src{i % 20}" for i in range(400)]}, image_quantile=None)
    assert clustered.thresholds[0] > plain.thresholds[0]


def test_the_job_threshold_is_at_least_the_per_image_quantile():
    """Rule S2: images of one laboratory that share slides are not independent, so a job-mean threshold from
    resampled jobs alone is too tight; the job's mean must also pass the 1-in-20 in-domain image."""
    sigs = signatures(LAB_A, 400, np.random.default_rng(7))
    job_mean = fit_stain_reference({"a": sigs}, image_quantile=None)
    floored = fit_stain_reference({"a": sigs})
    per_image = np.quantile(floored.distances(sigs)[:, 0], 0.95)
    assert job_mean.thresholds[0] < per_image
    assert floored.thresholds[0] == pytest.approx(per_image)


def test_too_few_measured_validation_images_cannot_be_fitted():
    with pytest.raises(ValueError, match="measured red cells"):
        fit_stain_reference({"a": [*signatures(LAB_A, 40, np.random.default_rng(5)), *[None] * 100]})


def test_the_reference_round_trips_through_the_domain_model_file_and_older_files_load_without_it(reference, tmp_path):
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (200, 8))
    base = DomainModel(x.mean(0), np.eye(8, 4), np.zeros((2, 4)), np.eye(4), 3.0, 0.2, 0.05)
    base.save(tmp_path / "old.npz")
    assert DomainModel.load(tmp_path / "old.npz").stain is None
    dataclasses.replace(base, stain=reference).save(tmp_path / "new.npz")
    loaded = DomainModel.load(tmp_path / "new.npz").stain
    assert loaded is not None and loaded.labs == ("a", "b")
    assert np.allclose(loaded.thresholds, reference.thresholds) and np.allclose(loaded.precisions, reference.precisions)
    # the job check uses it: ordinary features, doubled stain -> shifted with the stain reason only
    model = dataclasses.replace(base, stain=loaded)
    scores = [1.0] * 50
    assert check_job(scores, model, stains=signatures(LAB_A, 50, rng)).status == OK
    check = check_job(scores, model, stains=signatures(LAB_A * 2.0, 50, rng))
    assert check.status == SHIFTED and len(check.reasons) == 1 and "stain" in check.reasons[0]
    assert check_job(scores, model).status == OK  # no signatures given: no stain reason


def test_halving_by_source_keeps_a_sources_copies_together():
    groups = [f"s{i // 5}" for i in range(100)]
    half = _halves(groups, np.random.default_rng(0))
    for g in set(groups):
        members = {bool(half[i]) for i, x in enumerate(groups) if x == g}
        assert len(members) == 1
    assert half.sum() == 50


def test_leave_one_laboratory_out_flags_a_laboratory_the_reference_never_saw(monkeypatch, tmp_path):
    """``training.stain_check --lolo``: fitted on one laboratory, the other laboratory's jobs are flagged; a copy of
    the fitted laboratory would not be."""
    import training.stain_check as study
    from training.data import Sample

    rng = np.random.default_rng(8)
    samples = [Sample(f"a{i}.jpg", "neutrophil", "a", f"a{i}") for i in range(300)]
    samples += [Sample(f"b{i}.jpg", "neutrophil", "b", f"b{i}") for i in range(300)]
    sigs = signatures(LAB_A, 300, rng) + signatures(LAB_A * 1.8, 300, rng)
    monkeypatch.setattr(study.ModelManifest, "load", staticmethod(lambda _: type("M", (), {"classes": ("neutrophil",)})()))
    monkeypatch.setattr(study, "validation_samples", lambda config, classes: samples)
    monkeypatch.setattr(study, "decode", lambda s: s)
    monkeypatch.setattr(study, "signatures_of", lambda images, manifest, size=False: sigs)
    rates = study.leave_one_out(tmp_path, None)
    assert rates == {"a": 1.0, "b": 1.0}
    sigs[300:] = signatures(LAB_A, 300, rng)  # the same stain in both: neither is flagged
    assert all(rate <= 0.05 for rate in study.leave_one_out(tmp_path, None).values())


def test_the_report_carries_the_stain_measure_in_json_csv_and_table(reference):
    """``domain_check.stain``: how far the job's stain is from the nearest laboratory, against its threshold, whether
    or not it alarms; the CSV and the terminal table print it."""
    from pipeline.report import CellPrediction, build_report
    from tests.unit.test_report import CLASSES, WHITE

    rng = np.random.default_rng(9)
    base = DomainModel(np.zeros(8), np.eye(8, 4), np.zeros((2, 4)), np.eye(4), 3.0, 0.2, 0.05, stain=reference)
    sigs = signatures(LAB_B, 40, rng)
    preds = [CellPrediction(f"img{i}.jpg", CLASSES[0], 0.9, ood_score=1.0, stain_od=s) for i, s in enumerate(sigs)]
    report = build_report(preds, CLASSES, WHITE, "m@1", 0.5, domain=base)
    stain = report.domain_check["stain"]
    assert stain["laboratory"] == "b" and stain["measured"] == 40 and not stain["unlike_all"]
    assert 0 < stain["distance"] < stain["threshold"] and report.domain_check["status"] == OK
    assert f"domain_stain_distance,{stain['distance']},b,{stain['threshold']},40" in report.to_csv()
    assert f"stain distance {stain['distance']} to b" in report.to_table()
    shifted = [CellPrediction(f"img{i}.jpg", CLASSES[0], 0.9, ood_score=1.0, stain_od=tuple(np.array(s) * 2))
               for i, s in enumerate(sigs)]
    check = build_report(shifted, CLASSES, WHITE, "m@1", 0.5, domain=base).domain_check
    assert check["status"] == SHIFTED and check["stain"]["unlike_all"] and check["stain"]["distance"] > check["stain"]["threshold"]
    unmeasured = [CellPrediction(f"img{i}.jpg", CLASSES[0], 0.9, ood_score=1.0) for i in range(40)]
    assert "stain" not in build_report(unmeasured, CLASSES, WHITE, "m@1", 0.5, domain=base).domain_check


def _red_cells(centre: np.ndarray, diameter: float, n: int, rng: np.random.Generator) -> list[tuple]:
    """Red-cell signatures: the stain around ``centre`` and diameters around ``diameter`` px."""
    return [red_cell_signature(tuple(float(v) for v in s), float(diameter * np.exp(rng.normal(0, 0.06))))
            for s in signatures(centre, n, rng)]


def test_a_red_cell_signature_needs_both_the_stain_and_the_diameter():
    assert red_cell_signature((0.1, 0.2, 0.3), 42.123) == (0.1, 0.2, 0.3, 42.12)
    assert red_cell_signature(None, 42.0) is None and red_cell_signature((0.1, 0.2, 0.3), None) is None


def test_stain_and_size_together_flag_one_laboratorys_stain_at_the_others_size(tmp_path):
    """Lab A's stain at 70 px and lab B's at 43 px are both familiar; lab B's stain at 64 px (B magnified 1.5x)
    lies between the laboratories' sizes and has B's stain: the stain alone and the size alone pass it, the two
    together do not. The check rides in the domain model's file beside the stain reference, and the report
    carries it as ``red_cells``."""
    rng = np.random.default_rng(11)
    fitted = {"a": _red_cells(LAB_A, 70, 400, rng), "b": _red_cells(LAB_B, 43, 400, rng)}
    red = fit_stain_reference(fitted)
    stain = fit_stain_reference({lab: [s[:3] for s in sigs] for lab, sigs in fitted.items()})
    assert red.dims == 4 and stain.dims == 3
    magnified = _red_cells(LAB_B, 64, 50, rng)
    assert red.reason(_red_cells(LAB_A, 70, 50, rng)) is None and red.reason(_red_cells(LAB_B, 43, 50, rng)) is None
    assert stain.reason([s[:3] for s in magnified]) is None  # the stain is lab B's
    assert red.reason(magnified) is not None
    assert np.isnan(red.image_distances([None, magnified[0][:3]])).all()  # 3 values are no red-cell signature

    x = rng.normal(0, 1, (200, 8))
    base = DomainModel(x.mean(0), np.eye(8, 4), np.zeros((2, 4)), np.eye(4), 3.0, 0.2, 0.05, stain=stain)
    base.save(tmp_path / "stain_only.npz")
    assert DomainModel.load(tmp_path / "stain_only.npz").red_cells is None
    dataclasses.replace(base, red_cells=red).save(tmp_path / "both.npz")
    model = DomainModel.load(tmp_path / "both.npz")
    assert model.red_cells is not None and model.red_cells.dims == 4 and model.stain is not None and model.stain.dims == 3
    scores = [1.0] * 50
    check = check_job(scores, model, stains=[s[:3] for s in magnified], red_cells=magnified)
    assert check.status == SHIFTED and len(check.reasons) == 1 and "stain and size" in check.reasons[0]
    assert check.to_dict()["red_cells"]["unlike_all"] and not check.to_dict()["stain"]["unlike_all"]
    home = _red_cells(LAB_B, 43, 50, rng)
    assert check_job(scores, model, stains=[s[:3] for s in home], red_cells=home).status == OK
    assert check_job(scores, model, stains=[s[:3] for s in magnified]).status == OK  # no red-cell signatures given


def test_the_report_carries_the_red_cell_measure_for_cell_jobs_and_not_for_field_jobs():
    """``domain_check.red_cells`` is built from each stored image's stain and red-cell diameter: a cell job of
    lab B's stain at lab A's size is shifted by it (not by the stain), printed in the CSV and the table; a field
    job (``scored_unit="cells"``) is not checked by it, since fields have their own magnification check."""
    from pipeline.report import CellPrediction, build_report
    from tests.unit.test_report import CLASSES, WHITE

    rng = np.random.default_rng(12)
    fitted = {"a": _red_cells(LAB_A, 70, 400, rng), "b": _red_cells(LAB_B, 43, 400, rng)}
    base = DomainModel(np.zeros(8), np.eye(8, 4), np.zeros((2, 4)), np.eye(4), 3.0, 0.2, 0.05,
                       stain=fit_stain_reference({lab: [s[:3] for s in v] for lab, v in fitted.items()}),
                       red_cells=fit_stain_reference(fitted))
    home = [CellPrediction(f"i{i}.jpg", CLASSES[0], 0.9, ood_score=1.0, stain_od=s[:3], red_cell_px=s[3])
            for i, s in enumerate(_red_cells(LAB_B, 43, 40, rng))]
    report = build_report(home, CLASSES, WHITE, "m@1", 0.5, domain=base)
    red = report.domain_check["red_cells"]
    assert report.domain_check["status"] == OK and red["laboratory"] == "b" and red["measured"] == 40
    assert f"domain_red_cell_distance,{red['distance']},b,{red['threshold']},40" in report.to_csv()
    assert f"red-cell distance {red['distance']} to b" in report.to_table()
    magnified = [CellPrediction(f"i{i}.jpg", CLASSES[0], 0.9, ood_score=1.0, stain_od=s[:3], red_cell_px=s[3])
                 for i, s in enumerate(_red_cells(LAB_B, 64, 40, rng))]
    check = build_report(magnified, CLASSES, WHITE, "m@1", 0.5, domain=base).domain_check
    assert check["status"] == SHIFTED and check["red_cells"]["unlike_all"] and not check["stain"]["unlike_all"]
    fields = build_report(magnified, CLASSES, WHITE, "m@1", 0.5, domain=base, scored_unit="cells").domain_check
    assert "red_cells" not in fields and fields["status"] == OK


def test_the_per_image_form_passes_a_job_mixing_both_laboratories_and_still_flags_the_magnified_one(tmp_path):
    """A job of half lab A's and half lab B's familiar images is far from both laboratories *on average*, so the
    job-mean form flags it; the per-image form scores each image against its own nearest laboratory and does not.
    Both flag lab B's stain at 1.5 times its size. The form is stored with the reference."""
    rng = np.random.default_rng(13)
    fitted = {"a": _red_cells(LAB_A, 70, 400, rng), "b": _red_cells(LAB_B, 43, 400, rng)}
    mean_form, per_image = fit_stain_reference(fitted), fit_stain_reference(fitted, per_image=True)
    mixed = _red_cells(LAB_A, 70, 25, rng) + _red_cells(LAB_B, 43, 25, rng)
    magnified = _red_cells(LAB_B, 64, 50, rng)
    assert mean_form.reason(mixed) is not None and per_image.reason(mixed) is None
    assert per_image.reason(magnified) is not None and mean_form.reason(magnified) is not None
    measured = per_image.measure(magnified)
    assert measured["threshold"] == 1.0 and measured["distance"] > 1.0 and measured["laboratory"] in ("a", "b")
    x = np.zeros((4, 8))
    DomainModel(x.mean(0), np.eye(8, 4), np.zeros((2, 4)), np.eye(4), 3.0, 0.2, 0.05, red_cells=per_image).save(tmp_path / "m.npz")
    loaded = DomainModel.load(tmp_path / "m.npz").red_cells
    assert loaded is not None and loaded.per_image and loaded.reason(mixed) is None
