"""Classifier-alone speed of several exported models, side by side in one run.

``python -m bench.models MODEL_DIR [MODEL_DIR ...] [--batch-size 64]``

Used for the input-size decision (160 vs 224) in MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench.throughput import time_classifier
from pipeline.classifier import load_classifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rates = {}
    for model_dir in args.models:
        size = load_classifier(model_dir, "litert").manifest.input_size
        batch = rng.uniform(-1, 1, (args.batch_size, size, size, 3)).astype(np.float32)
        rates[model_dir] = time_classifier("litert", model_dir, batch, args.repeats)
    first = next(iter(rates.values()))
    print(f"{os.cpu_count()} cores, LiteRT, batch size {args.batch_size}")
    for model_dir, rate in rates.items():
        print(f"{model_dir}: {rate:.1f} images/s ({first / rate:.2f}x the time of the first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
