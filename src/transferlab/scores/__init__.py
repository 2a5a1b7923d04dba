"""Transferability scores: how well a source model should transfer to a target task, measured before training.

The public, stable API (numpy in, float out; researchers call it on their own features):

    from transferlab.scores import logme, hscore, nce, leep
    logme(features, labels)        # features [N, D], labels [N]     You et al. 2021
    hscore(features, labels)       # Ledoit-Wolf shrunk covariance   Bao et al. 2019; Ibrahim et al. 2022
    leep(source_probs, labels)     # source softmax [N, Cs]          Nguyen et al. 2020
    nce(source_pred, labels)       # source argmax [N]               Tran et al. 2019

Higher is better for all four. Each function's docstring gives its paper and formula. Input on which a score is
not defined (a single class, one example per class, constant or non-finite features) gives NaN and logs the
reason on the `transferlab.scores` logger; `on_degenerate="raise"` raises `Degenerate` (a ValueError whose message
is the reason) instead. Malformed input (wrong shapes, logits for probabilities) raises ValueError.

Torch-free: the run computes the inputs (`transferlab.run.scoring`: pooled features at the cut, the source
model's predictions) and records what these return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from transferlab.scores._hscore import hscore
from transferlab.scores._input import Degenerate
from transferlab.scores._leep import leep
from transferlab.scores._logme import logme
from transferlab.scores._nce import nce

__all__ = ["logme", "hscore", "leep", "nce", "Degenerate", "METHODS", "Method", "evaluate"]


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., float]
    needs: str  # what it scores: "features" (at the cut), "source_probs" or "source_pred" (the source head's)
    paper: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("logme", logme, "features", "You et al. 2021, LogME (ICML)"),
    Method("hscore", hscore, "features", "Bao et al. 2019, H-score (ICIP); Ledoit-Wolf shrinkage: Ibrahim et al. 2022"),
    Method("nce", nce, "source_pred", "Tran et al. 2019, NCE (ICCV)"),
    Method("leep", leep, "source_probs", "Nguyen et al. 2020, LEEP (ICML)"),
)}


def evaluate(name: str, inputs: Any, labels: Any) -> tuple[float, str | None]:
    """(value, None), or (NaN, the reason) when the score is not defined on this input."""
    try:
        return METHODS[name].fn(inputs, labels, on_degenerate="raise"), None
    except Degenerate as e:
        return math.nan, str(e)
