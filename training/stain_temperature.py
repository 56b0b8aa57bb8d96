"""Stain-aware temperature: choose its shape by leave-one-laboratory-out (rule TS), check it, write it into a model.

Why: the distance-aware temperature (``training.distance_temperature``) reads
the network's pooled features, and from 2.3 the network is trained (MixStyle)
to ignore stain, so another laboratory's stain leaves it nearly as sure of
itself as at home. The stain check of 2.3.1 measures, per image, how far the
red cells' stain lies from the nearest training laboratory;
``pipeline.temperature.StainTemperature`` multiplies the temperature by
``max(1, s / reference) ** power`` of that distance. This module chooses the
two numbers on real cross-laboratory shift, as the feature shape was chosen:

``python -m training.stain_temperature --lolo-root runs/lolo_mix --json OUT``
    each leave-one-laboratory-out model with a stain reference fitted on its
    own laboratory's validation images: the unseen laboratory's ECE and NLL
    with the feature rule alone (the shipped shape) and with the stain factor
    added, the shape chosen on the *other* direction (cross-fit), both ways.

``python -m training.stain_temperature --model DIR --data KAGGLE_VAL PBC_VAL --lolo-root ROOT [--write --version V] --json OUT``
    the shape chosen on both directions among those that keep DIR's clean
    validation ECE within the in-domain limit, the robustness suite's mean ECE
    with and without it (``--limit`` images per class), and ``--write``
    stores it in ``manifest.json`` as ``temperature_stain``.

The rule that decides whether it ships (rule TS) is in the model card. No
test image is used here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.classifier import load_classifier
from pipeline.manifest import ModelManifest
from pipeline.stain_check import StainReference, fit_stain_reference
from pipeline.temperature import DistanceTemperature, StainTemperature, calibrated_softmax
from training.distance_temperature import collect_cached, write_manifest_rule
from training.metrics import reliability
from training.temperature_shape import IN_DOMAIN_ECE_LIMIT, clean_rows, nll

#: reference stain distances tried: these quantiles of the model's own clean validation images' stain distances
STAIN_QUANTILES = (0.9, 0.95, 0.99)
#: powers tried (0 = no stain factor)
STAIN_POWERS = np.round(np.arange(0.0, 4.01, 0.1), 2)
#: the feature rule's shape as shipped from 2.3.0 (reference at this quantile of clean distances, this power)
FEATURE_SHAPE = (0.5, 1.1)


@dataclass
class Rows:
    """One set of images scored by one model: what a temperature needs, per image."""

    logits: np.ndarray
    y: np.ndarray
    distance: np.ndarray  # feature distance (``pipeline.domain``)
    stain: np.ndarray  # stain distance to the nearest laboratory of the reference in use (NaN: not measured)
    condition: np.ndarray  # 0 = unshifted

    @classmethod
    def of(cls, d: dict[str, np.ndarray], reference: StainReference) -> Rows:
        return cls(d["logits"], d["y"], d["distance"], stain_distances(d["stain"], reference), d["condition"])

    def where(self, rows: np.ndarray) -> Rows:
        return Rows(self.logits[rows], self.y[rows], self.distance[rows], self.stain[rows], self.condition[rows])


def stain_distances(signatures: np.ndarray, reference: StainReference) -> np.ndarray:
    """(n,) nearest-laboratory stain distance of (n, 3) signatures with NaN rows where not measured."""
    return reference.image_distances([None if np.isnan(s).any() else tuple(s) for s in np.asarray(signatures, np.float64)])


def probabilities(r: Rows, base: float, feature: DistanceTemperature | None, stain: StainTemperature | None) -> np.ndarray:
    t = np.full(len(r.y), base, np.float64) if feature is None else feature.temperatures(base, r.distance)
    if stain is not None:
        t = t * stain.factors(r.stain)
    return calibrated_softmax(r.logits, t)


def figures(r: Rows, base: float, feature: DistanceTemperature | None, stain: StainTemperature | None) -> dict:
    probs = probabilities(r, base, feature, stain)
    return {"images": int(len(r.y)), "accuracy": float((probs.argmax(axis=1) == r.y).mean()),
            "ece": reliability(probs, r.y)[0], "nll": nll(probs, r.y)}


def stain_rule(own_clean: list[Rows], quantile: float, power: float) -> StainTemperature:
    """The rule of a shape: reference = the mean over laboratories of each one's ``quantile`` of measured stain distances."""
    reference = float(np.mean([np.nanquantile(r.stain, quantile) for r in own_clean]))
    return StainTemperature(round(reference, 4), float(power))


