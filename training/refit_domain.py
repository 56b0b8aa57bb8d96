"""Refit an exported model's domain alarm (``ood.npz``) without retraining the network.

``python -m training.refit_domain --model DIR --config FILE --version X.Y.Z``

``python -m training.refit_domain --model DIR --config FILE --version X.Y.Z --backend litert-int8 [--fields BCCD_DIR]``
    the same fit on the int8 network's own features, written beside the
    fp32 one (``ood.int8.npz``, the manifest's ``ood.backends``), which the
    int8 backend then reads. Why: quantisation moves every image's features a
    little further from the fp32 reference, and the job-mean threshold sits
    only about half a distance unit above the in-domain mean, so with the
    fp32 thresholds the int8 backend flagged 20.5 % of in-domain Kaggle
    validation jobs (fp32: 3.5 %). The red-cell stain and size checks and the
    focus check read pixels, not features, and are kept as fitted; the field thresholds are
    refitted on the int8 distances of the cells of the even BCCD fields
    (``--fields``), as ``training.field_alarm --fit`` fits the fp32 ones.

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
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.classifier import load_classifier, load_domain
from pipeline.domain import DomainModel, fit_domain_model
from pipeline.manifest import ModelManifest, sha256_of
from training.config import TrainConfig
from training.data import Sample, load_splits
from training.evaluate import classify_chunks, decoded_chunks
from training.export import domain_block, save_domain

#: the file each backend's own domain model is written to (the manifest's ``ood.backends``)
BACKEND_FILES = {"litert-int8": "ood.int8.npz"}


def split_features(model_dir: str, samples: list[Sample], backend: str = "litert") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled features (serving path, ``backend``), class indices and laboratories of ``samples`` (known classes only)."""
    classifier = load_classifier(model_dir, backend)
    classes = classifier.manifest.classes
    kept = [s for s in samples if s.label in classes]
    features: list[np.ndarray] = []
    classify_chunks(classifier, decoded_chunks([Path(s.path) for s in kept]), features)
    if not features:
        raise SystemExit(f"error: model {classifier.manifest.label} has no feature output; it cannot carry a domain alarm")
    return np.concatenate(features), np.array([classes.index(s.label) for s in kept]), np.array([s.dataset for s in kept])


def record(model_dir: Path, ood: dict, note: str, version: str | None = None, file: str = "ood.npz",
           also: Sequence[str] = ()) -> None:
    """Write the manifest's ``ood`` block, a history line, the new digest of ``file`` (the domain model just
    written) and of the files in ``also`` (other domain models rewritten with it), and (optionally) version."""
    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["ood"] = ood
    if version:
        manifest["version"] = version
    manifest.setdefault("history", []).append(note)
    for written in (file, *also):
        manifest["files"][written] = sha256_of(model_dir / written)
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


def backend_domain(reference: DomainModel, f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray,
                   val_labs: np.ndarray) -> DomainModel:
    """The domain model of another backend's features: centres, covariance and thresholds refitted on them (as
    ``refit`` fits the fp32 ones); the red cells' stain and size references and the focus reference, which read pixels, kept from
    ``reference``. Field thresholds are added by ``training.field_alarm.with_field_thresholds`` once its distances
    exist."""
    fitted = fit_domain_model(f_train, y_train, f_val, val_labs)
    return dataclasses.replace(fitted, stain=reference.stain, red_cells=reference.red_cells, focus=reference.focus)


def even_field_cells(model_dir: Path, backend: str, domain: DomainModel, fields: Path) -> np.ndarray:
    """Distances under ``domain`` of the cells the serving path finds in the even BCCD fields (the half that
    chooses, as ``training.field_alarm --fit``), computed by ``backend``."""
    from training.field_alarm import field_scores, scored_cells

    classifier = load_classifier(model_dir, backend, threads=1)
    classifier.domain = domain  # distances against the reference being fitted, not the one on disk
    paths = sorted((fields / "JPEGImages").glob("*.jpg"))[0::2]
    if not paths:
        raise SystemExit(f"error: no fields in {fields}/JPEGImages")
    return scored_cells(field_scores(classifier, paths))


def refit_backend(model_dir: Path, config: TrainConfig, backend: str, version: str, fields: Path | None) -> dict:
    """Fit ``backend``'s own domain model beside the fp32 one and list it under the manifest's ``ood.backends``."""
    if backend not in BACKEND_FILES:
        raise SystemExit(f"error: backend {backend!r} reads the fp32 domain model; choose one of {sorted(BACKEND_FILES)}")
    manifest = ModelManifest.load(model_dir)
    reference = load_domain(model_dir, manifest)
    if reference is None:
        raise SystemExit(f"error: model {manifest.label} has no domain model (ood.npz) to refit for {backend}")
    splits = load_splits(Path(config.work_dir) / "splits.json")
    f_train, y_train, _ = split_features(str(model_dir), splits["train"], backend)
    f_val, _, val_labs = split_features(str(model_dir), splits["val"], backend)
    domain = backend_domain(reference, f_train, y_train, f_val, val_labs)
    file = BACKEND_FILES[backend]
    entry = domain_block(domain, val_labs, file, f"{len(f_train)} training images, thresholds on {len(f_val)} validation "
                                                 f"images ({backend} features); red-cell stain and size and focus references "
                                                 "as the fp32 domain model's")
    if fields is not None and reference.field_thresholds is not None:
        from training.field_alarm import fields_block, with_field_thresholds

        cells = even_field_cells(model_dir, backend, domain, fields)
        domain = with_field_thresholds(domain, cells)
        entry["fields"] = fields_block(domain, f"{len(cells)} cells of the even BCCD fields ({backend} features)")
    domain.save(model_dir / file)
    ood = dict(manifest.extra["ood"])
    ood["backends"] = {**(ood.get("backends") or {}), backend: entry}
    record(model_dir, ood, f"{version}: {backend}'s own domain model fitted by training.refit_domain --backend {backend} "
                           f"from {manifest.version} (same networks, same predictions)", version, file)
    ModelManifest.load(model_dir)  # every digest, the new file's included
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.refit_domain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported model directory, rewritten in place")
    parser.add_argument("--config", required=True, help="the model's training config (its splits.json)")
    parser.add_argument("--version", required=True, help="the new (patch) version written to the manifest")
    parser.add_argument("--backend", default="litert",
                        help="litert (default: the fp32 domain model, ood.npz) or litert-int8 (its own, beside it)")
    parser.add_argument("--fields", help="with --backend: BCCD folder (JPEGImages/) whose even fields set the field thresholds")
    args = parser.parse_args(argv)
    config = TrainConfig.from_file(args.config)
    if args.backend == "litert":
        result = refit(Path(args.model), config, args.version)
    else:
        result = refit_backend(Path(args.model), config, args.backend, args.version, Path(args.fields) if args.fields else None)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
