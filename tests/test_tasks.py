"""Task splits and subsets: nesting, disjointness, class balance, determinism, input adaptation (real configs)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from transferlab.errors import ConfigError
from transferlab.tasks import build_task
from transferlab.tasks.arrays import check_leakage
from transferlab.tasks.cifar100_meta import FINE_NAMES
from transferlab.tasks.vision import _class_setup


def task(tmp_path: Path, *overrides: str, seed: int = 0, key: str = "target"):
    cfg = compose_cfg(list(overrides), tmp_path / "run")
    return build_task(cfg[key], key=key, data_seed=seed, data_dir=str(tmp_path / "data"))


def origin(t, split="train"):
    """Indices of a split's examples in the dataset's own arrays."""
    return t.train_origin_indices if split == "train" else t.origins[split][1]


@pytest.mark.parametrize("knob,small,large", [("n_per_class", 3, 20), ("n_train", 7, 61)])
def test_subsets_are_nested_in_n(tmp_path, knob, small, large):
    for seed in (0, 1):
        a = origin(task(tmp_path, "target=digits_all", f"target.{knob}={small}", seed=seed))
        b = origin(task(tmp_path, "target=digits_all", f"target.{knob}={large}", seed=seed))
        assert set(a) < set(b), (knob, seed)


def test_subsets_are_deterministic_and_depend_on_data_seed(tmp_path):
    a = task(tmp_path, "target=digits_5to9", "target.n_per_class=10", seed=3)
    b = task(tmp_path, "target=digits_5to9", "target.n_per_class=10", seed=3)
    c = task(tmp_path, "target=digits_5to9", "target.n_per_class=10", seed=4)
    assert np.array_equal(a.train_indices, b.train_indices)
    assert torch.equal(a.subset()[0], b.subset()[0])
    assert not np.array_equal(a.train_indices, c.train_indices)
    # val and test are fixed: the same examples for every data seed and n
    d = task(tmp_path, "target=digits_5to9", "target.n_per_class=30", seed=9)
    for t in (c, d):
        assert torch.equal(a.val_x, t.val_x) and torch.equal(a.test_y, t.test_y)


def test_class_balance(tmp_path):
    t = task(tmp_path, "target=digits_all", "target.n_per_class=7")
    assert np.bincount(t.subset()[1].numpy(), minlength=10).tolist() == [7] * 10
    t = task(tmp_path, "target=digits_all", "target.n_train=43")
    counts = np.bincount(t.subset()[1].numpy(), minlength=10)
    assert counts.sum() == 43 and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("n", [1, 5, 40, None])
def test_train_val_test_never_overlap(tmp_path, n):
    extra = [f"target.n_per_class={n}"] if n else []
    t = task(tmp_path, "target=digits_all", *extra)
    tr, va, te = origin(t), origin(t, "val"), origin(t, "test")
    assert t.origins["val"][0] == t.origins["test"][0] == "train"  # digits has no splits: all carved
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert len(set(t.origins["train"][1]) | set(va) | set(te)) == 1797  # nothing lost either


def test_leakage_check_raises_on_shared_indices():
    check_leakage("ok", {"train": ("train", np.array([0, 1])), "val": ("train", np.array([2])),
                         "test": ("test", np.array([0, 1]))})  # same ids, different arrays: fine
    with pytest.raises(RuntimeError, match="share 1 examples"):
        check_leakage("bad", {"train": ("train", np.array([0, 1])), "val": ("train", np.array([1, 2]))})


def test_n_beyond_pool_errors_or_caps(tmp_path):
    with pytest.raises(ConfigError, match=r"target.n_per_class=500.*n_policy=cap"):
        task(tmp_path, "target=digits_0to4", "target.n_per_class=500")
    t = task(tmp_path, "target=digits_0to4", "target.n_per_class=500", "target.n_policy=cap")
    assert len(t.train_indices) == len(t.train_y)


def test_val_size_and_max_per_class(tmp_path):
    t = task(tmp_path, "target=digits_all", "target.val_size=50", "target.max_per_class=100")
    assert len(t.val_y) == 50
    assert len(t.train_y) + len(t.val_y) + len(t.test_y) == 1000


def test_input_adaptation_is_config_driven(tmp_path):
    t = task(tmp_path, "target=digits_5to9", "target.channels=3", "target.image_size=32")
    assert t.input_shape == (3, 32, 32) and t.val_x.shape[1:] == t.test_x.shape[1:] == (3, 32, 32)
    assert torch.equal(t.train_x[:, 0], t.train_x[:, 2])  # grey repeated, not invented
    t = task(tmp_path, "target=digits_5to9", "target.normalize=pool")
    assert abs(float(t.train_x.mean())) < 1e-4 and abs(float(t.train_x.std()) - 1) < 1e-3
    assert t.info["input"]["mean"] is not None
    t = task(tmp_path, "target=digits_5to9", "target.channels=3", "target.normalize=imagenet")
    assert t.info["input"]["std"] == [0.229, 0.224, 0.225]
    t = task(tmp_path, "target=digits_5to9", "target.normalize={mean:[0.5],std:[0.25]}")
    assert float(t.train_x.min()) == -2.0 and float(t.train_x.max()) == 2.0  # (0 - .5) / .25, (1 - .5) / .25


@pytest.mark.parametrize("overrides,match", [
    (["target.channels=2"], r"target.channels=2: null \(native\), 1 or 3"),
    (["target.normalize=zscore"], r"target.normalize='zscore'"),
    (["target.normalize=imagenet"], r"target.normalize='imagenet'.*set target.channels=3"),
    (["target.image_size=0"], r"target.image_size=0"),
    (["target.classes=[3,11]"], r"target.classes=\[3, 11\]: 11 is not a class"),
    (["target=iris", "target.image_size=32"], r"null for feature-vector tasks"),
])
def test_bad_task_keys_give_one_clear_error(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        task(tmp_path, "target=digits_all", *overrides)
    assert len(e.value.problems) == 1


def test_iris_is_a_standardised_tabular_task(tmp_path):
    t = task(tmp_path, "target=iris", "target.n_per_class=5")
    assert t.input_shape == (4,) and t.class_names == ["setosa", "versicolor", "virginica"]
    assert len(t.train_indices) == 15 and abs(float(t.train_x.mean())) < 1e-5


def test_ready_splits_compose_and_name_real_classes(tmp_path):
    a = compose_cfg(["target=cifar100_half_a", "source=cifar100_half_b"], tmp_path / "run")
    ha, hb = list(a.target.classes), list(a.source.classes)
    assert len(ha) == len(hb) == 50 and not set(ha) & set(hb) and sorted(ha + hb) == FINE_NAMES
    v = compose_cfg(["target=cifar10_vehicles", "source=cifar10_animals"], tmp_path / "run")
    assert len(v.target.classes) + len(v.source.classes) == 10
    assert (v.target.channels, v.target.image_size) == (3, 32)
    c = compose_cfg(["target=cifar100", "target.superclasses=[vehicles_1,vehicles_2]"], tmp_path / "run")
    cfg, names, coarse = _class_setup(c.target, "target", "cifar100")
    assert list(cfg.classes) == ["bicycle", "bus", "motorcycle", "pickup_truck", "train",
                                 "lawn_mower", "rocket", "streetcar", "tank", "tractor"] and not coarse
    with pytest.raises(ConfigError, match="target.superclasses"):
        _class_setup(OmegaConf.merge(c.target, {"superclasses": ["boats"]}), "target", "cifar100")
