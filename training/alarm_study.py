"""Which per-job statistic should the domain alarm use? A study on the robustness suite's per-image scores.

``python -m training.alarm_study --scores stress_kaggle.npz stress_pbc.npz [--model-index 0] [--json OUT]``

Why: the alarm up to 2.1 counted the images above the in-domain 95th
percentile of the Mahalanobis distance (``pipeline.domain``). A moderate
shift moves every image's distance a little; a count of exceedances may miss
it while the job's mean distance would not. This compares statistics at the
same in-domain false-alarm rate, honestly: the images of each validation
file (one laboratory each) are split in two halves by position; every
statistic's job threshold is the 98th percentile over random 50-image jobs
of one file's first-half unshifted images, the larger over the files (a
laboratory's job holds its own images: the shipped fit does the same from
2.1.1); its false-alarm rate is measured on the second halves' unshifted
images, and its sensitivity on the second halves' shifted images (each
condition of ``training.stress --scores``). "share or mean" is the shipped
rule from 2.1.1: either of the first two statistics over its threshold, the
thresholds set by the shipped fit's rules. ``--halvings N``
repeats the study on N random halvings. Where the files hold each image's
red-cell stain signature (``training.stress --scores`` from 2.3.1), the
stain reason (``pipeline.stain_check``, its reference fitted on the same
first halves, each file one laboratory) is replayed on the same jobs, alone
and together with the shipped rule ("... or stain", the 2.3.1 rule); where
they hold each image's red-cell signature too (stain and diameter, from
2.3.2), the red-cell reason (its per-image form, fitted on the same first
halves) alone and with everything before it (the 2.3.2 rule).
Validation images only, never the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.domain import FALSE_ALARM, mean_job_threshold, share_job_threshold
from pipeline.domain import JOB_SIZE as JOB
from pipeline.focus_check import fit_focus_reference
from pipeline.stain_check import fit_stain_reference
from training.data import kaggle_source

JOBS = 400

#: statistic name -> f(job's distances, in-domain 95th percentile of single images) -> number (higher = more shifted)
STATISTICS: dict[str, Callable[[np.ndarray, float], float]] = {
    "fraction above p95": lambda d, p95: float((d > p95).mean()),
    "mean distance": lambda d, p95: float(d.mean()),
    "median distance": lambda d, p95: float(np.median(d)),
    "mean log distance": lambda d, p95: float(np.log(d).mean()),
}


def conditions_of(data: np.lib.npyio.NpzFile, index: int) -> list[str]:
    keys = {k.rsplit("/", 1)[0] for k in data.files if k.startswith(f"{index}/")}
    return sorted(keys, key=lambda k: (not k.endswith("baseline/none"), k))


def job_values(distances: np.ndarray, p95: float, statistic: Callable, rng: np.random.Generator) -> np.ndarray:
    n = min(JOB, len(distances))
    return np.array([statistic(distances[rng.choice(len(distances), n, replace=False)], p95) for _ in range(JOBS)])


#: file name -> condition ("family/strength", the baseline first) -> (per-image distances, per-image correctness)
Conditions = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def load_conditions(paths: list[str], index: int = 0, field: str = "ood") -> Conditions:
    """Distances (or another per-image ``field``, e.g. ``features``) and correctness per condition from files
    written by ``training.stress --scores``."""
    out: Conditions = {}
    for path in paths:
        with np.load(path) as data:
            out[Path(path).name] = {name.split("/", 1)[1]: (data[f"{name}/{field}"], data[name + "/correct"])
                                    for name in conditions_of(data, index)}
    return out


def load_sources(paths: list[str]) -> dict[str, np.ndarray] | None:
    """Per file, each image's source photograph (Kaggle: the cell its copies come from; otherwise the image itself),
    from the keys ``training.stress --scores`` stores; None if a file has no keys (written before they were kept)."""
    out = {}
    for path in paths:
        with np.load(path) as data:
            if "keys" not in data.files:
                return None
            out[Path(path).name] = np.array([kaggle_source(Path(k)) or k for k in data["keys"]])
    return out


def load_stains(paths: list[str], index: int = 0, key: str = "stain") -> dict[str, dict[str, list]] | None:
    """Per file and condition, each image's stain signature (``key`` "red_cells": its red-cell signature; "focus":
    its blur effect, a number) or None where not measured; None if a file has none (stain: written before 2.3.1;
    red cells: before 2.3.2; focus: before 2.4.2) or no image was measured at all (a model without that check)."""
    out: dict[str, dict[str, list]] = {}
    for path in paths:
        with np.load(path) as data:
            names = conditions_of(data, index)
            if any(f"{name}/{key}" not in data.files for name in names):
                return None
            out[Path(path).name] = {name.split("/", 1)[1]: [_signature(row) for row in data[f"{name}/{key}"]] for name in names}
    if all(s is None for conditions in out.values() for rows in conditions.values() for s in rows):
        return None
    return out


def _signature(row: np.ndarray) -> tuple | float | None:
    """One stored row: None where not measured (NaN), a number for a scalar measure, else a tuple."""
    if np.isnan(row).any():
        return None
    return float(row) if np.ndim(row) == 0 else tuple(row.tolist())


def study(paths: list[str], index: int = 0, seed: int = 0, halving: int | None = None, by_source: bool = False,
          source_aware: bool = True) -> dict:
    sources = load_sources(paths) if by_source else None
    if by_source and sources is None:
        raise SystemExit("error: --by-source needs files written by training.stress --scores with image keys")
    return study_conditions(load_conditions(paths, index), seed, halving, sources, source_aware, load_stains(paths, index),
                            load_stains(paths, index, "red_cells"), load_stains(paths, index, "focus"))


#: the shipped rule from 2.1.1: a job is shifted when either statistic exceeds its own threshold
EITHER = ("fraction above p95", "mean distance")
SHIPPED = "share or mean (shipped from 2.1.1)"
#: the red-cell stain reason alone, and the rule shipped from 2.3.1 (either feature statistic or the stain)
STAIN = "stain (red cells)"
SHIPPED_STAIN = "share or mean or stain (shipped from 2.3.1)"
#: the red-cell reason (stain and size, per-image form) alone, and the rule shipped from 2.3.2
RED_CELLS = "red cells (stain and size)"
SHIPPED_RED_CELLS = "share or mean or stain or red cells (shipped from 2.3.2)"
#: the focus reason (blur effect) alone, and the rule shipped from 2.4.2
FOCUS = "focus (blur effect)"
SHIPPED_FOCUS = "share or mean or stain or red cells or focus (shipped from 2.4.2)"


def _first_half(n: int, halving: int | None, sources: np.ndarray | None = None) -> np.ndarray:
    """Which images set the thresholds: even positions, or a seeded random half (``halving`` = its seed); with
    ``sources``, whole source photographs go to one half (sorted sources alternately, or a seeded random half)."""
    if sources is not None:
        unique = np.unique(sources)
        chosen = (np.arange(len(unique)) % 2 == 0) if halving is None else np.random.default_rng(1000 + halving).random(len(unique)) < 0.5
        return np.isin(sources, unique[chosen])
    if halving is None:
        return np.arange(n) % 2 == 0
    return np.random.default_rng(1000 + halving).random(n) < 0.5


def study_conditions(files: Conditions, seed: int = 0, halving: int | None = None,
                     sources: dict[str, np.ndarray] | None = None, source_aware: bool = True,
                     stains: dict[str, dict[str, list]] | None = None,
                     red_cells: dict[str, dict[str, list]] | None = None,
                     focus: dict[str, dict[str, list]] | None = None) -> dict:
    """Thresholds from each file's first-half unshifted images (the larger over files; the share's and the mean's
    by the shipped fit's rules, ``pipeline.domain``, told how many source photographs the half holds when
    ``sources`` are given and ``source_aware``); alarm rates per file and condition on the second halves.
    Every statistic is computed on the same random jobs; with ``stains`` (per file and condition, each image's
    stain signature) the stain reason too, its reference fitted on the same first halves; with ``red_cells`` (and
    ``stains``) the red-cell reason in its per-image form the same way; with ``focus`` (and both) the focus reason."""
    names = list(files)
    bases = [next(iter(files[f].values()))[0] for f in names]
    masks = [_first_half(len(b), halving, None if sources is None else sources[f]) for f, b in zip(names, bases, strict=True)]
    firsts = [b[m] for b, m in zip(bases, masks, strict=True)]
    clusters = [len(np.unique(sources[f][m])) if sources is not None and source_aware else None
                for f, m in zip(names, masks, strict=True)]
    p95 = float(np.percentile(np.concatenate(firsts), 95))

    def threshold(name: str, first: np.ndarray, c: int | None) -> float:
        """The shipped fit's own rules for its two statistics; resampled jobs' quantile for the others."""
        if name == "fraction above p95":
            return share_job_threshold(first > p95, JOB, c)
        if name == "mean distance":
            return mean_job_threshold(first, np.random.default_rng(seed), c)
        return float(np.quantile(job_values(first, p95, STATISTICS[name], np.random.default_rng(seed)), 1 - FALSE_ALARM))

    thresholds = {s: max(threshold(s, first, c) for first, c in zip(firsts, clusters, strict=True)) for s in STATISTICS}
    baseline = next(iter(files[names[0]]))
    fit_sources = ({f: list(sources[f][m]) for f, m in zip(names, masks, strict=True)}
                   if sources is not None and source_aware else None)

    def fitted(signatures: dict[str, dict[str, list]], fit=fit_stain_reference, **options):
        return fit({f: [g for g, keep in zip(signatures[f][baseline], m, strict=True) if keep] for f, m in zip(names, masks, strict=True)},
                   fit_sources, seed, **options)

    reference = fitted(stains) if stains is not None else None
    red_reference = fitted(red_cells, per_image=True) if red_cells is not None and reference is not None else None
    focus_reference = fitted(focus, fit=fit_focus_reference) if focus is not None and red_reference is not None else None
    rows: list[dict] = []
    for file, mask in zip(names, masks, strict=True):
        for condition, (distances, correct) in files[file].items():
            held = ~mask
            fired = {s: job_values(distances[held], p95, f, np.random.default_rng(seed + 1)) > thresholds[s]
                     for s, f in STATISTICS.items()}
            fired[SHIPPED] = fired[EITHER[0]] | fired[EITHER[1]]
            if reference is not None:
                held_stains = [g for g, out in zip(stains[file][condition], held, strict=True) if out]
                fired[STAIN] = _stain_fired(reference, held_stains, np.random.default_rng(seed + 1))
                fired[SHIPPED_STAIN] = fired[SHIPPED] | fired[STAIN]
            if red_reference is not None:
                held_red = [g for g, out in zip(red_cells[file][condition], held, strict=True) if out]
                fired[RED_CELLS] = _stain_fired(red_reference, held_red, np.random.default_rng(seed + 1))
                fired[SHIPPED_RED_CELLS] = fired[SHIPPED_STAIN] | fired[RED_CELLS]
            if focus_reference is not None:
                held_focus = [g for g, out in zip(focus[file][condition], held, strict=True) if out]
                fired[FOCUS] = _stain_fired(focus_reference, held_focus, np.random.default_rng(seed + 1))
                fired[SHIPPED_FOCUS] = fired[SHIPPED_RED_CELLS] | fired[FOCUS]
            rows.append({"file": file, "condition": condition, "accuracy": float(correct[held].mean()),
                         "alarm": {s: float(v.mean()) for s, v in fired.items()}})
    return {"image_p95": p95, "thresholds": thresholds, "rows": rows, "summary": summarise(rows)}


def _stain_fired(reference, stains: list, rng: np.random.Generator) -> np.ndarray:
    """The stain reason on the jobs ``job_values`` draws with the same generator (same size, same order)."""
    n = min(JOB, len(stains))
    return np.array([reference.reason([stains[i] for i in rng.choice(len(stains), n, replace=False)]) is not None
                     for _ in range(JOBS)])


def summarise(rows: list[dict]) -> dict:
    """Per statistic: false alarm on unshifted held-out jobs (mean and worst laboratory); mean alarm rate where
    accuracy < 85 %, and in 85-90 %."""
    out = {}
    for s in [*STATISTICS, SHIPPED, STAIN, SHIPPED_STAIN, RED_CELLS, SHIPPED_RED_CELLS, FOCUS, SHIPPED_FOCUS]:
        if not rows or s not in rows[0]["alarm"]:
            continue
        base = [r["alarm"][s] for r in rows if r["condition"] == "baseline/none"]
        low = [r["alarm"][s] for r in rows if r["accuracy"] < 0.85 and r["condition"] != "baseline/none"]
        mid = [r["alarm"][s] for r in rows if 0.85 <= r["accuracy"] < 0.90 and r["condition"] != "baseline/none"]
        out[s] = {"false_alarm": float(np.mean(base)), "false_alarm_worst_lab": float(np.max(base)),
                  "alarm_below_85": float(np.mean(low)) if low else None,
                  "min_alarm_below_85": float(np.min(low)) if low else None, "n_below_85": len(low),
                  "alarm_85_90": float(np.mean(mid)) if mid else None}
    return out


def print_summary(summary: dict, title: str = "statistic") -> None:
    width = max(len(title), *(len(s) for s in summary))
    print(f"{title:<{width}}  false alarm (held-out, unshifted: mean / worst lab)  alarm where acc<85% (mean / min, n)"
          f"  alarm at 85-90%")
    for s, m in summary.items():
        low = "-" if m["alarm_below_85"] is None else f"{m['alarm_below_85']:.0%} / {m['min_alarm_below_85']:.0%}, {m['n_below_85']}"
        mid = "-" if m["alarm_85_90"] is None else f"{m['alarm_85_90']:.0%}"
        fa = f"{m['false_alarm']:.1%} / {m['false_alarm_worst_lab']:.1%}"
        print(f"{s:<{width}}  {fa:>50}  {low:>36}  {mid:>15}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.alarm_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", nargs="+", required=True, help="files written by training.stress --scores")
    parser.add_argument("--model-index", type=int, default=0, help="0: the --model of that run, 1: its --compare")
    parser.add_argument("--halvings", type=int, default=0,
                        help="also repeat the study on N seeded random halvings (how stable the false-alarm rate is)")
    parser.add_argument("--by-source", action="store_true",
                        help="halve by source photograph (Kaggle's copies of one cell stay in one half), and compare "
                             "thresholds told the number of sources with thresholds that count images")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    variants = [("", True)] if not args.by_source else [(" (thresholds know the sources)", True),
                                                         (" (thresholds count images)", False)]
    result: dict = {"by_source": args.by_source, "variants": {}}
    for label, aware in variants:
        first = study(args.scores, args.model_index, by_source=args.by_source, source_aware=aware)
        halvings = [study(args.scores, args.model_index, halving=k, by_source=args.by_source, source_aware=aware)["summary"]
                    for k in range(args.halvings)]
        result["variants"][label.strip(" ()") or "shipped"] = {**first, "halvings": halvings}
        for name, summary in [("fixed halving", first["summary"])] + [(f"random halving {k}", h) for k, h in enumerate(halvings)]:
            print(f"\n{name}{label}")
            print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
