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
from transferlab.tasks.sampling import cap_per_class, check_disjoint, draw_subset, fixed_split, per_class_split

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
    a, b = fixed_split(y, 0.5, split_seed + 7)
    keep = a if str(cfg.part) == "a" else b
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


# seed offsets of the fixed choices made with `split_seed`: val carved from the pool (+1), the val cap (+2)
VAL_CAP_SALT = 2
_SCAN_VALUES = 1 << 22  # values per chunk when scanning inputs: bounds the temporary masks on big float arrays
_F32_MAX = float(np.finfo(np.float32).max)


def _scan(a: np.ndarray, want_range: bool) -> tuple[np.ndarray, int, float, float]:
    """(rows holding a non-finite value, how many such values, min, max of the finite values) of one input array.

    "Non-finite" includes values beyond float32's range in wider float arrays: `as_float` turns them into inf.
    Chunked by rows so a large float file never needs a full-size mask; integer arrays are finite by type and
    are only read when their range matters.
    """
    lo, hi = np.inf, -np.inf
    if a.size == 0:
        return np.zeros(0, dtype=np.int64), 0, lo, hi
    if not np.issubdtype(a.dtype, np.floating):
        if want_range:
            lo, hi = float(a.min()), float(a.max())
        return np.zeros(0, dtype=np.int64), 0, lo, hi
    flat = a.reshape(len(a), -1)
    step = max(1, _SCAN_VALUES // max(1, flat.shape[1]))
    rows, count = [], 0
    wide = np.finfo(a.dtype).max > _F32_MAX
    for i in range(0, len(flat), step):
        c = flat[i:i + step]
        ok = np.isfinite(c)
        if wide:
            ok &= np.abs(c, where=ok, out=np.zeros_like(c)) <= _F32_MAX
        if not ok.all():
            rows.append(i + np.flatnonzero(~ok.all(1)))
            count += int(ok.size - np.count_nonzero(ok))
        if want_range and ok.any():
            lo = min(lo, float(np.min(c, where=ok, initial=np.inf)))
            hi = max(hi, float(np.max(c, where=ok, initial=-np.inf)))
    return (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)), count, lo, hi


def check_inputs(key: str, arrays: dict[str, np.ndarray | None], names: dict[str, str] | None,
                 range_checked: bool) -> None:
    """The arrays as given, before any split is carved: every value finite; images (N x C x H x W) in [0, 1].

    A NaN/inf input trains to a NaN loss, tests to a NaN metric, or (in val) silently steers model selection,
    so it is an error at setup, counted per array with its first rows so the user can repair the file. Images
    other than uint8 (which is scaled by 255) must already be in [0, 1]: 0..255 floats would otherwise train on
    inputs 255 times too large without a word. `range_checked=False` (normalize=prenormalized) takes the
    inputs as they are; feature vectors (N x D) have no expected range. One ConfigError, one line per kind.
    """
    names = names or {}
    bad, out_of_range = [], []
    for split, a in arrays.items():
        if a is None:
            continue
        image_range = range_checked and a.ndim == 4 and a.dtype != np.uint8 and a.dtype != np.bool_
        rows, count, lo, hi = _scan(a, image_range)
        label = names.get(split, f"{split} inputs")
        if count:
            shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            what = "NaN/inf" if np.finfo(a.dtype).max <= _F32_MAX else "NaN/inf or values beyond float32 (+-3.4e38)"
            bad.append(f"{label}: {len(rows)} of {len(a)} examples hold {what} "
                       f"({count} value{'s' * (count > 1)}; rows {shown})")
        if image_range and lo <= hi and (lo < 0.0 or hi > 1.0):
            out_of_range.append(f"{label}: {a.dtype} images in [{lo:.4g}, {hi:.4g}]")
    problems = []
    if bad:
        problems.append(problem(key, "; ".join(bad), "finite inputs in every split (NaN/inf gives NaN losses and "
                                "metrics, and in val steers model selection); repair or drop those examples"))
    if out_of_range:
        problems.append(problem(key, "; ".join(out_of_range),
                                "image pixels as uint8 0..255 or float in [0, 1]: store uint8, divide by 255 "
                                "(or clip), or, for inputs you standardised yourself, set "
                                f"{key}.normalize=prenormalized to use them as they are"))
    if problems:
        raise ConfigError(problems)


