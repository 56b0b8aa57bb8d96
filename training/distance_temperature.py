"""Distance-aware temperature: choose it by leave-one-laboratory-out, test it, write it into a model.

Why: the shipped temperature is one number fitted on in-domain validation
images, so on another laboratory's slides the model stays as sure of itself
as at home (leave-one-laboratory-out ECE 10-38 %, target <= 8 %). The domain
alarm already measures, per image, how far the features lie from the training
data. ``pipeline.temperature.DistanceTemperature`` raises the temperature with
that distance beyond an in-domain reference; this module chooses its two
numbers (reference quantile and power), never on the test split, with
in-domain validation ECE kept <= 3 %.

What was learnt (model card, "Calibration under shift"): fitted on validation
images and their robustness-suite shifts (``training.shifts``) the rule stays
flat, because the strongly augmented model is already calibrated under those
shifts; fitted on real cross-laboratory shift, the unseen laboratory of a
leave-one-laboratory-out model, it transfers to the other model's unseen
laboratory. The shipped rule is therefore shaped by leave-one-laboratory-out:

``python -m training.distance_temperature --lolo-root runs/lolo --limit 100 --json OUT``
    per LOLO model: the synthetic-shift fit scored on the unseen laboratory,
    then the cross-fit (shape from one model's unseen laboratory, scored on
    the other's) and the shape fitted on both; keeps the collected logits in
    ``runs/lolo/dt_*.npz``.

``python -m training.distance_temperature --model DIR --data KAGGLE_VAL PBC_VAL --shape-from-lolo runs/lolo [--write --version V] --json OUT``
    the shape fitted on both LOLO models, among those keeping DIR's clean
    validation ECE <= 3 % in each laboratory; reports the robustness-suite
    ECE with it; ``--write`` stores it in ``manifest.json``. Without
    ``--shape-from-lolo`` (or ``--shape Q P``) it fits on the synthetic
    shifts and reports held-out halves, the study that came first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.classifier import Classifier, load_classifier
from pipeline.temperature import DistanceTemperature, StainTemperature
from training.evaluate import BATCH, discover
from training.stress import balanced_subsample, conditions, load_images
from training.temperature_shape import brief, clean_rows, ece_limit, ece_of, fit_rule, fit_shape, held_out_halves, lolo_rule, score, shaped_rule


def collect(classifier: Classifier, data_dir: str, limit: int | None, seed: int = 0,
            families: list[str] | None = None, log=print) -> dict[str, np.ndarray]:
    """Logits, domain distances, labels, condition index (0 = unshifted), image index and red-cell stain
    signature (``pipeline.stain_check``; NaN rows where not measured) for every condition."""
    from pipeline.classifier import model_crops, scaled_batch
    from pipeline.stain_check import stain_signature

    manifest = classifier.manifest
    if classifier.domain is None:
        raise ValueError(f"{manifest.label} has no domain model: a distance-aware temperature needs one")
    samples, _ = discover(Path(data_dir), manifest.classes)
    samples = balanced_subsample(samples, limit, seed)
    images, keys, labels, _ = load_images(samples)
    rows: dict[str, list[np.ndarray]] = {"logits": [], "distance": [], "y": [], "condition": [], "image": [], "stain": []}
    names = []
    for index, condition in enumerate(conditions(families)):
        t0 = time.perf_counter()
        shifted = condition.apply(images, keys, seed)
        for start in range(0, len(shifted), BATCH):
            crops = model_crops(shifted[start : start + BATCH], manifest)
            logits, features = classifier.outputs(scaled_batch(crops))
            rows["stain"].append(np.array([stain_signature(c.pixels) or (np.nan,) * 3 for c in crops], np.float64))
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


def study_model(model_dir: str, data_dirs: list[str], limit: int | None, families: list[str] | None = None,
                log=print, cache: Path | None = None,
                shape: tuple[float, float] | None = None,
                given: DistanceTemperature | None = None) -> tuple[DistanceTemperature, dict, list[dict[str, np.ndarray]]]:
    """Collect (or read ``cache``), fit on everything, and report held-out halves and the full fit's figures."""
    classifier = load_classifier(model_dir, "litert")
    base = classifier.manifest.temperature
    data = [collect_cached(classifier, folder, limit, families, log, cache and cache.with_name(f"{cache.stem}_{i}.npz"))
            for i, folder in enumerate(data_dirs)]
    rule = given or (fit_rule(data, base) if shape is None else shaped_rule(data, *shape))
    result = {"model": classifier.manifest.label, "temperature": base, "rule": rule.__dict__, "limit_per_class": limit,
              "held_out_halves": held_out_halves(data, base) if shape is None and given is None else "not run: the shape was given",
              "labs": {d["lab"]: {"constant": score(d, base, None), "distance": score(d, base, rule)} for d in data}}
    return rule, result, data


