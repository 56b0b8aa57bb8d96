"""Classifier backends: ``predict(batch) -> probabilities`` over one model directory.

The backend is a setting (``HEMATOVISION_BACKEND``): LiteRT for fast CPU
serving without TensorFlow, Keras/TensorFlow for GPU placement and training
parity. Both read the same ``manifest.json`` and apply the same calibrated
softmax to the model's logits (``pipeline.temperature.CalibratedOutputs``, the
one place that does so, for one view, the 8 views and the network pair). How an
image is read in its 8 rotations/flips is ``pipeline.views``; this module holds
the backends, the network pair and ``load_classifier``, which puts them together.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipeline.cellcrop import CellCrop
from pipeline.domain import DomainModel
from pipeline.manifest import ModelManifest
from pipeline.preprocess import model_crop, scale_for_mobilenet
from pipeline.temperature import CalibratedOutputs
from pipeline.views import DihedralTTA, UnsureTTA, tta_gate

if TYPE_CHECKING:
    from pipeline.stain_check import Signature


class Classifier(Protocol):
    manifest: ModelManifest
    #: the model's domain-shift scorer (``ood.npz``), None for models exported before 2.0
    domain: DomainModel | None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Batch of scaled float32 (N, S, S, 3) -> probabilities (N, classes)."""
        ...

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and the pooled features (None when the model file has no feature output)."""
        ...

    def scored(self, batch: np.ndarray, stains: Sequence[Signature | None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Probabilities, pooled features and each image's domain distance (None without them), one model call.

        ``stains`` (the images' red-cell signatures, where measured) feed the stain-aware temperature of models
        that carry one."""
        ...


def _split_outputs(outputs: list[np.ndarray], n_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and pooled features from a model's outputs, told apart by width (2.0 models have both)."""
    logits = next(o for o in outputs if o.shape[-1] == n_classes)
    features = next((o for o in outputs if o.shape[-1] != n_classes), None)
    return logits, features


def predict_scored(classifier: Classifier, batch: np.ndarray,
                   stains: Sequence[Signature | None] | None = None) -> tuple[np.ndarray, list[float | None]]:
    """Probabilities and each image's distance to the training data (``pipeline.domain``) from one model call.

    Why one function: cell images and cells cut from fields must be scored the
    same way, and the model must run once per crop, not once more for features.
    Scores are None when the model has no domain model or no feature output.
    """
    probs, _, distances = classifier.scored(batch, stains)
    if distances is None:
        return probs, [None] * len(probs)
    return probs, [round(float(s), 4) for s in distances]


def load_domain(model_dir: str | Path, manifest: ModelManifest, backend: str = "litert") -> DomainModel | None:
    """The domain model for the features ``backend`` computes: its own file where the manifest lists one
    (``ood.backends``: the int8 network's features sit further from the fp32 reference, so fp32 thresholds
    false-alarm on its in-domain jobs), else the one fitted on fp32 features (LiteRT fp32 and Keras agree to 1e-4)."""
    ood = manifest.extra.get("ood") or {}
    own = (ood.get("backends") or {}).get(backend) or {}
    file = own.get("file") or ood.get("file")
    return DomainModel.load(Path(model_dir) / file) if file else None


class LiteRTClassifier(CalibratedOutputs):
    """LiteRT (TFLite) model on the XNNPACK CPU delegate: fp32 ``model.tflite`` or the int8 file."""

    def __init__(self, model_dir: str | Path, manifest: ModelManifest, filename: str = "model.tflite", threads: int | None = None,
                 with_domain: bool = True, backend: str = "litert") -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.manifest = manifest
        self.backend = "LiteRT int8" if backend == "litert-int8" else "LiteRT fp32"
        self.domain = load_domain(model_dir, manifest, backend) if with_domain else None
        self._interpreter = Interpreter(model_path=str(Path(model_dir) / filename), num_threads=threads or os.cpu_count())
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._outputs = [d["index"] for d in self._interpreter.get_output_details()]
        self._batch = 0

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, list(batch.shape))
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch, dtype=np.float32))
        self._interpreter.invoke()
        return _split_outputs([np.array(self._interpreter.get_tensor(i)) for i in self._outputs], len(self.manifest.classes))

class KerasClassifier(CalibratedOutputs):
    """The Keras model under TensorFlow: uses a GPU when TensorFlow sees one."""

    def __init__(self, model_dir: str | Path, manifest: ModelManifest, threads: int | None = None, filename: str = "model.keras",
                 with_domain: bool = True) -> None:
        import keras

        if threads:
            _limit_tensorflow_threads(threads)
        self.manifest = manifest
        self.backend = "Keras"
        self.domain = load_domain(model_dir, manifest) if with_domain else None
        self._model = keras.models.load_model(str(Path(model_dir) / filename), compile=False)

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._model(batch, training=False)
        return _split_outputs([np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])], len(self.manifest.classes))

