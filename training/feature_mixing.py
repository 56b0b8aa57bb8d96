"""Feature-level style mixing (MixStyle) while fine-tuning, to loosen the model's grip on one laboratory's look.

A laboratory's stain and camera show up in the early layers mostly as each
image's per-channel feature mean and spread ("style"), while the cell's shape
lives in the normalised pattern. MixStyle (Zhou et al., ICLR 2021) swaps part
of that style between two images of the same batch during training: the
network sees a neutrophil with the mean and spread of another image's
features, so a colour or texture shift alone stops deciding the class. The
input-level augmentations (colour casts, HED jitter, random convolutions) only
reach what can be written as a pixel transform; this reaches feature
statistics. It changes nothing at inference: the layers are plain ``Add``
layers outside training, and ``training.train.fine_tune`` fits a mixing
clone of the model and copies the trained weights back into the plain
model (same layers, same order), so nothing saved or exported holds a
mixing layer.

Placement follows the paper's: after the early and middle stages (here the
stride-4, -8 and -16 stage outputs of MobileNetV2), never the last, whose
statistics carry the class.
"""

from __future__ import annotations

import keras

#: stage outputs (residual adds) that get mixed: strides 4, 8 and 16
MIXED_LAYERS: tuple[str, ...] = ("block_2_add", "block_5_add", "block_9_add")
#: chance that an image's style is mixed at a layer, and the Beta(a, a) mixing weight (the paper's values)
PROBABILITY = 0.5
ALPHA = 0.1
#: each mode's mixed stage outputs and mixing chance, in one place: "mixstyle-early" leaves out stride 16, whose
#: statistics begin to carry the class (the lesson of the AdaBN study); "mixstyle-mild" keeps the layers and
#: halves the chance, on the suspicion that full-strength mixing blurs colour cues that separate classes within a
#: laboratory (model card)
MODES: dict[str, tuple[tuple[str, ...], float]] = {
    "": ((), PROBABILITY),
    "mixstyle": (MIXED_LAYERS, PROBABILITY),
    "mixstyle-early": (MIXED_LAYERS[:2], PROBABILITY),
    "mixstyle-mild": (MIXED_LAYERS, 0.25),
}
EPS = 1e-6


@keras.saving.register_keras_serializable(package="hematovision")
class MixStyleAdd(keras.layers.Add):
    """A residual ``Add`` that, in training only, mixes each image's channel statistics with another image's."""

    def __init__(self, probability: float = PROBABILITY, alpha: float = ALPHA, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probability = probability
        self.alpha = alpha
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        x = super().call(inputs)
        if not training:
            return x
        return mix_styles(x, self.probability, self.alpha, self.seed_generator)

    def get_config(self) -> dict:
        return {**super().get_config(), "probability": self.probability, "alpha": self.alpha, "seed": self.seed}


def mix_styles(x, probability: float, alpha: float, seed_generator):
    """MixStyle on a batch of feature maps (N, H, W, C): statistics detached, a random partner per image."""
    ops = keras.ops
    n = ops.shape(x)[0]
    mean = ops.stop_gradient(ops.mean(x, axis=(1, 2), keepdims=True))
    std = ops.stop_gradient(ops.sqrt(ops.var(x, axis=(1, 2), keepdims=True) + EPS))
    normed = (x - mean) / std
    partner = keras.random.shuffle(ops.arange(n), seed=seed_generator)
    weight = keras.random.beta((n, 1, 1, 1), alpha, alpha, seed=seed_generator)
    mixed_mean = weight * mean + (1.0 - weight) * ops.take(mean, partner, axis=0)
    mixed_std = weight * std + (1.0 - weight) * ops.take(std, partner, axis=0)
    chosen = keras.random.uniform((n, 1, 1, 1), seed=seed_generator) < probability
    return ops.where(chosen, normed * mixed_std + mixed_mean, x)


def _cloned(model: keras.Model, replace) -> keras.Model:
    clone = keras.models.clone_model(model, clone_function=replace, recursive=True)
    clone.set_weights(model.get_weights())
    _copy_trainable(model, clone)
    return clone


def _copy_trainable(source: keras.Model, target: keras.Model) -> None:
    """Carry the trainable flags over (``clone_model`` rebuilds nested models trainable)."""
    target.trainable = source.trainable
    for a, b in zip(source.layers, target.layers, strict=True):
        if isinstance(a, keras.Model):
            _copy_trainable(a, b)
        else:
            b.trainable = a.trainable


def with_mixing(model: keras.Model, mode: str, seed: int = 0) -> keras.Model:
    """The model with MixStyle at the mode's layers and chance (:data:`MODES`; same weights, same trainable
    flags); ``mode=""`` returns it."""
    if mode not in MODES:
        raise ValueError(f"unknown feature_mixing {mode!r}; use one of {tuple(MODES)}")
    if not mode:
        return model
    layers, probability = MODES[mode]
    found: list[str] = []

    def replace(layer):
        config = layer.get_config()
        if type(layer) is keras.layers.Add and layer.name in layers:
            found.append(layer.name)
            return MixStyleAdd(probability=probability, seed=seed + len(found), **config)
        return layer.__class__.from_config(config)

    mixed = _cloned(model, replace)
    if sorted(found) != sorted(layers):
        raise RuntimeError(f"MixStyle layers missing from the model: {sorted(set(layers) - set(found))}")
    return mixed

