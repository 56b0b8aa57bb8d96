"""Leave-one-laboratory-out *pairs*: each direction's networks of several seeds, assembled as an ensemble is served.

``python -m training.lolo_pair --roots runs/lolo_mix runs/lolo_mix_s2 --out runs/lolo_pair``

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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.ensemble import assemble
from training.lolo import HELD_OUT, folders_of


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lolo_pair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roots", nargs="+", required=True, help="training.lolo roots of one recipe and split, one per seed")
    parser.add_argument("--out", required=True, help="a new folder, laid out like a training.lolo root")
    args = parser.parse_args(argv)
    if len(args.roots) < 2:
        parser.error("a pair needs at least two roots")
    result = assemble_pairs([Path(r) for r in args.roots], Path(args.out))
    for lab, row in result["directions"].items():
        fit = row["temperature_fit"]
        print(f"trained on {lab}: temperature {fit['temperature']} (own-laboratory validation accuracy "
              f"{fit['validation_accuracy']:.4f}, ECE {fit['validation_ece']:.4f}, {fit['n_validation']} images)")
    (Path(args.out) / "lolo_pair.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