def _limit_tensorflow_threads(threads: int) -> None:
    """TensorFlow's CPU thread pools; only possible before TensorFlow first runs (else left as they are)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def _int8(model_dir: str | Path, manifest: ModelManifest, threads: int | None = None) -> LiteRTClassifier:
    int8 = manifest.extra.get("int8") or {}
    if not int8.get("file"):
        raise ValueError(f"model {manifest.label} ships no int8 file; use backend 'litert'")
    return LiteRTClassifier(model_dir, manifest, int8["file"], threads, backend="litert-int8")


BACKENDS = {"litert": LiteRTClassifier, "litert-int8": _int8, "keras": KerasClassifier}


def describe(classifier: Classifier) -> str:
    """How a classifier reads images, in words for the report: the backend, how many networks, which views.

    Why: the same model gives slightly different answers and costs under each setting (``HEMATOVISION_TTA``,
    ``HEMATOVISION_ENSEMBLE``, ``HEMATOVISION_BACKEND``); a report is only reproducible if it says which."""
    inner = classifier.inner if isinstance(classifier, DihedralTTA) else classifier
    members = inner.members if isinstance(inner, LogitEnsemble) else [inner]
    backend = getattr(members[0], "backend", "")
    networks = "one network" if len(members) == 1 else f"mean of {len(members)} networks"
    if isinstance(classifier, UnsureTTA):
        views = f"8 rotations/flips where one view's top probability is below {classifier.gate:g}"
    elif isinstance(classifier, DihedralTTA):
        views = "8 rotations/flips of every image"
    else:
        views = "each image as given"
    return ", ".join(part for part in (backend, networks, views) if part)


class LogitEnsemble(CalibratedOutputs):
    """Independently trained networks on the same crops: the mean of their logits, one refitted temperature.

    Why: networks trained from different random starts agree where the
    training data were dense and disagree away from them, so their mean is
    more accurate and less over-confident on another laboratory's slides than
    either alone (rule E, model card). The first member's features feed the
    domain check, whose thresholds were fitted on them; the temperature (and
    the distance rule on top of it) is the one fitted for the mean
    (``ensemble.temperature`` in the manifest). Every member takes the whole
    batch (GPU-friendly), one member after the other.
    """

    def __init__(self, members: Sequence[CalibratedOutputs], temperature: float) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        first = members[0]
        self.members = list(members)
        self.manifest = dataclasses.replace(first.manifest, temperature=float(temperature))
        self.domain = first.domain

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        logits, features = self.members[0].outputs(batch)
        total = logits.astype(np.float64)
        for member in self.members[1:]:
            total += member.outputs(batch)[0]
        return (total / len(self.members)).astype(np.float32), features


def ensemble_members(manifest: ModelManifest) -> list[dict]:
    """The manifest's further members (``ensemble.members``: one file per backend each), [] for a single network."""
    return list((manifest.extra.get("ensemble") or {}).get("members") or [])


def _member(model_dir: str | Path, manifest: ModelManifest, backend: str, member: dict, threads: int | None) -> CalibratedOutputs:
    """One further member for ``backend``: the same manifest (classes, recipe), its own network file, no domain model."""
    filename = member.get(backend)
    if not filename:
        raise ValueError(f"model {manifest.label}: an ensemble member has no file for backend {backend!r}; "
                         "set HEMATOVISION_ENSEMBLE=0 to serve the first network alone")
    if backend == "keras":
        return KerasClassifier(model_dir, manifest, threads, filename=filename, with_domain=False)
    return LiteRTClassifier(model_dir, manifest, filename, threads, with_domain=False, backend=backend)


def load_classifier(model_dir: str | Path, backend: str = "litert", tta: int = 0, threads: int | None = None,
                    ensemble: bool = True) -> Classifier:
    """Load a model directory with the named backend (manifest checked first); ``tta``: 0 one view, 1 the 8-view
    mean for every image, 2 the 8-view mean where one view is unsure (the manifest's gate; a model without a gate
    is served with one view, since nothing chose one for it); ``ensemble``: every network the model ships
    (``ensemble.members``), else the first alone with its own temperature.

    ``threads`` is the process's thread budget for the backend (None: every core).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if int(tta) not in (0, 1, 2):
        raise ValueError(f"tta must be 0 (one view), 1 (8 views) or 2 (8 views where unsure), not {tta!r}")
    manifest = ModelManifest.load(model_dir)
    classifier: Classifier = BACKENDS[backend](model_dir, manifest, threads=threads)
    members = ensemble_members(manifest)
    if ensemble and members:
        classifier = LogitEnsemble([classifier] + [_member(model_dir, manifest, backend, m, threads) for m in members],
                                   manifest.extra["ensemble"]["temperature"])
    if int(tta) == 2:
        gate = tta_gate(manifest)
        return UnsureTTA(classifier, gate) if gate is not None else classifier
    return DihedralTTA(classifier) if tta else classifier


def prepare_batch(images_bgr: list[np.ndarray], manifest: ModelManifest) -> np.ndarray:
    """Decoded BGR images -> one scaled float32 batch, the model's training recipe exactly."""
    return prepare_cells(images_bgr, manifest)[0]


def model_crops(images_bgr: list[np.ndarray], manifest: ModelManifest) -> list[CellCrop]:
    """Each decoded BGR image's crop by the model's own recipe and input size (pixels and what was found)."""
    return [model_crop(img, manifest.input_size, manifest.preprocessing) for img in images_bgr]


def scaled_batch(crops: list[CellCrop]) -> np.ndarray:
    """The crops' pixels as one scaled float32 model batch."""
    return scale_for_mobilenet(np.stack([c.pixels for c in crops]))


def prepare_cells(images_bgr: list[np.ndarray], manifest: ModelManifest) -> tuple[np.ndarray, list[bool]]:
    """Like :func:`prepare_batch`, and for each image whether the recipe found a cell in it."""
    crops = model_crops(images_bgr, manifest)
    return scaled_batch(crops), [c.found for c in crops]
