"""The rules' robustness figure: mean accuracy over shifted conditions, the baseline and the later families left out."""

from __future__ import annotations

import json

import pytest

from training.stress_means import main, shifted_means


def result(model: str, baseline: float, shifted: dict[str, dict[str, float]]) -> dict:
    results = {"baseline": {"none": {"accuracy": baseline}}}
    results.update({family: {s: {"accuracy": a} for s, a in strengths.items()} for family, strengths in shifted.items()})
    return {"model": model, "results": results}


def test_mean_weights_every_condition_equally_and_leaves_out_baseline_and_later_families(tmp_path, capsys):
    run = {"models": [result("a@1", 1.0, {"blur": {"s1": 0.9, "s2": 0.7}, "jpeg": {"q50": 0.8}, "tight_yellow": {"50%": 0.0},
                                          "cell_filled": {"cell x2": 0.1}, "cell_filled_yellow": {"cell x1.2": 0.2},
                                          "cell_magnified": {"x2": 0.3}}),
                      result("b@2", 0.0, {"blur": {"s1": 0.6, "s2": 0.6}, "jpeg": {"q50": 0.9}})]}
    means = shifted_means(run)
    assert means["a@1"] == (pytest.approx(0.8), 3) and means["b@2"] == (pytest.approx(0.7), 3)
    path = tmp_path / "stress.json"
    path.write_text(json.dumps(run))
    assert main([str(path)]) == 0
    assert "a@1: 80.00 % over 3 conditions | b@2: 70.00 % over 3 conditions" in capsys.readouterr().out
    assert main([]) == 2


def test_the_rules_mean_is_still_over_the_40_conditions_they_were_written_for():
    from training.shifts import FAMILIES
    from training.stress_means import NOT_IN_MEAN

    assert sum(len(strengths) for family, strengths in FAMILIES.items() if family not in NOT_IN_MEAN) == 40
