"""The sweep report: a tiny real multirun (transfer arms + scratch) -> CSVs, PNGs, HTML; statistics on known data."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from conftest import run_cli
from transferlab.analysis import plots, stats
from transferlab.analysis.build import build_report
from transferlab.run import identity
from transferlab.run.record import Metrics, RunRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["pretrain.max_epochs=2", "train.max_epochs=3", "trainer.enable_progress_bar=false", "pretrain.seed=0",
        "train.val_every_steps=1",  # a curve of 3 points per run (the learning-curve figure)
        "target.n_per_class=2,5", "seed=0,1", "name=tiny_report"]


def assert_png(path: Path) -> None:
    import matplotlib.image as mpimg
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
    assert mpimg.imread(path).ndim == 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One real multirun: fine-tune (freeze=0), linear probe (freeze=all) and scratch x n 2, 5 x seeds 0, 1."""
    root = tmp_path_factory.mktemp("report_sweep")
    sweep_dir = root / "sweep"
    p = run_cli("-m", *TINY, "transfer=finetune,linear_probe,scratch", f"hydra.sweep.dir={sweep_dir}",
                cwd=root, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list(sweep_dir.rglob("result.json"))) == 12
    return sweep_dir


def test_report_cli_on_real_sweep(sweep, tmp_path):
    out = tmp_path / "report"
    # a backend matplotlib cannot load (a headless machine's MPLBACKEND): the report draws with Agg regardless
    p = run_cli(str(sweep), "--out", str(out), "--n-boot", "200", module="transferlab.report", cwd=tmp_path,
                env={"MPLBACKEND": "module://no_such_backend"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "best freeze depth per n" in p.stdout and "12 runs found: 12 ok, 0 failed" in p.stdout

    results = pd.read_csv(out / "results.csv", dtype={"run_dir": str, "n_label": str})
    assert len(results) == 12 and set(results["status"]) == {"ok"}
    assert set(results["arm"]) == {"freeze=0", "freeze=4 (all)", "scratch"}
    assert sorted(results["n_per_class"].unique()) == [2, 5]
    for _, r in results.iterrows():  # every row is its own result.json, not a copy of another
        rec = RunRecord.read(sweep / r["run_dir"] / "result.json")
        assert r["test_acc"] == pytest.approx(rec.metrics.test_acc) and r["freeze"] == rec.freeze
        assert r["epochs"] == rec.metrics.check_epochs[-1] == rec.metrics.epochs

    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 6 and set(summary["n_seeds"]) == {2}
    for _, s in summary.iterrows():  # mean and t-interval recomputed from results.csv
        accs = results[(results["arm"] == s["arm"]) & (results["n_per_class"] == int(s["n_label"]))]["test_acc"]
        half = st.t.ppf(0.975, 1) * accs.std(ddof=1) / math.sqrt(2)
        assert s["acc_mean"] == pytest.approx(accs.mean())
        assert s["acc_ci_hi"] == pytest.approx(min(accs.mean() + half, 1.0), abs=1e-9)  # clipped to [0, 1]
        assert s["acc_ci_lo"] == pytest.approx(max(accs.mean() - half, 0.0), abs=1e-9)

    assert not list(out.glob("*.png"))  # every figure under figures/, as PNG and as PDF
    pngs = sorted((out / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    for required in ("report_acc_vs_n.png", "report_heatmap.png", "report_gain_vs_n.png", "report_crossover.png",
                     "report_learning_curves.png"):
        assert required in names
    for png in pngs:
        assert_png(png)
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    for table in ("summary", "gain"):  # one per setting: a single setting has no suffix
        assert (out / "tables" / f"{table}.tex").read_text().count(r"\toprule") == 1
        assert (out / "tables" / f"{table}.md").read_text().startswith("**")
    assert not (out / "tables" / "effective_data.md").exists()  # 2 n: no scratch curve to read D_T off
    assert {"balanced_acc_mean", "macro_f1_mean", "majority_acc", "majority_baseline"} <= set(summary.columns)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    assert "<section id='setup'>" in html and "python -m transferlab.train -m" in html
    assert "Failed runs" not in html and "Yosinski" not in html  # no empty sections
    assert "http://" not in html and "https://" not in html and "<script" not in html
    cx = pd.read_csv(out / "crossover.csv")
    assert len(cx) == 1 and cx.loc[0, "finetuned_arm"] == "freeze=0" and cx.loc[0, "frozen_arm"] == "freeze=4 (all)"
    assert (out / "learning_measures.csv").exists() and (out / "gain.csv").exists()


def test_partial_sweep_lists_failed_and_missing(sweep, tmp_path):
    part = tmp_path / "partial"
    shutil.copytree(sweep, part, ignore=shutil.ignore_patterns("*.ckpt"))
    records = {path: RunRecord.read(path) for path in sorted(part.glob("*/result.json"))}
    lost = next(path for path, rec in records.items() if rec.transfer == "finetune")
    lost_rec = records[lost]
    lost.unlink()
    scratch = next(rec for rec in records.values() if rec.transfer == "scratch")
    # A failed job of another seed: a copy of a finished run's own record would be that run again (a duplicate).
    config = {**scratch.config, "seed": 7, "data_seed": 7}
    replace(scratch, status="failed", error="RuntimeError: out of memory", metrics=Metrics(), seed=7, data_seed=7,
            config=config, fingerprint=identity.fingerprint(config, scratch.inputs)).write(part / "failed_job")

    r = build_report(part, n_boot=50)
    assert len(r.results) == 12 and len(r.failed) == 1
    assert r.failed.loc[0, "error"] == "RuntimeError: out of memory"
    lost_arm = "freeze=0" if lost_rec.freeze == 0 else "freeze=4 (all)"
    # The sweep recorded its points (sweep.json): the lost one is listed by its folder, not inferred.
    assert r.missing[["run_dir", "reason"]].values.tolist() == [[lost.parent.name,
                                                                 "no result.json (not run yet, or lost)"]]
    assert "12 points declared: 11 ok, 0 failed, 1 missing" in (part / "report.html").read_text()
    one = r.summary[(r.summary["arm"] == lost_arm) & (r.summary["n_label"] == str(lost_rec.n_per_class))]
    assert one["n_seeds"].tolist() == [1] and one["acc_ci_lo"].isna().all()  # one seed: no interval, not a fake one
    for _, path, _ in r.figures:
        assert_png(path)
    assert "Failed runs (1)" in (part / "report.html").read_text()


def test_report_rejects_a_folder_without_results(tmp_path):
    p = run_cli(str(tmp_path / "nope"), module="transferlab.report", cwd=tmp_path)
    assert p.returncode == 2 and "sweep_dir=" in p.stderr and "existing folder" in p.stderr
    (tmp_path / "empty").mkdir()
    p = run_cli(str(tmp_path / "empty"), module="transferlab.report", cwd=tmp_path)
    assert p.returncode == 2 and "at least one result.json" in p.stderr


# ---- statistics on known numbers ----------------------------------------------------------------------------

def test_t_interval_known_numbers():
    s = stats.t_interval([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, df=2}
    assert (s["ci_lo"], s["ci_hi"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    s90 = stats.t_interval([1.0, 2.0, 3.0, 4.0], confidence=0.9)
    half90 = 2.3533634348018264 * np.std([1, 2, 3, 4], ddof=1) / 2  # t_{0.95, df=3}
    assert s90["ci_hi"] - s90["mean"] == pytest.approx(half90)
    one = stats.t_interval([0.8, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.8 and math.isnan(one["ci_lo"]) and math.isnan(one["std"])


def test_crossover_point_on_constructed_curves():
    ns = [1, 2, 4, 8, 16]
    assert stats.crossover_point(ns, [-0.2, -0.1, 0.1, 0.2, 0.3]) == pytest.approx(math.sqrt(8))  # midway in log n
    assert stats.crossover_point(ns, [-0.3, -0.1, 0.3, 0.2, 0.3]) == pytest.approx(2 ** 1.25)
    assert stats.crossover_point(ns, [0.1, 0.1, 0.2, 0.2, 0.3]) == 1  # ahead from the smallest n on
    assert stats.crossover_point(ns, [-0.1, -0.1, 0.2, 0.1, -0.01]) == math.inf  # not ahead at the end
    assert stats.crossover_point(ns, [-0.1, 0.1, -0.1, 0.1, 0.2]) == pytest.approx(math.sqrt(32))  # last crossing


def _arm(ns, seeds, acc) -> pd.DataFrame:
    return pd.DataFrame([{"n": float(n), "seed": s, "test_acc": acc(n, s)} for n in ns for s in seeds])


def test_crossover_bootstrap_interval():
    ns, seeds = [2, 4, 8, 16, 32], range(5)
    frozen = _arm(ns, seeds, lambda n, s: 0.6)
    # fine-tuning gains log2(n) - 3 points (crosses at n = 8 exactly) plus a per-seed offset in [-0.2, 0.2]
    ft = _arm(ns, seeds, lambda n, s: 0.6 + 0.1 * (math.log2(n) - 3) + 0.01 * (s - 2))
    r = stats.crossover(ft, frozen, n_boot=300)
    assert r["n_star"] == pytest.approx(8.0, rel=1e-6) and r["n_seeds"] == 5 and r["p_cross"] == 1.0
    assert 4 < r["n_star_lo"] <= 8 <= r["n_star_hi"] < 16
    noisy = _arm(ns, seeds, lambda n, s: 0.6 + 0.1 * (math.log2(n) - 3) + 0.15 * (s - 2))
    rn = stats.crossover(noisy, frozen, n_boot=300)
    assert rn["n_star_hi"] - rn["n_star_lo"] > r["n_star_hi"] - r["n_star_lo"]  # more seed noise, wider interval
    never = stats.crossover(frozen, _arm(ns, seeds, lambda n, s: 0.7), n_boot=50)
    assert never["n_star"] == math.inf and never["p_cross"] == 0.0
    assert "not ahead" in stats.format_n_star(pd.Series(never))


def test_learning_curve_measures_known_curves():
    t, s = [0.5, 0.7, 0.8, 0.8], [0.2, 0.4, 0.6, 0.7]
    m = stats.curve_measures(t, s, threshold=0.6)
    assert m["jumpstart"] == pytest.approx(0.3)
    assert m["auc_ratio"] == pytest.approx((2.15 - 1.45) / 1.45)
    assert (m["epochs_to_thr_transfer"], m["epochs_to_thr_scratch"]) == (2, 3)
    assert m["asymptotic_gain"] == pytest.approx(0.2)
    assert math.isnan(stats.curve_measures([0.1, 0.2], [0.1, 0.3], threshold=0.5)["epochs_to_thr_transfer"])


def _row(**kw):
    base = {"status": "ok", "target": "B", "backbone": "cnn", "is_scratch": False, "upper": "reinit",
            "copies_nothing": kw.get("cut") == 0,
            "strategy": "fixed", "init": "source", "transfer": "frozen", "n": 10.0, "n_label": "10", "seed": 0,
            "test_acc": 0.5}
    return {**base, **kw}


def _with_keys(df: pd.DataFrame) -> pd.DataFrame:
    """The grouping columns `collect` makes from the run identity, for hand-built rows: one setting, one line per
    (source, cut, freeze), scratch the baseline of every transfer line, data seed = seed."""
    line = df["source"].astype(str) + "|" + df["cut"].astype(str) + "|" + df["freeze"].astype(str)
    scratch = line[df["is_scratch"]].iloc[0]
    return df.assign(setting="B / cnn", setting_key="s", context_key="c", line_key=line,
                     arm_key=line + "|" + df["n_label"], baseline_key=line.where(df["is_scratch"], scratch),
                     variant="", data_seed=df["seed"])


def test_yosinski_arms_and_figure(tmp_path):
    rows = [_row(is_scratch=True, source="B", cut=0, freeze=0, transfer="scratch", test_acc=0.6, seed=s)
            for s in (0, 1)]
    for cut in (1, 2, 3):
        for seed in (0, 1):
            rows += [_row(source="A", cut=cut, freeze=cut, test_acc=0.62 - 0.03 * cut, seed=seed),
                     _row(source="A", cut=cut, freeze=0, test_acc=0.64, seed=seed),
                     _row(source="B", cut=cut, freeze=cut, test_acc=0.6 - 0.02 * (cut == 2), seed=seed),
                     _row(source="B", cut=cut, freeze=0, test_acc=0.61, seed=seed),
                     _row(source="A", cut=cut, freeze=1 if cut > 1 else None, seed=seed)]  # other depth: left out
    df = _with_keys(pd.DataFrame(rows))
    labels = df.apply(stats.yosinski_label, axis=1)
    assert labels[df["is_scratch"]].isna().all()
    assert set(labels.dropna()) == {"AnB", "AnB+", "BnB", "BnB+"}
    y = stats.yosinski_table(df)
    assert len(y) == 12 and set(y["n_seeds"]) == {2}
    anb = y[y["yosinski"] == "AnB"].sort_values("cut")["acc_mean"].tolist()
    assert anb == pytest.approx([0.59, 0.56, 0.53])
    base = pd.DataFrame([{"n_label": "10", "acc_mean": 0.6}])
    assert_png(plots.yosinski(y, base, tmp_path / "y.png", "test"))


def test_a_peft_arm_is_no_yosinski_curve():
    """A frozen arm with LoRA at the same cut as the plain frozen arm is another arm: it must not be drawn as a
    second point of the AnB curve (it was: both named AnB, two means at one cut of one curve)."""
    rows = [_row(is_scratch=True, source="B", cut=0, freeze=0, transfer="scratch", test_acc=0.6)]
    for seed in (0, 1):
        rows += [_row(source="A", cut=2, freeze=2, test_acc=0.5, seed=seed),
                 _row(source="A", cut=2, freeze=2, test_acc=0.9, seed=seed, peft="lora r=4")]
    df = _with_keys(pd.DataFrame(rows))
    df = df.assign(arm_key=df["arm_key"] + "|" + df["peft"].fillna("none"))  # two arms: plain and LoRA
    assert df.apply(stats.yosinski_label, axis=1).fillna("-").tolist() == ["-"] + ["AnB", "-"] * 2
    y = stats.yosinski_table(df)
    assert y["acc_mean"].tolist() == pytest.approx([0.5])


def test_summary_and_best_per_n_on_constructed_rows():
    rows = []
    for n, accs in ((2, {0: 0.5, 4: 0.6}), (50, {0: 0.9, 4: 0.7})):
        for seed in range(3):
            for f, a in accs.items():
                rows.append(_row(source="A", cut=4, freeze=f, upper="drop", transfer="finetune", n=float(n),
                                 n_label=str(n), seed=seed, test_acc=a + 0.01 * seed, arm=f"freeze={f}",
                                 val_acc=a, trainable_params=10, epochs=3, val_acc_history=[a]))
            rows.append(_row(is_scratch=True, source="A", cut=0, freeze=0, transfer="scratch", n=float(n),
                             n_label=str(n), seed=seed, test_acc=0.4, arm="scratch", val_acc=0.4,
                             trainable_params=10, epochs=3, val_acc_history=[0.4]))
    df = _with_keys(pd.DataFrame(rows))
    summ = stats.summarize(df)
    assert len(summ) == 6 and set(summ["n_seeds"]) == {3}
    best = stats.best_per_n(summ)
    assert best["best_arm"].tolist() == ["freeze=4", "freeze=0"]  # freeze when data is scarce, fine-tune when not
    assert best["margin"].tolist() == pytest.approx([0.1, 0.2])
    gain = stats.paired_gain(df)
    g = gain[(gain["arm"] == "freeze=0") & (gain["n_label"] == "50")]
    assert g["gain_mean"].tolist() == pytest.approx([0.51]) and g["n_pairs"].tolist() == [3]


def test_all_examples_is_placed_by_its_per_class_size():
    from transferlab.analysis.collect import record_to_row

    rec = RunRecord(status="ok", transfer="finetune", cut=4, freeze=0, n_per_class=None, n_train=495,
                    config={"target": {"classes": [5, 6, 7, 8, 9]}},
                    metrics=Metrics(test_acc=0.9, val_acc_history=[.5]))
    row = record_to_row(rec, "7")
    assert (row["n_label"], row["n"], row["epochs"], row["is_scratch"]) == ("all", 99.0, 1, False)
    assert record_to_row(replace(rec, n_per_class=5), "8")[("n_label")] == "5"
    # the baseline is what the record says it is (`is_baseline`, decided by the run's plan), never derived here
    assert record_to_row(replace(rec, transfer="scratch", cut=0, is_baseline=True, copies_nothing=True),
                         "9")["is_scratch"]
    assert not record_to_row(replace(rec, transfer="scratch", cut=0), "9")["is_scratch"]


def test_all_pool_n_uses_the_recorded_class_count():
    """A relabelled task has no class list in its config: n for 'all' must come from the run's own class count."""
    from transferlab.analysis.collect import record_to_row

    record = RunRecord(n_per_class=None, n_train=540, num_classes=2, cut=4, transfer="finetune",
                       config={"target": {"classes": None, "relabel": {"even": [0], "odd": [1]}}})
    row = record_to_row(record, "run")
    assert row["n"] == 270 and row["n_label"] == "all"
