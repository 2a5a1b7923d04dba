"""Paper tables: the summary, the gain over scratch and the effective data transferred, one table per setting,
arms as rows and n as columns, written as LaTeX (booktabs) and Markdown under `<out>/tables/`, and shown in
report.html from the same cells.

Marks, each with one meaning, said in a footnote under each table that uses it:

- summary and effective-data tables (the report's rule, `paired.mark_ties`): **bold** is the best arm at that n
  (highest mean of the lead metric, scratch included: `is_best`, the arm best.csv names), a dagger † marks the
  arms tied with it (their paired t-interval against the best, before any correction, includes 0:
  `tied_with_best`). A bold cell without a dagger beside it in its column is a lead the seeds resolve; bold with
  daggers is the highest mean among arms the data cannot tell apart;
- gain table: its marks are about its own test, the paired t-test of the arm against scratch (the test whose
  interval the cell shows), so a mark and the cell's interval never disagree: * significant after Holm's
  correction (family: the tests at one n, `paired_tests.csv`), ° significant before correction only (the cell's
  interval excludes 0, Holm does not keep it). No bold and no dagger there: those are the summary's.

Labels: `tab:<sweep>-<kind>[-<setting>]`, unique per sweep and setting, so tables of several sweeps can sit in one
paper.

Cells: the summary is "mean ± half-width" of the t-interval over seeds, in % (the lead metric chosen with
`--metric`); the half-width is recomputed from the standard deviation, not taken from the interval clipped to
[0, 1]. The gain is the paired mean ± its half-width in percentage points. Effective data is D_T in examples per
class with its percentile bootstrap interval in brackets (asymmetric, hence no ±), censored values and interval
ends as bounds ("> 15", "< 0"). A single seed has no interval: the mean alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from scipy import stats as st

from transferlab.analysis.effective_data import interval_end
from transferlab.analysis.naming import setting_tags
from transferlab.store.atomic import atomic_path

DAGGER = "†"
UNCORRECTED = "°"  # gain table: significant before Holm's correction only


@dataclass
class Cell:
    text: str = "–"
    best: bool = False  # bold
    tied: bool = False  # dagger: not distinguishable from the best
    significant: bool = False  # asterisk (gain table): Holm-adjusted paired test vs scratch
    uncorrected: bool = False  # degree sign (gain table): the same test significant before correction only


@dataclass
class Grid:
    """One table: arms x n for one setting."""

    kind: str  # summary | gain | effective_data
    setting: str
    tag: str  # file-name suffix of the setting ("" for a single setting)
    caption: str
    columns: list[str]  # n labels
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # footnotes, plain text
    sweep: str = ""  # the sweep's name: part of the LaTeX label

    @property
    def name(self) -> str:
        return f"{self.kind}{self.tag}"

    @property
    def label(self) -> str:
        """`tab:<sweep>-<kind>[-<setting>]`: unique per sweep and setting (LaTeX labels allow letters, digits and
        `-:.`; anything else becomes `-`)."""
        parts = [self.sweep, self.kind, self.tag]
        slug = "-".join(re.sub(r"[^A-Za-z0-9:.]+", "-", p).strip("-") for p in parts if p)
        return f"tab:{re.sub('-+', '-', slug)}"


def _half(std: float, n: int, confidence: float) -> float:
    if pd.isna(std) or n is None or pd.isna(n) or n < 2:
        return math.nan
    return float(st.t.ppf(0.5 + confidence / 2, df=int(n) - 1)) * float(std) / math.sqrt(int(n))


def _pm(mean: float, half: float, signed: bool = False) -> str:
    m = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return m if pd.isna(half) else f"{m} ± {100 * half:.1f}"


def _flags(summary_rows: pd.DataFrame) -> dict[tuple[str, str], tuple[bool, bool]]:
    """(arm, n_label) -> (best, tied) from the summary's `is_best` / `tied_with_best` (NA: neither)."""
    out = {}
    for _, r in summary_rows.iterrows():
        best = r.get("is_best")
        tied = r.get("tied_with_best")
        out[(r["arm"], r["n_label"])] = (bool(best) if not pd.isna(best) else False,
                                         bool(tied) if not pd.isna(tied) else False)
    return out


