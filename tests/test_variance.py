"""The spread split into its causes (analysis/variance.py) and the seed planner (transferlab.plan_seeds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from transferlab.analysis import variance
from transferlab.plan_seeds import main as plan_seeds


def _crossed(sd_draw, sd_seed, sd_resid, draws, seeds, rng) -> np.ndarray:
    a = rng.normal(0, sd_draw, draws)[:, None]
    b = rng.normal(0, sd_seed, seeds)[None, :]
    return 0.7 + a + b + rng.normal(0, sd_resid, (draws, seeds))


def test_the_moments_recover_known_components():
    rng = np.random.default_rng(0)
    est = np.array([variance.moments(_crossed(0.08, 0.03, 0.02, 40, 40, rng)) for _ in range(40)])
    assert est.mean(axis=0) == pytest.approx([0.08 ** 2, 0.03 ** 2, 0.02 ** 2], rel=0.15)


def test_the_moments_of_a_hand_computed_matrix():
    y = np.array([[0.50, 0.60], [0.70, 0.90]])
    # rows 0.55, 0.80; cols 0.60, 0.75; mean 0.675; residuals +-0.025
    ms_draw, ms_seed, ms_res = 2 * 2 * 0.125 ** 2, 2 * 2 * 0.075 ** 2, 4 * 0.025 ** 2
    assert variance.moments(y) == pytest.approx(((ms_draw - ms_res) / 2, (ms_seed - ms_res) / 2, ms_res))


def test_intervals_cover_the_truth_and_shrink_with_more_draws():
    rng = np.random.default_rng(1)
    small = variance.split(_crossed(0.08, 0.01, 0.01, 4, 4, rng), n_boot=300)
    large = variance.split(_crossed(0.08, 0.01, 0.01, 30, 30, rng), n_boot=300)
    lo, hi = large.ci["draw"]
    assert lo <= 0.08 ** 2 <= hi
    assert hi - lo < small.ci["draw"][1] - small.ci["draw"][0]
    assert large.share("draw") > 0.9


def test_the_plan_is_the_cheapest_design_that_reaches_the_width():
    sp = variance.Split(draws=3, seeds=3, mean=0.7, var_draw=0.04 ** 2, var_seed=0.01 ** 2, var_resid=0.01 ** 2,
                        ci={})
    d, s = variance.plan(sp, 0.02)
    assert variance.half_width(sp.var_draw, sp.var_seed, sp.var_resid, d, s) <= 0.02
    for dd in range(1, 65):  # no design with fewer runs reaches it
        for ss in range(1, 65):
            if dd * ss < d * s:
                assert variance.half_width(sp.var_draw, sp.var_seed, sp.var_resid, dd, ss) > 0.02
    assert d > s  # the draw dominates: more draws, not more seeds
    assert variance.plan(sp, 1e-6) is None


def test_incomplete_designs_are_listed_not_split():
    rows = pd.DataFrame([{"status": "ok", "setting": "s", "arm": "a", "n_label": "1", "n": 1.0, "seed": s,
                          "data_seed": d, "test_acc": 0.5 + 0.1 * d + 0.01 * s} for d in range(3) for s in range(3)]
                        + [{"status": "ok", "setting": "s", "arm": "b", "n_label": "1", "n": 1.0, "seed": s,
                            "data_seed": 0, "test_acc": 0.5} for s in range(3)])
    out, notes = variance.table(rows, wanted=0.02, n_boot=50)
    assert list(out["arm"]) == ["a"] and out["draws"].iloc[0] == 3 and out["seeds"].iloc[0] == 3
    assert out["sd_seed_pt"].iloc[0] == pytest.approx(100 * math.sqrt(variance.moments(
        np.array([[0.5 + 0.1 * d + 0.01 * s for s in range(3)] for d in range(3)]))[1]))
    assert len(notes) == 1 and "s / b / 1" in notes[0]


def test_the_cli_on_a_real_crossed_sweep(tmp_path, capsys):
    """A 2 x 2 crossed sweep of real runs (seed x data_seed), read back from its folder."""
    from conftest import run_cli

    sweep = tmp_path / "sweep"
    p = run_cli("-m", "pretrain.max_epochs=1", "train.max_epochs=2", "target.n_per_class=2", "seed=0,1",
                "data_seed=0,1", "transfer.scores=[]", "logger=none", "trainer.enable_progress_bar=false",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    recs = [json.loads(f.read_text()) for f in sweep.rglob("result.json")]
    assert sorted((r["seed"], r["data_seed"]) for r in recs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert plan_seeds([str(sweep), "--half-width", "5", "--n-boot", "50", "--csv", str(tmp_path / "v.csv")]) == 0
    out = capsys.readouterr().out
    assert "sd draw (pt)" in out and "runs needed" in out
    table = pd.read_csv(tmp_path / "v.csv")
    assert len(table) == 1 and (table["draws"].iloc[0], table["seeds"].iloc[0]) == (2, 2)
    y = np.array([[next(r["metrics"]["test/acc"] for r in recs if (r["data_seed"], r["seed"]) == (d, s))
                   for s in (0, 1)] for d in (0, 1)])
    assert table["sd_resid_pt"].iloc[0] == pytest.approx(100 * math.sqrt(variance.moments(y)[2]), abs=1e-6)
    from transferlab.report import main as report  # the report writes the same split as variance.csv

    assert report([str(sweep), "--out", str(tmp_path / "rep"), "--n-boot", "50"]) == 0
    written = pd.read_csv(tmp_path / "rep" / "variance.csv")
    assert written["sd_resid_pt"].tolist() == pytest.approx(table["sd_resid_pt"].tolist())
    assert "variance.csv: the spread of 1 arm/n cell" in capsys.readouterr().out


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    assert plan_seeds([str(tmp_path / "nope")]) == 2
    assert plan_seeds([str(tmp_path), "--half-width", "0"]) == 2
    assert plan_seeds([str(tmp_path)]) == 2  # no results
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("transferlab-plan-seeds: ") for line in err) and len(err) == 3
