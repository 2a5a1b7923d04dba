"""Trust in what is stored: a damaged or moved file never yields a silent wrong `status: ok` number.

Every derived file (cached source model, cached features, last.ckpt, best.ckpt) is verified when read and
recomputed when it fails; a copied run dir re-tests its own best.ckpt. Each test damages one file the way a disk,
a kill or a copy would, and compares the outcome with a clean run's exact numbers.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from conftest import Exploit, count_epochs
from transferlab.run.experiment import run
from transferlab.store import feature_cache, verified
from transferlab.store.safe_load import CorruptFileError, load_checkpoint
from transferlab.training import callbacks, checkpoints

SOURCE = ("target.n_per_class=5", "transfer.freeze=all", "pretrain.max_epochs=1", "pretrain.batch_size=128",
          "train.max_epochs=2")
FEATURES = ("source=none", "transfer=linear_probe", "train.feature_cache=on", "target.n_per_class=5",
            "train.max_epochs=2")
SCRATCH = ("transfer=scratch", "target.n_per_class=5", "train.max_epochs=3", "checkpoint.every_s=0")

pytestmark = pytest.mark.usefixtures("fresh_feature_memory")


def _flip(path: Path) -> bytes:
    """Flip one byte in the middle of the file (inside tensor data: torch.load still succeeds)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def _truncate(path: Path) -> bytes:
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


