"""Leave-one-laboratory-out *pairs*: each direction's networks of several seeds, assembled as an ensemble is served.

``python -m training.lolo_pair --roots runs/lolo_mix runs/lolo_mix_s2 --out runs/lolo_pair [--shape 0.5 1.1 --gate 0.6]``

Why: 2.4.0 serves two networks as the mean of their logits, with a
temperature refitted for the mean and the distance rule of 2.3 on top. The
cross-laboratory calibration figures so far came from single
leave-one-laboratory-out networks. This assembles, for each direction (trained
on PBC only, trained on Kaggle only), the networks that ``training.lolo`` left
under each root into one ensemble directory with ``training.ensemble``: the
first root's network keeps its files and domain model, the others are added as
members, and the temperature is fitted by the shipping procedure on the
direction's *own* laboratory's validation images only (the unseen one is never
read). ``out`` is laid out like a ``training.lolo`` root (``export/lolo_<lab>``,
``splits``), so ``python -m training.distance_temperature --lolo-root OUT``
scores the pairs exactly as it scores single networks (rule P, model card).

``--shape`` and ``--gate`` then give each pair the shipped serving settings, for studies that read a pair as
served instead of applying them themselves (rule G2: ``training.tta_gate`` on the pair): the distance rule of
the shipped shape, its reference that quantile of the pair's own laboratory's clean validation distances (100
images per class, as rule P scored the shape), and the TTA gate. The unseen laboratory is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.classifier import load_classifier
from training.distance_temperature import collect_cached, write_manifest_rule
from training.ensemble import assemble
from training.lolo import HELD_OUT, folders_of
from training.temperature_shape import clean_rows, lolo_rule
from training.tta_gate import write_gate

#: images per class of the own laboratory whose distances set a shape's reference (rule P's ``--limit 100``)
SHAPE_LIMIT = 100


def assemble_pairs(roots: list[Path], out: Path, version: str = "lolo-pair") -> dict:
    """One ensemble per direction under ``out/export/lolo_<lab>``; ``out/splits`` points at the first root's."""
    if len(roots) < 2:
        raise ValueError("a pair needs at least two leave-one-laboratory-out roots")
    for root in roots:
        for lab in HELD_OUT:
            if not (root / "export" / f"lolo_{lab}" / "manifest.json").is_file():
                raise FileNotFoundError(f"{root / 'export' / f'lolo_{lab}'} has no exported model: run training.lolo first")
    out.mkdir(parents=True, exist_ok=True)
    splits = out / "splits"
    if not splits.exists():
        splits.symlink_to((roots[0] / "splits").resolve())
    folders = folders_of(roots[0])
    result = {"roots": [str(r) for r in roots], "directions": {}}
    for lab in HELD_OUT:
        own = folders["pbc_all"] if lab == "pbc" else folders["kaggle"]
        target = out / "export" / f"lolo_{lab}"
        target.parent.mkdir(parents=True, exist_ok=True)
        fit = assemble(roots[0] / "export" / f"lolo_{lab}", [r / "export" / f"lolo_{lab}" for r in roots[1:]], [own],
                       version, out=target)
        result["directions"][lab] = {"model": str(target), "temperature_fit": fit["temperature_fit"]}
    return result


def own_folder(out: Path, lab: str) -> Path:
    """The validation folder of the laboratory a direction was trained on (every class it knows)."""
    folders = folders_of(out)
    return folders["pbc_all"] if lab == "pbc" else folders["kaggle"]


def serve_as_shipped(out: Path, shape: tuple[float, float] | None, gate: float | None, log=print) -> dict:
    """Write the shipped serving settings into each pair of ``out`` (see the module's docstring); returns them."""
    settings = {}
    for lab in HELD_OUT:
        target = out / "export" / f"lolo_{lab}"
        row: dict = {}
        if shape is not None:
            classifier = load_classifier(target, "litert")
            clean = clean_rows(collect_cached(classifier, str(own_folder(out, lab)), SHAPE_LIMIT, [], log, None))
            rule = lolo_rule(clean, *shape)
            write_manifest_rule(str(target), "temperature_distance", rule, classifier.manifest.version,
                                "python -m training.lolo_pair --shape",
                                {"quantile": shape[0], "own_laboratory_images": int(len(clean["y"]))})
            row["temperature_distance"] = {"reference": rule.reference, "power": rule.power}
        if gate is not None:
            write_gate(str(target), gate, "the shipped model's gate (python -m training.lolo_pair --gate)")
            row["tta_gate"] = gate
        settings[lab] = row
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lolo_pair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roots", nargs="+", required=True, help="training.lolo roots of one recipe and split, one per seed")
    parser.add_argument("--out", required=True, help="a new folder, laid out like a training.lolo root")
    parser.add_argument("--shape", nargs=2, type=float, metavar=("QUANTILE", "POWER"),
                        help="write the distance rule of this shape into each pair (the shipped one: 0.5 1.1)")
    parser.add_argument("--gate", type=float, help="write this TTA gate into each pair (the shipped one: 0.6)")
    args = parser.parse_args(argv)
    if len(args.roots) < 2:
        parser.error("a pair needs at least two roots")
    result = assemble_pairs([Path(r) for r in args.roots], Path(args.out))
    if args.shape or args.gate is not None:
        result["served_as_shipped"] = serve_as_shipped(Path(args.out), tuple(args.shape) if args.shape else None, args.gate)
        print(f"serving settings written: {result['served_as_shipped']}")
    for lab, row in result["directions"].items():
        fit = row["temperature_fit"]
        print(f"trained on {lab}: temperature {fit['temperature']} (own-laboratory validation accuracy "
              f"{fit['validation_accuracy']:.4f}, ECE {fit['validation_ece']:.4f}, {fit['n_validation']} images)")
    (Path(args.out) / "lolo_pair.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
