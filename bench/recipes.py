"""What the 2.0 preprocessing costs: both recipes and both shipped-model sizes, side by side in one run.

``python -m bench.recipes [--images N] [--old-model DIR]``

Decodes N cell images once, then times each preprocessing recipe
(``pipeline.preprocess.RECIPES``) on them, and the LiteRT classifier alone for
the shipped model (and an older model directory if given), at batch 64, one
process. The whole-path cost per image is about decode + preprocess + model,
so the printed sums say how the new recipe and the smaller input change it.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.classifier import load_classifier
from pipeline.images import decode_image
from pipeline.preprocess import RECIPES, model_crop, scale_for_mobilenet
from pipeline.settings import Settings


def ms_per_image(fn, items: list, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return 1000.0 * best


def classifier_ms(model_dir: str, images: list[np.ndarray], batch: int = 64) -> tuple[str, int, float]:
    clf = load_classifier(model_dir, "litert")
    m = clf.manifest
    x = scale_for_mobilenet(np.stack([model_crop(img, m.input_size, m.preprocessing).pixels for img in images[:batch]]))
    clf.predict(x)  # warm-up and tensor allocation
    t0 = time.perf_counter()
    for _ in range(5):
        clf.predict(x)
    return m.label, m.input_size, 1000.0 * (time.perf_counter() - t0) / (5 * len(x))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--old-model", help="a 1.x model directory to time beside the shipped one")
    parser.add_argument("--data", default="../shared/data")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(f"{args.data}/kaggle/TRAIN/*/*.jpeg"))[::23] + sorted(glob.glob(f"{args.data}/pbc/*/*.jpg"))[::9]
    paths = paths[: args.images]
    raw = [Path(p).read_bytes() for p in paths]
    decode_ms = ms_per_image(lambda data: decode_image(data, 10**8), raw)
    images = [decode_image(data, 10**8) for data in raw]
    print(f"{len(images)} Kaggle/PBC cell images, {os.cpu_count()} cores, one thread of Python")
    print(f"decode (OpenCV): {decode_ms:.2f} ms/image")
    for recipe in RECIPES:
        for size in (160, 224):
            print(f"preprocess {recipe} at {size}: {ms_per_image(lambda img, r=recipe, s=size: model_crop(img, s, r), images):.2f} ms/image")
    for model_dir in [Settings().model_dir] + ([args.old_model] if args.old_model else []):
        label, size, ms = classifier_ms(model_dir, images)
        print(f"classifier alone {label} ({size}x{size}, LiteRT fp32, batch 64): {ms:.2f} ms/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
