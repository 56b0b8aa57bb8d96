"""Export a trained model to ``models/<name>/``: Keras, fp32 LiteRT, manifest.

The temperature is fitted on the validation split (never on test data), with
augmented copies of it as far as the in-domain ECE target allows
(``training.calibration``), and stored in the manifest so both serving backends return calibrated
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

from pipeline.domain import FALSE_ALARM, JOB_SIZE, DomainModel, fit_domain_model
from pipeline.manifest import sha256_of
from pipeline.preprocess import scale_for_mobilenet
from pipeline.temperature import calibrated_softmax
from training.calibration import augmented_copies, choose_temperature, shift_aware_temperature
from training.config import CLASS_NAMES, WHITE_CELLS, TrainConfig
from training.data import Sample
from training.metrics import confusion_matrix, fit_temperature, macro_f1, reliability

PARITY_TOLERANCE = 1e-4
#: an int8 model ships only if it loses at most this much validation accuracy
INT8_MAX_DROP = 0.005


def to_tflite(model) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()


#: how many of the layers that quantise worst stay in float, tried in this order until one keeps the accuracy
INT8_FLOAT_LAYERS = (0, 3, 6, 10)
#: calibration images the quantisation debugger measures each layer's error on
DEBUG_IMAGES = 50


def _int8_converter(model, calibration: np.ndarray):
    import tensorflow as tf

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    return converter


def to_tflite_int8(model, calibration: np.ndarray, float_layers: list[str] | None = None) -> bytes:
    """Post-training int8 quantisation (float input/output), calibrated on training images; the layers named in
    ``float_layers`` (output tensor names) stay in float (TensorFlow's quantisation debugger's selective model)."""
    import tensorflow as tf

    converter = _int8_converter(model, calibration)
    if not float_layers:
        return converter.convert()
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_layers))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([calibration[i : i + 1]] for i in range(min(5, len(calibration)))),
        debug_options=options)
    return debugger.get_nondebug_quantized_model()


def worst_quantised_layers(model, calibration: np.ndarray) -> list[str]:
    """Output tensors ordered by their int8 error (RMSE over the quantisation step, TensorFlow's quantisation
    debugger on calibration images), worst first.

    Why: a network whose weights were averaged along training (2.2) lost 0.67 points of validation accuracy when
    every layer was quantised; a handful of layers carry most of the error, and keeping just those in float keeps
    the accuracy at most of the int8 speed.
    """
    import csv
    import io

    import tensorflow as tf

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_int8_converter(model, calibration),
        debug_dataset=lambda: ([calibration[i : i + 1]] for i in range(min(DEBUG_IMAGES, len(calibration)))))
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    rows = list(csv.DictReader(dump))

    def error(row: dict) -> float:
        value = float(row.get("rmse/scale") or "nan")
        return value if np.isfinite(value) else np.sqrt(float(row["mean_squared_error"])) / float(row["scale"])

    return [row["tensor_name"] for row in sorted(rows, key=error, reverse=True)]


def litert_logits(tflite_path: Path, batch: np.ndarray, chunk: int = 64) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path))
    inp = interpreter.get_input_details()[0]["index"]
    out = []
    for start in range(0, len(batch), chunk):
        part = batch[start : start + chunk]
        interpreter.resize_tensor_input(inp, list(part.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp, part)
        interpreter.invoke()
        outputs = [np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()]
        out.append(next(o for o in outputs if o.shape[-1] == len(CLASS_NAMES)))
    return np.concatenate(out)


def litert_accuracy(tflite_path: Path, scaled: np.ndarray, y: np.ndarray) -> float:
    return float((litert_logits(tflite_path, scaled).argmax(axis=1) == y).mean())


def with_features(model):
    """The same network with a second output, the pooled features the domain check scores."""
    import keras

    return keras.Model(model.inputs, [model.get_layer("logits").output, model.get_layer("pool").output], name=model.name)


def fit_domain(model, train_x: np.ndarray, train_y: np.ndarray, f_val: np.ndarray, val_groups: np.ndarray, folder: Path) -> dict:
    """Fit ``ood.npz`` on training features; thresholds from validation features (``pipeline.domain``)."""
    _, f_train = model.predict(scale_for_mobilenet(train_x), batch_size=64, verbose=0)
    return save_domain(f_train, train_y, f_val, val_groups, folder, f"{len(train_x)} training images")


def save_domain(f_train: np.ndarray, train_y: np.ndarray, f_val: np.ndarray, val_groups: np.ndarray, folder: Path,
                fitted_on: str, val_sources: np.ndarray | None = None) -> dict:
    """Write ``ood.npz`` and return the manifest's ``ood`` block (what ``training.refit_domain`` also writes)."""
    domain = fit_domain_model(f_train, train_y, f_val, val_groups, val_sources=val_sources)
    domain.save(folder / "ood.npz")
    return domain_block(domain, val_groups, "ood.npz", f"{fitted_on}; thresholds on {len(f_val)} validation images")


