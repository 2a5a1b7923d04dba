"""Vectorised seed groups (`hydra.sweeper.vectorize=seeds`): which pending points one job trains together.

Points whose composed configs have the same seed-group key (`identity.seed_group_key`: the identity without the
replicate keys `seed`, `data_seed`, `pretrain.seed`, the key their result.json records as `seed_group`) are one
config at K seeds, however their overrides spell it: a point that sets `data_seed=0` and a sibling that leaves it
to its default (`${seed}`) are one group when nothing else differs. The sweeper computes the key and each point's
replicate values from the config it composes for the fingerprint (`Point.seed_group`, `Point.replicates`), so a
member's config is the leader's with the member's own values of every replicate key, and reproduces the member's
fingerprint. Points that also differ in an override of a neutral key (`identity.NEUTRAL`: `logger`, `paths`, ...)
stay apart, so a member never runs under a neutral setting its own point did not ask for. Keys the identity leaves
out for other reasons (a scratch point's `source.*` and `pretrain.*`, which it never reads) do not split a group:
the member's result is the same, and its record's `config` holds the leader's values of those keys.

A group has at most `max_size` members, in name order. The group's first point gets the job, with
`group=<its folder>/group.json` naming every member's folder, replicate values and fingerprint (`sweep.group_job`
trains them). Points alone in their group are launched as usual. Torch-free: the sweeper imports it before any job
runs.
"""

from __future__ import annotations

from pathlib import Path

from transferlab.run.identity import NEUTRAL
from transferlab.sweep.ledger import GROUP_FILE, GroupFile, GroupMember
from transferlab.sweep.points import Point
MODES = ("seeds",)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _neutral(key: str) -> bool:
    return any(key == n or key.startswith(n + ".") for n in NEUTRAL)


def unit_key(point: Point) -> tuple:
    """What points of one group share: the seed-group key of their composed configs, and their neutral overrides.
    A point the sweeper did not compose (no key) is a unit of its own."""
    if point.seed_group is None:
        return ("alone", point.name)
    return (point.seed_group, tuple(sorted(o for o in point.overrides if _neutral(_key(o)))))


def group(points: list[Point], max_size: int) -> list[list[Point]]:
    """The points as launch units: groups of points with equal `unit_key` (at most `max_size` each), in the order
    of their first point; a point with no sibling is a unit of one."""
    by_key: dict[tuple, list[Point]] = {}
    for p in points:
        by_key.setdefault(unit_key(p), []).append(p)
    units = []
    for members in by_key.values():
        members = sorted(members, key=lambda p: p.name)
        units += [members[i:i + max_size] for i in range(0, len(members), max(1, max_size))]
    order = {id(p): i for i, p in enumerate(points)}
    return sorted(units, key=lambda u: min(order[id(p)] for p in u))


def write(unit: list[Point]) -> Path:
    """The group file in the leader's folder (written atomically); its path goes into the job's overrides."""
    return GroupFile([GroupMember(name=p.name, dir=str(p.dir), fingerprint=str(p.hash), seed_group=p.seed_group,
                                  replicates=dict(p.replicates or {})) for p in unit]).write(
        Path(str(unit[0].dir)) / GROUP_FILE)
