"""Derived files that are verified when read and recomputed when they fail: a wrong byte never becomes a result.

Every payload we derive and later read back (cached source `model.pt`, cached `features.pt`, `last.ckpt` and
`best.ckpt`) is written with a sha256 of its bytes in a sidecar `<file>.sha256`, in `sha256sum` format, so
`sha256sum -c model.pt.sha256` checks it from the shell too. Why a sidecar and not the entry's meta.json:
- one mechanism covers cache entries and Lightning checkpoints alike (checkpoints have no meta.json);
- meta.json stays what it is, a description for people, written by the cache that knows what to describe; the
  file that decides whether bytes are trusted holds nothing else.

Writing: the payload goes to a temp file, renamed into place, and then the sidecar is written atomically. A crash
between the two renames leaves a payload with no (or a stale) checksum: it reads as failed and is recomputed, never
trusted. `save` (every torch file: cache entries and, through `SafeCheckpointIO`, checkpoints) hashes the bytes as
they go to the temp file (`write_stream`), so a checkpoint is not read back whole to be hashed; the writer sees
a file with `write` and `flush` only (no `seek`), so what it wrote is exactly the bytes hashed, in order. A writer
that needs a path (`write_with`) gets one, and the file is hashed from disk after it returns.

Reading (`load`): the file is opened once, hashed, and unpickled from the same open file, so the bytes checked
are the bytes used even if another process renames a new file into place meanwhile. Unpickling comes first, with
`weights_only=True` (which never runs code), so a planted file is reported as refused even without a checksum.

A cache entry that fails (`get_or_make`) is moved aside, never deleted (`<file>.corrupt-<UTC time>`, its sidecar
with it), logged once, and recomputed under the entry's file lock, so parallel jobs still compute it once.

`claim_missing` locks several missing entries at once for a caller that makes them together (a vectorised group's
stacked source pretraining): in sorted order and never waiting, so it cannot deadlock with a run waiting in
`get_or_make`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from transferlab.store.atomic import atomic_path, shared_lock, write_json
from transferlab.store.safe_load import CorruptFileError, WeightsError, load_open

log = logging.getLogger(__name__)

SUFFIX = ".sha256"
LOCK = ".lock"
META = "meta.json"
LAST_USE = ".last_use"  # its mtime is when a run last read or wrote the entry (`transferlab-cache ls`)
_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def sidecar(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def _sha256(f: BinaryIO) -> str:
    """sha256 of an open file from its current position, read in chunks (never the whole file at once)."""
    h, buf = hashlib.sha256(), bytearray(_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


def _seal(path: Path, digest: str) -> None:
    """Write `path`'s sidecar (atomically), after `path` itself is in place."""
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")


def write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temp file beside `path`; it is hashed, renamed to `path`, then sealed by its sidecar."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp)
        with open(tmp, "rb") as f:
            digest = _sha256(f)
    _seal(path, digest)


