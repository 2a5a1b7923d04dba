"""Shared test helpers: compose the real configs (shrunk for speed), run the real CLI, read what a run wrote.

Each helper is defined here once; test modules import them (`from conftest import ...`). torch and transferlab are
imported inside the helpers, so modules that need neither do not pay for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# Shrinks every run: few epochs, no progress bar. Tests add their own overrides after these.
# Validation after every epoch (train.val_every_steps=1): the tests of selection, curves, resume and caches read
# a point per epoch of these 4-epoch fits; tests/test_val_schedule.py covers the default schedule (8 steps).
FAST = ["pretrain.max_epochs=4", "train.max_epochs=4", "trainer.enable_progress_bar=false",
        "train.val_every_steps=1"]
# A tiny small_cnn (three conv blocks, one dense block) for tests that build nets directly, without the conf files.
SMALL_CNN = OmegaConf.create({"name": "small_cnn", "channels": [8, 16, 16], "hidden": [32], "dropout": 0.0},
                             flags={"readonly": True})  # shared by every module: none may change it
RESNET18 = OmegaConf.create({"family": "resnet", "name": "resnet18", "weights": None}, flags={"readonly": True})


def group_file(group: str, option: str, node: str = "train") -> dict | None:
    """A `train/optimizer` or `train/scheduler` option as the node it composes to (None: `none`), read from conf/,
    for tests that build a TransferModule without composing a whole config."""
    data = OmegaConf.to_container(OmegaConf.load(CONF / node / group / f"{option}.yaml"))
    return data or None


def optim(**over) -> dict:
    """A `train` mapping as TransferModule reads it: the default optimizer (adamw), no schedule, as conf/ has them."""
    return {"lr": 0.02, "weight_decay": 0.01, "decay_norm_and_bias": False, "optimizer": group_file("optimizer", "adamw"),
            "scheduler": None, "max_epochs": 2, **over}


def compose_cfg(overrides: list[str], run_dir: Path, cache_dir: Path | None = None):
    """Compose conf/config.yaml exactly as the CLI would (from `pkg://transferlab.conf`, transferlab/conf_source.py),
    with output/cache dirs in tmp. A value the schema refuses while composing (a wrong type, a value outside a closed
    choice) raises its ConfigError, as the CLI reports it; the composition error is its __cause__."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from transferlab import conf_source
    from transferlab.config import config_error

    GlobalHydra.instance().clear()
    cache_dir = cache_dir or run_dir.parent / "cache"
    with conf_source.initialize():
        try:
            return compose("config", overrides=[*FAST, f"paths.output_dir={run_dir}", f"paths.cache_dir={cache_dir}",
                                                f"paths.root_dir={run_dir.parent}", *overrides])
        except ConfigCompositionException as e:
            error = config_error(e)
            if error is None:
                raise
            raise error from e


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One source-model cache for the whole session, so tests pretrain each source once."""
    return tmp_path_factory.mktemp("source_cache")


@pytest.fixture
def make_cfg(tmp_path, shared_cache):
    def _make(*overrides: str, run: str = "run", cache: Path | None = None):
        return compose_cfg(list(overrides), tmp_path / run, cache or shared_cache)
    return _make


def run_cli(*args: str, cwd: Path, module: str = "transferlab.train", timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an entry point in a fresh process, as a user would (outputs under cwd)."""
    full_env = {**os.environ, "TRANSFERLAB_ROOT": str(cwd), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def paired_results(sweep: Path, other: Path) -> list[tuple[dict, dict]]:
    """(record, the same point's record in `other`) for every point of `sweep` (its top-level result.json files,
    by folder name): two ways of running one sweep, compared point by point."""
    import json

    return [(json.loads(p.read_text()), json.loads((other / p.parent.name / "result.json").read_text()))
            for p in sorted(sweep.glob("*/result.json"))]


def cli_problems(stderr: str) -> list[str]:
    """The problem lines the CLI printed for a ConfigError (`  - key=value: allowed`), without their bullet."""
    return [ln[4:] for ln in stderr.splitlines() if ln.startswith("  - ")]


def quadrant_images(path: Path, n: int, size: int, k: int = 4) -> Path:
    """A generated k-class image task written to `path` (.npz, 3 x size x size, float in [0, 1] as setup checks):
    each class a colour tint plus a bright quadrant, with noise, seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(k), n // k)
    x = rng.normal(0.0, 0.3, size=(n, 3, size, size)).astype(np.float32)
    h = size // 2
    for c in range(k):
        x[y == c, c % 3] += 0.8
        r, q = divmod(c, 2)
        x[y == c, :, r * h:(r + 1) * h, q * h:(q + 1) * h] += 1.0
    x = (x - x.min()) / (x.max() - x.min())
    np.savez(path, x_train=x, y_train=y)
    return path


class Exploit:
    """A pickle that runs a command when unpickled (what a malicious 'weights' file does): touches `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------ state dicts and checkpoints


def ckpt_state(path):
    """The LightningModule state dict of a checkpoint a run wrote (read weights-only, on the CPU)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def source_state(backbone) -> dict:
    """A backbone's block tensors under the keys a checkpoint holds them by (`BACKBONE_PREFIX` + block-relative
    name): source weights as `build_target_net` takes them. One block's back: `transfer.network.block_state`."""
    from transferlab.transfer.network import BACKBONE_PREFIX

    return {BACKBONE_PREFIX + k: v for k, v in backbone.blocks.state_dict().items()}


def same_tensors(a: dict, b: dict) -> bool:
    """Same keys, and every tensor equal bit for bit."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def random_source_net(cfg, seed: int = 0):
    """(prepared run, target net, source backbone) as a run would build them, with a seeded random backbone as the
    source model (no pretraining)."""
    import torch

    from transferlab.backbones import build_backbone
    from transferlab.run.setup import prepare
    from transferlab.transfer.plan import build_target_net

    prep = prepare(cfg)
    torch.manual_seed(seed)
    source = build_backbone(cfg.backbone, prep.target.input_shape)
    net = build_target_net(build_backbone(cfg.backbone, prep.target.input_shape), prep.plan, source_state(source),
                           prep.target.num_classes)
    return prep, net, source


def recomputed_test_acc(cfg, ckpt) -> float:
    """Accuracy on the target's test split of the model in `ckpt`, computed here rather than by the run: the net
    rebuilt from `cfg`, every tensor of the checkpoint loaded, one argmax over all test inputs (under bf16 autocast
    when the run used bf16-mixed). A run's `test/acc` must be this number for its `target_ckpt`."""
    import torch

    from transferlab.backbones import build_backbone
    from transferlab.run.setup import prepare
    from transferlab.transfer.plan import build_target_net

    state, prep = ckpt_state(ckpt), prepare(cfg)
    task = prep.target
    net = build_target_net(build_backbone(cfg.backbone, task.input_shape, load_weights=False), prep.plan, state,
                           task.num_classes)
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})  # strict
    net.eval()
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        predicted = net(task.test_x).argmax(dim=1)
    return float((predicted == task.test_y).float().mean())


# ------------------------------------------------------------------ runs in this process


def count_epochs(monkeypatch) -> list[int]:
    """The epochs whose training starts from now on (source pretraining and target fits alike), in order."""
    from transferlab.training import callbacks

    started: list[int] = []
    monkeypatch.setattr(callbacks.FailOnNonFinite, "on_train_epoch_start",
                        lambda self, trainer, pl_module: started.append(trainer.current_epoch), raising=False)
    return started


@pytest.fixture
def fresh_feature_memory():
    """The feature cache's in-process store, empty before and after the test (a module opts in with
    `pytestmark = pytest.mark.usefixtures("fresh_feature_memory")`)."""
    from transferlab.store import feature_cache

    feature_cache.clear_memory()
    yield
    feature_cache.clear_memory()
