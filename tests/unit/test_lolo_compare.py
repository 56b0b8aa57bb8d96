"""training.lolo_compare: the rule's clauses on seed means, from training.lolo's JSON files."""

import json

import pytest

from training.lolo_compare import accuracies, judge, main


def _run(tmp_path, name, to_kaggle, to_pbc, own_pbc, own_kaggle):
    """A training.lolo JSON: held-out and own-laboratory accuracy (fractions) per direction."""
    def side(held, own):
        return {"held_out_lab": {"accuracy": held}, "own_lab_val": {"accuracy": own}}

    path = tmp_path / name
    path.write_text(json.dumps({"results": {"pbc->kaggle": side(to_kaggle, own_pbc), "kaggle->pbc": side(to_pbc, own_kaggle)}}))
    return str(path)


def test_gain_in_both_directions_with_own_laboratory_kept_passes(tmp_path):
    base = [accuracies(_run(tmp_path, f"b{s}.json", 0.48 + s / 100, 0.66, 0.96, 0.90)) for s in range(3)]
    arm = [accuracies(_run(tmp_path, f"a{s}.json", 0.52, 0.70 + s / 100, 0.96, 0.895)) for s in range(3)]
    verdict = judge(base, arm)
    assert verdict.held_out["pbc->kaggle"] == pytest.approx((49.0, 52.0))
    assert verdict.gain == pytest.approx((3.0 + 5.0) / 2)
    assert verdict.passed


def test_each_clause_can_fail_on_its_own(tmp_path):
    base = [accuracies(_run(tmp_path, "b.json", 0.50, 0.66, 0.96, 0.90))]
    own_lost = judge(base, [accuracies(_run(tmp_path, "own.json", 0.55, 0.75, 0.96, 0.88))])
    assert own_lost.gain_ok and own_lost.directions_ok and not own_lost.own_ok and not own_lost.passed
    one_side = judge(base, [accuracies(_run(tmp_path, "side.json", 0.49, 0.80, 0.96, 0.90))])
    assert one_side.gain_ok and not one_side.directions_ok and not one_side.passed
    small = judge(base, [accuracies(_run(tmp_path, "small.json", 0.51, 0.67, 0.96, 0.90))])
    assert not small.gain_ok and small.directions_ok and small.own_ok and not small.passed


def test_unfinished_run_is_refused_and_cli_prints_the_verdict(tmp_path, capsys):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"results": {"pbc->kaggle": {}}}))
    with pytest.raises(ValueError, match="kaggle->pbc"):
        accuracies(partial)
    base, arm = _run(tmp_path, "b.json", 0.50, 0.66, 0.96, 0.90), _run(tmp_path, "a.json", 0.50, 0.70, 0.96, 0.90)
    assert main(["--baseline", base, "--arm", arm, "--min-gain", "2"]) == 0
    out = capsys.readouterr().out
    assert "+2.00 points" in out and "verdict: PASS" in out
