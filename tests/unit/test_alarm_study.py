"""The alarm study compares job statistics at the same in-domain false-alarm rate."""

from __future__ import annotations

import numpy as np

from training.alarm_study import SHIPPED, STATISTICS, study


def test_a_shift_of_every_image_is_caught_and_unshifted_jobs_rarely_alarm(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    base = rng.lognormal(2.0, 0.25, n)
    arrays = {
        "0/baseline/none/ood": base, "0/baseline/none/correct": np.ones(n, bool), "0/baseline/none/found": np.ones(n, bool),
        # every image a little further from the training data, and the model worse
        "0/stain/x2/ood": base * 1.3, "0/stain/x2/correct": rng.random(n) < 0.7, "0/stain/x2/found": np.ones(n, bool),
    }
    path = tmp_path / "scores.npz"
    np.savez(path, **arrays)
    result = study([str(path)])
    rows = {r["condition"]: r for r in result["rows"]}
    assert set(rows) == {"baseline/none", "stain/x2"}
    for s in [*STATISTICS, SHIPPED]:
        assert rows["baseline/none"]["alarm"][s] <= 0.15
        assert rows["stain/x2"]["alarm"][s] >= 0.9
    summary = result["summary"]["mean distance"]
    assert summary["n_below_85"] == 1 and summary["alarm_below_85"] >= 0.9


def lab_file(path, level: float, seed: int) -> str:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(level, 0.25, 1000)
    np.savez(path, **{"0/baseline/none/ood": base, "0/baseline/none/correct": np.ones(1000, bool),
                      "0/baseline/none/found": np.ones(1000, bool)})
    return str(path)


def test_thresholds_come_from_one_laboratory_at_a_time_so_neither_laboratory_false_alarms(tmp_path):
    """Two laboratories whose ordinary images sit at different distances: thresholds from jobs of mixed images
    would flag most of the farther laboratory's ordinary jobs on the mean; per-laboratory thresholds do not."""
    paths = [lab_file(tmp_path / "near.npz", 1.9, 1), lab_file(tmp_path / "far.npz", 2.1, 2)]
    summary = study(paths)["summary"]
    for s in ("mean distance", SHIPPED):
        assert summary[s]["false_alarm_worst_lab"] <= 0.1


def test_halving_by_source_keeps_every_copy_of_a_cell_in_one_half(tmp_path):
    from training.alarm_study import _first_half, load_sources

    keys = np.array([f"eosinophil/_{cell}_{copy}.jpeg" for cell in range(30) for copy in range(10)])
    rng = np.random.default_rng(3)
    base = rng.lognormal(2.0, 0.25, len(keys))
    np.savez(tmp_path / "k.npz", keys=keys, **{"0/baseline/none/ood": base, "0/baseline/none/correct": np.ones(len(keys), bool),
                                               "0/baseline/none/found": np.ones(len(keys), bool)})
    sources = load_sources([str(tmp_path / "k.npz")])["k.npz"]
    assert len(np.unique(sources)) == 30
    for halving in (None, 0, 1):
        first = _first_half(len(keys), halving, sources)
        assert not set(sources[first]) & set(sources[~first]) and 0 < first.sum() < len(keys)
    summary = study([str(tmp_path / "k.npz")], by_source=True)["summary"]
    assert summary[SHIPPED]["false_alarm"] <= 0.15


def test_the_stain_reason_is_replayed_on_the_same_jobs_where_the_files_carry_stains(tmp_path):
    """From 2.3.1 the files hold each image's red-cell stain signature: a doubled stain that leaves the features
    where they were (a stain-blind network) is caught by the stain reason, and the 2.3.1 rule is the union."""
    from training.alarm_study import SHIPPED_STAIN, STAIN

    rng = np.random.default_rng(4)
    n = 1000
    base = rng.lognormal(2.0, 0.25, n)
    stain = np.array([0.2, 0.3, 0.19]) * np.exp(rng.normal(0, 0.08, (n, 3)))
    stain[::25] = np.nan  # a few crops without red cells
    arrays = {
        "0/baseline/none/ood": base, "0/baseline/none/correct": np.ones(n, bool), "0/baseline/none/stain": stain,
        "0/stain_intensity/x2/ood": base, "0/stain_intensity/x2/correct": rng.random(n) < 0.8,
        "0/stain_intensity/x2/stain": stain * 2.0,
        "0/blur/sigma4/ood": base * 1.3, "0/blur/sigma4/correct": rng.random(n) < 0.8, "0/blur/sigma4/stain": stain,
    }
    np.savez(tmp_path / "lab.npz", **arrays)
    rows = {r["condition"]: r["alarm"] for r in study([str(tmp_path / "lab.npz")])["rows"]}
    assert rows["baseline/none"][SHIPPED_STAIN] <= 0.1 and rows["baseline/none"][STAIN] <= 0.05
    assert rows["stain_intensity/x2"][SHIPPED] <= 0.2 and rows["stain_intensity/x2"][STAIN] >= 0.95
    assert rows["blur/sigma4"][STAIN] <= 0.05 and rows["blur/sigma4"][SHIPPED_STAIN] >= rows["blur/sigma4"][SHIPPED] >= 0.9
    for alarms in rows.values():
        assert alarms[SHIPPED_STAIN] >= max(alarms[SHIPPED], alarms[STAIN])


def test_files_without_stains_give_the_feature_rules_only(tmp_path):
    from training.alarm_study import SHIPPED_STAIN, STAIN

    summary = study([lab_file(tmp_path / "old.npz", 2.0, 5)])["summary"]
    assert SHIPPED in summary and STAIN not in summary and SHIPPED_STAIN not in summary


def test_the_red_cell_reason_is_replayed_where_the_files_carry_red_cell_signatures(tmp_path):
    """From 2.3.2 the files hold each image's red-cell signature (stain and diameter): magnification by 1.5 leaves
    the features and the stain where they were and is caught by the red-cell reason; the 2.3.2 rule is the union
    of everything. Files whose red-cell rows are all unmeasured (a model without the check) replay no such reason."""
    from training.alarm_study import RED_CELLS, SHIPPED_RED_CELLS, SHIPPED_STAIN, STAIN

    rng = np.random.default_rng(5)
    n = 1000
    base = rng.lognormal(2.0, 0.25, n)
    stain = np.array([0.2, 0.3, 0.19]) * np.exp(rng.normal(0, 0.08, (n, 3)))
    size = 43.0 * np.exp(rng.normal(0, 0.06, (n, 1)))
    red = np.concatenate([stain, size], axis=1)
    arrays = {
        "0/baseline/none/ood": base, "0/baseline/none/correct": np.ones(n, bool), "0/baseline/none/stain": stain,
        "0/baseline/none/red_cells": red,
        "0/scale/x1.5/ood": base, "0/scale/x1.5/correct": rng.random(n) < 0.84, "0/scale/x1.5/stain": stain,
        "0/scale/x1.5/red_cells": np.concatenate([stain, size * 1.5], axis=1),
    }
    np.savez(tmp_path / "lab.npz", **arrays)
    result = study([str(tmp_path / "lab.npz")])
    rows = {r["condition"]: r["alarm"] for r in result["rows"]}
    assert result["summary"][SHIPPED_RED_CELLS]["min_alarm_below_85"] >= 0.95  # the summary carries both rules
    assert result["summary"][RED_CELLS]["false_alarm"] <= 0.05
    assert rows["baseline/none"][RED_CELLS] <= 0.05 and rows["baseline/none"][SHIPPED_RED_CELLS] <= 0.1
    assert rows["scale/x1.5"][STAIN] <= 0.05 and rows["scale/x1.5"][RED_CELLS] >= 0.95
    for alarms in rows.values():
        assert alarms[SHIPPED_RED_CELLS] >= max(alarms[SHIPPED_STAIN], alarms[RED_CELLS])
    arrays = {k: (np.full_like(v, np.nan) if k.endswith("red_cells") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "older.npz", **arrays)
    summary = study([str(tmp_path / "older.npz")])["summary"]
    assert STAIN in summary and RED_CELLS not in summary


def test_the_focus_reason_is_replayed_where_the_files_carry_blur_effects(tmp_path):
    """From 2.4.2 the files hold each image's blur effect (one number, NaN where not measured): a blur that leaves
    features and red cells where they were is caught by the focus reason; the 2.4.2 rule is the union of all."""
    from training.alarm_study import FOCUS, SHIPPED_FOCUS, SHIPPED_RED_CELLS

    rng = np.random.default_rng(6)
    n = 1000
    base = rng.lognormal(2.0, 0.25, n)
    stain = np.array([0.2, 0.3, 0.19]) * np.exp(rng.normal(0, 0.08, (n, 3)))
    red = np.concatenate([stain, 43.0 * np.exp(rng.normal(0, 0.06, (n, 1)))], axis=1)
    sharp = rng.normal(0.45, 0.05, n)
    sharp[:7] = np.nan  # a few crops not measured
    arrays = {}
    for name, focus, correct in (("baseline/none", sharp, np.ones(n, bool)), ("blur/sigma4", sharp + 0.2, rng.random(n) < 0.8)):
        arrays.update({f"0/{name}/ood": base, f"0/{name}/correct": correct, f"0/{name}/stain": stain,
                       f"0/{name}/red_cells": red, f"0/{name}/focus": focus})
    np.savez(tmp_path / "lab.npz", **arrays)
    result = study([str(tmp_path / "lab.npz")])
    rows = {r["condition"]: r["alarm"] for r in result["rows"]}
    assert rows["baseline/none"][FOCUS] <= 0.05 and rows["blur/sigma4"][FOCUS] >= 0.95
    assert rows["blur/sigma4"][SHIPPED_RED_CELLS] <= 0.1 and rows["blur/sigma4"][SHIPPED_FOCUS] >= 0.95
    assert result["summary"][SHIPPED_FOCUS]["min_alarm_below_85"] >= 0.95
