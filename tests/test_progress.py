"""The progress line of a fit without a progress bar (training/progress.py): how often it is logged, what it says
(steps of the planned total, epoch, last and best val/acc, elapsed, ETA), that it is silent with a bar, and that it
follows a vectorised group's stacked module, which logs val/acc in `on_train_epoch_end` instead of a validation
loop. A fake clock makes every line deterministic: each read advances it by a fixed step."""

from __future__ import annotations

import logging
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab.training.progress import ProgressLine, planned_steps

LOGGER = "transferlab.training.progress"


class Clock:
    """Starts at 0 and advances `step` seconds after each read; counts the reads."""

    def __init__(self, step: float = 1.0):
        self.t, self.step, self.reads = 0.0, step, 0

    def __call__(self) -> float:
        self.reads += 1
        t, self.t = self.t, self.t + self.step
        return t


VAL = [0.5, 0.9, 0.7, 0.8, 0.6]  # val/acc logged after epochs 1..5


class Base(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.lin(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Tiny(Base):
    """A few parameters; val/acc after epoch e (1-based) is VAL[e - 1], logged by a validation loop."""

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", VAL[self.current_epoch], on_epoch=True)


class TinyStacked(Base):
    """No validation loop: val/acc logged in on_train_epoch_end, as the stacked module does."""

    def on_train_epoch_end(self):
        self.log("val/acc", VAL[self.current_epoch])


def _data(n: int = 8, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 2, generator=g), torch.randint(0, 2, (n,), generator=g)),
                      batch_size=batch_size)


def _fit(callback: ProgressLine, *, via: str = "val", bar: bool = False, **trainer_kw) -> L.Trainer:
    trainer = L.Trainer(**{"max_epochs": 5, **trainer_kw}, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                        enable_progress_bar=bar, callbacks=[callback])
    trainer.fit(Tiny() if via == "val" else TinyStacked(), _data(), _data() if via == "val" else None)
    return trainer


def test_a_line_every_interval_and_one_at_the_end(caplog):
    """4 batches x 5 epochs = 20 steps; the clock is read once at fit start (t=0), once per batch end (t=1..20)
    and once at the end (t=21): lines at t=5, 10, 15, 20 and the final one."""
    clock = Clock()
    cb = ProgressLine(label="seed=0,transfer=scratch", every_s=5.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _fit(cb)
    assert clock.reads == 1 + 20 + 1  # one read per batch, nothing else
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == cb.lines
    assert cb.lines == [
        # t=5: step 5, epoch 2 running, epoch 1's val/acc; 5 s for 5 steps, 15 left
        "seed=0,transfer=scratch: progress: step 5/20 (25%), epoch 2/5, val/acc 0.500 (best 0.500), "
        "elapsed 0:00:05, eta 0:00:15",
        "seed=0,transfer=scratch: progress: step 10/20 (50%), epoch 3/5, val/acc 0.900 (best 0.900), "
        "elapsed 0:00:10, eta 0:00:10",
        "seed=0,transfer=scratch: progress: step 15/20 (75%), epoch 4/5, val/acc 0.700 (best 0.900), "
        "elapsed 0:00:15, eta 0:00:05",
        "seed=0,transfer=scratch: progress: step 20/20 (100%), epoch 5/5, val/acc 0.800 (best 0.900), "
        "elapsed 0:00:20, eta 0:00:00",
        "seed=0,transfer=scratch: progress: step 20/20 (100%), epoch 5/5, val/acc 0.600 (best 0.900), "
        "elapsed 0:00:21, finished",
    ]


def test_no_val_acc_before_the_first_validation_and_no_label():
    cb = ProgressLine(every_s=2.0, clock=Clock())
    _fit(cb, max_epochs=1)
    assert cb.lines[0] == "progress: step 2/4 (50%), epoch 1/1, elapsed 0:00:02, eta 0:00:02"
    assert cb.lines[-1] == "progress: step 4/4 (100%), epoch 1/1, val/acc 0.500 (best 0.500), elapsed 0:00:05, finished"


def test_silent_with_a_progress_bar_unless_forced(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _fit(ProgressLine(every_s=1.0, clock=clock), bar=True, max_epochs=1)
    assert clock.reads == 0 and not [r for r in caplog.records if r.name == LOGGER]
    forced = ProgressLine(every_s=1.0, clock=Clock(), enabled=True)
    _fit(forced, bar=True, max_epochs=1)
    assert len(forced.lines) == 5  # one per batch end (each read is a second later), and the final
    off = ProgressLine(every_s=1.0, clock=(clock := Clock()), enabled=False)
    _fit(off, max_epochs=1)
    assert off.lines == [] and clock.reads == 0


def test_follows_a_module_that_logs_val_acc_at_epoch_end():
    """As a vectorised group's stacked module does: no validation loop, val/acc logged in on_train_epoch_end (after
    the callbacks' own epoch-end hook); the line still shows each epoch's value, the last one in the final line."""
    cb = ProgressLine(label="group of 5", every_s=4.0, clock=Clock())
    _fit(cb, via="epoch_end")
    assert cb.lines[0] == "group of 5: progress: step 4/20 (20%), epoch 1/5, elapsed 0:00:04, eta 0:00:16"
    assert cb.lines[1].startswith("group of 5: progress: step 8/20 (40%), epoch 2/5, val/acc 0.500 (best 0.500)")
    assert cb.lines[-1] == ("group of 5: progress: step 20/20 (100%), epoch 5/5, val/acc 0.600 (best 0.900), "
                            "elapsed 0:00:21, finished")


def test_planned_steps_count_accumulation_and_max_steps():
    acc = ProgressLine(every_s=1.0, clock=Clock())
    trainer = _fit(acc, max_epochs=2, accumulate_grad_batches=3)  # 4 batches: steps after batches 3 and 4
    assert planned_steps(trainer) == 4 and trainer.global_step == 4
    assert acc.lines[-1].startswith("progress: step 4/4 (100%), epoch 2/2")
    capped = ProgressLine(every_s=1.0, clock=Clock())
    trainer = _fit(capped, max_steps=7)
    assert planned_steps(trainer) == 7 and capped.lines[-1].startswith("progress: step 7/7 (100%), epoch 2/5")


def test_only_rank_zero_logs(monkeypatch):
    cb = ProgressLine(every_s=1.0, clock=(clock := Clock()))
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: False))
    _fit(cb, max_epochs=1)
    assert cb.lines == [] and clock.reads == 0


