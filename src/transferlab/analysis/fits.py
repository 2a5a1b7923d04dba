"""Learning-curve fits: accuracy as a function of the labelled examples per class, n, for every arm.

Why: a handful of n values are points on a curve; the curve says where an arm saturates (its asymptote), how fast
it gets there, and lets the report read off how much scratch data an accuracy is worth (`effective_data`).

Forms (each increasing in n and, but for the log form, saturating):

- `power`: acc(n) = a - b n^(-c), 0 <= a <= 1, b >= 0, c > 0. Error falls as a power law towards an irreducible
  floor 1 - a: Hestness et al. 2017, "Deep Learning Scaling is Predictable, Empirically" (arXiv:1712.00409), and the
  form M2 (eps = beta x^c + eps_inf) of Alabdulmohsin, Neyshabur & Zhai 2022, "Revisiting Neural Scaling Laws in
  Language and Vision" (NeurIPS). The default form.
- `exp`: acc(n) = a - b exp(-c n), same bounds: exponential saturation ("exp3" in Viering & Loog 2022, "The Shape
  of Learning Curves: a Review", IEEE TPAMI), which bends faster than any power law.
- `log`: acc(n) = a + b ln n, b >= 0: log-linear, no asymptote ("log2" in Viering & Loog 2022); what an arm that
  has not begun to saturate in the sampled range looks like.

Choice: by extrapolation, as Alabdulmohsin et al. 2022 judge scaling-law forms: each form is fitted without the
largest n and predicts it; the form with the smallest absolute error there is kept, and then fitted to every n.
That held-out error is reported for every form and for the chosen one (`heldout_error`: predicted minus observed
at the largest n): how far the curve can be trusted beyond the data. A 3-parameter form needs 4 distinct n to be
held out (3 points to fit, 1 to predict); with exactly 3 n the power law is fitted without a held-out check and
`selection` says so; with fewer than 3 n nothing is fitted and `reason` says why.

Fits are least squares on the mean over seeds at each n (`scipy.optimize.curve_fit`, trust-region reflective with
the bounds above, a few starting points, the lowest residual kept); n is per class throughout.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 3  # distinct n below which no curve is fitted
TOL = 1e-9  # accuracy within this of the curve's value at an end of the range is that end (float round-off)


@dataclass(frozen=True)
class Form:
    name: str
    formula: str
    f: Callable[..., np.ndarray]
    inverse: Callable[..., float]         # (y, *params) -> n with f(n) = y; NaN if the curve never reaches y
    asymptote: Callable[..., float]       # (*params) -> sup over n of f(n)
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    starts: Callable[[np.ndarray, np.ndarray], list[tuple[float, ...]]]
    jac: Callable[..., np.ndarray] | None = None  # (n, *params) -> len(n) x params derivatives of f

    @property
    def n_params(self) -> int:
        return len(self.lower)


def _power(n, a, b, c):
    return a - b * np.power(n, -c)


def _power_jac(n, a, b, c):
    t = np.power(n, -c)
    return np.column_stack([np.ones_like(n), -t, b * t * np.log(n)])


def _power_inv(y, a, b, c):
    return float((b / (a - y)) ** (1 / c)) if y < a and b > 0 else math.nan


def _power_starts(n, y):
    a0 = min(1.0, float(y.max()) + 0.02)
    return [(a0, max((a0 - float(y[0])) * float(n[0]) ** c, 1e-3), c) for c in (0.25, 0.5, 1.0, 2.0)]


def _exp(n, a, b, c):
    return a - b * np.exp(-c * n)


def _exp_jac(n, a, b, c):
    t = np.exp(-c * n)
    return np.column_stack([np.ones_like(n), -t, b * n * t])


def _exp_inv(y, a, b, c):
    return float(-math.log((a - y) / b) / c) if y < a and b > 0 else math.nan


def _exp_starts(n, y):
    a0 = min(1.0, float(y.max()) + 0.02)
    out = []
    for scale in (float(n.min()), float(np.median(n)), float(n.max())):
        c = 1.0 / scale
        out.append((a0, max((a0 - float(y[0])) * math.exp(min(c * float(n[0]), 50.0)), 1e-3), c))
    return out


def _log(n, a, b):
    return a + b * np.log(n)


def _log_inv(y, a, b):
    return float(math.exp(min((y - a) / b, 700.0))) if b > 0 else math.nan


FORMS: dict[str, Form] = {
    "power": Form("power", "a - b*n^(-c)", _power, _power_inv, lambda a, b, c: a,
                  (0.0, 0.0, 1e-6), (1.0, np.inf, 10.0), _power_starts, _power_jac),
    "exp": Form("exp", "a - b*exp(-c*n)", _exp, _exp_inv, lambda a, b, c: a,
                (0.0, 0.0, 1e-9), (1.0, np.inf, np.inf), _exp_starts, _exp_jac),
    "log": Form("log", "a + b*ln(n)", _log, _log_inv, lambda a, b: math.inf,
                (-np.inf, 0.0), (np.inf, np.inf), lambda n, y: []),
}
DEFAULT_FORM = "power"


def fit_form(form: Form, n: Sequence[float], y: Sequence[float],
             start: Sequence[float] | None = None) -> tuple[float, ...] | None:
    """Least-squares parameters of `form` on (n, y), within its bounds; None if no start converges.

    `start` (e.g. the parameters fitted on all seeds, for a bootstrap refit) replaces the form's own starts."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if form.name == "log":  # linear in (a, b): the constrained least squares is closed-form
        if len(n) < 2:
            return None
        x = np.log(n)
        b = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
        b = max(b, 0.0)  # the slope's bound: at b = 0 the best a is the mean
        return float(np.mean(y - b * x)), b
    best, best_sse = None, math.inf
    for p0 in ([tuple(start)] if start is not None else form.starts(n, y)):
        p0 = np.clip(np.asarray(p0, dtype=float), np.asarray(form.lower) + 1e-12,
                     np.where(np.isinf(form.upper), np.inf, np.asarray(form.upper) - 1e-12))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                p, _ = curve_fit(form.f, n, y, p0=p0, bounds=(form.lower, form.upper), method="trf",
                                 jac=form.jac or "2-point", max_nfev=5000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((form.f(n, *p) - y) ** 2))
        if np.isfinite(sse) and sse < best_sse - 1e-15:
            best, best_sse = tuple(float(v) for v in p), sse
    return best


