"""Strategies under a real Lightning fit: frozen blocks stay byte-identical (weights and BN buffers) for exactly as
long as the plan says, for every strategy and BN policy; gradual unfreezing survives LR schedulers and resume."""

import itertools

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from conftest import SMALL_CNN, ckpt_state, group_file, same_tensors, source_state
from conftest import optim as make_optim
from transferlab.backbones import build_backbone
from transferlab.training.callbacks import PlanSchedule
from transferlab.training.fit import fit_and_test
from transferlab.training.module import TransferModule
from transferlab.transfer.network import block_state
from transferlab.transfer.plan import build_target_net, resolve_plan

SHAPE = (3, 8, 8)
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "num_sanity_val_steps": 0,
           "log_every_n_steps": 1, "enable_model_summary": False}
EPOCHS = 4


def _source_state():
    """A 'pretrained' source: random weights and non-trivial BN running statistics."""
    torch.manual_seed(0)
    bb = build_backbone(SMALL_CNN, SHAPE)
    for m in bb.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(100)
    return source_state(bb)


def _loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, *SHAPE, generator=g), torch.randint(0, 3, (96,), generator=g)
    x += y[:, None, None, None].float()  # learnable
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True, generator=g)
    return train, DataLoader(TensorDataset(x[64:80], y[64:80])), DataLoader(TensorDataset(x[80:], y[80:]))


class BlockSnapshots(L.Callback):
    """Every block's tensors (weights and buffers) at the start of each epoch and at the end of training."""

    def __init__(self):
        self.at: dict[int | str, dict[str, dict[str, torch.Tensor]]] = {}

    def _snap(self, key, pl_module):
        self.at[key] = {b: {k: v.detach().clone() for k, v in blk.state_dict().items()}
                        for b, blk in pl_module.net.backbone.blocks.items()}

    def on_train_epoch_start(self, trainer, pl_module):
        self._snap(int(trainer.current_epoch), pl_module)

    def on_train_end(self, trainer, pl_module):
        self._snap("end", pl_module)


def _same(snapshot, source, block):
    """A block's snapshot is the source's block, bit for bit (weights and BN buffers)."""
    return same_tensors(snapshot, block_state(source, block))


def _fit(tmp_path, transfer: dict, optim: dict | None = None, epochs: int = EPOCHS, ckpt="ckpt", resume=True):
    source = _source_state()
    torch.manual_seed(1)
    cfg = OmegaConf.create({"cut": None, "upper": "drop", "freeze": 1, "trainable": None, "bn": "frozen",
                            "strategy": "fixed", "unfreeze_every": 1, "lp_epochs": 2, "l2sp": 0.0, **transfer})
    backbone = build_backbone(SMALL_CNN, SHAPE)
    plan = resolve_plan(cfg, backbone)
    net = build_target_net(backbone, plan, source, num_classes=3)
    module = TransferModule(net, 3, make_optim(max_epochs=epochs, **(optim or {})), plan=plan)
    snaps = BlockSnapshots()
    callbacks = [PlanSchedule(plan), snaps]
    outcome = fit_and_test(module, _loaders(), max_epochs=epochs, trainer_cfg=TRAINER, ckpt_dir=tmp_path / ckpt,
                           callbacks=callbacks, fingerprint="test", resume=resume)
    return plan, source, snaps, callbacks[0], outcome


@pytest.mark.parametrize("strategy,bn", list(itertools.product(["fixed", "gradual", "lp_ft"], ["frozen", "train"])))
def test_blocks_are_source_bytes_until_their_unfreeze_epoch(tmp_path, strategy, bn):
    plan, source, snaps, schedule, _ = _fit(tmp_path, {"strategy": strategy, "bn": bn})
    assert plan.frozen == ("conv1",)
    starts = {b: plan.unfreeze_epoch(b) for b in plan.kept}
    expected = {"fixed": {"conv1": None, "conv2": 0, "conv3": 0, "fc1": 0},
                "gradual": {"conv1": None, "conv2": 3, "conv3": 2, "fc1": 1},
                "lp_ft": {"conv1": None, "conv2": 2, "conv3": 2, "fc1": 2}}[strategy]
    assert starts == expected
    for block, start in starts.items():
        for epoch in range(EPOCHS):
            same = _same(snaps.at[epoch][block], source, block)
            if start is None or epoch <= start:  # nothing trained it before this epoch began
                assert same, (block, epoch, start)
            else:
                assert not same, f"{block} released at {start} had not moved by epoch {epoch}: test could not fail"
        end_same = _same(snaps.at["end"][block], source, block)
        assert end_same == (start is None), (block, start)  # frozen the whole run: byte-identical at the end
    released = [(e, set(blocks)) for e, blocks in schedule.history]
    if strategy == "gradual":
        assert released == [(0, set()), (1, {"fc1"}), (2, {"fc1", "conv3"}), (3, {"fc1", "conv3", "conv2"})]


