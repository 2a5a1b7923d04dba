"""Vectorised seed groups (`hydra.sweeper.vectorize=seeds`): which pending points one job trains together.

Points whose overrides are equal but for the values of the replicate keys (`seed`, `data_seed`, `pretrain.seed`:
`run.identity.REPLICATES`), and that set the same replicate keys, are one config at K seeds (a point that leaves
`data_seed` to its default is another config than a sibling that sets it, so it never takes that sibling's value);
they form a group of at most `max_size` members, in name
order. The group's first point gets the job, with `group=<its folder>/group.json` naming every member's folder,
replicate values and fingerprint (`sweep.group_job` trains them). Points alone in their group are launched as usual.
Torch-free: the sweeper imports it before any job runs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from transferlab.run.identity import REPLICATES
from transferlab.sweep.ledger import GROUP_FILE, GroupFile, GroupMember
from transferlab.sweep.points import Point
MODES = ("seeds",)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def replicates(point: Point) -> dict:
    """The point's replicate overrides as values ({"seed": 3}), as the job applies them to its config."""
    out = {}
    for o in point.overrides:
        if _key(o) in REPLICATES and "=" in o:
            out[_key(o)] = yaml.safe_load(o.split("=", 1)[1])
    return out


def group(points: list[Point], max_size: int) -> list[list[Point]]:
    """The points as launch units: groups of points that differ only in replicate overrides (at most `max_size`
    each), in the order of their first point; a point with no sibling is a unit of one."""
    by_key: dict[tuple, list[Point]] = {}
    for p in points:
        rest = tuple(sorted(o for o in p.overrides if _key(o) not in REPLICATES))
        by_key.setdefault((rest, tuple(sorted(replicates(p)))), []).append(p)
    units = []
    for members in by_key.values():
        members = sorted(members, key=lambda p: p.name)
        units += [members[i:i + max_size] for i in range(0, len(members), max(1, max_size))]
    order = {id(p): i for i, p in enumerate(points)}
    return sorted(units, key=lambda u: min(order[id(p)] for p in u))


def write(unit: list[Point]) -> Path:
    """The group file in the leader's folder (written atomically); its path goes into the job's overrides."""
    return GroupFile([GroupMember(name=p.name, dir=str(p.dir), fingerprint=str(p.hash), replicates=replicates(p))
                      for p in unit]).write(Path(str(unit[0].dir)) / GROUP_FILE)
