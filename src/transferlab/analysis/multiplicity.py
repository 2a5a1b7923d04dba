"""Multiple comparisons: Holm's step-down correction of a family of p-values.

A report that tests every arm against scratch and against the best arm at every n makes many tests; read one by
one at level alpha, some will come out "significant" by chance. Holm (1979, "A simple sequentially rejective
multiple test procedure", Scand. J. Statist. 6:65-70) controls the family-wise error rate (the chance of any false
rejection in the family) under any dependence between the tests, and is uniformly more powerful than Bonferroni.
Which tests form a family is the caller's decision (`paired.comparisons`: one setting at one n).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the input order: sort the m p-values ascending, p_(1) <= ... <= p_(m); the
    adjusted p_(i) is max over j <= i of min(1, (m - j + 1) p_(j)) (the running maximum keeps the step-down
    order). Rejecting where the adjusted p-value is <= alpha is Holm's procedure at level alpha.

    NaN entries (a comparison without a test, e.g. a single paired seed) stay NaN and are not counted in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
