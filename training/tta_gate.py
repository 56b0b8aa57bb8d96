"""Choose the gate of test-time augmentation where the model is unsure (rule G in the model card).

``python -m training.tta_gate --model MODEL_DIR --data KAGGLE_VAL PBC_VAL [--json OUT] [--write-manifest]``

Every validation image is read once in all 8 dihedral views (one model call
per batch); from those outputs, exactly as ``pipeline.views.UnsureTTA``
serves them, the study derives one view's answers, full TTA's, and for each
gate of the grid the gated answers: accuracy (an image without a white cell
counts as wrong), ECE, and the share of images re-read. The gate is the
smallest of the grid whose accuracy, averaged over the laboratories (the
folders given), recovers at least ``RECOVER`` of full TTA's gain over one
view. Validation images only: the rule forbids choosing anything on the test
split. ``--write-manifest`` records the chosen gate as ``tta.gate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.classifier import load_classifier, model_crops, scaled_batch
from pipeline.manifest import ModelManifest
from pipeline.stain_check import stain_signature
from pipeline.views import AS_GIVEN, VIEWS_MEAN, DihedralTTA
from training.evaluate import decoded_chunks, discover
from training.metrics import reliability

GRID = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
RECOVER = 0.8


def view_probabilities(tta: DihedralTTA, paths: list[Path], temperature_distance: str | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One view's and full TTA's calibrated probabilities (N, classes) for ``paths``, and whether a cell was found.

    The formulas are ``UnsureTTA.scored``'s: one view is calibrated by its own distance, the 8-view mean by the
    distance of the features the model's ``tta.temperature_distance`` names (or ``temperature_distance``: rule G2
    compares both forms on one model), both with the image's stain factor."""
    manifest = tta.manifest
    one, full, found = [], [], []
    for images in decoded_chunks(paths):
        crops = model_crops(images, manifest)
        stains = [stain_signature(c.pixels) if manifest.checks_stain else None for c in crops]
        logits, features = tta.views_outputs(scaled_batch(crops))
        one.append(tta.calibrated(logits[0], None if features is None else features[0], stains)[0])
        read_by = None if features is None else tta.temperature_features(features[0], features.mean(axis=0), temperature_distance)
        full.append(tta.calibrated(logits.mean(axis=0), read_by, stains)[0])
        found.extend(c.found for c in crops)
    return np.concatenate(one), np.concatenate(full), np.array(found, bool)


