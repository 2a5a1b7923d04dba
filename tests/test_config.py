"""The schema (transferlab.config) is the one source of types and defaults: every group file is typed by it, no
YAML file restates a default, choices leave the config as plain strings, and the code's own lists of choices are
the schema's."""

from __future__ import annotations

import json
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF, cli_problems, run_cli
from transferlab.config import (
    SCHEMAS,
    BackboneFamily,
    Choice,
    TaskKind,
    TorchvisionDataset,
    added_keys,
    config_error,
    flatten,
    plain,
)

# Groups whose files start from a schema; source/target only include task files, experiment and hydra are not ours.
TYPED_GROUPS = ("task", "backbone", "transfer", "peft", "pretrain", "train", "tune", "trainer", "checkpoint", "logger",
                "paths")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def composed():
    """compose(overrides) with one Hydra initialisation for the whole module."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda *o: compose("config", overrides=["paths.output_dir=/tmp/unused", *o])
    GlobalHydra.instance().clear()


def _effective(path: Path) -> tuple[dict, dict]:
    """(what the file inherits, what it sets itself): its defaults list (schemas and files of its own group, in
    order, before `_self_`) resolved from the raw YAML, then the file's own keys."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    inherited: dict = {}
    for entry in raw.pop("defaults", []):
        if isinstance(entry, dict):  # a group's option (train/optimizer): its own node, not keys of this file
            continue
        name = str(entry).split("@", 1)[0]
        if name == "_self_":
            continue
        if name.startswith("/schema/"):
            node = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[name[len("/schema/"):]]), enum_to_str=True)
        else:
            assert not name.startswith("/"), f"{path}: unexpected default {entry}"
            base, own = _effective(path.parent / f"{name}.yaml")
            node = {**base, **own}
        inherited.update(flatten(node))
    return inherited, flatten(raw)


@pytest.mark.parametrize("group", TYPED_GROUPS)
def test_no_yaml_file_restates_a_default(group):
    """A key a file sets must change what the file gets without it (its parents' value, else the schema's
    default): defaults are written once, in the schema; a file holds only what makes it what it is."""
    for path in sorted((CONF / group).glob("*.yaml")):
        inherited, own = _effective(path)
        assert any(str(k).startswith("/schema/") for k in _schema_chain(path)), f"{path} has no schema"
        restated = {k: v for k, v in own.items() if k in inherited and inherited[k] == v}
        assert not restated, f"{path.relative_to(CONF)} restates what it inherits: {restated}"


def _schema_chain(path: Path) -> list[str]:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    out = []
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict):
            continue
        name = str(entry).split("@", 1)[0]
        out += [name] if name.startswith("/") else [] if name == "_self_" else _schema_chain(path.parent / f"{name}.yaml")
    return out


def test_every_group_option_is_typed_by_its_schema(composed):
    schemas = tuple(SCHEMAS.values())
    for group in ("target", "backbone", "transfer", "peft", "trainer", "logger"):  # source=<task>: the same files
        for option in _options(group):
            assert OmegaConf.get_type(composed(f"{group}={option}")[group]) in schemas, f"{group}={option} is untyped"
    assert OmegaConf.get_type(composed("source=none").source) is SCHEMAS["task/none"]
    cfg = composed("hydra/launcher=local_parallel")
    assert OmegaConf.get_type(cfg.lease) is SCHEMAS["lease"] and "lease" not in composed()


@pytest.mark.parametrize("override,key", [
    ("train.lr=abc", "train.lr"), ("pretrain.max_epochs=1.5", "pretrain.max_epochs"),
    ("transfer.strategy=yolo", "transfer.strategy"), ("target.n_per_class=many", "target.n_per_class"),
    ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar"), ("checkpoint.every_s=soon", "checkpoint.every_s"),
])
def test_a_wrong_type_is_refused_while_composing_naming_key_and_value(composed, override, key):
    with pytest.raises(ConfigCompositionException) as e:
        composed(override)
    error = config_error(e.value)
    assert error is not None and [p.key for p in error.items] == [key]
    value = override.split("=", 1)[1]
    assert error.problems[0].startswith(f"{key}=") and value in error.problems[0], error.problems


TYPO = ("transfer='frezee': no such key in transfer; did you mean transfer.freeze? (its keys: name, cut, upper, "
        "freeze, trainable, bn, strategy, unfreeze_every, lp_epochs, l2sp, init, source_compute, scores)")


