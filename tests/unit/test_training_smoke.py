"""The real training CLI end to end on a handful of images: train -> export -> evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, SHARED

pytestmark = pytest.mark.tensorflow
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet_dequant_tf2ptq.h5"


def test_train_export_evaluate_cli(tmp_path):
    if not WEIGHTS.exists():
        pytest.fail(f"training data not found at {SHARED}: ../shared must sit beside the repository")
    work, export, report = tmp_path / "run", tmp_path / "model", tmp_path / "eval" / "metrics.json"
    train = [sys.executable, "-m", "training.train", "--work-dir", str(work), "--export-dir", str(export),
             "--kaggle-dir", str(SHARED / "kaggle" / "TRAIN"), "--pbc-dir", str(SHARED / "pbc"), "--weights", str(WEIGHTS),
             "--input-size", "64", "--kaggle-cap-train", "6", "--kaggle-cap-eval", "3", "--pbc-limit-per-class", "8",
             "--head-epochs", "1", "--finetune-epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
             "--raw-augmentation", "lab-habits"]
    proc = subprocess.run(train, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BN parity gap" in proc.stdout
    for name in ("splits.json", "history_head.csv", "history_finetune.csv", "best.keras", "final.keras"):
        assert (work / name).exists(), name
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["input_size"] == 64 and len(manifest["classes"]) == 8
    assert manifest["temperature"] > 0 and manifest["litert_keras_max_abs_diff"] <= 1e-4
    int8 = manifest["int8"]
    assert int8["fp32_val_accuracy"] - int8["val_accuracy"] <= int8["max_drop"] if int8["shipped"] else int8["file"] is None
    assert set(manifest["files"]) == {"model.keras", "model.tflite", "ood.npz"} | ({"model.int8.tflite"} if int8["shipped"] else set())
    assert manifest["preprocessing"] == "cell-centred-rbc4-whitebalance-mobilenet-v2-scale"
    assert 0 < manifest["ood"]["job_threshold"] <= 1 and manifest["ood"]["image_threshold"] > 0

    again = subprocess.run(train, cwd=REPO, capture_output=True, text=True, timeout=600)  # same command: resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "phase 1: resumed" in again.stdout and "phase 2: BN parity gap" not in again.stdout

    evaluate = [sys.executable, "-m", "training.evaluate", "--model", str(export), "--data", str(work / "splits" / "kaggle_val"),
                "--json", str(report)]
    proc = subprocess.run(evaluate, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(report.read_text())
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "n_images"):
        assert key in metrics
    assert metrics["n_images"] == int(np.sum(metrics["confusion_matrix"])) > 0
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0
    assert metrics["per_source_cell"]["n_sources"] >= 4  # Kaggle names give the source cell
    assert (report.parent / "metrics_confusion.png").exists() and (report.parent / "metrics_reliability.png").exists()

    # the alarm refitted on the same network: new version and thresholds, verified files, the same predictions
    refit = [sys.executable, "-m", "training.refit_domain", "--model", str(export), "--config", str(work / "config.json"),
             "--version", "0.0.1-refit"]
    proc = subprocess.run(refit, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refitted = json.loads((export / "manifest.json").read_text())
    assert refitted["version"] == "0.0.1-refit" and "refitted" in refitted["history"][-1]
    assert refitted["ood"]["mean_distance"]["laboratories"] == ["kaggle", "pbc"]
    from pipeline.classifier import load_classifier

    assert load_classifier(str(export), "litert").domain.mean_threshold(50) is not None  # sha256 of ood.npz verified
    proc = subprocess.run(evaluate, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and json.loads(report.read_text())["accuracy"] == metrics["accuracy"]

    # the int8 file rebuilt in place from the run's caches: only the int8 block and the file list change
    int8 = [sys.executable, "-m", "training.export", "--work-dir", str(work), "--int8-into", str(export), "--calibration-images", "8"]
    proc = subprocess.run(int8, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rebuilt = json.loads((export / "manifest.json").read_text())
    assert rebuilt["int8"]["calibration_images"] == 8 and rebuilt["int8"]["tried"][0]["float_layers"] == 0
    assert {k: v for k, v in rebuilt.items() if k not in ("int8", "files")} == {k: v for k, v in refitted.items() if k not in ("int8", "files")}
    assert ("model.int8.tflite" in rebuilt["files"]) == bool(rebuilt["int8"]["shipped"])
    load_classifier(str(export), "litert")  # every listed file's sha256 verified

    # a soup of the run with itself: its own run folder, exported like a run, the same answers
    soup_export = tmp_path / "soup_model"
    soup = [sys.executable, "-m", "training.soup", "--work-dir", str(work), "--work-dir", str(work),
            "--out", str(tmp_path / "soup"), "--export-dir", str(soup_export), "--calibration-images", "0"]
    proc = subprocess.run(soup, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    souped = json.loads((soup_export / "manifest.json").read_text())
    assert souped["version"] == manifest["version"] + "+soup" and len(souped["training_recipe"]["soup"]["ingredients"]) == 2
    evaluate[evaluate.index(str(export))] = str(soup_export)
    proc = subprocess.run(evaluate, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and json.loads(report.read_text())["accuracy"] == metrics["accuracy"]


def test_evaluate_reports_unknown_class_folders(tmp_path, model_dir, sample_folder):
    data = tmp_path / "data"
    for sub in ("EOSINOPHIL", "blast"):
        (data / sub).mkdir(parents=True)
    src = sorted((sample_folder / "kaggle" / "EOSINOPHIL").glob("*.jp*g"))[:2]
    for p in src:
        (data / "EOSINOPHIL" / p.name).write_bytes(p.read_bytes())
        (data / "blast" / p.name).write_bytes(p.read_bytes())
    from training.evaluate import evaluate

    result = evaluate(str(model_dir), str(data))
    assert result["n_images"] == 2 and result["unknown_class_folders"] == {"blast": 2}
    assert list(result["per_class"]) and "eosinophil" in result["per_class"]


def test_warm_start_copies_a_trained_models_weights(tmp_path):
    """``init_from``: fine-tuning can continue from a shipped model (same outputs before any step)."""
    from training.model import build_model
    from training.train import warm_start

    trained = build_model(8, 64, None)
    trained.get_layer("logits").set_weights([w + 0.5 for w in trained.get_layer("logits").get_weights()])
    trained.save(str(tmp_path / "trained.keras"))
    fresh = build_model(8, 64, None)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    assert not np.allclose(fresh.predict(x, verbose=0), trained.predict(x, verbose=0))
    warm_start(fresh, str(tmp_path / "trained.keras"))
    assert np.allclose(fresh.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("averaging", ["dense", ""])
def test_training_with_feature_mixing_exports_the_plain_architecture(tmp_path, averaging):
    """MixStyle acts while fine-tuning only: the saved and exported models are ordinary MobileNetV2s, whether the
    weights come from the average or from the best checkpoint (saved with the mixing layers, loaded back)."""
    import zipfile

    if not WEIGHTS.exists():
        pytest.fail(f"training data not found at {SHARED}: ../shared must sit beside the repository")
    work, export = tmp_path / "run", tmp_path / "model"
    train = [sys.executable, "-m", "training.train", "--work-dir", str(work), "--export-dir", str(export),
             "--kaggle-dir", str(SHARED / "kaggle" / "TRAIN"), "--pbc-dir", str(SHARED / "pbc"), "--weights", str(WEIGHTS),
             "--input-size", "64", "--kaggle-cap-train", "4", "--kaggle-cap-eval", "2", "--pbc-limit-per-class", "6",
             "--head-epochs", "1", "--finetune-epochs", "2", "--steps-per-epoch", "2", "--batch-size", "8",
             "--feature-mixing", "mixstyle", "--weight-averaging", averaging]
    proc = subprocess.run(train, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("phase 2: averaged weights" in proc.stdout) == bool(averaging)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["training_recipe"]["feature_mixing"] == "mixstyle"
    for saved in (work / "best.keras", work / "final.keras", export / "model.keras"):
        with zipfile.ZipFile(saved) as archive:
            assert "MixStyleAdd" not in archive.read("config.json").decode(), saved
    from pipeline.classifier import load_classifier

    load_classifier(str(export), "litert")  # every listed file's sha256 verified
