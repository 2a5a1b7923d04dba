"""Every result.json under a sweep folder -> tidy pandas rows (one per distinct run), grouped by run identity; the
sweep's own record of its points (sweep.json) -> what was declared and what became of each point (judged by
`sweep.ledger`, as the sweeper and `transferlab-status` judge it); learning curves.

Reads only through `transferlab.run.record.RunRecord`, so the record schema has one owner: a row is made of a
record's fields, and a field a record lacks is missing in the row (NaN, None), never a default chosen here. The
validation curve stays a list per row (`val_acc_history`). Failed runs are kept (status column) so the report can
list them; statistics use the `ok` rows only.

Which runs are "the same" is decided once, by `transferlab.run.identity`; this module turns that decision into the
report's groups, and every table, figure and count groups by the key columns made here (never by labels or by a
hand-picked list of fields, which is how runs that differed in `train.lr`, in their data files or in
`transfer.l2sp` used to be pooled as seeds of one arm):

- `fingerprint`: one run. Two result.json with the same fingerprint (a copied folder, or an older sweep's folder
  named by another argument order) are one run, not two seeds: one is kept, the others are listed as duplicates.
- `arm_key`: the identity without the seeds (`identity.REPLICATES`): runs pooled as seeds of one arm at one n.
- `line_key`: ... and without the sample size (`identity.SAMPLE_SIZE`): one arm across n, a line of a figure.
- `setting_key`: ... and without the arm keys (`identity.ARM_GROUPS`): runs drawn in one panel, compared with each
  other and with their scratch baseline.
- `baseline_key`: the `line_key` of the scratch line of the same setting a transfer row is paired with.
- `context_key`: the setting without its target task, to find Yosinski's base A (scratch on the source task).

Labels (`setting`, `arm`) are for people: made of what differs between the keys, and asserted one-to-one with them.

What a run is comes from its record, as its plan and identity decided it at run time (`RunRecord.arm`, `arm_name`,
`is_baseline`, `copies_nothing`, `seed_group`; transfer/arm.py): the report derives none of it. `arm_key` is the
recorded `seed_group`; an arm's label starts from the recorded `arm`. Records older than those fields get them from
`run.record.legacy_run_facts`, the one place that derives them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from transferlab.config import cli_value
from transferlab.run import identity
from transferlab.run.record import RunRecord, find_results
from transferlab.sweep.ledger import SWEEP_FILE, SweepRecord, judge_sweep, read_record, read_results
KEYS = ("fingerprint", "setting_key", "context_key", "line_key", "arm_key", "baseline_key")
# What the recorded arm label already says ("freeze=2 (all)", "cut=3", "upper=reinit", "l2sp=0.01", "gradual", a
# trainable set: `TransferPlan.arm`): these arm keys are not repeated after it. `transfer.name` is what the preset
# was called (finetune, linear_probe, frozen); the label says what it does.
LABELLED = ("transfer.name", "transfer.freeze", "transfer.trainable", "transfer.cut", "transfer.upper",
            "transfer.strategy", "transfer.source_compute", "transfer.init", "transfer.l2sp")
ROLE_LABELS = {"target": "data", "source": "source data", "backbone.weights": "weights"}
IMPLIED = ("train.cv_design",)  # identity keys another key's label already says (train.select=cv): never shown


def _num_classes(record: RunRecord) -> int | None:
    if record.num_classes:  # recorded by the run (relabelled or all-class tasks have no class list)
        return int(record.num_classes)
    classes = identity.get(record.config or {}, "target.classes")
    return len(classes) if isinstance(classes, list) and classes else None


def _effective_n(record: RunRecord) -> tuple[float, str]:
    """(numeric n per class for a log axis, label). n_per_class=null means the whole pool ("all") unless the
    config asked for a stratified total (`target.n_train`, labelled "N=<total>": two totals are two sample sizes)."""
    if record.n_per_class is not None:
        return float(record.n_per_class), str(int(record.n_per_class))
    k = _num_classes(record)
    n_train = _number(record.n_train)
    total = identity.get(record.config or {}, "target.n_train")
    label = "all" if total is None else f"N={int(total)}"
    return (n_train / k if k else n_train), label


def _number(v: float | int | None) -> float:
    """A recorded number as a float column value: NaN where the record has none (pandas' missing number)."""
    return np.nan if v is None else float(v)


# list-valued columns of a run's row: its validation curve and the 1-based epoch of each point of it (kept out of
# table cells and results.csv; `curves` writes them long)
CURVE_COLUMNS = ("val_acc_history", "val_epochs")
SCORE_PREFIX = "score_"  # one column per transferability score a run recorded (`RunRecord.scores`)


def score_columns(record: RunRecord) -> dict[str, float]:
    """`score_<method>`: the transferability scores the run recorded; NaN where one was skipped or undefined."""
    methods = record.scores.get("methods") if isinstance(record.scores, Mapping) else None
    if not isinstance(methods, Mapping):
        return {}
    return {SCORE_PREFIX + str(name): _number(v.get("value") if isinstance(v, Mapping) else None)
            for name, v in methods.items()}


def _peft_label(peft: Mapping | None) -> str | None:
    from transferlab.config import peft_label

    return peft_label(peft)


def _tuned(record: RunRecord) -> str | None:
    """The values a tuned point chose, as on the command line ("train.lr=0.01, train.weight_decay=0")."""
    from transferlab.config import cli_value

    chosen = (record.tuning or {}).get("chosen") if isinstance(record.tuning, Mapping) else None
    return ", ".join(f"{k}={cli_value(v)}" for k, v in chosen.items()) if chosen else None


def record_to_row(record: RunRecord, run_dir: str) -> dict[str, Any]:
    """The report's row of one record. `val_acc_history` and `val_epochs` (the epoch of each validation check)
    stay lists (one per row); `epochs` is the epoch of the last check, or the recorded count for a run without a
    curve."""
    m = record.metrics
    hist, at = list(m.val_acc_history or []), m.check_epochs
    n, n_label = _effective_n(record)
    return {
        "run_dir": run_dir, "status": record.status, "error": record.error,
        "name": record.name, "source": record.source, "target": record.target,
        "backbone": record.backbone, "transfer": record.transfer, "strategy": record.strategy,
        "cut": record.cut, "upper": record.upper, "freeze": record.freeze, "trainable_set": record.trainable_set,
        "peft": _peft_label(record.peft),  # 'lora r=4', 'vpt p=10'; None without PEFT
        # what the copied blocks held: source (the default, and every record made before the control arms), or
        # a control arm's meanvar / random_frozen (transfer/init.py)
        "init": str(identity.get(record.config or {}, "transfer.init") or "source"),
        "trainable_params": record.trainable_params, "total_params": record.total_params,
        "n_per_class": record.n_per_class, "n": n, "n_label": n_label, "n_train": record.n_train,
        "seed": record.seed, "data_seed": record.data_seed,
        # the selection protocol and the labels that shaped the model (run/labels.py; None: not recorded)
        "select": record.select, "labels_used": record.labels_used,
        # a tuned point's chosen values ("train.lr=0.01"; run/tuning.py); None: not tuned
        "tuned": _tuned(record),
        "test_acc": _number(m.test_acc), "test_loss": _number(m.test_loss), "val_acc": _number(m.val_acc),
        # class-balance-aware test metrics, and the floor they are read against (NaN/None: not recorded)
        "test_balanced_acc": _number(m.test_balanced_acc), "test_macro_f1": _number(m.test_macro_f1),
        "test_auroc": _number(m.test_auroc), "majority_acc": _number(m.majority_acc),
        "single_class": record.single_class_prediction,
        "epochs": at[-1] if hist else m.epochs, "steps": m.steps,
        "converged": record.converged,  # False: val/acc still rising at the end (run/convergence.py); None: unjudged
        "wall_s": record.wall_s, "source_cache": record.source_cache, "source_ckpt": record.source_ckpt,
        # what the run is, as it recorded it (transfer/arm.py): the scratch baseline transfer arms are paired with
        # (scratch_long copies nothing too, but is a control arm), whether it copied any block, its machine label
        # and its human name (`transfer.arm_name`, the words W&B shows too)
        "is_scratch": bool(record.is_baseline), "copies_nothing": bool(record.copies_nothing),
        "run_arm": record.arm, "arm_name": record.arm_name,
        "val_acc_history": hist, "val_epochs": at,
        **score_columns(record),
    }


# ---------------------------------------------------------------- identity of one record
@dataclass
class _Identity:
    """A record's keys, and the reduced identity configs its labels are made from."""
    keys: dict[str, str]
    recorded: bool                  # the record carries its own fingerprint (else derived from its config)
    setting: tuple[dict, dict]      # (identity config, input digests) without seeds, sample size, arm keys
    line: tuple[dict, dict]         # the arm-key part of the identity (transfer, source, pretrain) and its inputs


def _identity(record: RunRecord) -> _Identity | None:
    """Keys of a record with a config. Records written before run identity lack `fingerprint` and `inputs`: their
    keys come from the config alone (inputs unknown), so they group with each other, never with recorded runs."""
    config = record.config
    if not isinstance(config, Mapping):
        return None
    ins = record.inputs if isinstance(record.inputs, Mapping) else {}
    recorded = bool(record.fingerprint) and isinstance(record.inputs, Mapping)
    rep, size, arms = identity.REPLICATES, identity.SAMPLE_SIZE, identity.ARM_GROUPS
    keys = {
        "fingerprint": str(record.fingerprint) if recorded else identity.fingerprint(config, ins),
        "arm_key": record.seed_group,  # recorded by the run (`identity.seed_group_key`)
        "line_key": identity.group_key(config, ins, without=rep + size),
        "setting_key": identity.group_key(config, ins, without=rep + size + arms),
        "context_key": identity.group_key(config, ins, without=rep + size + arms + ("target",)),
    }
    line_cfg, line_ins = identity.group_config(config, ins, rep + size)
    return _Identity(keys=keys, recorded=recorded, setting=identity.group_config(config, ins, rep + size + arms),
                     line=({k: line_cfg[k] for k in arms if k in line_cfg},
                           {r: d for r, d in line_ins.items() if r in arms}))


# ---------------------------------------------------------------- labels
def _digest_label(sha: str | None) -> str:
    return "unrecorded" if sha is None else sha[:8]


def _differences(items: Mapping[str, tuple[dict, dict]], skip: Iterable[str] = ()) -> dict[str, list[str]]:
    """{key: ["k=v", ...]}: the config keys and input contents (by role) whose values differ between these items,
    except those in `skip`."""
    skip = set(skip) | set(IMPLIED)
    keys = [k for k in identity.differing_keys([c for c, _ in items.values()]) if k not in skip]
    roles = sorted({r for _, ins in items.values() for r in ins} - skip)
    roles = [r for r in roles if len({ins.get(r) for _, ins in items.values()}) > 1]
    return {key: [f"{k}={cli_value(identity.get(c, k))}" for k in keys if _holds(c, k)]
            + [f"{ROLE_LABELS.get(r, r)}={_digest_label(ins.get(r))}" for r in roles]
            for key, (c, ins) in items.items()}


_ABSENT = object()


def _holds(config: Mapping, dotted: str) -> bool:
    """Does the identity config hold this key (a key only some runs' identity has, e.g. `train.cv_folds` under
    cv, is left out of the others' labels rather than shown as null)?"""
    return identity.get(config, dotted, _ABSENT) is not _ABSENT


def _unique(labels: dict[str, str]) -> dict[str, str]:
    """Labels made unique per key: a short hash of the key appended where two keys still share one (values that
    print alike, e.g. 1 and "1"). Asserted: a label names exactly one key."""
    seen: dict[str, list[str]] = defaultdict(list)
    for key, label in labels.items():
        seen[label].append(key)
    out = {key: (f"{label} #{key[:6]}" if len(seen[label]) > 1 else label) for key, label in labels.items()}
    assert len(set(out.values())) == len(out), f"labels are not unique per key: {out}"
    return out


def setting_labels(settings: Mapping[str, tuple[str, tuple[dict, dict]]], shown: Iterable[str]) -> dict[str, str]:
    """{setting_key: "target / backbone"}, followed by the keys that differ between settings sharing that target
    and backbone (`digits_5to9 / small_cnn / train.lr=0.01`), or by the data's content hash when only the files
    differ (`xray / small_cnn / data=3f2a9c1b`).

    The settings `shown` (those with an ok run: the panels) are labelled by what differs among them, so a failed
    run of another config does not rename every panel and figure; the others by what differs among all."""
    shown = set(shown)
    labels = {}
    for group in ({k: v for k, v in settings.items() if k in shown}, settings):
        by_base: dict[str, dict[str, tuple[dict, dict]]] = defaultdict(dict)
        for key, (base, reduced) in group.items():
            by_base[base][key] = reduced
        for base, items in by_base.items():
            diffs = _differences(items) if len(items) > 1 else {key: [] for key in items}
            labels.update({key: " / ".join([base, " ".join(parts)]) if parts else base
                           for key, parts in diffs.items() if key not in labels})
    return _unique(labels)


def _readable(r: Mapping, varies: Mapping[str, bool]) -> str:
    """The short readable arm label: the one the run recorded (`TransferPlan.arm`: "scratch", "freeze=2 (all)
    cut=2", ...), then the source where the setting's transfer arms come from several."""
    label = str(r.get("run_arm") or r.get("transfer"))
    if varies["source"] and not r["copies_nothing"]:
        label += f" from {r['source']}"
    return label


@dataclass
class _Lines:
    label: dict[str, str] = field(default_factory=dict)      # line_key -> arm label
    variant: dict[str, str] = field(default_factory=dict)    # line_key -> the part after the readable label
    name: dict[str, str] = field(default_factory=dict)       # line_key -> the arm's human name (`_names`)
    baseline: dict[str, str | None] = field(default_factory=dict)  # transfer line_key -> scratch line_key
    notes: list[str] = field(default_factory=list)


def arm_lines(rows: pd.DataFrame, line_ids: Mapping[str, tuple[dict, dict]], setting: str) -> _Lines:
    """Labels and baselines of the lines (arms across n) of one setting.

    A line's label is the readable one, then the arm keys (transfer, source, pretrain) that differ between the
    setting's transfer lines and that it does not already say (`freeze=0 transfer.l2sp=0.01`); lines whose labels
    still coincide get the keys that differ among them; a short hash is the last resort. Each transfer line is
    paired with the scratch line of its setting; with several scratch lines (they differ in some transfer key,
    e.g. a sweep over `transfer.l2sp` that included scratch), with the one that agrees on those keys.
    """
    out = _Lines()
    transfer = rows[~rows["copies_nothing"].astype(bool)]  # the arms that copy blocks (not scratch, scratch_long)
    varies = {k: transfer[k].nunique(dropna=False) > 1 for k in ("source", "cut", "upper", "strategy")}
    first = rows.drop_duplicates("line_key").set_index("line_key")
    readable = {lk: _readable(r, varies) for lk, r in first.iterrows()}
    scratch = [lk for lk in first.index if first.loc[lk, "is_scratch"]]
    others = [lk for lk in first.index if lk not in scratch]
    extra: dict[str, list[str]] = {lk: [] for lk in first.index}
    for group in (others, scratch):
        if len(group) < 2:
            continue
        items = {lk: line_ids[lk] for lk in group}
        said: set[str] = set()
        if group is others:
            said = set(LABELLED)
            differ = identity.differing_keys([c for c, _ in items.values()])
            said |= {k for k in differ if k.startswith("peft.")}  # the readable label says the method
            if "source.name" in differ:  # "from <source>" says it, and what comes with another source preset
                said |= {k for k in differ if k.startswith("source.")} | {"source"}
        extra.update(_differences(items, skip=said))
    label = lambda lk: " ".join([readable[lk], *extra[lk]])  # noqa: E731
    clashes: dict[str, list[str]] = defaultdict(list)
    for lk in first.index:
        clashes[label(lk)].append(lk)
    for group in clashes.values():
        if len(group) > 1:  # e.g. linear_probe vs finetune with freeze=all: only keys the label "says" differ
            for lk, parts in _differences({lk: line_ids[lk] for lk in group}).items():
                extra[lk] += [p for p in parts if p not in extra[lk]]
    out.label = _unique({lk: label(lk) for lk in first.index})
    out.variant = {lk: out.label[lk][len(readable[lk]):].strip() for lk in out.label}
    out.name = _names(first, varies, extra, out.label)
    for lk in others:
        out.baseline[lk] = _baseline(lk, scratch, line_ids)
    lost = [out.label[lk] for lk in others if out.baseline[lk] is None and scratch]
    if lost:
        out.notes.append(f"{setting}: no single scratch baseline for {', '.join(lost)} (its scratch arms "
                         f"{', '.join(out.label[s] for s in scratch)} differ in keys it does not decide); "
                         "no gain over scratch for it")
    return out


def _names(first: pd.DataFrame, varies: Mapping[str, bool], extra: Mapping[str, list[str]],
           labels: Mapping[str, str]) -> dict[str, str]:
    """line_key -> the arm's human name for figures and tables: the recorded name (`arm_name` column,
    `transfer.arm_name`) and then what the machine label adds because it varies in this setting (cut, upper, the
    strategy of a trainable set, the source, other arm keys). Two lines whose names still coincide get their machine
    label in brackets, so a name, like a label, names one line of its setting."""
    names = {}
    for lk, r in first.iterrows():
        if r["is_scratch"]:
            names[lk] = str(r.get("arm_name") or labels[lk])
            continue
        parts = [str(r.get("arm_name") or labels[lk])]
        if not r["copies_nothing"]:
            if varies["cut"]:
                parts.append(f"cut={r['cut']}")
            if varies["upper"]:
                parts.append(f"upper={r['upper']}")
            if varies["strategy"] and pd.isna(r["freeze"]) and r["strategy"] != "fixed":
                parts.append(str(r["strategy"]))
            if varies["source"]:
                parts.append(f"from {r['source']}")
        names[lk] = " ".join([*parts, *extra[lk]])
    seen: dict[str, list[str]] = defaultdict(list)
    for lk, name in names.items():
        seen[name].append(lk)
    return _unique({lk: (f"{name} ({labels[lk]})" if len(seen[name]) > 1 else name) for lk, name in names.items()})


def _baseline(line: str, scratch: list[str], line_ids: Mapping[str, tuple[dict, dict]]) -> str | None:
    """The scratch line a transfer line is paired with: the only one, or the one that agrees with it on every key
    the scratch lines differ in; None when that is not exactly one."""
    if len(scratch) <= 1:
        return scratch[0] if scratch else None
    differ = identity.differing_keys([line_ids[s][0] for s in scratch])
    value = lambda lk, k: json.dumps(identity.get(line_ids[lk][0], k), sort_keys=True, default=str)  # noqa: E731
    match = [s for s in scratch if all(value(s, k) == value(line, k) for k in differ)]
    return match[0] if len(match) == 1 else None


# ---------------------------------------------------------------- the sweep record
def read_sweep_record(sweep_dir: str | Path) -> tuple[SweepRecord | None, str | None]:
    """(sweep.json as the sweeper wrote it, or None; a note if it exists but cannot be read)."""
    try:
        return SweepRecord.read(sweep_dir), None
    except FileNotFoundError:
        return None, None
    except ValueError as e:
        return None, f"{e}: counts inferred from the results found"


def point_states(sweep_dir: str | Path, record: SweepRecord | None = None,
                 results: Mapping[str, RunRecord | str] | None = None) -> pd.DataFrame:
    """One row per distinct point the sweep declared, in its order: its folder, overrides, fingerprint, the
    sweeper's status (`declared`) and recorded error, its state and the reason (`ledger.judge_sweep`: the judgement
    the sweeper and `transferlab-status` make, in their words: done, failed, running, queued, stale, missing,
    dropped), and the folder holding its result (`result_dir`: an ok result of its fingerprint, or its own failed
    one; none when it failed without a result). Points with the same fingerprint (one config reached by two folder
    names) are one point, counted once, in the best state any of its folders is in; `also` names the others.
    `record`, `results`: sweep.json and the result files when the caller has read them (`judge_sweep`)."""
    record, judged = judge_sweep(sweep_dir, record=record, results=results)
    entries = {e.name: e for e in record.points}
    rows = []
    for order, p in enumerate(judged):
        e = entries[p.name]
        result_dir = p.folder if p.state in ("done", "failed") else None
        rows.append({"run_dir": e.folder, "overrides": " ".join(e.overrides or []), "hash": e.hash,
                     "declared": e.status, "state": p.state, "reason": p.reason, "result_dir": result_dir,
                     "error": e.error, "order": order})
    cols = ["run_dir", "overrides", "hash", "declared", "state", "reason", "result_dir", "error", "also"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows).assign(rank=lambda d: d["state"].map(BEST_FIRST.index))
    df["point"] = df["hash"].where(df["hash"].notna(), df["run_dir"])
    out = []
    for _, g in df.sort_values(["rank", "order"]).groupby("point", sort=False):
        out.append({**g.iloc[0].to_dict(), "also": ", ".join(g["run_dir"].iloc[1:])})
    return pd.DataFrame(out).sort_values("order").reindex(columns=cols).reset_index(drop=True)


BEST_FIRST = ("done", "running", "queued", "failed", "stale", "missing", "dropped")  # a point's best folder first


def inferred_missing(df: pd.DataFrame) -> pd.DataFrame:
    """Without a sweep record: (arm, n, seed) combinations of each setting's own axes with no result.json at all."""
    rows = []
    cols = ["setting", "arm", "n_label", "seed"]
    for _, g in df.dropna(subset=["arm"]).groupby("setting_key", sort=False):
        seen = set(zip(g["arm"], g["n_label"], g["seed"]))
        ns = g.drop_duplicates("n_label").sort_values("n")["n_label"]
        for arm in sorted(g["arm"].unique()):
            for n in ns:
                for seed in sorted(g["seed"].dropna().unique()):
                    if (arm, n, seed) not in seen:
                        rows.append({"setting": g["setting"].iloc[0], "arm": arm, "n_label": n, "seed": int(seed)})
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------- the whole folder
@dataclass
class Collection:
    runs: pd.DataFrame                   # one row per distinct run (ok and failed), grouping keys and labels
    duplicates: pd.DataFrame             # run_dir, fingerprint, kept: copies of a run that is counted once
    sweep: SweepRecord | None            # sweep.json, when the folder has one
    points: pd.DataFrame | None          # point_states() of sweep.json, else None
    notes: list[str] = field(default_factory=list)  # what the reader must know about the grouping


def _keeper(rows: list[dict], named: set[str]) -> dict:
    """Of several copies of one run: an ok one (as for the sweeper, a run is done when any folder holds its ok
    result), then the folder the sweep record names, then the newest."""
    return max(rows, key=lambda r: (r["status"] == "ok", r["run_dir"] in named, r["_mtime"], r["run_dir"]))


def _env_warning(df: pd.DataFrame, envs: Mapping[str, Mapping]) -> str | None:
    """One line when the seeds of an arm were made by different library versions or transferlab commits."""
    mixed = []
    for _, g in df[df["status"] == "ok"].dropna(subset=["arm_key"]).groupby("arm_key", sort=False):
        recs = [envs[d] for d in g["run_dir"] if envs.get(d)]
        keys = sorted({k for e in recs for k in e if k != "dirty"})
        differ = {k: sorted({str(e.get(k)) for e in recs}) for k in keys}
        differ = {k: v for k, v in differ.items() if len(v) > 1}
        if differ:
            r = g.iloc[0]
            mixed.append(f"{r['setting']}: {r['arm']} n={r['n_label']} ("
                         + "; ".join(f"{k} {', '.join(v[:3])}" for k, v in differ.items()) + ")")
    if not mixed:
        return None
    more = f"; and {len(mixed) - 1} more" if len(mixed) > 1 else ""
    return (f"mixed library versions or transferlab commits within {len(mixed)} arm{'s' * (len(mixed) > 1)}: "
            f"{mixed[0]}{more}")


def collect_sweep(sweep_dir: str | Path) -> Collection:
    """Read every result.json and sweep.json; drop duplicate runs; add the grouping keys and labels."""
    root = Path(sweep_dir)
    sweep, sweep_note = read_sweep_record(root)
    named = {p.folder for p in sweep.points} if sweep else set()
    rows, idents, envs = [], {}, {}
    read = read_results(root)  # each point folder's record, read once for the rows and the ledger's judgement
    for path in find_results(root):
        run_dir = path.parent.relative_to(root).as_posix()
        record = read.get(path.parent.name) if path.parent.parent == root else None
        if record is None:  # a nested folder, or a result written since `read_results`
            record = read_record(path)
        if isinstance(record, str):  # unreadable file (or not a record): listed as failed, never fatal
            record = RunRecord(status="failed", error=record)
        row = record_to_row(record, run_dir)
        ident = _identity(record)
        row.update({k: None for k in KEYS} if ident is None else ident.keys)
        row["fingerprint_recorded"] = bool(ident and ident.recorded)
        try:
            row["_mtime"] = path.stat().st_mtime_ns
        except OSError:  # removed meanwhile: the oldest copy
            row["_mtime"] = 0
        rows.append(row)
        idents[run_dir] = ident
        envs[run_dir] = record.environment if isinstance(record.environment, dict) else None

    by_fp: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["fingerprint"]:
            by_fp[r["fingerprint"]].append(r)
    dropped = []
    for fp, copies in by_fp.items():
        if len(copies) > 1:
            keep = _keeper(copies, named)
            dropped += [{"run_dir": r["run_dir"], "fingerprint": fp, "kept": keep["run_dir"]}
                        for r in copies if r is not keep]
    gone = {d["run_dir"] for d in dropped}
    duplicates = pd.DataFrame(dropped, columns=["run_dir", "fingerprint", "kept"]).sort_values("run_dir")
    df = pd.DataFrame([r for r in rows if r["run_dir"] not in gone]).drop(columns=["_mtime"], errors="ignore")
    points = point_states(root, sweep, read) if sweep else None
    notes = [sweep_note] if sweep_note else []
    if df.empty:
        return Collection(df, duplicates.reset_index(drop=True), sweep, points, notes)
    for col in ("cut", "freeze", "seed", "data_seed", "trainable_params", "total_params", "n_train"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    notes += _label(df, idents)
    if "arm_name" in df:  # the name beside the machine label, in results.csv as everywhere
        name = df.pop("arm_name")
        df.insert(df.columns.get_loc("arm") + 1, "arm_name", name)
    df = df.sort_values(["run_dir"]).reset_index(drop=True)

    if len(duplicates):
        n, shown = len(duplicates), 10
        pairs = [f"{d} (= {k})" for d, k in zip(duplicates["run_dir"], duplicates["kept"])]
        notes.append(f"{n} duplicate run{'s' * (n > 1)} of the same config ignored: " + ", ".join(pairs[:shown])
                     + (f", and {n - shown} more" if n > shown else ""))
    unrecorded = int((df["fingerprint"].notna() & ~df["fingerprint_recorded"]).sum())
    if unrecorded:
        notes.append(f"{unrecorded} run{'s' * (unrecorded > 1)} written before run identity (no fingerprint, no "
                     "input hashes): grouped by config alone, never with recorded runs")
    if sweep is not None:
        outside = sorted(set(df["run_dir"]) - named)
        if outside:
            notes.append(f"{len(outside)} run{'s' * (len(outside) > 1)} in folders {SWEEP_FILE} does not declare "
                         f"(included): " + ", ".join(outside[:5]) + (", ..." if len(outside) > 5 else ""))
    warning = _env_warning(df, envs)
    if warning:
        notes.append(warning)
    return Collection(df, duplicates.reset_index(drop=True), sweep, points, notes)


def _label(df: pd.DataFrame, idents: Mapping[str, _Identity | None]) -> list[str]:
    """Add `setting`, `arm`, `variant` and `baseline_key` to the rows (in place); return notes."""
    df["setting"], df["arm"], df["variant"], df["baseline_key"] = None, None, None, None
    has = df["setting_key"].notna()
    if not has.any():
        return []
    settings = {}
    for _, r in df[has].drop_duplicates("setting_key").iterrows():
        settings[r["setting_key"]] = (f"{r['target']} / {r['backbone']}", idents[r["run_dir"]].setting)
    names = setting_labels(settings, shown=df.loc[has & (df["status"] == "ok"), "setting_key"])
    df.loc[has, "setting"] = df.loc[has, "setting_key"].map(names)
    notes = []
    for key, g in df[has].groupby("setting_key", sort=False):
        line_ids = {r["line_key"]: idents[r["run_dir"]].line for _, r in g.drop_duplicates("line_key").iterrows()}
        lines = arm_lines(g, line_ids, names[key])
        df.loc[g.index, "arm"] = g["line_key"].map(lines.label)
        df.loc[g.index, "variant"] = g["line_key"].map(lines.variant)
        df.loc[g.index, "arm_name"] = g["line_key"].map(lines.name)
        df.loc[g.index, "baseline_key"] = g["line_key"].map(lambda lk: lk if lk not in lines.baseline
                                                           else lines.baseline[lk])
        notes += lines.notes
    # What figures and tables show as one point (setting, arm label, n) is one arm at one n: never two pooled.
    shown = df[has].groupby(["setting_key", "arm", "n_label"])["arm_key"].nunique()
    assert (shown == 1).all(), f"one label for several arms: {list(shown[shown > 1].index)}"
    named = df[has].groupby(["setting_key", "arm_name"])["line_key"].nunique()
    assert (named == 1).all(), f"one name for several arms: {list(named[named > 1].index)}"
    return notes


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per distinct run (ok and failed), sorted by run folder; empty frame if there are none."""
    return collect_sweep(sweep_dir).runs


def curve_epochs(df: pd.DataFrame) -> pd.Series:
    """Each row's `val_epochs` (the epoch of each point of its validation curve), or 1, 2, ... for rows made
    without one (a curve with a point per epoch)."""
    every = df["val_acc_history"].map(lambda c: list(range(1, len(c) + 1)))
    if "val_epochs" not in df:
        return every
    return pd.Series([at if isinstance(at, list) and len(at) == len(c) else e
                      for at, c, e in zip(df["val_epochs"], df["val_acc_history"], every)], index=df.index)


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of validation accuracy at each validation check (`epoch`: the 1-based epoch it followed) for
    every ok run."""
    cols = ["run_dir", "setting", "setting_key", "line_key", "arm", "is_scratch", "target", "backbone", "n",
            "n_label", "seed", "epoch", "val_acc"]
    rows = []
    ok = df[df["status"] == "ok"]
    for (_, r), at in zip(ok.iterrows(), curve_epochs(ok) if len(ok) else []):
        for epoch, acc in zip(at, r["val_acc_history"]):
            rows.append({**{c: r.get(c) for c in cols[:-2]}, "epoch": epoch, "val_acc": acc})
    return pd.DataFrame(rows, columns=cols)


def still_rising(df: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Runs whose val/acc was still rising when training stopped (`converged: false`, run/convergence.py), per arm
    and n: (`arm_key`, `not_converged`: how many of its ok runs, `judged`: how many had a verdict), and one note
    line listing them per setting and arm (None when there are none). Records without a verdict count as unjudged."""
    cols = ["arm_key", "not_converged", "judged"]
    ok = df[df["status"] == "ok"] if "converged" in df and not df.empty else df.iloc[:0]
    if ok.empty:
        return pd.DataFrame(columns=cols), None
    judged = ok["converged"].map(lambda v: v is not None and not pd.isna(v))
    flag = judged & ~ok["converged"].map(lambda v: bool(v) if v is not None and not pd.isna(v) else True)
    counts = pd.DataFrame({"arm_key": ok["arm_key"], "not_converged": flag, "judged": judged})
    counts = counts.groupby("arm_key", sort=False).sum().astype(int).reset_index()
    rising = ok[flag]
    if rising.empty:
        return counts.reindex(columns=cols), None
    parts = []
    for (setting, arm), g in rising.groupby(["setting", "arm"], sort=True, dropna=False):
        ns = sorted(g.groupby("n_label")["n"].first().items(), key=lambda kv: kv[1])
        seeds = g.groupby("n_label").size()
        parts.append(f"{setting}: {arm} at n=" + ", ".join(f"{n} ({seeds[n]})" for n, _ in ns))
    note = (f"{len(rising)} of {int(judged.sum())} judged runs were still improving when training stopped "
            "(converged: false: val/acc rising over the last 20% of epochs; seeds in brackets); their accuracy "
            "measures the step budget as much as the transfer, raise train.min_steps or train.max_epochs: "
            + "; ".join(parts))
    return counts.reindex(columns=cols), note