def test_a_key_its_group_does_not_have_is_one_line_naming_the_nearest(composed):
    """A typo (`transfer.frezee=1`) is refused while composing, with the nearest key, not Hydra's advice to add it
    with `+`. Added with `+` (Hydra opens the node for it) nothing would read it: the run's and the sweep's checks
    refuse it (`added_keys`). `+trainer.<key>` goes on to Lightning, and nodes without a schema (an optimizer's
    arguments) take any key."""
    with pytest.raises(ConfigCompositionException) as e:
        composed("transfer.frezee=1")
    assert config_error(e.value).problems == [TYPO]
    assert [str(p) for p in added_keys(composed("+transfer.frezee=1"))] == [TYPO]
    assert [str(p) for p in added_keys(composed("+target.foo=1", "+paths.bar=2"))] == [
        "target='foo': no such key in target (its keys: kind, name, classes, part, relabel, n_per_class, n_train, "
        "n_policy, split_seed, val_fraction, val_size, val_per_class, val_cap_per_class, test_fraction, "
        "max_per_class, channels, image_size, normalize)",
        "paths='bar': no such key in paths (its keys: root_dir, output_dir, cache_dir, data_dir)"]
    with pytest.raises(ConfigCompositionException) as e:
        composed("trainer.gradient_clip_val=0.5")  # a Trainer argument, set instead of added
    assert "; an argument of Lightning's Trainer is added with +trainer.gradient_clip_val=<value> (its keys:" in \
        config_error(e.value).problems[0]
    assert [str(p) for p in added_keys(composed("+train.momentum=0.9"))] == [
        "train.momentum=0.9: moved to train.optimizer.momentum (with train/optimizer=sgd)"]
    passed_on = composed("+trainer.gradient_clip_val=0.5", "+train.optimizer.betas=[0.9,0.95]",
                         "logger=wandb", "++logger.wandb.init_timeout=5")
    assert passed_on.trainer.gradient_clip_val == 0.5 and added_keys(passed_on) == []


def test_a_key_added_to_a_typed_group_is_refused_by_a_run_and_a_sweep_before_anything_is_written(tmp_path):
    for args in (["+transfer.frezee=1"], ["-m", "+transfer.frezee=1", "seed=0,1"]):
        out = run_cli(*args, "pretrain.max_epochs=1", "train.max_epochs=1", cwd=tmp_path)
        assert out.returncode == 2, out.stderr[-2000:]
        assert cli_problems(out.stderr) == [TYPO]
        assert not list(tmp_path.rglob("result.json")) and not (tmp_path / "outputs" / "cache").exists()


def test_choices_leave_the_config_as_plain_strings(composed):
    cfg = composed("logger=wandb", "target=npz", "transfer=lp_ft")
    assert isinstance(cfg.transfer.upper, Enum) and cfg.transfer.upper == "drop" and f"{cfg.transfer.upper}" == "drop"

    def enums(obj):
        if isinstance(obj, dict):
            return [e for v in obj.values() for e in enums(v)]
        if isinstance(obj, list):
            return [e for v in obj for e in enums(v)]
        return [obj] if isinstance(obj, Enum) else []

    data = plain(cfg)
    assert not enums(data) and data["transfer"]["strategy"] == "lp_ft" and data["logger"]["wandb"]["mode"] == "offline"
    assert not enums(plain(OmegaConf.to_container(cfg, resolve=True)))  # a mapping holding choices too
    json.dumps(data)


def test_the_codes_lists_of_choices_are_the_schemas():
    from transferlab.backbones import FAMILIES
    from transferlab.tasks import KINDS
    from transferlab.tasks.vision import DATASETS

    assert set(KINDS) == set(TaskKind.values()) - {"none"}
    assert set(FAMILIES) == set(BackboneFamily.values())
    assert set(DATASETS) == set(TorchvisionDataset.values())
    assert all(issubclass(c, Choice) for c in Choice.__subclasses__())


def test_hydra_finds_the_schemas_without_importing_transferlab(tmp_path):
    """Hydra imports hydra_plugins.transferlab_plugins at start-up: any composition of conf/ (the compose API in a
    notebook, a sweep worker) gets the schemas, and nothing heavy is imported for it."""
    code = (f"import sys\nfrom hydra import compose, initialize_config_dir\n"
            f"with initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'):\n"
            f"    cfg = compose('config', overrides=['paths.output_dir=/x'])\n"
            f"print(type(cfg.transfer.upper).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["Upper", "False"], out.stderr[-2000:]
