"""Selection that counts its labels (issue 26, item 2): `train.select=val_in_budget` carves its validation split
out of the n labelled examples (tasks/budget_val.py), and every result records `labels_used` (run/labels.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import cli_problems, recomputed_test_acc, run_cli
from transferlab.errors import ConfigError
from transferlab.run.experiment import run
from transferlab.run.labels import labels_used
from transferlab.run.setup import prepare
from transferlab.tasks.budget_val import split_subset

QUIET = ("trainer.enable_progress_bar=false", "transfer.scores=[]")
FAST = ("pretrain.max_epochs=2", "train.max_epochs=6", "train.val_every_steps=1", *QUIET)


def test_the_split_holds_out_the_rule_per_class_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), [2, 5, 11])
    train, val = split_subset(labels, 0.2, seed=7)
    assert [int(np.sum(labels[val] == c)) for c in range(3)] == [1, 1, 2]  # max(1, floor(0.2 n_c))
    assert np.intersect1d(train, val).size == 0 and sorted(np.r_[train, val]) == list(range(len(labels)))
    assert np.array_equal(split_subset(labels, 0.2, seed=7)[1], val)  # fixed by the seed
    assert len({tuple(split_subset(labels, 0.2, seed=s)[1]) for s in range(10)}) > 1  # and the seed chooses
    _, half = split_subset(labels, 0.5, seed=7)
    assert [int(np.sum(labels[half] == c)) for c in range(3)] == [1, 2, 5]
    with pytest.raises(ValueError, match="at least 2 per class"):
        split_subset(np.array([0, 1, 1]), 0.2, seed=0)


def test_the_val_split_is_carved_out_of_the_subset_that_best_val_trains_on(make_cfg):
    """Same data_seed, n=5 per class on digits (5 classes): val_in_budget validates on 1 of each class's 5 and trains
    on the other 4; together they are exactly best_val's training subset; test split unchanged."""
    honest = prepare(make_cfg("target.n_per_class=5", "train.select=val_in_budget", "data_seed=3"))
    usual = prepare(make_cfg("target.n_per_class=5", "data_seed=3"))
    t, u = honest.target, usual.target
    assert len(t.train_indices) == 20 and len(t.val_y) == 5
    assert sorted(t.val_y.tolist()) == list(range(5))
    pool_pos = u.origins["train"][1]
    val_pos = t.origins["val"][1]
    assert set(val_pos).isdisjoint(pool_pos[t.train_indices])
    assert sorted(np.r_[pool_pos[t.train_indices], val_pos]) == sorted(pool_pos[u.train_indices])
    assert np.array_equal(t.test_y.numpy(), u.test_y.numpy())
    assert honest.budget.n_train == 20
    assert t.info["val_in_budget"] == {"fraction": 0.2, "val": 5, "train": 20,
                                       "rule": "per class max(1, floor(fraction x n_c)) held out, seeded by data_seed"}


def test_a_val_in_budget_run_selects_on_its_carved_split_and_counts_every_label(make_cfg):
    cfg = make_cfg("target.n_per_class=5", "train.select=val_in_budget", *FAST)
    rec = run(cfg)
    assert rec["status"] == "ok" and rec["select"] == "val_in_budget"
    assert (rec["n_train"], rec["n_val"], rec["labels_used"]) == (20, 5, 25)
    m = rec["metrics"]
    acc, loss, at = m["val/acc_history"], m["val/loss_history"], m["val/epoch_history"]
    assert all(round(a * 5) == pytest.approx(a * 5, abs=1e-6) for a in acc)  # accuracies on 5 examples
    best = max(acc)
    assert rec["selected_epoch"] == min((e for e, a in zip(at, acc) if a == best),
                                        key=lambda e: (loss[at.index(e)], e))
    assert m["test/acc"] == pytest.approx(recomputed_test_acc(cfg, rec["target_ckpt"]), abs=1e-6)


@pytest.mark.parametrize("select,scheduler,reads", [("best_val", "none", True), ("last", "none", False),
                                                    ("fixed_epoch", "none", False), ("last", "plateau", True),
                                                    ("val_in_budget", "none", True), ("cv", "none", False)])
