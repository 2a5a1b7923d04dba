"""The validation schedule (issue 24): validation after a schedule of optimizer steps, not after every one-step
epoch; selection, curves and the convergence verdict on those checks; the schedule in the identity; and
`val_cap_per_class`, a fixed, stratified, nested cap on any validation split."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import group_file, recomputed_test_acc
from test_protocol import TRAINER, CrashAfter, Scripted
from transferlab.errors import ConfigError
from transferlab.run import convergence, identity
from transferlab.run.experiment import run
from transferlab.run.setup import prepare
from transferlab.training import budget
from transferlab.training.fit import fit_and_test

QUIET = ("trainer.enable_progress_bar=false", "transfer.scores=[]")


def _train(**kw) -> dict:
    return {"budget": "epochs", "max_epochs": 40, "min_steps": 320, "max_steps": None, "batch_size": 32, **kw}


# ---------------------------------------------------------------- the rule
def test_every_steps_gives_one_check_per_v_steps_on_short_epochs_and_every_epoch_on_long_ones():
    one_step = budget.plan(_train(val_every_steps=8), n_train=10)  # 1 step per epoch, 320 epochs
    assert one_step.epochs == 320 and one_step.val_epochs == tuple(range(8, 321, 8))
    assert one_step.val_rule == "every 8 steps: 40 of 320 epochs"
    two_step = budget.plan(_train(val_every_steps=8), n_train=50)  # 2 steps per epoch: every 4th epoch
    assert two_step.val_epochs == tuple(range(4, 161, 4))
    three_step = budget.plan(_train(val_every_steps=8, min_steps=30), n_train=70)  # 3 per epoch, 40 epochs
    # after the epochs in which the step count passes 8, 16, 24, ...: steps 9, 18, 24, 33, 42, 48, ...
    assert three_step.val_epochs[:6] == (3, 6, 8, 11, 14, 16) and three_step.val_epochs[-1] == 40
    long = budget.plan(_train(val_every_steps=8), n_train=1000)  # 32 steps per epoch: today's every epoch
    assert long.val_epochs == tuple(range(1, 41)) and long.val_rule.startswith("every epoch")
    for every in (1, None):  # 1 (or null): every epoch, whatever its length
        assert budget.plan(_train(val_every_steps=every), n_train=10).val_epochs == tuple(range(1, 321))


def test_val_checks_spread_linear_or_log_and_always_end_on_the_last_epoch():
    lin = budget.plan(_train(val_checks=4), n_train=10)
    assert lin.val_epochs == (80, 160, 240, 320)
    log = budget.plan(_train(val_checks=5, val_spacing="log"), n_train=10)
    assert log.val_epochs == tuple(sorted({round(320 ** (i / 4)) for i in range(5)})) == (1, 4, 18, 76, 320)
    short = budget.plan(_train(val_checks=50, min_steps=None, max_epochs=10), n_train=10)  # more checks than epochs
    assert short.val_epochs == tuple(range(1, 11))
    odd = budget.plan(_train(val_every_steps=7, min_steps=None, max_epochs=10), n_train=10)
    assert odd.val_epochs == (7, 10)  # the last epoch is always validated


def test_fixed_epoch_and_plateau_add_their_epochs():
    fixed = budget.plan(_train(val_every_steps=8, select="fixed_epoch", select_epoch=13), n_train=10)
    assert 13 in fixed.val_epochs and len(fixed.val_epochs) == 41
    plateau = budget.plan(_train(val_every_steps=8, scheduler=group_file("scheduler", "plateau")), n_train=10)
    assert plateau.val_epochs == tuple(range(1, 321)) and "reads val/acc" in plateau.val_rule


# ---------------------------------------------------------------- selection on the checks
ACCS = [0.50, 0.90, 0.60, 0.70, 0.70, 0.65, 0.80, 0.70, 0.60, 0.80, 0.80, 0.75]  # val/acc if validated, per epoch
LOSSES = [1.0, 0.1, 0.9, 0.6, 0.5, 0.7, 0.4, 0.5, 0.9, 0.3, 0.35, 0.5]
CHECKS = (3, 6, 9, 12)


def _hand_selection(checks, select="best_val", select_epoch=None) -> int:
    """The rule of train.select applied by hand to the scripted curve at `checks` only."""
    if select == "last":
        return checks[-1]
    if select == "fixed_epoch":
        return select_epoch
    best = max(ACCS[e - 1] for e in checks)
    return min((e for e in checks if ACCS[e - 1] == best), key=lambda e: (LOSSES[e - 1], e))


@pytest.mark.parametrize("checks", [CHECKS, (4, 7, 10, 12), (2, 12)])
def test_selection_is_the_hand_computed_choice_among_the_scheduled_checks(tmp_path, checks):
    """Epoch 2's val/acc 0.9 is the best of the curve, but epoch 2 is not validated under (3, 6, 9, 12): the tested
    model is the best of the checks (epochs 7 and 10 tie at 0.8 under (4, 7, 10, 12): the lower loss, 10)."""
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    module = Scripted(ACCS, LOSSES)
    calls = []
    original = module.validation_step
    module.validation_step = lambda *args: (calls.append(module.current_epoch + 1), original(*args))[1]
    out = fit_and_test(module, (loader, loader, loader), max_epochs=12, trainer_cfg=TRAINER, ckpt_dir=tmp_path,
                       val_epochs=checks)
    expected = _hand_selection(checks)
    assert sorted(set(calls)) == list(checks)  # validation ran after the scheduled epochs only
    assert out.history["epoch"] == list(checks)
    assert out.history["val/acc"] == pytest.approx([ACCS[e - 1] for e in checks])
    assert out.selected_epoch == expected and out.test["test/acc"] == expected  # the tested file is that epoch's
    assert out.steps == 12 * 2 and out.epochs == 12


@pytest.mark.parametrize("select,select_epoch", [("best_val", None), ("last", None), ("fixed_epoch", 9)])
def test_a_resume_in_the_middle_of_a_schedule_selects_what_an_unbroken_fit_selects(tmp_path, select, select_epoch):
    """Killed after epoch 7 (its last resume point: the check after epoch 6), resumed: the same checks, the same
    choice, the same tested model as a fit that was never killed."""
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    kw = dict(max_epochs=12, trainer_cfg=TRAINER, select=select, select_epoch=select_epoch, val_epochs=CHECKS)
    whole = fit_and_test(Scripted(ACCS, LOSSES), (loader, loader, loader), ckpt_dir=tmp_path / "whole", **kw)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_and_test(Scripted(ACCS, LOSSES), (loader, loader, loader), ckpt_dir=tmp_path / "killed",
                     callbacks=[CrashAfter(7)], **kw)
    resumed = fit_and_test(Scripted(ACCS, LOSSES), (loader, loader, loader), ckpt_dir=tmp_path / "killed", **kw)
    assert resumed.resumed_from is not None
    assert resumed.history["epoch"] == whole.history["epoch"] == list(CHECKS)
    assert resumed.selected_epoch == whole.selected_epoch == _hand_selection(CHECKS, select, select_epoch)
    assert resumed.test == whole.test and resumed.steps == whole.steps == 24


def test_a_real_run_validates_on_its_schedule_and_tests_the_hand_selected_check(make_cfg):
    """digits at n=2 (10 examples, one step per epoch) under a 48-step floor: 6 checks, one per 8 steps; the
    record's curve, epochs, selected epoch and convergence verdict agree with a hand computation on that curve, and
    test/acc is that checkpoint's accuracy recomputed here."""
    cfg = make_cfg("target.n_per_class=2", "train.min_steps=48", "train.val_every_steps=8", *QUIET)
    rec = run(cfg)
    m = rec["metrics"]
    assert rec["budget"]["val_epochs"] == [8, 16, 24, 32, 40, 48] == m["val/epoch_history"]
    acc, loss, at = m["val/acc_history"], m["val/loss_history"], m["val/epoch_history"]
    best = max(acc)
    assert rec["selected_epoch"] == min((e for e, a in zip(at, acc) if a == best),
                                        key=lambda e: (loss[at.index(e)], e))
    assert m["epochs"] == 48 and m["steps"] == 48
    assert rec["convergence"] == convergence.judge(acc, rec["n_val"], epochs=at).to_dict()
    assert m["test/acc"] == pytest.approx(recomputed_test_acc(cfg, rec["target_ckpt"]), abs=1e-6)


