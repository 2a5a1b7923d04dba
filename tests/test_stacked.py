"""Vectorised seed groups (`hydra.sweeper.vectorize=seeds`, sweep/group_job.py, training/stacked.py): each member of a
group gets its separate run's result — val curve, selection, test metrics, frozen bytes — within float tolerance
(CPU, fp32); a member that fails fails alone; a group the stacked model cannot hold runs its members one after the
other, bit for bit as alone; and a sweep's points keep their fingerprints, so either way of running skips the other's
finished points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import paired_results, quadrant_images, run_cli
from transferlab.run import identity
from transferlab.run.experiment import Experiment, run
from transferlab.sweep.group_job import GroupFailed, run_group
from transferlab.transfer.network import BACKBONE_PREFIX

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return quadrant_images(tmp_path_factory.mktemp("stacked") / "images.npz", n=160, size=16)


def _separate(make_cfg, keys, seeds=SEEDS) -> dict[int, dict]:
    return {s: run(make_cfg(*keys, f"seed={s}", run=f"alone{s}")) for s in seeds}


def _group(make_cfg, keys, seeds=SEEDS) -> Path:
    """Write the group file the sweeper would write for these seeds; return its path (in the leader's folder)."""
    members = []
    for s in seeds:
        cfg = make_cfg(*keys, f"seed={s}", run=f"member{s}")
        members.append({"name": f"seed={s}", "dir": str(cfg.paths.output_dir), "replicates": {"seed": s},
                        "fingerprint": identity.fingerprint(cfg)})
    leader = Path(members[0]["dir"])
    leader.mkdir(parents=True, exist_ok=True)
    path = leader / "group.json"
    path.write_text(json.dumps({"members": members}))
    return path


def _run_group(make_cfg, keys, seeds=SEEDS):
    path = _group(make_cfg, keys, seeds)
    return run_group(make_cfg(*keys, f"seed={seeds[0]}", f"group={path}", run=f"member{seeds[0]}"))


def _member(make_cfg, s: int) -> dict:
    return json.loads((Path(make_cfg(run=f"member{s}").paths.output_dir) / "result.json").read_text())


def _state(rec: dict) -> dict[str, torch.Tensor]:
    return torch.load(rec["target_ckpt"], map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_run(alone: dict, member: dict, *, exact: bool = False) -> None:
    a, m = alone["metrics"], member["metrics"]
    assert member["status"] == "ok" and member["fingerprint"] == alone["fingerprint"]
    assert member["train_indices"] == alone["train_indices"]  # its own nested subset
    assert member["selected_epoch"] == alone["selected_epoch"]
    assert m["epochs"] == a["epochs"] and m["steps"] == a["steps"]
    tol = 0.0 if exact else 1e-5
    for key in ("val/acc_history", "val/loss_history"):
        assert len(m[key]) == len(a[key]) > 0
        assert max(abs(x - y) for x, y in zip(m[key], a[key])) <= tol, key
    for key in ("test/acc", "test/loss", "test/balanced_acc", "test/macro_f1"):
        assert abs(m[key] - a[key]) <= tol, key
    assert m["test/pred_counts"] == a["test/pred_counts"]
    # the frozen blocks are the source's bytes in both; the trained ones agree within float tolerance
    sa, sm = _state(alone), _state(member)
    assert sa.keys() == sm.keys()
    for block in alone["frozen_blocks"]:
        keys = [k for k in sa if k.startswith(f"{BACKBONE_PREFIX}{block}.")]
        assert keys and all(torch.equal(sa[k], sm[k]) for k in keys), block
    for k in sa:
        if sa[k].is_floating_point():
            assert torch.allclose(sa[k], sm[k], atol=1e-4, rtol=1e-4), k


@pytest.mark.parametrize("backbone", ["small_cnn", "mlp", "resnet18", "small_cnn gradual"])
def test_each_member_equals_its_separate_run(make_cfg, images, backbone):
    """small_cnn: dropout (0.2) in the trained dense block and BatchNorm in trained conv blocks; mlp: dense only;
    resnet18: BatchNorm throughout, frozen stem (eval-mode statistics) and trained layers (batch statistics);
    gradual unfreezing: blocks join the stacked optimisation epoch by epoch, as in a single run."""
    keys = ["logger=none", "pretrain.seed=0", "transfer.freeze=1"]
    if backbone.endswith(" gradual"):
        backbone, keys = backbone.split()[0], ["logger=none", "pretrain.seed=0", "transfer=gradual"]
    if backbone == "resnet18":
        # A regime where training does not amplify float rounding: with batches of 8 and BatchNorm over 1x1 maps
        # at lr 0.01, one run alone at 1 vs 2 threads already ends with val losses 5.0 vs 7.1 (docs/sweeps.md).
        keys += ["source=npz", f"source.path={images}", "source.name=quad_src", "target=npz",
                 f"target.path={images}", "target.name=quad", "backbone=resnet18", "target.n_per_class=8",
                 "pretrain.max_epochs=1", "train.batch_size=32", "train/optimizer=sgd", "train.lr=0.001",
                 "train.max_epochs=3"]
    else:
        keys += [f"backbone={backbone}", "target.n_per_class=5", "train.batch_size=16", "train.max_epochs=6"]
    alone = _separate(make_cfg, keys)
    _run_group(make_cfg, keys)
    for s in SEEDS:
        member = _member(make_cfg, s)
        assert member["group"]["mode"] == "stacked" and member["group"]["size"] == 3, member["group"]
        _assert_same_run(alone[s], member)
    assert len({tuple(_member(make_cfg, s)["train_indices"]) for s in SEEDS}) == 3  # subsets differ by seed


def test_a_member_that_fails_fails_alone(make_cfg, monkeypatch):
    """Member seed=1 gets an infinite head weight: its loss is NaN at the first step; it records its failure with the
    message a single run gives, and the other two members are as if it had never been there."""
    keys = ["logger=none", "pretrain.seed=0", "transfer.freeze=1", "target.n_per_class=5", "train.max_epochs=4"]
    alone = _separate(make_cfg, keys, seeds=(0, 2))
    build = Experiment.build

    def poisoned(self):
        build(self)
        if int(self.cfg.seed) == 1:
            with torch.no_grad():
                next(self.net.head.parameters()).fill_(float("inf"))

    monkeypatch.setattr(Experiment, "build", poisoned)
    with pytest.raises(GroupFailed, match="1 of 3 members failed"):
        _run_group(make_cfg, keys)
    failed = _member(make_cfg, 1)
    assert failed["status"] == "failed" and failed["error"].startswith("NonFiniteLossError: train/loss is nan")
    for s in (0, 2):
        _assert_same_run(alone[s], _member(make_cfg, s))


@pytest.mark.parametrize("choice,why", [
    ("train/scheduler=plateau", "ReduceLROnPlateau follows each member's own val/acc"),
    ("train/optimizer=lamb", "timm.optim.lamb.Lamb is not known to be elementwise"),
])
def test_a_group_it_cannot_stack_runs_its_members_as_alone(make_cfg, choice, why):
    """The plateau schedule follows each member's own val/acc, and LAMB scales each tensor's update by its norm
    (stacked, the norm would be over all members): the group runs its members one after the other, says why, and
    each equals its separate run bit for bit (the same code, from the same random state)."""
    keys = ["logger=none", "pretrain.seed=0", "transfer.freeze=1", "target.n_per_class=5", "train.max_epochs=4",
            choice]
    alone = _separate(make_cfg, keys, seeds=(0, 1))
    _run_group(make_cfg, keys, seeds=(0, 1))
    for s in (0, 1):
        member = _member(make_cfg, s)
        assert member["group"]["mode"] == "sequential"
        assert why in member["group"]["reason"], member["group"]["reason"]
        _assert_same_run(alone[s], member, exact=True)


def test_a_member_config_that_misses_its_fingerprint_fails(make_cfg):
    """The job derives each member's config from its own; if that does not reproduce the fingerprint the sweeper
    computed for the point, the member fails instead of recording a result under another identity."""
    keys = ["logger=none", "pretrain.seed=0", "target.n_per_class=2", "train.max_epochs=1"]
    path = _group(make_cfg, keys, seeds=(0, 1))
    spec = json.loads(path.read_text())
    spec["members"][1]["fingerprint"] = "0" * 16
    path.write_text(json.dumps(spec))
    with pytest.raises(GroupFailed, match="1 of 2"):
        run_group(make_cfg(*keys, "seed=0", f"group={path}", run="member0"))
    assert _member(make_cfg, 0)["status"] == "ok"
    bad = _member(make_cfg, 1)
    assert bad["status"] == "failed" and "fingerprint" in bad["error"]


def test_sweep_vectorized_and_not_share_their_points(tmp_path, shared_cache):
    """One multirun with vectorize=seeds (two groups of two), then the same sweep without it: every point is done
    already (same fingerprints), and each point's numbers equal a non-vectorised sweep's."""
    common = ["target.n_per_class=2", "transfer.freeze=1,all", "seed=0,1", "pretrain.seed=0", "train.max_epochs=3",
              "pretrain.max_epochs=2", "logger=none", "trainer.enable_progress_bar=false",
              f"paths.cache_dir={shared_cache}"]
    out = run_cli("-m", "hydra.sweeper.vectorize=seeds", f"hydra.sweep.dir={tmp_path / 'vec'}", *common,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 points in 2 jobs" in out.stderr + out.stdout
    again = run_cli("-m", f"hydra.sweep.dir={tmp_path / 'vec'}", *common, cwd=tmp_path)
    assert again.returncode == 0 and "4 already done (skipped), 0 to run" in again.stderr + again.stdout
    plain = run_cli("-m", f"hydra.sweep.dir={tmp_path / 'one'}", *common, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    pairs = paired_results(tmp_path / "vec", tmp_path / "one")
    assert len(pairs) == 4
    for vec, one in pairs:
        assert vec["group"]["mode"] == "stacked" and one["group"] is None
        assert vec["fingerprint"] == one["fingerprint"]
        assert abs(vec["metrics"]["test/acc"] - one["metrics"]["test/acc"]) <= 1e-5


def test_unknown_vectorize_value_fails_before_anything_is_written(tmp_path):
    out = run_cli("-m", "hydra.sweeper.vectorize=members", f"hydra.sweep.dir={tmp_path / 'sw'}", "seed=0,1",
                  cwd=tmp_path)
    assert out.returncode != 0
    assert "hydra.sweeper.vectorize='members'" in out.stderr and "seeds" in out.stderr
    assert not (tmp_path / "sw").exists()


def test_a_group_key_that_names_no_group_file_is_a_config_error(tmp_path):
    out = run_cli(f"group={tmp_path / 'nothing.json'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "group=" in out.stderr and "hydra.sweeper.vectorize=seeds" in out.stderr
    assert not (tmp_path / "run" / "result.json").exists()


def test_a_group_run_again_never_redoes_a_finished_member(make_cfg):
    """A requeued group job (SLURM pre-emption, max_requeue) finds members already done under their fingerprint:
    it leaves their result.json as it is and trains only the rest."""
    keys = ["logger=none", "pretrain.seed=0", "target.n_per_class=2", "train.max_epochs=2"]
    path = _group(make_cfg, keys, seeds=(0, 1))
    job = make_cfg(*keys, "seed=0", f"group={path}", run="member0")
    run_group(job)
    done = Path(job.paths.output_dir) / "result.json"
    before = done.read_bytes()
    (Path(make_cfg(run="member1").paths.output_dir) / "result.json").unlink()
    run_group(job)
    assert done.read_bytes() == before
    assert _member(make_cfg, 1)["status"] == "ok"


def test_a_crossed_seed_data_seed_pretrain_seed_group_equals_its_separate_runs(make_cfg):
    """The crossed design of replicates (training seed x data draw, each seed its own source model): one stacked
    group of four members, each its separate run, with its own subset and its own source model."""
    keys = ["logger=none", "transfer.freeze=1", "target.n_per_class=5", "train.batch_size=16", "train.max_epochs=6",
            "train.val_every_steps=4"]  # 2 steps per epoch: a check every other epoch, as the default does on short ones
    combos = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (seed = pretrain.seed, data_seed)
    alone = {c: run(make_cfg(*keys, f"seed={c[0]}", f"data_seed={c[1]}", run=f"alone{c[0]}_{c[1]}"))
             for c in combos}
    members = []
    for s, d in combos:
        cfg = make_cfg(*keys, f"seed={s}", f"data_seed={d}", run=f"member{s}_{d}")
        members.append({"name": f"seed={s},data_seed={d}", "dir": str(cfg.paths.output_dir),
                        "replicates": {"seed": s, "data_seed": d}, "fingerprint": identity.fingerprint(cfg)})
    leader = Path(members[0]["dir"])
    leader.mkdir(parents=True, exist_ok=True)
    (leader / "group.json").write_text(json.dumps({"members": members}))
    run_group(make_cfg(*keys, "seed=0", "data_seed=0", f"group={leader / 'group.json'}", run="member0_0"))
    for (s, d), m in zip(combos, members):
        member = json.loads((Path(m["dir"]) / "result.json").read_text())
        assert member["group"]["mode"] == "stacked" and member["group"]["size"] == 4, member["group"]
        assert member["source_ckpt"] == alone[(s, d)]["source_ckpt"]  # its own pretrain seed's source model
        _assert_same_run(alone[(s, d)], member)
    assert alone[(0, 0)]["train_indices"] == alone[(1, 0)]["train_indices"] != alone[(0, 1)]["train_indices"]


def test_tuned_candidates_with_their_own_rate_and_decay_stack_and_each_equals_its_separate_run(make_cfg):
    """A tuned point's candidates differ in learning rate and weight decay, which the stacked model gives each
    member through its own optimizer groups (per-member leaves): four candidates in one stacked fit, each equal to
    the separate point with its values (curves, selection, kept weights, test), under gradual unfreezing with
    layer-wise rates (groups released epoch by epoch, each block at its own rate)."""
    from transferlab.run.tuning import CANDIDATE_FILE

    keys = ["logger=none", "pretrain.seed=0", "transfer=gradual", "target.n_per_class=5", "train.batch_size=16",
            "train.max_epochs=6", "train.lr_decay=0.5", "transfer.scores=[]"]
    grid = [(lr, wd) for lr in (1e-3, 3e-3) for wd in (0.0, 0.5)]
    tuned = run(make_cfg(*keys, "tune.train.lr=[1e-3,3e-3]", "tune.train.weight_decay=[0.0,0.5]", run="tuned"))
    t = tuned["tuning"]
    assert t["fitted"] == "4 candidates in one stacked fit"
    alone = {(lr, wd): run(make_cfg(*keys, f"train.lr={lr}", f"train.weight_decay={wd}", run=f"alone{lr}_{wd}"))
             for lr, wd in grid}
    for c, (lr, wd) in zip(t["candidates"], grid):
        assert c["values"] == {"train.lr": lr, "train.weight_decay": wd}
        a = alone[(lr, wd)]
        assert c["fingerprint"] == a["fingerprint"] and c["selected_epoch"] == a["selected_epoch"]
        stored = json.loads((Path(c["dir"]) / CANDIDATE_FILE).read_text())
        for key in ("val/acc", "val/loss"):
            assert max(abs(x - y) for x, y in zip(stored["history"][key], a["metrics"][f"{key}_history"])) <= 1e-5
        for key in ("test/acc", "test/loss"):
            assert abs(c["hindsight_test"][key] - a["metrics"][key]) <= 1e-5, key
        kept = torch.load(Path(c["dir"]) / "checkpoints" / "best.ckpt", map_location="cpu",
                          weights_only=True)["state_dict"]
        for k, v in _state(a).items():
            if v.is_floating_point():
                assert torch.allclose(kept[k], v, atol=1e-4, rtol=1e-4), k
    # each member really got its own rate and decay: the separate runs' curves differ by more than the tolerance
    loss = {g: alone[g]["metrics"]["val/loss_history"] for g in grid}
    assert max(abs(x - y) for x, y in zip(loss[(1e-3, 0.0)], loss[(1e-3, 0.5)])) > 1e-4
    assert max(abs(x - y) for x, y in zip(loss[(1e-3, 0.0)], loss[(3e-3, 0.0)])) > 1e-4


@pytest.mark.parametrize("key, values", [("batch_size", (32, 64)), ("val_spacing", ("linear", "log")),
                                         ("decay_norm_and_bias", ("false", "true"))])
def test_tuned_candidates_that_differ_in_more_than_their_optimizer_groups_run_one_after_the_other(make_cfg, key,
                                                                                                  values):
    """A grid over the batch size is more than optimizer groups, even where the batches come out the same (25
    examples: one batch of 25 either way); so is any other train key (val_spacing, unread without val_checks, still
    is one), and decay_norm_and_bias, which moves 1-D parameters between groups: the candidates run one after the
    other, the tuning block says why, and each equals its separate point bit for bit."""
    keys = ["logger=none", "pretrain.seed=0", "transfer.freeze=1", "target.n_per_class=5", "train.max_epochs=3",
            "transfer.scores=[]"]
    tuned = run(make_cfg(*keys, f"tune.train.{key}=[{','.join(map(str, values))}]", run="tuned"))
    assert tuned["tuning"]["fitted"] == "one after the other: a tuned key other than lr, weight_decay, lr_decay"
    for c, value in zip(tuned["tuning"]["candidates"], values):
        a = run(make_cfg(*keys, f"train.{key}={value}", run=f"alone{value}"))
        assert c["fingerprint"] == a["fingerprint"] and c["score"] == a["metrics"]["val/acc"]
        assert c["hindsight_test"]["test/loss"] == a["metrics"]["test/loss"]
