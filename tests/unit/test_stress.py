"""The robustness suite: scoring with "no white cell found", subsampling, and a run on the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training import stress
from training.shifts import FAMILIES


def test_score_counts_not_found_as_wrong_and_reports_coverage():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [np.nan, np.nan]], np.float32)
    found = np.array([True, True, True, False])
    metrics = stress.score(probs, found, np.array([0, 1, 1, 1]), ("a", "b"))
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["coverage"] == pytest.approx(0.75)
    assert metrics["accuracy_on_found"] == pytest.approx(2 / 3)
    # class 0: P 1/2, R 1 -> F1 2/3; class 1: P 1, R 1/3 -> F1 1/2 (the not-found sample lowers recall)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["ece"] == pytest.approx((0.1 + 0.2 + 0.7) / 3, abs=1e-6)  # three bins of one: |1-0.9|, |1-0.8|, |0-0.7|
    assert metrics["recall"] == pytest.approx({"a": 1.0, "b": 1 / 3})
    assert metrics["confusion"] == {"a": {"a": 1, "b": 0, "not found": 0}, "b": {"a": 1, "b": 1, "not found": 1}}


def test_score_with_nothing_found_has_no_ece():
    metrics = stress.score(np.full((2, 3), np.nan, np.float32), np.zeros(2, bool), np.array([0, 2]), ("a", "b", "c"))
    assert metrics["accuracy"] == 0.0 and metrics["coverage"] == 0.0
    assert metrics["ece"] is None and metrics["accuracy_on_found"] is None
    assert metrics["confusion"]["c"] == {"a": 0, "b": 0, "c": 0, "not found": 1} and "b" not in metrics["recall"]


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
    code = stress.main(["--model", str(model_dir), "--data", str(sample_folder / "pbc"), "--limit", "1",
                        "--json", str(out), "--plot", str(plot), "--markdown", str(table)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 8 and set(result["images_per_class"].values()) == {1}
    (model,) = result["models"]
    expected = {"baseline": ["none"]} | {f: [name for name, _ in strengths] for f, strengths in FAMILIES.items()}
    assert {f: list(s) for f, s in model["results"].items()} == expected
    for family, strengths in model["results"].items():
        for name, m in strengths.items():
            assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0 and 0.0 <= m["ece"] <= 1.0, (family, name)
            assert m["coverage"] == 1.0 and m["n_images"] == 8
    assert model["results"]["baseline"]["none"]["accuracy"] >= 0.75  # held-out sample images, not an accuracy claim
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table.read_text().splitlines()
    assert len(rows) == 2 + sum(len(s) for s in expected.values()) and rows[2].startswith("| baseline | none |")
    printed = capsys.readouterr().out
    assert "baseline" in printed and "off_centre" in printed


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