def test_train_metrics_are_logged_at_the_checks_as_the_mean_since_the_previous_one(make_cfg, tmp_path, monkeypatch):
    """One-step epochs, a check per 8 steps: metrics.csv has train/loss and train/acc at the checks only, and each
    train/loss is the example-weighted mean of the batch losses since the previous check (recorded here)."""
    from transferlab.training.module import TransferModule

    batches: list[tuple[int, float, int]] = []  # (1-based epoch, batch loss, batch size)
    original = TransferModule._step

    def recorded(self, batch, stage):
        loss, logits = original(self, batch, stage)
        if stage == "train":
            batches.append((int(self.current_epoch) + 1, float(loss), len(batch[1])))
        return loss, logits

    monkeypatch.setattr(TransferModule, "_step", recorded)
    rec = run(make_cfg("target.n_per_class=2", "train.min_steps=24", "train.val_every_steps=8", "logger=csv", *QUIET))
    assert rec["metrics"]["val/epoch_history"] == [8, 16, 24]
    (path,) = sorted(tmp_path.rglob("target/**/metrics.csv"))
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["epoch"]) + 1 for r in rows] == [8, 16, 24]
    assert all(r["train/acc"] for r in rows)
    target = batches[-24:]  # the target fit's 24 one-step epochs (the source pretraining's batches come first)
    assert [e for e, _, _ in target] == list(range(1, 25))
    for r, (lo, hi) in zip(rows, [(0, 8), (8, 16), (16, 24)]):
        seen = [(loss, k) for e, loss, k in target if lo < e <= hi]
        assert len(seen) == 8
        assert float(r["train/loss"]) == pytest.approx(sum(l * k for l, k in seen) / sum(k for _, k in seen),
                                                       rel=1e-5)


