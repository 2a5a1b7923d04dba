"""The cache's entries as an operator sees them: what is there, how big, how old, last used when, by which sweeps;
and pruning that never removes an entry in use and never leaves half of one.

An entry is a folder `<cache_dir>/source/<key>/` (a source model) or `<cache_dir>/features/<key>/` (a frozen-prefix
feature pass): its payload with a checksum sidecar, `meta.json`, the `.lock` its writers take, `.last_use` (touched
by every run that reads it, `verified.mark_used`) and any `*.corrupt-*` files set aside by verification.

Which sweeps use an entry is read from their result.json files by the record's owner
(`run.record.cache_entries_used`: `source_ckpt`, `feature_cache.key`). Pruning takes the entry's lock without waiting
(an entry a job is writing or computing is skipped), renames the folder out of the cache's namespace
(`.deleting-<key>-<pid>`, one atomic step: a reader then finds no entry and recomputes it, never half of one), and
only then deletes it; a crash mid-delete leaves a `.deleting-*` folder no run reads, which the next prune removes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from transferlab.store.atomic import shared_lock
from transferlab.store.verified import LAST_USE, LOCK, META

KINDS = ("source", "features")
PAYLOAD = {"source": "model.pt", "features": "features.pt"}
DELETING = ".deleting-"


@dataclass
class Entry:
    kind: str                  # source | features
    key: str
    path: str
    bytes: int
    created: float             # when the payload was written (its mtime)
    last_use: float            # when a run last read or wrote it (`.last_use`, else the payload's mtime)
    what: str                  # from meta.json: the source task and backbone, or the task and frozen blocks
    sweeps: list[str] = field(default_factory=list)  # sweeps whose runs used it


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _describe(kind: str, meta: dict) -> str:
    if kind == "source":
        acc = meta.get("test/acc")
        return f"{meta.get('source')} on {meta.get('backbone')}" + (f", test acc {acc:.3f}" if acc is not None else "")
    return f"{meta.get('task')} after {meta.get('blocks')}"


def entries(cache_dir: str | Path) -> list[Entry]:
    out = []
    for kind in KINDS:
        root = Path(cache_dir) / kind
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            payload = folder / PAYLOAD[kind]
            try:
                meta = json.loads((folder / META).read_text())
            except (OSError, ValueError):
                meta = {}
            created = payload.stat().st_mtime if payload.exists() else folder.stat().st_mtime
            last = folder / LAST_USE
            out.append(Entry(kind=kind, key=folder.name, path=str(folder), bytes=_size(folder), created=created,
                             last_use=last.stat().st_mtime if last.exists() else created,
                             what=_describe(kind, meta) if meta else "(no meta.json: incomplete or damaged)"))
    return out


def listing(cache_dir: str | Path, used_by: Mapping[tuple[str, str], Iterable[str]]) -> list[Entry]:
    """The entries, each with the names of the sweeps that use it (`used_by`: `run.record.cache_entries_used`)."""
    used = used_by
    found = entries(cache_dir)
    for e in found:
        e.sweeps = sorted(used.get((e.kind, e.key), ()))
    return found


@dataclass
class Pruned:
    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)   # its lock was held: a job is writing or computing it
    kept: int = 0
    leftovers: int = 0                                   # `.deleting-*` folders of an interrupted prune, removed

    def to_dict(self) -> dict:
        return {"removed": [asdict(e) for e in self.removed], "in_use": [asdict(e) for e in self.in_use],
                "kept": self.kept, "leftovers": self.leftovers}


def prune(cache_dir: str | Path, *, older_than_s: float | None = None,
          used_by: Mapping[tuple[str, str], Iterable[str]] | None = None, dry_run: bool = False,
          now: float | None = None) -> Pruned:
    """Remove the entries last used more than `older_than_s` ago and/or absent from `used_by` (the entries some
    given sweeps use: `run.record.cache_entries_used`; both conditions when both are given). Never one whose lock
    is held; never half of one."""
    from filelock import Timeout

    if older_than_s is None and used_by is None:
        raise ValueError("say what to prune: --older-than and/or --unused-by")
    now = time.time() if now is None else now
    used = used_by or {}
    result = Pruned()
    for kind in KINDS:  # what an interrupted prune left: nothing reads these
        for leftover in (Path(cache_dir) / kind).glob(f"{DELETING}*") if (Path(cache_dir) / kind).is_dir() else ():
            if not dry_run:
                shutil.rmtree(leftover, ignore_errors=True)
            result.leftovers += 1
    for e in entries(cache_dir):
        old = older_than_s is None or now - e.last_use > older_than_s
        unused = used_by is None or (e.kind, e.key) not in used
        if not (old and unused):
            result.kept += 1
            continue
        lock = shared_lock(Path(e.path) / LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            result.in_use.append(e)
            continue
        try:
            if not dry_run:
                gone = Path(e.path).with_name(f"{DELETING}{e.key}-{os.getpid()}")
                os.replace(e.path, gone)  # one atomic step: from here no run sees the entry
                shutil.rmtree(gone)
        finally:
            lock.release()
        result.removed.append(e)
    return result


def parse_age(text: str) -> float:
    """'7d', '12h', '30m', '90s' (or a plain number of seconds) -> seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = str(text).strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)
