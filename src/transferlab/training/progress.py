"""A progress line in the log when there is no progress bar (sweeps run with `trainer.enable_progress_bar=false`).

`ProgressLine` logs at most one line every `every_s` seconds (logger `transferlab.training.progress`, INFO), the
first after one interval, and one last line when training ends:

    seed=0,transfer=scratch: progress: step 96/320 (30%), epoch 96/320, val/acc 0.812 (best 0.840),
    elapsed 0:00:21, eta 0:00:49

(one line in the log). Steps are optimizer steps (`trainer.global_step`) out of the planned ones (epochs x batches
per epoch, batches divided by `accumulate_grad_batches`, capped by `max_steps`); `val/acc` is the last value in
`trainer.callback_metrics`, left out until there is one; the ETA is the time per step of this fit so far times the
steps left (a resumed fit counts only the steps it made itself).

Cost: per training batch one clock read and one comparison; the line is built only when it is due. `val/acc` is
read from `callback_metrics` once per epoch (for its best value) and when a line is due, never per batch. It reads
the metric at batch and epoch ends, not at validation end, so it also follows a vectorised group's stacked module
(`training.stacked`), which validates inside `on_train_epoch_end` and logs the group's mean val/acc there.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from typing import Any, Callable

import lightning as L

log = logging.getLogger(__name__)

METRIC = "val/acc"


def _clock_str(seconds: float) -> str:
    return str(timedelta(seconds=int(round(max(0.0, seconds)))))


def planned_steps(trainer: L.Trainer) -> int | None:
    """The optimizer steps the fit is set to make: ceil(batches per epoch / accumulate_grad_batches) x max_epochs,
    capped by max_steps; max_steps alone when there is no epoch limit or the batch count is unknown; None when
    neither bounds it."""
    max_steps = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps >= 0 else None
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
    try:
        batches = float(trainer.num_training_batches)
        accumulate = max(1, int(trainer.accumulate_grad_batches or 1))
    except (AttributeError, TypeError, ValueError):
        batches, accumulate = math.inf, 1
    by_epochs = None
    if max_epochs is not None and math.isfinite(batches):
        by_epochs = math.ceil(batches / accumulate) * max_epochs
    if by_epochs is None:
        return max_steps
    return by_epochs if max_steps is None else min(by_epochs, max_steps)


class ProgressLine(L.Callback):
    """One log line about the fit's progress every `every_s` seconds, and one at the end (see the module doc).

    label: put before the line (e.g. the run folder's name, or "group of 5"); None: no prefix.
    every_s: the least time between two lines (> 0).
    enabled: None (default) logs only when the trainer has no progress bar (`enable_progress_bar=false`);
        True / False force it on / off.
    clock: a monotonic clock in seconds (tests pass a fake one).
    Only the global-zero rank logs.
    """

    def __init__(self, label: str | None = None, every_s: float = 10.0, *, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s={every_s!r}: seconds between lines, > 0")
        self.label = label
        self.every_s = float(every_s)
        self.enabled = enabled
        self._clock = clock
        self._on = False
        self._t0 = 0.0
        self._due = math.inf
        self._step0 = 0
        self._planned: int | None = None
        self._best: float | None = None
        self.lines: list[str] = []  # every line logged, in order (for tests and callers)

    # ------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wanted = trainer.progress_bar_callback is None if self.enabled is None else bool(self.enabled)
        self._on = wanted and bool(trainer.is_global_zero)
        if not self._on:
            return
        self._t0 = self._clock()
        self._due = self._t0 + self.every_s
        self._best = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._on:
            return
        self._step0 = int(trainer.global_step)  # a resumed fit: its own steps give the rate
        self._planned = planned_steps(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._on:
            return
        now = self._clock()
        if now < self._due:
            return
        self._due = now + self.every_s
        self._emit(trainer, now, final=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._on:
            self._metric(trainer)  # once per epoch, so the best value misses no validation check

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._on:
            return
        self._due = math.inf
        self._emit(trainer, self._clock(), final=True)

    # ------------------------------------------------------------ the line
    def _metric(self, trainer: L.Trainer) -> float | None:
        value = trainer.callback_metrics.get(METRIC)
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        if math.isfinite(value) and (self._best is None or value > self._best):
            self._best = value
        return value

    def line(self, trainer: L.Trainer, now: float, final: bool = False) -> str:
        """The progress line at clock time `now` (`final`: training has ended)."""
        step = int(trainer.global_step)
        planned = self._planned
        parts = [f"step {step}/{planned} ({min(100, int(100 * step / planned))}%)" if planned else f"step {step}"]
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        # During an epoch current_epoch is its 0-based index; once training has ended, the epochs completed.
        epoch = int(trainer.current_epoch) + (0 if final else 1)
        epoch = min(epoch, max_epochs) if max_epochs else epoch
        parts.append(f"epoch {epoch}/{max_epochs}" if max_epochs else f"epoch {epoch}")
        value = self._metric(trainer)
        if value is not None:
            parts.append(f"{METRIC} {value:.3f}" + (f" (best {self._best:.3f})" if self._best is not None else ""))
        elapsed = now - self._t0
        parts.append(f"elapsed {_clock_str(elapsed)}")
        done = step - self._step0
        if final:
            parts.append("finished")
        elif planned and done > 0:
            parts.append(f"eta {_clock_str(elapsed / done * max(0, planned - step))}")
        text = "progress: " + ", ".join(parts)
        return f"{self.label}: {text}" if self.label else text

    def _emit(self, trainer: L.Trainer, now: float, final: bool) -> None:
        text = self.line(trainer, now, final)
        self.lines.append(text)
        log.info("%s", text)
