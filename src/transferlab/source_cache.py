"""Content-addressed, file-locked cache of source models: a sweep of a hundred target runs pretrains once.

The key hashes only what shapes the source model (source task and its files, backbone, pretraining and trainer
settings incl. the pretraining seed), so changing target or transfer settings never retrains it. Parallel jobs
needing the same source take a file lock; the first trains and writes atomically, the others wait and load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from transferlab.atomic import torch_save, write_json

MODEL_FILE = "model.pt"


def source_key(cfg, data: str | None = None) -> str:
    """What shapes the source model (`identity.source_fingerprint`: source task and its files, backbone and its
    weights file, pretraining and trainer settings incl. the pretraining seed) plus the source data as loaded
    (`TaskData.fingerprint()`), so an edited or differently-located user file never reuses a stale model."""
    from transferlab.identity import source_fingerprint

    relevant = {"identity": source_fingerprint(cfg), "data": data}
    blob = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a cached source model; `weights_only=True` so a file can never run code (WeightsError if refused)."""
    from transferlab.safe_load import load_checkpoint

    return load_checkpoint(path, map_location="cpu")


def get_or_train(cache_dir: str | Path, key: str, train: Callable[[], tuple[dict, dict]]) -> tuple[dict, str, Path]:
    """Return (cached object with 'state_dict' and 'meta', 'hit'|'miss', path), training under a lock on a miss."""
    folder = Path(cache_dir) / "source" / key
    path = folder / MODEL_FILE
    if path.exists():
        return load_state(path), "hit", path
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if path.exists():  # another job trained it while we waited
            return load_state(path), "hit", path
        state_dict, meta = train()
        obj = {"state_dict": state_dict, "meta": meta}
        torch_save(path, obj)
        write_json(folder / "meta.json", meta)
    return obj, "miss", path
