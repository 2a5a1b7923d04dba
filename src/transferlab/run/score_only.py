"""Transferability scores without training: every point of a grid of overrides, scored in one process.

`python -m transferlab.score source=digits_0to4 target=digits_5to9 transfer.cut=1,2,3,4 target.n_per_class=5,20`
composes each point as `transferlab.train` would (comma lists and `range(...)` mean "each of", as in a sweep) and
scores it as a run would before training (`run/scoring.py`: the point's own training subset, the features at its
cut, the source model's predictions), without a Hydra multirun: one process, so the imports, the tasks, the
source model and the feature pass over the target's train pool are paid once and every n is a subset of that pass.
The source model comes from the source cache, pretrained on a miss as a run would. Nothing is written but that.

Points are grouped by their sample size and seeds (the keys of `identity.SAMPLE_SIZE` and `identity.REPLICATES`
that the command sweeps), and ranked within each group by every score: the arms of a group are the points that
differ in the other swept keys (cuts, sources, ...).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.errors import ConfigError, problem
from transferlab.run import identity
from transferlab.run.scoring import (
    CONTROL_ARM,
    NO_SOURCE_HEAD,
    NOTHING_COPIED,
    block_outputs,
    methods_of,
    needs_source,
    pooled,
    pooling,
    predict_probs,
    score,
    source_network,
)

GROUP_KEYS = (*identity.SAMPLE_SIZE, *identity.REPLICATES)


@dataclass
class Point:
    overrides: list[str]               # every override of this point, as composed
    swept: dict[str, str]              # the swept keys and this point's value of each
    cfg: Any = None

    @property
    def arm(self) -> str:
        arm = [f"{k}={v}" for k, v in self.swept.items() if k.lstrip("+~") not in GROUP_KEYS]
        return " ".join(arm) or "(one point)"

    @property
    def group(self) -> str:
        group = [f"{k}={v}" for k, v in self.swept.items() if k.lstrip("+~") in GROUP_KEYS]
        return " ".join(group) or "all points"


@dataclass
class Scored:
    point: Point
    record: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def value(self, method: str) -> float:
        v = self.record["methods"][method]["value"]
        return float("nan") if v is None else float(v)


def expand(overrides: list[str]) -> list[Point]:
    """One Point per combination of the swept overrides (Hydra's sweep syntax: `a=1,2`, `range(...)`, `glob(...)`),
    in the order given, the last key varying fastest."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes: list[list[tuple[str, str, str]]] = []  # per override: (key, value, override line) per value
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([(key, v, f"{key}={v}") for v in o.sweep_string_iterator()])
        else:
            axes.append([(key, "", o.input_line)])
    sweeps = [o.is_sweep_override() for o in parsed]
    return [Point([line for _, _, line in combo], {k: v for (k, v, _), swept in zip(combo, sweeps) if swept})
            for combo in itertools.product(*axes)]


class _Memo:
    """What points share: source models (by source-cache key), source networks, pool features per cut and
    source predictions over the target pool (by the target data's fingerprint)."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[dict, str]] = {}
        self.nets: dict[tuple[str, int | None], Any] = {}
        self.features: dict[tuple[str, str, int], tuple[np.ndarray, dict]] = {}
        self.probs: dict[tuple[str, str], np.ndarray] = {}


def _source_key(cfg, prep) -> str:
    if prep.source is not None:
        return identity.source_fingerprint(cfg, data=prep.source.fingerprint())
    from transferlab.config import plain  # source=none: the backbone's own weights, drawn with pretrain.seed

    return json.dumps({"backbone": plain(cfg.backbone), "seed": int(cfg.pretrain.seed),
                       "shape": list(prep.target.input_shape)}, sort_keys=True, default=str)


def _pool_key(cfg) -> str:
    """The target's train pool as its config decides it: everything but the subset size and the seeds (the pool
    and its splits are fixed by `split_seed`, whatever n draws from it)."""
    from transferlab.config import plain

    target = {k: v for k, v in plain(cfg.target).items() if k not in ("n_per_class", "n_train")}
    return json.dumps({"target": target, "data_dir": str(cfg.paths.data_dir)}, sort_keys=True, default=str)


def _score_point(point: Point, memo: _Memo, run_dir: Path) -> Scored:
    from transferlab.run.experiment import source_weights
    from transferlab.run.setup import prepare
    from transferlab.store import feature_cache
    from transferlab.training.batches import pick_device

    cfg = point.cfg
    methods = methods_of(cfg)
    prep = prepare(cfg)  # validated and loaded exactly as a run would (ConfigError: nothing is scored)
    plan, task = prep.plan, prep.target
    idx = torch.as_tensor(task.train_indices, dtype=torch.long)
    labels = task.train_y[idx].numpy()
    inputs: dict[str, Any] = {"split": "train", "n": len(idx), "cut": plan.cut}
    t0 = time.perf_counter()
    if plan.cut == 0 or plan.init != "source":
        why = NOTHING_COPIED if plan.cut == 0 else CONTROL_ARM.format(plan.init)
        record = {"methods": score(methods, labels, None, None, {"features": why, "source": why}), "inputs": inputs}
        return Scored(point, record, {"source_cache": "unused"})
    key = _source_key(cfg, prep)
    if key not in memo.sources:  # pretrained (when missing) in a folder of its own: two sources never share one
        where = run_dir / "sources" / hashlib.sha256(key.encode()).hexdigest()[:16]
        state, status, _, _ = source_weights(cfg, prep, where)
        memo.sources[key] = (state, status)
    state, status = memo.sources[key]
    classes = prep.source.num_classes if prep.source is not None else None
    if (key, classes) not in memo.nets:
        memo.nets[(key, classes)] = source_network(cfg, state, task.input_shape, classes)
    net = memo.nets[(key, classes)]
    device = pick_device(cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
    data = _pool_key(cfg)
    if (key, data, plan.cut) not in memo.features:  # the whole train pool once; every n is a subset of it
        t1 = time.perf_counter()
        cached = feature_cache.stored(cfg, task, net, plan.cut)
        out = cached["train"] if cached is not None else block_outputs(net, task.train_x, 0, plan.cut, device)
        memo.features[(key, data, plan.cut)] = (pooled(out, net.backbone.pool, net.backbone.prefix_tokens), {
            "block": net.backbone.block_names[plan.cut - 1], "shape": list(out.shape[1:]),
            "pooling": pooling(out, net.backbone.pool),
            "from": "feature cache (disk or memory)" if cached is not None else "inputs (train pool)",
            "time_s": time.perf_counter() - t1})
    pool, about = memo.features[(key, data, plan.cut)]
    features = pool[task.train_indices]
    inputs["features"] = {**about, "dim": int(features.shape[1])}
    probs, missing = None, {}
    if needs_source(methods):
        if prep.source is None:
            missing["source"] = NO_SOURCE_HEAD
        else:
            if (key, data) not in memo.probs:
                memo.probs[(key, data)] = predict_probs(net, task.train_x, device)
            probs = memo.probs[(key, data)][task.train_indices]
            inputs["source_predictions"] = {"classes": int(probs.shape[1])}
    record = {"methods": score(methods, labels, features, probs, missing), "inputs": inputs,
              "time_s": time.perf_counter() - t0}
    return Scored(point, record, {"source_cache": status})


def compose_points(overrides: list[str]) -> list[Point]:
    """Every point of the grid, composed as `transferlab.train` composes one run. A value the schema refuses is
    a ConfigError; `paths.output_dir` (where a missing source model is pretrained) defaults to
    outputs/scores/<time> under `paths.root_dir`."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from transferlab import conf_source
    from transferlab.config import config_error

    extra = []
    if not any(o.split("=", 1)[0].lstrip("+") == "paths.output_dir" for o in overrides):
        extra.append("paths.output_dir=${paths.root_dir}/outputs/scores/" + time.strftime("%Y-%m-%d_%H-%M-%S"))
    points = expand([*overrides, *extra])
    GlobalHydra.instance().clear()
    with conf_source.initialize():
        for p in points:
            try:
                p.cfg = compose("config", overrides=p.overrides)
            except ConfigCompositionException as e:
                error = config_error(e)
                if error is None:
                    raise
                raise error from e
    if not methods_of(points[0].cfg):
        raise ConfigError(problem("transfer.scores", [], "at least one score to compute"))
    return points


