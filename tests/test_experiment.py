"""The spine end to end on digits: source pretrain (cached) -> cut + freeze -> fine-tune -> result.json."""

import json
from dataclasses import fields

import numpy as np
import pytest
import torch

from conftest import ckpt_state, recomputed_test_acc
from transferlab.run.experiment import run
from transferlab.run.record import SCHEMA, Metrics, RunRecord
from transferlab.run.setup import prepare
from transferlab.transfer.network import block_state


def test_frozen_blocks_end_byte_identical_to_source(make_cfg):
    rec = run(make_cfg("transfer.cut=3", "transfer.freeze=2", "target.n_per_class=5", "train.lr=0.01"))
    assert rec["status"] == "ok" and rec["frozen_blocks"] == ["conv1", "conv2"]
    assert rec["trainable_blocks"] == ["conv3", "head"]
    source, target = ckpt_state(rec["source_ckpt"]), ckpt_state(rec["target_ckpt"])
    for name in ("conv1", "conv2"):
        src, tgt = block_state(source, name), block_state(target, name)
        assert src.keys() == tgt.keys() and any("running_mean" in k for k in src)
        for k in src:  # weights AND BatchNorm buffers, bit for bit
            assert torch.equal(src[k], tgt[k]), k
    src, moved = block_state(source, "conv3"), block_state(target, "conv3")
    assert any(not torch.equal(v, src[k]) for k, v in moved.items() if v.is_floating_point()), \
        "the trainable block did not move: this test could not fail"
    assert block_state(source, "fc1") and not block_state(target, "fc1"), "upper=drop must drop fc1"


def test_source_is_pretrained_once_and_reused(make_cfg, tmp_path):
    cache = tmp_path / "own_cache"
    first = run(make_cfg("target.n_per_class=3", run="a", cache=cache))
    assert first["source_cache"] == "miss"
    stamp = (cache / "source").stat().st_mtime_ns, [p.stat().st_mtime_ns for p in sorted(cache.rglob("model.pt"))]
    second = run(make_cfg("target.n_per_class=7", "transfer.freeze=all", "transfer.cut=2", "train.lr=0.003",
                          run="b", cache=cache))
    assert second["source_cache"] == "hit" and second["source_ckpt"] == first["source_ckpt"]
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("model.pt"))] == stamp[1]
    third = run(make_cfg("target.n_per_class=3", "pretrain.lr=0.002", run="c", cache=cache))
    assert third["source_cache"] == "miss" and third["source_ckpt"] != first["source_ckpt"]
    assert len(list(cache.rglob("model.pt"))) == 2


def test_n_never_changes_val_or_test_and_subsets_nest(make_cfg):
    tasks = {n: prepare(make_cfg(f"target.n_per_class={n}")).target for n in (1, 5, 20, "null")}
    base = tasks["null"]
    for n, t in tasks.items():
        assert torch.equal(t.val_x, base.val_x) and torch.equal(t.test_y, base.test_y)
        assert torch.equal(t.train_x, base.train_x)  # the pool is fixed; only the indices vary
        if n != "null":
            assert np.all(np.bincount(t.train_y[t.train_indices].numpy()) == n)
    assert set(tasks[1].train_indices) <= set(tasks[5].train_indices) <= set(tasks[20].train_indices)
    assert len(base.train_indices) == len(base.train_y)


def test_seed_zero_is_a_real_seed(make_cfg):
    idx = {s: prepare(make_cfg("target.n_per_class=5", f"seed={s}")).target.train_indices for s in (0, 1)}
    assert not np.array_equal(idx[0], idx[1])
    # data_seed can be held fixed while the training seed varies.
    fixed = prepare(make_cfg("target.n_per_class=5", "seed=1", "data_seed=0")).target.train_indices
    assert np.array_equal(fixed, idx[0])
    a = run(make_cfg("target.n_per_class=5", "seed=0", run="s0a"))
    b = run(make_cfg("target.n_per_class=5", "seed=0", run="s0b"))
    c = run(make_cfg("target.n_per_class=5", "seed=1", "data_seed=0", run="s1"))
    assert a["metrics"]["val/acc_history"] == b["metrics"]["val/acc_history"]  # deterministic on CPU
    assert a["metrics"]["val/acc_history"] != c["metrics"]["val/acc_history"]
    assert a["train_indices"] == c["train_indices"]


def test_result_record_is_complete(make_cfg, tmp_path):
    cfg = make_cfg("target.n_per_class=4", "seed=3")
    rec = run(cfg)
    path = tmp_path / "run" / "result.json"
    on_disk = json.loads(path.read_text())
    # The RunRecord is the schema: every key a run writes is a field, every field is written, in field order.
    assert list(on_disk) == [f.name for f in fields(RunRecord)] and on_disk["schema"] == SCHEMA
    assert list(on_disk["metrics"]) == [f.metadata["key"] for f in fields(Metrics)]
    # run -> result.json -> read: the same record, and what run() returned is what was written.
    assert RunRecord.read(path).to_dict() == on_disk == json.loads(json.dumps(rec, default=str))
    assert on_disk["status"] == "ok"
    assert on_disk["n_train"] == 20 == len(on_disk["train_indices"]) and on_disk["seed"] == 3
    assert len(on_disk["metrics"]["val/acc_history"]) == on_disk["config"]["train"]["max_epochs"]
    assert max(on_disk["metrics"]["val/acc_history"]) == pytest.approx(on_disk["metrics"]["val/acc"])
    # test/acc is the best checkpoint's accuracy on the test split, recomputed here from the file
    assert on_disk["metrics"]["test/acc"] == pytest.approx(recomputed_test_acc(cfg, on_disk["target_ckpt"]), abs=1e-6)
    assert on_disk["config"]["transfer"]["name"] == "finetune" and rec["target"] == "digits_5to9"
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_scratch_copies_nothing_and_needs_no_source(make_cfg, tmp_path):
    cache = tmp_path / "scratch_cache"
    rec = run(make_cfg("transfer=scratch", "target.n_per_class=5", cache=cache))
    assert rec["cut"] == 0 and rec["source_cache"] == "unused" and rec["source_ckpt"] is None
    assert rec["trainable_params"] == rec["total_params"]
    assert rec["trainable_blocks"] == ["conv1", "conv2", "conv3", "fc1", "head"]
    assert not list(cache.rglob("model.pt"))
