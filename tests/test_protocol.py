"""The protocol of issue 18: step budgets (a small n gets its steps), model selection (best_val with its tie rule,
last, fixed_epoch), convergence warnings, the control arms (meanvar, random_frozen, scratch_long) and the
validation of every new key before anything trains."""

from __future__ import annotations

import json
import math
import random

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import ckpt_state, same_tensors
from transferlab.errors import ConfigError
from transferlab.run import convergence, identity
from transferlab.run.experiment import run
from transferlab.run.setup import prepare
from transferlab.training import budget
from transferlab.training.callbacks import RunLocalCheckpoint
from transferlab.training.fit import fit_and_test
from transferlab.transfer.network import block_state

TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "num_sanity_val_steps": 0,
           "log_every_n_steps": 1, "enable_model_summary": False}
QUIET = ("trainer.enable_progress_bar=false", "transfer.scores=[]")


# ---------------------------------------------------------------- step budgets
def _train(**kw) -> dict:
    return {"budget": "epochs", "max_epochs": 4, "min_steps": None, "max_steps": None, "batch_size": 32, **kw}


def test_steps_per_epoch_is_the_loaders_batch_count():
    from transferlab.training.batches import TensorBatches

    for n in (1, 5, 31, 32, 33, 100, 537):
        assert budget.steps_per_epoch(n, 32) == len(TensorBatches(torch.zeros(n, 2), torch.zeros(n), 32)), n
    assert budget.steps_per_epoch(100, 32, accumulate=2) == 2  # 4 batches, one step per 2


@pytest.mark.parametrize("train,n,epochs,steps", [
    (_train(), 5, 4, 4),                                               # epochs: 4 epochs of one step
    (_train(min_steps=12), 5, 12, 12),                                 # the floor: one step per epoch -> 12 epochs
    (_train(min_steps=10), 100, 4, 16),                                # 4 steps/epoch x 4 epochs already >= 10
    (_train(min_steps=18), 100, 5, 20),                                # ceil(18 / 4) = 5 whole epochs
    (_train(max_epochs=40, max_steps=50), 100, 13, 52),                # the cap: 160 asked, 50 -> ceil(50/4)
    (_train(budget="steps", max_steps=30, max_epochs=999), 100, 8, 32),  # steps: max_epochs not read
    (_train(budget="steps", max_steps=30), 5, 30, 30),
])
def test_budget_rule(train, n, epochs, steps):
    b = budget.plan(train, n)
    assert (b.epochs, b.steps) == (epochs, steps) and b.steps == b.epochs * b.steps_per_epoch
    assert b.steps >= b.target_steps > b.steps - b.steps_per_epoch  # fewest whole epochs reaching the budget


def test_extra_steps_come_after_floor_and_cap():
    b = budget.plan(_train(min_steps=12, max_steps=12), 5, extra_steps=30)
    assert (b.target_steps, b.source_steps, b.epochs, b.steps) == (12, 30, 42, 42)


def test_min_steps_gives_a_tiny_n_its_steps_and_the_record_says_so(make_cfg):
    """n=1 per class (5 examples, one step per epoch) with a 3-epoch budget and a 14-step floor: 14 epochs and 14
    optimizer steps done, recorded, validated once per 8 steps and after the last (the default schedule)."""
    rec = run(make_cfg("target.n_per_class=1", "train.max_epochs=3", "train.min_steps=14", "train.val_every_steps=8",
                       *QUIET))
    b, m = rec["budget"], rec["metrics"]
    assert (b["steps_per_epoch"], b["target_steps"], b["epochs"], b["steps"]) == (1, 14, 14, 14)
    assert m["epochs"] == 14 and m["steps"] == 14 and len(m["val/acc_history"]) == 2
    assert m["val/epoch_history"] == b["val_epochs"] == [8, 14]
    assert rec["config"]["train"]["min_steps"] == 14 and rec["select"] == "best_val"


