"""A local sweep worker ends when the sweep that started it dies.

joblib's (loky) workers outlive a sweep process killed with SIGKILL: nothing tells them, and each holds the
training stack and its data in memory for good. The sweeper exports its pid (`sweep.SWEEP_PID_ENV`); a job that
runs in a direct child of that process (a local worker) starts a daemon thread that checks once a second whether
its parent is still that process, and leaves with `os._exit` when it is not (the parent died and the worker was
re-parented). Jobs of a SLURM array or of the sequential launcher are not children of the sweep process and are
left alone (a sweep under `nohup` must survive its shell).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)
EXIT_CODE = 75  # EX_TEMPFAIL: the point is not done; its folder holds started.json and no result
_watching = False


def watch_parent(env_var: str, poll_s: float = 1.0) -> bool:
    """Start the parent-death check when this process is a direct child of the sweep process. Returns whether
    it watches. Idempotent (a reused worker runs many jobs)."""
    global _watching
    try:
        sweep_pid = int(os.environ.get(env_var, ""))
    except ValueError:
        return False
    if _watching:
        return True
    if os.getpid() == sweep_pid or os.getppid() != sweep_pid:
        return False

    def check() -> None:
        while True:
            if os.getppid() != sweep_pid:
                log.error("the sweep process %d is gone; this worker (pid %d) exits", sweep_pid, os.getpid())
                os._exit(EXIT_CODE)
            threading.Event().wait(poll_s)

    threading.Thread(target=check, name="transferlab-orphan-check", daemon=True).start()
    _watching = True
    return True
