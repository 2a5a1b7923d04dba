"""The report never pools runs that differ, and its counts are right.

Runs are seeds of one arm only when their identity (`transferlab.run.identity`) differs in nothing but the seeds; a
panel (setting) holds the runs that differ only in arm, n and seed; copies of one run count once; with the
sweeper's record (sweep.json) failures without a result and lost points are counted from it. Every record here is
written by hand from the real composed config, so fingerprints and inputs are what a run would record.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats as st

from conftest import compose_cfg
from transferlab.analysis import collect, stats
from transferlab.analysis.build import build_report
from transferlab.run import identity
from transferlab.run.record import SCHEMA, RunRecord
from transferlab.transfer import arm
from transferlab.transfer.arm_name import arm_name

ENV = {"python": "3.11.9", "transferlab": "0.1.0", "torch": "2.3.0", "numpy": "1.26.4", "commit": "a" * 40,
       "dirty": False}
BLOCKS = 4  # small_cnn: conv1..conv3, fc1
LOST = "no result.json (not run yet, or lost)"


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> str:
    cfg = compose_cfg(list(overrides), Path("/nonexistent/compose/run"))
    return json.dumps(OmegaConf.to_container(cfg, resolve=True))


def config(*overrides: str) -> dict:
    """The resolved config the CLI would run with these overrides (a fresh copy)."""
    return json.loads(_composed(("target.n_per_class=5", *overrides)))


def record(cfg: dict, acc: float, *, status: str = "ok", env: dict | None = None, history=None) -> dict:
    """A result.json record of a run of `cfg` with test accuracy `acc`: fingerprint and inputs as the run records
    them (identity of the config + content of its files)."""
    t = cfg["transfer"]
    cut = BLOCKS if t["cut"] is None else t["cut"]
    freeze = cut if t["freeze"] == "all" else t["freeze"]
    ins = identity.inputs(cfg)
    n = cfg["target"]["n_per_class"]
    facts = {"cut": cut, "freeze": freeze, "upper": t["upper"], "strategy": t["strategy"], "init": t["init"],
             "source_compute": t["source_compute"]}
    return {
        "schema": SCHEMA,
        "status": status, "error": None if status == "ok" else "RuntimeError: boom", "name": cfg["name"],
        "source": cfg["source"]["name"], "target": cfg["target"]["name"], "backbone": "small_cnn",
        "transfer": t["name"],
        # what the run is, as its plan records it (transfer/arm.py; small_cnn has BLOCKS blocks)
        "arm": arm.arm_label(n_blocks=BLOCKS, l2sp=t["l2sp"], **facts), "arm_name": arm_name(**facts),
        "is_baseline": identity.is_baseline(cfg), "copies_nothing": identity.copies_nothing(cfg),
        "seed_group": identity.seed_group_key(cfg, ins), "strategy": t["strategy"], "cut": cut, "upper": t["upper"], "freeze": freeze,
        "frozen_blocks": [], "trainable_blocks": [], "trainable_params": 10, "total_params": 20,
        "n_per_class": n, "n_train": 5 * n if n else 500, "num_classes": 5, "seed": cfg["seed"],
        "data_seed": cfg["data_seed"],
        "metrics": {} if status != "ok" else {"test/acc": acc, "val/acc": acc,
                                              "val/acc_history": history or [acc / 2, acc]},
        "source_cache": None, "source_ckpt": None, "target_ckpt": None, "train_indices": [], "wall_s": 1.0,
        "config": cfg, "fingerprint": identity.fingerprint(cfg, ins), "inputs": ins, "environment": env or ENV,
    }


def put(root: Path, folder: str, rec: dict) -> dict:
    RunRecord.from_dict(rec).write(root / folder)
    return rec


def run(root: Path, folder: str, acc: float, *overrides: str, **kw) -> dict:
    return put(root, folder, record(config(*overrides), acc, **kw))


def point(folder: str, rec_or_hash, status: str = "ok", error: str | None = None) -> dict:
    h = rec_or_hash["fingerprint"] if isinstance(rec_or_hash, dict) else rec_or_hash
    return {"name": folder, "overrides": folder.split(","), "grid": None, "hash": h, "dir": folder,
            "status": status, "error": error}


def write_sweep(root: Path, points: list[dict]) -> None:
    """sweep.json as the sweeper writes it (the contract the report reads)."""
    count = lambda s: sum(p["status"] == s for p in points)  # noqa: E731
    (root / "sweep.json").write_text(json.dumps({
        "name": "grouping", "sweep_dir": str(root), "ok": count("ok"), "failed": count("failed"),
        "skipped": count("skipped"), "launches": [{"argv": ["-m"], "start": 0.0, "end": 1.0, "host": "h"}],
        "points": points}))


def one(frame, **where):
    """The single row of `frame` matching every column == value."""
    sel = frame
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (where, frame)
    return sel.iloc[0]


def half_width(values) -> float:
    x = np.asarray(values, dtype=float)
    return float(st.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


# ---- a learning-rate sweep is three settings, not three seeds ------------------------------------------------

# lr: (finetune accuracies, scratch accuracies) for seeds 0, 1. train.lr is a float (the schema), so the
# config, and the labels made from it, say 1000.0 however the override spells it.
LRS = {"0.001": ([0.80, 0.84], [0.60, 0.62]), "0.01": ([0.70, 0.74], [0.50, 0.56]),
       "1000.0": ([0.20, 0.20], [0.10, 0.30])}
BASE = "digits_5to9 / small_cnn"


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory) -> Path:
    """train.lr=0.001,0.01,1000.0 x transfer=finetune,scratch x seed=0,1 at n=5, as the sweeper lays it out."""
    root = tmp_path_factory.mktemp("lr_sweep")
    points = []
    for lr, (ft, sc) in LRS.items():
        for transfer, accs in (("finetune", ft), ("scratch", sc)):
            for seed, acc in enumerate(accs):
                folder = f"train.lr={lr},transfer={transfer},seed={seed}"
                points.append(point(folder, run(root, folder, acc, f"train.lr={lr}", f"transfer={transfer}",
                                                f"seed={seed}")))
    write_sweep(root, points)
    return root


def test_lr_sweep_is_three_settings_not_three_seeds(lr_sweep):
    df = collect.collect(lr_sweep)
    assert len(df) == 12 and df["fingerprint"].nunique() == 12
    assert sorted(df["setting"].unique()) == [f"{BASE} / train.lr={lr}" for lr in ("0.001", "0.01", "1000.0")]
    assert df.groupby("setting")["arm"].apply(lambda a: sorted(set(a))).tolist() == [["freeze=0", "scratch"]] * 3
    assert (df.groupby("setting_key")["setting"].nunique() == 1).all()  # a label names exactly one key
    summary = stats.summarize(df)
    assert len(summary) == 6 and set(summary["n_seeds"]) == {2} and set(summary["seeds"]) == {"0 1"}
    for lr, (ft, sc) in LRS.items():
        setting = f"{BASE} / train.lr={lr}"
        assert one(summary, setting=setting, arm="freeze=0")["acc_mean"] == pytest.approx(np.mean(ft))
        assert one(summary, setting=setting, arm="scratch")["acc_mean"] == pytest.approx(np.mean(sc))
    ft01 = one(summary, setting=f"{BASE} / train.lr=0.01", arm="freeze=0")
    assert ft01["acc_ci_hi"] - ft01["acc_mean"] == pytest.approx(half_width([0.70, 0.74]))


def test_gain_pairs_each_arm_with_the_scratch_of_its_own_setting(lr_sweep):
    gain = stats.paired_gain(collect.collect(lr_sweep))
    assert len(gain) == 3 and set(gain["n_pairs"]) == {2} and set(gain["baseline"]) == {"scratch"}
    expected = {lr: np.mean(np.subtract(ft, sc)) for lr, (ft, sc) in LRS.items()}  # by seed, same lr
    for lr, g in expected.items():
        assert one(gain, setting=f"{BASE} / train.lr={lr}")["gain_mean"] == pytest.approx(g)
    assert expected == pytest.approx({"0.001": 0.21, "0.01": 0.19, "1000.0": 0.0})
    best = stats.best_per_n(stats.summarize(collect.collect(lr_sweep)))
    assert one(best, setting=f"{BASE} / train.lr=0.01")["scratch_mean"] == pytest.approx(0.53)


def test_lr_sweep_report_draws_one_panel_per_setting(lr_sweep, tmp_path):
    r = build_report(lr_sweep, tmp_path / "out", n_boot=20)
    accs = sorted(p.name for _, p, _ in r.figures if p.name.startswith("report_acc_vs_n"))
    assert accs == [f"report_acc_vs_n_digits_5to9_small_cnn_train.lr={lr}.png" for lr in ("0.001", "0.01", "1000.0")]
    lines = notes_of(r)
    assert "12 runs found: 12 ok, 0 failed." in lines and "12 points declared: 12 ok, 0 failed, 0 missing" in lines
    assert any(line.startswith("3 settings") for line in lines)
    assert len(r.missing) == 0 and len(r.failed) == 0


def notes_of(r) -> list[str]:
    from transferlab.analysis.build import notes

    return notes(r)


def test_without_a_sweep_record_missing_points_are_inferred_per_setting(lr_sweep, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(lr_sweep, plain)
    (plain / "sweep.json").unlink()
    (plain / "train.lr=1000.0,transfer=scratch,seed=1" / "result.json").unlink()
    r = build_report(plain, n_boot=20)
    assert r.missing[["setting", "arm", "n_label", "seed"]].values.tolist() == [
        [f"{BASE} / train.lr=1000.0", "scratch", "5", 1]]
    assert notes_of(r)[0] == ("11 runs found: 11 ok, 0 failed, 1 (arm, n, seed) points of the grid missing "
                              "(inferred: no sweep.json).")


# ---- data files: one target.name, two contents --------------------------------------------------------------

def _npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 20)
    np.savez(path, x_train=rng.random((len(y), 8, 8)).astype(np.float32), y_train=y)
    return path


def test_different_target_files_with_one_name_are_two_settings_labelled_by_data(tmp_path):
    a, b = _npz(tmp_path / "a.npz", 0), _npz(tmp_path / "b.npz", 1)
    moved = tmp_path / "elsewhere.npz"
    shutil.copy(a, moved)  # the same bytes at another path: the same data
    root = tmp_path / "sweep"
    common = ("target=npz", "target.name=xray", "target.n_per_class=5")
    for folder, path, seed, acc in (("a0", a, 0, 0.9), ("a1", a, 1, 0.8), ("a2", moved, 2, 0.7),
                                    ("b0", b, 0, 0.5), ("b1", b, 1, 0.6)):
        run(root, folder, acc, *common, f"target.path={path}", f"seed={seed}")
    df = collect.collect(root)
    sha = {p: identity.inputs(config(*common, f"target.path={p}"))["target"]["sha256"][:8] for p in (a, b)}
    assert sha[a] != sha[b]
    summary = stats.summarize(df)
    assert sorted(summary["setting"]) == sorted(f"xray / small_cnn / data={sha[p]}" for p in (a, b))
    sa = one(summary, setting=f"xray / small_cnn / data={sha[a]}")
    sb = one(summary, setting=f"xray / small_cnn / data={sha[b]}")
    assert (sa["n_seeds"], sa["acc_mean"]) == (3, pytest.approx(0.8))
    assert (sb["n_seeds"], sb["acc_mean"]) == (2, pytest.approx(0.55))
    assert set(summary["arm"]) == {"freeze=0"} and set(summary["target"]) == {"xray"}


# ---- arms that differ in a key their label does not show -----------------------------------------------------

def test_two_arms_differing_in_l2sp_are_two_arms(tmp_path):
    root = tmp_path / "sweep"
    accs = {"0.0": [0.80, 0.90], "0.01": [0.60, 0.64]}
    for l2sp, vals in accs.items():
        for seed, acc in enumerate(vals):
            run(root, f"l2sp={l2sp},seed={seed}", acc, f"transfer.l2sp={l2sp}", f"seed={seed}")
    for seed, acc in enumerate([0.50, 0.52]):
        run(root, f"scratch,seed={seed}", acc, "transfer=scratch", f"seed={seed}")
    df = collect.collect(root)
    assert df["setting"].nunique() == 1 and df["setting"].iloc[0] == BASE
    summary = stats.summarize(df)
    # the labels the runs recorded (`TransferPlan.arm` says l2sp when it is on): nothing added, they differ already
    assert sorted(summary["arm"]) == ["freeze=0", "freeze=0 l2sp=0.01", "scratch"]
    assert set(summary["n_seeds"]) == {2}
    assert one(summary, arm="freeze=0")["acc_mean"] == pytest.approx(0.85)
    assert one(summary, arm="freeze=0 l2sp=0.01")["acc_mean"] == pytest.approx(0.62)
    assert one(summary, arm="freeze=0 l2sp=0.01")["variant"] == ""
    gain = stats.paired_gain(df)
    assert one(gain, arm="freeze=0")["gain_mean"] == pytest.approx(0.34)
    assert one(gain, arm="freeze=0 l2sp=0.01")["gain_mean"] == pytest.approx(0.11)


def test_with_several_scratch_arms_each_arm_pairs_with_the_one_that_agrees(tmp_path):
    """`transfer=finetune,scratch transfer.l2sp=0,0.01`: two scratch runs per seed (l2sp is identity even where it
    does nothing); each transfer arm is compared with the scratch arm of its own l2sp, never with both pooled."""
    root = tmp_path / "sweep"
    table = {("finetune", "0.0"): [0.8, 0.9], ("finetune", "0.01"): [0.6, 0.7],
             ("scratch", "0.0"): [0.5, 0.5], ("scratch", "0.01"): [0.1, 0.3]}
    for (transfer, l2sp), vals in table.items():
        for seed, acc in enumerate(vals):
            run(root, f"{transfer},{l2sp},{seed}", acc, f"transfer={transfer}", f"transfer.l2sp={l2sp}",
                f"seed={seed}")
    df = collect.collect(root)
    assert sorted(df["arm"].unique()) == ["freeze=0", "freeze=0 l2sp=0.01",
                                          "scratch transfer.l2sp=0.0", "scratch transfer.l2sp=0.01"]
    gain = stats.paired_gain(df)
    g0, g1 = one(gain, arm="freeze=0"), one(gain, arm="freeze=0 l2sp=0.01")
    assert (g0["baseline"], g0["gain_mean"]) == ("scratch transfer.l2sp=0.0", pytest.approx(0.35))
    assert (g1["baseline"], g1["gain_mean"]) == ("scratch transfer.l2sp=0.01", pytest.approx(0.45))


def test_presets_whose_labels_coincide_get_the_key_that_differs(tmp_path):
    """linear_probe and finetune with freeze=all freeze the same blocks; their names are identity all the same."""
    root = tmp_path / "sweep"
    run(root, "lp", 0.6, "transfer=linear_probe")
    run(root, "ft_all", 0.7, "transfer=finetune", "transfer.freeze=all")
    arms = sorted(collect.collect(root)["arm"])
    assert arms == ["freeze=4 (all) transfer.name=finetune", "freeze=4 (all) transfer.name=linear_probe"]


# ---- duplicates: the same run in two folders ------------------------------------------------------------------

def _two_launches(root: Path) -> dict[str, str]:
    """`seed=0,1 transfer.freeze=0,2`, then `transfer.freeze=0,2 seed=0,1` into the same folder: eight result.json,
    four runs. Returns {new folder: old folder}."""
    accs = {(0, 0): 0.70, (0, 1): 0.80, (2, 0): 0.60, (2, 1): 0.62}
    pairs = {}
    for (freeze, seed), acc in accs.items():
        rec = record(config(f"seed={seed}", f"transfer.freeze={freeze}"), acc)
        old, new = f"seed={seed},transfer.freeze={freeze}", f"transfer.freeze={freeze},seed={seed}"
        put(root, old, rec)
        put(root, new, rec)
        pairs[new] = old
    return pairs


def test_duplicate_runs_are_counted_once_and_named(tmp_path):
    root = tmp_path / "sweep"
    pairs = _two_launches(root)
    recs = {new: json.loads((root / new / "result.json").read_text()) for new in pairs}
    write_sweep(root, [point(new, rec) for new, rec in recs.items()])  # the latest launch names its folders
    r = build_report(root, n_boot=20)
    assert len(r.results) == 4 and sorted(r.results["run_dir"]) == sorted(pairs)  # the folders sweep.json names
    assert sorted(r.duplicates[["run_dir", "kept"]].values.tolist()) == sorted([old, new] for new, old in pairs.items())
    summary = r.summary
    assert len(summary) == 2 and set(summary["n_seeds"]) == {2}  # not 4 seeds out of 2
    ft = one(summary, arm="freeze=0")
    assert ft["acc_mean"] == pytest.approx(0.75)
    assert ft["acc_mean"] - ft["acc_ci_lo"] == pytest.approx(half_width([0.70, 0.80]))  # not a 4-seed interval
    listed = ", ".join(f"{old} (= {new})" for new, old in sorted(pairs.items(), key=lambda kv: kv[1]))
    assert f"4 duplicate runs of the same config ignored: {listed}" in notes_of(r)
    assert "4 points declared: 4 ok, 0 failed, 0 missing" in notes_of(r)


def test_points_of_two_launches_with_one_config_are_one_point(tmp_path):
    """sweep.json holds the union of both launches: eight folders, four configs (hashes): four points, and of two
    named copies the newest is kept."""
    root = tmp_path / "sweep"
    pairs = _two_launches(root)
    for new, old in pairs.items():
        t = os.stat(root / new / "result.json").st_mtime
        os.utime(root / old / "result.json", (t + 10, t + 10))
    recs = {new: json.loads((root / new / "result.json").read_text()) for new in pairs}
    write_sweep(root, [point(f, recs[new]) for new, old in pairs.items() for f in (old, new)])
    r = build_report(root, n_boot=20)
    assert sorted(r.results["run_dir"]) == sorted(pairs.values()) and set(r.summary["n_seeds"]) == {2}
    assert "4 points declared: 4 ok, 0 failed, 0 missing" in notes_of(r)
    assert sorted(r.points["also"]) == sorted(pairs)


def test_without_a_sweep_record_the_newest_copy_is_kept(tmp_path):
    root = tmp_path / "sweep"
    pairs = _two_launches(root)
    for new, old in pairs.items():  # the old launch's copies written last
        t = os.stat(root / new / "result.json").st_mtime
        os.utime(root / old / "result.json", (t + 10, t + 10))
    found = collect.collect_sweep(root)
    assert sorted(found.runs["run_dir"]) == sorted(pairs.values())
    assert len(found.duplicates) == 4 and found.points is None


# ---- counts from the sweep's own record -------------------------------------------------------------------------

def test_a_failure_without_result_is_counted_failed(tmp_path):
    root = tmp_path / "sweep"
    a = run(root, "seed=0", 0.7, "seed=0")
    b = run(root, "seed=1", 0.8, "seed=1")
    error = "ConfigError: transfer.freeze=7: an integer in 0..4 or 'all'"
    write_sweep(root, [point("seed=0", a), point("seed=1", b),
                       point("transfer.freeze=7", "0123456789abcdef", status="failed", error=error)])
    r = build_report(root, n_boot=20)
    assert r.failed[["run_dir", "error"]].values.tolist() == [["transfer.freeze=7", error]]
    assert notes_of(r)[:2] == ["2 runs found: 2 ok, 0 failed.",
                               "3 points declared: 2 ok, 1 failed (1 without a result), 0 missing"]
    assert "Failed runs (1)" in (root / "report.html").read_text()


def test_a_point_whose_result_lies_in_another_folder_is_done(tmp_path):
    """As for the sweeper: a point is done when any folder holds an ok result of its fingerprint (e.g. a folder
    named by an older rule, which the sweeper skipped rather than re-ran)."""
    root = tmp_path / "sweep"
    rec = run(root, "seed=0,transfer.freeze=2", 0.7, "seed=0", "transfer.freeze=2")
    write_sweep(root, [point("transfer.freeze=2,seed=0", rec, status="skipped")])
    r = build_report(root, n_boot=20)
    assert r.points[["run_dir", "state", "result_dir"]].values.tolist() == [
        ["transfer.freeze=2,seed=0", "done", "seed=0,transfer.freeze=2"]]
    assert len(r.missing) == 0 and "1 point declared: 1 ok, 0 failed, 0 missing" in notes_of(r)


def test_declared_points_without_a_result_are_listed_missing(tmp_path):
    """n=5 lost entirely (it would vanish from an inferred grid), and one folder holds another config's result."""
    root = tmp_path / "sweep"
    points = []
    for n in (2, 5):
        for seed in (0, 1):
            folder = f"target.n_per_class={n},seed={seed}"
            rec = record(config(f"target.n_per_class={n}", f"seed={seed}"), 0.5 + 0.1 * seed)
            points.append(point(folder, rec, status="skipped" if n == 2 else "ok"))
            if n == 2 and seed == 0:
                put(root, folder, rec)
    stale = record(config("target.n_per_class=2", "seed=1", "train.lr=0.1"), 0.3)  # the config changed since
    put(root, "target.n_per_class=2,seed=1", stale)
    write_sweep(root, points)
    r = build_report(root, n_boot=20)
    assert r.missing[["run_dir", "reason"]].values.tolist() == [
        ["target.n_per_class=2,seed=1", "its result.json is another config's (stale)"],
        ["target.n_per_class=5,seed=0", LOST], ["target.n_per_class=5,seed=1", LOST]]
    assert "4 points declared: 1 ok, 0 failed, 3 missing" in notes_of(r)
    # the stale run is a run of its own config: its own setting, never a seed of the declared arm
    assert sorted(r.summary["setting"]) == [f"{BASE} / train.lr=0.001", f"{BASE} / train.lr=0.1"]
    assert set(r.summary["n_seeds"]) == {1}