def score_points(points: list[Point]) -> list[Scored]:
    """Score every point (see the module docstring); a point's ConfigError names the point."""
    memo = _Memo()
    out = []
    for p in points:
        try:
            out.append(_score_point(p, memo, Path(str(p.cfg.paths.output_dir))))
        except ConfigError as e:
            where = " ".join(f"{k}={v}" for k, v in p.swept.items())
            raise ConfigError([problem(i.key, i.value, f"{i.allowed} (point: {where})" if where else i.allowed)
                               for i in e.items]) from None
    return out


def ranks(values: list[float]) -> list[int | None]:
    """1 = highest; ties share the best rank; NaN is unranked (None)."""
    finite = sorted({v for v in values if not np.isnan(v)}, reverse=True)
    return [None if np.isnan(v) else 1 + sum(1 for u in finite if u > v) for v in values]


def tables(scored: list[Scored]) -> list[dict[str, Any]]:
    """Per group (sample size, seeds): its arms with every score and its rank, sorted by the first score."""
    methods = list(scored[0].record["methods"]) if scored else []
    out = []
    for group in dict.fromkeys(s.point.group for s in scored):
        rows = [s for s in scored if s.point.group == group]
        by = {m: ranks([s.value(m) for s in rows]) for m in methods}
        arms = []
        for i, s in enumerate(rows):
            arms.append({"arm": s.point.arm, "overrides": s.point.overrides, "n_train": s.record["inputs"]["n"],
                         "cut": s.record["inputs"]["cut"], "source_cache": s.info.get("source_cache"),
                         "scores": {m: s.record["methods"][m]["value"] for m in methods},
                         "ranks": {m: by[m][i] for m in methods},
                         "reasons": {m: s.record["methods"][m]["reason"] for m in methods
                                     if s.record["methods"][m]["reason"]},
                         "inputs": s.record["inputs"]})
        first = methods[0]
        arms.sort(key=lambda a: (a["ranks"][first] is None, a["ranks"][first] or 0))
        out.append({"group": group, "ranked_by": first, "arms": arms})
    return out


