"""The experiment's setup, read back from what the sweep left, so the report is a record of the experiment and
not only of its numbers: a reader of report.html alone can tell how the runs were made and re-make them.

Where each item comes from:

- the command(s): `sweep.json`'s launches (the sweeper records every launch's argv, host and times); a plain
  folder of runs has none, and the block says so;
- what the runs set: their configs (`result.json` `config`, resolved). Keys whose value differs between runs are
  the sweep's axes ("varied"); keys equal in every run are compared with the **defaults of conf/ composed now**
  (what `python -m transferlab.train` with no override would run), and those that differ are listed with the
  default beside them. The defaults are those of the transferlab that makes the report, which may be newer than
  the one that ran (the block names both commits); keys the runs do not have (added since) are not listed, and
  machine paths (`paths.*`) never are. When conf/ cannot be composed, the block says so and lists the varied keys
  only;
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
from typing import Any, Iterable, Mapping

from transferlab.config import cli_value, flatten
from transferlab.run.record import RESULT_FILE, RunRecord

PROGRAM = "python -m transferlab.train"  # sweep.json records the arguments after the program
MAX_VALUES = 8  # values listed per varied key before "... (k values)"
TRAIN_KEYS = (("max_epochs", "epochs (max)"), ("lr", "lr"), ("batch_size", "batch"), ("optimizer", "optimizer"),
              ("weight_decay", "weight decay"), ("scheduler", "scheduler"))


@dataclass
class Setup:
    """What the setup block shows, each item a list of (label, value) rows or small records (empty: not known)."""

    commands: list[dict[str, str]] = field(default_factory=list)  # command, started, host, outcome
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
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        from transferlab.train import CONF_DIR

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
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
    return flat, f"the defaults of conf/ ({CONF_DIR}) composed by the transferlab making this report"


def _commands(sweep: Mapping | None) -> list[dict[str, str]]:
    out = []
    for launch in (sweep or {}).get("launches") or []:
        if not isinstance(launch, Mapping):
            continue
        argv = [str(a) for a in launch.get("argv") or []]
        start = launch.get("start")
        when = (datetime.fromtimestamp(float(start), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                if isinstance(start, (int, float)) and start > 0 else "")
        # a launch without an end was killed, or is still running: its counts were never written
        counts = ", ".join(f"{launch[k]} {k}" for k in ("ok", "failed", "skipped") if launch.get(k)) \
            if launch.get("end") is not None else "did not finish (killed, or still running)"
        counts = counts or "none run"
        points = launch.get("points")
        out.append({"command": f"{PROGRAM} {shlex.join(argv)}".strip(), "started": when,
                    "host": str(launch.get("host") or ""),
                    "outcome": f"{points} points: {counts}" if points is not None else counts})
    return out


def _config_rows(configs: list[Mapping], defaults: dict[str, Any] | None) -> tuple[list, list]:
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    varied, changed = [], []
    for k in keys:
        if k.startswith("paths."):
            continue
        values = [f.get(k) for f in flats]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            varied.append((k, _values(values)))
        elif defaults is not None and k in defaults and json.dumps(defaults[k], sort_keys=True, default=str) != \
                json.dumps(values[0], sort_keys=True, default=str):
            changed.append((k, cli_value(values[0]), cli_value(defaults[k])))
    return varied, changed


def _training(records: list[RunRecord]) -> list[tuple[str, str]]:
    rows = []
    for group, label in (("train", "target training"), ("pretrain", "source pretraining")):
        recs = [r for r in records if isinstance(r.config, Mapping)]
        if group == "pretrain":  # only the runs that copied a source model pretrained it
            recs = [r for r in recs if r.cut not in (0, None) or r.source_cache not in (None, "none", "unused")]
        parts = []
        for key, name in TRAIN_KEYS:
            vals = [flatten(r.config).get(f"{group}.{key}") for r in recs]
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
    return rows


def _sources(records: list[RunRecord]) -> list[tuple[str, str]]:
    """One row per distinct source model the transfer runs copied (by its cache entry), with its pretraining
    test accuracy; named by its task and backbone, plus `pretrain.seed` when several models share those."""
    found: dict[str, tuple[str, Any, Any, Any]] = {}
    caches: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        m = r.source_metrics if isinstance(r.source_metrics, Mapping) else None
        if not m or r.cut == 0:
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


def describe(records: Mapping[str, RunRecord], sweep: Mapping | None, defaults: tuple | None = None) -> Setup:
    """The setup block of these runs (ok and failed alike: a failed run was part of the experiment too).
    `defaults` is (flat default config or None, note); composed from conf/ when not given."""
    recs = list(records.values())
    configs = [r.config for r in recs if isinstance(r.config, Mapping)]
    flat_defaults, note = defaults if defaults is not None else default_config()
    varied, changed = _config_rows(configs, flat_defaults)
    if flat_defaults is not None:
        from transferlab.run import identity

        now = identity.environment().get("commit")
        note += f" (commit {str(now)[:12]})" if now else ""
    return Setup(commands=_commands(sweep), varied=varied, changed=changed, defaults_note=note,
                 training=_training(recs), sources=_sources(recs), data=_data(recs), splits=_splits(recs),
                 environment=_environment(recs), runs=len(recs))
