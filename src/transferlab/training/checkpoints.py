"""A run's checkpoints on disk: how they are written and read, and whether a fit may resume from them.

- written atomically (temp file + rename) with a checksum sidecar, read with `weights_only=True` only and checked
  against it (`transferlab.store.verified`): `SafeCheckpointIO`, Lightning's checkpoint IO for every fit;
- resume: `resume_state` returns the verified `last.ckpt` of a killed run of the same fingerprint. A different
  fingerprint, or a file holding pickled code, is refused (ConfigError: that folder belongs to another run, or
  someone planted the file). A damaged `last.ckpt` (or the best.ckpt it would re-test) is moved aside and the fit
  starts over from epoch 0 with one warning: a point is never stuck on a broken file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from transferlab.errors import ConfigError, problem
from transferlab.store import verified
from transferlab.store.safe_load import CorruptFileError, UnsafeFileError, WeightsError
from transferlab.training.callbacks import COMMITTED, LAST, RunIdentity, RunLocalCheckpoint

log = logging.getLogger(__name__)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: writes via temp file + rename with a checksum sidecar; reads with
    `weights_only=True` only and checks the checksum (a damaged file raises CorruptFileError, never loads).

    Saving is `verified.save`: `torch.save` streams into the temp file and the bytes are hashed as they are written
    (the same bytes Lightning's own save gives: both serialise to a stream, not a named file). Lightning's save
    would serialise into memory first, write that through an fsspec temp file of its own, and the file would then
    be read back whole for its checksum."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:  # as Lightning's TorchCheckpointIO
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by "
                            f"{type(self).__name__}")
        verified.save(path, checkpoint)

    def load_checkpoint(self, path, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        return verified.load(path, map_location=map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        verified.sidecar(path).unlink(missing_ok=True)


def saved_fingerprint(ckpt: dict[str, Any]) -> str | None:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith(RunIdentity.__name__) and isinstance(state, dict):
            return state.get("fingerprint")
    return None


def _selection(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model-selection tracker's saved state in `ckpt` ({} if it has none)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith(RunLocalCheckpoint.__name__) and isinstance(state, dict):
            return state
    return {}


def _tested_file(ckpt_dir: Path, ckpt: dict[str, Any]) -> Path | None:
    """The best.ckpt a resume of `ckpt` would test, inside `ckpt_dir` (None if it names none)."""
    name = _selection(ckpt).get("best_model_path")
    return Path(ckpt_dir) / Path(name).name if name else None


def _restore_committed(ckpt_dir: Path, ckpt: dict[str, Any]) -> None:
    """Put back the model `ckpt`'s selection kept (`best.committed.ckpt`, see RunLocalCheckpoint) as best.ckpt, in
    place of a later model the killed attempt saved after its last resume point (killed between writing best.ckpt
    and last.ckpt, or, under the code before best.ckpt was deferred to resume points, at any epoch since the last
    one). A committed file that is not that
    model (a crash between writing last.ckpt and deleting it) or cannot be read is removed: best.ckpt is then
    the resume point's own, and the end-of-fit check (`check_selected_file`) guards the rest."""
    committed = Path(ckpt_dir) / COMMITTED
    if not committed.exists():
        return
    selected = _selection(ckpt).get("selected_epoch")
    best = _tested_file(ckpt_dir, ckpt) or Path(ckpt_dir) / "best.ckpt"
    try:
        saved = verified.load(committed)
    except WeightsError:
        saved = None
    epoch = saved.get("epoch") if isinstance(saved, dict) else None
    if epoch is not None and selected is not None and int(epoch) + 1 == int(selected):
        verified.move(committed, best)
        log.info("resume: %s is the model selected at the resume point (epoch %s), restored from %s", best.name,
                 selected, committed.name)
    else:
        verified.remove(committed)


@dataclass
class _Last:
    ckpt: dict[str, Any] | None = None   # the verified last.ckpt, resumable
    refused: str | None = None           # why it must not be resumed: a config problem (unsafe, other config)
    damaged: str | None = None           # why it cannot be read: set aside, the fit starts over