def test_convergence_window_counts_steps_not_checks():
    """Checks every 8 epochs of 80: the last 20% of the fit (epochs 65-80) holds 2 checks, so the window is the
    minimum 3; with a check every epoch the same curve shape is judged as before."""
    curve = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    at = list(range(8, 81, 8))
    v = convergence.judge(curve, 100, epochs=at)
    assert v.window == 3 and v.earlier_best == 0.7 and v.late_best == 0.95
    log_at = [1, 2, 4, 8, 16, 32, 64, 80, 90, 100]  # log-spaced: the last 20% (epochs 81-100) holds 2 checks
    assert convergence.judge(curve, 100, epochs=log_at).window == 3
    every = convergence.judge(curve * 3, 100)
    assert every.window == convergence.window_size(30) == 6


# ---------------------------------------------------------------- identity and bad values
def test_the_schedule_is_part_of_the_run_identity(make_cfg):
    changes = ["train.val_every_steps=4", "train.val_every_steps=null", "train.val_checks=10",
               "train.val_spacing=log", "target.val_cap_per_class=5"]
    assert not {o.split("=")[0] for o in changes} & set(identity.NEUTRAL)
    prints = [identity.fingerprint(make_cfg(o)) for o in ["seed=0", *changes]]
    assert len(set(prints)) == len(prints)


@pytest.mark.parametrize("overrides,key", [
    (("train.val_every_steps=0",), "train.val_every_steps"),
    (("train.val_checks=-2",), "train.val_checks"),
    (("target.val_cap_per_class=0",), "target.val_cap_per_class"),
    (("+trainer.check_val_every_n_epoch=5",), "trainer.check_val_every_n_epoch"),
])
def test_bad_schedule_values_are_refused_before_training(make_cfg, tmp_path, overrides, key):
    with pytest.raises(ConfigError) as e:
        run(make_cfg(*overrides))
    assert [p.key for p in e.value.items] == [key], e.value.problems
    assert not (tmp_path / "run" / "result.json").exists()


def test_bad_spacing_is_refused_while_composing(make_cfg):
    with pytest.raises(ConfigError) as e:
        make_cfg("train.val_spacing=cubic")
    (line,) = e.value.problems
    assert line.startswith("train.val_spacing='cubic'") and "log" in line, line


# ---------------------------------------------------------------- val_cap_per_class
def _val_ids(task) -> np.ndarray:
    return np.sort(task.origins["val"][1])


