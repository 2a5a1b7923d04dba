"""Stacked source pretraining (run/source_stack.py): the source models of several `pretrain.seed` values a vectorised
group needs and the cache lacks are pretrained as one stacked fit, and each cache entry is the one a separate
`pretrain_source` stores, bit for bit; what cannot stack, or is taken, is left to today's path; a group's members
say which entry their group made."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import paired_results, run_cli
from transferlab.run import identity, source_stack
from transferlab.run.experiment import pretrain_source
from transferlab.run.setup import prepare
from transferlab.store import source_cache, verified
from transferlab.store.atomic import shared_lock
from transferlab.sweep.group_job import run_group

KEYS = ["logger=none", "pretrain.max_epochs=3"]


def _members(make_cfg, seeds, *keys, cache=None):
    out = []
    for s in seeds:
        cfg = make_cfg(*KEYS, *keys, f"pretrain.seed={s}", run=f"m{s}", cache=cache)
        out.append((cfg, prepare(cfg), Path(cfg.paths.output_dir)))
    return out


def _path(cfg, prep) -> Path:
    key = identity.source_fingerprint(cfg, data=prep.source.fingerprint())
    return source_cache.entry_path(cfg.paths.cache_dir, key)


def _entry(cfg, prep) -> tuple[Path, dict]:
    path = _path(cfg, prep)
    return path, verified.load(path)


@pytest.mark.parametrize("seeds,keys", [
    ((0, 1, 2), []),  # small_cnn: BatchNorm, dropout 0.2 in fc1, a one-channel input (a channels-last layout)
    ((3, 4), ["backbone=mlp", "backbone.dropout=0.3", "pretrain/optimizer=sgd"]),
])
def test_each_entry_equals_its_separate_pretraining(make_cfg, tmp_path, seeds, keys):
    """Per entry: the same tensors (torch.equal, every key, BatchNorm buffers included) and the same meta (test and
    val accuracy, epochs, key, fields) as `pretrain_source` alone at that seed; `wall_s` a share of the stacked fit."""
    members = _members(make_cfg, seeds, *keys, cache=tmp_path / "stacked_cache")
    made = source_stack.pretrain_missing(members, "test")
    assert len(made) == len(seeds)
    for cfg, prep, run_dir in members:
        path, entry = _entry(cfg, prep)
        assert made[path.parent.name] == run_dir
        assert verified.problem(path) is None and (path.parent / verified.META).exists()
        state, meta = pretrain_source(cfg, prep.source, tmp_path / f"alone{cfg.pretrain.seed}" / "source")
        assert entry["state_dict"].keys() == state.keys()
        assert all(torch.equal(entry["state_dict"][k], state[k]) for k in state)
        assert entry["meta"].keys() == meta.keys()
        for k in ("schema", "key", "source", "backbone", "test/acc", "val/acc", "epochs", "block_names"):
            assert entry["meta"][k] == meta[k], k
        assert json.loads((path.parent / verified.META).read_text())["test/acc"] == meta["test/acc"]
        assert 0 < entry["meta"]["wall_s"]
    # the seeds' models differ from each other (each its own initialisation and batch order)
    first = _entry(*members[0][:2])[1]["state_dict"]
    assert not all(torch.equal(first[k], _entry(*members[1][:2])[1]["state_dict"][k]) for k in first)


def test_an_entry_another_process_is_making_is_left_to_it_and_warm_ones_are_not_made_again(make_cfg, tmp_path,
                                                                                          caplog):
    """Another process holds the lock of seed 1's entry (a single run pretraining it): the group stacks seeds 0 and
    2 without waiting for it and leaves seed 1's entry alone. Later, with 0 and 2 in the cache and only 1 missing,
    nothing is stacked (fewer than two): its build pretrains it as a single run does."""
    members = _members(make_cfg, (0, 1, 2), cache=tmp_path / "cache_taken")
    taken = _path(*members[1][:2])
    taken.parent.mkdir(parents=True, exist_ok=True)
    hold = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(taken.parent / verified.LOCK)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.INFO, logger="transferlab"):
            made = source_stack.pretrain_missing(members, "test")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(made.values()) == [members[0][2], members[2][2]]
    assert "being made by another process" in caplog.text and not taken.exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transferlab"):
        assert source_stack.pretrain_missing(members, "test") == {}
    assert "1 of its 3 source models to make here; none stacked" in caplog.text
    lock = shared_lock(taken.parent / verified.LOCK)  # released: a single run takes it
    lock.acquire(timeout=0)
    lock.release()


def test_a_damaged_entry_is_set_aside_and_made_in_the_stack(make_cfg, tmp_path):
    cache = tmp_path / "cache_damaged"
    members = _members(make_cfg, (0, 1), cache=cache)
    cfg, prep, _ = members[0]
    path = _path(cfg, prep)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a model")
    assert len(source_stack.pretrain_missing(members, "test")) == 2
    assert verified.problem(path) is None
    assert list(path.parent.glob("model.pt.corrupt-*"))


def test_what_cannot_stack_is_pretrained_one_by_one(make_cfg, tmp_path, caplog):
    """LAMB scales each tensor's update by its norm (stacked, over all members): one logged reason, nothing made
    here, no lock left held."""
    cache = tmp_path / "cache_lamb"
    members = _members(make_cfg, (0, 1), "pretrain/optimizer=lamb", cache=cache)
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        assert source_stack.pretrain_missing(members, "test") == {}
    assert "pretrained one by one" in caplog.text and "Lamb" in caplog.text
    assert not list((cache / "source").glob("*/model.pt"))


def test_a_group_records_which_member_its_stacked_pretraining_made(make_cfg, tmp_path):
    """A group of seed = pretrain.seed 0, 1 (its own source model each) from an empty cache: one stacked
    pretraining; each member's record says `stacked` and names the entry its separate run would make."""
    cache = tmp_path / "cache_group"
    keys = [*KEYS, "transfer.freeze=1", "target.n_per_class=2", "train.max_epochs=2"]
    members = []
    for s in (0, 1):
        cfg = make_cfg(*keys, f"seed={s}", run=f"member{s}", cache=cache)
        members.append({"name": f"seed={s}", "dir": str(cfg.paths.output_dir), "replicates": {"seed": s},
                        "fingerprint": identity.fingerprint(cfg)})
    leader = Path(members[0]["dir"])
    leader.mkdir(parents=True, exist_ok=True)
    (leader / "group.json").write_text(json.dumps({"members": members}))
    run_group(make_cfg(*keys, "seed=0", f"group={leader / 'group.json'}", run="member0", cache=cache))
    records = [json.loads((Path(m["dir"]) / "result.json").read_text()) for m in members]
    assert [r["source_cache"] for r in records] == ["stacked", "stacked"]
    assert len({r["source_ckpt"] for r in records}) == 2
    for r in records:
        assert r["status"] == "ok" and Path(r["source_ckpt"]).exists()
        assert r["source_metrics"]["key"] == Path(r["source_ckpt"]).parent.name