def _arms(frame: pd.DataFrame) -> list[str]:
    """Transfer arms by freeze depth, then scratch lines last."""
    scratch = frame["is_scratch"].astype(bool) if "is_scratch" in frame else pd.Series(False, index=frame.index)
    t = frame[~scratch].drop_duplicates("arm").sort_values(["freeze", "arm"], na_position="last")["arm"].tolist()
    return t + sorted(frame.loc[scratch, "arm"].unique())


def _arm_rows(frame: pd.DataFrame, cols: list[str], cell: Callable[[str, str, pd.Series], Cell]
              ) -> list[tuple[str, list[Cell]]]:
    """One row per arm (`_arms` order), one cell per n column: `cell(arm, n, row)` of the frame's row for that arm
    and n, an empty cell where it has none."""
    rows = []
    for arm in _arms(frame):
        found = [frame[(frame["arm"] == arm) & (frame["n_label"] == n)] for n in cols]
        rows.append((arm, [Cell() if r.empty else cell(arm, n, r.iloc[0]) for n, r in zip(cols, found)]))
    return rows


def _marking_notes(confidence: float, any_tied: bool) -> list[str]:
    out = ["Bold: the best arm at that n (highest mean, scratch included)."]
    if any_tied:
        out.append(f"{DAGGER} Not distinguishable from the best: the paired {confidence:.0%} t-interval of the "
                   "difference (same seeds, same labelled subsets) includes 0; this is the paired t-test against "
                   "the best before any correction (paired_tests.csv has its Holm-adjusted p).")
    return out


def summary_grid(s: pd.DataFrame, setting: str, tag: str, metric_name: str, confidence: float) -> Grid:
    cols = list(s.drop_duplicates("n_label").sort_values("n")["n_label"])
    flags = _flags(s)
    g = Grid("summary", setting, tag, f"Test {metric_name} (%) on {setting}: mean ± half-width of the "
             f"{confidence:.0%} t-interval over seeds.", cols)
    g.rows += _arm_rows(s, cols, lambda arm, n, r: Cell(_pm(r["acc_mean"], _half(r["acc_std"], r["n_seeds"],
                                                                                  confidence)), *flags[(arm, n)]))
    if "majority_baseline" in s and s["majority_baseline"].notna().any():
        m = s.groupby("n_label")["majority_baseline"].mean()
        g.rows.append(("majority class", [Cell(f"{100 * m[n]:.1f}" if n in m and not pd.isna(m[n]) else "–")
                                          for n in cols]))
        g.notes.append("Majority class: always predicting the test split's largest class (no seeds, no interval).")
    seeds = sorted({int(k) for k in s["n_seeds"].dropna()})
    g.notes.insert(0, f"Seeds per cell: {', '.join(map(str, seeds))}.")
    g.notes += _marking_notes(confidence, any(c.tied for _, row in g.rows for c in row))
    return g


def gain_grid(gain: pd.DataFrame, s: pd.DataFrame, setting: str, tag: str, metric_name: str,
              confidence: float) -> Grid:
    cols = list(gain.drop_duplicates("n_label").sort_values("n")["n_label"])
    g = Grid("gain", setting, tag, f"Gain in test {metric_name} over scratch (percentage points) on {setting}: "
             f"mean of the seed-paired differences ± half-width of their {confidence:.0%} t-interval.", cols)
    def cell(arm: str, n: str, r: pd.Series) -> Cell:
        half = r["gain_ci_hi"] - r["gain_mean"] if not pd.isna(r["gain_ci_hi"]) else math.nan
        sig, raw = _significance(r, 1 - confidence)
        return Cell(_pm(r["gain_mean"], half, signed=True), significant=sig, uncorrected=raw and not sig)

    g.rows += _arm_rows(gain.assign(is_scratch=False), cols, cell)
    alpha = f"{1 - confidence:.2g}"
    g.notes.append(f"Test: paired t-test of the arm against scratch over the seed pairs, the test whose "
                   f"{confidence:.0%} interval the cell shows (± half-width).")
    if any(c.significant for _, row in g.rows for c in row):
        g.notes.append(f"* Significant after Holm's correction: Holm-adjusted p ≤ {alpha} (family: every paired "
                       "test at that n, paired_tests.csv).")
    if any(c.uncorrected for _, row in g.rows for c in row):
        g.notes.append(f"{UNCORRECTED} Significant before correction only: p ≤ {alpha} and the interval excludes 0, "
                       "but the Holm-adjusted p is above it.")
    return g


