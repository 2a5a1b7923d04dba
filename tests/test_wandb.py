"""W&B: a real multirun with logger=wandb (offline), read back from the run files with `wandb leet inspect`."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from transferlab.run.record import RunRecord

WANDB = str(Path(sys.executable).parent / "wandb")


@functools.lru_cache(maxsize=None)  # a finished offline run never changes; each inspect costs a few seconds
def inspect(run_dir: Path) -> tuple[dict, list[dict]]:
    """(--summary object, all records) of one offline run folder, as `wandb leet inspect --json` prints them."""
    def call(*extra: str) -> str:
        p = subprocess.run([WANDB, "leet", "inspect", "--json", *extra, str(run_dir)], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout
    summary = json.loads(call("--summary"))
    records = [json.loads(line) for line in call().splitlines() if line.strip()]
    return summary, records


def run_record(records: list[dict]) -> dict:
    runs = [r["run"] for r in records if r.get("type") == "run"]
    assert runs, "no run record"
    return runs[0]


def only_run(folder: Path) -> Path:
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one W&B run under {folder}, found {runs}"
    return runs[0]


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory) -> dict[str, Path]:
    """Two jobs in one multirun process: job 0 trains fine, job 1 fails (lr=1e30 -> NaN loss)."""
    root = tmp_path_factory.mktemp("wandb_sweep")
    sweep = root / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)  # the offline mode must come from the config, not the environment
        run_cli("-m", "pretrain.max_epochs=2", "train.max_epochs=3", "trainer.enable_progress_bar=false",
                "target.n_per_class=2", "transfer.freeze=2", "train.lr=0.001,1e30", "logger=wandb",
                "name=wb_sweep", "logger.wandb.tags=[demo]", f"hydra.sweep.dir={sweep}", cwd=root,
                env={"OMP_NUM_THREADS": "1"})
    # The sweeper names each point's folder by its overrides; find the two jobs by their learning rate.
    by_lr = {RunRecord.read(p).config["train"]["lr"]: p.parent for p in sweep.rglob("result.json")}
    jobs = {"0": by_lr[0.001], "1": by_lr[1e30]}
    assert RunRecord.read(jobs["0"] / "result.json").status == "ok"
    assert RunRecord.read(jobs["1"] / "result.json").status == "failed"
    return jobs


def test_one_run_per_job_with_group_job_type_axes_and_summary(wandb_sweep):
    rec = RunRecord.read(wandb_sweep["0"] / "result.json")
    summary, records = inspect(only_run(wandb_sweep["0"]))
    run = run_record(records)
    assert run["run_group"] == "wb_sweep" and run["job_type"] == "target"
    assert {"transfer:finetune", "source:digits_0to4", "target:digits_5to9", "backbone:small_cnn", "demo"} <= set(
        run["tags"])
    config = summary["config"]
    for axis in ("n_per_class", "freeze", "cut", "trainable_params", "n_train"):
        assert config[axis] == getattr(rec, axis), axis
    assert config["transfer.freeze"] == 2 and config["logger.wandb.mode"] == "offline"  # flattened resolved config
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["summary"]["test/acc"] == pytest.approx(rec.metrics.test_acc)
    assert summary["summary"]["val/acc"] == pytest.approx(rec.metrics.val_acc)  # best epoch, not the last
    vals = [r["history"]["item"]["val/acc"] for r in records
            if r.get("type") == "history" and "val/acc" in r["history"]["item"]]
    assert vals == pytest.approx(rec.metrics.val_acc_history)  # one point per epoch

    src_summary, src_records = inspect(only_run(wandb_sweep["0"] / "source"))  # pretraining: its own run
    src = run_record(src_records)
    assert src["job_type"] == "source" and src["run_group"] == "wb_sweep" and src["run_id"] != run["run_id"]
    assert src_summary["exit_code"] == 0 and "test/acc" in src_summary["summary"]


def test_every_target_run_names_its_arm_and_its_source_model_on_a_miss_and_a_hit(wandb_sweep):
    """The two jobs share one source model: the first trains it (miss, with its own W&B run), the second loads it
    from the cache (hit, no source run of its own); both name that run and its accuracy."""
    recs = {job: RunRecord.read(folder / "result.json") for job, folder in wandb_sweep.items()}
    assert sorted(r.source_cache for r in recs.values()) == ["hit", "miss"]
    miss = next(job for job, r in recs.items() if r.source_cache == "miss")
    hit = next(job for job in recs if job != miss)
    assert not (wandb_sweep[hit] / "source").exists()  # nothing pretrained on a hit
    src = run_record(inspect(only_run(wandb_sweep[miss] / "source"))[1])
    for job, rec in recs.items():
        config = inspect(only_run(wandb_sweep[job]))[0]["config"]
        assert config["arm"] == "freeze=2"  # TransferPlan.arm: scratch and freeze=0 differ here
        assert config["arm_name"] == "fine-tune top 2"  # the report's words (transfer/arm_name.py)
        assert config["source_model.cache"] == rec.source_cache
        assert config["source_model.wandb_id"] == src["run_id"] == rec.source_metrics["wandb_run"]["id"]
        assert src["run_id"].startswith(rec.source_metrics["key"][:12])  # per source fingerprint and attempt
        assert config["source_model.wandb_group"] == "wb_sweep"
        assert config["source_model.test_acc"] == pytest.approx(recs[miss].source_metrics["test/acc"])


def test_a_scratch_run_has_no_freeze_depth_in_wandb(tmp_path):
    """Scratch copies nothing: its W&B `freeze` is null, so grouping runs by freeze never pools it with full
    fine-tuning (freeze=0); its arm and name say scratch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        run_cli("transfer=scratch", "train.max_epochs=1", "target.n_per_class=2", "trainer.enable_progress_bar=false",
                "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    config = inspect(only_run(tmp_path / "run"))[0]["config"]
    assert config["freeze"] is None and config["transfer.freeze"] == 0
    assert config["arm"] == "scratch" and config["arm_name"] == "scratch"


def test_failed_job_finishes_its_run_with_exit_code_1(wandb_sweep):
    rec = RunRecord.read(wandb_sweep["1"] / "result.json")
    summary, records = inspect(only_run(wandb_sweep["1"]))
    assert summary["exit_code"] == 1 and summary["state"] == "failed"
    assert summary["summary"]["status"] == "failed" and "NonFinite" in rec.error
    ok_id = run_record(inspect(only_run(wandb_sweep["0"]))[1])["run_id"]
    assert run_record(records)["run_id"] != ok_id  # the two jobs never share (merge into) one run


def test_report_pushes_one_report_run(wandb_sweep, tmp_path):
    out = tmp_path / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        p = run_cli(str(wandb_sweep["0"].parent), "--out", str(out), "--wandb", "--n-boot", "50", module="transferlab.report",
                    cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "failed runs (1)" in p.stdout
    summary, records = inspect(only_run(out))
    run = run_record(records)
    assert run["job_type"] == "report" and run["run_group"] == "wb_sweep" and summary["exit_code"] == 0
    assert summary["summary"]["runs_ok"] == 1 and summary["summary"]["runs_failed"] == 1
    item = {k: v for r in records if r.get("type") == "history" for k, v in r["history"]["item"].items()}
    logged = {k[: -len("._type")] for k in item if k.endswith("._type")}  # media values are flattened objects
    assert {"report/summary", "report/results", "report/failed", "figures/report_acc_vs_n",
            "charts/acc_vs_n/digits_5to9/small_cnn_table"} <= logged
    assert item["report/results.nrows"] == 2 and item["report/failed.nrows"] == 1
    png = only_run(out) / "files" / item["figures/report_acc_vs_n.path"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_mode_is_per_run_and_final_metrics_land_in_summary(make_cfg, tmp_path, monkeypatch):
    from transferlab.config import flatten
    from transferlab.training.loggers import finish_logger, make_logger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg("logger=wandb", "name=unit")
    logger = make_logger(cfg, tmp_path / "job", "target", axes={"n_per_class": 5, "freeze": 1, "cut": 4})
    logger.experiment.log({"val/acc": 0.25})
    assert "WANDB_MODE" not in os.environ  # WandbLogger(offline=True) would have set it for every later job
    finish_logger(logger, failed=False, summary={"test/acc": 0.75, "val/acc": 0.5, "val/acc_history": [0.25, 0.5],
                                                 "epochs": 2, "bad": float("nan")})
    summary, records = inspect(only_run(tmp_path / "job"))
    s = summary["summary"]
    assert (s["test/acc"], s["val/acc"], s["epochs"]) == (0.75, 0.5, 2) and "val/acc_history" not in s
    assert "bad" not in s and summary["exit_code"] == 0
    assert summary["config"]["freeze"] == 1 and summary["config"]["job_type"] == "target"
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_a_vectorised_group_logs_each_member_live_into_its_own_run(tmp_path):
    """Two seeds trained as one stacked group, logger=wandb: each member has exactly one W&B run of its own, holding
    its own curve (the checks in its result.json) and its test metrics, finished ok; the two runs were open at the
    same time (each member's curve reached its run while the group trained, not after it ended)."""
    sweep = tmp_path / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        p = run_cli("-m", "pretrain.max_epochs=2", "train.max_epochs=12", "trainer.enable_progress_bar=false",
                    "target.n_per_class=2", "transfer.freeze=2", "seed=0,1", "logger=wandb", "name=wb_group",
                    "train.val_every_steps=2", "hydra.sweeper.vectorize=seeds", f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    times = {}
    for path in sorted(sweep.rglob("result.json")):
        rec = RunRecord.read(path)
        assert rec.group["mode"] == "stacked"
        summary, records = inspect(only_run(path.parent))
        run = run_record(records)
        assert run["run_group"] == "wb_group" and summary["exit_code"] == 0 and summary["state"] == "finished"
        assert run["run_id"].startswith(rec.fingerprint[:12]) and run["run_id"].endswith("-1")  # its own id
        history = [r["history"]["item"] for r in records if r.get("type") == "history"]
        vals = [h for h in history if "val/acc" in h]
        assert [v["val/acc"] for v in vals] == pytest.approx(rec.metrics.val_acc_history)
        assert [int(v["epoch"]) + 1 for v in vals] == rec.metrics.val_epoch_history == [2, 4, 6, 8, 10, 12]
        assert summary["summary"]["test/acc"] == pytest.approx(rec.metrics.test_acc)
        stamps = [float(h["_timestamp"]) for h in history if "train/loss" in h]
        times[rec.seed] = (min(stamps), max(stamps))
    assert sorted(times) == [0, 1]
    assert times[1][0] < times[0][1] and times[0][0] < times[1][1]  # interleaved: both runs live during the fit


def _run_ids(folder: Path) -> list[str]:
    """The run id of every offline W&B folder of a job (one folder per process that opened the run), as the
    folder's data file names it (run-<run id>.wandb)."""
    ids = []
    for d in sorted((folder / "wandb").glob("offline-run-*")):
        (data,) = d.glob("run-*.wandb")
        ids.append(data.name[len("run-"):-len(".wandb")])
    return ids


def test_a_resumed_run_continues_its_wandb_run_and_a_fresh_start_opens_a_new_one(make_cfg, monkeypatch):
    """A crash mid-fit, then the same config again (the in-process twin of kill -9 + requeue): the resume logs
    under the attempt's run id (two offline folders, one id). Checkpoints cleared as `resume=false` clears them:
    a new attempt, a new id; its resume keeps that new id. Each id derives from the run's fingerprint."""
    from transferlab.run.experiment import run
    from transferlab.sweep.state import clear_checkpoints
    from transferlab.training import callbacks
    from transferlab.training.wandb_attempt import read_ledger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    args = ("transfer=scratch", "target.n_per_class=4", "train.max_epochs=3", "trainer.enable_progress_bar=false",
            "checkpoint.every_s=0", "logger=wandb", "name=wb_attempts")

    def crash(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")

    def crashed_then_resumed() -> dict:
        with monkeypatch.context() as mp:
            mp.setattr(callbacks.FailOnNonFinite, "on_train_epoch_end", crash, raising=False)
            with pytest.raises(RuntimeError, match="simulated crash"):
                run(make_cfg(*args, run="job"))
        return run(make_cfg(*args, run="job"))

    cfg = make_cfg(*args, run="job")
    job = Path(cfg.paths.output_dir)
    first = crashed_then_resumed()
    assert first["resumed_from"].endswith("last.ckpt")
    ids = _run_ids(job)
    assert len(ids) == 2 and len(set(ids)) == 1, ids  # two processes' folders, one W&B run
    assert ids[0].startswith(first["fingerprint"][:12]) and ids[0].endswith("-1")
    summary, records = inspect(sorted((job / "wandb").glob("offline-run-*"))[-1])
    assert run_record(records)["run_id"] == ids[1]
    assert summary["exit_code"] == 0 and summary["summary"]["test/acc"] == pytest.approx(first["metrics"]["test/acc"])

    clear_checkpoints(job)  # what the sweeper does for resume=false (or another fingerprint in the folder)
    second = crashed_then_resumed()
    assert second["fingerprint"] == first["fingerprint"]
    ids = _run_ids(job)
    assert len(ids) == 4 and ids[2] == ids[3] != ids[0] and ids[2].endswith("-2"), ids
    assert read_ledger(job)["ids"] == [ids[0], ids[2]]


def test_workspace_spec_names_the_sweep_and_only_keys_the_runs_log(wandb_sweep, tmp_path):
    """`--wandb-workspace --push` offline: the report run, the spec file and one refusal line (exit 1). The spec's
    workspace and report keep the sweep's group (target + report runs), its five sections, and every key a panel
    reads is one the target runs (config, summary) or the report run (tables, their columns, figures) logged."""
    pytest.importorskip("wandb_workspaces", reason="the `wandb` extra (wandb-workspaces) is not installed")
    from transferlab.analysis.wandb_workspace import SPEC_FILE

    out = tmp_path / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        p = run_cli(str(wandb_sweep["0"].parent), "--out", str(out), "--wandb-workspace", "--push", "--n-boot", "20",
                    module="transferlab.report", cwd=tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    refusal = [ln for ln in p.stderr.splitlines() if ln.startswith("transferlab-report:")]
    assert len(refusal) == 1 and "offline" in refusal[0] and str(out / SPEC_FILE) in refusal[0], p.stderr[-3000:]
    spec = json.loads((out / SPEC_FILE).read_text())
    assert [s["name"] for s in spec["sections"]] == [
        "Accuracy vs n per arm", "Gain over scratch", "Freeze depth heatmap", "Effective data transferred D_T(n)",
        "Transferability vs accuracy"]
    kinds = {s["name"]: [pn["kind"] for pn in s["panels"]] for s in spec["sections"]}
    assert kinds["Accuracy vs n per arm"][:3] == ["bar", "line_table", "media"]
    assert kinds["Gain over scratch"] == ["text"]  # one arm, no scratch: said, not an empty chart

    # The library's own serialisation: the group filter and the sections' panels, in the workspace and the report.
    ws = spec["workspace"]["spec"]["section"]
    wanted = [{"key": {"section": "run", "name": "group"}, "op": "=", "value": "wb_sweep"},
              {"key": {"section": "run", "name": "jobType"}, "op": "IN", "value": ["target", "report"]}]
    for runset in [ws["runSets"][0]] + [b["metadata"]["runSets"][0] for b in spec["report"]["spec"]["blocks"]
                                       if b["type"] == "panel-grid"]:
        got = [{k: f[k] for k in ("key", "op", "value")} for f in runset["filters"]["filters"]]
        assert got == wanted
        assert [g["name"] for g in runset["grouping"]] == ["arm_name.value", "n_per_class.value"]
    bank = {s["name"]: s["panels"] for s in ws["panelBankConfig"]["sections"]}
    for s in spec["sections"]:
        assert len(bank[s["name"]]) == len(s["panels"]), s["name"]
    assert sum(b["type"] == "panel-grid" for b in spec["report"]["spec"]["blocks"]) == 5

    assert_keys_logged(spec, only_run(wandb_sweep["0"]), only_run(out))


def assert_keys_logged(spec: dict, target_run: Path, report_run: Path) -> None:
    """Every key a panel of the spec reads was logged: a target run's config and summary keys, the report run's
    keys (tables, figures) and its tables' columns (read from the table files the offline run holds)."""
    target_summary, _ = inspect(target_run)
    _, records = inspect(report_run)
    item = {k: v for r in records if r.get("type") == "history" for k, v in r["history"]["item"].items()}
    logged = {k[: -len("._type")] for k in item if k.endswith("._type")}
    keys = [tuple(k) for s in spec["sections"] for pn in s["panels"] for k in pn["keys"]]
    assert {w for w, _ in keys} == {"config", "summary", "logged", "column"}
    for where, key in keys:
        if where == "config":
            assert key in target_summary["config"], key
        elif where == "summary":
            assert key in target_summary["summary"], key
        elif where == "logged":
            assert key in logged, key
        else:
            table, column = key.split(":", 1)
            columns = json.loads((report_run / "files" / item[f"{table}.path"]).read_text())["columns"]
            assert column in columns, key


@pytest.mark.slow  # three sweeper launches
def test_a_sweep_relaunch_adds_no_run_and_resume_false_opens_a_new_one(tmp_path):
    """Through the real sweeper: a finished point re-launched is skipped (no second W&B folder); with
    `hydra.sweeper.resume=false` it trains from zero, a new attempt under a new id, its result's fingerprint the
    same."""
    sweep = tmp_path / "sweep"
    args = ("-m", "transfer=scratch", "target.n_per_class=2", "train.max_epochs=1", "trainer.enable_progress_bar=false",
            "logger=wandb", "name=wb_relaunch", f"hydra.sweep.dir={sweep}")
    ids = []
    for extra in ((), (), ("hydra.sweeper.resume=false",)):
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("WANDB_MODE", raising=False)
            p = run_cli(*args, *extra, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stderr[-2000:]
        (point,) = [r.parent for r in sweep.rglob("result.json")]
        ids.append(_run_ids(point))
    fp = RunRecord.read(point / "result.json").fingerprint
    assert len(ids[0]) == 1 and ids[1] == ids[0]  # the re-launch skipped the done point: no new run
    assert len(ids[2]) == 2 and ids[2][0] == ids[0][0] and ids[2][1] != ids[0][0], ids
    assert ids[0][0].startswith(fp[:12]) and ids[0][0].endswith("-1") and ids[2][1].endswith("-2")


@pytest.mark.slow  # a 12-run sweep and its report
def test_every_dashboard_section_has_its_charts_on_a_sweep_with_scratch_and_scores(tmp_path):
    """fine-tune and scratch x n 2, 4, 8 x seeds 0, 1 with a LogME score: every section holds its chart (gain,
    D_T(n) and the score need scratch and scores), each reading only logged keys."""
    pytest.importorskip("wandb_workspaces", reason="the `wandb` extra (wandb-workspaces) is not installed")
    from transferlab.analysis.wandb_workspace import SPEC_FILE

    sweep, out = tmp_path / "sweep", tmp_path / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        p = run_cli("-m", "pretrain.max_epochs=2", "train.max_epochs=3", "trainer.enable_progress_bar=false",
                    "target.n_per_class=2,4,8", "seed=0,1", "transfer=finetune,scratch", "transfer.scores=[logme]",
                    "logger=wandb", "name=wb_dash", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                    env={"OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stderr[-2000:]
        p = run_cli(str(sweep), "--out", str(out), "--wandb-workspace", "--n-boot", "50", module="transferlab.report",
                    cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    spec = json.loads((out / SPEC_FILE).read_text())
    kinds = {s["name"]: [pn["kind"] for pn in s["panels"]] for s in spec["sections"]}
    assert kinds["Gain over scratch"][0] == "line_table"
    assert kinds["Effective data transferred D_T(n)"][0] == "line_table"
    assert kinds["Transferability vs accuracy"][0] == "scatter_table"
    assert "text" not in {k for ks in kinds.values() for k in ks}
    finetune = next(r.parent for r in sweep.rglob("result.json") if "finetune" in r.parent.name)
    assert_keys_logged(spec, only_run(finetune), only_run(out))


def test_dashboard_options_are_checked_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """--push without --wandb-workspace, and --wandb-workspace without the `wandb` extra: one line each, exit 2,
    before the report is built (nothing in --out)."""
    from transferlab.report import main

    out = tmp_path / "out"
    assert main([str(tmp_path), "--out", str(out), "--push"]) == 2
    assert "--push" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # as if not installed: its import fails
    assert main([str(tmp_path), "--out", str(out), "--wandb-workspace"]) == 2
    err = capsys.readouterr().err
    assert "--wandb-workspace" in err and "transferlab[wandb]" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
