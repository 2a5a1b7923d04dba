"""The per-run overhead cuts in `training.fit` / `training.options` change no result (docs/speed.md)."""

from __future__ import annotations

import csv
import os

import torch
from lightning.pytorch.trainer.connectors.logger_connector import result as lresult

from conftest import ckpt_state
from transferlab import compat
from transferlab.run.experiment import run
from transferlab.training import fit, options


def _lightning_to():
    to = lresult._ResultMetric.to
    return getattr(to, "__wrapped__", to)


def _csv_rows(run_dir) -> list[dict]:
    (path,) = sorted(run_dir.rglob("target/**/metrics.csv"))
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fast_logging_gives_the_run_lightnings_own_logging_gives(make_cfg, tmp_path, monkeypatch):
    calls = {"lightning": 0}
    original = _lightning_to()

    def counted(self, *args, **kwargs):
        calls["lightning"] += 1
        return original(self, *args, **kwargs)

    counted.__qualname__ = original.__qualname__  # what `patch_result_metric_to` agrees to wrap
    with monkeypatch.context() as m:  # reference: every self.log goes through Lightning's own device move
        m.setattr(lresult._ResultMetric, "to", counted)
        m.setattr(fit, "patch_result_metric_to", lambda: None)
        m.setattr(fit, "cuda_check_without_failing_nvml", lambda: None)
        ref = run(make_cfg("train.max_epochs=6", "target.n_per_class=3", "train/scheduler=plateau", "logger=csv",
                           run="ref"))
    slow_calls, calls["lightning"] = calls["lightning"], 0
    monkeypatch.setattr(lresult._ResultMetric, "to", counted)  # `fit_and_test` wraps this one in the fast path
    new = run(make_cfg("train.max_epochs=6", "target.n_per_class=3", "train/scheduler=plateau", "logger=csv",
                       run="new"))
    assert calls["lightning"] < slow_calls / 4, "the fast path was not taken"
    assert new["metrics"] == ref["metrics"]  # val/acc and val/loss curves, test metrics: exactly
    assert (new["selected_epoch"], new["fingerprint"]) == (ref["selected_epoch"], ref["fingerprint"])
    assert len(set(new["metrics"]["val/loss_history"])) > 1, "nothing trained: this test could not fail"
    a, b = ckpt_state(ref["target_ckpt"]), ckpt_state(new["target_ckpt"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the logger saw the same rows: every epoch's train/val loss and acc, with its step and epoch
    assert _csv_rows(tmp_path / "new") == _csv_rows(tmp_path / "ref")
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(_csv_rows(tmp_path / "new")[0])


def test_fast_device_move_skips_only_what_would_not_move():
    compat.patch_result_metric_to()
    compat.patch_result_metric_to()  # installed once: a second call does not wrap the wrapper
    to = lresult._ResultMetric.to
    assert to._transferlab_fast and not getattr(to.__wrapped__, "_transferlab_fast", False)
    results = lresult._ResultCollection(training=True)
    results.log("on_train_epoch_end", "train/loss", torch.tensor(2.0), on_step=False, on_epoch=True)
    results.log("on_train_epoch_end", "train/loss", torch.tensor(2.0), on_step=False, on_epoch=True)
    metric = results["on_train_epoch_end.train/loss"]
    meta = metric.meta
    assert metric.to(torch.device("cpu")) is metric and metric.meta is meta  # nothing rebuilt
    assert metric.to(torch.float64) is metric and metric.meta is not meta  # other arguments: Lightning's own
    assert float(metric.compute()) == 2.0
    assert compat._on({"a": [torch.zeros(1), (torch.ones(1),)]}, torch.device("cpu"))
    assert compat._on([torch.zeros(1, device="meta")], torch.device("cpu")) is False
    assert compat._on({"m": torch.nn.Linear(1, 1)}, torch.device("cpu")) is None  # a module: Lightning moves it


def test_cuda_check_is_switched_only_when_nvml_cannot_answer(monkeypatch):
    monkeypatch.setenv(options.NVML_CHECK, "1")
    before = torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2)  # NVML answers: Lightning's check stays
    options.cuda_check_without_failing_nvml()
    assert os.environ[options.NVML_CHECK] == "1"
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: -1)  # NVML cannot be loaded
    options.cuda_check_without_failing_nvml()
    assert os.environ[options.NVML_CHECK] == "0"
    monkeypatch.undo()
    assert torch.cuda.is_available() == before
