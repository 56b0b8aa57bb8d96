"""The ruler study runs on a training split and reports per laboratory (label-free, training images only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED
from training.data import Sample
from training.ruler_study import SHIFTS, study


def test_study_reports_side_ratios_per_laboratory(tmp_path: Path):
    kaggle = sorted((SHARED / "kaggle" / "TRAIN" / "NEUTROPHIL").glob("*.jpeg"))[:3]
    pbc = sorted((SHARED / "pbc" / "lymphocyte").glob("*.jpg"))[:3]
    if len(kaggle) < 3 or len(pbc) < 3:
        pytest.fail(f"training images not found under {SHARED}")
    train = [Sample(str(p), "neutrophil", "kaggle", p.name) for p in kaggle] + [Sample(str(p), "lymphocyte", "pbc", p.name) for p in pbc]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": [s.__dict__ for s in train], "val": [], "test": []}))
    result = study(str(splits), n=3)
    assert set(result) == {"kaggle", "pbc"}
    for lab in result.values():
        assert lab["images"] == 3 and set(lab["side_ratio"]) == {name for name, _, _ in SHIFTS}
        for ratio in lab["side_ratio"].values():
            assert 0.2 < ratio["median"] < 5 and 0.0 <= ratio["within_20pct"] <= 1.0