def _read_last(ckpt_dir: Path, fingerprint: str | None) -> _Last:
    last = Path(ckpt_dir) / LAST
    if not last.exists():
        return _Last()
    try:
        ckpt, bad = verified.load_and_check(last)
    except UnsafeFileError as e:
        return _Last(refused=f"its {LAST} cannot be resumed ({e}); delete {last} to start over")
    except WeightsError as e:
        return _Last(damaged=str(e))
    # Another configuration's checkpoint is refused even without a checksum (written before checksums existed):
    # this output dir belongs to another run, which must not be overwritten.
    saved = saved_fingerprint(ckpt) if isinstance(ckpt, dict) else None
    if fingerprint is not None and saved is not None and saved != fingerprint:
        return _Last(refused=f"holds a checkpoint of a different configuration (fingerprint {saved}, this run "
                             f"{fingerprint}); use a new output dir, or delete {last} to start over")
    if bad:
        return _Last(damaged=bad)
    if not isinstance(ckpt, dict):
        return _Last(damaged=f"{last}: holds a {type(ckpt).__name__}, not a checkpoint")
    return _Last(ckpt=ckpt)


def checkpoint_mismatch(ckpt_dir: Path, fingerprint: str | None) -> str | None:
    """Why `ckpt_dir/last.ckpt` cannot be resumed by a run with `fingerprint` (None when it can, or is absent).

    Only config problems count (pickled code, another configuration's checkpoint): a damaged last.ckpt is not
    one, the fit sets it aside and starts over (`resume_state`)."""
    return _read_last(Path(ckpt_dir), fingerprint).refused


def _start_over(files: list[Path], why: str) -> None:
    moved = [f"{f.name} -> {verified.set_aside(f).name}" for f in files if f.exists()]
    log.warning("%s; moved aside (kept, not deleted): %s; this fit starts over from epoch 0", why, ", ".join(moved))


def resume_state(ckpt_dir: Path, fingerprint: str | None) -> dict[str, Any] | None:
    """The verified `ckpt_dir/last.ckpt` to resume from, or None to start from epoch 0.

    Raises ConfigError for a config problem (`checkpoint_mismatch`). A last.ckpt that fails to read or verify, or
    whose best.ckpt (the model a resumed run tests) does, is moved aside with one warning and the fit starts
    over: those are damaged derived files, recomputed rather than used or left to fail every later attempt."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / LAST
    state = _read_last(ckpt_dir, fingerprint)
    if state.refused:
        raise ConfigError(problem("paths.output_dir", str(ckpt_dir.parent), state.refused))
    if state.damaged:
        _start_over([last], state.damaged)
        return None
    if state.ckpt is None:
        return None
    _restore_committed(ckpt_dir, state.ckpt)
    best = _tested_file(ckpt_dir, state.ckpt)
    bad = verified.problem(best) if best is not None else None
    if bad:
        _start_over([best, last], f"{bad} (the best model {last} would re-test)")
        return None
    return state.ckpt


def check_selected_file(ckpt_dir: Path, best: str, selected_epoch: int | None) -> None:
    """After a *resumed* fit: does `best` (the file about to be tested) hold the model the selection kept?

    A killed attempt can leave a best.ckpt from after its last resume point; the resume puts the committed model
    back (`_restore_committed`), and where the replay is bit-exact the same epochs write the same files again. This
    is the guard for what is left (a committed file lost or damaged): testing a best.ckpt of another epoch would
    report another model's numbers as this run's. Then both files are moved aside (the next attempt starts over)
    and CorruptFileError fails the run."""
    if not best or selected_epoch is None:
        return
    saved = verified.load(best)
    epoch = saved.get("epoch") if isinstance(saved, dict) else None
    if epoch is not None and int(epoch) + 1 != int(selected_epoch):
        why = (f"{best}: holds the model after epoch {int(epoch) + 1}, but the resumed selection kept epoch "
               f"{selected_epoch} (a killed attempt's model from after its last resume point)")
        _start_over([Path(best), Path(ckpt_dir) / LAST], why)
        raise CorruptFileError(f"{why}; its files were moved aside and the next attempt starts over")


def restore_train_order(train, ckpt: dict[str, Any]) -> None:
    """Give a stateful train loader its saved shuffle state before a resume.

    Lightning restores loader states only when resuming *inside* an epoch; our checkpoints are written at epoch
    ends, so without this the resumed fit would replay the first epoch's batch order.
    """
    states = ((ckpt.get("loops") or {}).get("fit_loop") or {}).get("state_dict", {}).get("combined_loader") or []
    if states and hasattr(train, "load_state_dict"):
        train.load_state_dict(states[0])
