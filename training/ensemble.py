"""Assemble a shipped ensemble: a model directory plus further trained networks, one refitted temperature.

``python -m training.ensemble --model models/hematovision-mnv2-cc-160 --member runs/export/<member> \\
    --data <kaggle_val> <pbc_val> --version 2.4.0 [--out DIR]``

The first network keeps every file it has (``model.*``, ``ood.npz``: the
domain check reads its features, so its thresholds stay valid). Each member's
networks are copied beside it as ``member<N>.keras``, ``member<N>.tflite`` and
``member<N>.int8.tflite`` (where it has one), listed in ``files`` with their
sha256 and under ``ensemble.members``, which ``pipeline.classifier`` reads.
The temperature of the logit mean is fitted as export fits a single
network's (``training.calibration``: the shift-aware fit on the validation
images and two augmented copies of each, the closest to it whose clean
validation ECE stays within 3 %), on the validation folders given; the
distance rule keeps its shape (its reference is a distance of the first
member's features, which do not change). Rule E in the model card says when
such a model ships.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from pipeline.classifier import LogitEnsemble, load_classifier
from pipeline.manifest import ModelManifest, sha256_of
from pipeline.preprocess import scale_for_mobilenet
from pipeline.temperature import CalibratedOutputs, calibrated_softmax
from training.metrics import fit_temperature, reliability

#: network files of an exported model and the name each takes as member N (``{n}``)
MEMBER_FILES = {"keras": ("model.keras", "member{n}.keras"), "litert": ("model.tflite", "member{n}.tflite"),
                "litert-int8": ("model.int8.tflite", "member{n}.int8.tflite")}


def copy_member(member_dir: Path, model_dir: Path, n: int) -> dict:
    """Copy one exported model's networks into ``model_dir`` as member ``n``; the manifest entry for it."""
    source = ModelManifest.load(member_dir)
    entry: dict = {"version": source.label}
    for backend, (name, target) in MEMBER_FILES.items():
        if (member_dir / name).is_file() and name in source.files:
            shutil.copyfile(member_dir / name, model_dir / target.format(n=n))
            entry[backend] = target.format(n=n)
    if "litert" not in entry:
        raise ValueError(f"{member_dir} has no model.tflite: export it first (training.export)")
    return entry


def mean_logits(members: list[CalibratedOutputs], pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    """The members' mean logits on uint8 crops, by the serving ensemble itself (``LogitEnsemble``), so the
    temperature is fitted on exactly the logits a job gets (the temperature passed here is not used by them)."""
    ensemble = LogitEnsemble(members, members[0].manifest.temperature)
    return np.concatenate([ensemble.logits(scale_for_mobilenet(pixels[start : start + batch]))
                           for start in range(0, len(pixels), batch)])


def fit_ensemble_temperature(members: list[CalibratedOutputs], folders: list[Path], seed: int = 1337) -> dict:
    """The export's temperature procedure, on the logit mean of ``members`` over the validation ``folders``."""
    from training.calibration import augmented_copies, choose_temperature, folder_pixels, shift_aware_temperature

    m = members[0].manifest
    parts = [folder_pixels(f, m.classes, m.input_size, m.preprocessing) for f in folders]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    logits = mean_logits(members, x)
    t_clean = fit_temperature(logits, y)
    copies = augmented_copies(x, m.input_size, seed=seed, preprocessing=m.preprocessing)
    t_shift = shift_aware_temperature(logits, mean_logits(members, copies), y)
    t = choose_temperature(logits, y, t_clean, t_shift)
    ece = reliability(calibrated_softmax(logits, t), y)[0]
    return {"temperature": round(float(t), 4), "clean_validation": round(float(t_clean), 4),
            "with_augmented_copies": round(float(t_shift), 4), "validation_ece": float(ece),
            "validation_accuracy": float((logits.argmax(1) == y).mean()), "n_validation": int(len(y)),
            "data": [f.name for f in folders]}


def assemble(model_dir: Path, member_dirs: list[Path], folders: list[Path], version: str, out: Path | None = None) -> dict:
    """Write the ensemble into ``out`` (a copy of ``model_dir``) or into ``model_dir`` itself."""
    target = out or model_dir
    if out is not None:
        if out.exists():
            raise FileExistsError(f"{out} exists; choose a new folder")
        shutil.copytree(model_dir, out)
    path = target / "manifest.json"
    manifest = json.loads(path.read_text())
    if manifest.get("ensemble"):
        raise ValueError(f"{model_dir} is already an ensemble")
    first_version = f"{manifest['name']}@{manifest['version']}"
    entries = [copy_member(d, target, n) for n, d in enumerate(member_dirs, start=2)]
    first = load_classifier(target, "litert", ensemble=False)
    others = [load_classifier(d, "litert", ensemble=False) for d in member_dirs]
    fit = fit_ensemble_temperature([first, *others], folders)
    for entry in entries:
        for backend in MEMBER_FILES:
            if backend in entry:
                manifest["files"][entry[backend]] = sha256_of(target / entry[backend])
    manifest["version"] = version
    manifest["ensemble"] = {"members": entries, "temperature": fit["temperature"], "combine": "mean of logits",
                            "fitted_by": "python -m training.ensemble", "temperature_fit": fit,
                            "first_member_version": first_version}
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    ModelManifest.load(target)  # every sha256, the new files' included
    return manifest["ensemble"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the first member: an exported model directory")
    parser.add_argument("--member", nargs="+", required=True, help="further exported model directories")
    parser.add_argument("--data", nargs="+", required=True, help="validation folders (one subfolder per class)")
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", help="write a new model directory here instead of changing --model")
    args = parser.parse_args(argv)
    result = assemble(Path(args.model), [Path(m) for m in args.member], [Path(d) for d in args.data], args.version,
                      Path(args.out) if args.out else None)
    fit = result["temperature_fit"]
    print(f"ensemble of {1 + len(result['members'])} networks: temperature {fit['temperature']} (clean fit "
          f"{fit['clean_validation']}, shift-aware {fit['with_augmented_copies']}), validation accuracy "
          f"{fit['validation_accuracy']:.4f}, ECE {fit['validation_ece']:.4f} on {fit['n_validation']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
