"""Every bad input fails before any work: one clear line naming the key, and nothing written anywhere.

Each case composes the real files and runs the real experiment entry (`experiment.run`), as the CLI does: a wrong
type or a value outside a closed choice is refused by the schema while composing (OmegaConf, before any check of
ours), everything else by the checks; either way one ConfigError line `key=value: allowed`. The run dir, the source
cache and the data dir all live under one empty folder, which must still be empty afterwards (no result.json, no
checkpoint, no cache entry, no W&B run, no log).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from conftest import Exploit, cli_problems, compose_cfg, run_cli
from transferlab.errors import ConfigError
from transferlab.run.experiment import run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad weights files, outside the folder a case may write into."""
    d = tmp_path_factory.mktemp("bad_files")
    corrupt = d / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a torch file" * 10)
    not_a_state_dict = d / "list.pt"
    torch.save([torch.zeros(3), torch.ones(2)], not_a_state_dict)
    wrong_keys = d / "wrong_keys.pt"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, wrong_keys)
    evil = d / "evil.pt"
    torch.save({"state_dict": Exploit(d / "PWNED")}, evil)
    return {"corrupt": corrupt, "list": not_a_state_dict, "wrong_keys": wrong_keys, "evil": evil,
            "missing": d / "no_such_file.pt", "marker": d / "PWNED", "dir": d}


