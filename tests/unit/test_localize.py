"""The WBC localiser and tiling on synthetic fields with known cell positions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.localize import Detection, LocaliserConfig, localise
from pipeline.tiling import localise_large, non_max_suppression, tile_origins, tiles
from tests.conftest import synthetic_field


def _assert_found(dets: list[Detection], centers: list[tuple[int, int]], tolerance: float = 30.0) -> None:
    assert len(dets) == len(centers), dets
    for cx, cy in centers:
        distances = [np.hypot(d.center[0] - cx, d.center[1] - cy) for d in dets]
        assert min(distances) < tolerance, (cx, cy, dets)


@pytest.mark.parametrize("seed", range(4))
def test_finds_each_white_cell_once(seed):
    centers = [(160, 150), (470, 330)]
    _assert_found(localise(synthetic_field(640, 480, centers, seed)), centers)


def test_boxes_cover_the_cell():
    det = localise(synthetic_field(640, 480, [(320, 240)]))[0]
    assert det.x0 < 320 - 40 and det.x1 > 320 + 40 and det.y0 < 240 - 40 and det.y1 > 240 + 40
    assert 0.0 < det.score <= 1.0


def test_touching_cells_are_split():
    centers = [(250, 240), (390, 240)]  # nuclei 140 px apart, cytoplasm overlapping
    _assert_found(localise(synthetic_field(640, 480, centers, 1, rbc=10)), centers, tolerance=40)


def test_no_white_cell_and_black_and_flat_images_give_nothing():
    assert localise(synthetic_field(640, 480, [], 2)) == []
    assert localise(np.zeros((480, 640, 3), np.uint8)) == []
    assert localise(np.full((480, 640, 3), 255, np.uint8)) == []


def test_scale_is_one_setting():
    small = synthetic_field(640, 480, [(320, 240)])[::2, ::2].copy()  # half magnification
    assert len(localise(small, LocaliserConfig(cell_diameter_px=95))) == 1


def test_tile_origins_cover_and_overlap():
    starts = tile_origins(5000, 1024, 300)
    assert starts[0] == 0 and starts[-1] == 5000 - 1024
    assert all(b - a <= 1024 - 300 for a, b in zip(starts, starts[1:], strict=False))
    assert tile_origins(800, 1024, 300) == [0]
    assert len(list(tiles(3000, 4000, 1024, 300))) == len(tile_origins(3000, 1024, 300)) * len(tile_origins(4000, 1024, 300))


def test_large_image_cells_on_tile_borders_are_found_once():
    # tiles of 1024 with 285 px overlap start at 0, 739, 1478, ...: put cells across those borders
    centers = [(739, 500), (1024, 1024), (1478, 300), (300, 1460), (2500, 1900), (1100, 1700)]
    field = synthetic_field(3000, 2200, centers, seed=5, rbc=500)
    _assert_found(localise_large(field, tile=1024), centers)


def test_nms_keeps_one_box_per_cell():
    a, b, c = Detection(0, 0, 100, 100, 0.9), Detection(5, 5, 105, 105, 0.8), Detection(300, 300, 400, 400, 0.5)
    inner = Detection(10, 10, 60, 60, 0.95)  # a part of a, cut by a tile edge
    assert non_max_suppression([a, b, c, inner]) == [a, c]
