"""One number per model from a robustness-suite run: mean accuracy over the shifted conditions.

``python -m training.stress_means STRESS.json [...]``

Why: the shipping rules compare candidates on the suite's mean (every shift family at
every strength, equal weight). The mean leaves out the unshifted baseline and the
families added after the rules were first written (``tight_yellow``; ``cell_filled``,
``cell_filled_yellow`` and ``cell_magnified``, 2026-11-29), so the figure stays comparable across model cards
(40 conditions; every family is still in the tables).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: families outside the rules' mean (see the module's docstring)
NOT_IN_MEAN = ("baseline", "tight_yellow", "cell_filled", "cell_filled_yellow", "cell_magnified")


def shifted_means(result: dict) -> dict[str, tuple[float, int]]:
    """Model label -> (mean accuracy over the shifted conditions, number of conditions)."""
    means = {}
    for model in result["models"]:
        accuracies = [r["accuracy"] for family, strengths in model["results"].items() if family not in NOT_IN_MEAN
                      for r in strengths.values()]
        means[model["model"]] = (sum(accuracies) / len(accuracies) if accuracies else float("nan"), len(accuracies))
    return means


def describe(result: dict) -> str:
    return " | ".join(f"{label}: {100 * mean:.2f} % over {n} conditions" for label, (mean, n) in shifted_means(result).items())


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m training.stress_means STRESS.json [...]", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path}: {describe(json.loads(Path(path).read_text()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
