"""Augmentation for stained smear crops, as TensorFlow ops for ``tf.data``.

Aimed at what differs between laboratories: stain hue and intensity, camera
white balance, focus, compression and magnification, and where the cell sits
in the crop. Cells have no orientation, so all eight rotations/flips are used.
Inputs and outputs are float32 RGB in [0, 255].

``v1`` is the recipe of the 1.x models. ``strong-randconv`` is ``strong`` followed by a random convolution on half of
the images (``random_convolution``). ``strong`` (2.x) adds stain jitter in
haematoxylin-eosin (HED) optical-density space, larger colour casts and
gamma, scale jitter of +-25 % with glass-coloured padding (the serving crop
is four red-cell diameters, measured with about 15 % spread), off-centre
shifts, lower resolution and JPEG re-compression.
"""

from __future__ import annotations

import tensorflow as tf

#: glass grey after the serving white balance (``pipeline.cellcrop.BACKGROUND_LEVEL``)
GLASS = 232.0
#: Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density
_HED = tf.constant([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], tf.float32)
_HED_INV = tf.linalg.inv(_HED)


def _blur(image: tf.Tensor, low: float = 0.3, high: float = 1.6) -> tf.Tensor:
    sigma = tf.random.uniform([], low, high)
    x = tf.range(-3, 4, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2.0 * sigma**2))
    k = k / tf.reduce_sum(k)
    kernel = tf.tile(tf.reshape(tf.tensordot(k, k, axes=0), [7, 7, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")
    return out[0]


def _dihedral(image: tf.Tensor) -> tf.Tensor:
    image = tf.image.rot90(image, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    return tf.image.random_flip_left_right(image)


def hed_jitter(image: tf.Tensor, scale: float = 0.3, shift: float = 0.04) -> tf.Tensor:
    """Scale and shift each stain's concentration (image in [0, 1])."""
    od = -tf.math.log(tf.clip_by_value(image, 1.0 / 255.0, 1.0))
    conc = tf.reshape(od, [-1, 3]) @ _HED_INV
    alpha = tf.random.uniform([1, 3], 1.0 - scale, 1.0 + scale)
    beta = tf.random.uniform([1, 3], -shift, shift)
    od = tf.reshape((conc * alpha + beta) @ _HED, tf.shape(image))
    return tf.exp(-tf.maximum(od, 0.0))


def _scale_and_shift(image: tf.Tensor, size: int, zoom_range: tuple[float, float], max_shift: float) -> tf.Tensor:
    """Zoom by a random factor and move the content, padding with glass grey."""
    zoom = tf.exp(tf.random.uniform([], tf.math.log(zoom_range[0]), tf.math.log(zoom_range[1])))
    side = tf.cast(tf.round(float(size) * zoom), tf.int32)
    image = tf.image.resize(image, [side, side])
    margin = int(size * max_shift)
    pad = tf.maximum(size - side, 0) // 2 + margin
    image = tf.pad(image - GLASS, [[pad, pad], [pad, pad], [0, 0]]) + GLASS
    full = tf.shape(image)[0]
    # a window of `size` around the centre, moved by at most `margin`
    centre = full // 2 - size // 2
    dy, dx = (tf.random.uniform([], -margin, margin + 1, dtype=tf.int32) for _ in range(2))
    y0 = tf.clip_by_value(centre + dy, 0, full - size)
    x0 = tf.clip_by_value(centre + dx, 0, full - size)
    return image[y0 : y0 + size, x0 : x0 + size]


def _lower_resolution(image: tf.Tensor, size: int) -> tf.Tensor:
    """Down- then up-sample by 1.5-3x: a lower-resolution camera or a lower objective."""
    factor = tf.random.uniform([], 1.5, 3.0)
    low = tf.cast(tf.round(float(size) / factor), tf.int32)
    return tf.image.resize(tf.image.resize(image, [low, low], antialias=True), [size, size])


def _augment_v1(image: tf.Tensor, size: int) -> tf.Tensor:
    image = _dihedral(image)
    # scale: zoom in (crop 75-100 %) or out (pad by reflection up to 15 %)
    zoom = tf.random.uniform([], 0.75, 1.15)
    side = tf.cast(tf.cast(size, tf.float32) * tf.minimum(zoom, 1.0), tf.int32)
    image = tf.image.random_crop(image, [side, side, 3])
    pad = tf.cast(tf.cast(size, tf.float32) * tf.maximum(zoom - 1.0, 0.0) / 2.0, tf.int32)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.resize(image, [size, size])
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


def _augment_strong(image: tf.Tensor, size: int) -> tf.Tensor:
    image = _dihedral(image)
    image = _scale_and_shift(image, size, (0.78, 1.28), 0.12)
    image = tf.ensure_shape(image, [size, size, 3]) / 255.0
    image = hed_jitter(tf.clip_by_value(image, 0.0, 1.0))
    image = tf.image.random_hue(image, 0.08)
    image = tf.image.random_saturation(image, 0.5, 1.5)
    image = tf.image.random_brightness(image, 0.12)
    image = tf.image.random_contrast(image, 0.7, 1.3)
    image = image * tf.random.uniform([1, 1, 3], 0.85, 1.15)  # residual white balance / lamp colour
    gamma = tf.random.uniform([], 0.75, 1.33)
    image = tf.clip_by_value(image, 0.0, 1.0) ** gamma
    image = tf.cond(tf.random.uniform([]) < 0.35, lambda: _blur(image, 0.3, 2.2), lambda: image)
    image = tf.cond(tf.random.uniform([]) < 0.3, lambda: _lower_resolution(image, size), lambda: image)
    image = tf.cond(tf.random.uniform([]) < 0.3, lambda: tf.image.random_jpeg_quality(image, 25, 95), lambda: image)
    image = image + tf.random.normal(tf.shape(image), stddev=tf.random.uniform([], 0.0, 0.025))
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def random_convolution(image: tf.Tensor, probability: float = 0.5, sizes: tuple[int, ...] = (1, 3, 5, 7)) -> tf.Tensor:
    """RandConv (Xu et al., ICLR 2021): with ``probability``, mix the image with itself passed through
    a random convolution of a random size from ``sizes`` (He-normal weights), image in [0, 1].

    Why: a random filter changes colour (1x1: a random channel mix) and local texture
    (larger kernels) while keeping shapes, so the network cannot lean on a laboratory's
    stain colour or its camera's sharpness, the shortcuts that fail on other laboratories.
    The filtered image is brought back to the original's mean and spread per image and
    blended with it by a uniform random weight, as in the paper's mixing variant.
    """
    def convolved() -> tf.Tensor:
        k = tf.random.shuffle(tf.constant(sizes))[0]
        weights = tf.random.normal(tf.stack([k, k, 3, 3])) * tf.sqrt(2.0 / tf.cast(k * k * 3, tf.float32))
        centred = image - tf.reduce_mean(image)
        out = tf.nn.conv2d(centred[None], weights, [1, 1, 1, 1], "SAME")[0]
        out = out / (tf.math.reduce_std(out) + 1e-6) * tf.math.reduce_std(image) + tf.reduce_mean(image)
        alpha = tf.random.uniform([])
        return tf.clip_by_value(alpha * image + (1.0 - alpha) * out, 0.0, 1.0)

    return tf.cond(tf.random.uniform([]) < probability, convolved, lambda: image)


def _augment_strong_randconv(image: tf.Tensor, size: int) -> tf.Tensor:
    """``strong``, then a random convolution on half of the images (``random_convolution``)."""
    image = _augment_strong(image, size) / 255.0
    return random_convolution(image) * 255.0


AUGMENTATIONS = {"v1": _augment_v1, "strong": _augment_strong, "strong-randconv": _augment_strong_randconv}


def augment(image: tf.Tensor, size: int, recipe: str = "strong") -> tf.Tensor:
    """Randomly transform one (size, size, 3) float32 image with the named recipe."""
    if recipe not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {recipe!r}; choose one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[recipe](image, size)
