"""The field-job alarm study runs on real in-domain fields, with and without a shift of the robustness suite."""

from __future__ import annotations

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
