"""Domain shifts on synthetic images whose colour, scale and position are known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import synthetic_field
from training import shifts
from training.shifts import FAMILIES

BACKGROUND_BGR = (228, 226, 232)  # synthetic_field's glass colour


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def blob(size: tuple[int, int] = (300, 300), centre: tuple[int, int] | None = None, radius: int = 40) -> np.ndarray:
    """A dark violet disc on the synthetic field's background colour."""
    h, w = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND_BGR
    cv2.circle(img, centre or (w // 2, h // 2), radius, (140, 40, 90), -1)
    return img


def blob_geometry(img: np.ndarray) -> tuple[float, float, float]:
    """(diameter from area, centroid x, centroid y) of the dark pixels."""
    mask = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) < 150
    ys, xs = np.nonzero(mask)
    return 2 * np.sqrt(mask.sum() / np.pi), xs.mean(), ys.mean()


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return synthetic_field(360, 300, [(180, 150)], seed=1)


def test_background_colour_is_the_glass_not_the_cells(field):
    assert np.abs(np.subtract(shifts.background_colour(field), BACKGROUND_BGR)).max() <= 4


def test_yellow_cast_raises_red_and_green_over_blue_in_the_background(field):
    before = np.array(shifts.background_colour(field), float)
    after = np.array(shifts.background_colour(shifts.colour_cast(field, rng(), shifts._YELLOW_GAINS, 1.0)), float)
    b, g, r = after
    assert r - b > 90 and g - b > 60
    assert (r - b) - (before[2] - before[0]) > 80
    mild = np.array(shifts.background_colour(dict(FAMILIES["yellow_cast"])["0.25"](field, rng())), float)
    assert 0 < (mild[2] - mild[0]) - (before[2] - before[0]) < (r - b) - (before[2] - before[0])


def test_blue_grey_cast_raises_blue_over_red_and_desaturates(field):
    b, _, r = np.array(shifts.background_colour(dict(FAMILIES["blue_grey_cast"])["1"](field, rng())), float)
    assert b - r > 40
    nucleus = (180 - 22, 150 - 10)  # inside one nucleus lobe
    out = dict(FAMILIES["blue_grey_cast"])["1"](field, rng())
    assert np.ptp(out[nucleus[1], nucleus[0]].astype(int)) < np.ptp(field[nucleus[1], nucleus[0]].astype(int))


def test_stain_intensity_scales_optical_density_and_keeps_glass_white():
    img = np.array([[[255, 255, 255], [140, 40, 90], [200, 180, 220]]], np.uint8)
    for factor in (0.5, 2.0):
        out = shifts.stain_intensity(img, rng(), factor)
        assert out[0, 0].tolist() == [255, 255, 255]
        np.testing.assert_allclose(shifts.optical_density(out)[0, 1:], factor * shifts.optical_density(img)[0, 1:], rtol=0.06, atol=0.01)
    assert shifts.stain_intensity(img, rng(), 2.0)[0, 1].sum() < img[0, 1].sum() < shifts.stain_intensity(img, rng(), 0.5)[0, 1].sum()


def test_hed_deconvolution_round_trips_and_balance_changes_the_nucleus_more_than_the_glass(field):
    same = shifts.stain_balance(field, rng(), 1.0, 1.0)
    assert np.abs(same.astype(int) - field).max() <= 1
    more_h = shifts.stain_balance(field, rng(), 1.4, 0.7)
    diff = np.abs(more_h.astype(int) - field).sum(axis=2)
    nucleus, glass = diff[150 - 10, 180 - 22], np.median(diff[:20, :20])
    assert nucleus > 3 * max(glass, 1)


def test_hue_rotation_turns_red_to_green_and_full_turn_is_identity(field):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 2] = 200
    green = shifts.hue_rotation(red, rng(), 120)
    assert green[0, 0].tolist() == [0, 200, 0]
    assert np.abs(shifts.hue_rotation(field, rng(), 360).astype(int) - field).max() <= 1


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.5, 2.0])
def test_scale_changes_the_blob_diameter_by_the_factor_and_keeps_the_size(factor):
    img = blob(radius=40)
    out = shifts.scale_content(img, rng(), factor)
    assert out.shape == img.shape
    diameter, cx, cy = blob_geometry(out)
    assert diameter == pytest.approx(80 * factor, rel=0.04)
    assert (cx, cy) == pytest.approx((150, 150), abs=1.5)


