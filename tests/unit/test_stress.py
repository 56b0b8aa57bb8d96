"""The robustness suite: scoring with "no white cell found", subsampling, and a run on the shipped model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import encode_jpeg, synthetic_field
from training import stress
from training.shifts import FAMILIES


def test_score_counts_not_found_as_wrong_and_reports_coverage_like_evaluate():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]], np.float32)
    found = np.array([True, True, True, False])
    metrics = stress.score(probs, found, np.array([0, 1, 1, 1]), ("a", "b"))
    assert metrics["accuracy"] == pytest.approx(0.5)  # the right answer on a not-found image is still wrong
    assert metrics["coverage"] == pytest.approx(0.75)
    assert metrics["accuracy_on_found"] == pytest.approx(2 / 3)
    # the model's answers: class a P 1/2 R 1 -> F1 2/3; class b P 1 R 2/3 -> F1 4/5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # four bins of one: |1-0.9|, |1-0.8|, |0-0.7|, |1-0.6|
    assert metrics["ece"] == pytest.approx((0.1 + 0.2 + 0.7 + 0.4) / 4, abs=1e-6)
    assert metrics["recall"] == pytest.approx({"a": 1.0, "b": 2 / 3})
    assert metrics["confusion"] == {"a": {"a": 1, "b": 0, "not found": 0}, "b": {"a": 1, "b": 2, "not found": 1}}


def test_score_with_nothing_found_is_all_wrong():
    metrics = stress.score(np.array([[0.8, 0.1, 0.1]] * 2, np.float32), np.zeros(2, bool), np.array([0, 2]), ("a", "b", "c"))
    assert metrics["accuracy"] == 0.0 and metrics["coverage"] == 0.0 and metrics["accuracy_on_found"] == 0.0
    assert metrics["confusion"]["c"] == {"a": 1, "b": 0, "c": 0, "not found": 1} and "b" not in metrics["recall"]


def test_balanced_subsample_caps_each_class_and_depends_only_on_the_seed():
    samples = [(Path(f"c{label}/{i:03d}.jpg"), label) for label in (0, 1) for i in range(30 if label == 0 else 3)]
    picked = stress.balanced_subsample(samples, 5, seed=1)
    assert [label for _, label in picked].count(0) == 5 and [label for _, label in picked].count(1) == 3
    assert picked == stress.balanced_subsample(list(reversed(samples)), 5, seed=1)
    assert picked != stress.balanced_subsample(samples, 5, seed=2)
    assert stress.balanced_subsample(samples, None, 0) == samples


def test_conditions_start_with_the_baseline_and_refuse_unknown_families():
    names = [(c.family, c.strength) for c in stress.conditions(["scale", "jpeg"])]
    assert names[0] == stress.BASELINE
    assert names[1:] == [("scale", n) for n, _ in FAMILIES["scale"]] + [("jpeg", n) for n, _ in FAMILIES["jpeg"]]
    with pytest.raises(ValueError, match="unknown shift families"):
        stress.conditions(["sepia"])


@pytest.mark.tensorflow  # matplotlib comes with the train extra
def test_stress_run_on_the_shipped_model_covers_every_family_and_strength(model_dir, sample_folder, tmp_path, capsys):
    out, plot, table = tmp_path / "stress.json", tmp_path / "stress.png", tmp_path / "stress.md"
    scores = tmp_path / "scores.npz"
    code = stress.main(["--model", str(model_dir), "--data", str(sample_folder / "pbc"), "--limit", "1",
                        "--json", str(out), "--plot", str(plot), "--markdown", str(table), "--scores", str(scores)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 8 and set(result["images_per_class"].values()) == {1}
    (model,) = result["models"]
    expected = {"baseline": ["none"]} | {f: [name for name, _ in strengths] for f, strengths in FAMILIES.items()}
    assert {f: list(s) for f, s in model["results"].items()} == expected
    for family, strengths in model["results"].items():
        for name, m in strengths.items():
            for key in ("accuracy", "macro_f1", "ece", "coverage", "accuracy_on_found"):
                assert 0.0 <= m[key] <= 1.0, (family, name, key)
            assert m["n_images"] == 8
    baseline = model["results"]["baseline"]["none"]
    assert baseline["coverage"] == 1.0 and baseline["accuracy"] >= 0.75  # held-out sample images, not an accuracy claim
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table.read_text().splitlines()
    assert len(rows) == 2 + sum(len(s) for s in expected.values()) and rows[2].startswith("| baseline | none |")
    printed = capsys.readouterr().out
    assert "baseline" in printed and "off_centre" in printed
    with np.load(scores) as per_image:  # per condition: 8 images' domain scores, found flags, correctness, answers,
        # features, red-cell stain signatures, red-cell signatures (stain and diameter, 2.3.2) and blur effects (2.4.2)
        assert len(per_image.files) == 8 * sum(len(s) for s in expected.values()) + 1  # + the images' keys
        assert per_image["0/baseline/none/red_cells"].shape == (8, 4)
        focus = per_image["0/baseline/none/focus"]  # NaN for a model without the focus check
        assert focus.shape == (8,) and (np.isnan(focus).all() or ((focus > 0) & (focus < 1)).all())
        assert per_image["keys"].shape == (8,) and "/" in str(per_image["keys"][0])
        assert per_image["0/baseline/none/features"].shape[0] == 8 and per_image["0/baseline/none/predicted"].shape == (8,)
        assert per_image["0/baseline/none/ood"].shape == (8,) and np.isfinite(per_image["0/baseline/none/ood"]).all()
        assert per_image["0/baseline/none/correct"].sum() == round(baseline["accuracy"] * 8)
        stains = per_image["0/baseline/none/stain"]  # (R, G, B) optical density, NaN where no red cells were measured
        assert stains.shape == (8, 3) and np.isfinite(stains).any() and np.all(stains[np.isfinite(stains)] > 0)


def test_baseline_row_is_what_training_evaluate_reports(model_dir, sample_folder):
    from training.evaluate import evaluate

    expected = evaluate(str(model_dir), str(sample_folder / "pbc"))
    result = stress.run([str(model_dir)], str(sample_folder / "pbc"), families=["jpeg"], log=lambda line: None)
    baseline = result["models"][0]["results"]["baseline"]["none"]
    assert baseline["n_images"] == expected["n_images"] == result["n_images"]
    for key in ("accuracy", "macro_f1", "ece", "coverage", "accuracy_on_found"):
        assert baseline[key] == pytest.approx(expected[key], abs=1e-6), key


def test_images_without_a_white_cell_lower_coverage_and_count_as_wrong(model_dir, sample_folder, tmp_path):
    """The shipped weights served with the cell-centred recipe: a red-cells-only field has no white cell."""
    from pipeline.preprocess import RECIPE_CELL_CENTRED

    served = tmp_path / "model"
    shutil.copytree(model_dir, served)
    manifest = json.loads((served / "manifest.json").read_text())
    manifest["preprocessing"] = RECIPE_CELL_CENTRED
    (served / "manifest.json").write_text(json.dumps(manifest))
    data = tmp_path / "data" / "lymphocyte"
    data.mkdir(parents=True)
    shutil.copy(sorted((sample_folder / "pbc" / "lymphocyte").glob("*.jpg"))[0], data / "cell.jpg")
    (data / "red_cells_only.jpg").write_bytes(encode_jpeg(synthetic_field(320, 240, [], rbc=10)))
    result = stress.run([str(served)], str(tmp_path / "data"), families=["jpeg"], log=lambda line: None)
    baseline = result["models"][0]["results"]["baseline"]["none"]
    assert result["models"][0]["preprocessing"] == RECIPE_CELL_CENTRED
    assert baseline["coverage"] == 0.5 and baseline["accuracy"] <= 0.5
    assert baseline["confusion"]["lymphocyte"]["not found"] == 1


class MeanColourClassifier:
    """A toy with the Classifier interface: its features are the mean colour, so a colour cast is a domain shift."""

    def __init__(self, manifest, domain=None) -> None:
        self.manifest, self.domain = manifest, domain

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = np.full((len(batch), len(self.manifest.classes)), 0.1, np.float32)
        probs[:, 0] = 1.0 - 0.1 * (probs.shape[1] - 1)
        return probs, batch.mean(axis=(1, 2))

    def scored(self, batch: np.ndarray, stains=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        probs, features = self.predict_with_features(batch)
        return probs, features, None if self.domain is None else self.domain.score(features)


def test_domain_alarm_rate_is_reported_per_condition_for_models_with_a_domain_model(model_dir):
    from pipeline.classifier import prepare_cells
    from pipeline.domain import fit_domain_model
    from pipeline.manifest import ModelManifest

    manifest = ModelManifest.load(model_dir, verify=False)
    fields = [synthetic_field(96, 96, [(48, 48)], seed=s, rbc=4) for s in range(120)]
    y = np.zeros(60, int)
    toy = MeanColourClassifier(manifest)
    assert "domain" not in stress.measure(toy, fields[60:], y)
    train_features, val_features = (toy.predict_with_features(prepare_cells(part, manifest)[0])[1] for part in (fields[:60], fields[60:]))
    toy.domain = fit_domain_model(train_features, np.arange(60) % 2, val_features)
    in_domain = stress.measure(toy, fields[60:], y)["domain"]
    yellow = dict(FAMILIES["yellow_cast"])["1"]
    shifted = stress.measure(toy, [yellow(f, np.random.default_rng(0)) for f in fields[60:]], y)["domain"]
    assert in_domain["alarm_rate"] <= 0.2 and shifted["alarm_rate"] == 1.0
    # the labels reach the alarm's jobs with a real differential's class mix too (here one class: all its jobs)
    assert in_domain["alarm_rate_normal_differential"] <= 0.2 and shifted["alarm_rate_normal_differential"] == 1.0
    assert shifted["unusual_image_fraction"] > 0.9


def test_compare_runs_a_second_model_on_the_same_shifted_images(model_dir, sample_folder, tmp_path):
    result = stress.run([str(model_dir), str(model_dir)], str(sample_folder / "kaggle"), limit=2,
                        families=["off_centre", "jpeg"], log=lambda line: None)
    first, second = result["models"]
    assert first["results"] == second["results"]
    assert list(first["results"]) == ["baseline", "off_centre", "jpeg"]


def test_unknown_data_folder_is_an_error_message_not_a_traceback(model_dir, tmp_path, capsys):
    (tmp_path / "not_a_class").mkdir()
    assert stress.main(["--model", str(model_dir), "--data", str(tmp_path)]) == 2
    assert "no images of known classes" in capsys.readouterr().err


def test_undecodable_images_are_listed_not_scored(model_dir, sample_folder, tmp_path, capsys):
    data = tmp_path / "data" / "neutrophil"
    data.mkdir(parents=True)
    (data / "junk.jpg").write_bytes(b"not an image")
    assert stress.main(["--model", str(model_dir), "--data", str(tmp_path / "data")]) == 2
    assert "none of the 1 images could be decoded" in capsys.readouterr().err
    shutil.copy(sorted((sample_folder / "pbc" / "neutrophil").glob("*.jpg"))[0], data / "cell.jpg")
    result = stress.run([str(model_dir)], str(tmp_path / "data"), families=["blur"], log=lambda line: None)
    assert result["n_images"] == 1 and len(result["unreadable"]) == 1 and "junk.jpg" in result["unreadable"][0]
