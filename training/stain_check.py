"""Fit and study the domain check's stain reason (``pipeline.stain_check``) on validation images.

``python -m training.stain_check --model DIR --config CONFIG --fit [--version V]``
    measures every validation image's red-cell stain signature through the serving path (decode, the model's
    recipe, ``stain_signature``), fits the per-laboratory reference and writes it into the model's ``ood.npz``
    and manifest (``ood.stain``); with ``--version`` the manifest's version too.

``python -m training.stain_check --model DIR --config CONFIG --lolo``
    leave-one-laboratory-out for the stain reason alone: the reference fitted on every laboratory but one, the
    reason counted on random 50-image jobs of the one left out (would it flag a laboratory it has never seen?).

``python -m training.stain_check --model DIR --config CONFIG --study [--halvings 3] [--limit 100] [--json OUT]``
    rule S's held-out measure (model card): each laboratory's validation images are halved at random *by source
    photograph* (a Kaggle cell's copies stay together); the reference is fitted on one half and the stain reason
    alone is counted on random 50-image jobs of the other half, unshifted (false alarm) and under every shift of
    the robustness suite (``training.shifts``; at most ``--limit`` images per class, as ``training.stress``).
    Nothing here reads test images.

``--focus`` (fit, study): the focus check instead (``pipeline.focus_check``, rule F in the model card): each
image's blur effect on its model crop against each laboratory's (blurrier positive). ``--fit`` also writes the
reference into every backend's own domain model listed in the manifest's ``ood.backends`` (it reads pixels).

Why a separate study from ``training.alarm_study``: that one replays stored feature distances; the stain reason
reads pixels, so its shifted copies are made here, by the suite's own per-image generators.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.classifier import model_crops
from pipeline.domain import JOB_SIZE
from pipeline.focus_check import FocusReference, blur_effect, fit_focus_reference
from pipeline.images import decode_image
from pipeline.manifest import ModelManifest
from pipeline.stain_check import IMAGE_QUANTILE, StainReference, fit_stain_reference, red_cell_signature, stain_signature
from training.config import TrainConfig
from training.data import Sample, load_splits
from training.stress import balanced_subsample, conditions

#: random jobs per measurement
JOBS = 2000


def signatures_of(images: list[np.ndarray], manifest: ModelManifest, size: bool = False) -> list:
    """Each decoded BGR image's stain signature, measured on the model crop as serving measures it; with ``size``,
    its red-cell signature (the stain and the red cells' diameter, ``red_cell_signature``) instead."""
    stains, red_cells = both_signatures(images, manifest)
    return red_cells if size else stains


def both_signatures(images: list[np.ndarray], manifest: ModelManifest) -> tuple[list, list]:
    """Each image's stain signature and red-cell signature from one crop (the crop is most of the cost)."""
    crops = model_crops(images, manifest)
    stains = [stain_signature(c.pixels) for c in crops]
    return stains, [red_cell_signature(s, c.rbc_diameter_px) for s, c in zip(stains, crops, strict=True)]


def focus_of(images: list[np.ndarray], manifest: ModelManifest) -> list[float]:
    """Each decoded BGR image's blur effect, measured on the model crop as serving measures it."""
    return [blur_effect(c.pixels) for c in model_crops(images, manifest)]


def fit_reference(kind: str, values: dict[str, list], sources: dict[str, list] | None, seed: int = 0,
                  image_quantile: float | None = IMAGE_QUANTILE) -> StainReference | FocusReference:
    """The reference of one pixel check (``kind``: "stain", "red_cells" or "focus") from per-laboratory values."""
    if kind == "focus":
        return fit_focus_reference(values, sources, seed, image_quantile)
    return fit_stain_reference(values, sources, seed, image_quantile, per_image=kind == "red_cells")


def validation_samples(config: TrainConfig, classes: tuple[str, ...]) -> list[Sample]:
    splits = load_splits(Path(config.work_dir) / "splits.json")
    return [s for s in splits["val"] if s.label in classes]


def per_laboratory(samples: list[Sample], values: list, labs: list[str] | None = None) -> dict[str, list]:
    """``values`` (one per sample) grouped by the samples' laboratory (only ``labs``, where given)."""
    out: dict[str, list] = defaultdict(list)
    for sample, value in zip(samples, values, strict=True):
        if labs is None or sample.dataset in labs:
            out[sample.dataset].append(value)
    return dict(out)


def decode(samples: list[Sample]) -> list[np.ndarray]:
    return [decode_image(Path(s.path).read_bytes(), 10**9) for s in samples]


def _kind(size: bool, focus: bool) -> str:
    if size and focus:
        raise SystemExit("error: choose --size or --focus, not both")
    return "red_cells" if size else "focus" if focus else "stain"


#: per check: what it measures and how the job statistic is made (the manifest's ``method``), and its ``--fit`` flag
METHODS = {
    "stain": ("red-cell median optical density of the model crop, log(value + 0.05), Mahalanobis per laboratory, job mean "
              "distance (pipeline.stain_check)", ""),
    "red_cells": ("red-cell median optical density of the model crop and the red cells' diameter (px), log(value + 0.05), "
                  "Mahalanobis per laboratory, each image's distance to its nearest laboratory over that laboratory's job "
                  "threshold, job mean (pipeline.stain_check)", " --size"),
    "focus": ("Crete-Roffet blur effect of the model crop's grey (9-pixel re-blur, larger direction), z-score per laboratory "
              "(blurrier positive), job mean, alarm when blurrier than every laboratory (pipeline.focus_check)", " --focus"),
}


def fit(model_dir: Path, config: TrainConfig, version: str | None, size: bool = False,
        focus: bool = False) -> StainReference | FocusReference:
    """Fit the reference on all validation images and write it into the model (``size``: the red-cell check's;
    ``focus``: the focus check's). The int8 backend's own domain model (``ood.int8.npz``) gets the same reference:
    it reads pixels, not features."""
    from pipeline.domain import DomainModel
    from training.refit_domain import record

    kind = _kind(size, focus)
    manifest = ModelManifest.load(model_dir)
    samples = validation_samples(config, manifest.classes)
    images = decode(samples)
    values = focus_of(images, manifest) if kind == "focus" else signatures_of(images, manifest, size)
    by_lab = per_laboratory(samples, values)
    reference = fit_reference(kind, by_lab, per_laboratory(samples, [s.group for s in samples]))
    ood_path = model_dir / "ood.npz"
    if not ood_path.is_file():
        raise SystemExit(f"error: {model_dir} has no domain model (ood.npz) to carry the {kind} check")
    dataclasses.replace(DomainModel.load(ood_path), **{kind: reference}).save(ood_path)
    ood = json.loads((model_dir / "manifest.json").read_text())["ood"]
    backend_files = [entry["file"] for entry in (ood.get("backends") or {}).values()]
    for file in backend_files:  # pixel checks are the same for every backend
        dataclasses.replace(DomainModel.load(model_dir / file), **{kind: reference}).save(model_dir / file)
    measured = {lab: f"{sum(s is not None for s in v)} of {len(v)}" for lab, v in by_lab.items()}
    method, flag = METHODS[kind]
    ood[kind] = {**reference.summary(), "method": method,
                 "fitted_on": f"validation images measured: {measured} (training.stain_check --fit{flag})"}
    what = {"stain": "stain", "red_cells": "red-cell", "focus": "focus"}[kind]
    record(model_dir, ood, f"{version or manifest.version}: {what} check fitted by training.stain_check "
                           f"--fit{flag} on the validation images (same network, same predictions)", version, also=backend_files)
    return reference


def leave_one_out(model_dir: Path, config: TrainConfig, seed: int = 0, size: bool = False) -> dict[str, float]:
    """Per laboratory: the share of its random 50-image validation jobs the reason flags when the reference was
    fitted on the other laboratories only."""
    manifest = ModelManifest.load(model_dir)
    samples = validation_samples(config, manifest.classes)
    sigs = signatures_of(decode(samples), manifest, size)
    labs = sorted({s.dataset for s in samples})
    rng = np.random.default_rng(seed)
    out = {}
    for held in labs:
        others = [lab for lab in labs if lab != held]
        if not others:
            raise SystemExit("error: leave-one-laboratory-out needs two laboratories in the validation split")
        reference = fit_stain_reference(per_laboratory(samples, sigs, others),
                                        per_laboratory(samples, [s.group for s in samples], others), per_image=size)
        out[held] = job_rate(reference, per_laboratory(samples, sigs)[held], rng)
    return out


def _halves(groups: list[str], rng: np.random.Generator) -> np.ndarray:
    """A random half of the source photographs: True for the images in it."""
    unique = sorted(set(groups))
    chosen = set(rng.permutation(unique)[: len(unique) // 2].tolist())
    return np.array([g in chosen for g in groups])


def job_rate(reference: StainReference, sigs: list, rng: np.random.Generator, jobs: int = JOBS,
             also: tuple[StainReference, list] | None = None) -> float:
    """Share of random ``JOB_SIZE``-image jobs of ``sigs`` the reason flags; with ``also`` (another reference and
    the same images' signatures for it), the share either reason flags (the union the domain check reports)."""
    n = min(JOB_SIZE, len(sigs))
    fired = 0
    for _ in range(jobs):
        pick = rng.choice(len(sigs), n, replace=False)
        fired += (reference.reason([sigs[i] for i in pick]) is not None
                  or (also is not None and also[0].reason([also[1][i] for i in pick]) is not None))
    return fired / jobs


def study(model_dir: Path, config: TrainConfig, halvings: int, limit: int | None, seed: int = 0, log=print,
          image_quantile: float | None = IMAGE_QUANTILE, size: bool = False, focus: bool = False) -> dict:
    """Rule S (a): fit on one half of each laboratory's sources, count the stain reason on the other half
    (``seed`` draws the halvings and jobs; the shifts are the suite's own, seed 0). With ``size``, the red-cell
    check's rule (a): its reason alone and together with the stain reason (both fitted on the same half). With
    ``focus``, rule F (a) and (b): the focus reason alone."""
    kind = _kind(size, focus)
    manifest = ModelManifest.load(model_dir)
    samples = validation_samples(config, manifest.classes)
    labs = sorted({s.dataset for s in samples})
    images = decode(samples)
    keys = [f"{s.label}/{Path(s.path).name}" for s in samples]
    clean_stains, clean_red_cells = both_signatures(images, manifest) if kind != "focus" else ([], [])
    clean = clean_red_cells if size else focus_of(images, manifest) if focus else clean_stains
    # with size: the stain signature too, wherever measured (not only where the diameter was measured as well)
    stains = clean_stains if size else None
    # the shifted copies: at most ``limit`` per class and laboratory, the robustness suite's own shifts
    picked: list[int] = []
    for lab in labs:
        idx = [i for i, s in enumerate(samples) if s.dataset == lab]
        kept = balanced_subsample([(Path(samples[i].path), manifest.classes.index(samples[i].label)) for i in idx], limit, 0)
        wanted = {str(p) for p, _ in kept}
        picked += [i for i in idx if samples[i].path in wanted]
    shifted: dict[str, list] = {}
    shifted_stains: dict[str, list] = {}
    for condition in conditions()[1:]:
        name = f"{condition.family}/{condition.strength}"
        copies = condition.apply([images[i] for i in picked], [keys[i] for i in picked], 0)
        if focus:
            shifted[name] = focus_of(copies, manifest)
            log(f"blur effects under {name}")
            continue
        copy_stains, copy_red_cells = both_signatures(copies, manifest)
        shifted[name] = copy_red_cells if size else copy_stains
        if size:
            shifted_stains[name] = copy_stains
        log(f"signatures under {name}")
    rng = np.random.default_rng(seed)
    out: dict = {"halvings": [], "labs": labs, "limit_per_class": limit, "job_size": JOB_SIZE, "jobs": JOBS, "seed": seed,
                 "image_quantile": image_quantile,
                 "signature": {"stain": "stain", "red_cells": "stain and red-cell diameter", "focus": "blur effect"}[kind],
                 "measured_fraction": {lab: float(np.mean([clean[i] is not None for i, s in enumerate(samples) if s.dataset == lab]))
                                       for lab in labs}}
    position = {i: k for k, i in enumerate(picked)}  # sample index -> row of the shifted signatures
    for h in range(halvings):
        fit_half: dict[str, list] = {}
        fit_stains: dict[str, list] = {}
        fit_sources: dict[str, list] = {}
        held: dict[str, np.ndarray] = {}
        for lab in labs:
            idx = np.array([i for i, s in enumerate(samples) if s.dataset == lab])
            half = _halves([samples[i].group for i in idx], rng)
            fit_half[lab] = [clean[i] for i in idx[half]]
            fit_stains[lab] = [stains[i] for i in idx[half]] if stains is not None else []
            fit_sources[lab] = [samples[i].group for i in idx[half]]
            held[lab] = idx[~half]
        reference = fit_reference(kind, fit_half, fit_sources, seed=h, image_quantile=image_quantile)
        stain_ref = fit_stain_reference(fit_stains, fit_sources, seed=h, image_quantile=image_quantile) if size else None
        row: dict = {"false_alarm": {}, "shifted": {}, "false_alarm_with_stain": {}, "shifted_with_stain": {}}
        for lab in labs:
            row["false_alarm"][lab] = job_rate(reference, [clean[i] for i in held[lab]], rng)
            if stain_ref is not None:
                row["false_alarm_with_stain"][lab] = job_rate(reference, [clean[i] for i in held[lab]], rng,
                                                              also=(stain_ref, [stains[i] for i in held[lab]]))
            held_picked = [position[i] for i in held[lab] if i in position]
            for name, sigs in shifted.items():
                row["shifted"].setdefault(name, {})[lab] = job_rate(reference, [sigs[k] for k in held_picked], rng, jobs=500)
                if stain_ref is not None:
                    row["shifted_with_stain"].setdefault(name, {})[lab] = job_rate(
                        reference, [sigs[k] for k in held_picked], rng, jobs=500,
                        also=(stain_ref, [shifted_stains[name][k] for k in held_picked]))
        log(f"halving {h}: false alarm " + ", ".join(f"{lab} {row['false_alarm'][lab]:.1%}" for lab in labs))
        out["halvings"].append(row)
    out["rule_s_a"] = _rule_a(out["halvings"], labs, "false_alarm")
    if focus:
        out["rule_f"] = rule_f(out["halvings"], labs)
    if size:
        out["rule_s_a_with_stain"] = _rule_a(out["halvings"], labs, "false_alarm_with_stain")
    return out


def _rule_a(halvings: list[dict], labs: list[str], key: str) -> dict:
    """Held-out false alarm at most 2 % per laboratory on average and 4 % in any halving."""
    fa = {lab: [r[key][lab] for r in halvings] for lab in labs}
    out: dict = {"mean_false_alarm": {lab: float(np.mean(v)) for lab, v in fa.items()},
                 "max_false_alarm": {lab: float(np.max(v)) for lab, v in fa.items()}}
    out["holds"] = all(out["mean_false_alarm"][lab] <= 0.02 and out["max_false_alarm"][lab] <= 0.04 for lab in labs)
    return out


def rule_f(halvings: list[dict], labs: list[str], blur: str = "blur/sigma4") -> dict:
    """Rule F (model card): (a) the focus reason's held-out false alarm at most 1 % per laboratory on average and
    2 % in any halving; (b) it fires on at least 95 % of held-out jobs blurred sigma 4 in every laboratory (mean)."""
    fa = {lab: [r["false_alarm"][lab] for r in halvings] for lab in labs}
    caught = {lab: float(np.mean([r["shifted"][blur][lab] for r in halvings])) for lab in labs}
    out: dict = {"mean_false_alarm": {lab: float(np.mean(v)) for lab, v in fa.items()},
                 "max_false_alarm": {lab: float(np.max(v)) for lab, v in fa.items()}, "caught_" + blur: caught}
    out["a_holds"] = all(out["mean_false_alarm"][lab] <= 0.01 and out["max_false_alarm"][lab] <= 0.02 for lab in labs)
    out["b_holds"] = all(v >= 0.95 for v in caught.values())
    out["holds"] = out["a_holds"] and out["b_holds"]
    return out


def print_study(result: dict) -> None:
    labs = result["labs"]
    what = {"stain": "stain", "blur effect": "focus"}.get(result.get("signature", "stain"), "red-cell")
    print(f"{what} reason alone, random {result['job_size']}-image jobs of the held-out half "
          f"({len(result['halvings'])} halvings by source photograph; min-max over halvings)")
    print(f"{'condition':32s} " + " ".join(f"{lab:>14s}" for lab in labs))
    fa = [[r["false_alarm"][lab] for r in result["halvings"]] for lab in labs]
    print(f"{'none (false alarm)':32s} " + " ".join(f"{100 * min(v):5.1f}-{100 * max(v):5.1f} %" for v in fa))
    for name in result["halvings"][0]["shifted"]:
        vals = [[r["shifted"][name][lab] for r in result["halvings"]] for lab in labs]
        print(f"{name:32s} " + " ".join(f"{100 * min(v):5.1f}-{100 * max(v):5.1f} %" for v in vals))
    if "rule_s_a_with_stain" in result:
        print("with the stain reason (either fires):")
        for name in result["halvings"][0]["shifted_with_stain"]:
            vals = [[r["shifted_with_stain"][name][lab] for r in result["halvings"]] for lab in labs]
            print(f"{name:32s} " + " ".join(f"{100 * min(v):5.1f}-{100 * max(v):5.1f} %" for v in vals))
    for key, title in (("rule_s_a", "alone"), ("rule_s_a_with_stain", "with the stain reason")):
        if key not in result:
            continue
        a = result[key]
        print(f"rule (a), {title}: mean false alarm " + ", ".join(f"{lab} {100 * a['mean_false_alarm'][lab]:.1f} %" for lab in labs)
              + "; max " + ", ".join(f"{lab} {100 * a['max_false_alarm'][lab]:.1f} %" for lab in labs)
              + f": {'holds' if a['holds'] else 'fails'}")
    if "rule_f" in result:
        f = result["rule_f"]
        print(f"rule F: (a) {'holds' if f['a_holds'] else 'fails'}; (b) blur sigma 4 caught on "
              + ", ".join(f"{lab} {100 * v:.1f} %" for lab, v in f["caught_blur/sigma4"].items())
              + f": {'holds' if f['b_holds'] else 'fails'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stain_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True, help="the model's training config (its splits.json names the validation images)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fit", action="store_true", help="fit on all validation images and write into the model")
    mode.add_argument("--study", action="store_true", help="rule S (a): held-out halves by source photograph")
    mode.add_argument("--lolo", action="store_true", help="leave-one-laboratory-out: flags on the laboratory not fitted")
    parser.add_argument("--version", help="with --fit: the new (patch) version written to the manifest")
    parser.add_argument("--halvings", type=int, default=3)
    parser.add_argument("--limit", type=int, default=100, help="shifted images per class and laboratory (study)")
    parser.add_argument("--json", help="write the study here")
    parser.add_argument("--seed", type=int, default=0, help="study: draws the halvings and the jobs")
    parser.add_argument("--size", action="store_true",
                        help="the red-cell check: the stain and the red cells' diameter together (fit, study, lolo)")
    parser.add_argument("--focus", action="store_true", help="the focus check (blur effect, rule F): fit, study")
    parser.add_argument("--job-mean-only", action="store_true",
                        help="study: rule S's thresholds (no per-image quantile floor), to reproduce its figures")
    args = parser.parse_args(argv)
    config = TrainConfig.from_file(args.config)
    if args.fit:
        reference = fit(Path(args.model), config, args.version, args.size, args.focus)
        print(json.dumps(reference.summary(), indent=2))
        return 0
    if args.lolo and args.focus:
        parser.error("--lolo is for the stain and red-cell checks")
    if args.lolo:
        for lab, rate in leave_one_out(Path(args.model), config, args.seed, args.size).items():
            print(f"{lab}: jobs flagged by a reference fitted without it: {rate:.1%}")
        return 0
    result = study(Path(args.model), config, args.halvings, args.limit, args.seed,
                   image_quantile=None if args.job_mean_only else IMAGE_QUANTILE, size=args.size, focus=args.focus)
    print_study(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
