"""Per-job feature-statistics alignment (AdaBN): does it make other laboratories' jobs right?

``python -m training.job_adaptation --lolo-root runs/lolo_swa [--lolo-root ...] [--model DIR --splits DIR] --json OUT``

Why: a laboratory's stain, lamp and camera move every layer's activations
by a per-channel offset and scale that the classifier never saw. A job is
one laboratory's cells, so its own images tell those statistics: AdaBN
(Li et al., 2016) re-normalises each batch-norm layer with the job's
statistics instead of the training data's. This project's weights have
batch normalisation folded into the convolutions (every BN layer is an
identity, ``../shared/data/weights/README.md``), so plain AdaBN would throw
the features away; instead, at every BN layer's input the job's per-channel
mean and standard deviation are mapped onto those the training images give
there, which is AdaBN written for folded layers.

The study answers the rule written before it ran (model card): on the
unseen laboratory of leave-one-laboratory-out models, and in-domain on the
shipped model with random and class-skewed 50-image jobs, accuracy with and
without the alignment, the same images and jobs. Validation images only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import keras
import numpy as np

from pipeline.classifier import prepare_cells
from pipeline.manifest import ModelManifest
from pipeline.temperature import calibrated_softmax
from training.evaluate import decoded_chunks, discover
from training.job_mixes import JOB_SIZE, differential_jobs, random_jobs, skewed_jobs
from training.lolo import HELD_OUT, folders_of
from training.metrics import reliability

# How many of the 52 BN layers (in network order) each variant aligns; fixed before the first run (model card):
# the early stages (stride <= 4) see colour and texture, the middle ones (stride <= 16) parts of cells, and the
# deepest ones the job's class mix, which aligning would erase.
VARIANTS = {"early": 9, "mid": 21, "all": 52}
SOURCE_IMAGES = 1000
EPS = 1e-3


class AlignedBatchNorm(keras.layers.BatchNormalization):
    """A BN layer that can record its input statistics, or align a batch's onto recorded ones before normalising.

    ``mode``: "off" (plain inference BN), "collect" (record sums of the input,
    output unchanged) or "adapt" (the batch's per-channel mean/std mapped onto
    the recorded source mean/std, then the layer's own inference BN).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode = "off"
        self.reset()

    def reset(self) -> None:
        self._sum = self._sumsq = None
        self._count = 0
        self.source_mean = self.source_std = None
        self.sources = getattr(self, "sources", {})

    def call(self, inputs, training=None, mask=None):
        x = keras.ops.convert_to_tensor(inputs)
        axes = tuple(range(len(x.shape) - 1))
        if self.mode == "collect":
            flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
            self._sum = flat.sum(axis=0) + (0 if self._sum is None else self._sum)
            self._sumsq = (flat * flat).sum(axis=0) + (0 if self._sumsq is None else self._sumsq)
            self._count += flat.shape[0]
        elif self.mode == "adapt":
            mean = keras.ops.mean(x, axis=axes)
            std = keras.ops.sqrt(keras.ops.var(x, axis=axes) + EPS)
            x = (x - mean) / std * self.source_std + self.source_mean
        return super().call(x, training=False, mask=mask)

    def finish_collecting(self) -> None:
        mean = self._sum / self._count
        var = np.maximum(self._sumsq / self._count - mean * mean, 0.0)
        self.source_mean = mean.astype(np.float32)
        self.source_std = np.sqrt(var + EPS).astype(np.float32)


def aligned_model(model_dir: str | Path) -> tuple[keras.Model, list[AlignedBatchNorm]]:
    """The model directory's Keras model with every BN layer an :class:`AlignedBatchNorm` (weights unchanged)."""
    original = keras.models.load_model(str(Path(model_dir) / "model.keras"), compile=False)

    def swap(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return AlignedBatchNorm.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    model = keras.models.clone_model(original, clone_function=swap, recursive=True)
    model.set_weights(original.get_weights())
    layers = [layer for layer in _all_layers(model) if isinstance(layer, AlignedBatchNorm)]
    if not layers:
        raise RuntimeError("no batch-norm layer was replaced; the alignment would do nothing")
    return model, layers


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def logits_of(model: keras.Model, batch: np.ndarray, n_classes: int) -> np.ndarray:
    out = model([batch], training=False)
    outputs = [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]
    return next(o for o in outputs if o.shape[-1] == n_classes)


def record_source(model: keras.Model, layers: list[AlignedBatchNorm], batches, name: str = "train") -> None:
    """Record each BN layer's input statistics over training images (``batches``: prepared model inputs) as
    source ``name``; a model trained on two laboratories gets one source per laboratory."""
    for layer in layers:
        layer.reset()
        layer.mode = "collect"
    for batch in batches:
        model(batch, training=False)
    for layer in layers:
        layer.finish_collecting()
        layer.sources[name] = (layer.source_mean, layer.source_std)
        layer.mode = "off"


def use_source(layers: list[AlignedBatchNorm], name: str) -> None:
    for layer in layers:
        layer.source_mean, layer.source_std = layer.sources[name]


def nearest_source(model: keras.Model, layers: list[AlignedBatchNorm], batch: np.ndarray) -> str:
    """The source whose first-layer statistics are closest to the job's (standardised squared distance of the
    channel means): a job from one training laboratory is aligned onto that laboratory, not onto the mixture."""
    first = layers[0]
    saved = first.sources
    if len(saved) == 1:
        return next(iter(saved))
    set_mode(layers, "collect", 1)
    try:
        first.reset()
        model(batch, training=False)
        first.finish_collecting()
        job_mean = first.source_mean
    finally:
        first.sources = saved
        set_mode(layers, "off")
    return min(saved, key=lambda k: float((((job_mean - saved[k][0]) / saved[k][1]) ** 2).sum()))


def set_mode(layers: list[AlignedBatchNorm], mode: str, first: int | None = None) -> None:
    """``mode`` on the first ``first`` layers (all when None), "off" on the rest."""
    for k, layer in enumerate(layers):
        layer.mode = mode if first is None or k < first else "off"


def prepared(paths: list[Path], manifest: ModelManifest):
    """Model inputs for ``paths`` as serving prepares them, one model batch at a time (``training.evaluate``'s
    decoding)."""
    for images in decoded_chunks(paths):
        yield prepare_cells(images, manifest)[0]


def source_paths(work_dir: Path, limit: int = SOURCE_IMAGES, seed: int = 0) -> dict[str, list[Path]]:
    """A random sample of the model's own training images (its ``splits.json``), per laboratory."""
    train = json.loads((work_dir / "splits.json").read_text())["train"]
    out = {}
    for lab in sorted({s["dataset"] for s in train}):
        mine = [s for s in train if s["dataset"] == lab]
        chosen = np.random.default_rng(seed).choice(len(mine), size=min(limit, len(mine)), replace=False)
        out[lab] = [Path(mine[i]["path"]) for i in sorted(chosen)]
    return out


def score_jobs(model: keras.Model, layers: list[AlignedBatchNorm], inputs: np.ndarray, labels: np.ndarray,
               jobs: list[np.ndarray], n_classes: int, temperature: float = 1.0) -> dict:
    """Accuracy over every (job, image) pair, plain and with each variant aligned per job (images counted once per
    job they are in)."""
    set_mode(layers, "off")
    plain = np.concatenate([logits_of(model, inputs[i], n_classes) for i in _chunks(np.arange(len(inputs)))])
    y = np.concatenate([labels[job] for job in jobs])
    plain_probs = calibrated_softmax(np.concatenate([plain[job] for job in jobs]), temperature)
    right_plain = plain_probs.argmax(1) == y
    chosen = [nearest_source(model, layers, inputs[job]) for job in jobs]
    result = {"jobs": len(jobs), "image_scores": int(len(y)), "plain": float(right_plain.mean()),
              "plain_ece": reliability(plain_probs, y)[0],
              "sources_chosen": {name: chosen.count(name) for name in sorted(set(chosen))}}
    for name, first in VARIANTS.items():
        probs = calibrated_softmax(np.concatenate([aligned_logits(model, layers, inputs[job], n_classes, first, chosen[k])
                                                   for k, job in enumerate(jobs)]), temperature)
        right = probs.argmax(1) == y
        result[name] = {"accuracy": float(right.mean()), "gain_points": float(100 * (right.mean() - right_plain.mean())),
                        "ece": reliability(probs, y)[0]}
    return result


def aligned_logits(model: keras.Model, layers: list[AlignedBatchNorm], batch: np.ndarray, n_classes: int,
                   first: int, source: str) -> np.ndarray:
    """The job's logits with its statistics aligned onto ``source`` in the first ``first`` BN layers."""
    use_source(layers, source)
    set_mode(layers, "adapt", first)
    try:
        return logits_of(model, batch, n_classes)
    finally:
        set_mode(layers, "off")


def _chunks(index: np.ndarray, size: int = 64):
    for start in range(0, len(index), size):
        yield index[start : start + size]


def load_folder(data_dir: Path, manifest: ModelManifest) -> tuple[np.ndarray, np.ndarray]:
    samples, _ = discover(data_dir, manifest.classes)
    inputs = np.concatenate(list(prepared([p for p, _ in samples], manifest)))
    return inputs, np.array([y for _, y in samples])


def study_model(model_dir: Path, work_dir: Path, folders: dict[str, Path], skewed: bool) -> dict:
    manifest = ModelManifest.load(model_dir)
    model, layers = aligned_model(model_dir)
    for lab, paths in source_paths(work_dir).items():
        record_source(model, layers, prepared(paths, manifest), lab)
    out = {}
    for name, folder in folders.items():
        inputs, labels = load_folder(folder, manifest)
        n, t = len(manifest.classes), manifest.temperature
        out[name] = {"random": score_jobs(model, layers, inputs, labels, random_jobs(len(labels)), n, t),
                     "differential": score_jobs(model, layers, inputs, labels, differential_jobs(labels, manifest.classes), n, t)}
        if skewed:
            out[name]["skewed"] = score_jobs(model, layers, inputs, labels, skewed_jobs(labels), n, t)
            out[name]["one_class"] = score_jobs(model, layers, inputs, labels, skewed_jobs(labels, share=1.0, per_class=1), n, t)
        print(model_dir.name, name, json.dumps(out[name]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.job_adaptation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lolo-root", action="append", default=[], help="a training.lolo root (repeatable)")
    parser.add_argument("--model", help="an in-domain model directory (the shipped model)")
    parser.add_argument("--work-dir", help="the in-domain model's training run (its splits.json gives the source images)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result: dict = {"job_size": JOB_SIZE, "source_images": SOURCE_IMAGES, "lolo": {}, "in_domain": None}
    for root in map(Path, args.lolo_root):
        folders = folders_of(root)
        for trained_on, held_out in HELD_OUT.items():
            unseen = folders[held_out]
            result["lolo"][f"{root.name}:{trained_on}->{held_out}"] = study_model(
                root / "export" / f"lolo_{trained_on}", root / f"lolo_{trained_on}", {"unseen": unseen}, skewed=False)["unseen"]
    if args.model:
        splits = Path(args.work_dir) / "splits"
        result["in_domain"] = study_model(Path(args.model), Path(args.work_dir),
                                          {"kaggle_val": splits / "kaggle_val", "pbc_val": splits / "pbc_val"}, skewed=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
