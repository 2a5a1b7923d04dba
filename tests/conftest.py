"""Shared test helpers: compose the real configs (shrunk for speed), run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# Shrinks every run: few epochs, no progress bar. Tests add their own overrides after these.
FAST = ["pretrain.max_epochs=4", "train.max_epochs=4", "trainer.enable_progress_bar=false"]


def compose_cfg(overrides: list[str], run_dir: Path, cache_dir: Path | None = None):
    """Compose conf/config.yaml exactly as the CLI would, with output/cache dirs in tmp. A value the schema refuses
    while composing (a wrong type, a value outside a closed choice) raises its ConfigError, as the CLI reports it;
    the composition error is its __cause__."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from transferlab.config import config_error

    GlobalHydra.instance().clear()
    cache_dir = cache_dir or run_dir.parent / "cache"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
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
