"""What the 2.0 preprocessing costs: both recipes and both shipped-model sizes, side by side in one run.

``python -m bench.recipes [--images N] [--old-model DIR] [--baseline GIT-REF]``

Decodes N cell images once (half Kaggle, half PBC), then times each
preprocessing recipe (``pipeline.preprocess.RECIPES``) on them, and the LiteRT
classifier alone for the shipped model (and an older model directory if given),
at batch 64, one process. The whole-path cost per image is about decode +
preprocess + model, so the printed sums say how the new recipe and the smaller
input change it.

``--baseline main`` also loads ``pipeline/cellcrop.py`` as it is in that git
revision and times it beside the working tree's, on the same images and on
2000x1500 copies of some of them (camera-sized single-cell images), and checks
that both give the same crops: a speed-up of the cell-centred recipe is
measured before and after in one run, and must not change its output.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from pipeline import cellcrop
from pipeline.classifier import load_classifier
from pipeline.images import decode_image
from pipeline.preprocess import RECIPES, model_crop, scale_for_mobilenet
from pipeline.settings import Settings
from pipeline.stain_check import stain_signature


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


def baseline_cellcrop(ref: str) -> ModuleType:
    """``pipeline/cellcrop.py`` as it is in git revision ``ref``, loaded as a separate module."""
    source = subprocess.run(["git", "show", f"{ref}:pipeline/cellcrop.py"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    if source.returncode != 0:
        raise SystemExit(f"--baseline {ref}: {source.stderr.strip()}")
    path = Path(tempfile.mkdtemp(prefix="hv-baseline-")) / "cellcrop_baseline.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("cellcrop_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def same_crops(a, b) -> bool:
    return (np.array_equal(a.pixels, b.pixels) and a.found == b.found and a.center == b.center
            and a.rbc_diameter_px == b.rbc_diameter_px and a.side_px == b.side_px and a.gains == b.gains)


def compare_cellcrop(ref: str, images: list[np.ndarray], size: int = 160, rounds: int = 3) -> None:
    """Baseline and current ``cell_crop`` side by side, and whether their outputs agree.

    The two run alternately on each image (each first in turn, for warm caches) and
    each keeps its best of ``rounds``, so a change in background load hits both alike.
    """
    old = baseline_cellcrop(ref)
    large = [cv2.resize(img, (2000, 1500), interpolation=cv2.INTER_CUBIC) for img in images[:: max(1, len(images) // 20)]]
    for name, items in ((f"{len(images)} cell images", images), (f"{len(large)} 2000x1500 copies", large)):
        same = sum(same_crops(old.cell_crop(img, size), cellcrop.cell_crop(img, size)) for img in items)
        best = np.full((2, len(items)), np.inf)
        for round_ in range(rounds):
            for i, img in enumerate(items):
                for j, module in ((0, old), (1, cellcrop))[:: 1 if round_ % 2 == 0 else -1]:  # each goes first in turn
                    t0 = time.perf_counter()
                    module.cell_crop(img, size)
                    best[j, i] = min(best[j, i], time.perf_counter() - t0)
        before, after = 1000.0 * best.mean(axis=1)
        print(f"cell_crop at {size}, {name}: {ref} {before:.2f} ms/image, working tree {after:.2f} ms/image "
              f"({before / after:.2f}x); identical outputs for {same} of {len(items)}")


def compare_resampling(images: dict[str, list[np.ndarray]], size: int = 160) -> None:
    """``EXACT`` and ``FAST`` resampling (``pipeline.cellcrop``) per laboratory: time, and how far the crops move.

    A model trained on one is served with the same one (its recipe name says which), so this is not
    an accuracy figure: it says how different the network's input is (found cell, crop side, pixels).
    """
    for lab, items in images.items():
        exact_ms = ms_per_image(lambda img: cellcrop.cell_crop(img, size), items)
        fast_ms = ms_per_image(lambda img: cellcrop.cell_crop(img, size, cellcrop.FAST), items)
        pairs = [(cellcrop.cell_crop(img, size), cellcrop.cell_crop(img, size, cellcrop.FAST)) for img in items]
        found = sum(a.found == b.found for a, b in pairs)
        ratio = np.percentile([b.side_px / a.side_px for a, b in pairs], [5, 50, 95])
        diff = [float(np.abs(a.pixels.astype(np.int16) - b.pixels.astype(np.int16)).mean()) for a, b in pairs]
        print(f"cell_crop at {size}, {len(items)} {lab} images: EXACT {exact_ms:.2f} ms/image, FAST {fast_ms:.2f} ms/image "
              f"({exact_ms / fast_ms:.2f}x); same found/not found {found} of {len(items)}; crop side FAST/EXACT "
              f"p5/p50/p95 {ratio[0]:.3f}/{ratio[1]:.3f}/{ratio[2]:.3f}; mean |pixel difference| {np.mean(diff):.2f} "
              f"levels (p95 {np.percentile(diff, 95):.2f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--old-model", help="a 1.x model directory to time beside the shipped one")
    parser.add_argument("--baseline", metavar="GIT-REF", help="also time pipeline/cellcrop.py of this git revision (e.g. main)")
    parser.add_argument("--data", default="../shared/data")
    args = parser.parse_args(argv)
    kaggle, pbc = sorted(glob.glob(f"{args.data}/kaggle/TRAIN/*/*.jpeg")), sorted(glob.glob(f"{args.data}/pbc/*/*.jpg"))
    half = max(1, args.images // 2)
    paths = kaggle[:: max(1, len(kaggle) // half)][:half] + pbc[:: max(1, len(pbc) // half)][: args.images - half]
    raw = [Path(p).read_bytes() for p in paths]
    decode_ms = ms_per_image(lambda data: decode_image(data, 10**8), raw)
    images = [decode_image(data, 10**8) for data in raw]
    print(f"{len(images)} Kaggle/PBC cell images, {os.cpu_count()} cores, one thread of Python, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"decode (OpenCV): {decode_ms:.2f} ms/image")
    for recipe in RECIPES:
        for size in (160, 224):
            print(f"preprocess {recipe} at {size}: {ms_per_image(lambda img, r=recipe, s=size: model_crop(img, s, r), images):.2f} ms/image")
    crops = [model_crop(img, 160).pixels for img in images]
    print(f"red-cell stain signature of the 160 px crop (pipeline.stain_check, every image since 2.3.1): "
          f"{ms_per_image(stain_signature, crops):.2f} ms/image")
    compare_resampling({"Kaggle": images[:half], "PBC": images[half:]})
    if args.baseline:
        compare_cellcrop(args.baseline, images)
    for model_dir in [Settings().model_dir] + ([args.old_model] if args.old_model else []):
        label, size, ms = classifier_ms(model_dir, images)
        print(f"classifier alone {label} ({size}x{size}, LiteRT fp32, batch 64): {ms:.2f} ms/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