def test_zoom_out_pads_with_the_background_colour():
    out = shifts.scale_content(blob(), rng(), 0.5)
    assert out[0, 0].tolist() == list(BACKGROUND_BGR) and out[-1, -1].tolist() == list(BACKGROUND_BGR)


def test_tight_crop_is_a_native_resolution_central_square():
    img = blob((240, 320), radius=40)
    out = shifts.tight_crop(img, rng(), 0.5)
    assert out.shape == (120, 120, 3)
    np.testing.assert_array_equal(out, img[60:180, 100:220])


def test_wide_context_grows_the_field_around_the_unchanged_centre():
    img = blob((240, 320), radius=40)
    out = shifts.wide_context(img, rng(), 2.0)
    assert out.shape == (480, 640, 3)
    np.testing.assert_array_equal(out[120:360, 160:480], img)
    assert shifts.wide_context(img, rng(), 3.5).shape == (840, 1120, 3)  # pad wider than the image
    dark = (cv2.cvtColor(out, cv2.COLOR_BGR2GRAY) < 150).astype(np.uint8)
    assert cv2.connectedComponents(dark)[0] == 2  # background + the one cell: no mirrored copy in the context


@pytest.mark.parametrize("fraction", [0.1, 0.4])
def test_off_centre_moves_the_blob_by_the_fraction_of_the_width(fraction):
    img = blob((300, 300), radius=20)
    _, x0, y0 = blob_geometry(img)
    moves = set()
    for seed in range(12):
        out = shifts.off_centre(img, rng(seed), fraction)
        assert out.shape == img.shape
        _, x, y = blob_geometry(out)
        dx, dy = round(x - x0), round(y - y0)
        assert sorted([abs(dx), abs(dy)]) == [0, round(fraction * 300)]
        moves.add((np.sign(dx), np.sign(dy)))
    assert len(moves) == 4  # every direction occurs
    np.testing.assert_array_equal(shifts.off_centre(img, rng(5), fraction), shifts.off_centre(img, rng(5), fraction))


def test_off_centre_fills_with_background_colour():
    out = shifts.off_centre(blob(), np.random.default_rng(0), 0.4)
    assert {tuple(out[0, 0]), tuple(out[-1, -1]), tuple(out[0, -1]), tuple(out[-1, 0])} == {BACKGROUND_BGR}


def test_black_padding_adds_black_borders_around_the_untouched_image():
    img = blob((240, 320))
    out = shifts.black_padding(img, rng(), 0.2)
    assert out.shape == (240 + 2 * 48, 320 + 2 * 64, 3)
    assert out[:48].max() == 0 and out[-48:].max() == 0 and out[:, :64].max() == 0 and out[:, -64:].max() == 0
    np.testing.assert_array_equal(out[48:-48, 64:-64], img)


def test_blur_softens_edges_more_with_larger_sigma(field):
    def edge_energy(img):
        return float(np.abs(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_32F)).mean())

    energies = [edge_energy(shifts.gaussian_blur(field, rng(), s)) for s in (1, 2, 4)]
    assert edge_energy(field) > energies[0] > energies[1] > energies[2]


def test_jpeg_changes_pixels_keeps_shape_and_low_quality_is_worse(field):
    errors = {}
    for q in (90, 20):
        out = shifts.jpeg(field, rng(), q)
        assert out.shape == field.shape and out.dtype == np.uint8
        errors[q] = float(np.abs(out.astype(int) - field).mean())
    assert 0 < errors[90] < errors[20]


def test_registry_strengths_are_named_uniquely_and_every_shift_is_deterministic(field):
    assert set(FAMILIES) >= {"yellow_cast", "blue_grey_cast", "stain_intensity", "hue_rotation", "scale", "tight_crop",
                             "wide_context", "off_centre", "black_padding", "blur", "jpeg"}
    for family, strengths in FAMILIES.items():
        names = [name for name, _ in strengths]
        assert len(names) == len(set(names)) >= 2, family
        for name, shift in strengths:
            first, second = shift(field, rng(3)), shift(field, rng(3))
            assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3, (family, name)
            np.testing.assert_array_equal(first, second)
            assert first.shape != field.shape or not np.array_equal(first, field), (family, name)