def collect_cached(classifier: Classifier, folder: str, limit: int | None, families: list[str] | None, log,
                   cache: Path | None) -> dict[str, np.ndarray]:
    """``collect``, kept in ``cache`` (``.npz``) when given: the studies re-read instead of re-running the model."""
    if cache is not None and cache.is_file():
        return _read_cache(cache)
    d = collect(classifier, folder, limit, families=families, log=log)
    if cache is not None:
        np.savez_compressed(cache, **d, lab=np.array(Path(folder).name))
    return {**d, "lab": Path(folder).name}


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    d = dict(np.load(path))
    d["lab"] = str(d["lab"])
    return d


def study_lolo(root: Path, limit: int | None, families: list[str] | None = None, log=print,
               given_shape: tuple[float, float] | None = None) -> dict:
    """Each LOLO model: a rule fitted on its own laboratory's validation images and their synthetic shifts,
    scored on the other laboratory's; then the cross-fit: the shape fitted on one model's unseen laboratory,
    scored on the other model's (the check that a shape chosen on real laboratory shifts transfers).

    ``given_shape`` (quantile, power), e.g. the shipped model's: also scored on each unseen laboratory, its
    reference the quantile of that model's own clean distances, and compared with the cross-fit (rule P)."""
    folders = {"pbc": root / "splits" / "splits" / "pbc_val", "kaggle": root / "splits" / "splits" / "kaggle_val",
               "pbc4": root / "splits" / "pbc_val_kaggle_classes"}
    out: dict = {}
    pairs = {}
    for own, other in (("pbc", "kaggle"), ("kaggle", "pbc4")):
        model_dir = root / "export" / f"lolo_{own}"
        rule, own_result, own_data = study_model(str(model_dir), [str(folders[own])], limit, families, log=log,
                                                 cache=root / f"dt_{own}_own.npz")
        classifier = load_classifier(model_dir, "litert")
        unseen = collect_cached(classifier, str(folders[other]), None, [], log, root / f"dt_{own}_unseen.npz")
        base = classifier.manifest.temperature
        pairs[own] = (unseen, clean_rows(own_data[0]), base)
        out[f"{own}->{other}"] = {
            "rule": rule.__dict__, "temperature": base,
            "own_lab": {k: brief(v) for k, v in own_result["labs"][own_data[0]["lab"]].items()},
            "unseen_lab": {"constant": brief(score(unseen, base, None)), "distance": brief(score(unseen, base, rule)),
                           "accuracy": float((unseen["logits"].argmax(axis=1) == unseen["y"]).mean())},
        }
    for fit_on, apply_to in (("pbc", "kaggle"), ("kaggle", "pbc")):
        q, power = fit_shape([pairs[fit_on]])
        unseen, own, base = pairs[apply_to]
        rule = lolo_rule(own, q, power)
        name = next(k for k in out if k.startswith(apply_to + "->"))
        out[name]["cross_fit"] = {"shape_from": fit_on, "quantile": q, "power": power, "rule": rule.__dict__,
                                  "unseen_lab": brief(score(unseen, base, rule)), "own_lab": brief(score(own, base, rule))}
    if given_shape is not None:
        for own, (unseen, own_clean, base) in pairs.items():
            name = next(k for k in out if k.startswith(own + "->"))
            rule = lolo_rule(own_clean, *given_shape)
            out[name]["given_shape"] = {"quantile": given_shape[0], "power": given_shape[1], "rule": rule.__dict__,
                                        "unseen_lab": brief(score(unseen, base, rule)), "own_lab": brief(score(own_clean, base, rule))}
        out["cross_fit_against_given"] = cross_fit_verdict(out)
    q, power = fit_shape(list(pairs.values()))
    out["shape_from_both"] = {"quantile": q, "power": power}
    return out