def test_a_vectorised_sweep_pretrains_its_sources_stacked_and_equals_a_plain_one(tmp_path):
    """`-m` over pretrain.seed=0,1 under vectorize=seeds from an empty cache: one job, one stacked source
    pretraining (its log line), both points ok; a plain sweep with its own empty cache gets the same fingerprints,
    the same source models (the entries' bytes) and the same test accuracies."""
    common = ["target.n_per_class=2", "transfer.freeze=1", "seed=0", "pretrain.seed=0,1", "train.max_epochs=2",
              "pretrain.max_epochs=2", "logger=none", "trainer.enable_progress_bar=false"]
    vec = run_cli("-m", "hydra.sweeper.vectorize=seeds", f"hydra.sweep.dir={tmp_path / 'vec'}",
                  f"paths.cache_dir={tmp_path / 'cache_vec'}", *common, cwd=tmp_path)
    assert vec.returncode == 0, vec.stderr[-3000:]
    assert "2 pretrain.seed values (0, 1) as one stacked fit" in vec.stderr + vec.stdout
    one = run_cli("-m", f"hydra.sweep.dir={tmp_path / 'one'}", f"paths.cache_dir={tmp_path / 'cache_one'}", *common,
                  cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    pairs = paired_results(tmp_path / "vec", tmp_path / "one")
    assert len(pairs) == 2
    for v, o in pairs:
        assert v["status"] == o["status"] == "ok"
        assert v["source_cache"] == "stacked" and o["source_cache"] == "miss"
        assert v["fingerprint"] == o["fingerprint"]
        key = Path(v["source_ckpt"]).parent.name
        assert key == Path(o["source_ckpt"]).parent.name
        sv, so = verified.load(v["source_ckpt"])["state_dict"], verified.load(o["source_ckpt"])["state_dict"]
        assert all(torch.equal(sv[k], so[k]) for k in so)
        assert v["metrics"]["test/acc"] == pytest.approx(o["metrics"]["test/acc"], abs=1e-5)


def test_a_pretraining_that_fails_in_the_stack_stores_nothing_and_its_sibling_is_stored(make_cfg, tmp_path, monkeypatch,
                                                                                      caplog):
    """pretrain.seed=1 gets an infinite head weight (a NaN loss at its first step): it fails alone, no entry is
    written for it (its run then pretrains it alone and reports the failure as a single run does), and seed 0's
    entry is still its separate pretraining's."""
    from transferlab.run import experiment

    parts = experiment.source_fit_parts

    def poisoned(cfg, source):
        module, batches, key, trainer = parts(cfg, source)
        if int(cfg.pretrain.seed) == 1:
            with torch.no_grad():
                next(module.net.head.parameters()).fill_(float("inf"))
        return module, batches, key, trainer

    monkeypatch.setattr(experiment, "source_fit_parts", poisoned)
    members = _members(make_cfg, (0, 1), cache=tmp_path / "cache_nan")
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        made = source_stack.pretrain_missing(members, "test")
    assert list(made.values()) == [members[0][2]]
    assert not _path(*members[1][:2]).exists() and "NonFiniteLossError" in caplog.text
    monkeypatch.undo()
    cfg, prep, _ = members[0]
    state, _ = pretrain_source(cfg, prep.source, tmp_path / "alone0" / "source")
    entry = _entry(cfg, prep)[1]["state_dict"]
    assert all(torch.equal(entry[k], state[k]) for k in state)


def test_each_stacked_pretraining_logs_into_its_own_wandb_run(make_cfg, tmp_path):
    """logger=wandb (offline): each pretrain.seed gets its own source run (job_type=source) under the folder its own
    pretraining would use, named in its entry's meta as a single pretraining names it."""
    members = _members(make_cfg, (0, 1), "logger=wandb", "name=wb_stack", cache=tmp_path / "cache_wb")
    assert len(source_stack.pretrain_missing(members, "test")) == 2
    ids = []
    for cfg, prep, run_dir in members:
        ref = _entry(cfg, prep)[1]["meta"]["wandb_run"]
        assert ref["group"] == "wb_stack" and ref["id"].startswith(_path(cfg, prep).parent.name[:12])
        (data,) = (run_dir / "source" / "wandb").glob(f"offline-run-*/run-{ref['id']}.wandb")
        ids.append(ref["id"])
    assert len(set(ids)) == 2
