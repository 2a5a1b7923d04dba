"""The result record of one run, `RunRecord`: the schema of result.json, and the only code that writes or reads it.

The run builds a RunRecord, the sweeper and the report read one, so a field is added, renamed or documented in one
place. The JSON layout is the dataclass's: one key per field, in field order, and `metrics` one object keyed by the
logged metric names (`test/acc`, `val/acc_history`, ...), because people and other tools read result.json directly.

Versions: every record states its layout in `schema`; this one is `SCHEMA` (8). Records written before the field
existed are version 0: same field names, read by the same rule as every record. Version 1 lacks the test metrics
beyond accuracy and loss (`test/balanced_acc`, `test/macro_f1`, `test/auroc`, the class counts) and
`single_class_prediction`: they read as None. Version 2 lacks the step budget and model selection (`budget`,
`metrics.steps`, `select`, `selected_epoch`), the convergence verdict (`converged`, `convergence`) and `peft`: None,
"not recorded" (its fit ran `train.max_epochs` epochs, tested the first epoch of best val/acc, and had no PEFT).
Version 3 validated after every epoch: its curves have no `val/epoch_history`, and `Metrics.check_epochs` reads them
as epochs 1, 2, ... (version 4: validation on a schedule, training/budget.py). Version 4 and older were not sealed
(below). Version 5 (sealed) and older lack `tuning`: None, as for an untuned run (tuning inside a point came with
version 6, run/tuning.py). Version 6 lacks the candidates' `hindsight_test` in `tuning` (each candidate's test
numbers measured after the choice, run/hindsight.py): a tuned record of version 6 has no oracle in the report's
selection.csv. Records without `cv` predate train.select=cv (None). Version 7 and older do not say what the run is
(`arm`, `arm_name`, `is_baseline`, `copies_nothing`, `seed_group`, recorded from the plan and identity since
version 8): `from_dict` derives them from what the record holds, in the one clearly marked function
`legacy_run_facts`, so old sweeps still report and their points stay done (the sweeper judges a point by its
fingerprint, which did not change). A field missing from the file takes its default (None, or an empty list: "not
recorded"),
a key the schema does not know is ignored, values are taken as stored. An old record therefore always reads, and
what it did not record (e.g. `num_classes`, `fingerprint`) is None to its readers. A change that renames a field or
changes its meaning or units bumps `SCHEMA` and converts the older versions in `RunRecord.from_dict`.

Sealed: result.json is written with a sha256 sidecar `result.json.sha256` (`store/verified.py`, the caches'
mechanism; `sha256sum -c` checks it too), and `RunRecord.read` checks the bytes it parses against it. A record that
fails (edited by hand, damaged, or its writer stopped between the file and its sidecar) raises `UnsealedRecord`:
every reader then takes it as a failed point with that reason, so the report never shows its numbers and the
sweeper re-runs the point. A record without a sidecar reads only if its `schema` predates sealing
(`SEALED_SINCE`): those were written before checksums existed, and a sealed record whose schema number was edited
down still fails, because its sidecar is there.

Torch-free: the sweeper imports it to judge which points are done.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from transferlab.store import verified

RESULT_FILE = "result.json"
SEALED_SINCE = 5  # the first schema written with a checksum sidecar


class UnsealedRecord(ValueError):
    """A result.json whose bytes fail their checksum: not a result (see the module docstring)."""
SCHEMA = 8  # the layout written by this code; records without `schema` are version 0 (see the module docstring)
FACTS_SINCE = 8  # the first schema that records what the run is (arm, arm_name, is_baseline, copies_nothing,
#                  seed_group); older records get them from `legacy_run_facts`


def _metric(key: str) -> Any:
    return field(default=None, metadata={"key": key})


@dataclass
class Metrics:
    """The target fit's numbers, stored under their logged names. None is "not measured": a failed run has none,
    and its `metrics` is stored as `{}`."""

    test_acc: float | None = _metric("test/acc")  # accuracy of the selected checkpoint on the test split, 0-1
    test_loss: float | None = _metric("test/loss")  # mean cross-entropy of that checkpoint on the test split, nats
    test_balanced_acc: float | None = _metric("test/balanced_acc")  # mean recall over the test split's classes, 0-1
    test_macro_f1: float | None = _metric("test/macro_f1")  # unweighted mean of the per-class F1 scores, 0-1
    test_auroc: float | None = _metric("test/auroc")  # binary: ROC AUC of P(class 1); else one-vs-rest macro mean
    test_class_counts: list[int] | None = _metric("test/class_counts")  # test examples per class (index = class)
    test_pred_counts: list[int] | None = _metric("test/pred_counts")  # test predictions per class (index = class)
    val_acc: float | None = _metric("val/acc")  # validation accuracy of the tested model (train.select), 0-1
    # validation accuracy and loss (nats) at each validation check, the first first (schema < 4: every epoch)
    val_acc_history: list[float] | None = _metric("val/acc_history")
    val_loss_history: list[float] | None = _metric("val/loss_history")
    # the 1-based epoch each check followed (training/budget.py, the validation schedule); None: every epoch
    val_epoch_history: list[int] | None = _metric("val/epoch_history")
    epochs: int | None = _metric("epochs")  # epochs trained, those of a resumed earlier attempt included
    steps: int | None = _metric("steps")  # optimizer steps done (global_step), a resumed attempt's included

    @property
    def check_epochs(self) -> list[int]:
        """The 1-based epoch of each point of the validation curves (a record without them validated every
        epoch)."""
        n = len(self.val_acc_history or [])
        epochs = list(self.val_epoch_history or [])
        return epochs if len(epochs) == n else list(range(1, n + 1))

    @property
    def majority_acc(self) -> float | None:
        """Test accuracy of always predicting the test split's largest class: the floor a model must beat, and
        what one that collapsed to that class scores. None without recorded class counts."""
        counts = self.test_class_counts
        return max(counts) / sum(counts) if counts and sum(counts) else None

    @property
    def single_class(self) -> bool | None:
        """Did the tested model predict one class for every test example (a collapse that accuracy alone hides
        on an imbalanced task)? None without recorded prediction counts."""
        counts = self.test_pred_counts
        return sum(1 for c in counts if c) == 1 if counts else None

    def to_dict(self) -> dict[str, Any]:
        return {f.metadata["key"]: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, stored: Any) -> Metrics:
        """Metrics from their stored object; anything but an object (a hand-edited `null`) reads as none measured."""
        if not isinstance(stored, Mapping):
            return cls()
        return cls(**{f.name: stored[f.metadata["key"]] for f in fields(cls) if f.metadata["key"] in stored})


@dataclass(kw_only=True)
class RunRecord:
    """One run's result.json. Defaults are what a record that lacks the field reads as."""

    schema: int = SCHEMA  # layout version of this record (0: written before the field existed)
    status: str | None = None  # "running" while the run is in progress (never on disk), then "ok" or "failed"
    error: str | None = None  # "<ExceptionType>: <message>" of a failed run; None when ok
    name: str | None = None  # the config's `name`: the experiment or sweep name
    # source task name; None for the scratch baseline (cut=0, nothing copied or counted). Named also when no source
    # weight is read: scratch_long (its pretraining's steps are added) and random_frozen (the blocks it replaces)
    source: str | None = None
    target: str | None = None  # target task name
    backbone: str | None = None  # backbone label (architecture and its initial weights)
    transfer: str | None = None  # transfer preset name (`transfer.name`: finetune, linear_probe, scratch, custom)
    # What the run is, as its plan and identity decided at run time (transfer/arm.py, run/identity.py). Readers take
    # these as recorded and decide none of them again.
    arm: str | None = None  # the arm's machine label (`TransferPlan.arm`: "scratch", "freeze=2 (all) cut=2", ...)
    arm_name: str | None = None  # its human name (`TransferPlan.name`: "linear probe", "fine-tune top 2", ...)
    is_baseline: bool | None = None  # the scratch baseline transfer arms are paired with (scratch_long is not)
    copies_nothing: bool | None = None  # no block copied from the source (transfer.cut=0: scratch, scratch_long)
    seed_group: str | None = None  # the identity without the replicate keys (`identity.seed_group_key`, 16 hex)
    strategy: str | None = None  # when copied blocks start training: fixed, gradual or lp_ft
    cut: int | None = None  # number of leading backbone blocks copied from the source model
    upper: str | None = None  # blocks above the cut: drop (removed) or reinit (kept, random weights)
    freeze: int | None = None  # number of leading kept blocks frozen; None for a `transfer.trainable` set
    frozen_blocks: list[str] = field(default_factory=list)  # blocks frozen for the whole fit
    trainable_set: str | None = None  # label of what trains ("freeze=2", "trainable=[*.bias]", plus strategy)
    bn: str | None = None  # BatchNorm policy inside training blocks: frozen or train
    unfreeze_epochs: dict[str, int | None] | None = None  # block -> first epoch it trains (0-based; None: never)
    trainable_blocks: list[str] = field(default_factory=list)  # blocks with a parameter that trains, then "head"
    trainable_params: int | None = None  # parameters that train at some point of the fit (count)
    total_params: int | None = None  # parameters of the target network (count)
    # parameter-efficient fine-tuning (transfer/peft.py): {"method": "none"} or {"method": "lora"|"vpt", its
    # settings, "sites", "blocks", "params" (count it added), "merged" (merged.safetensors path or None)}
    peft: dict[str, Any] | None = None
    n_per_class: int | None = None  # labelled target examples per class asked for; None: the whole train pool
    n_train: int | None = None  # labelled target examples trained on (count)
    num_classes: int | None = None  # classes of the target task (count)
    n_val: int | None = None  # target validation examples (count)
    n_test: int | None = None  # target test examples (count)
    seed: int | None = None  # training seed (initialisation, batch order)
    data_seed: int | None = None  # seed that drew the labelled subset from the train pool
    # the fit's step budget (training/budget.py): budget, max_epochs, min_steps, max_steps, n_train, batch_size,
    # steps_per_epoch, target_steps (asked), source_steps (scratch_long), epochs and steps planned, rule
    budget: dict[str, Any] | None = None
    select: str | None = None  # which epoch's model was tested (train.select): best_val, last, fixed_epoch,
    #                            val_in_budget (best_val on a val split carved out of the n: tasks/budget_val.py)
    #                            or cv (k-fold cross-validation inside the n chose the steps: run/cv.py)
    labels_used: int | None = None  # labelled target examples that influenced the model (run/labels.py): the
    #                                 training subset, plus the val split when selection or the LR schedule read it
    selected_epoch: int | None = None  # 1-based epoch of the tested model
    # tuning inside a point (`tune.train.*`, run/tuning.py); None: not tuned. {"keys", "grid" (key -> values),
    # "protocol" (train.select, select_epoch), "score" (what ranks candidates), "rule", "hindsight" (what
    # hindsight_test is), "candidates" (each: index, values, fingerprint, dir, status, score, val_loss,
    # selected_epoch, epochs, steps, reused, wall_s, error, hindsight_test: {"test/acc", "test/loss",
    # "test/balanced_acc", "test/macro_f1", "test/auroc"} of its kept model, measured after the choice and never
    # read by it (run/hindsight.py); None for a failed candidate), "chosen" (key -> value of the tested
    # candidate), "chosen_index"}; the rest of the record is that candidate's, under the point's fingerprint and
    # config, and labels_used counts the val split the choice read
    tuning: dict[str, Any] | None = None
    # train.select=cv (run/cv.py); None otherwise, and in records written before cv existed. {"k", "cv_folds",
    # "design", "rule", "fold_of" (the fold of each train_indices entry), "fold_budget" (the fold fits' step plan),
    # "folds" (each: index, fingerprint, n_train, n_val, steps_per_epoch, epochs, steps, history, wall_s, reused),
    # "mean" (epoch, step, val/acc, val/loss at each check), "chosen" (index, epoch, step, val/acc, val/loss),
    # "final" (n_train, steps_per_epoch, epochs, steps, planned_epochs: the fit on all n), "fits" (k + 1)};
    # metrics.val/acc is then the chosen mean held-out accuracy, and labels_used is n
    cv: dict[str, Any] | None = None
    metrics: Metrics = field(default_factory=Metrics)  # the target fit's numbers (see Metrics)
    single_class_prediction: bool | None = None  # the tested model predicted one class on all of test (Metrics)
    converged: bool | None = None  # False: val/acc still rising at the end (run/convergence.py); None: not judged
    convergence: dict[str, Any] | None = None  # that verdict: epochs, window, late/earlier best, gain, noise, margin
    # source model: hit / miss (cache; stacked: a miss its vectorised group pretrained in one stacked fit,
    # run/source_stack.py), none (backbone's initial weights), unused
    source_cache: str | None = None
    source_ckpt: str | None = None  # path of the cached source model whose blocks were copied
    source_metrics: dict[str, Any] | None = None  # source model's pretraining numbers (test/acc, ...), its W&B run
    target_ckpt: str | None = None  # path of the selected target checkpoint (the one tested, train.select)
    train_indices: list[int] = field(default_factory=list)  # indices into the target train pool that were trained on
    target_data: dict[str, Any] | None = None  # files read, input adaptation (channels, size, normalisation), splits
    feature_cache: dict[str, Any] | None = None  # frozen-prefix feature cache: status, depth, reason, key, path
    # vectorised seed group (hydra.sweeper.vectorize=seeds): leader point, size, mode (stacked | sequential) and
    # why sequential; None for a run of its own
    group: dict[str, Any] | None = None
    # transferability scores (`transfer.scores`) of the copied features on the training subset, before training:
    # {"methods": {name: {"value", "time_s", "reason"}}, "inputs": {...}, "time_s"} (run/scoring.py); None: off
    scores: dict[str, Any] | None = None
    resumed_from: str | None = None  # last.ckpt of a killed earlier attempt this fit continued; None: from zero
    # wall-clock time of the whole run, source pretraining included, seconds; a vectorised group's member: an equal
    # share of the group's common time plus its own (sweep/group_job.py)
    wall_s: float | None = None
    config: dict[str, Any] | None = None  # the resolved config
    fingerprint: str | None = None  # run identity (`identity.fingerprint`): config and input contents, hashed
    inputs: dict[str, Any] | None = None  # role -> files read and their sha256 (`identity.inputs`)
    environment: dict[str, Any] | None = None  # Python, library and transferlab versions, git commit (`identity`)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored in result.json."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["metrics"] = self.metrics.to_dict()
        return out

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> RunRecord:
        """A record from a stored object of any version (the rule is in the module docstring)."""
        values = {f.name: stored[f.name] for f in fields(cls) if f.name in stored}
        values["schema"] = stored.get("schema", 0)
        values["metrics"] = Metrics.from_dict(stored.get("metrics"))
        schema = values["schema"]
        if not isinstance(schema, int) or schema < FACTS_SINCE:
            try:
                values.update(legacy_run_facts(stored))
            except Exception as e:  # noqa: BLE001 - an odd old record: not a record (readers judge it failed)
                raise ValueError(f"a record of schema {schema!r} whose run facts cannot be derived: "
                                 f"{type(e).__name__}: {e}") from None
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """The record in a result.json, checked against its sidecar; OSError if unreadable, ValueError if it is not
        a JSON object, `UnsealedRecord` (a ValueError) if its bytes fail their checksum."""
        data = Path(path).read_bytes()
        stored = json.loads(data)
        if not isinstance(stored, Mapping):
            raise ValueError(f"{path} holds a JSON {type(stored).__name__}, not a result record")
        schema = stored.get("schema", 0)
        legacy = isinstance(schema, int) and schema < SEALED_SINCE and not verified.sidecar(path).exists()
        why = None if legacy else verified.bytes_problem(path, data)
        if why:
            raise UnsealedRecord(f"{Path(path).name} is not read as a result, it fails its checksum (edited by hand, "
                                 f"damaged, or written only in part): {why}")
        return cls.from_dict(stored)

    def write(self, run_dir: str | Path) -> Path:
        """Write `run_dir/result.json` atomically (a reader never sees half a record), then seal it."""
        path = Path(run_dir) / RESULT_FILE
        text = json.dumps(self.to_dict(), indent=2, default=str)

        def dump(tmp: Path) -> None:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        verified.write_with(path, dump)
        return path


