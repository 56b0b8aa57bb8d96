"""Which reference should the domain alarm measure distances to? A study on the robustness suite's features.

``python -m training.domain_fit_study --model DIR --config FILE --scores stress_kaggle.npz stress_pbc.npz [--json OUT]``

Why: the shipped domain model (``pipeline.domain``) measures each image's
Mahalanobis distance to the nearest *class* centre, the centres pooled over
both training laboratories. The two laboratories sit in different places of
feature space, so a class centre lies between them and ordinary images of
either laboratory look somewhat unusual. Job statistics that would catch
moderate shifts (a job's mean distance) then false-alarm on one laboratory's
ordinary jobs (``training.alarm_study``). Centres per class *and* laboratory
may tighten the in-domain distances without loosening the shifted ones.

The study refits the domain model on the training split's features (serving
path, LiteRT) with each reference, rescores every condition of the
robustness suite from the stored features (``training.stress --scores``
keeps them) and runs ``training.alarm_study``'s comparison (thresholds from
the first halves of the unshifted validation images, rates on the second
halves) for every reference. Validation and training images only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.domain import fit_domain_model
from training.alarm_study import Conditions, load_conditions, print_summary, study_conditions
from training.config import TrainConfig
from training.data import load_splits
from training.refit_domain import split_features

#: reference name -> training labels of its components, from (class index, laboratory index)
REFERENCES = {
    "class centres (shipped)": lambda y, lab: y,
    "class x laboratory centres": lambda y, lab: y * 2 + lab,
}


def training_features(model_dir: str, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled features, class indices and laboratory indices (0 Kaggle, 1 PBC) of the training split, serving path."""
    features, labels, labs = split_features(model_dir, load_splits(Path(config.work_dir) / "splits.json")["train"])
    return features, labels, (labs != "kaggle").astype(int)


def validation_features(paths: list[str], index: int = 0) -> Conditions:
    """Per file and condition: stored features (float32) and correctness."""
    return {file: {cond: (f.astype(np.float32), correct) for cond, (f, correct) in conds.items()}
            for file, conds in load_conditions(paths, index, "features").items()}


def rescored(files: dict, reference) -> Conditions:
    return {file: {cond: (reference.score(f), correct) for cond, (f, correct) in conds.items()} for file, conds in files.items()}


def run(model_dir: str, config: TrainConfig, paths: list[str]) -> dict:
    f_train, y, lab = training_features(model_dir, config)
    files = validation_features(paths)
    f_val = np.concatenate([next(iter(conds.values()))[0] for conds in files.values()])
    results = {}
    for name, components in REFERENCES.items():
        reference = fit_domain_model(f_train, components(y, lab), f_val)
        results[name] = study_conditions(rescored(files, reference))
    return {"model": model_dir, "training_images": len(f_train), "references": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.domain_fit_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True, help="training config whose splits.json names the training images")
    parser.add_argument("--scores", nargs="+", required=True, help="files written by training.stress --scores")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = run(args.model, TrainConfig.from_file(args.config), args.scores)
    for name, study in result["references"].items():
        print(f"\n{name}")
        print_summary(study["summary"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