class _HashingWriter:
    """A write-only binary stream over an open file that hashes every byte on its way to the file. No `seek` or
    `tell`: a writer that would go back and rewrite bytes fails (AttributeError) instead of leaving a file whose
    bytes differ from what was hashed."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._hash = hashlib.sha256()

    def write(self, data) -> int:
        self._hash.update(data)
        n, size = self._f.write(data), memoryview(data).nbytes
        if n != size:  # a buffered file writes everything or raises; anything else must not be sealed
            raise OSError(f"short write to {self._f.name}: {n} of {size} bytes")
        return n

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """`write(stream)` writes the payload to a stream into a temp file beside `path`, hashed as it is written; the
    file is closed, renamed to `path`, then sealed by its sidecar (the same order and atomicity as `write_with`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # the temp file atomic_path created: its mode stays
            stream = _HashingWriter(f)
            write(stream)
        digest = stream.hexdigest()
    _seal(path, digest)


def save(path: str | os.PathLike, obj: Any) -> None:
    """`torch.save` with a checksum, hashed while written (see `write_stream`)."""
    import torch

    write_stream(path, lambda stream: torch.save(obj, stream))


def _expected(path: Path) -> tuple[str | None, str]:
    """(digest recorded in the sidecar, or None with why not)."""
    side = sidecar(path)
    try:
        text = side.read_text().split()
    except FileNotFoundError:
        return None, f"no checksum file {side.name} (written before checksums existed, or the writer stopped " \
                     f"between the file and its checksum)"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable checksum file {side.name} ({e})"
    if not text or not _HEX.fullmatch(text[0]):
        return None, f"checksum file {side.name} holds no sha256"
    return text[0], ""


def bytes_problem(path: str | os.PathLike, data: bytes) -> str | None:
    """Why `data`, the bytes read from `path`, cannot be trusted against `path`'s sidecar (no checksum, mismatch),
    or None: for small files parsed from the very bytes that were checked (result.json)."""
    path = Path(path)
    expected, why = _expected(path)
    if expected is None:
        return f"{path}: {why}"
    actual = hashlib.sha256(data).hexdigest()
    return _mismatch(path, actual, expected) if actual != expected else None


def problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be trusted (missing, unreadable, no checksum, checksum mismatch), or None. Hashes only."""
    path = Path(path)
    expected, why = _expected(path)
    try:
        with open(path, "rb") as f:
            actual = _sha256(f)
    except FileNotFoundError:
        return f"{path}: no such file"
    except OSError as e:
        return f"{path}: unreadable ({e})"
    if expected is None:
        return f"{path}: {why}"
    if actual != expected:
        return _mismatch(path, actual, expected)
    return None


def _mismatch(path: Path, actual: str, expected: str) -> str:
    return f"{path}: checksum mismatch (its bytes hash to sha256 {actual[:12]}…, {sidecar(path).name} says " \
           f"{expected[:12]}…)"


def load_and_check(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[Any, str | None]:
    """(object, why its bytes fail their checksum or None): for callers that look inside before deciding, e.g.
    a last.ckpt of another configuration is refused as such even when it predates checksums. Raises
    `UnsafeFileError` (pickled code), `CorruptFileError` (unreadable, truncated) or WeightsError (no such file)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except OSError as e:
        raise CorruptFileError(f"{path}: unreadable ({e})") from e
    with f:
        try:
            actual = _sha256(f)
            f.seek(0)
        except OSError as e:
            raise CorruptFileError(f"{path}: unreadable ({e})") from e
        obj = load_open(f, path, map_location)
    expected, why = _expected(path)
    if expected is None:
        return obj, f"{path}: {why}"
    if actual != expected:
        return obj, _mismatch(path, actual, expected)
    return obj, None


def load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """A torch file we wrote, checked against its sidecar. Raises `UnsafeFileError` (pickled code), or
    `CorruptFileError` (unreadable, truncated, no checksum, checksum mismatch), or WeightsError (no such file)."""
    obj, bad = load_and_check(path, map_location)
    if bad:
        raise CorruptFileError(bad)
    return obj


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename `src` to `dst` with its sidecar (each rename atomic; a `dst` and its sidecar are replaced). The
    sidecar moves first: a crash in between leaves `dst` unchecked-for rather than checked against another file's
    digest."""
    src, dst = Path(src), Path(dst)
    if sidecar(src).exists():
        os.replace(sidecar(src), sidecar(dst))
    else:
        sidecar(dst).unlink(missing_ok=True)
    os.replace(src, dst)


def remove(path: str | os.PathLike) -> None:
    """Delete `path` and its sidecar (either may be absent)."""
    Path(path).unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def set_aside(path: str | os.PathLike) -> Path:
    """Rename `path` (and its sidecar) to `<name>.corrupt-<UTC time>`: kept for inspection, never read again."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    os.replace(path, aside)
    if sidecar(path).exists():
        os.replace(sidecar(path), sidecar(aside))
    return aside


class NotMadeYet(RuntimeError):
    """A process that only reads cache entries (`read_only`) found one missing or failing verification."""


_read_only: str | None = None  # why this process only reads cache entries (a DDP rank), or None


def read_only(why: str | None) -> None:
    """From now on `get_or_make` in this process reads finished, verified entries only: no lock is taken, nothing
    is made, set aside or touched; a missing or damaged entry raises NotMadeYet. A DDP rank (run/ddp.py) sets it:
    the launching process made every entry before any rank existed, and a rank waiting on an entry's lock while
    another rank holds it and waits for the first in a collective is a deadlock. None: reads and makes again."""
    global _read_only
    _read_only = why


class UnfitEntry(WeightsError):
    """Bytes that pass their checksum but do not fit the running code (the caller's `check`)."""


def _load_fit(path: Path, check: Callable[[Any], str | None] | None) -> Any:
    """`load(path)`, then the caller's `check` of what it holds: UnfitEntry with its reason when it fails."""
    obj = load(path)
    why = check(obj) if check is not None else None
    if why:
        raise UnfitEntry(f"{path}: {why}")
    return obj


def get_or_make(path: str | os.PathLike, make: Callable[[], tuple[Any, dict | None]],
                check: Callable[[Any], str | None] | None = None) -> tuple[Any, str]:
    """(object, 'hit'|'miss'): the verified file at `path`, or `make()` -> (object, meta) saved there with its
    checksum (and `meta` as meta.json beside it), under a file lock on the entry's folder.

    A read that fails outside the lock is only retried under it (a writer may be between its payload and its
    checksum); one that fails under the lock is a damaged entry: set aside with one warning, then recomputed.
    `check(obj)` says why sound bytes still do not fit the running code (another layout, another schema), or None;
    an entry it rejects is set aside and recomputed the same way. In a process that only reads (`read_only`), a
    read that fails raises NotMadeYet instead."""
    path = Path(path)
    if _read_only is not None:
        try:
            return _load_fit(path, check), "hit"
        except (OSError, WeightsError) as e:
            raise NotMadeYet(f"{path}: {type(e).__name__}: {e}; {_read_only}") from None
    if path.exists():
        try:
            obj = _load_fit(path, check)
            mark_used(path.parent)
            return obj, "hit"
        except WeightsError:
            pass  # decided under the lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with shared_lock(path.parent / LOCK):  # the lock file gets the umask's mode (shared caches)
        if path.exists():
            try:
                obj = _load_fit(path, check)
                mark_used(path.parent)
                return obj, "hit"
            except WeightsError as e:
                _recompute(path, e)
        obj, meta = make()
        put(path, obj, meta)
    return obj, "miss"


def put(path: str | os.PathLike, obj: Any, meta: dict | None) -> None:
    """Write a cache entry as `get_or_make` does after making it: the payload with its checksum, then `meta` as
    meta.json, then its last use. The caller holds the entry's lock (`get_or_make`, `claim_missing`)."""
    path = Path(path)
    save(path, obj)
    if meta is not None:
        write_json(path.parent / META, meta)
    mark_used(path.parent)


@contextmanager
def claim_missing(entries: list[tuple[Path, Callable[[Any], str | None] | None]]) -> Iterator[list[Path]]:
    """Lock, for the caller to make together, the entries (payload path, `check` as for `get_or_make`) that are
    missing (or, read under the lock, fail verification) and that no other process is making; yield their paths,
    in sorted order, with their locks held until the block ends.

    An entry with its payload and checksum in place is not claimed (its reader verifies it, `get_or_make`). Locks
    are taken in sorted path order and never waited for: an entry whose lock another process holds is left to it
    (a run that needs it then waits in `get_or_make`, as always), so a claim can never wait on a process that waits
    on it. Each entry is read again once its lock is held (another process may have just finished it): a sound one
    is left as it is, a damaged one is set aside with one warning, as `get_or_make` does. Write each
    made entry with `put` inside the block. A process that only reads (`read_only`) claims nothing."""
    from filelock import Timeout

    claimed: list[Path] = []
    with ExitStack() as held:
        for path, check in sorted(entries, key=lambda e: str(e[0])):
            path = Path(path)
            if _read_only is not None or path in claimed or _present(path):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = shared_lock(path.parent / LOCK)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("cache entry %s is being made by another process; left to it", path.parent.name)
                continue
            try:
                ours = _missing_under_lock(path, check)
            except BaseException:
                lock.release()
                raise
            if not ours:  # finished meanwhile by another process: not ours to make
                lock.release()
                continue
            held.callback(lock.release)
            claimed.append(path)
        yield claimed


def _missing_under_lock(path: Path, check: Callable[[Any], str | None] | None) -> bool:
    """With the entry's lock held: is it still to be made? A damaged one is set aside first (`get_or_make`)."""
    if not path.exists():
        return True
    try:
        _load_fit(path, check)
        return False
    except WeightsError as e:
        _recompute(path, e)
        return True


def _recompute(path: Path, e: WeightsError) -> None:
    """An entry that failed verification under its lock: set aside (kept, not deleted) with one warning."""
    if path.exists():
        aside = set_aside(path)
        log.warning("cache entry failed verification: %s; moved aside to %s (kept, not deleted), recomputing it",
                    e, aside.name)


def _present(path: Path) -> bool:
    """Is there a finished entry at `path` (its payload and its checksum)? Not read here: its reader verifies it
    (`get_or_make`), and one that fails is set aside and made there; a claim stays cheap when everything is made."""
    return path.exists() and sidecar(path).exists()


def mark_used(folder: Path) -> None:
    """Record that a run used this entry now (the mtime of `.last_use`), for pruning by last use: access times
    are not kept on most file systems (noatime/relatime). A failure to record is not a failure to use."""
    try:
        (Path(folder) / LAST_USE).touch()
    except OSError:
        pass
