"""Transferability scores in the pipeline: a run records them (on its training subset, before training, without
changing the fit), the score-only command ranks cuts without training, and the report grades the scores against
the measured accuracy (Kendall tau, weighted tau, Spearman, regret) on a constructed sweep with known values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from scipy import stats as st

from conftest import compose_cfg, run_cli
from transferlab.config import plain
from transferlab.run import identity
from transferlab.run.experiment import run
from transferlab.run.record import Metrics, RunRecord
from transferlab.run.scoring import NO_SOURCE_HEAD, NOTHING_COPIED, block_outputs, pooled, predict_probs, source_network
from transferlab.run.setup import prepare
from transferlab.scores import hscore, leep, logme, nce
from transferlab.store import source_cache
from transferlab.transfer import arm
from transferlab.transfer.arm_name import arm_name

METHODS = ["logme", "hscore", "nce", "leep"]


def test_a_run_records_its_scores_on_its_training_subset(make_cfg):
    cfg = make_cfg("transfer.cut=3", "transfer.freeze=all", "target.n_per_class=5", "train.feature_cache=on")
    rec = run(cfg)
    s = rec["scores"]
    assert list(s["methods"]) == METHODS and all(m["reason"] is None for m in s["methods"].values())
    assert s["inputs"]["n"] == rec["n_train"] == 25 and s["inputs"]["cut"] == 3 and s["inputs"]["split"] == "train"
    assert s["inputs"]["features"]["block"] == "conv3" and s["inputs"]["features"]["pooling"] == "flatten"
    assert s["inputs"]["features"]["from"].startswith("feature cache")  # the frozen prefix's cached outputs
    assert s["inputs"]["source_predictions"]["classes"] == 5
    assert RunRecord.read(Path(cfg.paths.output_dir) / "result.json").scores == s

    # Recomputed by hand from the cached source model, on the run's own training subset (not val, not test).
    prep = prepare(cfg)
    state = source_cache.load_state(rec["source_ckpt"])["state_dict"]
    net = source_network(cfg, state, prep.target.input_shape, 5)
    x, y = prep.target.subset()
    assert sorted(prep.target.train_indices.tolist()) == sorted(rec["train_indices"])
    feats = pooled(block_outputs(net, x, 0, 3, torch.device("cpu")), "flatten")  # small_cnn's head flattens
    assert s["inputs"]["features"]["dim"] == feats.shape[1] == 64 * 2 * 2
    probs = predict_probs(net, x, torch.device("cpu"))
    by_hand = {"logme": logme(feats, y.numpy()), "hscore": hscore(feats, y.numpy()),
               "nce": nce(probs.argmax(1), y.numpy()), "leep": leep(probs, y.numpy())}
    for m in METHODS:
        assert s["methods"][m]["value"] == pytest.approx(by_hand[m], rel=1e-5, abs=1e-6), m


def test_a_pooled_linear_probe_scores_the_cached_head_inputs(make_cfg):
    """A linear probe whose cache holds the head's pooled input (resnet18 on 64 x 64: layer4 maps of 2 x 2) scores
    those vectors as they are instead of running the backbone over the training subset again; the values are the
    ones the uncached run computes from its inputs."""
    common = ("source=none", "backbone=resnet18", "transfer=linear_probe", "target.channels=3",
              "target.image_size=64", "target.n_per_class=5", "train.max_epochs=1")
    on = run(make_cfg(*common, "train.feature_cache=on", run="on"))
    off = run(make_cfg(*common, "train.feature_cache=off", run="off"))
    assert on["feature_cache"]["pooled"] and on["feature_cache"]["status"] == "miss"
    a, b = on["scores"]["inputs"]["features"], off["scores"]["inputs"]["features"]
    assert a["from"].startswith("feature cache") and "pooled" in a["from"] and b["from"] == "inputs"
    assert {k: a[k] for k in ("block", "shape", "dim", "pooling")} == {k: b[k] for k in ("block", "shape", "dim",
                                                                                        "pooling")}
    assert a["shape"] == [512, 2, 2] and a["pooling"] == "global average"
    for m in ("logme", "hscore"):
        assert on["scores"]["methods"][m]["value"] == pytest.approx(off["scores"]["methods"][m]["value"], rel=1e-4)


def test_features_are_read_as_the_head_reads_them():
    maps = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert pooled(maps, "avg").tolist() == [[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]]  # resnet/timm heads pool
    assert pooled(maps, "flatten").shape == (2, 12)  # small_cnn's head flattens its (small) maps
    assert pooled(maps[:, :, 0, 0], "avg").shape == (2, 3)  # vectors stay vectors


def test_scores_leave_the_trained_model_unchanged(make_cfg):
    """`transfer.scores` is neutral: the same fingerprint and, bit for bit, the same fit with and without it."""
    common = ("transfer.freeze=1", "target.n_per_class=5", "train.feature_cache=off")
    on, off = make_cfg(*common, run="on"), make_cfg(*common, "transfer.scores=[]", run="off")
    a, b = run(on), run(off)
    assert a["scores"]["methods"]["leep"]["value"] is not None and b["scores"] is None  # a built the source net
    assert a["fingerprint"] == b["fingerprint"]
    assert a["metrics"]["val/loss_history"] == b["metrics"]["val/loss_history"]
    assert a["metrics"]["test/acc"] == b["metrics"]["test/acc"]


def test_scratch_scores_nothing_and_source_none_has_no_source_head(make_cfg):
    scratch = run(make_cfg("transfer=scratch", "target.n_per_class=5", run="scratch"))
    assert {m["reason"] for m in scratch["scores"]["methods"].values()} == {NOTHING_COPIED}
    assert all(m["value"] is None for m in scratch["scores"]["methods"].values())
    none = run(make_cfg("source=none", "transfer.cut=2", "target.n_per_class=5", run="none"))["scores"]["methods"]
    assert none["logme"]["value"] is not None and none["hscore"]["value"] is not None
    assert none["nce"] == none["leep"] == {"value": None, "time_s": None, "reason": NO_SOURCE_HEAD}
    # one example per class: recorded as NaN (null) with the reason, the run itself is fine
    one = run(make_cfg("target.n_per_class=1", "transfer.scores=[logme]", run="one"))
    assert one["status"] == "ok" and one["scores"]["methods"]["logme"]["value"] is None
    assert "one example per class" in one["scores"]["methods"]["logme"]["reason"]


def test_score_command_ranks_cuts_without_training(tmp_path, shared_cache, make_cfg):
    args = ["source=digits_0to4", "target=digits_5to9", "transfer.cut=1,2,3,4", "target.n_per_class=5,20",
            "pretrain.max_epochs=4", "trainer.enable_progress_bar=false", f"paths.cache_dir={shared_cache}"]
    p = run_cli(*args, "--json", module="transferlab.score", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert [g["group"] for g in out["groups"]] == ["target.n_per_class=5", "target.n_per_class=20"]
    for g in out["groups"]:
        arms = g["arms"]
        assert sorted(a["arm"] for a in arms) == [f"transfer.cut={k}" for k in (1, 2, 3, 4)]
        assert [a["ranks"]["logme"] for a in arms] == [1, 2, 3, 4]  # listed best first
        logmes = [a["scores"]["logme"] for a in arms]
        assert logmes == sorted(logmes, reverse=True) and len(set(logmes)) == 4
        assert len({a["scores"]["nce"] for a in arms}) == 1  # the source's own predictions: one value per source
        assert {a["n_train"] for a in arms} == {25 if g["group"].endswith("=5") else 100}
    # The same numbers a run records for that point (same source model from the cache, same subset).
    point = next(a for a in out["groups"][0]["arms"] if a["cut"] == 3)
    rec = run(make_cfg("transfer.cut=3", "target.n_per_class=5", "source=digits_0to4", "target=digits_5to9"))
    for m in METHODS:
        assert point["scores"][m] == pytest.approx(rec["scores"]["methods"][m]["value"], rel=1e-5, abs=1e-6)

    one_n = [a if not a.startswith("target.n_per_class=") else "target.n_per_class=5" for a in args]
    table = run_cli(*one_n, module="transferlab.score", cwd=tmp_path)
    assert table.returncode == 0 and "ranked by logme" in table.stdout and "transfer.cut=4" in table.stdout
    bad = run_cli("transfer.scores=[]", module="transferlab.score", cwd=tmp_path)
    assert bad.returncode == 2 and "transfer.scores" in bad.stderr


def test_score_command_pretrains_several_missing_sources_each_in_its_own_folder(tmp_path):
    """Two source models missing from a cold cache: each is pretrained in a folder of its own (they shared one, and
    the second refused the first's checkpoint as another configuration's), and both are cached."""
    cache = tmp_path / "cache"
    p = run_cli("source=digits_0to4,digits_5to9", "target=digits_5to9", "transfer.cut=1", "target.n_per_class=5",
                "pretrain.max_epochs=1", "trainer.enable_progress_bar=false", f"paths.cache_dir={cache}",
                f"paths.output_dir={tmp_path / 'scores'}", "--json", module="transferlab.score", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    arms = json.loads(p.stdout)["groups"][0]["arms"]
    assert sorted(a["arm"] for a in arms) == ["source=digits_0to4", "source=digits_5to9"], arms
    assert len(list((cache / "source").glob("*/model.pt"))) == 2
    assert len(list((tmp_path / "scores" / "sources").glob("*/source/checkpoints"))) == 2


# ---------------------------------------------------------------- the report, on a constructed sweep
ACC = {1: 0.70, 2: 0.80, 3: 0.90, 4: 0.60}          # measured test accuracy per cut (+ 0.01 x seed)
LOGME = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.0}            # ranks the cuts as the accuracy does
HSCORE = {1: 1.0, 2: 2.0, 3: 1.5, 4: 3.0}           # ranks cut 4 (the worst) first
NCE = {k: -1.0 for k in ACC}                         # equal for every cut: ranks nothing


def _record(tmp_path: Path, overrides: list[str], seed: int, acc: float, scores: dict | None) -> RunRecord:
    cfg = compose_cfg([*overrides, "target.n_per_class=5", f"seed={seed}"], tmp_path / "unused")
    config = plain(cfg)
    prep_cut = 0 if "transfer=scratch" in overrides else int(overrides[1].split("=")[1])
    facts = {"cut": prep_cut, "freeze": prep_cut, "upper": config["transfer"]["upper"]}  # what the plan records
    return RunRecord(status="ok", name="constructed", source=None if prep_cut == 0 else "digits_0to4",
                     target="digits_5to9", backbone="small_cnn", transfer=config["transfer"]["name"],
                     arm=arm.arm_label(n_blocks=4, **facts), arm_name=arm_name(**facts),
                     is_baseline=identity.is_baseline(config), copies_nothing=identity.copies_nothing(config),
                     seed_group=identity.seed_group_key(config, {}),
                     strategy="fixed", cut=prep_cut, upper=config["transfer"]["upper"], freeze=prep_cut,
                     n_per_class=5, n_train=25, num_classes=5, seed=seed, data_seed=seed,
                     metrics=Metrics(test_acc=acc, val_acc=acc, val_acc_history=[acc], epochs=1),
                     config=config, fingerprint=identity.fingerprint(config, ins={}), inputs={}, scores=scores)


def _scores(cut: int) -> dict:
    values = {"logme": LOGME[cut], "hscore": HSCORE[cut], "nce": NCE[cut]}
    return {"methods": {m: {"value": v, "time_s": 0.0, "reason": None} for m, v in values.items()}}


def test_report_grades_scores_against_measured_accuracy(tmp_path):
    from transferlab.analysis.build import build_report, notes

    sweep = tmp_path / "sweep"
    for seed in (0, 1, 2):
        for cut in ACC:
            rec = _record(tmp_path, ["transfer=linear_probe", f"transfer.cut={cut}"], seed, ACC[cut] + 0.01 * seed,
                          _scores(cut))
            rec.write(sweep / f"cut{cut}_s{seed}")
        skipped = {"methods": {m: {"value": None, "time_s": None, "reason": NOTHING_COPIED} for m in LOGME}}
        _record(tmp_path, ["transfer=scratch"], seed, 0.5, {"methods": skipped["methods"]}).write(
            sweep / f"scratch_s{seed}")
    report = build_report(sweep, n_boot=200)
    t = pd.read_csv(sweep / "transferability.csv", dtype={"n_label": str}).set_index("score")
    assert list(t.index) == ["logme", "hscore", "nce"] and set(t["n_arms"]) == {4}  # scratch has no score
    assert set(t["n_seeds"]) == {3} and set(t["n_label"]) == {"5"}

    logme_row = t.loc["logme"]
    assert logme_row[["kendall_tau", "weighted_tau", "spearman"]].tolist() == pytest.approx([1, 1, 1])
    assert logme_row["regret"] == pytest.approx(0.0) and logme_row["picked_arm"] == logme_row["best_arm"]
    assert (logme_row["kendall_tau_lo"], logme_row["kendall_tau_hi"]) == pytest.approx((1, 1))  # every seed agrees

    # H-score: 2 concordant and 4 discordant pairs of 6 -> tau -1/3; rank differences (-1, 0, -2, 3) -> rho
    # 1 - 6 * 14 / (4 * 15) = -0.4; it ranks cut 4 (accuracy 0.61 on average) first, the best is cut 3 (0.91).
    h = t.loc["hscore"]
    assert h["kendall_tau"] == pytest.approx(-1 / 3) and h["spearman"] == pytest.approx(-0.4)
    assert h["regret"] == pytest.approx(0.30)
    scores, accs = [HSCORE[k] for k in ACC], [ACC[k] + 0.01 for k in ACC]
    assert h["weighted_tau"] == pytest.approx(st.weightedtau(scores, accs).statistic)

    # NCE reads only the source model's predictions, one source model for every cut: the same input in every arm,
    # so it is not graded (no correlation, no regret), and the summary says so once
    n = t.loc["nce"]
    assert not n["graded"] and n["note"].startswith("same input for every arm: it reads only the source model's")
    assert math.isnan(n["kendall_tau"]) and math.isnan(n["regret"])

    assert (sweep / "figures" / "report_transferability.png").read_bytes()[:4] == b"\x89PNG"
    assert "Transferability scores vs measured accuracy" in (sweep / "report.html").read_text()
    lines = [line for line in notes(report) if "logme vs measured accuracy" in line]
    assert len(lines) == 1 and "tau +1.00" in lines[0] and "regret 0.0 pt" in lines[0]
    assert len([line for line in notes(report) if "nce not graded (n=5): it reads only the source model's" in line]) == 1


def test_scores_digits_preset_is_a_linear_probe_over_cuts_n_and_seeds():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from conftest import CONF
    from transferlab.sweep.points import expand

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=scores_digits"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    sw = OmegaConf.to_container(cfg.hydra.sweeper)
    points = expand(OverridesParser.create().parse_overrides, sw["params"], sw["grids"], [])
    assert (cfg.source.name, cfg.target.name, cfg.transfer.name, cfg.pretrain.seed) == (
        "digits_0to4", "digits_5to9", "linear_probe", 0)
    assert list(cfg.transfer.scores) == METHODS and len(points) == 4 * 3 * 3
