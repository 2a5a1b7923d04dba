"""The CLI as a user runs it: python -m transferlab.train with overrides."""

import json

from conftest import run_cli

FAST = ["pretrain.max_epochs=2", "train.max_epochs=2", "trainer.enable_progress_bar=false"]


def test_cli_run_prints_block_summary_and_writes_result(tmp_path):
    out = run_cli(*FAST, "transfer.cut=3", "transfer.freeze=2", "target.n_per_class=10", "seed=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    # Lightning's summary, one row per block, with trainable and frozen counts (Heaton's total vs trainable).
    assert "Trainable" in text and "Frozen" in text and "net.backbone.blocks.conv2" in text
    results = list((tmp_path / "outputs" / "runs").rglob("result.json"))
    assert len(results) == 1 and str(results[0]) in text.replace("\n", "")
    rec = json.loads(results[0].read_text())
    assert (rec["cut"], rec["freeze"], rec["n_per_class"], rec["seed"], rec["n_train"]) == (3, 2, 10, 1, 50)
    assert rec["source_cache"] == "miss" and (tmp_path / "outputs" / "cache" / "source").is_dir()


def test_cli_scratch_preset(tmp_path):
    out = run_cli(*FAST, "transfer=scratch", "target.n_per_class=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads(next((tmp_path / "outputs").rglob("result.json")).read_text())
    assert rec["transfer"] == "scratch" and rec["cut"] == 0 and rec["source_cache"] == "unused"
    # The CLI leaves with os._exit (no interpreter teardown): everything written before that is complete on disk.
    run_dir = next((tmp_path / "outputs").rglob("result.json")).parent
    assert "Loaded model weights from the checkpoint" in (run_dir / "train.log").read_text().splitlines()[-1]
    assert "test/acc" in (run_dir / "logs" / "target" / "metrics.csv").read_text().splitlines()[0]


def test_fast_exit_keeps_exit_codes(capsys):
    from transferlab.train import _exit_code

    assert [_exit_code(SystemExit(c)) for c in (None, 0, 2)] == [0, 0, 2]
    assert _exit_code(SystemExit("no such file")) == 1 and "no such file" in capsys.readouterr().err
