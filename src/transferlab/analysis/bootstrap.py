"""How much a bootstrap over seeds can say: the number of distinct resamples of k seeds, and the warning line.

The report's bootstrap intervals (crossover n*, effective data transferred) resample seeds with replacement
(Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13 for percentile intervals). A resample of k
seeds is a multiset of size k drawn from k items, so there are only C(2k - 1, k) distinct resamples, whatever the
number of draws: 3 for 2 seeds, 10 for 3, 35 for 4, 126 for 5. With so few, the 2.5% and 97.5% quantiles are set by
one or two extreme resamples (e.g. the one that repeats the best seed k times) and the interval is coarse; it is
also too narrow for small k, since a resample's spread has the divisor k rather than k - 1 (the "narrowness bias",
Hesterberg 2015, "What teachers should know about the bootstrap", The American Statistician 69:371-386). Below
`FEW_SEEDS` seeds the report says so.
"""

from __future__ import annotations

import math

FEW_SEEDS = 5  # below this many seeds the report warns that its bootstrap intervals are coarse


def distinct_resamples(k: int) -> int:
    """Distinct bootstrap resamples (multisets of size k) of k seeds: C(2k - 1, k); 0 for no seed."""
    return math.comb(2 * k - 1, k) if k > 0 else 0


def few_seeds_note(k: int, what: str) -> str | None:
    """One line when `k` seeds are too few for a bootstrap over seeds to mean much (None from FEW_SEEDS on)."""
    if k >= FEW_SEEDS:
        return None
    if k < 2:
        return f"{what}: {k} seed{'s' * (k != 1)}, so no bootstrap interval: the value is a single draw."
    return (f"{what}: bootstrap over {k} seeds has only {distinct_resamples(k)} distinct resamples "
            f"(C(2k-1, k)), so its interval is coarse and tends to be too narrow; use at least {FEW_SEEDS} seeds.")
