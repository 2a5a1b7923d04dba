"""Was a run's validation accuracy still rising when its training stopped? (`converged` in result.json)

A run stopped while still improving measures its step budget, not the transfer: in recipe 1 (docs/experiments.md)
the frozen arm's curves were still climbing at the last epoch for small n, and a later study hit the same trap with
nothing to warn it. So every run judges its own curve, and the report counts and lists the runs that were still
rising, per arm.

The rule, on the val/acc curve at the fit's validation checks (training/budget.py: after every epoch, or on a
schedule of steps; epochs hold equal numbers of steps, so the last 20% of epochs are the last 20% of steps):

- window: the checks after the last ceil(0.2 · E) of the E epochs, at least 3 (with a check after every epoch:
  the last max(3, ceil(0.2 · E)) epochs); a curve of fewer than 5 checks is not judged (`converged: null`);
- late gain: g = (best val/acc in the window) - (best val/acc before it);
- noise: the check-to-check scatter of the curve's end, sigma = 1.4826 · median|d - median(d)| / sqrt(2) over the
  successive differences d of the last 2w checks (a robust standard deviation; centring on the median difference
  takes a steady trend out of it);
- still rising (`converged: false`) when g > max(2 / n_val, 2 · sigma): the window holds a new best that beats
  everything before it by more than two validation examples and more than twice the curve's own noise.

Why this rule: it asks what the model selection sees (`train.select=best_val` tests the best epoch: a late new best
means the tested model came from the end of a curve that was still improving), and it is robust where a slope test
is not. With a window of 3 epochs (any run of up to 15), a least-squares slope has one degree of freedom and a
steadily climbing curve rarely passes a t-test, while a single lucky last epoch moves the fitted slope a lot. A
plateau's window seldom beats the four times longer stretch before it by two examples and two noise widths. The
verdict is conservative: a curve creeping up by less than that margin counts as converged.
`converged: false` is a warning, not a failure: the run is kept, and its model is still the one `train.select`
picked.

Torch-free: the record and the report read it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

WINDOW = 0.2         # the share of the epochs (= of the steps) at the end of training that is judged
MIN_WINDOW = 3       # checks in the window at least
MIN_EPOCHS = 5       # curves of fewer checks are not judged
EXAMPLES = 2         # the gain must exceed this many validation examples ...
NOISE = 2.0          # ... and this many noise standard deviations
MAD_TO_SD = 1.4826   # median absolute deviation -> standard deviation of a normal distribution


@dataclass(frozen=True)
class Convergence:
    """The verdict on one curve, as recorded in result.json (`RunRecord.convergence`)."""

    converged: bool | None       # False: still rising at the end; None: not judged (too few checks, no curve)
    epochs: int                  # validation checks in the curve (= epochs when every epoch was validated)
    window: int                  # checks judged (the last ones)
    late_best: float | None      # best val/acc in the window
    earlier_best: float | None   # best val/acc before the window
    gain: float | None           # late_best - earlier_best
    noise: float | None          # robust epoch-to-epoch standard deviation of the curve's last 2 x window epochs
    margin: float | None         # max(2 val examples, 2 noise): the gain that counts as still rising
    reason: str                  # the verdict in words

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_size(epochs: int) -> int:
    return min(epochs, max(MIN_WINDOW, math.ceil(WINDOW * epochs)))


def noise(curve: Sequence[float]) -> float:
    """Robust standard deviation of one epoch's value around the curve's local trend, from successive differences
    (a difference of two noisy values has sqrt(2) times the noise)."""
    d = [b - a for a, b in zip(curve, curve[1:])]
    if len(d) < 2:
        return 0.0
    mid = statistics.median(d)
    return MAD_TO_SD * statistics.median(abs(x - mid) for x in d) / math.sqrt(2)


def checks_in_window(epochs: Sequence[int]) -> int:
    """How many checks, at these 1-based epochs (ascending), fall after the last ceil(WINDOW · E) of the E epochs
    of the fit, at least MIN_WINDOW, and one check fewer than the curve (something before the window)."""
    last = int(epochs[-1])
    after = last - math.ceil(WINDOW * last)
    return max(0, min(len(epochs) - 1, max(MIN_WINDOW, sum(1 for e in epochs if e > after))))


def judge(val_acc: Sequence[float], n_val: int | None, epochs: Sequence[int] | None = None) -> Convergence:
    """The verdict on a val/acc curve measured on `n_val` examples at the validation checks after the 1-based
    `epochs` (None or a list of another length: after every epoch, epoch 1 first)."""
    values = list(val_acc or [])
    curve = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    e = len(curve)
    at = list(epochs) if epochs is not None and len(epochs) == len(values) else list(range(1, len(values) + 1))
    w = checks_in_window(at) if e and e == len(values) else (window_size(e) if e else 0)
    if e < MIN_EPOCHS or e != len(values):
        why = "a curve with a missing value" if e != len(values) else f"{e} check(s): too short to judge"
        return Convergence(None, e, w, None, None, None, None, None, why)
    late, earlier = max(curve[-w:]), max(curve[:-w])
    sigma = noise(curve[-2 * w:])
    margin = max(EXAMPLES / n_val if n_val else 0.0, NOISE * sigma)
    gain = late - earlier
    rising = gain > margin
    if rising:
        why = (f"val/acc still rising: the best of the last {w} of {e} checks ({late:.4f}) beats the best before "
               f"them by {gain:+.4f}, more than {margin:.4f} (2 val examples, 2 x noise {sigma:.4f})")
    else:
        why = (f"val/acc not rising over the last {w} of {e} checks: best there {late:.4f}, before {earlier:.4f} "
               f"({gain:+.4f}, needs more than {margin:.4f})")
    return Convergence(not rising, e, w, late, earlier, gain, sigma, margin, why)
