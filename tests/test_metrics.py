"""Test metrics beyond accuracy (balanced accuracy, macro-F1, AUROC), class counts, the single-class warning, and
the run-time arm label: exact values, by hand and against sklearn on the run's own test predictions."""

from __future__ import annotations

import logging
import math

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferlab.analysis.collect import record_to_row
from transferlab.run.experiment import run
from transferlab.run.record import Metrics, RunRecord
from transferlab.training.module import TransferModule
from transferlab.transfer.plan import resolve_plan

WARNING = "predicted class"  # the single-class warning line


class Given(nn.Module):
    """A "net" whose inputs are already the logits: the test metrics of hand-made predictions."""

    def forward(self, x, start=0):
        return x


def measured(logits: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, float], dict[str, list[int]]]:
    """(logged test metrics, counts) of a TransferModule tested on these logits, in batches of 4 (so the
    metrics really accumulate over the epoch)."""
    module = TransferModule(Given(), logits.shape[1], optim={"lr": 1e-3})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    out = trainer.test(module, DataLoader(TensorDataset(logits, y), batch_size=4), verbose=False)[0]
    return out, module.test_counts


def test_binary_metrics_by_hand():
    # P(class 1) per example; truth 4 x class 0, 2 x class 1. Predicted (p > 0.5): 0 0 0 1 | 0 1.
    p = torch.tensor([0.1, 0.2, 0.3, 0.6, 0.4, 0.9])
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    logits = torch.stack([torch.zeros(6), torch.log(p / (1 - p))], dim=1)  # softmax(.)[:, 1] == p
    out, counts = measured(logits, y)
    assert out["test/acc"] == pytest.approx(4 / 6)
    assert out["test/balanced_acc"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # recall 3/4 and 1/2
    assert out["test/macro_f1"] == pytest.approx((6 / 8 + 2 / 4) / 2)  # F1 = 2tp / (2tp + fp + fn): 6/8, 2/4
    assert out["test/auroc"] == pytest.approx(7 / 8)  # positives 0.4 (beats 3 of 4 negatives) and 0.9 (all 4)
    assert counts == {"test/class_counts": [4, 2], "test/pred_counts": [4, 2]}
    m = Metrics(test_class_counts=counts["test/class_counts"], test_pred_counts=counts["test/pred_counts"])
    assert m.majority_acc == pytest.approx(4 / 6) and m.single_class is False


def test_multiclass_metrics_equal_sklearn_and_a_class_only_predicted_is_not_averaged_in():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 4, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)  # class 3 never in the truth
    logits[:3, 3] += 10  # ... but predicted 3 times
    pred = logits.argmax(1).numpy()
    out, counts = measured(logits, y)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        balanced = balanced_accuracy_score(y, pred)
    assert out["test/balanced_acc"] == pytest.approx(balanced, abs=1e-6)
    assert out["test/macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert "test/auroc" not in out  # undefined with a class absent from the test split
    assert counts["test/class_counts"] == np.bincount(y.numpy(), minlength=4).tolist()
    assert counts["test/pred_counts"] == np.bincount(pred, minlength=4).tolist() and counts["test/pred_counts"][3] >= 3

    present = y.clone()
    present[:4] = torch.tensor([3, 3, 3, 3])
    out, _ = measured(logits, present)
    probs = logits.softmax(1).numpy()
    assert out["test/auroc"] == pytest.approx(roc_auc_score(present, probs, multi_class="ovr"), abs=1e-6)


def _last_test_predictions(monkeypatch) -> dict[int, list]:
    """Spy on TransferModule.test_step: the (logits, truth) of every test batch, per module."""
    seen: dict[int, list] = {}
    original = TransferModule.test_step

    def spy(self, batch, batch_idx):
        with torch.no_grad():
            seen.setdefault(id(self), []).append((self(batch[0]).float(), batch[1]))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TransferModule, "test_step", spy)
    return seen


