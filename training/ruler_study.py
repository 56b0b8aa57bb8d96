"""Does the red-cell ruler hold when the image is cropped tighter or magnified? A label-free study.

``python -m training.ruler_study --splits runs/<run>/splits.json [--n 150] [--json OUT]``

Why: the cell-centred recipe (``pipeline.cellcrop``) crops four red-cell
diameters around the cell, so the same cell photographed tighter or at a
higher magnification should give the same physical crop. For each image the
crop side is measured on the image itself and on shifted copies (central
crops of 70 % and 50 %, which keep the pixel scale; magnification 1.5x and
2x, which multiply it); the ratio of the measured side to the expected one
should be 1. Reported per laboratory: the median ratio and the share within
20 %, plus the ratio of the stained object's box to the red-cell diameter that
sets ``CELL_BOX_RBC`` and ``MAX_CELL_BOX_RBC``. Training-split images only:
no label is used, but the held-out images stay untouched anyway.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from pipeline import cellcrop
from training.data import load_splits, read_training_image
from training.shifts import scale_content, tight_crop

SHIFTS = (("tight 70%", 0.7, 1.0), ("tight 50%", 0.5, 1.0), ("magnified 1.5x", 1.5, 1.5), ("magnified 2x", 2.0, 2.0))


def shifted(bgr: np.ndarray, name: str, value: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return tight_crop(bgr, rng, value) if name.startswith("tight") else scale_content(bgr, rng, value)


def without_guard() -> None:
    """The recipe as model 2.0 shipped it: any ruler trusted, fallback of three object boxes."""
    cellcrop.MAX_CELL_BOX_RBC = float("inf")
    cellcrop.CROP_NUCLEUS_SIDES = 3.0


def study(splits_path: str, n: int = 150, seed: int = 0) -> dict:
    train = load_splits(Path(splits_path))["train"]
    result: dict = {}
    for lab in ("kaggle", "pbc"):
        paths = sorted(s.path for s in train if s.dataset == lab)
        paths = random.Random(seed).sample(paths, min(n, len(paths)))
        ratios: dict[str, list[float]] = {name: [] for name, _, _ in SHIFTS}
        box_over_rbc = []
        for path in paths:
            bgr = read_training_image(path)
            base = cellcrop.cell_crop(bgr, 160)
            if base.ruler_px and base.cell_box_px:
                box_over_rbc.append(base.cell_box_px / base.ruler_px)
            for name, value, factor in SHIFTS:
                side = cellcrop.cell_crop(shifted(bgr, name, value), 160).side_px
                ratios[name].append(float(np.log(side / (base.side_px * factor))))
        result[lab] = {
            "images": len(paths),
            "box_over_rbc_quantiles_50_90_95_99": [round(float(q), 3) for q in np.percentile(box_over_rbc, [50, 90, 95, 99])],
            "box_over_rbc_above_max": round(float(np.mean(np.array(box_over_rbc) > cellcrop.MAX_CELL_BOX_RBC)), 4),
            "side_ratio": {name: {"median": round(float(np.exp(np.median(v))), 3),
                                  "within_20pct": round(float(np.mean(np.abs(v) < np.log(1.2))), 3)} for name, v in ratios.items()},
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ruler_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", required=True, help="splits.json of a training run (its train split is used)")
    parser.add_argument("--n", type=int, default=150, help="images per laboratory")
    parser.add_argument("--no-guard", action="store_true", help="measure the recipe as 2.0 shipped it (no fragment guard)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.no_guard:
        without_guard()
    result = study(args.splits, args.n)
    for lab, r in result.items():
        print(f"{lab}: {r['images']} images; object box / red-cell diameter (50/90/95/99 %): {r['box_over_rbc_quantiles_50_90_95_99']}, "
              f"above {cellcrop.MAX_CELL_BOX_RBC}: {r['box_over_rbc_above_max']:.1%}")
        for name, s in r["side_ratio"].items():
            print(f"  {name:<15} crop side / expected: median {s['median']:.2f}, within 20 %: {s['within_20pct']:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
