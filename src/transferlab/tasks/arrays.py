"""Turn labelled arrays into a TaskData: class selection, fixed splits, the labelled subset, leakage checks.

Every task kind ends here, so splitting, sampling, input adaptation and leakage rules are the same for all.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Sequence

import numpy as np
import torch

from transferlab.errors import ConfigError, problem
from transferlab.tasks.adapt import Adapter
from transferlab.tasks.base import TaskData
from transferlab.tasks.sampling import cap_per_class, check_disjoint, draw_subset, fixed_split

log = logging.getLogger(__name__)


def _select_classes(cfg, key: str, labels: np.ndarray, class_names: Sequence[str]) -> list[int]:
    """Original label ids of the classes this task keeps (in the order given)."""
    wanted = cfg.get("classes")
    if wanted is None:
        return sorted(int(c) for c in np.unique(labels) if c >= 0)  # -1: in no relabel group
    ids = []
    by_name = {str(n): i for i, n in enumerate(class_names)}
    for c in wanted:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < len(class_names):
            ids.append(int(c))
        elif str(c) in by_name:
            ids.append(by_name[str(c)])
        else:
            raise ConfigError(problem(f"{key}.classes", list(wanted),
                                      f"{c!r} is not a class; valid: {list(class_names)}"))
    if len(set(ids)) != len(ids) or len(ids) < 2:
        raise ConfigError(problem(f"{key}.classes", list(wanted),
                                  "at least two distinct classes"))
    return ids


def _keep(y: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the kept classes in y, their labels remapped to 0..C-1 in `ids` order)."""
    lut = np.full(max(int(y.max(initial=0)), max(ids)) + 1, -1, dtype=np.int64)
    lut[ids] = np.arange(len(ids))
    pos = np.flatnonzero(np.isin(y, ids))
    return pos, lut[y[pos]]