def _check_adapted(key: str, adapter: Adapter, tensors: dict[str, torch.Tensor]) -> None:
    """Finite inputs can still overflow float32 when normalised (e.g. a tiny explicit std): check the result.

    Only normalisation can do that (resizing and channel mixing are convex combinations), so without it the
    scan of the raw arrays already proved the tensors finite and this costs nothing.
    """
    if adapter.mean is None:
        return
    counts = {s: int(t.numel() - torch.isfinite(t).sum()) for s, t in tensors.items()}
    bad = ", ".join(f"{s} {n}" for s, n in counts.items() if n)
    if bad:
        raise ConfigError(problem(f"{key}.normalize", adapter.shown_norm(),
                                  f"statistics that keep the inputs finite; after normalisation these values are "
                                  f"NaN/inf (float32 overflow: a std that small, or inputs that large): {bad}"))


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
    array_names: dict[str, str] | None = None,
) -> TaskData:
    """Build the task's fixed splits and this run's labelled subset.

    `x` arrays are N x C x H x W images (uint8, or float in [0, 1]) or N x D features; labels are ints indexing
    `class_names`. Missing test/val splits are carved from `x` with the task's `split_seed` (stratified), so
    they are the same for every run seed and every n; the subset is then drawn from what remains (the pool).
    Inputs are checked first (`check_inputs`: finite, images in [0, 1]); `array_names` ({"test": "x_test"})
    lets errors name the arrays as the user's file does.
    """
    adapter = Adapter(cfg, key)
    check_inputs(key, {"train": x, "val": x_val, "test": x_test}, array_names, adapter.range_checked)
    split_seed = int(cfg.split_seed)
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
        rest, test = _split(pool_y, float(cfg.test_fraction), split_seed, key, "test_fraction")
        origins["test"] = ("train", pool_pos[test])
        test_y = pool_y[test]
        pool_pos, pool_y = pool_pos[rest], pool_y[rest]
    else:
        pos, test_y = _keep(np.asarray(y_test), ids)
        origins["test"] = ("test", pos)
    if x_val is None and cfg.get("val_per_class") is not None:  # exactly k per class (few-shot protocols)
        try:
            rest, val = per_class_split(pool_y, int(cfg.val_per_class), split_seed + 1)
        except ValueError as e:
            raise ConfigError(problem(f"{key}.val_per_class", cfg.val_per_class,
                                      f"a held-out split this data can give: {e}")) from None
        origins["val"] = ("train", pool_pos[val])
        val_y = pool_y[val]
        pool_pos, pool_y = pool_pos[rest], pool_y[rest]
    elif x_val is None:
        size = cfg.val_size or float(cfg.val_fraction)
        rest, val = _split(pool_y, size, split_seed + 1, key, "val_size" if cfg.val_size else "val_fraction")
        origins["val"] = ("train", pool_pos[val])
        val_y = pool_y[val]
        pool_pos, pool_y = pool_pos[rest], pool_y[rest]
    elif cfg.get("val_per_class") is not None:  # refused, not ignored: the few-shot val set asked for is not made
        raise ConfigError(problem(f"{key}.val_per_class", cfg.val_per_class,
                                  f"null: this data has its own val split ({len(y_val)} examples), used as it is"))
    else:
        pos, val_y = _keep(np.asarray(y_val), ids)
        origins["val"] = ("val", pos)
    if cfg.get("val_cap_per_class") is not None:  # a smaller val split, whichever way it was made
        array, pos = origins["val"]
        kept = cap_per_class(val_y, int(cfg.val_cap_per_class), split_seed + VAL_CAP_SALT)
        origins["val"], val_y = (array, pos[kept]), val_y[kept]
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
        n_policy=str(cfg.n_policy),
        key=key,
    )
    as_l = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    train_x = adapter.fit_transform(as_float(take["train"]))
    val_x, test_x = adapter(as_float(take["val"])), adapter(as_float(take["test"]))
    _check_adapted(key, adapter, {"train": train_x, "val": val_x, "test": test_x})
    return TaskData(
        name=str(cfg.name), class_names=names,
        train_x=train_x, train_y=as_l(pool_y), val_x=val_x, val_y=as_l(val_y),
        test_x=test_x, test_y=as_l(test_y), train_indices=indices, origins=origins,
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
