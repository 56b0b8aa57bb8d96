import numpy as np

from pipeline.preprocess import RECIPE_CENTER_SQUARE, center_square, scale_for_mobilenet, to_model_pixels


def test_center_square_keeps_the_middle():
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, 40:280] = 255
    sq = center_square(img)
    assert sq.shape == (240, 240, 3)
    assert sq.min() == 255  # exactly the middle 240 columns


def test_to_model_pixels_converts_bgr_to_rgb_and_resizes():
    bgr = np.zeros((363, 360, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    out = to_model_pixels(bgr, 160, RECIPE_CENTER_SQUARE)
    assert out.shape == (160, 160, 3) and out.dtype == np.uint8
    assert out[..., 2].min() == 255 and out[..., 0].max() == 0


def test_gray_and_bgra_inputs_become_three_channels():
    assert to_model_pixels(np.zeros((50, 60), np.uint8), 32).shape == (32, 32, 3)
    assert to_model_pixels(np.zeros((50, 60, 4), np.uint8), 32).shape == (32, 32, 3)


def test_scale_maps_to_minus_one_one():
    scaled = scale_for_mobilenet(np.array([0, 255], np.uint8))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [-1.0, 1.0])


def test_scaling_in_place_gives_the_bits_of_the_plain_expression_and_leaves_its_input_alone():
    pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1).repeat(3, axis=3)
    before = pixels.copy()
    expected = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    scaled = scale_for_mobilenet(pixels)
    assert scaled.dtype == np.float32 and np.array_equal(scaled.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(pixels, before)
    floats = pixels.astype(np.float32)
    assert scale_for_mobilenet(floats) is not floats and np.array_equal(floats, before.astype(np.float32))
