"""Distance-aware temperature: fit it, test it on held-out data, write it into a model.

Why: the shipped temperature is one number fitted on in-domain validation
images, so on another laboratory's slides the model stays as sure of itself
as at home (leave-one-laboratory-out ECE 15-22 %, target <= 8 %). The domain
alarm already measures, per image, how far the features lie from the training
data. ``pipeline.classifier.DistanceTemperature`` raises the temperature with
that distance beyond an in-domain reference; this module fits its two numbers
(reference quantile and power) by negative log-likelihood on validation images
*and their robustness-suite shifts* (``training.shifts``, 41 conditions), never
on the test split, with in-domain validation ECE kept <= 3 %.

How it is checked before shipping (the rule is written in the model card):

``python -m training.distance_temperature --lolo-root runs/lolo_habits --limit 50 --json OUT``
    each leave-one-laboratory-out model gets a rule fitted on its *own*
    laboratory's validation images and shifts; scored on the unseen
    laboratory's validation images (ECE and NLL, constant vs per-image T).

``python -m training.distance_temperature --model DIR --data SPLIT [SPLIT ...] --limit 100 [--write --version V] --json OUT``
    fits the rule for a model on its validation folders; reports held-out
    halves (fit on one half of the images, score the other half's shifted
    copies, both ways round); ``--write`` stores it in ``manifest.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from pipeline.classifier import Classifier, DistanceTemperature, calibrated_softmax, load_classifier
from training.evaluate import BATCH, discover
from training.metrics import reliability
from training.stress import balanced_subsample, conditions, load_images

#: reference distances tried: these quantiles of the clean validation images' distances
REFERENCE_QUANTILES = (0.5, 0.75, 0.9, 0.95)
#: powers tried (0 = the constant temperature)
POWERS = np.round(np.arange(0.0, 6.01, 0.1), 2)
#: clean in-domain validation ECE the rule may not exceed (the project's in-domain target)
IN_DOMAIN_ECE_LIMIT = 0.03


def collect(classifier: Classifier, data_dir: str, limit: int | None, seed: int = 0,
            families: list[str] | None = None, log=print) -> dict[str, np.ndarray]:
    """Logits, domain distances, labels, condition index (0 = unshifted) and image index for every condition."""
    from pipeline.classifier import prepare_cells

    manifest = classifier.manifest
    if classifier.domain is None:
        raise ValueError(f"{manifest.label} has no domain model: a distance-aware temperature needs one")
    samples, _ = discover(Path(data_dir), manifest.classes)
    samples = balanced_subsample(samples, limit, seed)
    images, keys, labels, _ = load_images(samples)
    rows: dict[str, list[np.ndarray]] = {"logits": [], "distance": [], "y": [], "condition": [], "image": []}
    names = []
    for index, condition in enumerate(conditions(families)):
        t0 = time.perf_counter()
        shifted = condition.apply(images, keys, seed)
        for start in range(0, len(shifted), BATCH):
            batch, _ = prepare_cells(shifted[start : start + BATCH], manifest)
            logits, features = classifier.outputs(batch)
            rows["logits"].append(logits)
            rows["distance"].append(classifier.domain.score(features))
        rows["y"].append(np.array(labels))
        rows["condition"].append(np.full(len(images), index))
        rows["image"].append(np.arange(len(images)))
        names.append(f"{condition.family}/{condition.strength}")
        log(f"  {Path(data_dir).name} {names[-1]:<26} {time.perf_counter() - t0:5.1f}s")
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out["names"] = np.array(names)
    out["keys"] = np.array(keys)
    return out


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def _probs(logits: np.ndarray, distances: np.ndarray, base: float, rule: DistanceTemperature | None) -> np.ndarray:
    return calibrated_softmax(logits, base if rule is None else rule.temperatures(base, distances))


def fit_rule(data: list[dict[str, np.ndarray]], base: float, mask: list[np.ndarray] | None = None) -> DistanceTemperature:
    """The (reference, power) with the lowest NLL over every row of ``data`` (one dict per laboratory) whose clean
    rows keep ECE <= 3 % in every laboratory (or, where the constant temperature already exceeds it, no worse).

    ``mask`` (optional, per laboratory) chooses the rows (images) to fit on, for held-out halves.
    """
    mask = mask or [np.ones(len(d["y"]), bool) for d in data]
    logits = np.concatenate([d["logits"][m] for d, m in zip(data, mask, strict=True)])
    distances = np.concatenate([d["distance"][m] for d, m in zip(data, mask, strict=True)])
    y = np.concatenate([d["y"][m] for d, m in zip(data, mask, strict=True)])
    clean = [(d["logits"][m & (d["condition"] == 0)], d["distance"][m & (d["condition"] == 0)], d["y"][m & (d["condition"] == 0)])
             for d, m in zip(data, mask, strict=True)]
    limits = [max(IN_DOMAIN_ECE_LIMIT, reliability(_probs(lg, ds, base, None), yy)[0]) for lg, ds, yy in clean]
    pooled_clean = np.concatenate([ds for _, ds, _ in clean])
    best: tuple[float, DistanceTemperature] | None = None
    for q in REFERENCE_QUANTILES:
        reference = float(np.quantile(pooled_clean, q))
        for power in POWERS:
            rule = DistanceTemperature(round(reference, 4), float(power))
            if any(reliability(_probs(lg, ds, base, rule), yy)[0] > lim for (lg, ds, yy), lim in zip(clean, limits, strict=True)):
                continue
            loss = _nll(_probs(logits, distances, base, rule), y)
            if best is None or loss < best[0] - 1e-9:
                best = (loss, rule)
    assert best is not None  # power 0 is the constant temperature, which always passes
    return best[1]


def score(d: dict[str, np.ndarray], base: float, rule: DistanceTemperature | None, rows: np.ndarray | None = None) -> dict:
    """ECE and NLL per condition (constant temperature when ``rule`` is None), and their means over shifted ones."""
    rows = np.ones(len(d["y"]), bool) if rows is None else rows
    per = {}
    for index, name in enumerate(d["names"]):
        sel = rows & (d["condition"] == index)
        if not sel.any():
            continue
        probs = _probs(d["logits"][sel], d["distance"][sel], base, rule)
        per[str(name)] = {"ece": reliability(probs, d["y"][sel])[0], "nll": _nll(probs, d["y"][sel]),
                          "accuracy": float((probs.argmax(axis=1) == d["y"][sel]).mean())}
    shifted = [v for k, v in per.items() if not k.startswith("baseline/")]
    return {"clean_ece": per["baseline/none"]["ece"], "clean_nll": per["baseline/none"]["nll"],
            "shifted_mean_ece": float(np.mean([v["ece"] for v in shifted])) if shifted else None,
            "shifted_worst_ece": float(np.max([v["ece"] for v in shifted])) if shifted else None,
            "shifted_mean_nll": float(np.mean([v["nll"] for v in shifted])) if shifted else None,
            "conditions": per}


def halves(d: dict[str, np.ndarray], which: int) -> np.ndarray:
    """Rows whose image falls in half ``which`` (by a hash of the image's file name, the same in every condition)."""
    parity = np.array([zlib.crc32(str(k).encode()) % 2 for k in d["keys"]])
    return parity[d["image"]] == which


def held_out_halves(data: list[dict[str, np.ndarray]], base: float) -> list[dict]:
    """Fit on one half of every laboratory's images (all conditions), score the other half; both ways round."""
    out = []
    for which in (0, 1):
        rule = fit_rule(data, base, [halves(d, which) for d in data])
        row = {"fit_on_half": which, "rule": rule.__dict__, "labs": {}}
        for d in data:
            other = halves(d, 1 - which)
            row["labs"][d["lab"]] = {"constant": _brief(score(d, base, None, other)), "distance": _brief(score(d, base, rule, other))}
        out.append(row)
    return out


def _brief(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "conditions"}


def study_model(model_dir: str, data_dirs: list[str], limit: int | None, families: list[str] | None = None,
                log=print) -> tuple[DistanceTemperature, dict]:
    """Collect, fit on everything, and report held-out halves and the full fit's per-condition figures."""
    classifier = load_classifier(model_dir, "litert")
    base = classifier.manifest.temperature
    data = []
    for folder in data_dirs:
        d = collect(classifier, folder, limit, families=families, log=log)
        d["lab"] = Path(folder).name
        data.append(d)
    rule = fit_rule(data, base)
    result = {"model": classifier.manifest.label, "temperature": base, "rule": rule.__dict__, "limit_per_class": limit,
              "held_out_halves": held_out_halves(data, base),
              "labs": {d["lab"]: {"constant": score(d, base, None), "distance": score(d, base, rule)} for d in data}}
    return rule, result


def study_lolo(root: Path, limit: int | None, families: list[str] | None = None, log=print) -> dict:
    """Each LOLO model: rule fitted on its own laboratory's validation images and shifts, scored on the other's."""
    folders = {"pbc": root / "splits" / "splits" / "pbc_val", "kaggle": root / "splits" / "splits" / "kaggle_val",
               "pbc4": root / "splits" / "pbc_val_kaggle_classes"}
    out = {}
    for own, other in (("pbc", "kaggle"), ("kaggle", "pbc4")):
        model_dir = root / "export" / f"lolo_{own}"
        rule, own_result = study_model(str(model_dir), [str(folders[own])], limit, families, log=log)
        classifier = load_classifier(model_dir, "litert")
        unseen = collect(classifier, str(folders[other]), None, families=[], log=log)
        base = classifier.manifest.temperature
        out[f"{own}->{other}"] = {
            "rule": rule.__dict__, "temperature": base,
            "own_lab": {k: _brief(v) for k, v in own_result["labs"][folders[own].name].items()},
            "unseen_lab": {"constant": _brief(score(unseen, base, None)), "distance": _brief(score(unseen, base, rule)),
                           "accuracy": float((unseen["logits"].argmax(axis=1) == unseen["y"]).mean())},
        }
    return out


def write_rule(model_dir: str, rule: DistanceTemperature, version: str, evidence: dict) -> None:
    """Store the rule in ``manifest.json`` (the network and files are unchanged, so every sha256 stays valid)."""
    path = Path(model_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = version
    manifest["temperature_distance"] = {"reference": rule.reference, "power": rule.power,
                                        "fitted_by": "python -m training.distance_temperature", **evidence}
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.distance_temperature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lolo-root", help="a training.lolo --root folder: the leave-one-laboratory-out check")
    parser.add_argument("--model", help="fit for this model on --data (validation folders)")
    parser.add_argument("--data", nargs="+", default=[])
    parser.add_argument("--limit", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--families", nargs="+", help="shift families to fit on (default: all of training.shifts)")
    parser.add_argument("--write", action="store_true", help="store the fitted rule in the model's manifest")
    parser.add_argument("--version", help="with --write: the model's new version")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if bool(args.lolo_root) == bool(args.model):
        parser.error("give either --lolo-root or --model with --data")
    if args.lolo_root:
        result = study_lolo(Path(args.lolo_root), args.limit, args.families)
        for name, row in result.items():
            u = row["unseen_lab"]
            print(f"{name:<14} rule {row['rule']}  unseen-lab ECE {u['constant']['clean_ece']:.3f} -> {u['distance']['clean_ece']:.3f}"
                  f"  NLL {u['constant']['clean_nll']:.3f} -> {u['distance']['clean_nll']:.3f}"
                  f"  own-lab clean ECE {row['own_lab']['distance']['clean_ece']:.3f}")
    else:
        if not args.data:
            parser.error("--model needs --data")
        if args.write and not args.version:
            parser.error("--write needs --version")
        rule, result = study_model(args.model, args.data, args.limit, args.families)
        print(f"rule: reference {rule.reference}, power {rule.power}")
        for lab, row in result["labs"].items():
            c, d = row["constant"], row["distance"]
            print(f"{lab:<12} clean ECE {c['clean_ece']:.3f} -> {d['clean_ece']:.3f}; shifted mean ECE "
                  f"{c['shifted_mean_ece']:.3f} -> {d['shifted_mean_ece']:.3f} (worst {c['shifted_worst_ece']:.3f} -> {d['shifted_worst_ece']:.3f})")
        for half in result["held_out_halves"]:
            for lab, row in half["labs"].items():
                print(f"half {half['fit_on_half']} -> other, {lab:<12} shifted mean ECE {row['constant']['shifted_mean_ece']:.3f} -> "
                      f"{row['distance']['shifted_mean_ece']:.3f}; clean {row['constant']['clean_ece']:.3f} -> {row['distance']['clean_ece']:.3f}")
        if args.write:
            write_rule(args.model, rule, args.version, {"limit_per_class": args.limit, "data": [Path(d).name for d in args.data]})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
