"""Evaluate an exported model on a folder of class subfolders.

``python -m training.evaluate --model MODEL_DIR --data DATA_DIR [--json OUT.json] [--backend litert|keras]``

Folder names map to the model's classes case-insensitively (EOSINOPHIL =
eosinophil); folders of classes the model does not know are listed
separately and not counted. Images are preprocessed by the serving code
(``pipeline``), so this measures exactly what a job would return.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.classifier import describe, load_classifier, model_crops, scaled_batch
from pipeline.focus_check import blur_effect
from pipeline.images import decode_image
from pipeline.settings import Settings
from pipeline.stain_check import red_cell_signature, stain_signature
from pipeline.views import DihedralTTA, UnsureTTA
from training.data import IMAGE_SUFFIXES, kaggle_source
from training.job_mixes import differential_jobs
from training.metrics import confusion_matrix, macro_f1, per_class_prf, reliability

BATCH = 64


def tta_label(classifier) -> str:
    """How a result's ``backend`` names the views actually read: "" (one view), "+tta" (8), "+tta-where-unsure"
    (8 below the gate); a model without a gate under setting 2 reads one view and is named so."""
    if isinstance(classifier, UnsureTTA):
        return "+tta-where-unsure"
    return "+tta" if isinstance(classifier, DihedralTTA) else ""
_PBC_PREFIX = re.compile(r"^([A-Z]+)_")


def discover(data_dir: Path, classes: tuple[str, ...]) -> tuple[list[tuple[Path, int]], dict[str, int]]:
    index = {c.lower(): i for i, c in enumerate(classes)}
    known, unknown = [], {}
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        label = index.get(folder.name.lower())
        if label is None:
            unknown[folder.name] = len(files)
        else:
            known.extend((f, label) for f in files)
    return known, unknown


def decoded_chunks(paths: list[Path]) -> Iterator[list[np.ndarray]]:
    """The images at ``paths`` decoded as serving decodes them, one model batch (``BATCH``) at a time."""
    for start in range(0, len(paths), BATCH):
        yield [decode_image(p.read_bytes(), 10**9) for p in paths[start : start + BATCH]]


def classify_chunks(classifier, chunks: Iterable[list[np.ndarray]], features_out: list[np.ndarray] | None = None,
                    stains_out: list | None = None, red_cells_out: list | None = None,
                    focus_out: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Serving-path probabilities, whether the recipe found a white cell, and domain scores (None without a domain model)
    for decoded images given chunk by chunk (one model batch each). ``features_out`` (optional) receives each
    batch's pooled features, for studies of the domain model; ``stains_out`` each image's red-cell stain signature
    (``pipeline.stain_check``; None where not measured or where the model checks no stain), as serving measures it
    on the model crop; ``red_cells_out`` each image's red-cell signature (the stain and the red cells' diameter, for
    models that check it); ``focus_out`` each image's blur effect (``pipeline.focus_check``, for models that check it)."""
    manifest = classifier.manifest
    probs, found, scores = [], [], []
    for images in chunks:
        crops = model_crops(images, manifest)
        stains = [stain_signature(c.pixels) if manifest.checks_stain else None for c in crops]
        if stains_out is not None:
            stains_out.extend(stains)
        if red_cells_out is not None:
            red_cells_out.extend(red_cell_signature(s, c.rbc_diameter_px) if manifest.checks_red_cells else None
                                 for s, c in zip(stains, crops, strict=True))
        if focus_out is not None:
            focus_out.extend(blur_effect(c.pixels) if manifest.checks_focus else None for c in crops)
        batch_probs, features, distances = classifier.scored(scaled_batch(crops), stains)
        probs.append(batch_probs)
        found.extend(c.found for c in crops)
        if features_out is not None and features is not None:
            features_out.append(features)
        if distances is not None:
            scores.append(distances)
    return np.concatenate(probs), np.array(found, bool), np.concatenate(scores) if scores else None