@dataclass
class Pair:
    """One leave-one-laboratory-out model: its unseen laboratory, its own clean validation images, its rules."""

    name: str
    unseen: Rows
    own: Rows
    base: float
    feature: DistanceTemperature


def fit_stain_shape(pairs: list[Pair], allowed: Callable[[float, float], bool] | None = None) -> tuple[float, float]:
    """(quantile, power) with the lowest NLL averaged over each pair's unseen laboratory and own clean images
    (home and away weigh the same, as the feature shape), each pair's own clean ECE kept within the limit;
    ``allowed`` may exclude shapes (the shipped model's own limit)."""
    limits = [max(IN_DOMAIN_ECE_LIMIT, figures(p.own, p.base, p.feature, None)["ece"]) for p in pairs]
    best: tuple[float, float, float] | None = None
    for q in STAIN_QUANTILES:
        for power in STAIN_POWERS:
            if power > 0 and allowed is not None and not allowed(q, float(power)):
                continue
            losses, ok = [], True
            for p, limit in zip(pairs, limits, strict=True):
                rule = stain_rule([p.own], q, float(power))
                own = figures(p.own, p.base, p.feature, rule)
                if own["ece"] > limit:
                    ok = False
                    break
                losses += [figures(p.unseen, p.base, p.feature, rule)["nll"], own["nll"]]
            if ok and (best is None or np.mean(losses) < best[0] - 1e-9):
                best = (float(np.mean(losses)), q, float(power))
    assert best is not None  # power 0 changes nothing and always passes
    return best[1], best[2]


def lolo_pairs(root: Path, log=print) -> list[Pair]:
    """Both leave-one-laboratory-out models under ``root`` (``training.lolo``), each with a stain reference
    fitted on its own laboratory's clean validation images (the only laboratory it knows)."""
    folders = {"pbc": root / "splits" / "splits" / "pbc_val", "kaggle": root / "splits" / "splits" / "kaggle_val",
               "pbc4": root / "splits" / "pbc_val_kaggle_classes"}
    pairs = []
    for own, other in (("pbc", "kaggle"), ("kaggle", "pbc4")):
        classifier = load_classifier(root / "export" / f"lolo_{own}", "litert")
        own_d = clean_rows(collect_cached(classifier, str(folders[own]), None, [], log, root / f"ts_{own}_own.npz"))
        unseen_d = collect_cached(classifier, str(folders[other]), None, [], log, root / f"ts_{own}_unseen.npz")
        measured = [None if np.isnan(s).any() else tuple(s) for s in own_d["stain"]]
        reference = fit_stain_reference({own: measured})
        own_rows, unseen_rows = Rows.of(own_d, reference), Rows.of(unseen_d, reference)
        feature = DistanceTemperature(float(np.quantile(own_rows.distance, FEATURE_SHAPE[0])), FEATURE_SHAPE[1])
        pairs.append(Pair(f"{own}->{other}", unseen_rows, own_rows, classifier.manifest.temperature, feature))
    return pairs


