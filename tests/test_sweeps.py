"""Sweeps: preset grids, failure isolation + summary, resume (skip what is done), parallel jobs sharing one source
pretrain, and the device lease. Every sweep here is a real Hydra multirun of the real CLI, shrunk to 1 epoch."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import CONF, run_cli
from transferlab.run.record import RunRecord, find_results

TINY = ["pretrain.max_epochs=1", "train.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none"]

# A small preset in a test config dir: two good points and one that diverges during training (NaN loss at step 2).
TINY_EXPERIMENT = """\
# @package _global_
defaults:
  - override /hydra/sweeper: transferlab
name: tiny
hydra:
  sweep:
    dir: ${paths.root_dir}/outputs/sweeps/${name}
  sweeper:
    params:
      target.n_per_class: 2,3
    grids:
      good:
        transfer: finetune
      broken:
        transfer: scratch
        target.n_per_class: 2
        train.lr: "1e30"
        train.batch_size: 4
"""


def _summary(out: str) -> str:
    m = re.search(r"sweep \S+: (\d+ ok, \d+ failed, \d+ skipped)", out)
    assert m, out[-3000:]
    return m.group(1)


def _preset(name: str, *cli: str):
    """The preset's sweeper node as Hydra composes it (with CLI overrides applied)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}", *cli], return_hydra_config=True)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.hydra.sweeper), str(cfg.name)


def _expand(name: str, *cli: str, sweep_cli: tuple[str, ...] = ()):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from transferlab.sweep.points import expand

    sweeper, sweep_name = _preset(name, *cli)
    assert sweeper["_target_"].endswith("TransferlabSweeper")
    parse = OverridesParser.create().parse_overrides
    return expand(parse, sweeper["params"], sweeper["grids"], list(sweep_cli), depths=_depths(name, cli)), sweep_name


