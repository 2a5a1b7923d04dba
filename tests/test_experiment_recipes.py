"""The recipes of docs/experiments.md: presets expand to the documented grids, the iris halves are what the Heaton
recipe says they are, and Heaton's frozen 50-25 net trains only its new softmax head (78 of 1 603 parameters)."""

from __future__ import annotations

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from sklearn.datasets import load_iris

from conftest import CONF, random_source_net, same_tensors
from transferlab.run.setup import prepare
from transferlab.sweep.points import expand


def _points(name: str):
    """(composed job config, expanded sweep points) of a preset, as the transferlab sweeper sees them."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    sw = OmegaConf.to_container(cfg.hydra.sweeper)
    return cfg, expand(OverridesParser.create().parse_overrides, sw["params"], sw["grids"], [])


def _kv(point) -> dict[str, str]:
    return dict(o.split("=", 1) for o in point.overrides)


def test_ng_rule_is_a_to_parity_over_n_depth_and_scratch():
    cfg, points = _points("ng_rule")
    assert (cfg.source.name, cfg.target.name, cfg.name) == ("digits_a_all", "digits_b_parity", "ng_rule")
    assert cfg.pretrain.seed == 0 and cfg.train.max_epochs == 25   # one shared source net, CPU-sized epochs
    assert len(points) == 7 * (3 + 1) * 5
    depths = {_kv(p).get("transfer.freeze") for p in points if _kv(p)["transfer"] == "finetune"}
    assert depths == {"0", "2", "all"}
    assert {_kv(p)["target.n_per_class"] for p in points} == {"1", "2", "5", "10", "20", "50", "100"}


def test_yosinski_digits_is_the_yosinski_grid_over_five_seeds():
    cfg, points = _points("yosinski_digits")
    assert len(points) == 18 * 5 and {_kv(p)["seed"] for p in points} == {str(s) for s in range(5)}
    assert str(cfg.pretrain.seed) == str(cfg.seed)   # each seed trains its own A and B source nets


def test_heaton_and_resnet_presets_expand_to_the_documented_grids():
    cfg, points = _points("heaton_iris")
    assert cfg.backbone.name == "mlp" and list(cfg.backbone.hidden) == [50, 25] and len(points) == 60
    pairs = {(_kv(p)["source"], _kv(p)["target"]) for p in points}
    assert pairs == {("iris_a_2species", "iris_b"), ("iris_a", "iris_b_virginica")}
    cfg, points = _points("resnet18_animals")
    assert (cfg.backbone.name, cfg.backbone.weights, cfg.source.name) == ("resnet18", "imagenet", "none")
    assert cfg.target.name == "cifar10_animals" and len(points) == 7 * (6 + 1) * 5


def test_iris_halves_are_disjoint_and_the_heaton_targets_are_labelled_right(make_cfg):
    iris = load_iris()
    species = {tuple(np.round(x, 1)): int(y) for x, y in zip(iris.data, iris.target)}

    def rows(task):  # raw feature rows back from the standardised ones
        st = task.info["input"]
        return [tuple(np.round(r * np.array(st["std"]) + np.array(st["mean"]), 1))
                for x in (task.train_x, task.val_x, task.test_x) for r in x.numpy()]

    prep = prepare(make_cfg("backbone=mlp", "source=iris_a_2species", "target=iris_b", "target.n_per_class=2"))
    src, tgt = prep.source, prep.target
    assert src.class_names == ["setosa", "versicolor"] and tgt.class_names == ["setosa", "versicolor", "virginica"]
    assert not set(rows(src)) & set(rows(tgt))                 # the source never saw a target flower
    assert all(species[r] != 2 for r in rows(src))             # ... nor any virginica
    assert len(tgt.test_y) == 30 and np.bincount(tgt.train_y[tgt.train_indices].numpy()).tolist() == [2, 2, 2]

    rel = prepare(make_cfg("backbone=mlp", "source=iris_a", "target=iris_b_virginica")).target
    assert rel.class_names == ["virginica", "other"]
    xs = [r for x in (rel.train_x, rel.test_x) for r in x.numpy()]
    st = rel.info["input"]
    truth = [0 if species[tuple(np.round(r * np.array(st["std"]) + np.array(st["mean"]), 1))] == 2 else 1 for r in xs]
    assert truth == torch.cat([rel.train_y, rel.test_y]).tolist()


def test_heaton_frozen_50_25_trains_only_the_new_softmax_head(make_cfg):
    cfg = make_cfg("backbone=mlp", "source=iris_a_2species", "target=iris_b", "transfer=linear_probe",
                   "target.n_per_class=2")
    _, net, source = random_source_net(cfg)
    total = sum(p.numel() for p in net.parameters())
    trainable = {n: p.numel() for n, p in net.named_parameters() if p.requires_grad}
    assert total == (4 * 50 + 50) + (50 * 25 + 25) + (25 * 3 + 3) == 1603
    assert sum(trainable.values()) == 78 and all(n.startswith("head") for n in trainable)
    for name in ("fc1", "fc2"):                                # both hidden layers copied from the source
        assert same_tensors(net.backbone.blocks[name].state_dict(), source.blocks[name].state_dict()), name


def test_ng_rule_tuned_gives_every_arm_its_own_rate_grid_under_cv():
    """The tuned preset: the grids of ng_rule, each arm with its own default learning-rate grid, selected by cv
    inside its n examples (n = 1 left out); every point passes the sweep's up-front checks."""
    from transferlab.run.values import value_problems

    cfg, points = _points("ng_rule_tuned")
    assert (cfg.name, cfg.train.select, cfg.train.cv_folds) == ("ng_rule_tuned", "cv", None)
    assert len(points) == 6 * (2 + 1 + 1) * 5
    grids = {(_kv(p)["transfer"], _kv(p).get("transfer.freeze")): _kv(p)["tune.train.lr"] for p in points}
    assert grids == {("finetune", "0"): "[0.0001,0.0003,0.001]", ("finetune", "2"): "[0.0001,0.0003,0.001]",
                     ("finetune", "all"): "[0.001,0.003,0.01]", ("scratch", None): "[0.0003,0.001,0.003]"}
    assert {_kv(p)["target.n_per_class"] for p in points} == {"2", "5", "10", "20", "50", "100"}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for p in points[:: len(points) // 8]:
            job = compose("config", overrides=["experiment=ng_rule_tuned", "paths.output_dir=/tmp/out", *p.overrides])
            assert value_problems(job) == [], p.overrides
    GlobalHydra.instance().clear()