def test_labels_used_counts_the_val_split_exactly_when_it_shapes_the_model(select, scheduler, reads):
    assert labels_used(select, scheduler, 20, 135) == 20 + (135 if reads else 0)


def test_labels_used_is_recorded_by_every_run(make_cfg):
    best = run(make_cfg("target.n_per_class=2", *FAST, run="best"))
    last = run(make_cfg("target.n_per_class=2", "train.select=last", *FAST, run="last"))
    assert best["labels_used"] == best["n_train"] + best["n_val"] == 10 + best["n_val"]
    assert last["labels_used"] == last["n_train"] == 10


@pytest.mark.parametrize("overrides,key", [
    (("target.n_per_class=1", "train.select=val_in_budget"), "target.n_per_class"),
    (("target.n_per_class=5", "train.select=val_in_budget", "train.val_in_budget_fraction=0"),
     "train.val_in_budget_fraction"),
    (("target.n_per_class=5", "train.select=val_in_budget", "train.val_in_budget_fraction=1.5"),
     "train.val_in_budget_fraction"),
    (("target.n_per_class=5", "train.select=val_in_budget", "target.val_cap_per_class=3"),
     "target.val_cap_per_class"),
])
def test_bad_protocol_inputs_are_refused_before_anything_is_written(make_cfg, tmp_path, overrides, key):
    with pytest.raises(ConfigError) as e:
        run(make_cfg(*overrides))
    assert [p.key for p in e.value.items] == [key], e.value.problems
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("result.json"))


def test_val_in_budget_at_n_1_is_one_line_and_exit_2_from_the_cli(tmp_path):
    p = run_cli("target.n_per_class=1", "train.select=val_in_budget", "logger=none", cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    (line,) = cli_problems(p.stderr)
    assert line.startswith("target.n_per_class=1") and "val_in_budget" in line and "at least 2 per class" in line
    assert not list(tmp_path.rglob("result.json"))


def test_the_setup_block_says_which_labels_shaped_the_models():
    from transferlab.analysis.provenance import _labels_used
    from transferlab.run.record import RunRecord

    recs = [RunRecord(status="ok", select="best_val", n_val=135, config={"train": {"scheduler": "none"}}),
            RunRecord(status="ok", select="val_in_budget", n_val=5, config={"train": {"scheduler": "none"}}),
            RunRecord(status="ok", select="last", n_val=135, config={"train": {"scheduler": "none"}}),
            RunRecord(status="ok", select="fixed_epoch", n_val=135, config={"train": {"scheduler": "plateau"}})]
    text = _labels_used(recs)
    assert "best_val: the n examples plus the 135-example validation split" in text
    assert "val_in_budget: the n examples only" in text
    assert "last: the n examples only (no validation label decides anything)" in text
    assert "fixed_epoch: the n examples plus the 135-example validation split" in text  # plateau read it


def test_the_report_never_compares_arms_selected_under_different_protocols(tmp_path):
    """train.select is part of a run's setting (collect.py: settings differ in more than arm, n and seed), so
    best_val and val_in_budget runs land in two panels, never in one comparison; results.csv says each run's
    protocol and labels_used, and the setup block which labels shaped the models."""
    from transferlab.report import main as report

    sweep = tmp_path / "sweep"
    p = run_cli("-m", "pretrain.max_epochs=1", "train.max_epochs=3", "target.n_per_class=5", "seed=0,1",
                "train.select=best_val,val_in_budget", "transfer.scores=[]", "logger=none",
                "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert report([str(sweep), "--out", str(tmp_path / "rep"), "--n-boot", "20"]) == 0
    rows = pd.read_csv(tmp_path / "rep" / "results.csv")
    assert rows.groupby("setting")["select"].nunique().max() == 1 and rows["setting"].nunique() == 2
    by = {(r["select"], int(r["seed"])): r for _, r in rows.iterrows()}
    assert {k[0] for k in by} == {"best_val", "val_in_budget"}
    assert (by[("val_in_budget", 0)]["labels_used"], by[("val_in_budget", 0)]["n_train"]) == (25, 20)
    best = by[("best_val", 0)]
    assert best["n_train"] == 25 and best["labels_used"] == 25 + 135  # digits 5-9: a 135-example val split
    assert "labels that shaped each model" in (tmp_path / "rep" / "report.html").read_text()