def _seal(path: Path) -> None:
    """Write a valid checksum for whatever `path` holds now (a planted file that passes verification)."""
    verified.sidecar(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")


def _warnings(caplog) -> list[str]:
    """Warnings about damaged files (cache entries, checkpoints); not about the runs' results (these tiny runs may
    predict a single class, which the run warns about)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and r.name.startswith(("transferlab.store", "transferlab.training"))]


def _aside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(f"{path.name}.corrupt-*") if not p.name.endswith(verified.SUFFIX))


def _same_numbers(a: dict, b: dict) -> None:
    for key in ("test/acc", "test/loss", "val/acc", "val/acc_history", "val/loss_history"):
        assert a["metrics"][key] == b["metrics"][key], key


# ------------------------------------------------------------------ verified cache entries (no training)


def _make(calls: list[int]):
    def make():
        calls.append(1)
        return {"w": torch.arange(4096, dtype=torch.float32)}, {"calls": len(calls)}
    return make


@pytest.mark.parametrize("damage, reason", [
    ("flip", "checksum mismatch"),
    ("truncate", "corrupt or not a torch file"),
    ("no checksum", "no checksum file x.pt.sha256"),
    ("garbage checksum", "holds no sha256"),
    ("refused", "refused"),
])
def test_a_damaged_cache_entry_is_set_aside_recomputed_once_then_hit(tmp_path, caplog, damage, reason):
    path, calls = tmp_path / "entry" / "x.pt", []
    assert verified.get_or_make(path, _make(calls))[1] == "miss"
    assert verified.problem(path) is None and (path.parent / "meta.json").exists()
    marker = tmp_path / "PWNED"
    if damage == "flip":
        bad = _flip(path)
    elif damage == "truncate":
        bad = _truncate(path)
    elif damage == "no checksum":
        verified.sidecar(path).unlink()
        bad = path.read_bytes()
    elif damage == "garbage checksum":
        verified.sidecar(path).write_text("not a checksum\n")
        bad = path.read_bytes()
    else:  # a planted pickle with code, even with a checksum that matches: never unpickled as code, set aside
        torch.save({"w": Exploit(marker)}, path)
        _seal(path)
        bad = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        obj, status = verified.get_or_make(path, _make(calls))
    assert status == "miss" and len(calls) == 2 and torch.equal(obj["w"], torch.arange(4096, dtype=torch.float32))
    (message,) = _warnings(caplog)
    assert str(path) in message and reason in message and "recomputing" in message
    (aside,) = _aside(path)
    assert aside.read_bytes() == bad, "the damaged file is kept aside as it was"
    assert not marker.exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again, status = verified.get_or_make(path, _make(calls))
    assert status == "hit" and len(calls) == 2 and torch.equal(again["w"], obj["w"]) and not _warnings(caplog)


def test_saved_files_are_hashed_as_written_never_read_back(tmp_path, monkeypatch):
    """`verified.save` (cache entries) and `SafeCheckpointIO` (checkpoints) hash the bytes on their way to the temp
    file: the sidecar is the sha256 of the file's bytes, without reading the file back; a checkpoint's bytes are
    the ones Lightning's own save writes."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    def no_read_back(f):
        raise AssertionError("a file was read back to be hashed")

    ckpt = {"state_dict": {"w": torch.randn(300, 300), "b": torch.arange(7)}, "epoch": 3}
    TorchCheckpointIO().save_checkpoint(ckpt, tmp_path / "lightning.ckpt")
    monkeypatch.setattr(verified, "_sha256", no_read_back)
    verified.save(tmp_path / "model.pt", ckpt)
    checkpoints.SafeCheckpointIO().save_checkpoint(ckpt, tmp_path / "last.ckpt")
    monkeypatch.undo()
    for name in ("model.pt", "last.ckpt"):
        data = (tmp_path / name).read_bytes()
        assert verified.sidecar(tmp_path / name).read_text() == f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        assert verified.problem(tmp_path / name) is None
        assert torch.equal(verified.load(tmp_path / name)["state_dict"]["w"], ckpt["state_dict"]["w"])
    assert (tmp_path / "last.ckpt").read_bytes() == (tmp_path / "lightning.ckpt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256", "lightning.ckpt",
                                                          "model.pt", "model.pt.sha256"]  # no temp file left


def test_a_reader_waits_for_a_writer_between_its_file_and_its_checksum(tmp_path, caplog):
    """Outside the lock a payload without checksum may be a write in progress: decided under the lock only."""
    from filelock import FileLock

    path, calls = tmp_path / "entry" / "x.pt", []
    path.parent.mkdir()
    writer = FileLock(str(path.parent / verified.LOCK))
    writer.acquire()
    torch.save({"w": torch.ones(3)}, path)  # the writer's payload is in place, its checksum not yet
    out: dict = {}
    reader = threading.Thread(target=lambda: out.update(got=verified.get_or_make(path, _make(calls))))
    with caplog.at_level(logging.WARNING):
        reader.start()
        time.sleep(0.5)
        assert reader.is_alive(), "the reader must wait for the lock, not judge the entry"
        _seal(path)
        writer.release()
        reader.join(30)
    assert out["got"][1] == "hit" and torch.equal(out["got"][0]["w"], torch.ones(3))
    assert not calls and not _aside(path) and not _warnings(caplog)


# ------------------------------------------------------------------ cache entries in real runs


def test_flipped_bytes_in_a_cached_source_model_are_caught_and_it_is_retrained(make_cfg, tmp_path, caplog):
    cache = tmp_path / "cache"
    clean = run(make_cfg(*SOURCE, run="clean", cache=cache))
    model = Path(clean["source_ckpt"])
    assert clean["source_cache"] == "miss" and model.name == "model.pt"
    original = load_checkpoint(model)["state_dict"]
    bad = _flip(model)
    with caplog.at_level(logging.WARNING):
        rec = run(make_cfg(*SOURCE, run="after", cache=cache))
    assert rec["source_cache"] == "miss" and rec["source_ckpt"] == str(model)
    (message,) = _warnings(caplog)
    assert str(model) in message and "checksum mismatch" in message
    (aside,) = _aside(model)
    assert aside.read_bytes() == bad
    retrained = load_checkpoint(model)["state_dict"]
    assert all(torch.equal(retrained[k], v) for k, v in original.items())
    _same_numbers(rec, clean)
    assert run(make_cfg(*SOURCE, run="next", cache=cache))["source_cache"] == "hit"


def _resealed(model: Path, change) -> None:
    """Rewrite a cached source model through `change(obj)` and seal it again: bytes that pass their checksum."""
    obj = load_checkpoint(model)
    change(obj)
    verified.save(model, obj)


def _other_layout(obj):
    key = next(k for k, v in obj["state_dict"].items() if v.ndim == 4)
    obj["state_dict"][key] = torch.zeros(1, *obj["state_dict"][key].shape[1:])


@pytest.mark.parametrize("change, reason", [
    (lambda obj: obj["meta"].update(block_names=["a", "b"]), "block names"),
    (lambda obj: obj["meta"].pop("schema"), "entry layout None"),  # an entry written before entries had a layout
    (lambda obj: obj["meta"].update(key="0" * 16), "made for key"),
    (_other_layout, "do not load into small_cnn"),
], ids=["block-names", "no-schema", "other-key", "weights-layout"])
def test_a_resealed_source_entry_that_does_not_fit_the_code_is_set_aside_and_retrained(make_cfg, tmp_path, caplog,
                                                                                        change, reason):
    cache = tmp_path / "cache"
    clean = run(make_cfg(*SOURCE, run="clean", cache=cache))
    model = Path(clean["source_ckpt"])
    _resealed(model, change)
    with caplog.at_level(logging.WARNING):
        rec = run(make_cfg(*SOURCE, run="after", cache=cache))
    assert rec["status"] == "ok" and rec["source_cache"] == "miss"  # retrained, not a traceback
    (message,) = _warnings(caplog)
    assert str(model) in message and reason in message, message
    assert len(_aside(model)) == 1
    _same_numbers(rec, clean)
    assert rec["source_metrics"] == {**clean["source_metrics"], "wall_s": rec["source_metrics"]["wall_s"]}


def test_a_source_model_is_keyed_on_the_versions_that_make_it(make_cfg, tmp_path, monkeypatch):
    """Another torch (an upgrade, or a GPU build beside a CPU one on a shared cache) makes its own entry: the old
    one is neither reused nor replaced, so two environments never retrain each other's, and each entry names the
    versions that made it."""
    from transferlab import versions
    from transferlab.run import identity

    cache = tmp_path / "cache"
    first = run(make_cfg(*SOURCE, run="first", cache=cache))
    env = versions.environment()
    monkeypatch.setattr(versions, "_environment", {**env, "torch": f"{env['torch']}+other"})
    other = run(make_cfg(*SOURCE, run="other", cache=cache))
    assert (first["source_cache"], other["source_cache"]) == ("miss", "miss")
    assert first["source_ckpt"] != other["source_ckpt"] and Path(first["source_ckpt"]).exists()
    assert other["source_metrics"]["made_by"] == versions.versions_of(identity.SOURCE_MADE_BY)
    assert other["source_metrics"]["made_by"]["torch"] == f"{env['torch']}+other"
    monkeypatch.setattr(versions, "_environment", env)
    assert run(make_cfg(*SOURCE, run="again", cache=cache))["source_cache"] == "hit"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_features_file_is_recomputed_and_the_next_run_hits(make_cfg, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    clean = run(make_cfg(*FEATURES, run="clean", cache=cache))
    path = Path(clean["feature_cache"]["path"])
    assert clean["feature_cache"]["status"] == "miss" and path.name == "features.pt"
    original = load_checkpoint(path)
    bad = _flip(path) if damage == "flip" else _truncate(path)
    feature_cache.clear_memory()  # a later process: the disk entry is read
    with caplog.at_level(logging.WARNING):
        rec = run(make_cfg(*FEATURES, run="after", cache=cache))
    assert rec["feature_cache"]["status"] == "miss" and rec["feature_cache"]["path"] == str(path)
    (message,) = _warnings(caplog)
    assert str(path) in message and ("checksum mismatch" if damage == "flip" else "corrupt") in message
    (aside,) = _aside(path)
    assert aside.read_bytes() == bad
    recomputed = load_checkpoint(path)
    assert all(torch.equal(recomputed[k], v) for k, v in original.items())
    _same_numbers(rec, clean)
    feature_cache.clear_memory()
    assert run(make_cfg(*FEATURES, run="next", cache=cache))["feature_cache"]["status"] == "hit"


# ------------------------------------------------------------------ checkpoints


def test_saved_best_model_state_names_files_inside_its_own_folder_only(tmp_path):
    here = tmp_path / "copy" / "checkpoints"
    cb = callbacks.RunLocalCheckpoint(dirpath=str(here), filename="best", monitor="val/acc", mode="max")
    legacy = {"best_model_path": "/elsewhere/run/checkpoints/best.ckpt", "best_model_score": torch.tensor(0.75),
              "dirpath": "/elsewhere/run/checkpoints", "kth_best_model_path": "../../x/best.ckpt",
              "kth_value": torch.tensor(0.75), "best_k_models": {"/elsewhere/run/checkpoints/best.ckpt":
                                                                  torch.tensor(0.75)}, "last_model_path": ""}
    cb.load_state_dict(legacy)
    inside = str(Path(cb.dirpath) / "best.ckpt")
    assert cb.best_model_path == cb.kth_best_model_path == inside and list(cb.best_k_models) == [inside]
    assert float(cb.best_model_score) == 0.75 and cb.last_model_path == ""
    state = cb.state_dict()
    assert state["best_model_path"] == "best.ckpt" and list(state["best_k_models"]) == ["best.ckpt"]
    assert state["dirpath"] == "."


@pytest.mark.parametrize("original", ["deleted", "holds other weights"])
def test_a_copied_run_dir_re_tests_its_own_best_checkpoint(make_cfg, tmp_path, monkeypatch, original):
    first = run(make_cfg(*SCRATCH, run="orig"))
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    if original == "deleted":
        shutil.rmtree(tmp_path / "orig")
    else:  # another model at the original path, with a valid checksum: only its location could make it used
        best = tmp_path / "orig" / "checkpoints" / "best.ckpt"
        ckpt = load_checkpoint(best)
        ckpt["state_dict"] = {k: torch.zeros_like(v) for k, v in ckpt["state_dict"].items()}
        verified.save(best, ckpt)
    started = count_epochs(monkeypatch)
    again = run(make_cfg(*SCRATCH, run="copy"))
    ckpts = tmp_path / "copy" / "checkpoints"
    assert started == [], "a finished run: nothing retrains, its best model is re-tested"
    assert again["status"] == "ok" and again["target_ckpt"] == str(ckpts / "best.ckpt")
    assert again["resumed_from"] == str(ckpts / "last.ckpt")
    _same_numbers(again, first)


@pytest.mark.parametrize("file, damage, reason", [
    ("last.ckpt", "truncate", "corrupt or not a torch file"),
    ("last.ckpt", "flip", "checksum mismatch"),
    ("last.ckpt", "no checksum", "no checksum file last.ckpt.sha256"),
    ("best.ckpt", "flip", "checksum mismatch"),
])
def test_a_damaged_checkpoint_starts_the_fit_over_with_one_warning(make_cfg, tmp_path, monkeypatch, caplog,
                                                                   file, damage, reason):
    first = run(make_cfg(*SCRATCH, run="r"))
    ckpts = tmp_path / "r" / "checkpoints"
    path = ckpts / file
    if damage == "no checksum":
        verified.sidecar(path).unlink()
        bad = path.read_bytes()
    else:
        bad = _flip(path) if damage == "flip" else _truncate(path)
    started = count_epochs(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = run(make_cfg(*SCRATCH, run="r"))  # validation does not refuse it: not a config problem
    assert started == [0, 1, 2] and again["resumed_from"] is None and again["status"] == "ok"
    (message,) = _warnings(caplog)
    assert str(path) in message and reason in message and "starts over from epoch 0" in message
    (aside,) = _aside(path)
    assert aside.read_bytes() == bad
    if file == "best.ckpt":  # last.ckpt resumes toward that best model: set aside with it
        assert len(_aside(ckpts / "last.ckpt")) == 1
    assert verified.problem(ckpts / "last.ckpt") is None and verified.problem(ckpts / "best.ckpt") is None
    _same_numbers(again, first)


def test_a_damaged_source_pretraining_checkpoint_restarts_pretraining(make_cfg, tmp_path, monkeypatch, caplog):
    args = ("target.n_per_class=5", "transfer.freeze=all", "pretrain.max_epochs=2", "pretrain.batch_size=128",
            "train.max_epochs=2", "checkpoint.every_s=0")
    clean = run(make_cfg(*args, run="clean", cache=tmp_path / "c1"))
    # A pretraining killed in this run dir whose last.ckpt was then cut short (disk full, a copy interrupted).
    planted = tmp_path / "damaged" / "source" / "checkpoints"
    planted.mkdir(parents=True)
    for name in ("last.ckpt", "last.ckpt.sha256"):
        shutil.copy(tmp_path / "clean" / "source" / "checkpoints" / name, planted / name)
    _truncate(planted / "last.ckpt")
    started = count_epochs(monkeypatch)
    with caplog.at_level(logging.WARNING):
        rec = run(make_cfg(*args, run="damaged", cache=tmp_path / "c2"))
    assert rec["source_cache"] == "miss" and started == [0, 1, 0, 1], "pretraining from epoch 0, then the target"
    (message,) = _warnings(caplog)
    assert str(planted / "last.ckpt") in message and "corrupt" in message
    assert rec["source_metrics"]["test/acc"] == clean["source_metrics"]["test/acc"]
    _same_numbers(rec, clean)


def test_a_best_checkpoint_damaged_during_the_run_fails_it_loudly_and_the_next_attempt_starts_over(
        make_cfg, tmp_path, monkeypatch):
    clean = run(make_cfg(*SCRATCH, run="clean"))
    real = checkpoints.SafeCheckpointIO.save_checkpoint

    def save_then_damage(self, checkpoint, path, storage_options=None):
        real(self, checkpoint, path, storage_options)
        if Path(path).name == "best.ckpt":
            _flip(Path(path))

    monkeypatch.setattr(checkpoints.SafeCheckpointIO, "save_checkpoint", save_then_damage)
    cfg = make_cfg(*SCRATCH, run="r")
    with pytest.raises(CorruptFileError, match="best.ckpt: checksum mismatch"):
        run(cfg)
    failed = (Path(cfg.paths.output_dir) / "result.json").read_text()
    assert '"status": "failed"' in failed and "checksum mismatch" in failed
    monkeypatch.undo()
    started = count_epochs(monkeypatch)
    again = run(make_cfg(*SCRATCH, run="r"))
    assert started == [0, 1, 2] and again["status"] == "ok"
    _same_numbers(again, clean)


def test_a_resumed_run_never_tests_a_best_checkpoint_from_another_epoch_than_its_selection(make_cfg, tmp_path):
    """best.ckpt is written when the selection changes, last.ckpt at most every checkpoint.every_s: a killed
    attempt can leave a best.ckpt from after its last resume point. Where the replayed epochs do not rewrite it
    (non-deterministic kernels), the resumed run would test that file under another epoch's selection. Simulated
    here by a best.ckpt holding epoch 3's model while the selection (fixed_epoch 1) kept epoch 1: the run fails
    loudly instead of reporting epoch 3's numbers, and the next attempt starts over and gives the clean result."""
    overrides = (*SCRATCH, "train.select=fixed_epoch", "train.select_epoch=1")
    clean = run(make_cfg(*overrides, run="clean"))
    cfg = make_cfg(*overrides, run="r")
    first = run(cfg)
    _same_numbers(first, clean)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    io = checkpoints.SafeCheckpointIO()
    best, last = io.load_checkpoint(ckpt_dir / "best.ckpt"), io.load_checkpoint(ckpt_dir / "last.ckpt")
    assert best["epoch"] == 0 and last["epoch"] == 2
    io.save_checkpoint({**best, "epoch": last["epoch"], "state_dict": last["state_dict"]}, ckpt_dir / "best.ckpt")
    (Path(cfg.paths.output_dir) / "result.json").unlink()  # the finished run is re-tested from its last.ckpt
    with pytest.raises(CorruptFileError, match="holds the model after epoch 3, but the resumed selection kept epoch 1"):
        run(make_cfg(*overrides, run="r"))
    assert not (ckpt_dir / "best.ckpt").exists() and not (ckpt_dir / "last.ckpt").exists()
    again = run(make_cfg(*overrides, run="r"))
    assert again["status"] == "ok" and again["selected_epoch"] == 1
    _same_numbers(again, clean)


RESUME_POINTS = ("transfer=scratch", "target.n_per_class=5", "train.max_epochs=6", "checkpoint.every_s=25")


def _resume_clock(monkeypatch) -> None:
    """ResumePoint's clock reads 10 s per epoch started (0-based epoch e: 10 e): with `RESUME_POINTS`
    (every_s=25) a fit from epoch 0 writes its resume points after 1-based epochs 4 and 6 (the last)."""
    now = [0.0]
    monkeypatch.setattr(callbacks, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    for hook in ("on_train_start", "on_train_epoch_start"):  # FailOnNonFinite's run before ResumePoint's
        monkeypatch.setattr(callbacks.FailOnNonFinite, hook,
                            lambda self, trainer, pl_module: now.__setitem__(0, 10.0 * trainer.current_epoch),
                            raising=False)


def _saves(monkeypatch, fail_on=None) -> list[tuple[str, int]]:
    """(file name, 0-based epoch) of every checkpoint written from now on; `fail_on` ((name, epoch)): that write
    raises instead (the process killed just before it)."""
    saves: list[tuple[str, int]] = []
    real = checkpoints.SafeCheckpointIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        if (Path(path).name, checkpoint["epoch"]) == fail_on:
            raise RuntimeError("simulated kill")
        real(self, checkpoint, path, storage_options)
        saves.append((Path(path).name, checkpoint["epoch"]))

    monkeypatch.setattr(checkpoints.SafeCheckpointIO, "save_checkpoint", save)
    return saves


def _copies(monkeypatch) -> list[int]:
    copies: list[int] = []
    real = callbacks._cpu_copy
    monkeypatch.setattr(callbacks, "_cpu_copy", lambda ckpt: copies.append(ckpt["epoch"]) or real(ckpt))
    return copies


def _state(path: Path) -> tuple[int, dict]:
    ckpt = checkpoints.SafeCheckpointIO().load_checkpoint(path)
    return ckpt["epoch"], ckpt["state_dict"]


def _same_model(a: Path, b: Path) -> None:
    (ea, sa), (eb, sb) = _state(a), _state(b)
    assert ea == eb and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("select", ["last", "best_val", "fixed_epoch"])
def test_best_ckpt_is_written_with_the_resume_points_and_holds_the_model_an_eager_write_held(
        make_cfg, tmp_path, monkeypatch, select):
    """The selection changes at validation checks (select=last: at every one); best.ckpt is written only just
    before a resume point (last.ckpt) whose selection is not on disk yet, from a copy taken when the selection
    changed. The result, the selected epoch and best.ckpt's bytes equal a fit writing a resume point (and so
    best.ckpt) after every epoch, the old eager behaviour, which copies nothing."""
    chosen = [f"train.select={select}", *(["train.select_epoch=2"] if select == "fixed_epoch" else [])]
    every_epoch = [o if o != "checkpoint.every_s=25" else "checkpoint.every_s=0" for o in RESUME_POINTS]
    saves, copies = _saves(monkeypatch), _copies(monkeypatch)
    eager = run(make_cfg(*every_epoch, *chosen, run="eager"))
    changes = [e for name, e in saves if name == "best.ckpt"]  # eager: one write per change of selection
    assert [e for name, e in saves if name == "last.ckpt"] == list(range(6)) and not copies
    saves.clear()
    _resume_clock(monkeypatch)
    cfg = make_cfg(*RESUME_POINTS, *chosen, run="deferred")
    deferred = run(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    eager_best = tmp_path / "eager" / "checkpoints" / "best.ckpt"
    assert (ckpts / "best.ckpt").read_bytes() == eager_best.read_bytes()  # the same file, byte for byte
    assert deferred["selected_epoch"] == eager["selected_epoch"]
    _same_numbers(deferred, eager)
    assert [e for name, e in saves if name == "last.ckpt"] == [3, 5]
    at = [i for i, (name, _) in enumerate(saves) if name == "best.ckpt"]
    assert all(saves[i + 1][0] == "last.ckpt" for i in at)  # each just before a resume point
    # one write per resume point whose selection changed since the last write; a copy per change not written
    # at its own validation check
    assert [saves[i][1] for i in at] == sorted({max(e for e in changes if e <= r) for r in (3, 5)
                                                if any(c <= r for c in changes)})
    assert copies == [e for e in changes if e not in (3, 5)]
    if select == "last":
        assert changes == list(range(6)) and [saves[i][1] for i in at] == [3, 5] and copies == [0, 1, 2, 4]
    if select == "fixed_epoch":
        assert changes == [1] and [saves[i][1] for i in at] == [1] and copies == [1]
    assert not (ckpts / callbacks.COMMITTED).exists()


def test_a_fit_ending_without_a_resume_point_writes_its_selection_before_the_test(make_cfg, tmp_path,
                                                                                   monkeypatch):
    """No resume point at all (as a fit whose last epoch is not a validation check has none at its end):
    best.ckpt is written once, when the fit ends, from the copy of the selected epoch's model, before the test."""
    chosen = ("train.select=fixed_epoch", "train.select_epoch=2")
    every_epoch = [o if o != "checkpoint.every_s=25" else "checkpoint.every_s=0" for o in RESUME_POINTS]
    eager = run(make_cfg(*every_epoch, *chosen, run="eager"))
    monkeypatch.setattr(callbacks.ResumePoint, "on_validation_end", lambda self, trainer, pl_module: None)
    saves, copies = _saves(monkeypatch), _copies(monkeypatch)
    cfg = make_cfg(*RESUME_POINTS, *chosen, run="r")
    rec = run(cfg)
    assert saves == [("best.ckpt", 1)] and copies == [1]
    assert rec["selected_epoch"] == 2
    _same_numbers(rec, eager)
    best = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    assert best.read_bytes() == (tmp_path / "eager" / "checkpoints" / "best.ckpt").read_bytes()


@pytest.mark.parametrize("crash_after", [4, 5])  # 1-based: just after the resume point of epoch 4, or between two
def test_a_fit_killed_after_or_between_resume_points_resumes_to_the_uninterrupted_result(
        make_cfg, tmp_path, monkeypatch, crash_after):
    """Killed at the end of epoch `crash_after` (the selection changed since the resume point of epoch 4 with
    select=last), the run resumes from epoch 4 and ends with the uninterrupted run's result and best.ckpt."""
    overrides = (*RESUME_POINTS, "train.select=last")
    _resume_clock(monkeypatch)
    clean = run(make_cfg(*overrides, run="clean"))

    def crash(self, trainer, pl_module):
        if trainer.current_epoch + 1 == crash_after:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(callbacks.FailOnNonFinite, "on_train_epoch_end", crash, raising=False)
    cfg = make_cfg(*overrides, run="r")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    # the killed attempt wrote best.ckpt with its resume point only: both name epoch 4 (0-based 3)
    assert _state(ckpts / "last.ckpt")[0] == 3 and _state(ckpts / "best.ckpt")[0] == 3
    assert not (ckpts / callbacks.COMMITTED).exists()
    monkeypatch.undo()
    again = run(make_cfg(*overrides, run="r"))
    assert again["status"] == "ok" and again["resumed_from"] and again["selected_epoch"] == 6
    _same_numbers(again, clean)
    _same_model(ckpts / "best.ckpt", tmp_path / "clean" / "checkpoints" / "best.ckpt")


def test_a_kill_between_writing_best_ckpt_and_its_resume_point_resumes_from_the_previous_one(
        make_cfg, tmp_path, monkeypatch):
    """best.ckpt is written just before last.ckpt: killed between the two (here at the resume point of epoch 6),
    best.ckpt holds epoch 6's model while last.ckpt's selection kept epoch 4's. That write kept epoch 4's model as
    best.committed.ckpt; the resume puts it back, so even a replay that did not rewrite best.ckpt would test the
    model its selection names. The resumed run equals an uninterrupted one."""
    overrides = (*RESUME_POINTS, "train.select=last")
    _resume_clock(monkeypatch)
    clean = run(make_cfg(*overrides, run="clean"))
    _saves(monkeypatch, fail_on=("last.ckpt", 5))
    cfg = make_cfg(*overrides, run="r")
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg)
    monkeypatch.undo()
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    epoch = lambda name: _state(ckpt_dir / name)[0]  # noqa: E731 - 0-based
    assert (epoch("last.ckpt"), epoch("best.ckpt"), epoch(callbacks.COMMITTED)) == (3, 5, 3)
    assert checkpoints.resume_state(ckpt_dir, None) is not None
    assert epoch("best.ckpt") == 3 and not (ckpt_dir / callbacks.COMMITTED).exists()
    assert verified.problem(ckpt_dir / "best.ckpt") is None  # moved with its checksum
    again = run(make_cfg(*overrides, run="r"))
    assert again["status"] == "ok" and again["selected_epoch"] == 6 and again["resumed_from"]
    _same_numbers(again, clean)
    _same_model(ckpt_dir / "best.ckpt", tmp_path / "clean" / "checkpoints" / "best.ckpt")
    assert not (ckpt_dir / callbacks.COMMITTED).exists()  # the final resume point committed the last model


def test_a_run_folder_killed_under_eager_best_writes_resumes_with_its_committed_model(
        make_cfg, tmp_path, monkeypatch):
    """A folder the code before the deferral left: best.ckpt was written at every change of selection, so a kill
    after epoch 3 with a resume point after epoch 1 only left a later model in best.ckpt and the resume point's
    (epoch 1) in best.committed.ckpt. The resume puts the committed model back and the run ends with the
    uninterrupted result."""
    overrides = (*SCRATCH, "train.select=last", "train.max_epochs=4")
    clean = run(make_cfg(*overrides, run="clean"))

    def crash(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(callbacks.FailOnNonFinite, "on_train_epoch_end", crash, raising=False)
    cfg = make_cfg(*overrides, run="r")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)  # a resume point after epoch 1 (every_s=0), then killed
    monkeypatch.undo()
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    # what the old code then wrote at epochs 2-3: best.ckpt moved aside as committed, a later model in its place
    verified.move(ckpt_dir / "best.ckpt", ckpt_dir / callbacks.COMMITTED)
    for name in ("best.ckpt", "best.ckpt.sha256"):
        shutil.copy(tmp_path / "clean" / "checkpoints" / name, ckpt_dir / name)
    epoch = lambda name: _state(ckpt_dir / name)[0]  # noqa: E731 - 0-based
    assert (epoch("last.ckpt"), epoch("best.ckpt"), epoch(callbacks.COMMITTED)) == (0, 3, 0)
    started = count_epochs(monkeypatch)
    again = run(make_cfg(*overrides, run="r"))
    assert started == [1, 2, 3] and again["status"] == "ok" and again["resumed_from"]
    assert again["selected_epoch"] == 4
    _same_numbers(again, clean)
    _same_model(ckpt_dir / "best.ckpt", tmp_path / "clean" / "checkpoints" / "best.ckpt")
    assert not (ckpt_dir / callbacks.COMMITTED).exists()
