"""Where the configs come from (`pkg://transferlab.conf`, transferlab/conf_source.py) and a researcher's own configs
extending ours (`--config-dir` / `hydra.searchpath`, docs/extending.md). The installed wheel itself is exercised by
scripts/ci_wheel.sh (`make test-wheel`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from conftest import CONF, cli_problems

# A researcher's project: an own target option built on our task group, and an own preset that uses our groups
# (source, transfer, backbone) and that option.
OWN_TARGET = """\
# @package target
defaults:
  - /task/digits@_here_
  - _self_
name: digits_5to7
classes: [5, 6, 7]
"""
OWN_EXPERIMENT = """\
# @package _global_
defaults:
  - override /source: digits_0to4
  - override /target: digits_5to7
  - override /transfer: linear_probe
name: mine
target:
  n_per_class: 3
"""


def _own_project(root: Path) -> Path:
    (root / "conf" / "target").mkdir(parents=True)
    (root / "conf" / "experiment").mkdir()
    (root / "conf" / "target" / "digits_5to7.yaml").write_text(OWN_TARGET)
    (root / "conf" / "experiment" / "mine.yaml").write_text(OWN_EXPERIMENT)
    return root


def _compose(overrides: list[str]):
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    from transferlab import conf_source

    GlobalHydra.instance().clear()
    with conf_source.initialize():
        cfg = compose("config", overrides=["paths.output_dir=/x", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def test_configs_are_read_from_the_package_and_it_is_the_live_conf_folder(monkeypatch):
    from transferlab import conf_source

    monkeypatch.delenv(conf_source.ENV, raising=False)
    assert conf_source.search_path() == "pkg://transferlab.conf"
    packaged = resources.files("transferlab.conf")

    def yaml_files(top) -> set[str]:
        found, stack = set(), [(top, "")]
        while stack:
            folder, prefix = stack.pop()
            for entry in folder.iterdir():
                if entry.is_dir():
                    stack.append((entry, f"{prefix}{entry.name}/"))
                elif entry.name.endswith(".yaml"):
                    found.add(prefix + entry.name)
        return found

    # this checkout's install reads the repository's conf/ itself: the same files, not a copy made at install time
    assert yaml_files(packaged) == {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert Path(str(packaged)).resolve() == CONF.resolve()
    assert _compose([]).target.name == "digits_5to9"


def test_transferlab_conf_replaces_our_configs(tmp_path, monkeypatch):
    copy = tmp_path / "myconf"
    shutil.copytree(CONF, copy, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace("\nname: default\n", "\nname: copy\n"))
    monkeypatch.setenv("TRANSFERLAB_CONF", str(copy))
    assert _compose([]).name == "copy"


def test_own_configs_extend_ours_through_the_searchpath(tmp_path, monkeypatch):
    monkeypatch.chdir(_own_project(tmp_path))  # a relative file://conf is the project's own folder
    cfg = _compose(["hydra.searchpath=[file://conf]", "experiment=mine"])
    assert (cfg.name, cfg.target.name, list(cfg.target.classes), cfg.target.n_per_class) == \
        ("mine", "digits_5to7", [5, 6, 7], 3)
    assert (cfg.source.name, cfg.transfer.name, cfg.transfer.freeze, cfg.backbone.name) == \
        ("digits_0to4", "linear_probe", "all", "small_cnn")
    # ours stay available next to theirs
    assert _compose(["hydra.searchpath=[file://conf]", "experiment=freeze_vs_n"]).name == "freeze_vs_n"

    # their machine-local file is merged (the command line still wins); a file named as one of ours is not used
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "conf" / "local" / "default.yaml").write_text("# @package _global_\ndata_seed: 11\n")
    (tmp_path / "conf" / "target" / "digits_5to9.yaml").write_text(OWN_TARGET.replace("digits_5to7", "digits_5to9"))
    cfg = _compose(["hydra.searchpath=[file://conf]"])
    assert (cfg.data_seed, cfg.target.name, list(cfg.target.classes)) == (11, "digits_5to9", [5, 6, 7, 8, 9])
    assert _compose(["hydra.searchpath=[file://conf]", "data_seed=3"]).data_seed == 3


def test_own_experiment_runs_through_the_cli_with_config_dir(tmp_path):
    """The researcher's command, from their project folder: `transferlab-train --config-dir conf experiment=mine`."""
    project = _own_project(tmp_path)
    train = Path(sys.executable).parent / "transferlab-train"
    env = {**os.environ, "TRANSFERLAB_ROOT": str(project)}
    out = subprocess.run([str(train), "--config-dir", "conf", "experiment=mine", "pretrain.max_epochs=1",
                          "train.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none"],
                         cwd=project, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (project / "outputs" / "runs" / "mine").rglob("result.json")
    rec = json.loads(result.read_text())
    assert (rec["status"], rec["target"], rec["transfer"], rec["freeze"]) == ("ok", "digits_5to7", "linear_probe", 4)
    assert (rec["num_classes"], rec["n_train"]) == (3, 9)

    # a value of theirs the schema refuses is one line naming the key, exit 2, as for ours
    (project / "conf" / "experiment" / "bad.yaml").write_text(OWN_EXPERIMENT.replace("n_per_class: 3",
                                                                                     "n_per_class: many"))
    bad = subprocess.run([str(train), "--config-dir", "conf", "experiment=bad"], cwd=project, capture_output=True,
                         text=True, timeout=300, env=env)
    assert bad.returncode == 2 and any("target.n_per_class" in p for p in cli_problems(bad.stderr)), bad.stderr