@pytest.mark.parametrize("centre", [(90, 100), (40, 120)])  # off-centre; near the left edge (the square moves inwards)
def test_cell_filled_is_a_native_resolution_square_around_the_cell_not_the_image_centre(centre):
    img = blob((240, 320), centre=centre, radius=30)
    out = shifts.cell_filled(img, rng(), 1.5)
    side = out.shape[0]
    assert out.shape == (side, side, 3) and 1.4 * 60 <= side <= 1.6 * 62  # 1.5 x the disc's 61 px box
    diameter, cx, cy = blob_geometry(out)
    assert diameter == pytest.approx(60, abs=3)  # the whole cell is in, at native size
    if centre[0] - side / 2 >= 0:
        assert (cx, cy) == (pytest.approx(side / 2, abs=1.5), pytest.approx(side / 2, abs=1.5))
    else:  # moved inwards: the square starts at the image's left edge, still centred vertically
        assert cx == pytest.approx(centre[0], abs=1.5) and cy == pytest.approx(side / 2, abs=1.5)
    dark = cv2.cvtColor(shifts.tight_crop(img, rng(), 0.5), cv2.COLOR_BGR2GRAY) < 150
    assert dark.sum() < 0.8 * np.pi * 30**2  # the central square of the same image cuts into or misses the cell


def test_cell_magnified_enlarges_about_the_cell_where_scale_pushes_it_out():
    img = blob((240, 320), centre=(80, 70), radius=20)
    out = shifts.cell_magnified(img, rng(), 2.0)
    assert out.shape == img.shape
    diameter, cx, cy = blob_geometry(out)
    assert diameter == pytest.approx(80, abs=4)  # twice the disc
    assert (cx, cy) == (pytest.approx(160, abs=2), pytest.approx(120, abs=2))  # the cell is now in the middle
    about_centre = cv2.cvtColor(shifts.scale_content(img, rng(), 2.0), cv2.COLOR_BGR2GRAY) < 150
    assert about_centre.sum() < 0.5 * np.pi * 40**2  # the image-centred magnification cuts the same cell
    empty = blob((240, 320), radius=0)  # no cell: scale's own magnification
    np.testing.assert_array_equal(shifts.cell_magnified(empty, rng(), 1.5), shifts.scale_content(empty, rng(), 1.5))


def test_cell_filled_larger_than_the_image_is_cut_to_its_short_side_and_magnifying_needs_a_factor_above_one():
    img = blob((240, 320), centre=(90, 100), radius=30)
    out = shifts.cell_filled(img, rng(), 5.0)  # 5 x the 61 px box: wider than the image is high
    assert out.shape == (240, 240, 3)
    np.testing.assert_array_equal(out, img[:, :240])  # centred on x = 90, moved inwards to the left edge
    with pytest.raises(ValueError, match="factor > 1"):
        shifts.cell_magnified(img, rng(), 0.5)


def test_cell_filled_without_a_cell_takes_the_central_square():
    empty = blob((240, 320), radius=0)
    np.testing.assert_array_equal(shifts.cell_filled(empty, rng(), 1.2), shifts.tight_crop(empty, rng(), shifts.UNFOUND_CELL_FRACTION))


def test_cell_filled_yellow_small_crops_around_the_cell_casts_and_saves_at_120_px():
    out = shifts.cell_filled_yellow_small(blob((240, 320), centre=(90, 100), radius=30), rng(), 1.5)
    assert out.shape == (120, 120, 3) and out.dtype == np.uint8
    diameter, cx, cy = blob_geometry(out)
    assert (cx, cy) == (pytest.approx(60, abs=2), pytest.approx(60, abs=2)) and diameter == pytest.approx(120 / 1.5, abs=6)
    b, g, r = (float(v) for v in out[2, 2])
    assert b < g < r  # yellow: blue absorbed most


def test_tight_yellow_small_crops_casts_and_saves_at_120_px(field):
    out = shifts.tight_yellow_small(field, rng(), 0.5)
    assert out.shape == (120, 120, 3) and out.dtype == np.uint8
    b, g, r = np.array(shifts.background_colour(out), float)
    assert b < g < r  # yellow: blue absorbed most
