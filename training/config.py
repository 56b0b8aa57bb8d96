"""Training configuration: one dataclass, loadable from JSON and CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

#: Output classes in model order: the 8 PBC classes. Kaggle folders map onto
#: four of them (see ``training.data.KAGGLE_FOLDERS``).
CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
#: Classes that enter the white-cell differential (immature granulocytes are
#: white cells; erythroblasts are reported per 100 WBC, platelets apart).
WHITE_CELLS: tuple[str, ...] = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")


@dataclass
class TrainConfig:
    """Everything that decides what model comes out of ``training.train``."""

    kaggle_dir: str = "../shared/data/kaggle/TRAIN"
    pbc_dir: str = "../shared/data/pbc"
    weights: str = "../shared/data/weights/mobilenet_v2_1.0_224_no_top_imagenet_dequant_tf2ptq.h5"
    work_dir: str = "runs/default"
    export_dir: str = "models/hematovision-mnv2-160"
    model_name: str = "hematovision-mnv2-160"
    model_version: str = "1.0.0"
    input_size: int = 160
    #: preprocessing recipe (``pipeline.preprocess.RECIPES``); written to the manifest
    recipe: str = "cell-centred-rbc4-whitebalance-mobilenet-v2-scale"
    #: which laboratories to train on: "both", "pbc" or "kaggle" (leave-one-laboratory-out runs)
    datasets: str = "both"
    #: augmentation strength: "v1" (1.x models), "strong" (large colour casts, HED jitter, scale, shifts) or
    #: "strong-randconv" (strong, then a random convolution on half of the images: ``training.augment``)
    augmentation: str = "strong"
    #: augmentation of the raw image before the serving crop ("" none, "lab-habits": ``training.raw_augment``)
    raw_augmentation: str = ""
    #: start from a trained model (``.keras``) instead of ImageNet plus a head phase
    init_from: str = ""
    alpha: float = 1.0
    seed: int = 1337
    #: seed of the data split and the Kaggle caps; 0 = ``seed``. A second ensemble member trains with another
    #: ``seed`` on the same split (``split_seed`` 1337): a new split would put the shipped model's validation and
    #: test images into its training set.
    split_seed: int = 0
    #: fractions of source cells (Kaggle) or images (PBC) per split
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    #: Kaggle files are augmented copies of 276 photographs; a cap per class
    #: keeps epochs short without losing any source cell (round-robin choice).
    kaggle_cap_train: int = 700
    kaggle_cap_eval: int = 200
    pbc_limit_per_class: int = 0  # 0 = all; smoke tests use a handful
    batch_size: int = 32
    dropout: float = 0.3
    head_epochs: int = 40
    head_lr: float = 1e-3
    finetune_epochs: int = 8
    finetune_lr: float = 1e-4
    #: "all" or a layer-name prefix such as "block_10": fine-tune from there up
    finetune_from: str = "all"
    label_smoothing: float = 0.05
    #: "" (best-validation-loss checkpoint) or "dense": the mean of the weights visited after the first
    #: fine-tuning epoch (``training.averaging``)
    weight_averaging: str = ""
    #: "", "mixstyle", "mixstyle-early" or "mixstyle-mild": mix early feature statistics between images while
    #: fine-tuning
    #: (``training.feature_mixing``)
    feature_mixing: str = ""
    early_stopping_patience: int = 3
    steps_per_epoch: int = 0  # 0 = one pass over the training set
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys in {path}: {sorted(unknown)}")
        if "split_fractions" in data:
            data["split_fractions"] = tuple(data["split_fractions"])
        return cls(**data)

    @property
    def data_seed(self) -> int:
        """The seed that chooses the split and the Kaggle caps (``split_seed``, else ``seed``)."""
        return self.split_seed or self.seed

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Expose every scalar config field as ``--field-name`` (overrides the file)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("extra", "split_fractions"):
            continue
        kind = type(f.default) if f.default is not dataclasses.MISSING else str
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig.from_file(args.config) if getattr(args, "config", None) else TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(config, f.name, value)
    return config
