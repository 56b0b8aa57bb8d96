"""Export a trained model to ``models/<name>/``: Keras, fp32 LiteRT, manifest.

The temperature is fitted on the validation split (never on test data) and
stored in the manifest so both serving backends return calibrated
probabilities. Export fails if the LiteRT model disagrees with Keras.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.classifier import calibrated_softmax
from pipeline.manifest import sha256_of
from pipeline.preprocess import RECIPE, scale_for_mobilenet
from training.config import CLASS_NAMES, WHITE_CELLS, TrainConfig
from training.data import Sample
from training.metrics import confusion_matrix, fit_temperature, macro_f1, reliability

PARITY_TOLERANCE = 1e-4


def to_tflite(model) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()


def litert_logits(tflite_path: Path, batch: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path))
    inp = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(inp, list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp, batch)
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def export_model(model, config: TrainConfig, val_x: np.ndarray, val_y: np.ndarray, splits: dict[str, list[Sample]]) -> Path:
    """Write model.keras, model.tflite and manifest.json; return the directory."""
    out = Path(config.export_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    import keras

    # a fresh model built from the config: the shipped file carries weights, not optimizer
    # state (clone_model keeps the optimizer's variables and triples the file)
    shipped = keras.Model.from_config(model.get_config())
    shipped.set_weights(model.get_weights())
    model = shipped
    model.save(str(tmp / "model.keras"))
    (tmp / "model.tflite").write_bytes(to_tflite(model))

    scaled = scale_for_mobilenet(val_x)
    logits = model.predict(scaled, batch_size=64, verbose=0)
    temperature = fit_temperature(logits, val_y)
    probs = calibrated_softmax(logits, temperature)
    cm = confusion_matrix(val_y, probs.argmax(axis=1), len(CLASS_NAMES))
    ece_raw, _ = reliability(calibrated_softmax(logits, 1.0), val_y)
    ece, _ = reliability(probs, val_y)
    probe = scaled[:16]
    parity = float(np.max(np.abs(calibrated_softmax(litert_logits(tmp / "model.tflite", probe), temperature)
                                 - calibrated_softmax(np.asarray(model(probe, training=False)), temperature))))
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"LiteRT and Keras disagree by {parity:.2e} (> {PARITY_TOLERANCE})")

    manifest = {
        "name": config.model_name,
        "version": config.model_version,
        "classes": list(CLASS_NAMES),
        "white_cells": list(WHITE_CELLS),
        "input_size": config.input_size,
        "preprocessing": RECIPE,
        "output": "logits",
        "temperature": round(temperature, 4),
        "files": {f: sha256_of(tmp / f) for f in ("model.keras", "model.tflite")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": f"MobileNetV2 alpha {config.alpha}, ImageNet init, global average pooling, dropout {config.dropout}, dense logits",
        "training_data": {
            name: dict(sorted(Counter(f"{s.dataset}/{s.label}" for s in samples).items())) for name, samples in splits.items()
        },
        "split": "Kaggle TRAIN split by source cell (class, A in _A_B.jpeg); PBC split per image, stratified; 70/15/15 train/val/test",
        "validation_metrics": {
            "n_images": int(len(val_y)),
            "accuracy": float((probs.argmax(axis=1) == val_y).mean()),
            "macro_f1": macro_f1(cm),
            "ece_before_temperature": ece_raw,
            "ece": ece,
        },
        "litert_keras_max_abs_diff": parity,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Re-export from a finished run: ``python -m training.export --work-dir runs/X``."""
    import keras

    from training.data import load_pixels, load_splits
    from training.train import labels_of

    parser = argparse.ArgumentParser(prog="python -m training.export")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--export-dir")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    config = TrainConfig(**{k: v for k, v in json.loads((work / "config.json").read_text()).items()})
    if args.export_dir:
        config.export_dir = args.export_dir
    splits = load_splits(work / "splits.json")
    val_x = load_pixels(splits["val"], config.input_size, work / f"cache_val_{config.input_size}.npz")
    model = keras.models.load_model(str(work / "final.keras"), compile=False)
    print(export_model(model, config, val_x, labels_of(splits["val"]), splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
