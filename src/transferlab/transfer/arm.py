"""What an arm is, decided once: does a run copy nothing, is it the scratch baseline, and its machine label.

Each fact is one function of the plan's fields. The plan (`TransferPlan.copies_nothing`, `.is_baseline`, `.arm`)
asks them at run time and the run writes the answers into result.json (`run/record.py`); the identity asks the
same functions of a config (`run.identity.copies_nothing`, `is_baseline`), the sweeper names the baseline presets
from here, and the report reads what the record says instead of deciding again. Before, the same question was
answered by the preset's name in one place, by override text in another and by `cut == 0` in three more.

- copies nothing: `transfer.cut=0`, no block comes from the source (scratch, and scratch_long);
- the baseline: copies nothing *at the arms' budget*, i.e. not scratch_long (`source_compute`, which adds the
  source pretraining's steps: He et al. 2019; a control arm compared with scratch, never the baseline the transfer
  arms' gains are measured against);
- the machine label (`arm_label`): "scratch", "freeze=2 (all) cut=2", ...: fixed per run, so W&B can show it while
  the run is logged and the report can read it back.

Torch-free and import-free: the sweeper and the report import it.
"""

from __future__ import annotations

# The transfer presets that are baselines, each with what it says about the source's compute (the presets' own
# values are transfer/plan.py's BASELINES). A sweep grid that chooses one takes no transfer overrides meant for
# the other arms (sweep/points.py): that is decided on the grid's overrides, before any config is composed.
BASELINE_PRESETS = {"scratch": False, "scratch_long": True}
SCRATCH, SCRATCH_LONG = "scratch", "scratch_long"


def copies_nothing(cut) -> bool:
    """No block is copied from the source model (`transfer.cut=0`; a null cut means every block)."""
    return isinstance(cut, int) and not isinstance(cut, bool) and cut == 0


def is_baseline(cut, source_compute) -> bool:
    """The scratch baseline the transfer arms are paired with: copies nothing, trained at the arms' budget."""
    return copies_nothing(cut) and source_compute is not True


def arm_label(*, cut: int, n_blocks: int | None, freeze: int | None, trainable: str | None = None,
              upper: str = "drop", l2sp: float = 0.0, strategy: str = "fixed", init: str = "source",
              peft: str | None = None, source_compute: bool = False) -> str:
    """The run's arm as one readable label: "scratch" when nothing is copied ("scratch_long" at matched compute);
    else the trainable set ("freeze=f", with " (all)" when every copied block is frozen, or `trainable`, e.g.
    "trainable=[*.bias]" when `freeze` is None), then `cut=k` when the cut keeps fewer than the backbone's
    `n_blocks` (None: unknown, not said), `upper=reinit`, `l2sp=a` when on, the strategy when not fixed, `init=...`
    for a control arm and the PEFT label ("lora r=4")."""
    if copies_nothing(cut):
        return SCRATCH_LONG if source_compute else SCRATCH
    parts = [str(trainable or "trainable") if freeze is None else
             f"freeze={freeze}" + (" (all)" if 0 < freeze == cut else "")]
    if n_blocks is not None and cut < n_blocks:
        parts.append(f"cut={cut}")
    if upper != "drop":
        parts.append(f"upper={upper}")
    if l2sp:
        parts.append(f"l2sp={l2sp:g}")
    if strategy != "fixed":
        parts.append(strategy)
    if init != "source":
        parts.append(f"init={init}")
    if peft:
        parts.append(peft)
    return " ".join(parts)