# ---- provenance ------------------------------------------------------------------------------------------------

def test_mixed_library_versions_within_an_arm_are_one_warning(tmp_path):
    root = tmp_path / "sweep"
    run(root, "s0", 0.7, "seed=0")
    run(root, "s1", 0.8, "seed=1", env={**ENV, "torch": "2.4.1", "commit": "b" * 40})
    run(root, "s2", 0.9, "seed=2")
    warnings = [n for n in collect.collect_sweep(root).notes if n.startswith("mixed")]
    assert warnings == [f"mixed library versions or transferlab commits within 1 arm: {BASE}: freeze=0 n=5 "
                        f"(commit {'a' * 40}, {'b' * 40}; torch 2.3.0, 2.4.1)"]


def test_records_without_identity_are_grouped_by_their_config(tmp_path):
    """Records written before run identity (no fingerprint, inputs, environment): seeds of one arm by config; never
    pooled with recorded runs, whose input contents are known."""
    root = tmp_path / "sweep"
    for seed, acc in enumerate([0.6, 0.7]):
        rec = record(config(f"seed={seed}"), acc)
        for key in ("schema", "fingerprint", "inputs", "environment"):  # version 0, as such runs wrote it
            del rec[key]
        (root / f"old{seed}").mkdir(parents=True)
        (root / f"old{seed}" / "result.json").write_text(json.dumps(rec))
    run(root, "new0", 0.9, "seed=0")
    found = collect.collect_sweep(root)
    summary = stats.summarize(found.runs)
    old = one(summary, setting=f"{BASE} / data=unrecorded")
    assert (old["n_seeds"], old["acc_mean"]) == (2, pytest.approx(0.65))
    assert one(summary, setting=f"{BASE} / data={identity.inputs(config())['target']['sha256'][:8]}")["n_seeds"] == 1
    assert ("2 runs written before run identity (no fingerprint, no input hashes): grouped by config alone, never "
            "with recorded runs") in found.notes
