"""Augmentation for stained smear crops, as TensorFlow ops for ``tf.data``.

Aimed at what differs between laboratories: stain hue and intensity, camera
white balance, focus and magnification. Cells have no orientation, so all
eight rotations/flips are used. Inputs and outputs are float32 RGB in [0, 255].
"""

from __future__ import annotations

import tensorflow as tf


def _blur(image: tf.Tensor) -> tf.Tensor:
    sigma = tf.random.uniform([], 0.3, 1.6)
    x = tf.range(-3, 4, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2.0 * sigma**2))
    k = k / tf.reduce_sum(k)
    kernel = tf.tile(tf.reshape(tf.tensordot(k, k, axes=0), [7, 7, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")
    return out[0]


def augment(image: tf.Tensor, size: int) -> tf.Tensor:
    """Randomly transform one (size, size, 3) float32 image."""
    image = tf.image.rot90(image, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    image = tf.image.random_flip_left_right(image)
    # scale: zoom in (crop 75-100 %) or out (pad by reflection up to 15 %)
    zoom = tf.random.uniform([], 0.75, 1.15)
    side = tf.cast(tf.cast(size, tf.float32) * tf.minimum(zoom, 1.0), tf.int32)
    image = tf.image.random_crop(image, [side, side, 3])
    pad = tf.cast(tf.cast(size, tf.float32) * tf.maximum(zoom - 1.0, 0.0) / 2.0, tf.int32)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.resize(image, [size, size])
    # stain / camera colour
    image = image / 255.0
    image = tf.image.random_hue(image, 0.06)
    image = tf.image.random_saturation(image, 0.6, 1.4)
    image = tf.image.random_brightness(image, 0.12)
    image = tf.image.random_contrast(image, 0.75, 1.25)
    image = image * tf.random.uniform([1, 1, 3], 0.9, 1.1)  # white balance
    gamma = tf.random.uniform([], 0.8, 1.25)
    image = tf.clip_by_value(image, 0.0, 1.0) ** gamma
    image = tf.cond(tf.random.uniform([]) < 0.3, lambda: _blur(image), lambda: image)
    image = image + tf.random.normal(tf.shape(image), stddev=tf.random.uniform([], 0.0, 0.02))
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0