def _part(cfg, key: str, x: np.ndarray, y: np.ndarray, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half `a` or `b` of the examples (stratified by the original label, fixed by split_seed)."""
    part = str(cfg.part)
    if part not in ("a", "b"):
        raise ConfigError(problem(f"{key}.part", cfg.part, "null (all examples), a or b (a fixed half)"))
    a, b = fixed_split(y, 0.5, split_seed + 7)
    keep = a if part == "a" else b
    return x[keep], y[keep]


def _groups(cfg, key: str, class_names: Sequence[str]) -> dict[str, list[int]]:
    """relabel: {new_name: [original classes by name or id]} -> {new_name: [original ids]}, each used once."""
    by_name = {str(n): i for i, n in enumerate(class_names)}
    groups: dict[str, list[int]] = {}
    seen: set[int] = set()
    for new, members in dict(cfg.relabel).items():
        ids = []
        for c in list(members):
            cid = by_name.get(str(c), c if isinstance(c, int) and 0 <= c < len(class_names) else None)
            if cid is None or cid in seen:
                raise ConfigError(problem(f"{key}.relabel.{new}", list(members),
                                          f"original classes, each in one group only; valid: {list(class_names)}"))
            seen.add(cid)
            ids.append(cid)
        groups[str(new)] = ids
    if len(groups) < 2:
        raise ConfigError(problem(f"{key}.relabel", dict(cfg.relabel), "at least two groups {name: [classes]}"))
    return groups


def _apply_groups(y: np.ndarray, groups: dict[str, list[int]]) -> np.ndarray:
    """Original labels -> group index; classes in no group become -1 (dropped by class selection)."""
    lut = np.full(max(int(y.max(initial=0)), *(max(g) for g in groups.values())) + 1, -1, dtype=np.int64)
    for g, ids in enumerate(groups.values()):
        lut[ids] = g
    return lut[y]


def _row_hashes(x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return np.array([hashlib.blake2b(r.tobytes(), digest_size=8).hexdigest() for r in flat])


def _duplicates(pool: np.ndarray, **held: np.ndarray) -> dict[str, int]:
    """Count held-out examples that are byte-identical to some train-pool example (content leakage)."""
    seen = set(_row_hashes(pool))
    return {name: int(sum(h in seen for h in _row_hashes(a))) for name, a in held.items() if len(a)}


def _split(y: np.ndarray, size, split_seed: int, key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return fixed_split(y, size, split_seed)
    except ValueError as e:  # too few examples per class to stratify
        raise ConfigError(problem(f"{key}.{what}", size, f"a held-out split this data can give: {e}")) from None


def as_float(a: np.ndarray) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; anything else -> float32 as is."""
    t = torch.as_tensor(np.ascontiguousarray(a))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.to(torch.float32)


def task_from_arrays(
    cfg,
    *,
    key: str,
    data_seed: int,
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    info: dict | None = None,
) -> TaskData:
    """Build the task's fixed splits and this run's labelled subset.

    `x` arrays are N x C x H x W images (uint8, or float in [0, 1]) or N x D features; labels are ints indexing
    `class_names`. Missing test/val splits are carved from `x` with the task's `split_seed` (stratified), so
    they are the same for every run seed and every n; the subset is then drawn from what remains (the pool).
    """
    split_seed = int(cfg.get("split_seed", 0))
    y, class_names = np.asarray(y), list(class_names)
    if cfg.get("part") is not None:  # one fixed half of the examples: source and target see different images
        x, y = _part(cfg, key, x, y, split_seed)
        if x_test is not None:
            x_test, y_test = _part(cfg, key, x_test, np.asarray(y_test), split_seed)
    if cfg.get("relabel") is not None:  # a different label on the same inputs (e.g. parity of a digit)
        groups = _groups(cfg, key, class_names)
        y = _apply_groups(y, groups)
        y_test = None if y_test is None else _apply_groups(np.asarray(y_test), groups)
        y_val = None if y_val is None else _apply_groups(np.asarray(y_val), groups)
        class_names = list(groups)
    ids = _select_classes(cfg, key, y, class_names)
    names = [str(class_names[i]) for i in ids]
    pool_pos, pool_y = _keep(y, ids)
    if cfg.get("max_per_class") is not None:  # fixed (split_seed) cap of the dataset's train split per class
        kept = cap_per_class(pool_y, int(cfg.max_per_class), split_seed)
        pool_pos, pool_y = pool_pos[kept], pool_y[kept]
    origins: dict[str, tuple[str, np.ndarray]] = {}

    if x_test is None:
        rest, test = _split(pool_y, float(cfg.get("test_fraction", 0.25)), split_seed, key, "test_fraction")
        origins["test"] = ("train", pool_pos[test])
        test_y = pool_y[test]
        pool_pos, pool_y = pool_pos[rest], pool_y[rest]
    else:
        pos, test_y = _keep(np.asarray(y_test), ids)
        origins["test"] = ("test", pos)
    if x_val is None:
        size = cfg.get("val_size") or float(cfg.get("val_fraction", 0.2))
        rest, val = _split(pool_y, size, split_seed + 1, key, "val_size" if cfg.get("val_size") else "val_fraction")
        origins["val"] = ("train", pool_pos[val])
        val_y = pool_y[val]
        pool_pos, pool_y = pool_pos[rest], pool_y[rest]
    else:
        pos, val_y = _keep(np.asarray(y_val), ids)
        origins["val"] = ("val", pos)
    origins["train"] = ("train", pool_pos)
    missing = [names[c] for c in range(len(ids)) if not np.any(pool_y == c)]
    if missing:
        raise ConfigError(problem(f"{key}.classes", cfg.get("classes"),
                                  f"classes with training examples; none left for {missing}"))
    check_leakage(str(cfg.name), origins)

    arrays = {"train": x, "val": x_val, "test": x_test}
    take = {s: arrays[a][i] for s, (a, i) in origins.items()}
    if len(take["train"]) == 0 or len(take["val"]) == 0 or len(take["test"]) == 0:
        raise ConfigError(problem(f"{key}.classes", cfg.get("classes"), "classes with examples in every split; "
                                  f"got train/val/test sizes {[len(take[s]) for s in ('train', 'val', 'test')]}"))
    dups = _duplicates(take["train"], val=take["val"], test=take["test"])
    if any(dups.values()):
        log.warning("task %s: held-out examples identical to train-pool examples: %s", cfg.name, dups)

    indices = draw_subset(
        pool_y,
        n_per_class=cfg.get("n_per_class"),
        n_train=cfg.get("n_train"),
        data_seed=data_seed,
        n_policy=str(cfg.get("n_policy", "error")),
        key=key,
    )
    adapter = Adapter(cfg, key)
    as_l = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    train_x = adapter.fit_transform(as_float(take["train"]))
    return TaskData(
        name=str(cfg.name), class_names=names,
        train_x=train_x, train_y=as_l(pool_y), val_x=adapter(as_float(take["val"])), val_y=as_l(val_y),
        test_x=adapter(as_float(take["test"])), test_y=as_l(test_y), train_indices=indices, origins=origins,
        info={**(info or {}), "input": adapter.describe(), "duplicates_of_train": dups,
              "sizes": {"pool": len(pool_y), "val": len(val_y), "test": len(test_y), "train": len(indices)}},
    )


def check_leakage(name: str, origins: dict[str, tuple[str, np.ndarray]]) -> None:
    """Splits read from the same array must not share an index (raises at setup otherwise)."""
    by_array: dict[str, dict[str, np.ndarray]] = {}
    for split, (array, idx) in origins.items():
        by_array.setdefault(array, {})[split] = idx
    for splits in by_array.values():
        check_disjoint(name, **splits)
