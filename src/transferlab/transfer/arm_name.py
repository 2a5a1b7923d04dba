"""The human name of an arm ("linear probe", "fine-tune top 2", "LoRA r=4", "scratch"): one function, read by the
run (W&B's `arm_name`, from its TransferPlan) and by the report (from what each result.json recorded), so a run's
name in W&B, in the report's figures and in its tables is the same words.

Why not "freeze=4 (all)": a reader of a paper knows a linear probe, not a freeze depth; and "freeze=0" reads the
same for full fine-tuning and for scratch, which copies nothing. The machine label (`TransferPlan.arm`, the report's
`arm` column) stays beside the name wherever the name is shown in a CSV, so nothing that groups or filters by it
changes.

The name says what trains, from the recorded fields only:

- nothing copied: `scratch`; at the compute of pretraining + training: `scratch (matched compute)`;
- a trainable set (`transfer.trainable`): `train [<globs>]` (BitFit is `train [*.bias]`);
- copied blocks, k = copied − frozen of them training: `fine-tune all` (k = all copied), `linear probe` (k = 0,
  nothing above the cut: only the head trains), `frozen copy` (k = 0 but `upper=reinit` blocks above the cut
  train: Yosinski's AnB), `fine-tune top k` otherwise;
- a strategy other than fixed replaces the depth's words: `gradual unfreezing`, `LP-FT` (plus `, first f frozen`
  when some blocks never train);
- PEFT on the frozen blocks: `LoRA r=4` / `VPT p=10` (plus `+ top k` when copied blocks also fine-tune);
- a control arm's init: `, control: mean-var init` / `, control: random frozen`.

What varies across a sweep beyond this (cut, source, l2sp, ...) is added by the report, as for the machine label.
"""

from __future__ import annotations

from transferlab.transfer.arm import copies_nothing

SCRATCH = "scratch"
SCRATCH_LONG = "scratch (matched compute)"
STRATEGIES = {"gradual": "gradual unfreezing", "lp_ft": "LP-FT"}
CONTROLS = {"meanvar": "control: mean-var init", "random_frozen": "control: random frozen"}
PEFT_WORDS = {"lora": "LoRA", "vpt": "VPT"}


def _peft_words(label: str | None) -> str | None:
    """'lora r=4' -> 'LoRA r=4' (`config.peft_label`'s form)."""
    if not label:
        return None
    method, _, rest = str(label).partition(" ")
    return " ".join(x for x in (PEFT_WORDS.get(method, method), rest) if x)


def arm_name(*, cut: int | None, freeze: int | None, upper: str | None = "drop", strategy: str | None = "fixed",
             trainable: str | None = None, peft: str | None = None, init: str | None = "source",
             source_compute: bool = False) -> str:
    """The arm's name from the plan's fields (as recorded): `cut` copied blocks, the first `freeze` of them frozen
    (None: a `trainable` set, its label as recorded, e.g. "trainable=[*.bias]"), `peft` as `config.peft_label`
    says it. See the module docstring for the words."""
    if cut is None:
        return trainable or "unknown"
    if copies_nothing(int(cut)):
        return SCRATCH_LONG if source_compute else SCRATCH
    if freeze is None:
        spec = str(trainable or "trainable")
        spec = spec.split("=", 1)[1] if spec.startswith("trainable=") else spec
        name = f"train {spec}"
    else:
        f, cut = int(freeze), int(cut)
        k = max(cut - f, 0)  # copied blocks that train
        if strategy in STRATEGIES:
            name = STRATEGIES[strategy] + (f", first {f} frozen" if f else "")
        elif peft:
            name = _peft_words(peft) + (f" + top {k}" if k else "")
        elif k == cut:
            name = "fine-tune all"
        elif k == 0:
            name = "linear probe" if (upper or "drop") == "drop" else "frozen copy"
        else:
            name = f"fine-tune top {k}"
    if init in CONTROLS:
        name += f", {CONTROLS[init]}"
    return name
