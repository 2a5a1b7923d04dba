"""Content fingerprints of the files a run reads: the bytes, not the path.

A user who replaces `my.npz` with new data at the same path, re-extracts a dataset, or overwrites a weights file
gets a different fingerprint, so no result or cache entry made from the old bytes is reused. Hashing is sha256 over
the file's bytes. A file is hashed once per process and stat signature (path, size, mtime, ctime, inode), so a
sweeper hashing 10^4 points, or a multirun's later jobs, read each file once; any write changes ctime, so an edit
that keeps size and mtime is still seen. A folder's fingerprint covers every file it holds (relative path +
content), so renaming a class folder or adding one image changes it.

Light on purpose (no torch): the sweeper fingerprints every point before launching anything.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

MISSING = "missing"
_CHUNK = 1 << 20
_file_memo: dict[tuple, str] = {}


def _signature(st: os.stat_result, path: str) -> tuple:
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, or "missing"; memoised by the file's stat signature."""
    real = os.path.realpath(os.path.expanduser(str(path)))
    try:
        st = os.stat(real)
    except OSError:
        return MISSING
    if not os.path.isfile(real):
        return MISSING
    sig = _signature(st, real)
    digest = _file_memo.get(sig)
    if digest is None:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        digest = h.hexdigest()
        _file_memo[sig] = digest
    return digest


def tree_digest(root: str | os.PathLike, suffixes: Iterable[str] | None = None) -> str:
    """sha256 over (relative path, file digest) of every file below `root` (only `suffixes`, case-insensitive,
    when given), sorted; "missing" if `root` is not a folder. A single file is hashed as `file_digest`."""
    real = os.path.realpath(os.path.expanduser(str(root)))
    if os.path.isfile(real):
        return file_digest(real)
    if not os.path.isdir(real):
        return MISSING
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    h = hashlib.sha256()
    entries = []
    for folder, dirs, files in os.walk(real):
        dirs.sort()
        for name in files:
            if wanted is not None and not name.lower().endswith(wanted):
                continue
            full = os.path.join(folder, name)
            entries.append((os.path.relpath(full, real), full))
    for rel, full in sorted(entries):
        h.update(f"{rel}\0{file_digest(full)}\n".encode())
    return h.hexdigest()


def paths_digest(paths: Iterable[str | os.PathLike]) -> str:
    """One fingerprint over several files or folders (each by `tree_digest`), in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{Path(p).name}\0{tree_digest(p)}\n".encode())
    return h.hexdigest()


def forget() -> None:
    """Drop the memo (tests that rewrite a file within one stat-time tick)."""
    _file_memo.clear()