# ---------------------------------------------------------------- model selection
def test_best_val_ties_go_to_the_lower_loss_then_the_earlier_epoch():
    ckpt = RunLocalCheckpoint(dirpath="/nonexistent", monitor="val/acc", mode="max")
    history = [(0.5, 1.0), (0.7, 0.9), (0.7, 0.8), (0.6, 0.5), (0.7, 0.8), (0.7, 0.85)]
    kept = []
    for epoch, (acc, loss) in enumerate(history, start=1):
        acc = float(torch.tensor(acc))  # as logged: float32, so equal accuracies compare equal
        if ckpt.replaces(epoch, acc, loss):
            ckpt.best_model_score, ckpt.selected_epoch, ckpt.selected_loss = torch.tensor(acc), epoch, loss
        kept.append(ckpt.selected_epoch)
    assert kept == [1, 2, 3, 3, 3, 3]  # Lightning's own rule would keep epoch 2 (first maximum, loss ignored)
    assert not ckpt.replaces(7, float("nan"), 0.1)


def test_last_and_fixed_epoch_rules():
    last = RunLocalCheckpoint(dirpath="/x", monitor="val/acc", mode="max", select="last")
    fixed = RunLocalCheckpoint(dirpath="/x", monitor="val/acc", mode="max", select="fixed_epoch", select_epoch=3)
    assert all(last.replaces(e, 0.1, 9.0) for e in range(1, 6))
    assert [e for e in range(1, 6) if fixed.replaces(e, 1.0, 0.0)] == [3]
    with pytest.raises(ValueError):
        RunLocalCheckpoint(dirpath="/x", monitor="val/acc", mode="max", select="fixed_epoch")