def cross_fit_verdict(lolo: dict) -> dict:
    """Rule P (a): the cross-fitted shape beats the given one on every unseen laboratory: lower ECE, NLL not higher."""
    rows = {name: row for name, row in lolo.items() if "given_shape" in row}
    per = {name: {"ece_given": row["given_shape"]["unseen_lab"]["clean_ece"], "ece_cross_fit": row["cross_fit"]["unseen_lab"]["clean_ece"],
                  "nll_given": row["given_shape"]["unseen_lab"]["clean_nll"], "nll_cross_fit": row["cross_fit"]["unseen_lab"]["clean_nll"]}
           for name, row in rows.items()}
    holds = bool(per) and all(r["ece_cross_fit"] < r["ece_given"] and r["nll_cross_fit"] <= r["nll_given"] for r in per.values())
    return {"directions": per, "holds": holds}


def lolo_pairs(root: Path) -> dict[str, tuple[dict, dict, float]]:
    """The leave-one-laboratory-out models' collected data (written by ``--lolo-root``), keyed by training lab."""
    pairs = {}
    for own in ("pbc", "kaggle"):
        paths = [root / f"dt_{own}_unseen.npz", root / f"dt_{own}_own_0.npz"]
        if not all(p.is_file() for p in paths):
            raise FileNotFoundError(f"{paths[0]} missing: run python -m training.distance_temperature --lolo-root {root} first")
        unseen, own_data = (_read_cache(p) for p in paths)
        manifest = json.loads((root / "export" / f"lolo_{own}" / "manifest.json").read_text())
        base = (manifest.get("ensemble") or {}).get("temperature", manifest["temperature"])  # a pair's (training.lolo_pair)
        pairs[own] = (unseen, clean_rows(own_data), float(base))
    return pairs


def shape_for_model(model_dir: str, data_dirs: list[str], lolo_root: Path, log=print) -> tuple[tuple[float, float], dict]:
    """The LOLO-chosen shape, restricted to those keeping this model's clean validation ECE <= 3 % in each laboratory
    (every validation image of ``data_dirs``), as the shipped temperature is kept within the in-domain target."""
    classifier = load_classifier(model_dir, "litert")
    base = classifier.manifest.temperature
    clean = [collect_cached(classifier, folder, None, [], log, None) for folder in data_dirs]
    limits = [ece_limit(d, base) for d in clean]

    def allowed(q: float, power: float) -> bool:
        rule = shaped_rule(clean, q, power)
        return all(ece_of(d, base, rule) <= lim for d, lim in zip(clean, limits, strict=True))

    pairs = lolo_pairs(lolo_root)
    free = fit_shape(list(pairs.values()))
    q, power = fit_shape(list(pairs.values()), allowed)
    rule = shaped_rule(clean, q, power)
    report = {"shape_unconstrained": {"quantile": free[0], "power": free[1]}, "shape": {"quantile": q, "power": power},
              "rule": rule.__dict__,
              "validation_clean": {d["lab"]: {"images": int(len(d["y"])), "ece_constant": ece_of(d, base, None), "ece_rule": ece_of(d, base, rule)}
                                   for d in clean},
              "lolo_unseen_with_shape": {}}
    for own, (unseen, own_clean, lolo_base) in pairs.items():
        applied = lolo_rule(own_clean, q, power)
        report["lolo_unseen_with_shape"][own] = {"constant": ece_of(unseen, lolo_base, None), "rule": ece_of(unseen, lolo_base, applied),
                                                 "own_clean_rule": ece_of(own_clean, lolo_base, applied)}
    return (q, power), report


def write_rule(model_dir: str, rule: DistanceTemperature, version: str, evidence: dict) -> None:
    """Store the rule in ``manifest.json`` (the network and files are unchanged, so every sha256 stays valid)."""
    write_manifest_rule(model_dir, "temperature_distance", rule, version, "python -m training.distance_temperature", evidence)


