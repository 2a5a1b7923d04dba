"""Fixed stratified splits and nested, seeded labelled subsets of a train pool."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from transferlab.errors import ConfigError, problem


def fixed_split(labels: np.ndarray, size: float | int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (rest, held_out) index split; depends only on the labels and `split_seed`.

    `size` is a fraction in (0, 1) or a number of examples.
    """
    idx = np.arange(len(labels))
    rest, held = train_test_split(idx, test_size=size, stratify=labels, random_state=split_seed)
    return np.sort(rest), np.sort(held)


def per_class_split(labels: np.ndarray, k: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held_out) with exactly `k` held-out examples of every class, a fixed seeded choice (`split_seed`).
    ValueError when a class has no more than k examples (none would be left to train on)."""
    short = {int(c): int(np.sum(labels == c)) for c in np.unique(labels) if np.sum(labels == c) <= k}
    if short:
        raise ValueError(f"classes {sorted(short)} have only {sorted(set(short.values()))} examples; at most "
                         f"{min(short.values()) - 1} per class can be held out")
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([int(split_seed), 104729, int(c)])
        held.append(members[rng.permutation(len(members))[:k]])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_idx), held_idx


def cap_per_class(labels: np.ndarray, cap: int, split_seed: int) -> np.ndarray:
    """Sorted positions keeping at most `cap` examples of each class (a fixed, seeded choice)."""
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([int(split_seed), 7919, int(c)])
        keep.append(members[rng.permutation(len(members))[:cap]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def class_orders(labels: np.ndarray, data_seed: int) -> list[np.ndarray]:
    """One seeded permutation of each class's pool positions. Subsets are prefixes, hence nested in n."""
    orders = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([int(data_seed), c])
        orders.append(members[rng.permutation(len(members))])
    return orders


def draw_subset(
    labels: np.ndarray,
    *,
    n_per_class: int | None,
    n_train: int | None,
    data_seed: int,
    n_policy: str = "error",
    key: str = "target",
) -> np.ndarray:
    """Indices of the labelled training subset (sorted).

    n_per_class takes a prefix of every class's seeded permutation. n_train takes a stratified total: classes
    are visited round-robin along their permutations, so it too is nested in N for a fixed seed.
    """
    orders = class_orders(labels, data_seed)
    if n_per_class is None and n_train is None:
        return np.arange(len(labels))
    if n_per_class is not None:
        short = [c for c, o in enumerate(orders) if len(o) < n_per_class]
        if short and n_policy != "cap":
            smallest = min(len(o) for o in orders)
            raise ConfigError(problem(f"{key}.n_per_class", n_per_class,
                                      f"at most {smallest} (the smallest class pool); or set {key}.n_policy=cap"))
        return np.sort(np.concatenate([o[:n_per_class] for o in orders]))
    if n_train > len(labels) and n_policy != "cap":
        raise ConfigError(problem(f"{key}.n_train", n_train,
                                  f"at most {len(labels)} (the train pool); or set {key}.n_policy=cap"))
    # Round-robin over classes: rank r of every class comes before rank r+1 of any class.
    ranked = sorted(
        ((rank, c, i) for c, o in enumerate(orders) for rank, i in enumerate(o)),
        key=lambda t: (t[0], t[1]),
    )
    return np.sort(np.array([i for _, _, i in ranked[:n_train]], dtype=np.int64))


def check_disjoint(name: str, **splits: np.ndarray) -> None:
    """Raise if any two index sets of the same underlying array overlap (leakage)."""
    items = list(splits.items())
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            both = np.intersect1d(items[a][1], items[b][1])
            if len(both):
                raise RuntimeError(f"task {name}: {items[a][0]} and {items[b][0]} share {len(both)} examples")
