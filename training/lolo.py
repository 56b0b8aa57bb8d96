"""Leave-one-laboratory-out: the cross-laboratory measure this project can run.

``python -m training.lolo --config FILE --root DIR [--finetune-epochs N] [--json OUT]``

Trains the configuration twice, once on PBC only (Barcelona, CellaVision) and
once on the Kaggle/BCCD images only, then evaluates each model on the other
laboratory's validation images: the Kaggle classes for the PBC model; the
four classes Kaggle has for the Kaggle model. Neither model ever sees a pixel
of the laboratory it is scored on, so this is what a new laboratory would
get, short of a third laboratory's images. Validation folders only: the test
split stays reserved for the final figure.

Re-running the same command resumes finished phases (``training.train``);
``--eval-only`` re-scores exported models.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from training.config import TrainConfig, add_config_arguments, config_from_args
from training.data import KAGGLE_FOLDERS

HELD_OUT = {"pbc": "kaggle", "kaggle": "pbc"}


def lolo_config(base: TrainConfig, root: Path, trained_on: str) -> TrainConfig:
    """One laboratory's run, always from ImageNet: a warm start (``init_from``) from a model that saw both
    laboratories would leak the held-out one."""
    return dataclasses.replace(base, datasets=trained_on, init_from="", work_dir=str(root / f"lolo_{trained_on}"),
                               export_dir=str(root / "export" / f"lolo_{trained_on}"),
                               model_name=f"{base.model_name}-lolo-{trained_on}", model_version=base.model_version + "+lolo")


def folders_of(root: Path) -> dict[str, Path]:
    """Where a run under ``root`` keeps its validation folders (paths only: see :func:`evaluation_folders`)."""
    splits = root / "splits" / "splits"
    return {"kaggle": splits / "kaggle_val", "pbc": root / "splits" / "pbc_val_kaggle_classes", "pbc_all": splits / "pbc_val"}


def evaluation_folders(base: TrainConfig, root: Path) -> dict[str, Path]:
    """Validation folders of both laboratories (the same split as the full model's), PBC cut to Kaggle's classes."""
    from training.train import make_splits

    make_splits(dataclasses.replace(base, datasets="both", work_dir=str(root / "splits")))
    folders = folders_of(root)
    folders["pbc"].mkdir(parents=True, exist_ok=True)
    for label in KAGGLE_FOLDERS.values():
        link = folders["pbc"] / label
        if not link.exists():
            link.symlink_to((folders["pbc_all"] / label).resolve())
    return folders


def run(base: TrainConfig, root: Path, eval_only: bool = False) -> dict:
    from training.evaluate import evaluate

    folders = evaluation_folders(base, root)
    results = {}
    for trained_on, held_out in HELD_OUT.items():
        config = lolo_config(base, root, trained_on)
        if not eval_only:
            from training.train import run as train

            train(config)
        own = folders["pbc_all"] if trained_on == "pbc" else folders["kaggle"]
        results[f"{trained_on}->{held_out}"] = {
            "trained_on": trained_on, "model": config.export_dir,
            "held_out_lab": _brief(evaluate(config.export_dir, str(folders[held_out]))),
            "own_lab_val": _brief(evaluate(config.export_dir, str(own))),
        }
    return {"recipe": base.recipe, "augmentation": base.augmentation, "raw_augmentation": base.raw_augmentation,
            "input_size": base.input_size,
            "finetune_epochs": base.finetune_epochs, "results": results}


def _brief(result: dict) -> dict:
    keep = ("n_images", "accuracy", "coverage", "accuracy_on_found", "macro_f1", "ece", "domain")
    return {k: result[k] for k in keep if k in result}


def print_table(summary: dict) -> None:
    print(f"recipe {summary['recipe']}, augmentation {summary['augmentation']}"
          f"{' + ' + summary['raw_augmentation'] if summary.get('raw_augmentation') else ''}, {summary['input_size']} px, "
          f"fine-tune epochs {summary['finetune_epochs']}")
    print(f"{'trained on -> scored on':<26}{'n':>6}{'acc':>8}{'macroF1':>9}{'ECE':>7}{'alarm':>7}   own-lab val acc")
    for name, r in summary["results"].items():
        h = r["held_out_lab"]
        alarm = h.get("domain", {}).get("alarm_rate")
        print(f"{name:<26}{h['n_images']:>6}{h['accuracy']:>8.3f}{h['macro_f1']:>9.3f}{h['ece']:>7.3f}"
              f"{'' if alarm is None else f'{alarm:>7.0%}':>7}   {r['own_lab_val']['accuracy']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lolo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", required=True, help="folder for the two runs, their exports and the evaluation folders")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--eval-only", action="store_true")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    summary = run(config_from_args(args), Path(args.root), args.eval_only)
    print_table(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