def print_tables(groups: list[dict[str, Any]], elapsed: float, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=max(Console().width, 110))
    for g in groups:
        methods = list(g["arms"][0]["scores"]) if g["arms"] else []
        n = g["arms"][0]["n_train"] if g["arms"] else 0
        table = Table(title=escape(f"{g['group']}: {n} training examples, ranked by {g['ranked_by']}"))
        table.add_column("arm")
        for m in methods:
            table.add_column(f"{m} (rank)", justify="right")
        for a in g["arms"]:
            cells = ["–" if a["scores"][m] is None else f"{a['scores'][m]:.4f} ({a['ranks'][m]})" for m in methods]
            table.add_row(escape(a["arm"]), *cells)
        console.print(table)
        reasons = {f"{m}: {r}" for a in g["arms"] for m, r in a["reasons"].items()}
        for line in sorted(reasons):
            console.print(f"  not scored: {line}", markup=False)
    console.print("Transferability scores before training (higher is better), on each point's training subset.",
                  markup=False)
    if any(m in ("nce", "leep") for g in groups for a in g["arms"][:1] for m in a["scores"]):
        console.print("NCE and LEEP score the source model's own predictions (full depth, its head): equal for "
                      "every cut of one source; they rank sources, not cuts.", markup=False)
    console.print(f"scored {sum(len(g['arms']) for g in groups)} points in {elapsed:.1f} s", markup=False)
