"""Errors that the entry points turn into one clear message and a non-zero exit, before any training."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable


@dataclass(frozen=True)
class Problem:
    """One configuration problem as data: which key, what value, what is allowed. Code steers on `key`; `str()` is
    the line users read (`transfer.freeze=4: an int in 0..cut=3 or 'all'`)."""

    key: str
    value: Any
    allowed: str

    def __post_init__(self) -> None:
        if isinstance(self.value, Enum):  # a config choice: shown as its value, 'drop', not <Upper.drop: 'drop'>
            object.__setattr__(self, "value", self.value.value)

    def __str__(self) -> str:
        return f"{self.key}={self.value!r}: {self.allowed}"

    def about(self, prefix: str) -> bool:
        """Is this a problem with `prefix` or a key under it (`about("source")`: source, source.classes, ...)?"""
        return self.key == prefix or self.key.startswith(prefix + ".")


class ConfigError(ValueError):
    """One or more configuration problems. `items` are the Problems; `problems` their lines, one each."""

    def __init__(self, items: Problem | Iterable[Problem]):
        self.items: list[Problem] = [items] if isinstance(items, Problem) else list(items)
        bad = [p for p in self.items if not isinstance(p, Problem)]
        if bad:
            raise TypeError(f"ConfigError takes Problems (errors.problem(key, value, allowed)), not {bad[0]!r}")
        super().__init__("\n".join(self.problems))

    @property
    def problems(self) -> list[str]:
        return [str(p) for p in self.items]


def problem(key: str, value: Any, allowed: str) -> Problem:
    """One problem: which key, what value, what is allowed."""
    return Problem(key, value, allowed)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the run cannot recover, so it fails with the reason."""


# The machine refused a file: the disk is full or over quota, the folder read-only, or not ours to read or write.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def disk_problem(e: BaseException) -> str | None:
    """One line for a write the machine refused, found anywhere in `e`'s chain of causes (torch reports a full
    disk as a RuntimeError of its zip writer, raised while handling the OSError), or None. Names the file when the
    error does: 'No space left on device: /runs/x/checkpoints/last.ckpt'."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            what = seen.strerror or os.strerror(seen.errno)
            return f"{what}: {seen.filename}" if seen.filename else what
        seen = seen.__cause__ or seen.__context__
    return None


def failure_text(e: BaseException) -> str:
    """How a failed run's record and the CLI name its error: the refused write when it was one (`disk_problem`),
    else the exception's type and message."""
    disk = disk_problem(e)
    return f"DiskError: {disk}" if disk else f"{type(e).__name__}: {e}"
