"""Optimizers and schedulers from the config (training/optim.py): `_target_` nodes completed by the framework, checked
before training, in the identity with every argument, stacked only when elementwise."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

from conftest import CONF, SMALL_CNN, cli_problems, group_file, optim, run_cli
from transferlab.backbones import build_backbone
from transferlab.config import config_error
from transferlab.run import identity
from transferlab.run.labels import reads_validation
from transferlab.training import optim as optim_nodes
from transferlab.training.module import TransferModule
from transferlab.transfer.network import TransferNet

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def composed():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda *o: compose("config", overrides=["paths.output_dir=/tmp/unused", "paths.data_dir=/tmp/nodata", *o])
    GlobalHydra.instance().clear()


def _options(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONF / "train" / kind).glob("*.yaml"))


def _module(**over) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule(TransferNet(build_backbone(SMALL_CNN, SHAPE), 3), 3, optim(**over))


# ---------------------------------------------------------------- the group files
def test_every_option_composes_checks_and_pretrain_shares_train_files(composed):
    assert _options("optimizer") == ["adam", "adamw", "lamb", "sgd"]
    assert _options("scheduler") == ["cosine", "none", "plateau"]
    cfg = composed()
    assert cfg.train.optimizer == {"_target_": "torch.optim.AdamW", "_partial_": True}  # the defaults list's choice
    assert optim_nodes.node(cfg.train.scheduler) is None and optim_nodes.node(cfg.pretrain.scheduler) is None
    for kind in ("optimizer", "scheduler"):
        for option in _options(kind):
            cfg = composed(f"train/{kind}={option}", f"pretrain/{kind}={option}")
            assert optim_nodes.check(cfg) == [], (kind, option)
            assert cfg.pretrain[kind] == cfg.train[kind]  # conf/pretrain/<kind>/*.yaml only name the train file


def test_the_framework_gives_groups_epochs_and_metric_and_the_node_the_rest():
    sched = group_file("scheduler", "plateau") | {"factor": 0.2, "patience": 5}
    out = _module(optimizer=group_file("optimizer", "sgd") | {"nesterov": True}, scheduler=sched,
                  max_epochs=7).configure_optimizers()
    opt, schedule = out["optimizer"], out["lr_scheduler"]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["head"]["lr"] == 0.02 and groups["head"]["weight_decay"] == 0.01  # train.lr, train.weight_decay
    assert groups["head.no_decay"]["weight_decay"] == 0.0  # 1-D parameters: no decay
    s = schedule["scheduler"]
    assert (s.factor, s.patience, s.mode) == (0.2, 5, "max") and schedule["monitor"] == "val/acc"
    cos = _module(scheduler=group_file("scheduler", "cosine"), max_epochs=7).configure_optimizers()
    assert cos["lr_scheduler"]["scheduler"].T_max == 7 and "monitor" not in cos["lr_scheduler"]
    assert type(_module().configure_optimizers()) is torch.optim.AdamW  # no schedule: the optimizer alone


def test_a_timm_optimizer_by_name_keeps_the_frameworks_groups():
    opt = _module(optimizer=group_file("optimizer", "lamb"), lr_decay=0.5).configure_optimizers()
    assert type(opt).__name__ == "Lamb"
    expected = [(g["name"], g["lr"], g["weight_decay"]) for g in _module(lr_decay=0.5).param_groups()]
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == expected


def test_reads_metric_and_labels_follow_the_scheduler_class():
    assert optim_nodes.reads_metric(group_file("scheduler", "plateau"))
    assert not optim_nodes.reads_metric(group_file("scheduler", "cosine")) and not optim_nodes.reads_metric(None)
    assert reads_validation("last", group_file("scheduler", "plateau")) and not reads_validation("last", None)
    assert reads_validation("last", "plateau") and not reads_validation("last", "none")  # records made before


# ---------------------------------------------------------------- identity
def test_built_in_nodes_reduce_to_the_fields_they_replaced(composed):
    """Today's default configs keep the fingerprints they had when these were names: the identity holds the old
    schema's fields for them (checked against the main branch's fingerprints when they changed: docs/cli.md)."""
    old = {(): ("adamw", 0.9, "none"), ("train/optimizer=sgd",): ("sgd", 0.9, "none"),
           ("train/optimizer=sgd", "train.optimizer.momentum=0.5"): ("sgd", 0.5, "none"),
           ("train/optimizer=adam",): ("adam", 0.9, "none"), ("train/scheduler=cosine",): ("adamw", 0.9, "cosine"),
           ("train/scheduler=plateau",): ("adamw", 0.9, "plateau")}
    for overrides, (name, momentum, scheduler) in old.items():
        c = identity.identity_config(composed(*overrides))
        assert (c["train"]["optimizer"], c["train"]["momentum"], c["train"]["scheduler"]) == (name, momentum, scheduler)
        assert (c["pretrain"]["optimizer"], c["pretrain"]["momentum"]) == ("adamw", 0.9)
        assert "scheduler" not in c["pretrain"]  # the old pretrain had none


@pytest.mark.parametrize("overrides", [
    ["train/optimizer=sgd", "train.optimizer.momentum=0.5"], ["train/optimizer=sgd", "+train.optimizer.nesterov=true"],
    ["+train.optimizer.betas=[0.9,0.95]"], ["train.optimizer._target_=torch.optim.RAdam"], ["train/optimizer=lamb"],
    ["train/optimizer=lamb", "train.optimizer.opt=lars"], ["train/scheduler=plateau", "train.scheduler.patience=3"],
    ["train/scheduler=plateau", "train.scheduler.factor=0.2"], ["train/scheduler=cosine", "+train.scheduler.T_max=5"],
    ["train/scheduler=cosine", "+train.scheduler.eta_min=0.0001"],
])
def test_every_argument_is_in_the_fingerprint(composed, overrides):
    base = composed()
    changed = composed(*overrides)
    assert identity.fingerprint(changed) != identity.fingerprint(base)
    assert identity.fingerprint(changed) != identity.fingerprint(composed("train/scheduler=plateau"))
    assert identity.source_fingerprint(changed) == identity.source_fingerprint(base)  # target training only


def test_the_pretraining_optimizer_and_schedule_shape_the_source_model(composed):
    base = identity.source_fingerprint(composed())
    keys = {identity.source_fingerprint(composed(*o)) for o in (
        ["pretrain/optimizer=sgd"], ["pretrain/optimizer=sgd", "pretrain.optimizer.momentum=0.8"],
        ["pretrain/scheduler=cosine"], ["pretrain/scheduler=plateau"])}
    assert len(keys) == 4 and base not in keys
    assert identity.source_fingerprint(composed("pretrain/scheduler=none")) == base


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides,key,says", [
    (["train.optimizer._target_=torch.optim.Nope"], "train.optimizer._target_",
     "torch.optim has no attribute or submodule 'Nope'"),
    (["train.optimizer._target_=nopkg.Opt"], "train.optimizer._target_", "No module named 'nopkg'"),
    (["train.optimizer._target_=torch.nn.Linear"], "train.optimizer._target_", "not a Linear"),
    (["+train.optimizer.foo=1"], "train.optimizer", "unexpected keyword argument 'foo'"),
    (["+train.optimizer.lr=0.1"], "train.optimizer.lr", "set train.lr"),
    (["train/optimizer=sgd", "train.optimizer.momentum=-1"], "train.optimizer", "Invalid momentum value"),
    (["train/optimizer=lamb", "train.optimizer.opt=nope"], "train.optimizer", "nope"),
    (["train.optimizer._partial_=false"], "train.optimizer._partial_", "true"),
    (["train/scheduler=plateau", "+train.scheduler.mode=min"], "train.scheduler.mode", "maximised"),
    (["train/scheduler=cosine", "+train.scheduler.bogus=2"], "train.scheduler", "'bogus'"),
    (["train.scheduler._target_=torch.optim.SGD"], "train.scheduler._target_", "LRScheduler"),
    (["+train.scheduler.step_size=2"], "train.scheduler._target_", "['step_size']"),
    (["pretrain.optimizer._target_=torch.optim.Nope"], "pretrain.optimizer._target_", "Nope"),
])
def test_a_bad_node_is_one_line_naming_the_key(composed, overrides, key, says):
    problems = optim_nodes.check(composed(*overrides))
    assert [p.key for p in problems] == [key], problems
    assert says in str(problems[0]) and "\n" not in str(problems[0])


@pytest.mark.parametrize("override,key,says", [
    ("train.optimizer=sgd", "train.optimizer", "train/optimizer=<adamw|adam|sgd|lamb>"),
    ("train.scheduler=cosine", "train.scheduler", "train/scheduler=<none|cosine|plateau>"),
    ("pretrain.optimizer=adam", "pretrain.optimizer", "pretrain/optimizer="),
    ("train.momentum=0.9", "train.momentum", "moved to train.optimizer.momentum"),
])
def test_the_old_spellings_say_the_new_one(composed, override, key, says):
    with pytest.raises(ConfigCompositionException) as e:
        composed(override)
    error = config_error(e.value)
    assert error is not None and [p.key for p in error.items] == [key] and says in error.problems[0], error
    kind = key.rsplit(".", 1)[1]
    if kind in ("optimizer", "scheduler"):  # the options the message lists are conf/'s files
        listed = error.problems[0].split("=<", 1)[1].split(">", 1)[0].split("|")
        assert sorted(listed) == _options(kind)


def test_cli_bad_node_exits_2_before_anything_is_written(tmp_path):
    out = run_cli("train.optimizer._target_=torch.optim.Nope", "train.scheduler=cosine", cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(cli_problems(out.stderr)) == 1 and "Traceback" not in out.stderr  # composition stops at the first
    out = run_cli("train.optimizer._target_=torch.optim.Nope", cwd=tmp_path, timeout=300)
    assert out.returncode == 2 and cli_problems(out.stderr) == [
        "train.optimizer._target_='torch.optim.Nope': an importable optimizer class or factory: torch.optim has no "
        "attribute or submodule 'Nope'"], out.stderr[-2000:]
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("*.ckpt"))


# ---------------------------------------------------------------- what a vectorised group may stack
@pytest.mark.parametrize("name", optim_nodes.ELEMENTWISE)
def test_every_allowlisted_optimizer_steps_stacked_members_as_alone(name):
    """K members stacked in one tensor, stepped by one optimizer, end where K separate optimizers take them: the
    allowlist is what makes a vectorised group's result each member's own."""
    k, steps = 3, 4
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(k, 5, 4, generator=gen)
    grads = [torch.randn(k, 5, 4, generator=gen) for _ in range(steps)]
    node = {"_target_": f"torch.optim.{name}", "_partial_": True}
    kwargs = {"lr": 0.05, "weight_decay": 0.01}

    def run(tensor, member_grads):
        p = torch.nn.Parameter(tensor.clone())
        opt = optim_nodes.build_optimizer(node, [{"params": [p], **kwargs}])
        for g in member_grads:
            p.grad = g.clone()
            opt.step()
        return p.detach()

    stacked = run(start, grads)
    for m in range(k):
        alone = run(start[m], [g[m] for g in grads])
        torch.testing.assert_close(stacked[m], alone, rtol=1e-6, atol=1e-7)
    assert optim_nodes.why_not_stacked(node) is None


def test_an_optimizer_off_the_allowlist_is_not_stacked():
    assert "Lamb is not known to be elementwise" in optim_nodes.why_not_stacked(group_file("optimizer", "lamb"))
    # Adafactor (factored second moments): a torch.optim class, but not elementwise
    assert "Adafactor" in optim_nodes.why_not_stacked({"_target_": "torch.optim.Adafactor", "_partial_": True})
    # a subclass of an allowlisted class may change its step: by exact class only
    assert "MySGD" in optim_nodes.why_not_stacked({"_target_": f"{__name__}.MySGD", "_partial_": True})


class MySGD(torch.optim.SGD):
    """An SGD whose step could be anything."""


def test_an_optimizer_of_ones_own_is_read_code_in_the_identity(composed, tmp_path, monkeypatch):
    """A target outside torch and timm is hashed like a backbone of one's own: editing it re-runs the run (and, under
    `pretrain`, retrains the source model); a library's target adds no input."""
    pkg = tmp_path / "myopt_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "opt.py").write_text("import torch\n\nclass MyOpt(torch.optim.SGD):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not any(k.endswith(".code") for k in identity.inputs(composed()))
    own = composed("train.optimizer._target_=myopt_pkg.opt.MyOpt", "pretrain.optimizer._target_=myopt_pkg.opt.MyOpt")
    assert optim_nodes.check(own) == []
    ins = identity.inputs(own)
    assert set(k for k in ins if k.endswith(".code")) == {"train.optimizer.code", "pretrain.optimizer.code"}
    before, source_before = identity.fingerprint(own), identity.source_fingerprint(own)
    (pkg / "opt.py").write_text("import torch\n\nclass MyOpt(torch.optim.SGD):\n    pass  # edited\n")
    assert identity.fingerprint(own) != before and identity.source_fingerprint(own) != source_before
    assert "MyOpt" in optim_nodes.why_not_stacked(own.train.optimizer)  # a subclass: not known to be elementwise
