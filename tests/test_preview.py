"""The dry run's cost preview (src/transferlab/sweep/preview.py): the arithmetic against a hand computation with
injected probe timings, the points described as the runs will plan them, the pretrainings a cache holds or not,
and a real dry run that prints the estimate and writes nothing."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from conftest import compose_cfg, run_cli

from transferlab.sweep import preview as P
from transferlab.sweep.points import Point

BASIC = P.Launcher("basic", 1, "one at a time (basic launcher)")


def _timing(**kw) -> P.Timing:
    base = dict(fixed_s=1.0, epoch_s=0.01, batch_s={5: 0.002, 18: 0.003, 32: 0.004}, val_s=0.05, load_s=0.1,
                feature_s=0.5)
    return P.Timing(**{**base, **kw})


PRE = P.Timing(fixed_s=2.0, epoch_s=0.02, batch_s={64: 0.01, 28: 0.006}, val_s=0.03, save_s=0.2)


def _works() -> list[P.Work]:
    return [P.Work("w1", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1"),
            P.Work("w2", "a", "A", epochs=40, batches=(32, 18), checks=40, n_train=50, source="S1"),
            P.Work("w3", "b", "A", epochs=320, batches=(5,), checks=40, n_train=5, features="F")]


def _pretrainings() -> dict[str, P.Pretraining]:
    return {"S1": P.Pretraining("S1", "digits_0to4 / small_cnn", "pre", epochs=30, batches=(64,) * 8 + (28,),
                                cached=False),
            "S2": P.Pretraining("S2", "digits_0to4 / small_cnn", "pre", epochs=30, batches=(64,) * 8 + (28,),
                                cached=True)}


def test_price_per_arm_and_total_match_a_hand_computation():
    works = _works()
    est = P.price([[w] for w in works], {"A": _timing(), "pre": PRE}, _pretrainings(), launcher=BASIC,
                  job_s=0.05, startup_s=3.0, warmup_s=0.4)
    # run = fixed + load + epochs x (epoch + batches) + checks x val
    w1 = 1.0 + 0.1 + 320 * (0.01 + 0.002) + 40 * 0.05          # 6.94
    w2 = 1.0 + 0.1 + 40 * (0.01 + 0.004 + 0.003) + 40 * 0.05   # 3.78
    w3 = 1.0 + 320 * (0.01 + 0.002) + 40 * 0.05 + 0.5          # 6.84 + its feature pass
    pre = 2.0 + 30 * (0.02 + 8 * 0.01 + 0.006 + 0.03) + 0.2    # 6.28; S2 is cached
    rows = {r.arm: r for r in est.rows}
    assert rows["a"].points == 2 and rows["a"].compute_s == pytest.approx(w1 + w2 + 2 * 0.05)
    assert rows["b"].points == 1 and rows["b"].compute_s == pytest.approx(w3 + 0.05)
    assert rows["a"].epochs == {320, 40} and rows["a"].checks == {40}
    assert est.pretrain_s == pytest.approx(pre)
    assert est.compute_s == pytest.approx(w1 + w2 + w3 + 3 * 0.05 + pre)
    assert est.wall_s == pytest.approx(3.0 + 0.4 + est.compute_s)  # one at a time: start-up, warm-up, all of it
    text = P.render(est, probes=2, probe_s=1.5, machine="injected")
    assert "source pretrainings needed: 1 (of 2 source models the points read; 1 already in the cache)" in text
    assert "an estimate" in text and "wall time: ~" in text


def test_a_tuned_point_pays_one_fit_per_candidate_and_never_stacks():
    t = _timing(stacked_epoch_s=0.008, stacked_batch_s={5: (0.003, 0.001)}, stacked_val_s=(0.01, 0.02))
    fit = 1.0 + 0.1 + 320 * (0.01 + 0.002) + 40 * 0.05
    tuned = P.Work("t", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1", candidates=3)
    assert P.run_cost(tuned, t) == pytest.approx(3 * fit)
    group = [P.Work(f"s{k}", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1", candidates=3)
             for k in range(2)]
    assert not P.stacks(group, t) and P.unit_cost(group, {"A": t}) == pytest.approx(6 * fit)


def test_a_tuned_point_whose_candidates_stack_pays_one_stacked_fit_and_under_cv_its_fits_on_all_n_alone():
    t = _timing(stacked_epoch_s=0.008, stacked_batch_s={5: (0.003, 0.001)}, stacked_val_s=(0.01, 0.02))
    fit = 1.0 + 0.1 + 320 * (0.01 + 0.002) + 40 * 0.05
    stacked3 = 3 * (1.0 + 0.1) + 320 * (0.008 + 0.003 + 3 * 0.001) + 40 * (0.01 + 3 * 0.02)
    tuned = P.Work("t", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1", candidates=3,
                   stacked_fits=1, stack_size=3)
    assert P.run_cost(tuned, t) == pytest.approx(stacked3) and stacked3 < 3 * fit
    # cv, k = 2: 3 candidates x 3 fits; fold fits stacked fold by fold (2 stacked fits), 3 fits on all n alone
    cv = P.Work("c", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1", candidates=9,
                stacked_fits=2, stack_size=3)
    assert P.run_cost(cv, t) == pytest.approx(2 * stacked3 + 3 * fit)
    # a shape the stacked model cannot hold: every fit alone
    assert P.run_cost(cv, replace_reason(t)) == pytest.approx(9 * fit)


def test_a_point_of_several_fits_pays_its_opening_test_and_record_once_and_a_hindsight_test_per_other_candidate():
    # fixed 1.0 of which 0.4 is a fit's own part; a test pass 0.2; the rest (opening, test, record) once per point
    t = _timing(fit_only_s=0.4, test_s=0.2)
    body = 0.1 + 320 * (0.01 + 0.002) + 40 * 0.05  # load + epochs + checks
    alone = P.Work("a", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1")
    assert P.run_cost(alone, t) == pytest.approx(1.0 + body)  # one fit: the whole run, as before
    tuned = P.Work("t", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1", candidates=3, tuned=3)
    assert P.run_cost(tuned, t) == pytest.approx(3 * (0.4 + body) + (1.0 - 0.4) + 2 * 0.2)
    cv = P.Work("c", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source="S1", candidates=6)
    assert P.run_cost(cv, t) == pytest.approx(6 * (0.4 + body) + (1.0 - 0.4))  # untuned cv: no hindsight test


def test_a_vectorised_group_is_one_job_priced_as_a_stacked_model():
    t = _timing(stacked_epoch_s=0.008, stacked_batch_s={5: (0.003, 0.001)}, stacked_val_s=(0.01, 0.02))
    group = [P.Work(f"s{k}", "a", "A", epochs=320, batches=(5,), checks=40, n_train=5, source=f"S{k}")
             for k in range(3)]
    pre = {f"S{k}": P.Pretraining(f"S{k}", "src", "pre", 30, (64,), cached=True) for k in range(3)}
    est = P.price([group], {"A": t}, pre, launcher=BASIC, job_s=0.05)
    stacked = 3 * (1.0 + 0.1) + 320 * (0.008 + 0.003 + 3 * 0.001) + 40 * (0.01 + 3 * 0.02)  # 10.58
    assert est.units == 1 and est.points == 3
    assert est.compute_s == pytest.approx(stacked + 0.05)
    assert est.rows[0].compute_s == pytest.approx(stacked + 0.05)  # each member an equal share, summed per arm
    alone = 1.0 + 0.1 + 320 * (0.01 + 0.002) + 40 * 0.05
    assert stacked < 3 * alone  # the point of a group
    # a shape the stacked model cannot hold: its members in turn, still one job
    turn = P.price([group], {"A": replace_reason(t)}, pre, launcher=BASIC, job_s=0.05)
    assert turn.compute_s == pytest.approx(3 * alone + 0.05)


def replace_reason(t: P.Timing) -> P.Timing:
    from dataclasses import replace

    return replace(t, stack_reason="PEFT modules (LoRA, VPT) are not stacked")


def test_wall_time_on_parallel_slots_waits_for_a_shared_source():
    # two slots; jobs 1 and 2 read source S (2 s to pretrain), job 3 none; each worker starts in 0.5 s
    span = P.schedule([(1.0, ["S"]), (1.0, ["S"]), (1.0, [])], 2, {"S": 2.0}, worker_start_s=0.5)
    # slot 0: 0.5 start, pretrains S until 2.5, runs until 3.5; slot 1: 0.5 start, waits for S, runs 2.5-3.5;
    # job 3 on slot 0 at 3.5 (its worker has started), ends 4.5
    assert span == pytest.approx(4.5)
    assert P.schedule([(1.0, [])] * 4, 2, {}) == pytest.approx(2.0)
    assert P.schedule([(1.0, [])] * 2, 2, {}, worker_start_s=3.0, every_job=True) == pytest.approx(4.0)


def test_launcher_parallelism_from_the_hydra_config():
    from omegaconf import OmegaConf

    basic = P.launcher_of(OmegaConf.create({"launcher": {
        "_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}}))
    assert (basic.kind, basic.slots) == ("basic", 1)
    joblib = P.launcher_of(OmegaConf.create({"launcher": {
        "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 8}}),
        OmegaConf.create({"lease": {"slots": 2}, "trainer": {"accelerator": "cpu"}}))
    assert (joblib.kind, joblib.slots, joblib.threads) == ("local_parallel", 2, 1)  # at most the lease's slots
    slurm = P.launcher_of(OmegaConf.create({"launcher": {
        "_target_": "hydra_plugins.transferlab_plugins.slurm.TolerantSlurmLauncher", "array_parallelism": 64}}))
    assert (slurm.kind, slurm.slots) == ("slurm", 64)
    queue = P.launcher_of(OmegaConf.create({"launcher": {
        "_target_": "hydra_plugins.transferlab_plugins.slurm.TolerantSlurmLauncher", "array_parallelism": None}}))
    est = P.price([], {}, {}, launcher=queue)
    assert est.wall_s is None and "depends on the queue" in P.render(est)


# ------------------------------------------------------------------ describing real configs


PRESET = ["experiment=freeze_vs_n", "hydra.sweeper.grids.scratch=null"]


def _items(tmp_path: Path, cache: Path, *, seeds=(0, 1), ns=(1, 5), freezes=("0", "all"), extra=()):
    from omegaconf import OmegaConf, read_write

    items = []
    for seed in seeds:
        for n in ns:
            for f in freezes:
                ov = [f"seed={seed}", f"target.n_per_class={n}", f"transfer.freeze={f}", *extra]
                cfg = compose_cfg([*PRESET, *ov], tmp_path / "sweep" / f"p{len(items)}", cache)
                with read_write(cfg):
                    OmegaConf.resolve(cfg)
                items.append((Point(overrides=ov, name=",".join(ov)), cfg))
    return items


def test_points_are_described_as_their_runs_plan_them_and_priced_with_injected_timings(tmp_path):
    from transferlab.training import budget as budget_mod

    cache = tmp_path / "cache"
    items = _items(tmp_path, cache)
    probed = []

    def measure(spec: P.Probe) -> P.Timing:
        probed.append(spec)
        return _timing(batch_s={b: 0.001 * b for b in spec.batch_sizes})

    est, timings, _ = P.estimate(items, measure=measure, launcher=BASIC, startup_s=0.0)
    works, _, pretrainings = P.describe(items)
    assert len(works) == 8 and not any(w.error for w in works)
    for w, (_, cfg) in zip(works, items):
        n_train = 5 * int(cfg.target.n_per_class)  # digits 5-9: five classes
        b = budget_mod.plan(cfg.train, n_train)
        assert (w.n_train, w.epochs, w.batches) == (n_train, b.epochs, (n_train,))  # one batch: n_train < 32
        assert w.checks == P.checks_of(b) == len(getattr(b, "val_epochs", None) or range(1, b.epochs + 1))
    # freeze=0 and freeze=all are two shapes (what trains differs); n and seeds are not; plus one pretraining
    assert sorted(p.kind for p in probed) == ["pretrain", "target", "target"]
    assert len({w.source for w in works}) == 2 and len(pretrainings) == 2  # pretrain.seed=${seed}
    assert not any(p.cached for p in pretrainings.values())
    hand = 0.0
    for w in works:
        t = timings[w.shape]
        hand += t.fixed_s + t.load_s + w.epochs * (t.epoch_s + sum(t.batch(b) for b in w.batches)) \
            + w.checks * t.val_s
        hand += t.feature_s if w.features and w is next(v for v in works if v.features == w.features) else 0.0
    pre = sum(P.pretrain_cost(p, timings[p.shape]) for p in pretrainings.values())
    assert est.compute_s == pytest.approx(hand + pre)
    assert math.isclose(sum(r.compute_s for r in est.rows) + est.pretrain_s, est.compute_s)


def test_pretrainings_needed_with_an_empty_then_a_warm_cache(tmp_path):
    from transferlab.run.experiment import run

    cache = tmp_path / "cache"
    items = _items(tmp_path, cache, ns=(1,), freezes=("0",))
    _, _, empty = P.describe(items)
    assert len(empty) == 2 and sum(not p.cached for p in empty.values()) == 2
    # seed 0's source model, pretrained for real by a short run (same source, backbone and pretrain settings)
    warm = compose_cfg(["seed=0", "target.n_per_class=1", "transfer.freeze=0", "logger=none"], tmp_path / "warm",
                       cache)
    assert run(warm)["source_cache"] == "miss"
    _, _, after = P.describe(items)
    assert sum(p.cached for p in after.values()) == 1 and sum(not p.cached for p in after.values()) == 1
    est = P.price([], {}, after, launcher=BASIC)
    assert "source pretrainings needed: 1 (of 2 source models the points read; 1 already in the cache)" \
        in P.render(est)


# ------------------------------------------------------------------ the dry run itself


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_dry_run_prints_the_estimate_and_writes_nothing(tmp_path):
    sweep_dir = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "notes.txt").write_text("a folder the dry run must leave as it is")
    tmp = tmp_path.parent / f"{tmp_path.name}-tmp"  # the probes' temporary folders (TMPDIR)
    tmp.mkdir()
    before = _listing(tmp_path)
    out = run_cli("-m", *PRESET, "seed=0,1", "target.n_per_class=2", "transfer.freeze=0,all",
                  "pretrain.max_epochs=2", "train.min_steps=16", "train.max_epochs=2",
                  "trainer.enable_progress_bar=false", "hydra.sweeper.vectorize=seeds", "hydra.sweeper.dry_run=true",
                  cwd=tmp_path, env={"TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("sweep freeze_vs_n: 4 to run, 0 done (dry run: nothing launched)")
    text = out.stdout
    assert "cost estimate (an estimate, not a promise): measured by" in text, text
    assert "transfer.freeze=0" in text and "transfer.freeze=all" in text and "wall time: ~" in text
    assert "source pretrainings needed: 2 (of 2 source models the points read; 0 already in the cache)" in text
    assert "estimate unavailable" not in text
    assert _listing(tmp_path) == before  # no sweep folder content, no cache, no outputs
    assert os.listdir(sweep_dir) == ["notes.txt"] and not (tmp_path / "outputs" / "cache").exists()
    # no temporary folder left behind (torch's own compile cache folder aside)
    assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor")] == []


def test_the_estimate_can_be_switched_off(tmp_path):
    """hydra.sweeper.estimate=false: the dry run lists the points and says the estimate was skipped, no probe."""
    p = run_cli("-m", "seed=0,1", "hydra.sweeper.dry_run=true", "hydra.sweeper.estimate=false",
                f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "cost estimate skipped (hydra.sweeper.estimate=false)" in p.stdout
    assert "cost estimate (an estimate" not in p.stdout and "2 to run" in p.stdout