def _significance(r: pd.Series, alpha: float) -> tuple[bool, bool]:
    """(significant after Holm, significant before correction) of a gain row's paired t-test against scratch."""
    holm, raw = r.get("p_t_holm"), r.get("p_t")
    return (not pd.isna(holm) and float(holm) <= alpha, not pd.isna(raw) and float(raw) <= alpha)


CENSORED_ABOVE, CENSORED_BELOW = "> ", "< "  # how a censored D_T cell begins


def effective_grid(dt: pd.DataFrame, s: pd.DataFrame, setting: str, tag: str, confidence: float) -> Grid:
    cols = list(dt.drop_duplicates("n_label").sort_values("n")["n_label"])
    flags = _flags(s)
    g = Grid("effective_data", setting, tag, f"Effective data transferred D_T (extra labelled examples per class "
             f"scratch would need to match the arm) on {setting}, with its {confidence:.0%} percentile bootstrap "
             "interval over seeds.", cols)
    def cell(arm: str, n: str, r: pd.Series) -> Cell:
        scratch_n = s.loc[s["line_key"] == r["baseline_key"], "n"]
        n0 = float(r["n"])
        lo_b = (float(scratch_n.min()) - n0) if len(scratch_n) else math.nan
        hi_b = (float(scratch_n.max()) - n0) if len(scratch_n) else math.nan
        flag = r["censored"] if isinstance(r["censored"], str) else ""
        if flag in ("above", "above_asymptote"):
            text = f"{CENSORED_ABOVE}{r['d_t_bound']:.3g}"
        elif flag == "below":
            text = f"{CENSORED_BELOW}{r['d_t_bound']:.3g}"
        elif flag == "" and not pd.isna(r["d_t"]):
            text = f"{r['d_t']:.3g}"
        else:
            text = "–"
        if text != "–" and not (pd.isna(r["d_t_lo"]) or pd.isna(r["d_t_hi"])):
            lo, hi = interval_end(r["d_t_lo"], lo_b, hi_b), interval_end(r["d_t_hi"], lo_b, hi_b)
            if lo != hi:
                text += f" [{lo}, {hi}]"
        return Cell(text, *flags.get((arm, n), (False, False)))

    g.rows += _arm_rows(dt.assign(is_scratch=False), cols, cell)
    censored = any(c.text.startswith((CENSORED_ABOVE, CENSORED_BELOW)) for _, row in g.rows for c in row)
    if censored:
        g.notes.append("> x / < x: censored, the arm is beyond the scratch curve over the n range scratch was run "
                       "at; D_T is only known to exceed (fall below) x.")
    g.notes.append("Negative: transfer hurt (scratch matches the arm with fewer examples).")
    g.notes += _marking_notes(confidence, any(c.tied for _, row in g.rows for c in row))
    return g


def grids(summary: pd.DataFrame, gain: pd.DataFrame, effective: pd.DataFrame, metric_name: str = "accuracy",
          confidence: float = 0.95, sweep: str = "") -> list[Grid]:
    """Every table of every setting: summary, then gain and effective data where the setting has them. `sweep`
    (the sweep's name) goes into each LaTeX label."""
    out = []
    if summary.empty:
        return out
    settings = summary.drop_duplicates("setting_key").sort_values("setting")
    tags = setting_tags(list(settings["setting"]))
    for _, setting in settings.iterrows():
        key, where = setting["setting_key"], setting["setting"]
        s = summary[summary["setting_key"] == key]
        out.append(summary_grid(s, where, tags[where], metric_name, confidence))
        g = gain[gain["setting_key"] == key] if len(gain) else gain
        if len(g):
            out.append(gain_grid(g, s, where, tags[where], metric_name, confidence))
        d = effective[effective["setting_key"] == key] if len(effective) else effective
        e = effective_grid(d, s, where, tags[where], confidence) if len(d) else None
        if e is not None and any(c.text != "–" for _, row in e.rows for c in row):  # no scratch fit: no table
            out.append(e)
    for g in out:
        g.sweep = sweep
    return out


