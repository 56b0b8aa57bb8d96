"""The training augmentations: the random convolution keeps shapes and the image's range."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from training.augment import AUGMENTATIONS, augment, random_convolution  # noqa: E402


def _two_colour_image() -> np.ndarray:
    """A violet disc on grey glass (float32 RGB in [0, 1])."""
    yy, xx = np.mgrid[:64, :64]
    image = np.full((64, 64, 3), 0.9, np.float32)
    image[(yy - 32) ** 2 + (xx - 32) ** 2 < 15**2] = (0.45, 0.3, 0.7)
    return image


def test_never_applied_is_the_identity():
    image = _two_colour_image()
    out = random_convolution(tf.constant(image), probability=0.0).numpy()
    np.testing.assert_array_equal(out, image)


def test_a_flat_image_stays_flat_whatever_the_filter():
    """Centred before the filter and brought back to the image's own mean and spread."""
    flat = np.full((32, 32, 3), 0.7, np.float32)
    tf.random.set_seed(0)
    for _ in range(5):
        np.testing.assert_allclose(random_convolution(tf.constant(flat), probability=1.0).numpy(), flat, atol=1e-5)


def test_one_by_one_filters_change_colour_but_keep_the_shape():
    """A 1x1 random convolution is a per-pixel colour mix: pixels of one colour stay one colour
    and the disc stays where it was, while the colours themselves change."""
    image = _two_colour_image()
    disc = image[..., 0] < 0.6
    tf.random.set_seed(1)
    changed = 0
    for _ in range(6):
        out = random_convolution(tf.constant(image), probability=1.0, sizes=(1,)).numpy()
        assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0
        inside, outside = out[disc], out[~disc]
        assert np.ptp(inside, axis=0).max() < 1e-5 and np.ptp(outside, axis=0).max() < 1e-5
        changed += not np.allclose(out, image, atol=1e-3)
    assert changed >= 4  # alpha is uniform: the mix is rarely (almost) the original


def test_larger_filters_change_texture_within_range():
    image = _two_colour_image()
    tf.random.set_seed(2)
    out = random_convolution(tf.constant(image), probability=1.0, sizes=(7,)).numpy()
    assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, image, atol=1e-3)


@pytest.mark.parametrize("recipe", sorted(AUGMENTATIONS))
def test_every_recipe_runs_in_tf_data(recipe):
    """As training runs them: a graph (tf.data map), float32 RGB in [0, 255] in and out."""
    image = tf.constant(_two_colour_image() * 255.0)
    ds = tf.data.Dataset.from_tensors(image).repeat(4).map(lambda t: augment(t, 64, recipe))
    for out in ds:
        assert out.shape == (64, 64, 3)
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(tf.zeros((8, 8, 3)), 8, "rainbow")