def write_manifest_rule(model_dir: str, key: str, rule: DistanceTemperature | StainTemperature, version: str,
                        fitted_by: str, evidence: dict) -> None:
    """A temperature rule (reference and power) under ``key`` of ``manifest.json``, with the model's new version."""
    path = Path(model_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"] = version
    manifest[key] = {"reference": rule.reference, "power": rule.power, "fitted_by": fitted_by, **evidence}
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.distance_temperature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lolo-root", help="a training.lolo --root folder: the leave-one-laboratory-out check")
    parser.add_argument("--model", help="fit for this model on --data (validation folders)")
    parser.add_argument("--data", nargs="+", default=[])
    parser.add_argument("--limit", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--families", nargs="+", help="shift families to fit on (default: all of training.shifts)")
    parser.add_argument("--shape", nargs=2, type=float, metavar=("QUANTILE", "POWER"),
                        help="use this shape (from --lolo-root's shape_from_both) instead of fitting on --data; with "
                             "--lolo-root, also score it on each unseen laboratory against the cross-fit (rule P)")
    parser.add_argument("--shape-from-lolo", metavar="ROOT",
                        help="choose the shape on the leave-one-laboratory-out data collected under ROOT (by --lolo-root), "
                             "within this model's in-domain ECE limit on --data")
    parser.add_argument("--cache", help="keep the collected logits and distances here (.npz stem) and re-read them")
    parser.add_argument("--write", action="store_true", help="store the fitted rule in the model's manifest")
    parser.add_argument("--version", help="with --write: the model's new version")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if bool(args.lolo_root) == bool(args.model):
        parser.error("give either --lolo-root or --model with --data")
    if args.lolo_root:
        result = study_lolo(Path(args.lolo_root), args.limit, args.families,
                            given_shape=tuple(args.shape) if args.shape else None)
        for name, row in result.items():
            if name == "shape_from_both":
                print(f"shape fitted on both unseen laboratories: quantile {row['quantile']}, power {row['power']}")
                continue
            if name == "cross_fit_against_given":
                print(f"cross-fit against the given shape (lower unseen ECE, NLL not higher, every direction): "
                      f"{'held' if row['holds'] else 'FAILED'}")
                continue
            u = row["unseen_lab"]
            print(f"{name:<14} rule {row['rule']}  unseen-lab ECE {u['constant']['clean_ece']:.3f} -> {u['distance']['clean_ece']:.3f}"
                  f"  NLL {u['constant']['clean_nll']:.3f} -> {u['distance']['clean_nll']:.3f}"
                  f"  own-lab clean ECE {row['own_lab']['distance']['clean_ece']:.3f}")
            c = row["cross_fit"]
            print(f"{'':<14} cross-fit (shape from {c['shape_from']}: q {c['quantile']}, power {c['power']}): unseen-lab ECE "
                  f"{c['unseen_lab']['clean_ece']:.3f}, NLL {c['unseen_lab']['clean_nll']:.3f}; own-lab clean ECE {c['own_lab']['clean_ece']:.3f}")
            if "given_shape" in row:
                g = row["given_shape"]
                print(f"{'':<14} given shape (q {g['quantile']}, power {g['power']}): unseen-lab ECE {g['unseen_lab']['clean_ece']:.3f}, "
                      f"NLL {g['unseen_lab']['clean_nll']:.3f}; own-lab clean ECE {g['own_lab']['clean_ece']:.3f}")
    else:
        if not args.data:
            parser.error("--model needs --data")
        if args.write and not args.version:
            parser.error("--write needs --version")
        shape_report, given = None, None
        if args.shape_from_lolo:
            shape, shape_report = shape_for_model(args.model, args.data, Path(args.shape_from_lolo))
            args.shape = list(shape)
            given = DistanceTemperature(**shape_report["rule"])  # reference from every validation image
            print(f"shape from leave-one-laboratory-out: {json.dumps(shape_report, default=float)}")
        rule, result, _ = study_model(args.model, args.data, args.limit, args.families,
                                      cache=Path(args.cache) if args.cache else None,
                                      shape=tuple(args.shape) if args.shape else None, given=given)
        print(f"rule: reference {rule.reference}, power {rule.power}")
        for lab, row in result["labs"].items():
            c, d = row["constant"], row["distance"]
            print(f"{lab:<12} clean ECE {c['clean_ece']:.3f} -> {d['clean_ece']:.3f}; shifted mean ECE "
                  f"{c['shifted_mean_ece']:.3f} -> {d['shifted_mean_ece']:.3f} (worst {c['shifted_worst_ece']:.3f} -> {d['shifted_worst_ece']:.3f})")
        if shape_report:
            result["shape_from_lolo"] = shape_report
        for half in (result["held_out_halves"] if args.shape is None else []):
            for lab, row in half["labs"].items():
                print(f"half {half['fit_on_half']} -> other, {lab:<12} shifted mean ECE {row['constant']['shifted_mean_ece']:.3f} -> "
                      f"{row['distance']['shifted_mean_ece']:.3f}; clean {row['constant']['clean_ece']:.3f} -> {row['distance']['clean_ece']:.3f}")
        if args.write:
            evidence = {"limit_per_class": args.limit, "data": [Path(d).name for d in args.data]}
            if args.shape:
                evidence["shape"] = {"quantile": args.shape[0], "power": args.shape[1], "chosen_by": "leave-one-laboratory-out"}
            write_rule(args.model, rule, args.version, evidence)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
