"""How often the domain alarm fires on field jobs made of annotated in-domain fields (BCCD layout).

``python -m training.field_alarm --data ../shared/data/bccd --model MODEL_DIR [--fields 10 20 50] [--jobs 2000] [--hue DEG]``

Why: field crops are cut from whole photographs (a 2.5-diameter window), not
made like the training crops, so the thresholds set on validation crops need
not hold for them. The BCCD fields are the source photographs of the Kaggle
training images: in-domain by construction. Every field goes through the
serving path (``pipeline.fields.analyze_fields``: localise, crop, classify and
score in one model call); random jobs of N fields are then checked with
``pipeline.domain.check_job`` and the model's own thresholds. The halves are
those of ``training.evaluate_fields --subset even|odd`` (sorted names, every
other one); only the even half may be used to choose anything.

``--hue DEG`` rotates every field's hue first (a synthetic stain shift);
``--shift FAMILY/STRENGTH`` applies any shift of the robustness suite (e.g.
``scale/x2``, ``stain_intensity/x2``): the alarm should then fire where the
shift costs accuracy, so the run also prints the field-level accuracy (the
type of the most prominent cell found against ``labels.csv``; optimistic,
as these photographs are the training images' sources, but it says whether a
shift hurts at all).

``--fit`` fits the thresholds field jobs use (``DomainModel.field_thresholds``:
cells cut from fields sit further from the training crops than cell images
do) on the even fields, writes them into the model, and reports the odd
fields with them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from pipeline.classifier import load_classifier
from pipeline.domain import SHIFTED, UNAVAILABLE, DomainModel, check_job, field_thresholds
from pipeline.fields import FieldSettings, analyze_fields, magnification_reason
from training.shifts import FAMILIES, Shift, hue_rotation


def field_scores(classifier, paths: list[Path], shift: Shift | None = None, chunk: int = 32,
                 rulers: list[float | None] | None = None, answers: list[str | None] | None = None,
                 stains: list[list] | None = None, focus: list[list] | None = None) -> list[list[float | None]]:
    """Per field, the domain scores of the white cells the serving path finds in it (after ``shift``, if given);
    ``rulers`` (optional) receives each field's measured red-cell diameter, ``answers`` the class of its most
    prominent cell (highest localiser score; None where no cell was found), ``stains`` each field's cells'
    red-cell stain signatures (``pipeline.stain_check``), ``focus`` their blur effects (``pipeline.focus_check``)."""
    scores: list[list[float | None]] = []
    for start in range(0, len(paths), chunk):
        items = []
        for key, path in enumerate(paths[start : start + chunk], start):
            data = path.read_bytes()
            if shift is not None:
                shifted = shift(cv2.imread(str(path)), np.random.default_rng(key))
                data = cv2.imencode(".jpg", shifted, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            items.append((key, data))
        results = analyze_fields(classifier, items, FieldSettings(), chunk)
        scores += [[c.ood_score for c in r.cells] for r in results]
        if stains is not None:
            stains += [[c.stain_od for c in r.cells] for r in results]
        if focus is not None:
            focus += [[c.focus for c in r.cells] for r in results]
        if rulers is not None:
            rulers += [r.red_cell_px for r in results]
        if answers is not None:
            answers += [max(r.cells, key=lambda c: c.score).label if r.cells else None for r in results]
    return scores


def field_accuracy(paths: list[Path], answers: list[str | None], labels_csv: Path) -> tuple[float, int] | None:
    """Share of labelled fields whose most prominent cell gets the field's type (``labels.csv``), and how many
    fields had a label (a field without a found cell counts as wrong); None without ``labels.csv``."""
    if not labels_csv.is_file():
        return None
    with open(labels_csv) as fh:
        labels = {row["image"]: row["wbc_category"].strip().lower() for row in csv.DictReader(fh)}
    pairs = [(labels[p.stem], a) for p, a in zip(paths, answers, strict=True) if labels.get(p.stem)]
    return (sum(truth == answer for truth, answer in pairs) / len(pairs), len(pairs)) if pairs else None


def named_shift(name: str) -> Shift:
    """``family/strength`` of the robustness suite (``training.shifts.FAMILIES``), e.g. ``scale/x2``."""
    family, _, strength = name.partition("/")
    for label, shift in FAMILIES.get(family, []):
        if label == strength:
            return shift
    choices = ", ".join(f"{f}/{label}" for f, members in FAMILIES.items() for label, _ in members)
    raise SystemExit(f"error: unknown shift {name!r}; choose one of {choices}")


def fit_fields(model_dir: Path, domain: DomainModel, even_scores: list[list[float | None]]) -> DomainModel:
    """Fit ``DomainModel.field_thresholds`` on the cells of the even fields (the half that may choose) and write
    them into the model (``ood.npz`` and the manifest's ``ood.fields``)."""
    from training.refit_domain import record

    cells = scored_cells(even_scores)
    fitted = with_field_thresholds(domain, cells)
    fitted.save(model_dir / "ood.npz")
    ood = json.loads((model_dir / "manifest.json").read_text())["ood"]
    ood["fields"] = fields_block(fitted, f"{len(cells)} cells of {len(even_scores)} even BCCD fields (training.field_alarm --fit)")
    record(model_dir, ood, "field thresholds fitted by training.field_alarm --fit on the even BCCD fields")
    f = ood["fields"]
    print(f"field thresholds: share {f['job_threshold']:.3f}, mean centre {f['mean_centre']:.3f}, "
          f"50-cell mean {f['mean_job_threshold']:.3f} ({len(cells)} cells)")
    return fitted


def scored_cells(scores: list[list[float | None]]) -> np.ndarray:
    """The domain scores of every cell of ``scores`` (per field, from :func:`field_scores`) that has one."""
    return np.array([s for field in scores for s in field if s is not None])


def with_field_thresholds(domain: DomainModel, cells: np.ndarray) -> DomainModel:
    """``domain`` with field thresholds from the distances (under ``domain`` itself) of in-domain fields' cells."""
    return dataclasses.replace(domain, field_thresholds=field_thresholds(cells, domain.image_threshold))


def fields_block(domain: DomainModel, fitted_on: str) -> dict:
    """The manifest's description of ``domain``'s field thresholds (``ood.fields``, or a backend entry's)."""
    share, centre, mean50 = (round(float(v), 4) for v in domain.field_thresholds[:3])
    return {"job_threshold": share, "mean_centre": centre, "mean_job_threshold": mean50, "fitted_on": fitted_on}


def alarm_rates(scores: list[list[float | None]], domain: DomainModel, n_fields: int, jobs: int, seed: int = 0,
                rulers: list[float | None] | None = None, stains: list[list] | None = None,
                focus: list[list] | None = None) -> dict:
    """Check ``jobs`` random jobs of ``n_fields`` fields each; how many alarm, how many cannot be checked.

    With ``rulers`` (each field's red-cell diameter) the job is also checked for another magnification, as the
    report does (``pipeline.fields.magnification_reason``): ``shifted`` counts either reason, ``magnification``
    that one alone. With ``stains`` (each field's cells' stain signatures) the stain check takes part too where
    the model has one; ``stain`` counts that reason alone. With ``focus`` (each field's cells' blur effects) the
    focus check takes part where the model has one; ``focus`` counts that reason alone.
    """
    rng = np.random.default_rng(seed)
    n = min(n_fields, len(scores))
    diameter = FieldSettings().localiser.cell_diameter_px  # the settings field_scores analysed the fields with
    statuses, magnified, stained, blurred = [], 0, 0, 0
    for _ in range(jobs):
        picked = rng.choice(len(scores), n, replace=False)
        reason = magnification_reason([rulers[i] for i in picked], diameter) if rulers is not None else None
        magnified += reason is not None
        job_stains = [s for i in picked for s in stains[i]] if stains is not None else None
        if job_stains is not None and domain.stain is not None:
            stained += domain.stain.reason(job_stains, "cells") is not None
        job_focus = [v for i in picked for v in focus[i]] if focus is not None else None
        if job_focus is not None and domain.focus is not None:
            blurred += domain.focus.reason(job_focus, "cells") is not None
        statuses.append(check_job([s for i in picked for s in scores[i]], domain, unit="cells",
                                  other_reasons=[reason] if reason else (), stains=job_stains, focus=job_focus).status)
    return {"fields_per_job": n, "jobs": jobs, "shifted": statuses.count(SHIFTED) / jobs, "unavailable": statuses.count(UNAVAILABLE) / jobs,
            "magnification": magnified / jobs, "stain": stained / jobs, "focus": blurred / jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.field_alarm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with JPEGImages/")
    parser.add_argument("--model", required=True)
    parser.add_argument("--fields", type=int, nargs="+", default=[10, 20, 50], help="fields per job")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--hue", type=float, default=0.0, help="rotate every field's hue by this many degrees first")
    parser.add_argument("--shift", help="apply one shift of the robustness suite to every field first, e.g. scale/x2")
    parser.add_argument("--fit", action="store_true",
                        help="fit the field thresholds on the even fields and write them into the model's ood.npz")
    parser.add_argument("--backend", default="litert", choices=["litert", "litert-int8"],
                        help="the network and domain model to measure (litert-int8 reads its own, training.refit_domain --backend)")
    args = parser.parse_args(argv)
    if args.fit and args.backend != "litert":
        parser.error("--fit writes the fp32 domain model; the int8 one is fitted by training.refit_domain --backend litert-int8 --fields")
    if args.fit and (args.shift or args.hue):
        parser.error("--fit takes the fields as they are (no --shift or --hue)")
    shift = named_shift(args.shift) if args.shift else (partial(hue_rotation, degrees=args.hue) if args.hue else None)
    cv2.setNumThreads(1)
    classifier = load_classifier(args.model, args.backend, threads=1)
    if classifier.domain is None:
        print(f"model {classifier.manifest.label} has no domain model (ood.npz): nothing to measure", file=sys.stderr)
        return 2
    paths = sorted((Path(args.data) / "JPEGImages").glob("*.jpg"))
    if not paths:
        print(f"no fields in {args.data}/JPEGImages", file=sys.stderr)
        return 2
    rulers: list[float | None] = []
    answers: list[str | None] = []
    stains: list[list] = []
    focus: list[list] = []
    scores = field_scores(classifier, paths, shift, rulers=rulers, answers=answers, stains=stains, focus=focus)
    domain = classifier.domain
    if args.fit:
        domain = fit_fields(Path(args.model), domain, scores[0::2])
    used = domain.for_fields()
    mean50 = used.mean_threshold(50)
    print(f"model {classifier.manifest.label}; image threshold {domain.image_threshold:.3f}, job threshold {used.job_threshold:.3f}"
          f"{f', mean threshold (50 cells) {mean50:.3f}' if mean50 else ''}"
          f"{' (field thresholds)' if domain.field_thresholds is not None else ''} "
          f"(in-domain validation: {domain.expected_fraction:.1%} unusual); "
          f"{args.shift or (f'hue {args.hue:+g} deg' if args.hue else 'no shift')}")
    accuracy = field_accuracy(paths, answers, Path(args.data) / "labels.csv")
    if accuracy is not None:
        print(f"field-level accuracy (most prominent cell vs labels.csv): {accuracy[0]:.1%} of {accuracy[1]} labelled fields")
    for half, part, part_rulers, part_stains, part_focus in (
            ("all", scores, rulers, stains, focus), ("even", scores[0::2], rulers[0::2], stains[0::2], focus[0::2]),
            ("odd", scores[1::2], rulers[1::2], stains[1::2], focus[1::2])):
        cells = np.array([s for field in part for s in field if s is not None])
        unusual = float((cells > domain.image_threshold).mean()) if len(cells) else float("nan")
        measured = [r for r in part_rulers if r is not None]
        print(f"{half:>4}: {len(part)} fields, {len(cells)} cells, {unusual:.1%} of cells unusual; red cells measured in "
              f"{len(measured)} fields, median {np.median(measured) if measured else float('nan'):.1f} px")
        for n in args.fields:
            r = alarm_rates(part, domain, n, args.jobs, rulers=part_rulers, stains=part_stains, focus=part_focus)
            print(f"      {r['jobs']} random jobs of {r['fields_per_job']} fields: alarm {r['shifted']:.1%} "
                  f"(magnification {r['magnification']:.1%}, stain {r['stain']:.1%}, focus {r['focus']:.1%}), "
                  f"too few cells to check {r['unavailable']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
