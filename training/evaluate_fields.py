"""Evaluate slide-scale analysis on annotated fields (BCCD layout).

``python -m training.evaluate_fields --data ../shared/data/bccd --model MODEL_DIR [--out DIR] [--subset all|even|odd]``

Prints WBC detection recall and precision at IoU >= 0.5 (greedy matching, best
score first), mean localisation error (distance between box centres, px),
localiser time per field on one core, field-level classification accuracy
(labels.csv type vs the type assigned to the field's white cell) for several
crop windows, and writes overlay PNGs (green: annotation, red: detection).
The localiser's defaults were chosen on the even-numbered fields only; the odd
ones are the held-out half.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from pipeline.classifier import load_classifier, prepare_batch
from pipeline.fields import CROP_SCALE, crop_around
from pipeline.localize import Detection, LocaliserConfig, localise
from pipeline.settings import Settings
from pipeline.tiling import iou


def wbc_boxes(xml_path: Path) -> list[Detection]:
    boxes = []
    for obj in ET.parse(xml_path).findall("object"):
        if obj.findtext("name", "").strip() == "WBC":
            b = obj.find("bndbox")
            x0, y0, x1, y1 = (int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append(Detection(x0, y0, x1, y1, 1.0))
    return boxes


def match(dets: list[Detection], truth: list[Detection], threshold: float = 0.5) -> list[tuple[Detection, Detection]]:
    pairs, used = [], set()
    for det in sorted(dets, key=lambda d: -d.score):
        best = max(range(len(truth)), key=lambda j: iou(det, truth[j]), default=None)
        if best is not None and best not in used and iou(det, truth[best]) >= threshold:
            used.add(best)
            pairs.append((det, truth[best]))
    return pairs


def crop_variants(diameter: float) -> dict[str, tuple[int, int]]:
    """Windows compared for classification: the default and other sizes (d = expected cell diameter)."""
    variants = {f"default {CROP_SCALE[0]}x{CROP_SCALE[1]} d": (round(CROP_SCALE[0] * diameter), round(CROP_SCALE[1] * diameter)),
                "kaggle-like 320x240 at d=190": (round(320 / 190 * diameter), round(240 / 190 * diameter))}
    for s in (1.0, 1.68, 2.5):
        variants[f"square {s}x d"] = (round(s * diameter), round(s * diameter))
    return variants


def run(data: Path, model_dir: str, subset: str, out: Path | None, overlays: int) -> dict:
    cv2.setNumThreads(1)  # per-core speed
    config = LocaliserConfig()
    names = sorted(p.stem for p in (data / "JPEGImages").glob("*.jpg"))
    names = {"all": names, "even": names[0::2], "odd": names[1::2]}[subset]
    labels = {}
    with open(data / "labels.csv") as fh:
        for row in csv.DictReader(fh):
            labels[row["image"]] = row["wbc_category"].strip().lower()
    classifier = load_classifier(model_dir, "litert", Settings.from_env().tta)  # the views a field job reads (HEMATOVISION_TTA)
    variants = crop_variants(config.cell_diameter_px)
    tp = fp = fn = 0
    errors, seconds = [], 0.0
    correct = {v: 0 for v in variants}
    correct_gt_centred = 0
    n_classified = 0
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        bgr = cv2.imread(str(data / "JPEGImages" / f"{name}.jpg"))
        truth = wbc_boxes(data / "Annotations" / f"{name}.xml")
        t0 = time.perf_counter()
        dets = localise(bgr, config)
        seconds += time.perf_counter() - t0
        pairs = match(dets, truth)
        tp += len(pairs)
        fp += len(dets) - len(pairs)
        fn += len(truth) - len(pairs)
        errors += [float(np.hypot(d.center[0] - t.center[0], d.center[1] - t.center[1])) for d, t in pairs]
        label = labels.get(name)
        if label and dets:
            chosen = pairs[0][0] if pairs else max(dets, key=lambda d: d.score)
            crops = [crop_around(bgr, chosen, size) for size in variants.values()]
            if truth:
                crops.append(crop_around(bgr, truth[0], variants[next(iter(variants))]))
            probs = classifier.predict(prepare_batch(crops, classifier.manifest))
            predicted = [classifier.manifest.classes[i] for i in probs.argmax(axis=1)]
            for v, p in zip(variants, predicted, strict=False):
                correct[v] += p == label
            correct_gt_centred += bool(truth) and predicted[-1] == label
            n_classified += 1
        if out and k < overlays:
            _overlay(bgr, truth, dets, out / f"{name}_overlay.png")
    result = {
        "fields": len(names), "subset": subset, "wbc_annotated": tp + fn, "detections": tp + fp,
        "recall": tp / max(1, tp + fn), "precision": tp / max(1, tp + fp), "true_positives": tp,
        "false_positives": fp, "false_negatives": fn,
        "mean_localisation_error_px": float(np.mean(errors)) if errors else None,
        "localiser_fields_per_second_one_core": len(names) / seconds,
        "field_classification": {
            "fields_with_label_and_detection": n_classified,
            "accuracy_by_crop": {v: c / max(1, n_classified) for v, c in correct.items()},
            "accuracy_default_crop_centred_on_annotation": correct_gt_centred / max(1, n_classified),
        },
        "model": classifier.manifest.label,
    }
    if out:
        (out / "fields_metrics.json").write_text(json.dumps(result, indent=2))
    return result


def _overlay(bgr: np.ndarray, truth: list[Detection], dets: list[Detection], path: Path) -> None:
    img = bgr.copy()
    for t in truth:
        cv2.rectangle(img, (t.x0, t.y0), (t.x1, t.y1), (0, 200, 0), 3)
    for d in dets:
        cv2.rectangle(img, (d.x0, d.y0), (d.x1, d.y1), (0, 0, 255), 2)
        cv2.putText(img, f"{d.score:.2f}", (d.x0 + 4, d.y0 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
    cv2.imwrite(str(path), img)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_fields", description=__doc__)
    parser.add_argument("--data", required=True, help="folder with JPEGImages/, Annotations/ and labels.csv")
    parser.add_argument("--model", required=True)
    parser.add_argument("--subset", choices=("all", "even", "odd"), default="all")
    parser.add_argument("--out", help="write fields_metrics.json and overlay PNGs here")
    parser.add_argument("--overlays", type=int, default=6)
    args = parser.parse_args(argv)
    r = run(Path(args.data), args.model, args.subset, Path(args.out) if args.out else None, args.overlays)
    print(f"{r['fields']} fields ({r['subset']}), {r['wbc_annotated']} annotated WBC, {r['detections']} detections")
    print(f"recall {r['recall']:.3f}  precision {r['precision']:.3f}  (IoU >= 0.5; TP {r['true_positives']}, FP {r['false_positives']}, "
          f"FN {r['false_negatives']})")
    print(f"mean localisation error {r['mean_localisation_error_px']:.1f} px; "
          f"localiser {r['localiser_fields_per_second_one_core']:.1f} fields/s on one core")
    fc = r["field_classification"]
    print(f"field-level classification ({fc['fields_with_label_and_detection']} fields, model {r['model']}):")
    for v, acc in fc["accuracy_by_crop"].items():
        print(f"  {v:<36} {acc:.3f}")
    print(f"  {'default crop centred on annotation':<36} {fc['accuracy_default_crop_centred_on_annotation']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
