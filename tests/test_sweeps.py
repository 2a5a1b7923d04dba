"""Sweeps: preset grids, failure isolation + summary, resume (skip what is done), parallel jobs sharing one source
pretrain, and the device lease. Every sweep here is a real Hydra multirun of the real CLI, shrunk to 1 epoch."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, run_cli
from transferlab.results import find_results, read_result

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

    from transferlab.sweep import expand

    sweeper, sweep_name = _preset(name, *cli)
    assert sweeper["_target_"].endswith("TransferlabSweeper")
    parse = OverridesParser.create().parse_overrides
    return expand(parse, sweeper["params"], sweeper["grids"], list(sweep_cli)), sweep_name


def test_freeze_vs_n_preset_scratch_is_its_own_grid():
    points, name = _expand("freeze_vs_n")
    assert name == "freeze_vs_n"
    assert len(points) == 7 * 5 * 5 + 7 * 5  # n x freeze x seed, plus scratch at every n and seed
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
    records = {p.parent.name: read_result(p) for p in find_results(sweep_dir)}
    assert len(records) == 3
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "nan" in failed[0]["error"].lower() and failed[0]["train_indices"]
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (2, 1, 0)
    assert "train.lr=1e+30" in [p for p in summary["points"] if p["status"] == "failed"][0]["name"]

    ok_files = [sweep_dir / name / "result.json" for name, r in records.items() if r["status"] == "ok"]
    stamps = {f: f.stat().st_mtime_ns for f in ok_files}
    # Re-run the finished part of the sweep (the broken arm dropped): nothing is retrained, exit 0.
    again = run_cli(*args, "hydra.sweeper.grids.broken=null", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _summary(again.stdout) == "0 ok, 0 failed, 2 skipped"
    assert {f: f.stat().st_mtime_ns for f in ok_files} == stamps
    assert "Trainer.fit" not in again.stdout + again.stderr


def test_second_copy_of_a_running_sweep_is_refused_before_it_writes(tmp_path):
    from filelock import FileLock

    from transferlab.sweep import LOCK_FILE

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
    assert read_result(point / "result.json")["metrics"]["epochs"] == 2
    assert (point / "result.stale.json").exists()


@pytest.mark.slow  # four loky workers each import torch + Lightning (~60 s on 2 busy cores); .ci/run runs it
def test_parallel_jobs_share_one_source_pretrain_and_never_share_a_slot(tmp_path):
    leases = tmp_path / "leases"
    out = run_cli("-m", "experiment=freeze_vs_n", "hydra.sweeper.grids.scratch=null", "seed=0,1,2,3",
                  "target.n_per_class=2", "transfer.freeze=0", "pretrain.seed=0",
                  "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=4", "lease.slots=2", f"lease.dir={leases}",
                  *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _summary(out.stdout) == "4 ok, 0 failed, 0 skipped"
    records = [read_result(p) for p in find_results(tmp_path / "outputs" / "sweeps" / "freeze_vs_n")]
    assert sorted(r["seed"] for r in records) == [0, 1, 2, 3]
    assert sorted(r["source_cache"] for r in records) == ["hit", "hit", "hit", "miss"]  # exactly one pretrain
    assert len(list((tmp_path / "outputs" / "cache" / "source").glob("*/model.pt"))) == 1
    assert len({r["source_ckpt"] for r in records}) == 1
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
    from transferlab.devices import lease_device

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
    from transferlab.devices import acquire

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
    from transferlab.devices import slot_count
    from transferlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lease.slots='many'"):
        slot_count(OmegaConf.create({"lease": {"slots": "many"}, "trainer": {"accelerator": "cpu"}}))
    assert slot_count(OmegaConf.create({"lease": {"slots": None}, "trainer": {}})) == (0, "")
