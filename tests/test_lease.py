"""The device lease's `lease.per_device` (issue 27): K jobs share each device, slots = devices x K, each job on
device slot mod devices; tested on CPU slots (one per core) with real processes, like the lease itself
(tests/test_sweeps.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import cli_problems, run_cli
from transferlab.errors import ConfigError


def _lease_cfg(folder: str, **lease):
    return OmegaConf.create({"lease": {"slots": 2, "dir": folder, "poll_s": 0.05, **lease},
                             "trainer": {"accelerator": "cpu"}})


def _hold(folder: str, hold_s: float, per_device: int) -> None:
    from transferlab.run.lease import lease_device

    cfg = _lease_cfg(folder, per_device=per_device)
    with lease_device(cfg) as k:
        cores = sorted(os.sched_getaffinity(0))
        assert len(cores) == 1 and cfg.trainer.devices == 1  # pinned to one core, one device
        with open(Path(folder) / f"held.{os.getpid()}", "w") as f:
            json.dump({"slot": k, "core": cores[0]}, f)
        time.sleep(hold_s)


def test_slot_count_is_devices_times_per_device(tmp_path):
    from transferlab.run.lease import slot_count

    assert slot_count(_lease_cfg(str(tmp_path))) == (2, "cpu")
    assert slot_count(_lease_cfg(str(tmp_path), per_device=3)) == (6, "cpu")
    cores = len(os.sched_getaffinity(0))
    assert slot_count(_lease_cfg(str(tmp_path), slots="auto", per_device=2)) == (2 * cores, "cpu")
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ConfigError) as err:
            slot_count(_lease_cfg(str(tmp_path), per_device=bad))
        assert [p.key for p in err.value.items] == ["lease.per_device"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two CPU slots need two usable cores")
def test_per_device_2_runs_two_jobs_on_each_device_and_never_two_on_a_slot(tmp_path):
    import torch  # noqa: F401  (imported once here, inherited by the forked holders)

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), 1.5, 2)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = [json.loads(x) for x in (tmp_path / "leases.jsonl").read_text().splitlines()]
    assert len(entries) == 6 and {e["slot"] for e in entries} <= set(range(4))
    assert all(e["device"] == e["slot"] % 2 for e in entries)  # slot k on device k mod 2
    for i, a in enumerate(entries):  # a slot is never held twice at once
        for b in entries[i + 1:]:
            if a["slot"] == b["slot"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], f"two jobs on slot {a['slot']}"
    for device in (0, 1):  # at most 2 jobs per device at once, and 2 did share one
        mine = [e for e in entries if e["device"] == device]
        events = sorted([(e["start"], 1) for e in mine] + [(e["end"], -1) for e in mine])
        running = peak = 0
        for _, d in events:
            running += d
            peak = max(peak, running)
        assert peak == 2, f"device {device}: {peak} jobs at once"
    cores = sorted(os.sched_getaffinity(0))
    held = [json.loads(p.read_text()) for p in tmp_path.glob("held.*")]
    assert all(h["core"] == cores[h["slot"] % 2] for h in held)  # a CPU slot's device is its core


def test_per_device_below_1_is_one_line_exit_2_nothing_written(tmp_path):
    out = run_cli("hydra/launcher=local_parallel", "lease.per_device=0", f"lease.dir={tmp_path / 'leases'}",
                  "pretrain.max_epochs=1", "train.max_epochs=1", cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert cli_problems(out.stderr) == ["lease.per_device=0: an integer >= 1 (jobs sharing each device)"]
    assert not list(tmp_path.rglob("result.json")) and not (tmp_path / "outputs" / "cache").exists()
    assert not (tmp_path / "leases").exists()


def test_per_device_below_1_in_a_sweep_is_refused_before_any_point_folder(tmp_path):
    out = run_cli("-m", "hydra/launcher=local_parallel", "lease.per_device=0", "seed=0,1", "pretrain.max_epochs=1",
                  "train.max_epochs=1", cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert cli_problems(out.stderr) == ["lease.per_device=0: an integer >= 1 (jobs sharing each device)"]
    assert not (tmp_path / "outputs").exists()
