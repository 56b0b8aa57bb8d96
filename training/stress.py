"""Robustness suite: accuracy, macro-F1 and ECE of a model under controlled shifts of held-out images.

``python -m training.stress --model DIR --data DIR [--json OUT] [--plot OUT.png] [--limit N] [--compare DIR2]``

Each image is decoded once, shifted (``training.shifts``: one family at a time,
several strengths, the unshifted baseline first) and then goes through the
serving path of the model under test: ``prepare_cells`` with the model's own
manifest (its preprocessing recipe and input size) and ``load_classifier(model_dir,
backend)``. So the same command measures an old and a new model fairly, on the
same shifted pixels. ``--compare`` runs a second model in the same pass.

The figures are ``training.evaluate``'s, per condition (the baseline row equals
its output on the same images): ``accuracy`` counts an image whose recipe reports
"no white cell found" as wrong, ``coverage`` is the found fraction and
``accuracy_on_found`` the accuracy on the rest; ``macro_f1``, ``ece`` and the
confusion are the model's answers on every image, with the not-found count per class beside them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.classifier import Classifier, load_classifier
from pipeline.classifier import describe as describe_serving
from pipeline.images import ImageRejected, decode_image
from pipeline.settings import Settings
from pipeline.views import UnsureTTA
from training.evaluate import BATCH, classify_chunks, discover, domain_summary, tta_label
from training.metrics import confusion_matrix, macro_f1, per_class_prf, reliability
from training.shifts import FAMILIES, Shift
from training.stress_means import describe

BASELINE = ("baseline", "none")


@dataclass(frozen=True)
class Condition:
    """One row of the suite: a shift family at one strength (no shift for the baseline)."""

    family: str
    strength: str
    shift: Shift | None

    def rng(self, seed: int, image_key: str) -> np.random.Generator:
        """Per-image generator from the condition's and the image's names: the same shift whatever else runs."""
        return np.random.default_rng([seed, zlib.crc32(f"{self.family}/{self.strength}".encode()), zlib.crc32(image_key.encode())])

    def apply(self, images: list[np.ndarray], keys: list[str], seed: int) -> list[np.ndarray]:
        if self.shift is None:
            return images
        return [self.shift(img, self.rng(seed, key)) for img, key in zip(images, keys, strict=True)]


def conditions(families: list[str] | None = None) -> list[Condition]:
    """The unshifted baseline, then every strength of the chosen families (all by default)."""
    chosen = list(FAMILIES) if families is None else families
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown shift families {unknown}; choose from {sorted(FAMILIES)}")
    return [Condition(*BASELINE, None)] + [Condition(f, name, fn) for f in chosen for name, fn in FAMILIES[f]]


def balanced_subsample(samples: list[tuple[Path, int]], limit: int | None, seed: int) -> list[tuple[Path, int]]:
    """At most ``limit`` samples per class, drawn with ``seed``; order: class, then path."""
    if limit is None:
        return list(samples)
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    picked = []
    for label in sorted(by_class):
        members = sorted(by_class[label])
        picked.extend(sorted(random.Random(f"{seed}/{label}").sample(members, min(limit, len(members)))))
    return picked


def classify(classifier: Classifier, images: list[np.ndarray], features_out: list[np.ndarray] | None = None,
             stains_out: list | None = None, red_cells_out: list | None = None,
             focus_out: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Serving-path probabilities, whether the recipe found a white cell, and domain scores (None without a domain model)."""
    return classify_chunks(classifier, (images[start : start + BATCH] for start in range(0, len(images), BATCH)), features_out,
                           stains_out, red_cells_out, focus_out)


def measure(classifier: Classifier, images: list[np.ndarray], y_true: np.ndarray, keep: dict | None = None) -> dict:
    """One model on one condition's images: ``score`` plus, for models with a domain model, how often the alarm fires.

    With ``keep``, the per-image domain scores, found flags, correctness, predicted class and pooled features
    (float16) go there too (for studies of the alarm, ``training.alarm_study``).
    """
    features: list[np.ndarray] | None = [] if keep is not None else None
    stains: list = []
    red_cells: list = []
    focus: list = []
    probs, found, domain_scores = classify(classifier, images, features, stains, red_cells, focus)
    metrics = score(probs, found, y_true, classifier.manifest.classes)
    if domain_scores is not None:
        metrics["domain"] = domain_summary(classifier.domain, domain_scores, found, y_true=y_true,
                                           classes=classifier.manifest.classes, stains=stains, red_cells=red_cells,
                                           focus=focus)
    if keep is not None:
        keep.update(correct=found & (probs.argmax(axis=1) == y_true), found=found, predicted=probs.argmax(axis=1),
                    ood=domain_scores if domain_scores is not None else np.full(len(found), np.nan),
                    stain=np.array([s if s is not None else (np.nan,) * 3 for s in stains], np.float32).reshape(-1, 3),
                    red_cells=np.array([s if s is not None else (np.nan,) * 4 for s in red_cells], np.float32).reshape(-1, 4),
                    focus=np.array([v if v is not None else np.nan for v in focus], np.float32))
        if features:
            keep["features"] = np.concatenate(features).astype(np.float16)
    return metrics


