"""A sweep folder -> the report: collected runs, statistics, CSVs, figures, report.html, a terminal summary.

Runs are grouped by their identity (`collect`): only runs that differ in nothing but their seeds are pooled,
settings that differ in anything but the arm are separate panels, and copies of one run count once. With the
sweeper's record (sweep.json) the counts are the sweep's own: declared points, failures that left no result.json,
missing and stale points; without it (a plain folder of runs) missing points are inferred from the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from transferlab.errors import ConfigError, problem

if TYPE_CHECKING:
    from rich.console import Console  # noqa: F401


@dataclass
class Report:
    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    gain: pd.DataFrame
    best: pd.DataFrame
    crossovers: pd.DataFrame
    measures: pd.DataFrame
    yosinski: pd.DataFrame
    missing: pd.DataFrame
    failed: pd.DataFrame
    duplicates: pd.DataFrame | None = None  # copies of a run counted once (run_dir, fingerprint, kept)
    points: pd.DataFrame | None = None  # the sweep's declared points and their state (None: no sweep.json)
    grouping_notes: list[str] = field(default_factory=list)  # what collect says about the grouping
    figures: list[tuple[str, Path, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    name: str = "sweep"
    metric: str = "acc"  # the metric every statistic is computed from (`--metric`; lead_metric.COLUMNS)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)  # paired tests vs scratch and vs best, Holm (paired)
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)  # one learning-curve fit per arm (fits.fit_lines)
    effective: pd.DataFrame = field(default_factory=pd.DataFrame)  # effective data transferred (effective_data)
    stat_notes: list[str] = field(default_factory=list)  # metric, imbalance, few-seed and censoring notes
    transferability: pd.DataFrame = field(default_factory=pd.DataFrame)  # scores vs measured accuracy, per n
    # honest protocol vs large-validation-set choice vs oracle, per arm and n (analysis.selection_cost)
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    setup: Any = None  # how the runs were made (analysis.provenance.Setup), the page's first block
    answer: list[tuple[str, str]] = field(default_factory=list)  # (setting, paragraph) (analysis.answer)
    tables: list = field(default_factory=list)  # the paper tables (analysis.tables.Grid), as .tex, .md and HTML
    names: ArmNames | None = None  # machine label -> the arm's name, per setting (what people are shown)
    ylim: tuple[float, float] | None = None  # the accuracy figures' fixed y range (--ylim), None: from the data


FIGURES = "figures"  # <out>/figures/: every figure as PNG and PDF
TABLES = "tables"  # <out>/tables/: the paper tables as .tex and .md


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    from transferlab.store.atomic import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


MISSING_COLUMNS = ["run_dir", "overrides", "reason", "setting", "arm", "n_label", "seed"]
FAILED_COLUMNS = ["run_dir", "setting", "arm", "n_label", "seed", "error"]
REASONS = {"missing": "no result.json (not run yet, or lost)",
           "stale": "its result.json is another config's (stale)"}


# Columns holding arm labels: shown to people as the arms' human names (`collect.arm_name`; the CSVs keep the
# machine label in `arm` with `arm_name` beside it). The tie lists hold several labels joined by TIE_SEP.
ARM_LABEL_COLUMNS = ("arm", "best_arm", "runner_up", "finetuned_arm", "frozen_arm", "picked_arm", "reference",
                     "baseline")
ARM_LIST_COLUMNS = ("tied_with_best", "tie_unknown")
TIE_SEP = ", "


@dataclass
class ArmNames:
    """Machine label -> human name of every arm, per setting (`setting_key`): one table the report's CSVs and its
    displays both read, so the words in a figure, a table and a CSV's `arm_name` column are the same."""

    by_setting: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, runs: pd.DataFrame) -> ArmNames:
        out: dict[str, dict[str, str]] = {}
        if "arm_name" not in runs or runs.empty:
            return cls(out)
        for (key, arm), name in runs.dropna(subset=["setting_key", "arm"]).groupby(
                ["setting_key", "arm"])["arm_name"].first().items():
            out.setdefault(key, {})[arm] = name if isinstance(name, str) and name else arm
        return cls(out)

    def _map(self, key, label):
        if not isinstance(label, str):
            return label
        names = self.by_setting.get(key, {})
        if " | " in label:  # transferability's several arms tied for the top score
            return " | ".join(names.get(x, x) for x in label.split(" | "))
        return names.get(label, label)

    def beside(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A CSV's frame with each arm label column followed by the name (`arm` -> `arm_name`, `best_arm` ->
        `best_arm_name`, ...), for frames that have a `setting_key`."""
        if frame is None or frame.empty or "setting_key" not in frame:
            return frame
        out = frame.copy()
        for c in ARM_LABEL_COLUMNS:
            if c in out and f"{c}_name" not in out:
                out.insert(out.columns.get_loc(c) + 1, f"{c}_name",
                           [self._map(k, a) for k, a in zip(out["setting_key"], out[c])])
        return out

    def shown(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A frame for people (figures, paper tables, report.html, the terminal): every arm label replaced by the
        arm's name; the machine label stays only in the CSVs."""
        if frame is None or frame.empty or "setting_key" not in frame:
            return frame
        out = frame.drop(columns=[f"{c}_name" for c in ARM_LABEL_COLUMNS], errors="ignore").copy()
        keys = out["setting_key"]
        for c in ARM_LABEL_COLUMNS:
            if c in out:
                out[c] = [self._map(k, v) for k, v in zip(keys, out[c])]
        for c in ARM_LIST_COLUMNS:  # best.csv's lists of labels (summary's tied_with_best is a flag: left alone)
            if c in out and out[c].map(lambda v: isinstance(v, str)).any():
                out[c] = [TIE_SEP.join(self._map(k, x) for x in v.split(TIE_SEP)) if isinstance(v, str) and v else v
                          for k, v in zip(keys, out[c])]
        return out

    def label_of(self, text: str) -> str:
        """A `--crossover` argument given as a name -> the machine label, when it names one label (else as given)."""
        hits = {arm for names in self.by_setting.values() for arm, name in names.items() if name == text}
        return next(iter(hits)) if len(hits) == 1 and not any(text in n for n in self.by_setting.values()) else text