def test_bn_train_policy_reestimates_statistics_of_bn_with_frozen_affine(tmp_path):
    # convs and linear layers train, BN affine parameters do not: the policy decides the running statistics
    outs = {}
    for bn in ("frozen", "train"):
        plan, source, snaps, _, _ = _fit(tmp_path / bn, {"freeze": 0, "trainable": ["*.0.weight", "fc1.*"],
                                                          "bn": bn}, epochs=2)
        outs[bn] = snaps.at["end"]["conv2"]
        src = block_state(source, "conv2")
        assert torch.equal(outs[bn]["1.weight"], src["1.weight"])  # BN affine frozen under both policies
        stats_same = torch.equal(outs[bn]["1.running_mean"], src["1.running_mean"])
        assert stats_same == (bn == "frozen"), bn
        assert not torch.equal(outs[bn]["0.weight"], src["0.weight"])  # the conv trained


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_gradual_unfreezing_works_with_lr_schedulers_and_discriminative_rates(tmp_path, scheduler):
    plan, source, snaps, schedule, outcome = _fit(tmp_path, {"strategy": "gradual"},
                                                  {"scheduler": group_file("scheduler", scheduler), "lr_decay": 0.5})
    assert len(schedule.history) == 4 and outcome.best_ckpt
    assert _same(snaps.at[2]["conv2"], source, "conv2") and not _same(snaps.at["end"]["conv2"], source, "conv2")


def test_gradual_run_resumed_mid_schedule_gets_the_right_set_and_optimizer(tmp_path):
    # first attempt: killed after 2 of 4 epochs (last.ckpt written); the second continues from it
    _fit(tmp_path, {"strategy": "gradual"}, {"scheduler": group_file("scheduler", "cosine")}, epochs=2)
    plan, source, snaps, schedule, outcome = _fit(tmp_path, {"strategy": "gradual"}, {"scheduler": group_file("scheduler", "cosine")})
    assert outcome.resumed_from and outcome.resumed_from.endswith("last.ckpt")
    assert list(snaps.at) == [2, 3, "end"]  # epochs 0-1 were not re-run
    assert schedule.history[0] == (2, ("conv3", "fc1"))  # the set of epoch 2, not of epoch 0
    assert _same(snaps.at[2]["conv2"], source, "conv2") and _same(snaps.at[3]["conv2"], source, "conv2")
    assert not _same(snaps.at["end"]["conv2"], source, "conv2") and _same(snaps.at["end"]["conv1"], source, "conv1")
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert [g["name"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [
        f"{b}{kind}" for b in ("head", "fc1", "conv3", "conv2") for kind in ("", ".no_decay")]


@pytest.mark.parametrize("overrides", [
    ["transfer=gradual", "transfer.freeze=1", "train.lr_decay=0.385", "train/scheduler=cosine"],
    ["transfer=lp_ft", "transfer.lp_epochs=2", "transfer.l2sp=0.01"],
    ["transfer.trainable=[*.bias]", "transfer.cut=3"],
])
def test_strategies_run_end_to_end_from_the_cli_config(make_cfg, overrides):
    from transferlab.run.experiment import run

    rec = run(make_cfg(*overrides, "target.n_per_class=5", "train.max_epochs=5", "logger=none"))
    assert rec["status"] == "ok" and rec["strategy"] == rec["config"]["transfer"]["strategy"]
    if rec["strategy"] == "gradual":
        assert rec["unfreeze_epochs"] == {"conv2": 3, "conv3": 2, "fc1": 1, "head": 0}
    assert rec["metrics"]["val/epoch_history"] == rec["budget"]["val_epochs"] == [1, 2, 3, 4, 5]  # FAST: every epoch
    if "transfer.freeze=1" in overrides:
        conv1 = block_state(ckpt_state(rec["source_ckpt"]), "conv1")
        assert conv1 and same_tensors(conv1, block_state(ckpt_state(rec["target_ckpt"]), "conv1"))
    if "transfer.cut=3" in overrides:  # BitFit: small_cnn convs have no bias, so only BN and fc biases train
        assert rec["trainable_params"] < rec["total_params"] // 10