class Scripted(L.LightningModule):
    """val/acc and val/loss scripted per epoch; `marker` holds the epoch after which it was saved, so the tested
    checkpoint's epoch is what test/acc reads."""

    def __init__(self, accs, losses):
        super().__init__()
        self.net = nn.Module()  # the model summary lists `net.head`
        self.net.head = self.layer = nn.Linear(2, 2)
        self.register_buffer("marker", torch.zeros(()))
        self.accs, self.losses = accs, losses

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.marker.fill_(self.current_epoch + 1)
        self.log("val/acc", float(self.accs[self.current_epoch]))
        self.log("val/loss", float(self.losses[self.current_epoch]))

    def test_step(self, batch, batch_idx):
        self.log("test/acc", self.marker.clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("select,select_epoch,expected", [("best_val", None, 3), ("last", None, 5),
                                                          ("fixed_epoch", 4, 4)])
def test_the_tested_model_is_the_selected_epochs(tmp_path, select, select_epoch, expected):
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    module = Scripted(accs=[0.5, 0.7, 0.7, 0.6, 0.7], losses=[1.0, 0.9, 0.8, 0.5, 0.8])
    out = fit_and_test(module, (loader, loader, loader), max_epochs=5, trainer_cfg=TRAINER, ckpt_dir=tmp_path,
                       select=select, select_epoch=select_epoch)
    assert out.selected_epoch == expected and out.test["test/acc"] == expected
    assert out.best_val_acc == pytest.approx(module.accs[expected - 1]) and out.steps == 5 * 2


class CrashAfter(L.Callback):
    """Stops the fit with an error after `epochs` whole epochs (their last.ckpt written): a killed run."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epochs:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("select,select_epoch,last_loss,expected", [
    ("last", None, 0.8, 5),
    ("fixed_epoch", 2, 0.8, 2),         # chosen before the crash: best.ckpt of the first attempt is tested
    ("fixed_epoch", 4, 0.8, 4),         # chosen after it
    ("best_val", None, 0.8, 3),         # full tie with the kept epoch 3 (restored score and loss): the earlier
    ("best_val", None, 0.75, 5),        # same accuracy, lower loss than the kept model's restored val/loss
])
def test_the_selected_epoch_survives_a_resume_from_last_ckpt(tmp_path, select, select_epoch, last_loss, expected):
    """Killed after epoch 3 of 5, then resumed from last.ckpt: the rule goes on from the restored tracker state
    (kept epoch, its val/acc and val/loss), and the tested checkpoint is the one it selects over all 5 epochs."""
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    accs, losses = [0.5, 0.7, 0.7, 0.6, 0.7], [1.0, 0.9, 0.8, 0.5, last_loss]
    kw = dict(max_epochs=5, trainer_cfg=TRAINER, ckpt_dir=tmp_path, select=select, select_epoch=select_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_and_test(Scripted(accs, losses), (loader, loader, loader), callbacks=[CrashAfter(3)], **kw)
    out = fit_and_test(Scripted(accs, losses), (loader, loader, loader), **kw)
    assert out.resumed_from is not None and out.steps == 5 * 2 and len(out.history["val/acc"]) == 5
    assert out.selected_epoch == expected and out.test["test/acc"] == expected


def test_select_last_tests_the_last_epoch_of_a_real_run(make_cfg):
    """Validated after every epoch (train.val_every_steps=1), so each rule picks among all 4 epochs."""
    QUIET = (*globals()["QUIET"], "train.val_every_steps=1")
    rec = run(make_cfg("target.n_per_class=3", "train.select=last", *QUIET))
    hist = rec["metrics"]["val/acc_history"]
    assert rec["selected_epoch"] == len(hist) == 4 and rec["metrics"]["val/acc"] == pytest.approx(hist[-1])
    fixed = run(make_cfg("target.n_per_class=3", "train.select=fixed_epoch", "train.select_epoch=2", *QUIET,
                         run="fixed"))
    assert fixed["selected_epoch"] == 2 and fixed["metrics"]["val/acc"] == pytest.approx(hist[1])
    best = run(make_cfg("target.n_per_class=3", *QUIET, run="best"))
    acc, loss = best["metrics"]["val/acc_history"], best["metrics"]["val/loss_history"]
    ties = [e for e in range(len(acc)) if acc[e] == max(acc)]
    assert best["selected_epoch"] == 1 + min(ties, key=lambda e: (loss[e], e))


# ---------------------------------------------------------------- convergence
RISING = [0.244, 0.244, 0.267, 0.289, 0.289, 0.296, 0.319, 0.356, 0.37, 0.378]
PLATEAU = [0.4, 0.45, 0.64, 0.79, 0.86, 0.80, 0.90, 0.92, 0.91, 0.92, 0.93, 0.94, 0.95, 0.95, 0.95, 0.95, 0.94,
           0.93, 0.95, 0.94]


def test_convergence_rule_on_curves():
    assert convergence.judge(RISING, 135).converged is False
    assert convergence.judge(PLATEAU, 135).converged is True
    assert convergence.judge(RISING[:4], 135).converged is None  # too short to judge
    spike = [0.9] * 19 + [0.93]  # one lucky last epoch of 4 examples on a flat curve: not enough for "rising"
    assert convergence.judge(spike, 135).converged is False  # ... unless it beats the margin: it does here
    small = [0.9] * 19 + [0.9 + 1 / 135]  # one example: within the margin
    assert convergence.judge(small, 135).converged is True
    v = convergence.judge(RISING, 135)
    assert v.window == 3 and v.gain == pytest.approx(0.378 - 0.319) and v.margin >= 2 / 135


def test_a_noisy_plateau_is_rarely_called_rising():
    rng = random.Random(0)
    calls = [convergence.judge([round((0.9 + rng.gauss(0, 0.01)) * 135) / 135 for _ in range(20)], 135).converged
             for _ in range(500)]
    assert sum(c is False for c in calls) / len(calls) < 0.05


def test_convergence_of_real_runs_still_rising_and_plateaued(make_cfg, caplog):
    """A fine-tune at a tiny learning rate stopped after 10 epochs is still climbing; the same task at a working
    rate for 25 epochs has levelled off (both validated after every epoch). The record carries the verdict on its
    own curve; the rising run, and only it, logs one warning line."""
    import logging

    QUIET = (*globals()["QUIET"], "train.val_every_steps=1")

    def warnings_of(*overrides, run_name):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="transferlab"):
            rec = run(make_cfg(*overrides, *QUIET, run=run_name))
        return rec, [r.getMessage() for r in caplog.records if "converged: false" in r.getMessage()]

    rising, said = warnings_of("target.n_per_class=5", "train.lr=0.0001", "train.max_epochs=10", run_name="r")
    flat, quiet = warnings_of("target.n_per_class=10", "train.lr=0.01", "train.max_epochs=25", run_name="f")
    assert rising["converged"] is False and flat["converged"] is True
    assert len(said) == 1 and "\n" not in said[0] and "still rising" in said[0] and quiet == []
    for rec in (rising, flat):
        m = rec["metrics"]
        assert rec["convergence"] == convergence.judge(m["val/acc_history"], rec["n_val"],
                                                       epochs=m["val/epoch_history"]).to_dict()


# ---------------------------------------------------------------- control arms
def _net(make_cfg, *overrides, seed=0):
    """(prepared run, target net, source state) as the run builds them, with a seeded random 'pretrained' source."""
    from conftest import source_state
    from transferlab.backbones import build_backbone
    from transferlab.transfer.plan import build_target_net

    cfg = make_cfg(*overrides)
    prep = prepare(cfg)
    torch.manual_seed(100)
    source = source_state(build_backbone(cfg.backbone, prep.target.input_shape))
    for k, v in source.items():  # "pretrained": no tensor left at a constant init (BatchNorm weights of 1)
        if v.is_floating_point():
            v.add_(0.1 * torch.randn_like(v)).abs_() if "running_var" in k else v.add_(0.1 * torch.randn_like(v))
    torch.manual_seed(seed)
    net = build_target_net(build_backbone(cfg.backbone, prep.target.input_shape), prep.plan, source,
                           prep.target.num_classes, seed=seed)
    return prep, net, source


def test_meanvar_matches_each_tensors_mean_and_std_and_is_not_the_source(make_cfg):
    prep, net, source = _net(make_cfg, "transfer.init=meanvar", "transfer.cut=3")
    _, plain_net, _ = _net(make_cfg, "transfer.cut=3")
    for name in prep.plan.copied:
        src = dict(block_state(source, name))
        for pname, p in net.backbone.blocks[name].named_parameters():
            s = src[pname]
            assert not torch.equal(p, s), f"{name}.{pname} is the source's"
            assert float(p.mean()) == pytest.approx(float(s.mean()), rel=0.01, abs=1e-6), pname
            assert float(p.std()) == pytest.approx(float(s.std()), rel=0.01), pname
        for bname, b in net.backbone.blocks[name].named_buffers():  # statistics: the run re-estimates them
            assert torch.equal(b, src[bname]), bname
    # the draws have their own generator: the head is initialised as in the source arm at the same seed
    assert same_tensors(net.head.state_dict(), plain_net.head.state_dict())


def test_random_frozen_blocks_are_their_seeded_init_frozen_all_fit(make_cfg, tmp_path):
    from transferlab.backbones import build_backbone

    cfg = make_cfg("transfer=frozen", "transfer.init=random_frozen", "transfer.cut=2", "target.n_per_class=5",
                   "train.select=fixed_epoch", "train.select_epoch=1", *QUIET)
    rec = run(cfg)
    assert rec["status"] == "ok" and rec["frozen_blocks"] == ["conv1", "conv2"] and rec["source_cache"] == "unused"
    first = ckpt_state(rec["target_ckpt"])  # the model after epoch 1
    last = ckpt_state(tmp_path / "run" / "checkpoints" / "last.ckpt")  # after the last epoch
    torch.manual_seed(int(cfg.seed))
    init = build_backbone(cfg.backbone, (1, 8, 8), load_weights=False).blocks
    for name in ("conv1", "conv2"):
        a, b = block_state(first, name), block_state(last, name)
        assert same_tensors(a, b), f"{name} moved during the fit"
        for pname, p in init[name].named_parameters():
            assert torch.equal(a[pname], p.detach()), f"{name}.{pname} is not the seeded random init"
    assert any(not torch.equal(block_state(first, "conv3")[k], v)
               for k, v in block_state(last, "conv3").items() if v.is_floating_point()), "conv3 did not train"


def test_recalibrated_statistics_are_the_training_subsets(make_cfg):
    from transferlab.transfer import init

    prep, net, _ = _net(make_cfg, "transfer=frozen", "transfer.init=random_frozen", "transfer.cut=1",
                        "target.n_per_class=5")
    x = prep.target.subset()[0]
    init.recalibrate(net.backbone, prep.plan, x)
    conv, bn = net.backbone.blocks["conv1"][0], net.backbone.blocks["conv1"][1]
    with torch.no_grad():
        h = conv(x)
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    assert bn.momentum == 0.1 and not net.backbone.blocks["conv1"].training  # modes and momentum restored


def test_scratch_long_trains_the_source_steps_on_top_and_copies_nothing(make_cfg):
    cfg = make_cfg("transfer=scratch_long", "target.n_per_class=2", "pretrain.max_epochs=3", *QUIET)
    rec = run(cfg)
    prep = prepare(cfg)
    source_spe = budget.steps_per_epoch(len(prep.source.train_indices), int(cfg.pretrain.batch_size))
    b = rec["budget"]
    assert b["source_steps"] == 3 * source_spe and b["target_steps"] == 4  # scratch's 4 epochs x 1 step
    assert rec["metrics"]["steps"] == b["steps"] == 4 + 3 * source_spe and rec["cut"] == 0
    assert rec["source"] == "digits_0to4" and rec["source_cache"] == "unused" and rec["source_ckpt"] is None
    assert rec["trainable_params"] == rec["total_params"]


def test_scratch_long_keeps_the_source_in_its_identity_scratch_does_not(make_cfg):
    def fp(*o):
        return identity.fingerprint(make_cfg(*o))
    assert fp("transfer=scratch", "pretrain.max_epochs=3") == fp("transfer=scratch", "pretrain.max_epochs=5")
    assert fp("transfer=scratch_long", "pretrain.max_epochs=3") != fp("transfer=scratch_long", "pretrain.max_epochs=5")
    assert "source" in identity.inputs(make_cfg("transfer=scratch_long"))
    assert "source" not in identity.inputs(make_cfg("transfer=scratch"))


def test_sweep_baselines_never_take_transfer_overrides():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from transferlab.sweep.points import expand

    points = expand(OverridesParser.create().parse_overrides, {"seed": 0},
                    {"transfer": {"transfer": "finetune"}, "long": {"transfer": "scratch_long"}},
                    ["transfer.cut=2", "transfer.init=meanvar", "peft=lora", "peft.rank=4,16"])
    long = [p for p in points if p.grid == "long"]
    assert len(long) == 1 and [o for o in long[0].overrides if o.startswith(("transfer", "peft"))] == [
        "transfer=scratch_long"]  # not multiplied by the arms' peft.rank, and no LoRA on a baseline
    assert len([p for p in points if p.grid == "transfer"]) == 2
    from transferlab.sweep import points as sweep_points
    from transferlab.transfer import plan

    assert set(sweep_points.BASELINE_PRESETS) == set(plan.BASELINES)  # the sweep skips exactly the plan's baselines


# ---------------------------------------------------------------- validation, before any training
@pytest.mark.parametrize("overrides,keys", [
    (("train.min_steps=0",), ["train.min_steps"]),
    (("train.budget=steps",), ["train.max_steps"]),
    (("train.min_steps=50", "train.max_steps=10"), ["train.min_steps"]),
    (("train.select=fixed_epoch",), ["train.select_epoch"]),
    (("train.select_epoch=2",), ["train.select_epoch"]),
    (("train.select=fixed_epoch", "train.select_epoch=9"), ["train.select_epoch"]),  # beyond the 4 epochs
    (("transfer.init=meanvar", "transfer.l2sp=0.1"), ["transfer.l2sp"]),
    (("transfer.init=random_frozen",), ["transfer.freeze"]),
    (("transfer=scratch", "transfer.init=meanvar"), ["transfer.init"]),
    (("transfer=scratch_long", "transfer.cut=2"), ["transfer.cut"]),
    (("transfer=scratch_long", "source=none"), ["transfer.source_compute"]),
    (("transfer.source_compute=true",), ["transfer.source_compute"]),
    (("target.val_per_class=0",), ["target.val_per_class"]),
    (("target.val_per_class=5", "target.val_size=20"), ["target.val_size"]),
])
def test_bad_protocol_values_are_refused_before_training(make_cfg, tmp_path, overrides, keys):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert [p.key for p in e.value.items] == keys, e.value.problems
    assert all("\n" not in line and len(line.split(": ", 1)[1]) > 5 for line in e.value.problems)  # what is allowed
    assert not (tmp_path / "run" / "result.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_select_epoch_is_checked_against_the_step_budget(make_cfg):
    """select_epoch=9 is beyond train.max_epochs=4 but within the 12 epochs the step floor gives n=1."""
    prep = prepare(make_cfg("target.n_per_class=1", "train.min_steps=12", "train.select=fixed_epoch",
                            "train.select_epoch=9"))
    assert prep.budget.epochs == 12


@pytest.mark.parametrize("key", ["transfer.init", "train.budget", "train.select"])
def test_bad_choices_are_refused_while_composing(make_cfg, key):
    with pytest.raises(ConfigError) as e:
        make_cfg(f"{key}=bogus")
    (line,) = e.value.problems
    assert line.startswith(f"{key}='bogus'") and "\n" not in line, line


def test_every_new_protocol_key_is_part_of_the_run_identity(make_cfg):
    """Each changes what is trained or tested, so none may be neutral: a sweep point with another value is another
    run (never 'done' because of this one's result.json, never resumed from its checkpoint)."""
    changes = ["train.budget=steps", "train.min_steps=50", "train.max_steps=50", "train.select=last",
               "train.select=fixed_epoch", "train.select_epoch=2", "target.val_per_class=3", "transfer.init=meanvar",
               "transfer.source_compute=true", "transfer=scratch_long"]
    keys = {o.split("=")[0] for o in changes} - {"transfer"}
    assert not keys & set(identity.NEUTRAL)
    prints = [identity.fingerprint(make_cfg(o)) for o in ["seed=0", *changes]]
    assert len(set(prints)) == len(prints)


# ---------------------------------------------------------------- val_per_class
def test_val_per_class_holds_exactly_k_of_every_class_fixed_across_n(make_cfg):
    tasks = {n: prepare(make_cfg("target.val_per_class=4", f"target.n_per_class={n}")).target for n in (1, 5)}
    for t in tasks.values():
        assert np.bincount(t.val_y.numpy()).tolist() == [4] * t.num_classes
    assert torch.equal(tasks[1].val_x, tasks[5].val_x)
    assert set(tasks[1].train_indices) <= set(tasks[5].train_indices)
    with pytest.raises(ConfigError, match="target.val_per_class=10000"):
        prepare(make_cfg("target.val_per_class=10000"))


def test_val_per_class_on_data_with_its_own_val_split_is_refused(make_cfg, tmp_path):
    """The data's val split would be used whole: the few-shot val set asked for is refused, not silently skipped."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images[:, None] / 16.0).astype(np.float32), d.target.astype(np.int64)
    path = tmp_path / "with_val.npz"
    np.savez(path, x_train=x[:1200], y_train=y[:1200], x_val=x[1200:1500], y_val=y[1200:1500])
    with pytest.raises(ConfigError) as e:
        prepare(make_cfg("target=npz", f"target.path={path}", "target.val_per_class=3", "target.n_per_class=2"))
    (line,) = e.value.problems
    assert line.startswith("target.val_per_class=3") and "own val split (300 examples)" in line, line


# ---------------------------------------------------------------- the report
def test_report_counts_runs_still_rising_per_arm_and_treats_scratch_long_as_a_control(tmp_path):
    from test_report_grouping import config, put, record

    from transferlab.analysis import collect
    from transferlab.analysis.build import build_report

    for seed in range(3):
        for arm, acc in (("transfer=scratch", 0.6), ("transfer=scratch_long", 0.65), ("transfer=finetune", 0.8)):
            rec = record(config(arm, f"seed={seed}"), acc + 0.01 * seed)
            rising = arm == "transfer=finetune" and seed < 2
            rec["converged"] = not rising
            put(tmp_path, f"{arm},seed={seed}", rec)
    found = collect.collect_sweep(tmp_path).runs
    long = found[found["transfer"] == "scratch_long"]
    assert not long["is_scratch"].any() and set(long["arm"]) == {"scratch_long"}
    assert found.loc[found["transfer"] == "scratch", "is_scratch"].all()
    report = build_report(tmp_path, tmp_path / "out", n_boot=50)
    s = report.summary.set_index("arm")
    assert s.loc["scratch_long", "not_converged"] == 0 and s.loc["scratch_long", "judged"] == 3
    ft = [a for a in s.index if a not in ("scratch", "scratch_long")]
    assert len(ft) == 1 and s.loc[ft[0], "not_converged"] == 2
    note = [n for n in report.stat_notes if "still improving" in n]
    # the note names the arm as people read it (fine-tune all: freeze=0)
    assert len(note) == 1 and note[0].startswith("2 of 9 judged runs") and "fine-tune all at n=5 (2)" in note[0]
    gain = report.gain.set_index("arm")
    assert set(gain.index) == {ft[0], "scratch_long"} and (gain["baseline"] == "scratch").all()
    assert json.loads(json.dumps(report.summary["not_converged"].tolist())) == report.summary["not_converged"].tolist()
    assert math.isclose(gain.loc["scratch_long", "gain_mean"], 0.05)


def test_control_arms_are_labelled_by_their_init_and_get_their_own_figure(tmp_path):
    """meanvar and random_frozen lines say their init (and only that: no cut/upper/init keys spelt out for the
    transferred arms), scratch_long stays its own arm, the crossover pairs source-init depths only, Yosinski's
    names skip control arms, and the report draws the control-arm figure with exactly those lines."""
    from test_report_grouping import config, put, record

    from transferlab.analysis import plots
    from transferlab.analysis.build import build_report

    arms = {"ft": ("transfer=finetune", "transfer.freeze=0"), "frozen": ("transfer=finetune", "transfer.freeze=all"),
            "meanvar": ("transfer=finetune", "transfer.freeze=0", "transfer.init=meanvar"),
            "random": ("transfer=finetune", "transfer.freeze=all", "transfer.init=random_frozen"),
            "scratch": ("transfer=scratch",), "long": ("transfer=scratch_long",)}
    acc = {"ft": 0.8, "frozen": 0.85, "meanvar": 0.7, "random": 0.6, "scratch": 0.65, "long": 0.66}
    for seed in range(3):
        for n in (2, 20):
            for arm, overrides in arms.items():
                cfg = config(*overrides, f"seed={seed}", f"target.n_per_class={n}")
                put(tmp_path, f"{arm},n={n},seed={seed}", record(cfg, acc[arm] + 0.01 * seed + 0.001 * n))
    report = build_report(tmp_path, tmp_path / "out", n_boot=50)
    labels = set(report.summary["arm"])
    # the labels the runs recorded (`TransferPlan.arm`: a control arm says its init)
    assert labels == {"freeze=0", "freeze=4 (all)", "freeze=0 init=meanvar", "freeze=4 (all) init=random_frozen",
                      "scratch", "scratch_long"}, labels
    cx = report.crossovers
    assert list(zip(cx["finetuned_arm"], cx["frozen_arm"])) == [("freeze=0", "freeze=4 (all)")]
    lines = plots.control_lines(report.summary)  # transferred depths first, then their controls, scratch last
    assert lines[:2] == ["freeze=0", "freeze=4 (all)"] and lines[-1] == "scratch"
    assert sorted(lines[2:-1]) == ["freeze=0 init=meanvar", "freeze=4 (all) init=random_frozen", "scratch_long"]
    assert (tmp_path / "out" / "figures" / "report_controls.png").stat().st_size > 0
    no_controls = report.summary[~report.summary["arm"].str.contains("meanvar|random|long")]
    assert plots.control_lines(no_controls) == []


def test_setup_block_states_the_budget_and_the_selection_rule_even_at_their_defaults():
    from transferlab.analysis.provenance import _protocol
    from transferlab.run.record import Metrics, RunRecord
    from transferlab.training.budget import plan

    b = plan({"budget": "epochs", "max_epochs": 25, "min_steps": 175, "max_steps": None, "batch_size": 32}, 10)
    new = [RunRecord(budget=b.to_dict(), select="best_val", metrics=Metrics(steps=s)) for s in (175, 357)]
    old = RunRecord(metrics=Metrics(epochs=25))  # made before train.select existed
    rows = dict(_protocol([*new, old]))
    assert rows["step budget"].startswith("train.budget=epochs, min_steps=175, max_steps=null: epochs = ceil(")
    assert rows["optimizer steps (target)"] == "175 to 357"
    assert rows["model tested (train.select)"] == (
        "best_val (2 runs), not recorded (1 runs made before train.select existed: the first best val/acc) — ties: "
        "lower val/loss, then the earlier epoch")
    assert dict(_protocol(new))["model tested (train.select)"].startswith("best_val — ties")