def missing_points(df: pd.DataFrame, points: pd.DataFrame | None) -> pd.DataFrame:
    """Points with no result: the sweep's declared points that have none (or only a stale one) when it recorded
    them in sweep.json; else (a plain folder of runs) the (arm, n, seed) combinations of each setting's own axes
    with no result.json at all, inferred from the results that exist."""

    from transferlab.analysis import collect

    if points is not None:
        out = points[points["state"].isin(list(REASONS))].copy()
        out["reason"] = out["state"].map(REASONS)
    else:
        out = collect.inferred_missing(df) if not df.empty else pd.DataFrame()
    return out.reindex(columns=MISSING_COLUMNS).reset_index(drop=True)


def failed_runs(df: pd.DataFrame, points: pd.DataFrame | None) -> pd.DataFrame:
    """Failed results, then the points the sweeper recorded as failed that left no result.json (config errors)."""

    rows = df[df["status"] != "ok"].reindex(columns=FAILED_COLUMNS)
    if points is not None:
        no_result = points[(points["state"] == "failed") & points["result_dir"].isna()]
        no_result = no_result.assign(error=no_result["reason"]).reindex(columns=FAILED_COLUMNS)
        rows = pd.concat([rows, no_result]) if len(no_result) else rows
    return rows.reset_index(drop=True)


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, confidence: float = 0.95,
                 n_boot: int = 2000, threshold_frac: float = 0.9, metric: str = "acc",
                 crossover_pairs: Sequence[tuple[str, str]] = (),
                 ylim: tuple[float, float] | None = None) -> Report:
    """Collect, compute, draw and write everything; raises ConfigError if there is nothing to report, if the
    runs did not record `metric`, or if no setting has both arms of a requested crossover pair. `ylim`: a fixed
    range of the lead metric's axis (0-1) in the accuracy figures (`--ylim`)."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise ConfigError(problem("sweep_dir", str(sweep), "an existing folder holding result.json files"))
    from transferlab.run.record import find_results

    if next(find_results(sweep), None) is None:
        raise ConfigError(problem("sweep_dir", str(sweep), "a folder with at least one result.json below it"))
    from transferlab.analysis import answer, collect, html, lead_metric, metric_columns, paired, plots, stats
    from transferlab.analysis import effective_data as dt_mod
    from transferlab.analysis import fits as fits_mod
    from transferlab.analysis import provenance
    from transferlab.analysis import tables as tables_mod

    found = collect.collect_sweep(sweep)
    runs = found.runs
    if runs.empty:
        raise ConfigError(problem("sweep_dir", str(sweep), "a folder with at least one result.json below it"))
    df, stat_notes = lead_metric.lead(runs, metric)  # every statistic reads `test_acc`: the chosen metric
    names = ArmNames.of(runs)
    crossover_pairs = [(names.label_of(a), names.label_of(b)) for a, b in crossover_pairs]
    unknown = stats.unknown_pairs(df, crossover_pairs)
    if unknown:
        arms = ", ".join(sorted(stats.ok_rows(df)["arm"].dropna().unique()))
        raise ConfigError(problem("--crossover", "; ".join(unknown), f"two arm labels of one setting ({arms})"))
    out = Path(out_dir) if out_dir else sweep
    ok = stats.ok_rows(df)
    tests = paired.comparisons(df, confidence)
    records = provenance.read_records(sweep, runs["run_dir"])
    summary = metric_columns.add(paired.mark_ties(stats.summarize(df, confidence), tests), runs, records, metric,
                                 confidence)
    rising, rising_note = collect.still_rising(names.shown(df))  # stopped while val/acc rose: a column, a note
    summary = summary.merge(rising, on="arm_key", how="left").fillna({"not_converged": 0, "judged": 0})
    gain = paired.with_tests(stats.paired_gain(df, confidence), tests)
    cx = stats.crossovers(df, n_boot=n_boot, confidence=confidence, pairs=crossover_pairs)
    fit_table, fits = fits_mod.fit_lines(summary)
    effective = dt_mod.effective_data(df, summary, fits, n_boot=n_boot, confidence=confidence)
    stat_notes += lead_metric.imbalance_notes(df, metric) + _seed_notes(cx, effective)
    stat_notes += [rising_note] if rising_note else []  # the still-rising runs per arm (collect.still_rising)
    recorded = found.sweep.name if found.sweep is not None else None
    name = recorded or (str(df["name"].dropna().iloc[0]) if df["name"].notna().any() else sweep.name)
    tag = names.beside  # the CSVs (and W&B tables): the machine label with the arm's name beside it
    report = Report(
        out_dir=out, results=runs, summary=tag(summary), gain=tag(gain), best=tag(stats.best_per_n(summary, tests)),
        crossovers=tag(cx), measures=stats.learning_measures(df, threshold_frac, confidence),
        yosinski=stats.yosinski_table(df, confidence),
        missing=missing_points(runs, found.points), failed=failed_runs(runs, found.points),
        duplicates=found.duplicates, points=found.points, grouping_notes=found.notes, name=str(name),
        metric=metric, tests=tag(tests), fits=tag(fit_table), effective=tag(effective), stat_notes=stat_notes,
        names=names, ylim=ylim,
    )
    report.files = {  # the per-epoch curves go to curves.csv (long form), not into a results.csv cell
        "results.csv": _write_csv(runs.drop(columns=list(collect.CURVE_COLUMNS)), out / "results.csv"),
        "summary.csv": _write_csv(report.summary, out / "summary.csv"),
        "curves.csv": _write_csv(collect.curves(df), out / "curves.csv"),
    }
    for fname, frame in (("gain.csv", report.gain), ("crossover.csv", report.crossovers),
                         ("learning_measures.csv", report.measures), ("yosinski.csv", report.yosinski),
                         ("duplicates.csv", report.duplicates), ("best.csv", report.best),
                         ("paired_tests.csv", report.tests), ("fits.csv", report.fits),
                         ("effective_data.csv", report.effective)):
        if not frame.empty:
            report.files[fname] = _write_csv(frame, out / fname)
    metric_name = lead_metric.NAMES.get(metric, metric)
    figures = out / FIGURES
    shown = names.shown  # what people read: arm names, no machine labels
    if not ok.empty:
        report.figures = plots.draw_all(shown(ok), shown(summary), shown(gain), shown(cx), report.yosinski, figures,
                                        metric=metric_name, confidence=confidence, ylim=ylim)
        report.figures += plots.draw_fields(shown(summary), fits, shown(effective), figures, metric=metric_name,
                                            ylim=ylim)
    from transferlab.analysis import transferability  # the runs' transferability scores, graded

    graded, score_arms = transferability.grade(df, confidence, n_boot)
    report.transferability = tag(graded)
    if len(report.transferability):
        report.files["transferability.csv"] = _write_csv(report.transferability, out / "transferability.csv")
        report.figures += transferability.figures(shown(graded), shown(score_arms), figures)
    from transferlab.analysis import variance  # a crossed seed x data_seed design: the spread split into its causes

    spread, _ = variance.table(df, confidence=confidence, n_boot=n_boot)
    if len(spread):
        report.files["variance.csv"] = _write_csv(spread, out / "variance.csv")
        report.stat_notes.append(
            f"variance.csv: the spread of {len(spread)} arm/n cell{'s' * (len(spread) > 1)} run as a crossed design "
            "split into the data draw and the training seed; `python -m transferlab.plan_seeds` says how many of "
            "each a wanted interval needs")
    # honest protocol vs large-val choice vs oracle (selection.csv): only when the sweep ran both protocols
    from transferlab.analysis import selection_cost

    report.selection = tag(selection_cost.table(df, records, metric=metric, confidence=confidence))
    if len(report.selection):
        report.files["selection.csv"] = _write_csv(report.selection, out / "selection.csv")
        report.figures += selection_cost.figures(shown(report.selection), figures, metric=metric_name,
                                                 confidence=confidence)
        report.stat_notes += selection_cost.notes(shown(report.selection))
    for _, p, _ in report.figures:
        for f in (p, p.with_suffix(".pdf")):
            if f.exists():
                report.files[f"{FIGURES}/{f.name}"] = f
    report.tables = tables_mod.grids(shown(summary), shown(gain), shown(effective), metric_name, confidence,
                                     sweep=report.name)
    report.files.update(tables_mod.write_tables(report.tables, out / TABLES))
    report.setup = provenance.describe(records, found.sweep)
    report.answer = answer.paragraphs(shown(summary), shown(report.best), shown(gain), shown(cx), shown(effective),
                                      metric_name, confidence)
    report.files["report.html"] = html.write_html(
        out / "report.html", f"transferlab report: {report.name}", notes(report), report.figures,
        [("Best arm per n (Ng's rule read off the data)", best_display(shown(report.best))),
         ("Crossover n* (crossover.csv)", _shown(shown(cx), CROSSOVER_SHOWN)),
         ("Summary over seeds (summary.csv has every column)", _shown(shown(summary), SUMMARY_SHOWN)),
         ("Gain over scratch (gain.csv)", _shown(shown(gain), GAIN_SHOWN)),
         ("Paired tests vs scratch and vs the best arm (Holm per setting and n; paired_tests.csv)",
          _shown(shown(tests), TESTS_SHOWN)),
         ("Learning-curve fits (fits.csv)", _shown(shown(fit_table), FITS_SHOWN)),
         ("Effective data transferred (per class; effective_data.csv)", _shown(shown(effective), EFFECTIVE_SHOWN)),
         ("Learning-curve measures (Taylor & Stone)", shown(report.measures)), ("Yosinski arms", report.yosinski),
         ("Transferability scores vs measured accuracy (Kendall tau-b, weighted tau, Spearman, regret)",
          shown(graded)),
         ("What selection costs: honest protocol vs large validation set vs oracle (selection.csv)",
          _shown(shown(report.selection), SELECTION_SHOWN)),
         ("Missing points", report.missing), ("Duplicate runs (ignored)", report.duplicates)],
        report.failed, setup=report.setup, answer=report.answer, grids=report.tables)
    return report


# The columns report.html shows of the wide tables (the CSVs keep every column); a column a table lacks is skipped.
_METRIC_MEANS = [f"{m}_mean" for m in ("accuracy", "balanced_acc", "macro_f1", "auroc")]
SUMMARY_SHOWN = ["setting", "arm", "n_label", "acc_mean", "acc_ci_lo", "acc_ci_hi", "n_seeds",
                 "is_best", "tied_with_best", "diff_vs_best", "diff_vs_best_ci_lo", "diff_vs_best_ci_hi",
                 "p_vs_best_holm", *_METRIC_MEANS, "majority_acc", "majority_baseline"]
GAIN_SHOWN = ["setting", "arm", "baseline", "n_label", "gain_mean", "gain_ci_lo", "gain_ci_hi", "n_pairs", "p_t_holm",
              "p_wilcoxon_holm", "significant"]
TESTS_SHOWN = ["setting", "n_label", "arm", "reference_kind", "reference", "n_pairs", "diff_mean", "diff_ci_lo",
               "diff_ci_hi", "p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm", "family_size", "significant"]
FITS_SHOWN = ["setting", "arm", "form", "formula", "a", "b", "c", "rmse", "heldout_n", "heldout_error", "reason"]
EFFECTIVE_SHOWN = ["setting", "arm", "n_label", "acc", "scratch_form", "d_t_text", "fraction_transferred"]
SELECTION_SHOWN = ["setting", "arm", "n_label", "honest", "large_val", "n_pairs", "labels_honest", "labels_large_val",
                   "honest_mean", "large_val_mean", "oracle_mean", "large_val_minus_honest_mean",
                   "large_val_minus_honest_ci_lo", "large_val_minus_honest_ci_hi", "oracle_minus_large_val_mean",
                   "oracle_minus_honest_mean", "rank_honest", "rank_large_val", "lead_honest", "lead_large_val",
                   "same_choice"]
CROSSOVER_SHOWN = ["setting", "finetuned_arm", "frozen_arm", "requested", "n_star", "n_star_lo", "n_star_hi",
                   "p_cross", "p_at_min", "n_seeds"]


def _shown(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """The columns report.html shows of a table; `is_scratch` rides along so scratch rows show no source."""
    return frame[[c for c in cols if c in frame.columns]] if len(frame) else frame


def _seed_notes(cx: pd.DataFrame, effective: pd.DataFrame) -> list[str]:
    """One line when the bootstrap intervals (n*, effective data) rest on too few seeds to mean much."""
    from transferlab.analysis.bootstrap import few_seeds_note

    ks = [int(k) for frame in (cx, effective) if len(frame) and "n_seeds" in frame
          for k in frame["n_seeds"].dropna() if k > 0]
    note = few_seeds_note(min(ks), "n* and effective-data intervals") if ks else None
    return [note] if note else []


def counts_line(r: Report) -> str | None:
    """What the sweep declared and what became of it, from sweep.json (None without one)."""
    if r.points is None:
        return None
    state = r.points["state"]
    no_result = int(((state == "failed") & r.points["result_dir"].isna()).sum())
    failed = int((state == "failed").sum())
    dropped = int((state == "dropped").sum())
    busy = ", ".join(f"{int((state == s).sum())} {s}" for s in ("running", "queued") if (state == s).any())
    tail = (f", {busy}" if busy else "") + (f", {dropped} dropped by the latest launch's grid" if dropped else "")
    return (f"{len(r.points)} point{'s' * (len(r.points) != 1)} declared: {int((state == 'done').sum())} ok, "
            f"{failed} failed"
            + (f" ({no_result} without a result)" if no_result else "")
            + f", {int(state.isin(list(REASONS)).sum())} missing" + tail)


def _people(r: Report):
    """The report's frames as people read them (arm names for labels; `ArmNames.shown`)."""
    return r.names.shown if r.names is not None else (lambda frame: frame)


