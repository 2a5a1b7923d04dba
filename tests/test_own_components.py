"""A backbone and a task of one's own, named by `_target_` (issue 28, item 2): they train end to end with a cut and
a freeze through the same plan, caches and record as the built-ins; each break of the protocol is one clear
ConfigError line (exit 2 from the CLI, nothing written); their code is in the run's identity and the source-model
cache key. examples/own_project is such a project; its run_example.sh runs a sweep and the report through the
real console scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import open_dict
from conftest import ROOT, cli_problems, compose_cfg, run_cli

EXAMPLE = ROOT / "examples" / "own_project"
# The example's own config files on Hydra's search path (what `--config-dir conf` does on the command line).
SEARCH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"
OWN = ["backbone=tiny_conv", "source=gratings_coarse", "target=gratings_fine"]


def _forget(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture
def example_pkg(monkeypatch):
    """The example's `mypkg` importable in this process, as PYTHONPATH makes it in run_example.sh."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    _forget("mypkg")
    yield EXAMPLE
    _forget("mypkg")


BAD = '''
    from collections import OrderedDict

    import numpy as np
    from torch import nn


    class NoBlocks(nn.Module):
        def __init__(self, input_shape):
            super().__init__()
            self.input_shape = input_shape
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, 8))


    class UnnamedBlocks(nn.Module):
        def __init__(self, input_shape):
            super().__init__()
            self.input_shape = input_shape
            self.blocks = nn.Sequential(nn.Flatten(), nn.Linear(144, 8))


    class NoInputShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleDict(OrderedDict(fc=nn.Sequential(nn.Flatten(), nn.Linear(144, 8))))


    def mismatched():
        return np.zeros((100, 1, 12, 12), np.float32), np.zeros(90, np.int64)
'''


@pytest.fixture
def bad_pkg(tmp_path, monkeypatch):
    """`badpkg.parts`: one protocol break each, importable in this process and (PYTHONPATH) in a CLI run."""
    root = tmp_path / "code"
    (root / "badpkg").mkdir(parents=True)
    (root / "badpkg" / "__init__.py").write_text("")
    (root / "badpkg" / "parts.py").write_text(textwrap.dedent(BAD))
    monkeypatch.syspath_prepend(str(root))
    _forget("badpkg")
    yield root
    _forget("badpkg")


def _cfg(tmp_path, *overrides: str, run: str = "run"):
    return compose_cfg([SEARCH, *OWN, *overrides], tmp_path / run, tmp_path / "cache")


