"""Train the HematoVision classifier: ``python -m training.train [--config FILE] [--flags]``.

Phase 1 trains the head on cached pooled features of the frozen base (fast);
phase 2 fine-tunes the base with batch norm frozen, on augmented images that
mix both laboratories in every batch. Each phase writes its result to
``work_dir``; re-running the same command resumes where it stopped (phase 2
resumes mid-epoch-sequence through ``keras.callbacks.BackupAndRestore``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from training.config import CLASS_NAMES, TrainConfig, add_config_arguments, config_from_args
from training.data import (
    Sample,
    cap_per_class,
    kaggle_samples,
    load_pixels,
    load_raw,
    load_splits,
    materialize_split,
    pbc_samples,
    save_splits,
    split_by_group,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_splits(config: TrainConfig) -> dict[str, list[Sample]]:
    """Split each data set by source, cap the redundant Kaggle copies, save the split."""
    work = Path(config.work_dir)
    path = work / "splits.json"
    if path.exists():
        return load_splits(path)
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    if config.datasets not in ("both", "pbc", "kaggle"):
        raise ValueError(f"datasets must be both, pbc or kaggle, not {config.datasets!r}")
    if config.datasets != "pbc" and config.kaggle_dir and Path(config.kaggle_dir).is_dir():
        kag = split_by_group(kaggle_samples(Path(config.kaggle_dir)), config.split_fractions, config.data_seed)
        splits["train"] += cap_per_class(kag["train"], config.kaggle_cap_train, config.data_seed)
        splits["val"] += cap_per_class(kag["val"], config.kaggle_cap_eval, config.data_seed)
        splits["test"] += kag["test"]
    if config.datasets != "kaggle":
        pbc = split_by_group(pbc_samples(Path(config.pbc_dir), CLASS_NAMES, config.pbc_limit_per_class), config.split_fractions, config.data_seed)
        for name in splits:
            splits[name] += pbc[name]
    work.mkdir(parents=True, exist_ok=True)
    save_splits(splits, path)
    for name in ("val", "test"):
        for dataset in ("kaggle", "pbc"):
            materialize_split([s for s in splits[name] if s.dataset == dataset], work / "splits" / f"{dataset}_{name}")
    return splits


def labels_of(samples: list[Sample]) -> np.ndarray:
    index = {c: i for i, c in enumerate(CLASS_NAMES)}
    return np.array([index[s.label] for s in samples], dtype=np.int32)


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights, mean 1 over the training set."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (len(CLASS_NAMES) * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def train_head(config: TrainConfig, model, train_x, train_y, val_x, val_y) -> None:
    """Phase 1: fit dropout+dense on pooled features of the frozen base."""
    import keras

    from pipeline.preprocess import scale_for_mobilenet
    from training.model import feature_extractor

    extractor = feature_extractor(model)
    log(f"phase 1: extracting features of {len(train_x)} train + {len(val_x)} val images")
    t0 = time.time()
    f_train = extractor.predict(scale_for_mobilenet(train_x), batch_size=64, verbose=0)
    f_val = extractor.predict(scale_for_mobilenet(val_x), batch_size=64, verbose=0)
    log(f"phase 1: features in {time.time() - t0:.0f}s ({(len(train_x) + len(val_x)) / (time.time() - t0):.1f} img/s)")
    k = len(CLASS_NAMES)
    head = keras.Sequential([keras.Input((f_train.shape[1],)), keras.layers.Dropout(config.dropout), keras.layers.Dense(k, name="logits")])
    head.compile(
        optimizer=keras.optimizers.Adam(config.head_lr),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    weights = class_weights(train_y)[train_y]
    head.fit(
        f_train, keras.utils.to_categorical(train_y, k), sample_weight=weights,
        validation_data=(f_val, keras.utils.to_categorical(val_y, k)),
        epochs=config.head_epochs, batch_size=64, verbose=2,
        callbacks=[
            keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True),
            keras.callbacks.CSVLogger(str(Path(config.work_dir) / "history_head.csv")),
        ],
    )
    model.get_layer("logits").set_weights(head.get_layer("logits").get_weights())


class Progress:
    """Keras callback printing throughput and ETA every ``every`` batches."""

    def __new__(cls, every: int, steps: int, batch_size: int):
        import keras

        class _Progress(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0, self.epoch = time.time(), epoch

            def on_train_batch_end(self, batch, logs=None):
                if (batch + 1) % every == 0:
                    rate = (batch + 1) * batch_size / (time.time() - self.t0)
                    eta = (steps - batch - 1) * batch_size / rate
                    log(f"epoch {self.epoch + 1} batch {batch + 1}/{steps} loss {logs.get('loss', 0):.4f} "
                        f"acc {logs.get('accuracy', 0):.4f} {rate:.1f} img/s eta {eta:.0f}s")

        return _Progress()


def raw_crop_source(config: TrainConfig, raws: list[np.ndarray]):
    """``fetch(i) -> crop``: raw image ``i`` after the laboratory habits, through the serving recipe."""
    from pipeline.preprocess import to_model_pixels
    from training.raw_augment import raw_augmentation

    habits = raw_augmentation(config.raw_augmentation)
    rng = np.random.default_rng(config.seed)  # Generator methods take its lock: safe across tf.data threads

    def crop(i: int) -> np.ndarray:
        return to_model_pixels(habits(raws[i], rng), config.input_size, config.recipe)

    return crop


def augmented_dataset(config: TrainConfig, pixels: np.ndarray, labels: np.ndarray, raws: list[np.ndarray] | None = None):
    """Shuffled, augmented, class-weighted batches; with ``raws``, laboratory habits first act on the raw images."""
    import tensorflow as tf

    from pipeline.preprocess import POST_AUGMENT
    from training.augment import augment

    k = len(CLASS_NAMES)
    weights = class_weights(labels)
    size = config.input_size
    crop = raw_crop_source(config, raws) if raws is not None and config.raw_augmentation else None

    def fetch(i):
        return (crop(int(i)) if crop is not None else pixels[i]), labels[i]

    post = POST_AUGMENT.get(config.recipe)

    def normalise(image: np.ndarray) -> np.ndarray:
        return post(np.clip(np.rint(image), 0, 255).astype(np.uint8)).astype(np.float32)

    def load(i):
        image, label = tf.numpy_function(fetch, [i], [tf.uint8, tf.int32])
        image = tf.ensure_shape(tf.cast(image, tf.float32), [size, size, 3])
        label = tf.ensure_shape(label, [])
        image = augment(image, size, config.augmentation)
        if post is not None:
            image = tf.ensure_shape(tf.numpy_function(normalise, [image], tf.float32), [size, size, 3])
        image = image / 127.5 - 1.0
        return image, tf.one_hot(label, k), tf.gather(weights, label)

    ds = tf.data.Dataset.range(len(pixels)).shuffle(len(pixels), seed=config.seed, reshuffle_each_iteration=True).repeat()
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size).prefetch(2)


def fine_tune(config: TrainConfig, model, train_x, train_y, val_x, val_y, train_raw: list[np.ndarray] | None = None) -> None:
    """Phase 2: fine-tune the base (BN frozen) on augmented, mixed batches."""
    import keras

    from pipeline.preprocess import scale_for_mobilenet
    from training.model import bn_parity_gap, unfreeze_base

    work = Path(config.work_dir)
    unfreeze_base(model, config.finetune_from)
    gap = bn_parity_gap(model, scale_for_mobilenet(val_x[:8]))
    log(f"phase 2: BN parity gap (training vs inference mode) = {gap:.2e}")
    if gap > 1e-4:
        raise RuntimeError("batch-norm layers would use batch statistics; refusing to fine-tune")
    k = len(CLASS_NAMES)
    from training.feature_mixing import with_mixing

    fit_model = with_mixing(model, config.feature_mixing, config.seed)  # ``model`` itself unless mixing is on
    fit_model.compile(
        optimizer=keras.optimizers.Adam(config.finetune_lr),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    steps = config.steps_per_epoch or max(1, len(train_x) // config.batch_size)
    averaging = []
    if config.weight_averaging == "dense":
        from training.averaging import weight_average_callback

        averaging = [weight_average_callback(work / "weight_average.npz")]
    elif config.weight_averaging:
        raise ValueError(f"unknown weight_averaging {config.weight_averaging!r}; use '' or 'dense'")
    fit_model.fit(
        augmented_dataset(config, train_x, train_y, train_raw),
        validation_data=(scale_for_mobilenet(val_x), keras.utils.to_categorical(val_y, k)),
        validation_batch_size=64,
        epochs=config.finetune_epochs, steps_per_epoch=steps, verbose=2,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(work / "backup")),
            keras.callbacks.ModelCheckpoint(str(work / "best.keras"), monitor="val_loss", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1, min_lr=1e-6),
            keras.callbacks.CSVLogger(str(work / "history_finetune.csv"), append=True),
            Progress(every=25, steps=steps, batch_size=config.batch_size),
            *averaging,  # last: installs the averaged weights when training ends
        ],
    )
    if not averaging:
        fit_model.load_weights(str(work / "best.keras"))
    if fit_model is not model:  # same layers in the same order: the trained weights go back to the plain model
        model.set_weights(fit_model.get_weights())
    if averaging or fit_model is not model:  # the checkpoint a resumed run loads holds the plain architecture
        model.save(str(work / "best.keras"))
    if averaging:  # the model holds the average: it replaces the best-validation-loss checkpoint
        loss = fit_model.evaluate(scale_for_mobilenet(val_x), keras.utils.to_categorical(val_y, k), batch_size=64, verbose=0)
        log(f"phase 2: averaged weights, validation loss {loss[0]:.4f}, accuracy {loss[1]:.4f}")


def warm_start(model, source: str) -> None:
    """Copy base and logits weights from a trained model (``.keras``), e.g. to fine-tune 2.0 further."""
    import keras

    from training.model import base_of

    if not Path(source).is_file():
        raise FileNotFoundError(f"init_from {source!r} does not exist: train the model it names first "
                                f"(for 2.1: python -m training.train --config training/configs/mnv2_cc_160.json)")
    trained = keras.models.load_model(source, compile=False)
    base_of(model).set_weights(base_of(trained).get_weights())
    model.get_layer("logits").set_weights(trained.get_layer("logits").get_weights())


def run(config: TrainConfig) -> Path:
    import keras

    from training.model import build_model

    keras.utils.set_random_seed(config.seed)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(config.to_json())
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    splits = make_splits(config)
    for name, samples in splits.items():
        log(f"{name}: {len(samples)} images {dict(sorted(Counter((s.dataset, s.label) for s in samples).items()))}")
    train_x = load_pixels(splits["train"], config.input_size, work / f"cache_train_{config.input_size}.npz", config.recipe)
    val_x = load_pixels(splits["val"], config.input_size, work / f"cache_val_{config.input_size}.npz", config.recipe)
    train_y, val_y = labels_of(splits["train"]), labels_of(splits["val"])

    model = build_model(len(CLASS_NAMES), config.input_size, config.weights or None, config.alpha, config.dropout)
    if config.init_from and not state.get("head_done"):
        warm_start(model, config.init_from)
        model.save_weights(str(work / "head.weights.h5"))
        state["head_done"] = True
        state_path.write_text(json.dumps(state))
        log(f"phase 1: skipped, weights from {config.init_from}")
    if state.get("head_done"):
        model.load_weights(str(work / "head.weights.h5"))
        log("phase 1: resumed from head.weights.h5")
    else:
        train_head(config, model, train_x, train_y, val_x, val_y)
        model.save_weights(str(work / "head.weights.h5"))
        state["head_done"] = True
        state_path.write_text(json.dumps(state))
    if config.finetune_epochs > 0 and not state.get("finetune_done"):
        train_raw = load_raw(splits["train"]) if config.raw_augmentation else None
        fine_tune(config, model, train_x, train_y, val_x, val_y, train_raw)
        state["finetune_done"] = True
        state_path.write_text(json.dumps(state))
    elif state.get("finetune_done"):
        model.load_weights(str(work / "best.keras"))
    final = work / "final.keras"
    model.save(str(final))
    log(f"saved {final}")

    from training.export import calibration_subset, export_model

    out = export_model(model, config, val_x, val_y, splits, calibration_subset(train_x, 200, config.seed), (train_x, train_y))
    log(f"exported to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__)
    parser.add_argument("--config", help="JSON file with TrainConfig fields; flags override it")
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
