"""What selection costs (issue 26, item 3): selection.csv and its figure put each arm's test score under the honest
protocol beside the large-validation-set choice and the best candidate in hindsight (the oracle).

The table is checked against a hand computation on records written from the real composed configs; a real tiny
tuned sweep over both protocols produces the hindsight numbers and the table; the hindsight numbers never steer
the selection."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as st

from conftest import compose_cfg, run_cli
from transferlab.analysis.build import build_report
from transferlab.analysis.wandb_push import logged_tables
from transferlab.run import identity
from transferlab.run.record import FACTS_SINCE, RunRecord
from transferlab.run.tuning import Candidate, choose

K = 5  # classes of digits_5to9
N_VAL = 100  # the task's validation split in these records
LRS = (0.001, 0.01)


@functools.cache
def _composed(overrides: tuple[str, ...]) -> str:
    cfg = compose_cfg(list(overrides), Path("/nonexistent/compose/run"))
    return json.dumps(OmegaConf.to_container(cfg, resolve=True))


def config(*overrides: str) -> dict:
    return json.loads(_composed(overrides))


def record(cfg: dict, acc: float, hindsight: list[float] | None, chosen: int = 0) -> dict:
    """A result.json of a run of `cfg` (tuned over LRS when `hindsight` is given: each candidate's hindsight test
    accuracy, the `chosen` one's equal to `acc`), with the labels its protocol counts (run/labels.py)."""
    n = cfg["target"]["n_per_class"]
    honest = cfg["train"]["select"] == "val_in_budget"
    n_train, n_val = (K * n - K, K) if honest else (K * n, N_VAL)  # val_in_budget: one per class carved out
    ins = identity.inputs(cfg)
    tuning = None
    if hindsight is not None:
        assert hindsight[chosen] == acc
        tuning = {"grid": {"train.lr": list(LRS)}, "chosen": {"train.lr": LRS[chosen]}, "chosen_index": chosen,
                  "candidates": [{"index": i, "values": {"train.lr": lr}, "status": "ok", "score": 0.5,
                                  "hindsight_test": {"test/acc": h, "test/loss": 1.0}}
                                 for i, (lr, h) in enumerate(zip(LRS, hindsight))]}
    return {
        # hindsight numbers (schema 7), written by hand without the run facts of schema 8: derived on reading
        "schema": FACTS_SINCE - 1, "status": "ok", "name": "sel", "source": "digits_0to4", "target": "digits_5to9",
        "backbone": "small_cnn", "transfer": cfg["transfer"]["name"], "strategy": "fixed", "cut": 4, "upper": "drop",
        "freeze": 4 if cfg["transfer"]["freeze"] == "all" else cfg["transfer"]["freeze"], "n_per_class": n,
        "n_train": n_train, "n_val": n_val, "num_classes": K, "seed": cfg["seed"], "data_seed": cfg["data_seed"],
        "select": cfg["train"]["select"], "labels_used": n_train + n_val, "tuning": tuning,
        "metrics": {"test/acc": acc, "val/acc": 0.5, "val/acc_history": [0.4, 0.5]},
        "config": cfg, "fingerprint": identity.fingerprint(cfg, ins), "inputs": ins,
        "environment": {"python": "3.11", "transferlab": "0.1.0"},
    }


# (arm, n) -> protocol -> per seed: (test acc of the tested model, hindsight of both candidates or None)
DATA = {
    ("finetune", 5): {"best_val": [(0.70, [0.70, 0.74]), (0.66, [0.61, 0.66]), (0.72, [0.72, 0.69])],
                      "val_in_budget": [(0.60, [0.60, 0.62]), (0.58, [0.55, 0.58]), (0.65, [0.65, 0.75])]},
    ("finetune", 10): {"best_val": [(0.80, [0.80, 0.79]), (0.82, [0.81, 0.82]), (0.79, [0.79, 0.78])],
                       "val_in_budget": [(0.78, [0.78, 0.70]), (0.80, [0.80, 0.84]), (0.75, [0.71, 0.75])]},
    ("linear_probe", 5): {"best_val": [(0.68, [0.68, 0.60]), (0.69, [0.69, 0.61]), (0.70, [0.66, 0.70])],
                          "val_in_budget": [(0.66, [0.66, 0.60]), (0.64, [0.62, 0.64]), (0.69, [0.69, 0.60])]},
    ("linear_probe", 10): {"best_val": [(0.74, [0.74, 0.72]), (0.76, [0.76, 0.70]), (0.73, [0.71, 0.73])],
                           "val_in_budget": [(0.72, [0.72, 0.71]), (0.74, [0.73, 0.74]), (0.71, [0.71, 0.69])]},
}


def _write(root: Path, protocols=("best_val", "val_in_budget")) -> None:
    for (arm, n), by_protocol in DATA.items():
        for select in protocols:
            for seed, (acc, hindsight) in enumerate(by_protocol[select]):
                cfg = config(f"transfer={arm}", f"target.n_per_class={n}", f"train.select={select}", f"seed={seed}",
                             "tune.train.lr=[" + ",".join(map(str, LRS)) + "]")
                chosen = hindsight.index(acc)
                folder = f"{arm}_n{n}_{select}_s{seed}"
                RunRecord.from_dict(record(cfg, acc, hindsight, chosen)).write(root / folder)


def _interval(x) -> tuple[float, float, float]:
    x = np.asarray(x, float)
    half = st.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_selection_csv_equals_a_hand_computation(tmp_path):
    root = tmp_path / "sweep"
    _write(root)
    report = build_report(root, tmp_path / "rep", n_boot=20)
    cost = pd.read_csv(tmp_path / "rep" / "selection.csv")
    assert len(cost) == 4 and set(cost["honest"]) == {"val_in_budget"} and set(cost["large_val"]) == {"best_val"}
    assert cost["setting"].nunique() == 1 and "train.select" not in cost["setting"].iloc[0]  # one setting, both
    for (arm, n), by_protocol in DATA.items():
        name = {"finetune": "fine-tune all", "linear_probe": "linear probe"}[arm]
        row = cost[(cost["arm_name"] == name) & (cost["n"] == n)]
        assert len(row) == 1, (arm, n, cost)
        row = row.iloc[0]
        h = [acc for acc, _ in by_protocol["val_in_budget"]]
        lv = [acc for acc, _ in by_protocol["best_val"]]
        # the oracle: the best test score among every candidate of both runs of that seed
        oracle = [max(a[1] + b[1]) for a, b in zip(by_protocol["val_in_budget"], by_protocol["best_val"])]
        for col, values in (("honest", h), ("large_val", lv), ("oracle", oracle),
                            ("large_val_minus_honest", np.subtract(lv, h)),
                            ("oracle_minus_large_val", np.subtract(oracle, lv)),
                            ("oracle_minus_honest", np.subtract(oracle, h))):
            mean, lo, hi = _interval(values)
            if not col.count("minus"):
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            assert (row[f"{col}_mean"], row[f"{col}_ci_lo"], row[f"{col}_ci_hi"]) == pytest.approx((mean, lo, hi)), col
        assert (row["n_pairs"], row["oracle_pairs"]) == (3, 3)
        assert (row["labels_honest"], row["labels_large_val"]) == (K * n, K * n + N_VAL)
        same = np.mean([a[1].index(a[0]) == b[1].index(b[0])
                        for a, b in zip(by_protocol["val_in_budget"], by_protocol["best_val"])])
        assert row["same_choice"] == pytest.approx(same)
    # ranks among the arms at one n: at n=5 fine-tune leads under best_val, the linear probe under the honest protocol
    at5 = cost[cost["n"] == 5].set_index("arm_name")
    assert (at5.loc["fine-tune all", "rank_large_val"], at5.loc["linear probe", "rank_large_val"]) == (1, 2)
    assert (at5.loc["fine-tune all", "rank_honest"], at5.loc["linear probe", "rank_honest"]) == (2, 1)
    lv5 = {a: np.mean([acc for acc, _ in DATA[(a, 5)]["best_val"]]) for a in ("finetune", "linear_probe")}
    h5 = {a: np.mean([acc for acc, _ in DATA[(a, 5)]["val_in_budget"]]) for a in ("finetune", "linear_probe")}
    assert at5.loc["fine-tune all", "lead_large_val"] == pytest.approx(lv5["finetune"] - lv5["linear_probe"])
    assert at5.loc["fine-tune all", "lead_honest"] == pytest.approx(h5["finetune"] - h5["linear_probe"])
    assert at5.loc["linear probe", "lead_honest"] == pytest.approx(h5["linear_probe"] - h5["finetune"])
    # the figure, and the page names it; the notes line says what the file is
    assert (tmp_path / "rep" / "figures" / "report_selection_cost.png").exists()
    assert (tmp_path / "rep" / "figures" / "report_selection_cost.pdf").exists()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "What selection costs" in page and "selection.csv" in page
    assert any(n.startswith("selection.csv:") for n in report.stat_notes)
    assert len(logged_tables(report)["report/selection"]) == 4  # the W&B report run logs it too (--wandb)


def test_without_both_protocols_there_is_no_selection_table(tmp_path):
    root = tmp_path / "sweep"
    _write(root, protocols=("best_val",))
    report = build_report(root, tmp_path / "rep", n_boot=20)
    assert not (tmp_path / "rep" / "selection.csv").exists()
    assert not list((tmp_path / "rep" / "figures").glob("report_selection_cost*"))
    assert "What selection costs" not in (tmp_path / "rep" / "report.html").read_text()
    assert "report/selection" not in logged_tables(report)


def test_without_hindsight_numbers_the_oracle_is_empty(tmp_path):
    """Records made before hindsight (schema 6): honest and large-val are compared, the oracle is left empty."""
    root = tmp_path / "sweep"
    for select in ("best_val", "val_in_budget"):
        for seed, acc in enumerate((0.6, 0.7)):
            cfg = config("transfer=finetune", "target.n_per_class=5", f"train.select={select}", f"seed={seed}")
            rec = record(cfg, acc + (0.05 if select == "best_val" else 0.0), None)
            RunRecord.from_dict(rec).write(root / f"{select}_{seed}")
    build_report(root, tmp_path / "rep", n_boot=20)
    row = pd.read_csv(tmp_path / "rep" / "selection.csv").iloc[0]
    assert row["large_val_minus_honest_mean"] == pytest.approx(0.05) and row["n_pairs"] == 2
    assert row["oracle_pairs"] == 0 and pd.isna(row["oracle_mean"]) and pd.isna(row["same_choice"])


def test_hindsight_numbers_never_steer_the_choice():
    """`choose` reads the selection score, val/loss and order; hindsight numbers that rank the candidates the other
    way round leave its choice as it was."""
    def c(i, score, loss, hindsight=None):
        return Candidate(index=i, values={"train.lr": i}, fingerprint=str(i), dir=".", score=score, val_loss=loss,
                         hindsight_test=hindsight)

    plain = [c(0, 0.5, 1.0), c(1, 0.7, 2.0), c(2, 0.7, 1.5)]
    told = [c(0, 0.5, 1.0, {"test/acc": 0.99}), c(1, 0.7, 2.0, {"test/acc": 0.6}),
            c(2, 0.7, 1.5, {"test/acc": 0.1})]
    assert choose(plain).index == choose(told).index == 2


def test_a_tuned_sweep_over_both_protocols_reports_what_selection_costs(tmp_path):
    """Through the real CLI and sweeper: one arm, n=5, two seeds, tuned over two rates under best_val and
    val_in_budget; every candidate has its hindsight number (the chosen one's is the point's test), the oracle is at
    least both protocols' scores in every pair, and selection.csv pairs the two protocols."""
    from transferlab.report import main as report

    sweep = tmp_path / "sweep"
    p = run_cli("-m", "pretrain.max_epochs=1", "train.max_epochs=3", "target.n_per_class=5", "seed=0,1",
                "train.select=best_val,val_in_budget", "tune.train.lr=[1e-3,3e-2]", "trainer.enable_progress_bar=false",
                "transfer.scores=[]", "logger=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    records = [RunRecord.read(f) for f in sweep.rglob("result.json") if "candidates" not in f.parts]
    assert len(records) == 4
    for rec in records:
        cands = rec.tuning["candidates"]
        assert all(c["hindsight_test"] and 0 <= c["hindsight_test"]["test/acc"] <= 1 for c in cands)
        assert cands[rec.tuning["chosen_index"]]["hindsight_test"]["test/acc"] == rec.metrics.test_acc
    assert report([str(sweep), "--out", str(tmp_path / "rep"), "--n-boot", "20"]) == 0
    cost = pd.read_csv(tmp_path / "rep" / "selection.csv")
    assert len(cost) == 1 and cost["n_pairs"].iloc[0] == 2 and cost["oracle_pairs"].iloc[0] == 2
    row = cost.iloc[0]
    assert (row["honest"], row["large_val"]) == ("val_in_budget", "best_val")
    assert row["labels_honest"] == 25 and row["labels_large_val"] > 25
    by = {(r.select, r.seed): r for r in records}
    oracle = [max(c["hindsight_test"]["test/acc"] for s in ("best_val", "val_in_budget")
                  for c in by[(s, seed)].tuning["candidates"]) for seed in (0, 1)]
    assert row["oracle_mean"] == pytest.approx(np.mean(oracle))
    assert all(o >= max(by[("best_val", s)].metrics.test_acc, by[("val_in_budget", s)].metrics.test_acc)
               for s, o in zip((0, 1), oracle))
    assert row["honest_mean"] == pytest.approx(np.mean([by[("val_in_budget", s)].metrics.test_acc for s in (0, 1)]))
    assert (tmp_path / "rep" / "figures" / "report_selection_cost.png").exists()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "tested only after the choice, for selection.csv&#x27;s oracle" in page  # the setup block says so


def test_a_failed_hindsight_test_makes_that_pairs_oracle_a_lower_bound_and_says_so(tmp_path):
    """A candidate whose hindsight test raised is missing from the oracle: selection.csv counts the pairs whose
    oracle is therefore only a lower bound, and the notes line says so."""
    root = tmp_path / "sweep"
    _write(root)
    folder = root / "finetune_n5_val_in_budget_s1"
    rec = json.loads((folder / "result.json").read_text())
    rec["tuning"]["candidates"][0]["hindsight_test"] = {"error": "RuntimeError: out of memory"}  # not chosen: 1
    RunRecord.from_dict(rec).write(folder)
    report = build_report(root, tmp_path / "rep", n_boot=20)
    cost = pd.read_csv(tmp_path / "rep" / "selection.csv").set_index(["arm_name", "n"])
    assert cost["oracle_lower_bound"].to_dict() == {("fine-tune all", 5): 1, ("fine-tune all", 10): 0,
                                                    ("linear probe", 5): 0, ("linear probe", 10): 0}
    assert cost.loc[("fine-tune all", 5), "oracle_pairs"] == 3  # still an oracle, from the other candidates
    (line,) = [n for n in report.stat_notes if n.startswith("selection.csv:")]
    assert "the oracle is a lower bound in 1 seed pair: a candidate's hindsight test failed" in line
