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


def test_evaluation_folders_are_where_folders_of_says(tmp_path: Path):
    """The study modules find a run's folders by path alone (``folders_of``); the run makes them there."""
    from tests.conftest import SHARED
    from training.lolo import evaluation_folders, folders_of

    base = TrainConfig(kaggle_dir=str(SHARED / "kaggle" / "TRAIN"), pbc_dir=str(SHARED / "pbc"), pbc_limit_per_class=7,
                       kaggle_cap_train=2, kaggle_cap_eval=2)
    made = evaluation_folders(base, tmp_path)
    assert made == folders_of(tmp_path)
    kaggle_classes = {p.name for p in made["kaggle"].iterdir()}
    assert {p.name for p in made["pbc"].iterdir()} == kaggle_classes == {"eosinophil", "lymphocyte", "monocyte", "neutrophil"}
    assert len({p.name for p in made["pbc_all"].iterdir()}) == 8
    assert all(any(folder.iterdir()) for folder in made["pbc"].iterdir())  # the links resolve to images


def test_a_second_seed_keeps_the_split_when_split_seed_is_set(tmp_path: Path):
    """A second ensemble member (``seed`` 2) must train on the shipped model's split (``split_seed`` 1337): another
    split would put the first member's validation and test images into its training set."""
    from tests.conftest import SHARED
    from training.train import make_splits

    def split(name: str, **seeds) -> dict:
        config = TrainConfig(kaggle_dir=str(SHARED / "kaggle" / "TRAIN"), pbc_dir=str(SHARED / "pbc"), pbc_limit_per_class=20,
                             kaggle_cap_train=3, kaggle_cap_eval=3, work_dir=str(tmp_path / name), **seeds)
        return {k: sorted(s.path for s in v) for k, v in make_splits(config).items()}

    shipped = split("shipped", seed=1337)
    assert split("member2", seed=2, split_seed=1337) == shipped
    assert split("reseeded", seed=2) != shipped
    assert TrainConfig(seed=2, split_seed=1337).data_seed == 1337 and TrainConfig(seed=2).data_seed == 2