def _depths(name: str, cli: tuple[str, ...]):
    """`transfer.freeze=all_depths` as the sweeper resolves it: each point's freeze depths from its composed
    backbone and cut (`transfer.plan.freeze_depths`), composed once per point config without seed and n."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from transferlab.transfer.plan import freeze_depths

    memo: dict = {}

    def depths(overrides: list[str]) -> list[str]:
        key = tuple(o for o in overrides if o.split("=", 1)[0] not in ("seed", "target.n_per_class"))
        if key not in memo:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                memo[key] = freeze_depths(compose("config", overrides=[f"experiment={name}", *cli, *key]))
            GlobalHydra.instance().clear()
        return memo[key]

    return depths


def test_freeze_vs_n_preset_scratch_is_its_own_grid():
    points, name = _expand("freeze_vs_n")
    assert name == "freeze_vs_n"
    assert len(points) == 7 * 5 * 5 + 7 * 5  # n x freeze (all_depths: 0..3, all) x seed, plus scratch at n, seed
    depths = {o for p in points for o in p.overrides if o.startswith("transfer.freeze=")}
    assert depths == {f"transfer.freeze={d}" for d in ("0", "1", "2", "3", "all")}  # small_cnn's, as before
    scratch = [p for p in points if "transfer=scratch" in p.overrides]
    assert len(scratch) == 35 and not any("transfer.freeze" in o for p in scratch for o in p.overrides)
    assert len({p.name for p in points}) == len(points)
    # Shrinking from the CLI lands on the same folders as the full sweep (so finished points are found).
    small, _ = _expand("freeze_vs_n", sweep_cli=("seed=0", "target.n_per_class=5,50", "transfer.freeze=0,all"))
    assert len(small) == 2 * 2 + 2
    assert {p.name for p in small} <= {p.name for p in points}
    # A grid can be dropped from the CLI.
    only, _ = _expand("freeze_vs_n", "hydra.sweeper.grids.scratch=null")
    assert len(only) == 175


def test_yosinski_preset_has_AnB_BnB_plus_and_bases():
    points, name = _expand("yosinski")
    assert name == "yosinski"
    copy = [p for p in points if p.grid == "copy"]
    base = [p for p in points if p.grid == "base"]
    assert len(copy) == 2 * 2 * 4 and len(base) == 2
    assert all("transfer.upper=reinit" in p.overrides for p in copy)
    kinds = {(o["source"], o["transfer"]) for o in
             ({k: v for k, v in (x.split("=", 1) for x in p.overrides)} for p in copy)}
    assert kinds == {("digits_0to4", "frozen"), ("digits_0to4", "finetune"),      # AnB, AnB+
                     ("digits_5to9", "frozen"), ("digits_5to9", "finetune")}      # BnB, BnB+
    assert {p.overrides[0] for p in base} == {"target=digits_0to4", "target=digits_5to9"}
    # A cut from the CLI shrinks the copy arm only; the bases never get a cut.
    small, _ = _expand("yosinski", sweep_cli=("transfer.cut=1,3",))
    assert len(small) == 2 * 2 * 2 + 2
    assert not any("transfer.cut" in o for p in small if p.grid == "base" for o in p.overrides)


def _tiny_conf(tmp_path: Path) -> str:
    conf = tmp_path / "testconf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(TINY_EXPERIMENT)
    return f"hydra.searchpath=[file://{tmp_path / 'testconf'}]"


def test_failing_point_is_isolated_then_rerun_skips_finished(tmp_path):
    searchpath = _tiny_conf(tmp_path)
    args = ["-m", "experiment=tiny", searchpath, *TINY]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode != 0, "a sweep with a failed point must exit non-zero"
    assert _summary(first.stdout) == "2 ok, 1 failed, 0 skipped"
    sweep_dir = tmp_path / "outputs" / "sweeps" / "tiny"
    records = {p.parent.name: RunRecord.read(p) for p in find_results(sweep_dir)}
    assert len(records) == 3
    failed = [r for r in records.values() if r.status == "failed"]
    assert len(failed) == 1 and "nan" in failed[0].error.lower() and failed[0].train_indices
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (2, 1, 0)
    assert "train.lr=1e+30" in [p for p in summary["points"] if p["status"] == "failed"][0]["name"]

    ok_files = [sweep_dir / name / "result.json" for name, r in records.items() if r.status == "ok"]
    stamps = {f: f.stat().st_mtime_ns for f in ok_files}
    # Re-run the finished part of the sweep (the broken arm dropped): nothing is retrained, exit 0.
    again = run_cli(*args, "hydra.sweeper.grids.broken=null", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _summary(again.stdout) == "0 ok, 0 failed, 2 skipped"
    assert {f: f.stat().st_mtime_ns for f in ok_files} == stamps
    assert "Trainer.fit" not in again.stdout + again.stderr

    # A result edited by hand (a better test accuracy typed in) fails its seal: reported as failed, never as a
    # result, and the next launch sets it aside and runs that point again, giving back the true number.
    edited, kept = ok_files
    true_acc = RunRecord.read(edited).metrics.test_acc
    stored = json.loads(edited.read_text())
    stored["metrics"]["test/acc"] = 0.99
    edited.write_text(json.dumps(stored, indent=2))
    status = run_cli(str(sweep_dir), module="transferlab.status", cwd=tmp_path)
    assert "checksum" in status.stdout + status.stderr
    third = run_cli(*args, "hydra.sweeper.grids.broken=null", cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert _summary(third.stdout) == "1 ok, 0 failed, 1 skipped"
    assert RunRecord.read(edited).metrics.test_acc == true_acc and kept.stat().st_mtime_ns == stamps[kept]
    assert len([f for f in edited.parent.glob("result.json.corrupt-*") if not f.name.endswith(".sha256")]) == 1


def test_second_copy_of_a_running_sweep_is_refused_before_it_writes(tmp_path):
    from filelock import FileLock

    from transferlab.sweep.state import LOCK_FILE

    args = ["-m", "experiment=tiny", _tiny_conf(tmp_path), *TINY]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "tiny"
    sweep_dir.mkdir(parents=True)
    with FileLock(str(sweep_dir / LOCK_FILE)):  # what the first copy holds while it runs
        busy = run_cli(*args, cwd=tmp_path)
        assert busy.returncode == 1
        assert f"another sweep is running in {sweep_dir}" in busy.stderr and "hydra.sweep.dir" in busy.stderr
        assert [p.name for p in sweep_dir.iterdir()] == [LOCK_FILE]  # no point folder, no multirun.yaml
        dry = run_cli(*args, "hydra.sweeper.dry_run=true", cwd=tmp_path)  # looking is always allowed
        assert dry.returncode == 0 and "dry run: nothing launched" in dry.stdout
    assert not list(sweep_dir.rglob("result.json"))


@pytest.mark.slow  # two CLI sweeps (~30 s here); .ci/run runs it
def test_changed_config_reruns_point_in_same_folder(tmp_path):
    searchpath = _tiny_conf(tmp_path)
    base = ["-m", "experiment=tiny", searchpath, "hydra.sweeper.grids.broken=null", "target.n_per_class=2", *TINY]
    assert run_cli(*base, cwd=tmp_path).returncode == 0
    # train.max_epochs is not swept: same folder, different config hash -> the point runs again, old result set aside
    changed = run_cli(*[a if a != "train.max_epochs=1" else "train.max_epochs=2" for a in base], cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert _summary(changed.stdout) == "1 ok, 0 failed, 0 skipped"
    (point,) = [p for p in (tmp_path / "outputs" / "sweeps" / "tiny").iterdir() if p.is_dir()]
    assert RunRecord.read(point / "result.json").metrics.epochs == 2
    assert (point / "result.stale.json").exists()


@pytest.mark.slow  # four loky workers each import torch + Lightning (~60 s on 2 busy cores); .ci/run runs it
def test_parallel_jobs_share_one_source_pretrain_and_never_share_a_slot(tmp_path):
    leases = tmp_path / "leases"
    out = run_cli("-m", "experiment=freeze_vs_n", "hydra.sweeper.grids.scratch=null", "seed=0,1,2,3",
                  "target.n_per_class=2", "transfer.freeze=0", "pretrain.seed=0", "hydra.sweeper.vectorize=null",
                  "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=4", "lease.slots=2", f"lease.dir={leases}",
                  *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _summary(out.stdout) == "4 ok, 0 failed, 0 skipped"
    records = [RunRecord.read(p) for p in find_results(tmp_path / "outputs" / "sweeps" / "freeze_vs_n")]
    assert sorted(r.seed for r in records) == [0, 1, 2, 3]
    assert sorted(r.source_cache for r in records) == ["hit", "hit", "hit", "miss"]  # exactly one pretrain
    assert len(list((tmp_path / "outputs" / "cache" / "source").glob("*/model.pt"))) == 1
    assert len({r.source_ckpt for r in records}) == 1
    _assert_exclusive(leases, n_slots=2, n_jobs=4)


def _assert_exclusive(folder: Path, n_slots: int, n_jobs: int, min_concurrency: int = 2):
    entries = [json.loads(x) for x in (folder / "leases.jsonl").read_text().splitlines()]
    assert len(entries) == n_jobs
    assert {e["slot"] for e in entries} <= set(range(n_slots))
    for i, a in enumerate(entries):
        for b in entries[i + 1:]:
            if a["slot"] == b["slot"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], f"two jobs on slot {a['slot']}: {a} {b}"
    events = sorted([(e["start"], 1) for e in entries] + [(e["end"], -1) for e in entries])
    running = peak = 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    assert peak >= min_concurrency, "the jobs never ran at the same time"
    assert peak <= n_slots


def _hold_a_lease(folder: str, hold_s: float) -> None:
    from transferlab.run.lease import lease_device

    cfg = OmegaConf.create({"lease": {"slots": 2, "dir": folder, "poll_s": 0.05}, "trainer": {"accelerator": "cpu"}})
    with lease_device(cfg) as k:
        import os

        assert k in (0, 1) and len(os.sched_getaffinity(0)) == 1  # pinned to one core
        assert cfg.trainer.devices == 1
        time.sleep(hold_s)


def test_device_lease_gives_each_concurrent_job_its_own_slot(tmp_path):
    import torch  # noqa: F401  (imported once here, inherited by the forked holders)

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hold_a_lease, args=(str(tmp_path), 1.0)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    _assert_exclusive(tmp_path, n_slots=2, n_jobs=4)


def test_device_lease_is_released_when_its_holder_is_killed(tmp_path):
    import torch  # noqa: F401

    ctx = mp.get_context("fork")
    holder = ctx.Process(target=_hold_a_lease, args=(str(tmp_path), 60.0))
    holder.start()
    from transferlab.run.lease import acquire

    deadline = time.time() + 30
    while not (tmp_path / "slot0.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    with pytest.raises(TimeoutError):
        acquire(tmp_path, 1, poll_s=0.05, timeout_s=0.5)  # slot 0 is held
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.join(10)
    k, lock = acquire(tmp_path, 1, poll_s=0.05, timeout_s=5)
    assert k == 0
    lock.release()


def test_local_parallel_turns_the_lease_on_and_slurm_asks_one_gpu_per_task():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        par = compose("config", overrides=["hydra/launcher=local_parallel"], return_hydra_config=True)
        slurm = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                        return_hydra_config=True)
        plain = compose("config", return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert par.lease.slots == "auto" and par.hydra.launcher._target_.endswith("JoblibLauncher")
    assert plain.get("lease") is None  # sequential runs never lease
    assert slurm.hydra.launcher.gpus_per_task == 1 and slurm.hydra.launcher.partition == "gpu"
    assert slurm.hydra.launcher._target_.endswith("TolerantSlurmLauncher") and slurm.get("lease") is None


def test_bad_lease_slots_is_one_config_error():
    from transferlab.errors import ConfigError
    from transferlab.run.lease import slot_count

    with pytest.raises(ConfigError, match=r"lease.slots='many'"):
        slot_count(OmegaConf.create({"lease": {"slots": "many"}, "trainer": {"accelerator": "cpu"}}))
    assert slot_count(OmegaConf.create({"lease": {"slots": None}, "trainer": {}})) == (0, "")


# ---------------------------------------------------------------- trust: identity, folders, baselines, resume
def test_transfer_overrides_from_the_cli_never_reach_the_scratch_grid():
    points, _ = _expand("freeze_vs_n", sweep_cli=("seed=0", "target.n_per_class=5", "transfer.cut=2",
                                                  "transfer.bn=train", "transfer=lp_ft"))
    scratch = [p for p in points if p.grid == "scratch"]
    arms = [p for p in points if p.grid == "transfer"]
    assert len(scratch) == 1 and len(arms) == 3  # all_depths at cut=2: freeze 0, 1, all
    assert [o for o in scratch[0].overrides if o.startswith("transfer")] == ["transfer=scratch"]
    assert all({"transfer=lp_ft", "transfer.cut=2", "transfer.bn=train"} <= set(p.overrides) for p in arms)


def test_point_folders_do_not_depend_on_argument_order():
    a, _ = _expand("freeze_vs_n", sweep_cli=("seed=0,1", "transfer.freeze=0,2", "target.n_per_class=5"))
    b, _ = _expand("freeze_vs_n", sweep_cli=("transfer.freeze=0,2", "target.n_per_class=5", "seed=0,1"))
    assert sorted(p.name for p in a) == sorted(p.name for p in b)
    assert "seed=0,target.n_per_class=5,transfer=finetune,transfer.freeze=2" in {p.name for p in a}


def test_a_point_whose_config_changed_loses_every_checkpoint_and_keeps_its_old_results(tmp_path):
    from transferlab.sweep.points import Point
    from transferlab.sweep.ledger import POINT_FILE
    from transferlab.sweep.state import prepare_point_dir

    point = tmp_path / "p"
    for rel in ("checkpoints", "source/checkpoints"):
        (point / rel).mkdir(parents=True)
        (point / rel / "last.ckpt").write_bytes(b"old run")
    (point / POINT_FILE).write_text(json.dumps({"hash": "old"}))
    (point / "result.json").write_text(json.dumps({"status": "ok", "fingerprint": "old"}))
    (point / "result.stale.json").write_text("{}")  # an older set-aside result is kept too
    prepare_point_dir(point, Point(overrides=["seed=0"], name="p", hash="new"))
    assert not (point / "checkpoints").exists() and not (point / "source" / "checkpoints").exists()
    assert json.loads((point / "result.stale.2.json").read_text())["fingerprint"] == "old"
    assert (point / "result.stale.json").read_text() == "{}" and not (point / "result.json").exists()
    # Same fingerprint: a killed point keeps its checkpoints (it resumes) ...
    (point / "checkpoints").mkdir()
    (point / "checkpoints" / "last.ckpt").write_bytes(b"same run")
    prepare_point_dir(point, Point(overrides=["seed=0"], name="p", hash="new"))
    assert (point / "checkpoints" / "last.ckpt").exists()
    # ... unless resume=false: then it trains from zero.
    prepare_point_dir(point, Point(overrides=["seed=0"], name="p", hash="new"), fresh=True)
    assert not (point / "checkpoints").exists()


def test_unknown_key_fails_before_any_point_folder_naming_the_nearest(tmp_path):
    from conftest import cli_problems

    out = run_cli("-m", "experiment=tiny", _tiny_conf(tmp_path), "transfer.frezee=1,2", *TINY, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = cli_problems(out.stderr)
    assert line.startswith("transfer='frezee': no such key in transfer; did you mean transfer.freeze?"), line
    assert not (tmp_path / "outputs" / "sweeps" / "tiny").exists()


def test_a_bad_value_anywhere_in_a_grid_is_one_error_before_any_point_runs(tmp_path):
    from conftest import cli_problems

    out = run_cli("-m", "target.n_per_class=2,-3,0", "train.lr=0.01,-1", *TINY, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert sorted(cli_problems(out.stderr)) == ["target.n_per_class=-3: null (all) or an integer >= 1",
                                               "target.n_per_class=0: null (all) or an integer >= 1",
                                               "train.lr=-1.0: a finite number > 0"]
    assert "Traceback" not in out.stderr and not (tmp_path / "outputs").exists()  # not one point ran


def _records(sweep_dir: Path) -> dict[str, RunRecord]:
    return {p.parent.name: RunRecord.read(p) for p in find_results(sweep_dir)}


def test_reordered_arguments_skip_finished_points_and_trainer_changes_rerun(tmp_path):
    args = ["-m", "experiment=tiny", _tiny_conf(tmp_path), "hydra.sweeper.grids.broken=null", *TINY]
    first = run_cli(*args, "seed=0,1", "target.n_per_class=2,3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "tiny"
    before = _records(sweep_dir)
    assert len(before) == 4
    again = run_cli(*args, "target.n_per_class=2,3", "seed=0,1", cwd=tmp_path)
    assert _summary(again.stdout) == "0 ok, 0 failed, 4 skipped"
    # A trainer setting is part of a run: the same points run again (in their folders), nothing is reported done.
    clipped = run_cli(*args, "target.n_per_class=2,3", "seed=0,1", "+trainer.gradient_clip_val=0.5", cwd=tmp_path)
    assert _summary(clipped.stdout) == "4 ok, 0 failed, 0 skipped", clipped.stderr[-2000:]
    after = _records(sweep_dir)
    assert set(after) == set(before)
    assert all(after[k].fingerprint != before[k].fingerprint for k in after)
    assert all((sweep_dir / k / "result.stale.json").exists() for k in after)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(record["launches"]) == 3 and record["launches"][1]["skipped"] == 4
    assert {p["dir"] for p in record["points"]} == set(before)  # relative folders


def test_new_data_at_the_same_path_reruns_and_resume_false_retrains(tmp_path):
    data = tmp_path / "t.npz"
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    np.savez(data, x_train=rng.random((60, 8, 8)).astype(np.float32), y_train=y)
    args = ["-m", "hydra.sweep.dir=" + str(tmp_path / "sw"), "transfer=scratch", "target=npz", f"target.path={data}",
            "seed=0", *TINY]
    assert _summary(run_cli(*args, cwd=tmp_path).stdout) == "1 ok, 0 failed, 0 skipped"
    (point,) = [p for p in (tmp_path / "sw").iterdir() if p.is_dir()]
    first = RunRecord.read(point / "result.json")
    np.savez(data, x_train=rng.random((60, 8, 8)).astype(np.float32), y_train=y)  # new data, same path
    second = run_cli(*args, cwd=tmp_path)
    assert _summary(second.stdout) == "1 ok, 0 failed, 0 skipped"
    rec = RunRecord.read(point / "result.json")
    assert rec.inputs["target"]["sha256"] != first.inputs["target"]["sha256"]
    assert rec.resumed_from is None  # trained on the new data, not a re-test of the old model
    fresh = run_cli(*args, "hydra.sweeper.resume=false", cwd=tmp_path)
    assert _summary(fresh.stdout) == "1 ok, 0 failed, 0 skipped"
    again = RunRecord.read(point / "result.json")
    assert again.resumed_from is None and again.metrics.epochs == 1
    assert len(list(point.glob("result.stale*.json"))) == 2  # both earlier results kept aside


def test_a_folder_named_in_argument_order_becomes_its_points_canonical_folder(tmp_path):
    from transferlab.sweep.points import Point
    from transferlab.sweep.ledger import POINT_FILE
    from transferlab.sweep.state import adopt_renamed_folders

    old = tmp_path / "transfer.freeze=2,seed=0"
    old.mkdir()
    (old / POINT_FILE).write_text(json.dumps({"overrides": ["transfer.freeze=2", "seed=0"], "hash": "x"}))
    point = Point(overrides=["seed=0", "transfer.freeze=2"], name="seed=0,transfer.freeze=2",
                  dir=str(tmp_path / "seed=0,transfer.freeze=2"))
    assert adopt_renamed_folders(tmp_path, [point]) == [(old, Path(point.dir))]
    assert (Path(point.dir) / POINT_FILE).exists() and not old.exists()


def _tiny_but(*overrides: str) -> list[str]:
    keys = {o.split("=", 1)[0] for o in overrides}
    return [*(t for t in TINY if t.split("=", 1)[0] not in keys), *overrides]


def _wait_for(predicate, timeout_s: float = 240.0, poll_s: float = 0.05):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError("timed out")


def _started(sweep_dir: Path) -> list[dict]:
    from transferlab.sweep.ledger import STARTED_FILE

    out = []
    for f in sweep_dir.glob(f"*/{STARTED_FILE}"):
        try:
            out.append({**json.loads(f.read_text()), "point": f.parent.name})
        except ValueError:
            pass  # being written
    return out


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # loky workers import torch (~60 s on 2 cores); .ci/run runs it
def test_a_killed_worker_fails_only_its_own_point_and_the_rest_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    sweep_dir = tmp_path / "sw"
    cmd = [sys.executable, "-m", "transferlab.train", "-m", f"hydra.sweep.dir={sweep_dir}", "transfer=scratch",
           "target.n_per_class=2", "seed=0,1,2,3", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
           f"lease.dir={tmp_path / 'leases'}", *_tiny_but("train.max_epochs=30")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TRANSFERLAB_ROOT": str(tmp_path)})
    victim = _wait_for(lambda: _started(sweep_dir))[0]
    os.kill(victim["pid"], signal.SIGKILL)  # as the OOM killer would
    # Its batch is lost; the victim runs again on its own and is killed again (a job that always dies), while the
    # point that shared the batch runs again and finishes.
    again = _wait_for(lambda: [s for s in _started(sweep_dir) if s["point"] == victim["point"]
                               and s["pid"] != victim["pid"]])[0]
    os.kill(again["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    assert _summary(out) == "3 ok, 1 failed, 0 skipped", out[-3000:]
    record = json.loads((sweep_dir / "sweep.json").read_text())
    failed = [p for p in record["points"] if p["status"] == "failed"]
    assert [p["name"] for p in failed] == [victim["point"]] and "died" in failed[0]["error"]


@pytest.mark.slow
def test_local_workers_exit_when_the_sweep_process_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    sweep_dir = tmp_path / "sw"
    cmd = [sys.executable, "-m", "transferlab.train", "-m", f"hydra.sweep.dir={sweep_dir}", "transfer=scratch",
           "target.n_per_class=20", "seed=0,1", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
           f"lease.dir={tmp_path / 'leases'}", *_tiny_but("train.max_epochs=100000")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TRANSFERLAB_ROOT": str(tmp_path)}, start_new_session=True)
    workers = []
    try:
        workers = [s["pid"] for s in _wait_for(lambda: (lambda s: s if len(s) == 2 else None)(_started(sweep_dir)))]
        assert proc.pid not in workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _wait_for(lambda: not any(_alive(pid) for pid in workers), timeout_s=30, poll_s=0.2)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- operating a sweep: status, only=
def test_status_and_only_on_a_sweep_with_done_failed_missing_and_stale_points(tmp_path):
    from transferlab.sweep.progress import sweep_status

    searchpath = _tiny_conf(tmp_path)
    base = ["-m", "experiment=tiny", searchpath, *TINY]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "tiny"
    assert _summary(run_cli(*base, cwd=tmp_path).stdout) == "2 ok, 1 failed, 0 skipped"
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in find_results(sweep_dir)}
    # only=failed runs exactly the failed point; the new n=3,4 points (both grids set n) are declared, not run.
    again = run_cli(*base, "target.n_per_class=2,3,4", "hydra.sweeper.only=failed", cwd=tmp_path)
    assert _summary(again.stdout) == "0 ok, 1 failed, 2 skipped", again.stdout[-2000:]
    assert "0 ok, 1 failed, 2 skipped, 3 not selected" in again.stdout
    changed = {p.parent.name for p in find_results(sweep_dir) if stamps.get(p.parent.name) != p.stat().st_mtime_ns}
    assert changed == {name for name in stamps if "train.lr" in name}
    status = sweep_status(sweep_dir)
    by = {p.name: p for p in status.points}
    assert status.totals == {"failed": 1, "running": 0, "queued": 0, "stale": 0, "missing": 3, "dropped": 0,
                             "done": 2}
    (failed,) = [p for p in status.points if p.state == "failed"]
    assert "train.lr" in failed.name and "nan" in failed.reason.lower()
    assert by["target.n_per_class=4,transfer=finetune"].state == "missing"
    done = [by[f"target.n_per_class={n},transfer=finetune"] for n in (2, 3)]
    assert all(p.state == "done" and p.wall_s > 0 for p in done)
    compute, wall = status.time_left_s()
    # n=4 at its grid's median, the broken arm (nothing of its grid done) at the median over all: both the two
    # done points' mean
    assert compute == pytest.approx(4 * sum(p.wall_s for p in done) / 2) and wall == pytest.approx(compute)
    table = run_cli(str(sweep_dir), module="transferlab.status", cwd=tmp_path).stdout
    assert "1 failed, 0 running, 0 queued, 0 stale, 3 missing, 2 done" in table and "nan" in table.lower()
    # Another config for the n=3 point, not run (only=missing selects nothing of it): it is stale; this launch
    # declares only that point, so the others are dropped (n=2: done, and dropped).
    run_cli(*base, "hydra.sweeper.grids.broken=null", "target.n_per_class=3", "train.max_epochs=2",
            "hydra.sweeper.only=missing", cwd=tmp_path)
    status = sweep_status(sweep_dir)
    by = {p.name: p for p in status.points}
    assert status.totals == {"failed": 0, "running": 0, "queued": 0, "stale": 1, "missing": 0, "dropped": 4,
                             "done": 1}
    assert by["target.n_per_class=3,transfer=finetune"].state == "stale"
    assert by["target.n_per_class=4,transfer=finetune"].state == "dropped"
    (failed,) = [p for p in status.points if "train.lr" in p.name and "n_per_class=2" in p.name]
    assert failed.state == "dropped" and "was failed" in failed.reason and "nan" in failed.reason.lower()
    n2 = by["target.n_per_class=2,transfer=finetune"]
    assert n2.state == "done" and n2.dropped and n2.wall_s > 0
    compute, wall = status.time_left_s()
    assert compute == pytest.approx(n2.wall_s)  # the stale point only, at the median of the one done point
    from transferlab.analysis.collect import collect_sweep  # the report judges every point as status does

    reported = {r["run_dir"]: r["state"] for _, r in collect_sweep(sweep_dir).points.iterrows()}
    assert reported == {p.name: p.state for p in status.points}  # one judgement, one vocabulary
    cli = run_cli(str(sweep_dir), "--json", module="transferlab.status", cwd=tmp_path)
    assert cli.returncode == 0 and json.loads(cli.stdout)["totals"]["stale"] == 1
    table = run_cli(str(sweep_dir), "--all", module="transferlab.status", cwd=tmp_path).stdout
    assert "0 failed, 0 running, 0 queued, 1 stale, 0 missing, 4 dropped, 1 done" in table
    assert "nan" in table.lower()


def test_time_left_counts_each_waiting_point_at_its_own_grids_median():
    """A slow arm (scratch_long here) waiting behind fast finished ones is priced at its own grid's median, not at
    the sweep's; a grid with nothing finished yet falls back to the median over all."""
    from transferlab.sweep.progress import PointState, SweepStatus

    pts = [PointState("a1", "done", wall_s=2.0, grid="transfer"), PointState("a2", "done", wall_s=4.0, grid="transfer"),
           PointState("a3", "done", wall_s=3.0, grid="transfer"), PointState("l1", "done", wall_s=30.0, grid="long"),
           PointState("l2", "missing", grid="long"), PointState("l3", "running", elapsed_s=10.0, grid="long"),
           PointState("a4", "missing", grid="transfer"), PointState("s1", "missing", grid="scratch")]
    compute, wall = SweepStatus("d", "n", points=pts).time_left_s()
    overall = 3.5  # median of 2, 3, 4, 30
    assert compute == pytest.approx(30.0 + (30.0 - 10.0) + 3.0 + overall)
    assert wall == pytest.approx(compute / 1)


