"""Files get the mode a plain open() gives (0666 & ~umask), and an unusable paths.cache_dir is a config error.

Atomic writes used to go through mkstemp and kept its 0600: a colleague could not read a result.json, a shared
cached source model or a checkpoint, whatever the umask. Tests run as root, where permission bits do not stop
writes, so the read-only cache folder is made immutable (chattr +i) instead of chmod 555 when root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import cli_problems, run_cli
from transferlab.run.experiment import run
from transferlab.run.lease import LOG_FILE, _log_lease, acquire
from transferlab.run.record import RunRecord
from transferlab.store import verified
from transferlab.store.atomic import atomic_path, current_umask, file_mode, write_json

UMASKS = [0o022, 0o002]


@contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, mask):
    want = 0o666 & ~mask
    with umask(mask):
        assert current_umask() == mask and file_mode() == want
        write_json(tmp_path / "result.json", {"a": 1})
        verified.save(tmp_path / "model.pt", {"w": torch.zeros(2)})
        with atomic_path(tmp_path / "table.csv") as tmp:
            tmp.write_text("a,b\n1,2\n")
        with open(tmp_path / "plain.txt", "w") as f:  # the reference
            f.write("x")
    modes = {p.name: oct(mode(p)) for p in tmp_path.iterdir()}
    assert modes == {n: oct(want) for n in ("result.json", "model.pt", "model.pt.sha256", "table.csv", "plain.txt")}, modes


def test_reading_the_umask_does_not_change_it():
    with umask(0o027):
        for _ in range(3):
            assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what was set


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_run_outputs_and_cached_model_follow_the_umask(make_cfg, tmp_path, mask):
    """A real run (source pretrained into a fresh cache, then fine-tuned): result.json, checkpoints, the cached
    model and every other file it writes are 0666 & ~umask."""
    cache = tmp_path / "cache"
    cfg = make_cfg("pretrain.max_epochs=1", "train.max_epochs=1", "target.n_per_class=5", cache=cache)
    with umask(mask):
        record = run(cfg)
    assert record["status"] == "ok" and record["source_cache"] == "miss"
    run_dir = Path(cfg.paths.output_dir)
    wanted = [run_dir / "result.json", Path(record["source_ckpt"]), Path(record["target_ckpt"]),
              *run_dir.rglob("*.ckpt")]
    assert len(wanted) >= 4 and all(p.exists() for p in wanted), wanted
    files = [p for p in (*run_dir.rglob("*"), *cache.rglob("*")) if p.is_file()]
    wrong = {str(p.relative_to(tmp_path)): oct(mode(p)) for p in files if mode(p) != 0o666 & ~mask}
    assert not wrong, f"not {oct(0o666 & ~mask)}: {wrong}"


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_lease_log_and_slot_lock_follow_the_umask(tmp_path, mask):
    with umask(mask):
        k, lock = acquire(tmp_path, 1, timeout_s=5)
        _log_lease(tmp_path, {"slot": k})
        lock.release()
    want = 0o666 & ~mask
    assert mode(tmp_path / LOG_FILE) == want
    locks = list(tmp_path.glob("slot*.lock"))
    assert all(mode(p) == want for p in locks), {p.name: oct(mode(p)) for p in locks}


# --------------------------------------------------------------------------------------- paths.cache_dir


@contextmanager
def read_only(folder: Path):
    """A folder nobody here can create files in. As root, permission bits do not stop writes, so the folder is
    made immutable (chattr +i) and restored afterwards; otherwise chmod 555."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                         capture_output=True).returncode != 0:
        pytest.skip("root without chattr +i here: no way to make a folder read-only for this test")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _cli_rejects_cache_dir(tmp_path: Path, cache_dir: Path, why: str) -> None:
    before = sorted(p for p in tmp_path.rglob("*") if "outputs" not in p.parts)
    out = run_cli(f"paths.cache_dir={cache_dir}", "pretrain.max_epochs=1", "train.max_epochs=1",
                  cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = cli_problems(out.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"paths.cache_dir='{cache_dir}': "), out.stderr[-3000:]
    assert why in lines[0], lines
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("*.ckpt"))
    assert sorted(p for p in tmp_path.rglob("*") if "outputs" not in p.parts) == before  # nothing new


@pytest.mark.parametrize("case", ["is-a-file", "under-a-file"])
def test_cache_dir_that_is_or_lies_under_a_file_is_one_config_error(tmp_path, case):
    f = tmp_path / "not_a_folder"
    f.write_text("a file\n")
    cache_dir = f if case == "is-a-file" else f / "cache"
    _cli_rejects_cache_dir(tmp_path, cache_dir, "it is a file" if case == "is-a-file" else f"{f} is a file")
    assert f.read_text() == "a file\n"


def test_read_only_cache_dir_is_one_config_error(tmp_path):
    with read_only(tmp_path / "ro") as ro:
        _cli_rejects_cache_dir(tmp_path, ro / "cache", "a folder this user can write")
        assert list(ro.iterdir()) == []


def test_a_read_only_run_folder_is_one_line_and_no_traceback(tmp_path):
    with read_only(tmp_path / "ro") as ro:
        out = run_cli(f"hydra.run.dir={ro / 'run'}", "pretrain.max_epochs=1", "train.max_epochs=1", cwd=tmp_path,
                      timeout=300)
        assert out.returncode == 1, out.stderr[-3000:]
        assert "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr
        (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("transferlab:")]
        assert line.startswith("transferlab: nothing was run: ") and f"Operation not permitted: {ro / 'run'}" in line, line
        assert list(ro.iterdir()) == []


@contextmanager
def full_disk(folder: Path, size: str = "1M"):
    """A small tmpfs at `folder`, filled but for a few KB: a disk that fills during a run. Skips without mount."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={folder / 'fill'}", "bs=1k", "count=900"], capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_disk_that_fills_during_the_run_is_one_line_and_a_failed_record(tmp_path):
    with full_disk(tmp_path / "small") as small:
        run_dir = small / "run"
        out = run_cli(f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "pretrain.max_epochs=1",
                      "train.max_epochs=2", "trainer.enable_progress_bar=false", cwd=tmp_path, timeout=300)
        assert out.returncode == 1, out.stderr[-3000:]
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "transferlab: run failed: DiskError: No space left on device" in out.stderr, out.stderr[-3000:]
        if (run_dir / "result.json").exists():  # when the small record still fits, it says why
            record = RunRecord.read(run_dir / "result.json")
            assert record.status == "failed" and record.error.startswith("DiskError: No space left on device")