# ---- LaTeX (booktabs) ---------------------------------------------------------------------------------------

LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}", "±": r"$\pm$", "≤": r"$\leq$", DAGGER: r"$^\dagger$",
                 UNCORRECTED: r"$^\circ$",
                 "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex_cell(c: Cell) -> str:
    """A cell in math mode: ± and bounds as LaTeX symbols, the marks as one superscript inside the same math (so
    two math groups never touch), bold with \\boldmath, which also bolds the symbols (\\textbf leaves math
    regular)."""
    if c.text == "–":
        return "--"
    t = c.text.replace("±", r"\pm").replace("≤", r"\leq").replace("> ", ">").replace("< ", "<")
    marks = ("*" if c.significant else "") + (r"\circ" if c.uncorrected else "") + (r"\dagger" if c.tied else "")
    body = f"${t}^{{{marks}}}$" if marks else f"${t}$"
    return "{\\boldmath" + body + "}" if c.best else body


def to_latex(g: Grid) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); footnotes under the tabular."""
    k = len(g.columns)
    head = " & ".join(latex_escape(n) for n in g.columns)
    caption = latex_escape(g.caption).replace(r"D\_T", "$D_T$")
    lines = [f"% {g.kind} table for {latex_escape(g.setting)}; written by transferlab.report; needs booktabs",
             r"\begin{table}[t]", r"\centering", r"\small",
             f"\\caption{{{caption}}}",
             f"\\label{{{g.label}}}",
             f"\\begin{{tabular}}{{l{'r' * k}}}", r"\toprule",
             f" & \\multicolumn{{{k}}}{{c}}{{labelled examples per class, $n$}} \\\\",
             f"\\cmidrule(lr){{2-{k + 1}}}", f"Arm & {head} \\\\", r"\midrule"]
    for i, (arm, cells) in enumerate(g.rows):
        if arm == "majority class" and i:
            lines.append(r"\midrule")
        lines.append(f"{latex_escape(arm)} & " + " & ".join(latex_cell(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if g.notes:
        notes = " ".join(latex_escape(n) for n in g.notes)
        lines += [r"\par\smallskip", f"{{\\footnotesize {notes}\\par}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---- Markdown -----------------------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return str(text).replace("|", r"\|").replace("*", r"\*")


def md_cell(c: Cell) -> str:
    body = _md_escape(c.text)
    if c.best and c.text != "–":
        body = f"**{body}**"
    return body + (r"\*" if c.significant else "") + (UNCORRECTED if c.uncorrected else "") + (DAGGER if c.tied else "")


def to_markdown(g: Grid) -> str:
    lines = [f"**{_md_escape(g.caption)}**", "",
             "| arm | " + " | ".join(f"n={_md_escape(n)}" for n in g.columns) + " |",
             "|---|" + "--:|" * len(g.columns)]
    for arm, cells in g.rows:
        lines.append(f"| {_md_escape(arm)} | " + " | ".join(md_cell(c) for c in cells) + " |")
    if g.notes:
        lines += [""] + [_md_escape(n) + "  " for n in g.notes]
    return "\n".join(lines).rstrip() + "\n"


def write_tables(tables: list[Grid], out_dir: Path) -> dict[str, Path]:
    """`<out_dir>/<kind>[_<setting>].tex` and `.md` for every table; {file name: path}."""
    out = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for g in tables:
        for suffix, text in ((".tex", to_latex(g)), (".md", to_markdown(g))):
            path = out_dir / f"{g.name}{suffix}"
            with atomic_path(path) as tmp:
                Path(tmp).write_text(text, encoding="utf-8")
            out[f"tables/{path.name}"] = path
    return out
