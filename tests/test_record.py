"""The run record: `RunRecord` is result.json's schema, and a record of any version reads (never a crash).

The complete record of a real run (every key written is a field and back) is checked in test_experiment.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields

import pytest

from transferlab.analysis.collect import collect_sweep, record_to_row
from transferlab.run.record import RESULT_FILE, SCHEMA, SEALED_SINCE, Metrics, RunRecord, UnsealedRecord
from transferlab.sweep.ledger import folder_state

# A result.json as written before `schema` existed (version 0), and before run identity: no schema, num_classes,
# n_val, bn, fingerprint, inputs, ...; one key that no field has any more.
VERSION_0 = {
    "status": "ok", "error": None, "name": "old", "source": "digits_0to4", "target": "digits_5to9",
    "backbone": "small_cnn", "transfer": "finetune", "strategy": "fixed", "cut": 4, "upper": "drop", "freeze": 0,
    "frozen_blocks": [], "trainable_blocks": ["conv1", "conv2", "conv3", "fc1", "head"], "trainable_params": 10,
    "total_params": 12, "n_per_class": 5, "n_train": 25, "seed": 0, "data_seed": 0,
    "metrics": {"test/acc": 0.8, "val/acc": 0.75, "val/acc_history": [0.5, 0.75], "epochs": 2},
    "source_cache": "hit", "source_ckpt": "/cache/source/x/model.pt", "target_ckpt": "/run/checkpoints/best.ckpt",
    "train_indices": list(range(25)), "wall_s": 3.5, "config": {"target": {"classes": [5, 6, 7, 8, 9]}},
    "retired_key": "not a field",
}


def test_a_version_0_record_reads_with_the_same_names_and_defaults(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / RESULT_FILE).write_text(json.dumps(VERSION_0))
    rec = RunRecord.read(tmp_path / "old" / RESULT_FILE)
    assert rec.schema == 0 and rec.status == "ok" and rec.cut == 4 and rec.train_indices == list(range(25))
    assert rec.metrics == Metrics(test_acc=0.8, val_acc=0.75, val_acc_history=[0.5, 0.75], epochs=2)
    assert (rec.num_classes, rec.bn, rec.fingerprint, rec.inputs, rec.resumed_from) == (None,) * 5  # not recorded
    assert list(rec.to_dict()) == [f.name for f in fields(RunRecord)]  # unknown keys are not carried along

    row = record_to_row(rec, "old")
    assert row["val_acc_history"] == [0.5, 0.75] and row["epochs"] == 2 and row["n_label"] == "5"
    assert row["test_acc"] == 0.8 and math.isnan(row["test_loss"])
    runs = collect_sweep(tmp_path).runs  # the report and the sweeper read it too
    assert runs["status"].tolist() == ["ok"] and runs["val_acc_history"].tolist() == [[0.5, 0.75]]
    assert folder_state(tmp_path / "old", "any-hash") == ("stale", None)  # no fingerprint: never taken as done


@pytest.mark.parametrize("stored", [{}, {"status": "failed", "metrics": None, "frozen_blocks": None}])
def test_sparse_records_read_as_not_recorded(stored):
    rec = RunRecord.from_dict(stored)
    assert rec.schema == 0 and rec.metrics == Metrics() and rec.metrics.to_dict() == {}
    row = record_to_row(rec, "x")
    assert row["val_acc_history"] == [] and row["epochs"] is None and math.isnan(row["test_acc"])


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", ""])
def test_a_file_that_is_no_record_raises_value_error(tmp_path, text):
    (tmp_path / RESULT_FILE).write_text(text)
    with pytest.raises(ValueError):
        RunRecord.read(tmp_path / RESULT_FILE)
    assert folder_state(tmp_path, "h")[0] == "failed"  # the sweeper's reading: unreadable is failed, not a crash


def test_write_then_read_is_the_same_record(tmp_path):
    rec = RunRecord(status="failed", error="RuntimeError: boom", seed=1, unfreeze_epochs={"conv3": 2, "head": 0})
    path = rec.write(tmp_path)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == SCHEMA and on_disk["metrics"] == {}  # a failed run measured nothing
    assert RunRecord.read(path) == rec
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESULT_FILE, RESULT_FILE + ".sha256"]  # no temp file left


def _edit(path, **changes):
    stored = json.loads(path.read_text())
    stored.update(changes)
    path.write_text(json.dumps(stored, indent=2))


def test_a_record_is_sealed_and_a_hand_edit_never_reads_as_a_result(tmp_path):
    import subprocess

    run = tmp_path / "point"
    path = RunRecord(status="ok", fingerprint="fp", metrics=Metrics(test_acc=0.5)).write(run)
    check = subprocess.run(["sha256sum", "-c", RESULT_FILE + ".sha256"], cwd=run, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # the shell can check it too
    assert folder_state(run, "fp") == ("done", None)

    _edit(path, metrics={"test/acc": 0.99})
    with pytest.raises(UnsealedRecord, match="fails its checksum"):
        RunRecord.read(path)
    state, why = folder_state(run, "fp")
    assert state == "failed" and "checksum" in why  # the sweeper re-runs it
    (row,) = collect_sweep(tmp_path).runs.to_dict("records")
    assert row["status"] == "failed" and "checksum" in row["error"] and not row.get("test_acc") == 0.99

    _edit(path, schema=SEALED_SINCE - 1)  # passing it off as a record from before sealing: its sidecar is there
    with pytest.raises(UnsealedRecord):
        RunRecord.read(path)
    RunRecord(status="ok", fingerprint="fp").write(run)
    (run / (RESULT_FILE + ".sha256")).unlink()  # the writer stopped between the file and its checksum
    with pytest.raises(UnsealedRecord, match="no checksum file"):
        RunRecord.read(path)


def test_a_sweep_sets_an_unsealed_record_aside_before_the_point_runs_again(tmp_path):
    from transferlab.sweep.points import Point
    from transferlab.sweep.state import prepare_point_dir

    point = Point(name="p", overrides=["seed=0"], hash="fp")
    prepare_point_dir(tmp_path, point)
    RunRecord(status="ok", fingerprint="fp", metrics=Metrics(test_acc=0.5)).write(tmp_path)
    prepare_point_dir(tmp_path, point)  # sealed and its own: kept
    assert RunRecord.read(tmp_path / RESULT_FILE).metrics.test_acc == 0.5
    _edit(tmp_path / RESULT_FILE, metrics={"test/acc": 0.99})
    prepare_point_dir(tmp_path, point)
    (aside,) = [f for f in tmp_path.glob(RESULT_FILE + ".corrupt-*") if not f.name.endswith(".sha256")]
    assert json.loads(aside.read_text())["metrics"]["test/acc"] == 0.99 and not (tmp_path / RESULT_FILE).exists()
