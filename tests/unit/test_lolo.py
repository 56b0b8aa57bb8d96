"""Leave-one-laboratory-out configurations: one laboratory each, never warm-started from a model that saw both."""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig
from training.lolo import HELD_OUT, lolo_config


def test_each_run_trains_on_one_laboratory_from_imagenet(tmp_path: Path):
    base = TrainConfig.from_file(Path(__file__).resolve().parents[2] / "training" / "configs" / "mnv2_cc_160_habits.json")
    assert base.init_from, "the shipped config warm-starts; the leave-one-out runs must not"
    for trained_on in HELD_OUT:
        config = lolo_config(base, tmp_path, trained_on)
        assert config.datasets == trained_on and config.init_from == ""
        assert config.raw_augmentation == base.raw_augmentation and config.recipe == base.recipe
        assert Path(config.work_dir).parent == tmp_path and config.export_dir != base.export_dir
