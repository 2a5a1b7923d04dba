"""`train.select=cv` (issue 26, item 2; run/cv.py, tasks/cv_folds.py): k-fold cross-validation inside the n
labelled examples chooses the training steps, the model then trains on all n and only it is tested. The folds are
stratified, disjoint, cover the n, nest across n and stay out of val and test; the chosen step is the hand
computation from the recorded fold curves; labels_used is n; bad inputs are one line, exit 2, nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_problems, recomputed_test_acc, run_cli
from transferlab.errors import ConfigError
from transferlab.run import convergence, identity
from transferlab.run.cv import FOLD_FILE
from transferlab.run.experiment import run
from transferlab.run.setup import prepare
from transferlab.run.values import value_problems
from transferlab.tasks import cv_folds
from transferlab.tasks.sampling import class_orders, draw_subset

QUIET = ("trainer.enable_progress_bar=false", "transfer.scores=[]", "logger=none")
FAST = ("pretrain.max_epochs=2", "train.max_epochs=6", "train.val_every_steps=1", *QUIET)


def _per_class(labels: np.ndarray, positions: np.ndarray, classes: int) -> list[int]:
    return [int(np.sum(labels[positions] == c)) for c in range(classes)]


@pytest.mark.parametrize("sizes", [{"n_per_class": 7}, {"n_train": 23}])
def test_folds_are_stratified_disjoint_cover_the_subset_and_nest_across_n(sizes):
    rng = np.random.default_rng(0)
    pool = rng.permutation(np.repeat(np.arange(3), 40))
    k, seed = 3, 11
    small = draw_subset(pool, n_per_class=sizes.get("n_per_class"), n_train=sizes.get("n_train"), data_seed=seed)
    folds = cv_folds.assign(pool, small, k, seed)
    counts = _per_class(pool, small, 3)
    for j in range(k):  # stratified: floor or ceil of n_c / k of every class in every fold
        held = _per_class(pool, small[folds == j], 3)
        assert all(math.floor(n / k) <= h <= math.ceil(n / k) for h, n in zip(held, counts)), (j, held, counts)
    assert sorted(np.concatenate([small[folds == j] for j in range(k)]).tolist()) == sorted(small.tolist())
    sizes_ = [int(np.sum(folds == j)) for j in range(k)]
    if "n_per_class" in sizes:
        assert max(sizes_) - min(sizes_) <= 1  # classes rotate their starting fold
    # nested: a larger subset of the same data_seed keeps every example's fold
    big_sizes = {key: v * 3 for key, v in sizes.items()}
    big = draw_subset(pool, n_per_class=big_sizes.get("n_per_class"), n_train=big_sizes.get("n_train"),
                      data_seed=seed)
    big_folds = dict(zip(big.tolist(), cv_folds.assign(pool, big, k, seed).tolist()))
    assert set(small.tolist()) <= set(big_folds)
    assert all(big_folds[p] == f for p, f in zip(small.tolist(), folds.tolist()))
    # fixed by data_seed, and data_seed chooses
    assert np.array_equal(cv_folds.assign(pool, small, k, seed), folds)
    other = draw_subset(pool, n_per_class=sizes.get("n_per_class"), n_train=sizes.get("n_train"), data_seed=seed + 1)
    assert not np.array_equal(cv_folds.assign(pool, other, k, seed + 1), folds) or not np.array_equal(other, small)


def test_a_subset_not_drawn_as_a_prefix_is_refused():
    pool = np.repeat(np.arange(2), 10)
    orders = class_orders(pool, 0)
    not_prefix = np.sort(np.r_[orders[0][1:4], orders[1][:3]])
    with pytest.raises(RuntimeError, match="not a prefix"):
        cv_folds.assign(pool, not_prefix, 2, 0)


def test_fold_tasks_validate_inside_the_subset_apart_from_val_and_test(make_cfg):
    prep = prepare(make_cfg("target.n_per_class=6", "train.select=cv", "train.cv_folds=3", "data_seed=2"))
    target = prep.target
    folds = cv_folds.task_folds(target, 3, 2)
    pool_pos = target.origins["train"][1]
    subset = set(pool_pos[target.train_indices].tolist())
    held_all = []
    for j in range(3):
        t = cv_folds.fold_task(target, folds, j)
        val_pos = t.origins["val"][1]
        assert set(val_pos.tolist()) <= subset and set(pool_pos[t.train_indices].tolist()) <= subset
        assert set(val_pos.tolist()).isdisjoint(pool_pos[t.train_indices].tolist())
        assert sorted(t.val_y.tolist()) == sorted(list(range(5)) * 2)  # 2 of each of the 5 classes
        assert np.array_equal(t.test_y.numpy(), target.test_y.numpy())
        held_all += val_pos.tolist()
    assert sorted(held_all) == sorted(subset)
    # the subset itself (hence the folds) lies in the train pool, apart from the task's val and test splits
    origins = target.origins
    for split in ("val", "test"):
        if split in origins and origins[split][0] == origins["train"][0]:
            assert subset.isdisjoint(origins[split][1].tolist())


def test_a_cv_point_chooses_the_step_of_the_best_mean_fold_curve_then_trains_on_all_n(make_cfg, monkeypatch):
    import lightning as L

    tested: list[str] = []
    original = L.Trainer.test

    def counted(self, *args, **kwargs):
        if "source" not in Path(str(kwargs.get("ckpt_path"))).parts:
            tested.append(str(kwargs.get("ckpt_path")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "test", counted)
    cfg = make_cfg("target.n_per_class=4", "train.select=cv", *FAST, "train.min_steps=9")
    rec = run(cfg)
    assert rec["status"] == "ok" and rec["select"] == "cv"
    cv = rec["cv"]
    assert cv["k"] == 4 and cv["fits"] == 5  # null: min(5, 4 per class)
    assert tested == [rec["target_ckpt"]]  # the fold fits are never tested
    # every fold: 3 of each of the 5 classes trains, 1 of each validates; fold_of covers the 20 examples
    assert [(f["n_train"], f["n_val"]) for f in cv["folds"]] == [(15, 5)] * 4
    assert sorted(cv["fold_of"]) == sorted([0, 1, 2, 3] * 5)
    # the hand computation from the recorded fold curves
    epochs = cv["folds"][0]["history"]["epoch"]
    assert all(f["history"]["epoch"] == epochs for f in cv["folds"])
    mean_acc = [float(np.mean([f["history"]["val/acc"][i] for f in cv["folds"]])) for i in range(len(epochs))]
    mean_loss = [float(np.mean([f["history"]["val/loss"][i] for f in cv["folds"]])) for i in range(len(epochs))]
    best = min(range(len(epochs)), key=lambda i: (-mean_acc[i], mean_loss[i], i))
    spe = cv["folds"][0]["steps_per_epoch"]
    assert cv["chosen"]["epoch"] == epochs[best] and cv["chosen"]["step"] == epochs[best] * spe
    assert rec["metrics"]["val/acc"] == pytest.approx(mean_acc[best])
    # the final model trains on all n for that many steps (whole epochs: the fewest giving at least them)
    final_spe = rec["budget"]["steps_per_epoch"]
    want = math.ceil(cv["chosen"]["step"] / final_spe)
    assert rec["n_train"] == 20 and len(rec["train_indices"]) == 20
    assert (cv["final"]["epochs"], rec["metrics"]["epochs"], rec["selected_epoch"]) == (want, want, want)
    assert rec["metrics"]["steps"] == want * final_spe >= cv["chosen"]["step"]
    assert rec["labels_used"] == rec["n_train"] == 20
    # the convergence verdict is on the mean held-out curve (the n examples, each held out once)
    assert rec["convergence"] == convergence.judge(mean_acc, 20, epochs=epochs).to_dict()
    assert rec["metrics"]["test/acc"] == pytest.approx(recomputed_test_acc(cfg, rec["target_ckpt"]), abs=1e-6)
    # the subset is best_val's subset of the same data_seed
    usual = prepare(make_cfg("target.n_per_class=4", run="usual"))
    assert rec["train_indices"] == [int(i) for i in usual.target.train_indices]


def test_the_fit_on_all_n_is_the_planned_fit_cut_at_the_chosen_epoch(make_cfg):
    """The model tested equals the model after that many epochs of the point's whole plan (fixed_epoch): same
    LR schedule, same net, same batches."""
    rec = run(make_cfg("target.n_per_class=3", "train.select=cv", "train/scheduler=cosine", *FAST))
    e = rec["selected_epoch"]
    fixed = run(make_cfg("target.n_per_class=3", "train.select=fixed_epoch", f"train.select_epoch={e}",
                         "train/scheduler=cosine", *FAST, run="fixed"))
    assert fixed["selected_epoch"] == e
    assert rec["metrics"]["test/acc"] == pytest.approx(fixed["metrics"]["test/acc"], abs=1e-6)
    assert rec["metrics"]["test/loss"] == pytest.approx(fixed["metrics"]["test/loss"], abs=1e-5)


def test_a_killed_point_reuses_its_finished_folds_only_when_they_verify(make_cfg, monkeypatch):
    cfg = make_cfg("target.n_per_class=2", "train.select=cv", *FAST)
    first = run(cfg)
    run_dir = Path(str(cfg.paths.output_dir))
    fold_files = sorted(run_dir.glob(f"folds/*/{FOLD_FILE}"))
    assert len(fold_files) == 2
    (run_dir / "result.json").unlink()
    (run_dir / "result.json.sha256").unlink()
    text = fold_files[1].read_text()
    fold_files[1].write_text(text.replace('"val/acc": [', '"val/acc": [0.99, '))  # edited: fails its seal
    again = run(cfg)
    assert [f["reused"] for f in again["cv"]["folds"]] == [True, False]
    assert again["cv"]["mean"] == first["cv"]["mean"]
    assert again["metrics"]["test/acc"] == pytest.approx(first["metrics"]["test/acc"], abs=1e-6)


def test_identity_holds_the_folds_of_a_cv_point_and_nothing_new_for_other_runs(make_cfg):
    base = make_cfg()
    fp = identity.fingerprint(base)
    c = identity.identity_config(base)
    assert "cv_folds" not in c["train"] and "cv_design" not in c["train"]  # a run as before cv existed
    cv_null = identity.fingerprint(make_cfg("train.select=cv"))
    cv3 = identity.fingerprint(make_cfg("train.select=cv", "train.cv_folds=3"))
    assert len({fp, cv_null, cv3}) == 3
    assert identity.identity_config(make_cfg("train.select=cv"))["train"]["cv_design"] == cv_folds.DESIGN


@pytest.mark.parametrize("overrides,key", [
    (("target.n_per_class=1", "train.select=cv"), "target.n_per_class"),
    (("target.n_per_class=3", "train.select=cv", "train.cv_folds=4"), "train.cv_folds"),
    (("target.n_per_class=3", "train.select=cv", "train.cv_folds=1"), "train.cv_folds"),
    (("target.n_per_class=3", "train.cv_folds=3"), "train.cv_folds"),  # folds without cv
    (("target.n_train=5", "train.select=cv"), "target.n_train"),  # 1 per class: known once the data is read
    (("target.n_train=12", "train.select=cv", "train.cv_folds=3"), "train.cv_folds"),  # 2 or 3 per class
    (("target.n_per_class=4", "train.select=cv", "train/scheduler=plateau"), "train.scheduler"),
    (("target.n_per_class=4", "train.select=cv", "trainer.devices=2", "trainer.accelerator=cpu"), "train.select"),
])
def test_bad_cv_inputs_are_refused_before_anything_is_written(make_cfg, tmp_path, overrides, key):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert [p.key for p in e.value.items] == [key], e.value.problems
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.json"))
    data_free = not any(w in " ".join(overrides) for w in ("n_train", "devices"))
    assert bool(value_problems(cfg)) == data_free  # what the config alone tells, the sweeper refuses up front


def test_cv_at_n_1_is_one_line_and_exit_2_from_the_cli(tmp_path):
    p = run_cli("target.n_per_class=1", "train.select=cv", "logger=none", cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    (line,) = cli_problems(p.stderr)
    assert line.startswith("target.n_per_class=1") and "train.select=cv" in line
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob(FOLD_FILE))


def test_a_sweep_with_a_bad_cv_point_refuses_before_launching_any(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_cli("-m", "target.n_per_class=1,4", "train.select=cv", "train.cv_folds=3", "logger=none",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert any(ln.startswith("target.n_per_class=1") for ln in cli_problems(p.stderr)), p.stderr[-2000:]
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob(FOLD_FILE))


def test_a_vectorised_cv_sweep_runs_its_members_one_after_the_other(tmp_path):
    """Through the real CLI and sweeper: two seeds of a cv point grouped by vectorize=seeds; each member is the
    point its own run would be (same fingerprint, k + 1 fits, labels_used = n)."""
    sweep = tmp_path / "sweep"
    args = ("-m", "pretrain.max_epochs=1", "train.max_epochs=3", "target.n_per_class=2", "seed=0,1",
            "train.select=cv", *QUIET, "hydra.sweeper.vectorize=seeds", f"hydra.sweep.dir={sweep}")
    p = run_cli(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    records = [json.loads(f.read_text()) for f in sorted(sweep.rglob("result.json"))]
    assert len(records) == 2 and {r["seed"] for r in records} == {0, 1}
    for r in records:
        assert r["status"] == "ok" and r["cv"]["k"] == 2 and r["labels_used"] == 10
        assert len(list(Path(r["config"]["paths"]["output_dir"]).glob(f"folds/*/{FOLD_FILE}"))) == 2
    again = run_cli(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "2 skipped" in again.stdout + again.stderr, again.stderr[-2000:]


@pytest.mark.parametrize("stack", ["false", "true"])
def test_a_tuned_cv_point_selects_by_mean_fold_score_and_equals_its_candidates_run_as_cv_points(make_cfg, stack):
    """Each candidate is the separate cv point train.lr=<value> (same fingerprint, folds, choice and fit on all
    n); the point picks the highest mean held-out val/acc (ties: lower mean val/loss, then the earlier value) and
    tests only that candidate; labels_used stays n. Stacked (fold fits j of both candidates as one model, the
    default), the curves agree within float tolerance (training/stacked.py); one after the other, exactly."""
    lrs = (1e-4, 3e-2)
    point = ("target.n_per_class=2", "train.select=cv", *FAST)
    tuned = run(make_cfg("tune.train.lr=[" + ",".join(map(str, lrs)) + "]", f"tune.stack={stack}", *point,
                         run="tuned"))
    separate = {lr: run(make_cfg(f"train.lr={lr}", *point, run=f"lr{lr}")) for lr in lrs}
    tol = {"abs": 1e-12} if stack == "false" else {"rel": 1e-4, "abs": 1e-5}
    assert tuned["tuning"]["fitted"].startswith("2 candidates' cv fold fits stacked" if stack == "true" else
                                                "one after the other (tune.stack=false)")
    cands = tuned["tuning"]["candidates"]
    for c, lr in zip(cands, lrs):
        assert c["fingerprint"] == separate[lr]["fingerprint"]
        assert c["score"] == pytest.approx(separate[lr]["metrics"]["val/acc"], **tol)
        assert c["cv_chosen"] == pytest.approx(separate[lr]["cv"]["chosen"], **tol)
    by_hand = min(lrs, key=lambda lr: (-separate[lr]["cv"]["chosen"]["val/acc"],
                                       separate[lr]["cv"]["chosen"]["val/loss"], lrs.index(lr)))
    assert tuned["tuning"]["chosen"] == {"train.lr": by_hand}
    assert tuned["cv"]["chosen"] == pytest.approx(separate[by_hand]["cv"]["chosen"], **tol)
    assert tuned["metrics"]["test/acc"] == pytest.approx(separate[by_hand]["metrics"]["test/acc"], abs=1e-6)
    assert tuned["selected_epoch"] == separate[by_hand]["selected_epoch"]
    assert tuned["labels_used"] == tuned["n_train"] == 10
    assert "mean held-out" in tuned["tuning"]["score"]


def test_the_report_setup_block_says_cv_chose_on_the_n_only():
    from transferlab.analysis.provenance import _labels_used
    from transferlab.run.record import RunRecord

    recs = [RunRecord(status="ok", select="cv", n_val=135, cv={"k": 5}, config={"train": {"scheduler": "none"}}),
            RunRecord(status="ok", select="best_val", n_val=135, config={"train": {"scheduler": "none"}})]
    text = _labels_used(recs)
    assert "cv: the n examples only; 5-fold cross-validation inside them chose the training steps" in text
    assert "k + 1 fits per point" in text


def test_the_dry_run_prices_k_plus_1_fits_per_cv_point(make_cfg):
    from transferlab.sweep.preview import cv_fits

    cv = make_cfg("target.n_per_class=3", "train.select=cv")
    target = prepare(cv).target
    assert cv_fits(cv, target) == 4  # null: min(5, 3) folds, plus the fit on all n
    assert cv_fits(make_cfg("target.n_per_class=3", "train.select=cv", "train.cv_folds=2", run="k2"), target) == 3
    assert cv_fits(make_cfg("target.n_per_class=3", run="plain"), target) == 1


def test_fold_fits_read_the_points_cached_features_and_match_fits_without_them(make_cfg, tmp_path):
    """A linear probe's frozen prefix is computed once for the point (one feature-cache entry for every fold fit
    and the fit on all n); the folds' curves and the tested model match the same point without the cache."""
    point = ("transfer=linear_probe", "target.n_per_class=3", "train.select=cv", *FAST)
    cached = run(make_cfg(*point, "train.feature_cache=on", f"paths.cache_dir={tmp_path / 'c1'}", run="on"))
    plain = run(make_cfg(*point, "train.feature_cache=off", f"paths.cache_dir={tmp_path / 'c2'}", run="off"))
    assert cached["feature_cache"]["status"] in ("miss", "hit", "memory") and plain["feature_cache"]["status"] == "off"
    assert len(list((tmp_path / "c1" / "features").iterdir())) == 1
    assert cached["fingerprint"] == plain["fingerprint"]
    assert cached["source_cache"] == plain["source_cache"] == "miss"  # each point pretrained its own source
    assert cached["cv"]["mean"]["val/acc"] == pytest.approx(plain["cv"]["mean"]["val/acc"], abs=1e-6)
    assert cached["cv"]["mean"]["val/loss"] == pytest.approx(plain["cv"]["mean"]["val/loss"], abs=1e-4)
    assert cached["cv"]["chosen"]["step"] == plain["cv"]["chosen"]["step"]
    assert cached["metrics"]["test/acc"] == pytest.approx(plain["metrics"]["test/acc"], abs=1e-6)


