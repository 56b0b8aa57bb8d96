"""Rule G's gate study (``training.tta_gate``): the gated answers and the choice of gate, on known numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.manifest import ModelManifest
from training.tta_gate import choose, gated, write_gate


def test_gated_answers_take_full_tta_only_below_the_gate():
    one = np.array([[0.95, 0.05], [0.55, 0.45], [0.30, 0.70]])
    full = np.array([[0.90, 0.10], [0.40, 0.60], [0.20, 0.80]])
    probs, unsure = gated(one, full, 0.7)
    assert unsure.tolist() == [False, True, False]
    np.testing.assert_array_equal(probs, [[0.95, 0.05], [0.40, 0.60], [0.30, 0.70]])


def _lab(one: float, full: float, gates: dict[float, float]) -> dict:
    return {"one_view": {"accuracy": one}, "full_tta": {"accuracy": full},
            "gates": {str(g): {"accuracy": a} for g, a in gates.items()}}


def test_the_gate_is_the_smallest_that_recovers_enough_of_the_gain_averaged_over_laboratories():
    grid = (0.6, 0.8, 0.9)
    # lab a gains 2 points with full TTA, lab b none; the mean gain is 1 point, so 0.8 point must be recovered
    labs = {"a": _lab(0.95, 0.97, {0.6: 0.955, 0.8: 0.966, 0.9: 0.97}),
            "b": _lab(0.98, 0.98, {0.6: 0.98, 0.8: 0.976, 0.9: 0.98})}
    result = choose(labs, grid)
    assert result["recovered"]["0.6"] == pytest.approx(0.25)
    assert result["recovered"]["0.8"] == pytest.approx(0.6)  # lab b's loss counts against the gate
    assert result["gate"] == 0.9


def test_no_gate_when_none_recovers_enough_or_tta_gains_nothing():
    assert choose({"a": _lab(0.95, 0.97, {0.6: 0.955, 0.9: 0.96})}, (0.6, 0.9))["gate"] is None
    assert choose({"a": _lab(0.95, 0.95, {0.6: 0.95})}, (0.6,))["gate"] is None


def test_the_gate_is_written_to_the_manifest_with_its_history(model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    write_gate(str(copy), 0.9, "validation folders", version="9.9.9")
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["tta"] == {"gate": 0.9, "chosen_by": "validation folders"}
    assert manifest["version"] == "9.9.9" and "gate 0.9" in manifest["history"][-1]
    assert ModelManifest.load(copy).version == "9.9.9"
    write_gate(str(copy), 0.7, "again", temperature_distance="as-given")  # the form it was chosen under is kept...
    write_gate(str(copy), 0.8, "once more")  # ...when the gate is chosen again
    assert json.loads((copy / "manifest.json").read_text())["tta"] == {"gate": 0.8, "chosen_by": "once more",
                                                                     "temperature_distance": "as-given"}


@pytest.mark.litert
@pytest.mark.parametrize("form", ["views-mean", "as-given"])
def test_the_study_gives_exactly_what_the_served_setting_answers(model_dir, sample_folder, tmp_path, form):
    """Rule G chose the gate from ``view_probabilities``; serving answers through ``UnsureTTA.scored``: the same images,
    the same gate, the same probabilities and the same images re-read, under either temperature form (rule G2)."""
    import shutil

    from pipeline.classifier import load_classifier
    from pipeline.views import DihedralTTA, UnsureTTA
    from training.evaluate import classify_chunks, decoded_chunks
    from training.tta_gate import view_probabilities

    paths = sorted(sample_folder.rglob("*.jp*g"))[:24]
    tta = load_classifier(model_dir, "litert", tta=1)
    assert isinstance(tta, DihedralTTA) and not tta.as_given
    one, full, found = view_probabilities(tta, paths, form)
    gate = float(np.median(one.max(axis=1)))
    expected, unsure = gated(one, full, gate)
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    write_gate(str(copy), gate, "test", temperature_distance=form)
    served = load_classifier(copy, "litert", tta=2)
    assert isinstance(served, UnsureTTA)
    probs, served_found, _ = classify_chunks(served, decoded_chunks(paths))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert served.reread == int(unsure.sum()) > 0 and (served_found == found).all()