def gated(one: np.ndarray, full: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """The answers ``UnsureTTA`` gives at ``gate`` and which images it re-reads."""
    unsure = one.max(axis=1) < gate
    return np.where(unsure[:, None], full, one), unsure


def figures(probs: np.ndarray, y: np.ndarray, found: np.ndarray) -> dict:
    predicted = np.where(found, probs.argmax(axis=1), -1)
    return {"accuracy": float((predicted == y).mean()), "ece": float(reliability(probs, y)[0])}


def study(model_dir: str, data_dirs: list[str], grid: tuple[float, ...] = GRID, log=print,
          temperature_distance: str | None = None) -> dict:
    """Rule G's figures for every gate of ``grid``; ``temperature_distance`` (``VIEWS_MEAN`` or ``AS_GIVEN``) reads
    the TTA answers' temperature by that form instead of the model's own (rule G2 compares the two)."""
    tta = load_classifier(model_dir, "litert", tta=1)
    assert isinstance(tta, DihedralTTA)
    form = temperature_distance or tta.temperature_distance
    labs = {}
    for data_dir in data_dirs:
        samples, _ = discover(Path(data_dir), tta.manifest.classes)
        y = np.array([label for _, label in samples])
        one, full, found = view_probabilities(tta, [p for p, _ in samples], form)
        lab = {"data": data_dir, "n_images": int(len(y)), "one_view": figures(one, y, found), "full_tta": figures(full, y, found),
               "gates": {}}
        for gate in grid:
            probs, unsure = gated(one, full, gate)
            lab["gates"][str(gate)] = {**figures(probs, y, found), "reread": float(unsure.mean())}
        labs[Path(data_dir).name] = lab
        log(f"{Path(data_dir).name}: one view {lab['one_view']['accuracy']:.4f}, full TTA {lab['full_tta']['accuracy']:.4f}")
    return {"model": tta.manifest.label, "temperature_distance": form, "grid": list(grid), "recover": RECOVER, "labs": labs,
            **choose(labs, grid)}


def choose(labs: dict, grid: tuple[float, ...]) -> dict:
    """Rule G's gate: the smallest whose laboratory-averaged accuracy recovers ``RECOVER`` of full TTA's gain."""
    def mean(get) -> float:
        return float(np.mean([get(lab) for lab in labs.values()]))

    base, top = mean(lambda lab: lab["one_view"]["accuracy"]), mean(lambda lab: lab["full_tta"]["accuracy"])
    recovered = {}
    for gate in grid:
        acc = mean(lambda lab, g=gate: lab["gates"][str(g)]["accuracy"])
        recovered[str(gate)] = (acc - base) / (top - base) if top > base else 0.0
    chosen = next((g for g in grid if recovered[str(g)] >= RECOVER), None)
    return {"mean_one_view": base, "mean_full_tta": top, "recovered": recovered, "gate": chosen}


def table(result: dict) -> str:
    rows = ["| gate | " + " | ".join(f"{name}: accuracy (ECE; re-read)" for name in result["labs"]) + " | share of TTA's gain |",
            "|---|" + "---|" * (len(result["labs"]) + 1)]
    for name, key in (("one view", "one_view"), ("full TTA", "full_tta")):
        rows.append(f"| {name} | " + " | ".join(f"{lab[key]['accuracy']:.2%} ({lab[key]['ece']:.1%})" for lab in result["labs"].values())
                    + " | |")
    for gate in result["grid"]:
        cells = [f"{lab['gates'][str(gate)]['accuracy']:.2%} ({lab['gates'][str(gate)]['ece']:.1%}; {lab['gates'][str(gate)]['reread']:.1%})"
                 for lab in result["labs"].values()]
        rows.append(f"| {gate} | " + " | ".join(cells) + f" | {result['recovered'][str(gate)]:.0%} |")
    return "\n".join(rows)


def write_gate(model_dir: str, gate: float, source: str, version: str | None = None,
               temperature_distance: str | None = None) -> None:
    """Record the chosen gate in the manifest (``tta.gate``), where it was chosen, a history line and (optionally)
    the version; the networks and every file digest stay as they are. The ``tta`` block's other keys stay; a
    ``temperature_distance`` (the form the gate was chosen under) is recorded too, so serving reads the answers the
    study chose from."""
    path = Path(model_dir) / "manifest.json"
    data = json.loads(path.read_text())
    data["tta"] = {**(data.get("tta") or {}), "gate": gate, "chosen_by": source}
    if temperature_distance is not None:
        data["tta"]["temperature_distance"] = temperature_distance
    if version:
        data["version"] = version
    data.setdefault("history", []).append(f"{data['version']}: test-time augmentation where unsure (HEMATOVISION_TTA=2), "
                                          f"gate {gate} chosen by rule G on validation images ({source})")
    path.write_text(json.dumps(data, indent=2) + "\n")
    ModelManifest.load(model_dir)  # still a valid manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", nargs="+", required=True, help="validation folders, one per laboratory")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write-manifest", action="store_true", help="record the chosen gate in the model's manifest")
    parser.add_argument("--version", help="with --write-manifest: the model's new version")
    parser.add_argument("--temperature-distance", choices=(VIEWS_MEAN, AS_GIVEN),
                        help="calibrate TTA answers by the distance of the views' mean features or of the image as given "
                             "(default: the model's tta.temperature_distance; rule G2)")
    args = parser.parse_args(argv)
    result = study(args.model, args.data, temperature_distance=args.temperature_distance)
    print(f"TTA answers calibrated by the distance of: {result['temperature_distance']}")
    print(table(result))
    print(f"chosen gate: {result['gate']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_manifest:
        if result["gate"] is None:
            print("no gate recovers enough of TTA's gain: nothing written", file=sys.stderr)
            return 1
        write_gate(args.model, result["gate"], f"training.tta_gate on {', '.join(args.data)}", args.version,
                   result["temperature_distance"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
