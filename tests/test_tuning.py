"""Tuning inside a point (issue 26, item 1; run/tuning.py): `tune.train.lr=[...]` trains one candidate per value,
selects one by the point's own train.select and tests only that one. A tuned point must equal its candidates run as
separate points and picked by hand; a killed point reuses only candidates that verify; bad grids are one line,
exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli_problems, compose_cfg, run_cli
from transferlab.config import plain
from transferlab.errors import ConfigError
from transferlab.run import identity
from transferlab.run.experiment import run
from transferlab.run.record import SCHEMA
from transferlab.run.tuning import CANDIDATE_FILE, Candidate, choose

QUIET = ("trainer.enable_progress_bar=false", "transfer.scores=[]", "logger=none")
# Five classes x 5 examples; three rates far enough apart that their fits differ.
POINT = ("target.n_per_class=5", "pretrain.max_epochs=2", *QUIET)
LRS = (1e-4, 3e-3, 3e-2)
GRID = "tune.train.lr=[" + ",".join(str(x) for x in LRS) + "]"


def _by_hand(separate: dict[float, dict]) -> float:
    """The rate a person picks from separate runs: highest val/acc of the tested model; ties: lower val/loss of
    that model, then the earlier rate in the grid."""
    def key(lr):
        m, rec = separate[lr]["metrics"], separate[lr]
        at = m["val/epoch_history"].index(rec["selected_epoch"])
        return (-m["val/acc"], m["val/loss_history"][at], LRS.index(lr))
    return min(separate, key=key)


def _count_tests(monkeypatch) -> list[str]:
    """The checkpoints tested on the target's test split from now on (a source pretraining's test left out)."""
    import lightning as L

    calls: list[str] = []
    original = L.Trainer.test

    def counted(self, *args, **kwargs):
        ckpt = str(kwargs.get("ckpt_path"))
        if "source" not in Path(ckpt).parts:
            calls.append(ckpt)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "test", counted)
    return calls


@pytest.mark.parametrize("select, stack", [("best_val", "false"), ("last", "false"), ("best_val", "true")])
def test_a_tuned_point_equals_its_candidates_run_as_separate_points(make_cfg, monkeypatch, select, stack):
    """One after the other (tune.stack=false) each candidate is its separate point bit for bit but for the order
    of float sums in testing; stacked (the default), within float tolerance (training/stacked.py: vmap changes the
    order of float operations; the 3e-2 candidate's loss of about 15 amplifies it)."""
    tests = _count_tests(monkeypatch)
    tuned = run(make_cfg(GRID, f"train.select={select}", f"tune.stack={stack}", *POINT, run="tuned"))
    t = tuned["tuning"]
    assert t["fitted"] == ("3 candidates in one stacked fit" if stack == "true" else
                           "one after the other (tune.stack=false)")
    tight = stack == "false"

    def same(x, tol=1e-6):
        return pytest.approx(x, abs=tol) if tight else pytest.approx(x, rel=1e-4, abs=1e-5)
    # the selected candidate is tested first; the others' kept models only after it, once each (hindsight)
    others = [str(Path(c["dir"]) / "checkpoints" / "best.ckpt") for c in t["candidates"]
              if c["index"] != t["chosen_index"]]
    assert tests == [tuned["target_ckpt"], *others]
    separate = {lr: run(make_cfg(f"train.lr={lr}", f"train.select={select}", *POINT, run=f"lr{lr}")) for lr in LRS}
    # same fingerprints of the candidates: each candidate is the separate point with its value
    assert [c["fingerprint"] for c in t["candidates"]] == [separate[lr]["fingerprint"] for lr in LRS]
    assert [c["values"] for c in t["candidates"]] == [{"train.lr": lr} for lr in LRS]
    for c, lr in zip(t["candidates"], LRS):  # and it trained as that point did
        assert c["score"] == same(separate[lr]["metrics"]["val/acc"], 1e-7)
        assert c["selected_epoch"] == separate[lr]["selected_epoch"]
        stored = json.loads((Path(c["dir"]) / CANDIDATE_FILE).read_text())
        assert stored["history"]["val/acc"] == same(separate[lr]["metrics"]["val/acc_history"], 1e-7)
        assert stored["history"]["val/loss"] == same(separate[lr]["metrics"]["val/loss_history"])
        # its hindsight numbers are that point's own test numbers (never in candidate.json: not known at training)
        for key in ("test/acc", "test/loss", "test/balanced_acc", "test/macro_f1"):
            assert c["hindsight_test"][key] == same(separate[lr]["metrics"][key]), key
        assert "hindsight_test" not in stored
    # same choice, same test numbers
    pick = _by_hand(separate)
    assert t["chosen"] == {"train.lr": pick} and t["candidates"][t["chosen_index"]]["values"] == {"train.lr": pick}
    for key in ("test/acc", "test/loss", "test/balanced_acc", "test/macro_f1", "test/pred_counts"):
        assert tuned["metrics"][key] == same(separate[pick]["metrics"][key]), key
    assert tuned["selected_epoch"] == separate[pick]["selected_epoch"]
    assert len({separate[lr]["metrics"]["test/acc"] for lr in LRS}) > 1  # the choice mattered
    # the point's own identity: the grid and the protocol, never a candidate's
    assert tuned["fingerprint"] not in {s["fingerprint"] for s in separate.values()}
    assert tuned["config"]["tune"]["train"]["lr"] == list(LRS) and t["protocol"]["select"] == select
    assert Path(tuned["target_ckpt"]).parent.parent.name == t["candidates"][t["chosen_index"]]["fingerprint"]
    # the candidate choice read the val split, once, whatever train.select is
    assert tuned["labels_used"] == tuned["n_train"] + tuned["n_val"] == 25 + tuned["n_val"]
    assert tuned["schema"] == SCHEMA


def test_val_in_budget_judges_every_candidate_on_one_split_carved_out_of_the_n(make_cfg):
    rec = run(make_cfg("tune.train.lr=[1e-3,3e-2]", "train.select=val_in_budget", *POINT))
    assert (rec["n_train"], rec["n_val"], rec["labels_used"]) == (20, 5, 25)  # n = 25: every label counted once
    scores = [c["score"] for c in rec["tuning"]["candidates"]]
    assert all(round(s * 5) == pytest.approx(s * 5, abs=1e-6) for s in scores)  # val/acc on those 5 examples
    assert "carved out of the n" in rec["tuning"]["score"]


def test_a_killed_point_reuses_only_candidates_that_verify(make_cfg, monkeypatch):
    from transferlab.run import experiment

    cfg = make_cfg("tune.train.lr=[1e-3,3e-2]", *POINT)
    first = run(cfg)
    out = Path(str(cfg.paths.output_dir))
    fits: list[int] = []
    original = experiment.fit_and_test  # every target fit (a candidate's) goes through it
    monkeypatch.setattr(experiment, "fit_and_test", lambda *a, **k: (fits.append(1), original(*a, **k))[1])
    (out / "result.json").unlink()  # killed after the candidates, before the test
    again = run(cfg)
    assert fits == [] and [c["reused"] for c in again["tuning"]["candidates"]] == [True, True]
    assert again["metrics"]["test/acc"] == first["metrics"]["test/acc"]
    assert again["tuning"]["chosen"] == first["tuning"]["chosen"]
    # a damaged best.ckpt is never reused: that candidate trains again (from zero), the other is kept
    damaged = Path(first["tuning"]["candidates"][1]["dir"]) / "checkpoints" / "best.ckpt"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    (out / "result.json").unlink()
    third = run(cfg)
    assert [c["reused"] for c in third["tuning"]["candidates"]] == [True, False] and len(fits) == 1
    assert third["metrics"]["test/acc"] == pytest.approx(first["metrics"]["test/acc"], abs=1e-6)
    # a candidate.json of another fingerprint in its folder is not taken either (even sealed)
    from transferlab.store import verified

    cand = Path(first["tuning"]["candidates"][0]["dir"]) / CANDIDATE_FILE
    other = json.dumps({**json.loads(cand.read_text()), "fingerprint": "0" * 16})
    verified.write_with(cand, lambda tmp: tmp.write_text(other))
    (out / "result.json").unlink()
    assert [c["reused"] for c in run(cfg)["tuning"]["candidates"]] == [False, True]
    # nor one whose score was edited by hand: its seal fails, so the choice is never steered by a typed number
    cand = Path(first["tuning"]["candidates"][1]["dir"]) / CANDIDATE_FILE
    cand.write_text(json.dumps({**json.loads(cand.read_text()), "score": 1.0}))
    (out / "result.json").unlink()
    assert [c["reused"] for c in run(cfg)["tuning"]["candidates"]] == [True, False]


def test_candidates_an_earlier_attempt_can_resume_train_alone_not_stacked(make_cfg):
    """A stacked fit writes no last.ckpt and starts from epoch 0, so candidates whose earlier attempt left one (here:
    an attempt one after the other, killed after its fits) resume it alone; the rest would stack."""
    cfg = make_cfg("tune.train.lr=[1e-3,3e-3]", "tune.stack=false", *POINT)
    first = run(cfg)
    out = Path(str(cfg.paths.output_dir))
    for c in first["tuning"]["candidates"]:  # killed before any candidate.json was sealed
        (Path(c["dir"]) / CANDIDATE_FILE).unlink()
        assert (Path(c["dir"]) / "checkpoints" / "last.ckpt").exists()
    (out / "result.json").unlink()
    again = run(make_cfg("tune.train.lr=[1e-3,3e-3]", *POINT))
    assert again["tuning"]["fitted"] == "one after the other: resuming the earlier attempt's fits"
    assert again["fingerprint"] == first["fingerprint"]  # tune.stack is not identity
    assert again["metrics"]["test/acc"] == pytest.approx(first["metrics"]["test/acc"], abs=1e-6)


def test_a_diverging_candidate_loses_and_the_point_goes_on(make_cfg):
    rec = run(make_cfg("tune.train.lr=[1e-3,1e12]", "train/optimizer=sgd", *POINT))
    ok, lost = rec["tuning"]["candidates"]
    assert rec["status"] == "ok" and rec["tuning"]["chosen"] == {"train.lr": 1e-3}
    assert lost["status"] == "failed" and lost["score"] is None and "NonFiniteLossError" in lost["error"]
    assert ok["status"] == "ok" and rec["metrics"]["val/acc"] == pytest.approx(ok["score"])
    assert lost["hindsight_test"] is None and ok["hindsight_test"]["test/acc"] == rec["metrics"]["test/acc"]


def test_a_hindsight_test_that_raises_never_fails_the_point(make_cfg, monkeypatch):
    """Hindsight numbers do not shape the point's result: a candidate whose after-the-choice test raises gets its
    error in place of numbers, and the point is ok with the chosen candidate's test."""
    from transferlab.run import hindsight

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(hindsight, "test_one", broken)
    rec = run(make_cfg("tune.train.lr=[1e-3,3e-3]", *POINT))
    chosen = rec["tuning"]["chosen_index"]
    assert rec["status"] == "ok" and rec["metrics"]["test/acc"] is not None
    for c in rec["tuning"]["candidates"]:
        assert c["hindsight_test"] == ({"error": "RuntimeError: out of memory"} if c["index"] != chosen
                                       else {**c["hindsight_test"], "test/acc": rec["metrics"]["test/acc"]})


def test_a_point_whose_every_candidate_diverges_writes_a_failed_record_with_them(make_cfg):
    from transferlab.run.record import RunRecord
    from transferlab.run.tuning import NoCandidateLeft

    cfg = make_cfg("tune.train.lr=[1e11,1e12]", "train/optimizer=sgd", *POINT)
    with pytest.raises(NoCandidateLeft):
        run(cfg)
    rec = RunRecord.read(Path(str(cfg.paths.output_dir)) / "result.json")
    assert rec.status == "failed" and rec.error.startswith("NoCandidateLeft")
    assert [c["status"] for c in rec.tuning["candidates"]] == ["failed", "failed"]
    assert rec.environment and rec.environment.get("torch")  # what made it, as in every record


def test_a_sweep_point_retrained_from_zero_loses_its_candidates_too(tmp_path):
    """`resume=false`, or another fingerprint's work in the folder: the candidates go with the other checkpoints."""
    from transferlab.sweep.points import Point
    from transferlab.sweep.state import prepare_point_dir

    ckpt = tmp_path / "p" / "candidates" / "abc" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    point = Point(overrides=["tune.train.lr=[1e-3]"], name="p", hash="h1", dir=str(tmp_path / "p"))
    prepare_point_dir(tmp_path / "p", point)  # no marker: nothing proves whose files these are
    assert not (tmp_path / "p" / "candidates").exists()
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    prepare_point_dir(tmp_path / "p", point)  # its own marker now: kept for the resume
    assert ckpt.exists()
    prepare_point_dir(tmp_path / "p", point, fresh=True)
    assert not (tmp_path / "p" / "candidates").exists()


def test_the_choice_rule_and_lost_candidates():
    def c(i, score, loss, status="ok"):
        return Candidate(index=i, values={"train.lr": i}, fingerprint=str(i), dir=".", status=status, score=score,
                         val_loss=loss)

    assert choose([c(0, 0.5, 1.0), c(1, 0.7, 2.0), c(2, 0.7, 1.5)]).index == 2  # tie on val/acc: lower val/loss
    assert choose([c(0, 0.7, 1.0), c(1, 0.7, 1.0)]).index == 0  # full tie: the earlier candidate
    assert choose([c(0, None, None, "failed"), c(1, 0.2, 3.0)]).index == 1  # a diverged candidate lost
    assert choose([c(0, None, None, "failed")]) is None


def test_the_setup_block_says_what_was_tuned_and_counts_the_labels_the_choice_read():
    from transferlab.analysis.provenance import _labels_used, _protocol, _training
    from transferlab.run.record import RunRecord

    cfg = {"train": {"scheduler": "none", "lr": 0.001}}
    tuning = {"grid": {"train.lr": [1e-4, 1e-2]}, "rule": "highest score", "chosen": {"train.lr": 0.01}}
    other = {**tuning, "chosen": {"train.lr": 1e-4}}
    recs = [RunRecord(status="ok", select="last", n_val=135, config=cfg, tuning=t) for t in (tuning, other)]
    assert _labels_used(recs) == "last: the n examples plus the 135-example validation split, at every n"
    rows = dict(_protocol(recs))
    assert rows["tuning inside each point"].startswith("train.lr in [0.0001,0.01]: each point trained every candidate")
    assert "train.lr=0.0001 (1 runs), train.lr=0.01 (1 runs)" in rows["tuning inside each point"]
    assert "lr 0.0001, 0.01," in dict(_training(recs))["target training"]  # the chosen rates, not the unread 0.001


def test_identity_untuned_unchanged_tuned_covers_grid_and_protocol(tmp_path):
    def fp(*o):
        return identity.fingerprint(compose_cfg(list(o), tmp_path / "r"), ins={})

    base = compose_cfg([], tmp_path / "r")
    without = plain(base)
    without.pop("tune")
    assert identity.fingerprint(without, ins={}) == fp()  # a run as before tuning existed
    tuned = fp("tune.train.lr=[1e-3,1e-2]")
    assert tuned != fp()
    assert fp("tune.train.lr=[1e-3,1e-2]", "train.lr=0.5") == tuned  # the tuned key's own value is never read
    assert fp("tune.train.lr=[1e-3,3e-2]") != tuned  # the grid
    assert fp("tune.train.lr=[1e-2,1e-3]") != tuned  # its order (the tie rule's "earlier candidate")
    assert fp("tune.train.lr=[1e-3,1e-2]", "train.select=last") != tuned  # the protocol
    assert fp("tune.train.lr=[1e-3,1e-2]", "tune.train.weight_decay=[0,1e-4]") != tuned


@pytest.mark.parametrize("overrides,line", [
    (["tune.train.lr=[]"], "tune.train.lr=[]: a non-empty list"),
    (["tune.train.lr=[1e-3,1e-3]"], "tune.train.lr=[0.001, 0.001]: distinct values"),
    (["tune.train.lr=[1e-3,-1]"], "tune.train.lr=-1.0: a finite number > 0"),
    (["tune.train.max_epochs=[2,5]", "train.select=fixed_epoch", "train.select_epoch=4"],
     "train.select_epoch=4: at most train.max_epochs=2"),
    (["+tune.train.foo=[1]"], "tune.train='foo': a train key to tune"),
    (["+tune.pretrain={lr: [1]}"], "tune='pretrain': only train.* keys are tuned"),
])
def test_bad_grids_are_config_errors_before_anything_is_written(make_cfg, tmp_path, overrides, line):
    with pytest.raises(ConfigError) as e:
        run(make_cfg(*overrides, *POINT))
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(line), e.value.problems
    assert not list((tmp_path / "run").rglob("*.json")) and not (tmp_path / "run" / "candidates").exists()


def test_a_tuned_point_over_several_devices_is_refused(make_cfg):
    with pytest.raises(ConfigError) as e:
        run(make_cfg("tune.train.lr=[1e-3,1e-2]", "trainer=ddp", "trainer.devices=2", *POINT))
    assert any(p.key == "tune" and "trainer.devices > 1" in p.allowed for p in e.value.items), e.value.problems


@pytest.mark.parametrize("override,line", [
    ("tune.train.lrr=[1e-3]", "tune.train='lrr': a train key to tune, one of ['max_epochs', 'lr'"),
    ("tune.train.select=[last]", "tune.train='select': not tunable: the selection protocol"),
    ("tune.pretrain.lr=[1e-3]", "tune='pretrain': only train.* keys are tuned"),
    ("tune.train.lr=0.1", "tune.train.lr=0.1: a list of the values to try"),
])
def test_unknown_or_non_list_tune_keys_are_refused_while_composing(tmp_path, override, line):
    with pytest.raises(ConfigError) as e:
        compose_cfg([override], tmp_path / "run")
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(line), e.value.problems


def test_the_cli_says_one_line_exits_2_and_writes_nothing(tmp_path):
    for args in (["tune.train.lr=[]"], ["tune.train.lrr=[1e-3]"]):
        p = run_cli(*args, "logger=none", cwd=tmp_path)
        assert p.returncode == 2, p.stderr[-2000:]
        assert len(cli_problems(p.stderr)) == 1, p.stderr[-2000:]
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob(CANDIDATE_FILE))