# (id, overrides, the key the message must name). Files are filled in from the `files` fixture: {name}.
CASES = [
    ("cut-negative", ["transfer.cut=-1"], "transfer.cut"),
    ("cut-beyond-blocks", ["transfer.cut=99"], "transfer.cut"),
    ("freeze-beyond-cut", ["transfer.cut=2", "transfer.freeze=3"], "transfer.freeze"),
    ("upper-unknown", ["transfer.upper=sideways"], "transfer.upper"),
    ("trainable-not-a-block", ["transfer.trainable=[conv9]"], "transfer.trainable"),
    ("trainable-not-kept", ["transfer.cut=2", "transfer.trainable=[conv3]"], "transfer.trainable"),
    ("trainable-glob-matches-nothing", ["transfer.trainable=['*.nothing_like_this']"], "transfer.trainable"),
    ("trainable-empty", ["transfer.trainable=[]"], "transfer.trainable"),
    ("strategy-unknown", ["transfer.strategy=yolo"], "transfer.strategy"),
    ("lp-epochs-beyond-max-epochs", ["transfer=lp_ft", "transfer.lp_epochs=10", "train.max_epochs=4"],
     "transfer.lp_epochs"),
    ("n-per-class-zero", ["target.n_per_class=0"], "target.n_per_class"),
    ("n-per-class-beyond-pool", ["target.n_per_class=100000"], "target.n_per_class"),
    ("n-train-negative", ["target.n_train=-3"], "target.n_train"),
    ("n-policy-unknown", ["target.n_policy=maybe"], "target.n_policy"),
    ("class-not-in-task", ["target.classes=[5,42]"], "target.classes"),
    ("val-fraction-above-one", ["target.val_fraction=1.5"], "target.val_fraction"),
    ("shapes-differ", ["target.image_size=16"], "source"),
    ("missing-npz", ["target=npz", "target.path={missing}"], "target.path"),
    ("missing-image-folder", ["target=image_folder", "target.root={dir}/no_such_folder"], "target.root"),
    ("dataset-files-missing-offline", ["target=mnist", "target.download=false", "transfer=scratch"], "target.dataset"),
    ("target-kind-unknown", ["target.kind=imagenet_xxl"], "target.kind"),
    ("source-kind-unknown", ["source.kind=nope"], "source.kind"),
    ("lr-not-a-number", ["train.lr=abc"], "train.lr"),
    ("max-epochs-not-an-int", ["train.max_epochs=1.5"], "train.max_epochs"),
    ("cut-not-an-int", ["transfer.cut=abc"], "transfer.cut"),
    ("feature-cache-unknown", ["train.feature_cache=sometimes"], "train.feature_cache"),
    ("lr-zero", ["train.lr=0"], "train.lr"),
    ("lr-negative-pretrain", ["pretrain.lr=-0.1"], "pretrain.lr"),
    ("max-epochs-zero", ["train.max_epochs=0"], "train.max_epochs"),
    ("checkpoint-interval-negative", ["checkpoint.every_s=-1"], "checkpoint.every_s"),
    ("batch-size-zero", ["train.batch_size=0"], "train.batch_size"),
    ("optimizer-unknown", ["train.optimizer._target_=torch.optim.RMSprob"], "train.optimizer._target_"),
    ("weight-decay-negative", ["train.weight_decay=-1"], "train.weight_decay"),
    ("seed-negative", ["seed=-1"], "seed"),
    ("data-seed-not-int", ["data_seed=abc"], "data_seed"),
    ("logger-kind-unknown", ["logger.kind=tensorboard"], "logger.kind"),
    ("wandb-mode-unknown", ["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode"),
    ("devices-beyond-machine", ["trainer.devices=64"], "trainer.devices"),
    ("gpu-asked-none-present", ["trainer.accelerator=gpu"], "trainer.accelerator"),
    ("lease-slots-negative", ["hydra/launcher=local_parallel", "lease.slots=-3"], "lease.slots"),
    ("weights-missing", ["source=none", "backbone.weights={missing}"], "backbone.weights"),
    ("weights-corrupt", ["source=none", "backbone.weights={corrupt}"], "backbone.weights"),
    ("weights-not-a-state-dict", ["source=none", "backbone.weights={list}"], "backbone.weights"),
    ("weights-wrong-keys", ["source=none", "backbone.weights={wrong_keys}"], "backbone.weights"),
    ("weights-malicious-pickle", ["source=none", "backbone.weights={evil}"], "backbone.weights"),
]


# The cases the schema refuses while composing (types and closed choices); the rest are range and cross checks.
REFUSED_BY_SCHEMA = {"upper-unknown", "strategy-unknown", "n-policy-unknown", "target-kind-unknown",
                     "source-kind-unknown", "lr-not-a-number", "max-epochs-not-an-int", "cut-not-an-int",
                     "feature-cache-unknown", "logger-kind-unknown", "wandb-mode-unknown"}


@pytest.mark.parametrize("overrides,key,where", [
    pytest.param(o, k, "schema" if i in REFUSED_BY_SCHEMA else "checks", id=i) for i, o, k in CASES])
def test_bad_input_fails_before_any_work(overrides, key, where, files, tmp_path):
    if key == "trainer.accelerator" and torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    overrides = [o.format(**files) for o in overrides]
    with pytest.raises(ConfigError) as err:  # composing as the CLI does: a refused value is a ConfigError too
        run(compose_cfg([*overrides, f"paths.data_dir={tmp_path / 'data'}"], tmp_path / "run", tmp_path / "cache"))
    refused_by_schema = isinstance(err.value.__cause__, ConfigCompositionException)
    assert refused_by_schema == (where == "schema"), where  # types and choices: OmegaConf, before any check
    assert [p.key for p in err.value.items] == [key], err.value.items
    lines = err.value.problems
    assert len(lines) == 1 and lines[0].startswith(f"{key}="), lines  # one problem, one line, naming the key
    assert all("\n" not in line and ": " in line for line in lines), lines  # one line each: key=value: allowed
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == [], f"a rejected config wrote {written}"
    assert not files["marker"].exists(), "the malicious pickle ran code"
    if "evil" in " ".join(overrides):
        assert any("refused" in line for line in lines), lines


def test_every_problem_is_listed_at_once(make_cfg):
    cfg = make_cfg("train.lr=0", "pretrain.batch_size=0", "transfer.cut=2", "transfer.freeze=5", "target.n_per_class=100000",
                   "trainer.devices=64")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    keys = {p.key for p in err.value.items}
    assert keys == {"train.lr", "pretrain.batch_size", "transfer.freeze", "target.n_per_class", "trainer.devices"}, \
        err.value.problems


def test_cli_exits_2_with_one_line_per_problem(tmp_path):
    out = run_cli("train.lr=-1", "trainer.devices=64", "target.n_per_class=0", cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = cli_problems(out.stderr)
    assert [ln.split("=", 1)[0] for ln in lines] == ["train.lr", "target.n_per_class", "trainer.devices"]
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("*.ckpt"))
    assert not (tmp_path / "outputs" / "cache").exists()


def test_cli_refuses_a_wrong_type_like_any_bad_value(tmp_path):
    """A value the schema refuses while Hydra composes: the same one line and exit code 2, not Hydra's report."""
    out = run_cli("train.max_epochs=1.5", cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert cli_problems(out.stderr) == ["train.max_epochs=1.5: an integer"], out.stderr
    assert "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr
    assert not list(tmp_path.rglob("*"))  # not even Hydra's run folder


def test_cli_unknown_backbone_named_by_hydra(tmp_path):
    out = run_cli("backbone=resnet9000", cwd=tmp_path, timeout=300)
    assert out.returncode != 0 and "backbone" in out.stderr and "resnet9000" in out.stderr
    assert not list(tmp_path.rglob("result.json")) and not (tmp_path / "outputs" / "cache").exists()