def test_capped_val_split_is_stratified_fixed_and_nested(make_cfg):
    base = prepare(make_cfg("target.n_per_class=5")).target
    full_counts = np.bincount(base.val_y.numpy())
    tasks = {(cap, n, seed): prepare(make_cfg(f"target.val_cap_per_class={cap}", f"target.n_per_class={n}",
                                              f"data_seed={seed}", f"seed={seed}")).target
             for cap in (3, 6) for n in (1, 5) for seed in (0, 1)}
    for (cap, _, _), t in tasks.items():
        counts = np.bincount(t.val_y.numpy(), minlength=t.num_classes)
        assert counts.tolist() == np.minimum(full_counts, cap).tolist()  # every class, at most cap
        assert set(_val_ids(t)) <= set(_val_ids(base))  # a subset of the uncapped split
        assert not set(_val_ids(t)) & set(t.origins["train"][1][t.train_indices])  # never a training example
    for cap in (3, 6):  # fixed: the same examples whatever n, seed and data_seed
        ref = tasks[(cap, 1, 0)]
        for key, t in tasks.items():
            if key[0] == cap:
                assert torch.equal(t.val_x, ref.val_x) and torch.equal(t.val_y, ref.val_y)
    assert set(_val_ids(tasks[(3, 1, 0)])) < set(_val_ids(tasks[(6, 1, 0)]))  # nested in the cap
    assert torch.equal(tasks[(3, 5, 0)].test_x, base.test_x)  # test untouched


def test_cap_applies_to_a_datasets_own_val_split(make_cfg, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images[:, None] / 16.0).astype(np.float32), d.target.astype(np.int64)
    path = tmp_path / "with_val.npz"
    np.savez(path, x_train=x[:1200], y_train=y[:1200], x_val=x[1200:1500], y_val=y[1200:1500])
    own = prepare(make_cfg("target=npz", f"target.path={path}", "target.n_per_class=2")).target
    capped = prepare(make_cfg("target=npz", f"target.path={path}", "target.n_per_class=2",
                              "target.val_cap_per_class=4")).target
    assert len(own.val_y) == 300 and capped.origins["val"][0] == "val"
    assert np.bincount(capped.val_y.numpy()).tolist() == [4] * 10
    assert set(capped.origins["val"][1]) <= set(own.origins["val"][1])
    rerun = prepare(make_cfg("target=npz", f"target.path={path}", "target.n_per_class=7",
                             "target.val_cap_per_class=4")).target
    assert torch.equal(rerun.val_x, capped.val_x)


# ---------------------------------------------------------------- the report reads curves at their checks
def test_curve_measures_use_the_epochs_of_the_checks():
    from transferlab.analysis import stats

    t, s = [0.5, 0.8, 0.9, 0.9], [0.3, 0.5, 0.7, 0.9]
    at = [8, 16, 24, 32]
    m = stats.curve_measures(t, s, threshold=0.8, transfer_epochs=at, scratch_epochs=at)
    assert m["epochs_to_thr_transfer"] == 16 and m["epochs_to_thr_scratch"] == 32  # epochs, not check numbers
    assert m["jumpstart"] == pytest.approx(0.2)
    same = stats.curve_measures(t, s, threshold=0.8)  # no epochs: a point per epoch, as records before schedules
    assert same["epochs_to_thr_transfer"] == 2 and same["auc_ratio"] == pytest.approx(m["auc_ratio"])
    offset = stats.curve_measures(t, s[1:], 0.8, transfer_epochs=at, scratch_epochs=at[1:])  # common checks only
    assert offset["jumpstart"] == pytest.approx(0.8 - 0.5)


def test_the_long_curves_table_puts_each_point_at_its_epoch():
    import pandas as pd

    from transferlab.analysis import collect

    rows = pd.DataFrame([{"status": "ok", "val_acc_history": [0.2, 0.4], "val_epochs": [8, 16], "arm": "a"},
                         {"status": "ok", "val_acc_history": [0.1, 0.3, 0.5], "arm": "b"}])  # an older record
    rows.loc[1, "val_epochs"] = None
    long = collect.curves(rows)
    assert long["epoch"].tolist() == [8, 16, 1, 2, 3] and long["val_acc"].tolist() == [0.2, 0.4, 0.1, 0.3, 0.5]