def heldout_error(form: Form, n: Sequence[float], y: Sequence[float]) -> float:
    """Predicted minus observed at the largest n when `form` is fitted without it; NaN when the remaining points
    are fewer than the form's parameters (an underdetermined fit predicts nothing) or the fit fails."""
    n, y = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    order = np.argsort(n)
    n, y = n[order], y[order]
    if len(n) - 1 < form.n_params:
        return math.nan
    p = fit_form(form, n[:-1], y[:-1])
    return math.nan if p is None else float(form.f(n[-1], *p) - y[-1])


@dataclass
class Fit:
    """One arm's fitted curve: the chosen form, its parameters, and what the choice rested on."""
    form: str | None
    params: tuple[float, ...] | None
    n_min: float
    n_max: float
    n_points: int
    rmse: float = math.nan
    heldout: dict[str, float] | None = None  # form -> held-out error at the largest n
    selection: str = ""
    reason: str = ""

    def predict(self, n) -> np.ndarray:
        return FORMS[self.form].f(np.asarray(n, dtype=float), *self.params)

    @property
    def asymptote(self) -> float:
        return FORMS[self.form].asymptote(*self.params) if self.form else math.nan


def fit_curve(n: Sequence[float], y: Sequence[float], forms: Sequence[str] = tuple(FORMS)) -> Fit:
    """The learning curve of one arm from its mean accuracy at each distinct n (see the module docstring)."""
    pts = sorted((float(a), float(b)) for a, b in zip(n, y) if not (pd.isna(a) or pd.isna(b)))
    n_arr, y_arr = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    k = len(set(n_arr.tolist()))
    fit = Fit(None, None, float(n_arr.min()) if k else math.nan, float(n_arr.max()) if k else math.nan, k)
    if k < MIN_POINTS:
        fit.reason = f"{k} distinct n, and a fit needs at least {MIN_POINTS}"
        return fit
    full = {name: fit_form(FORMS[name], n_arr, y_arr) for name in forms}
    fit.heldout = {name: heldout_error(FORMS[name], n_arr, y_arr) for name in forms}
    checked = [name for name in forms if full[name] is not None and not pd.isna(fit.heldout[name])]
    if any(FORMS[name].n_params == 3 for name in checked):  # a fair contest: the saturating forms take part
        chosen = min(checked, key=lambda name: abs(fit.heldout[name]))  # ties: the earlier (power first)
        fit.selection = "smallest held-out error at the largest n among " + ", ".join(checked)
    elif full.get(DEFAULT_FORM) is not None:
        chosen = DEFAULT_FORM
        fit.selection = (f"{k} n: too few to hold one out for a 3-parameter form; {DEFAULT_FORM} law by default, "
                         "no held-out check")
    else:
        fit.reason = "no form converged"
        return fit
    fit.form, fit.params = chosen, full[chosen]
    fit.rmse = float(np.sqrt(np.mean((fit.predict(n_arr) - y_arr) ** 2)))
    return fit