def evaluate(model_dir: str, data_dir: str, backend: str = "litert", tta: int = Settings.tta, ensemble: bool = True) -> dict:
    classifier = load_classifier(model_dir, backend, tta, ensemble=ensemble)
    manifest = classifier.manifest
    samples, unknown = discover(Path(data_dir), manifest.classes)
    if not samples:
        raise SystemExit(f"error: no images of known classes under {data_dir} (known: {', '.join(manifest.classes)})")
    t0 = time.perf_counter()
    stains: list = []
    red_cells: list = []
    focus: list = []
    probs_all, found_all, scores = classify_chunks(classifier, decoded_chunks([p for p, _ in samples]), stains_out=stains,
                                                   red_cells_out=red_cells, focus_out=focus)
    seconds = time.perf_counter() - t0
    y_true = np.array([y for _, y in samples])
    # "no white cell found" is an answer a job gives instead of a class: wrong here
    y_pred = np.where(found_all, probs_all.argmax(axis=1), -1)
    k = len(manifest.classes)
    cm = confusion_matrix(y_true, probs_all.argmax(axis=1), k)  # the model's answers, found or not
    precision, recall, f1, support = per_class_prf(cm)
    ece, bins = reliability(probs_all, y_true)
    result = {
        "model": manifest.label,
        "backend": backend + tta_label(classifier) + ("" if ensemble else "+first-member"),
        "serving": describe(classifier),
        **({"reread": classifier.reread / max(1, classifier.images)} if isinstance(classifier, UnsureTTA) else {}),
        "data": str(data_dir),
        "n_images": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "coverage": float(found_all.mean()),
        "accuracy_on_found": float((y_true == y_pred)[found_all].mean()) if found_all.any() else 0.0,
        "macro_f1": macro_f1(cm),
        "ece": ece,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(manifest.classes) if support[i] > 0 or cm[:, i].sum() > 0},
        "classes": list(manifest.classes),
        "confusion_matrix": cm.tolist(),
        "reliability": bins,
        "unknown_class_folders": unknown,
        "images_per_second": len(y_true) / seconds,
    }
    if scores is not None:
        result["domain"] = domain_summary(classifier.domain, scores, found_all, y_true=y_true, classes=manifest.classes,
                                          stains=stains, red_cells=red_cells, focus=focus)
    per_source = source_accuracy([p for p, _ in samples], y_true == y_pred)
    if per_source:
        result["per_source_cell"] = per_source
    return result


def domain_summary(domain, scores: np.ndarray, found: np.ndarray, job_size: int = 50, jobs: int = 200, seed: int = 0,
                   y_true: np.ndarray | None = None, classes: tuple[str, ...] = (), stains: list | None = None,
                   red_cells: list | None = None, focus: list | None = None) -> dict:
    """How often the domain alarm fires on random ``job_size``-image jobs drawn from this folder, and (given labels)
    on jobs drawn with a normal adult differential's class mix: the folders are balanced, real jobs are not, and
    the alarm's thresholds were set on balanced jobs. With ``stains`` (per image) the stain check takes part, as in
    a report; ``stain_alarm_rate`` is how often it alone fires (``red_cell_alarm_rate``: the red-cell check's;
    ``focus_alarm_rate``: the focus check's, with ``focus``)."""
    rng = np.random.default_rng(seed)
    n = min(job_size, len(scores))
    random = [rng.choice(len(scores), n, replace=False) for _ in range(jobs)]
    out = {"unusual_image_fraction": float((scores > domain.image_threshold).mean()), "job_size": n, "jobs": jobs,
           "alarm_rate": _alarm_rate(domain, scores, found, random, stains, red_cells, focus),
           "image_threshold": domain.image_threshold, "job_threshold": domain.job_threshold}
    mixed = differential_jobs(y_true, classes, jobs=jobs, size=n) if y_true is not None and len(scores) >= job_size else []
    if mixed:
        out["alarm_rate_normal_differential"] = _alarm_rate(domain, scores, found, mixed, stains, red_cells, focus)
    for key, reference, values in (("stain_alarm_rate", domain.stain, stains), ("red_cell_alarm_rate", domain.red_cells, red_cells),
                                   ("focus_alarm_rate", domain.focus, focus or None)):
        if reference is not None and values is not None:  # one pixel check's reason alone, on the same random jobs
            out[key] = sum(reference.reason([values[i] for i in pick]) is not None for pick in random) / len(random)
    return out


def _alarm_rate(domain, scores: np.ndarray, found: np.ndarray, jobs: list[np.ndarray], stains: list | None = None,
                red_cells: list | None = None, focus: list | None = None) -> float:
    from pipeline.domain import SHIFTED, check_job

    fired = sum(check_job(list(scores[pick]), domain, int((~found[pick]).sum()), len(pick),
                          stains=None if stains is None else [stains[i] for i in pick],
                          red_cells=None if not red_cells else [red_cells[i] for i in pick],
                          focus=None if not focus else [focus[i] for i in pick]).status == SHIFTED for pick in jobs)
    return fired / len(jobs)


