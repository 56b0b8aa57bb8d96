"""Finding, splitting and decoding the training images.

The Kaggle set holds augmented copies of only 276 photographs, so it is split
by source cell (class, A in ``_A_B.jpeg``): copies of one cell never sit on
both sides of a split. PBC gives no patient ids, so it is split per image,
stratified by class (a known optimism, stated in the model card).
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.preprocess import RECIPE, RECIPE_CENTER_SQUARE, to_model_pixels

KAGGLE_FOLDERS = {"EOSINOPHIL": "eosinophil", "LYMPHOCYTE": "lymphocyte", "MONOCYTE": "monocyte", "NEUTROPHIL": "neutrophil"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
_KAGGLE_NAME = re.compile(r"^_(\d+)_(\d+)\.")


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``group`` names the source cell it was copied from."""

    path: str
    label: str
    dataset: str
    group: str


def kaggle_source(path: Path) -> str | None:
    """Return 'CLASS/A' for Kaggle names ``_A_B.jpeg``, else None."""
    match = _KAGGLE_NAME.match(path.name)
    return f"{path.parent.name.upper()}/{match.group(1)}" if match else None


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def kaggle_samples(root: Path) -> list[Sample]:
    samples = []
    for folder, label in KAGGLE_FOLDERS.items():
        for path in list_images(root / folder):
            group = kaggle_source(path) or f"{folder}/{path.name}"
            samples.append(Sample(str(path), label, "kaggle", group))
    return samples


def pbc_samples(root: Path, classes: tuple[str, ...], limit: int = 0) -> list[Sample]:
    samples = []
    for label in classes:
        paths = list_images(root / label)
        if limit:
            paths = paths[:limit]
        samples.extend(Sample(str(p), label, "pbc", f"{label}/{p.name}") for p in paths)
    return samples


def split_by_group(samples: list[Sample], fractions: tuple[float, float, float], seed: int) -> dict[str, list[Sample]]:
    """Assign whole groups to train/val/test, per class, with at least one group each when possible."""
    rng = random.Random(seed)
    by_class: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_class[s.label][s.group].append(s)
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        rng.shuffle(groups)
        n = len(groups)
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        parts = {"val": groups[:n_val], "test": groups[n_val : n_val + n_test], "train": groups[n_val + n_test :]}
        for split, names in parts.items():
            for g in names:
                out[split].extend(by_class[label][g])
    return out


def cap_per_class(samples: list[Sample], cap: int, seed: int) -> list[Sample]:
    """Keep at most ``cap`` per class, taking copies round-robin over source cells."""
    if cap <= 0:
        return samples
    rng = random.Random(seed)
    by_class: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_class[s.label][s.group].append(s)
    kept: list[Sample] = []
    for label in sorted(by_class):
        queues = [sorted(v, key=lambda s: s.path) for _, v in sorted(by_class[label].items())]
        for q in queues:
            rng.shuffle(q)
        chosen: list[Sample] = []
        while len(chosen) < cap and any(queues):
            for q in queues:
                if q and len(chosen) < cap:
                    chosen.append(q.pop())
        kept.extend(chosen)
    return kept


def read_training_image(path: str) -> np.ndarray:
    """Decode one training image to BGR at its own size; an undecodable one stops training."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode training image {path}")
    return bgr


def decode_for_training(path: str, size: int, recipe: str = RECIPE) -> np.ndarray:
    return to_model_pixels(read_training_image(path), size, recipe)


def load_raw(samples: list[Sample]) -> list[np.ndarray]:
    """Decode every sample to BGR at its own size (for augmentation before the serving crop)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda s: read_training_image(s.path), samples))


def load_pixels(samples: list[Sample], size: int, cache: Path | None = None, recipe: str = RECIPE) -> np.ndarray:
    """Decode all samples to uint8 (N, size, size, 3) with the serving recipe, cached on disk by file list and recipe."""
    if cache is not None and cache.exists():
        data = np.load(cache)
        if list(data["paths"]) == [s.path for s in samples] and str(data.get("recipe", RECIPE_CENTER_SQUARE)) == recipe:
            return data["pixels"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        pixels = np.stack(list(pool.map(lambda s: decode_for_training(s.path, size, recipe), samples)))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, pixels=pixels, paths=np.array([s.path for s in samples]), recipe=np.array(recipe))
    return pixels


def save_splits(splits: dict[str, list[Sample]], path: Path) -> None:
    path.write_text(json.dumps({k: [asdict(s) for s in v] for k, v in splits.items()}, indent=1))


def load_splits(path: Path) -> dict[str, list[Sample]]:
    return {k: [Sample(**s) for s in v] for k, v in json.loads(path.read_text()).items()}


def materialize_split(samples: list[Sample], folder: Path) -> None:
    """Lay a split out as class folders of symlinks, the layout ``training.evaluate`` reads."""
    for s in samples:
        target = folder / s.label / Path(s.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(Path(s.path).resolve())
