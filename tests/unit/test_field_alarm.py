"""The field-job alarm study runs on real in-domain fields, with and without a shift of the robustness suite."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO, SHARED
from training import field_alarm

MODEL = REPO / "models" / "hematovision-mnv2-cc-160"


@pytest.fixture()
def fields(tmp_path):
    source = sorted((SHARED / "bccd" / "JPEGImages").glob("*.jpg"))[:8]
    if len(source) < 8:
        pytest.fail(f"BCCD fields not found under {SHARED}: ../shared must sit beside the repository")
    (tmp_path / "JPEGImages").mkdir()
    for p in source:
        shutil.copy(p, tmp_path / "JPEGImages" / p.name)
    return tmp_path


def test_shifted_fields_are_scored_further_from_the_training_data(fields, capsys):
    from pipeline.classifier import load_classifier

    classifier = load_classifier(str(MODEL), "litert", threads=1)
    paths = sorted((fields / "JPEGImages").glob("*.jpg"))
    plain = [s for f in field_alarm.field_scores(classifier, paths) for s in f]
    rotated = [s for f in field_alarm.field_scores(classifier, paths, field_alarm.named_shift("hue_rotation/-30deg")) for s in f]
    assert plain and rotated and sum(rotated) / len(rotated) > sum(plain) / len(plain) + 0.5
    assert field_alarm.main(["--data", str(fields), "--model", str(MODEL), "--fields", "4", "--jobs", "20",
                             "--shift", "scale/x2"]) == 0
    assert "scale/x2" in capsys.readouterr().out


def test_unknown_shift_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown shift 'scale/x9'"):
        field_alarm.named_shift("scale/x9")


def test_fit_writes_field_thresholds_into_a_copy_of_the_model(fields, tmp_path, capsys):
    from pipeline.classifier import load_classifier

    model = tmp_path / "model"
    shutil.copytree(MODEL, model, ignore=shutil.ignore_patterns("eval", "training"))
    assert field_alarm.main(["--data", str(fields), "--model", str(model), "--fields", "2", "--jobs", "20", "--fit"]) == 0
    assert "field thresholds: share" in capsys.readouterr().out
    manifest = json.loads((model / "manifest.json").read_text())
    assert "of 4 even BCCD fields" in manifest["ood"]["fields"]["fitted_on"]
    domain = load_classifier(str(model), "litert").domain  # the manifest's digest of the new ood.npz verifies
    assert domain.field_thresholds is not None and domain.for_fields().mean_threshold(50) is not None


def test_field_accuracy_counts_labelled_fields_and_a_field_without_a_cell_as_wrong(tmp_path, fields, capsys):
    paths = [tmp_path / f"{name}.jpg" for name in ("a", "b", "c", "d")]
    (tmp_path / "labels.csv").write_text("image,wbc_category\na,NEUTROPHIL\nb,EOSINOPHIL\nc,LYMPHOCYTE\n")
    accuracy = field_alarm.field_accuracy(paths, ["neutrophil", "neutrophil", None, "monocyte"], tmp_path / "labels.csv")
    assert accuracy == (pytest.approx(1 / 3), 3)  # d has no label; c found no cell
    assert field_alarm.field_accuracy(paths, [None] * 4, tmp_path / "missing.csv") is None

    shutil.copy(SHARED / "bccd" / "labels.csv", fields / "labels.csv")  # the real study prints it
    assert field_alarm.main(["--data", str(fields), "--model", str(MODEL), "--fields", "4", "--jobs", "5"]) == 0
    assert "field-level accuracy (most prominent cell vs labels.csv): " in capsys.readouterr().out