def source_accuracy(paths: list[Path], correct: np.ndarray) -> dict | None:
    """Accuracy per source photograph where Kaggle names (``_A_B.jpeg``) give it."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for path, ok in zip(paths, correct, strict=True):
        source = kaggle_source(path)
        if source:
            groups[source].append(bool(ok))
    if not groups:
        return None
    accs = {g: float(np.mean(v)) for g, v in sorted(groups.items())}
    return {"n_sources": len(accs), "mean_accuracy_over_sources": float(np.mean(list(accs.values()))),
            "sources_majority_correct": int(sum(a > 0.5 for a in accs.values())), "accuracy_by_source": accs}


def write_plots(result: dict, stem: Path) -> list[Path]:
    """Confusion-matrix and reliability-diagram PNGs next to the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(result["confusion_matrix"])
    keep = [i for i in range(len(cm)) if cm[i].sum() or cm[:, i].sum()]
    names = [result["classes"][i] for i in keep]
    cm = cm[np.ix_(keep, keep)]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if cm[i, j] > cm.max() / 2 else "black")
    cm_path = _finish(plt, fig, ax, ("predicted", "true", f"accuracy {result['accuracy']:.3f}, n={result['n_images']}"),
                      stem.with_name(stem.name + "_confusion.png"))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    bins = result["reliability"]
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.bar([b["confidence"] for b in bins], [b["accuracy"] for b in bins], width=1 / 15, alpha=0.6, edgecolor="k")
    rel_path = _finish(plt, fig, ax, ("confidence", "accuracy", f"reliability, ECE {result['ece']:.3f}"),
                       stem.with_name(stem.name + "_reliability.png"))
    return [cm_path, rel_path]


def _finish(plt, fig, ax, labels: tuple[str, str, str], path: Path) -> Path:
    """Label the axes, save the figure as PNG and free it."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_summary(result: dict) -> None:
    print(f"{result['model']} on {result['data']} ({result['backend']}): n={result['n_images']}")
    print(f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  ECE {result['ece']:.4f}  "
          f"coverage {result['coverage']:.4f}  accuracy on found {result['accuracy_on_found']:.4f}")
    if "domain" in result:
        d = result["domain"]
        print(f"domain: {d['unusual_image_fraction']:.1%} unusual images; "
              f"alarm on {d['alarm_rate']:.1%} of {d['jobs']} random {d['job_size']}-image jobs"
              + (f", {d['alarm_rate_normal_differential']:.1%} of jobs with a normal differential's class mix"
                 if "alarm_rate_normal_differential" in d else ""))
    print(f"{'class':<14}{'precision':>10}{'recall':>8}{'f1':>8}{'n':>6}")
    for name, m in result["per_class"].items():
        print(f"{name:<14}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['support']:>6}")
    if result["unknown_class_folders"]:
        print(f"not counted (classes the model does not know): {result['unknown_class_folders']}")
    if "per_source_cell" in result:
        ps = result["per_source_cell"]
        print(f"source cells: {ps['n_sources']}, mean accuracy over sources {ps['mean_accuracy_over_sources']:.4f}, "
              f"majority-correct {ps['sources_majority_correct']}/{ps['n_sources']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("--model", required=True, help="exported model directory (models/<name>)")
    parser.add_argument("--data", required=True, help="folder with one subfolder per class")
    parser.add_argument("--json", help="write metrics here (plots beside it)")
    parser.add_argument("--backend", choices=("litert", "litert-int8", "keras"), default="litert")
    parser.add_argument("--tta", type=int, nargs="?", const=1, choices=(0, 1, 2),
                        help="as served by default (HEMATOVISION_TTA, else 2): 0 one view, 1 (or no value) the 8 rotations/flips "
                             "of every image, 2 the 8 only where one view is unsure (the manifest's gate; one view for a model "
                             "without one)")
    parser.add_argument("--first-member", action="store_true",
                        help="serve an ensemble model's first network alone (HEMATOVISION_ENSEMBLE=0)")
    args = parser.parse_args(argv)
    result = evaluate(args.model, args.data, args.backend, Settings.from_env().tta if args.tta is None else args.tta, not args.first_member)
    print_summary(result)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        for path in write_plots(result, out.with_suffix("")):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