def test_a_sweep_point_retrained_from_zero_loses_its_fold_fits_too(tmp_path):
    """`resume=false`, or another fingerprint's work in the folder: the fold fits go with the other checkpoints."""
    from transferlab.sweep.points import Point
    from transferlab.sweep.state import prepare_point_dir

    fold = tmp_path / "p" / "folds" / "0" / FOLD_FILE
    fold.parent.mkdir(parents=True)
    fold.write_text("{}")
    point = Point(overrides=["train.select=cv"], name="p", hash="h1", dir=str(tmp_path / "p"))
    prepare_point_dir(tmp_path / "p", point)  # no marker: nothing proves whose files these are
    assert not (tmp_path / "p" / "folds").exists()
    fold.parent.mkdir(parents=True)
    fold.write_text("{}")
    prepare_point_dir(tmp_path / "p", point)  # its own marker now: kept for the resume
    assert fold.exists()
    prepare_point_dir(tmp_path / "p", point, fresh=True)
    assert not (tmp_path / "p" / "folds").exists()


def test_the_chosen_steps_carry_to_the_fit_on_all_n_when_its_epochs_are_longer(make_cfg):
    """Batches of 8: a fold fit's epoch over 15 examples is 2 steps, the fit on all 20 takes 3 per epoch. The fit
    on all n runs the fewest whole epochs that give at least the chosen steps."""
    rec = run(make_cfg("target.n_per_class=4", "train.select=cv", "train.batch_size=8", *FAST))
    cv = rec["cv"]
    assert {f["steps_per_epoch"] for f in cv["folds"]} == {2} and rec["budget"]["steps_per_epoch"] == 3
    t = cv["chosen"]["step"]
    assert t == 2 * cv["chosen"]["epoch"]
    assert rec["metrics"]["epochs"] == math.ceil(t / 3) == cv["final"]["epochs"]
    assert t <= rec["metrics"]["steps"] == 3 * math.ceil(t / 3) < t + 3
