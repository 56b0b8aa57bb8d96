"""MixStyle while fine-tuning: active in training only, weights and flags preserved, removable before export."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.feature_mixing import MIXED_LAYERS, MixStyleAdd, mix_styles, with_mixing  # noqa: E402


def _stage(x, name: str):
    branch = keras.layers.Conv2D(x.shape[-1], 3, padding="same", name=f"{name}_conv")(x)
    return keras.layers.Add(name=name)([x, branch])


@pytest.fixture(scope="module")
def small_model():
    """A nested base with MobileNetV2's stage-output names around convolutions, under a pooled dense head.

    Small enough that outputs keep a useful scale (a randomly initialised MobileNetV2 gives ~1e-11).
    """
    keras.utils.set_random_seed(0)
    pixels = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(pixels)
    for name in MIXED_LAYERS:
        x = _stage(x, name)
    x = keras.layers.BatchNormalization(name="frozen_bn")(_stage(x, "block_12_add"))
    base = keras.Model(pixels, x, name="base")
    inputs = keras.Input((64, 64, 3))
    features = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(3)(features))
    base.trainable = True
    for layer in base.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return model


def test_mixed_layers_exist_in_mobilenet_v2():
    base = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=None)
    names = {layer.name: type(layer) for layer in base.layers}
    assert all(names.get(name) is keras.layers.Add for name in MIXED_LAYERS)


def _batch(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 64, 64, 3)).astype(np.float32)


def _layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):  # clones get new input names
            continue
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def test_mixing_changes_training_outputs_only(small_model):
    mixed = with_mixing(small_model, "mixstyle", seed=1)
    names = sorted(layer.name for layer in _layers(mixed) if isinstance(layer, MixStyleAdd))
    assert names == sorted(MIXED_LAYERS)
    x = _batch()
    plain = np.asarray(small_model(x, training=False))
    assert np.abs(plain).max() > 1e-3  # outputs of a useful scale, so the comparisons below mean something
    np.testing.assert_allclose(np.asarray(mixed(x, training=False)), plain, rtol=1e-5, atol=1e-6)
    # training=False on the nested base must not stop fit's training flag from reaching the mixing layers
    assert np.max(np.abs(np.asarray(mixed(x, training=True)) - plain)) > 0.01 * np.abs(plain).max()


def test_trainable_flags_and_weights_go_back_to_the_plain_model(small_model):
    """What ``training.train.fine_tune`` relies on: the mixing clone trains the same layers, and its weights, in
    order, are the plain model's, so copying them back gives the plain model the trained network."""
    mixed = with_mixing(small_model, "mixstyle")
    flags = [(layer.name, layer.trainable) for layer in _layers(small_model)]
    assert [(layer.name, layer.trainable) for layer in _layers(mixed)] == flags
    original = small_model.get_weights()
    rng = np.random.default_rng(5)
    mixed.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in mixed.get_weights()])  # "trained"
    try:
        small_model.set_weights(mixed.get_weights())
        assert not any(isinstance(layer, MixStyleAdd) for layer in _layers(small_model))
        assert [(layer.name, layer.trainable) for layer in _layers(small_model)] == flags
        x = _batch(4, 3)
        np.testing.assert_allclose(np.asarray(small_model(x, training=True)), np.asarray(mixed(x, training=False)),
                                   rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(small_model(x, training=False)), 0.0)
    finally:
        small_model.set_weights(original)


def test_early_mode_mixes_only_the_first_two_stages(small_model):
    mixed = with_mixing(small_model, "mixstyle-early")
    names = sorted(layer.name for layer in _layers(mixed) if isinstance(layer, MixStyleAdd))
    assert names == sorted(MIXED_LAYERS[:2]) and "block_9_add" not in names


def test_mild_mode_mixes_the_same_stages_half_as_often(small_model):
    mild = [layer for layer in _layers(with_mixing(small_model, "mixstyle-mild")) if isinstance(layer, MixStyleAdd)]
    full = [layer for layer in _layers(with_mixing(small_model, "mixstyle")) if isinstance(layer, MixStyleAdd)]
    assert sorted(a.name for a in mild) == sorted(MIXED_LAYERS) == sorted(a.name for a in full)
    assert {a.probability for a in mild} == {0.25} and {a.probability for a in full} == {0.5}


def test_off_is_the_model_itself_and_unknown_mode_fails(small_model):
    assert with_mixing(small_model, "") is small_model
    with pytest.raises(ValueError, match="feature_mixing"):
        with_mixing(small_model, "mixup")


def test_mix_styles_keeps_pattern_and_mixes_statistics():
    rng = np.random.default_rng(0)
    # four images whose channels have very different means and spreads
    x = (rng.normal(size=(4, 6, 6, 2)) * np.array([1, 2, 4, 8]).reshape(4, 1, 1, 1)
         + np.array([0, 10, 20, 30]).reshape(4, 1, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(mix_styles(x, 0.0, 0.1, keras.random.SeedGenerator(0))), x)
    out = np.asarray(mix_styles(x, 1.0, 0.1, keras.random.SeedGenerator(0)))

    def standardised(a):
        return (a - a.mean(axis=(1, 2), keepdims=True)) / a.std(axis=(1, 2), keepdims=True)

    np.testing.assert_allclose(standardised(out), standardised(x), atol=1e-3)  # the spatial pattern stays
    means = out.mean(axis=(1, 2))
    assert means.min() >= -1.0 and means.max() <= 31.0  # convex mixes of the batch's own statistics
    assert not np.allclose(means, x.mean(axis=(1, 2)), atol=0.5)  # and some images took on another's


def test_fit_step_trains_through_the_mixing_layers(small_model):
    mixed = with_mixing(small_model, "mixstyle")
    mixed.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in mixed.get_weights()]
    y = keras.utils.to_categorical(np.arange(8) % 3, 3)
    mixed.fit(_batch(), y, epochs=1, batch_size=8, verbose=0)
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, mixed.get_weights(), strict=True))
    assert changed >= 8  # every convolution's kernel and bias moved, and the head's
