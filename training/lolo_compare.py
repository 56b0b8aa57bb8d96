"""Compare two recipes' leave-one-laboratory-out runs over several seeds, and apply a gain rule to them.

Why: one recipe's leave-one-laboratory-out accuracy moves by up to 9 points
between seeds (model card), so a recipe is judged on the seed means of both
directions, never on one run, and by a rule written before the runs. The
model card's rules M, M2 and M3 have three clauses: the mean held-out gain
over both directions is at least ``--min-gain`` points, neither direction's
seed mean is lower than the baseline's, and the own laboratory's validation
accuracy is not lower by more than ``--own-tolerance`` points in either
direction. This prints the per-run table and the verdict from the JSON files
that ``python -m training.lolo --json`` writes, so a decision can be re-run.

    python -m training.lolo_compare --baseline eval/lolo_s15_base_seed*.json --arm eval/lolo_s16_mild_seed*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

DIRECTIONS = ("pbc->kaggle", "kaggle->pbc")


@dataclass(frozen=True)
class Verdict:
    """Seed means per direction (held-out and own laboratory, percent) and whether each clause held."""

    held_out: dict[str, tuple[float, float]]  # direction -> (baseline, arm)
    own_lab: dict[str, tuple[float, float]]
    gain: float
    gain_ok: bool
    directions_ok: bool
    own_ok: bool

    @property
    def passed(self) -> bool:
        return self.gain_ok and self.directions_ok and self.own_ok


def accuracies(path: str | Path) -> dict[str, tuple[float, float]]:
    """direction -> (held-out accuracy, own-laboratory validation accuracy), in percent, of one run's JSON."""
    results = json.loads(Path(path).read_text())["results"]
    missing = [d for d in DIRECTIONS if d not in results]
    if missing:
        raise ValueError(f"{path}: no results for {missing}; was the run finished?")
    return {d: (100 * results[d]["held_out_lab"]["accuracy"], 100 * results[d]["own_lab_val"]["accuracy"])
            for d in DIRECTIONS}


def judge(baseline: list[dict[str, tuple[float, float]]], arm: list[dict[str, tuple[float, float]]],
          min_gain: float = 3.0, own_tolerance: float = 1.0) -> Verdict:
    """The rule's three clauses on the seed means (the runs need not pair: seeds diverge within an epoch)."""
    if not baseline or not arm:
        raise ValueError("both recipes need at least one run")

    def means(runs, index):
        return {d: mean(run[d][index] for run in runs) for d in DIRECTIONS}

    held_b, held_a, own_b, own_a = means(baseline, 0), means(arm, 0), means(baseline, 1), means(arm, 1)
    held = {d: (held_b[d], held_a[d]) for d in DIRECTIONS}
    own = {d: (own_b[d], own_a[d]) for d in DIRECTIONS}
    gain = mean(a - b for b, a in held.values())
    return Verdict(held, own, gain, gain >= min_gain, all(a >= b for b, a in held.values()),
                   all(a >= b - own_tolerance for b, a in own.values()))


def report(verdict: Verdict, baseline_files: list[str], arm_files: list[str], min_gain: float, own_tolerance: float) -> str:
    lines = [f"baseline: {len(baseline_files)} runs, arm: {len(arm_files)} runs (seed means, percent)",
             f"{'direction':<14}{'held-out base':>15}{'arm':>8}{'diff':>7}{'own base':>10}{'arm':>8}{'diff':>7}"]
    for d in DIRECTIONS:
        (hb, ha), (ob, oa) = verdict.held_out[d], verdict.own_lab[d]
        lines.append(f"{d:<14}{hb:>15.1f}{ha:>8.1f}{ha - hb:>+7.1f}{ob:>10.1f}{oa:>8.1f}{oa - ob:>+7.1f}")
    clause = {True: "holds", False: "FAILS"}
    lines += [f"mean held-out gain {verdict.gain:+.2f} points (rule: >= {min_gain:g}): {clause[verdict.gain_ok]}",
              f"neither direction lower: {clause[verdict.directions_ok]}",
              f"own laboratory within {own_tolerance:g} points in both directions: {clause[verdict.own_ok]}",
              f"verdict: {'PASS' if verdict.passed else 'FAIL'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lolo_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", nargs="+", required=True, help="training.lolo JSON files of the baseline recipe")
    parser.add_argument("--arm", nargs="+", required=True, help="training.lolo JSON files of the recipe judged")
    parser.add_argument("--min-gain", type=float, default=3.0, help="points the mean held-out accuracy must rise by")
    parser.add_argument("--own-tolerance", type=float, default=1.0, help="points the own laboratory may lose")
    args = parser.parse_args(argv)
    verdict = judge([accuracies(p) for p in args.baseline], [accuracies(p) for p in args.arm], args.min_gain, args.own_tolerance)
    print(report(verdict, args.baseline, args.arm, args.min_gain, args.own_tolerance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
