"""Classifier backends: ``predict(batch) -> probabilities`` over one model directory.

The backend is a setting (``HEMATOVISION_BACKEND``): LiteRT for fast CPU
serving without TensorFlow, Keras/TensorFlow for GPU placement and training
parity. Both read the same ``manifest.json`` and apply the same calibrated
softmax to the model's logits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.manifest import ModelManifest
from pipeline.preprocess import scale_for_mobilenet, to_model_pixels


def calibrated_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Classifier(Protocol):
    manifest: ModelManifest

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Batch of scaled float32 (N, S, S, 3) -> probabilities (N, classes)."""
        ...


class LiteRTClassifier:
    """LiteRT (TFLite) model on the XNNPACK CPU delegate: fp32 ``model.tflite`` or the int8 file."""

    def __init__(self, model_dir: str | Path, manifest: ModelManifest, filename: str = "model.tflite", threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.manifest = manifest
        self._interpreter = Interpreter(model_path=str(Path(model_dir) / filename), num_threads=threads or os.cpu_count())
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = 0

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, list(batch.shape))
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch, dtype=np.float32))
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return calibrated_softmax(self.logits(batch), self.manifest.temperature)


class KerasClassifier:
    """The Keras model under TensorFlow: uses a GPU when TensorFlow sees one."""

    def __init__(self, model_dir: str | Path, manifest: ModelManifest) -> None:
        import keras

        self.manifest = manifest
        self._model = keras.models.load_model(str(Path(model_dir) / "model.keras"), compile=False)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._model(batch, training=False))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return calibrated_softmax(self.logits(batch), self.manifest.temperature)


def _int8(model_dir: str | Path, manifest: ModelManifest) -> LiteRTClassifier:
    int8 = manifest.extra.get("int8") or {}
    if not int8.get("file"):
        raise ValueError(f"model {manifest.label} ships no int8 file; use backend 'litert'")
    return LiteRTClassifier(model_dir, manifest, int8["file"])


BACKENDS = {"litert": LiteRTClassifier, "litert-int8": _int8, "keras": KerasClassifier}


def load_classifier(model_dir: str | Path, backend: str = "litert") -> Classifier:
    """Load a model directory with the named backend (manifest checked first)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    manifest = ModelManifest.load(model_dir)
    return BACKENDS[backend](model_dir, manifest)


def prepare_batch(images_bgr: list[np.ndarray], input_size: int) -> np.ndarray:
    """Decoded BGR images -> one scaled float32 batch, the training recipe exactly."""
    return scale_for_mobilenet(np.stack([to_model_pixels(img, input_size) for img in images_bgr]))