def test_a_sweep_with_a_bad_value_inside_a_grid_or_val_in_budget_at_1_refuses_before_launching_any(tmp_path):
    """The sweeper's up-front check (run/values.py) covers a tuned point's candidates, each problem named by the
    tune.* key that gave it, and val_in_budget at n = 1: one line each, exit 2, no point folder, no result."""
    sweep = tmp_path / "sweep"
    p = run_cli("-m", "target.n_per_class=2,4", "tune.train.lr=[1e-3,-1.0]", "logger=none",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert cli_problems(p.stderr) == ["tune.train.lr=-1.0: a finite number > 0"], p.stderr[-2000:]
    p = run_cli("-m", "target.n_per_class=1,4", "train.select=val_in_budget", "logger=none",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert cli_problems(p.stderr) == ["target.n_per_class=1: at least 2 per class with train.select=val_in_budget "
                                      "(one example of each class to train, one to select on); or another "
                                      "train.select"], p.stderr[-2000:]
    assert not sweep.exists() or not [d for d in sweep.iterdir() if d.is_dir() and d.name != ".hydra"]
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob(CANDIDATE_FILE))


def test_a_tuned_sweep_reports_the_chosen_values(tmp_path):
    """Through the real CLI and sweeper: two seeds of a tuned point, grouped by vectorize=seeds (tuned members run
    one after the other); results.csv says what each chose, the setup block that the points were tuned."""
    import pandas as pd

    from transferlab.report import main as report

    sweep = tmp_path / "sweep"
    p = run_cli("-m", "pretrain.max_epochs=1", "train.max_epochs=3", "target.n_per_class=5", "seed=0,1",
                "tune.train.lr=[1e-3,3e-2]", *QUIET, "hydra.sweeper.vectorize=seeds", f"hydra.sweep.dir={sweep}",
                cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert report([str(sweep), "--out", str(tmp_path / "rep"), "--n-boot", "20"]) == 0
    rows = pd.read_csv(tmp_path / "rep" / "results.csv")
    assert len(rows) == 2 and rows["setting"].nunique() == 1 and rows["arm_key"].nunique() == 1  # seeds of one arm
    records = {int(r["seed"]): json.loads((sweep / r["run_dir"] / "result.json").read_text())
               for _, r in rows.iterrows()}
    for _, r in rows.iterrows():
        assert r["tuned"] == f"train.lr={records[int(r['seed'])]['tuning']['chosen']['train.lr']}"
    assert "tuning inside each point" in (tmp_path / "rep" / "report.html").read_text()
    # a second launch skips both points: their results stand under the tuned fingerprint
    again = run_cli("-m", "pretrain.max_epochs=1", "train.max_epochs=3", "target.n_per_class=5", "seed=0,1",
                    "tune.train.lr=[1e-3,3e-2]", *QUIET, "hydra.sweeper.vectorize=seeds", f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and "2 skipped" in again.stdout + again.stderr, again.stderr[-2000:]