def study_lolo(pairs: list[Pair]) -> dict:
    """Per direction: the unseen laboratory with the feature rule alone and with the stain factor whose shape
    was chosen on the other direction (the cross-fit, rule TS (a)); then the shape chosen on both."""
    out: dict = {}
    for i, p in enumerate(pairs):
        other = pairs[1 - i]
        q, power = fit_stain_shape([other])
        rule = stain_rule([p.own], q, power)
        out[p.name] = {
            "unseen_stain_measured": float(np.isfinite(p.unseen.stain).mean()),
            "unseen_stain_median": float(np.nanmedian(p.unseen.stain)),
            "own_stain_median": float(np.nanmedian(p.own.stain)),
            "feature_rule": p.feature.__dict__,
            "cross_fit": {"shape_from": other.name, "quantile": q, "power": power, "rule": rule.__dict__},
            "unseen_lab": {"constant": figures(p.unseen, p.base, None, None), "feature": figures(p.unseen, p.base, p.feature, None),
                           "feature_and_stain": figures(p.unseen, p.base, p.feature, rule)},
            "own_clean": {"feature": figures(p.own, p.base, p.feature, None), "feature_and_stain": figures(p.own, p.base, p.feature, rule)},
        }
    q, power = fit_stain_shape(pairs)
    out["shape_from_both"] = {"quantile": q, "power": power}
    held = [out[p.name] for p in pairs]
    out["rule_ts_a"] = all(h["unseen_lab"]["feature_and_stain"]["ece"] < h["unseen_lab"]["feature"]["ece"]
                           and h["unseen_lab"]["feature_and_stain"]["nll"] <= h["unseen_lab"]["feature"]["nll"] for h in held)
    return out


def model_suites(model_dir: str, data_dirs: list[str], limit: int | None, cache: Path | None = None, log=print) -> list[Rows]:
    """The model over each validation folder and every robustness-suite shift, stain distances to its own reference
    (``cache``: a folder keeping the collected rows, re-read on the next run)."""
    classifier = load_classifier(model_dir, "litert")
    if classifier.domain is None or classifier.domain.stain is None:
        raise SystemExit(f"{classifier.manifest.label} carries no stain reference (training.stain_check --fit first)")
    return [Rows.of(collect_cached(classifier, folder, limit, None, log, cache and cache / f"ts_model_{Path(folder).name}.npz"),
                    classifier.domain.stain) for folder in data_dirs]


def for_model(model_dir: str, data_dirs: list[str], pairs: list[Pair], limit: int | None, cache: Path | None = None,
              log=print) -> tuple[StainTemperature, dict]:
    """The shape chosen on both directions within the model's clean validation ECE limit (rule TS (b)), and the
    robustness suite's mean shifted ECE per laboratory with and without it (rule TS (c))."""
    suites = model_suites(model_dir, data_dirs, limit, cache, log)
    manifest = ModelManifest.load(model_dir)  # the model itself ran in model_suites
    feature = DistanceTemperature.from_manifest(manifest)
    base = manifest.temperature
    labs = [Path(folder).name for folder in data_dirs]
    clean = [r.where(r.condition == 0) for r in suites]
    limits = [max(IN_DOMAIN_ECE_LIMIT, figures(c, base, feature, None)["ece"]) for c in clean]

    def allowed(q: float, power: float) -> bool:
        rule = stain_rule(clean, q, power)
        return all(figures(c, base, feature, rule)["ece"] <= lim for c, lim in zip(clean, limits, strict=True))

    q, power = fit_stain_shape(pairs, allowed)
    rule = stain_rule(clean, q, power)
    report: dict = {"model": manifest.label, "shape": {"quantile": q, "power": power}, "rule": rule.__dict__,
                    "limit_per_class": limit, "labs": {}}
    for lab, suite, c, lim in zip(labs, suites, clean, limits, strict=True):
        shifted = [k for k in np.unique(suite.condition) if k != 0]
        per = {name: [figures(suite.where(suite.condition == k), base, feature, r)["ece"] for k in shifted]
               for name, r in (("feature", None), ("feature_and_stain", rule))}
        report["labs"][lab] = {
            "clean": {"feature": figures(c, base, feature, None), "feature_and_stain": figures(c, base, feature, rule), "limit": lim},
            "shifted_mean_ece": {name: float(np.mean(v)) for name, v in per.items()},
            "shifted_worst_ece": {name: float(np.max(v)) for name, v in per.items()},
            "conditions": len(shifted),
        }
    rows = report["labs"].values()
    report["rule_ts_b"] = all(r["clean"]["feature_and_stain"]["ece"] <= r["clean"]["limit"] for r in rows)
    report["rule_ts_c"] = all(r["shifted_mean_ece"]["feature_and_stain"] <= r["shifted_mean_ece"]["feature"] + 0.005 for r in rows)
    return rule, report


