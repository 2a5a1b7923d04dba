"""Every candidate of a tuned point tested after the choice: the hindsight numbers behind the report's oracle.

Why: how much of an arm's result its selection protocol gives or costs is read against the best candidate in
hindsight, the candidate whose model scores highest on the test split (the oracle of selection.csv,
analysis/selection_cost.py). A tuned point (run/tuning.py) tests only the candidate its protocol selected; this
module then tests each other candidate's kept model (its best.ckpt: the epoch its own `train.select` kept) once,
and the point's record holds the numbers as `hindsight_test` beside each candidate in its `tuning` block.

Never read by the selection: it runs after `tuning.choose` has chosen and the chosen model has been tested, and its
numbers go only into the record (`tuning.choose` reads status, score, val/loss and order). A point with them is the
same result as one without: same chosen values, same tested model, same test numbers (tests/test_selection_cost.py).

What it costs: one test pass per other finished candidate, none of them logged. Each is tested on its own test
batches, built from its config as its separate run builds them (the source model and any frozen-prefix features
are cache hits by then), so its number is the separate run's `test/acc` (tested). The chosen candidate's numbers
are the point's own test, not a second pass; a failed candidate (NaN/inf loss) has none. Epochs are not searched in
hindsight: each candidate's model is the one its protocol kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

FIELD = "hindsight_test"  # the candidate's key in the record's `tuning` block
NUMBERS = ("test/acc", "test/loss", "test/balanced_acc", "test/macro_f1", "test/auroc")
WHAT = ("hindsight_test: each candidate's kept model tested once on the test split after the choice "
        "(run/hindsight.py); never read by the selection, the report's oracle (selection.csv)")


def numbers(tested: dict[str, Any]) -> dict[str, float]:
    """The scalar test metrics of one test (`test_checkpoint`'s dict) as the record keeps them."""
    return {k: float(tested[k]) for k in NUMBERS if tested.get(k) is not None}


def test_one(ccfg: Any, ckpt: str, inputs: dict) -> dict[str, float]:
    """Test the model in `ckpt` as the separate run of the candidate config `ccfg` would: its net and test batches
    built from `ccfg` (no scores), `trainer.test` on the checkpoint, no logger."""
    from transferlab.run.experiment import Experiment
    from transferlab.training import options
    from transferlab.training.fit import test_checkpoint

    exp = Experiment(ccfg, inputs=inputs)
    exp.build(score=False)
    return numbers(test_checkpoint(options.apply(exp.module, ccfg.train), exp.batches[2], ckpt=ckpt,
                                   trainer_cfg=ccfg.trainer, logger=False))


def test_candidates(cands: Iterable[Any], chosen: Any, tested: dict[str, Any], config_of: Callable[[Any], Any],
                    inputs: dict) -> None:
    """Set `hindsight_test` on every finished candidate (`tuning.Candidate`): the chosen one's from the point's own
    test (`tested`), each other's from one test of its best.ckpt (`config_of(candidate)`: its config). Call only
    after the choice and the chosen candidate's test. A candidate whose hindsight test raises gets {"error": ...}
    instead of numbers: the point's result does not depend on these numbers, so it never fails for them."""
    for c in cands:
        if c is chosen:
            c.hindsight_test = numbers(tested)
        elif c.status == "ok" and c.best_ckpt:
            log.info("tune: hindsight test of candidate %d %s (after the choice; not read by it)", c.index,
                     c.values)
            try:
                c.hindsight_test = test_one(config_of(c), str(c.best_ckpt), inputs)
            except Exception as e:  # noqa: BLE001 - hindsight only: the point's result does not depend on it
                log.warning("tune: hindsight test of candidate %d failed (the point's result stands): %s", c.index,
                            e)
                c.hindsight_test = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
