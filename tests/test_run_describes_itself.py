"""A run that says what it is (issue 25, item 2): result.json records its arm label and name, `is_baseline`,
`copies_nothing` and its seed-group key, as its plan and identity decided them at run time (one function each,
transfer/arm.py); the sweeper forms vectorised seed groups from each point's composed config by that key; the report
reads the fields and derives none of them; records of older schema get them from one legacy function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CONF, run_cli
from transferlab.analysis import collect
from transferlab.config import plain
from transferlab.run import identity
from transferlab.run.experiment import run
from transferlab.run.record import FACTS_SINCE, RunRecord, UnsealedRecord, legacy_run_facts
from transferlab.run.setup import prepare
from transferlab.sweep import groups
from transferlab.sweep.points import Point
from transferlab.transfer import arm

TINY = ("pretrain.max_epochs=1", "train.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none",
        "target.n_per_class=2", "pretrain.seed=0", "transfer.scores=[]")
FACTS = ("arm", "arm_name", "is_baseline", "copies_nothing", "seed_group")


# ---------------------------------------------------------------- one rule per fact
@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "transfer").glob("*.yaml")))
def test_a_preset_copies_nothing_exactly_when_it_is_named_a_baseline(make_cfg, preset):
    """The presets the sweeper treats as baselines (by name, before composing) are those whose composed config
    copies nothing; the baseline proper is scratch alone (scratch_long is a control arm)."""
    cfg = plain(make_cfg(f"transfer={preset}"))
    assert identity.copies_nothing(cfg) == (preset in arm.BASELINE_PRESETS)
    assert identity.is_baseline(cfg) == (preset == "scratch")


def test_the_plan_and_the_identity_ask_the_same_rule(make_cfg):
    for preset in ("scratch", "scratch_long", "finetune", "linear_probe"):
        cfg = make_cfg(f"transfer={preset}")
        plan = prepare(cfg).plan
        assert plan.copies_nothing == identity.copies_nothing(plain(cfg)) == arm.copies_nothing(plan.cut)
        assert plan.is_baseline == identity.is_baseline(plain(cfg))


# ---------------------------------------------------------------- the record says what the plan decided
@pytest.mark.parametrize("overrides", [("transfer=finetune", "transfer.cut=2", "transfer.freeze=1"),
                                       ("transfer=scratch",), ("transfer=linear_probe",)],
                         ids=["cut2", "scratch", "linear_probe"])
def test_result_json_records_what_the_plan_and_identity_decided(make_cfg, overrides):
    cfg = make_cfg(*TINY, *overrides)
    plan = prepare(cfg).plan
    run(cfg)
    stored = json.loads((Path(cfg.paths.output_dir) / "result.json").read_text())
    assert stored["status"] == "ok"
    assert stored["arm"] == plan.arm and stored["arm_name"] == plan.name
    assert stored["is_baseline"] is plan.is_baseline and stored["copies_nothing"] is plan.copies_nothing
    assert stored["seed_group"] == identity.seed_group_key(cfg, identity.inputs(cfg))
    assert stored["seed_group"] == identity.group_key(stored["config"], stored["inputs"], identity.REPLICATES)
    # the same config at another seed is another run of the same seed group
    other = make_cfg(*TINY, *overrides, "seed=7", run="other")
    assert identity.fingerprint(other) != stored["fingerprint"]
    assert identity.seed_group_key(other, identity.inputs(other)) == stored["seed_group"]
    if "transfer.cut=2" in overrides:
        assert stored["arm"] == "freeze=1 cut=2" and stored["copies_nothing"] is False
    if "transfer=scratch" in overrides:
        assert (stored["arm"], stored["is_baseline"], stored["copies_nothing"]) == ("scratch", True, True)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, shared_cache) -> Path:
    """A sweep folder with one finetune and one scratch run (real runs, tiny budgets)."""
    from conftest import compose_cfg

    root = tmp_path_factory.mktemp("described")
    for name, preset in (("ft", "transfer=finetune"), ("sc", "transfer=scratch")):
        run(compose_cfg([*TINY, preset], root / name, shared_cache))
    return root


def _rewrite(path: Path, **fields) -> None:
    """Change fields of a record and write it as a run would (sealed again)."""
    rec = RunRecord.read(path)
    for k, v in fields.items():
        setattr(rec, k, v)
    rec.write(path.parent)


def test_the_report_reads_arm_labels_and_the_baseline_from_the_record(two_runs, tmp_path):
    import shutil

    root = tmp_path / "sweep"
    shutil.copytree(two_runs, root)
    df = collect.collect(root).set_index("run_dir")
    assert (df.loc["ft", "arm"], df.loc["sc", "arm"]) == ("freeze=0", "scratch")
    assert df.loc["sc", "is_scratch"] and not df.loc["ft", "is_scratch"]
    assert df.loc["ft", "arm_key"] == RunRecord.read(root / "ft" / "result.json").seed_group
    # What a record says is what the report shows: a label, a name and the baseline flag it did not derive.
    _rewrite(root / "ft" / "result.json", arm="X-arm", arm_name="X name")
    df = collect.collect(root).set_index("run_dir")
    assert df.loc["ft", "arm"] == "X-arm" and df.loc["ft", "arm_name"] == "X name"
    assert df.loc["ft", "baseline_key"] == df.loc["sc", "line_key"]  # paired with its scratch baseline
    _rewrite(root / "sc" / "result.json", is_baseline=False)  # cut=0 all the same: the record decides
    df = collect.collect(root).set_index("run_dir")
    assert not df.loc["sc", "is_scratch"] and df.loc["sc", "copies_nothing"]
    assert df.loc["ft", "baseline_key"] is None  # no baseline left to pair with


def test_a_hand_edited_fact_fails_the_seal_and_is_never_reported(two_runs, tmp_path):
    import shutil

    root = tmp_path / "sweep"
    shutil.copytree(two_runs, root)
    path = root / "sc" / "result.json"
    stored = json.loads(path.read_text())
    stored["is_baseline"] = False  # edited by hand, not resealed
    path.write_text(json.dumps(stored, indent=2))
    with pytest.raises(UnsealedRecord):
        RunRecord.read(path)
    row = collect.collect(root).set_index("run_dir").loc["sc"]
    assert row["status"] == "failed" and "checksum" in row["error"] and row["arm"] is None


# ---------------------------------------------------------------- records of older schema
def test_a_record_of_older_schema_gets_the_facts_from_the_legacy_function(two_runs):
    """Decision: an older record is not stale (its fingerprint, which judges a point done, did not change); its
    facts are derived once, in `legacy_run_facts`, from what it recorded, and equal what a run records now (the
    label leaves out `cut=k`, which needs the backbone's block count: these runs copy every block)."""
    for name in ("ft", "sc"):
        now = json.loads((two_runs / name / "result.json").read_text())
        old = {k: v for k, v in now.items() if k not in FACTS} | {"schema": FACTS_SINCE - 1}
        rec = RunRecord.from_dict(old)
        assert {k: getattr(rec, k) for k in FACTS} == {k: now[k] for k in FACTS} == legacy_run_facts(old)
    # a schema-0 failed record with neither cut nor config: judged by its preset's name, as reports did
    assert legacy_run_facts({"transfer": "scratch", "status": "failed"}) == {
        "arm": "scratch", "arm_name": "scratch", "is_baseline": True, "copies_nothing": True, "seed_group": None}
    # a current record is taken as it says, never re-derived
    now = json.loads((two_runs / "ft" / "result.json").read_text())
    assert RunRecord.from_dict({**now, "arm": "as recorded"}).arm == "as recorded"


def test_a_sweep_of_older_records_is_done_and_reports_as_a_current_one(two_runs, tmp_path):
    """Schema-7 result.json files (sealed, without the facts) on disk: each point is done for the sweeper (never run
    again), and the report labels and pairs them as it does the current records."""
    import shutil

    from transferlab.store import verified
    from transferlab.sweep.ledger import folder_state

    root = tmp_path / "old"
    shutil.copytree(two_runs, root)
    for name in ("ft", "sc"):
        path = root / name / "result.json"
        old = {k: v for k, v in json.loads(path.read_text()).items() if k not in FACTS} | {"schema": FACTS_SINCE - 1}
        verified.write_with(path, lambda tmp, old=old: tmp.write_text(json.dumps(old, indent=2)))
        assert folder_state(root / name, old["fingerprint"]) == ("done", None)
    cols = ["arm", "arm_name", "is_scratch", "copies_nothing", "arm_key", "baseline_key"]
    old_df = collect.collect(root).set_index("run_dir")[cols]
    new_df = collect.collect(two_runs).set_index("run_dir")[cols]
    assert old_df.equals(new_df), (old_df, new_df)


# ---------------------------------------------------------------- seed groups from composed configs
def test_groups_are_formed_by_the_seed_group_key_not_by_override_text():
    def pt(name, key, *overrides):
        return Point(overrides=list(overrides), name=name, seed_group=key, replicates={"seed": 0})

    pts = [pt("a", "K", "seed=0", "data_seed=0"), pt("b", "K", "seed=1"), pt("c", "L", "seed=2"),
           pt("d", "K", "seed=3", "logger=csv"), pt("e", None, "seed=4"), pt("f", None, "seed=5")]
    units = groups.group(pts, max_size=16)
    # a and b: one config at two seeds however spelled; d asks for another (neutral) logger: apart; points the
    # sweeper did not compose are units of one
    assert sorted(sorted(p.name for p in u) for u in units) == [["a", "b"], ["c"], ["d"], ["e"], ["f"]]


def test_a_mixed_grid_with_vectorize_seeds_is_one_group_and_every_point_is_ok(tmp_path, shared_cache):
    """One grid sets data_seed explicitly, its sibling leaves it to its default (`${seed}`): their composed
    configs differ only in the replicate keys, so they are one group; each member trains with its own values,
    matches its fingerprint, and `transferlab-status` lists both done (none stale)."""
    sweep = tmp_path / "mixed"
    args = ["-m", "hydra.sweeper.grids={explicit:{seed:0,data_seed:0},default:{seed:1}}",
            "hydra.sweeper.vectorize=seeds", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={shared_cache}", *TINY,
            "transfer.freeze=1"]
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 points in 1 jobs" in out.stderr + out.stdout
    spec = json.loads((sweep / "data_seed=0,seed=0" / "group.json").read_text())
    assert [m["replicates"] for m in spec["members"]] == [{"seed": 0, "data_seed": 0, "pretrain.seed": 0},
                                                          {"seed": 1, "data_seed": 1, "pretrain.seed": 0}]
    recs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert set(recs) == {"data_seed=0,seed=0", "seed=1"}
    assert all(r["status"] == "ok" and r["group"]["size"] == 2 for r in recs.values())
    assert recs["seed=1"]["data_seed"] == 1  # its own default, not the leader's explicit value
    assert len({r["seed_group"] for r in recs.values()}) == 1
    status = json.loads(run_cli(str(sweep), "--json", module="transferlab.status", cwd=tmp_path).stdout)
    assert status["totals"]["done"] == 2 and status["totals"]["stale"] == 0, status["totals"]


def test_an_old_record_whose_facts_cannot_be_derived_is_not_a_record():
    """A hand-edited old record the legacy derivation cannot read (a LoRA without its rank) is a ValueError, which
    every reader judges a failed record, never a crash of the sweeper or of transferlab-status."""
    with pytest.raises(ValueError, match="run facts cannot be derived"):
        RunRecord.from_dict({"schema": 4, "status": "ok", "cut": 2, "freeze": 0, "peft": {"method": "lora"}})
    assert RunRecord.from_dict({"schema": 4, "status": "ok", "cut": 2, "freeze": True}).arm == "trainable"
