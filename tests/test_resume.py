"""Crashes and hostile files: SIGKILL + same command resumes, NaN fails cleanly, pickles with code are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import Exploit, count_epochs
from transferlab.errors import ConfigError, NonFiniteLossError
from transferlab.run.experiment import run
from transferlab.store import source_cache
from transferlab.store.safe_load import WeightsError, load_checkpoint
from transferlab.training.checkpoints import SafeCheckpointIO

# Small enough to be quick, long enough (8 epochs x 25 steps) to be killed in the middle.
RESUMABLE = ["transfer=scratch", "target.n_per_class=40", "train.batch_size=8", "train.max_epochs=8",
             "trainer.enable_progress_bar=false", "checkpoint.every_s=0"]  # last.ckpt after every epoch


def _train_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "transferlab.train", *RESUMABLE, f"hydra.run.dir={run_dir}"]


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "TRANSFERLAB_ROOT": str(root), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _saved_epoch(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


@pytest.mark.slow  # three Python processes: ~65 s on the shared 2-core box, most of it imports
def test_sigkill_then_same_command_resumes_to_the_uninterrupted_result(tmp_path, make_cfg):
    killed_dir = tmp_path / "runs" / "killed"
    victim = subprocess.Popen(_train_cmd(killed_dir), cwd=tmp_path, env=_env(tmp_path),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, deadline = killed_dir / "checkpoints" / "last.ckpt", time.time() + 240
    while victim.poll() is None and time.time() < deadline:
        if last.exists() and _saved_epoch(last) >= 1:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    assert not (killed_dir / "result.json").exists()
    assert 1 <= _saved_epoch(last) < 7

    again = subprocess.Popen(_train_cmd(killed_dir), cwd=tmp_path, env=_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Meanwhile the same experiment uninterrupted, in this process and with the same thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = run(make_cfg(*RESUMABLE, run="reference"))
    finally:
        torch.set_num_threads(threads)
    assert again.wait(timeout=300) == 0, again.stderr.read()[-3000:]
    resumed = json.loads((killed_dir / "result.json").read_text())
    assert resumed["status"] == whole["status"] == "ok"
    assert resumed["resumed_from"] == str(last) and whole["resumed_from"] is None
    for key in ("n_train", "n_val", "n_test", "train_indices", "trainable_params"):
        assert resumed[key] == whole[key], key
    assert resumed["n_train"] == 200 and resumed["metrics"]["epochs"] == whole["metrics"]["epochs"] == 8
    assert len(resumed["metrics"]["val/acc_history"]) == 8
    # Same weights, batch order and random stream after the restart: the curves agree (bit for bit on CPU).
    assert resumed["metrics"]["val/loss_history"] == pytest.approx(whole["metrics"]["val/loss_history"], abs=1e-6)
    assert resumed["metrics"]["test/acc"] == pytest.approx(whole["metrics"]["test/acc"], abs=1e-6)


def test_crash_mid_training_then_rerun_resumes(make_cfg, monkeypatch):
    """In-process twin of the SIGKILL test (fast suite): a crash after epoch 2, then the same config again."""
    from transferlab.training import callbacks

    def crash(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(callbacks.FailOnNonFinite, "on_train_epoch_end", crash, raising=False)
    cfg = make_cfg(*RESUMABLE, "train.max_epochs=5", run="crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    failed = json.loads((Path(cfg.paths.output_dir) / "result.json").read_text())
    assert failed["status"] == "failed" and "simulated crash" in failed["error"]
    monkeypatch.undo()
    started = count_epochs(monkeypatch)
    resumed = run(make_cfg(*RESUMABLE, "train.max_epochs=5", run="crashed"))
    assert resumed["resumed_from"].endswith("last.ckpt") and started[0] >= 2 and started[-1] == 4, started
    logs = Path(cfg.paths.output_dir) / "logs" / "target"
    before = [ln.split(",")[0] for ln in (logs / "metrics.part1.csv").read_text().splitlines()[1:]]
    after = [ln.split(",")[0] for ln in (logs / "metrics.csv").read_text().splitlines()[1:]]
    assert before[0] == "0" and "4" in after  # the first attempt's CSV rows survive the resume
    whole = run(make_cfg(*RESUMABLE, "train.max_epochs=5", run="whole"))
    assert resumed["status"] == "ok" and resumed["metrics"]["epochs"] == whole["metrics"]["epochs"] == 5
    assert (resumed["n_train"], resumed["n_val"], resumed["n_test"]) == (whole["n_train"], whole["n_val"],
                                                                         whole["n_test"])
    assert resumed["metrics"]["val/loss_history"] == whole["metrics"]["val/loss_history"]
    assert resumed["metrics"]["test/acc"] == whole["metrics"]["test/acc"]


def test_crash_during_source_pretraining_resumes_it(make_cfg, monkeypatch, tmp_path):
    from transferlab.training import callbacks

    def crash(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")

    args = ["target.n_per_class=5", "pretrain.max_epochs=3", "train.max_epochs=1", "pretrain.batch_size=128",
            "checkpoint.every_s=0"]
    monkeypatch.setattr(callbacks.FailOnNonFinite, "on_train_epoch_end", crash, raising=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_cfg(*args, run="pre", cache=tmp_path / "cache"))
    assert not list((tmp_path / "cache").rglob("model.pt"))
    monkeypatch.undo()
    started = count_epochs(monkeypatch)
    rec = run(make_cfg(*args, run="pre", cache=tmp_path / "cache"))
    assert rec["status"] == "ok" and rec["source_cache"] == "miss"
    assert rec["source_metrics"]["epochs"] == 3
    # Pretraining went on from its last.ckpt (epoch >= 1, not 0) up to epoch 2; then the target fit from 0.
    assert started[0] >= 1 and started[:-1] == list(range(started[0], 3)) and started[-1] == 0, started


def test_rerun_with_another_config_in_the_same_dir_is_refused(make_cfg):
    first = run(make_cfg("transfer=scratch", "target.n_per_class=5", "train.max_epochs=2", run="same"))
    assert first["status"] == "ok"
    result = Path(first["target_ckpt"]).parents[1] / "result.json"
    before = result.read_bytes()
    with pytest.raises(ConfigError) as err:
        run(make_cfg("transfer=scratch", "target.n_per_class=5", "train.max_epochs=2", "train.lr=0.01", run="same"))
    assert err.value.problems[0].startswith("paths.output_dir=") and "different configuration" in str(err.value)
    assert result.read_bytes() == before
    # The same config again is a resume of a finished run: nothing retrains, same answer.
    again = run(make_cfg("transfer=scratch", "target.n_per_class=5", "train.max_epochs=2", run="same"))
    assert again["metrics"]["val/acc_history"] == first["metrics"]["val/acc_history"]
    assert again["metrics"]["epochs"] == 2


def test_stale_pretraining_checkpoint_of_another_source_config_is_refused(make_cfg):
    cfg = make_cfg("target.n_per_class=5", run="stale")
    stale = Path(cfg.paths.output_dir) / "source" / "checkpoints"
    stale.mkdir(parents=True)
    torch.save({"epoch": 1, "callbacks": {"RunIdentity": {"fingerprint": "0123456789abcdef"}}}, stale / "last.ckpt")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.problems[0].startswith("paths.output_dir=") and "0123456789abcdef" in err.value.problems[0]
    assert not (Path(cfg.paths.output_dir) / "result.json").exists()


def test_malicious_pickles_are_refused_everywhere_we_load(make_cfg, tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": Exploit(marker)}, evil)
    with pytest.raises(WeightsError, match="refused"):
        load_checkpoint(evil)
    with pytest.raises(WeightsError, match="refused"):
        source_cache.load_state(evil)
    with pytest.raises(WeightsError, match="refused"):  # what Lightning calls for trainer.fit/test(ckpt_path=...)
        SafeCheckpointIO().load_checkpoint(evil)
    # A planted last.ckpt in the run dir: refused at validation, before anything runs or is written.
    cfg = make_cfg("transfer=scratch", "target.n_per_class=5", run="planted")
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "last.ckpt").write_bytes(evil.read_bytes())
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert err.value.problems[0].startswith("paths.output_dir=") and "refused" in err.value.problems[0]
    assert not (Path(cfg.paths.output_dir) / "result.json").exists()
    assert not marker.exists(), "unpickling ran code"


def test_nan_loss_stops_the_run_with_status_failed(make_cfg, tmp_path):
    cfg = make_cfg("transfer=scratch", "target.n_per_class=5", "train/optimizer=sgd", "train.lr=1e30",
                   "train.max_epochs=20", run="nan")
    with pytest.raises(NonFiniteLossError):
        run(cfg)
    rec = json.loads((tmp_path / "nan" / "result.json").read_text())
    assert rec["status"] == "failed"
    assert rec["error"].startswith("NonFiniteLossError: train/loss is") and "lower the learning rate" in rec["error"]
    assert rec["metrics"] == {}


@pytest.mark.slow
def test_wandb_online_without_network_falls_back_offline(make_cfg, tmp_path):
    """No key, unreachable server: init gives up after logger.wandb.init_timeout and the run logs offline."""
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        rec = run(make_cfg("transfer=scratch", "target.n_per_class=5", "train.max_epochs=1", "logger=wandb",
                           "logger.wandb.mode=online", "logger.wandb.init_timeout=5", run="wb"))
        took = time.perf_counter() - t0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert rec["status"] == "ok" and took < 120
    assert list((tmp_path / "wb" / "wandb").glob("offline-run-*"))


def test_checkpoints_are_written_atomically_and_read_safely(make_cfg, tmp_path, monkeypatch):
    from transferlab.store import verified
    from transferlab.training import checkpoints

    loaded: list[str] = []
    real_load = verified.load

    def spy(path, *args, **kwargs):
        loaded.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.verified, "load", spy)
    rec = run(make_cfg("transfer=scratch", "target.n_per_class=3", "train.max_epochs=2", run="atomic"))
    # Lightning's own loading (trainer.test from the best checkpoint) went through SafeCheckpointIO (verified).
    assert rec["target_ckpt"] in loaded
    ckpts = tmp_path / "atomic" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "best.ckpt.sha256", "last.ckpt",
                                                        "last.ckpt.sha256"]  # no temp files left over
    for name in ("best.ckpt", "last.ckpt"):
        assert verified.problem(ckpts / name) is None
    assert rec["target_ckpt"] == str(ckpts / "best.ckpt")
    assert load_checkpoint(ckpts / "last.ckpt")["epoch"] == 1


@pytest.mark.parametrize("every_s, writes", [(0, 4), (3600, 1)])
def test_last_ckpt_is_written_every_interval_and_after_the_last_epoch(make_cfg, tmp_path, monkeypatch, every_s, writes):
    from transferlab.training import checkpoints

    saved: list[tuple[str, int]] = []
    real = checkpoints.SafeCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        saved.append((Path(path).name, int(checkpoint["epoch"])))
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(checkpoints.SafeCheckpointIO, "save_checkpoint", spy)
    rec = run(make_cfg("transfer=scratch", "target.n_per_class=3", f"checkpoint.every_s={every_s}", run="every"))
    last = [epoch for name, epoch in saved if name == "last.ckpt"]
    assert len(last) == writes and last[-1] == 3  # FAST: 4 epochs; the last write is the fit's end
    best = load_checkpoint(Path(rec["target_ckpt"]))
    assert "optimizer_states" not in best and best["state_dict"]  # best.ckpt: the weights the result is tested on
    assert "optimizer_states" in load_checkpoint(tmp_path / "every" / "checkpoints" / "last.ckpt")