def score(probs: np.ndarray, found: np.ndarray, y_true: np.ndarray, classes: tuple[str, ...]) -> dict:
    """``training.evaluate``'s figures for one condition, plus recall and confusion per class.

    The confusion (one row per true class present) shows shortcuts such as
    neutrophils read as eosinophils; ``not found`` counts that class's images
    the recipe found no white cell in.
    """
    answers = probs.argmax(axis=1)
    correct = found & (answers == y_true)
    cm = confusion_matrix(y_true, answers, len(classes))
    _, recall, _, support = per_class_prf(cm)
    present = [i for i in range(len(classes)) if support[i] > 0]
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(correct.mean()),
        "macro_f1": macro_f1(cm),
        "ece": reliability(probs, y_true)[0],
        "coverage": float(found.mean()),
        "accuracy_on_found": float(correct[found].mean()) if found.any() else 0.0,
        "recall": {classes[i]: float(recall[i]) for i in present},
        "confusion": {classes[i]: dict(zip(classes, map(int, cm[i]), strict=True)) | {"not found": int((~found & (y_true == i)).sum())}
                      for i in present},
    }


def load_images(samples: list[tuple[Path, int]]) -> tuple[list[np.ndarray], list[str], list[int], list[str]]:
    """Decode every sample once: images, their keys ("class/file"), labels, and the undecodable ones with the reason."""
    images, keys, labels, unreadable = [], [], [], []
    for path, label in samples:
        try:
            images.append(decode_image(path.read_bytes(), 10**9))
        except ImageRejected as exc:
            unreadable.append(f"{path}: {exc}")
            continue
        keys.append(f"{path.parent.name}/{path.name}")
        labels.append(label)
    if not images:
        raise ValueError(f"none of the {len(samples)} images could be decoded: {unreadable[:3]}")
    return images, keys, labels, unreadable


def run(model_dirs: list[str], data_dir: str, backend: str = "litert", limit: int | None = None, seed: int = 0,
        families: list[str] | None = None, log=print, per_image: dict | None = None, tta: int = Settings.tta) -> dict:
    """Every condition for every model; the first model's classes define the labels (``tta``: the 8-view setting).

    ``per_image`` (optional) receives ``"<model index>/<family>/<strength>/<field>"`` -> array for every condition.
    """
    classifiers = [load_classifier(d, backend, tta) for d in model_dirs]
    classes = classifiers[0].manifest.classes
    for clf in classifiers[1:]:
        if clf.manifest.classes != classes:
            raise ValueError(f"{clf.manifest.label} has classes {clf.manifest.classes}, not {classes}: cannot compare")
    todo = conditions(families)
    samples, unknown = discover(Path(data_dir), classes)
    samples = balanced_subsample(samples, limit, seed)
    if not samples:
        raise ValueError(f"no images of known classes under {data_dir} (known: {', '.join(classes)})")
    images, keys, y_true, unreadable = load_images(samples)
    y = np.array(y_true)
    result = {
        "data": str(data_dir), "backend": backend + tta_label(classifiers[0]), "limit_per_class": limit, "seed": seed, "n_images": len(images),
        "images_per_class": {classes[c]: n for c, n in sorted(Counter(y_true).items())},
        "unknown_class_folders": unknown, "unreadable": unreadable,
        "families": {f: [name for name, _ in FAMILIES[f]] for f in (families or FAMILIES)},
        "models": [{"model": clf.manifest.label, "model_dir": str(d), "preprocessing": clf.manifest.preprocessing,
                    "serving": describe_serving(clf), "results": {}}
                   for clf, d in zip(classifiers, model_dirs, strict=True)],
    }
    log(header(result))
    if per_image is not None:
        per_image["keys"] = np.array(keys)  # which image each row is (for studies that split by source photograph)
    for condition in todo:
        t0 = time.perf_counter()
        shifted = condition.apply(images, keys, seed)
        for index, (clf, out) in enumerate(zip(classifiers, result["models"], strict=True)):
            kept: dict | None = {} if per_image is not None else None
            before = (clf.images, clf.reread) if isinstance(clf, UnsureTTA) else None
            metrics = measure(clf, shifted, y, kept)
            if before is not None:  # what the gate cost under this shift: the share of images re-read in 8 views
                metrics["reread"] = (clf.reread - before[1]) / max(1, clf.images - before[0])
            if per_image is not None and kept:
                per_image.update({f"{index}/{condition.family}/{condition.strength}/{k}": v for k, v in kept.items()})
            out["results"].setdefault(condition.family, {})[condition.strength] = metrics
        log(format_row(condition.family, condition.strength, [m["results"][condition.family][condition.strength] for m in result["models"]])
            + f"  {time.perf_counter() - t0:5.1f}s")
    return result