def notes(r: Report) -> list[str]:
    from transferlab.analysis import stats

    shown = _people(r)

    n_ok = int((r.results["status"] == "ok").sum())
    n_failed = int((r.results["status"] != "ok").sum())
    if r.points is None:
        lines = [f"{len(r.results)} runs found: {n_ok} ok, {n_failed} failed, {len(r.missing)} (arm, n, seed) "
                 f"points of the grid missing (inferred: no sweep.json)."]
    else:
        lines = [f"{len(r.results)} runs found: {n_ok} ok, {n_failed} failed.", counts_line(r)]
    lines += r.grouping_notes
    lines += r.stat_notes
    if r.results["setting_key"].nunique() > 1:
        lines.append(f"{r.results['setting_key'].nunique()} settings (runs that differ in more than their arm, n "
                     "and seed are never pooled): " + "; ".join(sorted(r.results["setting"].dropna().unique())))
    for _, c in shown(r.crossovers).iterrows():
        lines.append(f"{c['setting']}: {c['finetuned_arm']} vs {c['frozen_arm']}: {stats.format_n_star(c)}")
    if len(r.tests):
        lines.append("differences are paired by seed (t-intervals over pairs); tests: paired t-test (Wilcoxon "
                     "signed-rank beside it), Holm-corrected over the tests at each setting and n (paired_tests.csv); "
                     "an arm is tied with the best when its paired interval against it includes 0 (before "
                     "correction); the gain table marks * significant after Holm and ° before correction only")
    from transferlab.analysis.effective_data import d_t_sentence

    for _, e in shown(r.effective).groupby("setting_key", sort=False) if len(r.effective) else []:
        first = e[e["n"] == e["n"].min()].sort_values("acc", ascending=False).iloc[0]
        lines.append(f"{first['setting']}: effective data transferred at n={first['n_label']} per class, "
                     f"{first['arm']} (the best transfer arm there): {d_t_sentence(first)}")
    from transferlab.analysis.transferability import summary_lines

    lines += summary_lines(shown(r.transferability)) if len(r.transferability) else []
    return lines