def invert(fit: Fit, y: float, n_range: tuple[float, float] | None = None) -> tuple[float, str]:
    """(n at which the fitted curve reaches accuracy y, censoring flag), inverted only within the n range the fit
    saw (`n_range`, default its own): outside it the value would be an extrapolation, so it is censored instead.

    Flags: "" (a value), "above" (y is above the curve at the largest n: n > n_max, a lower bound),
    "above_asymptote" (y is at or above the curve's asymptote: no amount of data reaches it, per the fit),
    "below" (y is below the curve at the smallest n: n < n_min, an upper bound), "flat" (the curve is flat over the
    range and equals y: any n). The value is NaN whenever the flag is not ""."""
    if fit.form is None or pd.isna(y):
        return math.nan, "no_fit"
    lo, hi = n_range or (fit.n_min, fit.n_max)
    y_lo, y_hi = float(fit.predict(lo)), float(fit.predict(hi))
    if y > y_hi + TOL:
        return math.nan, "above_asymptote" if y >= fit.asymptote else "above"
    if y < y_lo - TOL:
        return math.nan, "below"
    if y_hi - y_lo <= 1e-12:
        return math.nan, "flat"
    y = min(max(y, y_lo), y_hi)  # within TOL of an end: that end
    n = FORMS[fit.form].inverse(y, *fit.params)
    return (float(min(max(n, lo), hi)), "") if not pd.isna(n) else (math.nan, "above_asymptote")


def fit_lines(summary: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Fit]]:
    """One fitted curve per line (arm across n) of every setting, from `summary`'s mean over seeds at each n:
    (`fits.csv`'s table, {line_key: Fit}). Columns: the chosen `form` and `formula`, parameters `a, b, c`, the
    `asymptote` (inf for the log form), the in-sample `rmse`, the held-out check (`heldout_n`, `heldout_obs`,
    `heldout_pred`, `heldout_error` of the chosen form; `heldout_error_<form>` of each), `selection` and, when
    nothing was fitted, `reason`."""
    cols = ["setting", "target", "backbone", "arm", "is_scratch", "form", "formula", "a", "b", "c", "asymptote",
            "n_points", "n_min", "n_max", "rmse", "heldout_n", "heldout_obs", "heldout_pred", "heldout_error",
            *[f"heldout_error_{f}" for f in FORMS], "selection", "reason", "setting_key", "line_key"]
    rows, fits = [], {}
    if summary.empty:
        return pd.DataFrame(columns=cols), fits
    for (sk, lk), g in summary.groupby(["setting_key", "line_key"], sort=False):
        g = g.sort_values("n")
        fit = fit_curve(g["n"], g["acc_mean"])
        fits[lk] = fit
        r0 = g.iloc[0]
        params = list(fit.params or ()) + [math.nan] * (3 - len(fit.params or ()))
        last = g.iloc[-1]
        err = fit.heldout.get(fit.form, math.nan) if fit.heldout and fit.form else math.nan
        rows.append({"setting": r0["setting"], "target": r0["target"], "backbone": r0["backbone"], "arm": r0["arm"],
                     "is_scratch": bool(r0["is_scratch"]), "form": fit.form,
                     "formula": FORMS[fit.form].formula if fit.form else None,
                     "a": params[0], "b": params[1], "c": params[2], "asymptote": fit.asymptote,
                     "n_points": fit.n_points, "n_min": fit.n_min, "n_max": fit.n_max, "rmse": fit.rmse,
                     "heldout_n": float(last["n"]) if fit.n_points >= MIN_POINTS else math.nan,
                     "heldout_obs": float(last["acc_mean"]) if fit.n_points >= MIN_POINTS else math.nan,
                     "heldout_pred": float(last["acc_mean"]) + err if not pd.isna(err) else math.nan,
                     "heldout_error": err,
                     **{f"heldout_error_{f}": (fit.heldout or {}).get(f, math.nan) for f in FORMS},
                     "selection": fit.selection, "reason": fit.reason, "setting_key": sk, "line_key": lk})
    frame = pd.DataFrame(rows, columns=cols)
    return frame.sort_values(["setting", "is_scratch", "arm"], kind="stable").reset_index(drop=True), fits
