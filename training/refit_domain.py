"""Refit an exported model's domain alarm (``ood.npz``) without retraining the network.

``python -m training.refit_domain --model DIR --config FILE --version X.Y.Z``

Why: the alarm's reference and thresholds are fitted on features, not
weights; when the way they are fitted improves (``pipeline.domain``: job
thresholds per laboratory, the job's mean distance beside the share of
unusual images), a shipped network can carry the better alarm under a patch
version. Features come from the serving path (decode, the model's recipe,
LiteRT fp32) on the training split (reference) and the validation split
(thresholds) of the model's training config; never the test split. The
predictions of the model do not change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.classifier import load_classifier
from pipeline.manifest import sha256_of
from training.config import TrainConfig
from training.data import Sample, load_splits
from training.evaluate import classify_chunks, decoded_chunks
from training.export import save_domain


def split_features(model_dir: str, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled features (serving path, LiteRT fp32), class indices and laboratories of ``samples`` (known classes only)."""
    classifier = load_classifier(model_dir, "litert")
    classes = classifier.manifest.classes
    kept = [s for s in samples if s.label in classes]
    features: list[np.ndarray] = []
    classify_chunks(classifier, decoded_chunks([Path(s.path) for s in kept]), features)
    if not features:
        raise SystemExit(f"error: model {classifier.manifest.label} has no feature output; it cannot carry a domain alarm")
    return np.concatenate(features), np.array([classes.index(s.label) for s in kept]), np.array([s.dataset for s in kept])


def record(model_dir: Path, ood: dict, note: str, version: str | None = None) -> None:
    """Write the manifest's ``ood`` block, a history line, the new ``ood.npz`` digest and (optionally) version."""
    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["ood"] = ood
    if version:
        manifest["version"] = version
    manifest.setdefault("history", []).append(note)
    manifest["files"]["ood.npz"] = sha256_of(model_dir / "ood.npz")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def refit(model_dir: Path, config: TrainConfig, version: str) -> dict:
    """Rewrite ``ood.npz`` and the manifest's ``ood``, ``version`` and file digests in place."""
    splits = load_splits(Path(config.work_dir) / "splits.json")
    f_train, y_train, _ = split_features(str(model_dir), splits["train"])
    f_val, _, val_labs = split_features(str(model_dir), splits["val"])
    previous = json.loads((model_dir / "manifest.json").read_text())["version"]
    ood = save_domain(f_train, y_train, f_val, val_labs, model_dir, f"{len(f_train)} training images (serving path, LiteRT)")
    record(model_dir, ood, f"{version}: domain alarm refitted by training.refit_domain from {previous}'s network "
                           f"(same weights, same predictions)", version)
    return ood


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.refit_domain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported model directory, rewritten in place")
    parser.add_argument("--config", required=True, help="the model's training config (its splits.json)")
    parser.add_argument("--version", required=True, help="the new (patch) version written to the manifest")
    args = parser.parse_args(argv)
    print(json.dumps(refit(Path(args.model), TrainConfig.from_file(args.config), args.version), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