def domain_block(domain: DomainModel, val_groups: np.ndarray, file: str, fitted_on: str) -> dict:
    """The manifest's description of a domain model stored in ``file`` (``ood``, or an entry of ``ood.backends``)."""
    return {"file": file, "method": "Mahalanobis to nearest class centre, shared covariance, PCA 64",
            "image_threshold": round(domain.image_threshold, 4), "job_threshold": round(domain.job_threshold, 4),
            "job_size": JOB_SIZE, "in_domain_unusual_fraction": round(domain.expected_fraction, 4),
            "mean_distance": {"laboratories": [str(g) for g in np.unique(val_groups)],
                              "centres": [round(float(v), 4) for v in domain.mean_centres],
                              "job_thresholds": [round(float(v), 4) for v in domain.mean_thresholds]},
            "job_statistics": f"share of images above the image threshold, or mean distance; each at {FALSE_ALARM:.1%} "
                              f"false alarm on {JOB_SIZE}-image validation jobs of one laboratory",
            "fitted_on": fitted_on}


def try_int8(model, folder: Path, calibration: np.ndarray, scaled_val: np.ndarray, val_y: np.ndarray, fp32_accuracy: float) -> dict:
    """Build model.int8.tflite; keep it only if validation accuracy drops by at most INT8_MAX_DROP.

    Every layer quantised first; where that loses too much, the 3, 6, then 10 layers that quantise worst
    (``worst_quantised_layers``) stay in float, and the first variant within the limit ships.
    """
    path = folder / "model.int8.tflite"
    tried = []
    worst: list[str] = []
    for n_float in INT8_FLOAT_LAYERS:
        if n_float and not worst:
            worst = worst_quantised_layers(model, calibration)
        path.write_bytes(to_tflite_int8(model, calibration, worst[:n_float]))
        accuracy = litert_accuracy(path, scaled_val, val_y)
        tried.append({"float_layers": n_float, "val_accuracy": accuracy})
        if fp32_accuracy - accuracy <= INT8_MAX_DROP:
            return {"file": path.name, "val_accuracy": accuracy, "fp32_val_accuracy": fp32_accuracy, "max_drop": INT8_MAX_DROP,
                    "shipped": True, "calibration_images": int(len(calibration)), "float_layers": worst[:n_float], "tried": tried}
    path.unlink()
    return {"file": None, "val_accuracy": tried[0]["val_accuracy"], "fp32_val_accuracy": fp32_accuracy, "max_drop": INT8_MAX_DROP,
            "shipped": False, "calibration_images": int(len(calibration)), "tried": tried}


def run_images(work: Path) -> tuple[TrainConfig, dict[str, list[Sample]], np.ndarray, np.ndarray]:
    """A finished run's config, split and cached validation and training crops (re-export and ``add_int8``)."""
    from training.data import load_pixels, load_splits

    config = TrainConfig(**json.loads((work / "config.json").read_text()))
    splits = load_splits(work / "splits.json")
    val_x = load_pixels(splits["val"], config.input_size, work / f"cache_val_{config.input_size}.npz", config.recipe)
    train_x = load_pixels(splits["train"], config.input_size, work / f"cache_train_{config.input_size}.npz", config.recipe)
    return config, splits, val_x, train_x


def add_int8(model_dir: Path, work: Path, calibration_images: int = 200) -> dict:
    """Build (or rebuild) the int8 file of an exported model from its run's cached images, in place.

    Why: a model's manifest carries more than the export wrote (a refitted alarm, a distance-aware
    temperature); re-exporting would replace it. Only ``int8`` and the file list change here.
    """
    import keras

    from training.train import labels_of

    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    config, splits, val_x, train_x = run_images(work)
    model = keras.models.load_model(str(model_dir / "model.keras"), compile=False)
    scaled, val_y = scale_for_mobilenet(val_x), labels_of(splits["val"])
    fp32 = litert_accuracy(model_dir / "model.tflite", scaled, val_y)
    int8 = try_int8(model, model_dir, scale_for_mobilenet(calibration_subset(train_x, calibration_images, config.seed)), scaled, val_y, fp32)
    manifest["int8"] = int8
    manifest["files"].pop("model.int8.tflite", None)
    if int8["file"]:
        manifest["files"][int8["file"]] = sha256_of(model_dir / int8["file"])
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return int8


