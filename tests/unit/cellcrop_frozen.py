"""The frozen behaviour of ``pipeline.cellcrop.cell_crop``: a fixed image set and its outputs.

Why: model 2.0's successors are trained on exactly these crops, so a faster
implementation must reproduce them bit for bit (pixels) and float for float
(centre, ruler, side, gains). ``tests/fixtures/cellcrop_frozen.json`` holds
the outputs of the implementation as it was when the fixture was made
(before the speed-up of 2026-11-27); ``test_cellcrop_frozen`` compares.
``cellcrop_frozen_fast.json`` does the same for the ``FAST`` resampling (frozen
when model 2.3's training crops were made, 2026-11-28).

Regenerate only when the recipe's behaviour is *meant* to change (which also
means a new recipe name and retraining): ``python -m tests.unit.cellcrop_frozen exact|fast``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from pipeline.cellcrop import EXACT, FAST, CellCrop, Resampling, cell_crop
from tests.conftest import REPO, SHARED, synthetic_field

FIXTURE = REPO / "tests" / "fixtures" / "cellcrop_frozen.json"
#: resampling name -> (resampling, its fixture)
FROZEN: dict[str, tuple[Resampling, Path]] = {
    "exact": (EXACT, FIXTURE),
    "fast": (FAST, REPO / "tests" / "fixtures" / "cellcrop_frozen_fast.json"),
}
#: the two input sizes of the shipped models
SIZES = (160, 224)
#: images per laboratory taken from ../shared (spread over the sorted file list, so over the classes)
PER_LAB = 20


def _spread(paths: list[Path], n: int) -> list[Path]:
    return [paths[round(i * (len(paths) - 1) / (n - 1))] for i in range(n)] if len(paths) >= n else paths


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return image


def _shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The cell moved off-centre: the frame shifted by (dx, dy), the uncovered edge replicated."""
    h, w = image.shape[:2]
    padded = cv2.copyMakeBorder(image, abs(dy), abs(dy), abs(dx), abs(dx), cv2.BORDER_REPLICATE)
    y0, x0 = abs(dy) + dy, abs(dx) + dx
    return np.ascontiguousarray(padded[y0 : y0 + h, x0 : x0 + w])


def _tight(image: np.ndarray) -> np.ndarray:
    """The central half of each side: a crop tighter than either laboratory's."""
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2])


#: variations applied to a few real images of each laboratory: name -> transform
VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tight": _tight,
    "magnified": lambda im: cv2.resize(_tight(im), None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR),
    "off-centre": lambda im: _shifted(im, im.shape[1] // 4, -im.shape[0] // 5),
    # block upscaling, not cv2's cubic: the cubic result depends on the CPU's vector instructions (two machines
    # of this project gave different pixels), and a frozen input must be the same everywhere
    "large": lambda im: np.repeat(np.repeat(im, 6, axis=0), 6, axis=1),
    "yellow-cast": lambda im: np.clip(im * np.array([0.72, 0.95, 1.08]), 0, 255).astype(np.uint8),
    "grey": lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY),
    "bgra": lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2BGRA),
    "small": lambda im: cv2.resize(im, (im.shape[1] // 3, im.shape[0] // 3), interpolation=cv2.INTER_AREA),
}


def cases() -> Iterator[tuple[str, np.ndarray]]:
    """(name, BGR/grey/BGRA image) pairs: real images of both laboratories, variations, synthetic smears."""
    kaggle = _spread(sorted(SHARED.glob("kaggle/TRAIN/*/*.jpeg")), PER_LAB)
    pbc = _spread(sorted(SHARED.glob("pbc/*/*.jpg")), PER_LAB)
    if len(kaggle) < PER_LAB or len(pbc) < PER_LAB:
        raise FileNotFoundError(f"training images not found under {SHARED}: ../shared must sit beside the repository")
    for path in kaggle + pbc:
        yield str(path.relative_to(SHARED)), _read(path)
    for path in kaggle[:3] + pbc[:3]:
        image = _read(path)
        for variant, transform in VARIANTS.items():
            yield f"{path.relative_to(SHARED)}:{variant}", transform(image)
    for path in sorted((REPO / "samples" / "cells").rglob("*.jp*g"))[::4]:
        yield str(path.relative_to(REPO)), _read(path)
    yield "synthetic:centred", synthetic_field(360, 360, [(180, 180)], seed=0, rbc=14)
    yield "synthetic:off-centre", synthetic_field(360, 360, [(250, 120)], seed=2, rbc=14)
    yield "synthetic:magnified-720", synthetic_field(720, 720, [(360, 360)], seed=1, rbc=56)
    yield "synthetic:no-cell", synthetic_field(360, 360, [], seed=4, rbc=14)
    yield "synthetic:field-1600x1200", synthetic_field(1600, 1200, [(400, 300), (1200, 800)], seed=5, rbc=180)
    yield "blank-white", np.full((100, 120, 3), 255, np.uint8)
    yield "black", np.zeros((90, 100, 3), np.uint8)
    yield "tiny-noise", np.random.default_rng(7).integers(0, 256, (12, 20, 3), dtype=np.uint8)


def fingerprint(crop: CellCrop) -> dict[str, object]:
    """Everything a crop reports, exactly: a hash of its pixels, and the floats as they are (JSON keeps them)."""
    return {
        "pixels": hashlib.sha256(np.ascontiguousarray(crop.pixels).tobytes()).hexdigest()[:24],
        "shape": list(crop.pixels.shape),
        "dtype": str(crop.pixels.dtype),
        "found": crop.found,
        "center": [float(crop.center[0]), float(crop.center[1])],
        "rbc_diameter_px": None if crop.rbc_diameter_px is None else float(crop.rbc_diameter_px),
        "side_px": float(crop.side_px),
        "gains": [float(g) for g in crop.gains],
    }


def outputs(resampling: Resampling = EXACT) -> dict[str, dict[str, object]]:
    """``cell_crop``'s outputs for every case and model input size, keyed "name@size"."""
    return {f"{name}@{size}": fingerprint(cell_crop(image, size, resampling)) for name, image in cases() for size in SIZES}


def main(argv: list[str] | None = None) -> int:
    which = (argv if argv is not None else sys.argv[1:])[:1]
    if not which or which[0] not in FROZEN:
        print(f"usage: python -m tests.unit.cellcrop_frozen {'|'.join(FROZEN)}", file=sys.stderr)
        return 2
    resampling, fixture = FROZEN[which[0]]
    fixture.parent.mkdir(parents=True, exist_ok=True)
    frozen = outputs(resampling)
    lines = [f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}" for key, value in sorted(frozen.items())]
    fixture.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one case a line: reviewable diffs
    print(f"{len(frozen)} outputs written to {fixture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