def test_every_s_must_be_positive():
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="every_s"):
            ProgressLine(every_s=bad)


def test_a_real_stacked_group_fit(make_cfg, monkeypatch):
    """The callback on the Trainer of `training.stacked.fit_stacked` (3 members, one stacked model): a line per
    batch, and the final line's val/acc is the group's mean of the members' last val/acc."""
    import json
    from pathlib import Path

    from transferlab.run import identity
    from transferlab.sweep.group_job import run_group
    from transferlab.training import stacked

    made: list[ProgressLine] = []

    class WithLine(L.Trainer):
        def __init__(self, *args, callbacks=(), **kw):
            made.append(ProgressLine(label="group of 3", every_s=1.0, clock=Clock(step=2.0)))
            super().__init__(*args, callbacks=[*callbacks, made[-1]], **kw)

    class Lightning:  # stacked.L with the Trainer above; the rest of lightning as it is
        Trainer = WithLine

        def __getattr__(self, name):
            return getattr(L, name)

    keys = ["logger=none", "pretrain.seed=0", "transfer.freeze=1", "target.n_per_class=5", "train.max_epochs=3",
            "train.batch_size=16"]
    members = []
    for s in (0, 1, 2):
        cfg = make_cfg(*keys, f"seed={s}", run=f"member{s}")
        members.append({"name": f"seed={s}", "dir": str(cfg.paths.output_dir), "replicates": {"seed": s},
                        "fingerprint": identity.fingerprint(cfg)})
    path = Path(members[0]["dir"]) / "group.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"members": members}))
    monkeypatch.setattr(stacked, "L", Lightning())
    run_group(make_cfg(*keys, "seed=0", f"group={path}", run="member0"))
    (cb,) = [c for c in made if c.lines]  # the fit's Trainer; the members' test Trainers make no line
    records = [json.loads((Path(m["dir"]) / "result.json").read_text()) for m in members]
    steps = records[0]["metrics"]["steps"]
    assert all(r["group"]["mode"] == "stacked" for r in records) and steps >= 3
    assert len(cb.lines) == steps + 1 and cb.lines[0].startswith(f"group of 3: progress: step 1/{steps} ")
    mean = sum(r["metrics"]["val/acc_history"][-1] for r in records) / 3
    assert f"epoch 3/3, val/acc {mean:.3f}" in cb.lines[-1] and cb.lines[-1].endswith(", finished")