def write_rule(model_dir: str, rule: StainTemperature, version: str, evidence: dict) -> None:
    """Store the rule in ``manifest.json`` (the network and files are unchanged, so every sha256 stays valid)."""
    write_manifest_rule(model_dir, "temperature_stain", rule, version, "python -m training.stain_temperature", evidence)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stain_temperature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lolo-root", required=True, help="a training.lolo --root folder")
    parser.add_argument("--model", help="choose the shape for this model (with --data: its validation folders)")
    parser.add_argument("--data", nargs="+", default=[])
    parser.add_argument("--limit", type=int, default=100, help="robustness suite: images per class (default 100)")
    parser.add_argument("--write", action="store_true", help="store the rule in the model's manifest")
    parser.add_argument("--version", help="with --write: the model's new version")
    parser.add_argument("--cache", help="a folder keeping the model's collected suite rows (re-read when present)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.model and not args.data:
        parser.error("--model needs --data")
    if args.write and not (args.model and args.version):
        parser.error("--write needs --model and --version")
    pairs = lolo_pairs(Path(args.lolo_root))
    result = {"lolo": study_lolo(pairs)}
    for p in pairs:
        row = result["lolo"][p.name]
        u, c = row["unseen_lab"], row["cross_fit"]
        print(f"{p.name:<13} unseen ECE {u['constant']['ece']:.3f} (constant) -> {u['feature']['ece']:.3f} (feature) -> "
              f"{u['feature_and_stain']['ece']:.3f} (+ stain, shape from {c['shape_from']}: q {c['quantile']}, power {c['power']}); "
              f"NLL {u['feature']['nll']:.3f} -> {u['feature_and_stain']['nll']:.3f}; own clean ECE "
              f"{row['own_clean']['feature']['ece']:.3f} -> {row['own_clean']['feature_and_stain']['ece']:.3f}")
    print(f"rule TS (a): {'held' if result['lolo']['rule_ts_a'] else 'failed'}; shape from both: {result['lolo']['shape_from_both']}")
    if args.model:
        rule, report = for_model(args.model, args.data, pairs, args.limit, Path(args.cache) if args.cache else None)
        result["model"] = report
        for lab, row in report["labs"].items():
            print(f"{lab:<12} clean ECE {row['clean']['feature']['ece']:.3f} -> {row['clean']['feature_and_stain']['ece']:.3f} "
                  f"(limit {row['clean']['limit']:.3f}); shifted mean ECE "
                  f"{row['shifted_mean_ece']['feature']:.3f} -> {row['shifted_mean_ece']['feature_and_stain']:.3f} over {row['conditions']}")
        print(f"rule: {rule}; rule TS (b): {'held' if report['rule_ts_b'] else 'failed'}, (c): {'held' if report['rule_ts_c'] else 'failed'}")
        if args.write:
            if not (result["lolo"]["rule_ts_a"] and report["rule_ts_b"] and report["rule_ts_c"]):
                print("not written: rule TS did not hold", file=sys.stderr)
                return 1
            write_rule(args.model, rule, args.version, {"shape": report["shape"], "chosen_by": "leave-one-laboratory-out (rule TS)",
                                                        "data": [Path(d).name for d in args.data]})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