def test_own_backbone_and_task_train_with_cut_and_freeze(example_pkg, tmp_path):
    """The example's TinyConvNet and gratings task through a real run: source pretrained and cached, cut 2 of 3
    blocks, conv1 frozen (its weights and BatchNorm statistics byte-identical to the source's after training),
    the frozen prefix served from the feature cache, the record naming the own backbone and task."""
    import torch
    from conftest import ckpt_state

    from transferlab.run.experiment import run

    shrunk = ["transfer.cut=2", "transfer.freeze=1", "target.n_per_class=5", "train.feature_cache=on"]
    record = run(_cfg(tmp_path, *shrunk))
    assert record["status"] == "ok" and record["backbone"] == "tiny_conv"
    assert (record["source"], record["target"]) == ("gratings_coarse", "gratings_fine")
    assert record["frozen_blocks"] == ["conv1"] and record["trainable_blocks"] == ["conv2", "head"]
    assert record["source_cache"] == "miss" and record["feature_cache"]["status"] == "miss"
    assert set(record["inputs"]) == {"target", "source", "backbone.code"}
    assert record["inputs"]["backbone.code"]["files"].endswith("mypkg/nets.py")

    target = ckpt_state(record["target_ckpt"])
    source = torch.load(record["source_ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    conv1 = [k for k in source if k.startswith("net.backbone.blocks.conv1.")]
    assert any("running_mean" in k for k in conv1)
    assert all(torch.equal(source[k], target[k]) for k in conv1)  # frozen: weights and BN statistics unchanged
    conv2 = "net.backbone.blocks.conv2.0.weight"
    assert not torch.equal(source[conv2], target[conv2])  # fine-tuned
    assert not any(k.startswith("net.backbone.blocks.fc.") for k in target)  # cut at 2: fc dropped

    again = run(_cfg(tmp_path, *shrunk, run="again"))
    assert again["source_cache"] == "hit" and again["fingerprint"] == record["fingerprint"]
    assert again["feature_cache"]["status"] in ("hit", "memory")  # the frozen conv1's outputs, computed once


@pytest.mark.parametrize("overrides, key, says", [
    (["backbone=custom", "backbone._target_=badpkg.parts.NoBlocks"], "backbone._target_", "has no `blocks`"),
    (["backbone=custom", "backbone._target_=badpkg.parts.UnnamedBlocks"], "backbone._target_",
     "has ['0', '1'] (positions"),
    (["backbone=custom", "backbone._target_=badpkg.parts.NoInputShape"], "backbone._target_",
     "a module with `input_shape`"),
    (["target=custom", "target._target_=badpkg.parts.mismatched"], "target._target_", "got 100 inputs and 90 labels"),
    (["backbone._target_=badpkg.nowhere.Net"], "backbone._target_", "badpkg has no attribute or submodule 'nowhere'"),
    (["source._target_=nopkg.load"], "source._target_", "No module named 'nopkg'"),
    (["+backbone.kwargs.depth=3"], "backbone._target_", "unexpected keyword argument 'depth'"),
])
def test_a_protocol_break_is_one_problem_naming_what_is_missing(example_pkg, bad_pkg, tmp_path, overrides, key, says):
    from transferlab.errors import ConfigError
    from transferlab.run.setup import prepare

    cfg = _cfg(tmp_path, *overrides)
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert [p.key for p in e.value.items] == [key]
    assert says in e.value.problems[0]


def test_cli_protocol_break_exits_2_and_writes_nothing(bad_pkg, tmp_path):
    """Through the console entry point: exit 2, the one problem line, no record, checkpoint or cache entry."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    env = {"PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(bad_pkg), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("--config-dir", str(EXAMPLE / "conf"), *OWN, "backbone=custom",
                  "backbone._target_=badpkg.parts.UnnamedBlocks",
                  f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}", cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr
    problems = cli_problems(out.stderr)
    assert len(problems) == 1 and problems[0].startswith("backbone._target_='badpkg.parts.UnnamedBlocks': named "
                                                         "blocks"), out.stderr
    assert "Traceback" not in out.stderr
    assert not (run_dir / "result.json").exists() and not (run_dir / "checkpoints").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "train.log"]  # Hydra's own files only
    assert not cache.exists() or not any(cache.rglob("*"))


def _write_pkg(root: Path, nets: str, data: str = "") -> None:
    shutil.rmtree(root / "ownpkg", ignore_errors=True)
    (root / "ownpkg").mkdir(parents=True)
    (root / "ownpkg" / "__init__.py").write_text("")
    (root / "ownpkg" / "nets.py").write_text((EXAMPLE / "mypkg" / "nets.py").read_text() + nets)
    (root / "ownpkg" / "data.py").write_text((EXAMPLE / "mypkg" / "data.py").read_text() + data)


def test_the_identity_holds_the_code_of_an_own_backbone_and_task(tmp_path, monkeypatch):
    """Editing the backbone's module changes the run's fingerprint and the source-model cache key; editing the
    task's module changes both too; the same code at another path is the same run (content, not location);
    a task's `files` enter by their bytes."""
    from transferlab.run import identity
    from transferlab.store import content

    code = tmp_path / "a"
    _write_pkg(code, "")
    monkeypatch.syspath_prepend(str(code))
    _forget("ownpkg")
    data = tmp_path / "extra.csv"
    data.write_text("1,2\n")
    cfg = compose_cfg([SEARCH, *OWN, "backbone._target_=ownpkg.nets.TinyConvNet",
                       "source._target_=ownpkg.data.gratings", "target._target_=ownpkg.data.gratings",
                       f"target.files=[{data}]"], tmp_path / "run")

    def keys():
        content.forget()
        return identity.fingerprint(cfg), identity.source_fingerprint(cfg)

    def feature_arch():  # what the feature cache keys a prefix's computation by, besides its tensors
        from transferlab.store.feature_cache import _architecture

        content.forget()
        return _architecture(cfg)["code"]

    before, arch = keys(), feature_arch()
    assert identity.inputs(cfg)["backbone.code"]["files"] == str(code / "ownpkg" / "nets.py")
    _write_pkg(code, "# an edit of the backbone's module")
    edited_backbone = keys()
    assert edited_backbone[0] != before[0] and edited_backbone[1] != before[1] and feature_arch() != arch
    _write_pkg(code, "# an edit of the backbone's module", data="# an edit of the task's module")
    edited_task = keys()
    assert edited_task[0] != edited_backbone[0] and edited_task[1] != edited_backbone[1]
    data.write_text("1,3\n")
    assert keys()[0] != edited_task[0]
    data.write_text("1,2\n")

    moved = tmp_path / "b"
    shutil.copytree(code, moved)
    shutil.rmtree(code)
    monkeypatch.syspath_prepend(str(moved))
    _forget("ownpkg")
    assert keys() == edited_task  # same bytes elsewhere: the same run, the same source model
    _forget("ownpkg")


def test_own_target_nodes_inside_kwargs_are_hashed_like_the_component(tmp_path, monkeypatch):
    """A `_target_` node in a custom backbone's kwargs (an activation class of your own, built by Hydra's
    instantiate) shapes the model as the backbone's own code does: editing its module changes the run's fingerprint,
    the source-model key and the feature-cache architecture; library nodes (torch.nn.ReLU) are not hashed."""
    from transferlab import own_code
    from transferlab.run import identity
    from transferlab.store import content
    from transferlab.store.feature_cache import _architecture

    code = tmp_path / "a"
    _write_pkg(code, "")
    (code / "actpkg.py").write_text("import torch\n\nclass Act(torch.nn.ReLU):\n    pass\n")
    monkeypatch.syspath_prepend(str(code))
    _forget("ownpkg")
    cfg = compose_cfg([SEARCH, *OWN, "backbone._target_=ownpkg.nets.TinyConvNet",
                       "+backbone.kwargs.extra={_target_: actpkg.Act, inner: [{_target_: torch.nn.ReLU}]}"],
                      tmp_path / "run")
    assert own_code.nested_targets(cfg.backbone.kwargs, "backbone.kwargs") == [("backbone.kwargs.extra", "actpkg.Act")]

    def keys():
        content.forget()
        return identity.fingerprint(cfg), identity.source_fingerprint(cfg), _architecture(cfg)

    before = keys()
    assert identity.inputs(cfg)["backbone.kwargs.extra.code"]["files"] == str(code / "actpkg.py")
    with open_dict(cfg):  # the same in an optimizer node's arguments (a wrapped base optimizer, say)
        cfg.train.optimizer.extra = {"_target_": "actpkg.Act"}
    assert identity.inputs(cfg)["train.optimizer.extra.code"]["files"] == str(code / "actpkg.py")
    before_optim = identity.fingerprint(cfg)
    (code / "actpkg.py").write_text("import torch\n\nclass Act(torch.nn.ReLU):\n    pass  # edited\n")
    content.forget()
    assert identity.fingerprint(cfg) != before_optim
    with open_dict(cfg):
        del cfg.train.optimizer.extra
    after = keys()
    assert all(a != b for a, b in zip(after, before))
    _forget("ownpkg")


def test_code_is_found_through_an_editable_installs_finder_without_running_it(tmp_path, monkeypatch):
    """`pip install -e .` of a project may serve its package through a finder of its own on sys.meta_path (not
    on sys.path): the code digest must still find the module, and nothing of the package is run to find it."""
    import importlib.util

    from transferlab import own_code

    pkg = tmp_path / "elsewhere" / "edpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('a package run to find its code')\n")
    (pkg / "nets.py").write_text("class Net: pass\n")

    class EditableFinder:  # what setuptools' editable-install finders do: a name mapped to a folder
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "edpkg":
                return None
            return importlib.util.spec_from_file_location(name, pkg / "__init__.py",
                                                          submodule_search_locations=[str(pkg)])

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, EditableFinder])
    assert own_code.code_path("edpkg.nets.Net") == pkg / "nets.py"
    assert own_code.code_path("edpkg.Net") == pkg
    assert own_code.code_digest("edpkg.nets.Net") not in (own_code.content.MISSING, own_code.code_digest("edpkg.Net"))
    assert "edpkg" not in sys.modules


