"""Classifier backends: ``predict(batch) -> probabilities`` over one model directory.

The backend is a setting (``HEMATOVISION_BACKEND``): LiteRT for fast CPU
serving without TensorFlow, Keras/TensorFlow for GPU placement and training
parity. Both read the same ``manifest.json`` and apply the same calibrated
softmax to the model's logits (``pipeline.temperature``): ``CalibratedOutputs``
is the one place that does so, for one view, the 8 views and the network pair.
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
from pipeline.temperature import DistanceTemperature, StainTemperature, calibrated_softmax

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


class CalibratedOutputs:
    """Logits, calibrated probabilities and features from one ``outputs(batch)`` (shared by every backend)."""

    manifest: ModelManifest

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.scored(batch)[0]

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        probs, features, _ = self.scored(batch)
        return probs, features

    def scored(self, batch: np.ndarray, stains: Sequence[Signature | None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        logits, features = self.outputs(batch)
        probs, distances = self.calibrated(logits, features, stains)
        return probs, features, distances

    def calibrated(self, logits: np.ndarray, features: np.ndarray | None, stains: Sequence[Signature | None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities of ``logits`` whose distance-aware temperature reads ``features``, and those
        features' distances (None without a domain model or features): the one place every setting calibrates."""
        domain = getattr(self, "domain", None)
        distances = domain.score(features) if domain is not None and features is not None else None
        return calibrated_softmax(logits, self.temperatures(distances, stains, len(logits))), distances

    def temperatures(self, distances: np.ndarray | None, stains: Sequence[Signature | None] | None = None,
                     n: int | None = None) -> float | np.ndarray:
        """The manifest's temperature, per image where the model carries a distance rule and distances exist,
        times the stain factor where the model carries a stain rule, a stain reference and ``stains``."""
        temperature: float | np.ndarray = self.manifest.temperature
        rule = DistanceTemperature.from_manifest(self.manifest)
        if rule is not None and distances is not None:
            temperature = rule.temperatures(self.manifest.temperature, distances)
        stain_rule = StainTemperature.from_manifest(self.manifest)
        domain = getattr(self, "domain", None)
        if stain_rule is not None and stains is not None and domain is not None and domain.stain is not None:
            if n is not None and len(stains) != n:
                raise ValueError(f"{len(stains)} stain signatures for a batch of {n} images")
            temperature = temperature * stain_rule.factors(domain.stain.image_distances(stains))
        return temperature


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


#: which features' distance the temperature of a TTA answer reads (manifest ``tta.temperature_distance``): the
#: 8 views' mean features (every model up to 2.4.3) or the image as given (the identity view, which the alarm reads)
VIEWS_MEAN, AS_GIVEN = "views-mean", "as-given"


def tta_temperature_distance(manifest: ModelManifest) -> str:
    """The manifest's ``tta.temperature_distance``, ``VIEWS_MEAN`` where it names none (rule G2, model card)."""
    value = (manifest.extra.get("tta") or {}).get("temperature_distance", VIEWS_MEAN)
    if value not in (VIEWS_MEAN, AS_GIVEN):
        raise ValueError(f"tta.temperature_distance is {VIEWS_MEAN!r} or {AS_GIVEN!r}, not {value!r}")
    return value


