"""The experiment's setup, read back from what the sweep left, so the report is a record of the experiment and
not only of its numbers: a reader of report.html alone can tell how the runs were made and re-make them.

Where each item comes from:

- the command(s): `sweep.json`'s launches (the sweeper records every launch's argv, host and times); a plain
  folder of runs has none, and the block says so. The commands that declare the result's grid are the latest
  launch and any launch still the last to declare some point (`sweep.ledger.LAUNCH_KEY`); an earlier launch all of
  whose points a later launch declared again (a resume, a grid extended) or dropped is superseded: listed apart,
  as history, since the commands above already declare everything the result holds;
- what the intervals cover (`variation`): which sources of variation differ between the seeds of one arm, read
  from the configs: the training seed (`seed`), the data draw (`data_seed`) and the source model (`pretrain.seed`:
  one value in every transfer run means one shared source model, so the intervals do not include the source
  model's variation; a value that follows the seed means one source model per seed, and they do);
- what the runs set: their configs (`result.json` `config`, resolved). Keys whose value differs between runs are
  the sweep's axes ("varied"); keys equal in every run are compared with the **defaults of conf/ composed now**
  (what `python -m transferlab.train` with no override would run), and those that differ are listed with the
  default beside them. The defaults are those of the transferlab that makes the report, which may be newer than
  the one that ran (the block names both commits); keys the runs do not have (added since) are not listed, and
  machine paths (`paths.*`) and internal keys (`INTERNAL`: the sweeper's `group` file) never are. A task or
  backbone chosen as another preset than the default (`target=npz` vs `digits_5to9`: its `kind` or `name`
  differs) is listed by that key alone: its other keys are that preset's own, and comparing them with the default
  preset's (`target.classes=null (default [5, 6, 7, 8, 9])`) says nothing. When conf/ cannot be composed, the
  block says so and lists the varied keys only;
- epochs, learning rate, batch size, optimizer: `train.*` and `pretrain.*` of the configs, and the epochs the runs
  actually trained;
- the source model: each distinct cached source model the transfer runs copied (`source_ckpt`) with its
  pretraining test accuracy (`source_metrics`); scratch copies nothing and has none;
- data files and their sha256: the records' `inputs` (the digest of a task's files together when it has several);
- split sizes: the records' `target_data.sizes` (pool, validation, test; the labelled training subset per n);
- versions: the records' `environment` (Python, libraries, transferlab version and git commit, dirty tree).

Torch-free; reads result.json only through `transferlab.run.record`.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from transferlab.config import cli_value, flatten
from transferlab.run.record import RESULT_FILE, RunRecord
from transferlab.training import optim as optim_nodes

if TYPE_CHECKING:
    from transferlab.sweep.ledger import SweepRecord

PROGRAM = "python -m transferlab.train"  # sweep.json records the arguments after the program
MAX_VALUES = 8  # values listed per varied key before "... (k values)"
# Keys set by the machinery, not by the experimenter: `group` names the file of a vectorised seed group (conf/
# config.yaml: "not a setting to pass by hand"), different for every group of one sweep.
INTERNAL = ("group",)
PRESET_GROUPS = ("source", "target", "backbone")  # config groups chosen as a preset (their `kind` / `name`)
PRESET_KEYS = ("kind", "name")
TRAIN_KEYS = (("max_epochs", "epochs (max)"), ("lr", "lr"), ("batch_size", "batch"), ("optimizer", "optimizer"),
              ("weight_decay", "weight decay"), ("scheduler", "scheduler"))
NODE_KEYS = ("optimizer", "scheduler")


@dataclass
class Setup:
    """What the setup block shows, each item a list of (label, value) rows or small records (empty: not known)."""

    commands: list[dict[str, str]] = field(default_factory=list)  # command, started, host, outcome
    superseded: list[dict[str, str]] = field(default_factory=list)  # launches no point of the result comes from
    variation: list[tuple[str, str]] = field(default_factory=list)  # source of variation -> covered or not, why
    varied: list[tuple[str, str]] = field(default_factory=list)  # config key, its values across the runs
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # key, value in every run, default
    defaults_note: str = ""  # what `changed` was compared with (or why it could not be)
    training: list[tuple[str, str]] = field(default_factory=list)  # target / source training settings
    sources: list[tuple[str, str]] = field(default_factory=list)  # source model -> its test accuracy
    data: list[tuple[str, str, str]] = field(default_factory=list)  # role, files, sha256
    splits: list[tuple[str, str]] = field(default_factory=list)  # target task -> split sizes
    environment: list[tuple[str, str]] = field(default_factory=list)  # library -> version(s)
    runs: int = 0


def read_records(sweep_dir: str | Path, run_dirs: Iterable[str]) -> dict[str, RunRecord]:
    """The records of these run folders (relative to the sweep folder); unreadable ones are left out (the
    report lists them as failed already)."""
    out = {}
    for d in run_dirs:
        try:
            out[d] = RunRecord.read(Path(sweep_dir) / d / RESULT_FILE)
        except (OSError, ValueError):
            continue
    return out



def _values(values: Iterable[Any]) -> str:
    """Distinct values in a stable, readable order (numbers numerically, null last), at most MAX_VALUES shown."""
    distinct = {cli_value(v): v for v in values}

    def key(item):
        _, v = item
        if v is None:
            return (2, 0, "")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, float(v), "")
        return (1, 0, cli_value(v))

    shown = [s for s, _ in sorted(distinct.items(), key=key)]
    more = f", … ({len(shown)} values)" if len(shown) > MAX_VALUES else ""
    return ", ".join(shown[:MAX_VALUES]) + more


def default_config() -> tuple[dict[str, Any] | None, str]:
    """(the defaults of conf/ flattened, or None; what they are). Interpolations that need a running Hydra job
    (`paths.*`) are left out; the others (`data_seed: ${seed}`) are resolved."""
    try:
        from hydra import compose
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        from transferlab import conf_source

        GlobalHydra.instance().clear()
        with conf_source.initialize():
            cfg = compose("config")
        GlobalHydra.instance().clear()
    except Exception as e:  # noqa: BLE001 - a report without the defaults is still a report; say why
        return None, f"the defaults of conf/ could not be composed ({type(e).__name__}: {e})"
    flat = {}
    for key, v in flatten(OmegaConf.to_container(cfg, resolve=False)).items():
        if key.startswith("paths."):
            continue
        if isinstance(v, str) and "${" in v:
            try:
                v = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
                v = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            except Exception:  # noqa: BLE001 - an interpolation only a Hydra job can resolve: not compared
                continue
        flat[key] = v
    return flat, f"the defaults of conf/ ({conf_source.search_path()}) composed by the transferlab making this report"


def _commands(sweep: "SweepRecord | None") -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(the launches the result comes from, the superseded ones): see the module docstring."""
    launches = sweep.launches if sweep is not None else []
    stamped = {p.launch for p in (sweep.points if sweep is not None else []) if p.launch is not None}
    out, old = [], []
    for i, launch in enumerate(launches):
        start = launch.start
        # the grid of the result: the latest launch, and any launch that is still the last to declare some point;
        # a record written before launches stamped their points cannot tell them apart (all listed)
        current = i == len(launches) - 1 or not stamped or start in stamped
        argv = [str(a) for a in launch.argv or []]
        when = (datetime.fromtimestamp(float(start), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                if isinstance(start, (int, float)) and start > 0 else "")
        # a launch without an end was killed, or is still running: its counts were never written
        counts = ", ".join(f"{getattr(launch, k)} {k}" for k in ("ok", "failed", "skipped") if getattr(launch, k)) \
            if launch.end is not None else "did not finish (killed, or still running)"
        counts = counts or "none run"
        (out if current else old).append({"command": f"{PROGRAM} {shlex.join(argv)}".strip(), "started": when,
                                          "host": str(launch.host or ""),
                                          "outcome": f"{launch.points} points: {counts}" if launch.points is not None
                                          else counts})
    return out, old


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _config_rows(configs: list[Mapping], defaults: dict[str, Any] | None) -> tuple[list, list]:
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    # groups chosen as another preset than the default's in every run: only their kind/name are compared
    other_preset = {g for g in PRESET_GROUPS if defaults is not None and flats and any(
        f"{g}.{k}" in defaults and all(not _same(f.get(f"{g}.{k}"), defaults[f"{g}.{k}"]) for f in flats)
        for k in PRESET_KEYS)}
    varied, changed = [], []
    for k in keys:
        if k.startswith("paths.") or k in INTERNAL:
            continue
        values = [f.get(k) for f in flats]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            varied.append((k, _values(values)))
            continue
        group, _, leaf = k.partition(".")
        if group in other_preset and leaf not in PRESET_KEYS:
            continue
        if defaults is not None and k in defaults and not _same(defaults[k], values[0]):
            changed.append((k, cli_value(values[0]), cli_value(defaults[k])))
    return varied, changed


def _variation(records: list[RunRecord]) -> list[tuple[str, str]]:
    """What differs between the seeds of one arm, i.e. what the intervals over seeds include: the training seed,
    the data draw and, for transfer runs, the source model (`pretrain.seed`). Read from the configs of the ok runs
    (those the intervals are made of)."""
    flats = [flatten(r.config) for r in records if isinstance(r.config, Mapping) and r.status == "ok"]
    if not flats:
        return []

    def distinct(key: str, rows: list[dict]) -> list:
        return sorted({cli_value(f.get(key)) for f in rows})

    rows = []
    seeds = distinct("seed", flats)
    rows.append(("training seed (seed)", (f"included: {len(seeds)} values ({_values(f.get('seed') for f in flats)})"
                                          if len(seeds) > 1 else f"not included: seed={seeds[0]} in every run")))
    draws = distinct("data_seed", flats)
    follows = all(_same(f.get("data_seed"), f.get("seed")) for f in flats)
    rows.append(("data draw (data_seed: which labelled examples)",
                 (f"included: {len(draws)} draws" + (", data_seed = seed" if follows else "")) if len(draws) > 1
                 else f"not included: data_seed={draws[0]} in every run, one labelled subset per n"))
    ok = [r for r in records if isinstance(r.config, Mapping) and r.status == "ok"]
    transfer = [f for r, f in zip(ok, flats) if r.cut not in (0, None)]  # scratch has no source model
    if transfer:
        pre = distinct("pretrain.seed", transfer)
        if len(pre) == 1:
            rows.append(("source model (pretrain.seed)", f"not included: pretrain.seed={pre[0]} in every transfer "
                         "run, so every seed copies one shared source model; the intervals say nothing about "
                         "another pretraining"))
        elif all(_same(f.get("pretrain.seed"), f.get("seed")) for f in transfer):
            rows.append(("source model (pretrain.seed)", f"included: pretrain.seed = seed, one source model per "
                         f"seed ({len(pre)} source models)"))
        else:
            rows.append(("source model (pretrain.seed)", f"included: {len(pre)} values of pretrain.seed "
                         f"({_values(f.get('pretrain.seed') for f in transfer)})"))
    return rows


def _training(records: list[RunRecord]) -> list[tuple[str, str]]:
    rows = []
    for group, label in (("train", "target training"), ("pretrain", "source pretraining")):
        recs = [r for r in records if isinstance(r.config, Mapping)]
        if group == "pretrain":  # only the runs that copied a source model pretrained it
            recs = [r for r in recs if r.cut not in (0, None) or r.source_cache not in (None, "none", "unused")]
        parts = []
        for key, name in TRAIN_KEYS:  # a tuned key: the value each point chose (its config's is never read)
            if key in NODE_KEYS:  # `_target_` nodes (or a name, in records made before them)
                vals = [optim_nodes.describe(r.config[group].get(key)) if isinstance(r.config.get(group), Mapping)
                        else None for r in recs]
            else:
                vals = [_chosen(r).get(f"{group}.{key}", flatten(r.config).get(f"{group}.{key}")) for r in recs]
            if any(v is not None for v in vals):
                parts.append(f"{name} {_values(vals)}")
        if parts:
            rows.append((label, ", ".join(parts)))
    trained = [r.metrics.epochs for r in records if r.metrics.epochs is not None]
    if trained:
        rows.append(("epochs trained (target)", f"{min(trained)} to {max(trained)}" if min(trained) != max(trained)
                     else str(trained[0])))
    rows.extend(_protocol(records))
    return rows


def _span(values: list[int]) -> str:
    return f"{min(values)} to {max(values)}" if min(values) != max(values) else str(values[0])


def _protocol(records: list[RunRecord]) -> list[tuple[str, str]]:
    """The step budget and the model selection, shown whether or not they are the defaults: a reader comparing
    with another paper needs the rule that picked the tested model and how many optimizer steps each point got
    (training/budget.py). Records made before the protocol existed say so rather than being left out."""
    rows = []
    budgets = [r.budget for r in records if isinstance(r.budget, Mapping)]
    if budgets:
        kinds = sorted({str(b.get("budget")) for b in budgets})
        floors = sorted({cli_value(b.get("min_steps")) for b in budgets})
        caps = sorted({cli_value(b.get("max_steps")) for b in budgets})
        text = (f"train.budget={'/'.join(kinds)}, min_steps={'/'.join(floors)}, max_steps={'/'.join(caps)}: "
                f"{budgets[0].get('rule')}")
        rows.append(("step budget", text))
    steps = [r.metrics.steps for r in records if r.metrics.steps is not None]
    if steps:
        rows.append(("optimizer steps (target)", _span(steps)))
    selects = Counter(str(r.select) for r in records if r.select)
    old = sum(1 for r in records if not r.select)
    if selects or old:
        parts = [f"{k} ({v} runs)" if len(selects) + bool(old) > 1 else k for k, v in sorted(selects.items())]
        if old:
            parts.append(f"not recorded ({old} runs made before train.select existed: the first best val/acc)")
        rows.append(("model tested (train.select)", ", ".join(parts)
                     + (" — ties: lower val/loss, then the earlier epoch" if "best_val" in selects else "")))
    tuning = _tuning(records)
    if tuning:
        rows.append(("tuning inside each point", tuning))
    labels = _labels_used(records)
    if labels:
        rows.append(("labels that shaped each model", labels))
    return rows


def _chosen(record: RunRecord) -> dict[str, Any]:
    """{"train.lr": 0.01}: the values a tuned point chose (run/tuning.py); {} for an untuned one."""
    tuning = record.tuning if isinstance(record.tuning, Mapping) else {}
    return dict(tuning.get("chosen") or {})


def _tuning(records: list[RunRecord]) -> str:
    """Which keys the tuned points tuned, over which values, and what they chose (run/tuning.py); "" when no
    point was tuned."""
    tuned = [r for r in records if _chosen(r)]
    if not tuned:
        return ""
    grids = sorted({", ".join(f"{k} in {cli_value(v)}" for k, v in (r.tuning.get("grid") or {}).items())
                    for r in tuned})
    chosen = Counter(", ".join(f"{k}={cli_value(v)}" for k, v in _chosen(r).items()) for r in tuned)
    text = (f"{'; '.join(grids)}: each point trained every candidate, selected one by its own train.select on "
            f"val/acc ({tuned[0].tuning.get('rule')}) and reported that one's test"
            + ("; the other candidates were tested only after the choice, for selection.csv's oracle"
               if any(isinstance(c, dict) and c.get("hindsight_test") for r in tuned
                      for c in r.tuning.get("candidates") or []) else "")
            + "; chosen "
            + ", ".join(f"{k} ({v} runs)" for k, v in sorted(chosen.items())))
    untuned = len(records) - len(tuned)
    return text + (f"; {untuned} runs untuned" if untuned else "")


def _labels_used(records: list[RunRecord]) -> str:
    """Per selection protocol, which labelled examples influenced the tested models (run/labels.py): the n of the
    x axis, plus a validation split the axis does not show when selection or the LR schedule read it."""
    from transferlab.run.labels import reads_validation

    parts = []
    for select in sorted({str(r.select) for r in records if r.select}):
        of = [r for r in records if str(r.select) == select]
        vals = sorted({r.n_val for r in of if r.n_val is not None})
        val = "/".join(str(v) for v in vals) or "?"
        if select == "val_in_budget":
            parts.append(f"{select}: the n examples only, a share of them held out to select on "
                         f"({val} validation examples per run)")
        elif select == "cv":
            ks = "/".join(str(k) for k in sorted({r.cv.get("k") for r in of if isinstance(r.cv, Mapping)}))
            parts.append(f"{select}: the n examples only; {ks or 'k'}-fold cross-validation inside them chose "
                         "the training steps (and tuned values), then the model trained on all n (k + 1 fits "
                         "per point)")
        elif any(reads_validation(select, (r.config or {}).get("train", {}).get("scheduler"), bool(_chosen(r)))
                 for r in of):
            parts.append(f"{select}: the n examples plus the {val}-example validation split, at every n")
        else:
            parts.append(f"{select}: the n examples only (no validation label decides anything)")
    return "; ".join(parts)


def _sources(records: list[RunRecord]) -> list[tuple[str, str]]:
    """One row per distinct source model the transfer runs copied (by its cache entry), with its pretraining
    test accuracy; named by its task and backbone, plus `pretrain.seed` when several models share those."""
    found: dict[str, tuple[str, Any, Any, Any]] = {}
    caches: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        m = r.source_metrics if isinstance(r.source_metrics, Mapping) else None
        if not m or r.copies_nothing:
            continue
        key = str(r.source_ckpt or f"{r.source} / {r.backbone}")
        seed = flatten(r.config).get("pretrain.seed") if isinstance(r.config, Mapping) else None
        found.setdefault(key, (f"{m.get('source', r.source)} / {m.get('backbone', r.backbone)}", m.get("test/acc"),
                               m.get("epochs"), seed))
        caches[key][str(r.source_cache)] += 1
    names = Counter(name for name, *_ in found.values())
    rows = []
    for key, (name, acc, epochs, seed) in sorted(found.items(), key=lambda kv: (kv[1][0], cli_value(kv[1][3]))):
        label = f"{name} (pretrain.seed={cli_value(seed)})" if names[name] > 1 else name
        acc_s = "test accuracy not recorded" if acc is None else f"test accuracy {100 * float(acc):.1f}%"
        ep = f" after {epochs} epochs" if epochs is not None else ""
        cache = ", ".join(f"{k} {v}" for k, v in sorted(caches[key].items()))
        rows.append((label, f"{acc_s}{ep} (cache entry {Path(key).parent.name or key}: {cache})"))
    return rows


def _data(records: list[RunRecord]) -> list[tuple[str, str, str]]:
    seen = {}
    for r in records:
        for role, entry in (r.inputs or {}).items():
            if isinstance(entry, Mapping):
                seen.setdefault((role, str(entry.get("files")), str(entry.get("sha256"))), None)
    return sorted(seen)


def _splits(records: list[RunRecord]) -> list[tuple[str, str]]:
    fixed: dict[str, set] = defaultdict(set)
    train: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        sizes = (r.target_data or {}).get("sizes") if isinstance(r.target_data, Mapping) else None
        if not isinstance(sizes, Mapping):
            continue
        fixed[str(r.target)].add(tuple((k, sizes.get(k)) for k in ("pool", "val", "test") if k in sizes))
        n = "all" if r.n_per_class is None else str(r.n_per_class)
        train[str(r.target)][n].add(sizes.get("train", r.n_train))
    rows = []
    for target in sorted(fixed):
        parts = ["; ".join(", ".join(f"{k} {v}" for k, v in combo) for combo in sorted(fixed[target]))]
        by_n = sorted(train[target].items(), key=lambda kv: (kv[0] == "all", float(kv[0]) if kv[0] != "all" else 0))
        parts.append("labelled training subset " + ", ".join(
            f"{'/'.join(str(v) for v in sorted(vals, key=str))} (n={n})" for n, vals in by_n))
        rows.append((target, "; ".join(parts)))
    return rows


def _environment(records: list[RunRecord]) -> list[tuple[str, str]]:
    """transferlab (version, commit, dirty), Python and the libraries, each with every value the runs recorded
    (how many runs had each when they differ; the report also warns when one arm mixes them)."""
    values: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        for k, v in (r.environment or {}).items():
            values[k][cli_value(v)] += 1

    def each(k: str) -> str:
        c = values.pop(k, Counter())
        return ", ".join(v + (f" ({n} runs)" if len(c) > 1 else "") for v, n in c.most_common()) or "unrecorded"

    if not values:
        return []
    dirty = values.pop("dirty", Counter())
    commits = values.pop("commit", Counter())
    commit = ", ".join(v[:12] + (f" ({n} runs)" if len(commits) > 1 else "")
                       for v, n in commits.most_common()) or "unrecorded"
    rows = [("transferlab", f"{each('transferlab')}, commit {commit}"
             + (" with uncommitted changes" if "true" in dirty else ""))]
    rows.append(("python", each("python")))
    libs = [f"{k} {each(k)}" for k in sorted(values)]
    if libs:
        rows.append(("libraries", "; ".join(libs)))
    return rows


def describe(records: Mapping[str, RunRecord], sweep: "SweepRecord | Mapping | None",
             defaults: tuple | None = None) -> Setup:
    """The setup block of these runs (ok and failed alike: a failed run was part of the experiment too).
    `defaults` is (flat default config or None, note); composed from conf/ when not given."""
    recs = list(records.values())
    configs = [r.config for r in recs if isinstance(r.config, Mapping)]
    flat_defaults, note = defaults if defaults is not None else default_config()
    varied, changed = _config_rows(configs, flat_defaults)
    if flat_defaults is not None:
        from transferlab.versions import environment

        now = environment().get("commit")
        note += f" (commit {str(now)[:12]})" if now else ""
    from transferlab.sweep.ledger import SweepRecord

    commands, superseded = _commands(SweepRecord.from_dict(sweep) if isinstance(sweep, Mapping) else sweep)
    return Setup(commands=commands, superseded=superseded, variation=_variation(recs), varied=varied,
                 changed=changed, defaults_note=note,
                 training=_training(recs), sources=_sources(recs), data=_data(recs), splits=_splits(recs),
                 environment=_environment(recs), runs=len(recs))
