"""The result record of one run: the only module that writes or reads result.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from transferlab.store.atomic import write_json

RESULT_FILE = "result.json"

# Keys every record has (status "ok" or "failed"); report code relies on them.
RECORD_KEYS = (
    "status", "error", "name", "source", "target", "backbone", "transfer", "strategy", "cut", "upper", "freeze",
    "frozen_blocks", "trainable_blocks", "trainable_params", "total_params", "n_per_class", "n_train", "seed",
    "data_seed", "metrics", "source_cache", "source_ckpt", "target_ckpt", "train_indices", "wall_s", "config",
    "fingerprint", "inputs", "environment",
)


def write_result(run_dir: str | Path, record: dict[str, Any]) -> Path:
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise KeyError(f"result record lacks {missing}")
    path = Path(run_dir) / RESULT_FILE
    write_json(path, record)
    return path


def read_result(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def find_results(root: str | Path) -> Iterator[Path]:
    """Every result.json below `root` (temp files are named differently and never match)."""
    yield from sorted(Path(root).rglob(RESULT_FILE))
