"""transferlab-cache: list entries with size, age, last use and the sweeps that use them; prune by last use and
usage, never an entry a job holds, never half of one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from filelock import FileLock

from conftest import run_cli
from transferlab.run.record import cache_entries_used
from transferlab.store import entries as E
from transferlab.store import verified


def _entry(cache: Path, kind: str, key: str, meta: dict, used_days_ago: float) -> Path:
    path = cache / kind / key / E.PAYLOAD[kind]
    verified.get_or_make(path, lambda: ({"x": torch.zeros(10)}, meta))
    when = time.time() - used_days_ago * 86400
    os.utime(path.parent / verified.LAST_USE, (when, when))
    return path.parent


def _sweep(root: Path, name: str, source_key: str | None = None, feature_key: str | None = None) -> Path:
    run = root / name / "point"
    run.mkdir(parents=True)
    record = {"status": "ok", "source_ckpt": f"/somewhere/source/{source_key}/model.pt" if source_key else None,
              "feature_cache": {"key": feature_key} if feature_key else None}
    (run / "result.json").write_text(json.dumps(record))
    return root / name


def test_ls_shows_size_age_last_use_and_the_sweeps_that_use_an_entry(tmp_path):
    cache = tmp_path / "outputs" / "cache"
    _entry(cache, "source", "aaaa", {"source": "digits_0to4", "backbone": "small_cnn", "test/acc": 0.9}, 3)
    _entry(cache, "features", "ffff", {"task": "digits_5to9", "blocks": ["conv1"]}, 10)
    sweeps = tmp_path / "outputs" / "sweeps"
    _sweep(sweeps, "study", source_key="aaaa", feature_key="ffff")
    _sweep(sweeps, "other", source_key="aaaa")
    found = {e.key: e for e in E.listing(cache, cache_entries_used(sorted(sweeps.iterdir())))}
    assert found["aaaa"].sweeps == ["other", "study"] and found["ffff"].sweeps == ["study"]
    assert found["aaaa"].what == "digits_0to4 on small_cnn, test acc 0.900"
    assert 2.9 < (time.time() - found["aaaa"].last_use) / 86400 < 3.1 and found["aaaa"].bytes > 0
    out = run_cli("ls", "--json", module="transferlab.cache", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    listed = {e["key"]: e for e in json.loads(out.stdout)}
    assert listed["aaaa"]["sweeps"] == ["other", "study"]  # default: every sweep under outputs/sweeps


def test_prune_by_age_and_usage_keeps_what_a_job_holds(tmp_path):
    cache = tmp_path / "cache"
    old_unused = _entry(cache, "source", "old", {"source": "a"}, 10)
    old_used = _entry(cache, "source", "used", {"source": "b"}, 10)
    held = _entry(cache, "features", "held", {"task": "t"}, 10)
    recent = _entry(cache, "source", "new", {"source": "c"}, 0.1)
    study = _sweep(tmp_path / "sweeps", "study", source_key="used")
    (cache / "source" / f"{E.DELETING}gone-123").mkdir()  # an interrupted prune's leftover
    dry = E.prune(cache, older_than_s=7 * 86400, used_by=cache_entries_used([study]), dry_run=True)
    assert sorted(e.key for e in dry.removed) == ["held", "old"] and old_unused.exists()
    with FileLock(str(held / verified.LOCK)):  # a job computing this entry right now
        result = E.prune(cache, older_than_s=7 * 86400, used_by=cache_entries_used([study]))
    assert [e.key for e in result.removed] == ["old"] and [e.key for e in result.in_use] == ["held"]
    assert not old_unused.exists() and old_used.exists() and held.exists() and recent.exists()
    assert result.leftovers == 1 and not list((cache / "source").glob(f"{E.DELETING}*"))
    assert verified.load(held / "features.pt")["x"].shape == (10,)  # what was kept is whole


def test_a_pruned_entry_is_recomputed_by_the_next_run(tmp_path):
    cache = tmp_path / "cache"
    path = _entry(cache, "source", "k", {"source": "a"}, 30) / "model.pt"
    E.prune(cache, older_than_s=86400)
    assert not path.exists()
    made = []
    obj, status = verified.get_or_make(path, lambda: (made.append(1) or {"x": torch.ones(2)}, {"source": "a"}))
    assert status == "miss" and made == [1] and obj["x"].sum() == 2


def test_prune_needs_a_criterion_and_a_readable_age(tmp_path):
    (tmp_path / "cache").mkdir()
    none = run_cli("prune", "--cache-dir", str(tmp_path / "cache"), module="transferlab.cache", cwd=tmp_path)
    assert none.returncode == 2 and "--older-than and/or --unused-by" in none.stderr
    bad = run_cli("prune", "--older-than", "soon", "--cache-dir", str(tmp_path / "cache"), module="transferlab.cache",
                  cwd=tmp_path)
    assert bad.returncode == 2 and "--older-than='soon'" in bad.stderr
    assert E.parse_age("7d") == 7 * 86400 and E.parse_age("90") == 90
