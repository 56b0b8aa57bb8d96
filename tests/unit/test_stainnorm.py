"""Red-cell stain normalisation on synthetic smears with a known stain strength."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cellcrop import BACKGROUND_LEVEL, cell_crop
from pipeline.manifest import ModelManifest
from pipeline.preprocess import POST_AUGMENT, RECIPE_CELL_CENTRED_RBC_STAIN, RECIPES, model_crop
from pipeline.stainnorm import TARGET_OD_RGB, normalise_stain, od_lut, red_cell_od
from tests.conftest import synthetic_field
from training.shifts import stain_intensity


def smear(seed: int = 0, red_od=(0.22, 0.33, 0.19)) -> np.ndarray:
    """conftest's synthetic smear with red cells of a realistic stain (optical density per R, G, B channel)."""
    image = synthetic_field(360, 360, [(180, 180)], seed=seed, rbc=14)
    red = np.all(np.abs(image.astype(int) - (178, 168, 226)) < 14, axis=-1)  # conftest's red-cell colour (BGR)
    glass = (228, 226, 232)
    colour = [g * np.exp(-od) for g, od in zip(glass, red_od[::-1], strict=True)]  # BGR
    image[red] = np.clip(np.array(colour) + np.random.default_rng(seed).normal(0, 3, (int(red.sum()), 3)), 0, 255)
    return image


def test_red_cell_od_is_measured_on_a_smear_and_lands_on_the_target_after_normalisation():
    crop = cell_crop(smear(), 160).pixels
    before = red_cell_od(crop)
    assert before is not None and np.all(before > 0)
    after = red_cell_od(normalise_stain(crop))
    assert np.abs(after - TARGET_OD_RGB).max() < np.abs(before - TARGET_OD_RGB).max() / 2
    assert np.abs(after - TARGET_OD_RGB).max() < 0.03


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.5])
def test_a_weaker_or_stronger_stain_comes_back_close_to_the_normal_one(factor):
    """The robustness suite's stain-intensity shift (OD scaled by ``factor``) is undone (within the gain bounds)."""
    image = smear(seed=1)
    shifted = stain_intensity(image, np.random.default_rng(0), factor)
    plain = red_cell_od(normalise_stain(cell_crop(image, 160).pixels))
    raw = red_cell_od(cell_crop(shifted, 160).pixels)
    fixed = red_cell_od(normalise_stain(cell_crop(shifted, 160).pixels))
    assert np.abs(raw - plain).max() > 0.04
    assert np.abs(fixed - plain).max() < 0.03


def test_glass_stays_glass_and_a_crop_without_red_cells_is_unchanged():
    lut = od_lut(np.array([2.0, 0.5, 1.3], np.float32))
    glass = int(BACKGROUND_LEVEL)
    assert np.all(np.abs(lut[glass:, 0, :].astype(int) - np.arange(glass, 256)[:, None]) <= 0)
    blank = np.full((160, 160, 3), glass, np.uint8)
    assert red_cell_od(blank) is None
    assert normalise_stain(blank) is blank


def test_stain_recipe_is_registered_applies_after_augmentation_and_round_trips_through_a_manifest(tmp_path):
    assert RECIPE_CELL_CENTRED_RBC_STAIN in RECIPES and RECIPE_CELL_CENTRED_RBC_STAIN in POST_AUGMENT
    crop = model_crop(smear(seed=2), 96, RECIPE_CELL_CENTRED_RBC_STAIN)
    plain = model_crop(smear(seed=2), 96)
    assert crop.found and crop.center == plain.center and not np.array_equal(crop.pixels, plain.pixels)
    assert np.array_equal(crop.pixels, normalise_stain(plain.pixels))
    manifest = {"name": "m", "version": "0", "classes": ["a", "b"], "white_cells": ["a", "b"], "input_size": 96,
                "preprocessing": RECIPE_CELL_CENTRED_RBC_STAIN, "temperature": 1.0, "files": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert ModelManifest.load(tmp_path).preprocessing == RECIPE_CELL_CENTRED_RBC_STAIN
