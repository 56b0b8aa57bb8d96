"""Lay out a configuration's train/val/test split without training.

``python -m training.splits --config training/configs/mnv2_cc_160.json``

Writes ``<work_dir>/splits.json`` and ``<work_dir>/splits/{kaggle,pbc}_{val,test}/``
(class folders of symlinks) so ``training.evaluate`` can be re-run on the
exact held-out images from a fresh clone. The split depends only on the data,
the seed and the fractions, so it is the one the shipped model was trained on.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from training.config import add_config_arguments, config_from_args
from training.train import make_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.splits", description=__doc__)
    parser.add_argument("--config")
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    splits = make_splits(config)
    for name, samples in splits.items():
        print(name, len(samples), dict(sorted(Counter(s.dataset for s in samples).items())))
    print(f"evaluation folders under {config.work_dir}/splits/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
