"""``cell_crop`` reproduces its frozen outputs exactly: a model is trained on these very crops.

The fixture was written by the implementation before it was optimised
(``tests.unit.cellcrop_frozen``); pixels must hash the same and every
reported float must be equal, not merely close.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipeline.cellcrop import _most_prominent, find_cell
from tests.unit.cellcrop_frozen import FIXTURE, FROZEN, outputs


@pytest.fixture(scope="module")
def frozen() -> dict[str, dict[str, object]]:
    return json.loads(FIXTURE.read_text())


def test_the_fixture_covers_both_laboratories_variants_and_edge_cases(frozen):
    names = {key.split("@")[0] for key in frozen}
    assert sum(n.startswith("kaggle/") and ":" not in n for n in names) >= 20
    assert sum(n.startswith("pbc/") and ":" not in n for n in names) >= 20
    for variant in ("tight", "magnified", "off-centre", "large"):
        assert sum(n.endswith(":" + variant) for n in names) >= 6
    assert {v["found"] for v in frozen.values()} == {True, False}
    assert any(v["rbc_diameter_px"] is None for v in frozen.values() if v["found"])
    assert any(v["rbc_diameter_px"] is not None for v in frozen.values())


@pytest.mark.parametrize("which", sorted(FROZEN))
def test_cell_crop_reproduces_the_frozen_outputs_exactly(which):
    resampling, fixture = FROZEN[which]
    frozen = json.loads(fixture.read_text())
    now = outputs(resampling)
    assert sorted(now) == sorted(frozen)
    changed = {key: (frozen[key], now[key]) for key in frozen if now[key] != frozen[key]}
    assert not changed, f"{len(changed)} of {len(frozen)} crops changed, e.g. {next(iter(changed.items()))}"


def test_the_worker_s_opencv_threads_reproduce_the_frozen_outputs(frozen):
    """The worker runs OpenCV single-threaded per call (``apply_thread_budget``): the same crops."""
    from pipeline.batch import apply_thread_budget

    before = cv2.getNumThreads()
    try:
        apply_thread_budget(2)
        assert cv2.getNumThreads() == 1
        now = outputs()
    finally:
        cv2.setNumThreads(before)
    assert now == frozen


def test_an_exact_tie_between_two_objects_is_broken_as_before():
    """Two equal blobs placed point-symmetrically about the centre score exactly the same;
    the first in OpenCV's default labelling has always won (frozen from the old implementation)."""
    h, w = 120, 160
    mask = np.zeros((h, w), np.uint8)
    ys, xs = np.mgrid[55:67, 30:42]
    mask[ys, xs] = 1
    mask[h - ys, w - xs] = 1  # (x, y) -> (w - x, h - y)
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    n, _, stats, centroids = cv2.connectedComponentsWithStats(closed, connectivity=8, ltype=cv2.CV_16U)
    assert _most_prominent(n, stats, centroids, h, w)[1]  # a tie indeed
    assert find_cell(mask) == ((36.0, 61.0), 12.0)
