"""Write-then-rename for every file someone later reads: a crash never leaves a half-written file behind.

Temp files are named `.<name>.<random>.tmp` in the same folder, so readers that glob for real names ignore them.
They are created with mode 0666 and the kernel applies the umask (and a folder's default ACL), so the final file
gets exactly the mode a plain `open(path, "w")` would give: 0644 under umask 022, 0664 under 002 (results and
shared caches stay readable, or group-writable, for colleagues). `tempfile.mkstemp` would force 0600.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_umask_lock = threading.Lock()
_umask_cached: int | None = None


def current_umask() -> int:
    """The process umask, read without a window in which it is wrong.

    Linux reports it in /proc/self/status (read-only, so thread-safe, and always current). Elsewhere it can only
    be read by setting it: that is done once, under a lock, setting the strict 077 for the instant in between (a
    file another thread creates then is too private, never world-writable), and cached, so a later `os.umask()`
    there is not seen.
    """
    global _umask_cached
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        if _umask_cached is None:
            _umask_cached = os.umask(0o077)
            os.umask(_umask_cached)
        return _umask_cached


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file now: 0o666 & ~umask. For APIs that take an explicit mode
    (e.g. `FileLock(path, mode=file_mode())`, whose older releases force 0644 otherwise)."""
    return 0o666 & ~current_umask()


def shared_lock(path: str | os.PathLike):
    """A `filelock.FileLock` whose lock file gets the umask's mode like every other file here (older filelock
    releases force 0644, which locks colleagues out of a shared cache under umask 002)."""
    from filelock import FileLock

    return FileLock(str(path), mode=file_mode())


def _create_temp(path: Path) -> Path:
    """A new empty `.<name>.<random>.tmp` beside `path`, created like `open(..., "w")` would (0666 & ~umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, _CREATE, 0o666))
            return tmp
        except FileExistsError:  # a name another writer drew: draw again
            continue
    raise FileExistsError(f"no free temp name beside {path}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` atomically, on failure it is removed.

    A writer that opens the yielded path keeps the mode it was created with. One that puts another file there
    instead (Lightning's checkpoint save moves an fsspec temp file in, chmod-ed with a umask fsspec cached on
    first use) gets that creation mode back, so the result is the same whoever wrote it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(_create_temp(path))
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # what the kernel gave a new file here (umask, default ACL)
    try:
        yield Path(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
