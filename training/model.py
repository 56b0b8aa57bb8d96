"""The MobileNetV2 classifier and the batch-norm handling its weights need.

The shipped ImageNet weights have batch normalisation folded into the
convolutions (every BN layer is an identity). A BN layer that runs in training
mode would normalise with batch statistics and destroy the features, and in
Keras 3 ``fit`` overrides ``base(x, training=False)``. So every BN layer is
kept non-trainable, which in Keras 3 always means inference mode.
"""

from __future__ import annotations

import keras
import numpy as np


def build_model(num_classes: int, input_size: int, weights: str | None, alpha: float = 1.0, dropout: float = 0.3) -> keras.Model:
    """MobileNetV2 base -> global average pooling -> dropout -> dense logits.

    The model outputs logits; softmax with the calibrated temperature is applied
    by the serving code so Keras and LiteRT backends share it.
    """
    base = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), include_top=False, weights=weights, alpha=alpha
    )
    base.trainable = False
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="hematovision_mobilenetv2")


def base_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def unfreeze_base(model: keras.Model, start: str = "all") -> None:
    """Make the base trainable from layer ``start`` on, keeping every BN layer frozen."""
    base = base_of(model)
    base.trainable = True
    reached = start == "all"
    for layer in base.layers:
        reached = reached or layer.name.startswith(start)
        layer.trainable = reached and not isinstance(layer, keras.layers.BatchNormalization)


def bn_parity_gap(model: keras.Model, batch: np.ndarray) -> float:
    """Max |f(x, training=True) - f(x, training=False)| with dropout off.

    Must be ~0: a non-zero gap means some BN layer uses batch statistics.
    """
    dropout = model.get_layer("dropout")
    rate = dropout.rate
    dropout.rate = 0.0
    try:
        a = np.asarray(model(batch, training=True))
        b = np.asarray(model(batch, training=False))
    finally:
        dropout.rate = rate
    return float(np.max(np.abs(a - b)))


def feature_extractor(model: keras.Model) -> keras.Model:
    """The model up to the pooled features, for caching in the head phase."""
    return keras.Model(model.input, model.get_layer("pool").output)