def _diff(mean, lo, hi) -> str:
    """A paired difference in percentage points with its interval: "+21.4 [-9.9, +52.8]" (no interval: one pair)."""
    ci = "" if pd.isna(lo) or pd.isna(hi) else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * mean:+.1f}{ci}"


def _pct(v) -> str:

    return "–" if v is None or pd.isna(v) else f"{100 * v:.1f}"


def best_display(best: pd.DataFrame) -> pd.DataFrame:
    """The best-arm table as people read it (terminal and report.html): n, best arm with the arms tied with it,
    its mean with the t-interval, seeds, its paired lead over the runner-up and its paired gain over scratch (in %
    and percentage points, with their intervals), scratch's mean."""
    cols = ["setting", "n", "best arm (tied)", "mean [95% CI]", "seeds", "lead over runner-up", "scratch",
            "gain over scratch"]
    rows = []
    for _, b in best.iterrows():
        ci = "" if pd.isna(b["acc_ci_lo"]) else f" [{_pct(b['acc_ci_lo'])}, {_pct(b['acc_ci_hi'])}]"
        tied = b.get("tied_with_best")
        arm = str(b["best_arm"]) + (f" (tied: {tied})" if isinstance(tied, str) and tied else "")
        if b["runner_up"] is None or pd.isna(b["runner_up"]):
            runner = "–"
        elif pd.isna(b.get("margin_paired", float("nan"))):
            runner = f"+{_pct(b['margin'])} ({b['runner_up']})"
        else:
            runner = f"{_diff(b['margin_paired'], b['margin_ci_lo'], b['margin_ci_hi'])} ({b['runner_up']})"
        if b.get("best_is_scratch"):
            gain = "– (best is scratch)"
        elif not pd.isna(b.get("gain", float("nan"))):
            gain = _diff(b["gain"], b["gain_ci_lo"], b["gain_ci_hi"])
        else:
            gain = "–" if pd.isna(b["scratch_mean"]) else f"{100 * (b['acc_mean'] - b['scratch_mean']):+.1f}"
        rows.append([b["setting"], str(b["n_label"]), arm, _pct(b["acc_mean"]) + ci, str(b["n_seeds"]), runner,
                     _pct(b["scratch_mean"]), gain])
    return pd.DataFrame(rows, columns=cols)


