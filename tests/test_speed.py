"""Speed features must not change results: in-memory batches, frozen-prefix feature cache, GPU-path options.

Correctness only (equivalence, keying, reuse, auto-off reasons); timings live in scripts/benchmark.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import ckpt_state, random_source_net, recomputed_test_acc, same_tensors
from transferlab.errors import ConfigError
from transferlab.run.experiment import run
from transferlab.run.setup import prepare
from transferlab.store import feature_cache
from transferlab.training.batches import TensorBatches, arrays_loaders, loaders
from transferlab.transfer.network import block_state
from transferlab.transfer.plan import apply_epoch

pytestmark = pytest.mark.usefixtures("fresh_feature_memory")
QUICK = ("train.max_epochs=3", "target.n_per_class=10")


def _net(cfg, seed: int = 0):
    """The task, plan and target net a run would build (source weights: a seeded random backbone, no pretraining)."""
    prep, net, _ = random_source_net(cfg, seed)
    return prep.target, prep.plan, net


# ------------------------------------------------------------------ batches


def test_tensor_batches_cover_every_example_once_per_epoch_and_leave_global_rng_alone():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    rng_before = torch.get_rng_state()
    batches = TensorBatches(x, y, 4, shuffle=True, seed=3)
    assert len(batches) == 3
    epochs = [torch.cat([b[1] for b in batches]) for _ in range(3)]
    for e in epochs:
        assert sorted(e.tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1]), "each epoch must draw a new order"
    again = TensorBatches(x, y, 4, shuffle=True, seed=3)
    assert torch.equal(torch.cat([b[1] for b in again]), epochs[0]), "same seed, same order"
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [len(b[1]) for b in TensorBatches(x, y, 4)] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in TensorBatches(x, y, 4)]), y), "eval batches keep order"


def test_tensor_batches_state_resumes_mid_epoch_and_after_an_epoch():
    x, y = torch.arange(20.0)[:, None], torch.arange(20)
    ref = TensorBatches(x, y, 3, shuffle=True, seed=1)
    full = [[b[1].tolist() for b in ref] for _ in range(3)]

    a = TensorBatches(x, y, 3, shuffle=True, seed=1)
    it = iter(a)
    seen = [next(it)[1].tolist() for _ in range(2)]
    state = a.state_dict()
    b = TensorBatches(x, y, 3, shuffle=True, seed=999)
    b.load_state_dict(state)
    assert seen + [t[1].tolist() for t in b] == full[0]
    assert [t[1].tolist() for t in b] == full[1]

    c = TensorBatches(x, y, 3, shuffle=True, seed=1)
    list(c)  # one whole epoch, then a checkpoint
    d = TensorBatches(x, y, 3, shuffle=True, seed=5)
    d.load_state_dict(c.state_dict())
    assert [t[1].tolist() for t in d] == full[1]


def test_small_tasks_are_tensor_batches_large_ones_dataloaders_with_fork_workers(make_cfg):
    task = prepare(make_cfg("target.n_per_class=5")).target
    train, val, test = loaders(task, 8, seed=0)
    assert all(isinstance(b, TensorBatches) for b in (train, val, test))
    assert len(train.y) == 25 and torch.equal(val.y, task.val_y)
    arrays = (task.train_x, task.train_y, task.val_x, task.val_y, task.test_x, task.test_y)
    big = arrays_loaders(arrays, 64, seed=0, max_in_memory_mb=0, num_workers=1)
    from torch.utils.data import DataLoader

    assert isinstance(big[0], DataLoader) and big[0].num_workers == 1
    assert big[0].multiprocessing_context.get_start_method() == "fork"
    xb, yb = next(iter(big[1]))
    assert torch.equal(xb, task.val_x[:len(xb)])


# ------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("transfer", [
    ("transfer=linear_probe",),                                                   # head only on the last block
    ("transfer.cut=3", "transfer.upper=reinit", "transfer.freeze=2"),            # BN + dropout blocks train on top
    ("transfer.freeze=2", "transfer.strategy=gradual", "transfer.bn=train"),     # releases conv3, fc1 over epochs
])
def test_results_with_cache_equal_results_without(make_cfg, transfer):
    on = run(make_cfg(*QUICK, *transfer, "train.feature_cache=on", run="on"))
    off = run(make_cfg(*QUICK, *transfer, "train.feature_cache=off", run="off"))
    assert on["feature_cache"]["status"] in ("miss", "hit") and on["feature_cache"]["depth"] >= 2
    assert off["feature_cache"]["status"] == "off"
    m_on, m_off = on["metrics"], off["metrics"]
    assert m_on["val/acc_history"] == pytest.approx(m_off["val/acc_history"], abs=1e-6)
    assert m_on["val/loss_history"] == pytest.approx(m_off["val/loss_history"], rel=1e-4, abs=1e-5)
    assert m_on["test/acc"] == pytest.approx(m_off["test/acc"], abs=1e-6)
    s_on, s_off, src = ckpt_state(on["target_ckpt"]), ckpt_state(off["target_ckpt"]), ckpt_state(on["source_ckpt"])
    assert s_on.keys() == s_off.keys(), "the cached run's checkpoint must hold the whole network"
    for k, v in s_off.items():
        if v.is_floating_point():
            # Prefix outputs match to ~1e-7 (batched differently); Adam steps of lr=1e-3 amplify that to ~1e-5.
            assert torch.allclose(s_on[k], v, rtol=1e-3, atol=1e-4), (k, float((s_on[k] - v).abs().max()))
    for name in on["frozen_blocks"]:  # frozen prefix: bit for bit the source's, weights and BN buffers
        assert block_state(s_on, name) and same_tensors(block_state(s_on, name), block_state(src, name)), name
    assert len(set(m_on["val/loss_history"])) > 1, "nothing trained: this test could not fail"


def test_cached_run_also_works_with_bf16_and_channels_last(make_cfg):
    cfg = make_cfg("train.max_epochs=1", "target.n_per_class=5", "transfer.freeze=2",
                   "train.feature_cache=on", "trainer.precision=bf16-mixed", "train.channels_last=true")
    rec = run(cfg)
    assert rec["status"] == "ok" and rec["feature_cache"]["status"] == "miss"
    # tested on cached features, in bf16: the same accuracy as the saved model on the test inputs, recomputed here
    assert rec["metrics"]["test/acc"] == pytest.approx(recomputed_test_acc(cfg, rec["target_ckpt"]), abs=1e-6)


# ------------------------------------------------------------------ reuse and keying


def test_one_feature_pass_serves_every_seed_and_n_of_a_pool(make_cfg, tmp_path):
    cache = tmp_path / "fc"
    a = run(make_cfg("train.max_epochs=2", "transfer=linear_probe", "target.n_per_class=5", "seed=0",
                     "train.feature_cache=on", run="a", cache=cache))  # auto would skip one short run's pass...
    b = run(make_cfg("train.max_epochs=2", "transfer=linear_probe", "target.n_per_class=20", "seed=0",
                     "data_seed=7", run="b", cache=cache))
    feature_cache.clear_memory()
    c = run(make_cfg("train.max_epochs=2", "transfer=linear_probe", "target.n_per_class=10", "seed=0",
                     "train.lr=0.01", run="c", cache=cache))
    statuses = [r["feature_cache"]["status"] for r in (a, b, c)]  # ...but uses a stored pass
    assert statuses == ["miss", "memory", "hit"]
    assert a["feature_cache"]["key"] == b["feature_cache"]["key"] == c["feature_cache"]["key"]
    files = list((cache / "features").rglob("features.pt"))
    assert len(files) == 1 and not list((cache / "features").rglob("*.tmp"))
    feats = torch.load(files[0], weights_only=True)
    cfg = make_cfg("transfer=linear_probe", run="probe", cache=cache)
    task = prepare(cfg).target
    assert {k: len(v) for k, v in feats.items()} == {"train": len(task.train_y), "val": len(task.val_y),
                                                     "test": len(task.test_y)}, "features cover the whole pool"
    d = run(make_cfg("train.max_epochs=2", "transfer=linear_probe", "target.n_per_class=5", "seed=0",
                     "pretrain.lr=0.003", run="d", cache=cache))
    assert d["feature_cache"]["key"] != a["feature_cache"]["key"], "another source model, other features"


def test_cached_features_are_the_prefix_outputs_and_the_key_follows_what_changes_them(make_cfg):
    cfg = make_cfg("transfer.freeze=2", "target.n_per_class=5")
    task, plan, net = _net(cfg)
    depth, _ = plan.fixed_prefix()
    assert depth == 2
    feats = feature_cache.compute(net, depth, {"val": task.val_x}, device=torch.device("cpu"), cfg=cfg)
    assert net.training and not net.backbone.blocks["conv1"].training, "compute leaves the net's own modes"
    net.eval()
    with torch.no_grad():
        assert torch.allclose(feats["val"], net.backbone(task.val_x, 0, 2), atol=1e-6)
        # entering at block `depth` with the prefix's outputs is the whole net on the inputs
        assert torch.allclose(net(feats["val"], start=depth), net(task.val_x), atol=1e-5)
    key = feature_cache.feature_key(cfg, task, net, depth)
    assert feature_cache.feature_key(cfg, task, net, depth) == key
    assert feature_cache.feature_key(cfg, task, net, 1) != key
    with torch.no_grad():
        net.backbone.blocks["conv3"][0].weight.add_(1.0)   # beyond the prefix: same features
    assert feature_cache.feature_key(cfg, task, net, depth) == key
    with torch.no_grad():
        net.backbone.blocks["conv2"][1].running_mean.add_(0.5)  # a BN buffer inside the prefix
    assert feature_cache.feature_key(cfg, task, net, depth) != key
    other_n = prepare(make_cfg("transfer.freeze=2", "target.n_per_class=20", "data_seed=3")).target
    assert feature_cache.feature_key(cfg, other_n, net, depth) == feature_cache.feature_key(cfg, task, net, depth)
    other_task = prepare(make_cfg("transfer.freeze=2", "target=digits_0to4")).target
    assert feature_cache.feature_key(cfg, other_task, net, depth) != feature_cache.feature_key(cfg, task, net, depth)
    bf16 = make_cfg("transfer.freeze=2", "trainer.precision=bf16-mixed")
    assert feature_cache.feature_key(bf16, task, net, depth) != feature_cache.feature_key(cfg, task, net, depth)


# ------------------------------------------------------------------ auto off, with the reason


@pytest.mark.parametrize("overrides, reason", [
    (("transfer.freeze=0",), "block conv1 has trainable parameters"),
    (("transfer.trainable=[conv3,'*.bias']",), "block conv1 has trainable parameters"),   # BitFit reaches block 0
    (("transfer.freeze=0", "transfer.strategy=gradual"), "transfer.strategy=gradual trains block conv1"),
    (("transfer.freeze=0", "transfer.strategy=lp_ft", "transfer.lp_epochs=1"), "transfer.strategy=lp_ft trains"),
])
def test_auto_is_off_when_no_block_stays_frozen_for_the_whole_fit(make_cfg, caplog, overrides, reason):
    cfg = make_cfg(*overrides, "train.max_epochs=40", "target.n_per_class=5")
    task, plan, net = _net(cfg)
    feature_cache._logged.clear()  # earlier tests may have logged the same reason in this process
    with caplog.at_level(logging.INFO, logger="transferlab.store.feature_cache"):
        d = feature_cache.decide(cfg, plan, task, net)
        again = feature_cache.decide(cfg, plan, task, net)
    assert not d.use and d.depth == 0 and d.start == 0 and "no frozen leading block" in d.reason
    assert reason in d.reason and again.reason == d.reason
    assert sum(d.reason in r.getMessage() for r in caplog.records) == 1, "logged once, not once per run"


def test_bn_train_and_gradual_still_cache_the_blocks_frozen_throughout(make_cfg):
    for extra in (("transfer.bn=train",), ("transfer.strategy=gradual",), ("transfer.strategy=lp_ft",)):
        cfg = make_cfg("transfer.freeze=2", "train.max_epochs=40", "target.n_per_class=5", *extra)
        task, plan, net = _net(cfg)
        d = feature_cache.decide(cfg, plan, task, net)
        assert d.use and d.depth == 2 and d.start == 2, extra


@pytest.mark.parametrize("bn", ["frozen", "train"])
@pytest.mark.parametrize("overrides", [
    ("transfer.freeze=2",), ("transfer.freeze=2", "transfer.strategy=gradual"),
    ("transfer.freeze=2", "transfer.strategy=lp_ft", "transfer.lp_epochs=2"),
    ("transfer.trainable=[conv3,'fc1.*.bias']",),
])
def test_every_block_the_plan_lets_the_cache_cover_is_fixed_in_every_epoch(make_cfg, bn, overrides):
    """Why eligibility may be a function of the plan alone: in every epoch, under every BN policy and strategy,
    the blocks it covers have no parameter training and no submodule in training mode (BN statistics, dropout)."""
    cfg = make_cfg(*overrides, f"transfer.bn={bn}", "train.max_epochs=6", "target.n_per_class=5")
    task, plan, net = _net(cfg)
    depth, _ = plan.fixed_prefix()
    assert depth == 2 and plan.frozen[:2] == ("conv1", "conv2")
    for epoch in range(6):
        apply_epoch(net, plan, epoch)
        net.train()
        for name in net.backbone.block_names[:depth]:
            block = net.backbone.blocks[name]
            assert not any(m.training for m in block.modules()), (name, epoch)
            assert not any(p.requires_grad for p in block.parameters()), (name, epoch)
        assert any(m.training for m in net.backbone.blocks["conv3"].modules()) == (epoch >= plan.unfreeze_epoch(
            "conv3")), "the test could not fail: the block above the prefix must train when released"


def test_auto_skips_when_one_pool_pass_costs_more_than_the_run_and_off_is_off(make_cfg):
    cfg = make_cfg("transfer.freeze=2", "train.max_epochs=1", "target.n_per_class=1")
    task, plan, net = _net(cfg)
    d = feature_cache.decide(cfg, plan, task, net)
    assert not d.use and "costs more" in d.reason
    cfg = make_cfg("transfer.freeze=2", "train.max_epochs=1", "target.n_per_class=1", "train.feature_cache=on")
    assert feature_cache.decide(cfg, plan, task, net).use
    cfg = make_cfg("transfer.freeze=2", "train.feature_cache=off")
    assert feature_cache.decide(cfg, plan, task, net).reason == "train.feature_cache=off"


def test_bad_mode_is_one_config_error_before_anything_runs(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"train.feature_cache='sometimes'.*auto"):  # the schema's choice
        run(make_cfg("train.feature_cache=sometimes", run="bad"))
    assert not (tmp_path / "bad" / "result.json").exists()


@pytest.mark.parametrize("override, key", [
    ("trainer.precision=bf17-mixed", "trainer.precision"),
    ("train.channels_last=maybe", "train.channels_last"),  # a bool (the schema: yes/no, on/off, 1/0 are bools)
    ("train.compile=sometimes", "train.compile"),
])
def test_bad_speed_options_fail_in_validation(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        prepare(make_cfg(override))