def test_status_reads_ten_thousand_points_in_seconds(tmp_path):
    from transferlab.sweep.progress import sweep_status

    n = 10_000
    points = []
    for i in range(n):
        folder = tmp_path / f"seed={i}"
        folder.mkdir()
        if i % 2 == 0:
            (folder / "result.json").write_text(json.dumps({"status": "ok", "fingerprint": f"h{i}", "wall_s": 2.0}))
        points.append({"name": f"seed={i}", "dir": f"seed={i}", "hash": f"h{i}", "status": "pending"})
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "big", "points": points, "launches": []}))
    t0 = time.perf_counter()
    status = sweep_status(tmp_path)
    took = time.perf_counter() - t0
    assert status.totals["done"] == n // 2 and status.totals["missing"] == n // 2
    assert took < 10, took


def test_launcher_configs_composed_from_a_reused_base_equal_a_full_compose():
    """The sweeper lets the launcher start each job from a config composed once per set of group choices
    (`_ReusingLoader`); every job's config, hydra part included, must equal Hydra's own full compose."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    from hydra_plugins.transferlab_plugins.sweeper import _ReusingLoader

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = loader.load_configuration("config", overrides=["experiment=freeze_vs_n", "hydra.sweep.dir=/tmp/sw"],
                                       run_mode=RunMode.MULTIRUN)
    reusing = _ReusingLoader(loader)
    jobs = [["transfer=finetune", "transfer.freeze=1", "target.n_per_class=2", "seed=0"],
            ["transfer=finetune", "transfer.freeze=all", "target.n_per_class=null", "seed=3"],
            ["transfer=scratch", "target.n_per_class=5", "seed=1", "+trainer.max_time=null"],
            ["transfer=finetune", "peft=lora", "backbone=mlp", "seed=2"],
            ["transfer=finetune", "transfer.freeze=1", "seed=0", "hydra.job.name=other"]]  # hydra value: full
    for i, job in enumerate(jobs):
        job = [*job, "hydra.sweep.dir=/tmp/sw", f"hydra.sweep.subdir=job{i}"]
        for _ in range(2):  # the second time from the reused base
            ours = OmegaConf.to_yaml(reusing.load_sweep_config(master, list(job)))
            assert ours == OmegaConf.to_yaml(loader.load_sweep_config(master, list(job))), job


def _script(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of scripts/ as a user would, with this interpreter (PYTHON) and outputs under `cwd`."""
    from conftest import ROOT

    full = {**os.environ, "TRANSFERLAB_ROOT": str(cwd), "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=full)


def test_the_node_script_runs_a_preset_one_job_per_device_and_says_what_to_run_next(tmp_path):
    p = _script("sweep_node.sh", "freeze_vs_n", "seed=0", "target.n_per_class=2", "transfer.freeze=0,all",
                "hydra.sweeper.grids.scratch=null", "train.min_steps=null", *TINY, cwd=tmp_path,
                env={"JOBS_PER_DEVICE": "2", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    cores = len(os.sched_getaffinity(0))
    assert lines[0].startswith("+ ") and f"hydra/launcher=local_parallel hydra.launcher.n_jobs={2 * cores} " \
        "lease.per_device=2 seed=0" in lines[0]
    sweep = tmp_path / "outputs" / "sweeps" / "freeze_vs_n"
    assert lines[-2:] == [f"state:  {sys.executable} -m transferlab.status {sweep}",
                          f"report: {sys.executable} -m transferlab.report {sweep}"]
    assert _summary(p.stdout) == "2 ok, 0 failed, 0 skipped"
    assert len(list(sweep.rglob("result.json"))) == 2


@pytest.mark.parametrize("script", ["sweep_node.sh", "sweep_slurm.sh"])
def test_the_sweep_scripts_refuse_a_missing_preset_with_their_usage(tmp_path, script):
    p = _script(script, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("usage: ") and "EXPERIMENT" in p.stderr
    assert not (tmp_path / "outputs").exists()