def export_model(model, config: TrainConfig, val_x: np.ndarray, val_y: np.ndarray, splits: dict[str, list[Sample]],
                 calibration_x: np.ndarray | None = None, train: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write model.keras, model.tflite (and model.int8.tflite if it keeps its accuracy) and manifest.json."""
    out = Path(config.export_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    import keras

    # a fresh model built from the config: the shipped file carries weights, not optimizer
    # state (clone_model keeps the optimizer's variables and triples the file)
    shipped = keras.Model.from_config(model.get_config())
    shipped.set_weights(model.get_weights())
    model = with_features(shipped)
    model.save(str(tmp / "model.keras"))
    (tmp / "model.tflite").write_bytes(to_tflite(model))

    scaled = scale_for_mobilenet(val_x)
    logits, val_features = model.predict(scaled, batch_size=64, verbose=0)
    t_clean = fit_temperature(logits, val_y)
    copies = augmented_copies(val_x, config.input_size, seed=config.seed, preprocessing=config.recipe)
    t_shift = shift_aware_temperature(logits, model.predict(scale_for_mobilenet(copies), batch_size=64, verbose=0)[0], val_y)
    temperature = choose_temperature(logits, val_y, t_clean, t_shift)
    probs = calibrated_softmax(logits, temperature)
    cm = confusion_matrix(val_y, probs.argmax(axis=1), len(CLASS_NAMES))
    ece_raw, _ = reliability(calibrated_softmax(logits, 1.0), val_y)
    ece, _ = reliability(probs, val_y)
    probe = scaled[:16]
    parity = float(np.max(np.abs(calibrated_softmax(litert_logits(tmp / "model.tflite", probe), temperature)
                                 - calibrated_softmax(np.asarray(model(probe, training=False)[0]), temperature))))
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"LiteRT and Keras disagree by {parity:.2e} (> {PARITY_TOLERANCE})")
    accuracy = float((probs.argmax(axis=1) == val_y).mean())
    int8 = None
    if calibration_x is not None and len(calibration_x):
        int8 = try_int8(model, tmp, scale_for_mobilenet(calibration_x), scaled, val_y, accuracy)
    val_groups = np.array([s.dataset for s in splits["val"]])
    ood = fit_domain(model, train[0], train[1], val_features, val_groups, tmp) if train is not None else None
    files = ["model.keras", "model.tflite"] + ([int8["file"]] if int8 and int8["file"] else []) + (["ood.npz"] if ood else [])

    manifest = {
        "name": config.model_name,
        "version": config.model_version,
        "classes": list(CLASS_NAMES),
        "white_cells": list(WHITE_CELLS),
        "input_size": config.input_size,
        "preprocessing": config.recipe,
        "training_recipe": {"datasets": config.datasets, "augmentation": config.augmentation,
                            "raw_augmentation": config.raw_augmentation or None, "init_from": config.init_from or None,
                            **({"feature_mixing": config.feature_mixing} if config.feature_mixing else {}),
                            **({"soup": config.extra["soup"]} if "soup" in config.extra else {})},
        "output": "logits",
        "temperature": round(temperature, 4),
        "temperature_fit": {"clean_validation": round(t_clean, 4), "with_augmented_copies": round(t_shift, 4),
                            "rule": "closest to the shift-aware fit whose validation ECE <= 3 % (training.calibration)"},
        "files": {f: sha256_of(tmp / f) for f in files},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": f"MobileNetV2 alpha {config.alpha}, ImageNet init, global average pooling, dropout {config.dropout}, dense logits",
        "training_data": {
            name: dict(sorted(Counter(f"{s.dataset}/{s.label}" for s in samples).items())) for name, samples in splits.items()
        },
        "split": "Kaggle TRAIN split by source cell (class, A in _A_B.jpeg); PBC split per image, stratified; 70/15/15 train/val/test",
        "validation_metrics": {
            "n_images": int(len(val_y)),
            "accuracy": accuracy,
            "macro_f1": macro_f1(cm),
            "ece_before_temperature": ece_raw,
            "ece": ece,
        },
        "litert_keras_max_abs_diff": parity,
        "int8": int8,
        "ood": ood,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def calibration_subset(train_x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return train_x[rng.choice(len(train_x), size=min(n, len(train_x)), replace=False)]


def main(argv: list[str] | None = None) -> int:
    """Re-export from a finished run: ``python -m training.export --work-dir runs/X``."""
    import keras

    from training.train import labels_of

    parser = argparse.ArgumentParser(prog="python -m training.export")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--export-dir")
    parser.add_argument("--calibration-images", type=int, default=200, help="training images for int8 calibration (0: no int8)")
    parser.add_argument("--int8-into", metavar="MODEL_DIR",
                        help="only (re)build the int8 file of this exported model, in place, from --work-dir's cached images")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    if args.int8_into:
        int8 = add_int8(Path(args.int8_into), work, args.calibration_images)
        print(json.dumps({k: v for k, v in int8.items() if k != "float_layers"}, indent=2))
        return 0
    config, splits, val_x, train_x = run_images(work)
    if args.export_dir:
        config.export_dir = args.export_dir
    model = keras.models.load_model(str(work / "final.keras"), compile=False)
    calibration = calibration_subset(train_x, args.calibration_images, config.seed) if args.calibration_images else None
    print(export_model(model, config, val_x, labels_of(splits["val"]), splits, calibration, (train_x, labels_of(splits["train"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