def print_summary(r: Report, console: Console | None = None) -> None:
    """Rich table of the best arm per n (one per setting), then the crossover lines, failed runs, written files."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from transferlab.analysis.lead_metric import NAMES

    console = console or Console(width=max(Console().width, 110))
    for setting, best in (_people(r)(r.best).groupby("setting", sort=True) if not r.best.empty else []):
        metric = NAMES.get(r.metric, r.metric)
        table = Table(title=escape(f"{r.name}: {setting} — best freeze depth per n (test {metric} %; differences "
                                   "paired by seed, [95% CI])"))
        rows = best_display(best).drop(columns=["setting"])
        for col in rows.columns:
            table.add_column(col, justify="left" if col in ("best arm (tied)", "lead over runner-up") else "right")
        for _, b in rows.iterrows():
            table.add_row(*map(escape, map(str, b)))
        console.print(table)
    for line in notes(r):
        console.print(line, markup=False)
    if len(r.failed):
        console.print(f"[red]failed runs ({len(r.failed)}):[/red]")
        for _, f in r.failed.iterrows():
            console.print(f"  {f['run_dir']}: {f['error']}", markup=False)
    top = sorted(name for name in r.files if "/" not in name)
    grouped = []
    for folder in (FIGURES, TABLES):
        names = [name for name in r.files if name.startswith(folder + "/")]
        kinds = sorted({Path(name).suffix for name in names})
        if names:
            grouped.append(f"{folder}/ ({' + '.join(f'{sum(n.endswith(k) for n in names)} {k[1:]}' for k in kinds)})")
    console.print(f"wrote {len(r.files)} files to {r.out_dir}: " + ", ".join(top + grouped))