# ---------------------------------------------------------------- LEGACY: records written before schema 8
def legacy_run_facts(stored: Mapping[str, Any]) -> dict[str, Any]:
    """LEGACY, for records of schema < `FACTS_SINCE` only, which do not say what the run is: `arm`, `arm_name`,
    `is_baseline`, `copies_nothing` and `seed_group` derived from the fields and config they did record, with the
    functions a run asks today (transfer/arm.py, transfer/arm_name.py, `identity.seed_group_key`), so an old sweep
    still reports, and its finished points are not run again. What cannot be known is left out: the backbone's
    block count (the label says `cut=k` only when a run recorded it) and, without a config, the group key (None).
    A record without `cut` (schema 0, a failed run) is judged by its preset's name, as reports did then."""
    from transferlab.config import peft_label
    from transferlab.run import identity
    from transferlab.transfer import arm
    from transferlab.transfer.arm_name import arm_name

    config = stored.get("config") if isinstance(stored.get("config"), Mapping) else {}
    cut, preset = stored.get("cut"), stored.get("transfer")
    compute = identity.get(config, "transfer.source_compute") is True
    if cut is None and preset in arm.BASELINE_PRESETS:
        cut, compute = 0, arm.BASELINE_PRESETS[preset]
    out: dict[str, Any] = {"copies_nothing": arm.copies_nothing(cut), "is_baseline": arm.is_baseline(cut, compute),
                           "arm": None, "arm_name": None, "seed_group": None}
    if isinstance(cut, int) and not isinstance(cut, bool):
        f = stored.get("freeze")
        freeze = f if isinstance(f, int) and not isinstance(f, bool) else None
        trainable = str(stored.get("trainable_set") or "") or None
        spec = trainable.split("]", 1)[0] + "]" if trainable and trainable.startswith("trainable=[") else trainable
        init = str(identity.get(config, "transfer.init") or "source")
        peft = peft_label(stored.get("peft") if isinstance(stored.get("peft"), Mapping) else None)
        out["arm"] = arm.arm_label(cut=cut, n_blocks=None, freeze=freeze, trainable=spec,
                                   upper=str(stored.get("upper") or "drop"),
                                   l2sp=float(identity.get(config, "transfer.l2sp") or 0.0),
                                   strategy=str(stored.get("strategy") or "fixed"), init=init, peft=peft,
                                   source_compute=compute)
        out["arm_name"] = arm_name(cut=cut, freeze=freeze, upper=stored.get("upper"), strategy=stored.get("strategy"),
                                   trainable=trainable, peft=peft, init=init, source_compute=compute)
    if config:
        ins = stored.get("inputs") if isinstance(stored.get("inputs"), Mapping) else {}
        try:
            out["seed_group"] = identity.seed_group_key(config, ins)
        except Exception:  # noqa: BLE001 - a hand-edited config: no key, the record still reads
            out["seed_group"] = None
    return out


def find_results(root: str | Path) -> Iterator[Path]:
    """Every result.json below `root` (temp files are named differently and never match)."""
    yield from sorted(Path(root).rglob(RESULT_FILE))


def cache_entries_used(sweep_dirs: Iterable[str | Path]) -> dict[tuple[str, str], set[str]]:
    """{(kind, key): names of the sweeps whose runs used that cache entry}, from their result.json files:
    `source_ckpt` names the source entry, `feature_cache.key` the feature entry (`transferlab-cache`)."""
    used: dict[tuple[str, str], set[str]] = {}
    for sweep in map(Path, sweep_dirs):
        for path in find_results(sweep):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("source_ckpt"):
                used.setdefault(("source", Path(record["source_ckpt"]).parent.name), set()).add(sweep.name)
            key = (record.get("feature_cache") or {}).get("key")
            if key:
                used.setdefault(("features", key), set()).add(sweep.name)
    return used
