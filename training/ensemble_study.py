"""Rule E, stage A: does a second network beside the first help on a laboratory neither has seen?

``python -m training.ensemble_study --roots runs/lolo_mix runs/lolo_mix_s2 [--json OUT]``

Each root holds one leave-one-laboratory-out run (``training.lolo``) of the
same recipe on the same split, trained with another seed. For each direction
(trained on PBC, scored on Kaggle; trained on Kaggle, scored on PBC's Kaggle
classes) every member and the ensemble (the mean of the members' logits, as
``pipeline.classifier.LogitEnsemble`` serves it) are scored on the unseen
laboratory's validation images, each with a constant temperature fitted the
same way: NLL on its own laboratory's validation images. The members see the
same crops (one preparation per image), so the comparison is paired: the
ensemble against its own members, not against another session's runs.
Validation folders only: the test split is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.classifier import load_classifier, model_crops, scaled_batch
from pipeline.temperature import CalibratedOutputs, calibrated_softmax
from training.evaluate import discover
from training.lolo import HELD_OUT, folders_of
from training.metrics import fit_temperature, nll, reliability
from training.stress import load_images


def member_logits(members: list[CalibratedOutputs], folder: Path, batch: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """Every member's logits on every image of ``folder`` (crops prepared once, by the first member's recipe)."""
    manifest = members[0].manifest
    for other in members[1:]:
        if (other.manifest.preprocessing, other.manifest.input_size, other.manifest.classes) != (
                manifest.preprocessing, manifest.input_size, manifest.classes):
            raise ValueError(f"{other.manifest.label} does not share {manifest.label}'s recipe, input size and classes")
    samples, _ = discover(folder, manifest.classes)
    images, _, labels, _ = load_images(samples)
    out: list[list[np.ndarray]] = [[] for _ in members]
    for start in range(0, len(images), batch):
        scaled = scaled_batch(model_crops(images[start : start + batch], manifest))
        for i, member in enumerate(members):
            out[i].append(member.outputs(scaled)[0].astype(np.float64))
    return [np.concatenate(o) for o in out], np.asarray(labels)


def scored(logits_own: np.ndarray, y_own: np.ndarray, logits_unseen: np.ndarray, y_unseen: np.ndarray) -> dict:
    """Accuracy, ECE and NLL on the unseen laboratory with a temperature fitted on the own laboratory's images."""
    t = fit_temperature(logits_own, y_own)
    ece, _ = reliability(calibrated_softmax(logits_unseen, t), y_unseen)
    return {"temperature": t, "unseen_accuracy": float((logits_unseen.argmax(1) == y_unseen).mean()),
            "unseen_ece": float(ece), "unseen_nll": nll(logits_unseen, y_unseen, t),
            "own_accuracy": float((logits_own.argmax(1) == y_own).mean())}


def study(roots: list[Path]) -> dict:
    folders = folders_of(roots[0])
    out: dict = {"roots": [str(r) for r in roots], "directions": {}}
    for trained_on, held_out in HELD_OUT.items():
        members = [load_classifier(root / "export" / f"lolo_{trained_on}", "litert", ensemble=False) for root in roots]
        own = folders["pbc_all"] if trained_on == "pbc" else folders["kaggle"]
        own_logits, y_own = member_logits(members, own)
        unseen_logits, y_unseen = member_logits(members, folders[held_out])
        each = [scored(o, y_own, u, y_unseen) for o, u in zip(own_logits, unseen_logits, strict=True)]
        ensemble = scored(np.mean(own_logits, axis=0), y_own, np.mean(unseen_logits, axis=0), y_unseen)
        mean = {k: float(np.mean([m[k] for m in each])) for k in ("unseen_accuracy", "unseen_ece", "unseen_nll", "own_accuracy")}
        out["directions"][f"{trained_on}->{held_out}"] = {
            "n_unseen": int(len(y_unseen)), "n_own": int(len(y_own)), "members": each, "members_mean": mean,
            "ensemble": ensemble,
            "gain": {k: ensemble[k] - mean[k] for k in mean},
        }
    return out | {"verdict": verdict(out["directions"])}


def verdict(directions: dict) -> dict:
    """Rule E stage A (model card): (a1) accuracy +1.0 point over the members' mean on average, no direction below
    it; (a2) lower unseen ECE and NLL than the members' mean in both directions."""
    gains = [d["gain"] for d in directions.values()]
    a1 = float(np.mean([g["unseen_accuracy"] for g in gains])) >= 0.01 and all(g["unseen_accuracy"] >= 0 for g in gains)
    a2 = all(g["unseen_ece"] < 0 and g["unseen_nll"] < 0 for g in gains)
    return {"a1": bool(a1), "a2": bool(a2), "holds": bool(a1 and a2),
            "mean_accuracy_gain": float(np.mean([g["unseen_accuracy"] for g in gains]))}


def print_table(result: dict) -> None:
    print(f"{'direction':<16}{'who':<14}{'acc':>8}{'ECE':>8}{'NLL':>8}{'own acc':>9}")
    for name, d in result["directions"].items():
        rows = [(f"member {i + 1}", m) for i, m in enumerate(d["members"])] + [("members mean", d["members_mean"]),
                                                                             ("ensemble", d["ensemble"])]
        for who, m in rows:
            print(f"{name:<16}{who:<14}{m['unseen_accuracy']:>8.3f}{m['unseen_ece']:>8.3f}{m['unseen_nll']:>8.3f}"
                  f"{m['own_accuracy']:>9.3f}")
    v = result["verdict"]
    print(f"rule E stage A: a1 {'held' if v['a1'] else 'FAILED'} (mean accuracy gain {v['mean_accuracy_gain'] * 100:+.2f} points), "
          f"a2 {'held' if v['a2'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ensemble_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roots", nargs="+", required=True, help="leave-one-laboratory-out roots, one per seed (same split)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if len(args.roots) < 2:
        parser.error("an ensemble needs at least two roots")
    result = study([Path(r) for r in args.roots])
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
