"""Measure the red-cell stain target that ``pipeline.stainnorm`` maps every crop onto.

``python -m training.stain_target --config FILE [--per-lab 400]``

Why: the target must come from training images only (never validation or
test), and from both laboratories equally, so that neither laboratory's stain
is "the" stain. Prints each laboratory's median red-cell optical density over
white-balanced cell-centred crops and their mean, the figure frozen in
``pipeline.stainnorm.TARGET_OD_RGB``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.cellcrop import cell_crop
from pipeline.stainnorm import red_cell_od
from training.config import TrainConfig
from training.data import load_splits, read_training_image


def lab_medians(config: TrainConfig, per_lab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Median red-cell OD (R, G, B) per laboratory over up to ``per_lab`` random training images."""
    splits = load_splits(Path(config.work_dir) / "splits.json")
    rng = np.random.default_rng(seed)
    out = {}
    for lab in sorted({s.dataset for s in splits["train"]}):
        samples = [s for s in splits["train"] if s.dataset == lab]
        chosen = rng.choice(len(samples), min(per_lab, len(samples)), replace=False)
        ods = [red_cell_od(cell_crop(read_training_image(samples[i].path), config.input_size).pixels) for i in chosen]
        measured = np.array([od for od in ods if od is not None])
        out[lab] = np.median(measured, axis=0)
        print(f"{lab}: {len(measured)} of {len(chosen)} crops with red cells; median OD (R, G, B) "
              f"{[round(float(v), 3) for v in out[lab]]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stain_target", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--per-lab", type=int, default=400)
    args = parser.parse_args(argv)
    medians = lab_medians(TrainConfig.from_file(args.config), args.per_lab)
    target = np.mean(list(medians.values()), axis=0)
    print(f"target (mean of laboratories): {[round(float(v), 3) for v in target]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
