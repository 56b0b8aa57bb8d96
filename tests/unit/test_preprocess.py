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