class DihedralTTA(CalibratedOutputs):
    """Test-time augmentation: the mean logits of the 8 rotations/flips of each image, calibrated by the distance
    of the views' mean features; the domain check reads the distance of the image as given (the identity view).

    Cells have no orientation, so the 8 views are equally valid inputs; their
    mean is a little more accurate at 8 times the model's cost (model card).
    The views of a batch go through the model as one batch (GPU-friendly).
    Why two distances: the alarm's thresholds were fitted on one view's features, and a mean of 8 views lies
    nearer the class centres, so with the mean's distance (until 2.4.2) the alarm went quiet under shift
    (Kaggle tight crop 60 %, 80 % accurate: 84.5 % of 50-image jobs flagged instead of 100 %; tight crop 70 %:
    22 % instead of 92 %; ``training.stress --tta``, model card). The temperature keeps the mean's distance:
    the averaged logits are already softer than one view's, and with the identity view's larger distance on top
    the suite's ECE rose (wide context x2 5.4 -> 7.7 %), so TTA's probabilities are those measured before.
    A manifest may say otherwise (``tta.temperature_distance`` = ``AS_GIVEN``, rule G2): then the temperature
    reads the image as given too.
    """

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.domain = inner.domain
        self.temperature_distance = tta_temperature_distance(inner.manifest)

    @property
    def as_given(self) -> bool:
        return self.temperature_distance == AS_GIVEN

    def temperature_features(self, as_given: np.ndarray, views_mean: np.ndarray, form: str | None = None) -> np.ndarray:
        """The features whose distance calibrates a TTA answer: by the manifest's ``tta.temperature_distance``, or by
        ``form`` where a study compares the two on one model (``training.tta_gate``, rule G2)."""
        return as_given if (form or self.temperature_distance) == AS_GIVEN else views_mean

    @staticmethod
    def views(batch: np.ndarray) -> np.ndarray:
        rotations = [np.rot90(batch, k, axes=(1, 2)) for k in range(4)]
        return np.concatenate(rotations + [r[:, :, ::-1] for r in rotations])

    def views_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Every view's logits (8, N, classes) and features (8, N, D), identity view first, in one model call."""
        logits, features = self.inner.outputs(np.ascontiguousarray(self.views(batch)))
        n = len(batch)
        return logits.reshape(8, n, -1), None if features is None else features.reshape(8, n, -1)

    def _views_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The mean logits (N, classes) and every view's features (8, N, D), identity view first."""
        logits, features = self.views_outputs(batch)
        return logits.mean(axis=0), features

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The views' mean logits and the identity view's features (what the domain check reads). Not always a matched
        pair for the temperature: ``scored`` calibrates with the features ``temperature_features`` names."""
        mean, views = self._views_outputs(batch)
        return mean, None if views is None else views[0]

    def scored(self, batch: np.ndarray, stains: Sequence[Signature | None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        mean, views = self._views_outputs(batch)
        if views is None:
            return self.calibrated(mean, None, stains)[0], None, None
        probs, _ = self.calibrated(mean, self.temperature_features(views[0], views.mean(axis=0)), stains)
        return probs, views[0], None if self.domain is None else self.domain.score(views[0])

class UnsureTTA(DihedralTTA):
    """Test-time augmentation only where the model is unsure (``HEMATOVISION_TTA=2``, rule G in the model card).

    Why: the 8-view mean is the largest in-domain gain left, but at 8 times the
    classifier's cost; most images are read with near-certain confidence, and
    the views can only change the answer where one view is unsure. Every image
    is read once as given; those whose calibrated top probability is below
    ``gate`` (the manifest's ``tta.gate``, chosen on validation images) are read
    in the other 7 views too, and their answer and probabilities are exactly
    full TTA's (the 8 views' mean logits, the temperature from the distance of
    the features ``DihedralTTA.temperature_features`` names). The domain check reads the image as given, as
    under every setting. ``images`` and ``reread`` count what was read, for the
    cost figures.
    """

    def __init__(self, inner: Classifier, gate: float) -> None:
        super().__init__(inner)
        if not 0.0 < gate <= 1.0:
            raise ValueError(f"a TTA gate is a probability in (0, 1], not {gate}")
        self.gate = float(gate)
        self.images = 0
        self.reread = 0

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Not defined: which images take the other views depends on calibrated probabilities; use ``scored``."""
        raise NotImplementedError("UnsureTTA answers through scored(); its logits depend on each image's confidence")

    def _other_views(self, unsure: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The 7 further views' logits and features (view-major, as ``views`` orders them) of the ``unsure`` images,
        through the networks ``chunk`` images at a time: a batch's re-read never asks a network for more images
        than the batch itself (7 x 64 views in one call would grow each interpreter's memory for good)."""
        views = self.views(unsure)[len(unsure):]
        parts = [self.inner.outputs(np.ascontiguousarray(views[i : i + chunk])) for i in range(0, len(views), chunk)]
        features = None if parts[0][1] is None else np.concatenate([f for _, f in parts])
        return np.concatenate([lg for lg, _ in parts]), features

    def scored(self, batch: np.ndarray, stains: Sequence[Signature | None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        logits, features = self.inner.outputs(batch)
        probs, distances = self.calibrated(logits, features, stains)
        unsure = np.flatnonzero(probs.max(axis=1) < self.gate)
        self.images += len(batch)
        self.reread += len(unsure)
        if len(unsure):
            k = len(unsure)
            more_logits, more_features = self._other_views(batch[unsure], len(batch))
            mean = (logits[unsure].astype(np.float64) + more_logits.reshape(7, k, -1).sum(axis=0)) / 8
            read_by = None
            if features is not None and more_features is not None:
                mean_features = ((features[unsure] + more_features.reshape(7, k, -1).sum(axis=0)) / 8).astype(np.float32)
                read_by = self.temperature_features(features[unsure], mean_features)
            some = None if stains is None else [stains[i] for i in unsure]
            probs[unsure] = self.calibrated(mean.astype(np.float32), read_by, some)[0]
        return probs, features, distances


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


def tta_gate(manifest: ModelManifest) -> float | None:
    """The manifest's gate for ``HEMATOVISION_TTA=2`` (``tta.gate``), None for models that carry none (before 2.4.3)."""
    gate = (manifest.extra.get("tta") or {}).get("gate")
    return None if gate is None else float(gate)


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
