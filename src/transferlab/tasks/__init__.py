"""Task kinds. `build_task` is the one entry: config -> TaskData (splits fixed, subset drawn, inputs adapted)."""

from __future__ import annotations

from importlib import import_module

from transferlab.errors import ConfigError, problem
from transferlab.tasks.adapt import check_task_keys
from transferlab.tasks.base import TaskData

# kind -> module with `load(cfg, *, key, data_seed, data_dir) -> TaskData`
KINDS = {
    "digits": "transferlab.tasks.digits",
    "iris": "transferlab.tasks.iris",
    "torchvision": "transferlab.tasks.vision",
    "npz": "transferlab.tasks.npz",
    "image_folder": "transferlab.tasks.image_folder",
    "custom": "transferlab.tasks.custom",  # your own function, named by <task>._target_
}


def build_task(cfg, *, key: str, data_seed: int, data_dir: str | None = None) -> TaskData:
    kind = str(cfg.get("kind"))
    if kind not in KINDS:
        raise ConfigError(problem(f"{key}.kind", kind, f"one of {sorted(KINDS)}"))
    problems = check_task_keys(cfg, key)
    if problems:
        raise ConfigError(problems)
    return import_module(KINDS[kind]).load(cfg, key=key, data_seed=data_seed, data_dir=data_dir)


__all__ = ["TaskData", "build_task", "KINDS"]