def test_a_runs_recorded_metrics_equal_sklearn_on_its_test_predictions(make_cfg, monkeypatch, caplog):
    seen = _last_test_predictions(monkeypatch)
    with caplog.at_level(logging.WARNING):
        rec = run(make_cfg("target.n_per_class=4", "transfer.freeze=2"))
    batches = list(seen.values())[-1]  # the target model (a source pretrained here was tested before it)
    logits, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).numpy()
    pred, probs = logits.argmax(1).numpy(), logits.softmax(1).numpy()
    m = rec["metrics"]
    assert m["test/acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert m["test/balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["test/macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["test/auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-5)
    assert m["test/class_counts"] == np.bincount(y, minlength=5).tolist()
    assert sum(m["test/class_counts"]) == rec["n_test"]
    assert m["test/pred_counts"] == np.bincount(pred, minlength=5).tolist()
    assert rec["single_class_prediction"] is False
    assert not [r for r in caplog.records if WARNING in r.getMessage()]

    row = record_to_row(RunRecord.from_dict(rec), "run")
    assert row["test_balanced_acc"] == m["test/balanced_acc"] and row["test_macro_f1"] == m["test/macro_f1"]
    assert row["test_auroc"] == m["test/auroc"] and row["single_class"] is False
    assert row["majority_acc"] == max(m["test/class_counts"]) / rec["n_test"]


def test_a_run_that_predicts_one_class_is_flagged_and_warned_once(make_cfg, monkeypatch, caplog):
    original = TransferModule.forward
    monkeypatch.setattr(TransferModule, "forward",
                        lambda self, x: original(self, x) + torch.tensor([100.0, 0, 0, 0, 0], device=x.device))
    with caplog.at_level(logging.WARNING):
        rec = run(make_cfg("target.n_per_class=2", "transfer.freeze=all"))
    m = rec["metrics"]
    counts = m["test/class_counts"]
    n, n0 = sum(counts), counts[0]
    assert rec["single_class_prediction"] is True and m["test/pred_counts"] == [n, 0, 0, 0, 0]
    assert n0 == max(counts)  # class 0 is the (joint) largest test class of digits_5to9: acc = majority baseline
    assert m["test/acc"] == pytest.approx(n0 / n) == RunRecord.from_dict(rec).metrics.majority_acc
    assert m["test/balanced_acc"] == pytest.approx(1 / 5)  # recall 1 for class 0, 0 for the other four
    assert m["test/macro_f1"] == pytest.approx(2 * n0 / (n + n0) / 5)  # class 0: precision n0/n, recall 1
    warnings = [r for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert record_to_row(RunRecord.from_dict(rec), "run")["single_class"] is True


def test_a_schema_1_record_reads_with_the_new_metrics_missing():
    stored = {"schema": 1, "status": "ok", "cut": 4, "metrics": {"test/acc": 0.8, "test/loss": 0.5, "epochs": 2}}
    rec = RunRecord.from_dict(stored)
    assert rec.schema == 1 and rec.metrics.test_acc == 0.8 and rec.single_class_prediction is None
    assert (rec.metrics.test_balanced_acc, rec.metrics.test_auroc, rec.metrics.test_class_counts) == (None,) * 3
    assert rec.metrics.majority_acc is None and rec.metrics.single_class is None
    assert rec.metrics.to_dict() == stored["metrics"]
    row = record_to_row(rec, "old")
    assert row["test_acc"] == 0.8 and row["single_class"] is None
    assert all(math.isnan(row[c]) for c in ("test_balanced_acc", "test_macro_f1", "test_auroc", "majority_acc"))


BLOCKS = ["conv1", "conv2", "conv3", "fc1"]


@pytest.mark.parametrize("transfer,arm", [
    ({"name": "scratch", "cut": 0, "upper": "reinit", "freeze": 0}, "scratch"),
    ({"freeze": 0}, "freeze=0"),
    ({"freeze": "all"}, "freeze=4 (all)"),
    ({"cut": 3, "freeze": 2}, "freeze=2 cut=3"),
    ({"cut": 2, "upper": "reinit", "freeze": "all"}, "freeze=2 (all) cut=2 upper=reinit"),
    ({"trainable": ["conv3", "fc1"]}, "trainable=[conv3,fc1]"),
    ({"freeze": 1, "strategy": "gradual"}, "freeze=1 gradual"),
    ({"freeze": 0, "l2sp": 0.01}, "freeze=0 l2sp=0.01"),
])
def test_the_run_time_arm_label(transfer, arm):
    assert resolve_plan(OmegaConf.create(transfer), BLOCKS).arm == arm
