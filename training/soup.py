"""Model soups: one network whose weights are the average of several fine-tuned from one start.

``python -m training.soup --work-dir RUN_A --work-dir RUN_B --out DIR [--export-dir DIR]``

Why: networks fine-tuned from the same pretrained weights with different
training choices end in one low-loss basin, so their weight average is
itself a good network, and it tends to keep in-domain accuracy while gaining
under distribution shift (Wortsman et al., "Model soups", ICML 2022); it costs
nothing at inference (one network, not an ensemble). Here the two recipes
differ in what they make the network ignore (the 2.2 recipe's stain jitter;
RandConv's random colour mixes and textures), and a lab the project has not
seen may need both.

The mix is uniform (every weight, batch-norm moving statistics included): a
weighted mix would be one more knob to tune on the data we report. The soup
gets a run folder of its own (``final.keras``, the first run's config, split
and cached crops), so ``training.export`` fits its temperature, int8 file and
domain alarm exactly as for a trained run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from training.config import TrainConfig


def average_weights(weight_lists: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of several networks' weight lists (same layout), in float64 then cast back."""
    if len(weight_lists) < 2:
        raise ValueError("a soup needs at least two networks")
    first = weight_lists[0]
    for other in weight_lists[1:]:
        if len(other) != len(first) or any(a.shape != b.shape for a, b in zip(first, other, strict=True)):
            raise ValueError("the networks differ in layout: a soup needs one architecture fine-tuned from one start")
    return [np.mean([np.asarray(w[i], np.float64) for w in weight_lists], axis=0).astype(first[i].dtype)
            for i in range(len(first))]


def soup_of(paths: list[Path]):
    """The first network of ``paths`` (``.keras``) with its base and logits weights replaced by the average of all.

    Base and logits by name (``training.model.base_of`` and the ``logits`` layer), as
    ``training.train.warm_start`` copies them: a file saved with the feature output
    (``training.export.with_features``) mixes with one saved without it.
    """
    import keras

    from training.model import base_of

    models = [keras.models.load_model(str(p), compile=False) for p in paths]
    soup = models[0]
    base_of(soup).set_weights(average_weights([base_of(m).get_weights() for m in models]))
    soup.get_layer("logits").set_weights(average_weights([m.get_layer("logits").get_weights() for m in models]))
    return soup


def make_soup_run(work_dirs: list[Path], out: Path, export_dir: str | None = None) -> TrainConfig:
    """Write ``out/final.keras`` (the soup of the runs' ``final.keras``) and a config whose split and cached
    crops are the first run's, ready for ``training.export --work-dir out``."""
    ingredients = [json.loads((w / "config.json").read_text()) for w in work_dirs]
    first = TrainConfig(**ingredients[0])
    out.mkdir(parents=True, exist_ok=True)
    soup_of([w / "final.keras" for w in work_dirs]).save(str(out / "final.keras"))
    for name in ("splits.json", f"cache_train_{first.input_size}.npz", f"cache_val_{first.input_size}.npz"):
        link = out / name
        link.unlink(missing_ok=True)  # a folder re-used for another soup must not keep the old first run's files
        link.symlink_to((work_dirs[0] / name).resolve())
    config = dataclasses.replace(
        first, work_dir=str(out), export_dir=export_dir or str(out / "export"),
        model_version=first.model_version + "+soup",
        extra={**first.extra, "soup": {"mix": "uniform", "ingredients": [
            {"run": str(w), "augmentation": c["augmentation"], "raw_augmentation": c.get("raw_augmentation", ""),
             "init_from": c.get("init_from", ""), "seed": c.get("seed")} for w, c in zip(work_dirs, ingredients, strict=True)]}})
    (out / "config.json").write_text(config.to_json())
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.soup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", action="append", required=True, help="a finished run (twice or more)")
    parser.add_argument("--out", required=True, help="the soup's run folder")
    parser.add_argument("--export-dir", help="where the exported model goes (default OUT/export)")
    parser.add_argument("--calibration-images", default="200", help="int8 calibration images (0: no int8 file)")
    args = parser.parse_args(argv)
    if len(args.work_dir) < 2:
        parser.error("give --work-dir at least twice")
    config = make_soup_run([Path(w) for w in args.work_dir], Path(args.out), args.export_dir)
    from training.export import main as export

    return export(["--work-dir", config.work_dir, "--calibration-images", args.calibration_images])


if __name__ == "__main__":
    sys.exit(main())
