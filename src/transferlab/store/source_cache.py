"""Content-addressed, file-locked cache of source models: a sweep of a hundred target runs pretrains once.

The key is the caller's (`run.identity.source_fingerprint`: only what shapes the source model, so changing target
or transfer settings never retrains it). Parallel jobs needing the same source take a file lock; the first trains
and writes atomically, the others wait and load. Entries carry a checksum and are verified on every read
(`transferlab.store.verified`): a damaged one is set aside and retrained, never used. A vectorised group makes several
missing entries in one stacked fit (run/source_stack.py), under their locks (`verified.claim_missing`), and stores
each with `put`, as `get_or_train` stores one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from transferlab.store import verified

MODEL_FILE = "model.pt"


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a cached source model or a checkpoint we wrote: checked against its checksum, `weights_only=True` so
    a file can never run code (UnsafeFileError if refused, CorruptFileError if damaged)."""
    return verified.load(path, map_location="cpu")


def get_or_train(cache_dir: str | Path, key: str, train: Callable[[], tuple[dict, dict]],
                 check: Callable[[dict], str | None] | None = None) -> tuple[dict, str, Path]:
    """Return (cached object with 'state_dict' and 'meta', 'hit'|'miss', path), training under a lock on a miss
    (a damaged entry, or one `check` rejects, counts as a miss: set aside with a warning, then retrained)."""
    path = entry_path(cache_dir, key)

    def make() -> tuple[dict, dict]:
        state_dict, meta = train()
        return entry(state_dict, meta), meta

    obj, status = verified.get_or_make(path, make, check)
    return obj, status, path


def entry_path(cache_dir: str | Path, key: str) -> Path:
    """Where the entry of `key` is (its payload; the entry is that file's folder)."""
    return Path(cache_dir) / "source" / key / MODEL_FILE


def entry(state_dict: dict, meta: dict) -> dict:
    """A source model entry as stored: what `get_or_train` returns and `put` writes."""
    return {"state_dict": state_dict, "meta": meta}


def put(path: str | Path, state_dict: dict, meta: dict) -> None:
    """Store a source model made outside `get_or_train` (several at once, run/source_stack.py) exactly as
    `get_or_train` stores one; the caller holds the entry's lock (`verified.claim_missing`)."""
    verified.put(path, entry(state_dict, meta), meta)
