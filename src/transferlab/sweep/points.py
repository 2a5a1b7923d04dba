"""What a sweep is made of: its points, and the folder each point gets.

Hydra's basic sweeper knows one cartesian product and numbers its jobs 0..N-1. Here a sweep is a *union of grids*:
`params` (shared) crossed with each of `grids` (e.g. a transfer arm over freeze depths and a scratch arm without
one), so scratch points are not multiplied by freeze depths. Every point has a *stable folder* named by its swept
overrides in canonical (sorted) order (`seed=0,target.n_per_class=5,transfer.freeze=2`, whatever the order on the
command line). A baseline grid (`transfer=scratch`, `transfer=scratch_long`) never takes `transfer` or `peft`
overrides meant for the transfer arms (from the command line or the shared params); the baseline presets are
named in transfer/arm.py.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from itertools import product
from typing import Any, Callable, Iterable, Mapping

from transferlab.transfer.arm import BASELINE_PRESETS

# `transfer.freeze=all_depths` in a sweep: one point per freeze depth the point's backbone has (0..cut-1 and all),
# resolved by the sweeper from the composed config (`transfer.plan.freeze_depths`), so a preset works for any backbone
FREEZE, ALL_DEPTHS = "transfer.freeze", "all_depths"
_SAFE = re.compile(r"[^A-Za-z0-9_.,=+\-]")
MAX_NAME = 150


def point_name(overrides: Iterable[str]) -> str:
    """A folder name from `key=value` overrides: readable, file-system safe, and canonical: sorted by key, so the
    same point has one folder whatever the order of the command-line arguments."""
    parts = sorted((o.lstrip("+~") for o in overrides), key=lambda o: (o.split("=", 1)[0], o))
    name = _SAFE.sub("_", ",".join(parts)) or "point"
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 17]}-{hashlib.sha1(name.encode()).hexdigest()[:16]}"
    return name


@dataclass
class Point:
    overrides: list[str]          # every override of the job (swept and constant)
    name: str                     # folder name, from the swept overrides only
    grid: str | None = None
    hash: str | None = None
    # the identity without the replicate keys (`identity.seed_group_key`) and the replicate values, both from the
    # composed config (the sweeper's): which points one vectorised job trains, and what tells its members apart
    seed_group: str | None = None
    replicates: dict[str, Any] | None = None
    dir: str | None = None
    status: str = "pending"       # pending | skipped (done) | ok | failed | busy | unselected | submitted
    job: str | None = None        # the SLURM job a detached launch submitted it as
    error: str | None = None


def _as_override_strings(params: Mapping[str, Any] | None) -> list[str]:
    out = []
    for k, v in (params or {}).items():
        v = "null" if v is None else v
        if isinstance(v, bool):
            v = str(v).lower()
        out.append(f"{k}={v}")
    return out


def expand(parse, params: Mapping[str, Any] | None, grids: Mapping[str, Mapping[str, Any] | None] | None,
           arguments: list[str], depths: Callable[[list[str]], list[str]] | None = None) -> list[Point]:
    """Points of a sweep: for each grid, params x grid x CLI arguments (cartesian); the union, duplicates dropped.

    `parse` turns override strings into Hydra `Override`s. CLI arguments replace a key's values where the key is
    set; a key that only some grids set (an arm-specific key) is replaced in those grids and not added to others.
    Folder names use the keys the preset sweeps (params and grids) and the CLI's multi-value sweeps, so shrinking
    a sweep from the CLI (`seed=0`) lands on the same folders as the full sweep.

    A baseline grid (its own `transfer` is one of `transfer.arm.BASELINE_PRESETS`) takes no `transfer` / `transfer.*`
    value from the
    shared params or the CLI: those are meant for the transfer arms (`-m experiment=freeze_vs_n transfer.cut=2`
    must not give a "scratch" point with transferred weights).

    `transfer.freeze=all_depths` becomes one point per value `depths(overrides)` gives for the point's overrides
    (the sweeper's: every freeze depth of the point's backbone and cut); without `depths` it is an error.
    """
    shared = parse(_as_override_strings(params))
    grid_items = [(g, parse(_as_override_strings(spec))) for g, spec in (grids or {}).items() if spec is not None]
    if grids and not grid_items:
        raise ValueError("hydra.sweeper.grids: every grid is null; keep at least one")
    grid_items = grid_items or [(None, [])]
    cli = parse(list(arguments))
    arm_keys = {o.get_key_element() for _, ovs in grid_items for o in ovs}
    named = {o.get_key_element() for o in shared} | arm_keys | {
        o.get_key_element() for o in cli if o.is_sweep_override()}

    points, seen = [], set()
    for grid, grid_ovs in grid_items:
        baseline = _is_baseline(grid_ovs)
        merged: OrderedDict[str, Any] = OrderedDict()
        own_keys = {g.get_key_element() for g in grid_ovs}
        for o in [*grid_ovs, *(s for s in shared if s.get_key_element() not in own_keys)]:
            if baseline and o.get_key_element() not in own_keys and _is_transfer_key(o.get_key_element()):
                continue  # a transfer setting of the other arms
            merged[o.get_key_element()] = o
        own = set(merged)
        for o in cli:
            key = o.get_key_element()
            if key in arm_keys and key not in own:
                continue  # another arm's key
            if baseline and _is_transfer_key(key):
                continue  # meant for the transfer arms, never the baseline
            merged[key] = o
        choices = []
        for key, o in merged.items():
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise ValueError(f"{key}: the transferlab sweeper takes lists and range(), not {o.value_type}")
                choices.append([(key, f"{key}={v}") for v in o.sweep_string_iterator()])
            else:
                choices.append([(key, f"{key}={o.get_value_element_as_str()}")])
        for combo in (c for raw in product(*choices) for c in _resolve_depths(raw, depths)):
            overrides = [s for _, s in combo]
            ident = tuple(sorted(overrides))
            if ident in seen:
                continue
            seen.add(ident)
            swept = [s for k, s in combo if k in named]  # a sweep of one point (nothing swept): name it by all
            points.append(Point(overrides=overrides, name=point_name(swept or overrides), grid=grid))
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two points share the folder name {dupes[0]!r}; sweep that key from the preset instead")
    return points


def _resolve_depths(combo: tuple, depths: Callable[[list[str]], list[str]] | None) -> list[tuple]:
    """`combo` ((key, override line) pairs) with `transfer.freeze=all_depths` replaced by each depth of its point."""
    line = f"{FREEZE}={ALL_DEPTHS}"
    if all(s != line for _, s in combo):
        return [combo]
    if depths is None:
        raise ValueError(f"{line}: a sweep value (-m with the transferlab sweeper, which reads the backbone's "
                         "blocks); one run takes a depth: an int or all")
    values = depths([s for _, s in combo])
    return [tuple((k, f"{FREEZE}={v}" if s == line else s) for k, s in combo) for v in values]


def _is_transfer_key(key: str) -> bool:
    """A setting of the transfer arms: `transfer*`, and `peft*` (PEFT modules are added to copied frozen blocks;
    a baseline copies none)."""
    return key in ("transfer", "peft") or key.startswith(("transfer.", "peft."))


def _is_baseline(grid_overrides) -> bool:
    """Does the grid choose a baseline preset? Decided on its overrides, as it must be: which overrides the grid
    takes comes before any config is composed. What a run *is* (copies nothing, the baseline) is decided from its
    plan and recorded (transfer/arm.py); this only names the presets the same way."""
    return any(o.get_key_element() == "transfer" and not o.is_sweep_override()
               and o.get_value_element_as_str() in BASELINE_PRESETS for o in grid_overrides)