#: per model and condition; "alarm": share of random 50-image jobs the domain check calls shifted
COLUMNS = ("accuracy", "macro-F1", "ECE", "coverage", "alarm")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _cells(metrics: dict) -> list[str]:
    alarm = _pct(metrics["domain"]["alarm_rate"]) if "domain" in metrics else "-"
    return [_pct(metrics["accuracy"]), f"{metrics['macro_f1']:.3f}", _pct(metrics["ece"]), _pct(metrics["coverage"]), alarm]


def format_row(family: str, strength: str, metrics: list[dict]) -> str:
    return f"{family:<16}{strength:<13}" + " | ".join(" ".join(f"{c:>8}" for c in _cells(m)) for m in metrics)


def header(result: dict) -> str:
    width = 9 * len(COLUMNS) - 1
    models = " | ".join(f"{m['model'][:width]:<{width}}" for m in result["models"])
    columns = " | ".join(" ".join(f"{c:>8}" for c in COLUMNS) for _ in result["models"])
    return f"{'':<29}{models}\n{'family':<16}{'strength':<13}{columns}"


def markdown_table(result: dict) -> str:
    """The model card's table: one row per condition, the ``COLUMNS`` of each model."""
    models = result["models"]
    head = "| shift | strength | " + " | ".join(f"{m['model']}: " + " | ".join(COLUMNS) for m in models) + " |"
    lines = [head, "|---|---|" + "---:|" * (len(COLUMNS) * len(models))]
    for family, strengths in models[0]["results"].items():
        for strength in strengths:
            cells = [c for m in models for c in _cells(m["results"][family][strength])]
            lines.append(f"| {family} | {strength} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_plot(result: dict, path: Path) -> Path:
    """Accuracy vs strength, one panel per family, one line per model, baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(result["families"])
    cols = 4
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), sharey=True, squeeze=False)
    for ax, family in zip(axes.flat, families, strict=False):
        strengths = result["families"][family]
        for i, model in enumerate(result["models"]):
            colour = f"C{i}"
            ax.plot(range(len(strengths)), [model["results"][family][s]["accuracy"] for s in strengths], "o-", color=colour,
                    label=f"{model['model']} ({Path(model['model_dir']).name})")
            ax.axhline(model["results"][BASELINE[0]][BASELINE[1]]["accuracy"], color=colour, ls="--", lw=1)
        ax.set_title(family, fontsize=10)
        ax.set_xticks(range(len(strengths)), strengths, rotation=30, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(f"accuracy under shift (dashed: unshifted), {result['data']}, n={result['n_images']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported model directory (models/<name>)")
    parser.add_argument("--data", required=True, help="folder with one subfolder per class (held-out images)")
    parser.add_argument("--compare", help="a second model directory, run on the same shifted images")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--plot", help="write accuracy vs strength here (PNG)")
    parser.add_argument("--markdown", help="write the table here (Markdown, for the model card)")
    parser.add_argument("--scores", help="write per-image domain scores, correctness and features per condition here (.npz)")
    parser.add_argument("--limit", type=int, help="at most N images per class (balanced, seeded subsample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", help=f"comma-separated subset of: {', '.join(FAMILIES)}")
    parser.add_argument("--backend", choices=("litert", "litert-int8", "keras"), default="litert")
    parser.add_argument("--tta", type=int, nargs="?", const=1, choices=(0, 1, 2),
                        help="as served by default (HEMATOVISION_TTA, else 2): 0 one view, 1 (or no value) 8 views of every "
                             "image, 2 the 8 only where one view is unsure")
    args = parser.parse_args(argv)
    families = args.families.split(",") if args.families else None
    models = [args.model] + ([args.compare] if args.compare else [])
    per_image: dict | None = {} if args.scores else None
    try:
        result = run(models, args.data, args.backend, args.limit, args.seed, families, lambda line: print(line, flush=True),
                     per_image, Settings.from_env().tta if args.tta is None else args.tta)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result['n_images']} images {result['images_per_class']}; not counted: {result['unknown_class_folders'] or 'none'}")
    print(f"mean accuracy under shift (training.stress_means): {describe(result)}")
    outputs = [(args.json, lambda path: path.write_text(json.dumps(result, indent=2))),
               (args.markdown, lambda path: path.write_text(markdown_table(result))),
               (args.plot, lambda path: write_plot(result, path)),
               (args.scores, lambda path: np.savez_compressed(path, **per_image))]
    for target, write in outputs:
        if target:
            out = Path(target)
            out.parent.mkdir(parents=True, exist_ok=True)
            write(out)
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
