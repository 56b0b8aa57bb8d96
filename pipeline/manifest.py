"""The model manifest: what a ``models/<name>/`` directory promises.

Written by ``training.export``; read by every classifier backend so class
order, input size, preprocessing and temperature come from one place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.preprocess import RECIPES


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelManifest:
    """Class names in output order, input size, preprocessing, calibration and files."""

    name: str
    version: str
    classes: tuple[str, ...]
    white_cells: tuple[str, ...]
    input_size: int
    preprocessing: str
    temperature: float
    files: dict[str, str]
    extra: dict = field(default_factory=dict)

    @property
    def checks_stain(self) -> bool:
        """Whether the model carries a stain reference (``ood.stain``, from 2.3.1): only then is each image's
        red-cell stain signature worth its 0.25 ms of preparation (``pipeline.stain_check``)."""
        return bool((self.extra.get("ood") or {}).get("stain"))

    @property
    def checks_red_cells(self) -> bool:
        """Whether the model carries a red-cell reference (``ood.red_cells``, from 2.3.2): the stain and the red
        cells' diameter together, checked on cell-image jobs (``pipeline.stain_check.red_cell_signature``)."""
        return bool((self.extra.get("ood") or {}).get("red_cells"))

    @property
    def checks_focus(self) -> bool:
        """Whether the model carries a focus reference (``ood.focus``, from 2.4.2): each cell image's and each field
        cell's blur effect (``pipeline.focus_check``) is then measured on its model crop."""
        return bool((self.extra.get("ood") or {}).get("focus"))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def load(cls, model_dir: str | Path, verify: bool = True) -> ModelManifest:
        """Read ``manifest.json``; with ``verify`` check every file's sha256."""
        model_dir = Path(model_dir)
        path = model_dir / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"no model manifest at {path}; set HEMATOVISION_MODEL_DIR to an exported model")
        data = json.loads(path.read_text())
        known = {"name", "version", "classes", "white_cells", "input_size", "preprocessing", "temperature", "files"}
        manifest = cls(
            name=data["name"], version=data["version"], classes=tuple(data["classes"]),
            white_cells=tuple(data["white_cells"]), input_size=int(data["input_size"]),
            preprocessing=data["preprocessing"], temperature=float(data["temperature"]),
            files=dict(data["files"]), extra={k: v for k, v in data.items() if k not in known},
        )
        if manifest.preprocessing not in RECIPES:
            raise ValueError(f"model {manifest.label} wants preprocessing {manifest.preprocessing!r}; this version implements {sorted(RECIPES)}")
        if verify:
            for fname, expected in manifest.files.items():
                actual = sha256_of(model_dir / fname)
                if actual != expected:
                    raise ValueError(f"{model_dir / fname} is damaged: sha256 {actual} != manifest {expected}")
        return manifest
