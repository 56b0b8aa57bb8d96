"""Rule P's tools: leave-one-laboratory-out pairs assembled as served, and the cross-fit against a given shape."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.classifier import LogitEnsemble, load_classifier
from training.distance_temperature import cross_fit_verdict, lolo_pairs


def _row(ece_given: float, nll_given: float, ece_cross: float, nll_cross: float) -> dict:
    return {"given_shape": {"unseen_lab": {"clean_ece": ece_given, "clean_nll": nll_given}},
            "cross_fit": {"unseen_lab": {"clean_ece": ece_cross, "clean_nll": nll_cross}}}


def test_cross_fit_must_beat_the_given_shape_in_every_direction():
    better = {"pbc->kaggle": _row(0.10, 1.0, 0.08, 0.9), "kaggle->pbc4": _row(0.09, 0.7, 0.07, 0.7)}
    assert cross_fit_verdict(better)["holds"]
    one_worse = {"pbc->kaggle": _row(0.10, 1.0, 0.08, 0.9), "kaggle->pbc4": _row(0.07, 0.7, 0.08, 0.6)}
    assert not cross_fit_verdict(one_worse)["holds"]
    nll_up = {"pbc->kaggle": _row(0.10, 1.0, 0.08, 1.01), "kaggle->pbc4": _row(0.09, 0.7, 0.07, 0.7)}
    assert not cross_fit_verdict(nll_up)["holds"]
    assert not cross_fit_verdict({"shape_from_both": {"quantile": 0.5, "power": 1.0}})["holds"]  # nothing compared


def test_lolo_pairs_read_a_pairs_own_temperature_not_its_first_networks(tmp_path):
    rng = np.random.default_rng(0)
    for own, temperature in (("pbc", 0.7), ("kaggle", 0.8)):
        rows = {"logits": rng.normal(size=(6, 4)), "distance": rng.random(6), "y": rng.integers(0, 4, 6),
                "condition": np.zeros(6, int), "image": np.arange(6), "lab": np.array(own)}
        np.savez(tmp_path / f"dt_{own}_unseen.npz", **rows)
        np.savez(tmp_path / f"dt_{own}_own_0.npz", **rows)
        export = tmp_path / "export" / f"lolo_{own}"
        export.mkdir(parents=True)
        manifest = {"temperature": 1.5}
        if own == "pbc":
            manifest["ensemble"] = {"temperature": temperature}
        (export / "manifest.json").write_text(json.dumps(manifest))
    pairs = lolo_pairs(tmp_path)
    assert pairs["pbc"][2] == 0.7 and pairs["kaggle"][2] == 1.5


@pytest.mark.litert
@pytest.mark.tensorflow
def test_pairs_are_assembled_per_direction_from_each_roots_network(model_dir, sample_folder, tmp_path):
    """Two fake ``training.lolo`` roots holding the shipped first network: each direction becomes a served
    ensemble whose temperature was fitted on that direction's own laboratory only."""
    from training.lolo_pair import assemble_pairs

    roots = []
    for seed in (1, 2):
        root = tmp_path / f"root{seed}"
        for lab in ("pbc", "kaggle"):
            single = root / "export" / f"lolo_{lab}"
            shutil.copytree(model_dir, single)
            manifest = json.loads((single / "manifest.json").read_text())
            for entry in (manifest.pop("ensemble", None) or {}).get("members", []):
                for backend in ("keras", "litert", "litert-int8"):
                    if backend in entry:
                        manifest["files"].pop(entry[backend], None)
                        (single / entry[backend]).unlink()
            (single / "manifest.json").write_text(json.dumps(manifest))
        splits = root / "splits" / "splits"
        splits.mkdir(parents=True)
        (splits / "pbc_val").symlink_to(sample_folder / "pbc")
        (splits / "kaggle_val").symlink_to(sample_folder / "kaggle")
        roots.append(root)

    with pytest.raises(ValueError, match="at least two"):
        assemble_pairs(roots[:1], tmp_path / "one")
    out = tmp_path / "pair"
    result = assemble_pairs(roots, out)
    assert (out / "splits" / "splits" / "pbc_val").is_dir()
    assert result["directions"]["pbc"]["temperature_fit"]["data"] == ["pbc_val"]
    assert result["directions"]["kaggle"]["temperature_fit"]["data"] == ["kaggle_val"]
    for lab in ("pbc", "kaggle"):
        pair = load_classifier(out / "export" / f"lolo_{lab}", "litert")
        assert isinstance(pair, LogitEnsemble) and pair.domain is not None
        assert pair.manifest.temperature == result["directions"][lab]["temperature_fit"]["temperature"]
    with pytest.raises(FileNotFoundError, match="no exported model"):
        assemble_pairs([roots[0], tmp_path / "missing"], tmp_path / "other")

    from pipeline.views import UnsureTTA
    from training.lolo_pair import serve_as_shipped

    settings = serve_as_shipped(out, (0.5, 1.1), 0.6, log=lambda _: None)
    for lab in ("pbc", "kaggle"):
        plain = load_classifier(out / "export" / f"lolo_{lab}", "litert")
        rule = plain.manifest.extra["temperature_distance"]
        assert rule["power"] == 1.1 and rule["reference"] == settings[lab]["temperature_distance"]["reference"] > 0
        own = sorted((sample_folder / lab).rglob("*.jp*g"))
        assert rule["own_laboratory_images"] == len(own)  # fewer than 100 per class: all of them, clean
        assert isinstance(load_classifier(out / "export" / f"lolo_{lab}", "litert", tta=2), UnsureTTA)
        assert plain.manifest.extra["tta"]["gate"] == 0.6