def test_a_task_may_return_a_dataset_or_its_own_splits(tmp_path, monkeypatch):
    """The other return forms: a torch Dataset with `classes`, and {train, val, test, classes}; its own splits
    are used as given (nothing carved), and the nested subsets are drawn as for a built-in task."""
    import numpy as np

    from transferlab.config import CustomTask, typed
    from transferlab.tasks import build_task

    (tmp_path / "dspkg.py").write_text(textwrap.dedent('''
        import numpy as np
        import torch
        from torch.utils.data import TensorDataset


        def _xy(n, seed):
            rng = np.random.default_rng(seed)
            y = np.arange(n) % 3
            return (rng.random((n, 4)) + y[:, None]).astype(np.float32) / 3, y


        class Points(TensorDataset):
            classes = ["a", "b", "c"]

            def __init__(self, n):
                x, y = _xy(n, 0)
                super().__init__(torch.from_numpy(x), torch.from_numpy(y))


        def splits():
            return {"train": _xy(60, 1), "val": Points(9), "test": _xy(30, 2), "classes": ["a", "b", "c"]}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget("dspkg")
    ds = build_task(typed(CustomTask, {"_target_": "dspkg.Points", "kwargs": {"n": 90}, "name": "pts",
                                       "n_per_class": 4}, "target"), key="target", data_seed=0)
    assert ds.class_names == ["a", "b", "c"] and len(ds.train_indices) == 12 and ds.input_shape == (4,)
    assert len(ds.val_y) + len(ds.test_y) + len(ds.train_y) == 90  # val and test carved from the one split
    own = build_task(typed(CustomTask, {"_target_": "dspkg.splits", "name": "pts", "n_per_class": 2}, "target"),
                     key="target", data_seed=0)
    assert (len(own.train_y), len(own.val_y), len(own.test_y)) == (60, 9, 30)
    bigger = build_task(typed(CustomTask, {"_target_": "dspkg.splits", "name": "pts", "n_per_class": 5}, "target"),
                        key="target", data_seed=0)
    assert set(own.train_indices) <= set(bigger.train_indices)  # nested in n
    assert np.array_equal(own.test_x.numpy(), bigger.test_x.numpy())
    _forget("dspkg")


def test_a_loader_that_reads_data_dir_must_list_its_files(tmp_path, monkeypatch):
    """A loader taking `data_dir` reads files there; without `files` its data would not be in the run's identity
    (a changed dataset, the same fingerprint, a sweep skipping its points as done): one problem on `files`.
    Listed, the data's bytes are in the identity; a loader taking only **kwargs is not refused."""
    import numpy as np

    from transferlab.config import CustomTask, typed
    from transferlab.errors import ConfigError
    from transferlab.run import identity
    from transferlab.tasks import build_task

    (tmp_path / "dirpkg.py").write_text(textwrap.dedent('''
        import numpy as np


        def from_dir(data_dir):
            d = np.load(f"{data_dir}/blobs.npz")
            return d["x"], d["y"]


        def anything(**kwargs):
            assert "data_dir" not in kwargs  # a **kwargs loader is not offered data_dir: it cannot read it
            y = np.arange(60) % 3
            return (y[:, None] + np.linspace(0, 1, 4)[None]).astype(np.float32) / 4, y
    '''))
    data = tmp_path / "data"
    data.mkdir()
    y = np.arange(60) % 3
    np.savez(data / "blobs.npz", x=(y[:, None] + np.zeros((60, 4))).astype(np.float32) / 3, y=y)
    monkeypatch.syspath_prepend(str(tmp_path))
    _forget("dirpkg")
    task = {"_target_": "dirpkg.from_dir", "name": "blobs", "n_per_class": 2}
    with pytest.raises(ConfigError) as e:
        build_task(typed(CustomTask, task, "target"), key="target", data_seed=0, data_dir=str(data))
    assert [p.key for p in e.value.items] == ["target.files"]
    assert e.value.problems[0] == (f"target.files=[]: the files or folders dirpkg.from_dir reads (it takes data_dir), "
                                   f"e.g. target.files=['{data}/<its data>']: their bytes are in the run's identity, "
                                   "so a run is not reused after its data changed")
    listed = typed(CustomTask, {**task, "files": [str(data / "blobs.npz")]}, "target")
    assert len(build_task(listed, key="target", data_seed=0, data_dir=str(data)).train_indices) == 6
    assert identity.task_files(listed, str(data)) == [tmp_path / "dirpkg.py", data / "blobs.npz"]
    kw = typed(CustomTask, {"_target_": "dirpkg.anything", "name": "any", "n_per_class": 2}, "target")
    assert len(build_task(kw, key="target", data_seed=0, data_dir=str(data)).train_indices) == 6
    _forget("dirpkg")
    # The sweeper refuses it up front, from the module's source (nothing of it runs), before skipping any point
    # as done: a changed dataset could otherwise keep old results.
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("-m", "target=custom", "target._target_=dirpkg.from_dir", "target.name=blobs", "seed=0,1",
                  "logger=none", f"paths.data_dir={data}", f"hydra.sweep.dir={tmp_path / 'sw'}", cwd=tmp_path,
                  env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert cli_problems(out.stderr) == [e.value.problems[0]], out.stderr[-2000:]
    assert not (tmp_path / "sw").exists() or not list((tmp_path / "sw").rglob("result.json"))


def test_a_loaders_parameters_are_read_once_per_version_of_its_module(tmp_path, monkeypatch):
    """The sweeper asks every point whether its loader takes data_dir (`own_code.named_parameters`): the module is
    parsed once, not once per point, and read again when it changes."""
    import ast

    from transferlab import own_code

    module = tmp_path / "onceparsed.py"
    module.write_text("def load(n_per_class):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    parses = []
    parse = ast.parse
    monkeypatch.setattr(ast, "parse", lambda src, *a, **k: parses.append(1) or parse(src, *a, **k))
    assert [own_code.named_parameters("onceparsed.load") for _ in range(50)] == [{"n_per_class"}] * 50
    assert len(parses) == 1
    module.write_text("def load(n_per_class, data_dir=None):\n    pass\n")
    assert own_code.named_parameters("onceparsed.load") == {"n_per_class", "data_dir"} and len(parses) == 2


def test_freeze_all_depths_counts_an_own_backbones_blocks(example_pkg):
    from omegaconf import OmegaConf

    from transferlab.backbones import block_count

    cfg = OmegaConf.create({"family": "custom", "_target_": "mypkg.nets.TinyConvNet", "kwargs": {"width": 4}})
    assert block_count(cfg) == 3


@pytest.mark.slow  # ~35 s here: a sweep process and the report, each importing the training stack
def test_run_example_script_sweeps_and_reports_through_the_console_scripts(tmp_path):
    """examples/own_project/run_example.sh as CI runs it, from its folder, with the console scripts first on PATH
    and nothing of the checkout on PYTHONPATH: a shrunk sweep (n=5, seeds 0 and 1 trained as a stacked group of
    the own backbone, fine-tune and scratch) and the report."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "transferlab-train").exists():
        pytest.skip(f"no transferlab-train console script next to {sys.executable}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", TRANSFERLAB_ROOT=str(tmp_path),
               HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    out = subprocess.run([str(EXAMPLE / "run_example.sh"), "pretrain.max_epochs=2", "train.max_epochs=2",
                          "target.n_per_class=5", "seed=0,1", "trainer.enable_progress_bar=false"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "run_example.sh: ok: 4 points and the report" in out.stdout
    sweep = tmp_path / "outputs" / "sweeps" / "mine"
    import json

    records = [json.loads(p.read_text()) for p in sweep.glob("*/result.json")]
    assert {r["backbone"] for r in records} == {"tiny_conv"} and len(records) == 4
    assert all((r.get("group") or {}).get("mode") == "stacked" and r["group"]["size"] == 2 for r in records), [
        r.get("group") for r in records]
    assert (sweep / "report.html").stat().st_size > 0
